//! Byte layout of a shape log: the header page, the fixed-size index records,
//! and the state machine stored in the header. Everything here is `repr(C)`
//! little-endian data read through atomics, so the layout is the contract.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// First eight bytes of every index file.
pub const MAGIC: [u8; 8] = *b"PGSHLOG\0";
/// Bumped whenever the layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the header page at the start of the index file.
pub const HEADER_BYTES: usize = 4096;
/// Size of one index record.
pub const RECORD_BYTES: usize = 32;
/// Byte written after every message in the data file, so that a run of
/// records is a valid JSON array body once wrapped in `[` and `]`.
pub const SEPARATOR: u8 = b',';
/// Longest handle stored in the header.
pub const MAX_HANDLE_BYTES: usize = 120;
/// Longest invalidation reason stored in the header.
pub const MAX_REASON_BYTES: usize = 1024;

// Header field offsets. All 8-byte fields are 8-aligned (the map is page aligned).
pub(crate) const H_MAGIC: usize = 0;
pub(crate) const H_VERSION: usize = 8;
pub(crate) const H_RECORD_BYTES: usize = 12;
pub(crate) const H_CREATED_MS: usize = 16;
pub(crate) const H_CHUNK_BYTES: usize = 24;
pub(crate) const H_COMMITTED_RECORDS: usize = 32;
pub(crate) const H_COMMITTED_DATA: usize = 40;
pub(crate) const H_LAST_TX: usize = 48;
pub(crate) const H_STATE: usize = 56;
pub(crate) const H_SNAPSHOT_ROWS: usize = 64;
pub(crate) const H_SNAPSHOT_RECORDS: usize = 72;
pub(crate) const H_LIVE_FROM_LSN: usize = 80;
pub(crate) const H_DURABLE_RECORDS: usize = 88;
pub(crate) const H_CHANGE_RECORDS: usize = 96;
pub(crate) const H_SHAPE_ID: usize = 104;
pub(crate) const H_HANDLE_LEN: usize = 112;
pub(crate) const H_HANDLE: usize = 128;
pub(crate) const H_REASON_LEN: usize = 256;
pub(crate) const H_REASON: usize = 264;
const _: () = assert!(H_HANDLE + MAX_HANDLE_BYTES <= H_REASON_LEN);
const _: () = assert!(H_REASON + MAX_REASON_BYTES <= HEADER_BYTES);

/// Record flag: this record starts a chunk; non-live responses end just before one.
pub const FLAG_CHUNK_START: u16 = 1;
/// Record flag: the last change of its transaction for this shape.
pub const FLAG_LAST_IN_TX: u16 = 2;
/// Record flag: part of the initial snapshot (`tx == 0`).
pub const FLAG_SNAPSHOT: u16 = 4;
/// Record flag: a control message (e.g. `snapshot-end`), not a row change.
pub const FLAG_CONTROL: u16 = 8;

/// What a record holds; informational for readers and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum RecordKind {
    /// Row entering the shape.
    Insert = 1,
    /// Row changing inside the shape.
    Update = 2,
    /// Row leaving the shape.
    Delete = 3,
    /// The `snapshot-end` control message closing the initial snapshot.
    SnapshotEnd = 10,
}

impl RecordKind {
    /// Decodes the on-disk value; unknown values come from a newer writer.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => RecordKind::Insert,
            2 => RecordKind::Update,
            3 => RecordKind::Delete,
            10 => RecordKind::SnapshotEnd,
            _ => return None,
        })
    }
}

/// Lifecycle of a log, stored in the header so that every process agrees on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LogState {
    /// The snapshotter is writing the initial snapshot; complete chunks may be served.
    Snapshotting = 0,
    /// The snapshot is complete; the worker has not yet taken the log over, so
    /// nothing may be reported up to date beyond the snapshot.
    SnapshotDone = 1,
    /// The worker appends every committed change; the log is current up to the
    /// doorbell's `complete_through` LSN.
    Live = 2,
    /// The shape can no longer be kept correct (TRUNCATE, ALTER TABLE, lost slot, …);
    /// clients must refetch under a new handle.
    Invalidated = 3,
    /// The snapshot could not be built; the reason explains why.
    Failed = 4,
    /// The shape was deleted; its files are about to disappear.
    Deleted = 5,
}

impl LogState {
    /// Decodes the on-disk value; unknown values are treated as invalid.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => LogState::Snapshotting,
            1 => LogState::SnapshotDone,
            2 => LogState::Live,
            4 => LogState::Failed,
            5 => LogState::Deleted,
            _ => LogState::Invalidated,
        }
    }

    /// True when clients holding this handle must start again.
    pub fn is_gone(self) -> bool {
        matches!(self, LogState::Invalidated | LogState::Failed | LogState::Deleted)
    }

    /// Short name shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            LogState::Snapshotting => "snapshotting",
            LogState::SnapshotDone => "snapshot_done",
            LogState::Live => "live",
            LogState::Invalidated => "invalidated",
            LogState::Failed => "failed",
            LogState::Deleted => "deleted",
        }
    }
}

