//! `mesh-proxy`: the sidecar.
#![forbid(unsafe_code)]

pub mod config;

pub use config::ProxyArgs;

/// Runs the sidecar until it is told to stop.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("mesh-proxy is not built yet")
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

/// Builds the runtime and runs the sidecar: the binary's whole `main`.
pub fn main(args: ProxyArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}
