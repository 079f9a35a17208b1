//! Postgres symbols pgrx's bindings lack (their headers are not in pgrx's
//! list), or that must be passed to Postgres as raw C function pointers
//! rather than pgrx's guarded Rust wrappers. PG 15 signatures.

use std::ffi::c_int;

use pgrx::pg_sys;

mod raw {
    use super::*;

    unsafe extern "C-unwind" {
        pub fn LogicalDecodingProcessRecord(
            ctx: *mut pg_sys::LogicalDecodingContext,
            record: *mut pg_sys::XLogReaderState,
        );
        pub fn setup_parse_variable_parameters(
            pstate: *mut pg_sys::ParseState,
            param_types: *mut *mut pg_sys::Oid,
            num_params: *mut c_int,
        );
        pub fn die(signal: c_int);
        pub fn SignalHandlerForConfigReload(signal: c_int);
        pub fn wal_segment_open(
            state: *mut pg_sys::XLogReaderState,
            next_seg: pg_sys::XLogSegNo,
            tli: *mut pg_sys::TimeLineID,
        );
        pub fn wal_segment_close(state: *mut pg_sys::XLogReaderState);
    }
}

/// replication/decode.h: hands one WAL record to the logical decoding machinery.
///
/// # Safety
/// `ctx` must be a live decoding context and `record` its reader, just positioned
/// on a record by `XLogReadRecord`.
pub unsafe fn logical_decoding_process_record(
    ctx: *mut pg_sys::LogicalDecodingContext,
    record: *mut pg_sys::XLogReaderState,
) {
    // SAFETY: per the contract; an ERROR inside becomes a Rust panic at this boundary.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| raw::LogicalDecodingProcessRecord(ctx, record)) }
}

/// parser/parse_param.h: lets `$n` references take the type their context implies.
///
/// # Safety
/// `pstate` must be a fresh parse state; the two pointers must outlive it.
pub unsafe fn setup_parse_variable_parameters(
    pstate: *mut pg_sys::ParseState,
    param_types: *mut *mut pg_sys::Oid,
    num_params: *mut c_int,
) {
    // SAFETY: per the contract.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| raw::setup_parse_variable_parameters(pstate, param_types, num_params))
    }
}

/// Postgres's SIGTERM handler for backends and workers (`die`).
pub fn die_handler() -> unsafe extern "C-unwind" fn(c_int) {
    raw::die
}

/// Postgres's SIGHUP handler for auxiliary processes and workers.
pub fn config_reload_handler() -> unsafe extern "C-unwind" fn(c_int) {
    raw::SignalHandlerForConfigReload
}

/// The local WAL segment opener for an `XLogReaderRoutine`.
pub fn segment_open(
) -> unsafe extern "C-unwind" fn(*mut pg_sys::XLogReaderState, pg_sys::XLogSegNo, *mut pg_sys::TimeLineID) {
    raw::wal_segment_open
}

/// The local WAL segment closer for an `XLogReaderRoutine`.
pub fn segment_close() -> unsafe extern "C-unwind" fn(*mut pg_sys::XLogReaderState) {
    raw::wal_segment_close
}
