#!/usr/bin/env bash
# The main job, as far as Hearth is built: create a mesh, make a developer key,
# review and approve a computation's manifest, delegate a narrower capability to an
# app, and show that a key that does not hold a capability is refused.
# Everything happens in a temporary directory that is removed at the end
# (pass --keep to leave it).
set -euo pipefail
cd "$(dirname "$0")/.."

keep=false
[ "${1:-}" = "--keep" ] && keep=true

scripts/setup.sh
echo "==> Building the hearth command"
cargo build --locked --quiet -p hearth-cli
hearth="$PWD/target/debug/hearth"

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
# The compute runtime is not built yet, so the demo approves a stand-in module: the
# smallest valid WebAssembly module. Approval binds whatever bytes it is given.
printf '\000asm\001\000\000\000' > places.wasm
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

say "Done. Mesh, keys and capabilities were in $work$( [ "$keep" = true ] && echo ' (kept)' || echo ' (removed)')."
