#!/usr/bin/env bash
# The main job, as far as Hearth is built: create a mesh, make a developer key,
# review and approve computations' manifests, delegate a narrower capability to an
# app, show that a key that does not hold a capability is refused, run a node, pair a
# phone, feed drivers (os-monitor; a day's OwnTracks track over http-ingest), watch the
# track replicate by policy, and run the `places` and `daily-mean` computations from the
# phone: they run on home, where the data is, and only their results come back, with
# receipts that verify offline.
# Everything happens in a temporary directory that is removed at the end
# (pass --keep to leave it).
set -euo pipefail
cd "$(dirname "$0")/.."

keep=false
[ "${1:-}" = "--keep" ] && keep=true

scripts/setup.sh
echo "==> Building the hearth command and the example computations"
cargo build --locked --quiet -p hearth-cli
cargo build --release --locked --quiet --target wasm32-wasip2 \
    --manifest-path examples/compute/Cargo.toml --target-dir target/guest
hearth="$PWD/target/debug/hearth"
guest="$PWD/target/guest/wasm32-wasip2/release"

work=$(mktemp -d)
if [ "$keep" = false ]; then
    trap 'rm -rf "$work"' EXIT
fi
cd "$work"
say() { printf '\n==> %s\n' "$*"; }
public_key() { sed -n 's/.*"public_key":"\([0-9a-f]*\)".*/\1/p'; }

say "Creating a new mesh on this device, named home (owner key, node key, device certificate)."
"$hearth" --data-dir home init --name home --role home

say "A developer makes a holder key; only its public half goes to the owner."
dev=$("$hearth" --json key new --out developer.key | public_key)
echo "developer public key: $dev"

say "The developer ships the 'places' computation with a manifest. The owner reviews it in plain words."
cp "$OLDPWD/examples/manifests/places.toml" places.toml
cp "$guest/places.wasm" places.wasm
"$hearth" app review places.toml

say "The owner approves it for the developer's key for 7 days; the capability is bound to the module's hash."
"$hearth" --data-dir home app approve places.toml --holder "$dev" --expires 7d --out places.cap --yes
"$hearth" --data-dir home cap show places.cap

say "The developer delegates a narrower capability to an app: latitude and longitude only, at most 3 runs, 1 day."
app=$("$hearth" --json key new --out app.key | public_key)
"$hearth" --data-dir home cap delegate places.cap --holder "$app" --key developer.key --out app.cap \
    --fields lat,lon --max-runs 3 --expires 1d
"$hearth" --data-dir home cap show app.cap

say "The app tries to delegate with the developer's capability, which it does not hold: refused (exit 3)."
set +e
"$hearth" --data-dir home cap delegate places.cap --holder "$app" --key app.key --out stolen.cap
code=$?
set -e
echo "exit code: $code"
[ "$code" -eq 3 ] || { echo "demo: expected exit code 3" >&2; exit 1; }
[ ! -e stolen.cap ] || { echo "demo: a refused delegation wrote a file" >&2; exit 1; }

say "Starting the node: it opens its stores and audit log and serves the local API on 127.0.0.1."
"$hearth" --data-dir home node run --no-mdns --listen /ip4/127.0.0.1/udp/0/quic-v1 > node.log 2>&1 &
node_pid=$!
trap 'kill -TERM $node_pid 2>/dev/null || true; wait $node_pid 2>/dev/null || true; [ "$keep" = true ] || rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
    [ -s home/api.addr ] && break
    sleep 0.1
done
[ -s home/api.addr ] || { echo "demo: the node did not start:" >&2; cat node.log >&2; exit 1; }
cat node.log

say "A timeseries store for the kitchen thermometer; a day of readings, one every 10 minutes."
"$hearth" --data-dir home store create sensors/kitchen --kind timeseries
start=$(( ($(date +%s) - 86400) * 1000 ))
for i in $(seq 0 143); do
    printf '{"ts": %d, "value": {"celsius": %d.%d, "room": "kitchen"}}\n' $(( start + i * 600000 )) $(( 18 + (i % 48) / 8 )) $(( i % 10 ))
done | "$hearth" --data-dir home store append sensors/kitchen -
"$hearth" --data-dir home store read sensors/kitchen --last 3
printf 'mean %s, min %s, max %s over the day\n' \
    "$("$hearth" --data-dir home store agg sensors/kitchen mean --field celsius)" \
    "$("$hearth" --data-dir home store agg sensors/kitchen min --field celsius)" \
    "$("$hearth" --data-dir home store agg sensors/kitchen max --field celsius)"

say "A kv store for settings, and the list of stores."
"$hearth" --data-dir home store create settings --kind kv
"$hearth" --data-dir home store put settings units '"metric"'
"$hearth" --data-dir home store get settings units
"$hearth" --data-dir home store ls

