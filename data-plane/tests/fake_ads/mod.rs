//! A small in-process ADS server for tests: holds resources per type, pushes changes
//! to connected streams (Delta and SotW), and records every request it receives.

// Each test binary uses a different part of this helper.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use mesh_xds::ResourceType;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

type Resources = HashMap<ResourceType, BTreeMap<String, Any>>;

/// A request the server received, reduced to what tests check.
#[derive(Debug, Clone)]
pub struct Seen {
    pub type_url: String,
    pub nonce: String,
    pub names: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub error: Option<String>,
    pub has_node: bool,
}

#[derive(Clone)]
pub struct FakeAds {
    resources: watch::Sender<Arc<Resources>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    kill: watch::Sender<u64>,
}

impl FakeAds {
    pub fn new() -> FakeAds {
        FakeAds {
            resources: watch::channel(Arc::new(Resources::new())).0,
            seen: Arc::default(),
            kill: watch::channel(0).0,
        }
    }

    /// Replaces every resource of `ty` and pushes to connected clients.
    pub fn set(&self, ty: ResourceType, items: Vec<(String, Any)>) {
        self.resources.send_modify(|r| {
            let mut next = (**r).clone();
            next.insert(ty, items.into_iter().collect());
            *r = Arc::new(next);
        });
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops serving (call after dropping the stop sender): ends every open stream.
    pub fn kill_streams(&self) {
        self.kill.send_modify(|g| *g += 1);
    }

    /// Serves on `addr` until the returned sender is dropped or fired.
    pub async fn serve(&self, addr: SocketAddr) -> (SocketAddr, oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let local = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let svc = AggregatedDiscoveryServiceServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await;
        });
        (local, tx)
    }

    fn record(&self, s: Seen) {
        self.seen.lock().unwrap().push(s);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

fn version_of(any: &Any) -> String {
    mesh_xds::version::of_bytes(&any.value)
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        let mut updates = self.resources.subscribe();
        let mut kill = self.kill.subscribe();
        tokio::spawn(async move {
            // type -> subscribed names (None = wildcard)
            let mut subs: HashMap<ResourceType, Option<Vec<String>>> = HashMap::new();
            let mut counter = 0u64;
            let push = |ty: ResourceType,
                        names: &Option<Vec<String>>,
                        res: &Resources,
                        counter: &mut u64| {
                *counter += 1;
                let all = res.get(&ty).cloned().unwrap_or_default();
                let resources = all
                    .iter()
                    .filter(|(k, _)| names.as_ref().is_none_or(|n| n.contains(k)))
                    .map(|(_, v)| v.clone())
                    .collect();
                DiscoveryResponse {
                    version_info: format!("v{counter}"),
                    type_url: ty.type_url().into(),
                    nonce: format!("n{counter}"),
                    resources,
                    ..Default::default()
                }
            };
            loop {
                tokio::select! {
                    _ = kill.changed() => {
                        let _ = tx.send(Err(tonic::Status::unavailable("going away"))).await;
                        return;
                    }
                    msg = incoming.message() => {
                        let Ok(Some(req)) = msg else { return };
                        this.record(Seen {
                            type_url: req.type_url.clone(),
                            nonce: req.response_nonce.clone(),
                            names: req.resource_names.clone(),
                            unsubscribe: Vec::new(),
                            error: req.error_detail.as_ref().map(|e| e.message.clone()),
                            has_node: req.node.is_some(),
                        });
                        let Some(ty) = ResourceType::from_type_url(&req.type_url) else { continue };
                        let names = if ty.is_wildcard_by_default() { None } else { Some(req.resource_names.clone()) };
                        let first = !subs.contains_key(&ty);
                        if first || subs.get(&ty) != Some(&names) {
                            subs.insert(ty, names.clone());
                            let res = this.resources.borrow().clone();
                            let resp = push(ty, &names, &res, &mut counter);
                            if tx.send(Ok(resp)).await.is_err() { return }
                        }
                    }
                    changed = updates.changed() => {
                        if changed.is_err() { return }
                        let res = updates.borrow_and_update().clone();
                        for (ty, names) in subs.clone() {
                            let resp = push(ty, &names, &res, &mut counter);
                            if tx.send(Ok(resp)).await.is_err() { return }
                        }
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        let mut updates = self.resources.subscribe();
        let mut kill = self.kill.subscribe();
        tokio::spawn(async move {
            struct Sub {
                wildcard: bool,
                names: HashSet<String>,
                sent: HashMap<String, String>,
            }
            let mut subs: HashMap<ResourceType, Sub> = HashMap::new();
            let mut counter = 0u64;
            let diff = |ty: ResourceType,
                        sub: &mut Sub,
                        res: &Resources,
                        counter: &mut u64,
                        always: bool| {
                let all = res.get(&ty).cloned().unwrap_or_default();
                let mut resources = Vec::new();
                let mut desired = HashSet::new();
                for (name, any) in &all {
                    if !sub.wildcard && !sub.names.contains(name) {
                        continue;
                    }
                    desired.insert(name.clone());
                    let v = version_of(any);
                    if sub.sent.get(name) != Some(&v) {
                        sub.sent.insert(name.clone(), v.clone());
                        resources.push(DeltaResource {
                            name: name.clone(),
                            version: v,
                            resource: Some(any.clone()),
                            ..Default::default()
                        });
                    }
                }
                let removed: Vec<String> = sub
                    .sent
                    .keys()
                    .filter(|k| !desired.contains(*k))
                    .cloned()
                    .collect();
                for r in &removed {
                    sub.sent.remove(r);
                }
                if resources.is_empty() && removed.is_empty() && !always {
                    return None;
                }
                *counter += 1;
                Some(DeltaDiscoveryResponse {
                    type_url: ty.type_url().into(),
                    nonce: format!("d{counter}"),
                    resources,
                    removed_resources: removed,
                    ..Default::default()
                })
            };
            loop {
                tokio::select! {
                    _ = kill.changed() => {
                        let _ = tx.send(Err(tonic::Status::unavailable("going away"))).await;
                        return;
                    }
                    msg = incoming.message() => {
                        let Ok(Some(req)) = msg else { return };
                        this.record(Seen {
                            type_url: req.type_url.clone(),
                            nonce: req.response_nonce.clone(),
                            names: req.resource_names_subscribe.clone(),
                            unsubscribe: req.resource_names_unsubscribe.clone(),
                            error: req.error_detail.as_ref().map(|e| e.message.clone()),
                            has_node: req.node.is_some(),
                        });
                        let Some(ty) = ResourceType::from_type_url(&req.type_url) else { continue };
                        if req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty() {
                            continue; // ACK or NACK
                        }
                        let first = !subs.contains_key(&ty);
                        let sub = subs.entry(ty).or_insert_with(|| Sub {
                            wildcard: false,
                            names: HashSet::new(),
                            sent: req.initial_resource_versions.clone().into_iter().collect(),
                        });
                        for n in &req.resource_names_subscribe {
                            if n == "*" { sub.wildcard = true } else { sub.names.insert(n.clone()); }
                        }
                        for n in &req.resource_names_unsubscribe {
                            sub.names.remove(n);
                            sub.sent.remove(n);
                        }
                        let res = this.resources.borrow().clone();
                        if let Some(resp) = diff(ty, sub, &res, &mut counter, first)
                            && tx.send(Ok(resp)).await.is_err() { return }
                    }
                    changed = updates.changed() => {
                        if changed.is_err() { return }
                        let res = updates.borrow_and_update().clone();
                        for ty in ResourceType::ALL {
                            if let Some(sub) = subs.get_mut(&ty)
                                && let Some(resp) = diff(ty, sub, &res, &mut counter, false)
                                && tx.send(Ok(resp)).await.is_err() { return }
                        }
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
