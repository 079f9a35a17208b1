//! The engine behind the output plugin: for every decoded change it finds the
//! candidate shapes (router), decides membership of the old and new row with
//! each shape's compiled WHERE, turns updates into inserts/deletes when rows
//! move in or out, serialises each distinct message once per projection, and
//! appends it to the shapes' logs. It also follows the shape catalog in the
//! same stream, so shapes start, go live, break and disappear in commit order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use shape_log::wire::{self, ChangeHead, Operation};
use shape_log::{Doorbell, LogState, LogWriter, RecordKind, SyncPoint};

use super::durability::Syncer;
use super::router::Table;
use super::row::RowImage;
use super::shape::{pending_path, Shape, Sink};
use crate::catalog::{self, SnapshotInfo, Spec};
use crate::encode::Projection;
use crate::pg::decoding::{attribute_names, ChangeKind, DecodeSink, Decoder, Rel, Tuple, TxnInfo};
use crate::pg::expr::CompiledFilter;
use crate::pg::text::{is_unchanged_toast, OutputFn};
use crate::pg::xact::{catch_error, worker_transaction, Isolation, MemoryContext};
use crate::{guc, shmem};

/// Wake readers at most this often while busy (always when caught up).
const RING_EVERY: Duration = Duration::from_millis(1);

/// Column positions of the catalog table, learnt from its descriptor.
struct CatalogLayout {
    id: usize,
    handle: usize,
    spec: usize,
    state: usize,
    snapshot: usize,
    invalid_reason: usize,
    outs: Vec<Option<OutputFn>>,
    _cxt: MemoryContext,
}

/// What the main loop should do after idle work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Keep decoding.
    Ok,
    /// The extension was dropped: release the slot and wait for it to return.
    ExtensionGone,
    /// The catalog was recreated (extension dropped and created again): restart.
    CatalogReplaced,
}

/// The decoder's state: shapes, routing tables, and progress bookkeeping.
pub struct Engine {
    storage: PathBuf,
    catalog_relid: pg_sys::Oid,
    catalog: Option<CatalogLayout>,
    shapes: HashMap<i64, Shape>,
    tables: HashMap<pg_sys::Oid, Table>,
    projections: Vec<Projection>,
    bell: Doorbell,
    change_cxt: MemoryContext,
    op_counter: u64,
    touched: Vec<i64>,
    new_row: RowImage,
    old_row: RowImage,
    cand_new: Vec<i64>,
    cand_old: Vec<i64>,
    deferred_invalidations: Vec<(i64, String)>,
    published: bool,
    wake_snapshotters: bool,
    last_ring: Instant,
    rung_position: u64,
    last_sync: Instant,
    last_health: Instant,
    confirmed: u64,
    syncer: Syncer,
    /// What the running sync covers.
    sync_flight: Option<SyncFlight>,
}

/// A `syncfs` under way: when it succeeds, these logs are durable up to these
/// points, and so the slot may be confirmed up to `position`.
struct SyncFlight {
    position: u64,
    points: Vec<(i64, SyncPoint)>,
}

/// Which message a change produces for a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Insert,
    Delete,
    Update,
    KeyDelete,
    KeyInsert,
}

impl Engine {
    /// Loads the catalog (inside a transaction) and opens every live shape's log.
    /// `confirmed` is the slot's confirmed position: shapes whose logs are not
    /// live yet hold the slot there until they are.
    pub fn load(storage: PathBuf, bell: Doorbell, confirmed: u64) -> Engine {
        let catalog_relid =
            catalog::catalog_relid().unwrap_or_else(|| error!("pg_shapes: the catalog table shapes.shape is missing"));
        let mut e = Engine {
            storage: storage.clone(),
            catalog_relid,
            catalog: None,
            shapes: HashMap::new(),
            tables: HashMap::new(),
            projections: Vec::new(),
            bell,
            change_cxt: MemoryContext::long_lived(c"pg_shapes change"),
            op_counter: 0,
            touched: Vec::new(),
            new_row: RowImage::default(),
            old_row: RowImage::default(),
            cand_new: Vec::new(),
            cand_old: Vec::new(),
            deferred_invalidations: Vec::new(),
            published: false,
            wake_snapshotters: false,
            last_ring: Instant::now(),
            rung_position: 0,
            last_sync: Instant::now(),
            last_health: Instant::now(),
            confirmed,
            syncer: Syncer::start(storage.clone())
                .unwrap_or_else(|e| error!("pg_shapes cannot start its sync thread: {e}")),
            sync_flight: None,
        };
        // Pending spills are rebuilt by re-decoding; stale ones are useless.
        let _ = std::fs::remove_dir_all(e.storage.join("pending"));
        for row in catalog::load_live_shapes() {
            match row.state.as_str() {
                "creating" => {
                    if let Some(s) = e.new_pending_shape(row.id, row.handle, row.spec) {
                        let bound = confirmed;
                        e.insert_shape(s, Some(bound));
                        e.wake_snapshotters = true;
                    }
                }
                "ready" => e.load_ready_shape(row.id, row.handle, row.spec, row.snapshot, confirmed),
                _ => {}
            }
        }
        e.remove_orphan_logs();
        log!("pg_shapes decoder: {} shape(s) on {} table(s)", e.shapes.len(), e.tables.len());
        e
    }

