//! Turning datums into the text Postgres would print for them.

use pgrx::pg_sys;

/// A type's output function, looked up once and called many times.
pub struct OutputFn {
    // Boxed: fmgr caches state in `fn_extra` that may point back at this struct,
    // so it must not move.
    finfo: Box<pg_sys::FmgrInfo>,
    /// Whether the type is variable-length (its datums may be TOAST pointers).
    pub varlena: bool,
}

impl OutputFn {
    /// Looks up the output function of `typoid`; state the function caches lives in
    /// `mcxt`, which must outlive the returned value. Catalog access: call inside a transaction.
    pub fn new(typoid: pg_sys::Oid, mcxt: pg_sys::MemoryContext) -> OutputFn {
        let mut func = pg_sys::InvalidOid;
        let mut varlena = false;
        // SAFETY: out-pointers to locals; raises an ERROR for an unknown type.
        unsafe { pg_sys::getTypeOutputInfo(typoid, &mut func, &mut varlena) };
        // SAFETY: FmgrInfo is plain data that fmgr_info_cxt initialises completely.
        let mut finfo: Box<pg_sys::FmgrInfo> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `finfo` is valid and pinned in a Box; the caller guarantees `mcxt` outlives
        // it, so any state the function caches there stays valid while it is used.
        unsafe { pg_sys::fmgr_info_cxt(func, finfo.as_mut(), mcxt) };
        OutputFn { finfo, varlena }
    }

    /// Appends the text form of a non-null datum to `out`.
    ///
    /// The intermediate C string is palloc'd in the current memory context, which
    /// callers reset per row.
    pub fn append(&self, datum: pg_sys::Datum, out: &mut Vec<u8>) {
        // SAFETY: `datum` is a valid value of the function's type (callers pass values of
        // the column the function was looked up for); OutputFunctionCall returns a palloc'd
        // NUL-terminated string.
        let p = unsafe { pg_sys::OutputFunctionCall(self.finfo.as_ref() as *const _ as *mut _, datum) };
        // SAFETY: non-null, NUL-terminated, alive until the memory context is reset.
        let bytes = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
        out.extend_from_slice(bytes);
    }

    /// The text form of a non-null datum.
    pub fn to_vec(&self, datum: pg_sys::Datum) -> Vec<u8> {
        let mut v = Vec::new();
        self.append(datum, &mut v);
        v
    }
}

/// Converts text to a datum of `typoid` with the type's input function (ERROR if invalid).
pub fn input_datum(typoid: pg_sys::Oid, typmod: i32, text: &str) -> pg_sys::Datum {
    let mut func = pg_sys::InvalidOid;
    let mut ioparam = pg_sys::InvalidOid;
    let c = super::cstring(text);
    // SAFETY: out-pointers to locals; the input function copies what it needs from `c`,
    // which outlives the call. Invalid input raises an ERROR the caller catches.
    unsafe {
        pg_sys::getTypeInputInfo(typoid, &mut func, &mut ioparam);
        pg_sys::OidInputFunctionCall(func, c.as_ptr() as *mut _, ioparam, typmod)
    }
}

/// True when a variable-length datum is an on-disk TOAST pointer: a value that an
/// UPDATE left unchanged, which logical decoding does not carry.
pub fn is_unchanged_toast(datum: pg_sys::Datum) -> bool {
    let p = datum.cast_mut_ptr::<u8>();
    if p.is_null() {
        return false;
    }
    // SAFETY: `datum` is a varlena pointer (callers check the attribute is typlen -1).
    // An external TOAST pointer has the 1-byte header 0x01 followed by its tag byte
    // (VARATT_IS_EXTERNAL on little-endian), and VARTAG_ONDISK is 18.
    unsafe { *p == 0x01 && *p.add(1) == pg_sys::vartag_external::VARTAG_ONDISK as u8 }
}
