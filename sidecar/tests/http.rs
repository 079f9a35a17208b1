//! HTTP-level tests: the real hyper server on 127.0.0.1:0 with a fake catalog.
//! Logs are written with `shape_log::LogWriter` into a temporary storage
//! directory and the doorbell is rung from the test, as the extension would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pg_shapes_sidecar::params::{ShapeDefinition, Subset};
use pg_shapes_sidecar::{serve, Catalog, CatalogError, Rejection, Settings, ShapeInfo};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shape_log::{wire, Doorbell, LogState, LogWriter, RecordKind};
use tokio::sync::oneshot;

const SCHEMA: &str = r#"{"id":{"type":"int8","pk_index":0},"value":{"type":"text"}}"#;

// ---------------------------------------------------------------- fake catalog

#[derive(Default)]
struct FakeState {
    /// table → current handle
    tables: HashMap<String, String>,
    get_or_create_calls: usize,
    deleted: Vec<String>,
    subsets: Vec<(String, Subset)>,
    unhealthy: bool,
}

#[derive(Clone, Default)]
struct FakeCatalog(Arc<Mutex<FakeState>>);

impl FakeCatalog {
    fn map(&self, table: &str, handle: &str) {
        self.0.lock().unwrap().tables.insert(table.into(), handle.into());
    }
    fn calls(&self) -> usize {
        self.0.lock().unwrap().get_or_create_calls
    }
}

impl Catalog for FakeCatalog {
    async fn get_or_create_shape(&self, def: &ShapeDefinition, _chunk_bytes: i32) -> Result<ShapeInfo, CatalogError> {
        let mut s = self.0.lock().unwrap();
        s.get_or_create_calls += 1;
        if def.table == "panic" {
            drop(s);
            panic!("the fake catalog panics on purpose");
        }
        match s.tables.get(&def.table) {
            Some(h) => Ok(ShapeInfo { handle: h.clone(), electric_schema: SCHEMA.into() }),
            None => Err(CatalogError::Rejected {
                kind: Rejection::UnknownTable,
                param: Some("table".into()),
                message: format!("table \"{}\" does not exist", def.table),
            }),
        }
    }

    async fn delete_shape(&self, handle: &str) -> Result<bool, CatalogError> {
        let mut s = self.0.lock().unwrap();
        s.deleted.push(handle.into());
        Ok(s.tables.values().any(|h| h == handle))
    }

    async fn delete_table_shapes(&self, table: &str) -> Result<i64, CatalogError> {
        Ok(i64::from(self.0.lock().unwrap().tables.contains_key(table)))
    }

    async fn subset(&self, handle: &str, subset: &Subset) -> Result<String, CatalogError> {
        self.0.lock().unwrap().subsets.push((handle.into(), subset.clone()));
        Ok(r#"{"metadata":{"xmin":"1","xmax":"2","xip_list":[],"snapshot_mark":7,"database_lsn":"150"},"data":[]}"#
            .into())
    }

    async fn status(&self) -> Result<(), CatalogError> {
        if self.0.lock().unwrap().unhealthy {
            Err(CatalogError::Unavailable("down".into()))
        } else {
            Ok(())
        }
    }

    async fn storage_dir(&self) -> Result<PathBuf, CatalogError> {
        Err(CatalogError::Unavailable("the tests configure the storage dir".into()))
    }
}

// ---------------------------------------------------------------- log helpers

