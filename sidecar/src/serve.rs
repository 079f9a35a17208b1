//! Reading a shape log for one request: where to cut, when to wait, and the
//! JSON-array response built from zero-copy slices of the log.
//!
//! The rules that keep clients correct:
//! - G (`complete_through`) is read before the log state and the record count.
//! - Only a `Live` log is ever reported up to date, with `global_last_seen_lsn = G`,
//!   and only after every record with `tx <= G` past the client's offset was sent;
//!   records with `tx > G` are held back until G covers them.
//! - Inside the snapshot only whole chunks are sent (offsets there name chunks),
//!   and an `offset=-1` response is exactly chunk 0 without up-to-date.
//! - A client at the end of a log that is not live yet waits, and then gets `[]`
//!   without up-to-date, never a fast empty answer.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;
use shape_log::{wire, LogOffset};
use tokio::time::Instant;

use crate::app::App;
use crate::body::ShapeBody;
use crate::catalog::{Catalog, ShapeInfo};
use crate::error::ApiError;
use crate::params::{RequestOffset, ShapeRequest};
use crate::registry::{Cut, Observed, OpenShape};
use crate::respond::{self, cache, Reply};

/// What a request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Non-live: answer at once once the log can say anything (wait only while it is not live).
    CatchUp,
    /// `live=true`: wait for new records up to the long-poll timeout.
    LongPoll,
}

/// What the log had for a request.
pub enum Outcome {
    /// Records to send; `up_to_date` is G when the response ends the log.
    Records { obs: Observed, cut: Cut, up_to_date: Option<u64> },
    /// Nothing new, and the log is live: `[up-to-date(G)]`.
    UpToDate { g: u64 },
    /// `offset=now` on a live log: `[up-to-date(G)]` at the latest offset.
    Now { latest: LogOffset, g: u64 },
    /// The log could not be reported on before the timeout: `[]`, no up-to-date.
    NotReady,
}

/// Why reading stopped without an outcome.
pub enum ReadError {
    /// The log is gone (invalidated, failed, deleted): the caller answers 409 or the failure.
    Gone,
    /// Any other error.
    Api(ApiError),
}

impl From<ApiError> for ReadError {
    fn from(e: ApiError) -> Self {
        ReadError::Api(e)
    }
}

/// The 400 for an offset no client can have been given.
pub fn out_of_bounds() -> ApiError {
    ApiError::invalid("offset", "out of bounds for this shape")
}

/// Looks at the log once; maps read errors and gone states.
pub fn observe<C: Catalog>(app: &App<C>, shape: &OpenShape) -> Result<Observed, ReadError> {
    let obs = shape.observe(&app.bell).map_err(|e| {
        if e.is_not_found() {
            // The directory vanished under us: the shape was removed.
            return ReadError::Gone;
        }
        tracing::error!(handle = shape.handle(), error = %e, "cannot read shape log");
        ReadError::Api(ApiError::unavailable("cannot read the shape log"))
    })?;
    if obs.state.is_gone() {
        return Err(ReadError::Gone);
    }
    Ok(obs)
}

