#!/usr/bin/env bash
# Builds the release binaries and runs the load harness, passing every argument through.
#
#   scripts/load.sh                      # concurrency 1,32,256: direct vs via the gateway
#   scripts/load.sh --direct-only        # the mock alone (builds only switchyard-testkit)
#   scripts/load.sh --stream             # SSE, also reports time to first byte
#   scripts/load.sh --concurrency 1,64 --duration 10 --json load.json
#   scripts/load.sh --chaos              # 3 providers, alpha fails then recovers under load
#   scripts/load.sh --chaos --chaos-fault reset|hang|refuse --chaos-strategy weighted
#   scripts/load.sh --help               # every flag
#
# The harness starts switchyard-mock and `switchyard serve` on 127.0.0.1, prints a markdown
# table and the target checks to stdout (progress to stderr), and exits 0 even when a target
# is missed; non-zero means the run itself could not be carried out. Children are killed on
# exit, error, Ctrl-C and SIGTERM. Figures from this machine are noisy: compare runs made
# back to back, and prefer the interleaved direct/gateway pairs of one run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

packages=(-p switchyard -p switchyard-testkit)
for argument in "$@"; do
  # The mock-only run must not need the gateway to build.
  if [[ "$argument" == "--direct-only" ]]; then
    packages=(-p switchyard-testkit)
  fi
done

cargo build --release --quiet "${packages[@]}" >&2

target_dir="${CARGO_TARGET_DIR:-$root/target}"
# The gateway keeps its analytics (SQLite) in a fresh directory per run, removed on exit.
if [[ -z ${SWITCHYARD_DATA_DIR:-} ]]; then
  SWITCHYARD_DATA_DIR="$(mktemp -d -t switchyard-load-XXXXXX)"
  export SWITCHYARD_DATA_DIR
  trap 'rm -rf "$SWITCHYARD_DATA_DIR"' EXIT
  "$target_dir/release/switchyard-load" "$@"
  exit $?
fi
exec "$target_dir/release/switchyard-load" "$@"
