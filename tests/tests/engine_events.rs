//! How the engine turns row changes into shape messages, and how it breaks
//! loudly: TRUNCATE, ALTER TABLE, DROP TABLE, deletion and failing WHEREs.

use std::time::{Duration, Instant};

use pg_shapes_tests::postgres::Client;
use pg_shapes_tests::serde_json::{json, Value};
use pg_shapes_tests::shape_log::{LogReader, LogState};
use pg_shapes_tests::shapes::{create_shape, materialize, storage_dir, wait_caught_up, wait_live, ShapeDef};
use pg_shapes_tests::TestCluster;

const WAIT: Duration = Duration::from_secs(30);

fn setup() -> (TestCluster, Client) {
    let cluster = TestCluster::start_default();
    cluster.psql(
        "CREATE TABLE items (id int PRIMARY KEY, owner int, title text, big text, n int);
         INSERT INTO items VALUES (1, 1, 'one', NULL, 1), (2, 2, 'two', NULL, 2);",
    );
    let client = cluster.client();
    (cluster, client)
}

/// Live messages of a shape (after its snapshot), once the decoder caught up.
fn live_messages(cluster: &TestCluster, client: &mut Client, handle: &str) -> Vec<Value> {
    wait_caught_up(client, WAIT);
    let log = materialize(&LogReader::open(&storage_dir(cluster).join(handle)).unwrap());
    log.messages.into_iter().skip(log.snapshot_rows + 1).collect()
}

fn live(cluster: &TestCluster, client: &mut Client, def: ShapeDef) -> String {
    let h = create_shape(client, &def).unwrap();
    wait_live(&storage_dir(cluster), &h, WAIT);
    h
}

fn wait_state(cluster: &TestCluster, handle: &str, want: LogState) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let dir = storage_dir(cluster).join(handle);
        match LogReader::open(&dir) {
            Ok(r) if r.status().state == want => return r.status().reason,
            Err(_) if want == LogState::Deleted && !dir.exists() => return String::new(),
            _ => {}
        }
        assert!(Instant::now() < deadline, "shape {handle} did not reach {}", want.as_str());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rows_moving_in_and_out_of_a_shape_become_inserts_and_deletes() {
    let (cluster, mut c) = setup();
    let h = live(&cluster, &mut c, ShapeDef::new("items", Some("owner = 1")));
    cluster.psql("UPDATE items SET owner = 1 WHERE id = 2"); // moves in
    cluster.psql("UPDATE items SET title = 'uno' WHERE id = 1"); // stays in
    cluster.psql("UPDATE items SET owner = 3 WHERE id = 1"); // moves out
    cluster.psql("UPDATE items SET n = 5 WHERE id = 1"); // outside: nothing
    let m = live_messages(&cluster, &mut c, &h);
    let ops: Vec<(&str, &Value)> =
        m.iter().map(|m| (m["headers"]["operation"].as_str().unwrap(), &m["value"])).collect();
    assert_eq!(
        ops,
        vec![
            ("insert", &json!({"id": "2", "owner": "1", "title": "two", "big": null, "n": "2"})),
            ("update", &json!({"id": "1", "title": "uno"})),
            ("delete", &json!({"id": "1"})),
        ]
    );
    assert!(m.iter().all(|m| m["headers"]["last"] == json!(true)), "each transaction had one change");
}

#[test]
fn replica_full_sends_whole_rows_and_old_values() {
    let (cluster, mut c) = setup();
    let h = live(&cluster, &mut c, ShapeDef::new("items", None).columns("id,title,n").full());
    cluster.psql("UPDATE items SET title = 'TWO', owner = 9 WHERE id = 2");
    cluster.psql("UPDATE items SET owner = 10 WHERE id = 2"); // no selected column changed: nothing
    cluster.psql("DELETE FROM items WHERE id = 1");
    let m = live_messages(&cluster, &mut c, &h);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0]["value"], json!({"id": "2", "title": "TWO", "n": "2"}));
    assert_eq!(m[0]["old_value"], json!({"title": "two"}));
    assert_eq!(m[1]["headers"]["operation"], "delete");
    assert_eq!(m[1]["value"], json!({"id": "1", "title": "one", "n": "1"}));
}

