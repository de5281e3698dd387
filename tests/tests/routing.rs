//! Gateway API HTTPRoute end to end: a real controller reading a mesh file, real
//! sidecars and real upstream servers on their own loopback addresses. Every
//! assertion counts what real upstreams received or what a real client got back.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use mesh_tests::http::{Answer, GrpcUpstream, Upstream, exchange};
use mesh_tests::process::{Controller, Sidecar};
use mesh_tests::{eventually, unique_ip};

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {mesh.io/inject: enabled}}\n";

fn service(name: &str, app: &str, protocol: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{selector: {{app: {app}}}, ports: [{{name: http, port: 8080, appProtocol: {protocol}}}]}}\n"
    )
}

fn workload(name: &str, app: &str, ip: IpAddr) -> String {
    format!(
        "---\napiVersion: mesh.io/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec: {{address: {ip}, ports: [{{name: http, port: 8080}}], serviceAccount: {app}}}\n"
    )
}

/// The route under test, attached to `catalog:8080`. Rule order is deliberately
/// not precedence order: the exact `/exact` rule is last but must win over the
/// `/exact` prefix, and the header rule must win over the bare `/api` prefix.
const ROUTE: &str = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catalog}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: api}], remove: [x-secret]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-routed, value: "yes"}], remove: [x-upstream]}
    backendRefs: [{name: catalog-v1, port: 8080, weight: 90}, {name: catalog-v2, port: 8080, weight: 10}]
  - matches: [{path: {value: /api}, headers: [{name: x-canary, value: "yes"}]}, {path: {value: /api}, method: POST}]
    backendRefs: [{name: catalog-v2, port: 8080}]
  - matches: [{path: {value: /exact}}]
    backendRefs: [{name: catalog-v1, port: 8080}, {name: catalog-v2, port: 8080, weight: 0}]
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: catalog-v2, port: 8080}]
  - matches: [{path: {value: /gone}}]
    backendRefs: [{name: no-such-service, port: 8080}]
"#;

