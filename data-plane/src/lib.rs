//! `mesh-proxy`: the sidecar.
//!
//! Three listeners (outbound 15001, inbound 15006, admin 15000) bind first, then the
//! xDS client fills in the routing tables in the background; requests read the
//! current tables through an `ArcSwap` without locks.
//!
//! With a join token (`--token`/`--token-file`) the sidecar first gets a SPIFFE
//! certificate from the controller ([`identity`]), keeps it rotated, and carries
//! every hop to another sidecar over mutual TLS ([`tls`], [`upstream`],
//! [`server`]) with the inbound side enforcing RBAC ([`authz`]). Without a token it
//! runs in plaintext dev mode.
//!
//! Layout: [`config`] flags; [`xds_client`] the ADS stream, [`store`] the last good
//! resources, [`decode`] xDS -> own types, [`routing`] the tables built from them;
//! [`outbound`], [`inbound`], [`admin`] the three listeners on [`server`]'s accept
//! loop; [`upstream`] pooled connections; [`metrics`]; [`state`] what they share.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod balancer;
pub mod capture;
pub mod circuit_breaker;
pub mod clock;
pub mod config;
pub mod decode;
pub mod decode_policy;
mod decode_route;
pub mod endpoint_load;
pub mod grpc;
pub mod hash_key;
pub mod headers;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod original_dst;
pub mod outbound;
pub mod outlier;
pub mod preface;
pub mod retry;
pub mod route_match;
pub mod routing;
pub mod server;
pub mod sniff;
pub mod state;
pub mod store;
pub mod tcp;
pub mod tcp_listener;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod wait_ready;
pub mod xds_client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use config::{ProxyArgs, XdsProtocol};

use crate::identity::{Certifier, Controller, GrpcCertifier, IdentityManager, TokenSource};
use crate::metrics::Reporter;
use crate::routing::LocalIdentity;
use crate::server::Transport;
use crate::state::ProxyState;
use crate::tls::TlsState;

/// A started sidecar: its bound addresses and a handle to stop it.
///
/// Returned by [`start`] so embedders and tests can learn the real ports (when
/// binding port 0) and stop the proxy without signals.
pub struct Proxy {
    /// Bound outbound listener address.
    pub outbound_addr: SocketAddr,
    /// Bound inbound listener address.
    pub inbound_addr: SocketAddr,
    /// Bound admin listener address.
    pub admin_addr: SocketAddr,
    state: Arc<ProxyState>,
    listeners: JoinSet<()>,
    xds: tokio::task::JoinHandle<()>,
    identity: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// The shared state (config, metrics), for embedders and tests.
    pub fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }

    /// Starts a graceful shutdown; [`Proxy::wait`] returns once it is done.
    pub fn shutdown(&self) {
        self.state.trigger_shutdown();
    }

    /// Waits until the proxy has shut down (via [`Proxy::shutdown`], `POST
    /// /shutdown`, or a signal handled by [`run`]) and its connections drained.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        while let Some(res) = self.listeners.join_next().await {
            if let Err(e) = res {
                // A listener task panicked: take the rest down too.
                self.state.trigger_shutdown();
                tracing::error!("listener task failed: {e}");
            }
        }
        self.xds.abort();
        if let Some(identity) = &self.identity {
            identity.abort();
        }
        tracing::info!("mesh-proxy stopped");
        Ok(())
    }
}

async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {what} listener on {addr}"))
}

/// Binds the listeners and starts serving; xDS (and, with a token, certificate
/// issuance and rotation) run in the background.
pub async fn start(args: ProxyArgs) -> anyhow::Result<Proxy> {
    start_with(args, None).await
}

/// Reads the `--trust-anchors` PEM file.
fn read_anchors(args: &ProxyArgs) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
    let Some(path) = &args.trust_anchors else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --trust-anchors {}", path.display()))?;
    let anchors = mesh_identity::tls::anchors_from_pem(&pem)
        .with_context(|| format!("--trust-anchors {}", path.display()))?;
    Ok(Some(anchors))
}

