//! What both ADS variants share: reading the first request's node, counting the
//! stream, and tracking sent nonces against ACKs and NACKs per type.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mesh_xds::{ProxyNode, ProxyView, ResourceType};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::XdsContext;
use super::status::SyncStatus;
use crate::metrics::Metrics;
pub use crate::secure::Peer;

/// How a request's nonce relates to what was sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// No nonce: a new subscription, not a reply.
    Initial,
    /// A reply to an older response; superseded, so ignored for ACK purposes.
    Stale,
    /// The proxy accepted the latest response.
    Ack,
    /// The proxy rejected the latest response.
    Nack,
}

#[derive(Debug, Default)]
struct Sent {
    nonce: String,
    version: String,
    /// When the registry change behind this push happened (None for initial pushes).
    change_at: Option<Instant>,
    /// For SDS: the version of the `ROOTCA` trust bundle the proxy holds once it
    /// ACKs this response.
    bundle_version: Option<String>,
}

/// One stream's bookkeeping, registered in the sync registry while it lives.
pub struct StreamTracker {
    /// The proxy on the other end.
    pub node: ProxyNode,
    ctx: XdsContext,
    id: u64,
    next_nonce: u64,
    sent: HashMap<ResourceType, Sent>,
}

impl StreamTracker {
    /// Registers a stream for the node of its first request. gRPC clients send the
    /// node only there, so it is remembered for the stream's life.
    ///
    /// On the TLS port the node is bound to the client certificate: no certificate,
    /// no stream (UNAUTHENTICATED); a node claiming another namespace, or a
    /// workload whose service account is not the certificate's, is refused
    /// (PERMISSION_DENIED), so a proxy cannot obtain another workload's config.
    /// Plaintext streams (loopback development) are not bound.
    pub fn open(
        ctx: &XdsContext,
        node: Option<&Node>,
        protocol: &'static str,
        peer: &Peer,
    ) -> Result<StreamTracker, Status> {
        let node = node.ok_or_else(|| {
            Status::invalid_argument("the first request of an ADS stream must carry a node")
        })?;
        if node.id.is_empty() {
            return Err(Status::invalid_argument(
                "the node must have a non-empty id",
            ));
        }
        let node = ProxyNode::from_node(node);
        if peer.secure {
            let model = ctx.snapshots.borrow().snapshot.model.clone();
            if let Err(status) = bind(&node, peer.identity.as_ref(), &model) {
                tracing::warn!(node = %node.id, workload = ?node.workload, namespace = %node.namespace, %peer, protocol, reason = %status.message(), "refused xDS stream");
                return Err(status);
            }
        }
        let id = ctx.sync.register(&node, protocol, peer);
        ctx.metrics.connected_proxies.inc();
        tracing::info!(node = %node.id, workload = ?node.workload, namespace = %node.namespace, %peer, protocol, "proxy connected");
        Ok(StreamTracker {
            node,
            ctx: ctx.clone(),
            id,
            next_nonce: 0,
            sent: HashMap::new(),
        })
    }

    /// Classifies a request's nonce and records an ACK or NACK.
    pub fn reply(&mut self, ty: ResourceType, nonce: &str, error: Option<&RpcStatus>) -> Reply {
        if nonce.is_empty() {
            return Reply::Initial;
        }
        let Some(sent) = self.sent.get(&ty).filter(|s| s.nonce == nonce) else {
            return Reply::Stale;
        };
        let version = sent.version.clone();
        let change_at = sent.change_at;
        let bundle_version = sent.bundle_version.clone();
        match error {
            Some(err) => {
                let reason = err.message.clone();
                tracing::warn!(node = %self.node.id, r#type = %ty, %nonce, %reason, "proxy rejected config (NACK)");
                self.ctx
                    .metrics
                    .rejects
                    .get_or_create(&Metrics::type_label(ty))
                    .inc();
                self.ctx.sync.update(self.id, ty, |t| {
                    t.status = SyncStatus::Error;
                    t.error = Some(reason);
                });
                Reply::Nack
            }
            None => {
                if let Some(at) = change_at {
                    self.ctx
                        .metrics
                        .convergence
                        .observe(at.elapsed().as_secs_f64());
                }
                if let Some(s) = self.sent.get_mut(&ty) {
                    s.change_at = None;
                }
                self.ctx.sync.update(self.id, ty, |t| {
                    t.status = SyncStatus::Synced;
                    t.acked_version = Some(version);
                    t.error = None;
                });
                if ty == ResourceType::Secret {
                    self.ctx.sync.set_trust_bundle(self.id, bundle_version);
                }
                Reply::Ack
            }
        }
    }

    /// A fresh nonce for a response about to be sent.
    pub fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        self.next_nonce.to_string()
    }

