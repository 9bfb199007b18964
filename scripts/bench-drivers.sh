#!/usr/bin/env bash
# Throughput of the ingest drivers on this machine, with release builds:
# http-ingest readings per second on loopback (one reading per request, and batches),
# and file-import lines per second for a one-million-line CSV.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p hearth-cli -p hearth-tests --bin hearth --bin ingest-load
hearth="$PWD/target/release/hearth"
load="$PWD/target/release/ingest-load"
work=$(mktemp -d)
trap 'kill -TERM $node_pid 2>/dev/null || true; wait $node_pid 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
"$hearth" --data-dir home init --name home > /dev/null
"$hearth" --data-dir home node run --no-mdns --listen /ip4/127.0.0.1/udp/0/quic-v1 > node.log 2>&1 &
node_pid=$!
for _ in $(seq 1 100); do [ -s home/api.addr ] && break; sleep 0.1; done
added=$("$hearth" --data-dir home --json driver add http-ingest --listen 127.0.0.1:0 --store meter)
url=$(echo "$added" | sed -n 's/.*"url":"\([^"]*\)".*/\1/p')
password=$(echo "$added" | sed -n 's/.*"password":"\([^"]*\)".*/\1/p')
echo "http-ingest, one reading per request:"
"$load" "$url" "$password" 4000 1 4
echo "http-ingest, 100 readings per request:"
"$load" "$url" "$password" 400 100 4
python3 - <<'PY'
import random
random.seed(7)
with open("big.csv", "w") as f:
    f.write("ts,celsius,room\n")
    for i in range(1_000_000):
        f.write(f"{1600000000000 + i * 1000},{20 + random.random() * 5:.2f},kitchen\n")
PY
start=$(date +%s.%N)
"$hearth" --data-dir home driver add file-import big.csv --store kitchen > /dev/null
end=$(date +%s.%N)
python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'file-import: 1000000 lines in {s:.2f} s, {1e6/s:.0f} lines/s')" "$start" "$end"
