//! Benchmark 7: what the engine costs the database's own writes.
//!
//! pgbench's TPC-B-like load with the engine decoding the WAL and many shapes
//! on `pgbench_accounts`, against the same load on a cluster without the
//! extension at all (not preloaded, no slot). With fsync off on both, commits
//! do not wait for the disk, so the comparison is of CPU: the decoder competes
//! with the backends for the same cores.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pg_shapes_tests::shape_log::Doorbell;
use pg_shapes_tests::TestCluster;

use crate::report::{ratio, thousands, Row, Verdict};
use crate::sizes::Sizes;
use crate::util::{bench_cluster, command_output, cpu_seconds, create_shapes, shape_storage, wait_all_live};
use crate::Ctx;

const TARGET: &str = "≥ 0.8× without";
const ELECTRIC: &str = "—";
/// How long the engine may take to catch up after the run before that is reported as not keeping up.
const CATCH_UP_BOUND: Duration = Duration::from_secs(120);

/// One side's pgbench run.
#[derive(Debug, Clone)]
struct Run {
    tps: f64,
    latency_ms: Option<f64>,
    transactions: Option<u64>,
    init_seconds: f64,
}

/// What the engine did around its run.
#[derive(Debug, Clone)]
struct Engine {
    shapes: usize,
    shape_setup_seconds: f64,
    /// Decoder CPU during the run, % of one core.
    decoder_cpu: f64,
    /// Seconds from the end of the run until the engine had decoded all of it, or why not.
    catch_up: Result<f64, String>,
    /// Change records appended to the shapes' logs during the run.
    appended: i64,
}

pub fn run(ctx: &mut Ctx) -> Vec<Row> {
    let sizes = ctx.sizes.clone();
    let name = format!(
        "7. pgbench TPS, {} shapes on pgbench_accounts (scale {}, {} clients)",
        thousands(sizes.pgbench_shapes as f64),
        sizes.pgbench_scale,
        sizes.pgbench_clients
    );
    let result = crate::catch(|| {
        let pgbench = pgbench_binary();
        let base = measure_without(&sizes, &pgbench);
        let (ours, engine) = measure_with_engine(&sizes, &pgbench);
        (base, ours, engine)
    });
    match result {
        Ok((base, ours, engine)) => {
            for (who, r) in [("without the extension", &base), ("with the engine", &ours)] {
                ctx.report.note(
                    7,
                    format!(
                        "{who}: {:.0} TPS, latency average {}, {} transactions (pgbench -i took {:.1} s)",
                        r.tps,
                        r.latency_ms.map(|l| format!("{l:.2} ms")).unwrap_or_else(|| "?".into()),
                        r.transactions.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
                        r.init_seconds
                    ),
                );
            }
            let kept_up = match &engine.catch_up {
                Ok(s) => format!("it had decoded the whole run {s:.2} s after pgbench ended"),
                Err(e) => format!("it had NOT caught up {CATCH_UP_BOUND:?} after pgbench ended: {e}"),
            };
            ctx.report.note(
                7,
                format!(
                    "engine: {} shapes `aid = c` created and live in {:.1} s; decoder at {:.0}% of a core during \
                     the run; {kept_up}; {} change records appended to the shapes' logs",
                    engine.shapes, engine.shape_setup_seconds, engine.decoder_cpu, engine.appended
                ),
            );
            let r = ours.tps / base.tps;
            let mut ours_text = format!("{} TPS", thousands(ours.tps));
            if engine.catch_up.is_err() {
                ours_text.push_str(" (the engine fell behind)");
            }
            vec![Row {
                benchmark: name,
                ours: ours_text,
                limit: format!("without the extension: {} TPS", thousands(base.tps)),
                ratio: ratio(r),
                target: TARGET.into(),
                verdict: Verdict::from_bool(r >= 0.8 && engine.catch_up.is_ok()),
                electric: ELECTRIC.into(),
            }]
        }
        Err(e) => {
            ctx.report.note(7, format!("write overhead: failed: {e}"));
            vec![Row::failed(&name, &e, TARGET, ELECTRIC)]
        }
    }
}

