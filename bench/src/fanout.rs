//! Benchmark 5: one insert answering thousands of parked live long-polls on
//! the same shape.
//!
//! On a fresh cluster (fsync off): `items` with a few rows, one shape `k = 0`,
//! a sidecar with a 120 s long-poll timeout. One sync gives the handle, offset
//! and cursor; then N tokio connections (connected in batches, below the
//! listen backlog) each send the same live request. Once the sidecar holds N
//! more descriptors and the requests have had time to park, its memory is
//! read, `t0` is taken and one row is inserted. Each connection stamps the
//! moment its whole response has been read; the responses are checked for the
//! inserted row afterwards, so parsing JSON does not delay other reads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_shapes_tests::Sidecar;
use tokio::task::JoinSet;

use crate::http::{has_insert, sync_shape_async, AsyncConn, Response, ShapeDef};
use crate::report::{ms, thousands, Row, Verdict};
use crate::util::{self, bench_cluster, cpu_seconds, create_shapes, open_fds, rss_kb, wait_all_live, Perf};
use crate::Ctx;

const BENCH: u32 = 5;
const TARGET: &str = "all answered, p99 ≤ 200 ms, sidecar RSS ≤ 300 MB";
const ELECTRIC: &str = "initial sync of a 500-row shape to 2,000 concurrent clients (no fan-out latency published)";
const P99_TARGET_MS: f64 = 200.0;
const RSS_TARGET_MB: f64 = 300.0;

/// Connections opened at once, each batch accepted by the sidecar before the next starts:
/// well below the sidecar's listen backlog (4096, capped by `net.core.somaxconn`), so that
/// no SYN is dropped and retried a second later.
const CONNECT_BATCH: usize = 500;
/// Longest wait for one batch to be accepted before going on regardless.
const BATCH_ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read per syscall per connection (a response is well under 1 KiB; 10,000 of them stay small).
const READ_BUF: usize = 4096;
/// The sidecar's long-poll timeout here: longer than setting up every connection takes.
const LONG_POLL_TIMEOUT_MS: &str = "120000";
/// How long the sidecar gets to accept all connections.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(120);
/// After every connection is accepted, time for the last requests to be parsed and parked.
const SETTLE: Duration = Duration::from_millis(500);
/// Longest wait for the responses after the insert.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows in the table before the clients sync.
const ROWS: i64 = 10;

/// How benchmark 5 measures, for RESULTS.md.
pub const METHOD: &str = "\
A fresh cluster (fsync off), table `items(id bigint primary key, k int not null, title text)` with 10 rows, one
shape `k = 0`, and a sidecar with `LONG_POLL_TIMEOUT=120000` so that no poll times out while the others are
being set up. One sync (`offset=-1`, then catch-up requests until `electric-up-to-date`) gives the handle, offset
and cursor. Then N client connections of our own (an HTTP/1.1 client on tokio, multi-thread runtime with 2
workers, TCP_NODELAY, one 4 KiB read buffer each) are opened in batches of 500, each sending the same live
request; a batch is accepted by the sidecar (its descriptor count) before the next starts, so that the
listen backlog never overflows. The benchmark waits until the sidecar process holds N more file
descriptors (all accepted) and 0.5 s more so the last requests are parked, and reads the sidecar's memory.
Then t0 and one autocommit `INSERT INTO items VALUES (…, 0, 'x')`. Each connection stamps the moment its
whole response has been read (the JSON is checked for the inserted row only afterwards, so checking does not
delay other reads). **Ours**: connections whose response held the row / N, and p50/p99/max of
(response read − t0), commit included; sidecar memory is its peak RSS (VmHWM, which covers the fan-out).
There is no limit measured for this one. The client, the sidecar and Postgres share the machine's 2 cores,
so the client's own reading is part of the figure.";

/// What one connection saw.
enum Outcome {
    /// Its full response and when the last byte was read; the connection is kept open
    /// until all are collected so that closing sockets does not load the sidecar mid-fan-out.
    Answered { at: Instant, resp: Response, _conn: Box<AsyncConn> },
    /// Connecting or sending the request failed.
    ConnectFailed(String),
    /// Reading the response failed.
    ReadFailed(String),
}

