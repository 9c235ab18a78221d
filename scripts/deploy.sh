#!/usr/bin/env bash
# Deploys Switchyard, one of three ways:
#
#   scripts/deploy.sh worker [wrangler args...]
#       The Cloudflare Worker (crates/switchyard-worker) with `wrangler deploy`, after
#       installing the toolchain (scripts/worker-tools.sh, cached). Needs a Cloudflare login
#       (`npx wrangler login`, or CLOUDFLARE_API_TOKEN), the KV and D1 ids in
#       crates/switchyard-worker/wrangler.toml, and the secrets put with
#       `wrangler secret put` (see README, "Deploying the Worker").
#
#   scripts/deploy.sh native [config.toml] [env-file]
#       The native binary as a systemd service on this machine (run as root): builds
#       `switchyard` in release, installs it to /usr/local/bin, the config to
#       /etc/switchyard/switchyard.toml, the secrets file to /etc/switchyard/env (mode 0600),
#       and deploy/switchyard.service; then enables and (re)starts it.
#
#   scripts/deploy.sh container [tag]
#       Builds the image of deploy/Dockerfile with docker or podman (whichever is present).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:-}"
shift || true

die() {
    echo "deploy: $*" >&2
    exit 1
}

case "$target" in
worker)
    "$ROOT/scripts/worker-tools.sh" >/dev/null
    eval "$("$ROOT/scripts/worker-tools.sh" --env)"
    cd "$ROOT/crates/switchyard-worker"
    if grep -q '00000000000000000000000000000000\|00000000-0000-0000-0000-000000000000' wrangler.toml; then
        die "wrangler.toml still has placeholder KV/D1 ids: run 'wrangler kv namespace create CACHE' and 'wrangler d1 create switchyard' and put their ids in crates/switchyard-worker/wrangler.toml"
    fi
    # wrangler runs the [build] command (worker-build --release) before uploading.
    wrangler deploy "$@"
    ;;
native)
    config="${1:-switchyard.toml}"
    env_file="${2:-}"
    [[ $EUID -eq 0 ]] || die "the native deploy installs a systemd service: run it as root"
    [[ -f "$config" ]] || die "no config file $config (pass its path as the first argument)"
    command -v systemctl >/dev/null || die "systemctl not found: this deploy needs systemd"
    (cd "$ROOT" && cargo build --release --locked -p switchyard --bin switchyard)
    bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard"
    "$bin" config check "$config"
    id -u switchyard >/dev/null 2>&1 || useradd --system --home /var/lib/switchyard --shell /usr/sbin/nologin switchyard
    install -m 0755 "$bin" /usr/local/bin/switchyard
    install -d -m 0755 /etc/switchyard
    install -m 0644 "$config" /etc/switchyard/switchyard.toml
    if [[ -n "$env_file" ]]; then
        install -m 0600 "$env_file" /etc/switchyard/env
    elif [[ ! -f /etc/switchyard/env ]]; then
        install -m 0600 /dev/null /etc/switchyard/env
        echo "deploy: created an empty /etc/switchyard/env: put SWITCHYARD_MASTER_KEY and the provider API keys there" >&2
    fi
    install -m 0644 "$ROOT/deploy/switchyard.service" /etc/systemd/system/switchyard.service
    systemctl daemon-reload
    systemctl enable switchyard.service
    systemctl restart switchyard.service
    systemctl --no-pager status switchyard.service | head -5
    ;;
container)
    tag="${1:-switchyard:latest}"
    runtime="$(command -v docker || command -v podman || true)"
    [[ -n "$runtime" ]] || die "neither docker nor podman is installed"
    "$runtime" build -f "$ROOT/deploy/Dockerfile" -t "$tag" "$ROOT"
    ;;
*)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