/// pgbench from the Postgres the clusters run, else from PATH.
fn pgbench_binary() -> PathBuf {
    let p = pg_shapes_tests::env::pg_bindir().join("pgbench");
    if p.is_file() {
        p
    } else {
        PathBuf::from("pgbench")
    }
}

/// pgbench connecting like `TestCluster::client` does: TCP to 127.0.0.1 as `postgres`.
fn pgbench(bin: &Path, cluster: &TestCluster) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("PGPASSWORD", "password").args(["-h", "127.0.0.1", "-U", "postgres", "-p"]).arg(cluster.port().to_string());
    cmd
}

fn init(bin: &Path, cluster: &TestCluster, sizes: &Sizes, label: &str) -> f64 {
    crate::progress!("{label}: pgbench -i -s {}", sizes.pgbench_scale);
    let t = Instant::now();
    command_output(pgbench(bin, cluster).args(["-i", "-q", "-s", &sizes.pgbench_scale.to_string(), "postgres"]))
        .unwrap_or_else(|e| panic!("{label}: pgbench -i: {e}"));
    t.elapsed().as_secs_f64()
}

fn bench(bin: &Path, cluster: &TestCluster, sizes: &Sizes, label: &str, init_seconds: f64) -> Run {
    let mut client = cluster.client();
    // Same starting point on both sides: no checkpoint due in the run.
    client.batch_execute("CHECKPOINT").unwrap();
    drop(client);
    crate::progress!(
        "{label}: pgbench -c {} -j {} -T {} -n",
        sizes.pgbench_clients,
        sizes.pgbench_threads,
        sizes.pgbench_seconds
    );
    let out = command_output(pgbench(bin, cluster).args([
        "-c",
        &sizes.pgbench_clients.to_string(),
        "-j",
        &sizes.pgbench_threads.to_string(),
        "-T",
        &sizes.pgbench_seconds.to_string(),
        "-n",
        "postgres",
    ]))
    .unwrap_or_else(|e| panic!("{label}: pgbench: {e}"));
    let r = parse_pgbench(&out, init_seconds).unwrap_or_else(|e| panic!("{label}: {e}:\n{out}"));
    crate::progress!("{label}: {:.0} TPS", r.tps);
    r
}

