//! The snapshotter: background workers that write each new shape's initial
//! snapshot into its log.
//!
//! A shape's catalog row is committed first; the decoder starts routing
//! changes to it when it decodes that commit. Any snapshot taken afterwards is
//! therefore covered: transactions it does not see are routed to the shape, and
//! those it does see are filtered out by the decoder using the snapshot's
//! xmin/xmax/in-progress list, which the snapshotter publishes by setting the
//! row to `ready` (DESIGN.md §3.2). Several shapes claimed together share one
//! snapshot and one commit.

use std::time::{Duration, Instant};

use pgrx::prelude::*;
use shape_log::{wire, Doorbell, LogState, LogWriter, RecordKind};

use crate::catalog::{SnapshotInfo, Spec};
use crate::encode::Projection;
use crate::pg::dest::{stream_query, SlotRow};
use crate::pg::text::OutputFn;
use crate::pg::xact::{
    current_memory_context, try_subtransaction, with_latest_snapshot, worker_transaction, Isolation, MemoryContext,
};
use crate::pg::{self, bgworker};
use crate::{catalog, guc, shmem};

/// Shapes claimed per transaction: they share one snapshot.
const BATCH: i64 = 32;
/// Rows between publications of a growing snapshot (readers serve closed chunks).
const PUBLISH_EVERY_ROWS: u64 = 2000;

/// Background worker entry point (one per `pg_shapes.snapshot_workers`).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_shapes_snapshotter_main(arg: pg_sys::Datum) {
    let index = arg.value().min(shmem::MAX_SNAPSHOTTERS - 1);
    bgworker::start(&guc::database());
    pg::apply_worker_settings();
    let shared = shmem::shared().expect("workers only run when preloaded");
    shared.register_snapshotter(index);
    let storage = guc::storage_dir();
    let bell =
        Doorbell::open_rw(&storage).unwrap_or_else(|e| error!("pg_shapes snapshotter cannot open its doorbell: {e}"));
    log!("pg_shapes snapshotter {index} started (storage {})", storage.display());
    loop {
        bgworker::reload_config_if_requested();
        bgworker::set_status("idle");
        let installed = worker_transaction(Isolation::ReadCommitted, catalog::extension_installed);
        if installed {
            while snapshot_batch(&storage, &bell) > 0 {
                pg::check_for_interrupts();
            }
        }
        // Woken by the decoder when it decodes a new shape; the timeout covers restarts.
        bgworker::wait(Duration::from_secs(if installed { 1 } else { 5 }));
    }
}

struct Claimed {
    id: i64,
    handle: String,
    spec: Result<Spec, String>,
}

enum Outcome {
    Ready { rows: u64 },
    Failed { reason: String },
}

/// Claims up to [`BATCH`] shapes, snapshots them under one snapshot, records the
/// outcome. Returns how many were claimed.
fn snapshot_batch(storage: &std::path::Path, bell: &Doorbell) -> usize {
    worker_transaction(Isolation::ReadCommitted, || {
        // Look before locking: claiming rows assigns a transaction id (and costs a commit
        // record), which an idle poll every second should not.
        if !crate::sql::select_one::<bool>("SELECT EXISTS (SELECT 1 FROM shapes.shape WHERE state = 'creating')", &[])
            .unwrap_or(false)
        {
            return 0;
        }
        let claimed: Vec<Claimed> = Spi::connect_mut(|client| {
            client
                .update(
                    "SELECT id, handle, spec FROM shapes.shape WHERE state = 'creating' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                    None,
                    &[BATCH.into()],
                )
                .map(|t| {
                    t.map(|r| Claimed {
                        id: r.get(1).ok().flatten().unwrap_or_default(),
                        handle: r.get(2).ok().flatten().unwrap_or_default(),
                        spec: serde_json::from_str(&r.get::<String>(3).ok().flatten().unwrap_or_default()).map_err(|e| e.to_string()),
                    })
                    .collect()
                })
                .unwrap_or_else(|e| error!("pg_shapes snapshotter could not claim work: {e}"))
        });
        if claimed.is_empty() {
            return 0;
        }
        let started = Instant::now();
        // A snapshot taken now, after the claim, sees every claimed shape's catalog row
        // as committed, so the decoder already routes to all of them (see module docs).
        let (snap, outcomes) = with_latest_snapshot(|| {
            let snap = current_snapshot();
            let outcomes: Vec<Outcome> = claimed.iter().map(|c| snapshot_one(storage, bell, c, &snap)).collect();
            (snap, outcomes)
        });
        let snap_json = serde_json::to_string(&snap).expect("snapshot info serialises");
        Spi::connect_mut(|client| {
            for (c, o) in claimed.iter().zip(&outcomes) {
                let r = match o {
                    Outcome::Ready { rows } => client.update(
                        "UPDATE shapes.shape SET state = 'ready', snapshot = $2::jsonb, snapshot_rows = $3, ready_at = now() WHERE id = $1",
                        None,
                        &[c.id.into(), snap_json.as_str().into(), (*rows as i64).into()],
                    ),
                    Outcome::Failed { reason } => client.update(
                        "UPDATE shapes.shape SET state = 'invalid', invalid_reason = $2, invalidated_at = now() WHERE id = $1",
                        None,
                        &[c.id.into(), reason.as_str().into()],
                    ),
                };
                r.unwrap_or_else(|e| error!("pg_shapes snapshotter could not record shape {}: {e}", c.handle));
            }
        });
        let rows: u64 = outcomes.iter().map(|o| if let Outcome::Ready { rows } = o { *rows } else { 0 }).sum();
        log!("pg_shapes: snapshotted {} shape(s), {rows} row(s), in {:?}", claimed.len(), started.elapsed());
        claimed.len()
    })
}

