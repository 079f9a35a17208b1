//! Postgres's own parser and analyser applied to a shape's WHERE clause (and a
//! subset's ORDER BY): the text is parsed as part of a fixed statement, the
//! parse tree's shape is checked so nothing but one expression got in, the
//! expression is analysed against the table (types, operators, functions,
//! collations), `$n` parameters are bound as typed constants, and the result
//! is checked for immutability. The output is the analysed expression as a
//! node string (for the decoder) and deparsed SQL (for the snapshot query).

use std::ffi::c_void;

use pgrx::pg_sys;

use super::xact::{try_subtransaction, PgError};
use super::{cstr_to_string, cstring};

/// Why an expression was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExprError {
    /// Postgres could not parse or analyse it (the message is Postgres's own).
    #[error("{0}")]
    Postgres(PgError),
    /// It parsed, but as more than one expression (e.g. a UNION or a second statement).
    #[error("{0}")]
    NotAnExpression(String),
    /// It calls a function that is not immutable.
    #[error("{what} calls {func}(), which is not immutable: a shape's rows must depend on the row alone, so now(), random() and the like cannot be used")]
    NotImmutable {
        /// "WHERE" or "ORDER BY".
        what: &'static str,
        /// Function name.
        func: String,
    },
    /// It contains a sub-query.
    #[error("{0} contains a sub-query; shapes support expressions over the table's own columns only")]
    SubQuery(&'static str),
    /// It references a system column.
    #[error("{what} references the system column {column}, which logical decoding does not carry")]
    SystemColumn {
        /// "WHERE" or "ORDER BY".
        what: &'static str,
        /// Column name.
        column: String,
    },
    /// A `$n` parameter problem (missing value, unused slot, unknown type).
    #[error("{0}")]
    Params(String),
    /// A parameter value is not valid input for its type.
    #[error("parameter ${n}: {err}")]
    ParamValue {
        /// Parameter number.
        n: usize,
        /// Postgres's input error.
        err: PgError,
    },
}

impl ExprError {
    /// The SQLSTATE to report.
    pub fn code(&self) -> pgrx::PgSqlErrorCode {
        match self {
            ExprError::Postgres(e) => e.code,
            ExprError::NotAnExpression(_) => pgrx::PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            ExprError::ParamValue { err, .. } => err.code,
            _ => pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        }
    }

    /// True when the problem is in the parameter values rather than the expression.
    pub fn is_about_params(&self) -> bool {
        matches!(self, ExprError::Params(_) | ExprError::ParamValue { .. })
    }
}

/// An analysed, parameter-free, immutable boolean expression over one table.
#[derive(Debug, Clone)]
pub struct AnalysedWhere {
    /// `nodeToString` of the expression, for the decoder to rebuild and evaluate.
    pub node: String,
    /// The expression deparsed with only pg_catalog on the search path.
    pub sql: String,
}

/// Parses `prefix + text` and returns the single `SelectStmt`, checked so that
/// only the clause the caller expects is present.
///
/// # Safety
/// Must run inside a transaction; returns a pointer into the current memory context.
unsafe fn parse_select(prefix: &str, text: &str, clause: Clause) -> Result<*mut pg_sys::SelectStmt, ExprError> {
    let sql = cstring(&format!("{prefix}{text}"));
    let sql_ptr = sql.as_ptr();
    let list = try_subtransaction(move || {
        // SAFETY: raw_parser only reads the NUL-terminated string and allocates its result
        // in the current memory context (the caller's, restored by try_subtransaction).
        unsafe { pg_sys::raw_parser(sql_ptr, pg_sys::RawParseMode::RAW_PARSE_DEFAULT) }
    })
    .map_err(ExprError::Postgres)?;
    let what = clause.name();
    let bad =
        || ExprError::NotAnExpression(format!("{what} must be a single expression, not a statement or query fragment"));
    // SAFETY: raw_parser returned a valid List of RawStmt (or NIL); we only read node tags
    // and fields of the types the tags say they are.
    unsafe {
        if list.is_null() || (*list).length != 1 {
            return Err(bad());
        }
        let raw = pg_sys::list_nth(list, 0) as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            return Err(bad());
        }
        let s = stmt as *mut pg_sys::SelectStmt;
        let s_ref = &*s;
        let only_expected = s_ref.op == pg_sys::SetOperation::SETOP_NONE
            && s_ref.distinctClause.is_null()
            && s_ref.intoClause.is_null()
            && !s_ref.targetList.is_null()
            && (*s_ref.targetList).length == 1
            && s_ref.fromClause.is_null()
            && s_ref.groupClause.is_null()
            && !s_ref.groupDistinct
            && s_ref.havingClause.is_null()
            && s_ref.windowClause.is_null()
            && s_ref.valuesLists.is_null()
            && s_ref.limitOffset.is_null()
            && s_ref.limitCount.is_null()
            && s_ref.lockingClause.is_null()
            && s_ref.withClause.is_null()
            && match clause {
                Clause::Where => !s_ref.whereClause.is_null() && s_ref.sortClause.is_null(),
                Clause::OrderBy => s_ref.whereClause.is_null() && !s_ref.sortClause.is_null(),
            };
        if !only_expected {
            return Err(bad());
        }
        Ok(s)
    }
}

