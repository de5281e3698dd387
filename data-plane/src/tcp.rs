//! Opaque TCP proxying, both directions.
//!
//! Outbound, a connection the outbound listener's chains send to a TCP cluster
//! gets an endpoint from the cluster's balancer. To an endpoint with a sidecar it
//! travels on its own mutual-TLS connection (ALPN `mesh-tcp`, the server's SPIFFE
//! ID checked against EDS exactly as for HTTP) to the sidecar's inbound port,
//! opened by the [`Preface`] naming the app port; to an endpoint without one,
//! straight to the app. The passthrough cluster connects to the original
//! destination.
//!
//! Inbound, a `mesh-tcp` connection (or captured plaintext to an opaque port,
//! under PERMISSIVE) is authorized by the port's network RBAC (denied: closed and
//! counted) and spliced to the app.
//!
//! Bytes are copied in both directions until both have ended; an end of stream
//! in one direction is passed on as a half-close (TCP `FIN`, TLS `close_notify`)
//! while the other keeps flowing. Every connection is counted in the
//! `mesh_tcp_*` metrics as the bytes flow, not only when it closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::authz::{Attributes, Authz, Verdict};
use crate::metrics::{MUTUAL_TLS, Reporter, TcpLabels, TcpStats, UNKNOWN};
use crate::preface::Preface;
use crate::routing::{ClusterRt, EndpointRt};
use crate::server::{ConnInfo, Io};
use crate::state::ProxyState;
use crate::tcp_listener::TcpTarget;
use crate::upstream::{Mtls, connect_mtls, connect_tcp};

/// A downstream stream that counts what it carries: reads are bytes received
/// from the caller, writes bytes sent to it.
struct Counted<S> {
    inner: S,
    received: Counter,
    sent: Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.received.inc_by(n as u64);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.sent.inc_by(n as u64);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies between `downstream` and `upstream` until both directions ended,
/// counting into `stats`. `first` is sent upstream before anything else (bytes
/// read past a preface).
pub async fn splice<D, U>(downstream: D, mut upstream: U, first: &[u8], stats: &TcpStats)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if !first.is_empty() {
        stats.received.inc_by(first.len() as u64);
        if let Err(e) = upstream.write_all(first).await {
            tracing::debug!("TCP proxy: upstream write failed: {e}");
            return;
        }
    }
    let mut downstream = Counted {
        inner: downstream,
        received: stats.received.clone(),
        sent: stats.sent.clone(),
    };
    if let Err(e) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        tracing::debug!("TCP proxy connection ended: {e}");
    }
}

/// Where an outbound connection goes: the endpoint, how, and its labels.
struct OutboundHop {
    addr: SocketAddr,
    mtls: Option<Mtls>,
    preface: Option<Preface>,
    labels: TcpLabels,
}

fn outbound_hop(
    state: &ProxyState,
    cluster: &ClusterRt,
    ep: &EndpointRt,
) -> Result<OutboundHop, String> {
    let me = &state.me;
    let principal = state.tls.configs().map(|c| c.spiffe_id.to_string());
    let label = |v: &Option<String>| v.clone().unwrap_or_else(|| UNKNOWN.to_string());
    let mut labels = TcpLabels {
        source_workload: me.workload.clone(),
        source_namespace: me.namespace.clone(),
        source_principal: principal.unwrap_or_else(|| UNKNOWN.to_string()),
        destination_service: cluster.service.to_string(),
        destination_workload: label(&ep.spec.workload),
        destination_namespace: label(&ep.spec.namespace),
        ..TcpLabels::unknown(Reporter::Source, "tcp")
    };
    if ep.spec.sidecar_port.is_none() {
        return Ok(OutboundHop {
            addr: ep.spec.address,
            mtls: None,
            preface: None,
            labels,
        });
    }
    let preface = Some(Preface {
        target_port: ep.spec.address.port(),
        source_workload: me.workload.clone(),
        source_namespace: me.namespace.clone(),
        destination_service: cluster.service.to_string(),
    });
    let mut mtls = None;
    if state.tls.enabled() {
        let configs = state
            .tls
            .configs()
            .ok_or("no workload certificate yet; cannot call other sidecars")?;
        let expected = ep.spec.identity.as_deref().ok_or_else(|| {
            format!(
                "endpoint {} of service {} has no identity; refusing to call it without one",
                ep.spec.address, cluster.name
            )
        })?;
        labels.destination_principal = expected.to_string();
        labels.connection_security_policy = MUTUAL_TLS;
        mtls = Some(Mtls {
            config: configs.client_tcp.clone(),
            expected: expected.into(),
        });
    }
    Ok(OutboundHop {
        addr: ep.connect_addr,
        mtls,
        preface,
        labels,
    })
}

