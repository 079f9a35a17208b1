//! Turning a shape request (table, where, params, columns, replica, log) into a
//! validated [`Spec`], with Postgres itself resolving every name and type.
//! Every rejection is a [`ShapeError`] naming the parameter at fault.

use std::collections::BTreeMap;

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{json, Value};

use crate::catalog::{Spec, SpecColumn};
use crate::error::{Param, ShapeError, ShapeResult};
use crate::pg::parse::{analyse_where, ExprError};
use crate::pg::relation::{split_identifiers, OpenRel};
use crate::pg::xact::try_subtransaction;

/// What a client asked for, before validation.
#[derive(Debug, Clone, Default)]
pub struct ShapeRequest {
    /// `table`: `name`, `schema.name`, quoted identifiers allowed.
    pub table: String,
    /// `where`, if any.
    pub where_clause: Option<String>,
    /// `$1..$n` values.
    pub params: Vec<Option<String>>,
    /// `columns` as given (comma-separated identifiers), if any.
    pub columns: Option<String>,
    /// `replica`.
    pub replica: String,
    /// `log`.
    pub log_mode: String,
    /// Chunk size for a new shape.
    pub chunk_bytes: u64,
}

/// A column of the table, as the catalog describes it.
#[derive(Debug, Clone)]
pub struct TableColumn {
    /// Attribute number.
    pub attnum: i16,
    /// Name.
    pub name: String,
    /// Type modifier.
    pub typmod: i32,
    /// NOT NULL constraint.
    pub not_null: bool,
    /// Declared array dimensions.
    pub ndims: i32,
    /// Type name (of the element type for arrays).
    pub typname: String,
    /// True for array types.
    pub is_array: bool,
}

/// A validated definition, ready to be stored.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The spec workers use.
    pub spec: Spec,
    /// Canonical text whose md5 identifies the definition.
    pub identity: String,
    /// `electric-schema` header JSON.
    pub electric_schema: String,
    /// Selected column names, when a subset was asked for.
    pub column_names: Option<Vec<String>>,
    /// The table's replica identity (`d`, `n`, `f`, `i`).
    pub replica_identity: String,
}

/// Finds the table's OID by its (possibly qualified, possibly quoted) name.
fn resolve_relid(table: &str) -> ShapeResult<pg_sys::Oid> {
    if table.trim().is_empty() {
        return Err(ShapeError::invalid(Param::Table, "table must name a table"));
    }
    let name = table.to_string();
    let found = try_subtransaction(move || {
        crate::sql::select_one::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[name.as_str().into()])
    })
    .map_err(|e| {
        ShapeError::invalid(Param::Table, format!("table \"{table}\" is not a valid table name: {}", e.message))
    })?;
    found.ok_or_else(|| {
        ShapeError::with_code(
            Param::Table,
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("table \"{table}\" does not exist. If the table name contains capitals or special characters you must quote it."),
        )
    })
}

struct TableInfo {
    schema: String,
    name: String,
    relkind: String,
    persistence: String,
    has_children: bool,
    replica_identity: String,
    can_select: bool,
    rls_active: bool,
}

fn table_info(relid: pg_sys::Oid) -> TableInfo {
    Spi::connect(|client| {
        let t = client
            .select(
                "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text, c.relhassubclass,
                        c.relreplident::text, has_table_privilege(c.oid, 'SELECT'), row_security_active(c.oid)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                Some(1),
                &[relid.into()],
            )
            .unwrap_or_else(|e| error!("pg_shapes could not read pg_class: {e}"))
            .first();
        TableInfo {
            schema: t.get(1).ok().flatten().unwrap_or_default(),
            name: t.get(2).ok().flatten().unwrap_or_default(),
            relkind: t.get(3).ok().flatten().unwrap_or_default(),
            persistence: t.get(4).ok().flatten().unwrap_or_default(),
            has_children: t.get(5).ok().flatten().unwrap_or(false),
            replica_identity: t.get(6).ok().flatten().unwrap_or_default(),
            can_select: t.get(7).ok().flatten().unwrap_or(false),
            rls_active: t.get(8).ok().flatten().unwrap_or(false),
        }
    })
}

