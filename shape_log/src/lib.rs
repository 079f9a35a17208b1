//! `shape_log` is the single definition of the bytes pg_shapes keeps on disk.
//!
//! The extension's background workers write shape logs; the sidecar reads
//! them and slices their bytes straight onto HTTP responses. Neither side
//! re-implements the other's half: both link this crate.
//!
//! # Storage directory
//!
//! ```text
//! <storage_dir>/doorbell             one page: futex word + progress (see `doorbell`)
//! <storage_dir>/<handle>/index       header page + one 32-byte record per message
//! <storage_dir>/<handle>/data        message bytes, each followed by ','
//! <storage_dir>/pending/<id>.pending changes held back until the snapshot is known
//! ```
//!
//! # `index` file
//!
//! A 4096-byte header page, then fixed-size records. Header (little-endian):
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | `[u8; 8]` | magic `PGSHLOG\0` |
//! | 8 | u32 | format version (1) |
//! | 12 | u32 | record size (32) |
//! | 16 | u64 | created, Unix ms |
//! | 24 | u64 | chunk size in bytes |
//! | 32 | u64 | **committed records** — the publication point, stored with release ordering last |
//! | 40 | u64 | committed data bytes |
//! | 48 | u64 | commit LSN of the last live transaction |
//! | 56 | u32 | state ([`LogState`]) |
//! | 64 | u64 | rows in the snapshot |
//! | 72 | u64 | records in the snapshot, `snapshot-end` included (0 until complete) |
//! | 80 | u64 | LSN from which the worker took the log over |
//! | 88 | u64 | records known durable (recovery verifies only past this) |
//! | 96 | u64 | live change records |
//! | 104 | u64 | shape id |
//! | 112 | u32 | handle length, handle bytes at 128 (≤ 120) |
//! | 256 | u32 | reason length, reason bytes at 264 (≤ 1024) |
//!
//! Record: `tx u64 | op u64 | pos:40 kind:8 flags:16 | len u32 | crc32 u32`, where
//! `(tx, op)` is the record's offset (`"<tx>_<op>"` on the wire), `pos`/`len`
//! locate the message in `data`, and flags mark chunk starts, the last change of
//! a transaction, snapshot rows and control messages.
//!
//! # Offsets
//!
//! Snapshot records have `tx = 0` and `op` = their chunk number, so the offsets a
//! client can hold inside the snapshot are `0_0`, `0_1`, … (the ends of chunks),
//! as in Electric. Live records have `tx` = the commit LSN and `op` = the
//! change's position in the transaction (even numbers; a key change uses `n` for
//! its delete and `n + 1` for its insert).
//!
//! # Publication and durability
//!
//! The writer appends message bytes and records past the committed extent, then
//! publishes a whole transaction by storing the data length and finally the
//! record count with release ordering. Readers load the record count with
//! acquire ordering and never read past it. `sync` msyncs data, records and the
//! header, then advances the durable count. After a crash, [`LogWriter::open`]
//! checks CRCs from the durable count on and cuts the log back to the last whole
//! transaction that verifies ("torn tails are detected and dropped").
//!
//! # Chunks
//!
//! The writer flags a record as a chunk start when the data written since the
//! previous chunk start reaches the log's chunk size, and always at the first
//! live record after the snapshot. Non-live responses end just before a chunk
//! start, so the same URL always yields the same bytes.

pub mod doorbell;
pub mod error;
pub mod layout;
pub mod offset;
pub mod pending;
pub mod reader;
pub mod wire;
pub mod writer;

pub use doorbell::Doorbell;
pub use error::{LogError, Result};
pub use layout::{LogState, Record, RecordKind};
pub use offset::{LogOffset, ParseOffsetError};
pub use reader::{ChunkIndex, Committed, LogReader, LogStatus, LogView};
pub use writer::{LogWriter, Recovery, SyncPoint};

#[cfg(test)]
mod tests;
