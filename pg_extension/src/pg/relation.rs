//! Opening a table for analysis and splitting identifier lists the way
//! Postgres does (quotes keep case, unquoted names are folded to lower case).

use pgrx::pg_sys;

use super::{cstr_to_string, cstring};

/// A table opened with `AccessShareLock` (held to the end of the transaction,
/// so the definition cannot change under a shape being created).
pub struct OpenRel(pg_sys::Relation);

impl OpenRel {
    /// Opens the relation `relid`, or `None` if it no longer exists.
    ///
    /// Not inside a subtransaction: the relcache reference must belong to the
    /// caller's resource owner, which closes it.
    pub fn open(relid: pg_sys::Oid) -> Option<OpenRel> {
        // SAFETY: try_relation_open returns NULL for a missing relation instead of raising.
        let rel = unsafe { pg_sys::try_relation_open(relid, pg_sys::AccessShareLock as i32) };
        (!rel.is_null()).then_some(OpenRel(rel))
    }

    /// The raw relation, for the parser.
    pub fn raw(&self) -> pg_sys::Relation {
        self.0
    }
}

impl Drop for OpenRel {
    fn drop(&mut self) {
        // SAFETY: closes the relation opened in `open`; NoLock keeps the lock until the
        // end of the transaction, as Postgres does for relations used by a statement.
        unsafe { pg_sys::relation_close(self.0, pg_sys::NoLock as i32) }
    }
}

/// Splits `a, "B c", d` into `["a", "B c", "d"]`; `None` if the list is malformed.
pub fn split_identifiers(list: &str) -> Option<Vec<String>> {
    let c = cstring(list);
    // SAFETY: SplitIdentifierString scribbles on its input, so it gets a palloc'd copy;
    // the returned list's strings point into that copy, which we read before returning.
    unsafe {
        let buf = pg_sys::pstrdup(c.as_ptr());
        let mut names: *mut pg_sys::List = std::ptr::null_mut();
        if !pg_sys::SplitIdentifierString(buf, b',' as std::ffi::c_char, &mut names) {
            return None;
        }
        if names.is_null() {
            return Some(Vec::new());
        }
        Some(
            (0..(*names).length)
                .map(|i| cstr_to_string(pg_sys::list_nth(names, i) as *const std::ffi::c_char))
                .collect(),
        )
    }
}
