//! The doorbell: one shared page through which the worker tells every reader
//! process "logs have grown", and publishes how far the logs are complete.
//!
//! Waiting is a futex on a file-backed shared mapping, so a sidecar thread
//! sleeps in the kernel until the worker rings, with no polling and no socket.
//! The page also carries `complete_through`: the LSN such that every transaction
//! that committed at or before it has been appended to every live log. Clients
//! receive it as `global_last_seen_lsn`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::error::{LogError, Result};

/// File name of the doorbell page inside the storage directory.
pub const DOORBELL_FILE: &str = "doorbell";
const PAGE: usize = 4096;
const MAGIC: u64 = u64::from_le_bytes(*b"PGSHBELL");

const D_SEQ: usize = 0; // u32 futex word
const D_WORKER_PID: usize = 4; // u32
const D_COMPLETE_THROUGH: usize = 8; // u64
const D_HEARTBEAT_MS: usize = 16; // u64
const D_MAGIC: usize = 24; // u64

/// A mapped doorbell page; the writer side may ring it, the reader side may wait on it.
pub struct Doorbell {
    path: PathBuf,
    map: Map,
}

enum Map {
    Rw(MmapMut),
    Ro(Mmap),
}

impl Map {
    fn ptr(&self) -> *const u8 {
        match self {
            Map::Rw(m) => m.as_ptr(),
            Map::Ro(m) => m.as_ptr(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Doorbell {
    /// Opens (creating if needed) the doorbell for ringing; used by the worker.
    pub fn open_rw(storage_dir: &Path) -> Result<Doorbell> {
        let path = storage_dir.join(DOORBELL_FILE);
        std::fs::create_dir_all(storage_dir).map_err(|e| LogError::io(storage_dir, e))?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        if f.metadata().map_err(|e| LogError::io(&path, e))?.len() < PAGE as u64 {
            f.set_len(PAGE as u64).map_err(|e| LogError::io(&path, e))?;
        }
        // SAFETY: the page is only accessed through atomics below.
        let map = unsafe { MmapOptions::new().len(PAGE).map_mut(&f) }.map_err(|e| LogError::io(&path, e))?;
        let bell = Doorbell { path, map: Map::Rw(map) };
        bell.u64_at(D_MAGIC).store(MAGIC, Ordering::Release);
        Ok(bell)
    }

    /// Opens an existing doorbell for waiting; used by readers, needs only read access.
    pub fn open_ro(storage_dir: &Path) -> Result<Doorbell> {
        let path = storage_dir.join(DOORBELL_FILE);
        let f = std::fs::File::open(&path).map_err(|e| LogError::io(&path, e))?;
        if f.metadata().map_err(|e| LogError::io(&path, e))?.len() < PAGE as u64 {
            return Err(LogError::io(&path, std::io::Error::other("doorbell file is shorter than one page")));
        }
        // SAFETY: the page is only accessed through atomics below.
        let map = unsafe { MmapOptions::new().len(PAGE).map(&f) }.map_err(|e| LogError::io(&path, e))?;
        Ok(Doorbell { path, map: Map::Ro(map) })
    }

    /// The doorbell file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: fixed, aligned offsets inside a mapped page that lives as long as `self`.
        unsafe { &*(self.map.ptr().add(off) as *const AtomicU32) }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: as for `u32_at`.
        unsafe { &*(self.map.ptr().add(off) as *const AtomicU64) }
    }

    fn writable(&self) -> bool {
        matches!(self.map, Map::Rw(_))
    }

    /// Current ring count; pass it to [`wait`](Self::wait) to sleep until the next ring.
    pub fn seq(&self) -> u32 {
        self.u32_at(D_SEQ).load(Ordering::Acquire)
    }

    /// LSN through which every committed transaction is in every live log.
    pub fn complete_through(&self) -> u64 {
        self.u64_at(D_COMPLETE_THROUGH).load(Ordering::Acquire)
    }

    /// Process id of the worker that last rang (0 if none yet).
    pub fn worker_pid(&self) -> u32 {
        self.u32_at(D_WORKER_PID).load(Ordering::Acquire)
    }

    /// How long ago the worker last showed it was alive.
    pub fn heartbeat_age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.u64_at(D_HEARTBEAT_MS).load(Ordering::Acquire)))
    }

    /// Publishes progress and wakes every waiter. Logs must already be published.
    pub fn ring(&self, complete_through: u64) {
        assert!(self.writable(), "only the worker rings the doorbell");
        self.u64_at(D_COMPLETE_THROUGH).fetch_max(complete_through, Ordering::Release);
        self.u64_at(D_HEARTBEAT_MS).store(now_ms(), Ordering::Release);
        self.u32_at(D_SEQ).fetch_add(1, Ordering::Release);
        futex_wake_all(self.u32_at(D_SEQ));
    }

    /// Records the worker's pid and a heartbeat without waking anyone.
    pub fn heartbeat(&self, pid: u32) {
        assert!(self.writable(), "only the worker beats the heart");
        self.u32_at(D_WORKER_PID).store(pid, Ordering::Release);
        self.u64_at(D_HEARTBEAT_MS).store(now_ms(), Ordering::Release);
    }

    /// Sleeps until the ring count differs from `seen` or `timeout` passes; returns the count.
    pub fn wait(&self, seen: u32, timeout: Duration) -> u32 {
        let word = self.u32_at(D_SEQ);
        if word.load(Ordering::Acquire) == seen {
            futex_wait(word, seen, timeout);
        }
        word.load(Ordering::Acquire)
    }
}

/// Sleeps while `*word == expected` (spurious wake-ups are fine: callers re-check).
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 in a shared mapping; FUTEX_WAIT (without
    // FUTEX_PRIVATE_FLAG) keys the wait on the file page, so other processes can wake it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: as for `futex_wait`; waking has no memory effects.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<u32>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}
