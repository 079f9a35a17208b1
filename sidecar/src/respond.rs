//! Building responses: headers, etags and 304s, cache-control, cursors, CORS,
//! and the JSON bodies of errors.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use crate::body::ShapeBody;
use crate::error::ApiError;

/// The response type of every handler.
pub type Reply = Response<ShapeBody>;

/// `electric-handle`
pub const HANDLE: HeaderName = HeaderName::from_static("electric-handle");
/// `electric-offset`
pub const OFFSET: HeaderName = HeaderName::from_static("electric-offset");
/// `electric-schema`
pub const SCHEMA: HeaderName = HeaderName::from_static("electric-schema");
/// `electric-cursor`
pub const CURSOR: HeaderName = HeaderName::from_static("electric-cursor");
/// `electric-up-to-date`
pub const UP_TO_DATE: HeaderName = HeaderName::from_static("electric-up-to-date");
/// `electric-has-data`
pub const HAS_DATA: HeaderName = HeaderName::from_static("electric-has-data");
/// `electric-snapshot`
pub const SNAPSHOT: HeaderName = HeaderName::from_static("electric-snapshot");
/// `electric-server`
pub const SERVER: HeaderName = HeaderName::from_static("electric-server");
const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// Headers a browser client must be allowed to read.
pub const EXPOSED_HEADERS: &str = "electric-cursor,electric-handle,electric-has-data,electric-offset,\
electric-schema,electric-up-to-date,electric-internal-known-error,electric-snapshot,etag,retry-after";
/// Methods `/v1/shape` serves.
pub const ALLOWED_METHODS: &str = "GET, POST, HEAD, DELETE, OPTIONS";
const DEFAULT_ALLOWED_HEADERS: &str = "content-type, authorization, if-none-match";

const JSON: &str = "application/json; charset=utf-8";

/// `cache-control` values, as Electric sends them.
pub mod cache {
    /// The first chunk of a shape (`offset=-1`): cacheable for long.
    pub const INITIAL: &str = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746";
    /// Other non-live responses, `offset=now` included.
    pub const CATCH_UP: &str = "public, max-age=60, stale-while-revalidate=300";
    /// Live long-polls.
    pub const LIVE: &str = "public, max-age=5, stale-while-revalidate=5";
    /// 409 with a new handle.
    pub const MUST_REFETCH: &str = "public, max-age=60, must-revalidate";
    /// 409 without a handle.
    pub const MUST_REFETCH_NO_HANDLE: &str = "public, max-age=1, must-revalidate";
    /// Errors, and answers that only say "not ready yet".
    pub const NO_STORE: &str = "no-store";
    /// POST, DELETE and subset responses.
    pub const NO_CACHE: &str = "no-cache";
    /// Health.
    pub const HEALTH: &str = "no-cache, no-store, must-revalidate";
}

/// `cache-control` for an SSE stream that lasts `sse_timeout_ms`.
pub fn sse_cache_control(sse_timeout_ms: u64) -> String {
    format!("public, max-age={}", (sse_timeout_ms / 1000).saturating_sub(1))
}

/// A header value from text; text that is not a valid header value (it comes
/// from the database, so it should always be) is dropped rather than failing.
pub fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(s.as_bytes()).ok()
}

/// Sets a header if the value is representable.
pub fn set(headers: &mut HeaderMap, name: HeaderName, v: &str) {
    if let Some(v) = value(v) {
        headers.insert(name, v);
    }
}

/// A response with a JSON body.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    raw_json(status, Bytes::from(bytes))
}

/// A response with a JSON body that is already serialised.
pub fn raw_json(status: StatusCode, body: Bytes) -> Reply {
    let mut r = Response::new(ShapeBody::from_bytes(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    r
}

/// A response with no body.
pub fn empty(status: StatusCode) -> Reply {
    let mut r = Response::new(ShapeBody::empty());
    *r.status_mut() = status;
    r
}

/// The response for an error.
pub fn error_reply(e: &ApiError) -> Reply {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = match e {
        ApiError::NotFound => {
            let mut r = Response::new(ShapeBody::from_bytes(Bytes::from_static(b"Not found")));
            *r.status_mut() = status;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        }
        ApiError::MustRefetch { .. } => {
            raw_json(status, Bytes::from_static(b"[{\"headers\":{\"control\":\"must-refetch\"}}]"))
        }
        _ => json(status, &e.body()),
    };
    let h = r.headers_mut();
    match e {
        ApiError::MustRefetch { handle: Some(handle) } => {
            set(h, HANDLE, handle);
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache::MUST_REFETCH));
        }
        ApiError::MustRefetch { handle: None } => {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache::MUST_REFETCH_NO_HANDLE));
        }
        _ => {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache::NO_STORE));
            h.insert(SURROGATE_CONTROL, HeaderValue::from_static(cache::NO_STORE));
        }
    }
    match e {
        ApiError::Unavailable { retry_after, .. } => {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        ApiError::MethodNotAllowed(allow) => {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        _ => {}
    }
    r
}

/// `"<handle>:<request offset>:<response offset>"`, plus `:<unique>` for live
/// responses without data so they are never revalidated.
pub fn etag(handle: &str, request_offset: &str, response_offset: &str, unique: bool) -> String {
    if unique {
        format!("\"{handle}:{request_offset}:{response_offset}:{}\"", unique_suffix())
    } else {
        format!("\"{handle}:{request_offset}:{response_offset}\"")
    }
}

fn unique_suffix() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Seeded with the clock so values differ across restarts too.
    if NEXT.load(Ordering::Relaxed) == 0 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
        let _ = NEXT.compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// True when an `If-None-Match` header names `etag` (or is `*`).
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let wanted = etag.trim_matches('"');
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').map(str::trim).any(|tag| {
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*" || tag.trim_matches('"') == wanted
        })
    })
}

