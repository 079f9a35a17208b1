//! Thin wrappers over Postgres internals. Every `unsafe` block of the
//! extension that talks to `pg_sys` lives under this module, each with the
//! reason it is sound; the modules above it are safe Rust.

pub mod bgworker;
pub mod decoding;
pub mod dest;
pub mod expr;
pub mod ffi;
pub mod parse;
pub mod relation;
pub mod text;
pub mod xact;

use std::ffi::{CStr, CString};

use pgrx::pg_sys;

/// Copies a C string (typically palloc'd by Postgres) into an owned `String`.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string.
pub unsafe fn cstr_to_string(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the contract above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// A `CString` for a Rust string; interior NULs (which SQL text cannot carry) become spaces.
pub fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).expect("NULs were replaced")
}

/// The current WAL insert position.
pub fn current_wal_lsn() -> u64 {
    // SAFETY: reads shared WAL insert state under its own lock; callable in any backend.
    unsafe { pg_sys::GetXLogInsertRecPtr() }
}

/// True when this server is a standby (logical decoding needs a primary on PG 15).
pub fn in_recovery() -> bool {
    // SAFETY: reads shared recovery state; callable in any backend.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// True when `wal_level` is `logical`.
pub fn wal_level_is_logical() -> bool {
    // SAFETY: wal_level is a GUC variable set at startup (PGC_POSTMASTER).
    unsafe { pg_sys::wal_level >= pg_sys::WalLevel::WAL_LEVEL_LOGICAL as i32 }
}

/// Sets a session-level setting (used by workers for the display settings).
pub fn set_session_config(name: &str, value: &str) {
    let (n, v) = (cstring(name), cstring(value));
    // SAFETY: both strings are NUL-terminated and outlive the call; SetConfigOption copies them.
    unsafe {
        pg_sys::SetConfigOption(
            n.as_ptr(),
            v.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        )
    }
}

/// The display settings Electric's clients expect values in, whatever the server's own.
pub const DISPLAY_SETTINGS: &[(&str, &str)] = &[
    ("bytea_output", "hex"),
    ("DateStyle", "ISO, DMY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "1"),
];

/// Deparsed expressions and snapshot queries must resolve names the same way in
/// every process, so they are produced and run with only `pg_catalog` on the path:
/// everything else comes out schema-qualified.
pub const CATALOG_SEARCH_PATH: (&str, &str) = ("search_path", "pg_catalog");

/// Applies the display settings and the catalog search path for the rest of the
/// session (worker processes, which run no user SQL).
pub fn apply_worker_settings() {
    for (k, v) in DISPLAY_SETTINGS.iter().chain(std::iter::once(&CATALOG_SEARCH_PATH)) {
        set_session_config(k, v);
    }
}

/// Runs `f` with `settings` in force and restores the previous values afterwards,
/// the way a function's `SET` clause does, so a caller's session is left untouched.
pub fn with_settings<R>(settings: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    // SAFETY: NewGUCNestLevel/AtEOXact_GUC bracket the changes exactly as fmgr does for
    // functions with SET clauses; must be called inside a transaction, which every
    // caller (SQL functions, worker transactions) is.
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    for (k, v) in settings {
        let (n, v) = (cstring(k), cstring(v));
        // SAFETY: NUL-terminated strings that outlive the call; values are copied.
        unsafe {
            pg_sys::set_config_option(
                n.as_ptr(),
                v.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
    }
    let r = f();
    // SAFETY: pops exactly the nest level pushed above. If `f` raised an ERROR instead,
    // transaction (or subtransaction) abort unwinds the GUC stack itself.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    r
}

/// The current value of a setting, or `None` if this server does not have it.
pub fn config_value(name: &str) -> Option<String> {
    let n = cstring(name);
    // SAFETY: GetConfigOption with missing_ok returns NULL for unknown settings and a
    // pointer to the setting's current string otherwise, which we copy at once.
    unsafe {
        let v = pg_sys::GetConfigOption(n.as_ptr(), true, false);
        (!v.is_null()).then(|| cstr_to_string(v))
    }
}

/// Sleeps in a backend, honouring cancel requests.
pub fn sleep(d: std::time::Duration) {
    // SAFETY: pg_usleep only sleeps; interrupts are checked right after.
    unsafe { pg_sys::pg_usleep(d.as_micros().min(i64::MAX as u128) as std::ffi::c_long) };
    check_for_interrupts();
}

/// Checks for query cancel / termination requests (ERROR or FATAL on request).
pub fn check_for_interrupts() {
    pgrx::check_for_interrupts!();
}

/// True while the postmaster loads `shared_preload_libraries`.
pub fn preloading() -> bool {
    // SAFETY: a plain global the postmaster sets around preloading.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}
