#!/usr/bin/env bash
# End-to-end test of the Cloudflare Worker build: installs the Worker toolchain (cached, see
# scripts/worker-tools.sh), lints the Worker's wasm32 code, builds the mock provider and the
# Worker, and runs
# tests/worker/*.test.mjs under `node --test`, which serves the Worker with
# `wrangler dev --local` (workerd) against two mock providers on loopback.
#
# Usage: scripts/worker-tests.sh
# Env:   SWITCHYARD_CACHE (tools cache), CARGO_TARGET_DIR (default: target/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
started=$(date +%s)

"$ROOT/scripts/worker-tools.sh" >/dev/null
eval "$("$ROOT/scripts/worker-tools.sh" --env)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
tools_done=$(date +%s)

# The Worker's wasm-only code (src/edge/) is invisible to the host's clippy: lint it here.
echo "worker-tests: clippy on the Worker for wasm32" >&2
nice -n 10 cargo clippy --quiet -p switchyard-worker --target wasm32-unknown-unknown -- -D warnings
echo "worker-tests: building the mock provider" >&2
nice -n 10 cargo build --quiet -p switchyard-testkit --bin switchyard-mock
echo "worker-tests: building the Worker (worker-build --dev)" >&2
(cd "$ROOT/crates/switchyard-worker" && nice -n 10 worker-build --dev >&2)
built=$(date +%s)

export SWITCHYARD_MOCK_BIN="$CARGO_TARGET_DIR/debug/switchyard-mock"
export WORKER_DIR="$ROOT/crates/switchyard-worker"
WRANGLER_BIN="$(command -v wrangler)"
export WRANGLER_BIN
export WORKER_TEST_LOG="$CARGO_TARGET_DIR/worker-e2e.log"
status=0
node --test --test-concurrency=1 "$ROOT"/tests/worker/*.test.mjs || status=$?
if [[ $status -ne 0 && -f "$WORKER_TEST_LOG" ]]; then
    echo "worker-tests: the last lines of wrangler's and the mocks' output ($WORKER_TEST_LOG):" >&2
    tail -n 60 "$WORKER_TEST_LOG" >&2
fi
finished=$(date +%s)
echo "worker-tests: tools $((tools_done - started))s, build $((built - tools_done))s, tests $((finished - built))s" >&2
exit "$status"
