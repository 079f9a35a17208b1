//! Routing: which shapes a change of a table may belong to.
//!
//! Shapes whose WHERE has a `column = constant` (or `column IN (…)`) conjunct
//! are found through a hash index keyed by the column's text, so a change
//! costs the same with ten such shapes or a hundred thousand; only the other
//! shapes of the table are evaluated one by one.

use std::collections::HashMap;

use pgrx::pg_sys;

use super::row::RowImage;
use crate::pg::decoding::{attributes, Rel};
use crate::pg::expr::{EqualityKey, RowSlot};
use crate::pg::text::OutputFn;
use crate::pg::xact::MemoryContext;

/// Per-table routing state.
pub struct Table {
    /// Every shape of the table.
    pub shapes: Vec<i64>,
    /// Shapes without an equality key: candidates for every change.
    unindexed: Vec<i64>,
    /// attnum → column text → shapes.
    index: HashMap<i16, HashMap<Vec<u8>, Vec<i64>>>,
    /// The row layout the slot and output functions were built for.
    layout: Vec<(pg_sys::Oid, i16, bool)>,
    /// Virtual slot to evaluate WHERE clauses on.
    pub slot: Option<RowSlot>,
    /// Output function per attribute (None for dropped ones).
    pub outs: Vec<Option<OutputFn>>,
    /// Attribute is variable-length (may hold TOAST pointers).
    pub varlena: Vec<bool>,
    // Owns state cached by the output functions; declared last so it is dropped last.
    cxt: MemoryContext,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            shapes: Vec::new(),
            unindexed: Vec::new(),
            index: HashMap::new(),
            layout: Vec::new(),
            slot: None,
            outs: Vec::new(),
            varlena: Vec::new(),
            cxt: MemoryContext::long_lived(c"pg_shapes table"),
        }
    }
}

impl Table {
    /// Adds a shape, indexed under its equality key if it has one.
    pub fn add(&mut self, id: i64, key: Option<&EqualityKey>) {
        self.shapes.push(id);
        match key {
            Some(k) => {
                let by_value = self.index.entry(k.attnum).or_default();
                for v in &k.values {
                    by_value.entry(v.clone()).or_default().push(id);
                }
            }
            None => self.unindexed.push(id),
        }
    }

    /// Removes a shape.
    pub fn remove(&mut self, id: i64) {
        self.shapes.retain(|&s| s != id);
        self.unindexed.retain(|&s| s != id);
        for by_value in self.index.values_mut() {
            for ids in by_value.values_mut() {
                ids.retain(|&s| s != id);
            }
            by_value.retain(|_, ids| !ids.is_empty());
        }
        self.index.retain(|_, by_value| !by_value.is_empty());
    }

    /// Rebuilds the slot and output functions when the table's row layout changed
    /// (it is built lazily from the first change seen).
    pub fn ensure_layout(&mut self, rel: Rel) {
        let layout = attributes(rel.tupdesc());
        if self.slot.is_some() && layout == self.layout {
            return;
        }
        self.cxt = MemoryContext::long_lived(c"pg_shapes table");
        self.outs =
            layout.iter().map(|&(typ, _, dropped)| (!dropped).then(|| OutputFn::new(typ, self.cxt.raw()))).collect();
        self.varlena = layout.iter().map(|&(_, len, _)| len == -1).collect();
        self.slot = Some(RowSlot::for_relation(rel));
        self.layout = layout;
    }

    /// Collects the shapes a row may belong to: index hits plus unindexed shapes.
    pub fn candidates(&self, row: &mut RowImage, out: &mut Vec<i64>) {
        if !row.present {
            return;
        }
        out.extend_from_slice(&self.unindexed);
        for (&attnum, by_value) in &self.index {
            let i = attnum as usize - 1;
            if i >= row.values.len() {
                continue;
            }
            row.ensure(i, self.outs.get(i).and_then(Option::as_ref));
            if let Some(ids) = row.text(i).and_then(|t| by_value.get(t)) {
                out.extend_from_slice(ids);
            }
        }
    }
}
