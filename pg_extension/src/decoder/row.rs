//! One decoded row image (old or new) and the text of its columns, computed
//! at most once per change however many shapes look at it.

use pgrx::pg_sys;

use crate::pg::decoding::Tuple;
use crate::pg::text::OutputFn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    Unset,
    Null,
    At(usize, usize),
}

/// A deformed row plus lazily computed column texts.
#[derive(Default)]
pub struct RowImage {
    /// Whether this image exists for the current change.
    pub present: bool,
    /// Deformed values (attribute index = attnum - 1).
    pub values: Vec<pg_sys::Datum>,
    /// Null flags.
    pub nulls: Vec<bool>,
    /// Values that are unchanged TOAST pointers the decoder could not resolve.
    pub unknown: Vec<bool>,
    texts: Vec<Text>,
    buf: Vec<u8>,
}

impl RowImage {
    /// Loads a tuple (or marks the image absent).
    pub fn load(&mut self, tuple: Option<Tuple>, tupdesc: pg_sys::TupleDesc) {
        self.buf.clear();
        match tuple {
            None => {
                self.present = false;
                self.values.clear();
                self.nulls.clear();
                self.unknown.clear();
                self.texts.clear();
            }
            Some(t) => {
                self.present = true;
                t.deform(tupdesc, &mut self.values, &mut self.nulls);
                let n = self.values.len();
                self.unknown.clear();
                self.unknown.resize(n, false);
                self.texts.clear();
                self.texts.resize(n, Text::Unset);
            }
        }
    }

    /// Makes sure the text of attribute `i` is computed.
    pub fn ensure(&mut self, i: usize, out: Option<&OutputFn>) {
        if self.texts[i] != Text::Unset {
            return;
        }
        self.texts[i] = match out {
            Some(out) if !self.nulls[i] => {
                let start = self.buf.len();
                out.append(self.values[i], &mut self.buf);
                Text::At(start, self.buf.len())
            }
            _ => Text::Null,
        };
    }

    /// The text of attribute `i` (`None` for NULL); call [`ensure`](Self::ensure) first.
    pub fn text(&self, i: usize) -> Option<&[u8]> {
        match self.texts[i] {
            Text::At(s, e) => Some(&self.buf[s..e]),
            Text::Null => None,
            Text::Unset => panic!("column text requested before it was computed"),
        }
    }
}
