//! The Kubernetes source: kube-runtime watchers on Namespaces, Services,
//! EndpointSlices, Pods, the mesh's custom resources and Gateway API HTTPRoutes.
//!
//! Each kind has a watcher feeding a reflector store; the watcher lists, then
//! watches from the list's resourceVersion, and on `410 Gone` (the API server
//! compacted past it) lists again. The store swaps in a relist atomically at its
//! end (`InitDone`), so a relist never shows half a cluster and never duplicates.
//!
//! Any change wakes one rebuild task, which maps every store's contents to mesh
//! objects ([`mapping`]) and publishes a [`RegistryState`] exactly like the file
//! source, so debounce, snapshots and xDS are unchanged. Rebuilding from scratch
//! is cheap next to building snapshots, keeps no incremental state that could
//! drift, and makes namespace (un)labelling just another rebuild. A burst of
//! events coalesces into one rebuild, and a rebuild that maps to the same objects
//! (status churn, bookmarks, relists) publishes nothing.

pub mod mapping;

use std::fmt::Debug;
use std::hash::Hash;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use mesh_model::{Model, ModelOptions};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::{RegistryState, unix_now};
use crate::metrics::Metrics;
use mapping::ClusterState;

/// The `source` of the published [`RegistryState`] and of registry event metrics.
pub const SOURCE: &str = "kubernetes";
/// How often a controller still waiting for its first complete list says so.
const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// First and longest wait before retrying a failed list or watch.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));

/// A `mesh.io/v1alpha1` custom resource of the mesh.
fn mesh_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("mesh.io", "v1alpha1", kind), plural)
}

/// Gateway API's HTTPRoute (the mesh profile: parents are Services).
fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// A client for `kubeconfig`, or, without one, the usual inference: `$KUBECONFIG`
/// or `~/.kube/config`, else the in-cluster service account.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("bad --kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: not in a cluster, no $KUBECONFIG or ~/.kube/config \
             (give --kubeconfig PATH)",
        )?,
    };
    tracing::info!(server = %config.cluster_url, kubeconfig = ?kubeconfig, "Kubernetes API server");
    Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Whether a watcher has delivered a complete list, for the first model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ListState {
    /// Still listing; the last error, if any.
    Pending(Option<String>),
    /// Listed at least once.
    Ready,
    /// The resource does not exist on this server (CRD not installed).
    Missing,
}

/// Starts the watchers, waits for the first complete list of every kind the model
/// needs (so proxies are never pushed a half-listed cluster), and then publishes
/// every change.
pub async fn start(
    client: Client,
    options: ModelOptions,
    metrics: Arc<Metrics>,
) -> anyhow::Result<watch::Receiver<RegistryState>> {
    let changed = Arc::new(Notify::new());
    let ctx = WatchContext {
        changed: changed.clone(),
        metrics: metrics.clone(),
    };
    let (namespaces, ns_sync) = ctx.watch_typed(Api::<Namespace>::all(client.clone()), "Namespace");
    let (services, svc_sync) = ctx.watch_typed(Api::<Service>::all(client.clone()), "Service");
    let (slices, slice_sync) =
        ctx.watch_typed(Api::<EndpointSlice>::all(client.clone()), "EndpointSlice");
    let (pods, pod_sync) = ctx.watch_pods(Api::<Pod>::all(client.clone()));
    let ar = mesh_resource("AuthorizationPolicy", "authorizationpolicies");
    let (policies, policy_sync) = ctx.watch_dynamic(
        Api::<DynamicObject>::all_with(client.clone(), &ar),
        ar,
        "AuthorizationPolicy",
    );
    let ar = mesh_resource("TrafficPolicy", "trafficpolicies");
    let (traffic_policies, traffic_sync) = ctx.watch_dynamic(
        Api::<DynamicObject>::all_with(client.clone(), &ar),
        ar,
        "TrafficPolicy",
    );
    let ar = http_route_resource();
    let (routes, route_sync) = ctx.watch_dynamic(
        Api::<DynamicObject>::all_with(client.clone(), &ar),
        ar,
        "HTTPRoute",
    );
    // Policies gate the first model too: starting without a DENY policy that
    // exists would briefly open what it closes; routes likewise, or a canary
    // split would start as "everything to the service". A missing CRD (Gateway
    // API not installed) counts as none.
    let mut gates = vec![
        ("Namespace", ns_sync),
        ("Service", svc_sync),
        ("EndpointSlice", slice_sync),
        ("Pod", pod_sync),
        ("AuthorizationPolicy", policy_sync),
        // Not a security gate, but proxies should not first get the defaults and
        // a moment later the policy (a missing CRD counts as none).
        ("TrafficPolicy", traffic_sync),
        ("HTTPRoute", route_sync),
    ];
    let started = Instant::now();
    for (kind, sync) in &mut gates {
        loop {
            let waited = tokio::time::timeout(
                WAIT_LOG_INTERVAL,
                sync.wait_for(|s| !matches!(s, ListState::Pending(_))),
            )
            .await
            .map(|r| r.map(|_| ()));
            match waited {
                Ok(Ok(())) => break,
                Ok(Err(_)) => anyhow::bail!("the {kind} watcher stopped before its first list"),
                Err(_) => {
                    let last_error = match &*sync.borrow() {
                        ListState::Pending(e) => e.clone(),
                        _ => None,
                    };
                    tracing::warn!(
                        kind = *kind,
                        waited_s = started.elapsed().as_secs(),
                        last_error = last_error.as_deref().unwrap_or("none"),
                        "still waiting for the first complete list from the Kubernetes API"
                    );
                }
            }
        }
    }

    let stores = Stores {
        namespaces,
        services,
        slices,
        pods,
        policies,
        traffic_policies,
        routes,
    };
    let mut reporter = Reporter::default();
    let mapped = reporter.map(&stores);
    tracing::info!(
        objects = mapped.objects.len(),
        rejected = mapped.rejected.len(),
        sync_ms = started.elapsed().as_millis() as u64,
        "Kubernetes registry synced"
    );
    metrics.registry_event(SOURCE, mapped.rejected.is_empty());
    let mut state = RegistryState::new(
        SOURCE.to_string(),
        Arc::new(Model::new(mapped.objects.clone(), options.clone())),
    );
    state.last_error = rejected_summary(&mapped.rejected);
    let (tx, rx) = watch::channel(state);
    tokio::spawn(rebuild_loop(
        tx, stores, reporter, mapped, changed, options, metrics,
    ));
    Ok(rx)
}

