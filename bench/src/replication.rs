//! Benchmarks 1 and 2: replication throughput, the engine against raw logical
//! decoding of the same WAL.
//!
//! For each shape count, on a fresh cluster (fsync off, see `util::BENCH_CONF`):
//!
//! 1. `items(id, k, title, body, n)` with a few rows, and S shapes on it:
//!    `k = c` (benchmark 1, found through the engine's hash index) or
//!    `title ILIKE '%<c>%'` (benchmark 2, evaluated one by one), for c in 0..S.
//!    Every row matches exactly one shape, so every row change in the WAL is
//!    appended to exactly one log.
//! 2. Once every log is live and the engine has caught up, a `pgoutput` slot
//!    `bench_raw` is created (publication `pg_shapes`, which holds `items`).
//! 3. The engine is paused: the server restarts with `pg_shapes.database`
//!    pointing at an empty database, so the decoder waits there for
//!    `CREATE EXTENSION` and its slot keeps the WAL. The workload then runs:
//!    N row changes in transactions of `repl_txn_changes` changes, each half
//!    inserts of new rows and half updates of the rows the previous
//!    transaction inserted (`k` and `title` unchanged), so inserts and updates
//!    are spread evenly through the WAL.
//! 4. Limit: `SELECT count(*) FROM pg_logical_slot_get_binary_changes('bench_raw', …)`
//!    decodes that WAL with pgoutput (Postgres's own decoding and text
//!    serialisation, nothing consuming it) → decoded changes / elapsed.
//! 5. Ours: the server restarts with the engine's database back; the decoder
//!    resumes from its slot and works through the backlog. The benchmark
//!    sleeps on the doorbell (the page the engine rings every ~1 ms while busy)
//!    and records `complete_through` over time; the rate is the WAL it covered
//!    between its first step into the workload and the end (or the time cap),
//!    converted to row changes with the workload's changes-per-WAL-byte. Start-up
//!    (loading the shapes) is not counted. When it caught up, the appended
//!    change records (`shapes.shapes.change_records`) are checked to equal N.

use std::time::{Duration, Instant};

use pg_shapes_tests::shape_log::Doorbell;
use pg_shapes_tests::StopMode;

use crate::report::{ratio, thousands, Report, Row, Verdict};
use crate::sizes::Sizes;
use crate::util::{self, bench_cluster, cpu_seconds, create_shapes, flush_lsn, wait_all_live, Perf};
use crate::Ctx;

/// Which WHERE clauses the shapes have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `k = c`: routed through the engine's index.
    Eq,
    /// `title ILIKE '%<c>%'`: evaluated shape by shape.
    ILike,
}

impl Kind {
    fn where_clause(self, c: usize) -> String {
        match self {
            Kind::Eq => format!("k = {c}"),
            Kind::ILike => format!("title ILIKE '%<{c}>%'"),
        }
    }
}

/// What one configuration measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub shapes: usize,
    /// Engine row changes per second.
    pub engine_rate: f64,
    /// Whether the engine caught up within the time cap.
    pub caught_up: bool,
    /// Seconds of engine catch-up measured.
    pub engine_seconds: f64,
    /// Raw pgoutput row changes per second.
    pub raw_rate: f64,
    /// Changes pgoutput decoded (should be N).
    pub raw_changes: u64,
    /// Workload generation rate (changes/s the single writer achieved).
    pub write_rate: f64,
    /// Decoder CPU use during catch-up, % of one core.
    pub decoder_cpu: f64,
    /// Change records appended (when caught up).
    pub appended: Option<i64>,
    pub wal_bytes: u64,
    pub shape_setup_seconds: f64,
}

