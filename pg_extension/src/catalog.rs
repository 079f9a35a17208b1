//! The shape catalog (`shapes.shape`): the spec every worker builds a shape
//! from, and the statements backends and workers run against the table.

use pgrx::prelude::*;
use serde::{Deserialize, Serialize};

/// A selected column.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpecColumn {
    /// Attribute number in the table.
    pub attnum: i16,
    /// Column name (unquoted).
    pub name: String,
}

/// Everything needed to snapshot and route a shape, stored as JSON in `spec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Spec {
    /// The table.
    pub relid: u32,
    /// Its schema (unquoted).
    pub schema: String,
    /// Its name (unquoted).
    pub table: String,
    /// Selected columns, in table order.
    pub columns: Vec<SpecColumn>,
    /// Key columns in key order: the primary key, or every column (by name) without one.
    pub key: Vec<SpecColumn>,
    /// `replica=full`: updates carry whole rows and `old_value`, deletes whole rows.
    pub replica_full: bool,
    /// `log=changes_only`: no initial rows, only `snapshot-end`.
    pub changes_only: bool,
    /// The analysed WHERE, deparsed (schema-qualified), for the snapshot query.
    pub where_sql: Option<String>,
    /// The analysed WHERE as a node string, for the decoder.
    pub where_node: Option<String>,
    /// Chunk size of the shape's log.
    pub chunk_bytes: u64,
}

impl Spec {
    /// `"schema"."table"`, quoted for SQL.
    pub fn qualified_table(&self) -> String {
        spi::quote_qualified_identifier(&self.schema, &self.table)
    }

    /// The query that produces the shape's rows (projected columns only).
    pub fn snapshot_query(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| spi::quote_identifier(&c.name)).collect();
        let mut sql = format!("SELECT {} FROM ONLY {}", cols.join(", "), self.qualified_table());
        if let Some(w) = &self.where_sql {
            sql.push_str(" WHERE ");
            sql.push_str(w);
        }
        sql
    }
}

/// The snapshot a shape's initial data was read under, as `pg_current_snapshot()` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Oldest transaction still running (64-bit, as text).
    pub xmin: String,
    /// First transaction not yet assigned.
    pub xmax: String,
    /// Transactions in progress.
    pub xip: Vec<String>,
}

impl SnapshotInfo {
    /// True when the 32-bit transaction `xid` had committed before the snapshot,
    /// i.e. its changes are already in the snapshot's rows.
    pub fn contains(&self, xid: u32) -> bool {
        let x32 = |s: &str| s.parse::<u64>().map(|v| v as u32).unwrap_or(0);
        let (xmin, xmax) = (x32(&self.xmin), x32(&self.xmax));
        // Modular comparison, as TransactionIdPrecedes: valid within 2^31 of each other.
        let precedes = |a: u32, b: u32| (a.wrapping_sub(b) as i32) < 0;
        if precedes(xid, xmin) {
            return true;
        }
        if !precedes(xid, xmax) {
            return false;
        }
        !self.xip.iter().any(|x| x32(x) == xid)
    }
}

/// Column list of the catalog, in the order the worker reads rows.
pub const SHAPE_COLUMNS: &str = "id, handle, spec, state, snapshot::text, invalid_reason";

/// A catalog row as workers load it.
#[derive(Debug, Clone)]
pub struct ShapeRow {
    /// Catalog id.
    pub id: i64,
    /// Handle (= log directory name).
    pub handle: String,
    /// Parsed spec.
    pub spec: Spec,
    /// `creating`, `ready` or `invalid`.
    pub state: String,
    /// Snapshot info once `ready`.
    pub snapshot: Option<SnapshotInfo>,
}

