//! Evaluating a shape's WHERE with Postgres's own executor, on decoded rows.
//!
//! The decoder rebuilds each shape's analysed expression from its node string,
//! plans it (constant folding, function lookup) and compiles it to an
//! `ExprState` once. Rows are stored into a virtual slot of the table's tuple
//! descriptor and the expression is evaluated against it, so the live stream
//! and the snapshot query (which runs the same expression) cannot disagree.

use pgrx::pg_sys;

use pgrx::PgTryBuilder;

use super::xact::{MemoryContext, PgError};
use super::{cstring, text::OutputFn};

/// A compiled WHERE clause.
pub struct CompiledFilter {
    state: *mut pg_sys::ExprState,
    // Owns the ExprState and everything fmgr caches for it; dropped last.
    _cxt: MemoryContext,
}

/// A conjunct `column = constant` (or `column IN (constants)`) that lets the
/// decoder find the shape through a hash lookup instead of evaluating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EqualityKey {
    /// The column.
    pub attnum: i16,
    /// Text forms of the constants (as the column's output function prints them).
    pub values: Vec<Vec<u8>>,
}

/// Equality functions whose text output is canonical: two values are equal
/// exactly when their printed forms are, so a text-keyed hash lookup finds
/// precisely the rows the operator accepts.
const CANONICAL_EQUALITY_FUNCS: &[u32] = &[
    pg_sys::F_INT2EQ,
    pg_sys::F_INT4EQ,
    pg_sys::F_INT8EQ,
    pg_sys::F_INT24EQ,
    pg_sys::F_INT42EQ,
    pg_sys::F_INT28EQ,
    pg_sys::F_INT82EQ,
    pg_sys::F_INT48EQ,
    pg_sys::F_INT84EQ,
    pg_sys::F_TEXTEQ,
    pg_sys::F_BOOLEQ,
    pg_sys::F_UUID_EQ,
    pg_sys::F_ENUM_EQ,
    pg_sys::F_OIDEQ,
    pg_sys::F_DATE_EQ,
    pg_sys::F_CHAREQ,
    pg_sys::F_NAMEEQ,
];

impl CompiledFilter {
    /// Rebuilds, plans and compiles an expression from its node string, and
    /// finds an equality conjunct usable as a hash key.
    ///
    /// # Safety
    /// Must run inside a transaction (catalog lookups), in the process that will
    /// evaluate the filter.
    pub unsafe fn compile(node_string: &str) -> (CompiledFilter, Option<EqualityKey>) {
        let cxt = MemoryContext::long_lived(c"pg_shapes filter");
        let text = cstring(node_string);
        let (state, key) = cxt.switch_to(|| {
            // SAFETY: the string is a nodeToString of an analysed expression, written by
            // analyse_where in this same server; expression_planner and ExecInitExpr are
            // the standard path for evaluating a stand-alone expression (as for CHECK
            // constraints). Everything is allocated in `cxt`.
            unsafe {
                let expr = pg_sys::stringToNode(text.as_ptr()) as *mut pg_sys::Expr;
                let planned = pg_sys::expression_planner(expr);
                let key = equality_key(planned as *mut pg_sys::Node, cxt.raw());
                (pg_sys::ExecInitExpr(planned, std::ptr::null_mut()), key)
            }
        });
        (CompiledFilter { state, _cxt: cxt }, key)
    }
}

fn strip_relabel(mut node: *mut pg_sys::Node) -> *mut pg_sys::Node {
    // SAFETY: reads node tags and the RelabelType argument of analysed expressions.
    unsafe {
        while !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_RelabelType {
            node = (*(node as *mut pg_sys::RelabelType)).arg as *mut pg_sys::Node;
        }
    }
    node
}

fn plain_column(node: *mut pg_sys::Node) -> Option<i16> {
    let node = strip_relabel(node);
    // SAFETY: tag checked before the cast.
    unsafe {
        if !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_Var {
            let v = node as *mut pg_sys::Var;
            if (*v).varlevelsup == 0 && (*v).varattno > 0 {
                return Some((*v).varattno);
            }
        }
    }
    None
}

fn constant(node: *mut pg_sys::Node) -> Option<*mut pg_sys::Const> {
    let node = strip_relabel(node);
    // SAFETY: tag checked before the cast.
    unsafe {
        (!node.is_null() && (*node).type_ == pg_sys::NodeTag::T_Const && !(*(node as *mut pg_sys::Const)).constisnull)
            .then_some(node as *mut pg_sys::Const)
    }
}

