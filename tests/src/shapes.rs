//! Helpers for tests of the engine itself: creating shapes through the SQL
//! API, waiting for the decoder to catch up, and materialising a shape's log
//! (snapshot + changes) into rows while checking the log's invariants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postgres::Client;
use serde_json::{Map, Value};
use shape_log::layout::{FLAG_CONTROL, FLAG_LAST_IN_TX, FLAG_SNAPSHOT};
use shape_log::{LogReader, LogState};

use crate::TestCluster;

/// A shape definition as `shapes.get_or_create_shape` takes it.
#[derive(Debug, Clone, Default)]
pub struct ShapeDef {
    /// Table name.
    pub table: String,
    /// WHERE clause.
    pub where_clause: Option<String>,
    /// `$n` values.
    pub params: Vec<String>,
    /// Column list.
    pub columns: Option<String>,
    /// `default` or `full`.
    pub replica: String,
    /// `full` or `changes_only`.
    pub log_mode: String,
}

impl ShapeDef {
    /// A shape of `table` with an optional WHERE.
    pub fn new(table: &str, where_clause: Option<&str>) -> ShapeDef {
        ShapeDef {
            table: table.into(),
            where_clause: where_clause.map(Into::into),
            replica: "default".into(),
            log_mode: "full".into(),
            ..Default::default()
        }
    }

    /// With `$n` parameters.
    pub fn params(mut self, p: &[&str]) -> ShapeDef {
        self.params = p.iter().map(|s| s.to_string()).collect();
        self
    }

    /// With a column list.
    pub fn columns(mut self, c: &str) -> ShapeDef {
        self.columns = Some(c.into());
        self
    }

    /// With `replica=full`.
    pub fn full(mut self) -> ShapeDef {
        self.replica = "full".into();
        self
    }
}

/// Calls `shapes.get_or_create_shape`; returns the handle or the database error.
pub fn create_shape(client: &mut Client, def: &ShapeDef) -> Result<String, postgres::Error> {
    let params: Option<Vec<String>> = (!def.params.is_empty()).then(|| def.params.clone());
    let row = client.query_one(
        "SELECT handle FROM shapes.get_or_create_shape($1, $2, $3, $4, $5, $6)",
        &[&def.table, &def.where_clause, &params, &def.columns, &def.replica, &def.log_mode],
    )?;
    Ok(row.get(0))
}

/// The storage directory of a test cluster's shape logs.
pub fn storage_dir(cluster: &TestCluster) -> PathBuf {
    cluster.data_dir().join("pg_shapes")
}

