#!/usr/bin/env bash
# Reaching devices behind NAT, over NAT routers in network namespaces (needs root):
# hole-punch success over phone restarts, start to relayed admission and to the direct
# upgrade, a single write until seen on the other device direct and relayed beside the
# path's round trip, and readings replicated direct and relayed. Release builds.
# Arguments: [ATTEMPTS] [WRITES] [READINGS].
set -euo pipefail
cd "$(dirname "$0")/.."
# iptables, ping and iproute2 for the NAT routers (idempotent).
scripts/setup.sh
cargo build --release --locked -q -p hearth-cli -p hearth-tests --bin hearth --bin nat-bench
exec target/release/nat-bench "$@"
