//! Header hygiene between hops: hop-by-hop headers never cross the proxy, and the
//! mesh's own hop headers are set only by sidecars.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The app port the caller's sidecar wants on the remote workload.
pub const TARGET_PORT: HeaderName = HeaderName::from_static("mesh-target-port");
/// The calling workload.
pub const SOURCE_WORKLOAD: HeaderName = HeaderName::from_static("mesh-source-workload");
/// The calling workload's namespace.
pub const SOURCE_NAMESPACE: HeaderName = HeaderName::from_static("mesh-source-namespace");
/// The service FQDN the caller addressed.
pub const DESTINATION_SERVICE: HeaderName = HeaderName::from_static("mesh-destination-service");

/// The mesh hop headers, removed before a request reaches an app and replaced (never
/// passed through) on the way out, so an app cannot spoof them.
pub const MESH_HEADERS: [HeaderName; 4] = [
    TARGET_PORT,
    SOURCE_WORKLOAD,
    SOURCE_NAMESPACE,
    DESTINATION_SERVICE,
];

/// Headers that describe one connection rather than the message (RFC 9110 7.6.1,
/// plus the legacy proxy ones).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those the `Connection` header names. A
/// `TE: trailers` survives (gRPC needs it end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let keep_te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("http2-settings");
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes the mesh hop headers.
pub fn strip_mesh(headers: &mut HeaderMap) {
    for name in &MESH_HEADERS {
        headers.remove(name);
    }
}

/// A header's value as a label: `unknown` when absent, not text, or implausibly long
/// (callers without a sidecar can send anything; metric cardinality must stay sane).
pub fn label_value(headers: &HeaderMap, name: &HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 253)
        .unwrap_or(crate::metrics::UNKNOWN)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-keep").unwrap(), "yes");
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn mesh_headers_and_labels() {
        let mut h = HeaderMap::new();
        h.insert(SOURCE_WORKLOAD, HeaderValue::from_static("web-1"));
        h.insert(TARGET_PORT, HeaderValue::from_static("8080"));
        assert_eq!(label_value(&h, &SOURCE_WORKLOAD), "web-1");
        assert_eq!(label_value(&h, &SOURCE_NAMESPACE), "unknown");
        strip_mesh(&mut h);
        assert!(h.is_empty());
    }
}
