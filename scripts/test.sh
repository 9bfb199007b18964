#!/usr/bin/env bash
# Sets up the machine and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

profile=default
if [ "${CI:-}" = "true" ]; then
    profile=ci
fi

# nextest does not run doc tests; the crate-level examples are tests too.
cargo test --workspace --locked --doc
cargo nextest run --workspace --locked --profile "$profile"

# The guest side (sdk/ and the example computations) is a workspace of its own; its
# unit tests run on the host. (The node's tests above already ran the built modules.)
cargo test --locked --quiet --manifest-path examples/compute/Cargo.toml --workspace \
    --target-dir target/guest
cargo test --locked --quiet --manifest-path sdk/Cargo.toml --target-dir target/guest
