#!/usr/bin/env bash
# Sets up the machine and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

profile=default
if [ "${CI:-}" = "true" ]; then
    profile=ci
fi

# Property tests draw their cases from a fixed seed, so a run is repeatable; set
# PROPTEST_RNG_SEED to another number to explore other cases (failures found are
# saved beside the test, in *.proptest-regressions, and rerun first).
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-20261207}"

# nextest does not run doc tests; the crate-level examples are tests too.
cargo test --workspace --locked --doc
cargo nextest run --workspace --locked --profile "$profile"

# The guest side (sdk/ and the example computations) is a workspace of its own; its
# unit tests run on the host. (The node's tests above already ran the built modules.)
cargo test --locked --quiet --manifest-path examples/compute/Cargo.toml --workspace \
    --target-dir target/guest
cargo test --locked --quiet --manifest-path sdk/Cargo.toml --target-dir target/guest
