//! Shared state of the server and the step every shape request starts with:
//! definition → handle (cached) → open log, with the 409 rules for handles.

use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shape_log::LogState;
use tokio::sync::{watch, Mutex};

use crate::catalog::{Catalog, CatalogError, Rejection, ShapeInfo};
use crate::error::{ApiError, FieldErrors};
use crate::notify::Bell;
use crate::params::ShapeDefinition;
use crate::registry::{OpenError, OpenShape, Registry};

/// Runtime settings, independent of how they were configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a live request (or a request waiting for a snapshot) is held.
    pub long_poll_timeout: Duration,
    /// How long an SSE stream stays open.
    pub sse_timeout: Duration,
    /// Silence after which an SSE stream gets a keep-alive comment.
    pub sse_keepalive: Duration,
    /// `chunk_bytes` for shapes this process creates.
    pub chunk_bytes: i32,
    /// When set, `/v1/shape` requests must carry it as `secret`/`api_secret`.
    pub secret: Option<String>,
    /// Where the logs are; asked from the database when `None`.
    pub storage_dir: Option<PathBuf>,
    /// How long shutdown waits for in-flight responses.
    pub shutdown_grace: Duration,
    /// Largest POST body.
    pub max_body_bytes: usize,
    /// Largest request line plus headers.
    pub max_header_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            long_poll_timeout: Duration::from_millis(20_000),
            sse_timeout: Duration::from_millis(60_000),
            sse_keepalive: Duration::from_secs(15),
            chunk_bytes: 10 * 1024 * 1024,
            secret: None,
            storage_dir: None,
            shutdown_grace: Duration::from_secs(5),
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// How long the health answer is reused, so health checks stay cheap.
const HEALTH_TTL: Duration = Duration::from_secs(1);
/// How often we look for a shape's log to appear after creating the shape.
const LOG_APPEAR_POLL: Duration = Duration::from_millis(20);
/// How often we re-ask the catalog when it keeps returning a handle whose log is gone.
const GONE_RETRIES: u32 = 3;
/// Catalog calls for the same definition run one at a time (striped by hash), so
/// a burst of clients asking for a new shape makes one database call, not hundreds.
const FLIGHT_STRIPES: usize = 64;

/// Everything a request handler needs.
pub struct App<C> {
    /// The settings.
    pub settings: Settings,
    /// The SQL API.
    pub catalog: C,
    /// Open logs and cached definitions.
    pub registry: Arc<Registry>,
    /// The doorbell (G), once it exists.
    pub bell: Arc<Bell>,
    shutdown: watch::Receiver<bool>,
    health: Mutex<Option<(Instant, bool)>>,
    storage_lookup: Mutex<()>,
    flights: [Mutex<()>; FLIGHT_STRIPES],
    flight_hasher: RandomState,
}

impl<C: Catalog> App<C> {
    /// Assembles the state; `shutdown` turns true when the server stops.
    pub fn new(
        settings: Settings,
        catalog: C,
        registry: Arc<Registry>,
        bell: Arc<Bell>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        App {
            settings,
            catalog,
            registry,
            bell,
            shutdown,
            health: Mutex::new(None),
            storage_lookup: Mutex::new(()),
            flights: std::array::from_fn(|_| Mutex::new(())),
            flight_hasher: RandomState::new(),
        }
    }

    /// A receiver that changes when shutdown starts.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// True once shutdown has started.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Makes sure the storage directory is known, asking the database if needed.
    pub async fn ensure_storage_dir(&self) -> Result<(), ApiError> {
        if self.registry.storage_dir().is_some() {
            return Ok(());
        }
        let _one_at_a_time = self.storage_lookup.lock().await;
        if self.registry.storage_dir().is_some() {
            return Ok(());
        }
        let dir = self.catalog.storage_dir().await.map_err(catalog_error)?;
        tracing::info!(storage_dir = %dir.display(), "storage directory from pg_shapes.storage_dir");
        self.registry.set_storage_dir(dir);
        Ok(())
    }

