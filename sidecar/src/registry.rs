//! Open shapes: handle → mapped log, chunk index and waiters; and the
//! definition → handle cache that spares a database round trip per request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use shape_log::{ChunkIndex, LogError, LogOffset, LogReader, LogState, LogView, RecordKind};
use tokio::sync::watch;

use crate::catalog::ShapeInfo;
use crate::notify::Bell;
use crate::params::ShapeDefinition;

/// Beyond this many cached definitions the cache starts over; it only saves round trips.
const MAX_CACHED_DEFINITIONS: usize = 100_000;

/// Every shape log this process has open, and what it knows about definitions.
pub struct Registry {
    dir: OnceLock<PathBuf>,
    open: RwLock<HashMap<Arc<str>, Arc<OpenShape>>>,
    definitions: Mutex<HashMap<ShapeDefinition, CachedInfo>>,
    epoch: Instant,
}

/// A cached catalog answer and when it was fetched.
#[derive(Clone)]
pub struct CachedInfo {
    /// The answer.
    pub info: Arc<ShapeInfo>,
    /// When the catalog gave it.
    pub fetched: Instant,
}

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The log does not exist (yet): the snapshotter has not created it, or it was removed.
    #[error("shape log not found")]
    Missing,
    /// The storage directory is not known yet.
    #[error("storage directory not known yet")]
    NoStorageDir,
    /// The log exists but cannot be read.
    #[error(transparent)]
    Log(LogError),
}

/// One open shape log, shared by all requests for its handle.
pub struct OpenShape {
    handle: Arc<str>,
    reader: LogReader,
    /// Any view of the log: the header page is shared by every map of the index
    /// file, so this reads the live state without remapping.
    header: Arc<LogView>,
    chunks: Mutex<ChunkIndex>,
    signal: watch::Sender<u64>,
    last_used: AtomicU64,
    /// The notifier's last look at the log: records, state, held-back marker.
    seen: [AtomicU64; 3],
}

/// The log as one request sees it at one moment.
pub struct Observed {
    /// `complete_through` when read (first), if the doorbell exists.
    pub g: Option<u64>,
    /// State when read (second).
    pub state: LogState,
    /// The view and the published record count (read last).
    pub view: Arc<LogView>,
    /// Published records.
    pub committed: u64,
    /// True when the log may be reported up to date: Live, with a known G.
    pub live: bool,
    /// Records a response may contain: up to `tx <= G` when live, else the snapshot.
    pub visible: u64,
    /// True when `snapshot-end` is among the visible records.
    pub snapshot_complete: bool,
}

/// A run of records to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// First record (inclusive).
    pub from: u64,
    /// End record (exclusive).
    pub to: u64,
    /// The offset of the last record: the response's `electric-offset`.
    pub last: LogOffset,
    /// The run reaches the end of what may be reported (append up-to-date).
    pub reaches_end: bool,
}

impl Observed {
    /// The offset of record `i`.
    pub fn offset_of(&self, i: u64) -> LogOffset {
        let r = self.view.record(i);
        LogOffset::new(r.tx, r.op)
    }

    /// The offset of the last visible record (the log's latest offset for a client),
    /// or the end of the snapshot if there is none.
    pub fn latest(&self) -> LogOffset {
        if self.visible == 0 {
            LogOffset::SNAPSHOT_END
        } else {
            self.offset_of(self.visible - 1)
        }
    }

    /// True when `offset` lies beyond both the last record and `(G, inf)`: no
    /// client can have been given it.
    pub fn out_of_bounds(&self, offset: LogOffset) -> bool {
        let Some(g) = self.g else { return false };
        if offset <= LogOffset::new(g, u64::MAX) {
            return false;
        }
        self.committed == 0 || offset > self.offset_of(self.committed - 1)
    }
}

impl Registry {
    /// An empty registry; the storage directory may be given now or later.
    pub fn new(dir: Option<PathBuf>) -> Registry {
        let r = Registry {
            dir: OnceLock::new(),
            open: RwLock::new(HashMap::new()),
            definitions: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        };
        if let Some(d) = dir {
            r.set_storage_dir(d);
        }
        r
    }

    /// The storage directory, once known.
    pub fn storage_dir(&self) -> Option<&Path> {
        self.dir.get().map(PathBuf::as_path)
    }

    /// Sets the storage directory (first value wins).
    pub fn set_storage_dir(&self, dir: PathBuf) {
        let _ = self.dir.set(dir);
    }