    fn load_ready_shape(
        &mut self,
        id: i64,
        handle: String,
        spec: Spec,
        snapshot: Option<SnapshotInfo>,
        confirmed: u64,
    ) {
        let dir = self.storage.join(&handle);
        let (w, recovery) = match LogWriter::open(&dir) {
            Ok(x) => x,
            Err(e) => {
                self.deferred_invalidations.push((id, format!("its log could not be opened: {e}")));
                return;
            }
        };
        if recovery.dropped_records > 0 {
            log!("pg_shapes: shape {handle}: dropped {} unfinished record(s) after a crash", recovery.dropped_records);
        }
        let state = w.state();
        if state.is_gone() || recovery.snapshot_damaged {
            self.deferred_invalidations.push((
                id,
                format!("its log is {}", if recovery.snapshot_damaged { "damaged" } else { state.as_str() }),
            ));
            return;
        }
        let live_from = w.live_from_lsn();
        let Some(mut s) = self.compile(id, handle, spec, Sink::Log(w)) else { return };
        s.snapshot = snapshot;
        // Until the snapshot's completion is decoded again, every replayed transaction
        // must be checked against it.
        s.filter_until = if state == LogState::Live { live_from } else { u64::MAX };
        let bound = (state != LogState::Live).then_some(confirmed);
        self.insert_shape(s, bound);
    }

    fn new_pending_shape(&mut self, id: i64, handle: String, spec: Spec) -> Option<Shape> {
        let path = pending_path(&self.storage, id);
        match shape_log::pending::PendingWriter::create(&path) {
            Ok(p) => self.compile(id, handle, spec, Sink::Pending(p)),
            Err(e) => {
                warning!("pg_shapes: shape {handle} cannot spill pending changes: {e}");
                self.deferred_invalidations.push((id, format!("internal: {e}")));
                None
            }
        }
    }

    /// Compiles the shape's WHERE; a failure retires the shape instead of the worker.
    fn compile(&mut self, id: i64, handle: String, spec: Spec, sink: Sink) -> Option<Shape> {
        let node = spec.where_node.clone();
        let compiled = match node {
            None => Ok((None, None)),
            // No subtransaction: this also runs inside decoding callbacks, where none may
            // be started. Compiling takes no locks and pins no buffers, so catching the
            // ERROR of a broken expression (a function dropped under it) is safe.
            Some(n) => catch_error(move || {
                // SAFETY: we are inside a transaction or a decoding callback (catalog access
                // works in both), in the process that evaluates the filter.
                let (f, k) = unsafe { CompiledFilter::compile(&n) };
                (Some(f), k)
            })
            .map_err(|e| e.message),
        };
        match compiled {
            Ok((filter, key)) => {
                let projection = Projection::of(&spec);
                let pi = match self.projections.iter().position(|p| *p == projection) {
                    Some(i) => i,
                    None => {
                        self.projections.push(projection);
                        self.projections.len() - 1
                    }
                };
                Some(Shape::new(id, handle, spec, pi, filter, key, sink))
            }
            Err(e) => {
                warning!("pg_shapes: shape {handle}: its WHERE could not be compiled: {e}");
                let mut s = Shape::new(id, handle, spec, 0, None, None, sink);
                s.mark_gone(
                    &self.storage,
                    LogState::Invalidated,
                    &format!("internal: WHERE could not be compiled: {e}"),
                );
                self.deferred_invalidations.push((id, format!("WHERE could not be compiled: {e}")));
                None
            }
        }
    }

