#!/usr/bin/env bash
# Runs every test of the repo: formatting and lints, the wasm build of the core, the Rust
# unit, golden and socket-level tests, the real-client suite (the official OpenAI Python
# SDK against the running binary), the dashboard in headless Chromium, and the Cloudflare
# Worker end to end under wrangler dev. This is the one test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "switchyard-core builds for wasm32 (no tokio, no sockets)"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
cargo check -p switchyard-core --target wasm32-unknown-unknown

step "cargo test --workspace"
cargo test --workspace

step "OpenAI SDK suite against the running binary"
cargo build -p switchyard -p switchyard-testkit --bins
SWITCHYARD_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug" scripts/sdk-tests.sh

step "the dashboard in headless Chromium"
SWITCHYARD_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug" scripts/dashboard-tests.sh

step "the Cloudflare Worker under wrangler dev (workerd)"
scripts/worker-tests.sh
