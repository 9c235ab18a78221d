#!/usr/bin/env bash
# Runs the real-client suite (tests/sdk/): the official `openai` Python SDK against the gateway
# binary and the mock provider binary.
#
#   scripts/sdk-tests.sh [--debug|--release] [PYTEST ARGS...]
#
# The virtualenv lives at a fixed cache path so repeated runs reuse it; it is reinstalled only
# when tests/sdk/requirements.txt (or the Python interpreter) changes.
#
# Environment:
#   SWITCHYARD_CACHE    cache root (default ~/.cache/switchyard); the venv is its sdk-venv/
#   SWITCHYARD_BIN_DIR  directory with prebuilt `switchyard` and `switchyard-mock`: no build
#   PYTHON              interpreter to create the venv with (default python3)
#   CARGO_TARGET_DIR    honoured when locating the built binaries
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=debug
pytest_args=()
for arg in "$@"; do
    case "$arg" in
        --debug) profile=debug ;;
        --release) profile=release ;;
        -h | --help)
            sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) pytest_args+=("$arg") ;;
    esac
done

log() { printf 'sdk-tests: %s\n' "$*" >&2; }

# --- the virtualenv ---------------------------------------------------------------------------
cache=${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}
venv=$cache/sdk-venv
requirements=$repo/tests/sdk/requirements.txt
stamp=$venv/.requirements.sha256
python=${PYTHON:-python3}

if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    # Missing, or its interpreter moved away: start over.
    log "creating the virtualenv at $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
fi
# The stamp covers the requirements and the venv's interpreter version.
want=$({
    cat "$requirements"
    "$venv/bin/python" -c 'import sys; print(sys.version)'
} | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    log "installing $requirements"
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$stamp"
fi

# --- the binaries -----------------------------------------------------------------------------
if [[ -n ${SWITCHYARD_BIN_DIR:-} ]]; then
    bin_dir=$SWITCHYARD_BIN_DIR
    log "using prebuilt binaries in $bin_dir"
else
    build_flags=()
    [[ $profile == release ]] && build_flags+=(--release)
    log "building the $profile binaries"
    (cd "$repo" && cargo build "${build_flags[@]}" -p switchyard -p switchyard-testkit --bins)
    bin_dir=${CARGO_TARGET_DIR:-$repo/target}/$profile
fi
for binary in switchyard switchyard-mock; do
    if [[ ! -x $bin_dir/$binary ]]; then
        log "$bin_dir/$binary is missing or not executable"
        exit 2
    fi
done
bin_dir=$(cd "$bin_dir" && pwd)

# --- the suite --------------------------------------------------------------------------------
cd "$repo/tests/sdk"
export SWITCHYARD_BIN_DIR=$bin_dir
# No __pycache__ in the work tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -q "${pytest_args[@]}"
