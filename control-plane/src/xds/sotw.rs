//! State-of-the-World ADS: every response carries the full set of a type.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use mesh_xds::{ProxyView, ResourceType, version};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::XdsContext;
use super::tracker::{Reply, StreamTracker, Subscription, WILDCARD, resource_type};

type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    last_version: Option<String>,
}

struct Stream {
    tracker: StreamTracker,
    view: ProxyView,
    types: HashMap<ResourceType, TypeState>,
    tx: Tx,
}

/// Serves one SotW stream until either side closes it.
pub async fn serve(
    ctx: XdsContext,
    mut requests: Streaming<DiscoveryRequest>,
    tx: Tx,
    peer: Option<SocketAddr>,
) {
    let first = match requests.message().await {
        Ok(Some(r)) => r,
        _ => return,
    };
    let tracker = match StreamTracker::open(&ctx, first.node.as_ref(), "sotw", peer) {
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

/// The channel to the proxy closed.
struct Closed;

impl Stream {
    async fn handle(&mut self, request: DiscoveryRequest) -> Result<(), Closed> {
        let Some(ty) = resource_type(&request.type_url) else {
            return Ok(());
        };
        let reply = self
            .tracker
            .reply(ty, &request.response_nonce, request.error_detail.as_ref());
        if reply == Reply::Stale {
            return Ok(());
        }
        // Envoy's rule: an empty name list means "all" for LDS and CDS; `*` means
        // "all" for any type.
        let explicit = request.resource_names.iter().any(|n| n == WILDCARD);
        let names: BTreeSet<String> = request
            .resource_names
            .into_iter()
            .filter(|n| n != WILDCARD)
            .collect();
        let asked_wildcard = explicit || names.is_empty() && ty.is_wildcard_by_default();
        let subscription = Subscription {
            wildcard: asked_wildcard,
            names,
        };
        let state = self.types.entry(ty).or_default();
        let first = reply == Reply::Initial;
        if first || state.subscription != subscription {
            state.subscription = subscription;
            // A new or changed subscription always gets an answer; a pure ACK or
            // NACK never does (answering ACKs loops forever).
            return self.push(ty, true, None).await;
        }
        Ok(())
    }

    async fn push(
        &mut self,
        ty: ResourceType,
        force: bool,
        change_at: Option<Instant>,
    ) -> Result<(), Closed> {
        let started = Instant::now();
        let state = self.types.entry(ty).or_default();
        let selected = state.subscription.select(&self.view, ty);
        let version = version::of_set(
            selected
                .values()
                .map(|r| (r.name.as_str(), r.version.as_str())),
        );
        if !force && state.last_version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        state.last_version = Some(version.clone());
        let nonce = self.tracker.nonce();
        let count = selected.len();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: selected.into_values().map(|r| r.body.clone()).collect(),
            type_url: ty.type_url().to_string(),
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