fn parse_pgbench(out: &str, init_seconds: f64) -> Result<Run, String> {
    let value = |prefix: &str| -> Option<&str> {
        out.lines().find_map(|l| l.trim().strip_prefix(prefix)).and_then(|v| v.split_whitespace().next())
    };
    let tps = out
        .lines()
        .find(|l| l.contains("without initial connection time"))
        .and_then(|l| l.trim().strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or("no `tps = … (without initial connection time)` line in pgbench's output")?;
    Ok(Run {
        tps,
        latency_ms: value("latency average = ").and_then(|v| v.parse().ok()),
        transactions: value("number of transactions actually processed: ").and_then(|v| v.parse().ok()),
        init_seconds,
    })
}

fn measure_without(sizes: &Sizes, bin: &Path) -> Run {
    let label = "#7 without the extension";
    let cluster = bench_cluster(false, false, &[]);
    let init_seconds = init(bin, &cluster, sizes, label);
    bench(bin, &cluster, sizes, label, init_seconds)
}

fn measure_with_engine(sizes: &Sizes, bin: &Path) -> (Run, Engine) {
    let label = "#7 with the engine";
    let cluster = bench_cluster(true, false, &[]);
    let init_seconds = init(bin, &cluster, sizes, label);
    let mut client = cluster.client();

    let t = Instant::now();
    let wheres: Vec<String> = (1..=sizes.pgbench_shapes).map(|c| format!("aid = {c}")).collect();
    let handles = create_shapes(&mut client, "pgbench_accounts", &wheres, label);
    wait_all_live(&cluster, &handles, Duration::from_secs(1800), label);
    // pgbench -i's WAL (the load and its VACUUM) must be decoded before the measured run.
    pg_shapes_tests::shapes::wait_caught_up(&mut client, Duration::from_secs(600));
    let shape_setup_seconds = t.elapsed().as_secs_f64();
    let records_before = change_records(&mut client);

    let bell = Doorbell::open_ro(&shape_storage(&cluster)).expect("open the shape logs' doorbell");
    let pid = bell.worker_pid();
    let cpu_before = cpu_seconds(pid);
    let t = Instant::now();
    let run = bench(bin, &cluster, sizes, label, init_seconds);
    let cpu_after = cpu_seconds(pid);
    let run_seconds = t.elapsed().as_secs_f64();
    let decoder_cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => 100.0 * (b - a) / run_seconds,
        _ => f64::NAN,
    };

    let t = Instant::now();
    let catch_up = crate::catch(|| pg_shapes_tests::shapes::wait_caught_up(&mut client, CATCH_UP_BOUND))
        .map(|()| t.elapsed().as_secs_f64());
    let appended = change_records(&mut client) - records_before;
    match &catch_up {
        Ok(s) => crate::progress!("{label}: engine caught up {s:.2}s after the run"),
        Err(e) => crate::progress!("{label}: engine did not catch up: {e}"),
    }
    (run, Engine { shapes: sizes.pgbench_shapes, shape_setup_seconds, decoder_cpu, catch_up, appended })
}

fn change_records(client: &mut pg_shapes_tests::postgres::Client) -> i64 {
    client.query_one("SELECT coalesce(sum(change_records), 0)::bigint FROM shapes.shapes", &[]).unwrap().get(0)
}

/// How benchmark 7 measures, for RESULTS.md.
pub const METHOD: &str = "\
Two fresh clusters with the same settings, one after the other, both with fsync off, so that commits do not wait
for the disk and what is compared is CPU, which the decoder competes for with the backends (on a 2-core machine
it takes a core's share from them). **Limit**: the cluster without the extension (not in
`shared_preload_libraries`, no `CREATE EXTENSION`, no slot): `pgbench -i -s <pgbench_scale>`, a `CHECKPOINT`,
then `pgbench -c <pgbench_clients> -j <pgbench_threads> -T <pgbench_seconds> -n` (the built-in TPC-B-like
script, over TCP to 127.0.0.1 with password authentication, like the other benchmarks' clients); the figure is
pgbench's `tps = … (without initial connection time)`. **Ours**: the cluster with the engine: the same
`pgbench -i`, then `pgbench_shapes` shapes `aid = c` (c = 1..N) on `pgbench_accounts` through
`shapes.get_or_create_shape`, all live and the engine caught up on the initialisation's WAL, a `CHECKPOINT`,
and the same pgbench run. The decoder's CPU during the run and the time it needed after the run to have decoded
all of it (`complete_through` reaching the flushed WAL position, bounded at 2 minutes; not catching up fails the
target) are noted, with the change records appended to the shapes' logs. Ratio = TPS with ÷ TPS without,
target ≥ 0.8.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_output() {
        let out = "pgbench (15.8 (Debian 15.8-1.pgdg120+1))
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 1
query mode: simple
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 12345
number of failed transactions: 0 (0.000%)
latency average = 1.620 ms
initial connection time = 10.5 ms
tps = 2469.123456 (without initial connection time)
";
        let r = parse_pgbench(out, 1.0).unwrap();
        assert!((r.tps - 2469.123456).abs() < 1e-9);
        assert_eq!(r.latency_ms, Some(1.62));
        assert_eq!(r.transactions, Some(12345));
        assert!(parse_pgbench("nothing", 1.0).is_err());
    }
}
