//! A throw-away PostgreSQL cluster per test.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::env::{
    free_port, new_test_dir, pg_command, pg_pkglibdir, pg_run_user, process_alive, run_ok, send_signal, tail,
    test_tmp_base, TEST_DIR_PREFIX,
};

/// The settings `scripts/cluster.sh init` appends to postgresql.conf, with
/// `@PORT@` and `@DATA_DIR@` placeholders.
const CLUSTER_CONF_TEMPLATE: &str = include_str!("../../scripts/cluster.conf.in");

/// Test-only settings appended after the shared ones: small and fast. `fsync`
/// off loses nothing a test can see, since even an immediate shutdown or a
/// killed server leaves the OS page cache intact.
pub const HARNESS_CONF: &str = "\
# ---- pg_shapes test harness ----
shared_buffers = 32MB
fsync = off
";

/// The name of the file that marks a directory kept by `KEEP_TEST_CLUSTER=1`,
/// which the clean-up of leftovers from dead test runs then leaves alone.
const KEPT_MARKER: &str = "KEPT";

/// How to start a [`TestCluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    extra_conf: Vec<String>,
    preload: bool,
    create_extension: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { extra_conf: Vec::new(), preload: true, create_extension: true }
    }
}

impl ClusterOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a postgresql.conf line, e.g. `"pg_shapes.storage_dir = '/x'"`.
    /// Later lines win, so this can override the standard settings.
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.extra_conf.push(line.into());
        self
    }

    /// Do not put pg_shapes in `shared_preload_libraries` (e.g. to measure
    /// plain logical decoding).
    pub fn without_preload(mut self) -> Self {
        self.preload = false;
        self
    }

    /// Skip `CREATE EXTENSION pg_shapes` after start-up.
    pub fn without_extension(mut self) -> Self {
        self.create_extension = false;
        self
    }
}

/// How to stop the server: `pg_ctl -m fast` (clean shutdown) or
/// `pg_ctl -m immediate` (no shutdown checkpoint: crash recovery on the next
/// start, as after a crash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A PostgreSQL cluster in its own directory under `/tmp`, on its own
/// loopback port. See the crate documentation.
pub struct TestCluster {
    /// The test directory: holds `data/`, `server.log` and sidecar logs.
    root: PathBuf,
    data: PathBuf,
    port: u16,
    log_counter: AtomicUsize,
}

impl TestCluster {
    /// Creates, configures and starts a new cluster, then (unless told not
    /// to) runs `CREATE EXTENSION pg_shapes`. Panics with the server log on
    /// failure.
    pub fn start(opts: ClusterOptions) -> TestCluster {
        static REAP: Once = Once::new();
        REAP.call_once(reap_leftovers);
        if opts.preload || opts.create_extension {
            check_extension_installed();
        }

        let root = new_test_dir();
        if let Some(user) = pg_run_user() {
            run_ok(Command::new("chown").arg(format!("{user}:{user}")).arg(&root), "chown test directory");
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).expect("chmod test directory");

        let data = root.join("data");
        let mut cluster = TestCluster { root, data, port: free_port(), log_counter: AtomicUsize::new(0) };
        cluster.initdb(&opts);

        let mut attempt = 0;
        loop {
            match cluster.try_start_server() {
                Ok(()) => break,
                // Someone took the port between free_port() and the server's bind.
                Err(e) if attempt < 4 && e.contains("Address already in use") => {
                    attempt += 1;
                    cluster.port = free_port();
                }
                Err(e) => panic!("could not start the test cluster in {}:\n{e}", cluster.root.display()),
            }
        }

        if opts.create_extension {
            cluster
                .client()
                .batch_execute("CREATE EXTENSION pg_shapes")
                .unwrap_or_else(|e| panic!("CREATE EXTENSION pg_shapes failed: {e}\n{}", cluster.log_tail(30)));
        }
        cluster
    }

    /// `TestCluster::start(ClusterOptions::default())`.
    pub fn start_default() -> TestCluster {
        Self::start(ClusterOptions::default())
    }

    fn initdb(&self, opts: &ClusterOptions) {
        let pwfile = self.root.join("pwfile");
        fs::write(&pwfile, "password\n").expect("write password file");
        if let Some(user) = pg_run_user() {
            run_ok(Command::new("chown").arg(user).arg(&pwfile), "chown password file");
        }
        run_ok(
            pg_command("initdb")
                .arg("-D")
                .arg(&self.data)
                .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["--encoding=UTF8", "--locale=C", "--no-sync"]),
            "initdb",
        );
        let _ = fs::remove_file(&pwfile);

