//! Configuration: environment variables, each overridable by a flag.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::app::Settings;

/// pg_shapes sidecar: serves Electric's HTTP shape protocol from the shape logs
/// the pg_shapes extension writes.
#[derive(Debug, Clone, Parser)]
#[command(name = "pg_shapes_sidecar", version, about)]
pub struct Config {
    /// Connection string of the database with the pg_shapes extension.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// TCP port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Address (or host name) to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Shape log directory; default: the database's `pg_shapes.storage_dir`.
    #[arg(long, env = "STORAGE_DIR")]
    pub storage_dir: Option<PathBuf>,

    /// When set, every /v1/shape request must carry `secret=<this>`.
    #[arg(long, env = "SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// How long a live request waits for changes, in milliseconds.
    #[arg(long, env = "LONG_POLL_TIMEOUT", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub long_poll_timeout: u64,

    /// Chunk size in bytes for shapes this server creates.
    #[arg(long, env = "CHUNK_BYTES", default_value_t = 10_485_760, value_parser = clap::value_parser!(i32).range(1..))]
    pub chunk_bytes: i32,

    /// How long a server-sent-events stream stays open, in milliseconds.
    #[arg(long, env = "SSE_TIMEOUT", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1000..=86_400_000))]
    pub sse_timeout: u64,

    /// Database connections in the pool.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,
}

impl Config {
    /// The runtime settings this configuration asks for.
    pub fn settings(&self) -> Settings {
        Settings {
            long_poll_timeout: Duration::from_millis(self.long_poll_timeout),
            sse_timeout: Duration::from_millis(self.sse_timeout),
            // An empty value (e.g. `SECRET=`) means no secret, not "the empty secret".
            secret: self.secret.clone().filter(|s| !s.is_empty()),
            storage_dir: self.storage_dir.clone().filter(|d| !d.as_os_str().is_empty()),
            chunk_bytes: self.chunk_bytes,
            ..Settings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults() {
        let c = Config::try_parse_from(["x", "--database-url", "postgres://u@h/db"]).unwrap();
        assert_eq!(
            (c.port, c.host.as_str(), c.long_poll_timeout, c.chunk_bytes),
            (3000, "127.0.0.1", 20_000, 10_485_760)
        );
        assert_eq!((c.sse_timeout, c.db_pool_size), (60_000, 8));
        let s = c.settings();
        assert_eq!(s.long_poll_timeout, Duration::from_secs(20));
        assert!(s.secret.is_none() && s.storage_dir.is_none());
    }

    #[test]
    fn empty_secret_means_none_and_bad_numbers_are_refused() {
        let c = Config::try_parse_from(["x", "--database-url", "u", "--secret", "", "--chunk-bytes", "1024"]).unwrap();
        assert!(c.settings().secret.is_none());
        assert_eq!(c.settings().chunk_bytes, 1024);
        assert!(Config::try_parse_from(["x", "--database-url", "u", "--chunk-bytes", "0"]).is_err());
        assert!(Config::try_parse_from(["x", "--database-url", "u", "--db-pool-size", "0"]).is_err());
    }
}