/// Reads every shape that is not invalid (worker start-up).
pub fn load_live_shapes() -> Vec<ShapeRow> {
    let sql = format!("SELECT {SHAPE_COLUMNS} FROM shapes.shape WHERE state <> 'invalid' ORDER BY id");
    Spi::connect(|client| {
        let table =
            client.select(&sql, None, &[]).unwrap_or_else(|e| error!("pg_shapes could not read its catalog: {e}"));
        let mut rows = Vec::new();
        for row in table {
            let id: i64 = row.get(1).ok().flatten().unwrap_or_default();
            let handle: String = row.get(2).ok().flatten().unwrap_or_default();
            let spec: String = row.get(3).ok().flatten().unwrap_or_default();
            let state: String = row.get(4).ok().flatten().unwrap_or_default();
            let snapshot: Option<String> = row.get(5).ok().flatten();
            match serde_json::from_str::<Spec>(&spec) {
                Ok(spec) => rows.push(ShapeRow {
                    id,
                    handle,
                    spec,
                    state,
                    snapshot: snapshot.and_then(|s| serde_json::from_str(&s).ok()),
                }),
                Err(e) => warning!("pg_shapes: shape {handle} has an unreadable spec ({e}); ignoring it"),
            }
        }
        rows
    })
}

/// Marks shapes invalid with a reason (worker start-up after a lost slot, failed snapshots).
pub fn invalidate(ids: &[i64], reason: &str) {
    if ids.is_empty() {
        return;
    }
    Spi::connect_mut(|client| {
        client
            .update(
                "UPDATE shapes.shape SET state = 'invalid', invalid_reason = $2, invalidated_at = now() WHERE id = ANY($1) AND state <> 'invalid'",
                None,
                &[ids.to_vec().into(), reason.into()],
            )
            .unwrap_or_else(|e| error!("pg_shapes could not invalidate shapes: {e}"));
    });
}

/// Deletes invalid shapes older than `pg_shapes.invalid_retention` (kept so
/// operators can see in `shapes.shapes` why they ended); the decoder removes
/// their logs when it decodes the deletion. Returns how many were deleted.
pub fn delete_expired_invalid_shapes() -> i64 {
    Spi::connect_mut(|client| {
        client
            .update(
                "WITH d AS (DELETE FROM shapes.shape WHERE state = 'invalid'
                              AND coalesce(invalidated_at, created_at) < now() - make_interval(secs => $1) RETURNING 1)
                 SELECT count(*) FROM d",
                None,
                &[(crate::guc::invalid_retention().as_secs() as f64).into()],
            )
            .ok()
            .and_then(|t| t.first().get_one::<i64>().ok().flatten())
            .unwrap_or(0)
    })
}

/// True when any invalid shape is past its retention (read-only check).
pub fn has_expired_invalid_shapes() -> bool {
    crate::sql::select_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM shapes.shape WHERE state = 'invalid'
                          AND coalesce(invalidated_at, created_at) < now() - make_interval(secs => $1))",
        &[(crate::guc::invalid_retention().as_secs() as f64).into()],
    )
    .unwrap_or(false)
}

/// True when the extension's catalog exists in the connected database.
pub fn extension_installed() -> bool {
    crate::sql::select_one::<bool>(
        "SELECT to_regclass('shapes.shape') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_shapes')",
        &[],
    )
    .unwrap_or(false)
}

/// OID of the catalog table, which the decoder watches in the WAL stream.
pub fn catalog_relid() -> Option<pg_sys::Oid> {
    crate::sql::select_one::<pg_sys::Oid>("SELECT to_regclass('shapes.shape')::oid", &[])
}

#[cfg(test)]
mod tests {
    use super::SnapshotInfo;

    #[test]
    fn snapshot_visibility_follows_xmin_xmax_and_the_in_progress_list() {
        let s = SnapshotInfo { xmin: "100".into(), xmax: "110".into(), xip: vec!["103".into(), "107".into()] };
        assert!(s.contains(99));
        assert!(s.contains(100) && s.contains(105));
        assert!(!s.contains(103) && !s.contains(107));
        assert!(!s.contains(110) && !s.contains(200));
    }
}