pub fn run(ctx: &mut Ctx, kind: Kind) -> Vec<Row> {
    let bench = if kind == Kind::Eq { 1 } else { 2 };
    let counts = if kind == Kind::Eq { ctx.sizes.repl_shapes.clone() } else { ctx.sizes.nonopt_shapes.clone() };
    let mut rows = Vec::new();
    for s in counts {
        let name = match kind {
            Kind::Eq => format!("1. replication, {} shape{} `k = const`", thousands(s as f64), plural(s)),
            Kind::ILike => format!("2. replication, {} shape{} `title ILIKE '%x%'`", thousands(s as f64), plural(s)),
        };
        let (target, electric) = match kind {
            Kind::Eq => (
                "≥ 50,000/s and ≥ 0.5× raw (at 10,000 shapes)".to_string(),
                "~5,000/s whatever the number of shapes".to_string(),
            ),
            Kind::ILike => (
                "≥ 10,000/s (at 100 shapes)".to_string(),
                match s {
                    10 => "1,400/s".to_string(),
                    100 => "140/s".to_string(),
                    _ => "1,400/s at 10 shapes, 140/s at 100".to_string(),
                },
            ),
        };
        crate::progress!("#{bench}: {name}");
        let sizes = ctx.sizes.clone();
        let perf_dir = ctx.perf_dir.clone();
        let result = crate::catch(|| measure(&sizes, kind, s, perf_dir.as_deref(), bench));
        match result {
            Ok(m) => {
                let r = m.engine_rate / m.raw_rate;
                let met = match kind {
                    Kind::Eq => m.engine_rate >= 50_000.0 && r >= 0.5,
                    Kind::ILike => m.engine_rate >= 10_000.0,
                };
                let mut ours = format!("{} changes/s", thousands(m.engine_rate));
                if !m.caught_up {
                    ours.push_str(&format!(" (still behind after {:.0} s; rate over that part)", m.engine_seconds));
                }
                note(&mut ctx.report, bench, &m);
                rows.push(Row {
                    benchmark: name,
                    ours,
                    limit: format!("raw pgoutput decoding: {} changes/s", thousands(m.raw_rate)),
                    ratio: ratio(r),
                    target,
                    verdict: Verdict::from_bool(met),
                    electric,
                });
            }
            Err(e) => {
                ctx.report.note(bench, format!("{name}: failed: {e}"));
                rows.push(Row::failed(&name, &e, &target, &electric));
            }
        }
    }
    rows
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn note(report: &mut Report, bench: u32, m: &Measured) {
    report.note(
        bench,
        format!(
            "{} shapes: engine {} changes/s over {:.1} s{} (decoder at {:.0}% of a core), raw pgoutput {} changes/s \
             ({} changes decoded), {:.0} MB of WAL; the single writer produced {} changes/s; \
             appended change records: {}; shape set-up took {:.1} s",
            m.shapes,
            thousands(m.engine_rate),
            m.engine_seconds,
            if m.caught_up { "" } else { " (time cap reached)" },
            m.decoder_cpu,
            thousands(m.raw_rate),
            m.raw_changes,
            m.wal_bytes as f64 / 1e6,
            thousands(m.write_rate),
            m.appended.map(|a| a.to_string()).unwrap_or_else(|| "not checked (not caught up)".into()),
            m.shape_setup_seconds,
        ),
    );
}

/// Runs one configuration on its own cluster.
pub fn measure(sizes: &Sizes, kind: Kind, shapes: usize, perf_dir: Option<&std::path::Path>, bench: u32) -> Measured {
    let label = format!("#{bench} {shapes} shapes");
    let half = sizes.repl_txn_changes / 2;
    let batches = sizes.repl_changes.div_ceil(sizes.repl_txn_changes).max(1);
    let n_changes = batches * sizes.repl_txn_changes;

    let cluster = bench_cluster(true, false, &[]);
    let mut client = cluster.client();
    client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, k int NOT NULL, title text NOT NULL, body text NOT NULL, \
             n int NOT NULL DEFAULT 0)",
        )
        .unwrap();
    client.batch_execute("CREATE DATABASE bench_paused").unwrap();
    client.batch_execute(&insert_sql(1, half, shapes)).unwrap();

    let setup = Instant::now();
    let wheres: Vec<String> = (0..shapes).map(|c| kind.where_clause(c)).collect();
    let handles = create_shapes(&mut client, "items", &wheres, &label);
    wait_all_live(&cluster, &handles, Duration::from_secs(900), &label);
    pg_shapes_tests::shapes::wait_caught_up(&mut client, Duration::from_secs(120));
    let shape_setup_seconds = setup.elapsed().as_secs_f64();
    let records_before = change_records(&mut client);

    client.batch_execute("SELECT pg_create_logical_replication_slot('bench_raw', 'pgoutput')").unwrap();

    // Pause the engine: its worker waits in an empty database, its slot keeps the WAL.
    crate::progress!("{label}: pausing the engine (restart with pg_shapes.database = bench_paused)");
    client.batch_execute("ALTER SYSTEM SET pg_shapes.database = 'bench_paused'").unwrap();
    drop(client);
    cluster.restart(StopMode::Fast);
    let mut client = cluster.client();
    let active: bool =
        client.query_one("SELECT active FROM pg_replication_slots WHERE slot_name = 'pg_shapes'", &[]).unwrap().get(0);
    assert!(!active, "the engine's slot is still in use after pausing");

    // The workload.
    crate::progress!("{label}: writing {n_changes} row changes in {batches} transactions");
    let start_lsn = flush_lsn(&mut client);
    let t = Instant::now();
    for j in 0..batches {
        let ins_from = (j + 1) * half + 1;
        let upd_from = j * half + 1;
        let sql = format!(
            "BEGIN; {} UPDATE items SET n = n + 1 WHERE id BETWEEN {upd_from} AND {}; COMMIT;",
            insert_sql(ins_from, ins_from + half - 1, shapes),
            upd_from + half - 1
        );
        client.batch_execute(&sql).unwrap();
        if batches >= 10 && (j + 1) % (batches / 5) == 0 && j + 1 < batches {
            crate::progress!("{label}: {}/{batches} transactions written", j + 1);
        }
    }
    let write_rate = n_changes as f64 / t.elapsed().as_secs_f64();
    let end_lsn = flush_lsn(&mut client);
    let wal_bytes = end_lsn - start_lsn;
    crate::progress!(
        "{label}: wrote {n_changes} changes ({:.0} MB of WAL) in {:.1}s",
        wal_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // The limit: pgoutput over the same WAL, nothing consuming it.
    crate::progress!("{label}: raw decoding with pgoutput (pg_logical_slot_get_binary_changes)");
    let t = Instant::now();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68)) FROM \
             pg_logical_slot_get_binary_changes('bench_raw', NULL, NULL, 'proto_version', '1', \
             'publication_names', 'pg_shapes')",
            &[],
        )
        .unwrap();
    let raw_secs = t.elapsed().as_secs_f64();
    let raw_changes: i64 = row.get(0);
    let raw_rate = raw_changes as f64 / raw_secs;
    crate::progress!("{label}: raw: {raw_changes} changes in {raw_secs:.2}s = {} changes/s", thousands(raw_rate));
    client.batch_execute("SELECT pg_drop_replication_slot('bench_raw')").unwrap();

    // Ours: resume the engine and follow its progress through the backlog.
    crate::progress!("{label}: resuming the engine; following its catch-up");
    client.batch_execute("ALTER SYSTEM RESET pg_shapes.database").unwrap();
    drop(client);
    let bell = Doorbell::open_ro(&util::shape_storage(&cluster)).expect("open the doorbell");
    // Before the restart: a small backlog is done before restart() returns.
    let restarted = Instant::now();
    cluster.restart(StopMode::Fast);
    let follow = follow_catch_up(&bell, start_lsn, end_lsn, restarted, sizes.repl_max_seconds, perf_dir, &label);

    let changes_per_byte = n_changes as f64 / wal_bytes as f64;
    let engine_rate = follow.wal_rate * changes_per_byte;
    let mut client = cluster.client();
    let appended = if follow.caught_up {
        pg_shapes_tests::shapes::wait_caught_up(&mut client, Duration::from_secs(60));
        let a = change_records(&mut client) - records_before;
        if a != n_changes as i64 {
            crate::progress!("{label}: WARNING: {a} change records appended, expected {n_changes}");
        }
        Some(a)
    } else {
        None
    };
    crate::progress!("{label}: engine {} changes/s", thousands(engine_rate));
    drop(client);
    drop(cluster);
    Measured {
        shapes,
        engine_rate,
        caught_up: follow.caught_up,
        engine_seconds: follow.seconds,
        raw_rate,
        raw_changes: raw_changes as u64,
        write_rate,
        decoder_cpu: follow.cpu_percent,
        appended,
        wal_bytes,
        shape_setup_seconds,
    }
}

