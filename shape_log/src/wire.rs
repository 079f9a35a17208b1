//! The wire JSON of Electric's shape protocol, built directly into byte buffers.
//!
//! Messages are stored in the log exactly as they go on the wire, so the
//! worker builds them once and the sidecar only slices them. A live change is
//! built in three parts, `head` + optional [`LAST_TAIL`] + `body`, because
//! everything but the per-shape `"last":true` is shared by every shape with the
//! same projection.
//!
//! Formats (see the protocol notes in the repository's `docs/protocol.md`):
//! - change: `{"headers":{"operation":"insert","relation":["public","items"],"lsn":"123","op_position":4,"txids":[789],"last":true},"key":"\"public\".\"items\"/\"42\"","value":{"id":"42"}}`
//! - snapshot row: `{"headers":{"operation":"insert","relation":[…]},"key":…,"value":{…}}`
//! - control: `{"headers":{"control":"up-to-date","global_last_seen_lsn":"123"}}`

use std::io::Write as _;

/// What a change does to a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A row enters the shape.
    Insert,
    /// A row inside the shape changes.
    Update,
    /// A row leaves the shape.
    Delete,
}

impl Operation {
    /// The protocol's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// Appended after a change's head to mark it the last of its transaction.
pub const LAST_TAIL: &[u8] = b",\"last\":true";
/// The body of a 409 response and of an invalidation notice.
pub const MUST_REFETCH: &[u8] = br#"{"headers":{"control":"must-refetch"}}"#;

const fn escape_table() -> [u8; 256] {
    // 0 = copy as is; b'u' = \u00XX; other = the letter after the backslash.
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
}
static ESCAPE: [u8; 256] = escape_table();

/// Appends `s` JSON-escaped, without surrounding quotes. `s` must be UTF-8.
pub fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let e = ESCAPE[b as usize];
        if e == 0 {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        if e == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            out.extend_from_slice(&[b'\\', e]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// Appends `s` as a JSON string literal.
pub fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    push_escaped(out, s);
    out.push(b'"');
}

/// Per-table fragments computed once: the `relation` array and the key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationJson {
    /// `["schema","table"]`
    pub relation: Vec<u8>,
    /// `"schema"."table"` with `/` doubled and `.` doubled inside the names.
    pub key_prefix: Vec<u8>,
}

fn push_key_ident(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    for &b in name.as_bytes() {
        match b {
            b'/' => out.extend_from_slice(b"//"),
            b'.' => out.extend_from_slice(b".."),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

impl RelationJson {
    /// Builds the fragments for `schema.table` (names unquoted, as in the catalog).
    pub fn new(schema: &str, table: &str) -> RelationJson {
        let mut relation = b"[".to_vec();
        push_str(&mut relation, schema.as_bytes());
        relation.push(b',');
        push_str(&mut relation, table.as_bytes());
        relation.push(b']');
        let mut key_prefix = Vec::new();
        push_key_ident(&mut key_prefix, schema);
        key_prefix.push(b'.');
        push_key_ident(&mut key_prefix, table);
        RelationJson { relation, key_prefix }
    }
}

/// Builds the raw (unescaped) key of a row: prefix, then `/"value"` per key
/// column with `/` doubled, or `/_` for NULL.
pub fn build_key<'a>(out: &mut Vec<u8>, rel: &RelationJson, key_values: impl IntoIterator<Item = Option<&'a [u8]>>) {
    out.extend_from_slice(&rel.key_prefix);
    for v in key_values {
        out.push(b'/');
        match v {
            None => out.push(b'_'),
            Some(v) => {
                out.push(b'"');
                for &b in v {
                    if b == b'/' {
                        out.extend_from_slice(b"//");
                    } else {
                        out.push(b);
                    }
                }
                out.push(b'"');
            }
        }
    }
}

/// The shared first part of a live change: everything in `headers` but `last`.
pub struct ChangeHead<'a> {
    /// What happens to the row in this shape.
    pub operation: Operation,
    /// The table.
    pub relation: &'a RelationJson,
    /// Commit LSN of the transaction.
    pub lsn: u64,
    /// Position of the change in the transaction.
    pub op_position: u64,
    /// 32-bit transaction id.
    pub xid: u32,
    /// For the delete half of a key change: the row's new key (raw).
    pub key_change_to: Option<&'a [u8]>,
    /// For the insert half of a key change: the row's old key (raw).
    pub key_change_from: Option<&'a [u8]>,
}

/// Appends a live change head: `{"headers":{…` without closing the headers.
pub fn push_change_head(out: &mut Vec<u8>, h: &ChangeHead<'_>) {
    out.extend_from_slice(b"{\"headers\":{\"operation\":\"");
    out.extend_from_slice(h.operation.as_str().as_bytes());
    out.extend_from_slice(b"\",\"relation\":");
    out.extend_from_slice(&h.relation.relation);
    let _ = write!(out, ",\"lsn\":\"{}\",\"op_position\":{},\"txids\":[{}]", h.lsn, h.op_position, h.xid);
    if let Some(k) = h.key_change_to {
        out.extend_from_slice(b",\"key_change_to\":");
        push_str(out, k);
    }
    if let Some(k) = h.key_change_from {
        out.extend_from_slice(b",\"key_change_from\":");
        push_str(out, k);
    }
}

/// Appends the head of a snapshot row: `{"headers":{"operation":"insert","relation":[…]`.
pub fn push_snapshot_head(out: &mut Vec<u8>, relation: &RelationJson) {
    out.extend_from_slice(b"{\"headers\":{\"operation\":\"insert\",\"relation\":");
    out.extend_from_slice(&relation.relation);
}

/// Closes the headers and opens the value object: `},"key":"…","value":{`.
pub fn push_body_start(out: &mut Vec<u8>, raw_key: &[u8]) {
    out.extend_from_slice(b"},\"key\":");
    push_str(out, raw_key);
    out.extend_from_slice(b",\"value\":{");
}

/// Appends one `"column":"value"` (or `null`) member; `name_json` is the
/// already-quoted column name and `first` tells whether a comma is needed.
pub fn push_member(out: &mut Vec<u8>, first: bool, name_json: &[u8], value: Option<&[u8]>) {
    if !first {
        out.push(b',');
    }
    out.extend_from_slice(name_json);
    out.push(b':');
    match value {
        None => out.extend_from_slice(b"null"),
        Some(v) => push_str(out, v),
    }
}

/// Closes `value` and opens `old_value`: `},"old_value":{`.
pub fn push_old_value_start(out: &mut Vec<u8>) {
    out.extend_from_slice(b"},\"old_value\":{");
}

/// Closes the last object and the message: `}}`.
pub fn push_message_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"}}");
}