    /// True when the database answers `shapes.status()` and the storage directory
    /// is known; cached for a second.
    pub async fn healthy(&self) -> bool {
        let mut cached = self.health.lock().await;
        if let Some((at, ok)) = *cached {
            if at.elapsed() < HEALTH_TTL {
                return ok;
            }
        }
        let check = async { self.catalog.status().await.is_ok() && self.ensure_storage_dir().await.is_ok() };
        let ok = tokio::time::timeout(Duration::from_secs(3), check).await.unwrap_or(false);
        *cached = Some((Instant::now(), ok));
        ok
    }

    /// The catalog's answer for a definition, from the cache if possible.
    pub async fn shape_info(&self, def: &ShapeDefinition) -> Result<Arc<ShapeInfo>, ApiError> {
        match self.registry.cached_definition(def) {
            Some(c) => Ok(c.info),
            None => self.fetch_info(def, None).await,
        }
    }

    /// Asks the catalog (creating the shape if needed) and caches the answer.
    /// `stale` is the answer the caller found wrong: an answer cached by a
    /// concurrent call while we waited for our turn is used unless it is that one.
    pub async fn fetch_info(
        &self,
        def: &ShapeDefinition,
        stale: Option<&Arc<ShapeInfo>>,
    ) -> Result<Arc<ShapeInfo>, ApiError> {
        let stripe = (self.flight_hasher.hash_one(def) % FLIGHT_STRIPES as u64) as usize;
        let _turn = self.flights[stripe].lock().await;
        if let Some(cached) = self.registry.cached_definition(def) {
            if stale.is_none_or(|s| !Arc::ptr_eq(s, &cached.info)) {
                return Ok(cached.info);
            }
        }
        let info = self.catalog.get_or_create_shape(def, self.settings.chunk_bytes).await.map_err(catalog_error)?;
        let info = Arc::new(info);
        self.registry.cache_definition(def, Arc::clone(&info));
        Ok(info)
    }