        let data_dir = self.data.to_str().expect("test directory path is UTF-8");
        let mut conf = String::from("\n");
        conf.push_str(&CLUSTER_CONF_TEMPLATE.replace("@PORT@", &self.port.to_string()).replace("@DATA_DIR@", data_dir));
        conf.push_str(HARNESS_CONF);
        if !opts.preload {
            conf.push_str("shared_preload_libraries = ''\n");
        }
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("append to postgresql.conf");
    }

    /// `pg_ctl start -w`; on failure the pg_ctl output and the new part of the log.
    fn try_start_server(&self) -> Result<(), String> {
        let log_len_before = fs::metadata(self.log_path()).map(|m| m.len() as usize).unwrap_or(0);
        let out = pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start")
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let log = self.server_log();
        let new_log = log.get(log_len_before..).unwrap_or(&log);
        Err(format!(
            "pg_ctl start failed ({}): {}{}\n--- server log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(new_log, 30)
        ))
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port.
    pub fn start_server(&self) {
        if let Err(e) = self.try_start_server() {
            panic!("could not restart the test cluster in {}:\n{e}", self.root.display());
        }
    }

    /// Stops the server (`pg_ctl stop -m <mode> -w`).
    pub fn stop(&self, mode: StopMode) {
        run_ok(
            pg_command("pg_ctl").arg("-D").arg(&self.data).args(["-m", mode.as_str(), "-w", "-t", "60", "stop"]),
            "pg_ctl stop",
        );
    }

    /// Stops the server with `mode` and starts it again on the same port.
    /// With [`StopMode::Immediate`] the start runs crash recovery.
    pub fn restart(&self, mode: StopMode) {
        self.stop(mode);
        self.start_server();
    }

    /// Whether the server is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("status")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// The postmaster's pid while the server runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        fs::read_to_string(self.data.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
    }

    /// `postgres://postgres:password@127.0.0.1:<port>/postgres` (TCP, password auth).
    pub fn conn_string(&self) -> String {
        format!("postgres://postgres:password@127.0.0.1:{}/postgres", self.port)
    }

    /// A new connection as the superuser `postgres` over TCP.
    pub fn client(&self) -> postgres::Client {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password("password")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10))
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}\n{}", self.conn_string(), self.log_tail(20)))
    }

    /// Runs `sql` with psql over the Unix socket (`-X -A -t -q`, stop on the
    /// first error) and returns its output without the final newline. Panics
    /// when psql fails.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("psql failed for {sql:?}:\n{e}"))
    }

    /// Like [`psql`](Self::psql), but returns psql's stderr on failure.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        // Run as the current user: root may use the socket in the postgres-owned
        // data directory, and local connections are trusted.
        let out = Command::new(crate::env::pg_bindir().join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.ends_with('\n') {
                text.pop();
            }
            Ok(text)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Everything the server has logged so far (across restarts).
    pub fn server_log(&self) -> String {
        fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        format!("--- last {lines} lines of {} ---\n{}", self.log_path().display(), tail(&self.server_log(), lines))
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// The Postgres data directory (also the Unix socket directory).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The test directory holding the data directory and the logs.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new file path `<dir>/<name>-<n>.<ext>` in the test directory.
    pub(crate) fn new_file_path(&self, name: &str, ext: &str) -> PathBuf {
        let n = self.log_counter.fetch_add(1, Ordering::Relaxed);
        self.root.join(format!("{name}-{n}.{ext}"))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        stop_immediately(&self.data);
        if std::thread::panicking() {
            eprintln!(
                "test cluster {} (port {}) at the failure:\n{}",
                self.root.display(),
                self.port,
                self.log_tail(40)
            );
        }
        if keep_clusters() {
            let _ = fs::write(self.root.join(KEPT_MARKER), "");
            eprintln!(
                "KEEP_TEST_CLUSTER=1: kept test cluster {} (data {}, port {}, server log {})",
                self.root.display(),
                self.data.display(),
                self.port,
                self.log_path().display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

fn keep_clusters() -> bool {
    std::env::var("KEEP_TEST_CLUSTER").is_ok_and(|v| v == "1")
}

/// Stops whatever server runs in `data`: `pg_ctl -m immediate`, then SIGKILL
/// to the postmaster if it is still there.
fn stop_immediately(data: &Path) {
    let pid_file = data.join("postmaster.pid");
    if !pid_file.exists() {
        return;
    }
    let _ = pg_command("pg_ctl").arg("-D").arg(data).args(["-m", "immediate", "-w", "-t", "30", "stop"]).output();
    let pid = fs::read_to_string(&pid_file).ok().and_then(|t| t.lines().next()?.trim().parse::<u32>().ok());
    if let Some(pid) = pid {
        if send_signal(pid, libc::SIGKILL) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while process_alive(pid as i32) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Panics with the fix when the extension library is not installed.
fn check_extension_installed() {
    let so = pg_pkglibdir().join("pg_shapes.so");
    assert!(
        so.exists(),
        "{} does not exist: install the extension first with scripts/install_extension.sh (or make build)",
        so.display()
    );
}

/// Removes the test directories of test processes that are gone (killed
/// before their clusters' Drop ran), stopping their servers and sidecars.
/// Directories kept with KEEP_TEST_CLUSTER=1 are left alone.
fn reap_leftovers() {
    let Ok(entries) = fs::read_dir(test_tmp_base()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEST_DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let dir = entry.path();
        if pid as u32 == std::process::id() || process_alive(pid) || dir.join(KEPT_MARKER).exists() {
            continue;
        }
        crate::sidecar::kill_leftover_sidecars(&dir);
        stop_immediately(&dir.join("data"));
        let _ = fs::remove_dir_all(&dir);
    }
}