/// The reflector stores the model is built from.
struct Stores {
    namespaces: Store<Namespace>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    policies: Store<DynamicObject>,
    traffic_policies: Store<DynamicObject>,
    routes: Store<DynamicObject>,
}

impl Stores {
    fn snapshot(&self) -> ClusterState {
        ClusterState {
            namespaces: self.namespaces.state(),
            services: self.services.state(),
            endpoint_slices: self.slices.state(),
            pods: self.pods.state(),
            authorization_policies: self.policies.state(),
            traffic_policies: self.traffic_policies.state(),
            http_routes: self.routes.state(),
        }
    }
}

/// Logs what could not be used once per distinct problem rather than on every
/// rebuild (a pod churning would otherwise repeat the same warning forever).
#[derive(Default)]
struct Reporter {
    rejected: Vec<String>,
}

impl Reporter {
    fn map(&mut self, stores: &Stores) -> mapping::Mapped {
        let mapped = mapping::map_cluster(&stores.snapshot());
        for reason in &mapped.rejected {
            if !self.rejected.contains(reason) {
                tracing::warn!(source = SOURCE, error = %reason, "ignoring an invalid object; the rest of the cluster still applies");
            }
        }
        self.rejected.clone_from(&mapped.rejected);
        mapped
    }
}

fn rejected_summary(rejected: &[String]) -> Option<String> {
    (!rejected.is_empty()).then(|| rejected.join("; "))
}

async fn rebuild_loop(
    tx: watch::Sender<RegistryState>,
    stores: Stores,
    mut reporter: Reporter,
    mut last: mapping::Mapped,
    changed: Arc<Notify>,
    options: ModelOptions,
    metrics: Arc<Metrics>,
) {
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tx.closed() => return,
        }
        let first_seen = Instant::now();
        let mapped = reporter.map(&stores);
        if mapped == last {
            continue;
        }
        let new_rejections = mapped.rejected.iter().any(|r| !last.rejected.contains(r));
        if new_rejections {
            metrics.registry_event(SOURCE, false);
        }
        let model_changed = mapped.objects != last.objects;
        let started = Instant::now();
        let model =
            model_changed.then(|| Arc::new(Model::new(mapped.objects.clone(), options.clone())));
        tx.send_modify(|state| {
            state.changed_at = first_seen;
            state.changed_at_unix = unix_now();
            state.last_error = rejected_summary(&mapped.rejected);
            if let Some(model) = model {
                state.model = model;
                state.revision += 1;
                tracing::debug!(
                    revision = state.revision,
                    objects = mapped.objects.len(),
                    build_us = started.elapsed().as_micros() as u64,
                    "Kubernetes registry changed"
                );
            }
        });
        last = mapped;
    }
}

