use std::fmt;

/// A workload's SPIFFE identity: who it is, independent of where it runs.
///
/// Derived from namespace and service account, as in Istio and Linkerd, so every
/// instance of a workload shares one identity and policies name roles, not pods.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The SPIFFE trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
}

impl Identity {
    /// The identity of `service_account` in `namespace` under `trust_domain`.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Identity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`; anything else is not a mesh identity.
    pub fn parse_spiffe(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if !trust_domain.is_empty() && !ns.is_empty() && !sa.is_empty() =>
            {
                Some(Identity::new(trust_domain, ns, sa))
            }
            _ => None,
        }
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_round_trip() {
        let id = Identity::new("cluster.local", "default", "catalog");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/catalog"
        );
        assert_eq!(Identity::parse_spiffe(&id.to_string()), Some(id));
    }

    #[test]
    fn rejects_non_mesh_ids() {
        for bad in [
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa/b/c",
            "https://td/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns//sa/b",
        ] {
            assert_eq!(Identity::parse_spiffe(bad), None, "{bad}");
        }
    }
}
