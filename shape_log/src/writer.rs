//! The single writer of a shape log.
//!
//! A log has exactly one writer at a time: the snapshotter while it writes the
//! initial snapshot, then the decoding worker. Appends land in the mapped files
//! but stay invisible until [`LogWriter::commit`] publishes them with a release
//! store of the committed counts, so readers only ever see whole transactions.
//! [`LogWriter::sync`] makes published records durable; recovery on
//! [`LogWriter::open`] drops anything after the last intact transaction.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{MmapMut, MmapOptions};

use crate::error::{LogError, Result};
use crate::layout::*;

/// Name of the file holding the header page and the index records.
pub const INDEX_FILE: &str = "index";
/// Name of the file holding the message bytes.
pub const DATA_FILE: &str = "data";
/// Prefix of the hidden directory a log is prepared in before it appears.
pub const STAGING_PREFIX: &str = ".creating-";

const INITIAL_DATA_BYTES: u64 = 64 * 1024;
const INITIAL_INDEX_RECORDS: u64 = 1024;
const MAX_GROWTH_STEP: u64 = 64 * 1024 * 1024;

/// What recovery found when a log was reopened after its writer stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records that were published but failed verification or ended mid-transaction.
    pub dropped_records: u64,
    /// True if the drop reached into the initial snapshot, which cannot be repaired.
    pub snapshot_damaged: bool,
}

/// How much of a log was published at some moment, for marking it durable
/// after a sync that started at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPoint {
    records: u64,
    data: u64,
}

/// Appends records to one shape log. Not `Sync`: one writer per log.
pub struct LogWriter {
    dir: PathBuf,
    index: MmapMut,
    data: MmapMut,
    /// Records appended, published or not.
    records: u64,
    /// Data bytes appended, published or not.
    data_len: u64,
    /// Published counts, mirrored from the header to avoid re-reading it.
    committed_records: u64,
    committed_data: u64,
    synced_records: u64,
    synced_data: u64,
    /// Data position where the current chunk began and how many chunks exist.
    chunk_start: u64,
    chunks: u64,
    chunk_bytes: u64,
    /// The previous record's flags, to decide where the live log starts a chunk.
    prev_flags: Option<u16>,
    pending_change_records: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn open_rw(path: &Path, create_new: bool) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if create_new {
        o.create_new(true);
    }
    o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            LogError::AlreadyExists { path: path.to_path_buf() }
        } else {
            LogError::io(path, e)
        }
    })
}

fn map_rw(file: &File, len: u64, path: &Path) -> Result<MmapMut> {
    // SAFETY: the log files are only ever modified through this writer (one per log) or
    // by truncation during recovery while no writer is mapped; readers map them read-only.
    unsafe { MmapOptions::new().len(len as usize).map_mut(file) }.map_err(|e| LogError::io(path, e))
}

fn grown(current: u64, needed: u64) -> u64 {
    let mut cap = current.max(1);
    while cap < needed {
        cap += cap.min(MAX_GROWTH_STEP);
    }
    cap
}

impl LogWriter {
    /// Creates a new, empty log in `dir` (which must not hold a log yet).
    ///
    /// The files are prepared in a hidden sibling directory and renamed into
    /// place, so a reader never finds a log whose header is not written yet.
    pub fn create(dir: &Path, shape_id: u64, handle: &str, chunk_bytes: u64) -> Result<LogWriter> {
        if dir.exists() {
            return Err(LogError::AlreadyExists { path: dir.to_path_buf() });
        }
        let parent = dir.parent().unwrap_or_else(|| Path::new("."));
        fs::create_dir_all(parent).map_err(|e| LogError::io(parent, e))?;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let staging = parent.join(format!("{STAGING_PREFIX}{name}"));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir(&staging).map_err(|e| LogError::io(&staging, e))?;
        let mut w = Self::create_in(&staging, shape_id, handle, chunk_bytes)?;
        fs::rename(&staging, dir).map_err(|e| {
            if dir.exists() {
                LogError::AlreadyExists { path: dir.to_path_buf() }
            } else {
                LogError::io(dir, e)
            }
        })?;
        fsync_dir(parent)?;
        w.dir = dir.to_path_buf();
        Ok(w)
    }

