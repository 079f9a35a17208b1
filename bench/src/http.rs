//! A minimal HTTP/1.1 client for the benchmarks that talk to the sidecar.
//!
//! The load generator is ours so that what is measured is known exactly: a
//! request is one `write` of a few hundred bytes on a kept-alive connection
//! (`TCP_NODELAY`), and a response counts as arrived when its last body byte
//! has been read. Only what the shape protocol needs is supported: `GET`,
//! a status line, headers (looked up case-insensitively), and a body framed by
//! `content-length`, `transfer-encoding: chunked` or the end of the connection.
//!
//! [`Parser`] is the sans-IO part; [`Conn`] (blocking, `std::net`) and
//! [`AsyncConn`] (`tokio::net`, for thousands of connections) feed it. The
//! shape helpers ([`sync_shape`], [`ShapePos`], [`has_insert`]) follow
//! Electric's protocol: `offset=-1`, then `electric-offset`/`electric-handle`
//! until `electric-up-to-date`, then live long-polls with `cursor=`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use pg_shapes_tests::serde_json::{self, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest response head accepted (status line and headers).
const MAX_HEAD: usize = 64 * 1024;

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Headers in the order received, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name`, compared case-insensitively (HTTP header
    /// names are; the sidecar sends them in lower case, proxies may not).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy), for error messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// How the body of the response being parsed ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `content-length` bytes still to come.
    Length(usize),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk: bytes left.
    ChunkData(usize),
    /// The CRLF after a chunk's data.
    ChunkCrlf,
    /// Trailer lines after the last (zero) chunk, up to an empty line.
    Trailers,
    /// No framing: the body ends when the server closes the connection.
    UntilClose,
}

/// An incremental HTTP/1.1 response parser: [`feed`](Parser::feed) it bytes as
/// they arrive and [`poll`](Parser::poll) for a complete response. Bytes after a
/// response stay buffered for the next one. Work is linear in the input (a
/// chunked body is not re-scanned on every read).
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
    /// Where the search for the end of the head resumes.
    head_scan: usize,
    /// Status and headers of the response being read, once its head is complete.
    head: Option<(u16, Vec<(String, String)>)>,
    body: Vec<u8>,
    state: Option<Body>,
    /// The request being answered was a `HEAD` (no body whatever the headers say).
    no_body: bool,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.head_scan = self.head_scan.saturating_sub(self.pos);
            self.pos = 0;
        } else if self.pos >= 64 * 1024 {
            self.buf.drain(..self.pos);
            self.head_scan = self.head_scan.saturating_sub(self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Whether some bytes of a response have been received but not a whole response.
    pub fn in_progress(&self) -> bool {
        self.head.is_some() || self.pos < self.buf.len()
    }

    /// The next complete response, `None` if more bytes are needed.
    pub fn poll(&mut self) -> io::Result<Option<Response>> {
        if self.head.is_none() && !self.parse_head()? {
            return Ok(None);
        }
        loop {
            let avail = &self.buf[self.pos..];
            let state = self.state.expect("a parsed head has a body state");
            match state {
                Body::Length(0) => return Ok(Some(self.finish())),
                Body::Length(n) => {
                    let take = n.min(avail.len());
                    if take == 0 {
                        return Ok(None);
                    }
                    self.body.extend_from_slice(&avail[..take]);
                    self.pos += take;
                    self.state = Some(Body::Length(n - take));
                }
                Body::ChunkSize => {
                    let Some(end) = find(avail, b"\r\n") else {
                        if avail.len() > 1024 {
                            return Err(bad("chunk-size line longer than 1 KiB"));
                        }
                        return Ok(None);
                    };
                    let line = std::str::from_utf8(&avail[..end]).map_err(|_| bad("chunk-size line is not UTF-8"))?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                    self.pos += end + 2;
                    self.state = Some(if size == 0 { Body::Trailers } else { Body::ChunkData(size) });
                }
                Body::ChunkData(n) => {
                    let take = n.min(avail.len());
                    if take == 0 {
                        return Ok(None);
                    }
                    self.body.extend_from_slice(&avail[..take]);
                    self.pos += take;
                    self.state = Some(if n == take { Body::ChunkCrlf } else { Body::ChunkData(n - take) });
                }
                Body::ChunkCrlf => {
                    if avail.len() < 2 {
                        return Ok(None);
                    }
                    if &avail[..2] != b"\r\n" {
                        return Err(bad("chunk data not followed by CRLF"));
                    }
                    self.pos += 2;
                    self.state = Some(Body::ChunkSize);
                }
                Body::Trailers => {
                    let Some(end) = find(avail, b"\r\n") else { return Ok(None) };
                    self.pos += end + 2;
                    if end == 0 {
                        return Ok(Some(self.finish()));
                    }
                }
                Body::UntilClose => {
                    self.body.extend_from_slice(avail);
                    self.pos = self.buf.len();
                    return Ok(None);
                }
            }
        }
    }

    /// The connection was closed by the server: completes a response whose body
    /// runs until the close, and fails for any other partial response.
    pub fn eof(&mut self) -> io::Result<Option<Response>> {
        if let Some(r) = self.poll()? {
            return Ok(Some(r));
        }
        match self.state {
            Some(Body::UntilClose) => Ok(Some(self.finish())),
            _ if self.in_progress() => {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the middle of a response"))
            }
            _ => Ok(None),
        }
    }

    /// Tells the parser the next response answers a `HEAD` request.
    pub fn expect_no_body(&mut self) {
        self.no_body = true;
    }

    /// Parses the head if it is complete; true when it was.
    fn parse_head(&mut self) -> io::Result<bool> {
        let avail = &self.buf[self.pos..];
        let from = self.head_scan.saturating_sub(self.pos).saturating_sub(3);
        let Some(end) = find(&avail[from..], b"\r\n\r\n").map(|e| e + from) else {
            if avail.len() > MAX_HEAD {
                return Err(bad(format!("response head longer than {MAX_HEAD} bytes")));
            }
            self.head_scan = self.buf.len();
            return Ok(false);
        };
        let head = std::str::from_utf8(&avail[..end]).map_err(|_| bad("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("not an HTTP/1.x status line: {status_line:?}")));
        }
        let status: u16 =
            parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line.split_once(':').ok_or_else(|| bad(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let get = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let chunked = get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = get("content-length")
            .map(|v| v.parse::<usize>().map_err(|_| bad(format!("bad content-length {v:?}"))))
            .transpose()?;
        let state = if self.no_body || (100..200).contains(&status) || status == 204 || status == 304 {
            Body::Length(0)
        } else if chunked {
            Body::ChunkSize
        } else if let Some(n) = length {
            Body::Length(n)
        } else {
            Body::UntilClose
        };
        self.pos += end + 4;
        self.head_scan = self.pos;
        self.head = Some((status, headers));
        self.state = Some(state);
        Ok(true)
    }

    fn finish(&mut self) -> Response {
        let (status, headers) = self.head.take().expect("finish after the head");
        self.state = None;
        self.no_body = false;
        self.head_scan = self.pos;
        Response { status, headers, body: std::mem::take(&mut self.body) }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The bytes of `GET path_and_query` to `host` on a kept-alive connection.
pub fn get_request(host: &str, path_and_query: &str) -> Vec<u8> {
    format!("GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nUser-Agent: pg_shapes_bench\r\n\r\n")
        .into_bytes()
}

// ---------------------------------------------------------------------------
// Blocking

/// A blocking keep-alive connection (the latency benchmark: one client, and the
/// time a response arrives must not include a scheduler hop).
pub struct Conn {
    stream: TcpStream,
    host: String,
    parser: Parser,
    read_buf: Vec<u8>,
}

impl Conn {
    /// Connects with `TCP_NODELAY` (a request is one small write that must not
    /// wait for an ACK).
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, host: addr.to_string(), parser: Parser::new(), read_buf: vec![0; 64 * 1024] })
    }

    /// Longest a read may block (None: forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)
    }

    /// A second handle on the socket for writing requests from another thread
    /// while this one blocks reading responses.
    pub fn writer(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// The `Host` this connection sends, for [`get_request`] on a [`writer`](Self::writer).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Writes a `GET` without waiting for the response.
    pub fn send_get(&mut self, path_and_query: &str) -> io::Result<()> {
        self.stream.write_all(&get_request(&self.host, path_and_query))
    }

    /// Reads until one whole response has arrived.
    pub fn read_response(&mut self) -> io::Result<Response> {
        loop {
            if let Some(r) = self.parser.poll()? {
                return Ok(r);
            }
            let n = self.stream.read(&mut self.read_buf)?;
            if n == 0 {
                return self.parser.eof()?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection before responding")
                });
            }
            self.parser.feed(&self.read_buf[..n]);
        }
    }

    /// `GET` and its response.
    pub fn get(&mut self, path_and_query: &str) -> io::Result<Response> {
        self.send_get(path_and_query)?;
        self.read_response()
    }
}

// ---------------------------------------------------------------------------
// Async

/// A tokio keep-alive connection (the fan-out benchmark holds thousands; each
/// keeps only a small read buffer).
pub struct AsyncConn {
    stream: tokio::net::TcpStream,
    host: String,
    parser: Parser,
    read_buf: Vec<u8>,
}

impl AsyncConn {
    /// Connects with `TCP_NODELAY`; `read_buf` bytes are read per syscall.
    pub async fn connect(addr: SocketAddr, read_buf: usize) -> io::Result<AsyncConn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(AsyncConn { stream, host: addr.to_string(), parser: Parser::new(), read_buf: vec![0; read_buf.max(512)] })
    }

    /// Writes a `GET` without waiting for the response.
    pub async fn send_get(&mut self, path_and_query: &str) -> io::Result<()> {
        self.stream.write_all(&get_request(&self.host, path_and_query)).await
    }

    /// Reads until one whole response has arrived.
    pub async fn read_response(&mut self) -> io::Result<Response> {
        loop {
            if let Some(r) = self.parser.poll()? {
                return Ok(r);
            }
            let n = self.stream.read(&mut self.read_buf).await?;
            if n == 0 {
                return self.parser.eof()?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection before responding")
                });
            }
            self.parser.feed(&self.read_buf[..n]);
        }
    }

    /// `GET` and its response.
    pub async fn get(&mut self, path_and_query: &str) -> io::Result<Response> {
        self.send_get(path_and_query).await?;
        self.read_response().await
    }
}

// ---------------------------------------------------------------------------
// The shape protocol

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved characters).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Which shape a client follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeDef {
    pub table: String,
    pub where_clause: Option<String>,
}

impl ShapeDef {
    pub fn new(table: &str, where_clause: Option<&str>) -> ShapeDef {
        ShapeDef { table: table.to_string(), where_clause: where_clause.map(str::to_string) }
    }

    fn base(&self) -> String {
        let mut q = format!("/v1/shape?table={}", url_encode(&self.table));
        if let Some(w) = &self.where_clause {
            q.push_str("&where=");
            q.push_str(&url_encode(w));
        }
        q
    }

    /// The first request of a sync: `offset=-1`.
    pub fn initial_path(&self) -> String {
        format!("{}&offset=-1", self.base())
    }
}

/// Where a client is in a shape's log: what it sends back on the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapePos {
    pub handle: String,
    pub offset: String,
    /// The last `electric-cursor` (empty before the first live response, as the
    /// TypeScript client sends it).
    pub cursor: String,
}

impl ShapePos {
    /// A non-live catch-up request from this position.
    pub fn catch_up_path(&self, def: &ShapeDef) -> String {
        format!("{}&handle={}&offset={}", def.base(), url_encode(&self.handle), url_encode(&self.offset))
    }

    /// The live long-poll from this position.
    pub fn live_path(&self, def: &ShapeDef) -> String {
        format!(
            "{}&handle={}&offset={}&live=true&cursor={}",
            def.base(),
            url_encode(&self.handle),
            url_encode(&self.offset),
            url_encode(&self.cursor)
        )
    }

    /// Moves past a 200 response (offset, cursor, and the handle if it changed);
    /// errors on any other status (a 409 means the shape was rotated).
    pub fn advance(&mut self, r: &Response) -> Result<(), String> {
        if r.status != 200 {
            return Err(format!("shape request answered {}: {}", r.status, r.body_text()));
        }
        if let Some(h) = r.header("electric-handle") {
            self.handle = h.to_string();
        }
        self.offset = r
            .header("electric-offset")
            .ok_or_else(|| format!("200 without electric-offset: {:?}", r.headers))?
            .to_string();
        if let Some(c) = r.header("electric-cursor") {
            self.cursor = c.to_string();
        }
        Ok(())
    }
}

/// Whether a response reports the client up to date.
pub fn is_up_to_date(r: &Response) -> bool {
    r.header("electric-up-to-date").is_some()
}

/// Requests a sync makes at most before giving up (a shape of a few rows takes 2).
const MAX_SYNC_REQUESTS: usize = 10_000;

fn first_pos(r: &Response) -> Result<ShapePos, String> {
    if r.status != 200 {
        return Err(format!("offset=-1 answered {}: {}", r.status, r.body_text()));
    }
    let handle = r.header("electric-handle").ok_or("offset=-1 response without electric-handle")?;
    let mut pos = ShapePos { handle: handle.to_string(), offset: String::new(), cursor: String::new() };
    pos.advance(r)?;
    Ok(pos)
}

/// Initial sync over a blocking connection: `offset=-1`, then catch-up requests
/// following `electric-offset`/`electric-handle` until `electric-up-to-date`.
/// Returns the position to go live from.
pub fn sync_shape(conn: &mut Conn, def: &ShapeDef) -> Result<ShapePos, String> {
    let get = |conn: &mut Conn, path: &str| conn.get(path).map_err(|e| format!("GET {path}: {e}"));
    let r = get(conn, &def.initial_path())?;
    let mut pos = first_pos(&r)?;
    let mut up_to_date = is_up_to_date(&r);
    for _ in 0..MAX_SYNC_REQUESTS {
        if up_to_date {
            return Ok(pos);
        }
        let r = get(conn, &pos.catch_up_path(def))?;
        pos.advance(&r)?;
        up_to_date = is_up_to_date(&r);
    }
    Err(format!("not up to date after {MAX_SYNC_REQUESTS} requests"))
}

/// [`sync_shape`] over an async connection.
pub async fn sync_shape_async(conn: &mut AsyncConn, def: &ShapeDef) -> Result<ShapePos, String> {
    let path = def.initial_path();
    let r = conn.get(&path).await.map_err(|e| format!("GET {path}: {e}"))?;
    let mut pos = first_pos(&r)?;
    let mut up_to_date = is_up_to_date(&r);
    for _ in 0..MAX_SYNC_REQUESTS {
        if up_to_date {
            return Ok(pos);
        }
        let path = pos.catch_up_path(def);
        let r = conn.get(&path).await.map_err(|e| format!("GET {path}: {e}"))?;
        pos.advance(&r)?;
        up_to_date = is_up_to_date(&r);
    }
    Err(format!("not up to date after {MAX_SYNC_REQUESTS} requests"))
}

/// Whether a shape response body (a JSON array of messages) holds the insert of
/// the row whose `id` column is `id`: proof that the response carries the change
/// being timed, not just an up-to-date.
pub fn has_insert(body: &[u8], id: i64) -> bool {
    let Ok(Value::Array(msgs)) = serde_json::from_slice::<Value>(body) else { return false };
    let want = id.to_string();
    msgs.iter().any(|m| {
        m.pointer("/headers/operation").and_then(Value::as_str) == Some("insert")
            && m.pointer("/value/id").and_then(Value::as_str) == Some(want.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(parts: &[&[u8]]) -> Vec<Response> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for part in parts {
            p.feed(part);
            while let Some(r) = p.poll().expect("valid response") {
                out.push(r);
            }
        }
        out
    }

    #[test]
    fn content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nelectric-offset: 0_0\r\n\r\nhello";
        let rs = parse_all(&[raw]);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].status, 200);
        assert_eq!(rs[0].body, b"hello");
        assert_eq!(rs[0].header("Electric-Offset"), Some("0_0"));
    }

    #[test]
    fn content_length_split_byte_by_byte() {
        let raw: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world";
        let parts: Vec<&[u8]> = raw.chunks(1).collect();
        let rs = parse_all(&parts);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].body, b"hello world");
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let raw: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: y\r\n\r\n";
        for split in 1..raw.len() {
            let rs = parse_all(&[&raw[..split], &raw[split..]]);
            assert_eq!(rs.len(), 1, "split at {split}");
            assert_eq!(rs[0].body, b"hello 0123456789", "split at {split}");
        }
    }

    #[test]
    fn header_lookup_ignores_case() {
        let raw = b"HTTP/1.1 200 OK\r\nELECTRIC-HANDLE: 1-2\r\nelectric-up-to-date: \r\ncontent-length: 0\r\n\r\n";
        let rs = parse_all(&[raw]);
        assert_eq!(rs[0].header("electric-handle"), Some("1-2"));
        assert!(is_up_to_date(&rs[0]));
        assert_eq!(rs[0].header("electric-cursor"), None);
    }

    #[test]
    fn keep_alive_responses_back_to_back() {
        let raw: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            2\r\n[]\r\n0\r\n\r\nHTTP/1.1 409 Conflict\r\ncontent-length: 2\r\n\r\n{}";
        let rs = parse_all(&[raw]);
        assert_eq!(rs.iter().map(|r| r.status).collect::<Vec<_>>(), vec![204, 200, 409]);
        assert_eq!(rs[1].body, b"[]");
        assert_eq!(rs[2].body, b"{}");
    }

    #[test]
    fn body_until_close() {
        let mut p = Parser::new();
        p.feed(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc");
        assert_eq!(p.poll().unwrap(), None);
        p.feed(b"def");
        assert_eq!(p.poll().unwrap(), None);
        assert_eq!(p.eof().unwrap().unwrap().body, b"abcdef");
    }

    #[test]
    fn truncated_response_is_an_error_at_eof() {
        let mut p = Parser::new();
        p.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
        assert_eq!(p.poll().unwrap(), None);
        assert!(p.eof().is_err());
    }

    #[test]
    fn malformed_input_is_rejected() {
        let mut p = Parser::new();
        p.feed(b"SPDY/3 200 OK\r\n\r\n");
        assert!(p.poll().is_err());
        let mut p = Parser::new();
        p.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n");
        assert!(p.poll().is_err());
    }

    #[test]
    fn shape_paths_are_encoded() {
        let def = ShapeDef::new("items", Some("k = 0"));
        assert_eq!(def.initial_path(), "/v1/shape?table=items&where=k%20%3D%200&offset=-1");
        let pos = ShapePos { handle: "12-34".into(), offset: "0_inf".into(), cursor: String::new() };
        assert_eq!(
            pos.live_path(&def),
            "/v1/shape?table=items&where=k%20%3D%200&handle=12-34&offset=0_inf&live=true&cursor="
        );
    }

    #[test]
    fn advance_follows_headers() {
        let mut pos = ShapePos { handle: "h".into(), offset: "0_0".into(), cursor: String::new() };
        let r = Response {
            status: 200,
            headers: vec![("Electric-Offset".into(), "26_4".into()), ("electric-cursor".into(), "99".into())],
            body: b"[]".to_vec(),
        };
        pos.advance(&r).unwrap();
        assert_eq!((pos.handle.as_str(), pos.offset.as_str(), pos.cursor.as_str()), ("h", "26_4", "99"));
        let gone = Response { status: 409, headers: vec![], body: b"[]".to_vec() };
        assert!(pos.advance(&gone).is_err());
    }

    #[test]
    fn finds_the_inserted_row() {
        let body = br#"[{"headers":{"operation":"insert","lsn":"1"},"key":"\"public\".\"items\"/\"7\"",
            "value":{"id":"7","k":"0"}},{"headers":{"control":"up-to-date"}}]"#;
        assert!(has_insert(body, 7));
        assert!(!has_insert(body, 8));
        assert!(!has_insert(br#"[{"headers":{"control":"up-to-date"}}]"#, 7));
        assert!(!has_insert(b"not json", 7));
    }
}