/// Turns a 200 into a 304 with the same headers and no body.
pub fn not_modified(mut r: Reply) -> Reply {
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    r.headers_mut().remove(header::CONTENT_LENGTH);
    *r.body_mut() = ShapeBody::empty();
    r
}

/// Electric's cursor epoch, 2024-10-09T00:00:00Z.
const CURSOR_EPOCH: u64 = 1_728_432_000;

/// The cursor for a live response right now (see [`next_cursor`]).
pub fn live_cursor(long_poll_timeout: std::time::Duration, request_cursor: Option<&str>) -> String {
    next_cursor(unix_now(), long_poll_timeout.as_millis() as u64, request_cursor, random_u64())
}

/// The next `electric-cursor`: the end of the current long-poll-sized interval
/// since Electric's epoch, bumped by a random amount if the client already holds
/// it, so consecutive live URLs always differ (CDNs then never replay an old one).
pub fn next_cursor(now_unix_secs: u64, long_poll_timeout_ms: u64, request_cursor: Option<&str>, random: u64) -> String {
    let t = long_poll_timeout_ms / 1000;
    if t == 0 {
        return "0".to_string();
    }
    let diff = now_unix_secs.saturating_sub(CURSOR_EPOCH);
    let next = diff.div_ceil(t) * t;
    if request_cursor == Some(next.to_string().as_str()) {
        (next + 1 + random % 3600).to_string()
    } else {
        next.to_string()
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A random number from the standard library's per-process hash keys.
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unique_suffix());
    h.finish()
}

/// Adds the CORS headers every response carries: the request's `Origin` echoed
/// (or `*`), the exposed electric headers, and the allowed methods.
pub fn add_cors(headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
    match origin {
        Some(o) => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        None => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
    }
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
}

/// The answer to a CORS preflight: 204, the requested headers allowed.
pub fn preflight(request_headers: &HeaderMap) -> Reply {
    let mut r = empty(StatusCode::NO_CONTENT);
    let h = r.headers_mut();
    let allow = request_headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static(DEFAULT_ALLOWED_HEADERS));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_is_the_end_of_the_current_interval() {
        // 100 s after the epoch with 20 s intervals: the interval ends at 100.
        assert_eq!(next_cursor(CURSOR_EPOCH + 100, 20_000, None, 7), "100");
        assert_eq!(next_cursor(CURSOR_EPOCH + 101, 20_000, Some(""), 7), "120");
        assert_eq!(next_cursor(CURSOR_EPOCH + 119, 20_000, Some("100"), 7), "120");
    }

    #[test]
    fn cursor_moves_on_when_the_client_already_has_it() {
        let c: u64 = next_cursor(CURSOR_EPOCH + 101, 20_000, Some("120"), 3599).parse().unwrap();
        assert!(c > 120 && c <= 120 + 3600, "{c}");
        assert_eq!(next_cursor(CURSOR_EPOCH + 101, 20_000, Some("120"), 0), "121");
    }

    #[test]
    fn cursor_is_zero_for_sub_second_timeouts() {
        assert_eq!(next_cursor(CURSOR_EPOCH + 5, 500, None, 1), "0");
    }

    #[test]
    fn etags_name_handle_and_both_offsets() {
        assert_eq!(etag("h-1", "-1", "0_0", false), "\"h-1:-1:0_0\"");
        let a = etag("h", "5_0", "5_0", true);
        let b = etag("h", "5_0", "5_0", true);
        assert!(a.starts_with("\"h:5_0:5_0:") && a != b, "{a} {b}");
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let tag = etag("h", "-1", "0_0", false);
        let mut h = HeaderMap::new();
        assert!(!if_none_match(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\", \"h:-1:0_0\""));
        assert!(if_none_match(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("W/\"h:-1:0_0\""));
        assert!(if_none_match(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"h:-1:0_1\""));
        assert!(!if_none_match(&h, &tag));
    }

    #[test]
    fn a_304_keeps_the_headers_and_drops_the_body() {
        let mut r = raw_json(StatusCode::OK, Bytes::from_static(b"[]"));
        set(r.headers_mut(), HANDLE, "h");
        let r = not_modified(r);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[HANDLE], "h");
        assert!(hyper::body::Body::is_end_stream(r.body()));
    }

    #[test]
    fn cors_echoes_the_origin_or_allows_any() {
        let mut h = HeaderMap::new();
        add_cors(&mut h, None);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let exposed = h[header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap();
        for name in [
            "electric-handle",
            "electric-offset",
            "electric-schema",
            "electric-cursor",
            "electric-up-to-date",
            "etag",
            "retry-after",
        ] {
            assert!(exposed.split(',').any(|e| e == name), "{name} not exposed");
        }
        let mut h = HeaderMap::new();
        add_cors(&mut h, Some(&HeaderValue::from_static("https://app.example")));
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], ALLOWED_METHODS);
    }

    #[test]
    fn preflight_echoes_the_requested_headers() {
        let mut req = HeaderMap::new();
        req.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static("content-type, x-custom"));
        let r = preflight(&req);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS], "content-type, x-custom");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_MAX_AGE], "86400");
        let r = preflight(&HeaderMap::new());
        assert!(r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("if-none-match"));
    }

    #[test]
    fn errors_get_no_store_and_retry_after_where_due() {
        let r = error_reply(&ApiError::unavailable("db down"));
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let r = error_reply(&ApiError::MustRefetch { handle: Some("new".into()) });
        assert_eq!(r.status(), 409);
        assert_eq!(r.headers()[HANDLE], "new");
        assert_eq!(r.headers()[header::CACHE_CONTROL], cache::MUST_REFETCH);
    }
}
