//! Read-only access to a shape log, safe to share between many concurrent requests.
//!
//! A reader sees exactly the records the writer has published: it loads the
//! committed count with acquire ordering and never looks past it. Message bytes
//! are handed out as zero-copy [`Bytes`] slices of the map.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

use crate::error::{LogError, Result};
use crate::layout::*;
use crate::offset::LogOffset;
use crate::writer::{DATA_FILE, INDEX_FILE};

/// A mapping of both files of a log, at some length.
pub struct LogView {
    index: Mmap,
    data: Mmap,
}

/// The published extent of a log at one moment, within what a view maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Published records.
    pub records: u64,
    /// Published data bytes.
    pub bytes: u64,
}

/// Everything the header says about a log, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStatus {
    /// Lifecycle state.
    pub state: LogState,
    /// Why the log is invalid or failed (empty otherwise).
    pub reason: String,
    /// Published records.
    pub committed_records: u64,
    /// Published data bytes.
    pub committed_bytes: u64,
    /// Commit LSN of the last live transaction (0 if none).
    pub last_tx: u64,
    /// Rows in the initial snapshot.
    pub snapshot_rows: u64,
    /// Records in the snapshot including `snapshot-end` (0 until it is complete).
    pub snapshot_records: u64,
    /// Live change records.
    pub change_records: u64,
    /// LSN from which the worker took the log over (0 before).
    pub live_from_lsn: u64,
    /// Records known to be on stable storage.
    pub durable_records: u64,
    /// Chunk size the writer cuts at.
    pub chunk_bytes: u64,
    /// When the log was created (Unix milliseconds).
    pub created_ms: u64,
    /// The catalog id of the shape.
    pub shape_id: u64,
    /// The handle recorded at creation.
    pub handle: String,
}

impl LogView {
    fn header(&self) -> Header {
        // SAFETY: a view is only built after checking the index maps a whole header page,
        // and the header lives as long as `self.index`.
        unsafe { Header::new(self.index.as_ptr()) }
    }

    fn mapped_records(&self) -> u64 {
        ((self.index.len() - HEADER_BYTES) / RECORD_BYTES) as u64
    }

    /// Loads the published extent (acquire), or `None` if this view maps less of it.
    fn committed_if_covered(&self) -> Option<Committed> {
        let h = self.header();
        let records = h.committed_records().load(Ordering::Acquire);
        let bytes = h.committed_data().load(Ordering::Acquire);
        (records <= self.mapped_records() && bytes <= self.data.len() as u64).then_some(Committed { records, bytes })
    }

    /// The state and counters in the header.
    pub fn status(&self) -> LogStatus {
        let h = self.header();
        // State first: a reader that sees a terminal state must not trust counts read before it.
        let state = LogState::from_u32(h.state().load(Ordering::Acquire));
        LogStatus {
            state,
            reason: if state.is_gone() { h.reason() } else { String::new() },
            committed_records: h.committed_records().load(Ordering::Acquire),
            committed_bytes: h.committed_data().load(Ordering::Acquire),
            last_tx: h.last_tx().load(Ordering::Acquire),
            snapshot_rows: h.snapshot_rows().load(Ordering::Acquire),
            snapshot_records: h.snapshot_records().load(Ordering::Acquire),
            change_records: h.change_records().load(Ordering::Acquire),
            live_from_lsn: h.live_from_lsn().load(Ordering::Acquire),
            durable_records: h.durable_records().load(Ordering::Acquire),
            chunk_bytes: h.chunk_bytes(),
            created_ms: h.created_ms(),
            shape_id: h.shape_id(),
            handle: h.handle(),
        }
    }

    /// Lifecycle state alone (cheaper than [`status`](Self::status)).
    pub fn state(&self) -> LogState {
        LogState::from_u32(self.header().state().load(Ordering::Acquire))
    }

    /// The `i`th record; `i` must be below a `Committed::records` of this view.
    pub fn record(&self, i: u64) -> Record {
        let off = HEADER_BYTES + i as usize * RECORD_BYTES;
        Record::decode(&self.index[off..off + RECORD_BYTES])
    }

    /// The message bytes of a published record.
    pub fn message(&self, r: &Record) -> &[u8] {
        &self.data[r.pos as usize..(r.pos + u64::from(r.len)) as usize]
    }

