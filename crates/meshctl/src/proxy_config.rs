//! `meshctl proxy-config <proxy> <section>`: what one sidecar holds, from its
//! `/config_dump`.
//!
//! The operator names a proxy the way they know it (its node id, its workload name,
//! or its admin address); the controller's `/debug/syncz` knows where every connected
//! proxy's admin port is, so names are resolved there and the dump is read from the
//! sidecar itself: what the proxy actually applied, not what the controller meant to
//! send. The JSON is read loosely (by field name) so that a newer sidecar with more
//! fields still renders.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::cli::{OutputFormat, ProxyConfigArgs, Section};
use crate::controller::Controller;
use crate::format::{rfc3339, table};
use crate::http_client::HttpClient;

/// Why a proxy name could not be turned into an admin address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No connected proxy has that name.
    #[error("no connected proxy named {name:?}{namespace_note}; connected: {known}")]
    NotFound {
        /// What was asked for.
        name: String,
        /// ` in namespace N` when a bare workload name was looked up.
        namespace_note: String,
        /// The node ids the controller knows, comma-separated.
        known: String,
    },
    /// The proxy is connected but did not say where its admin port is.
    #[error("proxy {0} did not report an admin address; give it as host:port instead")]
    NoAdminAddress(String),
}

/// Resolves `proxy` to `(node id or the address itself, admin address)`.
///
/// Accepted, in order: an admin address (`127.0.1.2:15000`, anything with a `:`);
/// a node id (`catalog-1.default`); a workload name in `namespace`
/// (`catalog-1` with `-n default`). When a proxy reconnected and the controller
/// lists it twice, the newest stream wins.
pub fn resolve(
    proxy: &str,
    namespace: &str,
    syncz: &Value,
) -> Result<(String, String), ResolveError> {
    if proxy.contains(':') {
        return Ok((proxy.to_string(), proxy.to_string()));
    }
    let entries = syncz.as_array().map(Vec::as_slice).unwrap_or_default();
    let field = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
    let by_node = newest(
        entries
            .iter()
            .filter(|e| field(e, "node_id").as_deref() == Some(proxy))
            .collect(),
    );
    let found = by_node.or_else(|| {
        newest(
            entries
                .iter()
                .filter(|e| {
                    field(e, "workload").as_deref() == Some(proxy)
                        && field(e, "namespace").as_deref() == Some(namespace)
                })
                .collect(),
        )
    });
    let Some(entry) = found else {
        let mut known: Vec<String> = entries.iter().filter_map(|e| field(e, "node_id")).collect();
        known.sort();
        known.dedup();
        return Err(ResolveError::NotFound {
            name: proxy.to_string(),
            namespace_note: if proxy.contains('.') {
                String::new()
            } else {
                format!(" in namespace {namespace}")
            },
            known: if known.is_empty() {
                "(none)".into()
            } else {
                known.join(", ")
            },
        });
    };
    let node = field(entry, "node_id").unwrap_or_else(|| proxy.to_string());
    match field(entry, "admin_address") {
        Some(addr) if !addr.is_empty() => Ok((node, reachable_admin(&addr))),
        _ => Err(ResolveError::NoAdminAddress(node)),
    }
}

/// The newest of several streams of one proxy (it reconnected).
fn newest(matches: Vec<&Value>) -> Option<&Value> {
    matches.into_iter().max_by_key(|e| {
        (
            e.get("connected_at_unix").and_then(Value::as_u64),
            e.get("connection").and_then(Value::as_u64),
        )
    })
}

/// A sidecar bound to every interface reports `0.0.0.0:15000`; ask loopback then.
pub fn reachable_admin(addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip: std::net::IpAddr = if a.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(ip, a.port()).to_string()
        }
        _ => addr.to_string(),
    }
}

/// GETs `http://<admin>/config_dump` and parses it.
pub async fn fetch_dump(client: &HttpClient, admin: &str) -> anyhow::Result<Value> {
    let url = format!("http://{admin}/config_dump");
    let reply = client
        .get(&url, Duration::from_secs(5))
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {url}: {e}"))?;
    if !reply.status.is_success() {
        anyhow::bail!(
            "{url} answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim()
        );
    }
    serde_json::from_slice(&reply.body).map_err(|e| anyhow::anyhow!("{url} is not JSON: {e}"))
}