#[derive(Debug, Clone, Copy)]
enum Clause {
    Where,
    OrderBy,
}

impl Clause {
    fn name(self) -> &'static str {
        match self {
            Clause::Where => "WHERE",
            Clause::OrderBy => "ORDER BY",
        }
    }
}

/// A parse state with the table as the only range-table entry and `$n` typing enabled.
struct Analyser {
    pstate: *mut pg_sys::ParseState,
    param_types: *mut pg_sys::Oid,
    num_params: std::ffi::c_int,
}

impl Analyser {
    /// # Safety
    /// `rel` must be an open relation; must run inside a transaction.
    unsafe fn new(rel: pg_sys::Relation, source: &std::ffi::CStr) -> Box<Analyser> {
        let mut a =
            Box::new(Analyser { pstate: std::ptr::null_mut(), param_types: std::ptr::null_mut(), num_params: 0 });
        // SAFETY: standard parse-analysis set-up, as transformWhereClause's callers do; the
        // boxed Analyser gives the variable-parameter hook stable pointers to grow its array.
        unsafe {
            a.pstate = pg_sys::make_parsestate(std::ptr::null_mut());
            (*a.pstate).p_sourcetext = pg_sys::pstrdup(source.as_ptr());
            super::ffi::setup_parse_variable_parameters(a.pstate, &mut a.param_types, &mut a.num_params);
            let nsitem = pg_sys::addRangeTableEntryForRelation(
                a.pstate,
                rel,
                pg_sys::AccessShareLock as i32,
                std::ptr::null_mut(),
                false,
                false,
            );
            pg_sys::addNSItemToQuery(a.pstate, nsitem, false, true, true);
        }
        a
    }

    /// Analyses one raw expression in the given clause kind.
    fn transform(
        &self,
        raw: *mut pg_sys::Node,
        kind: pg_sys::ParseExprKind::Type,
    ) -> Result<*mut pg_sys::Node, ExprError> {
        let pstate = self.pstate;
        try_subtransaction(move || {
            // SAFETY: `raw` is a parse tree from parse_select, `pstate` is set up for the table.
            unsafe {
                let mut e = pg_sys::transformExpr(pstate, raw, kind);
                if kind == pg_sys::ParseExprKind::EXPR_KIND_WHERE {
                    e = pg_sys::coerce_to_boolean(pstate, e, c"WHERE".as_ptr());
                }
                pg_sys::assign_expr_collations(pstate, e);
                e
            }
        })
        .map_err(ExprError::Postgres)
    }

    /// The types the analyser inferred for `$1..$n`.
    fn param_types(&self) -> Vec<pg_sys::Oid> {
        // SAFETY: the hook keeps `param_types` allocated for `num_params` entries.
        (0..self.num_params.max(0) as usize).map(|i| unsafe { *self.param_types.add(i) }).collect()
    }
}

struct BindContext {
    consts: Vec<*mut pg_sys::Node>,
}

/// Replaces every `$n` with the constant bound for it.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn bind_params_mutator(node: *mut pg_sys::Node, context: *mut c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    // SAFETY: `context` is the BindContext passed by `bind_params`; node tags identify types.
    unsafe {
        if (*node).type_ == pg_sys::NodeTag::T_Param {
            let p = node as *mut pg_sys::Param;
            if (*p).paramkind == pg_sys::ParamKind::PARAM_EXTERN {
                let ctx = &*(context as *const BindContext);
                let i = (*p).paramid as usize - 1;
                return pg_sys::copyObjectImpl(ctx.consts[i] as *const c_void) as *mut pg_sys::Node;
            }
        }
        pg_sys::expression_tree_mutator(
            node,
            Some(std::mem::transmute::<MutatorFn, BindgenMutatorFn>(bind_params_mutator)),
            context,
        )
    }
}

type MutatorFn = unsafe extern "C-unwind" fn(*mut pg_sys::Node, *mut c_void) -> *mut pg_sys::Node;
type BindgenMutatorFn = unsafe extern "C-unwind" fn() -> *mut pg_sys::Node;

