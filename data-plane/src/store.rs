//! The last good xDS resources per type, and how responses change them.
//!
//! A response is decoded completely before anything is applied: one bad resource
//! rejects the whole response and leaves that type exactly as it was (the NACK
//! contract). Maps are shared copy-on-write (`Arc`), so publishing a snapshot of the
//! store to readers is cheap, and unchanged resources keep their `Arc` identity,
//! which lets [`crate::routing`] reuse their runtime state (balancer cursors, metric
//! handles) across updates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::Resource as DeltaResource;
use envoy_types::pb::google::protobuf::Any;
use mesh_xds::ResourceType;
use serde::Serialize;

use crate::decode::{
    ClusterSpec, DecodeError, Decoded, Discovery, ListenerSpec, LoadAssignment, RouteSource,
    RouteSpec, SecretSpec, decode,
};
use mesh_xds::names;

/// One stored resource with the version it arrived with.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Delta: the server's version; SotW: a hash of the bytes.
    pub version: String,
    /// The decoded resource.
    pub resource: Decoded,
}

/// What the proxy last did with one type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    /// Version of the last applied response (SotW `version_info`, Delta
    /// `system_version_info`).
    pub version_info: String,
    /// Nonce of the last applied response.
    pub nonce: String,
    /// Whether any response of this type was ever applied.
    pub received: bool,
    /// The reason of the last NACK, until the next accepted response.
    pub last_error: Option<String>,
}

type Map = Arc<BTreeMap<String, Entry>>;

/// Every resource the proxy holds, by type.
#[derive(Debug, Clone, Default)]
pub struct Store {
    maps: [Map; 5],
    status: [TypeStatus; 5],
}

fn idx(ty: ResourceType) -> usize {
    match ty {
        ResourceType::Cluster => 0,
        ResourceType::Endpoint => 1,
        ResourceType::Listener => 2,
        ResourceType::Route => 3,
        ResourceType::Secret => 4,
    }
}

impl Store {
    /// The resources of `ty`, by name.
    pub fn map(&self, ty: ResourceType) -> &BTreeMap<String, Entry> {
        &self.maps[idx(ty)]
    }

    /// What happened to `ty` last.
    pub fn status(&self, ty: ResourceType) -> &TypeStatus {
        &self.status[idx(ty)]
    }

    /// Listeners.
    pub fn listeners(&self) -> impl Iterator<Item = &Arc<ListenerSpec>> {
        self.map(ResourceType::Listener)
            .values()
            .filter_map(|e| match &e.resource {
                Decoded::Listener(l) => Some(l),
                _ => None,
            })
    }

    /// A route configuration by name.
    pub fn route(&self, name: &str) -> Option<&Arc<RouteSpec>> {
        match &self.map(ResourceType::Route).get(name)?.resource {
            Decoded::Route(r) => Some(r),
            _ => None,
        }
    }