/// Runs the command: resolve, fetch, print.
pub async fn run(args: ProxyConfigArgs) -> anyhow::Result<()> {
    let client = HttpClient::direct();
    let (node, admin) = if args.proxy.contains(':') {
        (args.proxy.clone(), args.proxy.clone())
    } else {
        let syncz = Controller::from_flag(&args.controller)
            .get_json("/debug/syncz")
            .await?;
        resolve(&args.proxy, &args.namespace, &syncz)?
    };
    let dump = fetch_dump(&client, &admin).await?;
    match args.output {
        OutputFormat::Json => {
            let value = match args.section {
                Section::All => dump,
                section => dump.get(section.key()).cloned().unwrap_or(Value::Null),
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        OutputFormat::Table => {
            tracing::debug!(%node, %admin, "config dump read");
            print!("{}", render(args.section, &dump));
        }
    }
    Ok(())
}

/// The table form of `section` of a config dump.
pub fn render(section: Section, dump: &Value) -> String {
    let empty = Value::Null;
    let part = |key: &str| dump.get(key).unwrap_or(&empty);
    match section {
        Section::Secrets => render_secrets(part("secrets")),
        Section::Clusters => render_clusters(part("clusters")),
        Section::Listeners => render_listeners(part("listeners")),
        Section::Routes => render_routes(part("routes")),
        Section::Endpoints => render_endpoints(part("endpoints")),
        Section::All => [
            ("SECRETS", render_secrets(part("secrets"))),
            ("LISTENERS", render_listeners(part("listeners"))),
            ("ROUTES", render_routes(part("routes"))),
            ("CLUSTERS", render_clusters(part("clusters"))),
            ("ENDPOINTS", render_endpoints(part("endpoints"))),
        ]
        .into_iter()
        .map(|(title, body)| format!("== {title} ==\n{body}"))
        .collect::<Vec<_>>()
        .join("\n"),
    }
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn time(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_i64)
        .map_or_else(|| "-".into(), rfc3339)
}

fn resources(part: &Value) -> &[Value] {
    part.get("resources")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The type's NACK, if its last update was rejected: shown under its table.
fn last_error(part: &Value) -> String {
    match part.get("last_error").and_then(Value::as_str) {
        Some(e) => format!("last update rejected: {e}\n"),
        None => String::new(),
    }
}

/// The workload certificate, then the trust bundle's roots.
pub fn render_secrets(secrets: &Value) -> String {
    let mut out = String::new();
    match secrets.get("certificate") {
        Some(cert) if cert.is_object() => {
            let chain = cert
                .get("chain")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            out.push_str(&table(
                &["SPIFFE ID", "SERIAL", "NOT BEFORE", "NOT AFTER", "CHAIN"],
                &[vec![
                    s(cert, "identity"),
                    s(cert, "serial"),
                    time(cert, "not_before"),
                    time(cert, "not_after"),
                    chain.to_string(),
                ]],
            ));
        }
        _ => {
            let why = if secrets.get("identity_enabled").and_then(Value::as_bool) == Some(false) {
                "no workload certificate: identity is off (the sidecar has no token; plaintext dev mode)"
            } else if secrets.is_null() {
                "no secrets section in the config dump (a sidecar older than the identity issue?)"
            } else {
                "no workload certificate yet"
            };
            out.push_str(why);
            out.push('\n');
        }
    }
    let bundle = secrets.get("trust_bundle").unwrap_or(&Value::Null);
    let roots = bundle
        .get("roots")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    out.push('\n');
    let source = bundle
        .get("source")
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = roots
        .iter()
        .map(|r| match r.get("error") {
            Some(e) => vec![format!("(unreadable: {e})"), "-".into(), "-".into()],
            None => vec![s(r, "subject"), s(r, "serial"), time(r, "not_after")],
        })
        .collect();
    let _ = std::fmt::Write::write_fmt(
        &mut out,
        format_args!("TRUST BUNDLE ({} roots, from {source})\n", roots.len()),
    );
    out.push_str(&table(&["ROOT SUBJECT", "SERIAL", "NOT AFTER"], &rows));
    out
}

/// One line per cluster: how it finds endpoints, HTTP/2 or not.
pub fn render_clusters(part: &Value) -> String {
    let rows: Vec<Vec<String>> = resources(part)
        .iter()
        .map(|c| {
            let discovery = match c.get("discovery") {
                Some(d) if d.get("eds").is_some() => "EDS".to_string(),
                // Unit variants (`original_dst`, the passthrough cluster).
                Some(Value::String(kind)) => kind.to_ascii_uppercase(),
                Some(d) => match d.get("static").and_then(Value::as_array) {
                    Some(eps) => format!("STATIC ({} endpoints)", eps.len()),
                    None => d.to_string(),
                },
                None => "-".into(),
            };
            let http2 = match c.get("http2").and_then(Value::as_bool) {
                Some(true) => "h2",
                Some(false) => "http/1.1",
                None => "-",
            };
            vec![s(c, "name"), discovery, http2.into(), s(c, "version")]
        })
        .collect();
    table(&["NAME", "DISCOVERY", "UPSTREAM", "VERSION"], &rows) + &last_error(part)
}

/// One line per listener: where it binds, which way traffic goes, its chains.
pub fn render_listeners(part: &Value) -> String {
    let rows: Vec<Vec<String>> = resources(part)
        .iter()
        .map(|l| {
            let chains = l
                .get("chains")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let tls = chains
                .iter()
                .filter(|c| c.get("tls").and_then(Value::as_bool) == Some(true))
                .count();
            let kind = if l.get("api_listener").and_then(Value::as_bool) == Some(true) {
                "api".to_string()
            } else {
                s(l, "direction")
            };
            vec![
                s(l, "name"),
                s(l, "address"),
                kind,
                format!("{} ({tls} mTLS)", chains.len()),
                s(l, "version"),
            ]
        })
        .collect();
    table(
        &["NAME", "ADDRESS", "DIRECTION", "CHAINS", "VERSION"],
        &rows,
    ) + &last_error(part)
}

/// One line per virtual host of each route configuration.
pub fn render_routes(part: &Value) -> String {
    let mut rows = Vec::new();
    for r in resources(part) {
        let hosts = r
            .get("virtual_hosts")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for vh in hosts {
            let domains: Vec<&str> = vh
                .get("domains")
                .and_then(Value::as_array)
                .map(|d| d.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let shown = match domains.len() {
                0 => "-".to_string(),
                1 => domains[0].to_string(),
                n => format!("{} (+{} more)", domains[0], n - 1),
            };
            let mut clusters: Vec<&str> = vh
                .get("rules")
                .and_then(Value::as_array)
                .map(|rules| {
                    rules
                        .iter()
                        .filter_map(|rule| rule.get("cluster").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            clusters.dedup();
            rows.push(vec![
                s(r, "name"),
                s(vh, "name"),
                shown,
                if clusters.is_empty() {
                    "-".into()
                } else {
                    clusters.join(",")
                },
            ]);
        }
    }
    table(&["ROUTE", "VIRTUAL HOST", "DOMAINS", "CLUSTERS"], &rows) + &last_error(part)
}

/// One line per endpoint of each load assignment, with the identity it must present.
pub fn render_endpoints(part: &Value) -> String {
    let mut rows = Vec::new();
    for a in resources(part) {
        let endpoints = a
            .get("endpoints")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for e in endpoints {
            let via = match e.get("sidecar_port").and_then(Value::as_u64) {
                Some(p) => format!("sidecar :{p}"),
                None => "direct".into(),
            };
            rows.push(vec![
                s(a, "cluster_name"),
                s(e, "address"),
                s(e, "workload"),
                s(e, "identity"),
                via,
            ]);
        }
    }
    table(
        &["CLUSTER", "ENDPOINT", "WORKLOAD", "IDENTITY", "VIA"],
        &rows,
    ) + &last_error(part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn syncz() -> Value {
        json!([
            {"connection": 1, "node_id": "catalog-1.default", "workload": "catalog-1",
             "namespace": "default", "admin_address": "127.0.1.2:15000", "connected_at_unix": 100},
            {"connection": 7, "node_id": "catalog-1.default", "workload": "catalog-1",
             "namespace": "default", "admin_address": "127.0.1.9:15000", "connected_at_unix": 200},
            {"connection": 2, "node_id": "web-1.shop", "workload": "web-1",
             "namespace": "shop", "admin_address": "0.0.0.0:15000", "connected_at_unix": 100},
            {"connection": 3, "node_id": "envoy", "workload": null,
             "namespace": "default", "admin_address": null, "connected_at_unix": 100}
        ])
    }

    #[test]
    fn resolves_node_ids_workloads_and_addresses() {
        let z = syncz();
        // Newest stream of a reconnected proxy wins.
        assert_eq!(
            resolve("catalog-1.default", "default", &z).unwrap(),
            ("catalog-1.default".into(), "127.0.1.9:15000".into())
        );
        assert_eq!(
            resolve("catalog-1", "default", &z).unwrap().1,
            "127.0.1.9:15000"
        );
        // Unspecified bind address: ask loopback.
        assert_eq!(resolve("web-1", "shop", &z).unwrap().1, "127.0.0.1:15000");
        assert_eq!(
            resolve("10.0.0.5:15000", "default", &z).unwrap().1,
            "10.0.0.5:15000"
        );
    }

    #[test]
    fn unknown_and_addressless_proxies_are_explained() {
        let z = syncz();
        let err = resolve("web-1", "default", &z).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no connected proxy named \"web-1\" in namespace default; connected: catalog-1.default, envoy, web-1.shop"
        );
        assert_eq!(
            resolve("envoy", "default", &z).unwrap_err(),
            ResolveError::NoAdminAddress("envoy".into())
        );
        assert!(
            resolve("x", "default", &json!([]))
                .unwrap_err()
                .to_string()
                .ends_with("connected: (none)")
        );
    }

    fn secrets() -> Value {
        json!({
            "identity_enabled": true,
            "certificate": {
                "identity": "spiffe://cluster.local/ns/default/sa/catalog",
                "serial": "1a2b",
                "not_before": 1_700_000_000,
                "not_after": 1_700_086_400,
                "chain": [{"serial": "1a2b"}, {"serial": "ff"}]
            },
            "trust_bundle": {"source": "sds", "roots": [
                {"subject": "O=mesh, CN=mesh root", "serial": "ff", "not_after": 2_000_000_000}
            ]}
        })
    }

    /// The text with runs of spaces squashed, so assertions ignore column padding.
    fn squash(text: &str) -> String {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn secrets_table() {
        let text = render_secrets(&secrets());
        assert_eq!(
            squash(&text),
            "SPIFFE ID SERIAL NOT BEFORE NOT AFTER CHAIN\n\
             spiffe://cluster.local/ns/default/sa/catalog 1a2b 2023-11-14T22:13:20Z 2023-11-15T22:13:20Z 2\n\
             \n\
             TRUST BUNDLE (1 roots, from sds)\n\
             ROOT SUBJECT SERIAL NOT AFTER\n\
             O=mesh, CN=mesh root ff 2033-05-18T03:33:20Z",
            "{text}"
        );
    }

    #[test]
    fn secrets_without_identity() {
        let text = render_secrets(&json!({
            "identity_enabled": false, "certificate": null,
            "trust_bundle": {"source": "none", "roots": []}
        }));
        assert!(
            text.starts_with("no workload certificate: identity is off"),
            "{text}"
        );
        assert!(text.contains("TRUST BUNDLE (0 roots, from none)"), "{text}");
    }

    #[test]
    fn xds_sections() {
        let dump = json!({
            "clusters": {"resources": [
                {"version": "v1", "name": "catalog.default.svc.cluster.local:8080",
                 "discovery": {"eds": "catalog.default.svc.cluster.local:8080"}, "http2": false},
                {"version": "v2", "name": "inbound|8080",
                 "discovery": {"static": [{"address": "127.0.1.2:8080"}]}, "http2": false}
            ], "last_error": "bad cluster"},
            "listeners": {"resources": [
                {"version": "v1", "name": "inbound", "address": "0.0.0.0:15006",
                 "direction": "inbound", "api_listener": false,
                 "chains": [{"tls": true}, {"tls": false}]}
            ]},
            "routes": {"resources": [
                {"version": "v1", "name": "outbound", "virtual_hosts": [
                    {"name": "catalog", "domains": ["catalog.default", "catalog"],
                     "rules": [{"path": {"prefix": "/"}, "cluster": "c:8080"}]}
                ]}
            ]},
            "endpoints": {"resources": [
                {"version": "v1", "cluster_name": "c:8080", "endpoints": [
                    {"address": "127.0.1.2:8080", "identity": "spiffe://x/ns/default/sa/catalog",
                     "workload": "catalog-1", "namespace": "default", "sidecar_port": 15006}
                ]}
            ]}
        });
        let clusters = render(Section::Clusters, &dump);
        assert!(
            squash(&clusters).contains("inbound|8080 STATIC (1 endpoints) http/1.1 v2"),
            "{clusters}"
        );
        assert!(
            clusters.ends_with("last update rejected: bad cluster\n"),
            "{clusters}"
        );
        let listeners = render(Section::Listeners, &dump);
        assert!(
            squash(&listeners).contains("inbound 0.0.0.0:15006 inbound 2 (1 mTLS) v1"),
            "{listeners}"
        );
        let routes = render(Section::Routes, &dump);
        assert!(
            squash(&routes).contains("outbound catalog catalog.default (+1 more) c:8080"),
            "{routes}"
        );
        let endpoints = render(Section::Endpoints, &dump);
        assert!(
            squash(&endpoints).contains(
                "c:8080 127.0.1.2:8080 catalog-1 spiffe://x/ns/default/sa/catalog sidecar :15006"
            ),
            "{endpoints}"
        );
        let all = render(Section::All, &dump);
        for title in [
            "== SECRETS ==",
            "== LISTENERS ==",
            "== ROUTES ==",
            "== CLUSTERS ==",
            "== ENDPOINTS ==",
        ] {
            assert!(all.contains(title), "{all}");
        }
    }
}
