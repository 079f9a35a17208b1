//! The SQL API in schema `shapes` (see docs/sql-api.md): what the sidecar
//! calls, and what an operator can call from psql.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use shape_log::LogReader;

use crate::catalog::Spec;
use crate::definition::{self, ShapeRequest};
use crate::error::{Param, ShapeError};
use crate::pg::{self, text::OutputFn, xact::current_memory_context};
use crate::snapshot::RowEncoder;
use crate::{guc, shmem};

/// Refuses to create shapes no worker would maintain.
fn ensure_engine_available() {
    if shmem::shared().is_none() {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_shapes is not loaded through shared_preload_libraries, so no worker would keep shapes current",
            "pg_shapes",
        )
        .set_hint("add pg_shapes to shared_preload_libraries in postgresql.conf and restart Postgres")
        .report(PgLogLevel::ERROR);
    }
    if !pg::wal_level_is_logical() {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_shapes needs wal_level = logical",
            "pg_shapes",
        )
        .set_hint("set wal_level = logical in postgresql.conf and restart Postgres")
        .report(PgLogLevel::ERROR);
    }
}

/// Waits (bounded) until the decoder's replication slot exists.
///
/// A shape's catalog row must commit after the slot reached its consistent
/// point, or the decoder never sees it. This runs before the calling
/// transaction writes anything (so it holds no transaction id the slot's
/// creation would wait for) and wakes the decoder, which may be idling.
fn wait_for_slot() {
    let slot = guc::slot_name();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let exists = crate::sql::select_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database())",
            &[slot.as_str().into()],
        )
        .unwrap_or(false);
        if exists {
            return;
        }
        if std::time::Instant::now() >= deadline {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "pg_shapes is still starting: its replication slot {slot} does not exist yet; retry in a moment"
                ),
                "pg_shapes",
            )
            .set_hint(format!(
                "the pg_shapes decoder creates the slot once the extension exists in database {}; check the server log",
                guc::database()
            ))
            .report(PgLogLevel::ERROR);
        }
        if let Some(s) = shmem::shared() {
            s.wake_decoder();
        }
        pg::sleep(std::time::Duration::from_millis(50));
    }
}

/// Why an existing shape's log can no longer be served, if it cannot.
fn log_gone(handle: &str, state: &str) -> Option<String> {
    let dir = guc::storage_dir().join(handle);
    match LogReader::open(&dir) {
        Ok(r) => {
            let s = r.status();
            s.state.is_gone().then(|| if s.reason.is_empty() { format!("log {}", s.state.as_str()) } else { s.reason })
        }
        // A shape still being created has no log until its snapshot starts.
        Err(e) if e.is_not_found() && state == "creating" => None,
        Err(e) => Some(format!("its log cannot be read: {e}")),
    }
}

struct Found {
    id: i64,
    handle: String,
    state: String,
    electric_schema: String,
}

fn find_live(identity: &str) -> Option<Found> {
    Spi::connect(|client| {
        let t = client
            .select(
                "SELECT id, handle, state, electric_schema FROM shapes.shape WHERE def_key = md5($1) AND state <> 'invalid'",
                Some(1),
                &[identity.into()],
            )
            .unwrap_or_else(|e| error!("pg_shapes could not read its catalog: {e}"));
        t.into_iter().next().map(|r| Found {
            id: r.get(1).ok().flatten().unwrap_or_default(),
            handle: r.get(2).ok().flatten().unwrap_or_default(),
            state: r.get(3).ok().flatten().unwrap_or_default(),
            electric_schema: r.get(4).ok().flatten().unwrap_or_default(),
        })
    })
}

/// Makes a table ready to be shaped: full replica identity (updates must carry
/// the old row so rows can move out of shapes) and membership of the publication.
fn prepare_table(spec: &Spec, replica_identity: &str) {
    let table = spec.qualified_table();
    if replica_identity != "f" {
        // Our own ALTER must not invalidate the table's other shapes (event trigger).
        pg::with_settings(&[("pg_shapes.internal_ddl", "on")], || {
            Spi::run(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL")).unwrap_or_else(|e| {
                ErrorReport::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("could not set REPLICA IDENTITY FULL on {table}: {e}"), "pg_shapes")
                    .set_detail("shape parameter: table")
                    .set_hint("the role creating shapes must own the table (or run ALTER TABLE … REPLICA IDENTITY FULL once as its owner)")
                    .report(PgLogLevel::ERROR)
            })
        });
    }
    let in_publication = crate::sql::select_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid WHERE p.pubname = 'pg_shapes' AND r.prrelid = $1)",
        &[pg_sys::Oid::from(spec.relid).into()],
    )
    .unwrap_or(false);
    if !in_publication {
        let exists = crate::sql::select_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'pg_shapes')",
            &[],
        )
        .unwrap_or(false);
        let sql = if exists {
            format!("ALTER PUBLICATION pg_shapes ADD TABLE {table}")
        } else {
            format!("CREATE PUBLICATION pg_shapes FOR TABLE {table}")
        };
        Spi::run(&sql).unwrap_or_else(|e| error!("pg_shapes could not add {table} to publication pg_shapes: {e}"));
    }
}

