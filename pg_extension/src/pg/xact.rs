//! Transactions, subtransactions and memory contexts, as the workers and SQL
//! functions use them.

use std::panic::{AssertUnwindSafe, UnwindSafe};

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;

/// An error Postgres raised inside a guarded section, with its SQLSTATE.
#[derive(Debug, Clone)]
pub struct PgError {
    /// The primary message.
    pub message: String,
    /// The DETAIL, if any.
    pub detail: Option<String>,
    /// The SQLSTATE.
    pub code: pgrx::PgSqlErrorCode,
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<CaughtError> for PgError {
    fn from(e: CaughtError) -> Self {
        match e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
                PgError {
                    message: r.message().to_string(),
                    detail: r.detail().map(str::to_string),
                    code: r.sql_error_code(),
                }
            }
        }
    }
}

/// Runs `f` in an internal subtransaction, like a PL/pgSQL `EXCEPTION` block:
/// if `f` raises an ERROR, everything it did is rolled back and the error is
/// returned; the surrounding transaction stays usable.
pub fn try_subtransaction<R>(f: impl FnOnce() -> R + UnwindSafe) -> Result<R, PgError> {
    // SAFETY: the classic PL/pgSQL pattern: remember the memory context and resource owner,
    // start a subtransaction, and restore both after it is released or rolled back. Must be
    // called inside a transaction, which all callers are.
    let (old_cxt, old_owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_cxt);
    }
    let result = PgTryBuilder::new(AssertUnwindSafe(move || Ok(f())))
        .catch_others(|e| Err(PgError::from(e)))
        .catch_rust_panic(|e| Err(PgError::from(e)))
        .execute();
    // SAFETY: releases or rolls back exactly the subtransaction begun above.
    unsafe {
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(old_cxt);
        pg_sys::CurrentResourceOwner = old_owner;
    }
    result
}

/// Runs `f`, turning an ERROR it raises into `Err` without a subtransaction.
///
/// Only for code that takes no locks, pins no buffers and opens no relations
/// (building or evaluating expressions): whatever else it leaves behind is
/// released when the enclosing transaction ends. Restores the memory context.
pub fn catch_error<R>(f: impl FnOnce() -> R + UnwindSafe) -> Result<R, PgError> {
    let old = current_memory_context();
    let r = PgTryBuilder::new(AssertUnwindSafe(move || Ok(f())))
        .catch_others(|e| Err(PgError::from(e)))
        .catch_rust_panic(|e| Err(PgError::from(e)))
        .execute();
    // SAFETY: `old` was the current context before and is still alive.
    unsafe { pg_sys::MemoryContextSwitchTo(old) };
    r
}

/// Isolation of a worker transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Each statement sees its own snapshot.
    ReadCommitted,
    /// One snapshot, taken at the first statement, for the whole transaction.
    RepeatableRead,
}

/// Runs `f` in a new top-level transaction of a background worker and commits.
///
/// An ERROR inside `f` propagates (the worker exits and is restarted), except
/// where `f` catches it with [`try_subtransaction`].
pub fn worker_transaction<R>(isolation: Isolation, f: impl FnOnce() -> R) -> R {
    // SAFETY: workers call this outside any transaction; setting XactIsoLevel before the
    // first snapshot is how `SET TRANSACTION ISOLATION LEVEL` works.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        if isolation == Isolation::RepeatableRead {
            pg_sys::XactIsoLevel = pg_sys::XACT_REPEATABLE_READ as i32;
        }
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let r = f();
    // SAFETY: pops the snapshot pushed above and commits the transaction started above.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    r
}

/// Runs `f` with a snapshot taken now as the active snapshot: read-only SPI
/// queries inside see exactly this snapshot (and `pg_current_snapshot()` reports it).
pub fn with_latest_snapshot<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: inside a transaction (all callers); PushActiveSnapshot copies the static
    // snapshot GetLatestSnapshot returns; the pop matches the push. An ERROR in `f`
    // unwinds the snapshot stack through transaction abort.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let r = f();
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

/// The memory context Postgres allocates in right now.
pub fn current_memory_context() -> pg_sys::MemoryContext {
    // SAFETY: a plain read of a global that is always set.
    unsafe { pg_sys::CurrentMemoryContext }
}

/// A private memory context, deleted on drop.
pub struct MemoryContext {
    cxt: pg_sys::MemoryContext,
}

impl MemoryContext {
    /// Creates a context under `parent` (TopMemoryContext for worker-lifetime data).
    pub fn new(name: &'static std::ffi::CStr, parent: pg_sys::MemoryContext) -> MemoryContext {
        // SAFETY: `name` is static, as AllocSetContextCreate requires; sizes are the defaults.
        let cxt = unsafe {
            pg_sys::AllocSetContextCreateExtended(
                parent,
                name.as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            )
        };
        MemoryContext { cxt }
    }

    /// A context that lives until the process exits or it is dropped.
    pub fn long_lived(name: &'static std::ffi::CStr) -> MemoryContext {
        // SAFETY: TopMemoryContext exists for the whole life of the process.
        Self::new(name, unsafe { pg_sys::TopMemoryContext })
    }

    /// The raw context.
    pub fn raw(&self) -> pg_sys::MemoryContext {
        self.cxt
    }

    /// Runs `f` with this context current, restoring the previous one afterwards.
    pub fn switch_to<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: the context is alive (owned by self); the previous one is restored even
        // though an ERROR inside `f` would skip it: error recovery resets the current context.
        let old = unsafe { pg_sys::MemoryContextSwitchTo(self.cxt) };
        let r = f();
        // SAFETY: `old` was current before and is still alive.
        unsafe { pg_sys::MemoryContextSwitchTo(old) };
        r
    }

    /// Frees everything allocated in the context.
    pub fn reset(&self) {
        // SAFETY: the context is alive; nothing borrowed from it outlives this call by contract
        // of the callers (per-row contexts).
        unsafe { pg_sys::MemoryContextReset(self.cxt) }
    }
}

impl Drop for MemoryContext {
    fn drop(&mut self) {
        // SAFETY: we own the context and nothing allocated in it is used after drop.
        unsafe { pg_sys::MemoryContextDelete(self.cxt) }
    }
}