/// Proxies one outbound connection to `target` (a service's TCP cluster, or the
/// passthrough cluster to `original_dst`).
pub async fn outbound(
    state: Arc<ProxyState>,
    downstream: TcpStream,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
    target: TcpTarget,
) {
    let hop = match (&target.cluster, target.is_passthrough()) {
        (_, true) => match original_dst {
            Some(dst) => OutboundHop {
                addr: dst,
                mtls: None,
                preface: None,
                labels: TcpLabels {
                    source_workload: state.me.workload.clone(),
                    source_namespace: state.me.namespace.clone(),
                    ..TcpLabels::unknown(Reporter::Source, "tcp")
                },
            },
            None => {
                tracing::debug!(%peer, "non-HTTP connection without an original destination; closing");
                return;
            }
        },
        (None, false) => {
            tracing::debug!(%peer, cluster = %target.cluster_name, "TCP cluster not known yet; closing");
            return;
        }
        (Some(cluster), false) => {
            let Some(ep) = cluster.pick_endpoint().cloned() else {
                tracing::debug!(%peer, cluster = %cluster.name, "TCP cluster has no endpoints; closing");
                return;
            };
            match outbound_hop(&state, cluster, &ep) {
                Ok(hop) => hop,
                Err(msg) => {
                    tracing::warn!(cluster = %cluster.name, endpoint = %ep.connect_addr, "{msg}");
                    return;
                }
            }
        }
    };
    let stats = state.metrics.tcp(&hop.labels);
    stats.opened.inc();
    let timeout = target
        .cluster
        .as_ref()
        .map_or(std::time::Duration::from_secs(1), |c| c.connect_timeout);
    let preface = hop
        .preface
        .as_ref()
        .map(Preface::encode)
        .unwrap_or_default();
    match &hop.mtls {
        Some(m) => match connect_mtls(hop.addr, m, timeout).await {
            Ok(mut tls) => {
                if tls.write_all(&preface).await.is_ok() {
                    splice(downstream, tls, &[], &stats).await;
                }
            }
            Err(e) => tracing::warn!(cluster = %target.cluster_name, "TCP upstream: {e}"),
        },
        None => match connect_tcp(hop.addr, timeout).await {
            Ok(mut tcp) => {
                if tcp.write_all(&preface).await.is_ok() {
                    splice(downstream, tcp, &[], &stats).await;
                }
            }
            Err(e) => tracing::debug!(cluster = %target.cluster_name, "TCP upstream: {e}"),
        },
    }
    stats.closed.inc();
}

/// How an inbound TCP connection names its app port.
#[derive(Debug, Clone, Copy)]
pub enum InboundTcp {
    /// A sidecar's `mesh-tcp` connection: the [`Preface`] comes first.
    Preface,
    /// Captured plaintext to this opaque port (`SO_ORIGINAL_DST`).
    Captured(u16),
}

