//! The model test of the engine (DESIGN.md §3): concurrent writers run random
//! transactions (inserts, updates that move rows in and out of shapes, key
//! changes, deletes, rollbacks) while shapes with varied WHERE clauses are
//! created; at the end every shape's snapshot + log, applied like a client
//! applies it, equals the SQL query. A second run kills the decoder and
//! restarts Postgres in immediate mode half-way: nothing may be lost or
//! applied twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_shapes_tests::postgres::{Client, NoTls};
use pg_shapes_tests::rng::Rng;
use pg_shapes_tests::shapes::{
    assert_same_rows, create_shape, expected_rows, materialize, storage_dir, wait_caught_up, wait_live, ShapeDef,
};
use pg_shapes_tests::{StopMode, TestCluster};

const COLUMNS: &[&str] = &["id", "owner", "title", "status", "priority", "done", "note", "tags"];
const IDS: u64 = 300;
const WRITERS: u64 = 4;
const TXNS_PER_WRITER: u64 = 250;
const WORDS: &[&str] = &["apple", "banana", "Bob", "cab", "avocado", "zebra", "Abba", "robot", "bee", "date"];

fn shape_defs() -> Vec<ShapeDef> {
    vec![
        ShapeDef::new("todo", Some("owner = 3")),
        ShapeDef::new("todo", Some("owner = $1")).params(&["1"]),
        ShapeDef::new("todo", Some("priority BETWEEN 2 AND 5")),
        ShapeDef::new("todo", Some("owner IN (0, 2, 4)")),
        ShapeDef::new("todo", Some("title LIKE 'a%'")),
        ShapeDef::new("todo", Some("title ILIKE '%B%'")),
        ShapeDef::new("todo", Some("note IS NULL")),
        ShapeDef::new("todo", Some("done OR priority > 7")),
        ShapeDef::new("todo", Some("NOT done AND owner <> 2")),
        ShapeDef::new("todo", Some("priority::text = '3'")),
        ShapeDef::new("todo", Some("status = 'doing'")),
        ShapeDef::new("todo", Some("status > 'open' AND owner = 4")),
        ShapeDef::new("todo", None).columns("id,owner,status"),
        ShapeDef::new("todo", Some("owner = 1 AND priority IS NOT NULL")).full(),
        ShapeDef::new("todo", Some("tags @> ARRAY['x']")),
        ShapeDef::new("todo", Some("coalesce(note, '') ILIKE $1")).params(&["%z%"]).full(),
    ]
}

fn setup(cluster: &TestCluster) {
    cluster.psql(
        "CREATE TYPE status AS ENUM ('open', 'doing', 'done');
         CREATE TABLE todo (
             id int PRIMARY KEY,
             owner int NOT NULL,
             title text NOT NULL,
             status status NOT NULL DEFAULT 'open',
             priority int,
             done bool NOT NULL DEFAULT false,
             note text,
             tags text[]
         );
         INSERT INTO todo (id, owner, title, priority, note)
         SELECT g, g % 5, 'item ' || g, g % 10, CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END
           FROM generate_series(1, 150) g;",
    );
}

fn connect(conn: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Client::connect(conn, NoTls) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("cannot reconnect: {e}"),
        }
    }
}

fn random_statement(rng: &mut Rng) -> String {
    let id = 1 + rng.below(IDS);
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let title = format!("{} {}", rng.pick(WORDS), rng.pick(WORDS));
    let status = lit(*rng.pick(&["open", "doing", "done"]));
    let priority = if rng.chance(0.15) { "NULL".to_string() } else { rng.below(10).to_string() };
    let note = if rng.chance(0.3) { "NULL".to_string() } else { lit(*rng.pick(&["zz top", "buzz", "plain", "Zed"])) };
    let tags = *rng.pick(&["NULL", "ARRAY['x']", "ARRAY['y','x']", "ARRAY['z']", "'{}'"]);
    match rng.below(10) {
        0..=3 => format!(
            "INSERT INTO todo VALUES ({id}, {}, {}, {status}, {priority}, {}, {note}, {tags}) ON CONFLICT (id) DO NOTHING",
            rng.below(5),
            lit(&title),
            rng.chance(0.3)
        ),
        4..=7 => {
            let mut sets = Vec::new();
            if rng.chance(0.5) {
                sets.push(format!("owner = {}", rng.below(5)));
            }
            if rng.chance(0.4) {
                sets.push(format!("title = {}", lit(&title)));
            }
            if rng.chance(0.3) {
                sets.push(format!("status = {status}"));
            }
            if rng.chance(0.4) {
                sets.push(format!("priority = {priority}"));
            }
            if rng.chance(0.3) {
                sets.push("done = NOT done".into());
            }
            if rng.chance(0.3) {
                sets.push(format!("note = {note}"));
            }
            if rng.chance(0.2) {
                sets.push(format!("tags = {tags}"));
            }
            if sets.is_empty() {
                sets.push("priority = coalesce(priority, 0) + 1".into());
            }
            format!("UPDATE todo SET {} WHERE id = {id}", sets.join(", "))
        }
        8 => {
            // A key change: a delete of the old key and an insert of the new one on the wire.
            let new_id = 1 + rng.below(IDS);
            format!("UPDATE todo SET id = {new_id} WHERE id = {id} AND NOT EXISTS (SELECT 1 FROM todo WHERE id = {new_id})")
        }
        _ => format!("DELETE FROM todo WHERE id = {id}"),
    }
}