/// Returns the shape for a definition, creating it (and queueing its snapshot) if needed.
#[pg_extern(volatile, parallel_unsafe)]
fn get_or_create_shape(
    table_name: &str,
    where_clause: default!(Option<&str>, "NULL"),
    params: default!(Option<Vec<Option<String>>>, "NULL"),
    columns: default!(Option<&str>, "NULL"),
    replica: default!(&str, "'default'"),
    log_mode: default!(&str, "'full'"),
    chunk_bytes: default!(Option<i32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(handle, String),
        name!(shape_id, i64),
        name!(schema_name, String),
        name!(relation_name, String),
        name!(electric_schema, String),
        name!(state, String),
        name!(storage_dir, String),
    ),
> {
    ensure_engine_available();
    let req = ShapeRequest {
        table: table_name.to_string(),
        where_clause: where_clause.map(str::to_string),
        params: params.unwrap_or_default(),
        columns: columns.map(str::to_string),
        replica: replica.to_string(),
        log_mode: log_mode.to_string(),
        chunk_bytes: chunk_bytes.map(|c| c.max(1024) as u64).unwrap_or_else(guc::chunk_bytes),
    };
    let resolved = definition::resolve(&req).unwrap_or_else(|e| e.raise());
    let storage = guc::storage_dir().to_string_lossy().into_owned();
    let row = |f: Found| {
        TableIterator::once((
            f.handle,
            f.id,
            resolved.spec.schema.clone(),
            resolved.spec.table.clone(),
            f.electric_schema,
            f.state,
            storage.clone(),
        ))
    };

    if let Some(f) = find_live(&resolved.identity) {
        match log_gone(&f.handle, &f.state) {
            None => return row(f),
            // The worker invalidated the log (TRUNCATE, lost slot, …) before the catalog
            // caught up: retire the old shape so a new one, with a new handle, replaces it.
            Some(reason) => crate::catalog::invalidate(&[f.id], &reason),
        }
    }

    wait_for_slot();
    // Serialise creators of shapes on one table: the replica identity change and the
    // publication membership are then done once, and ON CONFLICT below is only a guard.
    Spi::run_with_args(
        "SELECT pg_advisory_xact_lock(hashtext('pg_shapes'), $1::int4)",
        &[(resolved.spec.relid as i32).into()],
    )
    .unwrap_or_else(|e| error!("pg_shapes could not lock table {}: {e}", resolved.spec.qualified_table()));
    if let Some(f) = find_live(&resolved.identity) {
        return row(f);
    }
    prepare_table(&resolved.spec, &resolved.replica_identity);

    let spec_json = serde_json::to_string(&resolved.spec).expect("spec serialises");
    let params_arr: Option<Vec<Option<String>>> = (!req.params.is_empty()).then(|| req.params.clone());
    let inserted = Spi::connect_mut(|client| {
        let t = client
            .update(
                "INSERT INTO shapes.shape (handle, def_key, relid, table_name, where_source, where_clause, params, columns,
                                           replica, log_mode, electric_schema, spec)
                 VALUES (substr(md5($1), 1, 16) || '-' || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                         md5($1), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (def_key) WHERE state <> 'invalid' DO NOTHING
                 RETURNING id, handle, state, electric_schema",
                None,
                &[
                    resolved.identity.as_str().into(),
                    pg_sys::Oid::from(resolved.spec.relid).into(),
                    resolved.spec.qualified_table().into(),
                    req.where_clause.clone().into(),
                    resolved.spec.where_sql.clone().into(),
                    params_arr.into(),
                    resolved.column_names.clone().into(),
                    (if resolved.spec.replica_full { "full" } else { "default" }).into(),
                    (if resolved.spec.changes_only { "changes_only" } else { "full" }).into(),
                    resolved.electric_schema.as_str().into(),
                    spec_json.into(),
                ],
            )
            .unwrap_or_else(|e| error!("pg_shapes could not record the shape: {e}"));
        t.into_iter().next().map(|r| Found {
            id: r.get(1).ok().flatten().unwrap_or_default(),
            handle: r.get(2).ok().flatten().unwrap_or_default(),
            state: r.get(3).ok().flatten().unwrap_or_default(),
            electric_schema: r.get(4).ok().flatten().unwrap_or_default(),
        })
    });
    match inserted.or_else(|| find_live(&resolved.identity)) {
        Some(f) => row(f),
        None => error!("pg_shapes: the shape was created and removed concurrently; retry"),
    }
}

/// Deletes a shape by handle; its log is removed by the worker. True if it existed.
#[pg_extern(volatile, parallel_unsafe)]
fn delete_shape(handle: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "WITH d AS (DELETE FROM shapes.shape WHERE handle = $1 RETURNING 1) SELECT count(*) > 0 FROM d",
        &[handle.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Deletes every shape of a table; returns how many there were.
#[pg_extern(volatile, parallel_unsafe)]
fn delete_table_shapes(table_name: &str) -> i64 {
    let relid = crate::sql::select_one::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[table_name.into()])
        .unwrap_or_else(|| {
            ShapeError::with_code(
                Param::Table,
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("table \"{table_name}\" does not exist"),
            )
            .raise()
        });
    Spi::get_one_with_args::<i64>(
        "WITH d AS (DELETE FROM shapes.shape WHERE relid = $1 RETURNING 1) SELECT count(*) FROM d",
        &[relid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// Whether the decoder runs and how far the logs are complete (JSON).
#[pg_extern(volatile, parallel_safe)]
fn status() -> pgrx::Json {
    let s = shmem::shared();
    pgrx::Json(serde_json::json!({
        "worker_pid": s.and_then(|s| s.decoder_pid()),
        "complete_through": s.map(|s| s.complete_through().to_string()),
        "confirmed_lsn": s.map(|s| s.confirmed().to_string()),
        "storage_dir": guc::storage_dir().to_string_lossy(),
        "database": guc::database(),
        "slot_name": guc::slot_name(),
        "preloaded": s.is_some(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// The absolute storage directory (where the sidecar reads logs).
#[pg_extern(stable, parallel_safe)]
fn storage_dir() -> String {
    guc::storage_dir().to_string_lossy().into_owned()
}

/// Per-log header figures, for the `shapes.shapes` view.
#[pg_extern(volatile, parallel_safe)]
fn log_stats() -> TableIterator<
    'static,
    (
        name!(handle, String),
        name!(log_state, String),
        name!(reason, Option<String>),
        name!(snapshot_rows, i64),
        name!(log_records, i64),
        name!(log_bytes, i64),
        name!(change_records, i64),
        name!(last_lsn, Option<i64>),
    ),
> {
    let handles: Vec<String> = Spi::connect(|client| {
        client
            .select("SELECT handle FROM shapes.shape ORDER BY id", None, &[])
            .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
            .unwrap_or_default()
    });
    let storage = guc::storage_dir();
    let rows: Vec<_> = handles
        .into_iter()
        .filter_map(|h| {
            let r = LogReader::open(&storage.join(&h)).ok()?;
            let s = r.status();
            Some((
                h,
                s.state.as_str().to_string(),
                (!s.reason.is_empty()).then_some(s.reason),
                s.snapshot_rows as i64,
                s.committed_records as i64,
                s.committed_bytes as i64,
                s.change_records as i64,
                (s.last_tx != 0).then_some(s.last_tx as i64),
            ))
        })
        .collect();
    TableIterator::new(rows)
}

/// Runs a subset query of a shape under one snapshot and returns Electric's
/// subset object `{"metadata":…,"data":[…]}` as JSON text.
#[pg_extern(volatile, parallel_unsafe)]
fn subset(
    handle: &str,
    where_clause: default!(Option<&str>, "NULL"),
    params: default!(Option<Vec<Option<String>>>, "NULL"),
    order_by: default!(Option<&str>, "NULL"),
    lim: default!(Option<i64>, "NULL"),
    off: default!(Option<i64>, "NULL"),
) -> String {
    let spec_json = crate::sql::select_one::<String>(
        "SELECT spec FROM shapes.shape WHERE handle = $1 AND state <> 'invalid'",
        &[handle.into()],
    )
    .unwrap_or_else(|| {
        ShapeError::invalid(Param::Handle, format!("shape {handle} does not exist or is no longer valid")).raise()
    });
    let spec: Spec = serde_json::from_str(&spec_json)
        .unwrap_or_else(|e| error!("pg_shapes: shape {handle} has an unreadable spec: {e}"));
    if lim.is_some_and(|l| l <= 0) {
        ShapeError::invalid(Param::SubsetLimit, "limit must be greater than 0").raise();
    }
    if off.is_some_and(|o| o < 0) {
        ShapeError::invalid(Param::SubsetOffset, "offset must be greater than or equal to 0").raise();
    }
    if (lim.is_some() || off.is_some()) && order_by.is_none() {
        ShapeError::invalid(Param::SubsetOrderBy, "order_by is required when limit or offset is present").raise();
    }
    let rel = pg::relation::OpenRel::open(pg_sys::Oid::from(spec.relid))
        .unwrap_or_else(|| ShapeError::invalid(Param::Handle, "the shape's table was dropped").raise());
    let params = params.unwrap_or_default();
    let extra_where = where_clause.map(str::trim).filter(|w| !w.is_empty()).map(|w| {
        // SAFETY: the relation is open and we run inside the caller's transaction.
        unsafe { pg::parse::analyse_where(rel.raw(), w, &params) }
            .map_err(|e| {
                let p = if e.is_about_params() { Param::SubsetParams } else { Param::SubsetWhere };
                ShapeError::with_code(p, e.code(), e.to_string())
            })
            .unwrap_or_else(|e| e.raise())
            .sql
    });
    if extra_where.is_none() && !params.is_empty() {
        ShapeError::invalid(Param::SubsetParams, "params were given but there is no subset where clause").raise();
    }
    let order = order_by.map(|o| {
        // SAFETY: as above.
        unsafe { pg::parse::analyse_order_by(rel.raw(), o) }
            .map_err(|e| ShapeError::with_code(Param::SubsetOrderBy, e.code(), e.to_string()))
            .unwrap_or_else(|e| e.raise())
    });
    drop(rel);

    let mut sql = spec.snapshot_query();
    if let Some(w) = extra_where {
        sql.push_str(if spec.where_sql.is_some() { " AND (" } else { " WHERE (" });
        sql.push_str(&w);
        sql.push(')');
    }
    if let Some(o) = order {
        sql.push_str(" ORDER BY ");
        sql.push_str(&o);
    }
    if let Some(l) = lim {
        sql.push_str(&format!(" LIMIT {l}"));
    }
    if let Some(o) = off {
        sql.push_str(&format!(" OFFSET {o}"));
    }

    let mark: i32 = crate::sql::select_one("SELECT floor(random() * 2147483647)::int4", &[]).unwrap_or(0);
    let settings: Vec<(&str, &str)> =
        pg::DISPLAY_SETTINGS.iter().copied().chain(std::iter::once(pg::CATALOG_SEARCH_PATH)).collect();
    pg::with_settings(&settings, || {
        Spi::connect(|_| {
            // Metadata and rows are read under the same (statement) snapshot: both queries
            // run read-only, so SPI does not take a new one in between.
            let mut meta = Vec::new();
            pg::dest::stream_query(
                "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text,
                        coalesce(array_to_json(ARRAY(SELECT pg_snapshot_xip(s)::text))::text, '[]'),
                        (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint::text
                   FROM pg_current_snapshot() s",
                |row| {
                    let outs =
                        row.types.iter().map(|&t| OutputFn::new(t, current_memory_context())).collect::<Vec<_>>();
                    meta = outs
                        .iter()
                        .zip(row.values)
                        .map(|(o, &d)| String::from_utf8_lossy(&o.to_vec(d)).into_owned())
                        .collect();
                },
            );
            let (xmin, xmax, xip, lsn) = (&meta[0], &meta[1], &meta[2], &meta[3]);
            let mut out = format!(r#"{{"metadata":{{"xmin":"{xmin}","xmax":"{xmax}","xip_list":{xip},"snapshot_mark":{mark},"database_lsn":"{lsn}"}},"data":["#).into_bytes();
            let extra = format!(r#","snapshot_mark":{mark}"#).into_bytes();
            let mut encoder = RowEncoder::new(&spec);
            let mut first = true;
            pg::dest::stream_query(&sql, |row| {
                if !first {
                    out.push(b',');
                }
                first = false;
                encoder.encode(row, &extra, &mut out);
            });
            out.extend_from_slice(b"]}");
            String::from_utf8(out).expect("built from UTF-8 parts")
        })
    })
}
