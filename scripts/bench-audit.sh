#!/usr/bin/env bash
# What copying audit logs to home costs, with release builds and real node processes on
# loopback: a phone away for a day of entries, then back; time until home's copy holds
# them all and bytes per entry, beside a durable copy of the same file. Argument:
# [ENTRIES] (default 100000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p hearth-cli -p hearth-tests --bin hearth --bin audit-bench
exec target/release/audit-bench "$@"