    fn insert_shape(&mut self, mut s: Shape, bound: Option<u64>) {
        s.confirm_bound = bound;
        let relid = pg_sys::Oid::from(s.spec.relid);
        self.tables.entry(relid).or_default().add(s.id, s.eq_key.as_ref());
        self.shapes.insert(s.id, s);
    }

    /// Deletes log directories that no catalog row refers to (left by a shape
    /// deleted while the worker was down, or by a dropped extension).
    fn remove_orphan_logs(&mut self) {
        let known: std::collections::HashSet<String> = Spi::connect(|client| {
            client
                .select("SELECT handle FROM shapes.shape", None, &[])
                .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
                .unwrap_or_default()
        });
        let Ok(entries) = std::fs::read_dir(&self.storage) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A staging directory left by a snapshotter that died while creating a log;
            // fresh ones may belong to a snapshotter at work right now.
            if name.starts_with(shape_log::writer::STAGING_PREFIX) {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(600));
                if stale {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
                continue;
            }
            let is_log = entry.path().join(shape_log::writer::INDEX_FILE).exists();
            if is_log && !known.contains(&name) {
                log!("pg_shapes: removing orphaned shape log {name}");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Stops routing to a shape and moves its log to a terminal state.
    fn retire(&mut self, id: i64, state: LogState, reason: &str, remove_files: bool, record_in_catalog: bool) {
        let Some(mut s) = self.shapes.remove(&id) else { return };
        let relid = pg_sys::Oid::from(s.spec.relid);
        if let Some(t) = self.tables.get_mut(&relid) {
            t.remove(id);
            if t.shapes.is_empty() {
                self.tables.remove(&relid);
            }
        }
        s.mark_gone(&self.storage, state, reason);
        if let Sink::Pending(p) = std::mem::replace(&mut s.sink, Sink::Closed) {
            p.discard();
        }
        if remove_files {
            let _ = std::fs::remove_dir_all(self.storage.join(&s.handle));
        }
        if record_in_catalog {
            self.deferred_invalidations.push((id, reason.to_string()));
        }
        self.touched.retain(|&t| t != id);
        self.published = true;
    }

    fn catalog_layout(&mut self, rel: Rel) -> &CatalogLayout {
        if self.catalog.is_none() {
            let names = attribute_names(rel.tupdesc());
            let types = crate::pg::decoding::attributes(rel.tupdesc());
            let cxt = MemoryContext::long_lived(c"pg_shapes catalog");
            let outs = types.iter().map(|&(t, _, dropped)| (!dropped).then(|| OutputFn::new(t, cxt.raw()))).collect();
            let pos = |n: &str| {
                names.iter().position(|x| x == n).unwrap_or_else(|| error!("pg_shapes: catalog column {n} is missing"))
            };
            self.catalog = Some(CatalogLayout {
                id: pos("id"),
                handle: pos("handle"),
                spec: pos("spec"),
                state: pos("state"),
                snapshot: pos("snapshot"),
                invalid_reason: pos("invalid_reason"),
                outs,
                _cxt: cxt,
            });
        }
        self.catalog.as_ref().expect("just built")
    }

    fn catalog_change(&mut self, txn: &TxnInfo, rel: Rel, kind: ChangeKind, old: Option<Tuple>, new: Option<Tuple>) {
        let event = parse_catalog_change(self.catalog_layout(rel), rel, kind, old, new);
        match event {
            Some(CatalogEvent::Created { id, handle, spec }) => {
                if self.shapes.contains_key(&id) {
                    return;
                }
                if let Some(s) = self.new_pending_shape(id, handle, spec) {
                    // Routing starts here, at the commit of the row: every later transaction
                    // reaches the shape. Until its log is live and durable, the slot may not
                    // move past this transaction, so a crash re-decodes from here.
                    self.insert_shape(s, Some(txn.commit_lsn));
                    self.wake_snapshotters = true;
                }
            }
            Some(CatalogEvent::Ready { id, snapshot }) => self.shape_ready(id, snapshot, txn.commit_lsn),
            Some(CatalogEvent::Invalid { id, reason }) => self.retire(id, LogState::Invalidated, &reason, false, false),
            Some(CatalogEvent::Deleted { id, handle }) => {
                if self.shapes.contains_key(&id) {
                    self.retire(id, LogState::Deleted, "the shape was deleted", true, false);
                } else if let Some(handle) = handle.filter(|h| !h.is_empty() && !h.contains('/') && !h.starts_with('.'))
                {
                    // Already retired (invalid): only its files are left.
                    let dir = self.storage.join(&handle);
                    let _ = shape_log::writer::mark_gone(&dir, LogState::Deleted, "the shape was deleted");
                    let _ = std::fs::remove_dir_all(dir);
                    self.published = true;
                }
            }
            None => {}
        }
    }

    fn shape_ready(&mut self, id: i64, snapshot: Option<SnapshotInfo>, at_lsn: u64) {
        let Some(s) = self.shapes.get_mut(&id) else { return };
        let Some(snapshot) = snapshot else {
            let reason = "internal: the snapshot completed without recording its snapshot".to_string();
            self.retire(id, LogState::Invalidated, &reason, false, true);
            return;
        };
        let result = match &mut s.sink {
            Sink::Pending(_) => s.go_live(&self.storage, snapshot, at_lsn),
            // Replaying after a restart: the log was loaded directly; finish the handover.
            Sink::Log(w) => {
                if w.state() != LogState::Live {
                    w.set_live(at_lsn);
                }
                s.filter_until = at_lsn;
                s.snapshot.get_or_insert(snapshot);
                Ok(())
            }
            Sink::Closed => Ok(()),
        };
        match result {
            Ok(()) => self.published = true,
            Err(e) => self.retire(
                id,
                LogState::Invalidated,
                &format!("internal: could not take the log over: {e}"),
                false,
                true,
            ),
        }
    }

    fn user_change(&mut self, txn: &TxnInfo, rel: Rel, kind: ChangeKind, old: Option<Tuple>, new: Option<Tuple>) {
        let relid = rel.oid();
        let Some(table) = self.tables.get_mut(&relid) else { return };
        table.ensure_layout(rel);
        let base_op = self.op_counter;
        self.op_counter += 2;
        let failures = self.change_cxt.switch_to(|| {
            route_change(RouteCtx {
                table,
                shapes: &mut self.shapes,
                projections: &self.projections,
                new_row: &mut self.new_row,
                old_row: &mut self.old_row,
                cand_new: &mut self.cand_new,
                cand_old: &mut self.cand_old,
                touched: &mut self.touched,
                txn,
                kind,
                old,
                new,
                tupdesc: rel.tupdesc(),
                base_op,
            })
        });
        self.change_cxt.reset();
        for (id, state, reason) in failures {
            warning!("pg_shapes: shape {id} stops: {reason}");
            self.retire(id, state, &reason, false, true);
        }
    }

    /// Runs the work that must not happen inside decoding callbacks: catalog
    /// updates, waking snapshotters, health checks.
    pub fn idle(&mut self, decoder: &Decoder) -> Health {
        // Also ring when only the position moved: clients' global_last_seen_lsn then
        // follows the WAL even while none of their shapes changes.
        if self.published || decoder.position() > self.rung_position {
            self.ring(decoder.position());
        }
        self.bell.heartbeat(crate::pg::bgworker::pid() as u32);
        self.sync_and_confirm(decoder, true);
        if self.wake_snapshotters {
            self.wake_snapshotters = false;
            if let Some(s) = shmem::shared() {
                s.wake_snapshotters();
            }
        }
        if !self.deferred_invalidations.is_empty() {
            let work = std::mem::take(&mut self.deferred_invalidations);
            worker_transaction(Isolation::ReadCommitted, || {
                for (id, reason) in &work {
                    catalog::invalidate(&[*id], reason);
                }
            });
        }
        if self.last_health.elapsed() >= Duration::from_secs(5) {
            self.last_health = Instant::now();
            let health = worker_transaction(Isolation::ReadCommitted, || {
                if !catalog::extension_installed() {
                    Health::ExtensionGone
                } else if catalog::catalog_relid() != Some(self.catalog_relid) {
                    Health::CatalogReplaced
                } else {
                    Health::Ok
                }
            });
            if health == Health::Ok {
                // Check read-only first: deleting assigns a transaction id.
                let expired = worker_transaction(Isolation::ReadCommitted, catalog::has_expired_invalid_shapes);
                if expired {
                    let n = worker_transaction(Isolation::ReadCommitted, catalog::delete_expired_invalid_shapes);
                    log!("pg_shapes: deleted {n} shape(s) invalid for longer than {:?}", guc::invalid_retention());
                }
            }
            return health;
        }
        Health::Ok
    }

    /// Bookkeeping after each decoded record while busy.
    pub fn after_step(&mut self, decoder: &Decoder) {
        if self.published && self.last_ring.elapsed() >= RING_EVERY {
            self.ring(decoder.position());
        }
        if self.syncer.in_flight() || self.last_sync.elapsed() >= guc::sync_interval() {
            self.sync_and_confirm(decoder, false);
        }
        if self.wake_snapshotters {
            self.wake_snapshotters = false;
            if let Some(s) = shmem::shared() {
                s.wake_snapshotters();
            }
        }
    }

    fn ring(&mut self, position: u64) {
        // Every transaction committed before `position` is published; no commit
        // record starts at `position - 1`, so clients may resume at `<it>_0`.
        let through = position.saturating_sub(1);
        self.bell.ring(through);
        if let Some(s) = shmem::shared() {
            s.set_progress(through, self.confirmed);
        }
        self.published = false;
        self.last_ring = Instant::now();
        self.rung_position = position;
    }

    /// True while a sync of the logs runs: the main loop then checks back soon,
    /// so that the slot is confirmed without waiting for the next commit.
    pub fn sync_in_flight(&self) -> bool {
        self.syncer.in_flight()
    }

    /// Finishes a sync that has completed (confirming the slot up to where it
    /// started), then starts the next one when the interval has passed or, with
    /// `now`, at once. Decoding goes on while a sync runs (see [`super::durability`]).
    fn sync_and_confirm(&mut self, decoder: &Decoder, now: bool) {
        if let Some(result) = self.syncer.poll() {
            let flight = self.sync_flight.take().expect("a running sync has its flight");
            match result {
                Ok(()) => {
                    for (id, point) in flight.points {
                        if let Some(Sink::Log(w)) = self.shapes.get_mut(&id).map(|s| &mut s.sink) {
                            w.mark_synced_through(point);
                        }
                    }
                    self.confirm(decoder, flight.position);
                }
                // The logs stay dirty, so the next sync covers them again.
                Err(e) => warning!("pg_shapes: could not sync shape logs: {e}; not advancing the slot"),
            }
        }
        if self.syncer.in_flight() || !(now || self.last_sync.elapsed() >= guc::sync_interval()) {
            return;
        }
        self.last_sync = Instant::now();
        let position = decoder.position();
        let points: Vec<(i64, SyncPoint)> = self
            .shapes
            .iter()
            .filter_map(|(&id, s)| match &s.sink {
                Sink::Log(w) if w.needs_sync() => Some((id, w.sync_point())),
                _ => None,
            })
            .collect();
        if points.is_empty() {
            self.confirm(decoder, position);
        } else if self.syncer.begin() {
            self.sync_flight = Some(SyncFlight { position, points });
        } else {
            warning!("pg_shapes: the sync thread is gone; not advancing the slot");
        }
    }

    /// Confirms the slot up to `position` (everything before it is durable in
    /// every log), held back by shapes whose logs are not durably live yet.
    fn confirm(&mut self, decoder: &Decoder, position: u64) {
        for s in self.shapes.values_mut() {
            if let (Some(_), Sink::Log(w)) = (s.confirm_bound, &s.sink) {
                if w.state() == LogState::Live && !w.needs_sync() {
                    s.confirm_bound = None;
                }
            }
        }
        let bound = self.shapes.values().filter_map(|s| s.confirm_bound).fold(position, u64::min);
        if bound > self.confirmed {
            decoder.confirm(bound);
            self.confirmed = bound;
        }
        if let Some(s) = shmem::shared() {
            s.set_progress(decoder.position().saturating_sub(1), self.confirmed);
        }
    }
}

/// A change of the catalog table, as the decoder needs it.
enum CatalogEvent {
    Created { id: i64, handle: String, spec: Spec },
    Ready { id: i64, snapshot: Option<SnapshotInfo> },
    Invalid { id: i64, reason: String },
    Deleted { id: i64, handle: Option<String> },
}

fn parse_catalog_change(
    layout: &CatalogLayout,
    rel: Rel,
    kind: ChangeKind,
    old: Option<Tuple>,
    new: Option<Tuple>,
) -> Option<CatalogEvent> {
    let mut row = RowImage::default();
    row.load(if kind == ChangeKind::Delete { old } else { new }, rel.tupdesc());
    if !row.present {
        return None;
    }
    let mut text = |i: usize| -> Option<String> {
        row.ensure(i, layout.outs.get(i).and_then(Option::as_ref));
        row.text(i).map(|t| String::from_utf8_lossy(t).into_owned())
    };
    let id = text(layout.id)?.parse::<i64>().ok()?;
    match kind {
        ChangeKind::Insert => {
            if text(layout.state)? != "creating" {
                return None;
            }
            let handle = text(layout.handle)?;
            match serde_json::from_str(&text(layout.spec)?) {
                Ok(spec) => Some(CatalogEvent::Created { id, handle, spec }),
                Err(e) => {
                    warning!("pg_shapes: shape {handle} has an unreadable spec: {e}");
                    None
                }
            }
        }
        // UPDATEs leave `spec` untouched, and its unchanged TOAST pointer is not
        // readable here, so only the small columns are read.
        ChangeKind::Update => match text(layout.state)?.as_str() {
            "ready" => Some(CatalogEvent::Ready {
                id,
                snapshot: text(layout.snapshot).and_then(|s| serde_json::from_str(&s).ok()),
            }),
            "invalid" => Some(CatalogEvent::Invalid {
                id,
                reason: text(layout.invalid_reason).unwrap_or_else(|| "the shape was invalidated".into()),
            }),
            _ => None,
        },
        ChangeKind::Delete => Some(CatalogEvent::Deleted { id, handle: text(layout.handle) }),
    }
}

struct RouteCtx<'a> {
    table: &'a mut Table,
    shapes: &'a mut HashMap<i64, Shape>,
    projections: &'a [Projection],
    new_row: &'a mut RowImage,
    old_row: &'a mut RowImage,
    cand_new: &'a mut Vec<i64>,
    cand_old: &'a mut Vec<i64>,
    touched: &'a mut Vec<i64>,
    txn: &'a TxnInfo,
    kind: ChangeKind,
    old: Option<Tuple>,
    new: Option<Tuple>,
    tupdesc: pg_sys::TupleDesc,
    base_op: u64,
}

type Failure = (i64, LogState, String);

/// Routes one change of a shaped table; returns the shapes that must stop.
fn route_change(c: RouteCtx<'_>) -> Vec<Failure> {
    let RouteCtx {
        table,
        shapes,
        projections,
        new_row,
        old_row,
        cand_new,
        cand_old,
        touched,
        txn,
        kind,
        old,
        new,
        tupdesc,
        base_op,
    } = c;
    let mut failures = Vec::new();
    new_row.load(new, tupdesc);
    old_row.load(old, tupdesc);
    resolve_unchanged_toast(table, new_row, old_row);

    cand_new.clear();
    cand_old.clear();
    table.candidates(new_row, cand_new);
    table.candidates(old_row, cand_old);
    cand_new.sort_unstable();
    cand_new.dedup();
    cand_old.sort_unstable();
    cand_old.dedup();
    let mut all: Vec<i64> = cand_new.iter().chain(cand_old.iter()).copied().collect();
    all.sort_unstable();
    all.dedup();
    all.retain(|id| shapes.get(id).is_some_and(|s| !s.skips(txn.xid, txn.commit_lsn)));
    if all.is_empty() {
        return failures;
    }

    // Membership of the new row, then of the old one (one slot store each).
    let mut in_new: HashMap<i64, bool> = HashMap::with_capacity(all.len());
    let mut in_old: HashMap<i64, bool> = HashMap::with_capacity(all.len());
    let slot = table.slot.as_mut().expect("layout ensured");
    for (row, cand, out) in [(&*new_row, &*cand_new, &mut in_new), (&*old_row, &*cand_old, &mut in_old)] {
        if !row.present {
            continue;
        }
        slot.store(&row.values, &row.nulls);
        for id in all.iter().filter(|id| cand.binary_search(id).is_ok()) {
            let s = &shapes[id];
            let m = match &s.filter {
                None => Ok(true),
                Some(f) => slot.matches(f),
            };
            match m {
                Ok(m) => {
                    out.insert(*id, m);
                }
                Err(e) => failures.push((
                    *id,
                    LogState::Invalidated,
                    format!("where: evaluating the WHERE of shape {} failed: {e}", s.handle),
                )),
            }
        }
        slot.reset();
    }

    let mut cache: Vec<(usize, Variant, Option<(Vec<u8>, Vec<u8>)>)> = Vec::new();
    for id in all {
        if failures.iter().any(|f| f.0 == id) {
            continue;
        }
        let (o, n) = (in_old.get(&id).copied().unwrap_or(false), in_new.get(&id).copied().unwrap_or(false));
        let shape = shapes.get_mut(&id).expect("candidate exists");
        let p = &projections[shape.projection];
        let variants: &[Variant] = match (kind, o, n) {
            (ChangeKind::Insert, _, true) => &[Variant::Insert],
            (ChangeKind::Delete, true, _) => &[Variant::Delete],
            (ChangeKind::Update, false, true) => &[Variant::Insert],
            (ChangeKind::Update, true, false) => &[Variant::Delete],
            (ChangeKind::Update, true, true) => {
                if key_changed(p, table, old_row, new_row) {
                    &[Variant::KeyDelete, Variant::KeyInsert]
                } else {
                    &[Variant::Update]
                }
            }
            _ => &[],
        };
        for &v in variants {
            let built = match cache.iter().find(|(pi, cv, _)| *pi == shape.projection && *cv == v) {
                Some((_, _, b)) => b.clone(),
                None => {
                    let b = build_message(p, table, old_row, new_row, txn, base_op, v);
                    cache.push((shape.projection, v, b.clone()));
                    b
                }
            };
            let Some((head, body)) = built else { continue };
            let (op, rk) = match v {
                Variant::Insert => (base_op, RecordKind::Insert),
                Variant::Delete | Variant::KeyDelete => (base_op, RecordKind::Delete),
                Variant::Update => (base_op, RecordKind::Update),
                Variant::KeyInsert => (base_op + 1, RecordKind::Insert),
            };
            let first_touch = !shape.touched;
            match shape.emit(txn.xid, txn.commit_lsn, op, rk, &head, &body) {
                Ok(()) => {
                    if first_touch {
                        touched.push(id);
                    }
                }
                Err(e) => {
                    failures.push((id, LogState::Invalidated, format!("internal: writing to the log failed: {e}")));
                    break;
                }
            }
        }
    }
    failures
}

/// Unchanged TOASTed values of an UPDATE arrive as on-disk pointers in the new
/// row; with REPLICA IDENTITY FULL the old row carries them in full.
fn resolve_unchanged_toast(table: &Table, new_row: &mut RowImage, old_row: &mut RowImage) {
    for i in 0..new_row.values.len().min(table.varlena.len()) {
        if !table.varlena[i] {
            continue;
        }
        if new_row.present && !new_row.nulls[i] && is_unchanged_toast(new_row.values[i]) {
            if old_row.present && !old_row.nulls[i] && !is_unchanged_toast(old_row.values[i]) {
                new_row.values[i] = old_row.values[i];
            } else {
                new_row.unknown[i] = true;
            }
        }
        if old_row.present && i < old_row.values.len() && !old_row.nulls[i] && is_unchanged_toast(old_row.values[i]) {
            old_row.unknown[i] = true;
        }
    }
}

fn ensure_cols(row: &mut RowImage, table: &Table, attnums: &[i16]) {
    if !row.present {
        return;
    }
    for &a in attnums {
        let i = a as usize - 1;
        row.ensure(i, table.outs.get(i).and_then(Option::as_ref));
    }
}

fn key_changed(p: &Projection, table: &Table, old_row: &mut RowImage, new_row: &mut RowImage) -> bool {
    ensure_cols(old_row, table, &p.key_attnums);
    ensure_cols(new_row, table, &p.key_attnums);
    p.key_attnums.iter().any(|&a| {
        let i = a as usize - 1;
        !new_row.unknown[i] && old_row.text(i) != new_row.text(i)
    })
}

fn texts<'r>(row: &'r RowImage, attnums: &[i16]) -> Vec<Option<&'r [u8]>> {
    attnums.iter().map(|&a| row.text(a as usize - 1)).collect()
}

