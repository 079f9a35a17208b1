//! Shape definitions are validated by Postgres itself, and every rejection is
//! a sentence naming the problem, with the offending parameter in DETAIL.

use pg_shapes_tests::postgres::Client;
use pg_shapes_tests::shapes::{create_shape, ShapeDef};
use pg_shapes_tests::TestCluster;

struct Rejection {
    sqlstate: String,
    message: String,
    param: String,
}

fn reject(client: &mut Client, def: &ShapeDef) -> Rejection {
    let err = create_shape(client, def).expect_err(&format!("{def:?} should be rejected"));
    let db = err.as_db_error().unwrap_or_else(|| panic!("not a database error: {err}"));
    Rejection {
        sqlstate: db.code().code().to_string(),
        message: db.message().to_string(),
        param: db.detail().unwrap_or_default().trim_start_matches("shape parameter: ").to_string(),
    }
}

fn assert_rejected(client: &mut Client, def: ShapeDef, param: &str, sqlstate: &str, message_contains: &str) {
    let r = reject(client, &def);
    assert_eq!(r.param, param, "{def:?}: {}", r.message);
    assert_eq!(r.sqlstate, sqlstate, "{def:?}: {}", r.message);
    assert!(
        r.message.contains(message_contains),
        "{def:?}: message {:?} should contain {message_contains:?}",
        r.message
    );
}

fn cluster_with_tables() -> (TestCluster, Client) {
    let cluster = TestCluster::start_default();
    cluster.psql(
        "CREATE TABLE items (id int PRIMARY KEY, title text, n int);
         CREATE TABLE \"Mixed Case\" (\"Id\" int PRIMARY KEY, \"Title\" text);
         CREATE TABLE nokey (a int, b text);
         CREATE VIEW items_view AS SELECT * FROM items;
         CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);
         CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE secret (id int PRIMARY KEY, owner text);
         ALTER TABLE secret ENABLE ROW LEVEL SECURITY; ALTER TABLE secret FORCE ROW LEVEL SECURITY;
         CREATE FUNCTION stable_fn(int) RETURNS int STABLE LANGUAGE sql AS 'SELECT $1';
         CREATE FUNCTION immutable_fn(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 * 2';",
    );
    let client = cluster.client();
    (cluster, client)
}

#[test]
fn tables_are_resolved_with_quoting_and_unsuitable_relations_are_refused() {
    let (_cluster, mut c) = cluster_with_tables();
    assert!(create_shape(&mut c, &ShapeDef::new("items", None)).is_ok());
    assert!(create_shape(&mut c, &ShapeDef::new("public.items", None)).is_ok());
    assert!(create_shape(&mut c, &ShapeDef::new("\"Mixed Case\"", None)).is_ok());
    assert!(create_shape(&mut c, &ShapeDef::new("public.\"Mixed Case\"", Some("\"Id\" > 1"))).is_ok());

    assert_rejected(&mut c, ShapeDef::new("nosuch", None), "table", "42P01", "table \"nosuch\" does not exist");
    assert_rejected(&mut c, ShapeDef::new("Mixed Case", None), "table", "22023", "is not a valid table name");
    assert_rejected(&mut c, ShapeDef::new("items_view", None), "table", "22023", "is a view");
    assert_rejected(&mut c, ShapeDef::new("scratch", None), "table", "22023", "unlogged");
    assert_rejected(&mut c, ShapeDef::new("parted", None), "table", "22023", "partitioned");
    assert_rejected(&mut c, ShapeDef::new("pg_catalog.pg_class", None), "table", "22023", "system table");
    assert_rejected(&mut c, ShapeDef::new("", None), "table", "22023", "must name a table");
}

#[test]
fn tables_the_caller_cannot_read_or_whose_rows_are_filtered_by_policies_are_refused() {
    let (cluster, mut c) = cluster_with_tables();
    cluster.psql(
        "CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA shapes TO app; GRANT SELECT ON secret TO app;
         GRANT SELECT ON shapes.shape TO app;",
    );
    c.batch_execute("SET ROLE app").unwrap();
    // Row level security applies to this role, and a shape cannot apply per-client policies.
    assert_rejected(&mut c, ShapeDef::new("secret", None), "table", "42501", "row level security");
    assert_rejected(&mut c, ShapeDef::new("items", None), "table", "42501", "permission denied for table \"items\"");
}