/// Serves one inbound TCP connection: authorize, then splice to the app.
pub async fn inbound(state: Arc<ProxyState>, mut io: Io, conn: ConnInfo, how: InboundTcp) {
    let (port, preface, first) = match how {
        InboundTcp::Captured(port) => (port, None, Vec::new()),
        InboundTcp::Preface => match Preface::read(&mut io).await {
            Ok((p, rest)) => (p.target_port, Some(p), rest),
            Err(e) => {
                tracing::debug!(peer = %conn.peer, "inbound TCP refused: {e}");
                return;
            }
        },
    };
    let me = &state.me;
    let field = |v: Option<&String>| {
        v.filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| UNKNOWN.to_string())
    };
    let labels = TcpLabels {
        source_workload: field(preface.as_ref().map(|p| &p.source_workload)),
        source_namespace: field(preface.as_ref().map(|p| &p.source_namespace)),
        source_principal: conn.principal.as_deref().unwrap_or(UNKNOWN).to_string(),
        destination_service: field(preface.as_ref().map(|p| &p.destination_service)),
        destination_workload: me.workload.clone(),
        destination_namespace: me.namespace.clone(),
        destination_principal: state
            .tls
            .configs()
            .map_or_else(|| UNKNOWN.to_string(), |c| c.spiffe_id.to_string()),
        connection_security_policy: if conn.mtls { MUTUAL_TLS } else { "none" },
        ..TcpLabels::unknown(Reporter::Destination, "tcp")
    };
    let cfg = state.config.load();
    let Some(entry) = cfg.tcp.inbound.get(&port) else {
        tracing::debug!(peer = %conn.peer, port, "inbound TCP refused: port {port} is not an opaque port of this workload");
        return;
    };
    let authz = if conn.mtls {
        entry.tls.clone()
    } else if state.tls.enabled() {
        entry.plaintext.clone()
    } else {
        // Dev mode: as for HTTP, the mTLS chain's policy applies to plaintext.
        entry.plaintext.clone().or_else(|| entry.tls.clone())
    };
    let Some(authz) = authz else {
        tracing::debug!(peer = %conn.peer, port, mtls = conn.mtls, "inbound TCP refused: no chain for this transport");
        return;
    };
    if !authorized(&state, &authz, &conn) {
        return;
    }
    let Some(app) = entry.target.cluster.as_ref().and_then(|c| {
        c.pick_endpoint()
            .map(|ep| (ep.spec.address, c.connect_timeout))
    }) else {
        tracing::debug!(port, cluster = %entry.target.cluster_name, "inbound TCP: app cluster not known yet");
        return;
    };
    drop(cfg);
    let stats = state.metrics.tcp(&labels);
    stats.opened.inc();
    match connect_tcp(app.0, app.1).await {
        Ok(upstream) => splice(io, upstream, &first, &stats).await,
        Err(e) => tracing::debug!(port, "inbound TCP: cannot reach the app: {e}"),
    }
    stats.closed.inc();
}

/// Evaluates the network RBAC for the caller; a denial is logged and counted.
fn authorized(state: &ProxyState, authz: &Authz, conn: &ConnInfo) -> bool {
    if authz.is_empty() {
        return true;
    }
    let attrs = Attributes {
        principal: conn.principal.as_deref(),
        path: "",
        method: "",
    };
    let Verdict::Deny { reason, policy } = authz.evaluate(&attrs) else {
        return true;
    };
    state
        .metrics
        .count_denied(&state.me.workload, &state.me.namespace, reason.as_str());
    tracing::debug!(
        peer = %conn.peer,
        principal = conn.principal.as_deref().unwrap_or("-"),
        reason = reason.as_str(),
        policy = policy.as_deref().unwrap_or("-"),
        "TCP connection denied by authorization policy; closing"
    );
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected pair of loopback TCP streams (client, server).
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn splice_counts_and_half_closes() {
        let metrics = crate::metrics::Metrics::new();
        let stats = metrics.tcp(&TcpLabels::unknown(Reporter::Source, "tcp"));
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, mut server) = pair().await;
        let spliced = tokio::spawn({
            let stats = stats.clone();
            async move { splice(proxy_down, proxy_up, b"pre:", &stats).await }
        });
        client.write_all(b"request").await.unwrap();
        // Half-close: the client is done sending but still reads.
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pre:request", "EOF reached the server");
        server.write_all(b"response after EOF").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"response after EOF");
        spliced.await.unwrap();
        assert_eq!(stats.received.get(), 11);
        assert_eq!(stats.sent.get(), 18);
    }
}

#[cfg(test)]
mod inbound_tests {
    use super::tests::pair;
    use super::*;
    use crate::routing::{ProxyConfig, tests::me};
    use crate::store::Store;
    use mesh_model::{
        AuthorizationAction, AuthorizationPolicy, AuthorizationRule, AuthorizationSource, MtlsMode,
    };
    use mesh_xds::ResourceType;
    use mesh_xds::any::pack;
    use mesh_xds::resources::{self, InboundAppPort};
    use tokio::io::AsyncReadExt;

