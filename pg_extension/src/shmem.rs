//! State shared between backends and the extension's workers, and the commit
//! hook that wakes the decoder the moment a writing transaction commits.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};

/// Upper bound on `pg_shapes.snapshot_workers`.
pub const MAX_SNAPSHOTTERS: usize = 8;

/// Process-shared counters and latches. Lives in Postgres shared memory.
#[derive(Default)]
pub struct Shared {
    /// Address of the decoder's latch (a PGPROC field, valid in every process), or 0.
    decoder_latch: AtomicU64,
    /// Pid of the running decoder, or 0.
    decoder_pid: AtomicI32,
    /// Latches of the snapshotter workers.
    snapshotter_latches: [AtomicU64; MAX_SNAPSHOTTERS],
    /// LSN through which every committed transaction is in every live log.
    complete_through: AtomicU64,
    /// LSN the slot has been confirmed to (everything before it is durable in the logs).
    confirmed: AtomicU64,
}

// SAFETY: only atomics; the latch addresses point into shared memory (PGPROC), which is
// mapped at the same address in every backend forked from the postmaster.
unsafe impl PGRXSharedMemory for Shared {}

static SHARED: PgAtomic<Shared> = unsafe { PgAtomic::new(c"pg_shapes_shared") };
static SHMEM_READY: AtomicBool = AtomicBool::new(false);

/// Requests the shared memory; only possible while preloading.
pub fn init() {
    pg_shmem_init!(SHARED);
    SHMEM_READY.store(true, Ordering::Relaxed);
}

/// The shared state, if the library was preloaded (otherwise there is none).
pub fn shared() -> Option<&'static Shared> {
    SHMEM_READY.load(Ordering::Relaxed).then(|| SHARED.get())
}

fn my_latch() -> u64 {
    // SAFETY: MyLatch is set up before any worker code runs and points at MyProc's latch.
    unsafe { pg_sys::MyLatch as u64 }
}

fn set_latch(addr: u64) {
    if addr != 0 {
        // SAFETY: the address was published by a live process and points into PGPROC in
        // shared memory; SetLatch on a latch whose owner exited is a harmless spurious wake.
        unsafe { pg_sys::SetLatch(addr as *mut pg_sys::Latch) }
    }
}

impl Shared {
    /// Announces the calling process as the decoder.
    pub fn register_decoder(&self) {
        // SAFETY: MyProcPid is a plain global set at process start.
        self.decoder_pid.store(unsafe { pg_sys::MyProcPid }, Ordering::Release);
        self.decoder_latch.store(my_latch(), Ordering::Release);
    }

    /// Clears the decoder registration (at exit).
    pub fn unregister_decoder(&self) {
        self.decoder_latch.store(0, Ordering::Release);
        self.decoder_pid.store(0, Ordering::Release);
    }

    /// Pid of the running decoder.
    pub fn decoder_pid(&self) -> Option<i32> {
        Some(self.decoder_pid.load(Ordering::Acquire)).filter(|&p| p != 0)
    }

    /// Wakes the decoder.
    pub fn wake_decoder(&self) {
        set_latch(self.decoder_latch.load(Ordering::Acquire));
    }

    /// Announces the calling process as snapshotter `i`.
    pub fn register_snapshotter(&self, i: usize) {
        self.snapshotter_latches[i].store(my_latch(), Ordering::Release);
    }

    /// Clears snapshotter `i`'s registration.
    pub fn unregister_snapshotter(&self, i: usize) {
        self.snapshotter_latches[i].store(0, Ordering::Release);
    }

    /// Wakes every snapshotter (they share work through row locks).
    pub fn wake_snapshotters(&self) {
        for l in &self.snapshotter_latches {
            set_latch(l.load(Ordering::Acquire));
        }
    }

    /// Publishes decoding progress.
    pub fn set_progress(&self, complete_through: u64, confirmed: u64) {
        self.complete_through.fetch_max(complete_through, Ordering::Release);
        self.confirmed.fetch_max(confirmed, Ordering::Release);
    }

    /// LSN through which every committed transaction is in every live log.
    pub fn complete_through(&self) -> u64 {
        self.complete_through.load(Ordering::Acquire)
    }

    /// LSN the slot was last confirmed to.
    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Acquire)
    }
}

thread_local! {
    static WROTE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs the commit hook in the calling process (every backend, via preload).
pub fn register_commit_hook() {
    // SAFETY: registering a static callback with no argument; Postgres keeps the pointer.
    unsafe { pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut()) }
}

/// Wakes the decoder when a transaction that wrote something commits, so a
/// change reaches waiting clients without the decoder polling.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            // SAFETY: plain read of the current transaction's xid; valid during pre-commit.
            let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() };
            WROTE.with(|w| w.set(xid != pg_sys::InvalidTransactionId));
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            if WROTE.with(|w| w.replace(false)) {
                if let Some(s) = shared() {
                    s.wake_decoder();
                }
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT => WROTE.with(|w| w.set(false)),
        _ => {}
    }
}
