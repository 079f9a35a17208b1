# shellcheck shell=bash
# Helpers shared by the scripts in this directory. Source it; do not run it.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sets ROOT (the repository root) and puts ~/.cargo/bin on PATH when it exists.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT

if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
    case ":$PATH:" in
        *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;;
        *) PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"; export PATH ;;
    esac
fi

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# pgrx_setting KEY: the value of `KEY = "value"` in $ROOT/pgrx.toml.
pgrx_setting() {
    local key="$1" value
    [ -f "$ROOT/pgrx.toml" ] || die "missing $ROOT/pgrx.toml (it pins the pgrx version and pg_config)"
    value="$(sed -n "s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$ROOT/pgrx.toml" | head -n 1)"
    [ -n "$value" ] || die "pgrx.toml has no line '$key = \"...\"'"
    printf '%s\n' "$value"
}

# pg_bindir: the directory holding initdb, pg_ctl, postgres and psql.
pg_bindir() {
    local pg_config
    pg_config="$(pgrx_setting pg_config)"
    [ -x "$pg_config" ] || die "$pg_config (pg_config from pgrx.toml) not found; run scripts/setup.sh"
    "$pg_config" --bindir
}

# as_root CMD...: run CMD with root rights (directly when root, else via sudo).
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 127
    fi
}

# Postgres refuses to run as root, so when we are root its clusters belong to
# and run as the `postgres` OS user; otherwise they run as the current user.
pg_run_user() {
    if is_root; then echo postgres; else id -un; fi
}

# as_pg_user CMD...: run CMD as the user that owns and runs the clusters.
as_pg_user() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
