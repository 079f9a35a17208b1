//! Parsing and validation of `/v1/shape` requests. Pure: no I/O, no database.
//!
//! Follows Electric's rules as the real clients rely on them: unknown query
//! parameters are ignored (clients add `cache-buster`, `expired_handle`, …),
//! blank values count as absent, `live`/`live_sse` are true for any value but
//! the literal `false`, and `handle` is ignored when the offset is `-1`/`now`.
//! The only "unknown parameter" error is an unknown `subset__*` key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde_json::Value;
use shape_log::LogOffset;

use crate::error::FieldErrors;

/// Largest `$n` a request may bind (Postgres' own limit on parameters).
const MAX_PARAMS: usize = 65_535;

/// Where a client wants to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOffset {
    /// `-1` or `<tx>_<op>`.
    Log(LogOffset),
    /// `now`: no history, just the current position.
    Now,
}

impl RequestOffset {
    /// True for `-1` and `now`, the offsets that need no handle.
    pub fn is_initial(&self) -> bool {
        matches!(self, RequestOffset::Now | RequestOffset::Log(LogOffset::BeforeAll))
    }
}

impl fmt::Display for RequestOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestOffset::Log(o) => o.fmt(f),
            RequestOffset::Now => f.write_str("now"),
        }
    }
}

/// `replica`: which columns updates and deletes carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Replica {
    /// Key plus changed columns.
    #[default]
    Default,
    /// Whole rows, plus `old_value` on updates.
    Full,
}

impl Replica {
    /// The value passed to the SQL API.
    pub fn as_str(self) -> &'static str {
        match self {
            Replica::Default => "default",
            Replica::Full => "full",
        }
    }
}

/// `log`: whether the shape starts with a snapshot of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogMode {
    /// Snapshot, then changes.
    #[default]
    Full,
    /// An empty snapshot, then changes.
    ChangesOnly,
}

impl LogMode {
    /// The value passed to the SQL API.
    pub fn as_str(self) -> &'static str {
        match self {
            LogMode::Full => "full",
            LogMode::ChangesOnly => "changes_only",
        }
    }
}

/// What identifies a shape: the arguments of `shapes.get_or_create_shape`.
/// Strings are passed through untouched; Postgres parses and checks them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShapeDefinition {
    /// `table`, possibly schema-qualified and quoted.
    pub table: String,
    /// `where`.
    pub where_clause: Option<String>,
    /// Values for `$1..$n`.
    pub params: Option<Vec<String>>,
    /// `columns`, the raw comma-separated list.
    pub columns: Option<String>,
    /// `replica`.
    pub replica: Replica,
    /// `log`.
    pub log_mode: LogMode,
}

/// A subset snapshot query (`subset__*` parameters or a POST body).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subset {
    /// Extra filter ANDed to the shape's WHERE.
    pub where_clause: Option<String>,
    /// Values for `$1..$n` of the subset's WHERE (NULL allowed).
    pub params: Option<Vec<Option<String>>>,
    /// `ORDER BY` clause.
    pub order_by: Option<String>,
    /// `LIMIT`, > 0.
    pub limit: Option<i64>,
    /// `OFFSET`, ≥ 0.
    pub offset: Option<i64>,
}

/// A validated `GET|HEAD|POST /v1/shape` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeRequest {
    /// The shape asked for.
    pub definition: ShapeDefinition,
    /// Where to start.
    pub offset: RequestOffset,
    /// The handle the client holds; always `None` for `-1`/`now`.
    pub handle: Option<String>,
    /// Long-poll (or stream) for changes past `offset`.
    pub live: bool,
    /// Stream server-sent events instead of long-polling.
    pub sse: bool,
    /// The client's `cursor`, echoed into the next cursor computation.
    pub cursor: Option<String>,
    /// A subset snapshot request instead of log reading.
    pub subset: Option<Subset>,
}

/// A validated `DELETE /v1/shape` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteRequest {
    /// Delete one shape by handle.
    Handle(String),
    /// Delete every shape of a table.
    Table(String),
    /// Delete the shape of this definition.
    Definition(ShapeDefinition),
}