/// Reads what the request should get, waiting (without holding a thread) for
/// the doorbell thread's signal when there is nothing to send yet.
pub async fn read<C: Catalog>(
    app: &App<C>,
    shape: &OpenShape,
    offset: RequestOffset,
    mode: Mode,
    deadline: Instant,
) -> Result<Outcome, ReadError> {
    let mut shutdown = app.shutdown_signal();
    // Subscribe before looking, so a change right after the look still wakes us.
    let mut changes = shape.subscribe();
    loop {
        let obs = observe(app, shape)?;
        let g = obs.g.unwrap_or(0);
        let initial = offset == RequestOffset::Log(LogOffset::BeforeAll);
        match offset {
            RequestOffset::Now if obs.live => return Ok(Outcome::Now { latest: obs.latest(), g }),
            RequestOffset::Now => {}
            RequestOffset::Log(o) => {
                if obs.out_of_bounds(o) {
                    return Err(out_of_bounds().into());
                }
                if let Some(cut) = shape.cut(&obs, o) {
                    let up_to_date = (cut.reaches_end && obs.live && !initial).then_some(g);
                    return Ok(Outcome::Records { obs, cut, up_to_date });
                }
                if obs.live && mode == Mode::CatchUp && !initial {
                    return Ok(Outcome::UpToDate { g });
                }
            }
        }
        let stopping = *shutdown.borrow();
        if stopping || Instant::now() >= deadline {
            // A live log with nothing new is up to date; anything else is not ready.
            let up_to_date = obs.live && mode == Mode::LongPoll && !initial && offset != RequestOffset::Now;
            return Ok(if up_to_date { Outcome::UpToDate { g } } else { Outcome::NotReady });
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Serves a non-SSE `GET`/`HEAD`: reads, builds the response, answers 304 when
/// the client's etag matches.
pub async fn respond<C: Catalog>(
    app: &App<C>,
    req: &ShapeRequest,
    info: &ShapeInfo,
    shape: &Arc<OpenShape>,
    request_headers: &HeaderMap,
    deadline: Instant,
) -> Result<Reply, ApiError> {
    let mode = if req.live { Mode::LongPoll } else { Mode::CatchUp };
    let outcome = match read(app, shape, req.offset, mode, deadline).await {
        Ok(o) => o,
        Err(ReadError::Gone) => return Err(app.gone_error(&req.definition, shape).await),
        Err(ReadError::Api(e)) => return Err(e),
    };
    let (reply, etag) = build(app, req, info, outcome);
    Ok(if respond::if_none_match(request_headers, &etag) { respond::not_modified(reply) } else { reply })
}

/// Builds the 200 for an outcome; returns it with its etag.
pub fn build<C: Catalog>(app: &App<C>, req: &ShapeRequest, info: &ShapeInfo, outcome: Outcome) -> (Reply, String) {
    let request_offset = req.offset.to_string();
    let open = Bytes::from_static(b"[");
    let close = Bytes::from_static(b"]");
    let (parts, response_offset, up_to_date, has_data, ready) = match outcome {
        Outcome::Records { obs, cut, up_to_date } => {
            let records = obs.view.messages_bytes(cut.from, cut.to);
            let mut parts = vec![open, records];
            if let Some(g) = up_to_date {
                parts.push(Bytes::from_static(b","));
                parts.push(Bytes::from(wire::up_to_date(g)));
            }
            parts.push(close);
            (parts, cut.last.to_string(), up_to_date.is_some(), true, true)
        }
        Outcome::UpToDate { g } => {
            (vec![open, Bytes::from(wire::up_to_date(g)), close], request_offset.clone(), true, false, true)
        }
        Outcome::Now { latest, g } => {
            (vec![open, Bytes::from(wire::up_to_date(g)), close], latest.to_string(), true, false, true)
        }
        Outcome::NotReady => (vec![open, close], request_offset.clone(), false, false, false),
    };

    let mut reply = respond::empty(StatusCode::OK);
    *reply.body_mut() = ShapeBody::parts(parts);
    let h = reply.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    respond::set(h, respond::HANDLE, &info.handle);
    respond::set(h, respond::OFFSET, &response_offset);
    if req.live {
        respond::set(h, respond::CURSOR, &respond::live_cursor(app.settings.long_poll_timeout, req.cursor.as_deref()));
    } else {
        respond::set(h, respond::SCHEMA, &info.electric_schema);
    }
    if up_to_date {
        h.insert(respond::UP_TO_DATE, HeaderValue::from_static(""));
    }
    h.insert(respond::HAS_DATA, HeaderValue::from_static(if has_data { "true" } else { "false" }));
    let cache_control = match (ready, req.live, req.offset) {
        // "Not ready yet" must not be cached, or clients would spin on the cached copy.
        (false, _, _) => cache::NO_STORE,
        (true, true, _) => cache::LIVE,
        (true, false, RequestOffset::Log(LogOffset::BeforeAll)) => cache::INITIAL,
        (true, false, _) => cache::CATCH_UP,
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    let unique = !ready || (req.live && !has_data);
    let etag = respond::etag(&info.handle, &request_offset, &response_offset, unique);
    respond::set(h, header::ETAG, &etag);
    (reply, etag)
}

/// The log position to report before running a subset query: the latest
/// record a client may hold. Waits (up to `deadline`) for the snapshot.
pub async fn position_before_subset<C: Catalog>(
    app: &App<C>,
    shape: &OpenShape,
    deadline: Instant,
) -> Result<LogOffset, ReadError> {
    let mut changes = shape.subscribe();
    loop {
        let obs = observe(app, shape)?;
        if obs.live || obs.snapshot_complete {
            return Ok(obs.latest());
        }
        if Instant::now() >= deadline || app.shutting_down() {
            return Err(ApiError::unavailable("the shape's snapshot is not complete yet").into());
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
