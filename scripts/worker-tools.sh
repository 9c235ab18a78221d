#!/usr/bin/env bash
# Installs the tools that build and run the Cloudflare Worker (crates/switchyard-worker) into a
# fixed cache directory, skipping every tool that is already there:
#   - the wasm32-unknown-unknown target (rustup),
#   - wasm-bindgen-cli, at the version of the `wasm-bindgen` crate in Cargo.lock,
#   - worker-build, at the version of the `worker` crate in Cargo.lock,
#   - esbuild and wrangler (4.86.0, the newest that installs on Node 20) from npm.
# Nothing is downloaded at build time afterwards: source the printed environment (or run
# `eval "$(scripts/worker-tools.sh --env)"`) so that worker-build finds WASM_BINDGEN_BIN and
# ESBUILD_BIN and never fetches its own copies.
#
# Usage: scripts/worker-tools.sh [--env]
# Cache:  ${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}/worker-tools
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}"
TOOLS="$CACHE/worker-tools"
WRANGLER_VERSION="4.86.0"
ESBUILD_VERSION="0.28.2"

# The version of a package in Cargo.lock (the first one listed, if several).
lock_version() {
    awk -v name="$1" '
        $0 == "name = \"" name "\"" { found = 1; next }
        found && /^version = / { gsub(/"/, "", $3); print $3; exit }
    ' "$ROOT/Cargo.lock"
}

WASM_BINDGEN_VERSION="$(lock_version wasm-bindgen)"
WORKER_VERSION="$(lock_version worker)"
if [[ -z "$WASM_BINDGEN_VERSION" || -z "$WORKER_VERSION" ]]; then
    echo "worker-tools: Cargo.lock names no wasm-bindgen or worker crate" >&2
    exit 1
fi

print_env() {
    cat <<EOF
export PATH="$TOOLS/bin:$TOOLS/node/node_modules/.bin:\$PATH"
export WASM_BINDGEN_BIN="$TOOLS/bin/wasm-bindgen"
export ESBUILD_BIN="$TOOLS/node/node_modules/.bin/esbuild"
export WRANGLER_SEND_METRICS=false
export CLOUDFLARE_CF_FETCH_ENABLED=false
EOF
}

if [[ "${1:-}" == "--env" ]]; then
    print_env
    exit 0
fi

mkdir -p "$TOOLS/bin" "$TOOLS/node"
log() { echo "worker-tools: $*" >&2; }

# rustup target: needed for `cargo build --target wasm32-unknown-unknown`.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi

# cargo install with a version check through a stamp file, so that a bump in Cargo.lock
# reinstalls. `cargo install` builds in a temporary directory of its own.
install_crate() { # crate version binary [extra cargo args...]
    local crate="$1" version="$2" binary="$3"
    shift 3
    local stamp="$TOOLS/bin/.$crate.version"
    if [[ -x "$TOOLS/bin/$binary" && "$(cat "$stamp" 2>/dev/null)" == "$version" ]]; then
        log "$crate $version present"
        return 0
    fi
    log "installing $crate $version (takes minutes)"
    nice -n 10 cargo install "$crate" --version "=$version" --root "$TOOLS" --force "$@"
    echo "$version" >"$stamp"
}

# wasm-bindgen-cli must equal the wasm-bindgen crate; it installs without --locked.
install_crate wasm-bindgen-cli "$WASM_BINDGEN_VERSION" wasm-bindgen
install_crate worker-build "$WORKER_VERSION" worker-build --locked

# npm packages into one prefix; esbuild and wrangler ship their binaries as registry packages.
npm_stamp="$TOOLS/node/.versions"
npm_want="wrangler@$WRANGLER_VERSION esbuild@$ESBUILD_VERSION"
if [[ -x "$TOOLS/node/node_modules/.bin/wrangler" && -x "$TOOLS/node/node_modules/.bin/esbuild" \
    && "$(cat "$npm_stamp" 2>/dev/null)" == "$npm_want" ]]; then
    log "$npm_want present"
else
    log "installing $npm_want from npm"
    [[ -f "$TOOLS/node/package.json" ]] || echo '{"private":true}' >"$TOOLS/node/package.json"
    # shellcheck disable=SC2086
    nice -n 10 npm install --prefix "$TOOLS/node" --no-audit --no-fund --loglevel=error $npm_want
    echo "$npm_want" >"$npm_stamp"
fi

log "tools ready in $TOOLS"
print_env