/// A subset parameter value as it arrived: query strings carry text, POST
/// bodies carry JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// From the query string.
    Text(String),
    /// From a JSON body.
    Json(Value),
}

/// Subset fields before validation, from the query string and/or a body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawSubset {
    fields: BTreeMap<String, RawValue>,
}

impl RawSubset {
    /// True when no subset field was given at all.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Overlays `other` (later wins), as Electric merges a body over the query.
    pub fn merge(&mut self, other: RawSubset) {
        self.fields.extend(other.fields);
    }
}

/// Subset keys Electric knows; `_expr` forms are sent by client 1.5 alongside
/// the compiled SQL and are ignored.
const SUBSET_KEYS: &[&str] = &["where", "params", "limit", "offset", "order_by"];
const SUBSET_IGNORED: &[&str] = &["where_expr", "order_by_expr"];

/// The query string split into parameters (last occurrence wins).
#[derive(Debug, Default, Clone)]
pub struct Query {
    map: HashMap<String, String>,
    /// `params[n]` entries, by the text inside the brackets.
    params: BTreeMap<String, String>,
    /// `subset__x` entries, by `x`.
    subset: BTreeMap<String, String>,
}

impl Query {
    /// Splits a raw (percent-encoded) query string.
    pub fn parse(raw: Option<&str>) -> Query {
        let mut q = Query::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if let Some(inner) = k.strip_prefix("params[").and_then(|r| r.strip_suffix(']')) {
                q.params.insert(inner.to_string(), v.into_owned());
            } else if let Some(sub) = k.strip_prefix("subset__") {
                q.subset.insert(sub.to_string(), v.into_owned());
            } else {
                q.map.insert(k.into_owned(), v.into_owned());
            }
        }
        q
    }

    /// The raw value of a parameter, blank or not.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// The value of a parameter; blank values count as absent (as Ecto casts them).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.raw(key).filter(|v| !v.trim().is_empty())
    }

    /// The API secret: `secret`, or the deprecated `api_secret`.
    pub fn secret(&self) -> Option<&str> {
        self.raw("secret").or_else(|| self.raw("api_secret"))
    }

    /// Electric's truthiness: present and not the literal `false`.
    fn flag(&self, key: &str) -> Option<bool> {
        self.raw(key).map(|v| v != "false")
    }

    /// The subset fields of the query string, with errors for unknown keys.
    fn raw_subset(&self, errs: &mut FieldErrors) -> RawSubset {
        let mut raw = RawSubset::default();
        for (k, v) in &self.subset {
            if SUBSET_KEYS.contains(&k.as_str()) {
                raw.fields.insert(k.clone(), RawValue::Text(v.clone()));
            } else if !SUBSET_IGNORED.contains(&k.as_str()) {
                errs.add_nested("subset", k, "is not a known subset parameter");
            }
        }
        raw
    }
}

/// Parses and validates a shape request. `body_subset` is the subset of a POST
/// body; its presence makes the request a subset request.
pub fn parse_shape_request(q: &Query, body_subset: Option<RawSubset>) -> Result<ShapeRequest, FieldErrors> {
    let mut errs = FieldErrors::default();
    let definition = parse_definition(q, &mut errs);

    let offset = match q.get("offset") {
        None => {
            errs.add("offset", "can't be blank");
            None
        }
        Some(s) => parse_offset(s).or_else(|| {
            errs.add("offset", "has invalid format");
            None
        }),
    };

    let handle = q.get("handle").map(str::to_string);
    if let Some(o) = offset {
        if !o.is_initial() && handle.is_none() {
            errs.add("handle", "can't be blank when offset != -1");
        }
    }

    let live = q.flag("live").unwrap_or(false);
    match offset {
        Some(RequestOffset::Log(LogOffset::BeforeAll)) if live => errs.add("live", "can't be true when offset == -1"),
        Some(RequestOffset::Now) if live => errs.add("live", "can't be true when offset is 'now'"),
        _ => {}
    }
    let sse = q.flag("live_sse").or_else(|| q.flag("experimental_live_sse")).unwrap_or(false);
    if sse && !live {
        errs.add("live_sse", "can't be true unless live is also true");
    }

    let mut raw_subset = q.raw_subset(&mut errs);
    let is_subset = body_subset.is_some() || !raw_subset.is_empty();
    if let Some(body) = body_subset {
        raw_subset.merge(body);
    }
    let subset = if is_subset {
        if sse {
            errs.add("live_sse", "can't be true for a subset snapshot");
        }
        validate_subset(&raw_subset, &mut errs)
    } else {
        None
    };

    match (definition, offset) {
        (Some(definition), Some(offset)) if errs.is_empty() => Ok(ShapeRequest {
            definition,
            offset,
            handle: if offset.is_initial() { None } else { handle },
            live,
            sse,
            cursor: q.raw("cursor").map(str::to_string),
            subset,
        }),
        _ => Err(errs),
    }
}