#[test]
fn where_clauses_are_parsed_and_type_checked_by_postgres() {
    let (_cluster, mut c) = cluster_with_tables();
    let w = |s: &str| ShapeDef::new("items", Some(s));
    assert_rejected(&mut c, w("id >"), "where", "42601", "syntax error");
    assert_rejected(&mut c, w("nosuch = 1"), "where", "42703", "column \"nosuch\" does not exist");
    assert_rejected(&mut c, w("id = 'abc'"), "where", "22P02", "invalid input syntax for type integer");
    assert_rejected(&mut c, w("title + 1 > 0"), "where", "42883", "operator does not exist");
    assert_rejected(&mut c, w("id"), "where", "42804", "must be type boolean");
    assert_rejected(&mut c, w("now() > '2020-01-01'"), "where", "22023", "calls now(), which is not immutable");
    assert_rejected(&mut c, w("random() < 0.5"), "where", "22023", "calls random(), which is not immutable");
    assert_rejected(&mut c, w("stable_fn(id) > 1"), "where", "22023", "calls stable_fn(), which is not immutable");
    assert_rejected(&mut c, w("id IN (SELECT 1)"), "where", "22023", "sub-query");
    assert_rejected(&mut c, w("EXISTS (SELECT 1 FROM items)"), "where", "22023", "sub-query");
    assert_rejected(&mut c, w("ctid = '(0,1)'"), "where", "22023", "system column ctid");
    assert_rejected(&mut c, w("count(*) > 1"), "where", "42803", "aggregate functions are not allowed in WHERE");
    assert_rejected(
        &mut c,
        w("generate_series(1, 2) > 1"),
        "where",
        "0A000",
        "set-returning functions are not allowed in WHERE",
    );

    // What Postgres accepts, pg_shapes accepts: immutable user functions, casts, LIKE, IN,
    // IS DISTINCT FROM, arrays, regular expressions, CASE.
    for ok in [
        "immutable_fn(n) > 4",
        "id::text LIKE '1%'",
        "title ILIKE '%x%' OR title IS NULL",
        "n IS DISTINCT FROM 3",
        "id = ANY(ARRAY[1, 2, 3])",
        "title ~ '^a.*z$'",
        "CASE WHEN n > 5 THEN true ELSE id < 3 END",
        "coalesce(n, 0) BETWEEN 1 AND 9",
    ] {
        create_shape(&mut c, &w(ok)).unwrap_or_else(|e| panic!("{ok:?} should be accepted: {e}"));
    }
}

#[test]
fn no_input_can_run_sql_beyond_the_shapes_own_query() {
    let (cluster, mut c) = cluster_with_tables();
    let w = |s: &str| ShapeDef::new("items", Some(s));
    for attack in [
        "true; DROP TABLE items",
        "true) OR (true",
        "true UNION SELECT 1",
        "true ORDER BY 1",
        "true LIMIT 1",
        "true FOR UPDATE",
        "true GROUP BY id",
        "true; SELECT pg_sleep(10)",
    ] {
        let r = reject(&mut c, &w(attack));
        assert_eq!(r.param, "where", "{attack}: {}", r.message);
    }
    // Parameters are bound as typed values, never spliced into SQL text.
    let handle =
        create_shape(&mut c, &ShapeDef::new("items", Some("title = $1")).params(&["x'); DROP TABLE items; --"]))
            .unwrap();
    assert!(!handle.is_empty());
    let r = reject(&mut c, &ShapeDef::new("items", Some("id = $1")).params(&["1; DROP TABLE items"]));
    assert_eq!((r.param.as_str(), r.sqlstate.as_str()), ("params", "22P02"), "{}", r.message);
    // Table and column names are looked up, not interpolated.
    let r = reject(&mut c, &ShapeDef::new("items; DROP TABLE items", None));
    assert_eq!(r.param, "table", "{}", r.message);
    let r = reject(&mut c, &ShapeDef::new("items", None).columns("id, (SELECT 1)"));
    assert_eq!(r.param, "columns", "{}", r.message);
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_class WHERE relname = 'items' AND relkind = 'r'"),
        "1",
        "items survived"
    );
}

