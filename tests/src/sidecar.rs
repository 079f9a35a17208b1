//! The pg_shapes_sidecar binary, started against a [`TestCluster`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime};

use crate::cluster::TestCluster;
use crate::env::{free_port, send_signal, tail, target_dir, workspace_root};

const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const PORT_FREE_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking HTTP client for talking to sidecars: no TLS, a 60 s timeout
/// (long enough for a long-poll, which the protocol ends after about 20 s).
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("build the HTTP client")
}

/// A running `pg_shapes_sidecar` process. Dropping it stops it (SIGTERM,
/// then SIGKILL after 10 s).
pub struct Sidecar {
    child: Child,
    exit: Option<ExitStatus>,
    port: u16,
    base_url: String,
    log_path: PathBuf,
    pid_path: PathBuf,
    http: reqwest::blocking::Client,
}

impl Sidecar {
    /// The binary the harness runs: `PG_SHAPES_SIDECAR_BIN`, else
    /// `<target>/release/pg_shapes_sidecar` (built by `make build` or
    /// `cargo build --release -p pg_shapes_sidecar`).
    pub fn binary() -> PathBuf {
        match std::env::var_os("PG_SHAPES_SIDECAR_BIN") {
            Some(bin) if !bin.is_empty() => PathBuf::from(bin),
            _ => target_dir().join("release").join("pg_shapes_sidecar"),
        }
    }

    /// Starts the sidecar with `DATABASE_URL` = the cluster's connection
    /// string, `PORT` = a free port, `RUST_LOG=info`, then `extra_env` (which
    /// wins, `PORT` included). Its stdout and stderr go to a file in the
    /// cluster's directory. Returns once `GET /v1/health` answers 200; panics
    /// with the sidecar's log after 30 s or when it exits first.
    pub fn start(cluster: &TestCluster, extra_env: &[(&str, &str)]) -> Sidecar {
        let bin = Self::binary();
        assert!(
            bin.exists(),
            "{} does not exist: build it with `cargo build --release -p pg_shapes_sidecar` (or make build)",
            bin.display()
        );
        warn_if_stale(&bin);
        let fixed_port = extra_env
            .iter()
            .find(|(k, _)| *k == "PORT")
            .map(|(_, v)| v.parse::<u16>().unwrap_or_else(|_| panic!("PORT in extra_env is not a port number: {v:?}")));
        let log_path = cluster.new_file_path("sidecar", "log");
        let pid_path = log_path.with_extension("pid");

        let mut attempt = 0;
        loop {
            let port = fixed_port.unwrap_or_else(free_port);
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
            let log_err = log.try_clone().expect("clone log file handle");
            let child = Command::new(&bin)
                .env("DATABASE_URL", cluster.conn_string())
                .env("PORT", port.to_string())
                .env("RUST_LOG", "info")
                .envs(extra_env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            // Lets a later test run kill this process if ours dies without Drop.
            let _ = fs::write(&pid_path, format!("{}\n{}\n", child.id(), bin.display()));
            let mut sidecar = Sidecar {
                child,
                exit: None,
                port,
                base_url: format!("http://127.0.0.1:{port}"),
                log_path: log_path.clone(),
                pid_path: pid_path.clone(),
                http: http_client(),
            };
            match sidecar.wait_healthy(HEALTH_TIMEOUT) {
                Ok(()) => return sidecar,
                Err(e) => {
                    let log = sidecar.log();
                    let port_taken = log.contains("already in use") || log.contains("AddrInUse");
                    if sidecar.exit.is_some() && port_taken && fixed_port.is_none() && attempt < 4 {
                        attempt += 1;
                        continue;
                    }
                    // Dropped before the panic, so that its Drop stays quiet.
                    drop(sidecar);
                    panic!(
                        "pg_shapes_sidecar did not become healthy: {e}\n--- {} ---\n{}",
                        log_path.display(),
                        tail(&log, 80)
                    );
                }
            }
        }
    }

    /// Like [`start`](Self::start), but on `port`: typically the port of a
    /// sidecar that was just stopped or killed, so that clients holding its
    /// URL reconnect to the new one. Waits (up to 10 s) until the port can be
    /// bound, then starts; `PORT` in `extra_env` is ignored.
    pub fn start_on_port(cluster: &TestCluster, port: u16, extra_env: &[(&str, &str)]) -> Sidecar {
        let deadline = Instant::now() + PORT_FREE_TIMEOUT;
        // std binds with SO_REUSEADDR like the sidecar (tokio), so connections
        // of the old process left in TIME_WAIT do not count as "in use".
        while let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            assert!(Instant::now() < deadline, "port {port} still not free after {PORT_FREE_TIMEOUT:?}: {e}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = port.to_string();
        let mut env: Vec<(&str, &str)> = extra_env.iter().copied().filter(|(k, _)| *k != "PORT").collect();
        env.push(("PORT", &port));
        Sidecar::start(cluster, &env)
    }

    /// Polls `GET /v1/health` until it answers 200.
    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let probe = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("build the HTTP client");
        let url = self.url("/v1/health");
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(format!("it exited with {status} before answering 200 on {url}"));
            }
            let last = match probe.get(&url).send() {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(resp) => format!("{url} answered {}", resp.status()),
                Err(e) => format!("{url}: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(format!("no 200 from {url} within {timeout:?}; last: {last}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `base_url() + path_and_query`, e.g. `url("/v1/shape?table=items&offset=-1")`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base_url, path_and_query)
    }

    /// `GET url(path_and_query)` with the harness's client; panics only when
    /// no response arrives (any status is returned).
    pub fn get(&self, path_and_query: &str) -> reqwest::blocking::Response {
        let url = self.url(path_and_query);
        self.http.get(&url).send().unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// The client `get` uses (60 s timeout), for other methods and headers.
    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the sidecar wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait on the sidecar");
        }
        self.exit
    }

