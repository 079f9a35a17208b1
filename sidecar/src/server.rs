//! The hyper server: accept loop, graceful shutdown, routing, authentication,
//! and the guard that turns a handler panic into a 500 instead of a lost connection.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{catalog_error, App, Settings};
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::notify::{Bell, Notifier};
use crate::params::{self, DeleteRequest, Query};
use crate::registry::Registry;
use crate::respond::{self, cache, Reply};
use crate::{serve as reader, sse, subset};

/// hyper refuses smaller read buffers.
const MIN_HEADER_BYTES: usize = 8192;

/// Serves HTTP on `listener` until `shutdown` completes, then stops accepting,
/// answers waiting long-polls, and gives in-flight responses
/// `settings.shutdown_grace` to finish.
pub async fn serve<C: Catalog>(
    listener: TcpListener,
    settings: Settings,
    catalog: C,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let registry = Arc::new(Registry::new(settings.storage_dir.clone()));
    let bell = Arc::new(Bell::default());
    let notifier = Notifier::start(Arc::clone(&registry), Arc::clone(&bell))?;
    let grace = settings.shutdown_grace;
    let max_header_bytes = settings.max_header_bytes.max(MIN_HEADER_BYTES);
    let app = Arc::new(App::new(settings, catalog, registry, bell, stop_rx));

    if app.registry.storage_dir().is_none() {
        // Learn the storage directory in the background, so the doorbell thread can
        // start before the first request (requests also ask when they need it).
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            while !app.shutting_down() && app.ensure_storage_dir().await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(max_header_bytes)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().max_header_list_size(max_header_bytes as u32).timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let app = Arc::clone(&app);
                    let svc = service_fn(move |req| {
                        let app = Arc::clone(&app);
                        async move { Ok::<_, Infallible>(handle(app, req).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }

    drop(listener);
    tracing::info!(connections = graceful.count(), "shutting down: answering waiting requests");
    let _ = stop_tx.send(true);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "connections still open after the grace period; closing them"),
    }
    drop(notifier);
    Ok(())
}

/// One request, start to finish: route, turn errors into responses, add CORS.
async fn handle<C: Catalog>(app: Arc<App<C>>, req: Request<Incoming>) -> Reply {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut reply = match CatchUnwind(Box::pin(route(&app, req))).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => respond::error_reply(&e),
        Err(panic) => {
            let what = panic_message(&*panic);
            tracing::error!(%method, %path, panic = %what, "request handler panicked");
            respond::error_reply(&ApiError::Internal(what))
        }
    };
    respond::add_cors(reply.headers_mut(), origin.as_ref());
    reply
        .headers_mut()
        .insert(respond::SERVER, HeaderValue::from_static(concat!("pg_shapes/", env!("CARGO_PKG_VERSION"))));
    let status = reply.status();
    if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request failed");
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    }
    reply
}

async fn route<C: Catalog>(app: &Arc<App<C>>, req: Request<Incoming>) -> Result<Reply, ApiError> {
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return Ok(respond::preflight(req.headers()));
    }
    match req.uri().path() {
        "/v1/shape" => {
            let q = Query::parse(req.uri().query());
            authenticate(&app.settings, &q)?;
            match method {
                Method::GET | Method::HEAD => get_shape(app, req, &q).await,
                Method::POST => post_shape(app, req, &q).await,
                Method::DELETE => delete_shape(app, &q).await,
                _ => Err(ApiError::MethodNotAllowed("GET, POST, HEAD, DELETE, OPTIONS")),
            }
        }
        "/v1/health" => match method {
            Method::GET | Method::HEAD => Ok(health(app).await),
            _ => Err(ApiError::MethodNotAllowed("GET, HEAD, OPTIONS")),
        },
        "/" => match method {
            Method::GET | Method::HEAD => Ok(respond::empty(StatusCode::OK)),
            _ => Err(ApiError::MethodNotAllowed("GET, HEAD, OPTIONS")),
        },
        _ => Err(ApiError::NotFound),
    }
}

/// Checks `secret`/`api_secret` in constant time when a secret is configured.
fn authenticate(settings: &Settings, q: &Query) -> Result<(), ApiError> {
    let Some(expected) = &settings.secret else { return Ok(()) };
    let given = q.secret().unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

async fn get_shape<C: Catalog>(app: &Arc<App<C>>, req: Request<Incoming>, q: &Query) -> Result<Reply, ApiError> {
    let shape_req = params::parse_shape_request(q, None)?;
    if shape_req.subset.is_some() {
        return subset::respond(app, &shape_req).await;
    }
    app.ensure_storage_dir().await?;
    let deadline = app.deadline();
    let (info, shape) = app.resolve(&shape_req.definition, shape_req.handle.as_deref(), deadline).await?;
    if shape_req.sse {
        return sse::start(app, &shape_req, &info, shape, req.method() == Method::HEAD).await;
    }
    reader::respond(app, &shape_req, &info, &shape, req.headers(), deadline).await
}

async fn post_shape<C: Catalog>(app: &Arc<App<C>>, req: Request<Incoming>, q: &Query) -> Result<Reply, ApiError> {
    let limit = app.settings.max_body_bytes;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge);
    }
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(ApiError::BodyTooLarge),
        Err(e) => {
            return Err(ApiError::BadBody(
                serde_json::json!({"error": "Could not read the request body", "details": e.to_string()}),
            ))
        }
    };
    let raw = params::parse_subset_body(&body).map_err(|e| {
        ApiError::BadBody(match &e {
            params::BodyError::InvalidJson(details) => serde_json::json!({"error": e.to_string(), "details": details}),
            params::BodyError::NotObject => serde_json::json!({"error": e.to_string()}),
        })
    })?;
    let shape_req = params::parse_shape_request(q, Some(raw))?;
    subset::respond(app, &shape_req).await
}

async fn delete_shape<C: Catalog>(app: &Arc<App<C>>, q: &Query) -> Result<Reply, ApiError> {
    match params::parse_delete_request(q)? {
        DeleteRequest::Handle(handle) => {
            let existed = app.catalog.delete_shape(&handle).await.map_err(catalog_error)?;
            app.registry.evict(&handle);
            if !existed {
                return Err(ApiError::NoSuchShape);
            }
        }
        DeleteRequest::Table(table) => {
            let n = app.catalog.delete_table_shapes(&table).await.map_err(catalog_error)?;
            tracing::info!(%table, deleted = n, "deleted the shapes of a table");
        }
        DeleteRequest::Definition(def) => {
            let info = app.shape_info(&def).await?;
            app.catalog.delete_shape(&info.handle).await.map_err(catalog_error)?;
            app.registry.evict(&info.handle);
        }
    }
    let mut reply = respond::empty(StatusCode::ACCEPTED);
    reply.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache::NO_CACHE));
    Ok(reply)
}

async fn health<C: Catalog>(app: &Arc<App<C>>) -> Reply {
    let (status, body) = if app.healthy().await {
        (StatusCode::OK, serde_json::json!({"status": "active"}))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"status": "waiting"}))
    };
    let mut reply = respond::json(status, &body);
    reply.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache::HEALTH));
    if status != StatusCode::OK {
        reply.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    reply
}

/// Polls a future, turning a panic inside it into an error value.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
