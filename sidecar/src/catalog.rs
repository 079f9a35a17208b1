//! The database side: the extension's SQL API (`docs/sql-api.md`), called over a
//! small connection pool, behind the [`Catalog`] trait so tests can use a fake.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::params::{ShapeDefinition, Subset};

/// What `shapes.get_or_create_shape` tells about a shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeInfo {
    /// The handle, also the name of the log directory.
    pub handle: String,
    /// JSON for the `electric-schema` header.
    pub electric_schema: String,
}

/// How the database rejected a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The table does not exist (404).
    UnknownTable,
    /// The caller may not read the table (403).
    Forbidden,
    /// Any other invalid input (400).
    Invalid,
}

/// Errors of the SQL API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The extension refused the input; `param` is the request parameter it
    /// concerns (from the error's `DETAIL: shape parameter: <name>`).
    #[error("{message}")]
    Rejected {
        /// Which kind of refusal.
        kind: Rejection,
        /// The parameter named by the error, if any.
        param: Option<String>,
        /// Postgres' message.
        message: String,
    },
    /// The database cannot be reached or cannot serve right now.
    #[error("{0}")]
    Unavailable(String),
}

/// The SQL API the sidecar needs. Implementations must be cheap to share.
pub trait Catalog: Send + Sync + 'static {
    /// `shapes.get_or_create_shape(...)`; `chunk_bytes` applies to a new shape.
    fn get_or_create_shape(
        &self,
        def: &ShapeDefinition,
        chunk_bytes: i32,
    ) -> impl Future<Output = Result<ShapeInfo, CatalogError>> + Send;

    /// `shapes.delete_shape(handle)`; true if it existed.
    fn delete_shape(&self, handle: &str) -> impl Future<Output = Result<bool, CatalogError>> + Send;

    /// `shapes.delete_table_shapes(table)`; how many were deleted.
    fn delete_table_shapes(&self, table: &str) -> impl Future<Output = Result<i64, CatalogError>> + Send;

    /// `shapes.subset(...)`: the subset response body as JSON text.
    fn subset(&self, handle: &str, subset: &Subset) -> impl Future<Output = Result<String, CatalogError>> + Send;

    /// `shapes.status()`: succeeds when the database and the extension are usable.
    fn status(&self) -> impl Future<Output = Result<(), CatalogError>> + Send;

    /// `shapes.storage_dir()`: the absolute directory the extension writes logs to.
    fn storage_dir(&self) -> impl Future<Output = Result<PathBuf, CatalogError>> + Send;
}

// The exact statements, in one place so they can be checked against the extension.
const SQL_GET_OR_CREATE: &str = "SELECT handle, electric_schema FROM shapes.get_or_create_shape(\
     $1::text, $2::text, $3::text[], $4::text, $5::text, $6::text, $7::integer)";
const SQL_DELETE_SHAPE: &str = "SELECT shapes.delete_shape($1::text)";
const SQL_DELETE_TABLE: &str = "SELECT shapes.delete_table_shapes($1::text)::bigint";
const SQL_SUBSET: &str = "SELECT shapes.subset($1::text, $2::text, $3::text[], $4::text, $5::bigint, $6::bigint)";
const SQL_STATUS: &str = "SELECT shapes.status()::text";
// The setting may be relative to the data directory; the function resolves it.
const SQL_STORAGE_DIR: &str = "SELECT shapes.storage_dir()";

/// The real catalog: a tokio-postgres pool against `DATABASE_URL`.
pub struct PgCatalog {
    pool: Pool,
    /// Upper bound on one SQL call, so a stuck database answers 503 rather than hanging requests.
    call_timeout: Duration,
}

impl PgCatalog {
    /// Builds the pool; connections are opened lazily, so this succeeds without a database.
    pub fn new(database_url: &str, pool_size: usize) -> Result<PgCatalog, String> {
        let mut config = tokio_postgres::Config::from_str(database_url).map_err(|e| format!("DATABASE_URL: {e}"))?;
        if config.get_application_name().is_none() {
            config.application_name("pg_shapes_sidecar");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| format!("connection pool: {e}"))?;
        Ok(PgCatalog { pool, call_timeout: Duration::from_secs(30) })
    }

    /// Runs one statement on a pooled connection and returns its single row.
    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, CatalogError> {
        let work = async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
            client.query_one(&stmt, params).await.map_err(pg_error)
        };
        tokio::time::timeout(self.call_timeout, work)
            .await
            .unwrap_or_else(|_| Err(CatalogError::Unavailable("the database did not answer in time".into())))
    }
}

impl Catalog for PgCatalog {
    async fn get_or_create_shape(&self, def: &ShapeDefinition, chunk_bytes: i32) -> Result<ShapeInfo, CatalogError> {
        let row = self
            .query_one(
                SQL_GET_OR_CREATE,
                &[
                    &def.table,
                    &def.where_clause,
                    &def.params,
                    &def.columns,
                    &def.replica.as_str(),
                    &def.log_mode.as_str(),
                    &chunk_bytes,
                ],
            )
            .await?;
        let handle: String = row.try_get(0).map_err(pg_error)?;
        let electric_schema: Option<String> = row.try_get(1).map_err(pg_error)?;
        Ok(ShapeInfo { handle, electric_schema: electric_schema.unwrap_or_else(|| "{}".into()) })
    }

