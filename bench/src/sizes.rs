//! Every size the benchmarks use, in one struct, with three presets. A quick
//! run and a full run execute the same code with different numbers; any field
//! can be overridden on the command line with `--set name=value`.

use std::fmt::Write as _;

/// The sizes and durations of one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    // ---- 1 and 2: replication throughput ----
    /// Row changes in the WAL workload of each configuration (half inserts, half updates).
    pub repl_changes: u64,
    /// Row changes per workload transaction.
    pub repl_txn_changes: u64,
    /// Shape counts for benchmark 1 (`k = const`).
    pub repl_shapes: Vec<usize>,
    /// Shape counts for benchmark 2 (`title ILIKE '%<c>%'`).
    pub nonopt_shapes: Vec<usize>,
    /// Longest time the engine's catch-up is followed before the rate is taken from the
    /// part decoded so far (bounds the run when the engine is slow).
    pub repl_max_seconds: f64,

    // ---- 3: commit → live client latency ----
    /// Inserts measured per configuration.
    pub latency_iters: usize,
    /// Shape counts on the table (one of them is the client's).
    pub latency_shapes: Vec<usize>,

    // ---- 4: initial sync ----
    /// Rows of the shape synced from scratch.
    pub sync_rows: u64,

    // ---- 5: fan-out ----
    /// Concurrent live long-polls on one shape.
    pub fanout_clients: usize,

    // ---- 6: cached chunk serving ----
    /// Rows in the shape whose first chunk is served.
    pub wrk_rows: u64,
    /// wrk `-d` in seconds.
    pub wrk_seconds: u64,
    /// wrk `-t`.
    pub wrk_threads: u64,
    /// wrk `-c`.
    pub wrk_connections: u64,

    // ---- 7: write overhead ----
    /// `pgbench -i -s`.
    pub pgbench_scale: u64,
    /// `pgbench -c`.
    pub pgbench_clients: u64,
    /// `pgbench -j`.
    pub pgbench_threads: u64,
    /// `pgbench -T`.
    pub pgbench_seconds: u64,
    /// Shapes on `pgbench_accounts` while the engine runs.
    pub pgbench_shapes: usize,
}

impl Sizes {
    /// The sizes the benchmark issue asks for (a run takes about 10 minutes on 2 cores).
    pub fn full() -> Sizes {
        Sizes {
            repl_changes: 1_000_000,
            repl_txn_changes: 1000,
            repl_shapes: vec![1, 100, 10_000],
            nonopt_shapes: vec![10, 100],
            repl_max_seconds: 60.0,
            latency_iters: 200,
            latency_shapes: vec![1, 10_000],
            sync_rows: 1_000_000,
            fanout_clients: 10_000,
            wrk_rows: 500,
            wrk_seconds: 10,
            wrk_threads: 2,
            wrk_connections: 64,
            pgbench_scale: 10,
            pgbench_clients: 4,
            pgbench_threads: 2,
            pgbench_seconds: 30,
            pgbench_shapes: 1000,
        }
    }

    /// Small sizes for a smoke run of everything (under 3 minutes).
    pub fn quick() -> Sizes {
        Sizes {
            repl_changes: 50_000,
            repl_shapes: vec![1, 100, 1000],
            nonopt_shapes: vec![10, 100],
            repl_max_seconds: 10.0,
            latency_iters: 30,
            latency_shapes: vec![1, 1000],
            sync_rows: 100_000,
            fanout_clients: 1000,
            wrk_seconds: 2,
            pgbench_scale: 1,
            pgbench_seconds: 5,
            pgbench_shapes: 100,
            ..Sizes::full()
        }
    }

    /// Tiny sizes for the test suite: only checks that numbers and a table come out.
    pub fn tiny() -> Sizes {
        Sizes {
            repl_changes: 4000,
            repl_shapes: vec![1, 10],
            nonopt_shapes: vec![10],
            repl_max_seconds: 5.0,
            latency_iters: 5,
            latency_shapes: vec![1],
            sync_rows: 2000,
            fanout_clients: 50,
            wrk_seconds: 1,
            wrk_threads: 1,
            wrk_connections: 4,
            wrk_rows: 50,
            pgbench_scale: 1,
            pgbench_seconds: 2,
            pgbench_shapes: 10,
            ..Sizes::quick()
        }
    }

    /// Applies `name=value` (lists comma-separated).
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (name, value) =
            assignment.split_once('=').ok_or_else(|| format!("--set expects name=value, got {assignment:?}"))?;
        let (name, value) = (name.trim(), value.trim());
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
            v.replace('_', "").parse().map_err(|_| format!("--set {name}: {v:?} is not a number"))
        }
        fn list(name: &str, v: &str) -> Result<Vec<usize>, String> {
            v.split(',').filter(|s| !s.trim().is_empty()).map(|s| num(name, s.trim())).collect()
        }
        match name {
            "repl_changes" => self.repl_changes = num(name, value)?,
            "repl_txn_changes" => self.repl_txn_changes = num(name, value)?,
            "repl_shapes" => self.repl_shapes = list(name, value)?,
            "nonopt_shapes" => self.nonopt_shapes = list(name, value)?,
            "repl_max_seconds" => self.repl_max_seconds = num(name, value)?,
            "latency_iters" => self.latency_iters = num(name, value)?,
            "latency_shapes" => self.latency_shapes = list(name, value)?,
            "sync_rows" => self.sync_rows = num(name, value)?,
            "fanout_clients" => self.fanout_clients = num(name, value)?,
            "wrk_rows" => self.wrk_rows = num(name, value)?,
            "wrk_seconds" => self.wrk_seconds = num(name, value)?,
            "wrk_threads" => self.wrk_threads = num(name, value)?,
            "wrk_connections" => self.wrk_connections = num(name, value)?,
            "pgbench_scale" => self.pgbench_scale = num(name, value)?,
            "pgbench_clients" => self.pgbench_clients = num(name, value)?,
            "pgbench_threads" => self.pgbench_threads = num(name, value)?,
            "pgbench_seconds" => self.pgbench_seconds = num(name, value)?,
            "pgbench_shapes" => self.pgbench_shapes = num(name, value)?,
            _ => return Err(format!("--set: unknown size {name:?} (see bench/README.md)")),
        }
        if self.repl_txn_changes < 2 || !self.repl_txn_changes.is_multiple_of(2) {
            return Err("repl_txn_changes must be even and at least 2 (half inserts, half updates)".into());
        }
        Ok(())
    }

    /// One line per field, for RESULTS.md.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = write!(s, "{self:#?}");
        s
    }
}