    const WEB: &str = "spiffe://cluster.local/ns/web/sa/ui";

    /// A proxy whose inbound listener has opaque port `app.port()` (only
    /// namespace `web` allowed), delivering to `app`.
    fn state(app: SocketAddr) -> Arc<ProxyState> {
        let policy = AuthorizationPolicy {
            name: "web-only".into(),
            namespace: "default".into(),
            selector: Default::default(),
            action: AuthorizationAction::Allow,
            rules: vec![AuthorizationRule {
                from: vec![AuthorizationSource {
                    principals: vec![],
                    namespaces: vec!["web".into()],
                }],
                to: vec![],
            }],
        };
        let network = mesh_xds::authz::network_rbac_filters(&[&policy], "cluster.local");
        let listener = resources::inbound_listener_for(
            &[InboundAppPort {
                port: app.port(),
                opaque: true,
            }],
            MtlsMode::Permissive,
            &[],
            &network,
        );
        let mut store = Store::default();
        store
            .apply_sotw(
                ResourceType::Cluster,
                "1",
                "a",
                &[pack(&resources::inbound_cluster(app, false))],
                None,
            )
            .unwrap();
        store
            .apply_sotw(ResourceType::Listener, "1", "b", &[pack(&listener)], None)
            .unwrap();
        let state = Arc::new(ProxyState::new(me()));
        state.config.store(Arc::new(ProxyConfig::build(
            &store,
            &ProxyConfig::default(),
            &me(),
        )));
        state
    }

    fn conn(principal: Option<&str>) -> ConnInfo {
        ConnInfo {
            peer: "10.0.0.9:40000".parse().unwrap(),
            principal: principal.map(Into::into),
            mtls: principal.is_some(),
            original_dst: None,
        }
    }

    #[tokio::test]
    async fn network_rbac_decides_and_the_preface_names_the_port() {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_addr = app.local_addr().unwrap();
        let state = state(app_addr);
        let preface = Preface {
            target_port: app_addr.port(),
            source_workload: "ui-1".into(),
            source_namespace: "web".into(),
            destination_service: "db.default.svc.cluster.local".into(),
        };

        // Allowed: the preface is consumed, the rest reaches the app.
        let (mut client, server) = pair().await;
        let mut wire = preface.encode();
        wire.extend_from_slice(b"select 1");
        client.write_all(&wire).await.unwrap();
        client.shutdown().await.unwrap();
        let serving = tokio::spawn(inbound(
            state.clone(),
            Io::Plain(server),
            conn(Some(WEB)),
            InboundTcp::Preface,
        ));
        let (mut at_app, _) = app.accept().await.unwrap();
        let mut got = Vec::new();
        at_app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"select 1");
        drop(at_app);
        serving.await.unwrap();

        // Denied: closed before the app sees a connection, and counted.
        let (mut client, server) = pair().await;
        client.write_all(&preface.encode()).await.unwrap();
        // An allowed connection would be spliced and stay open: bound the wait.
        let denied = inbound(
            state.clone(),
            Io::Plain(server),
            conn(Some("spiffe://cluster.local/ns/evil/sa/x")),
            InboundTcp::Preface,
        );
        tokio::time::timeout(std::time::Duration::from_secs(10), denied)
            .await
            .expect("a denied connection is closed at once");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let text = state.metrics.encode();
        assert!(
            text.contains("mesh_authorization_denied_total{destination_workload=\"web-1\",destination_namespace=\"default\",reason=\"no_allow_policy\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mesh_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"ui-1\",source_namespace=\"web\",source_principal=\"spiffe://cluster.local/ns/web/sa/ui\",destination_service=\"db.default.svc.cluster.local\",destination_workload=\"web-1\",destination_namespace=\"default\",destination_principal=\"unknown\",request_protocol=\"tcp\",connection_security_policy=\"mutual_tls\"} 1"),
            "only the allowed connection is opened: {text}"
        );
        // A port that is not opaque here is refused, whatever the preface says.
        let (mut client, server) = pair().await;
        let other = Preface {
            target_port: 1,
            ..preface
        };
        client.write_all(&other.encode()).await.unwrap();
        inbound(
            state,
            Io::Plain(server),
            conn(Some(WEB)),
            InboundTcp::Preface,
        )
        .await;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
