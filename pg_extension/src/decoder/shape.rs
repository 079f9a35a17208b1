//! A shape as the decoder keeps it: its compiled filter, where its messages go
//! (the pending spill while the snapshot is unknown, then its log), and the
//! one message held back until we know whether it ends its transaction.

use std::path::{Path, PathBuf};

use shape_log::pending::PendingWriter;
use shape_log::wire::LAST_TAIL;
use shape_log::{LogError, LogState, LogWriter, RecordKind};

use crate::catalog::{SnapshotInfo, Spec};
use crate::pg::expr::{CompiledFilter, EqualityKey};

/// Where a shape's messages go.
pub enum Sink {
    /// Snapshot not yet known: candidates are spilled with their xid.
    Pending(PendingWriter),
    /// The log, appended to directly.
    Log(LogWriter),
    /// Retired; nothing is written any more.
    Closed,
}

/// A message of the current transaction not yet written.
pub struct Held {
    op: u64,
    kind: RecordKind,
    head: Vec<u8>,
    body: Vec<u8>,
}

/// A shape the decoder routes to.
pub struct Shape {
    /// Catalog id.
    pub id: i64,
    /// Handle (log directory name).
    pub handle: String,
    /// The spec.
    pub spec: Spec,
    /// Index of its projection in the engine's interned list.
    pub projection: usize,
    /// Compiled WHERE (None: every row).
    pub filter: Option<CompiledFilter>,
    /// Hash-routable conjunct.
    pub eq_key: Option<EqualityKey>,
    /// Message destination.
    pub sink: Sink,
    /// While set, the slot may not be confirmed past this LSN: the shape's
    /// messages since then are not yet durable in its log.
    pub confirm_bound: Option<u64>,
    /// Snapshot whose transactions are already in the initial rows.
    pub snapshot: Option<SnapshotInfo>,
    /// The snapshot filter applies to transactions committing at or before this LSN.
    pub filter_until: u64,
    held: Option<Held>,
    /// Written to in the current transaction.
    pub touched: bool,
}

/// The spill file of a shape.
pub fn pending_path(storage: &Path, id: i64) -> PathBuf {
    storage.join("pending").join(format!("{id}.pending"))
}

impl Shape {
    /// A shape with its filter compiled, before any routing.
    pub fn new(
        id: i64,
        handle: String,
        spec: Spec,
        projection: usize,
        filter: Option<CompiledFilter>,
        eq_key: Option<EqualityKey>,
        sink: Sink,
    ) -> Shape {
        Shape {
            id,
            handle,
            spec,
            projection,
            filter,
            eq_key,
            sink,
            confirm_bound: None,
            snapshot: None,
            filter_until: 0,
            held: None,
            touched: false,
        }
    }

    /// True when transaction `(xid, commit_lsn)` must not reach this shape:
    /// already in its log (replay after a restart) or in its initial snapshot.
    pub fn skips(&self, xid: u32, commit_lsn: u64) -> bool {
        if let Sink::Log(w) = &self.sink {
            if commit_lsn <= w.last_tx() {
                return true;
            }
        }
        match &self.snapshot {
            Some(s) if commit_lsn <= self.filter_until => s.contains(xid),
            _ => false,
        }
    }

    /// Queues a message; the previously queued one is written as not-last.
    pub fn emit(
        &mut self,
        xid: u32,
        tx: u64,
        op: u64,
        kind: RecordKind,
        head: &[u8],
        body: &[u8],
    ) -> Result<(), LogError> {
        self.touched = true;
        let next = Held { op, kind, head: head.to_vec(), body: body.to_vec() };
        match self.held.replace(next) {
            Some(prev) => self.write(xid, tx, prev, false),
            None => Ok(()),
        }
    }

    /// Ends the transaction for this shape: writes the held message as last and
    /// publishes the transaction in the log.
    pub fn commit(&mut self, xid: u32, tx: u64) -> Result<bool, LogError> {
        self.touched = false;
        if let Some(h) = self.held.take() {
            self.write(xid, tx, h, true)?;
        }
        Ok(match &mut self.sink {
            Sink::Log(w) if w.has_uncommitted() => {
                w.commit(Some(tx));
                true
            }
            _ => false,
        })
    }

    /// Drops a transaction's unwritten messages (after an error).
    pub fn abandon_transaction(&mut self) {
        self.touched = false;
        self.held = None;
        if let Sink::Log(w) = &mut self.sink {
            w.rollback();
        }
    }

    fn write(&mut self, xid: u32, tx: u64, h: Held, last: bool) -> Result<(), LogError> {
        let tail: &[u8] = if last { LAST_TAIL } else { b"" };
        match &mut self.sink {
            Sink::Log(w) => w.append_change(tx, h.op, h.kind, last, &[&h.head, tail, &h.body]),
            Sink::Pending(p) => p.append(xid, tx, h.op, h.kind, last, &[&h.head, tail, &h.body]),
            Sink::Closed => Ok(()),
        }
    }

    /// Takes the log over from the snapshotter: appends the held-back
    /// transactions the snapshot does not contain, then marks the log live.
    pub fn go_live(&mut self, storage: &Path, snapshot: SnapshotInfo, at_lsn: u64) -> Result<(), String> {
        let (w, recovery) = LogWriter::open(&storage.join(&self.handle)).map_err(|e| e.to_string())?;
        if recovery.snapshot_damaged {
            return Err("the initial snapshot in the log is damaged".into());
        }
        let previous = std::mem::replace(&mut self.sink, Sink::Log(w));
        let Sink::Log(w) = &mut self.sink else { unreachable!("just set") };
        if let Sink::Pending(p) = previous {
            let mut r = p.into_reader().map_err(|e| e.to_string())?;
            while let Some(e) = r.next_entry().map_err(|e| e.to_string())? {
                if snapshot.contains(e.xid) || e.tx <= w.last_tx() {
                    continue;
                }
                w.append_change(e.tx, e.op, e.kind, e.last, &[&e.message]).map_err(|e| e.to_string())?;
                if e.last {
                    w.commit(Some(e.tx));
                }
            }
            r.discard();
        }
        w.set_live(at_lsn);
        self.snapshot = Some(snapshot);
        self.filter_until = at_lsn;
        Ok(())
    }

    /// Moves the shape's log to a terminal state (if it has one).
    pub fn mark_gone(&mut self, storage: &Path, state: LogState, reason: &str) {
        let r = match &mut self.sink {
            Sink::Log(w) => w.set_gone(state, reason),
            Sink::Pending(_) | Sink::Closed => {
                match shape_log::writer::mark_gone(&storage.join(&self.handle), state, reason) {
                    Err(e) if e.is_not_found() => Ok(()),
                    r => r,
                }
            }
        };
        if let Err(e) = r {
            pgrx::warning!("pg_shapes: could not mark shape {} {}: {e}", self.handle, state.as_str());
        }
    }
}
