#!/usr/bin/env bash
# The main job: sets up the machine, builds the `hearth` command and the example
# computations, and runs `hearth demo`: three real nodes (home, phone, cloud) on
# loopback in a temporary directory, paired with invite/join; os-monitor on home and a
# day of OwnTracks fixes posted to the phone's http-ingest; replication by policy (the
# cloud holds nothing personal); the `places` and `daily-mean` computations approved
# for a developer key and run from the phone, on home, with receipts checked offline;
# what moved; the audit logs verified.
#
#   scripts/demo.sh            run it and clean up
#   scripts/demo.sh --keep     leave the three nodes running
#   scripts/demo.sh --json     one JSON summary instead of the narration
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh >&2
echo "==> Building the hearth command and the example computations" >&2
cargo build --locked --quiet -p hearth-cli
cargo build --release --locked --quiet --target wasm32-wasip2 \
    --manifest-path examples/compute/Cargo.toml --target-dir target/guest

json=()
args=()
for arg in "$@"; do
    if [ "$arg" = "--json" ]; then json=(--json); else args+=("$arg"); fi
done
exec target/debug/hearth "${json[@]}" demo --modules target/guest/wasm32-wasip2/release "${args[@]}"
