//! `mesh-controller`: the control plane.
//!
//! Data flows one way: a registry source publishes [`registry::RegistryState`];
//! [`publish`] debounces it into xDS snapshots; the [`xds`] server pushes each
//! proxy its view; [`admin`] shows all of it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod metrics;
pub mod publish;
pub mod registry;
pub mod xds;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_model::ModelOptions;
use tokio::net::TcpListener;

pub use config::ControllerArgs;
use config::RegistryKind;

/// How the controller names itself in xDS responses.
pub const CONTROL_PLANE_ID: &str = "mesh-controller";

/// Runs the controller until SIGINT or SIGTERM.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let options = ModelOptions {
        cluster_domain: args.cluster_domain.clone(),
        ..ModelOptions::default()
    };
    let registry = match args.registry {
        RegistryKind::File => {
            let file = args
                .file
                .clone()
                .context("--registry file needs --file PATH")?;
            registry::file::start(file, options, metrics.clone())?
        }
    };
    let snapshots = publish::start(registry.clone(), Duration::from_millis(args.debounce_ms));
    let sync = Arc::new(xds::status::SyncRegistry::default());

    let xds_listener = TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("cannot listen for xDS on {}", args.xds_addr))?;
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen for admin on {}", args.admin_addr))?;
    tracing::info!(xds = %args.xds_addr, admin = %args.admin_addr, "mesh-controller listening");

    tokio::spawn(admin::serve(
        admin_listener,
        admin::AdminState {
            registry,
            sync: sync.clone(),
            metrics: metrics.clone(),
        },
    ));
    let ads = xds::AdsServer::new(xds::XdsContext {
        snapshots,
        sync,
        metrics,
    });
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(xds_listener),
            shutdown_signal(),
        )
        .await
        .context("xDS server failed")?;
    tracing::info!("mesh-controller stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the controller");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
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
