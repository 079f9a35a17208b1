//! Round-trip tests of writer, reader, recovery, chunking and the doorbell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::layout::{FLAG_CHUNK_START, FLAG_LAST_IN_TX, HEADER_BYTES, RECORD_BYTES};
use crate::pending::PendingWriter;
use crate::*;

/// A log directory path that does not exist yet, inside a temporary directory.
struct TestDir {
    _tmp: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl TestDir {
    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

fn test_dir() -> TestDir {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log");
    TestDir { _tmp: tmp, path }
}

fn msg(i: u64) -> Vec<u8> {
    format!(r#"{{"n":{i}}}"#).into_bytes()
}

fn body(view: &Arc<LogView>, from: u64, to: u64) -> String {
    String::from_utf8(view.messages_bytes(from, to).to_vec()).unwrap()
}

fn write_snapshot(dir: &std::path::Path, rows: u64, chunk_bytes: u64) -> LogWriter {
    let mut w = LogWriter::create(dir, 7, "h-1", chunk_bytes).unwrap();
    for i in 0..rows {
        w.append_snapshot_row(RecordKind::Insert, &[&msg(i)]).unwrap();
    }
    w.finish_snapshot(rows, &wire::snapshot_end(1, 2, &[])).unwrap();
    w
}

#[test]
fn readers_see_only_committed_transactions() {
    let dir = test_dir();
    let mut w = write_snapshot(dir.path(), 2, 1 << 20);
    let r = LogReader::open(dir.path()).unwrap();
    assert_eq!(r.current().unwrap().1.records, 3);

    w.append_change(100, 0, RecordKind::Insert, false, &[b"{\"a\":1}"]).unwrap();
    w.append_change(100, 2, RecordKind::Insert, true, &[b"{\"a\":", b"2}"]).unwrap();
    let (_, c) = r.current().unwrap();
    assert_eq!(c.records, 3, "uncommitted appends are invisible");
    w.commit(Some(100));
    let (view, c) = r.current().unwrap();
    assert_eq!(c.records, 5);
    assert_eq!(body(&view, 3, 5), r#"{"a":1},{"a":2}"#);
    assert_eq!(r.status().last_tx, 100);
    assert_eq!(r.status().change_records, 2);
}

#[test]
fn snapshot_offsets_are_chunk_numbers_and_live_starts_a_new_chunk() {
    let dir = test_dir();
    // Each message is 7-8 bytes plus a separator: a 20-byte chunk holds three rows.
    let mut w = write_snapshot(dir.path(), 7, 20);
    w.set_live(1);
    w.append_change(500, 0, RecordKind::Insert, true, &[&msg(99)]).unwrap();
    w.commit(Some(500));
    let r = LogReader::open(dir.path()).unwrap();
    let (view, c) = r.current().unwrap();
    let recs: Vec<Record> = (0..c.records).map(|i| view.record(i)).collect();
    let ops: Vec<(u64, u64)> = recs.iter().map(|r| (r.tx, r.op)).collect();
    assert_eq!(ops, vec![(0, 0), (0, 0), (0, 0), (0, 1), (0, 1), (0, 1), (0, 2), (0, 2), (500, 0)]);
    let starts: Vec<u64> = (0..c.records).filter(|&i| recs[i as usize].has(FLAG_CHUNK_START)).collect();
    assert_eq!(starts, vec![0, 3, 6, 8]);

    let mut chunks = ChunkIndex::default();
    chunks.update(&view, c.records);
    // A client at `-1` gets chunk 0, then asks again at `0_0` and gets chunk 1 …
    let first = view.find_after(LogOffset::BeforeAll, c.records);
    assert_eq!((first, chunks.chunk_end(first, c.records)), (0, 3));
    let next = view.find_after("0_0".parse().unwrap(), c.records);
    assert_eq!((next, chunks.chunk_end(next, c.records)), (3, 6));
    let last_snapshot = view.find_after("0_1".parse().unwrap(), c.records);
    assert_eq!((last_snapshot, chunks.chunk_end(last_snapshot, c.records)), (6, 8));
    let live = view.find_after("0_2".parse().unwrap(), c.records);
    assert_eq!(live, 8);
    assert_eq!(view.find_after("0_inf".parse().unwrap(), c.records), 8);
    assert_eq!(view.find_after("500_0".parse().unwrap(), c.records), 9);
    assert!(chunks.chunk_closed(6) && !chunks.chunk_closed(8));
}

#[test]
fn an_empty_snapshot_is_one_chunk_holding_snapshot_end() {
    let dir = test_dir();
    write_snapshot(dir.path(), 0, 1 << 20);
    let r = LogReader::open(dir.path()).unwrap();
    let (view, c) = r.current().unwrap();
    assert_eq!(c.records, 1);
    let rec = view.record(0);
    assert_eq!((rec.tx, rec.op, rec.has(FLAG_CHUNK_START)), (0, 0, true));
    assert_eq!(r.status().state, LogState::SnapshotDone);
    assert_eq!(r.status().snapshot_records, 1);
}

#[test]
fn the_reader_follows_the_files_as_they_grow() {
    let dir = test_dir();
    let mut w = write_snapshot(dir.path(), 0, 1 << 30);
    w.set_live(1);
    let r = LogReader::open(dir.path()).unwrap();
    let big = vec![b'x'; 10_000];
    for tx in 1..=300u64 {
        w.append_change(tx * 10, 0, RecordKind::Insert, true, &[b"\"", &big, b"\""]).unwrap();
        w.commit(Some(tx * 10));
    }
    let (view, c) = r.current().unwrap();
    assert_eq!(c.records, 301);
    assert_eq!(view.message(&view.record(300)).len(), 10_002);
    // The bytes of a whole range come back as one zero-copy slice.
    assert_eq!(view.messages_bytes(1, 301).len(), 300 * 10_002 + 299);
}

#[test]
fn rollback_discards_a_transaction_that_was_never_committed() {
    let dir = test_dir();
    let mut w = write_snapshot(dir.path(), 1, 1 << 20);
    w.append_change(10, 0, RecordKind::Insert, true, &[b"1"]).unwrap();
    w.rollback();
    w.append_change(20, 0, RecordKind::Insert, true, &[b"2"]).unwrap();
    w.commit(Some(20));
    let r = LogReader::open(dir.path()).unwrap();
    let (view, c) = r.current().unwrap();
    assert_eq!(body(&view, 0, c.records).split(',').last(), Some("2"));
    assert_eq!(view.record(2).tx, 20);
    assert!(view.record(2).has(FLAG_CHUNK_START), "the rolled-back record's chunk start is redone");
}

#[test]
fn reopening_keeps_committed_transactions_and_drops_a_torn_tail() {
    let dir = test_dir();
    {
        let mut w = write_snapshot(dir.path(), 3, 1 << 20);
        w.append_change(10, 0, RecordKind::Insert, false, &[b"a"]).unwrap();
        w.append_change(10, 2, RecordKind::Insert, true, &[b"b"]).unwrap();
        w.commit(Some(10));
        w.sync().unwrap();
        w.append_change(20, 0, RecordKind::Insert, false, &[b"c"]).unwrap();
        w.append_change(20, 2, RecordKind::Insert, true, &[b"d"]).unwrap();
        w.commit(Some(20));
        // Simulate an OS crash that lost the data page of the last record but kept
        // the header that published it: corrupt the bytes of "d".
        let last = LogReader::open(dir.path()).unwrap().current().unwrap().0.record(7);
        let data = std::fs::OpenOptions::new().write(true).open(dir.path().join("data")).unwrap();
        use std::os::unix::fs::FileExt;
        data.write_at(b"X", last.pos).unwrap();
    }
    let (w, rec) = LogWriter::open(dir.path()).unwrap();
    assert_eq!(rec, Recovery { dropped_records: 2, snapshot_damaged: false });
    assert_eq!(w.last_tx(), 10, "the half-verified transaction 20 is dropped whole");
    assert_eq!(w.committed_records(), 6);
}

#[test]
fn a_process_crash_without_sync_loses_nothing_that_was_committed() {
    let dir = test_dir();
    {
        let mut w = write_snapshot(dir.path(), 1, 1 << 20);
        w.append_change(10, 0, RecordKind::Insert, true, &[b"a"]).unwrap();
        w.commit(Some(10));
        w.append_change(20, 0, RecordKind::Insert, false, &[b"b"]).unwrap(); // never committed
                                                                             // dropped without sync: the page cache still holds everything
    }
    let (mut w, rec) = LogWriter::open(dir.path()).unwrap();
    assert_eq!(rec.dropped_records, 0);
    assert_eq!((w.committed_records(), w.last_tx()), (3, 10));
    w.append_change(30, 0, RecordKind::Insert, true, &[b"c"]).unwrap();
    w.commit(Some(30));
    let r = LogReader::open(dir.path()).unwrap();
    let (view, c) = r.current().unwrap();
    assert_eq!(body(&view, 2, c.records), "a,c");
    assert!(view.record(3).has(FLAG_LAST_IN_TX));
}

#[test]
fn damage_inside_the_snapshot_is_reported() {
    let dir = test_dir();
    {
        write_snapshot(dir.path(), 2, 1 << 20);
        let rec0 = LogReader::open(dir.path()).unwrap().current().unwrap().0.record(1);
        let data = std::fs::OpenOptions::new().write(true).open(dir.path().join("data")).unwrap();
        use std::os::unix::fs::FileExt;
        data.write_at(b"#", rec0.pos).unwrap();
    }
    let (_, rec) = LogWriter::open(dir.path()).unwrap();
    assert!(rec.snapshot_damaged);
}

#[test]
fn a_log_appears_only_once_its_header_is_written() {
    let dir = test_dir();
    let path = dir.path().to_path_buf();
    let w = LogWriter::create(&path, 9, "h-9", 100).unwrap();
    assert_eq!(w.dir(), path.as_path());
    let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["log".to_string()], "no staging directory is left behind");
    assert_eq!(LogReader::open(&path).unwrap().state(), LogState::Snapshotting);
}

#[test]
fn creating_a_log_twice_is_refused() {
    let dir = test_dir();
    LogWriter::create(dir.path(), 1, "h", 100).unwrap();
    assert!(matches!(LogWriter::create(dir.path(), 1, "h", 100), Err(LogError::AlreadyExists { .. })));
}

#[test]
fn a_file_that_is_not_a_log_is_refused_with_its_path() {
    let dir = test_dir();
    std::fs::create_dir(dir.path()).unwrap();
    std::fs::write(dir.path().join("index"), vec![0u8; HEADER_BYTES + RECORD_BYTES]).unwrap();
    std::fs::write(dir.path().join("data"), b"").unwrap();
    let err = LogReader::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("index"), "{err}");
}

#[test]
fn invalidation_is_visible_to_readers_with_its_reason() {
    let dir = test_dir();
    let _w = write_snapshot(dir.path(), 1, 1 << 20);
    let r = LogReader::open(dir.path()).unwrap();
    writer::mark_gone(dir.path(), LogState::Invalidated, "table public.items was truncated").unwrap();
    let s = r.status();
    assert_eq!(s.state, LogState::Invalidated);
    assert_eq!(s.reason, "table public.items was truncated");
    assert_eq!(s.handle, "h-1");
}

#[test]
fn the_first_terminal_state_sticks_but_deletion_wins() {
    let dir = test_dir();
    let _w = write_snapshot(dir.path(), 1, 1 << 20);
    writer::mark_gone(dir.path(), LogState::Failed, "where: division by zero").unwrap();
    writer::mark_gone(dir.path(), LogState::Invalidated, "the shape was invalidated").unwrap();
    let r = LogReader::open(dir.path()).unwrap();
    assert_eq!((r.status().state, r.status().reason.as_str()), (LogState::Failed, "where: division by zero"));
    writer::mark_gone(dir.path(), LogState::Deleted, "deleted").unwrap();
    assert_eq!(r.status().state, LogState::Deleted);
}

#[test]
fn the_doorbell_wakes_a_waiter_and_publishes_progress() {
    let dir = test_dir();
    let bell = Doorbell::open_rw(dir.path()).unwrap();
    let reader = Doorbell::open_ro(dir.path()).unwrap();
    let seen = reader.seq();
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        let now = reader.wait(seen, Duration::from_secs(10));
        (now, start.elapsed(), reader.complete_through())
    });
    std::thread::sleep(Duration::from_millis(50));
    bell.ring(4242);
    let (now, waited, through) = t.join().unwrap();
    assert_ne!(now, seen);
    assert!(waited < Duration::from_secs(5), "woken by the ring, not the timeout");
    assert_eq!(through, 4242);
    // Progress never moves backwards.
    bell.ring(10);
    assert_eq!(bell.complete_through(), 4242);
}

