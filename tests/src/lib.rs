//! End-to-end test harness for pg_shapes.
//!
//! - [`TestCluster`]: a throw-away PostgreSQL 15 cluster in its own directory
//!   under `/tmp`, on its own free loopback port, with logical decoding on,
//!   `pg_shapes` preloaded and `CREATE EXTENSION pg_shapes` done. It is owned
//!   by and runs as the `postgres` OS user when the tests run as root
//!   (Postgres refuses to run as root). Dropping it stops the server
//!   (immediate mode) and removes the directory, unless `KEEP_TEST_CLUSTER=1`.
//! - [`Sidecar`]: the release binary `target/release/pg_shapes_sidecar`
//!   started against a cluster on a free port, ready once
//!   `GET /v1/health` answers 200; [`Sidecar::start_on_port`] starts one on a
//!   given port (a restarted sidecar that clients reconnect to).
//!
//! Both need the build first: `make build` (or `scripts/install_extension.sh`
//! and `cargo build --release -p pg_shapes_sidecar`); `make test` does it.
//!
//! The server settings come from `scripts/cluster.conf.in`, the same file
//! `scripts/cluster.sh` uses, plus a few test-only lines (see
//! [`cluster::HARNESS_CONF`]) and the caller's [`ClusterOptions::conf`] lines.
//!
//! # Parallelism
//! Every cluster and sidecar has its own directory and ports, so tests that
//! start them can run in parallel. `cargo test` runs the tests of one test
//! binary on its default number of threads (the number of CPUs, 2 on the
//! project's machines; `RUST_TEST_THREADS` overrides it) and the test binaries
//! one after another, so at most that many clusters run at once. Each cluster
//! is kept small (`shared_buffers = 32MB`, `fsync = off`).
//!
//! # Environment
//! - `KEEP_TEST_CLUSTER=1`: keep cluster directories (server and sidecar logs)
//!   after the test and print where they are.
//! - `PG_SHAPES_SIDECAR_BIN`: the sidecar binary to run instead of
//!   `<target>/release/pg_shapes_sidecar`.
//! - `PG_CONFIG`: the `pg_config` to use instead of the one in `pgrx.toml`.
//! - `PG_SHAPES_TEST_TMPDIR`: where cluster directories go (default `/tmp`;
//!   the `postgres` OS user must be able to reach it).

pub mod cluster;
pub mod env;
pub mod rng;
pub mod shapes;
pub mod sidecar;

pub use cluster::{ClusterOptions, StopMode, TestCluster};
pub use sidecar::{http_client, Sidecar};

// The client crates the harness is built on, so that tests use the same versions.
pub use postgres;
pub use reqwest;
pub use serde_json;
pub use shape_log;
