//! Benchmark (not a test): the per-request cost of outbound routing, i.e. the
//! virtual-host lookup by host plus the first-match scan of its rules (path,
//! method, headers, query) plus the weighted split draw, on route tables built
//! through the real decode path from the controller's own HTTPRoute translation.
//!
//!   cargo bench -p mesh-proxy --bench routing [-- --hosts 10,1000 --rules 1,10,50]
//!
//! Each case prints ns per lookup for a request matching `/p0` (the shortest
//! prefix, so last among the rules in Gateway API precedence: nearly every rule
//! is tried first) and for one only the catch-all 404 answers (every rule tried).

use std::fmt::Write;
use std::hint::black_box;
use std::time::Instant;

use http::{HeaderMap, Method, Uri};
use mesh_model::{Model, ModelOptions, parse_documents};
use mesh_proxy::route_match::RequestView;
use mesh_proxy::routing::{LocalIdentity, ProxyConfig};
use mesh_proxy::store::Store;
use mesh_xds::ResourceType;
use mesh_xds::names;

fn list(args: &[String], flag: &str, default: &[usize]) -> Vec<usize> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// A mesh with `hosts` services, each with an HTTPRoute of `rules` rules (each a
/// path prefix, a header and a 90/10 split).
fn mesh(hosts: usize, rules: usize) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {mesh.io/inject: enabled}}\n",
    );
    for h in 0..hosts {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{h}}}\nspec: {{selector: {{app: a{h}}}, ports: [{{port: 80}}]}}\n"
        );
        let _ = write!(
            out,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r-{h}}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: svc-{h}}}]\n  rules:\n"
        );
        for r in 0..rules {
            let _ = writeln!(
                out,
                "  - matches: [{{path: {{value: /p{r}}}, headers: [{{name: x-v, value: '{r}'}}]}}]\n    backendRefs: [{{name: svc-{h}, port: 80, weight: 90}}, {{name: svc-0, port: 80, weight: 10}}]"
            );
        }
    }
    out
}

fn config(hosts: usize, rules: usize) -> ProxyConfig {
    let model = Model::new(
        parse_documents(&mesh(hosts, rules), "bench").expect("bench mesh parses"),
        ModelOptions::default(),
    );
    let snapshot = mesh_xds::Snapshot::build(std::sync::Arc::new(model), "".into(), 1, None);
    let view = mesh_xds::ProxyView::new(
        std::sync::Arc::new(snapshot),
        &mesh_xds::ProxyNode::default(),
    );
    let mut store = Store::default();
    for ty in [ResourceType::Cluster, ResourceType::Listener] {
        let all: Vec<_> = view.wildcard(ty).iter().map(|r| r.body.clone()).collect();
        store
            .apply_sotw(ty, "1", "n", &all, None)
            .expect("accepted");
    }
    let routes = view
        .get(ResourceType::Route, names::OUTBOUND)
        .expect("routes");
    store
        .apply_sotw(
            ResourceType::Route,
            "1",
            "n",
            std::slice::from_ref(&routes.body),
            Some(&store.route_names()),
        )
        .expect("routes accepted");
    ProxyConfig::build(&store, &ProxyConfig::default(), &LocalIdentity::default())
}

fn ns_per_lookup(cfg: &ProxyConfig, hosts: usize, path: &str, header: &str) -> f64 {
    let table = cfg.outbound.as_ref().expect("outbound table");
    let uri: Uri = path.parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-v", header.parse().unwrap());
    let host_names: Vec<String> = (0..hosts)
        .map(|h| format!("svc-{h}.default.svc.cluster.local"))
        .collect();
    let iterations = 2_000_000usize;
    let start = Instant::now();
    for i in 0..iterations {
        let host = &host_names[i % hosts];
        let vh = table.find(host).expect("host");
        let view = RequestView::new(&Method::GET, &uri, &headers);
        black_box(vh.route(&view).map(|r| r.name.len()));
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let hosts = list(&args, "--hosts", &[10, 1000]);
    let rules = list(&args, "--rules", &[1, 10, 50]);
    println!(
        "| virtual hosts | rules per host | matches the last rule (ns) | no rule matches, 404 (ns) |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for &h in &hosts {
        for &r in &rules {
            let cfg = config(h, r);
            let first = ns_per_lookup(&cfg, h, "/p0/x", "0");
            let none = ns_per_lookup(&cfg, h, "/nothing", "0");
            println!("| {h} | {r} | {first:.0} | {none:.0} |");
        }
    }
}