/// Builds typed constants for `$1..$n` and substitutes them into `expr`.
fn bind_params(
    expr: *mut pg_sys::Node,
    types: &[pg_sys::Oid],
    values: &[Option<String>],
) -> Result<*mut pg_sys::Node, ExprError> {
    for (i, &t) in types.iter().enumerate() {
        if t == pg_sys::InvalidOid {
            return Err(ExprError::Params(format!(
                "the expression uses ${} but not ${}; number parameters from $1 without gaps",
                types.len(),
                i + 1
            )));
        }
        if t == pg_sys::UNKNOWNOID {
            return Err(ExprError::Params(format!(
                "could not determine the type of ${}; add a cast such as ${}::text",
                i + 1,
                i + 1
            )));
        }
    }
    if values.len() != types.len() {
        return Err(ExprError::Params(if values.len() < types.len() {
            format!(
                "the expression uses ${} but {} parameter value{} given",
                types.len(),
                values.len(),
                if values.len() == 1 { " was" } else { "s were" }
            )
        } else {
            format!("{} parameter values were given but the expression uses only {}", values.len(), types.len())
        }));
    }
    let mut consts = Vec::with_capacity(types.len());
    for (i, (&typ, value)) in types.iter().zip(values).enumerate() {
        let mut typlen: i16 = 0;
        let mut typbyval = false;
        // SAFETY: out-pointers to locals for a valid type oid.
        let collation = unsafe {
            pg_sys::get_typlenbyval(typ, &mut typlen, &mut typbyval);
            pg_sys::get_typcollation(typ)
        };
        let datum = match value {
            None => pg_sys::Datum::from(0usize),
            Some(text) => {
                let text = text.clone();
                try_subtransaction(move || super::text::input_datum(typ, -1, &text))
                    .map_err(|err| ExprError::ParamValue { n: i + 1, err })?
            }
        };
        // SAFETY: makeConst copies nothing it does not own; the datum was built for `typ`.
        let c = unsafe { pg_sys::makeConst(typ, -1, collation, typlen as i32, datum, value.is_none(), typbyval) };
        consts.push(c as *mut pg_sys::Node);
    }
    if consts.is_empty() {
        return Ok(expr);
    }
    let ctx = BindContext { consts };
    // SAFETY: the mutator only reads `ctx` during this call.
    Ok(unsafe { bind_params_mutator(expr, &ctx as *const BindContext as *mut c_void) })
}

