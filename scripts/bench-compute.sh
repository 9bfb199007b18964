#!/usr/bin/env bash
# Latency of computations as a user sees it (`hearth run`, release builds, one node on
# loopback): the first run of a module (Cranelift compiles it), later runs (linked
# module kept in memory), the first run after a restart (compiled artifact loaded from
# the disk cache), and the cost of the examples over a month of readings.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh > /dev/null
cargo build --release --locked -q -p hearth-cli --bin hearth
cargo build --release --locked -q --target wasm32-wasip2 \
    --manifest-path examples/compute/Cargo.toml --target-dir target/guest
hearth="$PWD/target/release/hearth"
guest="$PWD/target/guest/wasm32-wasip2/release"
work=$(mktemp -d)
node_pid=
trap 'kill -TERM $node_pid 2>/dev/null || true; wait $node_pid 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
h() { "$hearth" --data-dir home "$@"; }
start_node() {
    rm -f home/api.addr
    "$hearth" --data-dir home node run --no-mdns --listen /ip4/127.0.0.1/udp/0/quic-v1 > node.log 2>&1 &
    node_pid=$!
    for _ in $(seq 1 600); do [ -s home/api.addr ] && break; sleep 0.1; done
    [ -s home/api.addr ] || { echo "the node did not start:" >&2; cat node.log >&2; exit 1; }
}
now_s() { date +%s.%N; }
elapsed_ms() { python3 -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])) * 1000:.1f}')" "$1" "$2"; }

h init --name home > /dev/null
start_node

# A month of readings, one a minute: load on os-monitor, a track on location.
python3 - <<'PY'
import json, math, random, time
random.seed(7)
start = 1_790_000_000_000
with open("load.jsonl", "w") as f:
    for i in range(30 * 24 * 60):
        f.write(json.dumps({"ts": start + i * 60_000, "value": {"load1": round(1 + math.sin(i / 90) + random.random(), 3)}}) + "\n")
places = [(52.3721, 4.8932), (52.3385, 4.8719), (52.3579, 4.8881)]
now = int(time.time())
with open("track.jsonl", "w") as f:
    for i in range(30 * 24 * 60):
        lat, lon = places[(i // 240) % 3]
        t = now - (30 * 24 * 60 - i) * 60
        f.write(json.dumps({"ts": t * 1000, "value": {"lat": lat + random.uniform(-3e-4, 3e-4), "lon": lon + random.uniform(-3e-4, 3e-4), "tst": t}}) + "\n")
PY
h store create os-monitor --kind timeseries > /dev/null
h store append os-monitor - < load.jsonl > /dev/null
h store create location --kind timeseries > /dev/null
h store append location - < track.jsonl > /dev/null

dev=$(h --json key new --out dev.key | sed -n 's/.*"public_key":"\([0-9a-f]*\)".*/\1/p')
for m in daily-mean places; do
    cp "$OLDPWD/examples/manifests/$m.toml" .
    cp "$guest/${m//-/_}.wasm" .
    # The places manifest limits history to 90 days before approval: the track is recent.
    h app approve "$m.toml" --holder "$dev" --out "$m.cap" --yes > /dev/null
done

run() { # module cap params → prints ms and fuel
    local t0 t1 out
    t0=$(now_s)
    out=$(h --json run "$1" --cap "$2" --key dev.key --params "$3")
    t1=$(now_s)
    echo "$(elapsed_ms "$t0" "$t1") ms, fuel $(echo "$out" | sed -n 's/.*"fuel":\([0-9]*\).*/\1/p')"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "daily-mean over 43,200 readings (30 days; 4 host aggregates per day):"
echo "  first run (compile):        $(run daily_mean.wasm daily-mean.cap '{"field": "load1"}')"
for _ in $(seq 1 10); do run daily_mean.wasm daily-mean.cap '{"field": "load1"}'; done > dm.txt
echo "  later runs (median of 10):  $(cut -d' ' -f1 dm.txt | median) ms, $(sed -n 's/.*fuel \([0-9]*\)/\1/p' dm.txt | head -1) fuel"
echo "places over 43,200 location readings (read raw, 3 fields):"
echo "  first run (compile):        $(run places.wasm places.cap '{}')"
for _ in $(seq 1 10); do run places.wasm places.cap '{}'; done > pl.txt
echo "  later runs (median of 10):  $(cut -d' ' -f1 pl.txt | median) ms, $(sed -n 's/.*fuel \([0-9]*\)/\1/p' pl.txt | head -1) fuel"
kill -TERM "$node_pid"; wait "$node_pid" || true
t0=$(now_s)
start_node
echo "after a restart (compiled module from the disk cache):"
echo "  the node restarts in $(elapsed_ms "$t0" "$(now_s)") ms (opening its stores)"
echo "  daily-mean first run:       $(run daily_mean.wasm daily-mean.cap '{"field": "load1"}')"
echo "  places first run:           $(run places.wasm places.cap '{}')"
echo "a trivial CLI round trip for comparison (hearth status): $(t0=$(now_s); h status > /dev/null; elapsed_ms "$t0" "$(now_s)") ms"