    /// Clusters.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterSpec>> {
        self.map(ResourceType::Cluster)
            .values()
            .filter_map(|e| match &e.resource {
                Decoded::Cluster(c) => Some(c),
                _ => None,
            })
    }

    /// A load assignment by EDS name.
    pub fn endpoints(&self, name: &str) -> Option<&Arc<LoadAssignment>> {
        match &self.map(ResourceType::Endpoint).get(name)?.resource {
            Decoded::Endpoint(a) => Some(a),
            _ => None,
        }
    }

    /// RDS names the listeners reference: the RDS subscription.
    pub fn route_names(&self) -> BTreeSet<String> {
        self.listeners()
            .flat_map(|l| l.chains.iter())
            .filter_map(|c| match &c.routes {
                RouteSource::Rds(name) => Some(name.clone()),
                RouteSource::Inline(_) => None,
            })
            .collect()
    }

    /// EDS names of the EDS clusters: the EDS subscription.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters()
            .filter_map(|c| match &c.discovery {
                Discovery::Eds(name) => Some(name.clone()),
                Discovery::Static(_) | Discovery::OriginalDst => None,
            })
            .collect()
    }

    /// The names a subscription of `ty` covers; `None` for wildcard types.
    pub fn subscription(&self, ty: ResourceType) -> Option<BTreeSet<String>> {
        match ty {
            ResourceType::Route => Some(self.route_names()),
            ResourceType::Endpoint => Some(self.eds_names()),
            ResourceType::Secret => Some(BTreeSet::from([names::TRUST_BUNDLE.to_string()])),
            ResourceType::Listener | ResourceType::Cluster => None,
        }
    }

    /// The trust bundle received over SDS, if any.
    pub fn trust_bundle(&self) -> Option<&Arc<SecretSpec>> {
        match &self
            .map(ResourceType::Secret)
            .get(names::TRUST_BUNDLE)?
            .resource
        {
            Decoded::Secret(s) => Some(s),
            _ => None,
        }
    }

    /// Whether listeners, clusters, every referenced route and the endpoints of
    /// every EDS cluster have all been received.
    pub fn is_complete(&self) -> bool {
        self.status(ResourceType::Listener).received
            && self.status(ResourceType::Cluster).received
            && self
                .route_names()
                .iter()
                .all(|n| self.map(ResourceType::Route).contains_key(n))
            && self
                .eds_names()
                .iter()
                .all(|n| self.map(ResourceType::Endpoint).contains_key(n))
    }

    /// Versions of what the proxy holds of `ty`, for Delta `initial_resource_versions`.
    pub fn versions(&self, ty: ResourceType) -> HashMap<String, String> {
        self.map(ty)
            .iter()
            .map(|(k, e)| (k.clone(), e.version.clone()))
            .collect()
    }

    /// Drops resources of `ty` that are no longer subscribed.
    pub fn retain(&mut self, ty: ResourceType, keep: &BTreeSet<String>) {
        let map = &mut self.maps[idx(ty)];
        if map.keys().any(|k| !keep.contains(k)) {
            Arc::make_mut(map).retain(|k, _| keep.contains(k));
        }
    }

    /// Records a rejected response of `ty`.
    pub fn rejected(&mut self, ty: ResourceType, error: &str) {
        self.status[idx(ty)].last_error = Some(error.to_string());
    }

    fn accepted(&mut self, ty: ResourceType, version_info: &str, nonce: &str) {
        self.status[idx(ty)] = TypeStatus {
            version_info: version_info.to_string(),
            nonce: nonce.to_string(),
            received: true,
            last_error: None,
        };
    }

    /// Keeps the old entry (and its `Arc`s) when the version did not change.
    fn reuse(&self, ty: ResourceType, name: &str, entry: Entry) -> Entry {
        match self.map(ty).get(name) {
            Some(old) if old.version == entry.version && !old.version.is_empty() => old.clone(),
            _ => entry,
        }
    }

    /// Applies a State-of-the-World response. LDS and CDS responses replace the whole
    /// type; RDS and EDS responses update the named resources and drop what is no
    /// longer in `subscribed`.
    pub fn apply_sotw(
        &mut self,
        ty: ResourceType,
        version_info: &str,
        nonce: &str,
        resources: &[Any],
        subscribed: Option<&BTreeSet<String>>,
    ) -> Result<(), DecodeError> {
        let mut decoded = BTreeMap::new();
        for any in resources {
            let resource = decode(ty, "", any)?;
            let name = resource.name().to_string();
            let entry = Entry {
                version: mesh_xds::version::of_bytes(&any.value),
                resource,
            };
            let entry = self.reuse(ty, &name, entry);
            if decoded.insert(name.clone(), entry).is_some() {
                return Err(DecodeError {
                    ty,
                    name,
                    reason: "duplicate resource in response".into(),
                });
            }
        }
        let map = match (ty.is_wildcard_by_default(), subscribed) {
            (false, Some(keep)) => {
                let mut merged = (*self.maps[idx(ty)]).clone();
                merged.extend(decoded);
                merged.retain(|k, _| keep.contains(k));
                merged
            }
            _ => decoded,
        };
        self.maps[idx(ty)] = Arc::new(map);
        self.accepted(ty, version_info, nonce);
        Ok(())
    }

    /// Applies a Delta response: upserts `resources`, deletes `removed`.
    pub fn apply_delta(
        &mut self,
        ty: ResourceType,
        system_version: &str,
        nonce: &str,
        resources: &[DeltaResource],
        removed: &[String],
    ) -> Result<(), DecodeError> {
        let mut decoded = Vec::with_capacity(resources.len());
        for r in resources {
            // A resource without a body is a TTL heartbeat: keep what we have.
            let Some(any) = &r.resource else { continue };
            let resource = decode(ty, &r.name, any)?;
            let name = if r.name.is_empty() {
                resource.name().to_string()
            } else {
                r.name.clone()
            };
            let entry = Entry {
                version: if r.version.is_empty() {
                    mesh_xds::version::of_bytes(&any.value)
                } else {
                    r.version.clone()
                },
                resource,
            };
            let entry = self.reuse(ty, &name, entry);
            decoded.push((name, entry));
        }
        if !decoded.is_empty() || !removed.is_empty() {
            let map = Arc::make_mut(&mut self.maps[idx(ty)]);
            for name in removed {
                map.remove(name);
            }
            map.extend(decoded);
        }
        self.accepted(ty, system_version, nonce);
        Ok(())
    }
}