/// The table's live columns, in attribute order.
pub fn table_columns(relid: pg_sys::Oid) -> Vec<TableColumn> {
    Spi::connect(|client| {
        let t = client
            .select(
                "SELECT a.attnum, a.attname::text, a.atttypmod, a.attnotnull, a.attndims,
                        CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN et.typname ELSE t.typname END::text,
                        (t.typcategory = 'A' AND t.typelem <> 0)
                   FROM pg_attribute a
                   JOIN pg_type t ON t.oid = a.atttypid
                   LEFT JOIN pg_type et ON et.oid = t.typelem
                  WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                None,
                &[relid.into()],
            )
            .unwrap_or_else(|e| error!("pg_shapes could not read pg_attribute: {e}"));
        t.map(|r| TableColumn {
            attnum: r.get(1).ok().flatten().unwrap_or_default(),
            name: r.get(2).ok().flatten().unwrap_or_default(),
            typmod: r.get(3).ok().flatten().unwrap_or(-1),
            not_null: r.get(4).ok().flatten().unwrap_or(false),
            ndims: r.get(5).ok().flatten().unwrap_or(0),
            typname: r.get(6).ok().flatten().unwrap_or_default(),
            is_array: r.get(7).ok().flatten().unwrap_or(false),
        })
        .collect()
    })
}

/// Primary-key attribute numbers in key order (empty without a primary key).
fn primary_key(relid: pg_sys::Oid) -> Vec<i16> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT k.attnum FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                  WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                None,
                &[relid.into()],
            )
            .unwrap_or_else(|e| error!("pg_shapes could not read pg_index: {e}"))
            .map(|r| r.get::<i16>(1).ok().flatten().unwrap_or_default())
            .collect()
    })
}

fn check_table(table: &str, info: &TableInfo) -> ShapeResult<()> {
    let kind = match info.relkind.as_str() {
        "r" => None,
        "p" => Some(
            "a partitioned table; shapes on partitioned tables are not supported yet, create them on the partitions",
        ),
        "v" => Some("a view"),
        "m" => Some("a materialized view"),
        "f" => Some("a foreign table"),
        _ => Some("not a table"),
    };
    if let Some(kind) = kind {
        return Err(ShapeError::invalid(
            Param::Table,
            format!("\"{table}\" is {kind}: shapes need an ordinary table whose changes are written to the WAL"),
        ));
    }
    match info.persistence.as_str() {
        "u" => {
            return Err(ShapeError::invalid(
                Param::Table,
                format!(
                "table \"{table}\" is unlogged: its changes are not written to the WAL, so no shape can follow them"
            ),
            ))
        }
        "t" => {
            return Err(ShapeError::invalid(
                Param::Table,
                format!("table \"{table}\" is temporary and cannot be shaped"),
            ))
        }
        _ => {}
    }
    if matches!(info.schema.as_str(), "pg_catalog" | "information_schema" | "shapes" | "pg_toast") {
        return Err(ShapeError::invalid(Param::Table, format!("\"{table}\" is a system table and cannot be shaped")));
    }
    if info.has_children {
        return Err(ShapeError::invalid(
            Param::Table,
            format!("table \"{table}\" has inheritance children; shapes follow one table's own rows, so shape the child tables instead"),
        ));
    }
    if !info.can_select {
        return Err(ShapeError::with_code(
            Param::Table,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for table \"{table}\""),
        ));
    }
    if info.rls_active {
        return Err(ShapeError::with_code(
            Param::Table,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("row level security is enabled on table \"{table}\"; pg_shapes cannot apply per-client policies, so it refuses to shape it"),
        ));
    }
    Ok(())
}

