#!/usr/bin/env bash
# The export gateway's costs, with release builds on loopback: from a job's result to
# its export arriving at an HTTPS destination (beside a plain HTTPS POST, the floor),
# for [RUNS] jobs (default 50), and the durable outbox's throughput for [EXPORTS]
# exports (default 5000) beside appends with fdatasync in the same directory.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh > /dev/null
cargo build --release --locked -q -p hearth-cli -p hearth-tests --bin hearth --bin export-bench
cargo build --release --locked -q --target wasm32-wasip2 \
    --manifest-path examples/compute/Cargo.toml --target-dir target/guest
exec target/release/export-bench "$@"