    /// A writer over mapped files with nothing appended yet (recovery fills the counts in).
    fn empty(dir: &Path, index: MmapMut, data: MmapMut, chunk_bytes: u64) -> LogWriter {
        LogWriter {
            dir: dir.to_path_buf(),
            index,
            data,
            records: 0,
            data_len: 0,
            committed_records: 0,
            committed_data: 0,
            synced_records: 0,
            synced_data: 0,
            chunk_start: 0,
            chunks: 0,
            chunk_bytes: chunk_bytes.max(1),
            prev_flags: None,
            pending_change_records: 0,
        }
    }

    fn create_in(dir: &Path, shape_id: u64, handle: &str, chunk_bytes: u64) -> Result<LogWriter> {
        let index_path = dir.join(INDEX_FILE);
        let data_path = dir.join(DATA_FILE);
        let index_file = open_rw(&index_path, true)?;
        let data_file = open_rw(&data_path, true)?;
        let index_len = (HEADER_BYTES + RECORD_BYTES * INITIAL_INDEX_RECORDS as usize) as u64;
        index_file.set_len(index_len).map_err(|e| LogError::io(&index_path, e))?;
        data_file.set_len(INITIAL_DATA_BYTES).map_err(|e| LogError::io(&data_path, e))?;
        let index = map_rw(&index_file, index_len, &index_path)?;
        let data = map_rw(&data_file, INITIAL_DATA_BYTES, &data_path)?;
        let w = LogWriter::empty(dir, index, data, chunk_bytes);
        // SAFETY: the files were just created, so no reader can have mapped them yet.
        unsafe { w.header().init(shape_id, handle, chunk_bytes.max(1), now_ms()) };
        w.header().set_state_release(LogState::Snapshotting, "");
        // Persist the empty header and the directory entry, so a crash right after
        // creation leaves a recognisable (empty) log rather than a zeroed file.
        w.index.flush_range(0, HEADER_BYTES).map_err(|e| LogError::io(&index_path, e))?;
        Ok(w)
    }

    /// Opens an existing log for appending, dropping any torn or partial tail.
    pub fn open(dir: &Path) -> Result<(LogWriter, Recovery)> {
        let index_path = dir.join(INDEX_FILE);
        let data_path = dir.join(DATA_FILE);
        let index_file = open_rw(&index_path, false)?;
        let data_file = open_rw(&data_path, false)?;
        let index_len = index_file.metadata().map_err(|e| LogError::io(&index_path, e))?.len();
        let data_len = data_file.metadata().map_err(|e| LogError::io(&data_path, e))?.len();
        if index_len < HEADER_BYTES as u64 {
            return Err(LogError::BadHeader { path: index_path, version: FORMAT_VERSION });
        }
        let index = map_rw(&index_file, index_len, &index_path)?;
        let data = map_rw(&data_file, data_len.max(1), &data_path)?;
        // SAFETY: `index` holds at least a header page and lives as long as the writer.
        let header = unsafe { Header::new(index.as_ptr()) };
        if !header.magic_ok() {
            return Err(LogError::BadHeader { path: index_path, version: FORMAT_VERSION });
        }
        let chunk_bytes = header.chunk_bytes();
        let mut w = LogWriter::empty(dir, index, data, chunk_bytes);
        let recovery = w.recover(data_len);
        Ok((w, recovery))
    }

