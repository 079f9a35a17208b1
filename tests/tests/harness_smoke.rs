//! The harness itself works: a test cluster has logical decoding and the
//! extension, and a sidecar started against it reports healthy.
//!
//! Like every test here, these start their own clusters and run in parallel
//! on cargo test's default number of threads.

use pg_shapes_tests::{Sidecar, TestCluster};

#[test]
fn cluster_starts_with_logical_decoding_and_extension_installed() {
    let cluster = TestCluster::start_default();

    let mut client = cluster.client();
    let wal_level: String = client.query_one("SHOW wal_level", &[]).unwrap().get(0);
    assert_eq!(wal_level, "logical");

    let extensions: Vec<String> =
        client.query("SELECT extname::text FROM pg_extension", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(extensions.iter().any(|e| e == "pg_shapes"), "pg_shapes not in pg_extension: {extensions:?}");

    // The Unix-socket path works too, and the server only listens on loopback.
    assert_eq!(cluster.psql("SHOW listen_addresses"), "localhost");
    assert_eq!(cluster.psql("SHOW shared_preload_libraries"), "pg_shapes");
}

#[test]
fn sidecar_health_reports_active_when_extension_present() {
    let cluster = TestCluster::start_default();
    let sidecar = Sidecar::start(&cluster, &[]);

    let resp = sidecar.get("/v1/health");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().expect("health body is JSON");
    assert_eq!(body, serde_json::json!({"status": "active"}));
}

#[test]
fn cluster_restart_keeps_committed_rows_in_both_modes() {
    use pg_shapes_tests::StopMode;
    let cluster = TestCluster::start_default();
    cluster.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");

    cluster.restart(StopMode::Immediate);
    cluster.psql("INSERT INTO t VALUES (2)");
    cluster.restart(StopMode::Fast);

    let mut client = cluster.client();
    let n: i64 = client.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(n, 2);
    assert!(
        cluster.server_log().contains("database system was interrupted"),
        "no crash recovery after the immediate stop"
    );
}
