//! State-of-the-World ADS: every response carries the full set of a type.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use mesh_xds::{ProxyView, ResourceType, names, version};
use tokio::sync::mpsc;
use tonic::Status;

use super::tracker::{
    Closed, Reply, StreamTracker, Subscription, Variant, WILDCARD, resource_type,
};

type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// Once a client has named resources, an empty list means "none", not "all".
    ever_named: bool,
    last_version: Option<String>,
}

/// One SotW stream.
pub struct Sotw {
    tracker: StreamTracker,
    view: ProxyView,
    types: HashMap<ResourceType, TypeState>,
    tx: Tx,
}

impl Variant for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const PROTOCOL: &'static str = "sotw";

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn new(tracker: StreamTracker, view: ProxyView, tx: Tx) -> Self {
        Sotw {
            tracker,
            view,
            types: HashMap::new(),
            tx,
        }
    }

    fn tracker(&self) -> &StreamTracker {
        &self.tracker
    }

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
        let state = self.types.entry(ty).or_default();
        // Envoy's rule: an empty name list means "all" for LDS and CDS until the
        // client has named something; `*` means "all" explicitly.
        let explicit = request.resource_names.iter().any(|n| n == WILDCARD);
        let names: BTreeSet<String> = request
            .resource_names
            .into_iter()
            .filter(|n| n != WILDCARD)
            .collect();
        state.ever_named |= !names.is_empty();
        let wildcard =
            explicit || names.is_empty() && ty.is_wildcard_by_default() && !state.ever_named;
        let subscription = Subscription { wildcard, names };
        if reply == Reply::Initial || state.subscription != subscription {
            state.subscription = subscription;
            // A new or changed subscription always gets an answer; a pure ACK or
            // NACK never does (answering ACKs loops forever).
            self.push(ty, true, None).await?;
        }
        Ok(())
    }

    async fn refresh(&mut self, view: ProxyView, change_at: Instant) -> Result<(), Closed> {
        self.view = view;
        let mut force = false;
        for ty in ResourceType::ALL {
            if !self.types.contains_key(&ty) {
                continue;
            }
            // Envoy warms a changed cluster (listener) until it gets a new EDS (RDS)
            // response, even an unchanged one, so a CDS (LDS) push forces the next type.
            let sent = self.push(ty, force, Some(change_at)).await?;
            force = sent && matches!(ty, ResourceType::Cluster | ResourceType::Listener);
        }
        Ok(())
    }
}

impl Sotw {
    /// Sends the type's resources if they changed (or `force`); returns whether a
    /// response was sent.
    async fn push(
        &mut self,
        ty: ResourceType,
        force: bool,
        change_at: Option<Instant>,
    ) -> Result<bool, Closed> {
        let started = Instant::now();
        let state = self.types.entry(ty).or_default();
        let selected = state.subscription.select(&self.view, ty);
        let version = version::of_set(
            selected
                .values()
                .map(|r| (r.name.as_str(), r.version.as_str())),
        );
        if !force && state.last_version.as_deref() == Some(version.as_str()) {
            return Ok(false);
        }
        state.last_version = Some(version.clone());
        let nonce = self.tracker.nonce();
        let count = selected.len();
        let bundle_version = (ty == ResourceType::Secret)
            .then(|| selected.get(names::TRUST_BUNDLE).map(|r| r.version.clone()))
            .flatten();
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
        self.tracker.sent(
            ty,
            nonce,
            version,
            count,
            change_at,
            started,
            bundle_version,
        );
        Ok(true)
    }
}
