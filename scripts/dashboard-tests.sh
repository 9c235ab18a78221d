#!/usr/bin/env bash
# Runs the dashboard's browser test (tests/dashboard/): headless Chromium, driven by
# playwright-core under `node --test`, against the gateway binary running `switchyard demo`.
#
#   scripts/dashboard-tests.sh [--debug|--release]
#
# playwright-core is installed at a fixed cache path (from tests/dashboard/package-lock.json,
# only when the lock file changes); it downloads no browser: the test drives the system's
# Chromium. Screenshots at desktop and phone width go to the artifacts directory.
#
# Environment:
#   SWITCHYARD_CACHE     cache root (default ~/.cache/switchyard); node_modules under dashboard-node/
#   SWITCHYARD_BIN_DIR   directory with a prebuilt `switchyard`: no build
#   CHROMIUM             the browser (default: chromium on the PATH, then /usr/bin/chromium)
#   DASHBOARD_ARTIFACTS  where screenshots go (default: the target directory's dashboard-artifacts/)
#   CARGO_TARGET_DIR     honoured when locating the built binary
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=debug
for arg in "$@"; do
    case "$arg" in
        --debug) profile=debug ;;
        --release) profile=release ;;
        -h | --help)
            sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "dashboard-tests: unknown argument $arg" >&2
            exit 2
            ;;
    esac
done

log() { printf 'dashboard-tests: %s\n' "$*" >&2; }

# --- the browser and node ---------------------------------------------------------------------
chromium=${CHROMIUM:-$(command -v chromium || echo /usr/bin/chromium)}
if [[ ! -x $chromium ]]; then
    log "no Chromium at $chromium (install Debian's package chromium, or set CHROMIUM)"
    exit 2
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "node and npm are needed"
    exit 2
fi

cache=${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}
modules_root=$cache/dashboard-node
lock=$repo/tests/dashboard/package-lock.json
stamp=$modules_root/.lock.sha256
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" || ! -d $modules_root/node_modules/playwright-core ]]; then
    log "installing playwright-core into $modules_root"
    rm -rf "$modules_root"
    mkdir -p "$modules_root"
    cp "$repo/tests/dashboard/package.json" "$lock" "$modules_root/"
    (cd "$modules_root" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund)
    echo "$want" >"$stamp"
fi

# --- the binary -------------------------------------------------------------------------------
target=${CARGO_TARGET_DIR:-$repo/target}
if [[ -n ${SWITCHYARD_BIN_DIR:-} ]]; then
    bin_dir=$SWITCHYARD_BIN_DIR
else
    build_flags=()
    [[ $profile == release ]] && build_flags+=(--release)
    log "building the $profile binary"
    (cd "$repo" && cargo build "${build_flags[@]}" -p switchyard --bin switchyard)
    bin_dir=$target/$profile
fi
if [[ ! -x $bin_dir/switchyard ]]; then
    log "$bin_dir/switchyard is missing or not executable"
    exit 2
fi

export SWITCHYARD_BIN
SWITCHYARD_BIN=$(cd "$bin_dir" && pwd)/switchyard
export SWITCHYARD_NODE_MODULES=$modules_root/node_modules
export CHROMIUM=$chromium
export DASHBOARD_ARTIFACTS=${DASHBOARD_ARTIFACTS:-$target/dashboard-artifacts}
log "screenshots go to $DASHBOARD_ARTIFACTS"
cd "$repo/tests/dashboard"
exec node --test --test-concurrency=1 dashboard.test.cjs
