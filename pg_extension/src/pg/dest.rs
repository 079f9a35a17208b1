//! Streaming a query's rows into Rust one at a time, without materialising
//! them: a `DestReceiver` whose `receiveSlot` calls a closure. The snapshotter
//! uses it so a million-row snapshot runs in constant memory.

use pgrx::pg_sys;

/// One row as the executor produced it.
pub struct SlotRow<'a> {
    /// Column values (valid only for non-null entries).
    pub values: &'a [pg_sys::Datum],
    /// Null flags.
    pub nulls: &'a [bool],
    /// Column types of the result.
    pub types: &'a [pg_sys::Oid],
}

type RowFn<'a> = dyn FnMut(&SlotRow<'_>) + 'a;

#[repr(C)]
struct Receiver<'a> {
    // Must be first: Postgres sees a `DestReceiver *`.
    base: pg_sys::DestReceiver,
    on_row: *mut RowFn<'a>,
    types: Vec<pg_sys::Oid>,
    rows: u64,
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn receive_slot(slot: *mut pg_sys::TupleTableSlot, dest: *mut pg_sys::DestReceiver) -> bool {
    // SAFETY: `dest` is the Receiver built by `stream_query` (base is its first field); the
    // slot is valid during the call; slot_getsomeattrs_int fills tts_values/tts_isnull for
    // all `natts` columns.
    unsafe {
        let r = &mut *(dest as *mut Receiver<'_>);
        let natts = (*(*slot).tts_tupleDescriptor).natts;
        if ((*slot).tts_nvalid as i32) < natts {
            pg_sys::slot_getsomeattrs_int(slot, natts);
        }
        let n = natts as usize;
        let row = SlotRow {
            values: std::slice::from_raw_parts((*slot).tts_values, n),
            nulls: std::slice::from_raw_parts((*slot).tts_isnull, n),
            types: &r.types,
        };
        (*r.on_row)(&row);
        r.rows += 1;
    }
    true
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup(
    dest: *mut pg_sys::DestReceiver,
    _operation: std::ffi::c_int,
    typeinfo: pg_sys::TupleDesc,
) {
    // SAFETY: `dest` is our Receiver; `typeinfo` describes the result columns.
    unsafe {
        let r = &mut *(dest as *mut Receiver<'_>);
        r.types = super::decoding::attributes(typeinfo).into_iter().map(|(t, _, _)| t).collect();
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shutdown(_dest: *mut pg_sys::DestReceiver) {}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn destroy(_dest: *mut pg_sys::DestReceiver) {}

/// Runs a read-only query through SPI and calls `on_row` for every result row;
/// returns the number of rows. Must be called while connected to SPI.
///
/// The query runs under the active snapshot (SPI's read-only mode), so a
/// caller that pushed a transaction snapshot gets exactly that snapshot's view.
pub fn stream_query(sql: &str, mut on_row: impl FnMut(&SlotRow<'_>)) -> u64 {
    let sql = super::cstring(sql);
    let on_row_dyn: &mut RowFn<'_> = &mut on_row;
    // SAFETY: the receiver lives on this stack frame for the whole execution; its callbacks
    // only touch it through the pointer SPI hands back; SPIExecuteOptions is plain data.
    unsafe {
        let mut recv = Receiver {
            base: std::mem::zeroed(),
            on_row: std::mem::transmute::<*mut RowFn<'_>, *mut RowFn<'static>>(on_row_dyn as *mut RowFn<'_>),
            types: Vec::new(),
            rows: 0,
        };
        recv.base.receiveSlot = Some(receive_slot);
        recv.base.rStartup = Some(startup);
        recv.base.rShutdown = Some(shutdown);
        recv.base.rDestroy = Some(destroy);
        recv.base.mydest = pg_sys::CommandDest::DestNone;
        let mut opts: pg_sys::SPIExecuteOptions = std::mem::zeroed();
        opts.read_only = true;
        opts.dest = &mut recv.base;
        let rc = pg_sys::SPI_execute_extended(sql.as_ptr(), &opts);
        if rc < 0 {
            pgrx::error!("pg_shapes: snapshot query failed with SPI code {rc}");
        }
        recv.rows
    }
}
