//! Serving: the one HTTP serving helper every server of the crate uses ([`httpd`]), the one
//! metrics registry type ([`metrics`]), logging ([`telemetry`]), giving freed memory back
//! ([`memory`]) and the shutdown signal.
pub mod httpd;
pub mod memory;
pub mod metrics;
pub mod telemetry;

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
