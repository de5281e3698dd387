//! `mesh-controller`: the control plane.
//!
//! Data flows one way: a registry source publishes [`registry::RegistryState`];
//! [`publish`] debounces it into xDS snapshots; the [`xds`] server pushes each
//! proxy its view; [`identity`] is the CA behind `Certify` and the trust bundle;
//! [`secure`] is the TLS port; [`admin`] shows all of it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod identity;
pub mod inject;
pub mod metrics;
pub mod publish;
pub mod registry;
pub mod secure;
pub mod webhook;
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
    let plaintext_addr = args.plaintext_addr();
    let secure_addr = args.secure_addr();
    if plaintext_addr.is_none() && secure_addr.is_none() {
        anyhow::bail!(
            "both xDS ports are switched off: give --xds-addr or --secure-xds-addr an address"
        );
    }
    let metrics = Arc::new(metrics::Metrics::default());
    // With the Kubernetes registry, one client serves the watchers, TokenReview
    // and (without --ca-dir/--ca-cert) the CA Secret and the leader Lease.
    let kube_client = match args.registry {
        RegistryKind::Kubernetes => {
            Some(registry::kubernetes::client(args.kubeconfig.as_deref()).await?)
        }
        RegistryKind::File => None,
    };
    let authority = match &kube_client {
        Some(client) if args.ca_dir.is_none() && args.ca_cert.is_none() => {
            identity::Authority::from_kubernetes(&args, client.clone(), metrics.clone()).await?
        }
        _ => identity::Authority::from_args(&args, metrics.clone())?,
    };
    let options = ModelOptions {
        cluster_domain: args.cluster_domain.clone(),
        trust_domain: args.trust_domain.clone(),
    };
    let registry = match args.registry {
        RegistryKind::File => {
            let file = args
                .file
                .clone()
                .context("--registry file needs --file PATH")?;
            registry::file::start(file, options, metrics.clone())?
        }
        RegistryKind::Kubernetes => {
            let client = kube_client.clone().context("Kubernetes client")?;
            registry::kubernetes::start(client, options, metrics.clone()).await?
        }
    };
    let mut certify = identity::certify::CertifyService::new(authority.clone());
    if let Some(client) = &kube_client {
        tracing::info!(audience = %args.token_audience, "Certify accepts Kubernetes service-account tokens (TokenReview)");
        certify = certify.with_token_review(identity::certify::TokenReviewer::new(
            client.clone(),
            &args.token_audience,
            authority.trust_domain(),
        ));
    }
    let snapshots = publish::start(
        registry.clone(),
        authority.bundle(),
        Duration::from_millis(args.debounce_ms),
    );
    let sync = Arc::new(xds::status::SyncRegistry::default());

    let plaintext_listener = match plaintext_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for plaintext xDS on {addr}"))?,
        ),
        None => None,
    };
    let secure_listener = match secure_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for secure xDS on {addr}"))?,
        ),
        None => None,
    };
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen for admin on {}", args.admin_addr))?;

    let ads = xds::AdsServer::new(xds::XdsContext {
        snapshots: snapshots.clone(),
        sync: sync.clone(),
        metrics: metrics.clone(),
    });
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(ads.into_service())
        .add_service(certify.into_service());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut servers = tokio::task::JoinSet::new();
    if let Some(listener) = plaintext_listener {
        let router = router.clone();
        let stopped = stopped();
        servers.spawn(async move {
            router
                .serve_with_incoming_shutdown(
                    // The builder's tcp_nodelay does not apply to a given listener;
                    // without it small xDS writes wait on delayed ACKs (~40 ms).
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopped,
                )
                .await
                .context("plaintext xDS server failed")
        });
    } else {
        tracing::info!("plaintext xDS port switched off");
    }
    if let Some(listener) = secure_listener {
        let configs = identity::serving::start(authority.clone())?;
        let stopped = stopped();
        servers.spawn(async move {
            router
                .serve_with_incoming_shutdown(secure::incoming(listener, configs), stopped)
                .await
                .context("secure xDS server failed")
        });
    } else {
        tracing::warn!("secure xDS port switched off: proxies can only use plaintext xDS");
    }
    if authority.source() == identity::CaSource::Directory {
        authority.resume_rotation(sync.clone(), snapshots.clone())?;
    }
    authority.start_secret_sync(sync.clone(), snapshots.clone());
    if let Some(addr) = args.webhook_addr.0 {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for the injection webhook on {addr}"))?;
        let mut settings = args.inject.settings();
        settings.token_audience = args.token_audience.clone();
        let lookup = kube_client
            .is_some()
            .then(|| webhook::registry_lookup(registry.clone()));
        tokio::spawn(webhook::serve(
            listener,
            identity::serving::start(authority.clone())?,
            settings,
            lookup,
        ));
        if let Some(client) = &kube_client {
            tokio::spawn(webhook::keep_ca_bundle(client.clone(), authority.bundle()));
        }
    }
    if let Some(client) = &kube_client {
        tokio::spawn(webhook::keep_trust_anchors(
            client.clone(),
            registry.clone(),
            authority.bundle(),
        ));
    }
    tokio::spawn(admin::serve(
        admin_listener,
        admin::AdminState {
            registry,
            sync,
            metrics,
            authority: authority.clone(),
            snapshots,
        },
    ));
    tracing::info!(
        xds = ?plaintext_addr,
        secure_xds = ?secure_addr,
        admin = %args.admin_addr,
        trust_domain = %args.trust_domain,
        ca = ?authority.source(),
        "mesh-controller listening"
    );
    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        Some(done) = servers.join_next() => match done {
            Ok(r) => r.and_then(|()| Err(anyhow::anyhow!("an xDS server stopped unexpectedly"))),
            Err(e) => Err(anyhow::anyhow!("an xDS server panicked: {e}")),
        },
    };
    let _ = stop_tx.send(true);
    while let Some(done) = servers.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "while stopping");
        }
    }
    result?;
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
