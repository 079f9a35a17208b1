//! The doorbell thread: one OS thread sleeps in [`Doorbell::wait`] and, on each
//! ring, wakes the waiters of every shape whose log changed.
//!
//! Waiting requests hold no thread and no connection: each holds a
//! `tokio::sync::watch` receiver of its shape, which this thread bumps.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shape_log::Doorbell;

use crate::registry::Registry;

/// How long the thread sleeps between checks when nobody rings. Writers that do
/// not ring (e.g. a snapshotter writing chunks) are noticed within this time.
const IDLE_CHECK: Duration = Duration::from_millis(100);
/// How often the thread retries opening the doorbell before the worker made it.
const OPEN_RETRY: Duration = Duration::from_millis(250);
/// How often idle logs are unmapped, and after how long unused.
const EVICT_EVERY: Duration = Duration::from_secs(30);
const IDLE_AFTER: Duration = Duration::from_secs(300);

/// The doorbell once it exists: the worker creates it, so it may appear after we start.
#[derive(Default)]
pub struct Bell {
    bell: OnceLock<Doorbell>,
}

impl Bell {
    /// `complete_through`, or `None` while the doorbell does not exist yet (nothing
    /// may then be reported up to date).
    pub fn complete_through(&self) -> Option<u64> {
        self.bell.get().map(Doorbell::complete_through)
    }

    /// Installs an opened doorbell (tests and the thread below).
    pub fn set(&self, bell: Doorbell) {
        let _ = self.bell.set(bell);
    }

    /// True once the doorbell is open.
    pub fn is_open(&self) -> bool {
        self.bell.get().is_some()
    }
}

/// The running doorbell thread; dropping it stops and joins it.
pub struct Notifier {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    /// Starts the thread. It waits for the registry's storage directory, opens the
    /// doorbell there (retrying until the worker has created it), then serves rings.
    pub fn start(registry: Arc<Registry>, bell: Arc<Bell>) -> std::io::Result<Notifier> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("pg_shapes-doorbell".into())
            .spawn(move || run(&registry, &bell, &flag))?;
        Ok(Notifier { stop, thread: Some(thread) })
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(registry: &Registry, bell: &Bell, stop: &AtomicBool) {
    let mut last_open_error = String::new();
    let mut last_evict = Instant::now();
    let mut last_open_try: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        let Some(doorbell) = bell.bell.get() else {
            if let Some(dir) = registry.storage_dir() {
                if last_open_try.is_none_or(|t| t.elapsed() >= OPEN_RETRY) {
                    try_open(dir, bell, &mut last_open_error);
                    last_open_try = Some(Instant::now());
                }
            }
            // Until the doorbell exists, still wake waiters periodically: snapshots
            // can be served before the worker ever rings.
            registry.wake_changed(None);
            std::thread::sleep(IDLE_CHECK);
            continue;
        };
        // Read the ring count before checking: a ring during the check makes the
        // wait below return at once, so no change is missed.
        let seq = doorbell.seq();
        registry.wake_changed(Some(doorbell.complete_through()));
        if last_evict.elapsed() >= EVICT_EVERY {
            registry.evict_idle(IDLE_AFTER);
            last_evict = Instant::now();
        }
        doorbell.wait(seq, IDLE_CHECK);
    }
}

fn try_open(dir: &Path, bell: &Bell, last_error: &mut String) {
    match Doorbell::open_ro(dir) {
        Ok(d) => {
            tracing::info!(path = %d.path().display(), "doorbell open");
            bell.set(d);
        }
        Err(e) => {
            let msg = e.to_string();
            if *last_error != msg {
                tracing::info!(error = %msg, "waiting for the worker to create the doorbell");
                *last_error = msg;
            }
        }
    }
}
