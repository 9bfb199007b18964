#!/usr/bin/env bash
# The simulator at scale, before and after, in one run: builds hearth-netsim (release)
# from BASE (a git revision; default ce7cac7, the last commit before the simulator's
# memory and speed work) in a scratch worktree and from this checkout, then runs the
# city-1000 day with each, one after the other, and prints for each the events, wall
# and user time, events per second and maximum resident memory, and whether the two
# runs' data (summary.json and the CSVs) are byte-identical. With --city-10000 it then
# runs the 10,000-node day with this checkout's build. Arguments: [--city-10000] [BASE].
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

big=false
base=ce7cac7
for arg in "$@"; do
    case "$arg" in
    --city-10000) big=true ;;
    -*) echo "usage: scripts/bench-netsim.sh [--city-10000] [BASE]" >&2; exit 2 ;;
    *) base=$arg ;;
    esac
done

# GNU time reports the maximum resident set size.
if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
    else
        echo "bench-netsim: /usr/bin/time (Debian package time) is needed" >&2
        exit 1
    fi
fi

work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# The base builds in a target directory of its own (cargo would take the workspace's
# artifacts of the same crates as fresh), this checkout in the workspace's; each binary
# is copied out as soon as it is built.
git -C "$root" worktree add -q --detach "$work/base" "$base"
(cd "$work/base" && CARGO_TARGET_DIR="$root/target/bench-netsim-base" cargo build --release -q -p hearth-netsim)
cp "$root/target/bench-netsim-base/release/hearth-netsim" "$work/netsim-base"
cargo build --release --locked -q -p hearth-netsim
cp "$root/target/release/hearth-netsim" "$work/netsim-now"

run() { # label binary scenario
    local out="$work/out-$1"
    /usr/bin/time -f '%e %U %M' -o "$work/time-$1" "$2" run "$3" --out "$out" >/dev/null
    local events
    events=$(grep -o '"events": *[0-9]*' "$out/summary.json" | grep -o '[0-9]*$')
    read -r wall user rss_kb <"$work/time-$1"
    awk -v l="$1" -v e="$events" -v w="$wall" -v u="$user" -v r="$rss_kb" -v n="$4" 'BEGIN {
        printf "| %s | %d | %.1f s | %.1f s | %d | %.0f MB | %.2f MB |\n", l, e, w, u, e / u, r / 1024, r / 1024 / n }'
}

echo "| build | events | wall | user | events/s (user) | max RSS | per node |"
echo "|---|---|---|---|---|---|---|"
run "city-1000, $base" "$work/netsim-base" examples/scenarios/city-1000.toml 1002
run "city-1000, this checkout" "$work/netsim-now" examples/scenarios/city-1000.toml 1002
# The data (summary.json and the CSVs), not the plots, whose drawing may have changed.
same=true
for f in "$work/out-city-1000, $base"/*.json "$work/out-city-1000, $base"/*.csv; do
    cmp -s "$f" "$work/out-city-1000, this checkout/$(basename "$f")" || { same=false; echo "outputs: $(basename "$f") differs"; }
done
if $same; then
    echo "outputs: byte-identical (summary.json and every CSV)"
fi
if $big; then
    run "city-10000, this checkout" "$work/netsim-now" examples/scenarios/city-10000.toml 10002
fi
