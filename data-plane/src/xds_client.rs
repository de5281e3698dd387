//! The ADS client: one stream to the controller, Delta by default or State of the
//! World, that keeps the [`Store`] current and publishes new routing tables.
//!
//! LDS and CDS are wildcard subscriptions; RDS follows the route names the listeners
//! reference and EDS the EDS clusters, so the subscription grows and shrinks with the
//! config; SDS asks by name for the trust bundle `ROOTCA`, which replaces the
//! `--trust-anchors` file as the roots peers are verified against. With an identity
//! the stream waits for the first certificate and then runs over mutual TLS. Every response is ACKed or NACKed; a NACKed type keeps its last good
//! resources. On stream failure the client reconnects with jittered exponential
//! backoff while the data plane keeps serving its last good config.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use mesh_xds::ResourceType;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::config::XdsProtocol;
use crate::decode::SecretSpec;
use crate::identity::Controller;
use crate::routing::{LocalIdentity, ProxyConfig};
use crate::state::ProxyState;
use crate::store::Store;
use crate::tls::BundleSource;

/// gRPC code `INVALID_ARGUMENT`, used in NACKs.
const INVALID_ARGUMENT: i32 = 3;
/// Largest xDS response accepted (big meshes send large CDS/EDS responses).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Subscription order: secrets, clusters, endpoints, listeners, routes.
const ORDER: [ResourceType; 5] = ResourceType::ALL;

/// Jittered exponential backoff ("full jitter"): each wait is uniform in
/// `[0, current]`, and `current` doubles up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `base` and capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            current: base,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.current;
        self.current = (self.current * 2).min(self.max);
        cap.mul_f64(fastrand::f64())
    }

    /// Back to `base`, after a stream that worked.
    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

/// The ADS client task.
pub struct XdsClient {
    state: Arc<ProxyState>,
    addr: String,
    controller: Controller,
    protocol: XdsProtocol,
    node: Node,
    store: Store,
    /// The SDS bundle last handed to the TLS state.
    applied_bundle: Option<Arc<SecretSpec>>,
}

fn nack_status(message: String) -> Option<Status> {
    Some(Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    })
}

impl XdsClient {
    /// A client for `controller` that announces itself as `node`.
    pub fn new(
        state: Arc<ProxyState>,
        controller: Controller,
        protocol: XdsProtocol,
        node: Node,
    ) -> Self {
        XdsClient {
            state,
            addr: controller.display.clone(),
            controller,
            protocol,
            node,
            store: Store::default(),
            applied_bundle: None,
        }
    }

    /// Runs until `shutdown` flips, reconnecting as needed.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // Consecutive failures; a long outage logs about once a minute, not every retry.
        let mut failures = 0u32;
        loop {
            let result = tokio::select! {
                r = self.session(&mut backoff, &mut failures) => r,
                _ = crate::server::stopped(&mut shutdown) => return,
            };
            self.state.metrics.xds_connected.set(0);
            failures = failures.saturating_add(1);
            let loud = failures == 1 || failures.is_multiple_of(12);
            match result {
                Ok(()) if loud => {
                    tracing::warn!(addr = %self.addr, "xDS stream ended by the server; reconnecting")
                }
                Err(e) if loud => {
                    tracing::warn!(addr = %self.addr, failures, "xDS stream failed: {e:#}; reconnecting")
                }
                Ok(()) => tracing::debug!(addr = %self.addr, "xDS stream ended by the server"),
                Err(e) => tracing::debug!(addr = %self.addr, "xDS stream failed: {e:#}"),
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
        }
    }