    async fn delete_shape(&self, handle: &str) -> Result<bool, CatalogError> {
        let row = self.query_one(SQL_DELETE_SHAPE, &[&handle]).await?;
        Ok(row.try_get::<_, Option<bool>>(0).map_err(pg_error)?.unwrap_or(false))
    }

    async fn delete_table_shapes(&self, table: &str) -> Result<i64, CatalogError> {
        let row = self.query_one(SQL_DELETE_TABLE, &[&table]).await?;
        Ok(row.try_get::<_, Option<i64>>(0).map_err(pg_error)?.unwrap_or(0))
    }

    async fn subset(&self, handle: &str, s: &Subset) -> Result<String, CatalogError> {
        let row = self
            .query_one(SQL_SUBSET, &[&handle, &s.where_clause, &s.params, &s.order_by, &s.limit, &s.offset])
            .await?;
        row.try_get::<_, Option<String>>(0)
            .map_err(pg_error)?
            .ok_or_else(|| CatalogError::Unavailable("shapes.subset returned NULL".into()))
    }

    async fn status(&self) -> Result<(), CatalogError> {
        self.query_one(SQL_STATUS, &[]).await.map(|_| ())
    }

    async fn storage_dir(&self) -> Result<PathBuf, CatalogError> {
        let row = self.query_one(SQL_STORAGE_DIR, &[]).await?;
        let dir: Option<String> = row.try_get(0).map_err(pg_error)?;
        match dir {
            Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
            _ => Err(CatalogError::Unavailable("pg_shapes.storage_dir is not set".into())),
        }
    }
}

fn pool_error(e: PoolError) -> CatalogError {
    match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(_) => CatalogError::Unavailable("timed out waiting for a database connection".into()),
        other => CatalogError::Unavailable(format!("database connection pool: {other}")),
    }
}

fn pg_error(e: tokio_postgres::Error) -> CatalogError {
    match e.as_db_error() {
        Some(db) => map_db_error(db.code().code(), db.message(), db.detail()),
        // No server error: the connection failed or broke.
        None => CatalogError::Unavailable(format!("database unreachable: {e}")),
    }
}

/// Maps a Postgres error to a catalog error, using the SQL API's
/// `DETAIL: shape parameter: <name>` convention to name the parameter.
pub fn map_db_error(sqlstate: &str, message: &str, detail: Option<&str>) -> CatalogError {
    let param = detail
        .and_then(|d| d.trim().strip_prefix("shape parameter:"))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty());
    let rejected = |kind| CatalogError::Rejected { kind, param: param.clone(), message: message.to_string() };
    match sqlstate {
        "42P01" => rejected(Rejection::UnknownTable),
        "42501" => rejected(Rejection::Forbidden),
        // The extension or one of its functions is missing: not the client's fault.
        "3F000" | "42883" if param.is_none() => {
            CatalogError::Unavailable(format!("the pg_shapes extension is not usable: {message}"))
        }
        _ if param.is_some() => rejected(Rejection::Invalid),
        // Without the DETAIL, data exceptions, syntax and access errors, integrity
        // and program-limit errors still come from the input; anything else is the server's.
        s if ["22", "42", "23", "54"].iter().any(|class| s.starts_with(class)) => rejected(Rejection::Invalid),
        _ => CatalogError::Unavailable(format!("database error: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detail_names_the_parameter() {
        assert_eq!(
            map_db_error("42703", "column \"x\" does not exist", Some("shape parameter: where")),
            CatalogError::Rejected {
                kind: Rejection::Invalid,
                param: Some("where".into()),
                message: "column \"x\" does not exist".into()
            }
        );
    }

    #[test]
    fn unknown_tables_and_permissions_have_their_own_kinds() {
        assert!(matches!(
            map_db_error("42P01", "no such table", Some("shape parameter: table")),
            CatalogError::Rejected { kind: Rejection::UnknownTable, .. }
        ));
        assert!(matches!(
            map_db_error("42501", "permission denied", Some("shape parameter: table")),
            CatalogError::Rejected { kind: Rejection::Forbidden, .. }
        ));
    }

    #[test]
    fn a_missing_extension_or_server_trouble_is_unavailable() {
        assert!(matches!(
            map_db_error("3F000", "schema \"shapes\" does not exist", None),
            CatalogError::Unavailable(_)
        ));
        assert!(matches!(map_db_error("42883", "function does not exist", None), CatalogError::Unavailable(_)));
        assert!(matches!(map_db_error("57P01", "terminating connection", None), CatalogError::Unavailable(_)));
        assert!(matches!(
            map_db_error("22012", "division by zero", None),
            CatalogError::Rejected { kind: Rejection::Invalid, param: None, .. }
        ));
    }
}