#[test]
fn a_key_change_is_a_delete_of_the_old_key_and_an_insert_of_the_new_one() {
    let (cluster, mut c) = setup();
    let h = live(&cluster, &mut c, ShapeDef::new("items", None).columns("id,title"));
    cluster.psql("UPDATE items SET id = 20, title = 'twenty' WHERE id = 2");
    let m = live_messages(&cluster, &mut c, &h);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["headers"]["operation"], "delete");
    assert_eq!(m[0]["key"], "\"public\".\"items\"/\"2\"");
    assert_eq!(m[0]["headers"]["key_change_to"], "\"public\".\"items\"/\"20\"");
    assert_eq!(m[1]["headers"]["operation"], "insert");
    assert_eq!(m[1]["headers"]["key_change_from"], "\"public\".\"items\"/\"2\"");
    assert_eq!(m[1]["value"], json!({"id": "20", "title": "twenty"}));
    let (a, b) = (m[0]["headers"]["op_position"].as_u64().unwrap(), m[1]["headers"]["op_position"].as_u64().unwrap());
    assert_eq!(b, a + 1, "the two halves have consecutive offsets");
    assert_eq!((m[0]["headers"]["last"].clone(), m[1]["headers"]["last"].clone()), (Value::Null, json!(true)));
}

#[test]
fn unchanged_toasted_values_stay_correct_through_updates() {
    let (cluster, mut c) = setup();
    // Incompressible and far above the TOAST threshold, so it is stored out of line.
    cluster.psql(
        "UPDATE items SET big = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 2000) g) WHERE id = 1",
    );
    let big: String = cluster.psql("SELECT big FROM items WHERE id = 1");
    let plain = live(&cluster, &mut c, ShapeDef::new("items", Some("big LIKE '%' || 'c4ca' || '%'")));
    let full = live(&cluster, &mut c, ShapeDef::new("items", None).full());
    cluster.psql("UPDATE items SET n = 42 WHERE id = 1");
    let m = live_messages(&cluster, &mut c, &plain);
    assert_eq!(m.len(), 1, "the WHERE on the TOASTed column still matches: {m:?}");
    assert_eq!(m[0]["value"], json!({"id": "1", "n": "42"}), "an unchanged TOASTed column is not sent as changed");
    let m = live_messages(&cluster, &mut c, &full);
    assert_eq!(m[0]["value"]["big"], json!(big), "replica=full carries the unchanged TOASTed value");
    assert_eq!(m[0]["old_value"], json!({"n": "1"}));
}

#[test]
fn equality_shapes_are_found_through_the_index_not_by_evaluating_each() {
    let (cluster, mut c) = setup();
    let handles: Vec<String> = (0..300)
        .map(|k| create_shape(&mut c, &ShapeDef::new("items", Some(&format!("owner = {k} AND n > 0")))).unwrap())
        .collect();
    let in_list = create_shape(&mut c, &ShapeDef::new("items", Some("owner IN (7, 8)"))).unwrap();
    for h in &handles {
        wait_live(&storage_dir(&cluster), h, WAIT);
    }
    wait_live(&storage_dir(&cluster), &in_list, WAIT);
    cluster.psql("INSERT INTO items VALUES (100, 7, 'seven', NULL, 1), (101, 7, 'filtered', NULL, 0)");
    wait_caught_up(&mut c, WAIT);
    for (k, h) in handles.iter().enumerate() {
        let n = live_messages(&cluster, &mut c, h).len();
        assert_eq!(n, usize::from(k == 7), "shape owner = {k} got {n} changes");
    }
    assert_eq!(live_messages(&cluster, &mut c, &in_list).len(), 2, "IN lists are indexed too");
}

#[test]
fn truncate_and_alter_table_invalidate_shapes_and_a_new_handle_replaces_them() {
    let (cluster, mut c) = setup();
    let h1 = live(&cluster, &mut c, ShapeDef::new("items", None));
    cluster.psql("TRUNCATE items");
    let reason = wait_state(&cluster, &h1, LogState::Invalidated);
    assert!(reason.contains("truncated"), "{reason}");
    let h2 = live(&cluster, &mut c, ShapeDef::new("items", None));
    assert_ne!(h1, h2, "a new shape, with a new handle");

    cluster.psql("ALTER TABLE items ADD COLUMN extra int");
    let reason = wait_state(&cluster, &h2, LogState::Invalidated);
    assert!(reason.contains("altered"), "{reason}");
    let state: String = cluster.psql(&format!("SELECT state FROM shapes.shape WHERE handle = '{h2}'"));
    assert_eq!(state, "invalid");
    let h3 = live(&cluster, &mut c, ShapeDef::new("items", None));
    assert!(h3 != h1 && h3 != h2);
}