/// `INSERT` of rows `from..=to`: row i has `k = i % shapes` and `<k>` in its title.
fn insert_sql(from: u64, to: u64, shapes: usize) -> String {
    format!(
        "INSERT INTO items (id, k, title, body) SELECT i, i % {shapes}, 'item <' || (i % {shapes}) || '> number ' || i, \
         md5(i::text) || md5((i + 1)::text) || md5((i + 2)::text) FROM generate_series({from}, {to}) i;"
    )
}

fn change_records(client: &mut pg_shapes_tests::postgres::Client) -> i64 {
    client.query_one("SELECT coalesce(sum(change_records), 0)::bigint FROM shapes.shapes", &[]).unwrap().get(0)
}

/// The engine's progress through a WAL backlog.
pub struct Follow {
    /// WAL bytes per second covered between the first and the last observation.
    pub wal_rate: f64,
    pub seconds: f64,
    pub caught_up: bool,
    pub cpu_percent: f64,
}

/// Sleeps on the doorbell and records `complete_through` until it passes `end_lsn`
/// or `max_seconds` have passed since it first moved past `start_lsn`.
pub fn follow_catch_up(
    bell: &Doorbell,
    start_lsn: u64,
    end_lsn: u64,
    restarted: Instant,
    max_seconds: f64,
    perf_dir: Option<&std::path::Path>,
    label: &str,
) -> Follow {
    let wait_deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    let mut last;
    let mut cpu_first = None;
    let mut pid = 0u32;
    let mut perf = None;
    let mut last_report = Instant::now();
    let caught_up = loop {
        let seq = bell.seq();
        let ct = bell.complete_through();
        let now = Instant::now();
        if ct > start_lsn {
            if first.is_none() {
                first = Some((now, ct));
                pid = bell.worker_pid();
                cpu_first = cpu_seconds(pid);
                perf = Perf::start(perf_dir, &label.replace([' ', '#'], "_"), pid);
            }
            last = (now, ct.min(end_lsn));
            if ct + 1 >= end_lsn {
                break true;
            }
            let (t0, _) = first.unwrap();
            if now.duration_since(t0).as_secs_f64() >= max_seconds {
                break false;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                crate::progress!(
                    "{label}: engine {:.0}% through the backlog",
                    100.0 * (ct - start_lsn) as f64 / (end_lsn - start_lsn) as f64
                );
            }
        } else {
            assert!(now < wait_deadline, "the engine did not start on the backlog within 10 minutes");
        }
        bell.wait(seq, Duration::from_millis(50));
    };
    let cpu_last = cpu_seconds(pid);
    if let Some(p) = perf {
        p.finish();
    }
    let (mut t0, mut ct0) = first.unwrap();
    if last.0.duration_since(t0) < Duration::from_millis(20) {
        // Too little to see in steps (a tiny backlog): count from the restart, server start-up and shape
        // loading included, which understates the rate.
        (t0, ct0) = (restarted, start_lsn);
    }
    let seconds = last.0.duration_since(t0).as_secs_f64();
    let cpu_percent = match (cpu_first, cpu_last) {
        (Some(a), Some(b)) if seconds > 0.0 => 100.0 * (b - a) / seconds,
        _ => f64::NAN,
    };
    Follow { wal_rate: (last.1 - ct0) as f64 / seconds.max(1e-6), seconds, caught_up, cpu_percent }
}

