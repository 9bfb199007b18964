#!/usr/bin/env bash
# What running a node costs, with release builds on loopback: start until the API
# listens (beside `hearth --version`), idle memory, and a /v1/metrics scrape of a node
# with [STORES] stores (default 1000) beside /v1/status and /v1/stores, [SCRAPES] times
# each (default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p hearth-cli -p hearth-tests --bin hearth --bin ops-bench
exec target/release/ops-bench "$@"