    /// Index of the first record strictly after `offset`, among the first `n`.
    pub fn find_after(&self, offset: LogOffset, n: u64) -> u64 {
        let (mut lo, mut hi) = (0u64, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = self.record(mid);
            if offset.precedes_record(r.tx, r.op) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// The messages of records `from..to` as one JSON-array body fragment:
    /// `msg,msg,…,msg` without the trailing separator, sharing the map.
    pub fn messages_bytes(self: &Arc<Self>, from: u64, to: u64) -> Bytes {
        if from >= to {
            return Bytes::new();
        }
        let start = self.record(from).pos as usize;
        let last = self.record(to - 1);
        let end = (last.pos + u64::from(last.len)) as usize;
        Bytes::from_owner(DataSlice { view: Arc::clone(self), start, end })
    }

    /// One message as shared bytes (used for server-sent events).
    pub fn message_bytes(self: &Arc<Self>, i: u64) -> Bytes {
        let r = self.record(i);
        let start = r.pos as usize;
        Bytes::from_owner(DataSlice { view: Arc::clone(self), start, end: start + r.len as usize })
    }
}

/// Keeps a view alive for as long as bytes sliced from it are in flight.
struct DataSlice {
    view: Arc<LogView>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for DataSlice {
    fn as_ref(&self) -> &[u8] {
        &self.view.data[self.start..self.end]
    }
}

/// A log opened for reading; cheap to share (`Send + Sync`).
pub struct LogReader {
    dir: PathBuf,
    view: RwLock<Arc<LogView>>,
}

fn map_ro(path: &Path) -> Result<Mmap> {
    let f = File::open(path).map_err(|e| LogError::io(path, e))?;
    let len = f.metadata().map_err(|e| LogError::io(path, e))?.len();
    // SAFETY: the writer only appends past the published extent, and readers never read
    // beyond it, so the bytes a reader looks at do not change while it looks.
    unsafe { MmapOptions::new().len(len.max(1) as usize).map(&f) }.map_err(|e| LogError::io(path, e))
}

fn map_view(dir: &Path) -> Result<LogView> {
    let index_path = dir.join(INDEX_FILE);
    let index = map_ro(&index_path)?;
    if index.len() < HEADER_BYTES {
        return Err(LogError::BadHeader { path: index_path, version: FORMAT_VERSION });
    }
    let data = map_ro(&dir.join(DATA_FILE))?;
    let view = LogView { index, data };
    if !view.header().magic_ok() {
        return Err(LogError::BadHeader { path: index_path, version: FORMAT_VERSION });
    }
    Ok(view)
}

impl LogReader {
    /// Opens the log in `dir`.
    pub fn open(dir: &Path) -> Result<LogReader> {
        Ok(LogReader { dir: dir.to_path_buf(), view: RwLock::new(Arc::new(map_view(dir)?)) })
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A view mapping at least the published extent, and that extent.
    ///
    /// Remaps when the writer has grown the files past the current maps.
    pub fn current(&self) -> Result<(Arc<LogView>, Committed)> {
        let view = Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()));
        if let Some(c) = view.committed_if_covered() {
            return Ok((view, c));
        }
        let fresh = Arc::new(map_view(&self.dir)?);
        let committed = fresh.committed_if_covered().unwrap_or_else(|| {
            // The writer published between our stat and our load; serve what is mapped,
            // the next call maps the rest.
            let records = fresh.mapped_records().min(fresh.header().committed_records().load(Ordering::Acquire));
            let bytes = if records == 0 { 0 } else { fresh.record(records - 1).end() };
            Committed { records, bytes }
        });
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fresh);
        Ok((fresh, committed))
    }

    /// The lifecycle state alone, without allocating.
    pub fn state(&self) -> LogState {
        self.view.read().unwrap_or_else(|p| p.into_inner()).state()
    }

    /// The header fields at this moment.
    pub fn status(&self) -> LogStatus {
        self.view.read().unwrap_or_else(|p| p.into_inner()).status()
    }
}

/// Positions of chunk starts, learnt incrementally from published records.
///
/// Chunk boundaries are decided by the writer and stored in the records, so every
/// reader (and every sidecar process) cuts non-live responses at the same places.
#[derive(Debug, Default, Clone)]
pub struct ChunkIndex {
    scanned: u64,
    starts: Vec<u64>,
}

impl ChunkIndex {
    /// Learns the chunk starts among records `scanned..n`.
    pub fn update(&mut self, view: &LogView, n: u64) {
        for i in self.scanned..n {
            if view.record(i).has(FLAG_CHUNK_START) {
                self.starts.push(i);
            }
        }
        self.scanned = self.scanned.max(n);
    }

    /// End (exclusive) of the chunk holding record `from`: the next chunk start,
    /// or `n` if the chunk is still open. Call [`update`](Self::update) with `n` first.
    pub fn chunk_end(&self, from: u64, n: u64) -> u64 {
        let i = self.starts.partition_point(|&s| s <= from);
        self.starts.get(i).copied().filter(|&s| s <= n).unwrap_or(n)
    }

    /// True when the chunk holding record `from` is closed (a later chunk has started).
    pub fn chunk_closed(&self, from: u64) -> bool {
        let i = self.starts.partition_point(|&s| s <= from);
        i < self.starts.len()
    }
}