#[test]
fn dropping_a_table_or_deleting_a_shape_removes_it_and_its_log() {
    let (cluster, mut c) = setup();
    cluster.psql("CREATE TABLE other (id int PRIMARY KEY)");
    let h_items = live(&cluster, &mut c, ShapeDef::new("items", None));
    let h_other = live(&cluster, &mut c, ShapeDef::new("other", None));
    cluster.psql("DROP TABLE other");
    wait_state(&cluster, &h_other, LogState::Deleted);
    assert_eq!(cluster.psql(&format!("SELECT count(*) FROM shapes.shape WHERE handle = '{h_other}'")), "0");
    let deadline = Instant::now() + WAIT;
    while storage_dir(&cluster).join(&h_other).exists() {
        assert!(Instant::now() < deadline, "log of a dropped table's shape was not removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cluster.psql(&format!("SELECT shapes.delete_shape('{h_items}')")), "t");
    wait_state(&cluster, &h_items, LogState::Deleted);
    assert_eq!(cluster.psql("SELECT shapes.delete_shape('no-such-handle')"), "f");
}

#[test]
fn a_where_that_fails_on_a_row_fails_the_shape_not_the_engine() {
    let (cluster, mut c) = setup();
    // Fails in the snapshot: a row already has n = 2.
    let broken = create_shape(&mut c, &ShapeDef::new("items", Some("10 / (n - 2) > 0"))).unwrap();
    let reason = wait_state(&cluster, &broken, LogState::Failed);
    assert_eq!(reason, "where: division by zero");
    // Fails later, in the live stream.
    let later = live(&cluster, &mut c, ShapeDef::new("items", Some("10 / (n - 7) > 0")));
    let healthy = live(&cluster, &mut c, ShapeDef::new("items", None));
    cluster.psql("INSERT INTO items VALUES (7, 1, 'boom', NULL, 7)");
    let reason = wait_state(&cluster, &later, LogState::Invalidated);
    assert!(reason.starts_with("where:") && reason.contains("division by zero"), "{reason}");
    cluster.psql("INSERT INTO items VALUES (8, 1, 'fine', NULL, 8)");
    assert_eq!(live_messages(&cluster, &mut c, &healthy).len(), 2, "other shapes keep going");
}

#[test]
fn the_slot_advances_only_past_durable_changes_and_lag_is_visible() {
    let (cluster, mut c) = setup();
    let h = live(&cluster, &mut c, ShapeDef::new("items", None));
    let before: i64 = cluster.psql("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'pg_shapes'").parse().unwrap();
    cluster.psql("INSERT INTO items SELECT g, 1, 'x', NULL, g FROM generate_series(10, 500) g");
    wait_caught_up(&mut c, WAIT);
    let deadline = Instant::now() + WAIT;
    loop {
        let after: i64 = cluster.psql("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'pg_shapes'").parse().unwrap();
        if after > before {
            break;
        }
        assert!(Instant::now() < deadline, "slot did not advance");
        std::thread::sleep(Duration::from_millis(50));
    }
    let row = cluster.psql(&format!("SELECT state, snapshot_rows, log_records > 491, last_lsn IS NOT NULL, lag_bytes < 1000000 FROM shapes.shapes WHERE handle = '{h}'"));
    assert_eq!(row, "live|2|t|t|t");
    // The durable count in the header follows the syncs.
    let r = LogReader::open(&storage_dir(&cluster).join(&h)).unwrap();
    let deadline = Instant::now() + WAIT;
    while r.status().durable_records < r.status().committed_records {
        assert!(Instant::now() < deadline, "log was never synced");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn invalid_shapes_and_their_logs_are_deleted_after_the_retention() {
    let cluster = TestCluster::start(pg_shapes_tests::ClusterOptions::new().conf("pg_shapes.invalid_retention = '1s'"));
    cluster.psql("CREATE TABLE items (id int PRIMARY KEY)");
    let mut c = cluster.client();
    let h = live(&cluster, &mut c, ShapeDef::new("items", None));
    cluster.psql("TRUNCATE items");
    wait_state(&cluster, &h, LogState::Invalidated);
    let deadline = Instant::now() + WAIT;
    while storage_dir(&cluster).join(&h).exists()
        || cluster.psql(&format!("SELECT count(*) FROM shapes.shape WHERE handle = '{h}'")) != "0"
    {
        assert!(Instant::now() < deadline, "invalid shape {h} was not cleaned up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn changes_only_shapes_start_with_an_empty_snapshot() {
    let (cluster, mut c) = setup();
    let mut def = ShapeDef::new("items", None);
    def.log_mode = "changes_only".into();
    let h = live(&cluster, &mut c, def);
    cluster.psql("INSERT INTO items VALUES (3, 3, 'three', NULL, 3)");
    wait_caught_up(&mut c, WAIT);
    let log = materialize(&LogReader::open(&storage_dir(&cluster).join(&h)).unwrap());
    assert_eq!((log.snapshot_rows, log.changes), (0, 1));
    assert_eq!(log.messages[0]["headers"]["control"], "snapshot-end");
}