    /// SIGTERM, then waits for it to exit (SIGKILL after 10 s). Returns the
    /// exit status; a no-op returning the old status if it already exited.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit_status() {
            return status;
        }
        send_signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("pg_shapes_sidecar (pid {}) ignored SIGTERM for {STOP_GRACE:?}; killing it", self.pid());
        self.kill()
    }

    /// SIGKILL, then waits for it. Returns the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit_status() {
            return status;
        }
        send_signal(self.pid(), libc::SIGKILL);
        let status = self.child.wait().expect("wait for the sidecar");
        self.exit = Some(status);
        status
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_file(&self.pid_path);
        if std::thread::panicking() {
            eprintln!(
                "pg_shapes_sidecar on port {} at the failure:\n--- last 40 lines of {} ---\n{}",
                self.port,
                self.log_path.display(),
                tail(&self.log(), 40)
            );
        }
    }
}

/// Kills sidecars recorded in `dir/sidecar-*.pid` that still run the
/// recorded binary (used on leftovers of dead test processes).
pub(crate) fn kill_leftover_sidecars(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut lines = text.lines();
        let (Some(pid), Some(bin)) = (lines.next().and_then(|p| p.trim().parse::<u32>().ok()), lines.next()) else {
            continue;
        };
        // argv[0] is the binary; argv[1] when it is a script run by an interpreter.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).take(2).any(|arg| arg == bin.as_bytes()) {
            send_signal(pid, libc::SIGKILL);
        }
    }
}

/// Warns (once) when the sidecar binary is older than its sources: the
/// harness runs whatever was last built.
fn warn_if_stale(bin: &Path) {
    static WARN: Once = Once::new();
    WARN.call_once(|| {
        let Ok(built) = fs::metadata(bin).and_then(|m| m.modified()) else {
            return;
        };
        let root = workspace_root();
        let newest = ["sidecar", "shape_log"].iter().filter_map(|d| newest_mtime(&root.join(d))).max();
        if newest.is_some_and(|newest| newest > built) {
            eprintln!(
                "warning: {} is older than the sources in sidecar/ or shape_log/; \
                 run `cargo build --release -p pg_shapes_sidecar` (make test does)",
                bin.display()
            );
        }
    });
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    if path.file_name().is_some_and(|n| n == "target" || n == ".git") {
        return None;
    }
    fs::read_dir(path).ok()?.flatten().filter_map(|e| newest_mtime(&e.path())).max()
}