/// The config dump of one type.
#[derive(Debug, Serialize)]
struct TypeDump<'a, T: Serialize> {
    version_info: &'a str,
    nonce: &'a str,
    received: bool,
    last_error: Option<&'a str>,
    resources: Vec<T>,
}

#[derive(Debug, Serialize)]
struct Versioned<'a, T: Serialize> {
    version: &'a str,
    #[serde(flatten)]
    resource: T,
}

impl Store {
    /// A readable JSON summary of every resource and each type's sync state.
    pub fn dump(&self) -> serde_json::Value {
        let one = |ty: ResourceType| {
            let status = self.status(ty);
            let resources: Vec<serde_json::Value> = self
                .map(ty)
                .values()
                .map(|e| {
                    let body = match &e.resource {
                        Decoded::Listener(l) => serde_json::to_value(&**l),
                        Decoded::Route(r) => serde_json::to_value(&**r),
                        Decoded::Cluster(c) => serde_json::to_value(&**c),
                        Decoded::Endpoint(a) => serde_json::to_value(&**a),
                        Decoded::Secret(s) => serde_json::to_value(&**s),
                    }
                    .unwrap_or(serde_json::Value::Null);
                    serde_json::to_value(Versioned {
                        version: &e.version,
                        resource: body,
                    })
                    .unwrap_or(serde_json::Value::Null)
                })
                .collect();
            serde_json::to_value(TypeDump {
                version_info: &status.version_info,
                nonce: &status.nonce,
                received: status.received,
                last_error: status.last_error.as_deref(),
                resources,
            })
            .unwrap_or(serde_json::Value::Null)
        };
        serde_json::json!({
            "listeners": one(ResourceType::Listener),
            "routes": one(ResourceType::Route),
            "clusters": one(ResourceType::Cluster),
            "endpoints": one(ResourceType::Endpoint),
            "sds": one(ResourceType::Secret),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use mesh_xds::any::pack;
    use mesh_xds::resources;
    use prost::Name;

    fn delta(name: &str, any: Any) -> DeltaResource {
        DeltaResource {
            name: name.into(),
            version: "v1".into(),
            resource: Some(any),
            ..Default::default()
        }
    }

    #[test]
    fn sotw_replaces_wildcard_types_and_nack_keeps_old() {
        let mut s = Store::default();
        let l = [
            pack(&resources::outbound_listener()),
            pack(&resources::inbound_listener(
                &[80],
                mesh_model::MtlsMode::Strict,
                &[],
            )),
        ];
        s.apply_sotw(ResourceType::Listener, "1", "n1", &l, None)
            .unwrap();
        assert_eq!(s.map(ResourceType::Listener).len(), 2);
        assert_eq!(s.route_names(), BTreeSet::from(["outbound".to_string()]));
        let bad = Any {
            type_url: Listener::type_url(),
            value: vec![0xff; 4],
        };
        let err = s
            .apply_sotw(
                ResourceType::Listener,
                "2",
                "n2",
                &[l[0].clone(), bad],
                None,
            )
            .unwrap_err();
        s.rejected(ResourceType::Listener, &err.to_string());
        assert_eq!(s.map(ResourceType::Listener).len(), 2, "old config kept");
        assert_eq!(s.status(ResourceType::Listener).version_info, "1");
        assert!(s.status(ResourceType::Listener).last_error.is_some());
        s.apply_sotw(ResourceType::Listener, "3", "n3", &l[..1], None)
            .unwrap();
        assert_eq!(s.map(ResourceType::Listener).len(), 1, "SotW LDS replaces");
        assert_eq!(s.status(ResourceType::Listener).last_error, None);
    }

    #[test]
    fn sotw_eds_merges_and_prunes_unsubscribed() {
        let mut s = Store::default();
        let a = pack(&resources::load_assignment("a:80", &[]));
        let b = pack(&resources::load_assignment("b:80", &[]));
        let both = BTreeSet::from(["a:80".to_string(), "b:80".to_string()]);
        s.apply_sotw(ResourceType::Endpoint, "1", "n", &[a], Some(&both))
            .unwrap();
        s.apply_sotw(
            ResourceType::Endpoint,
            "2",
            "n",
            std::slice::from_ref(&b),
            Some(&both),
        )
        .unwrap();
        assert_eq!(s.map(ResourceType::Endpoint).len(), 2);
        let only_b = BTreeSet::from(["b:80".to_string()]);
        s.apply_sotw(ResourceType::Endpoint, "3", "n", &[b], Some(&only_b))
            .unwrap();
        assert!(s.endpoints("a:80").is_none());
    }

    #[test]
    fn delta_upserts_removes_and_readiness() {
        let mut s = Store::default();
        assert!(!s.is_complete());
        let c = delta("c:80", pack(&resources::service_cluster("c:80", false)));
        let i = delta(
            "inbound|8080",
            pack(&resources::inbound_cluster(
                "127.0.0.1:8080".parse().unwrap(),
                false,
            )),
        );
        s.apply_delta(ResourceType::Cluster, "", "n1", &[c, i], &[])
            .unwrap();
        assert_eq!(s.eds_names(), BTreeSet::from(["c:80".to_string()]));
        let l = delta("outbound", pack(&resources::outbound_listener()));
        s.apply_delta(ResourceType::Listener, "", "n2", &[l], &[])
            .unwrap();
        assert!(!s.is_complete(), "routes and endpoints missing");
        let r = delta(
            "outbound",
            pack(&resources::single_route("outbound", "c:80", &["c"])),
        );
        s.apply_delta(ResourceType::Route, "", "n3", &[r], &[])
            .unwrap();
        let e = delta("c:80", pack(&resources::load_assignment("c:80", &[])));
        s.apply_delta(ResourceType::Endpoint, "", "n4", &[e], &[])
            .unwrap();
        assert!(s.is_complete());
        assert_eq!(
            s.versions(ResourceType::Cluster)
                .get("c:80")
                .map(String::as_str),
            Some("v1")
        );
        s.apply_delta(ResourceType::Cluster, "", "n5", &[], &["c:80".into()])
            .unwrap();
        assert_eq!(s.map(ResourceType::Cluster).len(), 1);
        assert!(s.eds_names().is_empty());
        // A bad resource in a Delta response changes nothing.
        let bad = delta("x", pack(&resources::outbound_listener()));
        let err = s.apply_delta(
            ResourceType::Cluster,
            "",
            "n6",
            &[bad],
            &["inbound|8080".into()],
        );
        assert!(err.is_err());
        assert_eq!(s.map(ResourceType::Cluster).len(), 1);
    }

    #[test]
    fn unchanged_resources_keep_identity() {
        let mut s = Store::default();
        let c = [pack(&resources::service_cluster("c:80", false))];
        s.apply_sotw(ResourceType::Cluster, "1", "n", &c, None)
            .unwrap();
        let before = s.clusters().next().unwrap().clone();
        s.apply_sotw(ResourceType::Cluster, "2", "n", &c, None)
            .unwrap();
        assert!(Arc::ptr_eq(&before, s.clusters().next().unwrap()));
        let dump = s.dump();
        assert_eq!(dump["clusters"]["version_info"], "2");
        assert_eq!(dump["clusters"]["resources"][0]["name"], "c:80");
    }
}
