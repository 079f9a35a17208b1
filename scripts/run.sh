#!/usr/bin/env bash
# Run pg_shapes_sidecar in the foreground; `make run` builds first and then
# execs this script.
#
# With DATABASE_URL set: run the sidecar against that database, nothing else.
# Without: initialise (once) and start the local cluster RUN_PG_DIR (default
# .data/pg) on RUN_PG_PORT (default 54321), CREATE EXTENSION pg_shapes, and run
# the sidecar against it. When the sidecar ends, or on Ctrl-C / SIGTERM, the
# sidecar is stopped first and then the cluster (fast shutdown) -- unless the
# cluster was already running before this run (another `make run`, or a
# cluster started by hand), which is left running.
#
# The sidecar listens on PORT (default 3000).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/pg_shapes_sidecar"
[ -x "$bin" ] || die "$bin not found; run: make build"
export PORT="${PORT:-3000}"
export RUST_LOG="${RUST_LOG:-info}"

if [ -n "${DATABASE_URL:-}" ]; then
    say "running pg_shapes_sidecar on port $PORT against \$DATABASE_URL (no local cluster)"
    exec "$bin"
fi

pg_dir="${RUN_PG_DIR:-$ROOT/.data/pg}"
pg_port="${RUN_PG_PORT:-54321}"
cluster="$ROOT/scripts/cluster.sh"

sidecar_pid=""
started_cluster=0
# shellcheck disable=SC2317  # invoked by the traps below
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [ -n "$sidecar_pid" ] && kill -0 "$sidecar_pid" 2>/dev/null; then
        say "stopping pg_shapes_sidecar (pid $sidecar_pid)"
        kill -TERM "$sidecar_pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$sidecar_pid" 2>/dev/null && [ "$waited" -lt 100 ]; do
            sleep 0.1; waited=$((waited + 1))
        done
        if kill -0 "$sidecar_pid" 2>/dev/null; then
            warn "pg_shapes_sidecar ignored SIGTERM for 10 s; killing it"
            kill -KILL "$sidecar_pid" 2>/dev/null || true
        fi
        wait "$sidecar_pid" 2>/dev/null || true
    fi
    if [ "$started_cluster" -eq 1 ]; then
        "$cluster" stop "$pg_dir" || status=1
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

"$cluster" init "$pg_dir" "$pg_port"
if "$cluster" status "$pg_dir" >/dev/null 2>&1; then
    say "cluster $pg_dir was already running: leaving it running afterwards"
else
    started_cluster=1
    "$cluster" start "$pg_dir" "$pg_port"
fi
say "CREATE EXTENSION IF NOT EXISTS pg_shapes"
PGOPTIONS="-c client_min_messages=warning" "$cluster" psql "$pg_dir" "$pg_port" -X -q -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION IF NOT EXISTS pg_shapes'

export DATABASE_URL="postgres://postgres:password@localhost:$pg_port/postgres"
say "running pg_shapes_sidecar on http://localhost:$PORT against $DATABASE_URL (Ctrl-C stops it and the cluster)"
# In the background so that this shell can act on a signal at once (a
# foreground child would make bash wait for it first); `wait` returns early
# when a trapped signal arrives, and cleanup then stops the sidecar itself.
"$bin" &
sidecar_pid=$!
status=0
wait "$sidecar_pid" || status=$?
sidecar_pid=""
say "pg_shapes_sidecar exited with status $status"
exit "$status"
