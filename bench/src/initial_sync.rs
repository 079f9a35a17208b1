//! Benchmark 4: initial sync of a big shape, against `COPY` of the same rows as JSON.
//!
//! A client that syncs a shape from scratch gets the table's rows as JSON over
//! HTTP. The least Postgres itself can do for that is `COPY (SELECT
//! row_to_json(t) FROM items t) TO STDOUT`: one scan, one JSON serialisation,
//! one stream. The first client of a new shape pays for the extension's
//! snapshot too (the shape is created by its request); a second client only
//! reads the chunks that are already in the log, which is what the sidecar's
//! zero-copy serving is for.

use std::io::Read;
use std::time::{Duration, Instant};

use pg_shapes_tests::reqwest::blocking::Client as Http;
use pg_shapes_tests::Sidecar;

use crate::report::{ms, ratio, thousands, Row, Verdict};
use crate::util::bench_cluster;
use crate::Ctx;

const TARGET_FIRST: &str = "≤ 2× COPY";
const TARGET_SECOND: &str = "≥ 500 MB/s";
const ELECTRIC_FIRST: &str = "\"1M-row shapes sync in linear time\" (no absolute figure)";
const ELECTRIC_SECOND: &str = "—";

/// The start of every snapshot row message in a response body. A `{"` cannot
/// occur unescaped inside a JSON string value, so every occurrence is a row.
const INSERT_MESSAGE: &[u8] = br#"{"headers":{"operation":"insert""#;

/// A sync that takes longer than this is reported as a failure, not waited for.
const SYNC_TIMEOUT: Duration = Duration::from_secs(1800);

/// One client's sync of a shape from `offset=-1` to the first up-to-date.
#[derive(Debug, Clone)]
struct Sync {
    seconds: f64,
    /// Response body bytes.
    bytes: u64,
    /// Snapshot rows received.
    rows: u64,
    /// Requests made (including answers that said "not ready yet").
    requests: u64,
    /// Responses that carried rows.
    chunks: u64,
    /// Seconds until the first response with rows had arrived.
    first_chunk_seconds: f64,
}

impl Sync {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
}

/// `COPY … TO STDOUT` read to the end.
#[derive(Debug, Clone)]
struct Copy {
    seconds: f64,
    bytes: u64,
}

impl Copy {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
}

#[derive(Debug, Clone)]
struct Measured {
    rows: u64,
    table_mb: f64,
    load_seconds: f64,
    copy: Copy,
    /// The same COPY written to `/dev/null` by the server: Postgres's share of the limit.
    server_copy_seconds: f64,
    first: Sync,
    second: Sync,
    /// The first-client sync of a table a tenth the size, for linearity.
    small: Option<(u64, Sync)>,
}

