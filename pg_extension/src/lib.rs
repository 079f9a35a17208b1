//! pg_shapes: Electric's shape sync served from inside Postgres.
//!
//! `CREATE EXTENSION pg_shapes` installs the shape catalog and SQL API (schema
//! `shapes`). With the library preloaded, a decoder worker follows the WAL
//! through its own logical-decoding output plugin and keeps each shape's log
//! current, and snapshotter workers write initial snapshots. The sidecar serves
//! the logs over HTTP. See ARCHITECTURE.md for the data flow and invariants.
//!
//! Modules, in data-flow order: [`api`] and [`definition`] (a shape is asked
//! for and validated), [`snapshot`] (its initial rows), [`decoder`] (WAL →
//! routing → filter → log), [`encode`] (row texts → wire JSON). [`pg`] holds
//! every call into Postgres internals.

use pgrx::prelude::*;

pub mod api;
pub mod catalog;
pub mod decoder;
pub mod definition;
pub mod encode;
pub mod error;
pub mod guc;
pub mod pg;
pub mod shmem;
pub mod snapshot;
pub mod sql;

::pgrx::pg_module_magic!();

extension_sql_file!("../../sql/catalog.sql", name = "catalog", bootstrap);

extension_sql!(
    r#"
-- What the engine holds, one row per shape: for operators.
CREATE VIEW shapes.shapes AS
SELECT s.handle,
       s.table_name,
       s.where_clause,
       s.params,
       s.columns,
       s.replica,
       s.log_mode,
       CASE WHEN s.state = 'invalid' THEN 'invalid' ELSE coalesce(l.log_state, s.state) END AS state,
       coalesce(s.invalid_reason, l.reason) AS invalid_reason,
       coalesce(l.snapshot_rows, s.snapshot_rows) AS snapshot_rows,
       l.log_records,
       l.log_bytes,
       l.change_records,
       '0/0'::pg_lsn + l.last_lsn::numeric AS last_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0'::pg_lsn + st.complete_through) AS lag_bytes,
       s.created_at,
       s.ready_at
  FROM shapes.shape s
  LEFT JOIN shapes.log_stats() l ON l.handle = s.handle
 CROSS JOIN (SELECT (shapes.status() ->> 'complete_through')::numeric AS complete_through) st;

COMMENT ON VIEW shapes.shapes IS 'pg_shapes: every shape with its state, size, last LSN and how far the engine lags the WAL';
"#,
    name = "views",
    finalize
);

/// Library initialisation: settings everywhere; shared memory and workers when preloaded.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
    if pg::preloading() {
        shmem::init();
        let restart = std::time::Duration::from_secs(1);
        pg::bgworker::register("pg_shapes decoder", "pg_shapes_decoder_main", 0, restart);
        for i in 0..guc::snapshot_workers() {
            pg::bgworker::register(
                &format!("pg_shapes snapshotter {i}"),
                "pg_shapes_snapshotter_main",
                i as i64,
                restart,
            );
        }
    }
    shmem::register_commit_hook();
}
