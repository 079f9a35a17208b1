//! Benchmark 6: a cached chunk under wrk, against nginx serving the same bytes.
//!
//! An `offset=-1` response is immutable and cacheable (a week of `max-age`):
//! in production a CDN serves most of them. Without one, the sidecar itself
//! serves them, and the fastest thing it could be compared with is a static
//! file server handing out the same bytes from the page cache: nginx with
//! sendfile. Both run on the same cores with the same wrk load, one after the other.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pg_shapes_tests::env::{free_port, is_root, send_signal};
use pg_shapes_tests::Sidecar;

use crate::report::{ms, ratio, thousands, Row, Verdict};
use crate::sizes::Sizes;
use crate::util::{bench_cluster, command_output};
use crate::Ctx;

const TARGET: &str = "≥ 0.5× nginx";
const ELECTRIC: &str = "served from a CDN / HTTP cache";
/// The URL both servers are loaded with (nginx ignores the query).
const PATH: &str = "/v1/shape?table=items&offset=-1";

/// What one wrk run reported.
#[derive(Debug, Clone)]
struct Wrk {
    requests_per_s: f64,
    /// (percentile, milliseconds) from `--latency`.
    latency_ms: Vec<(f64, f64)>,
    /// The "N requests in Xs, Y read" line.
    summary: String,
    /// The "Socket errors: …" line, when there is one.
    socket_errors: Option<String>,
}

impl Wrk {
    fn latency(&self, p: f64) -> f64 {
        self.latency_ms.iter().find(|(q, _)| *q == p).map(|(_, v)| *v).unwrap_or(f64::NAN)
    }

    fn describe(&self) -> String {
        format!(
            "{} req/s (p50 {}, p99 {})",
            thousands(self.requests_per_s),
            ms(self.latency(50.0)),
            ms(self.latency(99.0))
        )
    }
}

#[derive(Debug, Clone)]
struct Measured {
    body_bytes: usize,
    cache_control: String,
    etag: String,
    ours: Wrk,
    nginx: Wrk,
    workers: usize,
}

pub fn run(ctx: &mut Ctx) -> Vec<Row> {
    let sizes = ctx.sizes.clone();
    let name = format!(
        "6. cached chunk ({} rows) under wrk -t{} -c{}",
        thousands(sizes.wrk_rows as f64),
        sizes.wrk_threads,
        sizes.wrk_connections
    );
    let result = tools().and_then(|(wrk, nginx)| crate::catch(|| measure(&sizes, &wrk, &nginx)));
    match result {
        Ok(m) => {
            ctx.report.note(
                6,
                format!(
                    "`GET {PATH}`: 200, {} bytes, cache-control `{}`, etag `{}`; nginx served the same bytes with \
                     {} worker processes, as many as the sidecar's runtime threads (one per core)",
                    thousands(m.body_bytes as f64),
                    m.cache_control,
                    m.etag,
                    m.workers
                ),
            );
            for (who, w) in [("sidecar", &m.ours), ("nginx", &m.nginx)] {
                let lat: Vec<String> = w.latency_ms.iter().map(|(p, v)| format!("p{p} {}", ms(*v))).collect();
                ctx.report.note(
                    6,
                    format!(
                        "{who}: {} req/s; latency {}; {}{}",
                        thousands(w.requests_per_s),
                        lat.join(", "),
                        w.summary,
                        w.socket_errors.as_ref().map(|e| format!("; {e}")).unwrap_or_default()
                    ),
                );
            }
            let r = m.ours.requests_per_s / m.nginx.requests_per_s;
            vec![Row {
                benchmark: name,
                ours: m.ours.describe(),
                limit: format!("nginx, same bytes: {}", m.nginx.describe()),
                ratio: ratio(r),
                target: TARGET.into(),
                verdict: Verdict::from_bool(r >= 0.5),
                electric: ELECTRIC.into(),
            }]
        }
        Err(e) => {
            ctx.report.note(6, format!("chunk serving: failed: {e}"));
            vec![Row::failed(&name, &e, TARGET, ELECTRIC)]
        }
    }
}

/// The wrk and nginx binaries, or a message saying how to install them.
fn tools() -> Result<(PathBuf, PathBuf), String> {
    let find = |name: &str| -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    let wrk = find("wrk");
    let nginx = find("nginx");
    let missing: Vec<&str> =
        [("wrk", wrk.is_none()), ("nginx", nginx.is_none())].iter().filter(|(_, m)| *m).map(|(n, _)| *n).collect();
    match (wrk, nginx) {
        (Some(w), Some(n)) => Ok((w, n)),
        _ => Err(format!("{} not found: install with `scripts/setup.sh bench`", missing.join(" and "))),
    }
}

