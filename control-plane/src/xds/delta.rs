//! Delta (incremental) ADS: responses carry only what changed, and removals.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};
use mesh_xds::{ProxyView, ResourceType, version};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::XdsContext;
use super::tracker::{StreamTracker, Subscription, WILDCARD, resource_type};

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// What the proxy holds: name -> version. Seeded from
    /// `initial_resource_versions` so a reconnecting proxy is not sent again what
    /// it already has.
    proxy_has: BTreeMap<String, String>,
}

struct Stream {
    tracker: StreamTracker,
    view: ProxyView,
    types: HashMap<ResourceType, TypeState>,
    tx: Tx,
}

/// The channel to the proxy closed.
struct Closed;

/// Serves one Delta stream until either side closes it.
pub async fn serve(
    ctx: XdsContext,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: Tx,
    peer: Option<SocketAddr>,
) {
    let first = match requests.message().await {
        Ok(Some(r)) => r,
        _ => return,
    };
    let tracker = match StreamTracker::open(&ctx, first.node.as_ref(), "delta", peer) {
        Ok(t) => t,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut snapshots = ctx.snapshots.clone();
    let published = snapshots.borrow_and_update().clone();
    let mut stream = Stream {
        view: ProxyView::new(published.snapshot, &tracker.node),
        tracker,
        types: HashMap::new(),
        tx,
    };
    if stream.handle(first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            request = requests.message() => match request {
                Ok(Some(r)) => if stream.handle(r).await.is_err() { return },
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(node = %stream.tracker.node.id, error = %e, "stream ended");
                    return;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() { return }
                let published = snapshots.borrow_and_update().clone();
                stream.view = ProxyView::new(published.snapshot, &stream.tracker.node);
                for ty in ResourceType::ALL {
                    if stream.types.contains_key(&ty)
                        && stream.push(ty, false, Some(published.changed_at)).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

impl Stream {
    async fn handle(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Closed> {
        let Some(ty) = resource_type(&request.type_url) else {
            return Ok(());
        };
        // Subscription changes apply whatever the nonce: in Delta they are deltas and
        // dropping one would lose it for good.
        self.tracker
            .reply(ty, &request.response_nonce, request.error_detail.as_ref());
        let first = !self.types.contains_key(&ty);
        let state = self.types.entry(ty).or_default();
        if first {
            state.proxy_has = request.initial_resource_versions.into_iter().collect();
            // Legacy wildcard: a first request for LDS/CDS naming nothing means all.
            if request.resource_names_subscribe.is_empty() && ty.is_wildcard_by_default() {
                state.subscription.wildcard = true;
            }
        }
        let subscribed = !request.resource_names_subscribe.is_empty();
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                state.subscription.wildcard = true;
            } else {
                state.subscription.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                state.subscription.wildcard = false;
            } else {
                state.subscription.names.remove(&name);
                state.proxy_has.remove(&name);
            }
        }
        if !state.subscription.wildcard {
            // Without the wildcard the proxy only keeps what it names.
            let names = &state.subscription.names;
            state.proxy_has.retain(|n, _| names.contains(n));
        }
        if first || subscribed {
            // A new subscription gets an answer even when nothing is new, so the
            // proxy knows the type is (possibly) empty; a pure ACK never does.
            return self.push(ty, first, None).await;
        }
        Ok(())
    }

    async fn push(
        &mut self,
        ty: ResourceType,
        always: bool,
        change_at: Option<Instant>,
    ) -> Result<(), Closed> {
        let started = Instant::now();
        let state = self.types.entry(ty).or_default();
        let selected = state.subscription.select(&self.view, ty);
        let changed: Vec<DeltaResource> = selected
            .values()
            .filter(|r| state.proxy_has.get(&r.name) != Some(&r.version))
            .map(|r| DeltaResource {
                name: r.name.clone(),
                version: r.version.clone(),
                resource: Some(r.body.clone()),
                ..Default::default()
            })
            .collect();
        let removed: Vec<String> = state
            .proxy_has
            .keys()
            .filter(|n| !selected.contains_key(*n))
            .cloned()
            .collect();
        if changed.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        for r in &changed {
            state.proxy_has.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            state.proxy_has.remove(n);
        }
        let version = version::of_set(
            state
                .proxy_has
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        );
        let count = state.proxy_has.len();
        let nonce = self.tracker.nonce();
        let response = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources: changed,
            type_url: ty.type_url().to_string(),
            removed_resources: removed,
            nonce: nonce.clone(),
            control_plane: Some(ControlPlane {
                identifier: crate::CONTROL_PLANE_ID.to_string(),
            }),
            ..Default::default()
        };
        self.tx.send(Ok(response)).await.map_err(|_| Closed)?;
        self.tracker
            .sent(ty, nonce, version, count, change_at, started);
        Ok(())
    }
}