/// Waits until the decoder has processed everything flushed so far.
pub fn wait_caught_up(client: &mut Client, timeout: Duration) {
    let target: i64 =
        client.query_one("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint", &[]).unwrap().get(0);
    let deadline = Instant::now() + timeout;
    loop {
        let through: Option<String> =
            client.query_one("SELECT shapes.status() ->> 'complete_through'", &[]).unwrap().get(0);
        let through: i64 = through.and_then(|t| t.parse().ok()).unwrap_or(0);
        if through + 1 >= target {
            return;
        }
        assert!(Instant::now() < deadline, "decoder did not catch up to {target} within {timeout:?} (at {through})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a shape's log exists and is live (the worker took it over).
pub fn wait_live(storage: &Path, handle: &str, timeout: Duration) -> LogReader {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = LogReader::open(&storage.join(handle)) {
            let st = r.status().state;
            assert!(!st.is_gone(), "shape {handle} is {} ({})", st.as_str(), r.status().reason);
            if st == LogState::Live {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "shape {handle} did not become live within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rows keyed by the wire `key`, values as the wire `value` objects.
pub type Rows = BTreeMap<String, Map<String, Value>>;

/// A log applied in order, with what was seen on the way.
#[derive(Debug)]
pub struct Materialized {
    /// The rows after applying everything.
    pub rows: Rows,
    /// Rows in the initial snapshot.
    pub snapshot_rows: usize,
    /// Live transactions applied.
    pub transactions: usize,
    /// Live change messages applied.
    pub changes: usize,
    /// Every message, in log order.
    pub messages: Vec<Value>,
}

/// Applies a shape's log (snapshot, then changes) like a client would, and
/// panics on anything that breaks the protocol: offsets out of order, a
/// transaction without its `last` marker, an insert of a row already there, an
/// update or delete of a row that is not.
pub fn materialize(reader: &LogReader) -> Materialized {
    let (view, c) = reader.current().expect("log readable");
    let mut rows = Rows::new();
    let mut out =
        Materialized { rows: Rows::new(), snapshot_rows: 0, transactions: 0, changes: 0, messages: Vec::new() };
    let mut prev: Option<(u64, u64)> = None;
    let mut seen_snapshot_end = false;
    let mut open_tx: Option<u64> = None;
    for i in 0..c.records {
        let r = view.record(i);
        let msg: Value =
            serde_json::from_slice(view.message(&r)).unwrap_or_else(|e| panic!("record {i} is not JSON: {e}"));
        if r.has(FLAG_SNAPSHOT) {
            assert!(!seen_snapshot_end, "snapshot record {i} after snapshot-end");
            assert_eq!(r.tx, 0, "snapshot record {i} with tx {}", r.tx);
            if r.has(FLAG_CONTROL) {
                assert_eq!(msg["headers"]["control"], "snapshot-end", "record {i}");
                seen_snapshot_end = true;
            } else {
                apply(&mut rows, &msg, i);
                out.snapshot_rows += 1;
            }
            out.messages.push(msg);
            continue;
        }
        assert!(seen_snapshot_end, "live record {i} before snapshot-end");
        if let Some(p) = prev {
            assert!((r.tx, r.op) > p, "record {i} offset {}_{} does not follow {}_{}", r.tx, r.op, p.0, p.1);
            if p.0 != r.tx {
                assert_eq!(open_tx, None, "transaction {} ended without a last marker before record {i}", p.0);
            }
        }
        let h = &msg["headers"];
        assert_eq!(h["lsn"], Value::String(r.tx.to_string()), "record {i} lsn header");
        assert_eq!(h["op_position"], Value::from(r.op), "record {i} op_position header");
        assert_eq!(h["last"] == Value::Bool(true), r.has(FLAG_LAST_IN_TX), "record {i} last header vs flag");
        open_tx = if r.has(FLAG_LAST_IN_TX) {
            out.transactions += 1;
            None
        } else {
            Some(r.tx)
        };
        prev = Some((r.tx, r.op));
        apply(&mut rows, &msg, i);
        out.changes += 1;
        out.messages.push(msg);
    }
    assert_eq!(open_tx, None, "the log ends inside a transaction");
    out.rows = rows;
    out
}

fn apply(rows: &mut Rows, msg: &Value, i: u64) {
    let key = msg["key"].as_str().unwrap_or_else(|| panic!("record {i} has no key: {msg}")).to_string();
    let value = msg["value"].as_object().cloned().unwrap_or_default();
    match msg["headers"]["operation"].as_str() {
        Some("insert") => {
            assert!(
                !rows.contains_key(&key),
                "record {i}: insert of {key}, which is already present (a change applied twice?)"
            );
            rows.insert(key, value);
        }
        Some("update") => {
            let row = rows
                .get_mut(&key)
                .unwrap_or_else(|| panic!("record {i}: update of {key}, which is not present (a change lost?)"));
            for (k, v) in value {
                row.insert(k, v);
            }
        }
        Some("delete") => {
            assert!(rows.remove(&key).is_some(), "record {i}: delete of {key}, which is not present (a change lost?)");
        }
        other => panic!("record {i}: unknown operation {other:?}"),
    }
}

/// The display settings the engine formats values under.
pub const DISPLAY_SETTINGS: &str = "SET bytea_output = 'hex'; SET DateStyle = 'ISO, DMY'; SET TimeZone = 'UTC'; \
     SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 1";

/// The rows the query `SELECT columns FROM table WHERE where` returns now, in
/// the wire's shape: keyed like the wire keys, values as the types print them.
pub fn expected_rows(
    client: &mut Client,
    schema: &str,
    table: &str,
    columns: &[&str],
    key: &[&str],
    where_clause: Option<&str>,
    params: &[String],
) -> Rows {
    client.batch_execute(DISPLAY_SETTINGS).unwrap();
    let select: Vec<String> =
        columns.iter().map(|c| format!("CASE WHEN \"{c}\" IS NULL THEN NULL ELSE format('%s', \"{c}\") END")).collect();
    let mut sql = format!("SELECT {} FROM \"{schema}\".\"{table}\"", select.join(", "));
    if let Some(w) = where_clause {
        sql.push_str(" WHERE ");
        sql.push_str(w);
    }
    // Parameters are substituted as literals of unknown type, as the engine binds them.
    for (i, p) in params.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), &format!("'{}'", p.replace('\'', "''")));
    }
    let mut rows = Rows::new();
    for r in client.query(sql.as_str(), &[]).unwrap() {
        let mut m = Map::new();
        for (i, c) in columns.iter().enumerate() {
            let v: Option<String> = r.get(i);
            m.insert(c.to_string(), v.map(Value::String).unwrap_or(Value::Null));
        }
        let mut k = format!("\"{schema}\".\"{table}\"");
        for kc in key {
            match &m[*kc] {
                Value::String(s) => k.push_str(&format!("/\"{}\"", s.replace('/', "//"))),
                _ => k.push_str("/_"),
            }
        }
        rows.insert(k, m);
    }
    rows
}

/// Compares materialised rows with expected ones, reporting the first differences.
pub fn assert_same_rows(what: &str, got: &Rows, want: &Rows) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => diffs.push(format!("missing {k}: {}", Value::Object(v.clone()))),
            Some(g) if g != v => diffs.push(format!(
                "differs {k}: log {} vs query {}",
                Value::Object(g.clone()),
                Value::Object(v.clone())
            )),
            _ => {}
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            diffs.push(format!("extra {k}: {}", Value::Object(v.clone())));
        }
    }
    diffs.truncate(10);
    panic!("{what}: log ({} rows) != query ({} rows):\n  {}", got.len(), want.len(), diffs.join("\n  "));
}