#[test]
fn the_doorbell_wait_times_out_without_a_ring() {
    let dir = test_dir();
    let _bell = Doorbell::open_rw(dir.path()).unwrap();
    let reader = Doorbell::open_ro(dir.path()).unwrap();
    let start = Instant::now();
    let seen = reader.seq();
    assert_eq!(reader.wait(seen, Duration::from_millis(30)), seen);
    assert!(start.elapsed() >= Duration::from_millis(25));
}

#[test]
fn pending_entries_come_back_in_order() {
    let dir = test_dir();
    let path = dir.path().join("pending/5.pending");
    let mut p = PendingWriter::create(&path).unwrap();
    p.append(77, 100, 0, RecordKind::Insert, false, &[b"ab", b"c"]).unwrap();
    p.append(78, 200, 2, RecordKind::Delete, true, &[b""]).unwrap();
    assert_eq!(p.len(), 2);
    let mut r = p.into_reader().unwrap();
    let a = r.next_entry().unwrap().unwrap();
    assert_eq!(
        (a.xid, a.tx, a.op, a.kind, a.last, a.message.as_slice()),
        (77, 100, 0, RecordKind::Insert, false, &b"abc"[..])
    );
    let b = r.next_entry().unwrap().unwrap();
    assert_eq!((b.xid, b.tx, b.kind, b.last), (78, 200, RecordKind::Delete, true));
    assert!(r.next_entry().unwrap().is_none());
    r.discard();
    assert!(!path.exists());
}

