//! Configuration of the extension, as `pg_shapes.*` settings in postgresql.conf.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

/// Where shape logs live; relative paths are relative to the data directory.
pub static STORAGE_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"pg_shapes"));
/// Database whose changes the worker decodes (logical decoding is per database).
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Name of the logical replication slot the worker owns.
pub static SLOT_NAME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"pg_shapes"));
/// Chunk size for new shapes, in bytes.
pub static CHUNK_BYTES: GucSetting<i32> = GucSetting::<i32>::new(10 * 1024 * 1024);
/// How many snapshotter workers build initial snapshots in parallel.
pub static SNAPSHOT_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
/// Longest time, in milliseconds, between making appended changes durable under load.
pub static SYNC_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(200);
/// How long invalid shapes (and their logs) are kept, in seconds.
pub static INVALID_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(600);
/// Set (transaction-locally) while the extension runs DDL of its own, so that its
/// event trigger does not mistake it for a user's ALTER TABLE.
pub static INTERNAL_DDL: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Registers every setting; called from `_PG_init`.
///
/// Settings fixed at server start can only be defined while preloading; a
/// backend that loads the library later (no preload) keeps their defaults.
pub fn register() {
    if crate::pg::preloading() {
        register_postmaster_settings();
    }
    GucRegistry::define_int_guc(
        c"pg_shapes.chunk_bytes",
        c"Size at which shape logs start a new chunk (non-live responses end at chunk boundaries).",
        c"Applies to shapes created after the change.",
        &CHUNK_BYTES,
        1024,
        1024 * 1024 * 1024,
        GucContext::Userset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"pg_shapes.sync_interval",
        c"Longest delay before appended changes are made durable and the slot advanced.",
        c"Changes are visible to readers at once; this bounds how much WAL is replayed after a crash.",
        &SYNC_INTERVAL_MS,
        1,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_shapes.invalid_retention",
        c"How long an invalidated shape and its log are kept before they are deleted.",
        c"Clients still polling its handle get 409 + must-refetch either way; this is for operators.",
        &INVALID_RETENTION_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"pg_shapes.internal_ddl",
        c"Internal: set while pg_shapes alters a table itself.",
        c"",
        &INTERNAL_DDL,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL,
    );
}

fn register_postmaster_settings() {
    GucRegistry::define_string_guc(
        c"pg_shapes.storage_dir",
        c"Directory holding the shape logs.",
        c"Relative paths are relative to the data directory. The sidecar must be able to read it.",
        &STORAGE_DIR,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_shapes.database",
        c"Database whose changes pg_shapes decodes.",
        c"Create the extension in this database. Logical decoding sees one database per slot.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_shapes.slot_name",
        c"Logical replication slot owned by the pg_shapes worker.",
        c"",
        &SLOT_NAME,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_shapes.snapshot_workers",
        c"Number of background workers that build initial snapshots.",
        c"",
        &SNAPSHOT_WORKERS,
        1,
        8,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

fn string_setting(s: &GucSetting<Option<CString>>, default: &str) -> String {
    s.get().map(|c| c.to_string_lossy().into_owned()).filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

/// The absolute storage directory.
pub fn storage_dir() -> PathBuf {
    let configured = PathBuf::from(string_setting(&STORAGE_DIR, "pg_shapes"));
    if configured.is_absolute() {
        return configured;
    }
    // SAFETY: DataDir is set by the postmaster before any library code runs and never changes.
    let data_dir = unsafe { CStr::from_ptr(pg_sys::DataDir) }.to_string_lossy().into_owned();
    PathBuf::from(data_dir).join(configured)
}

/// The database the worker decodes.
pub fn database() -> String {
    string_setting(&DATABASE, "postgres")
}

/// The slot name.
pub fn slot_name() -> String {
    string_setting(&SLOT_NAME, "pg_shapes")
}

/// Chunk size for new shapes.
pub fn chunk_bytes() -> u64 {
    CHUNK_BYTES.get().max(1024) as u64
}

/// Number of snapshotter workers.
pub fn snapshot_workers() -> usize {
    SNAPSHOT_WORKERS.get().clamp(1, crate::shmem::MAX_SNAPSHOTTERS as i32) as usize
}

/// Sync interval.
pub fn sync_interval() -> std::time::Duration {
    std::time::Duration::from_millis(SYNC_INTERVAL_MS.get().max(1) as u64)
}

/// Retention of invalid shapes.
pub fn invalid_retention() -> std::time::Duration {
    std::time::Duration::from_secs(INVALID_RETENTION_S.get().max(0) as u64)
}
