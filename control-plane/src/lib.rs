//! `mesh-controller`: the control plane.
#![forbid(unsafe_code)]

pub mod config;

pub use config::ControllerArgs;

/// Runs the controller until it is told to stop.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("mesh-controller is not built yet")
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
