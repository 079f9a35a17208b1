//! Values reach clients as Postgres text output under Electric's display
//! settings (hex bytea, ISO dates, UTC, ISO 8601 intervals, extra_float_digits
//! = 1), whatever the server's own settings, and the snapshot and the live
//! stream print a value identically.

use std::time::Duration;

use pg_shapes_tests::serde_json::{json, Value};
use pg_shapes_tests::shapes::{create_shape, materialize, storage_dir, wait_caught_up, wait_live, ShapeDef};
use pg_shapes_tests::{ClusterOptions, TestCluster};

const ROW: &str = "
    ARRAY[1, 2, NULL]::int[],
    ARRAY[['a b', 'c\"d'], ['e', NULL]]::text[],
    'doing'::mood,
    'abc@example.com'::email,
    '{\"b\": [1, 2.50, \"x\"], \"a\": null}'::json,
    '{\"b\": [1, 2.50, \"x\"], \"a\": null}'::jsonb,
    123456789012345678901234.5678::numeric,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid,
    '2024-02-29 13:14:15.123456'::timestamp,
    '2024-02-29 13:14:15.5+02'::timestamptz,
    '2024-02-29'::date,
    '13:14:15'::time,
    '1 year 2 months 3 days 04:05:06.5'::interval,
    '\\x00ff10'::bytea,
    0.1::float8 + 0.2::float8,
    (1::float4 / 3::float4),
    true,
    E'line1\\nline2\\ttab \"quoted\" \\\\ back 😀 é'";

fn expected() -> Value {
    json!({
        "ints": "{1,2,NULL}",
        "texts": "{{\"a b\",\"c\\\"d\"},{e,NULL}}",
        "feeling": "doing",
        "mail": "abc@example.com",
        "j": "{\"b\": [1, 2.50, \"x\"], \"a\": null}",
        "jb": "{\"a\": null, \"b\": [1, 2.50, \"x\"]}",
        "big": "123456789012345678901234.5678",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "ts": "2024-02-29 13:14:15.123456",
        "tstz": "2024-02-29 11:14:15.5+00",
        "d": "2024-02-29",
        "t": "13:14:15",
        "iv": "P1Y2M3DT4H5M6.5S",
        "bin": "\\x00ff10",
        "f8": "0.30000000000000004",
        "f4": "0.33333334",
        "flag": "t",
        "txt": "line1\nline2\ttab \"quoted\" \\ back 😀 é",
    })
}

#[test]
fn values_use_the_protocol_display_settings_whatever_the_server_uses() {
    // A server configured the other way round on every display setting.
    let cluster = TestCluster::start(
        ClusterOptions::new()
            .conf("DateStyle = 'SQL, MDY'")
            .conf("TimeZone = 'America/New_York'")
            .conf("IntervalStyle = 'postgres_verbose'")
            .conf("bytea_output = 'escape'")
            .conf("extra_float_digits = 0"),
    );
    cluster.psql(
        "CREATE TYPE mood AS ENUM ('calm', 'doing');
         CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
         CREATE TABLE v (id int PRIMARY KEY, ints int[], texts text[], feeling mood, mail email, j json, jb jsonb,
                         big numeric, u uuid, ts timestamp, tstz timestamptz, d date, t time, iv interval,
                         bin bytea, f8 float8, f4 float4, flag bool, txt text, nothing text);",
    );
    cluster.psql(&format!("INSERT INTO v VALUES (1, {ROW}, NULL)"));
    let mut client = cluster.client();
    let handle = create_shape(&mut client, &ShapeDef::new("v", None)).unwrap();
    let storage = storage_dir(&cluster);
    wait_live(&storage, &handle, Duration::from_secs(30));
    cluster.psql(&format!("INSERT INTO v VALUES (2, {ROW}, NULL)"));
    wait_caught_up(&mut client, Duration::from_secs(30));

    let log = materialize(&pg_shapes_tests::shape_log::LogReader::open(&storage.join(&handle)).unwrap());
    assert_eq!((log.snapshot_rows, log.changes), (1, 1), "row 1 from the snapshot, row 2 live");
    let mut want = expected();
    for (id, source) in [("1", "snapshot"), ("2", "live stream")] {
        let row = &log.rows[&format!("\"public\".\"v\"/\"{id}\"")];
        want["id"] = json!(id);
        want["nothing"] = Value::Null;
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&row[k], v, "column {k} from the {source}");
        }
    }
}
