//! Building wire messages from the text forms of a row's columns. Pure Rust:
//! the callers turn datums into text (with the types' output functions) and
//! this module lays the bytes out with `shape_log::wire`.

use shape_log::wire::{self, RelationJson};

use crate::catalog::Spec;

/// The projection of a shape: which columns it shows and which identify a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    /// The table's `relation` array and key prefix.
    pub relation: RelationJson,
    /// JSON-quoted names of the selected columns, in output order.
    pub names_json: Vec<Vec<u8>>,
    /// Attribute numbers of the selected columns (same order).
    pub attnums: Vec<i16>,
    /// Attribute numbers of the key columns, in key order.
    pub key_attnums: Vec<i16>,
    /// Positions in `attnums` of the key columns, in key order.
    pub key_pos: Vec<usize>,
    /// `replica=full`.
    pub full: bool,
}

impl Projection {
    /// The projection a spec describes.
    pub fn of(spec: &Spec) -> Projection {
        let names_json = spec
            .columns
            .iter()
            .map(|c| {
                let mut v = Vec::new();
                wire::push_str(&mut v, c.name.as_bytes());
                v
            })
            .collect();
        let attnums: Vec<i16> = spec.columns.iter().map(|c| c.attnum).collect();
        let key_pos = spec
            .key
            .iter()
            .map(|k| attnums.iter().position(|&a| a == k.attnum).expect("key columns are selected"))
            .collect();
        Projection {
            relation: RelationJson::new(&spec.schema, &spec.table),
            names_json,
            attnums,
            key_attnums: spec.key.iter().map(|k| k.attnum).collect(),
            key_pos,
            full: spec.replica_full,
        }
    }

    /// The raw key of a row whose selected columns have texts `texts`.
    pub fn key(&self, texts: &[Option<&[u8]>], out: &mut Vec<u8>) {
        wire::build_key(out, &self.relation, self.key_pos.iter().map(|&p| texts[p]));
    }

    /// A snapshot row: `{"headers":{"operation":"insert","relation":[…]<extra>},"key":…,"value":{…}}`.
    /// `extra_headers` is inserted verbatim (e.g. `,"snapshot_mark":7`).
    pub fn snapshot_row(
        &self,
        texts: &[Option<&[u8]>],
        extra_headers: &[u8],
        key_buf: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) {
        key_buf.clear();
        self.key(texts, key_buf);
        wire::push_snapshot_head(out, &self.relation);
        out.extend_from_slice(extra_headers);
        wire::push_body_start(out, key_buf);
        for (i, (name, t)) in self.names_json.iter().zip(texts).enumerate() {
            wire::push_member(out, i == 0, name, *t);
        }
        wire::push_message_end(out);
    }

    /// The body of a live change (`},"key":…,"value":{…}[,"old_value":{…}]}`),
    /// given which selected columns go into `value` and which into `old_value`.
    pub fn change_body<'t>(
        &self,
        raw_key: &[u8],
        value: impl Iterator<Item = (usize, Option<&'t [u8]>)>,
        old_value: Option<&mut dyn Iterator<Item = (usize, Option<&'t [u8]>)>>,
        out: &mut Vec<u8>,
    ) {
        wire::push_body_start(out, raw_key);
        for (n, (i, t)) in value.enumerate() {
            wire::push_member(out, n == 0, &self.names_json[i], t);
        }
        if let Some(old) = old_value {
            wire::push_old_value_start(out);
            for (n, (i, t)) in old.enumerate() {
                wire::push_member(out, n == 0, &self.names_json[i], t);
            }
        }
        wire::push_message_end(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SpecColumn;
    use serde_json::{json, Value};

    fn spec() -> Spec {
        Spec {
            relid: 1,
            schema: "public".into(),
            table: "items".into(),
            columns: vec![SpecColumn { attnum: 1, name: "id".into() }, SpecColumn { attnum: 3, name: "title".into() }],
            key: vec![SpecColumn { attnum: 1, name: "id".into() }],
            replica_full: false,
            changes_only: false,
            where_sql: None,
            where_node: None,
            chunk_bytes: 1024,
        }
    }

    #[test]
    fn snapshot_rows_carry_key_relation_and_every_selected_column() {
        let p = Projection::of(&spec());
        let (mut key, mut out) = (Vec::new(), Vec::new());
        p.snapshot_row(&[Some(b"42"), None], b"", &mut key, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"headers": {"operation": "insert", "relation": ["public", "items"]}, "key": "\"public\".\"items\"/\"42\"", "value": {"id": "42", "title": null}})
        );
    }

    #[test]
    fn change_bodies_hold_value_and_old_value() {
        let p = Projection::of(&spec());
        let mut out = Vec::new();
        let mut old = vec![(1usize, Some(&b"old"[..]))].into_iter();
        p.change_body(
            br#""public"."items"/"1""#,
            vec![(0, Some(&b"1"[..])), (1, Some(&b"new"[..]))].into_iter(),
            Some(&mut old),
            &mut out,
        );
        let msg = [br#"{"headers":{"operation":"update""#.as_slice(), &out].concat();
        let v: Value = serde_json::from_slice(&msg).unwrap();
        assert_eq!(v["value"], json!({"id": "1", "title": "new"}));
        assert_eq!(v["old_value"], json!({"title": "old"}));
    }
}
