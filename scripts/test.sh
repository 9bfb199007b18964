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