fn measure(sizes: &Sizes, wrk: &Path, nginx_bin: &Path) -> Measured {
    let label = "#6";
    let cluster = bench_cluster(true, false, &[]);
    let mut client = cluster.client();
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, k int NOT NULL, title text NOT NULL, body text NOT NULL, \
             n int NOT NULL DEFAULT 0, created timestamptz NOT NULL); \
             INSERT INTO items (id, k, title, body, n, created) \
             SELECT i, i % 1000, 'item number ' || i, md5(i::text) || md5((i + 1)::text), i % 7, \
             timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second' FROM generate_series(1, {}) i;",
            sizes.wrk_rows
        ))
        .unwrap_or_else(|e| panic!("creating items: {e}"));
    let sidecar = Sidecar::start(&cluster, &[]);

    // The shape is created by the first request; wait until offset=-1 is a cacheable answer.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (body, cache_control, etag) = loop {
        let resp = sidecar.get(PATH);
        let status = resp.status();
        let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let (cc, etag) = (header("cache-control"), header("etag"));
        let body = resp.bytes().unwrap_or_else(|e| panic!("reading {PATH}: {e}"));
        assert!(status == 200, "GET {PATH} answered {status}: {}", String::from_utf8_lossy(&body));
        if body.len() > 2 && !cc.contains("no-store") {
            break (body, cc, etag);
        }
        assert!(
            Instant::now() < deadline,
            "GET {PATH} still not a cacheable answer after 120 s (cache-control {cc:?})"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let again = sidecar.get(PATH).bytes().unwrap_or_else(|e| panic!("reading {PATH}: {e}"));
    assert!(again == body, "GET {PATH} answered different bytes the second time: the response is not stable");
    crate::progress!("{label}: {PATH}: {} bytes, cache-control {cache_control:?}", body.len());

    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let nginx = Nginx::start(nginx_bin, &body, &cache_control, workers);
    let from_nginx = pg_shapes_tests::http_client()
        .get(format!("{}{PATH}", nginx.base_url))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.bytes())
        .unwrap_or_else(|e| panic!("GET {PATH} from nginx: {e}\n{}", nginx.error_log()));
    assert!(from_nginx == body, "nginx served {} bytes, not the sidecar's {}", from_nginx.len(), body.len());

    let ours = run_wrk(wrk, sizes, &sidecar.url(PATH), "sidecar");
    let limit = run_wrk(wrk, sizes, &format!("{}{PATH}", nginx.base_url), "nginx");
    drop(nginx);
    drop(sidecar);
    drop(client);
    drop(cluster);
    Measured { body_bytes: body.len(), cache_control, etag, ours, nginx: limit, workers }
}

/// `wrk -t -c -d --latency url`, parsed. Panics on non-2xx answers.
fn run_wrk(wrk: &Path, sizes: &Sizes, url: &str, who: &str) -> Wrk {
    crate::progress!(
        "#6: wrk -t{} -c{} -d{}s against the {who}",
        sizes.wrk_threads,
        sizes.wrk_connections,
        sizes.wrk_seconds
    );
    let out = command_output(
        Command::new(wrk)
            .arg(format!("-t{}", sizes.wrk_threads))
            .arg(format!("-c{}", sizes.wrk_connections))
            .arg(format!("-d{}s", sizes.wrk_seconds))
            .arg("--latency")
            .arg(url),
    )
    .unwrap_or_else(|e| panic!("wrk against the {who}: {e}"));
    let w = parse_wrk(&out).unwrap_or_else(|e| panic!("wrk against the {who}: {e}\n{out}"));
    crate::progress!("#6: {who}: {}", w.describe());
    w
}

fn parse_wrk(out: &str) -> Result<Wrk, String> {
    if let Some(l) = out.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        return Err(format!("error answers: {}", l.trim()));
    }
    let requests_per_s = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or("no `Requests/sec:` line")?;
    let mut latency_ms = Vec::new();
    let mut in_dist = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if !in_dist {
            continue;
        }
        let mut parts = t.split_whitespace();
        let (Some(p), Some(v), None) = (parts.next(), parts.next(), parts.next()) else { break };
        let Some(p) = p.strip_suffix('%').and_then(|p| p.parse::<f64>().ok()) else { break };
        latency_ms.push((p, duration_ms(v).ok_or_else(|| format!("cannot read the latency {v:?}"))?));
    }
    if latency_ms.is_empty() {
        return Err("no latency distribution (wrk --latency)".into());
    }
    Ok(Wrk {
        requests_per_s,
        latency_ms,
        summary: out.lines().find(|l| l.contains("requests in")).unwrap_or("").trim().to_string(),
        socket_errors: out.lines().find(|l| l.contains("Socket errors")).map(|l| l.trim().to_string()),
    })
}

/// wrk's durations: `512.00us`, `1.23ms`, `2.00s`, `1.50m`.
fn duration_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * scale)
}

