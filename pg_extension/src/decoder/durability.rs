//! Making shape logs durable off the decoding path.
//!
//! The slot may only be confirmed past changes whose log records are on disk
//! (DESIGN.md §3.3). One `syncfs` of the storage filesystem makes every log
//! durable at once, but it blocks while the kernel writes back everything
//! dirty: done inline, the decoder spent about 30% of a WAL catch-up waiting
//! in it. A helper thread runs it instead. The engine notes, when a sync
//! starts, what each dirty log had published and the decoder's position, keeps
//! decoding, and confirms that position once the thread reports the sync done.
//!
//! The thread calls no Postgres function and receives no signal: Postgres's
//! signal handlers expect to run on the backend's own thread.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

/// A thread that runs `syncfs` on the shape storage when asked, one at a time.
pub struct Syncer {
    requests: Option<Sender<()>>,
    results: Receiver<std::io::Result<()>>,
    in_flight: bool,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread for the filesystem holding `dir`.
    pub fn start(dir: PathBuf) -> std::io::Result<Syncer> {
        let (requests, inbox) = mpsc::channel::<()>();
        let (outbox, results) = mpsc::channel();
        let thread = spawn_without_signals("pg_shapes sync", move || {
            for () in inbox {
                if outbox.send(sync_filesystem(&dir)).is_err() {
                    break;
                }
            }
        })?;
        Ok(Syncer { requests: Some(requests), results, in_flight: false, thread: Some(thread) })
    }

    /// Starts a sync unless one is running; returns whether one was started.
    pub fn begin(&mut self) -> bool {
        if self.in_flight {
            return false;
        }
        let sent = self.requests.as_ref().is_some_and(|r| r.send(()).is_ok());
        self.in_flight = sent;
        sent
    }

    /// The outcome of the running sync once it has finished.
    pub fn poll(&mut self) -> Option<std::io::Result<()>> {
        if !self.in_flight {
            return None;
        }
        match self.results.try_recv() {
            Ok(result) => {
                self.in_flight = false;
                Some(result)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.in_flight = false;
                Some(Err(std::io::Error::other("the sync thread ended")))
            }
        }
    }

    /// True while a sync runs.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the request channel ends the thread after its current sync.
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Flushes the filesystem holding `dir` (`syncfs`).
pub fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)?;
    // SAFETY: syncfs on a file descriptor that stays open for the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Spawns a thread with every signal blocked, so that the process's signals
/// (SIGTERM, SIGUSR1 for latches, SIGINT for cancels) reach the backend thread.
fn spawn_without_signals(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    // SAFETY: sigfillset/pthread_sigmask on local, initialised sigset_t values;
    // the caller's mask is restored before returning, and a new thread inherits
    // the mask in force when it is created.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let spawned = std::thread::Builder::new().name(name.to_string()).spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        spawned
    }
}