/// Selected columns (table order) and their names as asked, or all columns.
fn select_columns(
    table: &str,
    all: &[TableColumn],
    asked: Option<&str>,
) -> ShapeResult<(Vec<TableColumn>, Option<Vec<String>>)> {
    let Some(asked) = asked else { return Ok((all.to_vec(), None)) };
    let names = split_identifiers(asked)
        .ok_or_else(|| ShapeError::invalid(Param::Columns, format!("columns {asked:?} is not a comma-separated list of column names (quote names with capitals or special characters)")))?;
    if names.is_empty() || names.iter().any(|n| n.is_empty()) {
        return Err(ShapeError::invalid(
            Param::Columns,
            "columns must name at least one column and may not contain empty names",
        ));
    }
    let mut picked: Vec<TableColumn> = Vec::new();
    let mut missing = Vec::new();
    for n in &names {
        match all.iter().find(|c| &c.name == n) {
            Some(c) if !picked.iter().any(|p| p.attnum == c.attnum) => picked.push(c.clone()),
            Some(_) => {}
            None => missing.push(n.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(ShapeError::with_code(
            Param::Columns,
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("the following columns could not be found in table \"{table}\": {}", missing.join(", ")),
        ));
    }
    picked.sort_by_key(|c| c.attnum);
    let names = picked.iter().map(|c| c.name.clone()).collect();
    Ok((picked, Some(names)))
}

/// Builds the `electric-schema` header: column → type name, dims, pk_index,
/// not_null and type-modifier details, for the selected columns.
pub fn electric_schema(columns: &[TableColumn], pk: &[i16]) -> String {
    let mut map = BTreeMap::new();
    for c in columns {
        let mut o = serde_json::Map::new();
        o.insert("type".into(), json!(c.typname));
        if c.is_array {
            o.insert("dims".into(), json!(c.ndims.max(1)));
        }
        if let Some(i) = pk.iter().position(|&a| a == c.attnum) {
            o.insert("pk_index".into(), json!(i));
        }
        if c.not_null {
            o.insert("not_null".into(), json!(true));
        }
        for (k, v) in type_modifiers(&c.typname, c.typmod) {
            o.insert(k.into(), v);
        }
        map.insert(c.name.clone(), Value::Object(o));
    }
    serde_json::to_string(&map).expect("a map of strings and numbers serialises")
}

/// Decodes a type modifier the way `format_type` does, into Electric's field names.
pub fn type_modifiers(typname: &str, typmod: i32) -> Vec<(&'static str, Value)> {
    if typmod < 0 {
        return Vec::new();
    }
    match typname {
        "varchar" => vec![("max_length", json!(typmod - 4))],
        "bpchar" => vec![("length", json!(typmod - 4))],
        "bit" | "varbit" => vec![("length", json!(typmod))],
        "numeric" => {
            let t = typmod - 4;
            // The scale is an 11-bit two's-complement field since PG 15 (negative scales).
            let scale = ((t & 0x7ff) ^ 1024) - 1024;
            vec![("precision", json!((t >> 16) & 0xffff)), ("scale", json!(scale))]
        }
        "time" | "timetz" | "timestamp" | "timestamptz" => vec![("precision", json!(typmod))],
        "interval" => {
            let precision = typmod & 0xffff;
            let mut v = Vec::new();
            if precision != 0xffff {
                v.push(("precision", json!(precision)));
            }
            if let Some(fields) = interval_fields((typmod >> 16) & 0x7fff) {
                v.push(("fields", json!(fields)));
            }
            v
        }
        _ => vec![("type_mod", json!(typmod))],
    }
}

fn interval_fields(range: i32) -> Option<&'static str> {
    // Bit masks of datetime.h: YEAR=4, MONTH=2, DAY=8, HOUR=10, MINUTE=11, SECOND=12.
    const YEAR: i32 = 1 << 2;
    const MONTH: i32 = 1 << 1;
    const DAY: i32 = 1 << 3;
    const HOUR: i32 = 1 << 10;
    const MINUTE: i32 = 1 << 11;
    const SECOND: i32 = 1 << 12;
    Some(match range {
        r if r == YEAR => "YEAR",
        r if r == MONTH => "MONTH",
        r if r == DAY => "DAY",
        r if r == HOUR => "HOUR",
        r if r == MINUTE => "MINUTE",
        r if r == SECOND => "SECOND",
        r if r == YEAR | MONTH => "YEAR TO MONTH",
        r if r == DAY | HOUR => "DAY TO HOUR",
        r if r == DAY | HOUR | MINUTE => "DAY TO MINUTE",
        r if r == DAY | HOUR | MINUTE | SECOND => "DAY TO SECOND",
        r if r == HOUR | MINUTE => "HOUR TO MINUTE",
        r if r == HOUR | MINUTE | SECOND => "HOUR TO SECOND",
        r if r == MINUTE | SECOND => "MINUTE TO SECOND",
        _ => return None,
    })
}

fn where_error(e: ExprError) -> ShapeError {
    let param = if e.is_about_params() { Param::Params } else { Param::Where };
    ShapeError::with_code(param, e.code(), e.to_string())
}

/// Validates a request against the live catalog and produces its spec.
pub fn resolve(req: &ShapeRequest) -> ShapeResult<Resolved> {
    let replica_full = match req.replica.as_str() {
        "" | "default" => false,
        "full" => true,
        other => {
            return Err(ShapeError::invalid(
                Param::Replica,
                format!("replica must be \"default\" or \"full\", not {other:?}"),
            ))
        }
    };
    let changes_only = match req.log_mode.as_str() {
        "" | "full" => false,
        "changes_only" => true,
        other => {
            return Err(ShapeError::invalid(
                Param::Log,
                format!("log must be \"full\" or \"changes_only\", not {other:?}"),
            ))
        }
    };

    let relid = resolve_relid(&req.table)?;
    let info = table_info(relid);
    check_table(&req.table, &info)?;
    let all = table_columns(relid);
    if all.is_empty() {
        return Err(ShapeError::invalid(Param::Table, format!("table \"{}\" has no columns", req.table)));
    }
    let pk = primary_key(relid);
    let (selected, column_names) = select_columns(&req.table, &all, req.columns.as_deref())?;

    // Without a primary key a row is identified by all of its columns (sorted by name, as
    // Electric does), so a column subset cannot identify rows.
    let key: Vec<SpecColumn> = if pk.is_empty() {
        let mut k: Vec<SpecColumn> =
            all.iter().map(|c| SpecColumn { attnum: c.attnum, name: c.name.clone() }).collect();
        k.sort_by(|a, b| a.name.cmp(&b.name));
        k
    } else {
        pk.iter()
            .filter_map(|a| all.iter().find(|c| c.attnum == *a))
            .map(|c| SpecColumn { attnum: c.attnum, name: c.name.clone() })
            .collect()
    };
    let missing: Vec<&str> =
        key.iter().filter(|k| !selected.iter().any(|c| c.attnum == k.attnum)).map(|k| k.name.as_str()).collect();
    if !missing.is_empty() {
        let what = if pk.is_empty() {
            "every column (the table has no primary key, so all columns identify a row)"
        } else {
            "all primary key columns"
        };
        return Err(ShapeError::invalid(
            Param::Columns,
            format!("columns must include {what}, missing: {}", missing.join(", ")),
        ));
    }

    let (where_sql, where_node) = match req.where_clause.as_deref().map(str::trim).filter(|w| !w.is_empty()) {
        Some(w) => {
            let rel = OpenRel::open(relid)
                .ok_or_else(|| ShapeError::invalid(Param::Table, format!("table \"{}\" was dropped", req.table)))?;
            // SAFETY: the relation is open and we run inside the caller's transaction.
            let analysed = unsafe { analyse_where(rel.raw(), w, &req.params) }.map_err(where_error)?;
            (Some(analysed.sql), Some(analysed.node))
        }
        None if !req.params.is_empty() => {
            return Err(ShapeError::invalid(
                Param::Params,
                "params were given but there is no where clause to use them",
            ));
        }
        None => (None, None),
    };

    let columns: Vec<SpecColumn> =
        selected.iter().map(|c| SpecColumn { attnum: c.attnum, name: c.name.clone() }).collect();
    let identity = format!(
        "{}|{}|{}|{}|{}",
        relid,
        where_sql.as_deref().unwrap_or(""),
        columns.iter().map(|c| c.attnum.to_string()).collect::<Vec<_>>().join(","),
        if replica_full { "full" } else { "default" },
        if changes_only { "changes_only" } else { "full" },
    );
    let electric_schema = electric_schema(&selected, &pk);
    Ok(Resolved {
        spec: Spec {
            relid: u32::from(relid),
            schema: info.schema,
            table: info.name,
            columns,
            key,
            replica_full,
            changes_only,
            where_sql,
            where_node,
            chunk_bytes: req.chunk_bytes,
        },
        identity,
        electric_schema,
        column_names,
        replica_identity: info.replica_identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(
        attnum: i16,
        name: &str,
        typname: &str,
        typmod: i32,
        not_null: bool,
        is_array: bool,
        ndims: i32,
    ) -> TableColumn {
        TableColumn { attnum, name: name.into(), typmod, not_null, ndims, typname: typname.into(), is_array }
    }

    #[test]
    fn electric_schema_names_element_types_dims_keys_and_modifiers() {
        let cols = vec![
            col(1, "id", "int8", -1, true, false, 0),
            col(2, "title", "varchar", 259, false, false, 0),
            col(3, "price", "numeric", (10 << 16 | 2) + 4, false, false, 0),
            col(4, "tags", "text", -1, false, true, 1),
            col(5, "code", "bpchar", 7, false, false, 0),
            col(6, "at", "timestamptz", 3, false, false, 0),
        ];
        let v: Value = serde_json::from_str(&electric_schema(&cols, &[1])).unwrap();
        assert_eq!(v["id"], json!({"type": "int8", "pk_index": 0, "not_null": true}));
        assert_eq!(v["title"], json!({"type": "varchar", "max_length": 255}));
        assert_eq!(v["price"], json!({"type": "numeric", "precision": 10, "scale": 2}));
        assert_eq!(v["tags"], json!({"type": "text", "dims": 1}));
        assert_eq!(v["code"], json!({"type": "bpchar", "length": 3}));
        assert_eq!(v["at"], json!({"type": "timestamptz", "precision": 3}));
    }

    #[test]
    fn interval_modifiers_name_their_fields() {
        // interval DAY TO SECOND(3)
        let typmod = ((1 << 3 | 1 << 10 | 1 << 11 | 1 << 12) << 16) | 3;
        assert_eq!(
            type_modifiers("interval", typmod),
            vec![("precision", json!(3)), ("fields", json!("DAY TO SECOND"))]
        );
        assert!(type_modifiers("text", -1).is_empty());
    }
}
