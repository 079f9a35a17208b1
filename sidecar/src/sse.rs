//! Server-sent events (`live=true&live_sse=true`): one `data:` event per
//! message, an up-to-date event after each batch, keep-alive comments, and the
//! stream closed after the SSE timeout (or at once when the log goes away; the
//! client then reconnects and gets the 409).

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::StatusCode;
use shape_log::{wire, LogOffset};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::App;
use crate::body::ShapeBody;
use crate::catalog::{Catalog, ShapeInfo};
use crate::error::ApiError;
use crate::params::{RequestOffset, ShapeRequest};
use crate::registry::OpenShape;
use crate::respond::{self, Reply};
use crate::serve::{self, ReadError};

const DATA: Bytes = Bytes::from_static(b"data: ");
const END: Bytes = Bytes::from_static(b"\n\n");
const KEEP_ALIVE: Bytes = Bytes::from_static(b": keep-alive\n\n");
/// Messages per channel item: bounds the memory a slow client can pin.
const BATCH: u64 = 256;

/// Checks the log, then answers with the stream's headers and starts the task
/// that feeds it. `head` answers the headers only.
pub async fn start<C: Catalog>(
    app: &Arc<App<C>>,
    req: &ShapeRequest,
    info: &ShapeInfo,
    shape: Arc<OpenShape>,
    head: bool,
) -> Result<Reply, ApiError> {
    // live_sse requires live, which excludes -1 and now, so the offset is a record offset.
    let RequestOffset::Log(start) = req.offset else {
        return Err(ApiError::invalid("offset", "has invalid format"));
    };
    match serve::observe(app, &shape) {
        Ok(obs) if obs.out_of_bounds(start) => return Err(serve::out_of_bounds()),
        Ok(_) => {}
        Err(ReadError::Gone) => return Err(app.gone_error(&req.definition, &shape).await),
        Err(ReadError::Api(e)) => return Err(e),
    }

    let mut reply = respond::empty(StatusCode::OK);
    let h = reply.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    respond::set(h, header::CACHE_CONTROL, &respond::sse_cache_control(app.settings.sse_timeout.as_millis() as u64));
    respond::set(h, respond::HANDLE, &info.handle);
    respond::set(h, respond::OFFSET, &start.to_string());
    respond::set(h, respond::CURSOR, &respond::live_cursor(app.settings.long_poll_timeout, req.cursor.as_deref()));
    let offset = start.to_string();
    respond::set(h, header::ETAG, &respond::etag(&info.handle, &offset, &offset, true));
    // Tell buffering proxies (nginx) to pass events through as they come.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if head {
        return Ok(reply);
    }
    let (tx, rx) = mpsc::channel(4);
    *reply.body_mut() = ShapeBody::stream(rx);
    tokio::spawn(feed(Arc::clone(app), shape, start, tx));
    Ok(reply)
}

/// Sends everything past `pos` as it becomes visible, until the timeout, the
/// log going away, shutdown, or the client leaving.
async fn feed<C: Catalog>(app: Arc<App<C>>, shape: Arc<OpenShape>, mut pos: LogOffset, tx: mpsc::Sender<Vec<Bytes>>) {
    let deadline = Instant::now() + app.settings.sse_timeout;
    let keepalive = app.settings.sse_keepalive;
    let mut shutdown = app.shutdown_signal();
    let mut changes = shape.subscribe();
    let mut last_write = Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Ok(obs) = serve::observe(&app, &shape) else { return };
        if obs.live {
            let from = obs.view.find_after(pos, obs.visible);
            if from < obs.visible {
                let mut i = from;
                while i < obs.visible {
                    let end = (i + BATCH).min(obs.visible);
                    let mut batch = Vec::with_capacity(3 * (end - i) as usize);
                    for j in i..end {
                        batch.extend([DATA, obs.view.message_bytes(j), END]);
                    }
                    if tx.send(batch).await.is_err() {
                        return;
                    }
                    i = end;
                }
                // The client takes `${global_last_seen_lsn}_0` as its next offset; G is
                // never a commit LSN, so that offset is past everything sent and before
                // everything not yet sent.
                let g = obs.g.unwrap_or(0);
                if tx.send(vec![DATA, Bytes::from(wire::up_to_date(g)), END]).await.is_err() {
                    return;
                }
                pos = obs.offset_of(obs.visible - 1);
                last_write = Instant::now();
            }
        }
        let wake_at = (last_write + keepalive).min(deadline);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = shutdown.changed() => {}
            _ = tx.closed() => return,
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        if now >= last_write + keepalive {
            if tx.send(vec![KEEP_ALIVE]).await.is_err() {
                return;
            }
            last_write = now;
        }
    }
}