/// `pg_current_snapshot()` of the active snapshot, as the catalog stores it.
fn current_snapshot() -> SnapshotInfo {
    let mut info = SnapshotInfo { xmin: String::new(), xmax: String::new(), xip: Vec::new() };
    let cxt = current_memory_context();
    Spi::connect(|_| {
        stream_query(
            "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text,
                    coalesce((SELECT string_agg(x::text, ',' ORDER BY x) FROM pg_snapshot_xip(s) x), '')
               FROM pg_current_snapshot() s",
            |row| {
                let texts: Vec<String> = row
                    .types
                    .iter()
                    .zip(row.values)
                    .map(|(&t, &d)| String::from_utf8_lossy(&OutputFn::new(t, cxt).to_vec(d)).into_owned())
                    .collect();
                info.xmin = texts[0].clone();
                info.xmax = texts[1].clone();
                info.xip = texts[2].split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
            },
        );
    });
    info
}

fn snapshot_one(storage: &std::path::Path, bell: &Doorbell, c: &Claimed, snap: &SnapshotInfo) -> Outcome {
    let spec = match &c.spec {
        Ok(s) => s.clone(),
        Err(e) => return fail(storage, c, format!("internal: unreadable spec: {e}")),
    };
    let dir = storage.join(&c.handle);
    if dir.exists() {
        // A previous attempt died half-way; clients may have seen part of it, so this
        // handle cannot continue with a different snapshot.
        return fail(
            storage,
            c,
            "internal: a previous snapshot attempt was interrupted; the shape must be recreated".to_string(),
        );
    }
    bgworker::set_status(&format!("snapshot of {} for shape {}", spec.qualified_table(), c.handle));
    let (handle, id) = (c.handle.clone(), c.id);
    let snap = snap.clone();
    let result = try_subtransaction(move || write_snapshot(&dir, id as u64, &handle, &spec, &snap, bell));
    match result {
        Ok(Ok(rows)) => Outcome::Ready { rows },
        Ok(Err(e)) => fail(storage, c, format!("internal: {e}")),
        Err(e) => {
            // Data exceptions (class 22: division by zero, invalid casts, …) come from
            // evaluating the shape's own WHERE on some row: the client's fault, a 400.
            let category = if sqlstate_class(e.code) == "22" { "where" } else { "internal" };
            fail(storage, c, format!("{category}: {}", e.message))
        }
    }
}

fn sqlstate_class(code: pgrx::PgSqlErrorCode) -> String {
    let n = code as i32;
    // SQLSTATEs are packed six bits per character (MAKE_SQLSTATE); the first two give the class.
    let ch = |shift: i32| (((n >> shift) & 0x3f) as u8 + b'0') as char;
    [ch(0), ch(6)].iter().collect()
}