    async fn connect(
        &self,
    ) -> anyhow::Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>> {
        // With an identity, ADS waits for the certificate: over TLS the controller
        // binds the node to it, and config is useless without one anyway.
        if self.state.tls.enabled() && self.state.tls.credentials().is_none() {
            tracing::info!(addr = %self.addr, "waiting for the workload certificate before xDS");
            self.state.tls.wait_for_credentials().await;
        }
        let channel = self.controller.channel(true).await?;
        Ok(AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    async fn session(&mut self, backoff: &mut Backoff, failures: &mut u32) -> anyhow::Result<()> {
        let client = self.connect().await?;
        match self.protocol {
            XdsProtocol::Delta => self.delta_session(client, backoff, failures).await,
            XdsProtocol::Sotw => self.sotw_session(client, backoff, failures).await,
        }
    }

    /// Hands a new SDS trust bundle to the TLS state. The bundle was checked at
    /// decode time; should it still not build, the old bundle stays and the error
    /// is logged.
    fn apply_bundle(&mut self) {
        let Some(bundle) = self.store.trust_bundle().cloned() else {
            return;
        };
        if self
            .applied_bundle
            .as_ref()
            .is_some_and(|old| Arc::ptr_eq(old, &bundle))
        {
            return;
        }
        match self
            .state
            .tls
            .set_bundle(bundle.anchors.clone(), BundleSource::Sds)
        {
            Ok(()) => tracing::info!(
                roots = bundle.anchors.len(),
                "trust bundle updated from SDS"
            ),
            Err(e) => tracing::error!("cannot use the SDS trust bundle: {e}; keeping the old one"),
        }
        self.applied_bundle = Some(bundle);
    }

    /// Publishes the store as new routing tables; logs once when first complete.
    fn publish(&mut self) {
        self.apply_bundle();
        let prev = self.state.config.load();
        let me = LocalIdentity {
            principal: self.state.tls.configs().map(|c| c.spiffe_id.to_string()),
            mtls: self.state.tls.enabled(),
            ..self.state.me.clone()
        };
        let next = ProxyConfig::build(&self.store, &prev, &me);
        self.state.config.store(Arc::new(next));
        if self.store.is_complete() && !self.state.ready.swap(true, Ordering::AcqRel) {
            tracing::info!(
                listeners = self.store.map(ResourceType::Listener).len(),
                routes = self.store.map(ResourceType::Route).len(),
                clusters = self.store.map(ResourceType::Cluster).len(),
                endpoints = self.store.map(ResourceType::Endpoint).len(),
                "mesh-proxy ready"
            );
        }
    }

    // ---- Delta -------------------------------------------------------------

    async fn delta_session(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        backoff: &mut Backoff,
        failures: &mut u32,
    ) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
        let mut node = Some(self.node.clone());
        let mut send = move |mut req: DeltaDiscoveryRequest| {
            if let Some(n) = node.take() {
                req.node = Some(n);
            }
            // The receiver lives as long as the stream; a send error means the
            // stream is gone and the read loop will notice.
            let _ = tx.send(req);
        };
        // What this stream has subscribed to, for the non-wildcard types.
        let mut subscribed: HashMap<ResourceType, BTreeSet<String>> = HashMap::new();
        for ty in ORDER {
            let versions = self.store.versions(ty);
            match self.store.subscription(ty) {
                None => send(DeltaDiscoveryRequest {
                    type_url: ty.type_url().into(),
                    resource_names_subscribe: vec!["*".into()],
                    initial_resource_versions: versions,
                    ..Default::default()
                }),
                Some(names) if !names.is_empty() => {
                    send(DeltaDiscoveryRequest {
                        type_url: ty.type_url().into(),
                        resource_names_subscribe: names.iter().cloned().collect(),
                        initial_resource_versions: versions
                            .into_iter()
                            .filter(|(k, _)| names.contains(k))
                            .collect(),
                        ..Default::default()
                    });
                    subscribed.insert(ty, names);
                }
                Some(_) => {}
            }
        }
        let mut stream = client
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .context("DeltaAggregatedResources")?
            .into_inner();
        self.state.metrics.xds_connected.set(1);
        tracing::info!(addr = %self.addr, "xDS connected (delta)");
        while let Some(resp) = stream.message().await.context("xDS stream")? {
            backoff.reset();
            *failures = 0;
            self.on_delta(resp, &mut send, &mut subscribed);
        }
        Ok(())
    }

    fn on_delta(
        &mut self,
        resp: DeltaDiscoveryResponse,
        send: &mut impl FnMut(DeltaDiscoveryRequest),
        subscribed: &mut HashMap<ResourceType, BTreeSet<String>>,
    ) {
        let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "NACK: unknown resource type");
            send(DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce,
                error_detail: nack_status(format!("unsupported type URL {:?}", resp.type_url)),
                ..Default::default()
            });
            return;
        };
        let mut removed = resp.removed_resources;
        removed.extend(resp.removed_resource_names.into_iter().map(|r| r.name));
        match self.store.apply_delta(
            ty,
            &resp.system_version_info,
            &resp.nonce,
            &resp.resources,
            &removed,
        ) {
            Ok(()) => {
                tracing::debug!(%ty, updated = resp.resources.len(), removed = removed.len(), nonce = %resp.nonce, "ACK");
                send(DeltaDiscoveryRequest {
                    type_url: ty.type_url().into(),
                    response_nonce: resp.nonce,
                    ..Default::default()
                });
                for &dep in dependents(ty) {
                    let want = self.store.subscription(dep).unwrap_or_default();
                    let have = subscribed.entry(dep).or_default();
                    let add: Vec<String> = want.difference(have).cloned().collect();
                    let drop: Vec<String> = have.difference(&want).cloned().collect();
                    if !add.is_empty() || !drop.is_empty() {
                        tracing::debug!(ty = %dep, ?add, ?drop, "subscription change");
                        send(DeltaDiscoveryRequest {
                            type_url: dep.type_url().into(),
                            resource_names_subscribe: add,
                            resource_names_unsubscribe: drop,
                            ..Default::default()
                        });
                        *have = want.clone();
                    }
                    self.store.retain(dep, &want);
                }
                self.publish();
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(%ty, nonce = %resp.nonce, "NACK: {message}");
                self.store.rejected(ty, &message);
                send(DeltaDiscoveryRequest {
                    type_url: ty.type_url().into(),
                    response_nonce: resp.nonce,
                    error_detail: nack_status(message),
                    ..Default::default()
                });
                self.publish();
            }
        }
    }

    // ---- State of the World ---------------------------------------------------

    async fn sotw_session(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        backoff: &mut Backoff,
        failures: &mut u32,
    ) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
        let mut node = Some(self.node.clone());
        let mut send = move |mut req: DiscoveryRequest| {
            if let Some(n) = node.take() {
                req.node = Some(n);
            }
            let _ = tx.send(req);
        };
        let mut streams = SotwStreams::default();
        for ty in ORDER {
            let names = self.store.subscription(ty);
            if names.as_ref().is_some_and(BTreeSet::is_empty) {
                continue;
            }
            send(DiscoveryRequest {
                type_url: ty.type_url().into(),
                version_info: self.store.status(ty).version_info.clone(),
                resource_names: names.iter().flatten().cloned().collect(),
                ..Default::default()
            });
            if let Some(names) = names {
                streams.names.insert(ty, names);
            }
        }
        let mut stream = client
            .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .context("StreamAggregatedResources")?
            .into_inner();
        self.state.metrics.xds_connected.set(1);
        tracing::info!(addr = %self.addr, "xDS connected (sotw)");
        while let Some(resp) = stream.message().await.context("xDS stream")? {
            backoff.reset();
            *failures = 0;
            self.on_sotw(resp, &mut send, &mut streams);
        }
        Ok(())
    }

    fn on_sotw(
        &mut self,
        resp: DiscoveryResponse,
        send: &mut impl FnMut(DiscoveryRequest),
        streams: &mut SotwStreams,
    ) {
        let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "NACK: unknown resource type");
            send(DiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce,
                error_detail: nack_status(format!("unsupported type URL {:?}", resp.type_url)),
                ..Default::default()
            });
            return;
        };
        streams.nonces.insert(ty, resp.nonce.clone());
        let names = streams.names.get(&ty).cloned();
        let resource_names: Vec<String> = names.iter().flatten().cloned().collect();
        match self.store.apply_sotw(
            ty,
            &resp.version_info,
            &resp.nonce,
            &resp.resources,
            names.as_ref(),
        ) {
            Ok(()) => {
                tracing::debug!(%ty, version = %resp.version_info, resources = resp.resources.len(), "ACK");
                send(DiscoveryRequest {
                    type_url: ty.type_url().into(),
                    version_info: resp.version_info,
                    response_nonce: resp.nonce,
                    resource_names,
                    ..Default::default()
                });
                for &dep in dependents(ty) {
                    let want = self.store.subscription(dep).unwrap_or_default();
                    let have = streams.names.get(&dep);
                    let changed = match have {
                        Some(have) => *have != want,
                        // Never subscribed: an empty list would mean "wildcard".
                        None => !want.is_empty(),
                    };
                    if changed {
                        tracing::debug!(ty = %dep, names = ?want, "subscription change");
                        send(DiscoveryRequest {
                            type_url: dep.type_url().into(),
                            version_info: self.store.status(dep).version_info.clone(),
                            response_nonce: streams.nonces.get(&dep).cloned().unwrap_or_default(),
                            resource_names: want.iter().cloned().collect(),
                            ..Default::default()
                        });
                        streams.names.insert(dep, want.clone());
                    }
                    self.store.retain(dep, &want);
                }
                self.publish();
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(%ty, nonce = %resp.nonce, "NACK: {message}");
                self.store.rejected(ty, &message);
                send(DiscoveryRequest {
                    type_url: ty.type_url().into(),
                    version_info: self.store.status(ty).version_info.clone(),
                    response_nonce: resp.nonce,
                    resource_names,
                    error_detail: nack_status(message),
                    ..Default::default()
                });
                self.publish();
            }
        }
    }
}

/// Per-stream SotW bookkeeping: last nonce per type, names sent per non-wildcard type.
#[derive(Debug, Default)]
struct SotwStreams {
    nonces: HashMap<ResourceType, String>,
    names: HashMap<ResourceType, BTreeSet<String>>,
}

/// The types whose subscription depends on `ty`: RDS on LDS, EDS on CDS.
fn dependents(ty: ResourceType) -> &'static [ResourceType] {
    match ty {
        ResourceType::Listener => &[ResourceType::Route],
        ResourceType::Cluster => &[ResourceType::Endpoint],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_capped_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut max_seen = Duration::ZERO;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(5));
            max_seen = max_seen.max(d);
        }
        assert!(max_seen > Duration::from_millis(100), "grows");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