#[test]
fn pending_writers_spill_past_their_buffer_and_hold_no_file_descriptor() {
    let dir = test_dir();
    let open_fds = || std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let before = open_fds();
    let body = vec![b'x'; 1000];
    // Thousands of shapes may wait for snapshots at once: each writer must not
    // keep a descriptor open, or the worker runs out of them.
    let mut writers: Vec<PendingWriter> =
        (0..200).map(|i| PendingWriter::create(&dir.path().join(format!("pending/{i}.pending"))).unwrap()).collect();
    for (i, w) in writers.iter_mut().enumerate() {
        for op in 0..150u64 {
            w.append(i as u32, 1000 + op, op, RecordKind::Insert, op == 149, &[&body, &op.to_le_bytes()]).unwrap();
        }
    }
    assert!(dir.path().join("pending/0.pending").exists(), "150 KB of entries spill to the file");
    assert!(open_fds() <= before + 2, "pending writers hold file descriptors: {} before, {} after", before, open_fds());

    for (i, w) in writers.into_iter().enumerate() {
        let path = dir.path().join(format!("pending/{i}.pending"));
        let mut r = w.into_reader().unwrap();
        for op in 0..150u64 {
            let e = r.next_entry().unwrap().expect("every entry comes back");
            assert_eq!((e.xid, e.tx, e.op, e.last), (i as u32, 1000 + op, op, op == 149));
            assert_eq!(&e.message[..1000], &body[..]);
            assert_eq!(&e.message[1000..], &op.to_le_bytes());
        }
        assert!(r.next_entry().unwrap().is_none());
        r.discard();
        assert!(!path.exists());
    }
}

#[test]
fn pending_writer_that_never_spilled_reads_from_memory_and_leaves_no_file() {
    let dir = test_dir();
    let path = dir.path().join("pending/9.pending");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"stale entries of a crashed worker").unwrap();
    let mut p = PendingWriter::create(&path).unwrap();
    assert!(!path.exists(), "a stale spill file is removed");
    p.append(1, 10, 0, RecordKind::Update, true, &[b"{}"]).unwrap();
    assert!(!path.exists(), "a small backlog stays in memory");
    let mut r = p.into_reader().unwrap();
    assert_eq!(r.next_entry().unwrap().unwrap().message, b"{}");
    assert!(r.next_entry().unwrap().is_none());
}
