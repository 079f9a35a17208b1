//! pg_shapes benchmarks. Each benchmark measures our figure and, in the same
//! run on the same machine, the limit it is compared with (DESIGN.md §5): raw
//! logical decoding of the same WAL, the commit latency of the same insert,
//! `COPY` of the same rows, nginx serving the same bytes, pgbench without the
//! extension. Speed claims are ratios against those, never absolute numbers
//! from elsewhere.
//!
//! | # | module | what |
//! |---|---|---|
//! | 1, 2 | [`replication`] | row changes/s appended to shape logs vs raw pgoutput decoding |
//! | 3 | [`latency`] | commit → long-poll client latency vs the commit itself |
//! | 4 | [`initial_sync`] | first / second client sync of a big shape vs `COPY … row_to_json` |
//! | 5 | [`fanout`] | one insert answering thousands of parked long-polls |
//! | 6 | [`chunk_serving`] | a cached chunk under wrk vs nginx serving the same bytes |
//! | 7 | [`write_overhead`] | pgbench TPS with the engine and shapes vs without the extension |
//!
//! Sizes are parameters ([`sizes::Sizes`]): `--quick` and a full run execute the
//! same code. The run writes `bench/RESULTS.md` (or `--out`). See bench/README.md.

pub mod chunk_serving;
pub mod fanout;
pub mod http;
pub mod initial_sync;
pub mod latency;
pub mod replication;
pub mod report;
pub mod sizes;
pub mod util;
pub mod write_overhead;

use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Instant;

use report::Report;
use sizes::Sizes;

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Opts {
    pub preset: &'static str,
    pub sizes: Sizes,
    /// Benchmarks to run (1..=7), in order.
    pub only: Vec<u32>,
    pub out: PathBuf,
    /// Where to write `perf record` profiles of the engine and the sidecar.
    pub perf_dir: Option<PathBuf>,
}

pub const USAGE: &str = "\
usage: pg_shapes_bench [--quick | --tiny] [--only 1,3] [--out PATH] [--set name=value]... [--perf DIR]

  --quick          small sizes: a smoke run of every benchmark in a few minutes
  --tiny           the smallest sizes (what the test suite uses)
  --only LIST      run only these benchmarks (numbers 1-7, comma-separated)
  --out PATH       where to write the results (default bench/RESULTS.md)
  --set NAME=VAL   override one size, e.g. --set repl_changes=200000 --set repl_shapes=1,100
  --perf DIR       record perf profiles of the decoder and the sidecar during the measurements
";