fn row(i: u64) -> Vec<u8> {
    format!(r#"{{"headers":{{"operation":"insert","relation":["public","items"]}},"key":"\"public\".\"items\"/\"{i}\"","value":{{"id":"{i}","value":"v{i}"}}}}"#).into_bytes()
}

fn change(lsn: u64, op: u64, id: u64, last: bool) -> Vec<u8> {
    let last = if last { r#","last":true"# } else { "" };
    format!(r#"{{"headers":{{"operation":"insert","relation":["public","items"],"lsn":"{lsn}","op_position":{op},"txids":[1]{last}}},"key":"\"public\".\"items\"/\"{id}\"","value":{{"id":"{id}","value":"c{id}"}}}}"#).into_bytes()
}

/// A log with a complete snapshot of `rows` rows (ids 0..rows).
fn snapshot(dir: &Path, handle: &str, rows: u64, chunk_bytes: u64) -> LogWriter {
    let mut w = LogWriter::create(&dir.join(handle), 1, handle, chunk_bytes).unwrap();
    for i in 0..rows {
        w.append_snapshot_row(RecordKind::Insert, &[&row(i)]).unwrap();
    }
    w.finish_snapshot(rows, &wire::snapshot_end(10, 20, &[])).unwrap();
    w
}

/// Appends one committed transaction of `ids` at commit LSN `lsn`.
fn commit(w: &mut LogWriter, lsn: u64, ids: &[u64]) {
    for (k, id) in ids.iter().enumerate() {
        let last = k + 1 == ids.len();
        w.append_change(lsn, 2 * k as u64, RecordKind::Insert, last, &[&change(lsn, 2 * k as u64, *id, last)]).unwrap();
    }
    w.commit(Some(lsn));
}

// ---------------------------------------------------------------- server harness

struct TestServer {
    base: String,
    dir: tempfile::TempDir,
    bell: Doorbell,
    fake: FakeCatalog,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    fn offset(&self) -> String {
        self.header("electric-offset").expect("electric-offset").to_string()
    }
}

impl TestServer {
    async fn start(settings: Settings) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let bell = Doorbell::open_rw(dir.path()).unwrap();
        let fake = FakeCatalog::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let settings = Settings { storage_dir: Some(dir.path().to_path_buf()), ..settings };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, settings, fake.clone(), async {
            let _ = stopped.await;
        }));
        TestServer { base, dir, bell, fake, http: reqwest::Client::new(), stop: Some(stop), task: Some(task) }
    }

    async fn default() -> TestServer {
        TestServer::start(Settings { long_poll_timeout: Duration::from_secs(5), ..Settings::default() }).await
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.expect("request");
        Resp { status: r.status(), headers: r.headers().clone(), body: r.bytes().await.expect("body") }
    }

    async fn get(&self, path_and_query: &str) -> Resp {
        self.send(self.http.get(format!("{}{path_and_query}", self.base))).await
    }

    /// Stops the server and waits for it to return.
    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A live log `h1` for table `items`: `rows` snapshot rows, then each `(lsn, ids)` transaction.
fn live_log(s: &TestServer, rows: u64, chunk_bytes: u64, txns: &[(u64, &[u64])]) -> LogWriter {
    s.fake.map("items", "h1");
    let mut w = snapshot(s.dir(), "h1", rows, chunk_bytes);
    w.set_live(1);
    for (lsn, ids) in txns {
        commit(&mut w, *lsn, ids);
    }
    w
}

fn up_to_date(g: u64) -> Value {
    json!({"headers": {"control": "up-to-date", "global_last_seen_lsn": g.to_string()}})
}

fn ids(messages: &Value) -> Vec<String> {
    messages.as_array().unwrap().iter().filter_map(|m| m["value"]["id"].as_str().map(str::to_string)).collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_request_returns_exactly_chunk_zero_without_up_to_date() {
    let s = TestServer::default().await;
    // ~120-byte rows and a 300-byte chunk: three rows per chunk.
    let _w = live_log(&s, 10, 300, &[]);
    s.bell.ring(150);

    let r = s.get("/v1/shape?table=items&offset=-1&log=full").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("electric-handle"), Some("h1"));
    assert_eq!(r.offset(), "0_0");
    assert_eq!(r.header("electric-schema"), Some(SCHEMA));
    assert_eq!(r.header("electric-up-to-date"), None);
    assert_eq!(r.header("etag"), Some("\"h1:-1:0_0\""));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746")
    );
    assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(ids(&r.json()), ["0", "1", "2"]);
    assert!(r.json().as_array().unwrap().iter().all(|m| m["headers"]["control"].is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_offsets_walks_every_chunk_and_two_clients_get_identical_bytes() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 10, 300, &[(100, &[100, 101]), (200, &[200])]);
    s.bell.ring(250);

    let walk = || async {
        let mut offset = "-1".to_string();
        let mut bodies = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..20 {
            let r = s.get(&format!("/v1/shape?table=items&offset={offset}&handle=h1")).await;
            assert_eq!(r.status, 200);
            seen.extend(ids(&r.json()));
            bodies.push(r.body.clone());
            offset = r.offset();
            if r.header("electric-up-to-date").is_some() {
                return (bodies, seen, offset);
            }
        }
        panic!("never reached up-to-date");
    };
    let (a, seen, end) = walk().await;
    let (b, _, _) = walk().await;
    assert_eq!(a, b, "the same URLs must give the same bytes");
    let mut expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    expected.extend(["100", "101", "200"].map(String::from));
    assert_eq!(seen, expected);
    assert_eq!(end, "200_0");
    // Snapshot chunks 0..3 (3+3+3+1 rows, the last with snapshot-end), then the
    // live log in two chunks (~170-byte changes against 300-byte chunks).
    assert_eq!(a.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_the_log_carries_up_to_date_with_g() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 2, 1 << 20, &[(100, &[7])]);
    s.bell.ring(150);

    let r = s.get("/v1/shape?table=items&offset=0_0&handle=h1").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    let msgs = body.as_array().unwrap();
    assert_eq!(ids(&body), ["7"]);
    assert_eq!(msgs.last().unwrap(), &up_to_date(150));
    assert_eq!(r.header("electric-up-to-date"), Some(""));
    assert_eq!(r.offset(), "100_0");
    assert_eq!(r.header("cache-control"), Some("public, max-age=60, stale-while-revalidate=300"));

    // Asking again at the end: just up-to-date, same offset, etag names both offsets.
    let r = s.get("/v1/shape?table=items&offset=100_0&handle=h1").await;
    assert_eq!(r.json(), json!([up_to_date(150)]));
    assert_eq!(r.offset(), "100_0");
    assert_eq!(r.header("etag"), Some("\"h1:100_0:100_0\""));
    assert_eq!(r.header("electric-schema"), Some(SCHEMA));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_past_g_are_held_back_until_the_doorbell_covers_them() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 1, 1 << 20, &[(100, &[1]), (200, &[2])]);
    s.bell.ring(150);

    let r = s.get("/v1/shape?table=items&offset=0_0&handle=h1").await;
    assert_eq!(ids(&r.json()), ["1"], "the transaction at 200 is past G = 150");
    assert_eq!(r.json().as_array().unwrap().last().unwrap(), &up_to_date(150));
    assert_eq!(r.offset(), "100_0");

    s.bell.ring(250);
    let r = s.get("/v1/shape?table=items&offset=100_0&handle=h1").await;
    assert_eq!(ids(&r.json()), ["2"]);
    assert_eq!(r.json().as_array().unwrap().last().unwrap(), &up_to_date(250));
    assert_eq!(r.offset(), "200_0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_revalidates_with_304() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 3, 1 << 20, &[]);
    s.bell.ring(150);

    let first = s.get("/v1/shape?table=items&offset=-1").await;
    let etag = first.header("etag").unwrap().to_string();
    let r =
        s.send(s.http.get(format!("{}/v1/shape?table=items&offset=-1", s.base)).header("if-none-match", &etag)).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("electric-handle"), Some("h1"));
    assert_eq!(r.header("electric-offset"), Some("0_0"));
    assert_eq!(r.header("electric-schema"), Some(SCHEMA));

    let r = s
        .send(s.http.get(format!("{}/v1/shape?table=items&offset=-1", s.base)).header("if-none-match", "\"h1:-1:9_9\""))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_when_the_doorbell_rings_with_new_data() {
    let s = TestServer::start(Settings { long_poll_timeout: Duration::from_secs(10), ..Settings::default() }).await;
    let mut w = live_log(&s, 1, 1 << 20, &[(100, &[1])]);
    s.bell.ring(150);

    let started = Instant::now();
    let poll = s.get("/v1/shape?table=items&offset=100_0&handle=h1&live=true&cursor=");
    let write = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        commit(&mut w, 300, &[3, 4]);
        s.bell.ring(350);
    };
    let (r, ()) = tokio::join!(poll, write);
    assert!(started.elapsed() < Duration::from_secs(5), "woke by the ring, not the timeout");
    assert_eq!(r.status, 200);
    assert_eq!(ids(&r.json()), ["3", "4"]);
    assert_eq!(r.json().as_array().unwrap().last().unwrap(), &up_to_date(350));
    assert_eq!(r.offset(), "300_2");
    assert!(r.header("electric-cursor").is_some());
    assert_eq!(r.header("electric-schema"), None, "live responses carry no schema");
    assert_eq!(r.header("cache-control"), Some("public, max-age=5, stale-while-revalidate=5"));
    assert_eq!(r.header("electric-has-data"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_ignores_rings_that_bring_nothing_for_its_shape() {
    let s = TestServer::start(Settings { long_poll_timeout: Duration::from_millis(800), ..Settings::default() }).await;
    let _w = live_log(&s, 1, 1 << 20, &[(100, &[1])]);
    s.bell.ring(150);

    let started = Instant::now();
    let poll = s.get("/v1/shape?table=items&offset=100_0&handle=h1&live=true");
    let ring = async {
        for g in [250, 350, 450] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.bell.ring(g);
        }
    };
    let (r, ()) = tokio::join!(poll, ring);
    assert!(started.elapsed() >= Duration::from_millis(750), "answered after {:?}", started.elapsed());
    assert_eq!(r.json(), json!([up_to_date(450)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_request_times_out_with_up_to_date() {
    let s = TestServer::start(Settings { long_poll_timeout: Duration::from_millis(300), ..Settings::default() }).await;
    let _w = live_log(&s, 1, 1 << 20, &[(100, &[1])]);
    s.bell.ring(150);

    let started = Instant::now();
    let r = s.get("/v1/shape?table=items&offset=100_0&handle=h1&live=true&cursor=").await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(r.status, 200, "a timeout is a 200, never a 204");
    assert_eq!(r.json(), json!([up_to_date(150)]));
    assert_eq!(r.offset(), "100_0");
    assert_eq!(r.header("electric-up-to-date"), Some(""));
    assert_eq!(r.header("electric-has-data"), Some("false"));
    assert!(r.header("electric-cursor").is_some());
    let etag = r.header("etag").unwrap();
    assert!(etag.starts_with("\"h1:100_0:100_0:"), "live responses without data get a unique etag: {etag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_data_events_up_to_date_and_keep_alives() {
    let s = TestServer::start(Settings {
        long_poll_timeout: Duration::from_secs(5),
        sse_keepalive: Duration::from_millis(200),
        sse_timeout: Duration::from_secs(3),
        ..Settings::default()
    })
    .await;
    let mut w = live_log(&s, 1, 1 << 20, &[(100, &[1])]);
    s.bell.ring(150);

    let mut resp = s
        .http
        .get(format!(
            "{}/v1/shape?table=items&offset=100_0&handle=h1&live=true&live_sse=true&experimental_live_sse=true&cursor=",
            s.base
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["electric-handle"], "h1");
    assert_eq!(resp.headers()["electric-offset"], "100_0");
    assert!(resp.headers().contains_key("electric-cursor"));
    assert_eq!(resp.headers()["cache-control"], "public, max-age=2");

    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !text.contains(": keep-alive\n\n") {
        assert!(Instant::now() < deadline, "no keep-alive in {text:?}");
        text.push_str(&String::from_utf8_lossy(&resp.chunk().await.unwrap().unwrap()));
    }
    assert_eq!(text, ": keep-alive\n\n", "nothing new, so only keep-alives");

    commit(&mut w, 300, &[3]);
    s.bell.ring(350);
    let utd = format!("data: {}\n\n", up_to_date(350));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !text.contains(&utd) {
        assert!(Instant::now() < deadline, "no up-to-date in {text:?}");
        text.push_str(&String::from_utf8_lossy(&resp.chunk().await.unwrap().unwrap()));
    }
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty() && !e.starts_with(':')).collect();
    assert_eq!(events.len(), 2, "{text:?}");
    let change: Value = serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(change["value"]["id"], "3");
    assert_eq!(events[1], format!("data: {}", up_to_date(350)));

    // The stream ends by itself after SSE_TIMEOUT.
    let ended =
        tokio::time::timeout(Duration::from_secs(5), async { while let Some(_chunk) = resp.chunk().await.unwrap() {} })
            .await;
    assert!(ended.is_ok(), "the stream did not close after the SSE timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_that_does_not_match_the_definition_is_a_409_with_the_current_handle() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 1, 1 << 20, &[]);
    s.bell.ring(150);

    let r = s.get("/v1/shape?table=items&offset=0_0&handle=old-handle").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.header("electric-handle"), Some("h1"));
    assert_eq!(r.json(), json!([{"headers": {"control": "must-refetch"}}]));
    assert_eq!(r.header("cache-control"), Some("public, max-age=60, must-revalidate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_log_is_a_409_with_the_replacement_handle() {
    let s = TestServer::default().await;
    let mut w = live_log(&s, 1, 1 << 20, &[]);
    s.bell.ring(150);
    assert_eq!(s.get("/v1/shape?table=items&offset=0_0&handle=h1").await.status, 200);

    // The extension invalidates h1 and replaces it with h2.
    w.set_gone(LogState::Invalidated, "truncate").unwrap();
    let mut w2 = snapshot(s.dir(), "h2", 1, 1 << 20);
    w2.set_live(1);
    s.fake.map("items", "h2");

    let r = s.get("/v1/shape?table=items&offset=0_0&handle=h1").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.header("electric-handle"), Some("h2"));
    // The client then starts again with the new handle.
    let r = s.get("/v1/shape?table=items&offset=-1&handle=h2&expired_handle=h1&cache-buster=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("electric-handle"), Some("h2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_long_poll_gets_409_when_its_log_is_invalidated() {
    let s = TestServer::start(Settings { long_poll_timeout: Duration::from_secs(10), ..Settings::default() }).await;
    let mut w = live_log(&s, 1, 1 << 20, &[]);
    s.bell.ring(150);
    let started = Instant::now();
    let poll = s.get("/v1/shape?table=items&offset=0_0&handle=h1&live=true");
    let invalidate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        snapshot(s.dir(), "h2", 1, 1 << 20).set_live(1);
        s.fake.map("items", "h2");
        w.set_gone(LogState::Invalidated, "alter table").unwrap();
        s.bell.ring(250);
    };
    let (r, ()) = tokio::join!(poll, invalidate);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.status, 409);
    assert_eq!(r.header("electric-handle"), Some("h2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_secret_is_required_for_shapes_only() {
    let s = TestServer::start(Settings { secret: Some("s3cret".into()), ..Settings::default() }).await;
    let _w = live_log(&s, 1, 1 << 20, &[]);
    s.bell.ring(150);

    for q in ["", "&secret=wrong", "&secret=s3cre", "&secret=s3crett"] {
        let r = s.get(&format!("/v1/shape?table=items&offset=-1{q}")).await;
        assert_eq!(r.status, 401, "{q}");
        assert_eq!(r.json(), json!({"message": "Unauthorized - Invalid API secret"}));
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    }
    assert_eq!(s.get("/v1/shape?table=items&offset=-1&secret=s3cret").await.status, 200);
    assert_eq!(s.get("/v1/shape?table=items&offset=-1&api_secret=s3cret").await.status, 200);
    assert_eq!(s.get("/v1/health").await.status, 200);
    let r = s.send(s.http.request(reqwest::Method::OPTIONS, format!("{}/v1/shape?table=items", s.base))).await;
    assert_eq!(r.status, 204);
    assert_eq!(s.fake.calls(), 1, "unauthorised requests never reach the catalog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_any_request_is_served() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 1, 1 << 20, &[]);
    s.bell.ring(150);
    assert_eq!(s.get("/v1/shape?table=items&offset=-1&secret=anything").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_past_the_end_of_the_shape_are_400() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 1, 1 << 20, &[(100, &[1])]);
    s.bell.ring(150);

    let r = s.get("/v1/shape?table=items&offset=999_0&handle=h1").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!({"message": "Invalid request", "errors": {"offset": ["out of bounds for this shape"]}}));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Up to (G, inf) is fine: an SSE client continues from `${G}_0`.
    assert_eq!(s.get("/v1/shape?table=items&offset=150_0&handle=h1").await.status, 200);
    assert_eq!(s.get("/v1/shape?table=items&offset=150_inf&handle=h1").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_preflight_allows_the_requested_headers() {
    let s = TestServer::default().await;
    let r = s
        .send(
            s.http
                .request(reqwest::Method::OPTIONS, format!("{}/v1/shape", s.base))
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type, if-none-match"),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(r.header("access-control-allow-headers"), Some("content-type, if-none-match"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST, HEAD, DELETE, OPTIONS"));
    assert_eq!(r.header("access-control-max-age"), Some("86400"));
    assert!(r.header("access-control-expose-headers").unwrap().contains("electric-offset"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_are_on_every_response_including_errors() {
    let s = TestServer::default().await;
    for path in ["/v1/shape?offset=-1", "/v1/shape?table=nope&offset=-1", "/nowhere", "/v1/health"] {
        let r = s.send(s.http.get(format!("{}{path}", s.base)).header("origin", "http://x.test")).await;
        assert_eq!(r.header("access-control-allow-origin"), Some("http://x.test"), "{path}");
        assert!(r.header("access-control-expose-headers").unwrap().contains("electric-handle"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_request_waits_for_chunk_zero_to_close_while_snapshotting() {
    let s = TestServer::default().await;
    s.fake.map("items", "h1");
    let mut w = LogWriter::create(&s.dir().join("h1"), 1, "h1", 300).unwrap();
    w.append_snapshot_row(RecordKind::Insert, &[&row(0)]).unwrap();
    w.commit(None);

    let started = Instant::now();
    let req = s.get("/v1/shape?table=items&offset=-1");
    let write = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 1..5 {
            w.append_snapshot_row(RecordKind::Insert, &[&row(i)]).unwrap();
        }
        w.commit(None);
    };
    let (r, ()) = tokio::join!(req, write);
    assert!(started.elapsed() >= Duration::from_millis(250), "answered before chunk 0 was closed");
    assert_eq!(r.status, 200);
    assert_eq!(ids(&r.json()), ["0", "1", "2"], "exactly chunk 0");
    assert_eq!(r.offset(), "0_0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_request_waits_for_a_new_shapes_log_to_appear() {
    let s = TestServer::default().await;
    s.fake.map("items", "h1");
    let req = s.get("/v1/shape?table=items&offset=-1");
    let create = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        snapshot(s.dir(), "h1", 2, 1 << 20)
    };
    let (r, _w) = tokio::join!(req, create);
    assert_eq!(r.status, 200);
    assert_eq!(ids(&r.json()), ["0", "1"]);
    assert_eq!(r.json().as_array().unwrap().last().unwrap()["headers"]["control"], "snapshot-end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_initial_requests_for_a_new_shape_makes_one_catalog_call() {
    let s = TestServer::default().await;
    s.fake.map("items", "h1");
    let burst = futures_join_all((0..20).map(|_| s.get("/v1/shape?table=items&offset=-1")));
    let create = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        snapshot(s.dir(), "h1", 2, 1 << 20)
    };
    let (responses, _w) = tokio::join!(burst, create);
    let first = &responses[0].body;
    assert!(responses.iter().all(|r| r.status == 200 && r.body == *first));
    assert_eq!(s.fake.calls(), 1);
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_waits_at_most_one_long_poll_timeout_in_all() {
    let s = TestServer::start(Settings { long_poll_timeout: Duration::from_millis(600), ..Settings::default() }).await;
    s.fake.map("items", "h1");
    let started = Instant::now();
    let req = s.get("/v1/shape?table=items&offset=-1");
    let create = async {
        // The log appears half-way through, and its chunk 0 never closes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut w = LogWriter::create(&s.dir().join("h1"), 1, "h1", 1 << 20).unwrap();
        w.append_snapshot_row(RecordKind::Insert, &[&row(0)]).unwrap();
        w.commit(None);
        w
    };
    let (r, _w) = tokio::join!(req, create);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(550) && took < Duration::from_millis(1000), "took {took:?}");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.offset(), "-1");
    assert_eq!(r.header("electric-handle"), Some("h1"));
    assert_eq!(r.header("electric-schema"), Some(SCHEMA));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_is_not_live_yet_answers_an_empty_array_after_the_wait() {
    let s = TestServer::start(Settings { long_poll_timeout: Duration::from_millis(400), ..Settings::default() }).await;
    s.fake.map("items", "h1");
    let _w = snapshot(s.dir(), "h1", 2, 1 << 20); // SnapshotDone, never Live
    s.bell.ring(150);

    assert_eq!(s.get("/v1/shape?table=items&offset=-1").await.offset(), "0_0");
    let started = Instant::now();
    let r = s.get("/v1/shape?table=items&offset=0_0&handle=h1").await;
    assert!(started.elapsed() >= Duration::from_millis(350), "a fast empty answer trips the client's loop detector");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.offset(), "0_0");
    assert_eq!(r.header("electric-up-to-date"), None);
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_catch_up_request_is_answered_when_the_log_goes_live() {
    let s = TestServer::default().await;
    s.fake.map("items", "h1");
    let mut w = snapshot(s.dir(), "h1", 1, 1 << 20);
    s.bell.ring(150);
    let req = s.get("/v1/shape?table=items&offset=0_0&handle=h1");
    let go_live = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.set_live(150);
        s.bell.ring(160);
    };
    let (r, ()) = tokio::join!(req, go_live);
    assert_eq!(r.json(), json!([up_to_date(160)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_now_answers_up_to_date_at_the_latest_visible_offset() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 1, 1 << 20, &[(100, &[1, 2]), (200, &[3])]);
    s.bell.ring(150);
    let r = s.get("/v1/shape?table=items&offset=now&handle=ignored&log=changes_only").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([up_to_date(150)]));
    assert_eq!(r.offset(), "100_2", "the held-back transaction at 200 is still to come");
    assert_eq!(r.header("electric-schema"), Some(SCHEMA));
    assert_eq!(r.header("etag"), Some("\"h1:now:100_2\""));
    assert_eq!(r.header("electric-up-to-date"), Some(""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tables_are_404_with_the_table_error() {
    let s = TestServer::default().await;
    let r = s.get("/v1/shape?table=nope&offset=-1").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"message": "table \"nope\" does not exist", "errors": {"table": ["table \"nope\" does not exist"]}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_400_before_touching_the_database() {
    let s = TestServer::default().await;
    for q in [
        "table=items",
        "offset=-1",
        "table=items&offset=x",
        "table=items&offset=5_0",
        "table=items&offset=-1&live=true",
        "table=items&offset=5_0&handle=h&live_sse=true",
        "table=items&offset=-1&replica=x",
        "table=items&offset=-1&params=%5B%5D",
        "table=items&offset=-1&subset__limit=0&subset__order_by=id",
        "table=items&offset=-1&subset__nope=1",
    ] {
        let r = s.get(&format!("/v1/shape?{q}")).await;
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.json()["message"], "Invalid request", "{q}");
    }
    assert_eq!(s.fake.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_the_headers_without_a_body() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 2, 1 << 20, &[]);
    s.bell.ring(150);
    let r = s.send(s.http.head(format!("{}/v1/shape?table=items&offset=-1", s.base))).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("electric-offset"), Some("0_0"));
    assert_eq!(r.header("electric-handle"), Some("h1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subsets_by_get_and_post_return_the_catalog_object_with_headers() {
    let s = TestServer::start(Settings { max_body_bytes: 1024, ..Settings::default() }).await;
    let _w = live_log(&s, 1, 1 << 20, &[(100, &[1])]);
    s.bell.ring(150);

    let r = s.get("/v1/shape?table=items&offset=now&log=changes_only&subset__where=id%3E%241&subset__params=%7B%221%22%3A%225%22%7D&subset__limit=2&subset__order_by=id").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["metadata"]["database_lsn"], "150");
    assert_eq!(r.header("electric-offset"), Some("100_0"));
    assert_eq!(r.header("electric-handle"), Some("h1"));
    assert_eq!(r.header("electric-schema"), Some(SCHEMA));
    assert_eq!(r.header("electric-snapshot"), Some("true"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));

    let r = s
        .send(
            s.http
                .post(format!("{}/v1/shape?table=items&offset=now&log=changes_only", s.base))
                .header("content-type", "application/json")
                .body(r#"{"where":"id > $1","params":{"1":7},"order_by":"id","offset":1}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("electric-offset"), Some("100_0"));
    assert_eq!(r.header("electric-schema"), Some(SCHEMA));
    let subsets = s.fake.0.lock().unwrap().subsets.clone();
    assert_eq!(subsets.len(), 2);
    assert_eq!(subsets[0].1.params, Some(vec![Some("5".into())]));
    assert_eq!(subsets[1].1.params, Some(vec![Some("7".into())]));
    assert_eq!((subsets[1].1.offset, subsets[1].1.limit), (Some(1), None));

    let r = s.send(s.http.post(format!("{}/v1/shape?table=items&offset=now", s.base)).body("[1]")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!({"error": "Request body must be a JSON object"}));
    let big = vec![b' '; 2000];
    let r = s.send(s.http.post(format!("{}/v1/shape?table=items&offset=now", s.base)).body(big)).await;
    assert_eq!(r.status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_handle_or_table_is_accepted() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 1, 1 << 20, &[]);
    let r = s.send(s.http.delete(format!("{}/v1/shape?handle=h1", s.base))).await;
    assert_eq!(r.status, 202);
    let r = s.send(s.http.delete(format!("{}/v1/shape?handle=unknown", s.base))).await;
    assert_eq!(r.status, 404);
    let r = s.send(s.http.delete(format!("{}/v1/shape?table=items", s.base))).await;
    assert_eq!(r.status, 202);
    assert_eq!(s.fake.0.lock().unwrap().deleted, ["h1", "unknown"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_catalog() {
    let s = TestServer::default().await;
    let r = s.get("/v1/health").await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({"status": "active"})));
    assert_eq!(r.header("cache-control"), Some("no-cache, no-store, must-revalidate"));
    s.fake.0.lock().unwrap().unhealthy = true;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the cached answer
    let r = s.get("/v1/health").await;
    assert_eq!((r.status, r.json()), (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "waiting"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
    let s = TestServer::default().await;
    let _w = live_log(&s, 1, 1 << 20, &[]);
    let r = s.get("/v1/shape?table=panic&offset=-1").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json(), json!({"message": "Internal server error"}));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(s.get("/v1/shape?table=items&offset=-1").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_before_the_doorbell_exists_is_answered_once_it_does() {
    // No doorbell file yet: the worker has not started.
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCatalog::default();
    fake.map("items", "h1");
    let mut w = snapshot(dir.path(), "h1", 1, 1 << 20);
    w.set_live(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let settings = Settings {
        storage_dir: Some(dir.path().to_path_buf()),
        long_poll_timeout: Duration::from_secs(10),
        ..Settings::default()
    };
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, settings, fake, async {
        let _ = stopped.await;
    }));

    let started = Instant::now();
    let req = reqwest::get(format!("{base}/v1/shape?table=items&offset=0_0&handle=h1"));
    let start_worker = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Doorbell::open_rw(dir.path()).unwrap().ring(150);
    };
    let (r, ()) = tokio::join!(req, start_worker);
    let r = r.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body, json!([up_to_date(150)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_and_the_root_is_200() {
    let s = TestServer::default().await;
    assert_eq!(s.get("/nowhere").await.status, 404);
    assert_eq!(s.get("/").await.status, 200);
    let r = s.send(s.http.put(format!("{}/v1/shape?table=items&offset=-1", s.base))).await;
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiting_long_polls_promptly() {
    let mut s = TestServer::start(Settings { long_poll_timeout: Duration::from_secs(20), ..Settings::default() }).await;
    let _w = live_log(&s, 1, 1 << 20, &[]);
    s.bell.ring(150);
    let url = format!("{}/v1/shape?table=items&offset=0_0&handle=h1&live=true", s.base);
    let http = s.http.clone();
    let poll = tokio::spawn(async move { http.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    s.shutdown().await;
    let r = poll.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    assert_eq!(r.status(), 200);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body, json!([up_to_date(150)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_are_refused() {
    let s = TestServer::default().await;
    let huge = "x".repeat(100 * 1024);
    let r = s.http.get(format!("{}/v1/shape?table=items&offset=-1&where={huge}", s.base)).send().await;
    // hyper answers 431, or closes the connection.
    if let Ok(r) = r {
        assert_eq!(r.status(), 431);
    }
    // The server still serves.
    assert_eq!(s.get("/").await.status, 200);
}
