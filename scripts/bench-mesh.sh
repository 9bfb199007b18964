#!/usr/bin/env bash
# Mesh and replication figures on this machine, with release builds and real node
# processes on loopback: node start to first admitted peer, a single write until seen on
# the other device (p50, p99), and 100,000 readings replicated to an empty device; each
# beside its floor measured in the same run. Arguments: [WRITES] [READINGS].
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p hearth-cli -p hearth-tests --bin hearth --bin mesh-bench
exec target/release/mesh-bench "$@"