/// Parses a DELETE: by `handle`, else by `table` (all its shapes) or, when any
/// other definition parameter is given, by the definition.
pub fn parse_delete_request(q: &Query) -> Result<DeleteRequest, FieldErrors> {
    if let Some(h) = q.get("handle") {
        return Ok(DeleteRequest::Handle(h.to_string()));
    }
    let mut errs = FieldErrors::default();
    let def = parse_definition(q, &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    let def = def.ok_or_else(|| FieldErrors::one("table", "can't be blank"))?;
    let whole_table = def.where_clause.is_none()
        && def.params.is_none()
        && def.columns.is_none()
        && q.get("replica").is_none()
        && q.get("log").is_none();
    Ok(if whole_table { DeleteRequest::Table(def.table) } else { DeleteRequest::Definition(def) })
}

/// `-1`, `now`, or `<tx>_<op>` (op may be `inf`).
pub fn parse_offset(s: &str) -> Option<RequestOffset> {
    if s == "now" {
        return Some(RequestOffset::Now);
    }
    s.parse::<LogOffset>().ok().map(RequestOffset::Log)
}

fn parse_definition(q: &Query, errs: &mut FieldErrors) -> Option<ShapeDefinition> {
    let table = q.get("table");
    if table.is_none() {
        errs.add("table", "can't be blank");
    }
    let replica = match q.get("replica") {
        None | Some("default") => Replica::Default,
        Some("full") => Replica::Full,
        Some(_) => {
            errs.add("replica", "is invalid");
            Replica::Default
        }
    };
    let log_mode = match q.get("log") {
        None | Some("full") => LogMode::Full,
        Some("changes_only") => LogMode::ChangesOnly,
        Some(_) => {
            errs.add("log", "is invalid");
            LogMode::Full
        }
    };
    let params = parse_shape_params(q, errs);
    Some(ShapeDefinition {
        table: table?.to_string(),
        where_clause: q.get("where").map(str::to_string),
        params,
        columns: q.get("columns").map(str::to_string),
        replica,
        log_mode,
    })
}

/// `params[n]=v` entries and/or `params={"n":"v"}` (the bracket form wins on
/// overlap), as a dense `$1..$n` list of strings.
fn parse_shape_params(q: &Query, errs: &mut FieldErrors) -> Option<Vec<String>> {
    let mut by_key: BTreeMap<String, String> = BTreeMap::new();
    if let Some(json) = q.get("params") {
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(map)) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) => {
                            by_key.insert(k, s);
                        }
                        _ => {
                            errs.add("params", "values must be strings");
                            return None;
                        }
                    }
                }
            }
            _ => {
                errs.add("params", "must be a JSON object of strings, or given as params[1]=…");
                return None;
            }
        }
    }
    by_key.extend(q.params.iter().map(|(k, v)| (k.clone(), v.clone())));
    let dense = densify(by_key.into_iter().map(|(k, v)| (k, Some(v))), "params", errs)?;
    // Shape params are strings only, so every slot is `Some`.
    Some(dense.into_iter().map(Option::unwrap_or_default).collect())
}