/// Builds `(head, body)` of one message variant for one projection, or `None`
/// when the change shows nothing in this projection (an update of unselected
/// columns) or a value cannot be known.
fn build_message(
    p: &Projection,
    table: &Table,
    old_row: &mut RowImage,
    new_row: &mut RowImage,
    txn: &TxnInfo,
    base_op: u64,
    v: Variant,
) -> Option<(Vec<u8>, Vec<u8>)> {
    ensure_cols(new_row, table, &p.attnums);
    ensure_cols(old_row, table, &p.attnums);
    let key_of = |row: &RowImage| {
        let mut k = Vec::new();
        p.key(&texts(row, &p.attnums), &mut k);
        k
    };
    let unknown_in = |row: &RowImage, cols: &[usize]| cols.iter().any(|&i| row.unknown[p.attnums[i] as usize - 1]);
    let every: Vec<usize> = (0..p.attnums.len()).collect();
    let (new_key, old_key) = (new_row.present.then(|| key_of(new_row)), old_row.present.then(|| key_of(old_row)));
    let (operation, op, key_change_to, key_change_from) = match v {
        Variant::Insert => (Operation::Insert, base_op, None, None),
        Variant::KeyInsert => (Operation::Insert, base_op + 1, None, old_key.clone()),
        Variant::Delete => (Operation::Delete, base_op, None, None),
        Variant::KeyDelete => (Operation::Delete, base_op, new_key.clone(), None),
        Variant::Update => (Operation::Update, base_op, None, None),
    };
    let mut head = Vec::with_capacity(160);
    wire::push_change_head(
        &mut head,
        &ChangeHead {
            operation,
            relation: &p.relation,
            lsn: txn.commit_lsn,
            op_position: op,
            xid: txn.xid,
            key_change_to: key_change_to.as_deref(),
            key_change_from: key_change_from.as_deref(),
        },
    );
    let mut body = Vec::with_capacity(256);
    let n = p.attnums.len();
    match v {
        Variant::Insert | Variant::KeyInsert => {
            if unknown_in(new_row, &every) {
                return None;
            }
            let t = texts(new_row, &p.attnums);
            p.change_body(new_key.as_deref().unwrap_or_default(), (0..n).map(|i| (i, t[i])), None, &mut body);
        }
        Variant::Delete | Variant::KeyDelete => {
            let t = texts(old_row, &p.attnums);
            let cols: Vec<usize> = if p.full { (0..n).collect() } else { p.key_pos.clone() };
            if unknown_in(old_row, &cols) {
                return None;
            }
            p.change_body(old_key.as_deref().unwrap_or_default(), cols.iter().map(|&i| (i, t[i])), None, &mut body);
        }
        Variant::Update => {
            let (tn, to) = (texts(new_row, &p.attnums), texts(old_row, &p.attnums));
            let changed: Vec<usize> =
                (0..n).filter(|&i| !new_row.unknown[p.attnums[i] as usize - 1] && tn[i] != to[i]).collect();
            if changed.is_empty() {
                return None;
            }
            if p.full {
                if unknown_in(new_row, &every) {
                    return None;
                }
                let mut old_iter = changed.iter().map(|&i| (i, to[i]));
                p.change_body(
                    new_key.as_deref().unwrap_or_default(),
                    (0..n).map(|i| (i, tn[i])),
                    Some(&mut old_iter),
                    &mut body,
                );
            } else {
                let mut cols: Vec<usize> = p.key_pos.clone();
                cols.extend(changed.iter().filter(|i| !p.key_pos.contains(i)));
                cols.sort_unstable();
                p.change_body(
                    new_key.as_deref().unwrap_or_default(),
                    cols.iter().map(|&i| (i, tn[i])),
                    None,
                    &mut body,
                );
            }
        }
    }
    Some((head, body))
}

