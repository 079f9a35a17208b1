//! Benchmark 3: how long after a commit a parked live long-poll client has the
//! change, against the commit itself.
//!
//! For each shape count S, on a fresh cluster with `fsync = on` (so the commit
//! waits for the disk, as in production): `items(id bigint primary key, k int,
//! title text)`, S shapes `k = c` (c = 0..S, all live), a sidecar, and one client
//! synced on `k = 0` over a kept-alive connection. Per insert:
//!
//! 1. the client writes its live request and the benchmark waits [`PARK`] so the
//!    sidecar has parsed it and parked it (a response arriving in that window is
//!    an early answer: the position is advanced and the request re-sent);
//! 2. `t0`; one autocommit `INSERT INTO items VALUES (i, 0, 'x')` (a prepared
//!    statement, one round trip); `t_commit` when it returns;
//! 3. a reader thread blocked on the socket stamps `t_recv` when the live
//!    response is fully read, and it must hold the insert of row `i`.
//!
//! Commit latency `t_commit - t0` is the limit; delivery `t_recv - t0`; the
//! figure is delivery − commit per insert, which is what the engine and the
//! sidecar add on top of Postgres.

use std::io::{self, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use pg_shapes_tests::Sidecar;

use crate::http::{get_request, has_insert, sync_shape, Conn, Response, ShapeDef};
use crate::report::{ms, ratio, thousands, Report, Row, Verdict};
use crate::util::{self, bench_cluster, cpu_seconds, create_shapes, wait_all_live, Perf};
use crate::Ctx;

const BENCH: u32 = 3;
const TARGET: &str = "p50 ≤ 3 ms and p99 ≤ 15 ms above the commit";
const ELECTRIC: &str = "~6 ms write → client (3 ms of it Postgres)";
const P50_TARGET_MS: f64 = 3.0;
const P99_TARGET_MS: f64 = 15.0;

/// Inserts done before the measured ones (first-use costs: plan cache, page faults in a fresh log).
const WARMUP: usize = 3;
/// How long a live request is given to reach the sidecar and be parked before the insert.
/// Loopback delivery and request parsing take well under 1 ms; the margin keeps a busy
/// machine from turning a not-yet-parked request into a measurement of the catch-up path.
const PARK: Duration = Duration::from_millis(30);
/// Longest wait for a live response (the sidecar's long-poll timeout is 20 s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Re-sent live requests per insert before giving up on seeing its row.
const MAX_RETRIES: usize = 5;

/// How benchmark 3 measures, for RESULTS.md.
pub const METHOD: &str = "\
One fresh cluster per shape count S, with `fsync = on` (every commit waits for the disk). Table
`items(id bigint primary key, k int not null, title text)`, empty, with S shapes `k = c` for c = 0..S created
through the SQL API and waited live. A sidecar (default settings, 20 s long-poll timeout) and one client of our
own (a blocking HTTP/1.1 client on one kept-alive loopback connection with TCP_NODELAY) synced on the shape
`k = 0` (`offset=-1`, then catch-up requests until `electric-up-to-date`). Per insert: the client writes the live
request (`handle`, `offset`, `live=true`, `cursor`) and the benchmark waits 30 ms so it is parked; then
t0; one autocommit `INSERT INTO items VALUES (i, 0, 'x')` through `postgres::Client` (prepared beforehand, so
one round trip); t_commit when it returns; a reader thread blocked on the socket stamps t_recv when the whole
live response has been read, and checks it holds the insert of row i. **Limit**: the commit latency
t_commit − t0 of the same inserts. **Ours**: delivery − commit = t_recv − t_commit per insert, i.e. what
WAL decoding, the shape log, the doorbell wake-up and the HTTP response add on top of the commit (it can be
negative: the WAL is flushed before Postgres acknowledges the commit, and the engine may beat the
acknowledgement). p50/p99 are nearest-rank over the measured inserts (with few inserts p99 is the maximum).
Ratio = delivery p50 / commit p50 (delivery = t_recv − t0, the latency a writer-to-reader round trip sees).
3 warm-up inserts are not counted. A response without the row (a long-poll timeout) is counted as not
measured and the request re-sent until the row arrives. All processes (Postgres, engine, sidecar, client)
share the machine's cores.";

/// What one configuration measured.
#[derive(Debug, Clone)]
struct Measured {
    shapes: usize,
    /// ms, per measured insert.
    commit: Vec<f64>,
    delivery: Vec<f64>,
    above: Vec<f64>,
    /// Inserts whose first live response did not carry the row.
    missed: usize,
    /// Live requests answered before the insert (not parked).
    early: usize,
    setup_seconds: f64,
    /// Whether the sidecar served the shape the SQL API created for `k = 0`.
    same_handle: bool,
    /// Sidecar CPU seconds over the measured loop, and the loop's length.
    sidecar_cpu: Option<f64>,
    loop_seconds: f64,
}

/// Runs benchmark 3: one row per shape count.
pub fn run(ctx: &mut Ctx) -> Vec<Row> {
    let mut rows = Vec::new();
    let iters = ctx.sizes.latency_iters;
    for s in ctx.sizes.latency_shapes.clone() {
        let name = format!("3. commit → live client, {} shape{}", thousands(s as f64), if s == 1 { "" } else { "s" });
        crate::progress!("#{BENCH}: {name}");
        let perf_dir = ctx.perf_dir.clone();
        match crate::catch(|| measure(s, iters, perf_dir.as_deref())) {
            Ok(m) if !m.above.is_empty() => {
                note(&mut ctx.report, &m, iters);
                let a = util::sorted(&m.above);
                let c = util::sorted(&m.commit);
                let d = util::sorted(&m.delivery);
                let (a50, a99) = (util::percentile(&a, 50.0), util::percentile(&a, 99.0));
                let (c50, c99) = (util::percentile(&c, 50.0), util::percentile(&c, 99.0));
                let d50 = util::percentile(&d, 50.0);
                rows.push(Row {
                    benchmark: name,
                    ours: format!("p50 {}, p99 {} above commit", signed_ms(a50), signed_ms(a99)),
                    limit: format!("commit p50 {}, p99 {}", ms(c50), ms(c99)),
                    ratio: ratio(d50 / c50),
                    target: TARGET.into(),
                    verdict: Verdict::from_bool(a50 <= P50_TARGET_MS && a99 <= P99_TARGET_MS),
                    electric: ELECTRIC.into(),
                });
            }
            Ok(m) => {
                let why = format!("none of {} inserts arrived in its first live response", m.missed);
                ctx.report.note(BENCH, format!("{name}: {why}"));
                rows.push(Row::failed(&name, &why, TARGET, ELECTRIC));
            }
            Err(e) => {
                ctx.report.note(BENCH, format!("{name}: failed: {e}"));
                rows.push(Row::failed(&name, &e, TARGET, ELECTRIC));
            }
        }
    }
    rows
}

/// "+1.20 ms" / "-0.30 ms".
fn signed_ms(x: f64) -> String {
    if x < 0.0 {
        format!("-{}", ms(-x))
    } else {
        format!("+{}", ms(x))
    }
}

/// Like [`ms`], for values that may be negative.
fn any_ms(x: f64) -> String {
    if x < 0.0 {
        format!("-{}", ms(-x))
    } else {
        ms(x)
    }
}

fn stats(v: &[f64]) -> String {
    let s = util::sorted(v);
    format!(
        "p50 {} / p99 {} / max {}",
        any_ms(util::percentile(&s, 50.0)),
        any_ms(util::percentile(&s, 99.0)),
        any_ms(s.last().copied().unwrap_or(f64::NAN))
    )
}

fn note(report: &mut Report, m: &Measured, iters: usize) {
    let cpu = match m.sidecar_cpu {
        Some(c) => format!("{:.0}% of a core ({c:.2} s over {:.1} s)", 100.0 * c / m.loop_seconds, m.loop_seconds),
        None => "unknown".into(),
    };
    report.note(
        BENCH,
        format!(
            "{} shape{}: {} of {iters} inserts measured ({} answered without the row and re-requested, \
             {} live requests answered before the insert and re-sent); above the commit {}; commit {}; \
             delivery {}; sidecar CPU during the loop (30 ms parked per insert included) {cpu}; \
             shape set-up {:.1} s; the sidecar served the shape the SQL API created: {}",
            thousands(m.shapes as f64),
            if m.shapes == 1 { "" } else { "s" },
            m.above.len(),
            m.missed,
            m.early,
            stats(&m.above),
            stats(&m.commit),
            stats(&m.delivery),
            m.setup_seconds,
            if m.same_handle { "yes" } else { "no (it made its own)" },
        ),
    );
}

/// A live response and when its last byte was read.
type Arrival = io::Result<(Response, Instant)>;

/// Runs one configuration on its own cluster.
fn measure(shapes: usize, iters: usize, perf_dir: Option<&std::path::Path>) -> Measured {
    let label = format!("#{BENCH} {shapes} shapes");
    let cluster = bench_cluster(true, true, &[]);
    let mut client = cluster.client();
    client
        .batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, k int NOT NULL, title text)")
        .unwrap_or_else(|e| panic!("create the table: {e}"));

    let setup = Instant::now();
    let wheres: Vec<String> = (0..shapes).map(|c| format!("k = {c}")).collect();
    let handles = create_shapes(&mut client, "items", &wheres, &label);
    wait_all_live(&cluster, &handles, Duration::from_secs(900), &label);
    let setup_seconds = setup.elapsed().as_secs_f64();

    let sidecar = Sidecar::start(&cluster, &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], sidecar.port()));
    let mut conn = Conn::connect(addr).unwrap_or_else(|e| panic!("connect to the sidecar at {addr}: {e}"));
    conn.set_read_timeout(Some(RESPONSE_TIMEOUT)).unwrap_or_else(|e| panic!("set a read timeout: {e}"));
    let def = ShapeDef::new("items", Some("k = 0"));
    let mut pos = sync_shape(&mut conn, &def).unwrap_or_else(|e| panic!("initial sync of items WHERE k = 0: {e}"));
    let same_handle = pos.handle == handles[0];
    crate::progress!(
        "{label}: client synced (handle {}, offset {}); {} inserts",
        pos.handle,
        pos.offset,
        WARMUP + iters
    );

    let insert = client
        .prepare("INSERT INTO items (id, k, title) VALUES ($1, 0, 'x')")
        .unwrap_or_else(|e| panic!("prepare the insert: {e}"));
    let mut writer = conn.writer().unwrap_or_else(|e| panic!("clone the client socket: {e}"));
    let host = conn.host().to_string();

    let mut m = Measured {
        shapes,
        commit: Vec::with_capacity(iters),
        delivery: Vec::with_capacity(iters),
        above: Vec::with_capacity(iters),
        missed: 0,
        early: 0,
        setup_seconds,
        same_handle,
        sidecar_cpu: None,
        loop_seconds: 0.0,
    };
    let (tx, rx) = mpsc::channel::<Arrival>();
    std::thread::scope(|scope| {
        // The reader: stamps each response the moment its last byte is read.
        scope.spawn(move || loop {
            let r = conn.read_response().map(|r| (r, Instant::now()));
            let stop = r.is_err();
            if tx.send(r).is_err() || stop {
                break;
            }
        });
        let recv = |what: &str| -> (Response, Instant) {
            match rx.recv_timeout(RESPONSE_TIMEOUT) {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => panic!("{what}: reading the live response: {e}"),
                Err(RecvTimeoutError::Timeout) => panic!("{what}: no live response within {RESPONSE_TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("{what}: the reader thread stopped"),
            }
        };

        let perf = Perf::start(perf_dir, &format!("latency_sidecar_{shapes}_shapes"), sidecar.pid());
        let cpu0 = cpu_seconds(sidecar.pid());
        let loop_start = Instant::now();
        let progress_step = ((WARMUP + iters) / 5).max(1);
        for i in 0..WARMUP + iters {
            let id = i as i64 + 1;
            let what = format!("{label}, insert {id}");
            // Send the live request and let it park; an answer inside the window was not parked.
            loop {
                writer
                    .write_all(&get_request(&host, &pos.live_path(&def)))
                    .unwrap_or_else(|e| panic!("{what}: sending the live request: {e}"));
                std::thread::sleep(PARK);
                match rx.try_recv() {
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => panic!("{what}: the reader thread stopped"),
                    Ok(Err(e)) => panic!("{what}: reading an early response: {e}"),
                    Ok(Ok((r, _))) => {
                        m.early += 1;
                        assert!(m.early <= 10 * (WARMUP + iters), "{what}: live requests keep being answered at once");
                        pos.advance(&r).unwrap_or_else(|e| panic!("{what}: early response: {e}"));
                    }
                }
            }
            let t0 = Instant::now();
            client.execute(&insert, &[&id]).unwrap_or_else(|e| panic!("{what}: {e}"));
            let t_commit = Instant::now();
            let (r, t_recv) = recv(&what);
            pos.advance(&r).unwrap_or_else(|e| panic!("{what}: {e}"));
            let measured = i >= WARMUP;
            if has_insert(&r.body, id) {
                if measured {
                    let commit = (t_commit - t0).as_secs_f64() * 1e3;
                    let delivery = t_recv.saturating_duration_since(t0).as_secs_f64() * 1e3;
                    m.commit.push(commit);
                    m.delivery.push(delivery);
                    // Signed: the response may be read before the commit's acknowledgement.
                    m.above.push(if t_recv >= t_commit {
                        (t_recv - t_commit).as_secs_f64() * 1e3
                    } else {
                        -((t_commit - t_recv).as_secs_f64() * 1e3)
                    });
                }
            } else {
                // Typically a long-poll timeout (up-to-date only): not a measurement; fetch the row.
                if measured {
                    m.missed += 1;
                }
                crate::progress!(
                    "{label}: insert {id}: live response without the row ({} bytes); re-requesting",
                    r.body.len()
                );
                let mut got = false;
                for _ in 0..MAX_RETRIES {
                    writer
                        .write_all(&get_request(&host, &pos.live_path(&def)))
                        .unwrap_or_else(|e| panic!("{what}: re-sending the live request: {e}"));
                    let (r, _) = recv(&what);
                    pos.advance(&r).unwrap_or_else(|e| panic!("{what}: {e}"));
                    if has_insert(&r.body, id) {
                        got = true;
                        break;
                    }
                }
                assert!(got, "{what}: the row never arrived in {MAX_RETRIES} more live requests");
            }
            if WARMUP + iters >= 20 && (i + 1) % progress_step == 0 && i + 1 < WARMUP + iters {
                crate::progress!("{label}: {}/{} inserts", i + 1, WARMUP + iters);
            }
        }
        m.loop_seconds = loop_start.elapsed().as_secs_f64();
        m.sidecar_cpu = match (cpu0, cpu_seconds(sidecar.pid())) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        if let Some(p) = perf {
            p.finish();
        }
        // Ends the reader thread (its read returns end-of-file).
        let _ = writer.shutdown(Shutdown::Both);
    });
    let a = util::sorted(&m.above);
    crate::progress!(
        "{label}: above the commit p50 {} p99 {} ({} measured)",
        signed_ms(util::percentile(&a, 50.0)),
        signed_ms(util::percentile(&a, 99.0)),
        a.len()
    );
    drop(client);
    drop(sidecar);
    drop(cluster);
    m
}