pub fn run(ctx: &mut Ctx) -> Vec<Row> {
    let rows = ctx.sizes.sync_rows;
    let first_name = format!("4. initial sync, {} rows, first client", thousands(rows as f64));
    let second_name = "4. initial sync, second client".to_string();
    match crate::catch(|| measure(rows)) {
        Ok(m) => {
            let report = &mut ctx.report;
            report.note(
                4,
                format!(
                    "table `items`: {} rows, {:.0} MB on disk, loaded in {:.1} s; COPY … row_to_json: {} bytes in \
                     {:.2} s read by the client, {:.2} s when the server writes it to /dev/null",
                    thousands(m.rows as f64),
                    m.table_mb,
                    m.load_seconds,
                    thousands(m.copy.bytes as f64),
                    m.copy.seconds,
                    m.server_copy_seconds
                ),
            );
            for (who, s) in [("first client", &m.first), ("second client", &m.second)] {
                report.note(4, describe_sync(who, s));
            }
            if let Some((small_rows, s)) = &m.small {
                let per_row_big = m.first.seconds / m.rows as f64;
                let per_row_small = s.seconds / *small_rows as f64;
                report.note(
                    4,
                    format!(
                        "linearity: the first client of a {}-row table took {:.2} s ({:.2} µs/row) against {:.2} s \
                         ({:.2} µs/row) at {} rows",
                        thousands(*small_rows as f64),
                        s.seconds,
                        per_row_small * 1e6,
                        m.first.seconds,
                        per_row_big * 1e6,
                        thousands(m.rows as f64)
                    ),
                );
            }
            let first_ratio = m.first.seconds / m.copy.seconds;
            vec![
                Row {
                    benchmark: first_name,
                    ours: format!("{} ({:.0} MB/s)", secs(m.first.seconds), m.first.mb_per_s()),
                    limit: format!("COPY … row_to_json: {} ({:.0} MB/s)", secs(m.copy.seconds), m.copy.mb_per_s()),
                    ratio: ratio(first_ratio),
                    target: TARGET_FIRST.into(),
                    verdict: Verdict::from_bool(first_ratio <= 2.0),
                    electric: ELECTRIC_FIRST.into(),
                },
                Row {
                    benchmark: second_name,
                    ours: format!("{:.0} MB/s ({})", m.second.mb_per_s(), secs(m.second.seconds)),
                    limit: format!("COPY … row_to_json: {:.0} MB/s (for reference)", m.copy.mb_per_s()),
                    ratio: ratio(m.second.mb_per_s() / m.copy.mb_per_s()),
                    target: TARGET_SECOND.into(),
                    verdict: Verdict::from_bool(m.second.mb_per_s() >= 500.0),
                    electric: ELECTRIC_SECOND.into(),
                },
            ]
        }
        Err(e) => {
            ctx.report.note(4, format!("initial sync: failed: {e}"));
            vec![
                Row::failed(&first_name, &e, TARGET_FIRST, ELECTRIC_FIRST),
                Row::failed(&second_name, &e, TARGET_SECOND, ELECTRIC_SECOND),
            ]
        }
    }
}

/// Seconds, as milliseconds below one second.
fn secs(s: f64) -> String {
    if s < 1.0 {
        ms(s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn describe_sync(who: &str, s: &Sync) -> String {
    format!(
        "{who}: {} rows, {} bytes in {} responses ({} of them with rows) in {:.2} s = {:.0} MB/s; \
         the first rows arrived after {:.2} s",
        thousands(s.rows as f64),
        thousands(s.bytes as f64),
        s.requests,
        s.chunks,
        s.seconds,
        s.mb_per_s(),
        s.first_chunk_seconds
    )
}

/// Creates `table` with `rows` rows of about 150 bytes each, vacuumed and analysed.
fn create_table(client: &mut pg_shapes_tests::postgres::Client, table: &str, rows: u64) {
    let fail = |e: pg_shapes_tests::postgres::Error| -> ! {
        let why = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
        panic!("creating and filling {table} with {rows} rows: {why}")
    };
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL, title text NOT NULL, body text NOT NULL, \
             n int NOT NULL DEFAULT 0, created timestamptz NOT NULL); \
             INSERT INTO {table} (id, k, title, body, n, created) \
             SELECT i, i % 1000, 'item number ' || i, md5(i::text) || md5((i + 1)::text), i % 7, \
             timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second' FROM generate_series(1, {rows}) i;"
        ))
        .unwrap_or_else(|e| fail(e));
    // Its own statement: VACUUM cannot run in the implicit transaction of a multi-statement string.
    client.batch_execute(&format!("VACUUM (ANALYZE) {table}")).unwrap_or_else(|e| fail(e));
}

