#!/usr/bin/env bash
# What a dashboard page costs, with release builds on loopback: time to the first byte
# and to the whole page for each page of a node with [STORES] stores (default 100) and
# [ENTRIES] audit entries (default 100000), [REQUESTS] times each (default 50), beside
# the style sheet (a static answer through the same checks).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p hearth-cli -p hearth-tests --bin hearth --bin dashboard-bench
exec target/release/dashboard-bench "$@"
