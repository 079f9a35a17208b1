#!/usr/bin/env bash
# Build and install the pg_shapes extension into the Postgres named by
# pgrx.toml's pg_config, but only when something changed.
#
#   scripts/install_extension.sh [--force]
#
# The stamp file target/.pg_shapes_installed records a hash of the inputs
# (every file under pg_extension/, shape_log/ and sql/, plus Cargo.toml,
# Cargo.lock and pgrx.toml) and the size and mtime of the installed
# pg_shapes.so and pg_shapes.control. When both still match, nothing is built.
# The installed-file check also catches another checkout having installed its
# own build over ours.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

force=0
case "${1:-}" in
    "") ;;
    -f|--force) force=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (expected --force)" ;;
esac

pg_config="$(pgrx_setting pg_config)"
[ -x "$pg_config" ] || die "$pg_config (pg_config from pgrx.toml) not found; run scripts/setup.sh"
pkglibdir="$("$pg_config" --pkglibdir)"
extdir="$("$pg_config" --sharedir)/extension"
installed_so="$pkglibdir/pg_shapes.so"
installed_control="$extdir/pg_shapes.control"

target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
stamp="$target_dir/.pg_shapes_installed"

inputs_hash() {
    (
        cd "$ROOT"
        {
            find pg_extension shape_log sql -type d \( -name target -o -name .git \) -prune \
                -o -type f -print 2>/dev/null
            for f in Cargo.toml Cargo.lock pgrx.toml; do
                if [ -f "$f" ]; then echo "$f"; fi
            done
        } | LC_ALL=C sort | xargs -r -d '\n' sha256sum --
        echo "pg_config=$pg_config"
    ) | sha256sum | cut -d' ' -f1
}

installed_state() {
    local f
    for f in "$installed_so" "$installed_control"; do
        if [ -f "$f" ]; then
            stat -c '%n %s %Y' "$f"
        else
            echo "$f missing"
        fi
    done
}

want_hash="$(inputs_hash)"
if [ "$force" -eq 0 ] && [ -f "$stamp" ] && [ -f "$installed_so" ] && [ -f "$installed_control" ] \
    && [ "$(cat "$stamp")" = "$(printf '%s\n%s' "$want_hash" "$(installed_state)")" ]; then
    say "pg_shapes extension up to date"
    exit 0
fi

command -v cargo >/dev/null 2>&1 || die "cargo not found; run scripts/setup.sh"
want_pgrx="$(pgrx_setting version)"
[ "$(cargo pgrx --version 2>/dev/null || true)" = "cargo-pgrx $want_pgrx" ] \
    || die "cargo-pgrx $want_pgrx not installed; run scripts/setup.sh"

if [ ! -f "$installed_so" ] || [ ! -f "$installed_control" ]; then
    reason="not installed in $pkglibdir"
elif [ ! -f "$stamp" ]; then
    reason="no install stamp in $target_dir"
elif [ "$force" -eq 1 ]; then
    reason="--force"
else
    reason="sources or installed files changed"
fi
say "building and installing the pg_shapes extension ($reason)"

sudo_flag=()
if ! is_root && { [ ! -w "$pkglibdir" ] || [ ! -w "$extdir" ]; }; then
    command -v sudo >/dev/null 2>&1 \
        || die "$pkglibdir or $extdir is not writable and sudo is not available; run this script as root"
    sudo_flag=(--sudo)
fi

(cd "$ROOT/pg_extension" && cargo pgrx install --release --pg-config "$pg_config" "${sudo_flag[@]}") \
    || die "cargo pgrx install failed (see the output above)"

[ -f "$installed_so" ] || die "cargo pgrx install finished but $installed_so does not exist"
[ -f "$installed_control" ] || die "cargo pgrx install finished but $installed_control does not exist"

mkdir -p "$target_dir"
printf '%s\n%s' "$want_hash" "$(installed_state)" >"$stamp"
say "installed pg_shapes into $pkglibdir and $extdir"