struct World {
    dir: PathBuf,
    controller: Controller,
    client: Sidecar,
    _sidecars: Vec<Sidecar>,
    v1: Upstream,
    v2: Upstream,
}

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl World {
    async fn start(tag: &str) -> (World, String) {
        let dir = std::env::temp_dir().join(format!("mesh-routing-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (client_ip, v1_ip, v2_ip) = (unique_ip(), unique_ip(), unique_ip());
        let v1 = Upstream::start("catalog-1", (v1_ip, 8080).into()).await;
        let v2 = Upstream::start("catalog-2", (v2_ip, 8080).into()).await;
        let yaml = [
            NAMESPACE.to_string(),
            service("frontend", "frontend", "http"),
            service("catalog", "catalog-v1", "http"),
            service("catalog-v1", "catalog-v1", "http"),
            service("catalog-v2", "catalog-v2", "http"),
            workload("frontend-1", "frontend", client_ip),
            workload("catalog-1", "catalog-v1", v1_ip),
            workload("catalog-2", "catalog-v2", v2_ip),
            ROUTE.to_string(),
        ]
        .concat();
        let file = dir.join("mesh.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let controller = Controller::start(&file, &dir).await;
        let xds = controller.xds_url();
        let client = Sidecar::start("frontend-1", client_ip, &xds, &[], &dir);
        let sidecars = vec![
            Sidecar::start("catalog-1", v1_ip, &xds, &[], &dir),
            Sidecar::start("catalog-2", v2_ip, &xds, &[], &dir),
        ];
        client.wait_ready().await;
        for s in &sidecars {
            s.wait_ready().await;
        }
        let world = World {
            dir,
            controller,
            client,
            _sidecars: sidecars,
            v1,
            v2,
        };
        (world, yaml)
    }

    fn outbound(&self) -> SocketAddr {
        (self.client.ip, 15001).into()
    }

    /// A request to `catalog:8080` through the client's sidecar (explicit proxy).
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://catalog.default:8080{path}"))
            .header("host", "catalog.default:8080");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        exchange(self.outbound(), req, false)
            .await
            .unwrap_or_else(|| panic!("no answer for {method} {path}"))
    }

    /// Which upstream served `method path`.
    async fn served_by(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
        let a = self.call(method, path, headers).await;
        assert_eq!(a.status, 200, "{method} {path}: {}", a.body);
        a.json()["server"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn http_route_matches_splits_and_edits_headers() {
    let (w, _) = World::start("match").await;

    // Matches: a header or method beats the bare prefix; exact beats prefix.
    let canary = [("x-canary", "yes")];
    assert_eq!(w.served_by("GET", "/api/items", &canary).await, "catalog-2");
    assert_eq!(w.served_by("POST", "/api/items", &[]).await, "catalog-2");
    assert_eq!(w.served_by("GET", "/exact", &[]).await, "catalog-2");
    for _ in 0..20 {
        assert_eq!(
            w.served_by("GET", "/exact/more", &[]).await,
            "catalog-1",
            "the prefix rule takes the rest; weight 0 takes nothing"
        );
    }

    // No rule matches a routed host: 404 (PathPrefix is element-wise); a rule
    // whose only backend does not exist: 500; a host nobody serves: 503.
    for path in ["/exactly", "/nothing", "/"] {
        let a = w.call("GET", path, &[]).await;
        assert_eq!(a.status, 404, "{path}: {}", a.body);
        assert!(a.body.contains("no HTTPRoute rule matches"), "{}", a.body);
    }
    let gone = w.call("GET", "/gone", &[]).await;
    assert_eq!(gone.status, 500, "{}", gone.body);
    let req = Request::get("http://nowhere.default:8080/")
        .header("host", "nowhere.default:8080")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = exchange(w.outbound(), req, false).await.unwrap();
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.body.contains("no service matches host"), "{}", a.body);

    // Header edits: seen by the upstream and by the client.
    let a = w
        .call(
            "GET",
            "/api/edits",
            &[("x-secret", "s3cret"), ("x-keep", "1")],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = &a.json()["headers"];
    assert_eq!(seen["x-route"], "api", "set on the request: {seen}");
    assert!(
        seen.get("x-secret").is_none(),
        "removed from the request: {seen}"
    );
    assert_eq!(seen["x-keep"], "1");
    assert_eq!(a.headers.get("x-routed").unwrap(), "yes");
    assert!(
        a.headers.get("x-upstream").is_none(),
        "removed from the response"
    );

    // The 90/10 split, counted at the real upstreams.
    let (v1_before, v2_before) = (
        w.v1.hits.load(Ordering::Relaxed),
        w.v2.hits.load(Ordering::Relaxed),
    );
    for i in 0..2000 {
        let a = w.call("GET", &format!("/api/split/{i}"), &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let v1 = w.v1.hits.load(Ordering::Relaxed) - v1_before;
    let v2 = w.v2.hits.load(Ordering::Relaxed) - v2_before;
    assert_eq!(v1 + v2, 2000, "every request reached an upstream once");
    assert!(
        (140..=260).contains(&v2),
        "catalog-v2 got {v2} of 2000 (10% ± 3% is 140..=260); catalog-v1 {v1}"
    );
}

#[tokio::test]
async fn a_bad_http_route_is_rejected_and_the_previous_routes_stay() {
    let (w, yaml) = World::start("bad").await;
    let canary = [("x-canary", "yes")];
    assert_eq!(w.served_by("GET", "/api/items", &canary).await, "catalog-2");
    // The same route made invalid: applied, it would drop every rule.
    let bad = yaml.replace(
        "{path: {value: /api}, method: POST}",
        "{path: {type: RegularExpression, value: /api.*}, method: POST}",
    );
    assert_ne!(bad, yaml);
    let tmp = w.dir.join("mesh.yaml.tmp");
    std::fs::write(&tmp, bad).unwrap();
    std::fs::rename(&tmp, w.dir.join("mesh.yaml")).unwrap();
    let error = eventually(
        "the registry reports the bad route",
        Duration::from_secs(10),
        || async {
            let state = w.controller.admin_json("/debug/registry").await;
            state["last_error"].as_str().map(str::to_string)
        },
    )
    .await;
    assert!(
        error.contains("document 9 (HTTPRoute/default/catalog)")
            && error.contains("spec.rules[1].matches[1].path.type")
            && error.contains("RegularExpression is not supported"),
        "{error}"
    );
    assert_eq!(w.served_by("GET", "/api/items", &canary).await, "catalog-2");
    assert_eq!(w.call("GET", "/nothing", &[]).await.status, 404);
}

/// A gRPC call through two sidecars to a real HTTP/2 gRPC server that fails it
/// with NOT_FOUND in the trailers: the client gets the status, and both sidecars
/// count it with `grpc_status="5"`.
#[tokio::test]
async fn grpc_status_propagates_through_two_sidecars() {
    let dir = std::env::temp_dir().join(format!("mesh-routing-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (client_ip, server_ip) = (unique_ip(), unique_ip());
    let server = GrpcUpstream::start((server_ip, 8080).into(), 5).await;
    let route = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: grpc-catalog}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc-catalog}]
  rules:
  - matches: [{path: {value: /shop.Catalog}, method: POST}]
    backendRefs: [{name: grpc-catalog, port: 8080}]
"#;
    let yaml = [
        NAMESPACE.to_string(),
        service("frontend", "frontend", "http"),
        service("grpc-catalog", "grpc-catalog", "grpc"),
        workload("frontend-1", "frontend", client_ip),
        workload("grpc-1", "grpc-catalog", server_ip),
        route.to_string(),
    ]
    .concat();
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let controller = Controller::start(&file, &dir).await;
    let client = Sidecar::start("frontend-1", client_ip, &controller.xds_url(), &[], &dir);
    let sidecar = Sidecar::start("grpc-1", server_ip, &controller.xds_url(), &[], &dir);
    client.wait_ready().await;
    sidecar.wait_ready().await;

    let call = |path: &'static str| {
        Request::post(format!("http://grpc-catalog.default:8080{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap()
    };
    let a = exchange((client_ip, 15001).into(), call("/shop.Catalog/Get"), true)
        .await
        .expect("an answer");
    assert_eq!(a.status, 200, "{}", a.body);
    let trailers = a.trailers.expect("gRPC trailers reach the client");
    assert_eq!(trailers.get("grpc-status").unwrap(), "5");
    assert_eq!(trailers.get("grpc-message").unwrap(), "not here");
    assert_eq!(server.calls.load(Ordering::Relaxed), 1);
    // A method outside the route's prefix is not routed.
    let other = exchange((client_ip, 15001).into(), call("/shop.Orders/Get"), true)
        .await
        .unwrap();
    assert_eq!(other.status, 404);
    assert_eq!(server.calls.load(Ordering::Relaxed), 1);

    for (proxy, reporter) in [(&client, "source"), (&sidecar, "destination")] {
        let url = proxy.admin_url("/metrics");
        let line = eventually(
            "the gRPC call in the metrics",
            Duration::from_secs(5),
            || {
                let url = url.clone();
                async move {
                    let (_, text) = mesh_tests::http::get(&url).await?;
                    text.lines()
                        .find(|l| {
                            l.starts_with("mesh_requests_total{")
                                && l.contains(&format!("reporter=\"{reporter}\""))
                                && l.contains("grpc-catalog.default.svc.cluster.local")
                                && l.contains("response_code=\"200\"")
                        })
                        .map(str::to_string)
                }
            },
        )
        .await;
        assert!(line.contains("grpc_status=\"5\""), "{reporter}: {line}");
        assert!(line.ends_with(" 1"), "{reporter}: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