    fn now_secs(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// The open log of `handle`, opening it if needed.
    pub fn get_or_open(&self, handle: &str) -> Result<Arc<OpenShape>, OpenError> {
        if let Some(s) = self.open.read().unwrap_or_else(|p| p.into_inner()).get(handle) {
            s.last_used.store(self.now_secs(), Ordering::Relaxed);
            return Ok(Arc::clone(s));
        }
        let dir = self.storage_dir().ok_or(OpenError::NoStorageDir)?;
        // Handles come from the catalog, but never let one name a path outside the storage dir.
        if handle.is_empty() || handle.contains(['/', '\\', '\0']) || handle.starts_with('.') {
            return Err(OpenError::Missing);
        }
        let reader = match LogReader::open(&dir.join(handle)) {
            Ok(r) => r,
            // Logs appear atomically (renamed into place once their header is written),
            // so a missing directory means "not created yet" and a bad header is damage.
            Err(e) if e.is_not_found() => return Err(OpenError::Missing),
            Err(e) => return Err(OpenError::Log(e)),
        };
        let (header, _) = reader.current().map_err(OpenError::Log)?;
        let shape = Arc::new(OpenShape {
            handle: handle.into(),
            reader,
            header,
            chunks: Mutex::new(ChunkIndex::default()),
            signal: watch::channel(0).0,
            last_used: AtomicU64::new(self.now_secs()),
            // Impossible values, so the first look always counts as a change.
            seen: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX - 1)],
        });
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        Ok(Arc::clone(open.entry(Arc::clone(&shape.handle)).or_insert(shape)))
    }

    /// Forgets an open log (it is gone) and every definition that pointed to it.
    pub fn evict(&self, handle: &str) {
        if let Some(s) = self.open.write().unwrap_or_else(|p| p.into_inner()).remove(handle) {
            // Wake its waiters so they notice at once.
            s.signal.send_modify(|v| *v = v.wrapping_add(1));
        }
        self.definitions.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, c| c.info.handle != handle);
    }

    /// The cached catalog answer for a definition.
    pub fn cached_definition(&self, def: &ShapeDefinition) -> Option<CachedInfo> {
        self.definitions.lock().unwrap_or_else(|p| p.into_inner()).get(def).cloned()
    }

    /// Remembers the catalog answer for a definition.
    pub fn cache_definition(&self, def: &ShapeDefinition, info: Arc<ShapeInfo>) {
        let mut defs = self.definitions.lock().unwrap_or_else(|p| p.into_inner());
        if defs.len() >= MAX_CACHED_DEFINITIONS {
            defs.clear();
        }
        defs.insert(def.clone(), CachedInfo { info, fetched: Instant::now() });
    }

    /// Called by the doorbell thread: bumps the signal of every shape that has
    /// waiters and whose log changed since the last look.
    pub fn wake_changed(&self, g: Option<u64>) {
        let waited: Vec<Arc<OpenShape>> = self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.signal.receiver_count() > 0)
            .cloned()
            .collect();
        for s in waited {
            if s.changed_since_last_look(g) {
                s.signal.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Unmaps logs nobody has used for `idle` and nobody waits on.
    pub fn evict_idle(&self, idle: Duration) {
        let cutoff = self.now_secs().saturating_sub(idle.as_secs());
        self.open.write().unwrap_or_else(|p| p.into_inner()).retain(|_, s| {
            Arc::strong_count(s) > 1 || s.signal.receiver_count() > 0 || s.last_used.load(Ordering::Relaxed) >= cutoff
        });
    }

    /// How many logs are open (for tests and logs).
    pub fn open_count(&self) -> usize {
        self.open.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl OpenShape {
    /// The shape's handle.
    pub fn handle(&self) -> &str {
        &self.handle
    }

    /// The log's state now.
    pub fn state(&self) -> LogState {
        self.header.state()
    }

    /// Why the log is gone (empty if it is not).
    pub fn reason(&self) -> String {
        self.header.status().reason
    }

    /// A receiver that changes whenever the doorbell thread sees this log change.
    /// Subscribe *before* observing, so a change after the observation is not missed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    /// Reads G, then the state, then the published extent — in that order, so
    /// that a Live log read after G holds every transaction up to G.
    pub fn observe(&self, bell: &Bell) -> Result<Observed, LogError> {
        let g = bell.complete_through();
        let state = self.state();
        let (view, c) = self.reader.current()?;
        let n = c.records;
        // G = 0 means the worker never published progress: nothing can be vouched for.
        let live = state == LogState::Live && g.is_some_and(|g| g > 0);
        let snapshot_records = view.find_after(LogOffset::SNAPSHOT_END, n);
        let visible = match g {
            Some(g) if live => view.find_after(LogOffset::new(g, u64::MAX), n),
            _ => snapshot_records,
        };
        let snapshot_complete =
            snapshot_records > 0 && view.record(snapshot_records - 1).kind == RecordKind::SnapshotEnd as u16;
        Ok(Observed { g, state, view, committed: n, live, visible, snapshot_complete })
    }

    /// The records to send after `offset`, ending at the next chunk boundary, or
    /// `None` if nothing may be sent yet. Inside the snapshot only closed chunks
    /// (or the final one, once the snapshot is complete) are sent, because
    /// snapshot offsets name whole chunks.
    pub fn cut(&self, obs: &Observed, offset: LogOffset) -> Option<Cut> {
        let from = obs.view.find_after(offset, obs.visible);
        if from >= obs.visible {
            return None;
        }
        let mut chunks = self.chunks.lock().unwrap_or_else(|p| p.into_inner());
        chunks.update(&obs.view, obs.committed);
        let to = chunks.chunk_end(from, obs.visible);
        if obs.view.record(from).tx == 0 && !obs.snapshot_complete && !chunks.chunk_closed(from) {
            return None;
        }
        drop(chunks);
        Some(Cut { from, to, last: obs.offset_of(to - 1), reaches_end: to == obs.visible })
    }

    /// The notifier's change test: records, state, or (only while records are
    /// held back past G) G itself moved.
    fn changed_since_last_look(&self, g: Option<u64>) -> bool {
        let Ok((view, c)) = self.reader.current() else { return true };
        let state = u64::from(self.state() as u32);
        let last_tx = if c.records == 0 { 0 } else { view.record(c.records - 1).tx };
        // Without a usable G nothing can be reported up to date; getting one must
        // wake waiters even when no record is held back.
        let held = match g {
            None | Some(0) => u64::MAX,
            Some(g) => last_tx.min(g),
        };
        let now = [c.records, state, held];
        let mut changed = false;
        for (slot, v) in self.seen.iter().zip(now) {
            if slot.swap(v, Ordering::Relaxed) != v {
                changed = true;
            }
        }
        changed
    }
}
