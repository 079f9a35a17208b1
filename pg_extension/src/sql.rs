//! Read-only SQL helpers.
//!
//! pgrx's `Spi::get_one`/`Spi::run` mark the transaction as writing (they
//! assign a transaction id), which costs a commit record per call and makes
//! `pg_create_logical_replication_slot` refuse to run. Reads go through these
//! instead; only statements that really write use `client.update`.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum};

/// First column of the first row, if any.
pub fn select_one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Option<T> {
    Spi::connect(|c| c.select(sql, Some(1), args).ok().and_then(|t| t.first().get_one::<T>().ok().flatten()))
}

/// First two columns of the first row, if any.
pub fn select_two<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> Option<(Option<A>, Option<B>)> {
    Spi::connect(|c| {
        let t = c.select(sql, Some(1), args).ok()?;
        if t.is_empty() {
            return None;
        }
        t.first().get_two::<A, B>().ok()
    })
}