/// What the run measured.
struct Measured {
    n: usize,
    /// Responses holding the row, ms after t0.
    latencies: Vec<f64>,
    /// Responses without the row, before or after t0.
    without_row: usize,
    /// Responses read before t0 (not parked).
    early: usize,
    connect_failed: usize,
    read_failed: usize,
    unanswered: usize,
    first_error: Option<String>,
    connect_ms: Vec<f64>,
    setup_seconds: f64,
    commit_ms: f64,
    /// Sidecar (VmRSS before the connections, VmRSS while parked, VmHWM after the fan-out), kB.
    rss_base_kb: u64,
    rss_parked_kb: u64,
    hwm_kb: u64,
    fds_added: usize,
    cpu_setup: Option<f64>,
    cpu_fanout: Option<f64>,
    /// This process (the clients) over the fan-out.
    client_cpu_fanout: Option<f64>,
    /// From t0 until the last response was read.
    fanout_seconds: f64,
}

/// Runs benchmark 5: one row.
pub fn run(ctx: &mut Ctx) -> Vec<Row> {
    let n = ctx.sizes.fanout_clients;
    let name = format!("5. fan-out, one insert → {} parked long-polls", thousands(n as f64));
    crate::progress!("#{BENCH}: {name}");
    let perf_dir = ctx.perf_dir.clone();
    match crate::catch(|| measure(n, perf_dir.as_deref())) {
        Ok(m) => {
            let answered = m.latencies.len();
            let s = util::sorted(&m.latencies);
            let (p50, p99, max) = (util::percentile(&s, 50.0), util::percentile(&s, 99.0), s.last().copied());
            let rss_mb = m.hwm_kb as f64 / 1024.0;
            let connect = util::sorted(&m.connect_ms);
            ctx.report.note(
                BENCH,
                format!(
                    "{} of {} connections answered with the row; {} answered without it, {} before the insert, \
                     {} failed to connect, {} failed reading, {} not answered within {} s{}. Commit of the insert \
                     {}; first response {} after t0, last {}.",
                    thousands(answered as f64),
                    thousands(m.n as f64),
                    m.without_row,
                    m.early,
                    m.connect_failed,
                    m.read_failed,
                    m.unanswered,
                    ANSWER_TIMEOUT.as_secs(),
                    m.first_error.as_deref().map(|e| format!(" (first error: {e})")).unwrap_or_default(),
                    ms(m.commit_ms),
                    s.first().copied().map(ms).unwrap_or_else(|| "—".into()),
                    max.map(ms).unwrap_or_else(|| "—".into()),
                ),
            );
            ctx.report.note(
                BENCH,
                format!(
                    "client set-up: {} connections + live requests in {:.2} s (connect p50 {}, p99 {}, max {}; \
                     {} connects took over 900 ms, i.e. a dropped SYN was retried); \
                     sidecar +{} file descriptors; sidecar RSS {:.1} MB before, {:.1} MB with all polls parked \
                     ({:.1} kB per parked poll), peak (VmHWM) {:.1} MB; sidecar CPU {} while accepting and parking, \
                     {} for the fan-out ({:.0} ms from t0 to the last response), the clients {} for it",
                    thousands(m.n as f64),
                    m.setup_seconds,
                    ms(util::percentile(&connect, 50.0)),
                    ms(util::percentile(&connect, 99.0)),
                    ms(connect.last().copied().unwrap_or(f64::NAN)),
                    connect.iter().filter(|c| **c > 900.0).count(),
                    thousands(m.fds_added as f64),
                    m.rss_base_kb as f64 / 1024.0,
                    m.rss_parked_kb as f64 / 1024.0,
                    m.rss_parked_kb.saturating_sub(m.rss_base_kb) as f64 / m.n.max(1) as f64,
                    rss_mb,
                    m.cpu_setup.map(|c| format!("{c:.2} s")).unwrap_or_else(|| "unknown".into()),
                    m.cpu_fanout.map(|c| format!("{c:.3} s")).unwrap_or_else(|| "unknown".into()),
                    m.fanout_seconds * 1e3,
                    m.client_cpu_fanout.map(|c| format!("{c:.3} s")).unwrap_or_else(|| "unknown".into()),
                ),
            );
            let ours = if answered == 0 {
                format!("0/{} answered; sidecar {:.0} MB", thousands(m.n as f64), rss_mb)
            } else {
                format!(
                    "{}/{} answered; p50 {}, p99 {}, max {}; sidecar {:.0} MB",
                    thousands(answered as f64),
                    thousands(m.n as f64),
                    ms(p50),
                    ms(p99),
                    ms(max.unwrap_or(f64::NAN)),
                    rss_mb
                )
            };
            let met = answered == m.n && p99 <= P99_TARGET_MS && rss_mb <= RSS_TARGET_MB;
            vec![Row {
                benchmark: name,
                ours,
                limit: "—".into(),
                ratio: "—".into(),
                target: TARGET.into(),
                verdict: Verdict::from_bool(met),
                electric: ELECTRIC.into(),
            }]
        }
        Err(e) => {
            ctx.report.note(BENCH, format!("{name}: failed: {e}"));
            vec![Row::failed(&name, &e, TARGET, ELECTRIC)]
        }
    }
}