/// Turns `{"1":a,"2":b}` into `[a, b]`: keys must be 1..n without gaps, so
/// that `$n` always means the n-th value the client sent. `None` for no params.
fn densify(
    entries: impl Iterator<Item = (String, Option<String>)>,
    field: &str,
    errs: &mut FieldErrors,
) -> Option<Vec<Option<String>>> {
    let mut numbered = BTreeMap::new();
    for (k, v) in entries {
        let n = k.trim().parse::<usize>().ok().filter(|n| (1..=MAX_PARAMS).contains(n));
        match n {
            Some(n) => {
                numbered.insert(n, v);
            }
            None => {
                report(errs, field, format!("keys must be integers from 1 to {MAX_PARAMS}, got {k:?}"));
                return None;
            }
        }
    }
    if numbered.is_empty() {
        return None;
    }
    if numbered.keys().copied().ne(1..=numbered.len()) {
        report(errs, field, "must be numbered from 1 without gaps".to_string());
        return None;
    }
    Some(numbered.into_values().collect())
}

/// Reports under `field`, or under `subset.<x>` for `subset_<x>` field names.
fn report(errs: &mut FieldErrors, field: &str, message: String) {
    match field.strip_prefix("subset_") {
        Some(sub) => errs.add_nested("subset", sub, message),
        None => errs.add(field, message),
    }
}

fn subset_text(raw: &RawSubset, key: &str, errs: &mut FieldErrors) -> Option<String> {
    match raw.fields.get(key)? {
        RawValue::Text(s) => Some(s.clone()),
        RawValue::Json(Value::String(s)) => Some(s.clone()),
        RawValue::Json(Value::Null) => None,
        RawValue::Json(_) => {
            errs.add_nested("subset", key, "must be a string");
            None
        }
    }
    .filter(|s| !s.trim().is_empty())
}

fn subset_int(raw: &RawSubset, key: &str, errs: &mut FieldErrors) -> Option<i64> {
    let parsed = match raw.fields.get(key)? {
        RawValue::Text(s) | RawValue::Json(Value::String(s)) => {
            if s.trim().is_empty() {
                return None;
            }
            s.trim().parse::<i64>().ok()
        }
        RawValue::Json(Value::Null) => return None,
        RawValue::Json(Value::Number(n)) => n.as_i64(),
        RawValue::Json(_) => None,
    };
    if parsed.is_none() {
        errs.add_nested("subset", key, "is invalid");
    }
    parsed
}

fn subset_params(raw: &RawSubset, errs: &mut FieldErrors) -> Option<Vec<Option<String>>> {
    let value = match raw.fields.get("params")? {
        RawValue::Text(s) if s.trim().is_empty() => return None,
        RawValue::Text(s) => match serde_json::from_str::<Value>(s) {
            Ok(v) => v,
            Err(_) => {
                errs.add_nested("subset", "params", "params must be valid JSON");
                return None;
            }
        },
        RawValue::Json(v) => v.clone(),
    };
    let map = match value {
        Value::Null => return None,
        Value::Object(map) => map,
        _ => {
            errs.add_nested("subset", "params", "params must be a JSON object");
            return None;
        }
    };
    let mut entries = Vec::with_capacity(map.len());
    for (k, v) in map {
        let text = match v {
            Value::String(s) => Some(s),
            Value::Null => None,
            // Clients send bigints and numbers as JSON numbers; Electric stringifies them.
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(_) | Value::Object(_) => {
                errs.add_nested("subset", "params", "values must be strings or numbers");
                return None;
            }
        };
        entries.push((k, text));
    }
    densify(entries.into_iter(), "subset_params", errs)
}

fn validate_subset(raw: &RawSubset, errs: &mut FieldErrors) -> Option<Subset> {
    let before = errs.clone();
    let subset = Subset {
        where_clause: subset_text(raw, "where", errs),
        params: subset_params(raw, errs),
        order_by: subset_text(raw, "order_by", errs),
        limit: subset_int(raw, "limit", errs),
        offset: subset_int(raw, "offset", errs),
    };
    if subset.limit.is_some_and(|l| l <= 0) {
        errs.add_nested("subset", "limit", "must be greater than 0");
    }
    if subset.offset.is_some_and(|o| o < 0) {
        errs.add_nested("subset", "offset", "must be greater than or equal to 0");
    }
    if (subset.limit.is_some() || subset.offset.is_some()) && subset.order_by.is_none() {
        errs.add_nested("subset", "order_by", "order_by is required when limit or offset is present");
    }
    (*errs == before).then_some(subset)
}