    /// Records a response that was sent; `bundle_version` is the `ROOTCA` version
    /// the proxy holds after it (SDS only).
    #[allow(clippy::too_many_arguments)]
    pub fn sent(
        &mut self,
        ty: ResourceType,
        nonce: String,
        version: String,
        resources: usize,
        change_at: Option<Instant>,
        started: Instant,
        bundle_version: Option<String>,
    ) {
        let metrics = &self.ctx.metrics;
        metrics.pushes.get_or_create(&Metrics::type_label(ty)).inc();
        metrics
            .push_duration
            .observe(started.elapsed().as_secs_f64());
        self.ctx.sync.update(self.id, ty, |t| {
            t.status = SyncStatus::Stale;
            t.sent_version = Some(version.clone());
            t.sent_nonce = Some(nonce.clone());
            t.resources = resources;
        });
        tracing::debug!(node = %self.node.id, r#type = %ty, %nonce, %version, resources, "pushed");
        self.sent.insert(
            ty,
            Sent {
                nonce,
                version,
                change_at,
                bundle_version,
            },
        );
    }
}

impl Drop for StreamTracker {
    fn drop(&mut self) {
        self.ctx.sync.unregister(self.id);
        self.ctx.metrics.connected_proxies.dec();
        tracing::info!(node = %self.node.id, "proxy disconnected");
    }
}

/// Checks that a node on the TLS port is who its certificate says.
pub fn bind(
    node: &ProxyNode,
    identity: Option<&mesh_identity::Identity>,
    model: &mesh_model::Model,
) -> Result<(), Status> {
    let Some(identity) = identity else {
        return Err(Status::unauthenticated(
            "xDS over the secure port needs a workload certificate: call Certify first",
        ));
    };
    if node.namespace != identity.namespace {
        return Err(Status::permission_denied(format!(
            "node {:?} claims namespace {:?}, but its certificate is {identity}",
            node.id, node.namespace
        )));
    }
    let Some(workload_name) = node.workload.as_deref() else {
        return Ok(());
    };
    match model.workload(&node.namespace, workload_name) {
        None => Err(Status::permission_denied(format!(
            "node {:?} claims workload {}/{workload_name}, which is not in the registry (certificate: {identity})",
            node.id, node.namespace
        ))),
        Some(w) if model.identity(w) != *identity => Err(Status::permission_denied(format!(
            "node {:?} claims workload {}/{workload_name} with service account {:?} ({}), but its certificate is {identity}",
            node.id,
            node.namespace,
            w.service_account,
            model.identity(w)
        ))),
        Some(_) => Ok(()),
    }
}

/// Resolves a type URL or explains why not.
pub fn resource_type(type_url: &str) -> Option<ResourceType> {
    let ty = ResourceType::from_type_url(type_url);
    if ty.is_none() {
        tracing::debug!(%type_url, "ignoring request for a type the mesh does not serve");
    }
    ty
}

/// A subscription to one type: everything, and/or some names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Every resource of the type.
    pub wildcard: bool,
    /// Named resources.
    pub names: std::collections::BTreeSet<String>,
}

/// The wildcard name.
pub const WILDCARD: &str = "*";

impl Subscription {
    /// The resources this subscription selects from `view`, by name.
    pub fn select(
        &self,
        view: &mesh_xds::ProxyView,
        ty: ResourceType,
    ) -> std::collections::BTreeMap<String, Arc<mesh_xds::Resource>> {
        let mut out = std::collections::BTreeMap::new();
        if self.wildcard {
            for r in view.wildcard(ty) {
                out.insert(r.name.clone(), r);
            }
        }
        for name in &self.names {
            if let Some(r) = view.get(ty, name) {
                out.insert(name.clone(), r);
            }
        }
        out
    }
}

/// The channel to the proxy closed; the stream ends.
#[derive(Debug)]
pub struct Closed;

/// One ADS variant's handling of requests and snapshot changes; [`drive`] runs the
/// loop both variants share.
pub trait Variant: Sized + Send {
    /// The variant's request message.
    type Request: Send + 'static;
    /// The variant's response message.
    type Response: Send + 'static;
    /// `sotw` or `delta`, for logs and `/debug/syncz`.
    const PROTOCOL: &'static str;

    /// The node in a request, if it carries one.
    fn node(request: &Self::Request) -> Option<&Node>;
    /// A new stream's state.
    fn new(
        tracker: StreamTracker,
        view: ProxyView,
        tx: mpsc::Sender<Result<Self::Response, Status>>,
    ) -> Self;
    /// The stream's bookkeeping.
    fn tracker(&self) -> &StreamTracker;
    /// Handles one request from the proxy.
    fn handle(
        &mut self,
        request: Self::Request,
    ) -> impl std::future::Future<Output = Result<(), Closed>> + Send;
    /// Pushes what changed for the proxy in a new snapshot.
    fn refresh(
        &mut self,
        view: ProxyView,
        change_at: Instant,
    ) -> impl std::future::Future<Output = Result<(), Closed>> + Send;
}

/// Serves one ADS stream until either side closes it: the first request opens it
/// (and must carry the node), then requests and snapshot changes are handled in
/// arrival order.
pub async fn drive<V: Variant>(
    ctx: XdsContext,
    mut requests: Streaming<V::Request>,
    tx: mpsc::Sender<Result<V::Response, Status>>,
    peer: Peer,
) where
    Streaming<V::Request>: Send,
{
    let first = match requests.message().await {
        Ok(Some(r)) => r,
        _ => return,
    };
    let tracker = match StreamTracker::open(&ctx, V::node(&first), V::PROTOCOL, &peer) {
        Ok(t) => t,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut snapshots = ctx.snapshots.clone();
    let published = snapshots.borrow_and_update().clone();
    let view = ProxyView::new(published.snapshot, &tracker.node);
    let mut stream = V::new(tracker, view, tx);
    if stream.handle(first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            request = requests.message() => match request {
                Ok(Some(r)) => if stream.handle(r).await.is_err() { return },
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(node = %stream.tracker().node.id, error = %e, "stream ended");
                    return;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() { return }
                let published = snapshots.borrow_and_update().clone();
                let view = ProxyView::new(published.snapshot, &stream.tracker().node);
                if stream.refresh(view, published.changed_at).await.is_err() {
                    return;
                }
            }
        }
    }
}