/// Runs random transactions until `txns` are done; reconnects through restarts.
fn writer(conn: String, seed: u64, txns: u64, committed: Arc<AtomicU64>) {
    let mut rng = Rng::new(seed);
    let mut client = connect(&conn);
    let mut done = 0;
    while done < txns {
        let n = 1 + rng.below(4);
        let stmts: Vec<String> = (0..n).map(|_| random_statement(&mut rng)).collect();
        let rollback = rng.chance(0.1);
        let mut run = || -> Result<(), pg_shapes_tests::postgres::Error> {
            let mut t = client.transaction()?;
            for s in &stmts {
                t.batch_execute(s)?;
            }
            if rollback {
                t.rollback()
            } else {
                t.commit()
            }
        };
        match run() {
            Ok(()) => {
                done += 1;
                if !rollback {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) if client.is_closed() || e.as_db_error().is_none() => {
                // The server went away (immediate restart): reconnect and go on.
                std::thread::sleep(Duration::from_millis(50));
                client = connect(&conn);
            }
            // Deadlocks and key collisions between writers roll the transaction back.
            Err(_) => done += 1,
        }
    }
}

fn run_model(crash: bool) {
    let seed = Rng::seed_from_env();
    eprintln!("model test seed: {seed} (MODEL_SEED={seed} replays the writers)");
    let cluster = TestCluster::start_default();
    setup(&cluster);
    let conn = cluster.conn_string();
    let committed = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (conn, committed) = (conn.clone(), Arc::clone(&committed));
            std::thread::spawn(move || writer(conn, seed.wrapping_add(w * 7919), TXNS_PER_WRITER, committed))
        })
        .collect();

    let defs = shape_defs();
    let mut handles = Vec::new();
    let mut client = connect(&conn);
    for (i, def) in defs.iter().enumerate() {
        // Shapes appear while the writers run.
        std::thread::sleep(Duration::from_millis(60));
        if crash && i == defs.len() / 3 {
            let killed: i64 = client
                .query_one("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'pg_shapes decoder'", &[])
                .unwrap()
                .get(0);
            assert_eq!(killed, 1, "the decoder was running and got terminated");
        }
        if crash && i == 2 * defs.len() / 3 {
            cluster.restart(StopMode::Immediate);
            client = connect(&conn);
        }
        let handle = loop {
            match create_shape(&mut client, def) {
                Ok(h) => break h,
                Err(e) if client.is_closed() || e.as_db_error().is_none() => client = connect(&conn),
                Err(e) => panic!("shape {def:?} rejected: {e}"),
            }
        };
        handles.push(handle);
    }
    for w in writers {
        w.join().expect("writer thread");
    }
    assert!(committed.load(Ordering::Relaxed) > WRITERS * TXNS_PER_WRITER / 2, "most transactions committed");

    let mut client = connect(&conn);
    wait_caught_up(&mut client, Duration::from_secs(60));
    let storage = storage_dir(&cluster);
    let mut total_changes = 0;
    for (def, handle) in defs.iter().zip(&handles) {
        let reader = wait_live(&storage, handle, Duration::from_secs(60));
        let log = materialize(&reader);
        total_changes += log.changes;
        let columns: Vec<&str> = match &def.columns {
            Some(c) => c.split(',').collect(),
            None => COLUMNS.to_vec(),
        };
        let want =
            expected_rows(&mut client, "public", "todo", &columns, &["id"], def.where_clause.as_deref(), &def.params);
        assert_same_rows(&format!("shape {:?} ({handle})", def.where_clause), &log.rows, &want);
    }
    assert!(total_changes > 100, "the shapes saw live changes ({total_changes}), not just snapshots");
}

#[test]
fn snapshot_plus_log_equals_the_query_for_every_shape_under_concurrent_writes() {
    run_model(false);
}

#[test]
fn worker_kill_and_immediate_restart_lose_and_duplicate_nothing() {
    run_model(true);
}
