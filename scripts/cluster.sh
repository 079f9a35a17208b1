#!/usr/bin/env bash
# Manage a local PostgreSQL cluster for pg_shapes development.
#
#   scripts/cluster.sh init   DIR PORT   initdb DIR (once) with the pg_shapes settings
#   scripts/cluster.sh start  DIR PORT   start it (no-op when already running)
#   scripts/cluster.sh stop   DIR        fast shutdown (no-op when not running)
#   scripts/cluster.sh status DIR        pg_ctl status; exits 0 only when running
#   scripts/cluster.sh psql   DIR PORT [psql args...]
#
# Postgres refuses to run as root, so when invoked as root the cluster is owned
# by and runs as the `postgres` OS user; otherwise as the current user. The
# server listens on localhost:PORT and puts its Unix socket in DIR itself; the
# superuser is `postgres` with password `password` over TCP (scram-sha-256)
# and no password over the socket. The settings appended to postgresql.conf
# are in scripts/cluster.conf.in (shared with the test harness).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

BINDIR=""
bindir() {
    [ -n "$BINDIR" ] || BINDIR="$(pg_bindir)"
    printf '%s\n' "$BINDIR"
}

abs_dir() {
    [ -n "$1" ] || usage
    case "$1" in
        /*) realpath -m -- "$1" ;;
        *) realpath -m -- "$PWD/$1" ;;
    esac
}

check_port() {
    case "$1" in
        ''|*[!0-9]*) die "PORT must be a number, got '$1'" ;;
    esac
}

require_run_user() {
    if is_root && ! id postgres >/dev/null 2>&1; then
        die "no 'postgres' OS user (it comes with the postgresql-15 package); run scripts/setup.sh"
    fi
}

# The run user must be able to reach DIR. Directories inside this repository
# that it cannot search get o+x; anything else is left for the developer.
ensure_traversable() {
    local dir="$1" path="" part parts
    is_root || return 0
    as_pg_user test -x "$dir" && return 0
    IFS=/ read -ra parts <<<"$dir"
    for part in "${parts[@]}"; do
        [ -n "$part" ] || continue
        path="$path/$part"
        as_pg_user test -x "$path" && continue
        case "$path/" in
            "$ROOT"/*)
                say "chmod o+x $path (so the postgres OS user can reach the cluster directory)"
                chmod o+x "$path" ;;
            *)
                die "the postgres OS user cannot enter $path (mode $(stat -c %A "$path")), so it cannot reach $dir; use a cluster directory elsewhere or run: chmod o+x $path" ;;
        esac
    done
    as_pg_user test -x "$dir" || die "the postgres OS user still cannot reach $dir"
}

is_running() {
    [ -f "$1/PG_VERSION" ] && as_pg_user "$(bindir)/pg_ctl" -D "$1" status >/dev/null 2>&1
}

cmd_init() {
    [ $# -eq 2 ] || usage
    local dir port
    dir="$(abs_dir "$1")"; port="$2"
    check_port "$port"
    case "$dir" in *"'"*) die "cluster directory must not contain a single quote: $dir" ;; esac
    if [ -f "$dir/PG_VERSION" ]; then
        say "cluster $dir already initialised"
        return
    fi
    require_run_user
    local bin conf
    bin="$(bindir)"
    conf="$ROOT/scripts/cluster.conf.in"
    [ -f "$conf" ] || die "missing $conf"
    say "initialising Postgres cluster in $dir (port $port, run as $(pg_run_user))"
    mkdir -p "$dir"
    if is_root; then
        chown postgres:postgres "$dir"
    fi
    chmod 700 "$dir"
    ensure_traversable "$dir"

    local pwfile
    pwfile="$(mktemp)"
    printf 'password\n' >"$pwfile"
    if is_root; then chown postgres "$pwfile"; fi
    local out
    if ! out="$(as_pg_user "$bin/initdb" -D "$dir" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --pwfile="$pwfile" --encoding=UTF8 --locale=C 2>&1)"; then
        rm -f "$pwfile"
        printf '%s\n' "$out" >&2
        die "initdb failed for $dir (output above)"
    fi
    rm -f "$pwfile"

    local settings
    settings="$(cat "$conf")"
    settings="${settings//@PORT@/$port}"
    settings="${settings//@DATA_DIR@/$dir}"
    printf '\n%s\n' "$settings" >>"$dir/postgresql.conf"
    say "cluster $dir initialised"
}

cmd_start() {
    [ $# -eq 2 ] || usage
    local dir port
    dir="$(abs_dir "$1")"; port="$2"
    check_port "$port"
    [ -f "$dir/PG_VERSION" ] || die "no cluster in $dir; run: scripts/cluster.sh init $dir $port"
    require_run_user
    if is_running "$dir"; then
        say "cluster $dir already running"
        return
    fi
    say "starting Postgres cluster $dir on port $port"
    if ! as_pg_user "$(bindir)/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 -o "-p $port" start >/dev/null; then
        echo "---- last 30 lines of $dir/server.log ----" >&2
        tail -n 30 "$dir/server.log" >&2 || true
        die "could not start the cluster in $dir (log: $dir/server.log)"
    fi
    say "cluster $dir running (socket dir $dir, port $port)"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local dir
    dir="$(abs_dir "$1")"
    if ! is_running "$dir"; then
        say "cluster $dir not running"
        return
    fi
    say "stopping Postgres cluster $dir"
    as_pg_user "$(bindir)/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null \
        || die "could not stop the cluster in $dir (log: $dir/server.log)"
    say "cluster $dir stopped"
}

cmd_status() {
    [ $# -eq 1 ] || usage
    local dir
    dir="$(abs_dir "$1")"
    [ -f "$dir/PG_VERSION" ] || { echo "no cluster in $dir"; exit 4; }
    as_pg_user "$(bindir)/pg_ctl" -D "$dir" status
}

cmd_psql() {
    [ $# -ge 2 ] || usage
    local dir port
    dir="$(abs_dir "$1")"; port="$2"; shift 2
    check_port "$port"
    exec "$(bindir)/psql" -h "$dir" -p "$port" -U postgres -d postgres "$@"
}

[ $# -ge 1 ] || usage
sub="$1"; shift
case "$sub" in
    init) cmd_init "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    psql) cmd_psql "$@" ;;
    -h|--help|help) usage ;;
    *) echo "unknown subcommand '$sub'" >&2; usage ;;
esac
