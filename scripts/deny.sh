#!/usr/bin/env bash
# Checks the dependency graph with cargo-deny (deny.toml): licences, bans (duplicate
# versions are warnings), sources, and RustSec advisories. Installs cargo-deny when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deny >/dev/null 2>&1; then
    echo "deny: installing cargo-deny"
    cargo install cargo-deny --locked --quiet
fi

# cargo-deny reads the whole lockfile, other platforms' crates included, which a
# build for this one never downloads: fetch them all (from crates.io) first.
cargo fetch --locked --quiet

# The advisory database is a git repository on github.com. Where it cannot be fetched
# (a closed network), a copy fetched earlier is used; with none, the advisories are
# not checked, and this says so.
if cargo deny fetch db >/dev/null 2>&1; then
    cargo deny --locked check
elif compgen -G "$HOME/.cargo/advisory-dbs/advisory-db-*" >/dev/null; then
    echo "deny: the advisory database cannot be fetched; checking against the copy in ~/.cargo/advisory-dbs" >&2
    cargo deny --offline --locked check
else
    echo "deny: ADVISORIES NOT CHECKED: the RustSec advisory database (github.com/RustSec/advisory-db) cannot be fetched from this machine" >&2
    cargo deny --offline --locked check bans licenses sources
fi
