//! Logical decoding driven from inside the worker process, the way the
//! walsender drives it: one decoding context for the worker's lifetime, WAL
//! records read up to the flush pointer and fed to the reorder buffer, and our
//! own output plugin (in this same library) receiving whole committed
//! transactions in commit order, with the `Relation` and heap tuples in hand.
//!
//! The page reader never blocks: when the next page is not flushed yet it
//! reports "would block", the worker does its idle work (sync, confirm, wake
//! readers), sleeps on its latch, and resumes reading where it stopped.

use std::cell::{Cell, RefCell};
use std::ffi::c_int;

use pgrx::pg_sys;

use super::cstring;

/// A committed transaction being replayed to the plugin.
#[derive(Debug, Clone, Copy)]
pub struct TxnInfo {
    /// Top-level transaction id.
    pub xid: u32,
    /// LSN of the commit record: the transaction's position in commit order.
    pub commit_lsn: u64,
    /// LSN just past the commit record.
    pub end_lsn: u64,
}

/// What a change does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// INSERT
    Insert,
    /// UPDATE
    Update,
    /// DELETE
    Delete,
}

/// A decoded row image.
#[derive(Clone, Copy)]
pub struct Tuple(pg_sys::HeapTuple);

/// An open relation as the decoder hands it to the plugin (historic catalog view).
#[derive(Clone, Copy)]
pub struct Rel(pg_sys::Relation);

impl Rel {
    /// The relation's OID.
    pub fn oid(&self) -> pg_sys::Oid {
        // SAFETY: the decoder passes an open relation valid during the callback.
        unsafe { (*self.0).rd_id }
    }

    /// The relation's tuple descriptor.
    pub fn tupdesc(&self) -> pg_sys::TupleDesc {
        // SAFETY: as above.
        unsafe { (*self.0).rd_att }
    }

    /// Number of attributes, dropped ones included.
    pub fn natts(&self) -> usize {
        // SAFETY: as above.
        unsafe { (*(*self.0).rd_att).natts as usize }
    }
}

/// Per attribute: (type oid, typlen, dropped).
pub fn attributes(tupdesc: pg_sys::TupleDesc) -> Vec<(pg_sys::Oid, i16, bool)> {
    // SAFETY: a valid tuple descriptor; attrs is a flexible array of natts entries.
    unsafe {
        let n = (*tupdesc).natts as usize;
        let attrs = (*tupdesc).attrs.as_slice(n);
        attrs.iter().map(|a| (a.atttypid, a.attlen, a.attisdropped)).collect()
    }
}

/// Attribute names (empty for dropped ones), in attribute order.
pub fn attribute_names(tupdesc: pg_sys::TupleDesc) -> Vec<String> {
    // SAFETY: a valid tuple descriptor; attname is a NUL-terminated NameData.
    unsafe {
        let n = (*tupdesc).natts as usize;
        (*tupdesc)
            .attrs
            .as_slice(n)
            .iter()
            .map(|a| if a.attisdropped { String::new() } else { super::cstr_to_string(a.attname.data.as_ptr()) })
            .collect()
    }
}