/// nginx serving one file at `/v1/shape` from a temporary directory; stopped
/// (SIGTERM to the master, which stops its workers) and cleaned up on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    base_url: String,
}

impl Nginx {
    fn start(bin: &Path, body: &[u8], cache_control: &str, workers: usize) -> Nginx {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("pg_shapes_bench_nginx.{}.{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let file = dir.join("shape.json");
        std::fs::write(&file, body).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        // Temp-path directives only for the modules this nginx has (each would otherwise
        // default to a directory under /var/lib/nginx).
        let v = Command::new(bin).arg("-V").output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
        let v = v.unwrap_or_default();
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .filter(|m| **m == "client_body" || !v.contains(&format!("--without-http_{m}_module")))
            .map(|m| format!("    {m}_temp_path {};\n", dir.join(format!("{m}_temp")).display()))
            .collect();
        let port = free_port();
        let conf = format!(
            "{user}worker_processes {workers};\n\
             daemon off;\n\
             master_process on;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             \x20   types {{ }}\n\
             \x20   default_type application/json;\n\
             \x20   access_log off;\n\
             \x20   sendfile on;\n\
             \x20   tcp_nopush on;\n\
             \x20   keepalive_timeout 75s;\n\
             \x20   keepalive_requests 100000000;\n\
             \x20   open_file_cache max=16;\n\
             {temp_paths}\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       location = /v1/shape {{\n\
             \x20           alias {file};\n\
             \x20           add_header cache-control \"{cache_control}\";\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n",
            user = if is_root() { "user root;\n" } else { "" },
            dir = dir.display(),
            file = file.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap_or_else(|e| panic!("cannot write {}: {e}", conf_path.display()));
        let log = std::fs::File::create(dir.join("stderr.log")).expect("create nginx's stderr log");
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut nginx = Nginx { child, dir, base_url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited with {status} at start:\n{}", nginx.error_log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port} within 10 s:\n{}", nginx.error_log());
            std::thread::sleep(Duration::from_millis(20));
        }
        crate::progress!("#6: nginx (pid {}) serving {} on port {port}", nginx.child.id(), file.display());
        nginx
    }

    fn error_log(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM: fast shutdown, the master stops its workers (SIGKILL would orphan them).
            send_signal(self.child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                eprintln!("nginx (pid {}) ignored SIGTERM for 10 s; killing it", self.child.id());
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How benchmark 6 measures, for RESULTS.md.
pub const METHOD: &str = "\
A fresh cluster (fsync off) with `items` (the schema of benchmark 4) holding `wrk_rows` rows, and the sidecar
(default settings: one runtime thread per core). `GET /v1/shape?table=items&offset=-1` creates the shape; it is
repeated until the answer is a cacheable 200 (not the `no-store` \"not ready yet\" answer), i.e. chunk 0 of the
snapshot, which Electric's protocol never marks up to date and which carries a week-long `max-age`; a second
request must return the same bytes. Those bytes are written to a file and served by nginx (started by the
benchmark on a free loopback port: `worker_processes` = number of cores like the sidecar's threads,
`access_log off`, `sendfile on`, `open_file_cache`, unlimited keep-alive requests,
`location = /v1/shape { alias <file>; }` plus the same `cache-control`), so that both servers answer the same
URL with the same body; nginx's answer is checked byte for byte. **Ours**: `wrk -t<wrk_threads>
-c<wrk_connections> -d<wrk_seconds>s --latency` against the sidecar; **limit**: the same wrk against nginx,
right after. wrk, the servers and Postgres share the machine's cores alike. Any non-2xx answer fails the run.
Ratio = sidecar requests/s ÷ nginx requests/s, target ≥ 0.5.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 1s test @ http://127.0.0.1:1/v1/shape?table=items&offset=-1
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   184.53us   90.00us   2.00ms   90.00%
    Req/Sec    20.00k     1.00k   22.00k    70.00%
  Latency Distribution
     50%  170.00us
     75%    1.20ms
     90%  250.00us
     99%    1.00s
  20000 requests in 1.00s, 2.00GB read
Requests/sec:  19990.12
Transfer/sec:      2.00GB
";
        let w = parse_wrk(out).unwrap();
        assert_eq!(w.requests_per_s, 19990.12);
        assert_eq!(w.latency_ms.len(), 4);
        assert!((w.latency(50.0) - 0.17).abs() < 1e-9);
        assert!((w.latency(75.0) - 1.2).abs() < 1e-9);
        assert!((w.latency(99.0) - 1000.0).abs() < 1e-9);
        assert!(w.summary.starts_with("20000 requests"));
        let bad = format!("{out}  Non-2xx or 3xx responses: 5\n");
        assert!(parse_wrk(&bad).is_err());
    }
}