/// How benchmarks 1 and 2 measure, for RESULTS.md.
pub const METHOD: &str = "\
One fresh cluster per shape count. Table `items(id bigint primary key, k int, title text, body text, n int)`,
~150 bytes a row; shapes `k = c` (1) or `title ILIKE '%<c>%'` (2) for c = 0..S, every row matching exactly
one shape. After the shapes are live, a pgoutput slot is created and the engine is paused (restart with
`pg_shapes.database` pointing at an empty database, so its slot keeps the WAL). One writer then produces
N row changes in transactions of `repl_txn_changes` (half INSERTs of new rows, half UPDATEs of the rows the
previous transaction inserted). **Limit**: `pg_logical_slot_get_binary_changes` with pgoutput
(proto 1, publication `pg_shapes`) over that WAL, counted with `count(*)`: Postgres's own decoding and
text serialisation, nothing consuming it. **Ours**: the engine resumes on the backlog; the benchmark
sleeps on the shape logs' doorbell (rung every ~1 ms while busy) and takes the rate from how much WAL
`complete_through` covered between its first step into the workload and the end, times the workload's
changes per WAL byte (start-up, i.e. loading the shapes, is not counted). If it has not caught up after
`repl_max_seconds`, the rate is over the part done. When it caught up, the appended change records are
checked to equal N. Both sides run on the same cluster with the same settings, one after the other.";