fn canonical_equality(funcid: pg_sys::Oid, collation: pg_sys::Oid) -> bool {
    if !CANONICAL_EQUALITY_FUNCS.contains(&u32::from(funcid)) {
        return false;
    }
    // Text equality is bytewise only under a deterministic collation.
    // SAFETY: catalog lookup of a collation oid taken from an analysed expression.
    collation == pg_sys::InvalidOid || unsafe { pg_sys::get_collation_isdeterministic(collation) }
}

fn list_items(l: *mut pg_sys::List) -> Vec<*mut pg_sys::Node> {
    if l.is_null() {
        return Vec::new();
    }
    // SAFETY: a valid List of nodes.
    unsafe { (0..(*l).length).map(|i| pg_sys::list_nth(l, i) as *mut pg_sys::Node).collect() }
}

/// Finds the first `col = const` / `col = ANY(const array)` conjunct.
///
/// # Safety
/// `expr` is a planned boolean expression; runs inside a transaction.
unsafe fn equality_key(expr: *mut pg_sys::Node, cxt: pg_sys::MemoryContext) -> Option<EqualityKey> {
    // SAFETY: tags are checked before each cast; lists come from the planner.
    unsafe {
        let conjuncts = if (*expr).type_ == pg_sys::NodeTag::T_BoolExpr
            && (*(expr as *mut pg_sys::BoolExpr)).boolop == pg_sys::BoolExprType::AND_EXPR
        {
            list_items((*(expr as *mut pg_sys::BoolExpr)).args)
        } else {
            vec![expr]
        };
        for c in conjuncts {
            match (*c).type_ {
                pg_sys::NodeTag::T_OpExpr => {
                    let op = c as *mut pg_sys::OpExpr;
                    let args = list_items((*op).args);
                    if args.len() != 2 || !canonical_equality((*op).opfuncid, (*op).inputcollid) {
                        continue;
                    }
                    let (col, k) =
                        match (plain_column(args[0]), constant(args[1]), plain_column(args[1]), constant(args[0])) {
                            (Some(col), Some(k), _, _) | (_, _, Some(col), Some(k)) => (col, k),
                            _ => continue,
                        };
                    let out = OutputFn::new((*k).consttype, cxt);
                    return Some(EqualityKey { attnum: col, values: vec![out.to_vec((*k).constvalue)] });
                }
                pg_sys::NodeTag::T_ScalarArrayOpExpr => {
                    let op = c as *mut pg_sys::ScalarArrayOpExpr;
                    let args = list_items((*op).args);
                    if !(*op).useOr || args.len() != 2 || !canonical_equality((*op).opfuncid, (*op).inputcollid) {
                        continue;
                    }
                    let (Some(col), Some(k)) = (plain_column(args[0]), constant(args[1])) else { continue };
                    let arr = pg_sys::pg_detoast_datum((*k).constvalue.cast_mut_ptr()) as *mut pg_sys::ArrayType;
                    let elemtype = (*arr).elemtype;
                    let mut typlen: i16 = 0;
                    let mut typbyval = false;
                    let mut typalign: std::ffi::c_char = 0;
                    pg_sys::get_typlenbyvalalign(elemtype, &mut typlen, &mut typbyval, &mut typalign);
                    let mut elems: *mut pg_sys::Datum = std::ptr::null_mut();
                    let mut nulls: *mut bool = std::ptr::null_mut();
                    let mut n: std::ffi::c_int = 0;
                    pg_sys::deconstruct_array(
                        arr,
                        elemtype,
                        typlen as i32,
                        typbyval,
                        typalign,
                        &mut elems,
                        &mut nulls,
                        &mut n,
                    );
                    let out = OutputFn::new(elemtype, cxt);
                    let values =
                        (0..n as usize).filter(|&i| !*nulls.add(i)).map(|i| out.to_vec(*elems.add(i))).collect();
                    return Some(EqualityKey { attnum: col, values });
                }
                _ => {}
            }
        }
        None
    }
}

