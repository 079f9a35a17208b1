#!/usr/bin/env bash
# Idempotent installer for everything pg_shapes needs to build, run and test.
#
#   scripts/setup.sh [system|node|bench|all]
#
#   system (default)  Debian packages (PostgreSQL 15 server, client and headers,
#                     libclang), cargo-pgrx at the version pinned in pgrx.toml,
#                     and `cargo pgrx init` for that Postgres.
#   node              Node dependencies of tests/node (npm ci / npm install).
#   bench             system, plus what `make bench` measures against: nginx
#                     (nginx-light) and wrk, and perf (linux-perf) for --perf
#                     profiles (optional: only a warning when it cannot be had).
#   all               system and node.
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

# apt_install PKG...: apt-get update + install (as root), without failing;
# the callers check afterwards what is installed.
apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || warn "apt-get update failed; trying the install with the package lists already present"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" || true
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
    apt_install "${missing[@]}"
    local still=()
    for pkg in "${missing[@]}"; do
        deb_installed "$pkg" || still+=("$pkg")
    done
    if [ "${#still[@]}" -gt 0 ]; then
        die "could not install Debian package ${still[*]} (apt-get failed); install it by hand: apt-get install -y ${still[*]}"
    fi
    say "installed Debian packages ${missing[*]}"
}

# The benchmark tools are checked by what the benchmarks run, not by package
# name: any nginx flavour (nginx-light, nginx, nginx-full) serves a file, and
# perf may come from outside Debian. nginx is looked for in /usr/sbin too,
# which is not on a non-root PATH.
have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }
have_wrk() { command -v wrk >/dev/null 2>&1; }
# Debian's /usr/bin/perf is a wrapper that fails without a perf for the kernel series.
have_perf() { perf --version >/dev/null 2>&1; }

# Installing nginx on a machine with an init system also starts the stock
# nginx service (port 80); the benchmarks do not use it, they run their own
# nginx on a free loopback port.
setup_bench_tools() {
    local missing=()
    have_nginx || missing+=(nginx-light)
    have_wrk || missing+=(wrk)
    if [ "${#missing[@]}" -eq 0 ]; then
        say "benchmark tools already installed: nginx, wrk"
    else
        command -v dpkg-query >/dev/null 2>&1 \
            || die "dpkg-query not found: this script expects Debian or Ubuntu; install by hand: ${missing[*]}"
        if ! is_root && ! command -v sudo >/dev/null 2>&1; then
            die "not root and sudo not found; install by hand as root: apt-get install -y ${missing[*]}"
        fi
        say "installing benchmark tools ${missing[*]}"
        apt_install "${missing[@]}"
        if ! have_nginx && [[ " ${missing[*]} " == *" nginx-light "* ]]; then
            say "nginx-light did not install; trying the nginx package"
            apt_install nginx
        fi
        have_nginx || die "nginx is still missing (apt-get failed); install it by hand: apt-get install -y nginx-light (or nginx)"
        have_wrk || die "wrk is still missing (apt-get failed); install it by hand: apt-get install -y wrk"
        say "installed benchmark tools ${missing[*]}"
    fi
    if have_perf; then
        say "perf already installed (for pg_shapes_bench --perf)"
        return
    fi
    if ! is_root && ! command -v sudo >/dev/null 2>&1; then
        warn "perf not found and not root: pg_shapes_bench --perf will record nothing (apt-get install -y linux-perf)"
        return
    fi
    say "installing linux-perf (optional: profiles for pg_shapes_bench --perf)"
    apt_install linux-perf
    if have_perf; then
        say "installed linux-perf"
    else
        warn "perf is not usable after installing linux-perf (no perf for kernel $(uname -r)?); benchmarks run without --perf profiles"
    fi
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
    bench)
        setup_debian_packages; setup_rust; setup_cargo_pgrx; setup_pgrx_init; setup_bench_tools ;;
    all)
        setup_debian_packages; setup_rust; setup_cargo_pgrx; setup_pgrx_init; setup_node ;;
    -h|--help)
        sed -n '2,16p' "$0"; exit 0 ;;
    *)
        die "unknown mode '$mode' (expected system, node, bench or all)" ;;
esac
