//! Conformance with the published Electric clients, run under Node: every
//! test here starts a cluster and a sidecar and runs one file of
//! `tests/node/*.test.mjs` (`node --test`) against them, passing
//! `SIDECAR_URL` and `DATABASE_URL`. The clients are `@electric-sql/client`
//! (ShapeStream, Shape) and `@electric-sql/pglite` + `@electric-sql/pglite-sync`
//! at the exact versions of `tests/node/package.json`, installed by
//! `scripts/setup.sh node` (`npm ci`); nothing is fetched while testing.
//!
//! The sidecar-restart tests drive the sidecar from here while Node's clients
//! stay live: Node writes `ready` into a control directory once its clients
//! are synced; this side stops or kills the sidecar, writes rows, starts a new
//! sidecar on the same port, writes more rows and answers `go`; Node then
//! checks that every client caught up with nothing lost or repeated.
//!
//! Node's output (spec reporter) is printed when a test fails; run with
//! `--nocapture` to see it always.

use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pg_shapes_tests::env::{tail, workspace_root};
use pg_shapes_tests::serde_json::Value;
use pg_shapes_tests::{Sidecar, TestCluster};

/// The longest a Node test file may run before it is killed.
const NODE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long Node gets to sync its clients before the restart.
const READY_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the sidecar stays down in the restart tests.
const DOWNTIME: Duration = Duration::from_millis(1500);
/// `--test-force-exit` (the client leaves a 60 s timer behind) needs 20.14.
const MIN_NODE: (u32, u32) = (20, 14);

/// Every test file in tests/node and the test here that runs it.
const NODE_FILES: &[&str] = &[
    "shape_stream.test.mjs",
    "changes_only.test.mjs",
    "sse.test.mjs",
    "truncate.test.mjs",
    "pglite_sync.test.mjs",
    "sidecar_restart.test.mjs",
];

fn node_dir() -> PathBuf {
    workspace_root().join("tests").join("node")
}

/// Panics with the fix when node is missing or too old, or when
/// tests/node/node_modules does not hold the pinned dependencies.
fn check_node_setup() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = CHECKED.get_or_init(node_setup_problem) {
        panic!("{e}");
    }
}

fn node_setup_problem() -> Result<(), String> {
    let fix = "run `scripts/setup.sh node` (npm ci in tests/node; `make test` does it)";
    let out = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run node ({e}): install Node.js {}.{} or later, then {fix}", MIN_NODE.0, MIN_NODE.1))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut parts = version.trim_start_matches('v').split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < MIN_NODE {
        return Err(format!("node {version} is too old: the Node tests need {}.{} or later", MIN_NODE.0, MIN_NODE.1));
    }

    let dir = node_dir();
    let manifest = fs::read_to_string(dir.join("package.json")).map_err(|e| format!("tests/node/package.json: {e}"))?;
    let manifest: Value = pg_shapes_tests::serde_json::from_str(&manifest).map_err(|e| format!("package.json: {e}"))?;
    let deps = manifest["dependencies"].as_object().ok_or("tests/node/package.json has no dependencies")?;
    for (name, want) in deps {
        let path = dir.join("node_modules").join(name).join("package.json");
        let have = fs::read_to_string(&path)
            .ok()
            .and_then(|t| pg_shapes_tests::serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string));
        match have {
            Some(have) if Some(have.as_str()) == want.as_str() => {}
            Some(have) => {
                return Err(format!("tests/node/node_modules has {name} {have}, package.json pins {want}: {fix}"))
            }
            None => return Err(format!("tests/node/node_modules has no {name} (Node test dependencies missing): {fix}")),
        }
    }
    Ok(())
}

/// A `node --test <file>` process, its output going to a file.
struct NodeRun {
    child: Child,
    exit: Option<ExitStatus>,
    file: String,
    log_path: PathBuf,
    started: Instant,
}

impl NodeRun {
    /// Starts `node --test <file>` in tests/node against the cluster and the
    /// sidecar at `sidecar_url`, with `extra_env`.
    fn spawn(file: &str, cluster: &TestCluster, sidecar_url: &str, extra_env: &[(&str, &str)]) -> NodeRun {
        let log_path = cluster.dir().join(format!("node-{file}.log"));
        let log = fs::File::create(&log_path).unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("clone log file handle");
        let child = Command::new("node")
            .args(["--test", "--test-force-exit", "--test-reporter=spec", file])
            .current_dir(node_dir())
            .env("SIDECAR_URL", sidecar_url)
            .env("DATABASE_URL", cluster.conn_string())
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a timeout kills the test runner's children too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node --test {file}: {e}"));
        NodeRun { child, exit: None, file: file.to_string(), log_path, started: Instant::now() }
    }

