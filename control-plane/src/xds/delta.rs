//! Delta (incremental) ADS: responses carry only what changed, and removals.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};
use mesh_xds::{ProxyView, ResourceType, names, version};
use tokio::sync::mpsc;
use tonic::Status;

use super::tracker::{Closed, StreamTracker, Subscription, Variant, WILDCARD, resource_type};

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// What the proxy holds: name -> version. Seeded from
    /// `initial_resource_versions` so a reconnecting proxy is not sent again what
    /// it already has.
    proxy_has: BTreeMap<String, String>,
    /// Subscribed names already reported as not existing (in `removed_resources`),
    /// so the report is sent once, not on every push.
    reported_missing: BTreeSet<String>,
}

/// One Delta stream.
pub struct Delta {
    tracker: StreamTracker,
    view: ProxyView,
    types: HashMap<ResourceType, TypeState>,
    tx: Tx,
}

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const PROTOCOL: &'static str = "delta";

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn new(tracker: StreamTracker, view: ProxyView, tx: Tx) -> Self {
        Delta {
            tracker,
            view,
            types: HashMap::new(),
            tx,
        }
    }

    fn tracker(&self) -> &StreamTracker {
        &self.tracker
    }

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
            // Legacy wildcard: a first LDS/CDS request naming nothing means all.
            if request.resource_names_subscribe.is_empty()
                && request.resource_names_unsubscribe.is_empty()
                && ty.is_wildcard_by_default()
            {
                state.subscription.wildcard = true;
            }
        }
        let subscribed = !request.resource_names_subscribe.is_empty();
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                state.subscription.wildcard = true;
                continue;
            }
            if !first {
                // A name subscribed again must be sent again (the proxy may have
                // dropped it), and reported again if it does not exist.
                state.proxy_has.remove(&name);
                state.reported_missing.remove(&name);
            }
            state.subscription.names.insert(name);
        }
        let mut unsubscribed = false;
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                state.subscription.wildcard = false;
            } else {
                unsubscribed = true;
                state.subscription.names.remove(&name);
                state.proxy_has.remove(&name);
                state.reported_missing.remove(&name);
            }
        }
        if !state.subscription.wildcard {
            // Without the wildcard the proxy only keeps what it names.
            let names = &state.subscription.names;
            state.proxy_has.retain(|n, _| names.contains(n));
        }
        // Unsubscribing a name that the wildcard still covers must be answered with
        // the resource again; a pure ACK is never answered.
        let rewildcarded = unsubscribed && state.subscription.wildcard;
        if first || subscribed || rewildcarded {
            // A new subscription gets an answer even when nothing is new, so the
            // proxy knows the type is (possibly) empty.
            self.push(ty, first, None).await?;
        }
        Ok(())
    }

    async fn refresh(&mut self, view: ProxyView, change_at: Instant) -> Result<(), Closed> {
        self.view = view;
        for ty in ResourceType::ALL {
            if !self.types.contains_key(&ty) {
                continue;
            }
            let changed = self.push(ty, false, Some(change_at)).await?;
            // Envoy warms a changed cluster (listener) until it gets its EDS (RDS)
            // again, even unchanged: forget that the proxy has them so they are re-sent.
            let dependent = match ty {
                ResourceType::Cluster => Some(ResourceType::Endpoint),
                ResourceType::Listener => Some(ResourceType::Route),
                _ => None,
            };
            if let Some(state) = dependent.and_then(|d| self.types.get_mut(&d)) {
                if ty == ResourceType::Listener && !changed.is_empty() {
                    state.proxy_has.clear();
                } else {
                    for name in &changed {
                        state.proxy_has.remove(name);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Delta {
    /// Sends what changed for `ty` (or an empty response if `always`); returns the
    /// names of the resources sent.
    async fn push(
        &mut self,
        ty: ResourceType,
        always: bool,
        change_at: Option<Instant>,
    ) -> Result<Vec<String>, Closed> {
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
        let mut removed: Vec<String> = state
            .proxy_has
            .keys()
            .filter(|n| !selected.contains_key(*n))
            .cloned()
            .collect();
        // Named resources that do not exist are reported once as removed, so the
        // proxy need not wait for its does-not-exist timer.
        let missing: Vec<String> = state
            .subscription
            .names
            .iter()
            .filter(|n| {
                !selected.contains_key(*n)
                    && !state.proxy_has.contains_key(*n)
                    && !state.reported_missing.contains(*n)
            })
            .cloned()
            .collect();
        state.reported_missing.extend(missing.iter().cloned());
        state.reported_missing.retain(|n| !selected.contains_key(n));
        removed.extend(missing);
        if changed.is_empty() && removed.is_empty() && !always {
            return Ok(Vec::new());
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
        let bundle_version = (ty == ResourceType::Secret)
            .then(|| state.proxy_has.get(names::TRUST_BUNDLE).cloned())
            .flatten();
        let names: Vec<String> = changed.iter().map(|r| r.name.clone()).collect();
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
        self.tracker.sent(
            ty,
            nonce,
            version,
            count,
            change_at,
            started,
            bundle_version,
        );
        Ok(names)
    }
}