/// What every watcher task shares.
struct WatchContext {
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl WatchContext {
    fn watch_typed<K>(
        &self,
        api: Api<K>,
        kind: &'static str,
    ) -> (Store<K>, watch::Receiver<ListState>)
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let writer = reflector::store::Writer::<K>::default();
        let store = writer.as_reader();
        let stream = watcher(api, watcher::Config::default())
            .modify(mapping::trim_metadata::<K>)
            .reflect(writer);
        (store, self.spawn(stream, kind))
    }

    fn watch_pods(&self, api: Api<Pod>) -> (Store<Pod>, watch::Receiver<ListState>) {
        let writer = reflector::store::Writer::<Pod>::default();
        let store = writer.as_reader();
        let stream = watcher(api, watcher::Config::default())
            .modify(mapping::trim_pod)
            .reflect(writer);
        (store, self.spawn(stream, "Pod"))
    }

    fn watch_dynamic(
        &self,
        api: Api<DynamicObject>,
        ar: ApiResource,
        kind: &'static str,
    ) -> (Store<DynamicObject>, watch::Receiver<ListState>) {
        let writer = reflector::store::Writer::<DynamicObject>::new(ar);
        let store = writer.as_reader();
        let stream = watcher(api, watcher::Config::default())
            .modify(mapping::trim_metadata::<DynamicObject>)
            .reflect(writer);
        (store, self.spawn(stream, kind))
    }

    /// Drives one watcher stream: counts events, wakes the rebuild, reports its
    /// first complete list, and logs errors once per streak.
    ///
    /// Failures are retried with exponential backoff, except `410 Gone`: that is
    /// the normal end of a watch whose resourceVersion was compacted away, and the
    /// relist starts at once (kube's stream backoff would hold it ~1 s, during
    /// which changes would not reach proxies).
    fn spawn<K, S>(&self, stream: S, kind: &'static str) -> watch::Receiver<ListState>
    where
        K: kube::Resource + Send + 'static,
        K::DynamicType: Eq + Hash + Clone,
        S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let (sync_tx, sync_rx) = watch::channel(ListState::Pending(None));
        let changed = self.changed.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut failing = false;
            let mut backoff = BACKOFF.0;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => {
                        tracing::debug!(kind, "listing");
                    }
                    // Buffered by the store until InitDone; nothing to rebuild yet.
                    Ok(watcher::Event::InitApply(_)) => {}
                    Ok(watcher::Event::InitDone) => {
                        failing = false;
                        backoff = BACKOFF.0;
                        tracing::debug!(kind, "list complete");
                        metrics.registry_event(SOURCE, true);
                        sync_tx.send_replace(ListState::Ready);
                        changed.notify_one();
                    }
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                        failing = false;
                        backoff = BACKOFF.0;
                        metrics.registry_event(SOURCE, true);
                        changed.notify_one();
                    }
                    Err(e) => {
                        let missing = is_not_found(&e);
                        if missing && *sync_tx.borrow() != ListState::Ready {
                            sync_tx.send_replace(ListState::Missing);
                        } else if let ListState::Pending(_) = *sync_tx.borrow() {
                            sync_tx.send_replace(ListState::Pending(Some(e.to_string())));
                        }
                        if is_gone(&e) {
                            tracing::info!(kind, "watch expired (410 Gone); relisting");
                        } else if !failing {
                            failing = true;
                            if missing {
                                tracing::warn!(kind, error = %e, "resource not found (CRD not installed?); retrying with backoff");
                            } else {
                                tracing::warn!(kind, error = %e, "Kubernetes watch failed; retrying with backoff");
                            }
                        } else {
                            tracing::debug!(kind, error = %e, "Kubernetes watch still failing");
                        }
                        if !is_gone(&e) {
                            // Not polling is the backoff: the watcher retries when
                            // asked for its next event.
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(BACKOFF.1);
                        }
                    }
                }
            }
            tracing::error!(kind, "Kubernetes watcher ended");
        });
        sync_rx
    }
}

fn api_status(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

fn is_gone(e: &watcher::Error) -> bool {
    api_status(e) == Some(410)
}

fn is_not_found(e: &watcher::Error) -> bool {
    api_status(e) == Some(404)
}