/// One index record: where a message lives in the data file and its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Transaction part of the offset (commit LSN; 0 in the snapshot).
    pub tx: u64,
    /// Op part of the offset (position in the transaction; chunk number in the snapshot).
    pub op: u64,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// A `RecordKind` value.
    pub kind: u16,
    /// Byte position of the message in the data file.
    pub pos: u64,
    /// Message length, without the separator.
    pub len: u32,
    /// CRC-32 of the message bytes, used to find torn tails after a crash.
    pub crc: u32,
}

// Record layout (little-endian):
//   0 tx u64 | 8 op u64 | 16 pos:40 kind:8 flags:16 (one u64) | 24 len u32 | 28 crc u32
// `op` needs all 64 bits (the snapshot end is `inf`), so kind and flags share a word
// with `pos`; 40 bits of position allow a 1 TiB data file.
const POS_BITS: u32 = 40;
const POS_MASK: u64 = (1 << POS_BITS) - 1;
/// Largest data file a log may reach (1 TiB), bounded by the packed record.
pub const MAX_DATA_BYTES: u64 = POS_MASK;

impl Record {
    /// Encodes the record into its 32 on-disk bytes.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        debug_assert!(self.pos <= POS_MASK && self.kind <= 0xff);
        let mut b = [0u8; RECORD_BYTES];
        b[0..8].copy_from_slice(&self.tx.to_le_bytes());
        b[8..16].copy_from_slice(&self.op.to_le_bytes());
        let packed = self.pos | (u64::from(self.kind & 0xff) << POS_BITS) | (u64::from(self.flags) << 48);
        b[16..24].copy_from_slice(&packed.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..32].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Decodes a record from its 32 on-disk bytes.
    pub fn decode(b: &[u8]) -> Record {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let packed = u64_at(16);
        Record {
            tx: u64_at(0),
            op: u64_at(8),
            pos: packed & POS_MASK,
            kind: ((packed >> POS_BITS) & 0xff) as u16,
            flags: (packed >> 48) as u16,
            len: u32_at(24),
            crc: u32_at(28),
        }
    }

    /// Byte just past the message and its separator.
    pub fn end(&self) -> u64 {
        self.pos + u64::from(self.len) + 1
    }

    /// True if the flag bit is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// Typed access to the header page of a mapped index file.
///
/// The header lives in shared memory (a `MAP_SHARED` file mapping), so every
/// mutable field is an atomic: the writer publishes with `Release` stores and
/// readers observe with `Acquire` loads.
#[derive(Clone, Copy)]
pub(crate) struct Header {
    base: *const u8,
}

// SAFETY: the header only hands out atomics and reads of immutable fields.
unsafe impl Send for Header {}
unsafe impl Sync for Header {}

impl Header {
    /// Wraps the first page of a mapping.
    ///
    /// # Safety
    /// `base` must point to at least `HEADER_BYTES` mapped, 8-aligned bytes that
    /// stay mapped for as long as the returned value is used.
    pub(crate) unsafe fn new(base: *const u8) -> Header {
        debug_assert_eq!(base as usize % 8, 0);
        Header { base }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: offsets are constants inside the header page, 8-aligned (asserted in tests),
        // and the page outlives `self` per `Header::new`'s contract.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as for `u64_at`, 4-aligned.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    pub(crate) fn bytes(&self, off: usize, len: usize) -> &[u8] {
        // SAFETY: callers pass ranges inside the header page.
        unsafe { std::slice::from_raw_parts(self.base.add(off), len) }
    }

    pub(crate) fn magic_ok(&self) -> bool {
        self.bytes(H_MAGIC, 8) == MAGIC
            && self.u32_at(H_VERSION).load(Ordering::Relaxed) == FORMAT_VERSION
            && self.u32_at(H_RECORD_BYTES).load(Ordering::Relaxed) as usize == RECORD_BYTES
    }