say "A second device joins: the home node prints a one-time ticket, the phone redeems it."
ticket=$("$hearth" --data-dir home --json invite --ttl 5m | sed -n 's/.*"ticket":"\([^"]*\)".*/\1/p')
echo "ticket: ${ticket:0:32}…"
"$hearth" --data-dir phone join "$ticket" --name phone --role mobile
"$hearth" --data-dir phone node run --no-mdns --listen /ip4/127.0.0.1/udp/0/quic-v1 > phone.log 2>&1 &
phone_pid=$!
trap 'kill -TERM $node_pid $phone_pid 2>/dev/null || true; wait $node_pid $phone_pid 2>/dev/null || true; [ "$keep" = true ] || rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
    "$hearth" --data-dir home --json status 2>/dev/null | grep -q '"connected":true' && break
    sleep 0.1
done
"$hearth" --data-dir home status
"$hearth" --data-dir phone devices

say "The home device watches itself: an os-monitor driver writes load, CPU, memory and disk every 2 s."
"$hearth" --data-dir home driver add os-monitor --interval 2s
sleep 2.5
"$hearth" --data-dir home store read os-monitor --latest

say "The phone takes its own location track as the OwnTracks app posts it: an http-ingest driver on the phone (a day of fixes, shipped in examples/data/day-track.csv)."
added=$("$hearth" --data-dir phone --json driver add http-ingest --listen 127.0.0.1:0 --store location \
    --description "where the phone was")
url=$(echo "$added" | sed -n 's/.*"url":"\([^"]*\)".*/\1/p')
user=$(echo "$added" | sed -n 's/.*"user":"\([^"]*\)".*/\1/p')
password=$(echo "$added" | sed -n 's/.*"password":"\([^"]*\)".*/\1/p')
echo "endpoint: $url/owntracks (user $user)"
day=$(( ($(date +%s) / 86400 - 1) * 86400 ))
posted=0
while IFS=, read -r minute lat lon; do
    case "$minute" in ''|'#'*|minute) continue ;; esac
    tst=$(( day + minute * 60 ))
    curl -sS -o /dev/null -u "$user:$password" -H 'Content-Type: application/json' \
        -H 'X-Limit-U: anna' -H 'X-Limit-D: phone' \
        --data-binary "{\"_type\":\"location\",\"lat\":$lat,\"lon\":$lon,\"tst\":$tst,\"acc\":12,\"batt\":80,\"tid\":\"ph\"}" \
        "$url/owntracks"
    posted=$(( posted + 1 ))
done < "$OLDPWD/examples/data/day-track.csv"
echo "posted $posted OwnTracks location messages"
"$hearth" --data-dir phone driver ls

say "By the default policy (origin,role:home) the track lives on the phone and the home device, nowhere else."
for _ in $(seq 1 100); do
    "$hearth" --data-dir phone --json status 2>/dev/null | grep -q '"device":"home","in_sync":true' && break
    sleep 0.1
done
"$hearth" --data-dir phone status
echo "read on the home device:"
"$hearth" --data-dir home store read location
"$hearth" --data-dir home store ls

say "From the phone, the developer runs 'places'. It runs on home (a holder of the track); only the result comes back."
"$hearth" --data-dir phone --json run places.wasm --cap places.cap --key developer.key \
    --params '{"grid_m": 250, "top": 3}' > places-run.json
"$hearth" --data-dir phone run places.wasm --cap places.cap --key developer.key --params '{"grid_m": 250, "top": 3}'

say "Anyone with the owner's public key can check the receipt offline: signed by a device of this mesh, for this result."
"$hearth" --data-dir phone receipt verify places-run.json

say "'daily-mean' gets aggregates of the home device's load, never a single reading; approved, then run from the phone."
cp "$OLDPWD/examples/manifests/daily-mean.toml" daily-mean.toml
cp "$guest/daily_mean.wasm" daily_mean.wasm
"$hearth" --data-dir home app approve daily-mean.toml --holder "$dev" --expires 7d --out daily-mean.cap --yes
"$hearth" --data-dir phone run daily_mean.wasm --cap daily-mean.cap --key developer.key --params '{"field": "load1"}'

say "What moved: the results, not the data."
result_bytes=$(sed -n 's/.*"result_bytes":\([0-9]*\).*/\1/p' places-run.json)
track=$("$hearth" --data-dir home --json store ls | sed -n 's/.*{"bytes":\([0-9]*\),[^}]*"name":"location","origin":"[a-z]*","records":\([0-9]*\).*/\2 readings, \1 bytes on disk/p')
echo "the places result is $result_bytes bytes; the track it summarised ($track) never left the phone and home"
"$hearth" --data-dir home audit --action compute.read

say "Every request was written to the tamper-evident audit log."
"$hearth" --data-dir home audit | tail -n 8

say "Stopping both nodes cleanly, then verifying the audit log's hash chain and signed checkpoints."
kill -TERM "$node_pid" "$phone_pid"
wait "$node_pid" "$phone_pid" || true
"$hearth" --data-dir home audit verify

say "Done. Mesh, keys and capabilities were in $work$( [ "$keep" = true ] && echo ' (kept)' || echo ' (removed)')."
