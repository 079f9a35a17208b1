//! pg_shapes sidecar: an HTTP server for Electric's shape protocol that reads
//! the shape logs the pg_shapes extension writes.
//!
//! Modules, one job each:
//! - [`config`]: environment variables and flags.
//! - [`server`]: hyper accept loop, graceful shutdown, routing, auth.
//! - [`params`]: request parsing and validation (pure).
//! - [`catalog`]: the extension's SQL API over a connection pool, behind a trait.
//! - [`app`]: shared state; definition → handle → open log, 409 rules.
//! - [`registry`]: open logs, chunk indexes, waiters, definition cache.
//! - [`notify`]: the doorbell thread that wakes waiters.
//! - [`serve`]: cutting and waiting for one request, the JSON-array response.
//! - [`sse`]: server-sent events.
//! - [`subset`]: subset snapshots.
//! - [`respond`]: headers, etags, cache-control, cursors, CORS, error bodies.
//! - [`body`]: the zero-copy response body.
//! - [`error`]: error types and their HTTP mapping.

pub mod app;
pub mod body;
pub mod catalog;
pub mod config;
pub mod error;
pub mod notify;
pub mod params;
pub mod registry;
pub mod respond;
pub mod serve;
pub mod server;
pub mod sse;
pub mod subset;

pub use app::Settings;
pub use catalog::{Catalog, CatalogError, PgCatalog, Rejection, ShapeInfo};
pub use server::serve;