fn measure(rows: u64) -> Measured {
    let label = "#4";
    let cluster = bench_cluster(true, false, &[]);
    let mut client = cluster.client();

    crate::progress!("{label}: loading {} rows into items", thousands(rows as f64));
    let t = Instant::now();
    create_table(&mut client, "items", rows);
    let small_rows = rows / 10;
    if small_rows > 0 {
        create_table(&mut client, "items_small", small_rows);
    }
    let load_seconds = t.elapsed().as_secs_f64();
    let table_bytes: i64 = client.query_one("SELECT pg_table_size('items')", &[]).unwrap().get(0);
    // The engine decodes the load's WAL (no shape wants it); let it finish so it does not compete.
    pg_shapes_tests::shapes::wait_caught_up(&mut client, Duration::from_secs(600));
    client.batch_execute("CHECKPOINT").unwrap();
    crate::progress!("{label}: loaded in {load_seconds:.1}s ({:.0} MB)", table_bytes as f64 / 1e6);

    // The limit. A first pass brings the table into shared buffers, as the snapshot will find it.
    let _ = copy_json(&mut client, "items");
    let copy = copy_json(&mut client, "items");
    // Postgres's own part of that: the same COPY written by the server to /dev/null.
    let t = Instant::now();
    client
        .batch_execute("COPY (SELECT row_to_json(t) FROM items t) TO '/dev/null'")
        .unwrap_or_else(|e| panic!("COPY … TO '/dev/null': {e}"));
    let server_copy_seconds = t.elapsed().as_secs_f64();
    crate::progress!("{label}: COPY … TO '/dev/null' (server side only): {server_copy_seconds:.2}s");
    crate::progress!(
        "{label}: COPY … row_to_json: {} bytes in {:.2}s ({:.0} MB/s)",
        thousands(copy.bytes as f64),
        copy.seconds,
        copy.mb_per_s()
    );

    let sidecar = Sidecar::start(&cluster, &[]);
    let http = sidecar.http();
    let first = sync(http, &sidecar, "items", rows, &format!("{label} first client"));
    let second = sync(http, &sidecar, "items", rows, &format!("{label} second client"));
    let small = (small_rows > 0).then(|| {
        (small_rows, sync(http, &sidecar, "items_small", small_rows, &format!("{label} first client, items_small")))
    });
    drop(sidecar);
    drop(client);
    drop(cluster);
    Measured { rows, table_mb: table_bytes as f64 / 1e6, load_seconds, copy, server_copy_seconds, first, second, small }
}

/// `COPY (SELECT row_to_json(t) FROM <table> t) TO STDOUT`, read to the end.
fn copy_json(client: &mut pg_shapes_tests::postgres::Client, table: &str) -> Copy {
    let t = Instant::now();
    let mut reader = client
        .copy_out(&format!("COPY (SELECT row_to_json(t) FROM {table} t) TO STDOUT"))
        .unwrap_or_else(|e| panic!("COPY of {table}: {e}"));
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap_or_else(|e| panic!("reading the COPY of {table}: {e}"));
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    drop(reader);
    Copy { seconds: t.elapsed().as_secs_f64(), bytes }
}

