//! Spill files for changes that arrive before a shape's snapshot is known.
//!
//! The worker starts routing to a shape as soon as it decodes the shape's
//! catalog row, but it can only tell which of those transactions the snapshot
//! already contains once the snapshotter publishes the snapshot's xmin, xmax
//! and in-progress list. Until then each candidate change is kept here, tagged
//! with its transaction id, in bounded memory. The file is not durable: after a
//! crash the worker re-decodes from a slot position before the shape existed.
//!
//! Entry layout (little-endian): `xid u32 | kind u16 | last u8 | 0 u8 | tx u64 | op u64 | len u32 | bytes`.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Cursor, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};
use crate::layout::RecordKind;

const ENTRY_HEADER: usize = 28;

/// Bytes a writer buffers before appending them to its file. Thousands of
/// shapes can be waiting for their snapshots at once (a burst of new shapes),
/// so each holds neither a file descriptor nor a large buffer: at most this
/// much memory, and the file is opened only to append a full buffer.
const SPILL_AT: usize = 64 * 1024;

/// One held-back change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// Top-level transaction id, for the snapshot visibility test.
    pub xid: u32,
    /// Commit LSN of the transaction.
    pub tx: u64,
    /// Position in the transaction.
    pub op: u64,
    /// What the change does to the shape.
    pub kind: RecordKind,
    /// Last change of its transaction for this shape.
    pub last: bool,
    /// The wire message.
    pub message: Vec<u8>,
}

/// Appends entries to a spill file.
pub struct PendingWriter {
    path: PathBuf,
    /// Entries not yet appended to the file.
    buf: Vec<u8>,
    /// Whether the file holds earlier entries.
    spilled: bool,
    entries: u64,
}

impl PendingWriter {
    /// Starts a spill file at `path`, removing a stale one left by a crash
    /// (the file itself is only created once the buffer first fills).
    pub fn create(path: &Path) -> Result<PendingWriter> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| LogError::io(parent, e))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io(path, e)),
        }
        Ok(PendingWriter { path: path.to_path_buf(), buf: Vec::new(), spilled: false, entries: 0 })
    }

    /// Appends one change whose message is the concatenation of `parts`.
    pub fn append(&mut self, xid: u32, tx: u64, op: u64, kind: RecordKind, last: bool, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len32 = u32::try_from(len).map_err(|_| LogError::MessageTooLarge { len })?;
        let mut h = [0u8; ENTRY_HEADER];
        h[0..4].copy_from_slice(&xid.to_le_bytes());
        h[4..6].copy_from_slice(&(kind as u16).to_le_bytes());
        h[6] = u8::from(last);
        h[8..16].copy_from_slice(&tx.to_le_bytes());
        h[16..24].copy_from_slice(&op.to_le_bytes());
        h[24..28].copy_from_slice(&len32.to_le_bytes());
        self.buf.extend_from_slice(&h);
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.entries += 1;
        if self.buf.len() >= SPILL_AT {
            self.spill()?;
        }
        Ok(())
    }

    /// Appends the buffer to the file and empties it.
    fn spill(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut f =
            OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| LogError::io(&self.path, e))?;
        f.write_all(&self.buf).map_err(|e| LogError::io(&self.path, e))?;
        self.spilled = true;
        self.buf.clear();
        if self.buf.capacity() > SPILL_AT * 2 {
            self.buf.shrink_to(SPILL_AT);
        }
        Ok(())
    }

    /// Entries written so far.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Finishes writing and returns a reader over everything written, in order.
    pub fn into_reader(mut self) -> Result<PendingReader> {
        let input: Box<dyn Read> = if self.spilled {
            self.spill()?;
            let f = File::open(&self.path).map_err(|e| LogError::io(&self.path, e))?;
            Box::new(BufReader::with_capacity(SPILL_AT, f))
        } else {
            Box::new(Cursor::new(std::mem::take(&mut self.buf)))
        };
        Ok(PendingReader { path: self.path.clone(), input })
    }

    /// Removes the spill file.
    pub fn discard(self) {
        if self.spilled {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reads a spill file back in write order.
pub struct PendingReader {
    path: PathBuf,
    /// The file, or the writer's buffer when nothing was spilled.
    input: Box<dyn Read>,
}

impl PendingReader {
    /// The next entry, or `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<PendingEntry>> {
        let mut h = [0u8; ENTRY_HEADER];
        match self.input.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(LogError::io(&self.path, e)),
        }
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let kind = RecordKind::from_u16(u16::from_le_bytes([h[4], h[5]])).ok_or_else(|| {
            LogError::io(&self.path, std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown record kind"))
        })?;
        let mut message = vec![0u8; u32_at(24) as usize];
        self.input.read_exact(&mut message).map_err(|e| LogError::io(&self.path, e))?;
        Ok(Some(PendingEntry { xid: u32_at(0), tx: u64_at(8), op: u64_at(16), kind, last: h[6] != 0, message }))
    }

    /// Removes the spill file.
    pub fn discard(self) {
        let path = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(path);
    }
}
