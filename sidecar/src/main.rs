//! `pg_shapes_sidecar`: starts the HTTP server and stops it on SIGINT/SIGTERM.

use clap::Parser;
use pg_shapes_sidecar::config::Config;
use pg_shapes_sidecar::{serve, PgCatalog};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config));
    // Tasks still running (e.g. a database connect) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "pg_shapes_sidecar stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let catalog = PgCatalog::new(&config.database_url, config.db_pool_size as usize)?;
    let listener = listen(&config.host, config.port)
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    let settings = config.settings();
    tracing::info!(
        address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        storage_dir = ?settings.storage_dir,
        long_poll_timeout_ms = config.long_poll_timeout,
        sse_timeout_ms = config.sse_timeout,
        chunk_bytes = config.chunk_bytes,
        db_pool_size = config.db_pool_size,
        secret = settings.secret.is_some(),
        "pg_shapes_sidecar listening"
    );
    serve(listener, settings, catalog, shutdown_signal()).await.map_err(|e| e.to_string())?;
    tracing::info!("pg_shapes_sidecar stopped");
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

/// Connections the kernel queues before they are accepted. `TcpListener::bind`
/// asks for 128, which overflows when thousands of clients reconnect at once
/// (after a restart, or when a fan-out answers them all and they poll again);
/// the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the first address `host` resolves to, with [`LISTEN_BACKLOG`].
async fn listen(host: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        // As std and tokio's bind do: a restarted sidecar can reuse the port at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("the host name resolved to no address")))
}
