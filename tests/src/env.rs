//! Where things are: the workspace, the build output, the Postgres binaries,
//! and small process helpers shared by the cluster and the sidecar.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent directory").to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The `pg_config` to use: `PG_CONFIG`, else `pg_config` from `pgrx.toml`.
pub fn pg_config() -> String {
    if let Ok(path) = std::env::var("PG_CONFIG") {
        if !path.is_empty() {
            return path;
        }
    }
    let toml_path = workspace_root().join("pgrx.toml");
    let text =
        std::fs::read_to_string(&toml_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", toml_path.display()));
    pgrx_toml_value(&text, "pg_config")
        .unwrap_or_else(|| panic!("{} has no `pg_config = \"...\"` line", toml_path.display()))
}

/// The value of a `key = "value"` line (the same line-based reading the scripts do).
fn pgrx_toml_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let v = v.trim();
        let v = v.strip_prefix('"')?;
        Some(v[..v.find('"')?].to_string())
    })
}

fn pg_config_dir(flag: &str) -> PathBuf {
    let pg_config = pg_config();
    let out = Command::new(&pg_config)
        .arg(flag)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {pg_config} {flag}: {e} (run scripts/setup.sh)"));
    assert!(out.status.success(), "{pg_config} {flag} failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The directory holding initdb, pg_ctl, postgres and psql.
pub fn pg_bindir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| pg_config_dir("--bindir"))
}

/// The directory Postgres loads extension libraries from.
pub fn pg_pkglibdir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| pg_config_dir("--pkglibdir"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The OS user that owns and runs test clusters: `postgres` when we are root.
pub fn pg_run_user() -> Option<&'static str> {
    is_root().then_some("postgres")
}

/// A command for the Postgres binary `program`, run as the cluster user.
pub fn pg_command(program: &str) -> Command {
    let path = pg_bindir().join(program);
    match pg_run_user() {
        Some(user) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--"]).arg(path);
            cmd
        }
        None => Command::new(path),
    }
}

/// Runs `cmd`, panicking with its output when it cannot start or fails.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process can
/// still take it before we bind it, so the callers retry on "address in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// The directory that holds test cluster directories.
pub fn test_tmp_base() -> PathBuf {
    std::env::var_os("PG_SHAPES_TEST_TMPDIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The prefix of every test cluster directory name; the creating process's
/// pid follows it, so that leftovers of dead test runs can be recognised.
pub const TEST_DIR_PREFIX: &str = "pg_shapes_test.";

/// Creates a new, empty directory `<base>/pg_shapes_test.<pid>.<unique>`.
pub fn new_test_dir() -> PathBuf {
    let base = test_tmp_base();
    let pid = std::process::id();
    for attempt in 0..100u32 {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = base.join(format!("{TEST_DIR_PREFIX}{pid}.{nanos:x}{attempt}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
    panic!("cannot find a free directory name under {}", base.display());
}

/// Whether process `pid` exists.
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends `signal` to `pid`; false when there is no such process.
pub fn send_signal(pid: u32, signal: i32) -> bool {
    // SAFETY: plain kill(2) on a pid we started.
    unsafe { libc::kill(pid as i32, signal) == 0 }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgrx_toml_value_reads_quoted_values_and_ignores_other_keys() {
        let text = "# c\n[pgrx]\nversion = \"0.18.0\"\npg_version = \"pg15\"\npg_config = \"/usr/bin/pg_config\" # x\n";
        assert_eq!(pgrx_toml_value(text, "pg_config").as_deref(), Some("/usr/bin/pg_config"));
        assert_eq!(pgrx_toml_value(text, "version").as_deref(), Some("0.18.0"));
        assert_eq!(pgrx_toml_value(text, "missing"), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