/// A virtual tuple slot of one table's row type, with an expression context to
/// evaluate filters against it.
pub struct RowSlot {
    slot: *mut pg_sys::TupleTableSlot,
    econtext: *mut pg_sys::ExprContext,
    natts: usize,
    _cxt: MemoryContext,
}

impl RowSlot {
    /// Creates a slot for rows of `tupdesc` (copied, so the relation may close).
    ///
    /// # Safety
    /// `tupdesc` must be valid for the duration of the call.
    pub unsafe fn new(tupdesc: pg_sys::TupleDesc) -> RowSlot {
        let cxt = MemoryContext::long_lived(c"pg_shapes row slot");
        let (slot, econtext, natts) = cxt.switch_to(|| {
            // SAFETY: standard slot and stand-alone expression context set-up in `cxt`.
            unsafe {
                let copy = pg_sys::CreateTupleDescCopy(tupdesc);
                let slot = pg_sys::MakeSingleTupleTableSlot(copy, &pg_sys::TTSOpsVirtual);
                (slot, pg_sys::CreateStandaloneExprContext(), (*copy).natts as usize)
            }
        });
        RowSlot { slot, econtext, natts, _cxt: cxt }
    }

    /// A slot for rows of a relation the decoder handed us.
    pub fn for_relation(rel: super::decoding::Rel) -> RowSlot {
        // SAFETY: the relation (and so its descriptor) is open for the callback's duration,
        // and `new` copies the descriptor.
        unsafe { Self::new(rel.tupdesc()) }
    }

    /// Number of attributes (dropped ones included).
    pub fn natts(&self) -> usize {
        self.natts
    }

    /// Stores a row given as deformed values; the datums must stay valid until the
    /// next `store` (they are referenced, not copied).
    pub fn store(&mut self, values: &[pg_sys::Datum], nulls: &[bool]) {
        assert!(values.len() == self.natts && nulls.len() == self.natts);
        // SAFETY: the slot is virtual with `natts` entries; clearing then filling
        // tts_values/tts_isnull and marking the tuple stored is how virtual slots are used.
        unsafe {
            let s = &mut *self.slot;
            if let Some(clear) = (*s.tts_ops).clear {
                clear(self.slot);
            }
            std::ptr::copy_nonoverlapping(values.as_ptr(), s.tts_values, self.natts);
            std::ptr::copy_nonoverlapping(nulls.as_ptr(), s.tts_isnull, self.natts);
            pg_sys::ExecStoreVirtualTuple(self.slot);
        }
    }

    /// Evaluates a filter on the stored row: true only for a non-null true result.
    ///
    /// An ERROR raised by the expression (division by zero, a failing cast, …) is
    /// returned instead of aborting the decoder, so one bad shape cannot stop the
    /// others. No subtransaction is needed: evaluating an immutable expression takes
    /// no locks and no buffers, and its memory is reset with the per-tuple context.
    pub fn matches(&self, filter: &CompiledFilter) -> Result<bool, PgError> {
        let (state, econtext, slot) = (filter.state, self.econtext, self.slot);
        // SAFETY: reading the context pointer of our own econtext.
        let per_tuple = unsafe { (*econtext).ecxt_per_tuple_memory };
        // SAFETY: CurrentMemoryContext is a plain global.
        let old = unsafe { pg_sys::CurrentMemoryContext };
        let result = PgTryBuilder::new(move || {
            let mut isnull = false;
            // SAFETY: the filter was compiled for this table's row type; the econtext's scan
            // tuple is the stored slot; evaluation allocates in the per-tuple context.
            unsafe {
                (*econtext).ecxt_scantuple = slot;
                let Some(f) = (*state).evalfunc else { return Ok(false) };
                pg_sys::MemoryContextSwitchTo(per_tuple);
                let d = pg_sys::ffi::pg_guard_ffi_boundary(|| f(state, econtext, &mut isnull));
                Ok(!isnull && d.value() != 0)
            }
        })
        .catch_others(|e| Err(PgError::from(e)))
        .catch_rust_panic(|e| Err(PgError::from(e)))
        .execute();
        // SAFETY: restores the context current before the call, on success and on error.
        unsafe { pg_sys::MemoryContextSwitchTo(old) };
        result
    }

    /// Frees memory used by evaluations since the last reset.
    pub fn reset(&self) {
        // SAFETY: the per-tuple memory of our own econtext; nothing from it is kept.
        unsafe { pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory) }
    }
}