    /// Verifies published records from the last durable point and cuts the log
    /// back to the last whole transaction that verifies.
    fn recover(&mut self, data_file_len: u64) -> Recovery {
        let h = self.header();
        let index_capacity = ((self.index.len() - HEADER_BYTES) / RECORD_BYTES) as u64;
        let claimed = h.committed_records().load(Ordering::Acquire).min(index_capacity);
        let durable = h.durable_records().load(Ordering::Acquire).min(claimed);
        let snapshot_records = h.snapshot_records().load(Ordering::Acquire);

        // Records below `durable` were synced before the header said so; trust them.
        let mut good = durable;
        let mut expected_pos = if durable == 0 { 0 } else { self.record_at(durable - 1).end() };
        while good < claimed {
            let r = self.record_at(good);
            let end = r.pos + u64::from(r.len);
            if r.pos != expected_pos || end + 1 > data_file_len || end as usize >= self.data.len() {
                break;
            }
            let bytes = &self.data[r.pos as usize..end as usize];
            if crc32fast::hash(bytes) != r.crc || self.data[end as usize] != SEPARATOR {
                break;
            }
            expected_pos = r.end();
            good += 1;
        }
        // A live transaction is whole only up to a record flagged last-in-transaction.
        let mut keep = good;
        while keep > 0 {
            let r = self.record_at(keep - 1);
            if r.has(FLAG_SNAPSHOT) || r.has(FLAG_LAST_IN_TX) {
                break;
            }
            keep -= 1;
        }
        let dropped = claimed - keep;
        let snapshot_damaged = snapshot_records > 0 && keep < snapshot_records;

        self.records = keep;
        self.data_len = if keep == 0 { 0 } else { self.record_at(keep - 1).end() };
        self.committed_records = keep;
        self.committed_data = self.data_len;
        self.synced_records = durable.min(keep);
        self.synced_data = if self.synced_records == 0 { 0 } else { self.record_at(self.synced_records - 1).end() };
        let mut last_tx = 0;
        let mut change_records = 0;
        for i in (0..keep).rev() {
            let r = self.record_at(i);
            if r.tx != 0 && last_tx == 0 {
                last_tx = r.tx;
            }
            if r.tx == 0 {
                break;
            }
            change_records += 1;
        }
        // Rebuild the chunk cursor from the last chunk start.
        self.chunks = 0;
        self.chunk_start = 0;
        for i in 0..keep {
            let r = self.record_at(i);
            if r.has(FLAG_CHUNK_START) {
                self.chunks += 1;
                self.chunk_start = r.pos;
            }
        }
        self.prev_flags = if keep == 0 { None } else { Some(self.record_at(keep - 1).flags) };

        let h = self.header();
        h.committed_data().store(self.data_len, Ordering::Release);
        h.last_tx().store(last_tx, Ordering::Release);
        h.change_records().store(change_records, Ordering::Release);
        h.committed_records().store(keep, Ordering::Release);
        h.durable_records().store(self.synced_records, Ordering::Release);
        Recovery { dropped_records: dropped, snapshot_damaged }
    }

    fn header(&self) -> Header {
        // SAFETY: the index map always holds the header page and lives as long as `self`.
        unsafe { Header::new(self.index.as_ptr()) }
    }

