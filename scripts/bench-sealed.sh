#!/usr/bin/env bash
# Sealed-replica figures on this machine, with release builds and real node processes on
# loopback: sealing cost per MB beside a memcpy; readings home to phone directly against
# through the sealed cloud (home and phone never online together); restore of a large
# store from the cloud onto a device made from the recovery phrase. Arguments:
# [READINGS] [RESTORE_READINGS] (defaults 100000 and 1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p hearth-cli -p hearth-tests --bin hearth --bin sealed-bench
exec target/release/sealed-bench "$@"