/// Parses the arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut preset = "full";
    let mut sets = Vec::new();
    let mut only: Vec<u32> = (1..=7).collect();
    let mut out = pg_shapes_tests::env::workspace_root().join("bench").join("RESULTS.md");
    let mut perf_dir = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => preset = "quick",
            "--tiny" => preset = "tiny",
            "--full" => preset = "full",
            "--only" => {
                let v = value("--only")?;
                only = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().parse::<u32>().ok().filter(|n| (1..=7).contains(n)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("--only expects numbers 1-7, got {v:?}"))?;
                only.sort();
                only.dedup();
            }
            "--out" => out = PathBuf::from(value("--out")?),
            "--set" => sets.push(value("--set")?),
            "--perf" => perf_dir = Some(PathBuf::from(value("--perf")?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut sizes = match preset {
        "quick" => Sizes::quick(),
        "tiny" => Sizes::tiny(),
        _ => Sizes::full(),
    };
    for s in &sets {
        sizes.set(s)?;
    }
    Ok(Opts { preset, sizes, only, out, perf_dir })
}

/// State shared by the benchmarks of one run.
pub struct Ctx {
    pub sizes: Sizes,
    pub perf_dir: Option<PathBuf>,
    pub report: Report,
}

/// Runs `f`, turning a panic into its message (the harness reports failures by panicking).
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

/// Runs the selected benchmarks and returns the report.
pub fn run(opts: &Opts) -> Report {
    util::run_start();
    let nofile = util::raise_nofile_limit();
    progress!("pg_shapes benchmarks, {} sizes, benchmarks {:?} (open-file limit {nofile})", opts.preset, opts.only);
    let mut ctx = Ctx { sizes: opts.sizes.clone(), perf_dir: opts.perf_dir.clone(), report: Report::default() };
    for &b in &opts.only {
        let t = Instant::now();
        progress!("==== benchmark {b} ====");
        let rows = match b {
            1 => replication::run(&mut ctx, replication::Kind::Eq),
            2 => replication::run(&mut ctx, replication::Kind::ILike),
            3 => latency::run(&mut ctx),
            4 => initial_sync::run(&mut ctx),
            5 => fanout::run(&mut ctx),
            6 => chunk_serving::run(&mut ctx),
            7 => write_overhead::run(&mut ctx),
            _ => Vec::new(),
        };
        for r in &rows {
            progress!("#{b} result: {} | {} | {} | {} | {}", r.benchmark, r.ours, r.limit, r.ratio, r.verdict.as_str());
        }
        ctx.report.rows.extend(rows);
        progress!("==== benchmark {b} done in {:.0}s ====", t.elapsed().as_secs_f64());
    }
    ctx.report
}

/// How each benchmark measures, for RESULTS.md.
pub fn method(b: u32) -> &'static str {
    match b {
        1 | 2 => replication::METHOD,
        3 => latency::METHOD,
        4 => initial_sync::METHOD,
        5 => fanout::METHOD,
        6 => chunk_serving::METHOD,
        7 => write_overhead::METHOD,
        _ => "",
    }
}

/// The text of RESULTS.md.
pub fn render(opts: &Opts, report: &Report, machine: &[String], elapsed_s: f64) -> String {
    let mut s = String::new();
    s.push_str("# pg_shapes benchmark results\n\n");
    let _ = writeln!(
        s,
        "Written by `pg_shapes_bench` (`make bench`; this run: {} sizes, benchmarks {}) in {:.0} min. \
         Each limit was measured in the same run on the same machine; see bench/README.md.\n",
        opts.preset,
        opts.only.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
        elapsed_s / 60.0
    );
    s.push_str(&report.table());
    let missed: Vec<&report::Row> =
        report.rows.iter().filter(|r| matches!(r.verdict, report::Verdict::Missed | report::Verdict::Failed)).collect();
    s.push('\n');
    if missed.is_empty() {
        s.push_str("Every target in this run was met.\n");
    } else {
        let _ = writeln!(
            s,
            "Targets missed in this run: {}.",
            missed.iter().map(|r| format!("\"{}\"", r.benchmark)).collect::<Vec<_>>().join(", ")
        );
    }
    s.push_str("\n## How measured\n\n");
    for m in machine {
        let _ = writeln!(s, "- {m}");
    }
    let _ = writeln!(
        s,
        "- cluster settings (on top of scripts/cluster.conf.in): {}; `fsync = on` only for benchmark 3",
        util::describe_conf(false)
    );
    s.push_str("\nSizes of this run:\n\n```\n");
    s.push_str(&opts.sizes.describe());
    s.push_str("\n```\n");
    let mut shown = Vec::new();
    for &b in &opts.only {
        let text = method(b);
        if shown.contains(&text) {
            continue;
        }
        shown.push(text);
        let nums: Vec<u32> = opts.only.iter().copied().filter(|x| method(*x) == text).collect();
        let _ = writeln!(
            s,
            "\n### Benchmark {}\n\n{}\n",
            nums.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" and "),
            text.trim()
        );
        let notes: Vec<&String> = report.notes.iter().filter(|(n, _)| nums.contains(n)).map(|(_, t)| t).collect();
        if !notes.is_empty() {
            s.push_str("\nObserved:\n\n");
            for n in notes {
                let _ = writeln!(s, "- {n}");
            }
        }
    }
    s
}
