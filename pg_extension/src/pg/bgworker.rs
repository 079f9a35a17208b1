//! Registration and process plumbing of the extension's background workers.

use std::time::Duration;

use pgrx::pg_sys;

use super::cstring;

/// Registers a static background worker (only while preloading).
pub fn register(name: &str, function: &str, arg: i64, restart_after: Duration) {
    // SAFETY: BackgroundWorker is plain data that RegisterBackgroundWorker copies; the name
    // fields are fixed-size C strings we fill with NUL-terminated text.
    unsafe {
        let mut w: pg_sys::BackgroundWorker = std::mem::zeroed();
        copy_str(&mut w.bgw_name, name);
        copy_str(&mut w.bgw_type, name);
        copy_str(&mut w.bgw_library_name, "pg_shapes");
        copy_str(&mut w.bgw_function_name, function);
        w.bgw_flags = (pg_sys::BGWORKER_SHMEM_ACCESS | pg_sys::BGWORKER_BACKEND_DATABASE_CONNECTION) as i32;
        w.bgw_start_time = pg_sys::BgWorkerStartTime::BgWorkerStart_RecoveryFinished;
        w.bgw_restart_time = restart_after.as_secs().max(1) as i32;
        w.bgw_main_arg = pg_sys::Datum::from(arg);
        pg_sys::RegisterBackgroundWorker(&mut w);
    }
}

fn copy_str<const N: usize>(dst: &mut [std::ffi::c_char; N], s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(N - 1);
    for (d, &b) in dst.iter_mut().zip(&bytes[..n]) {
        *d = b as std::ffi::c_char;
    }
    dst[n] = 0;
}

/// Sets up signals the way Postgres's own workers do and connects to `database`.
///
/// SIGTERM uses Postgres's `die`, so a terminate request is honoured at the next
/// interrupt check (also deep inside decoding) and the worker exits with status
/// 1, which makes the postmaster restart it.
pub fn start(database: &str) {
    let db = cstring(database);
    // SAFETY: called once at the start of a background worker's main function, as the
    // bgworker documentation prescribes.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(super::ffi::die_handler()));
        pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(super::ffi::config_reload_handler()));
        pg_sys::BackgroundWorkerUnblockSignals();
        pg_sys::BackgroundWorkerInitializeConnection(db.as_ptr(), std::ptr::null(), 0);
    }
}

/// Sleeps until the latch is set or `timeout` passes, then clears the latch.
/// Exits the process if the postmaster died.
pub fn wait(timeout: Duration) {
    // SAFETY: MyLatch is the worker's own latch; WL_EXIT_ON_PM_DEATH handles postmaster death.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    super::check_for_interrupts();
}

/// Re-reads postgresql.conf if a SIGHUP arrived; true if it did.
pub fn reload_config_if_requested() -> bool {
    // SAFETY: ConfigReloadPending is set by the SIGHUP handler; ProcessConfigFile is safe
    // to call outside a transaction in a worker's main loop.
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            return true;
        }
    }
    false
}

/// This process's pid.
pub fn pid() -> i32 {
    // SAFETY: a plain global set at process start.
    unsafe { pg_sys::MyProcPid }
}

/// Sets the text shown for this worker in `pg_stat_activity` / ps.
pub fn set_status(text: &str) {
    let c = cstring(text);
    // SAFETY: set_ps_display copies the string.
    unsafe { pg_sys::set_ps_display(c.as_ptr()) }
}

/// Exits so that the postmaster starts the worker again (exit status 1 runs
/// Postgres's exit callbacks, which release the replication slot).
pub fn exit_for_restart() -> ! {
    // SAFETY: proc_exit runs the registered exit callbacks and terminates the process.
    unsafe { pg_sys::proc_exit(1) }
}
