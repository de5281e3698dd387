//! Who is asking: the proxy's identity as announced in the xDS `Node`.

use envoy_types::pb::envoy::config::core::v3::Node;

use crate::metadata;

/// Node metadata key for the workload (instance) name.
pub const WORKLOAD: &str = "WORKLOAD";
/// Node metadata key for the workload's namespace.
pub const NAMESPACE: &str = "NAMESPACE";
/// Node metadata key for the proxy's admin address, so operators can reach it.
pub const ADMIN_ADDRESS: &str = "ADMIN_ADDRESS";

/// A connected proxy as the controller sees it.
///
/// Envoy, proxyless gRPC clients and our own sidecar all fit: only `id` is required;
/// a node without a workload gets the outbound view of its namespace (or `default`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ProxyNode {
    /// The xDS node id.
    pub id: String,
    /// The workload instance the proxy fronts, if it said.
    pub workload: Option<String>,
    /// The namespace the proxy lives in; decides short-name resolution.
    pub namespace: String,
    /// Where the proxy's admin server listens, if it said.
    pub admin_address: Option<String>,
}

impl ProxyNode {
    /// Reads the mesh's fields from an xDS `Node`.
    pub fn from_node(node: &Node) -> ProxyNode {
        let fields = node.metadata.as_ref();
        let get = |key| {
            fields
                .and_then(|m| metadata::get_str(m, key))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        ProxyNode {
            id: node.id.clone(),
            workload: get(WORKLOAD),
            namespace: get(NAMESPACE).unwrap_or_else(|| "default".into()),
            admin_address: get(ADMIN_ADDRESS),
        }
    }

    /// The xDS `Node` a mesh sidecar sends.
    pub fn to_node(&self) -> Node {
        let mut fields = vec![(NAMESPACE, metadata::string(&self.namespace))];
        if let Some(w) = &self.workload {
            fields.push((WORKLOAD, metadata::string(w)));
        }
        if let Some(a) = &self.admin_address {
            fields.push((ADMIN_ADDRESS, metadata::string(a)));
        }
        Node {
            id: self.id.clone(),
            cluster: self.workload.clone().unwrap_or_default(),
            metadata: Some(metadata::structure(fields)),
            user_agent_name: "mesh-proxy".into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_defaults() {
        let n = ProxyNode {
            id: "catalog-1.shop".into(),
            workload: Some("catalog-1".into()),
            namespace: "shop".into(),
            admin_address: Some("127.0.1.1:15000".into()),
        };
        assert_eq!(ProxyNode::from_node(&n.to_node()), n);
        let bare = ProxyNode::from_node(&Node {
            id: "grpc-client".into(),
            ..Default::default()
        });
        assert_eq!(bare.namespace, "default");
        assert_eq!(bare.workload, None);
    }
}