    /// Finds the shape for a definition and opens its log, waiting (up to
    /// `deadline`) for a new shape's log to appear. When the client holds a
    /// handle that is not the definition's current one, answers 409 with the
    /// current handle; a gone log is replaced by asking the catalog again.
    pub async fn resolve(
        &self,
        def: &ShapeDefinition,
        client_handle: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> Result<(Arc<ShapeInfo>, Arc<OpenShape>), ApiError> {
        // An answer younger than the long-poll timeout is trusted to name a log that
        // will appear (a new shape's snapshotter is still starting); an older one
        // whose log is missing is checked with the catalog once.
        let (mut info, mut fresh) = match self.registry.cached_definition(def) {
            Some(c) => (c.info, c.fetched.elapsed() < self.settings.long_poll_timeout),
            None => (self.fetch_info(def, None).await?, true),
        };
        let mut gone_retries = 0;
        loop {
            match self.registry.get_or_open(&info.handle) {
                Ok(shape) => {
                    let state = shape.state();
                    if state.is_gone() {
                        self.registry.evict(&info.handle);
                        // A WHERE failing on the data fails every new shape of this
                        // definition too: that is the answer. Other failures are ours,
                        // and the catalog replaces such a shape like an invalidated one.
                        if state == LogState::Failed && is_where_failure(&shape.reason()) {
                            return Err(failed_error(&shape.reason()));
                        }
                        if fresh {
                            // The catalog has not replaced the shape yet; give it a moment.
                            gone_retries += 1;
                            if gone_retries > GONE_RETRIES {
                                return Err(ApiError::unavailable(format!(
                                    "shape {} is {} and has not been replaced yet",
                                    info.handle,
                                    state.as_str()
                                )));
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        info = self.fetch_info(def, Some(&info)).await?;
                        fresh = true;
                        continue;
                    }
                    check_handle(&info, client_handle)?;
                    return Ok((info, shape));
                }
                Err(OpenError::Missing) => {
                    if !fresh {
                        // A cached handle without a log: it may have been removed; ask again.
                        info = self.fetch_info(def, Some(&info)).await?;
                        fresh = true;
                        continue;
                    }
                    check_handle(&info, client_handle)?;
                    if tokio::time::Instant::now() >= deadline || self.shutting_down() {
                        return Err(ApiError::unavailable(format!(
                            "the log of shape {} is not available yet",
                            info.handle
                        )));
                    }
                    tokio::time::sleep(LOG_APPEAR_POLL).await;
                }
                Err(OpenError::NoStorageDir) => {
                    self.ensure_storage_dir().await?;
                }
                Err(OpenError::Log(e)) => {
                    tracing::error!(handle = %info.handle, error = %e, "cannot read shape log");
                    return Err(ApiError::unavailable(format!("cannot read the log of shape {}", info.handle)));
                }
            }
        }
    }

    /// The deadline of a request starting now: every wait of one request (for
    /// the log to appear, for its snapshot, for changes) shares it, so a client
    /// always has an answer within the long-poll timeout (its watchdog is 45 s).
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.settings.long_poll_timeout
    }

    /// The answer when a log turned out gone while serving it: 409 with the
    /// definition's new handle, or the failure's own error.
    pub async fn gone_error(&self, def: &ShapeDefinition, shape: &OpenShape) -> ApiError {
        let state = shape.state();
        self.registry.evict(shape.handle());
        if state == LogState::Failed && is_where_failure(&shape.reason()) {
            return failed_error(&shape.reason());
        }
        match self.resolve(def, Some(shape.handle()), self.deadline()).await {
            // Only reachable if the catalog hands back the same handle with a usable log.
            Ok((info, _)) => ApiError::MustRefetch { handle: Some(info.handle.clone()) },
            Err(e) => e,
        }
    }
}

fn check_handle(info: &ShapeInfo, client_handle: Option<&str>) -> Result<(), ApiError> {
    match client_handle {
        Some(h) if h != info.handle => Err(ApiError::MustRefetch { handle: Some(info.handle.clone()) }),
        _ => Ok(()),
    }
}

/// A failed log's reason starts with a category; `where: …` is the client's
/// WHERE clause failing on the data.
fn is_where_failure(reason: &str) -> bool {
    reason.starts_with("where:")
}

/// A failed log's reason starts with a category; `where: …` is the client's
/// WHERE clause failing on the data (400), anything else is ours (503).
pub fn failed_error(reason: &str) -> ApiError {
    if is_where_failure(reason) {
        ApiError::ShapeFailed(reason.to_string())
    } else {
        ApiError::unavailable(format!("the shape could not be built: {reason}"))
    }
}

/// Maps a catalog error to the HTTP answer.
pub fn catalog_error(e: CatalogError) -> ApiError {
    match e {
        CatalogError::Rejected { kind: Rejection::UnknownTable, message, .. } => ApiError::UnknownTable(message),
        CatalogError::Rejected { kind: Rejection::Forbidden, message, .. } => ApiError::Forbidden(message),
        CatalogError::Rejected { kind: Rejection::Invalid, param, message } => {
            let mut errs = FieldErrors::default();
            match param.as_deref() {
                Some(p) => match p.strip_prefix("subset_") {
                    Some(sub) => errs.add_nested("subset", sub, message),
                    None => errs.add(p, message),
                },
                None => errs.add("shape", message),
            }
            ApiError::Invalid(errs)
        }
        CatalogError::Unavailable(m) => {
            tracing::warn!(error = %m, "database unavailable");
            ApiError::unavailable(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failed_where_is_a_400_and_other_failures_are_503() {
        let e = failed_error("where: division by zero");
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"message": "where: division by zero", "errors": {"where": ["where: division by zero"]}})
        );
        assert_eq!(failed_error("snapshot: could not serialize access").status(), 503);
    }

    #[test]
    fn catalog_rejections_name_their_parameter() {
        let e = catalog_error(CatalogError::Rejected {
            kind: Rejection::Invalid,
            param: Some("subset_order_by".into()),
            message: "syntax error".into(),
        });
        assert_eq!(e.body()["errors"], json!({"subset": {"order_by": ["syntax error"]}}));
        let e = catalog_error(CatalogError::Rejected {
            kind: Rejection::Invalid,
            param: Some("columns".into()),
            message: "missing key".into(),
        });
        assert_eq!(e.body()["errors"], json!({"columns": ["missing key"]}));
        assert_eq!(catalog_error(CatalogError::Unavailable("down".into())).status(), 503);
    }
}