    fn record_at(&self, i: u64) -> Record {
        let off = HEADER_BYTES + i as usize * RECORD_BYTES;
        Record::decode(&self.index[off..off + RECORD_BYTES])
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Current lifecycle state.
    pub fn state(&self) -> LogState {
        LogState::from_u32(self.header().state().load(Ordering::Acquire))
    }

    /// Commit LSN of the last live transaction in the log (0 if none).
    pub fn last_tx(&self) -> u64 {
        self.header().last_tx().load(Ordering::Acquire)
    }

    /// The handle recorded when the log was created.
    pub fn handle(&self) -> String {
        self.header().handle()
    }

    /// Published record count.
    pub fn committed_records(&self) -> u64 {
        self.committed_records
    }

    /// Published data bytes.
    pub fn committed_bytes(&self) -> u64 {
        self.committed_data
    }

    /// True when records were appended but not yet published.
    pub fn has_uncommitted(&self) -> bool {
        self.records != self.committed_records
    }

    /// True when published records are not yet durable.
    pub fn needs_sync(&self) -> bool {
        self.synced_records != self.committed_records
    }

    fn ensure_capacity(&mut self, extra_data: u64) -> Result<()> {
        let need_data = self.data_len + extra_data;
        if need_data > MAX_DATA_BYTES {
            return Err(LogError::TooLarge { path: self.dir.join(DATA_FILE), max: MAX_DATA_BYTES });
        }
        if need_data > self.data.len() as u64 {
            let path = self.dir.join(DATA_FILE);
            let cap = grown(self.data.len() as u64, need_data);
            let f = open_rw(&path, false)?;
            f.set_len(cap).map_err(|e| LogError::io(&path, e))?;
            self.data = map_rw(&f, cap, &path)?;
        }
        let need_index = (HEADER_BYTES + (self.records as usize + 1) * RECORD_BYTES) as u64;
        if need_index > self.index.len() as u64 {
            let path = self.dir.join(INDEX_FILE);
            let cap = grown(self.index.len() as u64, need_index);
            let f = open_rw(&path, false)?;
            f.set_len(cap).map_err(|e| LogError::io(&path, e))?;
            // Readers hold their own maps of the same pages, so remapping the
            // header here does not disturb them.
            self.index = map_rw(&f, cap, &path)?;
        }
        Ok(())
    }

    fn starts_chunk(&self, tx: u64) -> bool {
        match self.prev_flags {
            None => true,
            // The live log never shares a chunk with the snapshot.
            Some(f) if f & FLAG_SNAPSHOT != 0 && tx != 0 => true,
            Some(_) => self.data_len - self.chunk_start >= self.chunk_bytes,
        }
    }

    fn append_raw(&mut self, tx: u64, op: u64, flags: u16, kind: u16, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len32 = u32::try_from(len).map_err(|_| LogError::MessageTooLarge { len })?;
        self.ensure_capacity(len as u64 + 1)?;
        let pos = self.data_len;
        let mut hasher = crc32fast::Hasher::new();
        let mut at = pos as usize;
        for p in parts {
            self.data[at..at + p.len()].copy_from_slice(p);
            hasher.update(p);
            at += p.len();
        }
        self.data[at] = SEPARATOR;
        let r = Record { tx, op, flags, kind, pos, len: len32, crc: hasher.finalize() };
        let off = HEADER_BYTES + self.records as usize * RECORD_BYTES;
        self.index[off..off + RECORD_BYTES].copy_from_slice(&r.encode());
        self.records += 1;
        self.data_len = r.end();
        self.prev_flags = Some(flags);
        Ok(())
    }

    /// Appends one row of the initial snapshot; its offset is `0_<chunk number>`.
    pub fn append_snapshot_row(&mut self, kind: RecordKind, parts: &[&[u8]]) -> Result<()> {
        let mut flags = FLAG_SNAPSHOT;
        if self.starts_chunk(0) {
            flags |= FLAG_CHUNK_START;
            self.chunk_start = self.data_len;
            self.chunks += 1;
        }
        self.append_raw(0, self.chunks - 1, flags, kind as u16, parts)
    }

    /// Closes the snapshot with its `snapshot-end` control message and publishes it.
    ///
    /// The log then waits, in `SnapshotDone`, for the worker to take it over.
    pub fn finish_snapshot(&mut self, rows: u64, snapshot_end: &[u8]) -> Result<()> {
        let mut flags = FLAG_SNAPSHOT | FLAG_CONTROL;
        if self.prev_flags.is_none() {
            flags |= FLAG_CHUNK_START;
            self.chunk_start = self.data_len;
            self.chunks += 1;
        }
        self.append_raw(0, self.chunks - 1, flags, RecordKind::SnapshotEnd as u16, &[snapshot_end])?;
        let h = self.header();
        h.snapshot_rows().store(rows, Ordering::Release);
        h.snapshot_records().store(self.records, Ordering::Release);
        self.commit(None);
        self.header().set_state_release(LogState::SnapshotDone, "");
        Ok(())
    }

    /// Appends one live change; `last` marks the final change of its transaction
    /// for this shape. Invisible to readers until [`commit`](Self::commit).
    pub fn append_change(&mut self, tx: u64, op: u64, kind: RecordKind, last: bool, parts: &[&[u8]]) -> Result<()> {
        debug_assert!(tx > 0, "live changes carry their commit LSN");
        let mut flags = if last { FLAG_LAST_IN_TX } else { 0 };
        if self.starts_chunk(tx) {
            flags |= FLAG_CHUNK_START;
            self.chunk_start = self.data_len;
            self.chunks += 1;
        }
        self.pending_change_records += 1;
        self.append_raw(tx, op, flags, kind as u16, parts)
    }

    /// Publishes everything appended since the last commit. `last_tx` records
    /// the commit LSN of the transaction just completed, if it was a live one.
    pub fn commit(&mut self, last_tx: Option<u64>) {
        let h = self.header();
        h.committed_data().store(self.data_len, Ordering::Release);
        if let Some(tx) = last_tx {
            h.last_tx().store(tx, Ordering::Release);
        }
        if self.pending_change_records > 0 {
            h.change_records().fetch_add(self.pending_change_records, Ordering::Release);
            self.pending_change_records = 0;
        }
        // The record count is the publication point readers synchronise on.
        h.committed_records().store(self.records, Ordering::Release);
        self.committed_records = self.records;
        self.committed_data = self.data_len;
    }

    /// Forgets everything appended since the last commit.
    pub fn rollback(&mut self) {
        self.records = self.committed_records;
        self.data_len = self.committed_data;
        self.pending_change_records = 0;
        self.prev_flags = if self.records == 0 { None } else { Some(self.record_at(self.records - 1).flags) };
        // Recompute the chunk cursor: the rolled-back records may have opened a chunk.
        self.chunks = 0;
        self.chunk_start = 0;
        for i in 0..self.records {
            let r = self.record_at(i);
            if r.has(FLAG_CHUNK_START) {
                self.chunks += 1;
                self.chunk_start = r.pos;
            }
        }
    }

    /// Writes published records to stable storage and records that they are durable.
    pub fn sync(&mut self) -> Result<()> {
        if !self.needs_sync() {
            return Ok(());
        }
        let data_from = self.synced_data as usize;
        let data_to = self.committed_data as usize;
        if data_to > data_from {
            self.data
                .flush_range(data_from, data_to - data_from)
                .map_err(|e| LogError::io(self.dir.join(DATA_FILE), e))?;
        }
        let idx_from = HEADER_BYTES + self.synced_records as usize * RECORD_BYTES;
        let idx_to = HEADER_BYTES + self.committed_records as usize * RECORD_BYTES;
        if idx_to > idx_from {
            // msync needs a page-aligned start.
            let start = idx_from & !(4095);
            self.index.flush_range(start, idx_to - start).map_err(|e| LogError::io(self.dir.join(INDEX_FILE), e))?;
        }
        self.header().durable_records().store(self.committed_records, Ordering::Release);
        self.index.flush_range(0, HEADER_BYTES).map_err(|e| LogError::io(self.dir.join(INDEX_FILE), e))?;
        self.synced_records = self.committed_records;
        self.synced_data = self.committed_data;
        Ok(())
    }

    /// LSN from which the worker took the log over (0 before).
    pub fn live_from_lsn(&self) -> u64 {
        self.header().live_from_lsn().load(Ordering::Acquire)
    }

    /// What is published now: after a sync that starts now succeeds, pass it to
    /// [`mark_synced_through`](Self::mark_synced_through).
    pub fn sync_point(&self) -> SyncPoint {
        SyncPoint { records: self.committed_records, data: self.committed_data }
    }

    /// Records that published records up to `point` were made durable by
    /// someone else (a `syncfs` covering many logs at once), without syncing again.
    pub fn mark_synced_through(&mut self, point: SyncPoint) {
        if point.records <= self.synced_records {
            return;
        }
        self.header().durable_records().store(point.records, Ordering::Release);
        self.synced_records = point.records;
        self.synced_data = point.data;
    }

    /// Marks the log as taken over by the worker from `lsn` on.
    pub fn set_live(&mut self, lsn: u64) {
        self.header().live_from_lsn().store(lsn, Ordering::Release);
        self.header().set_state_release(LogState::Live, "");
    }

    /// Moves the log to a terminal state with a reason clients and operators can read.
    ///
    /// The first terminal state sticks (it carries the most specific reason), except
    /// that deletion always wins.
    pub fn set_gone(&mut self, state: LogState, reason: &str) -> Result<()> {
        debug_assert!(state.is_gone());
        if !supersedes(self.state(), state) {
            return Ok(());
        }
        self.header().set_state_release(state, reason);
        self.index.flush_range(0, HEADER_BYTES).map_err(|e| LogError::io(self.dir.join(INDEX_FILE), e))
    }
}

impl Header {
    pub(crate) fn set_state_release(&self, state: LogState, reason: &str) {
        // SAFETY: only a `LogWriter` (the single writer of this log) calls this.
        unsafe { self.set_state(state, reason) }
    }
}

/// Sets the state of a log that has no writer open, e.g. to invalidate a shape
/// whose writer lives in another process that is gone.
pub fn mark_gone(dir: &Path, state: LogState, reason: &str) -> Result<()> {
    let path = dir.join(INDEX_FILE);
    let f = open_rw(&path, false)?;
    let map = map_rw(&f, HEADER_BYTES as u64, &path)?;
    // SAFETY: the map holds the header page for the lifetime of `header`.
    let header = unsafe { Header::new(map.as_ptr()) };
    if !header.magic_ok() {
        return Err(LogError::BadHeader { path, version: FORMAT_VERSION });
    }
    if !supersedes(LogState::from_u32(header.state().load(Ordering::Acquire)), state) {
        return Ok(());
    }
    header.set_state_release(state, reason);
    map.flush_range(0, HEADER_BYTES).map_err(|e| LogError::io(&path, e))
}

fn supersedes(current: LogState, new: LogState) -> bool {
    !current.is_gone() || (new == LogState::Deleted && current != LogState::Deleted)
}

/// Fsyncs a directory so that file creations and removals in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| LogError::io(dir, e))
}