struct CheckContext {
    what: &'static str,
    relid: pg_sys::Oid,
    problem: Option<ExprError>,
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn not_immutable(func: pg_sys::Oid, _ctx: *mut c_void) -> bool {
    // SAFETY: catalog lookup of a function oid taken from an analysed expression.
    unsafe { pg_sys::func_volatile(func) != pg_sys::PROVOLATILE_IMMUTABLE as std::ffi::c_char }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `context` is the CheckContext of `check_expression`; tags identify node types.
    unsafe {
        let ctx = &mut *(context as *mut CheckContext);
        match (*node).type_ {
            pg_sys::NodeTag::T_SubLink => {
                ctx.problem = Some(ExprError::SubQuery(ctx.what));
                return true;
            }
            pg_sys::NodeTag::T_Var => {
                let v = node as *mut pg_sys::Var;
                if (*v).varattno < 0 {
                    let name = cstr_to_string(pg_sys::get_attname(ctx.relid, (*v).varattno, true));
                    ctx.problem = Some(ExprError::SystemColumn { what: ctx.what, column: name });
                    return true;
                }
            }
            _ => {}
        }
        let mut bad_func = pg_sys::InvalidOid;
        if pg_sys::check_functions_in_node(node, Some(record_not_immutable), &mut bad_func as *mut _ as *mut c_void) {
            let name = cstr_to_string(pg_sys::get_func_name(bad_func));
            ctx.problem = Some(ExprError::NotImmutable { what: ctx.what, func: name });
            return true;
        }
        pg_sys::expression_tree_walker(node, Some(check_walker), context)
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn record_not_immutable(func: pg_sys::Oid, out: *mut c_void) -> bool {
    // SAFETY: `out` points at the caller's Oid.
    unsafe {
        if not_immutable(func, std::ptr::null_mut()) {
            *(out as *mut pg_sys::Oid) = func;
            return true;
        }
    }
    false
}

fn check_expression(expr: *mut pg_sys::Node, what: &'static str, relid: pg_sys::Oid) -> Result<(), ExprError> {
    let mut ctx = CheckContext { what, relid, problem: None };
    // SAFETY: walks an analysed expression tree; the walker only reads it.
    unsafe { check_walker(expr, &mut ctx as *mut CheckContext as *mut c_void) };
    ctx.problem.map_or(Ok(()), Err)
}

/// Deparses an analysed expression over `rel` with only pg_catalog on the search path.
fn deparse(expr: *mut pg_sys::Node, rel: pg_sys::Relation) -> String {
    super::with_settings(&[super::CATALOG_SEARCH_PATH], || {
        // SAFETY: `rel` is open; deparse_context_for builds a context naming it; the
        // result is a palloc'd string we copy out.
        unsafe {
            let relid = (*rel).rd_id;
            let name = pg_sys::get_rel_name(relid);
            let dpcontext = pg_sys::deparse_context_for(name, relid);
            cstr_to_string(pg_sys::deparse_expression(expr, dpcontext, false, false))
        }
    })
}

/// Parses, analyses, binds and checks a WHERE clause over `rel`.
///
/// # Safety
/// `rel` must be an open relation; must run inside a transaction.
pub unsafe fn analyse_where(
    rel: pg_sys::Relation,
    text: &str,
    params: &[Option<String>],
) -> Result<AnalysedWhere, ExprError> {
    const PREFIX: &str = "SELECT 1 WHERE ";
    // SAFETY: per this function's contract.
    let stmt = unsafe { parse_select(PREFIX, text, Clause::Where)? };
    let source = cstring(&format!("{PREFIX}{text}"));
    // SAFETY: `rel` is open per contract.
    let an = unsafe { Analyser::new(rel, &source) };
    // SAFETY: `stmt` was checked to have a WHERE clause.
    let raw = unsafe { (*stmt).whereClause };
    let expr = an.transform(raw, pg_sys::ParseExprKind::EXPR_KIND_WHERE)?;
    let expr = bind_params(expr, &an.param_types(), params)?;
    // SAFETY: rel is open.
    let relid = unsafe { (*rel).rd_id };
    check_expression(expr, "WHERE", relid)?;
    // SAFETY: nodeToString returns a palloc'd string of the whole tree.
    let node = unsafe { cstr_to_string(pg_sys::nodeToString(expr as *const c_void)) };
    Ok(AnalysedWhere { node, sql: deparse(expr, rel) })
}

/// Parses and checks an ORDER BY list over `rel`; returns it deparsed, ready to
/// follow `ORDER BY`.
///
/// # Safety
/// `rel` must be an open relation; must run inside a transaction.
pub unsafe fn analyse_order_by(rel: pg_sys::Relation, text: &str) -> Result<String, ExprError> {
    const PREFIX: &str = "SELECT 1 ORDER BY ";
    // SAFETY: per this function's contract.
    let stmt = unsafe { parse_select(PREFIX, text, Clause::OrderBy)? };
    let source = cstring(&format!("{PREFIX}{text}"));
    // SAFETY: `rel` is open per contract.
    let an = unsafe { Analyser::new(rel, &source) };
    // SAFETY: rel is open.
    let relid = unsafe { (*rel).rd_id };
    let mut parts = Vec::new();
    // SAFETY: `stmt` was checked to have a non-empty sortClause of SortBy nodes.
    let items: Vec<*mut pg_sys::SortBy> = unsafe {
        let l = (*stmt).sortClause;
        (0..(*l).length).map(|i| pg_sys::list_nth(l, i) as *mut pg_sys::SortBy).collect()
    };
    for sb in items {
        // SAFETY: `sb` is a SortBy from the parser.
        let (node, dir, nulls) = unsafe { ((*sb).node, (*sb).sortby_dir, (*sb).sortby_nulls) };
        let expr = an.transform(node, pg_sys::ParseExprKind::EXPR_KIND_ORDER_BY)?;
        if !an.param_types().is_empty() {
            return Err(ExprError::Params("ORDER BY cannot use $n parameters".into()));
        }
        check_expression(expr, "ORDER BY", relid)?;
        let dir = match dir {
            pg_sys::SortByDir::SORTBY_DESC => " DESC",
            pg_sys::SortByDir::SORTBY_USING => {
                return Err(ExprError::NotAnExpression("ORDER BY … USING is not supported".into()))
            }
            _ => " ASC",
        };
        let nulls = match nulls {
            pg_sys::SortByNulls::SORTBY_NULLS_FIRST => " NULLS FIRST",
            pg_sys::SortByNulls::SORTBY_NULLS_LAST => " NULLS LAST",
            _ => "",
        };
        parts.push(format!("{}{dir}{nulls}", deparse(expr, rel)));
    }
    Ok(parts.join(", "))
}