/// Syncs `table` like a client: `offset=-1`, then the returned handle and
/// offset, until a response says up-to-date. The bodies are kept and their
/// rows counted after the clock stops (a byte search costs about as much as
/// receiving them, which would understate the sidecar); only the progress
/// lines of a long sync count rows on the way, and that time is not counted.
/// Panics unless the rows number `want_rows`.
fn sync(http: &Http, sidecar: &Sidecar, table: &str, want_rows: u64, label: &str) -> Sync {
    let t = Instant::now();
    let mut path = format!("/v1/shape?table={table}&offset=-1");
    let (mut bytes, mut requests, mut chunks) = (0u64, 0u64, 0u64);
    let mut bodies = Vec::new();
    let (mut counted, mut rows_so_far) = (0usize, 0u64);
    let mut first_chunk_seconds = None;
    let mut progress_time = Duration::ZERO;
    let mut last_progress = Instant::now();
    loop {
        let url = sidecar.url(&path);
        let resp = http.get(&url).send().unwrap_or_else(|e| panic!("{label}: GET {url}: {e}"));
        requests += 1;
        let status = resp.status();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let handle = header("electric-handle");
        let offset = header("electric-offset");
        let up_to_date = resp.headers().contains_key("electric-up-to-date");
        let body = resp.bytes().unwrap_or_else(|e| panic!("{label}: reading the body of {url}: {e}"));
        if status != 200 {
            panic!("{label}: GET {url} answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(500)]));
        }
        let (Some(handle), Some(offset)) = (handle, offset) else {
            panic!("{label}: GET {url} answered 200 without electric-handle or electric-offset");
        };
        bytes += body.len() as u64;
        if body.get(1..).is_some_and(|b| b.starts_with(INSERT_MESSAGE)) {
            chunks += 1;
            first_chunk_seconds.get_or_insert(t.elapsed().as_secs_f64());
        }
        bodies.push(body);
        if up_to_date {
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            let p = Instant::now();
            rows_so_far += bodies[counted..].iter().map(|b| count(b, INSERT_MESSAGE)).sum::<u64>();
            counted = bodies.len();
            crate::progress!(
                "{label}: {chunks} chunks, {} rows, {:.0} MB so far (offset {offset})",
                thousands(rows_so_far as f64),
                bytes as f64 / 1e6
            );
            last_progress = Instant::now();
            progress_time += p.elapsed();
        }
        assert!(
            t.elapsed() < SYNC_TIMEOUT,
            "{label}: no up-to-date after {SYNC_TIMEOUT:?} ({chunks} chunks, {requests} requests so far)"
        );
        path = format!("/v1/shape?table={table}&handle={handle}&offset={offset}");
    }
    let seconds = (t.elapsed() - progress_time).as_secs_f64();
    let rows = rows_so_far + bodies[counted..].iter().map(|b| count(b, INSERT_MESSAGE)).sum::<u64>();
    assert_eq!(
        rows, want_rows,
        "{label}: the sync ended (up-to-date) with {rows} rows, but the table has {want_rows} ({requests} requests, {bytes} bytes)"
    );
    let s =
        Sync { seconds, bytes, rows, requests, chunks, first_chunk_seconds: first_chunk_seconds.unwrap_or(seconds) };
    crate::progress!(
        "{label}: {} rows, {:.0} MB in {:.2}s ({:.0} MB/s)",
        thousands(rows as f64),
        bytes as f64 / 1e6,
        seconds,
        s.mb_per_s()
    );
    s
}

/// Non-overlapping occurrences of `pat` (non-empty) in `hay`: scans for the
/// first byte, then compares.
fn count(hay: &[u8], pat: &[u8]) -> u64 {
    let (mut n, mut i) = (0, 0);
    while let Some(p) = hay[i..].iter().position(|&b| b == pat[0]) {
        let at = i + p;
        if hay[at..].starts_with(pat) {
            n += 1;
            i = at + pat.len();
        } else {
            i = at + 1;
        }
    }
    n
}

/// How benchmark 4 measures, for RESULTS.md.
pub const METHOD: &str = "\
A fresh cluster (fsync off) with `items(id bigint primary key, k int, title text, body text, n int, created
timestamptz)`, `sync_rows` rows of ~150 bytes from `generate_series`, vacuumed and analysed, the engine caught
up on the load and a checkpoint taken. **Limit**: `COPY (SELECT row_to_json(t) FROM items t) TO STDOUT` read to
the end by a client (`postgres` crate, `copy_out`), the second of two runs so the table is in shared buffers:
seconds and bytes. **Ours, first client**: with the sidecar running and no shape yet, a client asks
`GET /v1/shape?table=items&offset=-1` and follows `electric-handle` / `electric-offset` from chunk to chunk
until a response carries `electric-up-to-date`, keeping the bodies; time from the first request to the last
byte, so it includes the extension creating the shape and writing the snapshot. The snapshot rows are counted
afterwards (a byte search for each row's message head; the progress lines of a long sync count on the way, and
that time is taken off). The row count must equal `sync_rows`. Ratio = ours / COPY,
target ≤ 2×. **Ours, second client**: the same walk again with the shape's log complete: response bytes per
second (MB = 10^6 bytes), target ≥ 500 MB/s; COPY's MB/s is shown for reference (its JSON is smaller than the
protocol's messages, which carry headers and keys). For linearity the first-client sync of a second table of
`sync_rows / 10` rows is noted too. The client is reqwest's blocking client on the same machine.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_finds_non_overlapping_occurrences() {
        assert_eq!(count(b"", b"ab"), 0);
        assert_eq!(count(b"abxab", b"ab"), 2);
        assert_eq!(count(b"aaaa", b"aa"), 2);
        assert_eq!(count(b"a", b"ab"), 0);
        let body = br#"[{"headers":{"operation":"insert","relation":["public","items"]},"key":"k","value":{"t":"{\"headers\":{"}},{"headers":{"operation":"insert"}}]"#;
        assert_eq!(count(body, INSERT_MESSAGE), 2);
    }
}
