//! Shared helpers: progress output, statistics, process accounting, the
//! benchmark cluster settings, shape creation, and optional `perf` profiles.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pg_shapes_tests::postgres::Client;
use pg_shapes_tests::shapes::{storage_dir, wait_live};
use pg_shapes_tests::{ClusterOptions, TestCluster};

static START: OnceLock<Instant> = OnceLock::new();

/// When the run started (the first call fixes it).
pub fn run_start() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Prints a progress line to stderr, prefixed with the time since the run started.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {{
        let t = $crate::util::run_start().elapsed().as_secs_f64();
        eprintln!("[{:>7.1}s] {}", t, format!($($arg)*));
    }};
}

/// The `p`-th percentile (0..=100) of sorted values, nearest-rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts a copy of `v` (NaN-free input expected).
pub fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    s
}

/// Median of the values.
pub fn median(v: &[f64]) -> f64 {
    percentile(&sorted(v), 50.0)
}

// ---------------------------------------------------------------------------
// Processes

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

/// Total CPU time of all processes whose command line contains `needle` (e.g. a data directory).
pub fn cpu_seconds_matching(needle: &str) -> f64 {
    let mut total = 0.0;
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(needle) {
                total += cpu_seconds(pid).unwrap_or(0.0);
            }
        }
    }
    total
}

/// (VmRSS, VmHWM) of a process in kB.
pub fn rss_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Number of open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Raises this process's open-file soft limit to the hard limit (children inherit it).
/// Returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// Output of a command, or a one-line reason it could not run.
pub fn command_output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------
// Machine

/// A few lines about the machine and the software, for RESULTS.md.
pub fn machine_info() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    let date = command_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let kernel = command_output(Command::new("uname").arg("-r")).map(|s| s.trim().to_string()).unwrap_or_default();
    let root = pg_shapes_tests::env::workspace_root();
    let git = command_output(Command::new("git").arg("-C").arg(&root).args(["rev-parse", "--short", "HEAD"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let dirty = command_output(Command::new("git").arg("-C").arg(&root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .map(|s| !s.trim().is_empty())
    .unwrap_or(false);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    vec![
        format!("date: {date}"),
        format!("nproc: {nproc}; CPU: {model}; memory: {:.1} GiB; kernel {kernel}", mem_kb as f64 / 1048576.0),
        format!("load average at the start: {}", loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        format!("commit: {git}{}", if dirty { " (with uncommitted changes)" } else { "" }),
    ]
}

// ---------------------------------------------------------------------------
// Clusters and shapes

/// postgresql.conf lines every benchmark cluster gets on top of the test
/// harness's (`scripts/cluster.conf.in` + `shared_buffers = 32MB`, `fsync = off`).
pub const BENCH_CONF: &[&str] = &[
    "shared_buffers = 256MB",
    // No checkpoint in the middle of a measurement.
    "max_wal_size = 8GB",
    "min_wal_size = 1GB",
    "checkpoint_timeout = 30min",
    "synchronous_commit = on",
    "log_timezone = 'UTC'",
    "max_connections = 100",
];

/// A benchmark cluster. `fsync` on makes commits wait for the disk (the latency
/// benchmark); off keeps throughput benchmarks CPU-bound, on both sides alike.
pub fn bench_cluster(engine: bool, fsync: bool, extra: &[&str]) -> TestCluster {
    let mut opts = ClusterOptions::new();
    for line in BENCH_CONF {
        opts = opts.conf(*line);
    }
    opts = opts.conf(format!("fsync = {}", if fsync { "on" } else { "off" }));
    for line in extra {
        opts = opts.conf(*line);
    }
    if !engine {
        opts = opts.without_preload().without_extension();
    }
    TestCluster::start(opts)
}

/// The settings a benchmark cluster runs with, as text for RESULTS.md.
pub fn describe_conf(fsync: bool) -> String {
    let mut lines: Vec<String> = BENCH_CONF.iter().map(|s| s.to_string()).collect();
    lines.push(format!("fsync = {}", if fsync { "on" } else { "off" }));
    lines.join(", ")
}

/// Current WAL flush position as a number.
pub fn flush_lsn(client: &mut Client) -> u64 {
    let v: i64 = client.query_one("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint", &[]).unwrap().get(0);
    v as u64
}

/// Creates one shape per WHERE clause on `table` through the SQL API, in order,
/// printing progress; returns the handles.
pub fn create_shapes(client: &mut Client, table: &str, wheres: &[String], label: &str) -> Vec<String> {
    let t = Instant::now();
    let mut handles = Vec::with_capacity(wheres.len());
    let step = (wheres.len() / 10).max(1000);
    for (i, w) in wheres.iter().enumerate() {
        let row = client
            .query_one("SELECT handle FROM shapes.get_or_create_shape($1, $2)", &[&table, w])
            .unwrap_or_else(|e| panic!("creating shape {table} WHERE {w}: {e}"));
        handles.push(row.get::<_, String>(0));
        if (i + 1) % step == 0 && i + 1 < wheres.len() {
            crate::progress!(
                "{label}: created {}/{} shapes ({:.0}/s)",
                i + 1,
                wheres.len(),
                (i + 1) as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    crate::progress!("{label}: created {} shapes in {:.1}s", wheres.len(), t.elapsed().as_secs_f64());
    handles
}

/// Waits until every shape's log is live (snapshot written, worker routing to it).
pub fn wait_all_live(cluster: &TestCluster, handles: &[String], timeout: Duration, label: &str) {
    let t = Instant::now();
    let storage = storage_dir(cluster);
    let deadline = Instant::now() + timeout;
    for (i, h) in handles.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        wait_live(&storage, h, left);
        if handles.len() >= 1000 && (i + 1) % (handles.len() / 4) == 0 && i + 1 < handles.len() {
            crate::progress!("{label}: {}/{} shapes live", i + 1, handles.len());
        }
    }
    crate::progress!("{label}: all {} shapes live after {:.1}s more", handles.len(), t.elapsed().as_secs_f64());
}

/// Where the shape logs of a cluster are.
pub fn shape_storage(cluster: &TestCluster) -> PathBuf {
    storage_dir(cluster)
}

// ---------------------------------------------------------------------------
// perf

/// `perf record -g` on one process for the length of a phase, when `--perf DIR` was given.
pub struct Perf {
    child: Child,
    data: PathBuf,
    report: PathBuf,
}

impl Perf {
    /// Starts recording `pid` into `<dir>/<name>.perf.data`; None without a directory or perf.
    pub fn start(dir: Option<&Path>, name: &str, pid: u32) -> Option<Perf> {
        let dir = dir?;
        std::fs::create_dir_all(dir).ok()?;
        let data = dir.join(format!("{name}.perf.data"));
        let report = dir.join(format!("{name}.perf.txt"));
        let child = Command::new("perf")
            .args(["record", "-F", "499", "-g", "-o"])
            .arg(&data)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        std::thread::sleep(Duration::from_millis(200));
        Some(Perf { child, data, report })
    }

    /// Stops recording (SIGINT) and writes a flat `perf report` next to the data.
    pub fn finish(mut self) {
        // SAFETY: signalling the perf process we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = Command::new("perf")
            .args(["report", "--stdio", "--no-children", "--percent-limit", "0.5", "-g", "none", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out {
            let _ = std::fs::write(&self.report, &out.stdout);
            crate::progress!("perf profile written to {}", self.report.display());
        }
    }
}
