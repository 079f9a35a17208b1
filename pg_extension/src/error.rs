//! Errors that reach users: a sentence naming the problem, the shape parameter
//! it concerns (in DETAIL, so the sidecar can name it in a 400) and a SQLSTATE.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// The request parameter an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `table`
    Table,
    /// `where`
    Where,
    /// `params`
    Params,
    /// `columns`
    Columns,
    /// `replica`
    Replica,
    /// `log`
    Log,
    /// `handle`
    Handle,
    /// `subset__where`
    SubsetWhere,
    /// `subset__params`
    SubsetParams,
    /// `subset__order_by`
    SubsetOrderBy,
    /// `subset__limit`
    SubsetLimit,
    /// `subset__offset`
    SubsetOffset,
}

impl Param {
    /// Name used in the error DETAIL and by the sidecar's JSON body.
    pub fn name(self) -> &'static str {
        match self {
            Param::Table => "table",
            Param::Where => "where",
            Param::Params => "params",
            Param::Columns => "columns",
            Param::Replica => "replica",
            Param::Log => "log",
            Param::Handle => "handle",
            Param::SubsetWhere => "subset_where",
            Param::SubsetParams => "subset_params",
            Param::SubsetOrderBy => "subset_order_by",
            Param::SubsetLimit => "subset_limit",
            Param::SubsetOffset => "subset_offset",
        }
    }
}

/// A rejected shape definition or request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ShapeError {
    /// The sentence shown to the user.
    pub message: String,
    /// Which parameter was wrong.
    pub param: Param,
    /// SQLSTATE to raise.
    pub code: PgSqlErrorCode,
}

impl ShapeError {
    /// An invalid value (SQLSTATE 22023).
    pub fn invalid(param: Param, message: impl Into<String>) -> Self {
        ShapeError { message: message.into(), param, code: PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE }
    }

    /// An error with an explicit SQLSTATE.
    pub fn with_code(param: Param, code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        ShapeError { message: message.into(), param, code }
    }

    /// Raises the error as a Postgres ERROR; never returns.
    pub fn raise(self) -> ! {
        ErrorReport::new(self.code, self.message, "pg_shapes")
            .set_detail(format!("shape parameter: {}", self.param.name()))
            .report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// Result alias for definition and request handling.
pub type ShapeResult<T> = Result<T, ShapeError>;