#[test]
fn params_must_match_the_placeholders_in_number_and_type() {
    let (_cluster, mut c) = cluster_with_tables();
    assert_rejected(
        &mut c,
        ShapeDef::new("items", Some("id = $1")),
        "params",
        "22023",
        "uses $1 but 0 parameter values were given",
    );
    assert_rejected(
        &mut c,
        ShapeDef::new("items", Some("id = $1")).params(&["1", "2"]),
        "params",
        "22023",
        "2 parameter values were given but the expression uses only 1",
    );
    assert_rejected(
        &mut c,
        ShapeDef::new("items", Some("id = $2")).params(&["1", "2"]),
        "params",
        "22023",
        "uses $2 but not $1",
    );
    assert_rejected(
        &mut c,
        ShapeDef::new("items", Some("id = $1")).params(&["one"]),
        "params",
        "22P02",
        "parameter $1: invalid input syntax for type integer",
    );
    assert_rejected(
        &mut c,
        ShapeDef::new("items", Some("$1 IS NULL")).params(&["x"]),
        "params",
        "22023",
        "could not determine the type of $1",
    );
    assert_rejected(&mut c, ShapeDef::new("items", None).params(&["1"]), "params", "22023", "no where clause");
    // Typed binding: the same value text gives the same shape; another value, another one.
    let a = create_shape(&mut c, &ShapeDef::new("items", Some("id > $1")).params(&["5"])).unwrap();
    let b = create_shape(&mut c, &ShapeDef::new("items", Some("id > $1")).params(&["5"])).unwrap();
    let other = create_shape(&mut c, &ShapeDef::new("items", Some("id > $1")).params(&["6"])).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, other);
}

#[test]
fn columns_must_exist_and_include_the_key() {
    let (_cluster, mut c) = cluster_with_tables();
    assert!(create_shape(&mut c, &ShapeDef::new("items", None).columns("id,title")).is_ok());
    assert!(create_shape(&mut c, &ShapeDef::new("\"Mixed Case\"", None).columns("\"Id\",\"Title\"")).is_ok());
    assert_rejected(
        &mut c,
        ShapeDef::new("items", None).columns("title"),
        "columns",
        "22023",
        "must include all primary key columns, missing: id",
    );
    assert_rejected(
        &mut c,
        ShapeDef::new("items", None).columns("id,nosuch"),
        "columns",
        "42703",
        "could not be found in table \"items\": nosuch",
    );
    assert_rejected(
        &mut c,
        ShapeDef::new("\"Mixed Case\"", None).columns("Id"),
        "columns",
        "42703",
        "could not be found",
    );
    assert_rejected(&mut c, ShapeDef::new("items", None).columns("id,,title"), "columns", "22023", "");
    // Without a primary key every column identifies a row, so all must be selected.
    assert!(create_shape(&mut c, &ShapeDef::new("nokey", None)).is_ok());
    assert_rejected(&mut c, ShapeDef::new("nokey", None).columns("a"), "columns", "22023", "every column");
}

#[test]
fn replica_and_log_modes_are_checked_and_part_of_the_identity() {
    let (_cluster, mut c) = cluster_with_tables();
    let mut bad = ShapeDef::new("items", None);
    bad.replica = "partial".into();
    assert_rejected(&mut c, bad, "replica", "22023", "replica must be \"default\" or \"full\"");
    let mut bad = ShapeDef::new("items", None);
    bad.log_mode = "some".into();
    assert_rejected(&mut c, bad, "log", "22023", "log must be \"full\" or \"changes_only\"");

    let plain = create_shape(&mut c, &ShapeDef::new("items", None)).unwrap();
    let full = create_shape(&mut c, &ShapeDef::new("items", None).full()).unwrap();
    let mut changes_only = ShapeDef::new("items", None);
    changes_only.log_mode = "changes_only".into();
    let changes_only = create_shape(&mut c, &changes_only).unwrap();
    assert_ne!(plain, full);
    assert_ne!(plain, changes_only);
    assert_eq!(
        plain,
        create_shape(&mut c, &ShapeDef::new("public.items", None)).unwrap(),
        "the same table named two ways is one shape"
    );
}

#[test]
fn shapes_need_the_library_preloaded() {
    let cluster = TestCluster::start(pg_shapes_tests::ClusterOptions::new().without_preload());
    cluster.psql("CREATE TABLE items (id int PRIMARY KEY)");
    let mut c = cluster.client();
    let err = create_shape(&mut c, &ShapeDef::new("items", None)).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("shared_preload_libraries"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("shared_preload_libraries"));
}
