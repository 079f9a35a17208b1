#!/usr/bin/env bash
# Idempotent installer for everything pg_shapes needs to build, run and test.
#
#   scripts/setup.sh [system|node|all]
#
#   system (default)  Debian packages (PostgreSQL 15 server, client and headers,
#                     libclang), cargo-pgrx at the version pinned in pgrx.toml,
#                     and `cargo pgrx init` for that Postgres.
#   node              Node dependencies of tests/node (npm ci / npm install).
#   all               both.
#
# Each step checks first and only does work when something is missing, so a
# second run takes well under a second.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEBIAN_PACKAGES=(postgresql-15 postgresql-client-15 postgresql-server-dev-15 libclang-dev clang)

deb_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

setup_debian_packages() {
    command -v dpkg-query >/dev/null 2>&1 \
        || die "dpkg-query not found: this script expects Debian or Ubuntu; install by hand: ${DEBIAN_PACKAGES[*]}"
    local missing=() pkg
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "Debian packages already installed: ${DEBIAN_PACKAGES[*]}"
        return
    fi
    say "installing Debian packages ${missing[*]}"
    if ! is_root && ! command -v sudo >/dev/null 2>&1; then
        die "not root and sudo not found; install by hand as root: apt-get install -y ${missing[*]}"
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || warn "apt-get update failed; trying the install with the package lists already present"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" || true
    local still=()
    for pkg in "${missing[@]}"; do
        deb_installed "$pkg" || still+=("$pkg")
    done
    if [ "${#still[@]}" -gt 0 ]; then
        die "could not install Debian package ${still[*]} (apt-get failed); install it by hand: apt-get install -y ${still[*]}"
    fi
    say "installed Debian packages ${missing[*]}"
}

setup_rust() {
    command -v cargo >/dev/null 2>&1 \
        || die "cargo not found; install Rust with rustup (https://rustup.rs) and make sure ~/.cargo/bin is on PATH"
}

setup_cargo_pgrx() {
    local want have
    want="$(pgrx_setting version)"
    have="$(cargo pgrx --version 2>/dev/null || true)"
    if [ "$have" = "cargo-pgrx $want" ]; then
        say "cargo-pgrx $want already installed"
        return
    fi
    if [ -n "$have" ]; then
        say "replacing ${have} with cargo-pgrx $want (cargo install, takes about 5 minutes)"
    else
        say "installing cargo-pgrx $want (cargo install, takes about 5 minutes)"
    fi
    cargo install cargo-pgrx --version "$want" --locked --force \
        || die "could not install cargo-pgrx $want (cargo install failed); install it by hand: cargo install cargo-pgrx --version $want --locked"
    have="$(cargo pgrx --version 2>/dev/null || true)"
    [ "$have" = "cargo-pgrx $want" ] \
        || die "cargo-pgrx $want was installed but \`cargo pgrx --version\` prints '${have}'; is another cargo-pgrx earlier on PATH?"
    say "installed cargo-pgrx $want"
}

setup_pgrx_init() {
    local pg_version pg_config config
    pg_version="$(pgrx_setting pg_version)"
    pg_config="$(pgrx_setting pg_config)"
    config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
    [ -x "$pg_config" ] \
        || die "$pg_config not found (pg_config from pgrx.toml); install it by hand: apt-get install -y postgresql-server-dev-15"
    if [ -f "$config" ] && grep -Eq "^[[:space:]]*${pg_version}[[:space:]]*=[[:space:]]*\"$pg_config\"" "$config"; then
        say "pgrx already initialised for $pg_version ($pg_config)"
        return
    fi
    say "running cargo pgrx init --$pg_version $pg_config"
    cargo pgrx init "--$pg_version" "$pg_config" \
        || die "cargo pgrx init --$pg_version $pg_config failed; run it by hand to see why"
}

setup_node() {
    local dir="$ROOT/tests/node"
    if [ ! -f "$dir/package.json" ]; then
        say "no tests/node/package.json: no Node test dependencies to install"
        return
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        die "node and npm not found; install Node.js 20 or later (Debian: apt-get install -y nodejs npm)"
    fi
    local stamp="$dir/node_modules/.pg_shapes_deps" want
    want="$(node_inputs_hash "$dir")"
    if [ -d "$dir/node_modules" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        say "Node test dependencies up to date (tests/node/node_modules)"
        return
    fi
    if [ -f "$dir/package-lock.json" ]; then
        say "installing Node test dependencies (npm ci in tests/node)"
        (cd "$dir" && npm ci --no-audit --no-fund) \
            || die "npm ci failed in tests/node; run it by hand there to see why"
    else
        say "installing Node test dependencies (npm install in tests/node; no package-lock.json yet)"
        (cd "$dir" && npm install --no-audit --no-fund) \
            || die "npm install failed in tests/node; run it by hand there to see why"
    fi
    # npm install may just have written package-lock.json: hash after it.
    node_inputs_hash "$dir" >"$stamp"
}

node_inputs_hash() {
    local dir="$1" f
    {
        node --version
        for f in package.json package-lock.json; do
            if [ -f "$dir/$f" ]; then echo "$f"; sha256sum <"$dir/$f"; fi
        done
    } | sha256sum | cut -d' ' -f1
}

mode="${1:-system}"
case "$mode" in
    system)
        setup_debian_packages; setup_rust; setup_cargo_pgrx; setup_pgrx_init ;;
    node)
        setup_node ;;
    all)
        setup_debian_packages; setup_rust; setup_cargo_pgrx; setup_pgrx_init; setup_node ;;
    -h|--help)
        sed -n '2,13p' "$0"; exit 0 ;;
    *)
        die "unknown mode '$mode' (expected system, node or all)" ;;
esac