/// One client: connect, send the live request, count itself set up, wait for the answer.
async fn client(addr: SocketAddr, path: Arc<str>, ready: Arc<AtomicUsize>) -> (Outcome, Option<f64>) {
    let t = Instant::now();
    let conn = match AsyncConn::connect(addr, READ_BUF).await {
        Ok(mut c) => match c.send_get(&path).await {
            Ok(()) => Ok(c),
            Err(e) => Err(format!("sending the live request: {e}")),
        },
        Err(e) => Err(format!("connect: {e}")),
    };
    let connect_ms = t.elapsed().as_secs_f64() * 1e3;
    ready.fetch_add(1, Ordering::SeqCst);
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => return (Outcome::ConnectFailed(e), None),
    };
    let outcome = match conn.read_response().await {
        Ok(resp) => Outcome::Answered { at: Instant::now(), resp, _conn: Box::new(conn) },
        Err(e) => Outcome::ReadFailed(e.to_string()),
    };
    (outcome, Some(connect_ms))
}

/// Runs the benchmark on its own cluster.
fn measure(n: usize, perf_dir: Option<&std::path::Path>) -> Measured {
    let label = format!("#{BENCH} {n} clients");
    let cluster = bench_cluster(true, false, &[]);
    let mut client_pg = cluster.client();
    client_pg
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, k int NOT NULL, title text); \
             INSERT INTO items SELECT i, 0, 'row ' || i FROM generate_series(1, {ROWS}) i;"
        ))
        .unwrap_or_else(|e| panic!("create the table: {e}"));
    let handles = create_shapes(&mut client_pg, "items", &["k = 0".to_string()], &label);
    wait_all_live(&cluster, &handles, Duration::from_secs(120), &label);
    let insert = client_pg
        .prepare("INSERT INTO items (id, k, title) VALUES ($1, 0, 'x')")
        .unwrap_or_else(|e| panic!("prepare: {e}"));

    let sidecar = Sidecar::start(&cluster, &[("LONG_POLL_TIMEOUT", LONG_POLL_TIMEOUT_MS)]);
    let pid = sidecar.pid();
    let addr = SocketAddr::from(([127, 0, 0, 1], sidecar.port()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("start the tokio runtime: {e}"));

    // One sync for the position every client goes live from.
    let def = ShapeDef::new("items", Some("k = 0"));
    let pos = rt.block_on(async {
        let mut c = AsyncConn::connect(addr, READ_BUF)
            .await
            .unwrap_or_else(|e| panic!("connect to the sidecar at {addr}: {e}"));
        sync_shape_async(&mut c, &def).await.unwrap_or_else(|e| panic!("initial sync of items WHERE k = 0: {e}"))
    });
    let path: Arc<str> = pos.live_path(&def).into();
    crate::progress!("{label}: synced (handle {}, offset {}); opening {n} live long-polls", pos.handle, pos.offset);
    // The sync connection is closed by now; count from here.
    std::thread::sleep(Duration::from_millis(100));
    let fds0 = open_fds(pid);
    let rss_base_kb = rss_kb(pid).map(|r| r.0).unwrap_or(0);
    let cpu0 = cpu_seconds(pid);

    // Connect in batches; each batch is written before the next one starts.
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks: JoinSet<(Outcome, Option<f64>)> = JoinSet::new();
    let setup = Instant::now();
    let mut last_report = Instant::now();
    for start in (0..n).step_by(CONNECT_BATCH) {
        let end = (start + CONNECT_BATCH).min(n);
        {
            let _guard = rt.enter();
            for _ in start..end {
                tasks.spawn(client(addr, path.clone(), ready.clone()));
            }
        }
        let deadline = Instant::now() + ACCEPT_TIMEOUT;
        while ready.load(Ordering::SeqCst) < end {
            assert!(
                Instant::now() < deadline,
                "{label}: only {} of {end} connections set up after {ACCEPT_TIMEOUT:?}",
                ready.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // A connect completes once the connection is in the accept queue: wait for the accepts.
        let deadline = Instant::now() + BATCH_ACCEPT_TIMEOUT;
        while open_fds(pid) < fds0 + end && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            crate::progress!("{label}: {end}/{n} connections sent their live request");
        }
    }
    let setup_seconds = setup.elapsed().as_secs_f64();
    crate::progress!("{label}: {n} live requests sent in {setup_seconds:.2}s; waiting for the sidecar to accept them");

    // Parked: the sidecar holds a descriptor per connection, then the last requests get time to be parsed.
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    let mut last_report = Instant::now();
    loop {
        let added = open_fds(pid).saturating_sub(fds0);
        if added >= n {
            break;
        }
        if Instant::now() >= deadline {
            crate::progress!(
                "{label}: WARNING: the sidecar holds only {added} more descriptors after {ACCEPT_TIMEOUT:?}"
            );
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            crate::progress!("{label}: sidecar accepted {added}/{n}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(SETTLE);
    let fds_added = open_fds(pid).saturating_sub(fds0);
    let rss_parked_kb = rss_kb(pid).map(|r| r.0).unwrap_or(0);
    let cpu1 = cpu_seconds(pid);
    crate::progress!(
        "{label}: all parked (+{fds_added} descriptors, sidecar RSS {:.1} MB); inserting",
        rss_parked_kb as f64 / 1024.0
    );

    let perf = Perf::start(perf_dir, "fanout_sidecar", pid);
    let me = std::process::id();
    let client_cpu1 = cpu_seconds(me);
    let id = ROWS + 1;
    let t0 = Instant::now();
    client_pg.execute(&insert, &[&id]).unwrap_or_else(|e| panic!("{label}: the insert: {e}"));
    let commit_ms = t0.elapsed().as_secs_f64() * 1e3;

    let mut outcomes: Vec<(Outcome, Option<f64>)> = Vec::with_capacity(n);
    let mut first_error = None;
    rt.block_on(async {
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
            while let Some(r) = tasks.join_next().await {
                match r {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("client task: {e}"));
                    }
                }
            }
        })
        .await;
    });
    let fanout_seconds = outcomes
        .iter()
        .filter_map(|(o, _)| match o {
            Outcome::Answered { at, .. } => Some(at.saturating_duration_since(t0).as_secs_f64()),
            _ => None,
        })
        .fold(0.0, f64::max);
    let cpu2 = cpu_seconds(pid);
    let client_cpu2 = cpu_seconds(me);
    let hwm_kb = rss_kb(pid).map(|r| r.1).unwrap_or(0);
    if let Some(p) = perf {
        p.finish();
    }
    let unanswered = tasks.len();
    tasks.abort_all();

    let mut m = Measured {
        n,
        latencies: Vec::with_capacity(n),
        without_row: 0,
        early: 0,
        connect_failed: 0,
        read_failed: 0,
        unanswered,
        first_error,
        connect_ms: Vec::with_capacity(n),
        setup_seconds,
        commit_ms,
        rss_base_kb,
        rss_parked_kb,
        hwm_kb,
        fds_added,
        cpu_setup: cpu0.zip(cpu1).map(|(a, b)| b - a),
        cpu_fanout: cpu1.zip(cpu2).map(|(a, b)| b - a),
        client_cpu_fanout: client_cpu1.zip(client_cpu2).map(|(a, b)| b - a),
        fanout_seconds,
    };
    for (o, connect_ms) in &outcomes {
        m.connect_ms.extend(connect_ms);
        match o {
            Outcome::Answered { at, resp, .. } => {
                if *at < t0 {
                    m.early += 1;
                }
                if resp.status == 200 && has_insert(&resp.body, id) {
                    m.latencies.push(at.saturating_duration_since(t0).as_secs_f64() * 1e3);
                } else {
                    m.without_row += 1;
                    m.first_error.get_or_insert_with(|| {
                        format!(
                            "a response without the row: {} {}",
                            resp.status,
                            resp.body_text().chars().take(200).collect::<String>()
                        )
                    });
                }
            }
            Outcome::ConnectFailed(e) => {
                m.connect_failed += 1;
                m.first_error.get_or_insert_with(|| e.clone());
            }
            Outcome::ReadFailed(e) => {
                m.read_failed += 1;
                m.first_error.get_or_insert_with(|| e.clone());
            }
        }
    }
    let s = util::sorted(&m.latencies);
    crate::progress!(
        "{label}: {}/{n} answered with the row; p50 {} p99 {}",
        s.len(),
        ms(util::percentile(&s, 50.0)),
        ms(util::percentile(&s, 99.0))
    );
    drop(outcomes);
    drop(tasks);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(client_pg);
    drop(sidecar);
    drop(cluster);
    m
}