impl Tuple {
    /// Deforms the row into `values`/`nulls` (resized to the descriptor's width).
    pub fn deform(&self, tupdesc: pg_sys::TupleDesc, values: &mut Vec<pg_sys::Datum>, nulls: &mut Vec<bool>) {
        // SAFETY: the tuple belongs to a relation with this descriptor (the decoder pairs
        // them); heap_deform_tuple writes exactly natts entries, and handles tuples with
        // fewer attributes (added columns) by filling in defaults/nulls.
        unsafe {
            let n = (*tupdesc).natts as usize;
            values.clear();
            values.resize(n, pg_sys::Datum::from(0usize));
            nulls.clear();
            nulls.resize(n, true);
            pg_sys::heap_deform_tuple(self.0, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        }
    }
}

/// Receives decoded transactions. Implemented by the worker's engine.
pub trait DecodeSink {
    /// A transaction starts replaying.
    fn begin(&mut self, txn: &TxnInfo);
    /// One row change of the transaction.
    fn change(&mut self, txn: &TxnInfo, rel: Rel, kind: ChangeKind, old: Option<Tuple>, new: Option<Tuple>);
    /// TRUNCATE of one or more relations.
    fn truncate(&mut self, txn: &TxnInfo, relids: &[pg_sys::Oid]);
    /// The transaction committed (all its changes were delivered).
    fn commit(&mut self, txn: &TxnInfo);
}

thread_local! {
    static SINK: RefCell<Option<Box<dyn DecodeSink>>> = RefCell::new(None);
    static WOULD_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Installs the sink the plugin callbacks deliver to (only the worker does this).
pub fn set_sink(sink: Box<dyn DecodeSink>) {
    SINK.with(|s| *s.borrow_mut() = Some(sink));
}

fn txn_info(txn: *mut pg_sys::ReorderBufferTXN) -> TxnInfo {
    // SAFETY: the reorder buffer passes a valid transaction to every callback.
    unsafe { TxnInfo { xid: (*txn).xid.into(), commit_lsn: (*txn).final_lsn, end_lsn: (*txn).end_lsn } }
}

fn deliver(f: impl FnOnce(&mut dyn DecodeSink)) {
    let delivered = SINK.with(|s| match s.borrow_mut().as_mut() {
        Some(sink) => {
            f(sink.as_mut());
            true
        }
        None => false,
    });
    if !delivered {
        pgrx::error!(
            "the pg_shapes replication slot can only be consumed by the pg_shapes background worker; \
             create your own slot with pgoutput or test_decoding to inspect changes"
        );
    }
}

/// Entry point Postgres looks up when a slot uses the `pg_shapes` output plugin.
///
/// # Safety
/// Called by Postgres with a valid callbacks struct to fill in.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    // SAFETY: Postgres hands us a zeroed callbacks struct to fill.
    unsafe {
        (*cb).startup_cb = Some(plugin_startup);
        (*cb).begin_cb = Some(plugin_begin);
        (*cb).change_cb = Some(plugin_change);
        (*cb).truncate_cb = Some(plugin_truncate);
        (*cb).commit_cb = Some(plugin_commit);
        (*cb).shutdown_cb = Some(plugin_shutdown);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn plugin_startup(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    opt: *mut pg_sys::OutputPluginOptions,
    _is_init: bool,
) {
    // SAFETY: `opt` is valid during startup. We produce no output stream at all: the
    // callbacks write shape logs directly.
    unsafe {
        (*opt).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_BINARY_OUTPUT;
        (*opt).receive_rewrites = false;
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn plugin_shutdown(_ctx: *mut pg_sys::LogicalDecodingContext) {}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn plugin_begin(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
) {
    let info = txn_info(txn);
    deliver(|s| s.begin(&info));
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn plugin_commit(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    _commit_lsn: pg_sys::XLogRecPtr,
) {
    let info = txn_info(txn);
    deliver(|s| s.commit(&info));
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn plugin_change(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    let info = txn_info(txn);
    // SAFETY: the change is valid during the callback; for INSERT/UPDATE/DELETE the `tp`
    // member of the union is the active one; tuple buffers may be null.
    let (kind, old, new) = unsafe {
        let kind = match (*change).action {
            pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_INSERT => ChangeKind::Insert,
            pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_UPDATE => ChangeKind::Update,
            pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_DELETE => ChangeKind::Delete,
            _ => return,
        };
        let tp = (*change).data.tp;
        let tuple = |b: *mut pg_sys::ReorderBufferTupleBuf| (!b.is_null()).then(|| Tuple(&mut (*b).tuple));
        (kind, tuple(tp.oldtuple), tuple(tp.newtuple))
    };
    deliver(|s| s.change(&info, Rel(relation), kind, old, new));
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn plugin_truncate(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    nrelations: c_int,
    relations: *mut pg_sys::Relation,
    _change: *mut pg_sys::ReorderBufferChange,
) {
    let info = txn_info(txn);
    // SAFETY: `relations` holds `nrelations` open relations during the callback.
    let relids: Vec<pg_sys::Oid> = unsafe { (0..nrelations as usize).map(|i| (**relations.add(i)).rd_id).collect() };
    deliver(|s| s.truncate(&info, &relids));
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn page_read(
    state: *mut pg_sys::XLogReaderState,
    target_page: pg_sys::XLogRecPtr,
    req_len: c_int,
    target_rec: pg_sys::XLogRecPtr,
    buf: *mut std::ffi::c_char,
) -> c_int {
    // SAFETY: GetFlushRecPtr reads shared WAL state; read_local_xlog_page is the standard
    // local page reader and will not wait, because the requested bytes are already flushed.
    unsafe {
        let flushed = pg_sys::GetFlushRecPtr(std::ptr::null_mut());
        if target_page + req_len as u64 > flushed {
            WOULD_BLOCK.with(|w| w.set(true));
            return -1;
        }
        pg_sys::read_local_xlog_page(state, target_page, req_len, target_rec, buf)
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn prepare_write(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    _lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _last: bool,
) {
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn do_write(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    _lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _last: bool,
) {
}

/// The WAL flush position: decoding never reads past it.
pub fn flush_lsn() -> u64 {
    // SAFETY: reads shared WAL state.
    unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) }
}

/// Result of one decoding step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A record was decoded (possibly replaying a whole transaction to the sink).
    Decoded,
    /// All flushed WAL has been read; wait for more.
    CaughtUp,
}

/// The worker's decoding context over its slot.
pub struct Decoder {
    ctx: *mut pg_sys::LogicalDecodingContext,
    resume_at: u64,
    // The routine table must outlive the reader that points at it.
    _routine: Box<pg_sys::XLogReaderRoutine>,
}

impl Decoder {
    /// Acquires the slot and creates the decoding context, positioned at the slot's
    /// restart point (transactions before its confirmed position are skipped).
    ///
    /// Must be called outside a transaction, in a worker connected to the slot's database.
    pub fn start(slot: &str) -> Decoder {
        let name = cstring(slot);
        let mut routine = Box::new(pg_sys::XLogReaderRoutine {
            page_read: Some(page_read),
            segment_open: Some(super::ffi::segment_open()),
            segment_close: Some(super::ffi::segment_close()),
        });
        // SAFETY: the walsender's START_REPLICATION sequence: check requirements, acquire the
        // slot (ERROR if another process holds it), create the context in a long-lived memory
        // context, and begin reading at the slot's restart_lsn.
        unsafe {
            pg_sys::CheckLogicalDecodingRequirements();
            pg_sys::ReplicationSlotAcquire(name.as_ptr(), true);
            let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            let ctx = pg_sys::CreateDecodingContext(
                pg_sys::InvalidXLogRecPtr as u64,
                std::ptr::null_mut(),
                false,
                routine.as_mut(),
                Some(prepare_write),
                Some(do_write),
                None,
            );
            pg_sys::MemoryContextSwitchTo(old);
            let restart = (*pg_sys::MyReplicationSlot).data.restart_lsn;
            pg_sys::XLogBeginRead((*ctx).reader, restart);
            Decoder { ctx, resume_at: restart, _routine: routine }
        }
    }

    /// Reads and decodes the next WAL record, if it is flushed.
    pub fn step(&mut self) -> Step {
        // SAFETY: the context and its reader live until `self` is dropped.
        unsafe {
            let reader = (*self.ctx).reader;
            let mut errm: *mut std::ffi::c_char = std::ptr::null_mut();
            let record = pg_sys::XLogReadRecord(reader, &mut errm);
            if record.is_null() {
                if WOULD_BLOCK.with(|w| w.replace(false)) {
                    // Start over at the first record we have not decoded once WAL arrives.
                    pg_sys::XLogBeginRead(reader, self.resume_at);
                    return Step::CaughtUp;
                }
                let msg = super::cstr_to_string(errm);
                pgrx::error!(
                    "pg_shapes could not read WAL at {:X}/{:X}: {msg}",
                    self.resume_at >> 32,
                    self.resume_at as u32
                );
            }
            super::ffi::logical_decoding_process_record(self.ctx, reader);
            self.resume_at = (*reader).EndRecPtr;
            Step::Decoded
        }
    }

    /// The slot's confirmed position: transactions committing before it are done.
    pub fn confirmed(&self) -> u64 {
        // SAFETY: we hold the slot for as long as the decoder lives.
        unsafe { (*pg_sys::MyReplicationSlot).data.confirmed_flush }
    }

    /// LSN just past the last decoded record.
    pub fn position(&self) -> u64 {
        self.resume_at
    }

    /// Tells the slot that everything before `lsn` is durably consumed, so WAL
    /// before it may be recycled and decoding restarts no earlier than it.
    pub fn confirm(&self, lsn: u64) {
        // SAFETY: we hold the slot (MyReplicationSlot); this is what the walsender does when
        // a client reports its flush position. Marking dirty lets checkpoints persist it.
        unsafe {
            pg_sys::LogicalConfirmReceivedLocation(lsn);
            pg_sys::ReplicationSlotMarkDirty();
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: frees the context created in `start` and releases the slot we acquired.
        unsafe {
            pg_sys::FreeDecodingContext(self.ctx);
            pg_sys::ReplicationSlotRelease();
        }
    }
}
