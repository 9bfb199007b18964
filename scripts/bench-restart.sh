#!/usr/bin/env bash
# Catch-up after a restart on this machine, with release builds and real node processes
# on loopback: home, the phone, and both restarting after SIGKILL, without and with a
# cloud VM; p50 and p99 of admission and catch-up beside the node's own start-up (the
# floor) measured in the same run. Argument: [ROUNDS] (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p hearth-cli -p hearth-tests --bin hearth --bin restart-bench
exec target/release/restart-bench "$@"