    pub(crate) fn committed_records(&self) -> &AtomicU64 {
        self.u64_at(H_COMMITTED_RECORDS)
    }
    pub(crate) fn committed_data(&self) -> &AtomicU64 {
        self.u64_at(H_COMMITTED_DATA)
    }
    pub(crate) fn last_tx(&self) -> &AtomicU64 {
        self.u64_at(H_LAST_TX)
    }
    pub(crate) fn state(&self) -> &AtomicU32 {
        self.u32_at(H_STATE)
    }
    pub(crate) fn snapshot_rows(&self) -> &AtomicU64 {
        self.u64_at(H_SNAPSHOT_ROWS)
    }
    pub(crate) fn snapshot_records(&self) -> &AtomicU64 {
        self.u64_at(H_SNAPSHOT_RECORDS)
    }
    pub(crate) fn live_from_lsn(&self) -> &AtomicU64 {
        self.u64_at(H_LIVE_FROM_LSN)
    }
    pub(crate) fn durable_records(&self) -> &AtomicU64 {
        self.u64_at(H_DURABLE_RECORDS)
    }
    pub(crate) fn change_records(&self) -> &AtomicU64 {
        self.u64_at(H_CHANGE_RECORDS)
    }
    pub(crate) fn chunk_bytes(&self) -> u64 {
        self.u64_at(H_CHUNK_BYTES).load(Ordering::Relaxed)
    }
    pub(crate) fn created_ms(&self) -> u64 {
        self.u64_at(H_CREATED_MS).load(Ordering::Relaxed)
    }
    pub(crate) fn shape_id(&self) -> u64 {
        self.u64_at(H_SHAPE_ID).load(Ordering::Relaxed)
    }
    pub(crate) fn handle(&self) -> String {
        let len = (self.u32_at(H_HANDLE_LEN).load(Ordering::Relaxed) as usize).min(MAX_HANDLE_BYTES);
        String::from_utf8_lossy(self.bytes(H_HANDLE, len)).into_owned()
    }
    pub(crate) fn reason(&self) -> String {
        let len = (self.u32_at(H_REASON_LEN).load(Ordering::Acquire) as usize).min(MAX_REASON_BYTES);
        String::from_utf8_lossy(self.bytes(H_REASON, len)).into_owned()
    }

    /// Writes the immutable identity fields of a fresh header.
    ///
    /// # Safety
    /// The page must be writable and not yet visible to readers.
    pub(crate) unsafe fn init(&self, shape_id: u64, handle: &str, chunk_bytes: u64, created_ms: u64) {
        let p = self.base as *mut u8;
        // SAFETY: writes stay inside the header page, which the caller owns exclusively.
        unsafe {
            std::ptr::write_bytes(p, 0, HEADER_BYTES);
            std::ptr::copy_nonoverlapping(MAGIC.as_ptr(), p.add(H_MAGIC), 8);
            let h = handle.as_bytes();
            let n = h.len().min(MAX_HANDLE_BYTES);
            std::ptr::copy_nonoverlapping(h.as_ptr(), p.add(H_HANDLE), n);
            self.u32_at(H_HANDLE_LEN).store(n as u32, Ordering::Relaxed);
        }
        self.u32_at(H_VERSION).store(FORMAT_VERSION, Ordering::Relaxed);
        self.u32_at(H_RECORD_BYTES).store(RECORD_BYTES as u32, Ordering::Relaxed);
        self.u64_at(H_CREATED_MS).store(created_ms, Ordering::Relaxed);
        self.u64_at(H_CHUNK_BYTES).store(chunk_bytes, Ordering::Relaxed);
        self.u64_at(H_SHAPE_ID).store(shape_id, Ordering::Relaxed);
    }

    /// Stores a state change with its reason; the reason is written first so a
    /// reader that sees the new state also sees why.
    ///
    /// # Safety
    /// Only the process that owns writing to this log may call it.
    pub(crate) unsafe fn set_state(&self, state: LogState, reason: &str) {
        if !reason.is_empty() {
            let r = truncate_utf8(reason, MAX_REASON_BYTES);
            // SAFETY: inside the header page; the owner is the only writer.
            unsafe {
                std::ptr::copy_nonoverlapping(r.as_ptr(), (self.base as *mut u8).add(H_REASON), r.len());
            }
            self.u32_at(H_REASON_LEN).store(r.len() as u32, Ordering::Release);
        }
        self.u32_at(H_STATE).store(state as u32, Ordering::Release);
    }
}

/// Cuts a string to at most `max` bytes without splitting a character.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_including_flags_kind_and_infinite_op() {
        let r = Record {
            tx: 0x0123_4567_89ab_cdef,
            op: u64::MAX,
            flags: FLAG_CHUNK_START | FLAG_LAST_IN_TX | FLAG_CONTROL,
            kind: RecordKind::SnapshotEnd as u16,
            pos: MAX_DATA_BYTES,
            len: 0xdead_beef,
            crc: 0x1234_5678,
        };
        assert_eq!(Record::decode(&r.encode()), r);
    }

    #[test]
    fn header_fields_are_aligned_for_atomics() {
        for off in [
            H_CREATED_MS,
            H_CHUNK_BYTES,
            H_COMMITTED_RECORDS,
            H_COMMITTED_DATA,
            H_LAST_TX,
            H_SNAPSHOT_ROWS,
            H_SNAPSHOT_RECORDS,
            H_LIVE_FROM_LSN,
            H_DURABLE_RECORDS,
            H_CHANGE_RECORDS,
            H_SHAPE_ID,
        ] {
            assert_eq!(off % 8, 0, "offset {off}");
        }
        for off in [H_VERSION, H_RECORD_BYTES, H_STATE, H_HANDLE_LEN, H_REASON_LEN] {
            assert_eq!(off % 4, 0, "offset {off}");
        }
    }

    #[test]
    fn truncation_never_splits_a_character() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }
}