/// Why a POST body was refused (Electric's wording, not the field-error form).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON at all.
    #[error("Invalid JSON in request body")]
    InvalidJson(String),
    /// JSON, but not an object.
    #[error("Request body must be a JSON object")]
    NotObject,
}

/// Reads the subset of a POST body: top-level `where, params, limit, offset,
/// order_by`, overlaid by the same keys nested under `subset`. An empty body is `{}`.
pub fn parse_subset_body(body: &[u8]) -> Result<RawSubset, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RawSubset::default());
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    let Value::Object(top) = value else { return Err(BodyError::NotObject) };
    let mut raw = RawSubset::default();
    let mut take = |map: &serde_json::Map<String, Value>| {
        for key in SUBSET_KEYS {
            if let Some(v) = map.get(*key) {
                raw.fields.insert((*key).to_string(), RawValue::Json(v.clone()));
            }
        }
    };
    take(&top);
    if let Some(Value::Object(nested)) = top.get("subset") {
        take(nested);
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(s: &str) -> Query {
        Query::parse(Some(s))
    }

    fn ok(s: &str) -> ShapeRequest {
        parse_shape_request(&q(s), None).unwrap_or_else(|e| panic!("{s}: {}", e.to_json()))
    }

    fn err(s: &str) -> Value {
        parse_shape_request(&q(s), None).expect_err(s).to_json()
    }

    #[test]
    fn a_minimal_initial_request_parses_with_defaults() {
        let r = ok("table=items&offset=-1");
        assert_eq!(r.definition.table, "items");
        assert_eq!(r.offset, RequestOffset::Log(LogOffset::BeforeAll));
        assert_eq!(r.definition.replica, Replica::Default);
        assert_eq!(r.definition.log_mode, LogMode::Full);
        assert!(!r.live && !r.sse && r.subset.is_none() && r.handle.is_none());
    }

    #[test]
    fn the_client_request_sequence_parses() {
        let r = ok("cursor=&handle=3833821-1721812114261&live=true&log=full&offset=26800584_4&table=items&expired_handle=x&cache-buster=1-2");
        assert!(r.live);
        assert_eq!(r.handle.as_deref(), Some("3833821-1721812114261"));
        assert_eq!(r.offset, RequestOffset::Log(LogOffset::new(26800584, 4)));
        assert_eq!(r.cursor.as_deref(), Some(""));
        let r = ok("handle=h&offset=0_inf&table=items");
        assert_eq!(r.offset, RequestOffset::Log(LogOffset::SNAPSHOT_END));
        let r = ok("handle=h&offset=0_02&table=items");
        assert_eq!(r.offset, RequestOffset::Log(LogOffset::new(0, 2)));
    }

    #[test]
    fn table_names_pass_through_untouched_including_quotes() {
        let r = ok("table=%22My+Schema%22.%22My%20Table%22&offset=-1");
        assert_eq!(r.definition.table, r#""My Schema"."My Table""#);
        let r = ok("table=foo.issues&offset=-1");
        assert_eq!(r.definition.table, "foo.issues");
    }

    #[test]
    fn missing_or_blank_table_and_offset_are_400s() {
        assert_eq!(err("offset=-1"), json!({"table": ["can't be blank"]}));
        assert_eq!(err("table=+&offset=-1"), json!({"table": ["can't be blank"]}));
        assert_eq!(err("table=items"), json!({"offset": ["can't be blank"]}));
        assert_eq!(err("table=items&offset="), json!({"offset": ["can't be blank"]}));
    }

    #[test]
    fn malformed_offsets_are_400s() {
        for bad in ["-2", "1", "a_1", "1_b", "1_2_3", "now_1", "NOW", "_", "1_-1"] {
            assert_eq!(
                err(&format!("table=t&handle=h&offset={bad}")),
                json!({"offset": ["has invalid format"]}),
                "{bad}"
            );
        }
    }

    #[test]
    fn handle_is_required_past_the_start_and_ignored_at_the_start() {
        assert_eq!(err("table=t&offset=5_0"), json!({"handle": ["can't be blank when offset != -1"]}));
        assert_eq!(err("table=t&offset=5_0&handle="), json!({"handle": ["can't be blank when offset != -1"]}));
        assert_eq!(ok("table=t&offset=-1&handle=new").handle, None);
        assert_eq!(ok("table=t&offset=now&handle=new").handle, None);
    }

    #[test]
    fn live_is_true_for_anything_but_false() {
        for v in ["true", "", "1", "0", "yes"] {
            assert!(ok(&format!("table=t&offset=1_0&handle=h&live={v}")).live, "live={v}");
        }
        assert!(!ok("table=t&offset=1_0&handle=h&live=false").live);
        assert!(!ok("table=t&offset=1_0&handle=h").live);
    }

    #[test]
    fn live_cannot_start_at_minus_one_or_now() {
        assert_eq!(err("table=t&offset=-1&live=true"), json!({"live": ["can't be true when offset == -1"]}));
        assert_eq!(err("table=t&offset=now&live=true"), json!({"live": ["can't be true when offset is 'now'"]}));
    }

    #[test]
    fn live_sse_needs_live_and_has_an_experimental_alias() {
        assert_eq!(
            err("table=t&offset=1_0&handle=h&live_sse=true"),
            json!({"live_sse": ["can't be true unless live is also true"]})
        );
        let r = ok("table=t&offset=1_0&handle=h&live=true&experimental_live_sse=true");
        assert!(r.sse);
        let r = ok("table=t&offset=1_0&handle=h&live=true&live_sse=false&experimental_live_sse=true");
        assert!(!r.sse, "live_sse wins over its alias");
    }

    #[test]
    fn replica_and_log_accept_only_their_values() {
        let r = ok("table=t&offset=-1&replica=full&log=changes_only");
        assert_eq!((r.definition.replica, r.definition.log_mode), (Replica::Full, LogMode::ChangesOnly));
        assert_eq!(err("table=t&offset=-1&replica=partial"), json!({"replica": ["is invalid"]}));
        assert_eq!(err("table=t&offset=-1&log=some"), json!({"log": ["is invalid"]}));
    }

    #[test]
    fn several_errors_are_reported_together() {
        let e = err("offset=x&replica=y");
        assert!(e.get("table").is_some() && e.get("offset").is_some() && e.get("replica").is_some(), "{e}");
    }

    #[test]
    fn params_come_in_bracket_and_json_forms() {
        let r = ok("table=t&offset=-1&where=a%3D%241+and+b%3D%242&params%5B1%5D=x&params[2]=y%20z");
        assert_eq!(r.definition.where_clause.as_deref(), Some("a=$1 and b=$2"));
        assert_eq!(r.definition.params, Some(vec!["x".to_string(), "y z".to_string()]));
        let r = ok(r#"table=t&offset=-1&params={"1":"x","2":""}"#);
        assert_eq!(r.definition.params, Some(vec!["x".to_string(), String::new()]));
        assert_eq!(ok("table=t&offset=-1").definition.params, None);
    }

    #[test]
    fn bad_params_are_400s() {
        for bad in [
            r#"params=[1,2]"#,
            "params=nope",
            r#"params={"1":2}"#,
            r#"params={"a":"x"}"#,
            "params[0]=x",
            "params[x]=y",
            "params[2]=x",
            "params[1]=a&params[3]=b",
        ] {
            let e = err(&format!("table=t&offset=-1&{bad}"));
            assert!(e.get("params").is_some(), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_parameters_are_ignored_but_unknown_subset_keys_are_not() {
        ok("table=t&offset=-1&tenant=x&experimental_compaction=true&subset__where_expr=%7B%7D");
        assert_eq!(
            err("table=t&offset=-1&subset__bogus=1"),
            json!({"subset": {"bogus": ["is not a known subset parameter"]}})
        );
    }

    #[test]
    fn subset_parameters_make_a_subset_request() {
        let r = ok(
            r#"table=t&offset=now&log=changes_only&subset__where=p%3D%241&subset__params={"1":"high","2":100}&subset__limit=10&subset__offset=0&subset__order_by=id"#,
        );
        let s = r.subset.expect("subset");
        assert_eq!(s.where_clause.as_deref(), Some("p=$1"));
        assert_eq!(s.params, Some(vec![Some("high".into()), Some("100".into())]));
        assert_eq!((s.limit, s.offset, s.order_by.as_deref()), (Some(10), Some(0), Some("id")));
    }

    #[test]
    fn subset_limits_offsets_and_order_by_are_checked() {
        let e = err("table=t&offset=-1&subset__limit=0&subset__order_by=id");
        assert_eq!(e, json!({"subset": {"limit": ["must be greater than 0"]}}));
        let e = err("table=t&offset=-1&subset__offset=-1&subset__order_by=id");
        assert_eq!(e, json!({"subset": {"offset": ["must be greater than or equal to 0"]}}));
        let e = err("table=t&offset=-1&subset__limit=5");
        assert_eq!(e, json!({"subset": {"order_by": ["order_by is required when limit or offset is present"]}}));
        let e = err("table=t&offset=-1&subset__limit=x&subset__order_by=id");
        assert_eq!(e, json!({"subset": {"limit": ["is invalid"]}}));
        let e = err("table=t&offset=-1&subset__params=%5B1%5D");
        assert_eq!(e, json!({"subset": {"params": ["params must be a JSON object"]}}));
        let e = err("table=t&offset=-1&subset__params=%7Bnope");
        assert_eq!(e, json!({"subset": {"params": ["params must be valid JSON"]}}));
    }

    #[test]
    fn live_sse_cannot_be_a_subset() {
        let e = err("table=t&offset=1_0&handle=h&live=true&live_sse=true&subset__where=x");
        assert!(e.get("live_sse").is_some(), "{e}");
    }

    #[test]
    fn post_bodies_give_the_subset_at_top_level_or_nested() {
        let top = parse_subset_body(br#"{"where":"a > $1","params":{"1":5},"limit":3,"order_by":"a"}"#).unwrap();
        let r = parse_shape_request(&q("table=t&offset=now"), Some(top)).unwrap();
        let s = r.subset.unwrap();
        assert_eq!((s.where_clause.as_deref(), s.limit), (Some("a > $1"), Some(3)));
        assert_eq!(s.params, Some(vec![Some("5".into())]));

        let nested = parse_subset_body(br#"{"subset":{"where":"b","offset":"2","order_by":"id"}}"#).unwrap();
        let s = parse_shape_request(&q("table=t&offset=now"), Some(nested)).unwrap().subset.unwrap();
        assert_eq!((s.where_clause.as_deref(), s.offset), (Some("b"), Some(2)));

        let empty = parse_subset_body(b"").unwrap();
        assert_eq!(parse_shape_request(&q("table=t&offset=now"), Some(empty)).unwrap().subset, Some(Subset::default()));

        assert!(matches!(parse_subset_body(b"[1]"), Err(BodyError::NotObject)));
        assert!(matches!(parse_subset_body(b"{nope"), Err(BodyError::InvalidJson(_))));
    }

    #[test]
    fn secret_has_an_api_secret_alias() {
        assert_eq!(q("secret=a&api_secret=b").secret(), Some("a"));
        assert_eq!(q("api_secret=b").secret(), Some("b"));
        assert_eq!(q("x=1").secret(), None);
    }

    #[test]
    fn deletes_go_by_handle_table_or_definition() {
        assert_eq!(parse_delete_request(&q("handle=h&table=t")).unwrap(), DeleteRequest::Handle("h".into()));
        assert_eq!(parse_delete_request(&q("table=t")).unwrap(), DeleteRequest::Table("t".into()));
        assert!(matches!(parse_delete_request(&q("table=t&where=x")).unwrap(), DeleteRequest::Definition(_)));
        assert_eq!(parse_delete_request(&q("")).unwrap_err().to_json(), json!({"table": ["can't be blank"]}));
    }
}