impl DecodeSink for std::rc::Rc<std::cell::RefCell<Engine>> {
    fn begin(&mut self, _txn: &TxnInfo) {
        let mut e = self.borrow_mut();
        e.op_counter = 0;
        e.touched.clear();
    }

    fn change(&mut self, txn: &TxnInfo, rel: Rel, kind: ChangeKind, old: Option<Tuple>, new: Option<Tuple>) {
        let mut e = self.borrow_mut();
        if rel.oid() == e.catalog_relid {
            e.catalog_change(txn, rel, kind, old, new);
        } else {
            e.user_change(txn, rel, kind, old, new);
        }
    }

    fn truncate(&mut self, _txn: &TxnInfo, relids: &[pg_sys::Oid]) {
        let mut e = self.borrow_mut();
        for relid in relids {
            let ids = e.tables.get(relid).map(|t| t.shapes.clone()).unwrap_or_default();
            for id in ids {
                let table = e.shapes.get(&id).map(|s| s.spec.qualified_table()).unwrap_or_default();
                e.retire(id, LogState::Invalidated, &format!("table {table} was truncated"), false, true);
            }
        }
    }

    fn commit(&mut self, txn: &TxnInfo) {
        let mut e = self.borrow_mut();
        let touched = std::mem::take(&mut e.touched);
        let mut failures = Vec::new();
        for id in touched {
            if let Some(s) = e.shapes.get_mut(&id) {
                match s.commit(txn.xid, txn.commit_lsn) {
                    Ok(published) => e.published |= published,
                    Err(err) => {
                        s.abandon_transaction();
                        failures.push((id, format!("internal: writing to the log failed: {err}")));
                    }
                }
            }
        }
        for (id, reason) in failures {
            e.retire(id, LogState::Invalidated, &reason, false, true);
        }
    }
}