    fn output(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait on node");
        }
        self.exit
    }

    /// Kills the process group (node and the test runner's children).
    fn kill(&mut self) {
        if self.try_exit().is_none() {
            // SAFETY: kill(2) on the process group of a child we started.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// Waits until `path` exists; panics with Node's output if Node exits or
    /// `timeout` passes first.
    fn wait_for_file(&mut self, path: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            if let Some(status) = self.try_exit() {
                panic!(
                    "node --test {} exited ({status}) before writing {}:\n{}",
                    self.file,
                    path.display(),
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "node --test {} did not write {} within {timeout:?}:\n{}",
                    self.file,
                    path.display(),
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits for Node to exit (killing it after the time left of
    /// NODE_TIMEOUT) and asserts that every test passed.
    fn assert_passes(mut self) {
        let deadline = self.started + NODE_TIMEOUT;
        let status = loop {
            if let Some(status) = self.try_exit() {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!("node --test {} still running after {NODE_TIMEOUT:?}; killed it:\n{}", self.file, self.output());
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        let output = self.output();
        assert!(status.success(), "node --test {} failed ({status}):\n{output}", self.file);
        println!(
            "node --test {} passed in {:.1} s:\n{}",
            self.file,
            self.started.elapsed().as_secs_f64(),
            tail(&output, 60)
        );
    }
}

impl Drop for NodeRun {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs one Node test file against a fresh cluster and sidecar.
fn run_node_file(file: &str, sidecar_env: &[(&str, &str)], node_env: &[(&str, &str)]) {
    check_node_setup();
    let cluster = TestCluster::start_default();
    let sidecar = Sidecar::start(&cluster, sidecar_env);
    NodeRun::spawn(file, &cluster, sidecar.base_url(), node_env).assert_passes();
    drop(sidecar);
}

#[test]
fn shape_stream_and_shape_sync_initial_rows_live_changes_where_params_columns_replica_full_and_offset_now() {
    run_node_file("shape_stream.test.mjs", &[], &[]);
}

#[test]
fn changes_only_streams_load_subsets_with_request_snapshot_over_get_and_post() {
    run_node_file("changes_only.test.mjs", &[], &[]);
}

#[test]
fn live_sse_delivers_every_change_exactly_once_across_server_ended_event_streams() {
    // A short SSE timeout, so that the client reconnects several times.
    run_node_file("sse.test.mjs", &[("SSE_TIMEOUT", "3000")], &[("SSE_TIMEOUT_MS", "3000")]);
}

#[test]
fn truncate_sends_clients_a_must_refetch_and_they_resync_to_the_table() {
    run_node_file("truncate.test.mjs", &[], &[]);
}

#[test]
fn pglite_sync_keeps_a_local_table_equal_to_the_shape_through_moves_key_changes_and_deletes() {
    run_node_file("pglite_sync.test.mjs", &[], &[]);
}

/// How the restart tests take the sidecar down.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

/// The sidecar-restart scenario, driven from here (see the module docs).
fn clients_resume_after_sidecar_restart(how: Stop) {
    check_node_setup();
    let cluster = TestCluster::start_default();
    let control = cluster.dir().join("node-control");
    fs::create_dir(&control).expect("create the control directory");
    let control_env = control.to_str().expect("control path is UTF-8").to_string();
    let mut old = Sidecar::start(&cluster, &[]);
    let port = old.port();
    let mut node =
        NodeRun::spawn("sidecar_restart.test.mjs", &cluster, old.base_url(), &[("CONTROL_DIR", control_env.as_str())]);
    node.wait_for_file(&control.join("ready"), READY_TIMEOUT);

    let t = Instant::now();
    match how {
        Stop::Term => {
            let status = old.stop();
            assert!(status.success(), "the sidecar exited with {status} on SIGTERM");
        }
        Stop::Kill => {
            old.kill();
        }
    }
    let stop_time = t.elapsed();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still accepts connections");

    // Writes while the sidecar is down: each psql call is one transaction.
    let table = "restart_items";
    cluster.psql(&format!("INSERT INTO {table} SELECT i, 'while down ' || i, i FROM generate_series(101, 110) i"));
    cluster.psql(&format!("UPDATE {table} SET title = 'updated while down', n = n + 100 WHERE id BETWEEN 4 AND 8"));
    cluster.psql(&format!("DELETE FROM {table} WHERE id IN (9, 10, 101)"));
    cluster.psql(&format!(
        "BEGIN; UPDATE {table} SET id = 1000 WHERE id = 11; INSERT INTO {table} VALUES (111, 'down tx', 111); \
         UPDATE {table} SET n = n + 1 WHERE id = 12; DELETE FROM {table} WHERE id = 13; COMMIT"
    ));
    std::thread::sleep(DOWNTIME.saturating_sub(t.elapsed()));

    let new = Sidecar::start_on_port(&cluster, port, &[]);
    // And after it is back, before the clients are told to check.
    cluster.psql(&format!("INSERT INTO {table} VALUES (200, 'after restart', 200)"));
    cluster.psql(&format!("UPDATE {table} SET title = 'after restart' WHERE id IN (1, 102)"));
    cluster.psql(&format!("DELETE FROM {table} WHERE id = 14"));
    fs::write(control.join("go"), "").expect("write the go marker");
    println!("sidecar {how:?}: stopped in {:.2} s, down for {:.2} s", stop_time.as_secs_f64(), t.elapsed().as_secs_f64());
    node.assert_passes();
    drop(new);
}

#[test]
fn clients_resume_from_their_offsets_after_a_sigterm_sidecar_restart_on_the_same_port() {
    clients_resume_after_sidecar_restart(Stop::Term);
}

#[test]
fn clients_resume_from_their_offsets_after_a_sigkill_sidecar_restart_on_the_same_port() {
    clients_resume_after_sidecar_restart(Stop::Kill);
}

/// Every `*.test.mjs` in tests/node is run by a test above.
#[test]
fn every_node_test_file_is_run_by_a_rust_test() {
    let mut files: Vec<String> = fs::read_dir(node_dir())
        .expect("read tests/node")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.mjs"))
        .collect();
    files.sort();
    let mut known: Vec<String> = NODE_FILES.iter().map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(files, known, "tests/node/*.test.mjs and NODE_FILES in {} differ", file!());
}