/// `{"headers":{"control":"up-to-date","global_last_seen_lsn":"<lsn>"}}`
pub fn up_to_date(global_last_seen_lsn: u64) -> Vec<u8> {
    format!(r#"{{"headers":{{"control":"up-to-date","global_last_seen_lsn":"{global_last_seen_lsn}"}}}}"#).into_bytes()
}

/// `{"headers":{"control":"snapshot-end","xmin":"…","xmax":"…","xip_list":["…"]}}`
pub fn snapshot_end(xmin: u64, xmax: u64, xip: &[u64]) -> Vec<u8> {
    let mut out =
        format!(r#"{{"headers":{{"control":"snapshot-end","xmin":"{xmin}","xmax":"{xmax}","xip_list":["#).into_bytes();
    for (i, x) in xip.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "\"{x}\"");
    }
    out.extend_from_slice(b"]}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::{json, Value};

    fn parse(v: &[u8]) -> Value {
        serde_json::from_slice(v).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(v)))
    }

    #[test]
    fn escaping_produces_valid_json_for_every_control_and_special_character() {
        let mut raw = String::new();
        for c in 0u8..0x20 {
            raw.push(c as char);
        }
        raw.push_str("\"\\/é漢字😀");
        let mut out = Vec::new();
        push_str(&mut out, raw.as_bytes());
        assert_eq!(parse(&out), Value::String(raw));
    }

    #[test]
    fn keys_quote_names_double_slashes_and_dots_and_mark_nulls() {
        let rel = RelationJson::new("my.schema", "a/b");
        let mut key = Vec::new();
        build_key(&mut key, &rel, [Some(&b"x/y"[..]), None, Some(&b"42"[..])]);
        assert_eq!(std::str::from_utf8(&key).unwrap(), r#""my..schema"."a//b"/"x//y"/_/"42""#);
        assert_eq!(std::str::from_utf8(&rel.relation).unwrap(), r#"["my.schema","a/b"]"#);
    }

    #[test]
    fn a_live_change_assembled_from_parts_is_the_documented_json() {
        let rel = RelationJson::new("public", "items");
        let mut key = Vec::new();
        build_key(&mut key, &rel, [Some(&b"42"[..])]);
        let mut head = Vec::new();
        push_change_head(
            &mut head,
            &ChangeHead {
                operation: Operation::Update,
                relation: &rel,
                lsn: 26800584,
                op_position: 4,
                xid: 789,
                key_change_to: None,
                key_change_from: None,
            },
        );
        let mut body = Vec::new();
        push_body_start(&mut body, &key);
        push_member(&mut body, true, br#""id""#, Some(b"42"));
        push_member(&mut body, false, br#""title""#, Some(b"say \"hi\""));
        push_old_value_start(&mut body);
        push_member(&mut body, true, br#""title""#, None);
        push_message_end(&mut body);

        let msg = [&head[..], LAST_TAIL, &body[..]].concat();
        let expected = r#"{"headers":{"operation":"update","relation":["public","items"],"lsn":"26800584","op_position":4,"txids":[789],"last":true},"key":"\"public\".\"items\"/\"42\"","value":{"id":"42","title":"say \"hi\""},"old_value":{"title":null}}"#;
        assert_eq!(std::str::from_utf8(&msg).unwrap(), expected);
        parse(&msg);
        // Without the tail it is still valid JSON.
        parse(&[&head[..], &body[..]].concat());
    }

    #[test]
    fn control_messages_match_the_protocol() {
        assert_eq!(
            std::str::from_utf8(&up_to_date(123)).unwrap(),
            r#"{"headers":{"control":"up-to-date","global_last_seen_lsn":"123"}}"#
        );
        assert_eq!(
            std::str::from_utf8(&snapshot_end(10, 20, &[12, 15])).unwrap(),
            r#"{"headers":{"control":"snapshot-end","xmin":"10","xmax":"20","xip_list":["12","15"]}}"#
        );
        assert_eq!(
            std::str::from_utf8(&snapshot_end(10, 10, &[])).unwrap(),
            r#"{"headers":{"control":"snapshot-end","xmin":"10","xmax":"10","xip_list":[]}}"#
        );
        parse(MUST_REFETCH);
    }

    #[test]
    fn key_change_heads_carry_the_other_key() {
        let rel = RelationJson::new("public", "t");
        let mut head = Vec::new();
        push_change_head(
            &mut head,
            &ChangeHead {
                operation: Operation::Delete,
                relation: &rel,
                lsn: 1,
                op_position: 0,
                xid: 2,
                key_change_to: Some(br#""public"."t"/"2""#),
                key_change_from: None,
            },
        );
        let mut body = Vec::new();
        push_body_start(&mut body, br#""public"."t"/"1""#);
        push_member(&mut body, true, br#""id""#, Some(b"1"));
        push_message_end(&mut body);
        let v = parse(&[&head[..], &body[..]].concat());
        assert_eq!(v["headers"]["key_change_to"], json!(r#""public"."t"/"2""#));
        assert_eq!(v["value"], json!({"id": "1"}));
    }
}
