//! Waiting for the signals that mean "stop": SIGINT (Ctrl-C) and SIGTERM.

/// Resolves with the signal's name when SIGINT or SIGTERM arrives.
///
/// If the SIGTERM handler cannot be installed, only SIGINT is awaited (and logged).
pub async fn shutdown() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    match term {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