/// [`start`], with the certificate signer replaced (tests use an in-process CA);
/// `None` uses the controller's `Certify`.
pub async fn start_with(
    args: ProxyArgs,
    certifier: Option<Arc<dyn Certifier>>,
) -> anyhow::Result<Proxy> {
    let anchors = read_anchors(&args)?;
    if args.identity_enabled() && anchors.is_none() {
        anyhow::bail!(
            "a join token needs --trust-anchors: the issued certificate and the controller \
             are checked against the mesh roots"
        );
    }
    let trust_domain = args
        .trust_domain
        .clone()
        .or_else(|| {
            anchors
                .as_deref()
                .and_then(identity::trust_domain_of_anchors)
        })
        .unwrap_or_else(|| "cluster.local".to_string());
    let tls = Arc::new(TlsState::new(args.identity_enabled(), anchors));
    let controller = Controller::new(&args.xds_addr, tls.clone(), &trust_domain)?;
    if args.identity_enabled() && !controller.secure() {
        tracing::warn!(
            xds = %args.xds_addr,
            "the token and certificate travel in plaintext to an http:// controller; use https:// outside loopback development"
        );
    }
    let outbound = bind("outbound", args.outbound()).await?;
    let inbound = bind("inbound", args.inbound()).await?;
    let admin = bind("admin", args.admin()).await?;
    let outbound_addr = outbound.local_addr()?;
    let inbound_addr = inbound.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let state = Arc::new(ProxyState::with_tls(
        LocalIdentity {
            workload: args.workload.clone(),
            namespace: args.namespace.clone(),
            ..Default::default()
        },
        tls.clone(),
        args.forward_client_cert,
    ));
    let grace = Duration::from_secs(args.drain_seconds);
    let mut listeners = JoinSet::new();
    let s = state.clone();
    listeners.spawn(server::serve(
        "outbound",
        outbound,
        s.clone(),
        Some(Reporter::Source),
        grace,
        Transport::Outbound,
        move |req, _| outbound::handle(s.clone(), req),
    ));
    let s = state.clone();
    listeners.spawn(server::serve(
        "inbound",
        inbound,
        s.clone(),
        Some(Reporter::Destination),
        grace,
        Transport::Inbound,
        move |req, conn| inbound::handle(s.clone(), req, conn),
    ));
    let s = state.clone();
    listeners.spawn(server::serve(
        "admin",
        admin,
        s.clone(),
        None,
        grace,
        Transport::Plain,
        move |req, conn| admin::handle(s.clone(), req, conn.peer),
    ));

    let node = mesh_xds::ProxyNode {
        id: args.node_id(),
        workload: Some(args.workload.clone()),
        namespace: args.namespace.clone(),
        admin_address: Some(admin_addr.to_string()),
    }
    .to_node();
    let identity = if args.identity_enabled() {
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) => TokenSource::Inline(t.clone()),
            (None, Some(p)) => TokenSource::File(p.clone()),
            (None, None) => unreachable!("identity_enabled checks one is set"),
        };
        let manager = IdentityManager {
            tls: tls.clone(),
            certifier: certifier
                .unwrap_or_else(|| Arc::new(GrpcCertifier::new(controller.clone()))),
            token,
            namespace: args.namespace.clone(),
            trust_domain: trust_domain.clone(),
            cert_expiry: state.metrics.cert_expiry.clone(),
        };
        Some(tokio::spawn(manager.run(state.shutdown.subscribe())))
    } else {
        None
    };
    let client = xds_client::XdsClient::new(state.clone(), controller, args.xds_protocol, node);
    let xds = tokio::spawn(client.run(state.shutdown.subscribe()));
    tracing::info!(
        outbound = %outbound_addr,
        inbound = %inbound_addr,
        admin = %admin_addr,
        xds = %args.xds_addr,
        node = %args.node_id(),
        identity = args.identity_enabled(),
        %trust_domain,
        "mesh-proxy listening"
    );
    Ok(Proxy {
        outbound_addr,
        inbound_addr,
        admin_addr,
        state,
        listeners,
        xds,
        identity,
    })
}

/// Waits for SIGTERM or SIGINT.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the sidecar until it is told to stop (signal or `POST /shutdown`), then
/// drains for at most `--drain-seconds`.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let proxy = start(args).await?;
    let state = proxy.state().clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("signal received; shutting down");
        state.trigger_shutdown();
    });
    proxy.wait().await
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

/// The binary's command line: `mesh-proxy [FLAGS]` runs the sidecar, `mesh-proxy
/// wait-ready [FLAGS]` waits for one ([`wait_ready`]). A subcommand beside the
/// flat flags keeps every existing command line valid.
pub fn cli_main(argv: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    use clap::Parser as _;
    if argv.get(1).is_some_and(|a| a == wait_ready::COMMAND) {
        return wait_ready::main(wait_ready::WaitReadyArgs::parse_from(&argv[1..]));
    }
    init_tracing();
    main(ProxyArgs::parse_from(argv))
}

/// Builds the runtime and runs the sidecar.
///
/// The runtime has `--concurrency` workers (default 2, see [`ProxyArgs`]); with 1
/// it is a current-thread runtime, which has the lowest per-request overhead.
pub fn main(args: ProxyArgs) -> anyhow::Result<()> {
    let runtime = if args.concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(2)
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.concurrency)
            .max_blocking_threads(2)
            .thread_name("mesh-proxy")
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args))
}