/// Writes the snapshot rows and `snapshot-end`, syncs, and returns the row count.
fn write_snapshot(
    dir: &std::path::Path,
    id: u64,
    handle: &str,
    spec: &Spec,
    snap: &SnapshotInfo,
    bell: &Doorbell,
) -> Result<u64, shape_log::LogError> {
    let mut w = LogWriter::create(dir, id, handle, spec.chunk_bytes)?;
    bell.ring(0);
    let mut rows = 0u64;
    if !spec.changes_only {
        let mut encoder = RowEncoder::new(spec);
        let mut msg = Vec::new();
        let mut error = None;
        Spi::connect(|_| {
            stream_query(&spec.snapshot_query(), |row| {
                if error.is_some() {
                    return;
                }
                msg.clear();
                encoder.encode(row, b"", &mut msg);
                if let Err(e) = w.append_snapshot_row(RecordKind::Insert, &[&msg]) {
                    error = Some(e);
                    return;
                }
                rows += 1;
                if rows % PUBLISH_EVERY_ROWS == 0 {
                    w.commit(None);
                    bell.ring(0);
                }
                pg::check_for_interrupts();
            });
        });
        if let Some(e) = error {
            return Err(e);
        }
    }
    let xip: Vec<u64> = snap.xip.iter().filter_map(|x| x.parse().ok()).collect();
    let end = wire::snapshot_end(snap.xmin.parse().unwrap_or(0), snap.xmax.parse().unwrap_or(0), &xip);
    w.finish_snapshot(rows, &end)?;
    w.sync()?;
    shape_log::writer::fsync_dir(dir)?;
    bell.ring(0);
    Ok(rows)
}

/// Turns result rows of a shape's query into snapshot-row messages, in constant
/// memory however many rows there are. Used by snapshots and subset queries.
pub struct RowEncoder {
    projection: Projection,
    outs: Vec<OutputFn>,
    texts: Vec<Option<Vec<u8>>>,
    key: Vec<u8>,
    // Output functions cache state (fn_extra) in the context they are bound to, so
    // they get one that lives as long as the encoder; rows get one reset per row.
    row_cxt: MemoryContext,
    fn_cxt: MemoryContext,
}

impl RowEncoder {
    /// An encoder for rows of `spec.snapshot_query()` (the projected columns, in order).
    pub fn new(spec: &Spec) -> RowEncoder {
        RowEncoder {
            projection: Projection::of(spec),
            outs: Vec::new(),
            texts: Vec::new(),
            key: Vec::new(),
            row_cxt: MemoryContext::new(c"pg_shapes row", current_memory_context()),
            fn_cxt: MemoryContext::new(c"pg_shapes output functions", current_memory_context()),
        }
    }

    /// Appends the insert message of one row; `extra_headers` goes verbatim into its headers.
    pub fn encode(&mut self, row: &SlotRow<'_>, extra_headers: &[u8], out: &mut Vec<u8>) {
        if self.outs.is_empty() {
            self.outs = row.types.iter().map(|&t| OutputFn::new(t, self.fn_cxt.raw())).collect();
        }
        let (texts, outs) = (&mut self.texts, &self.outs);
        self.row_cxt.switch_to(|| {
            texts.clear();
            texts.extend(row.values.iter().zip(row.nulls).zip(outs).map(|((&d, &n), o)| (!n).then(|| o.to_vec(d))));
        });
        self.row_cxt.reset();
        let t: Vec<Option<&[u8]>> = self.texts.iter().map(|t| t.as_deref()).collect();
        self.projection.snapshot_row(&t, extra_headers, &mut self.key, out);
    }
}

/// Records a failed snapshot in the shape's log (creating one if needed) so that
/// waiting readers learn why, and returns the outcome for the catalog.
fn fail(storage: &std::path::Path, c: &Claimed, reason: String) -> Outcome {
    warning!("pg_shapes: snapshot of shape {} failed: {reason}", c.handle);
    let dir = storage.join(&c.handle);
    let marked = match shape_log::writer::mark_gone(&dir, LogState::Failed, &reason) {
        Ok(()) => Ok(()),
        Err(_) => LogWriter::create(&dir, c.id as u64, &c.handle, 4096)
            .and_then(|mut w| w.set_gone(LogState::Failed, &reason)),
    };
    if let Err(e) = marked {
        warning!("pg_shapes: could not record the failure of shape {} in its log: {e}", c.handle);
    }
    Outcome::Failed { reason }
}
