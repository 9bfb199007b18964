#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test Hearth. Idempotent: each step
# checks before it installs.
set -euo pipefail

need_cmd() { command -v "$1" >/dev/null 2>&1; }

if ! need_cmd cargo; then
    echo "setup: cargo is not installed; install Rust with rustup (https://rustup.rs) first." >&2
    exit 1
fi

if ! need_cmd cargo-nextest; then
    echo "setup: installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
