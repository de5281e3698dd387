//! End to end on one machine: a real controller, real sidecars and real upstream
//! servers, each on its own loopback address with the standard sidecar ports.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_tests::http::{Upstream, get_via_proxy};
use mesh_tests::process::{Controller, Sidecar};
use mesh_tests::{eventually, mesh_yaml, unique_ip};

/// The mesh file with a ROUND_ROBIN TrafficPolicy for catalog: these tests count
/// which endpoints answer a few sequential requests, which least request (the
/// default) would send to whichever endpoint is fastest.
fn round_robin(mut yaml: String) -> String {
    yaml.push_str(
        "---\napiVersion: mesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: catalog, namespace: default}\nspec: {targetRef: {kind: Service, name: catalog}, loadBalancer: {simple: ROUND_ROBIN}}\n",
    );
    yaml
}

/// One meshed test workload: an upstream server and its sidecar.
struct Instance {
    name: String,
    ip: IpAddr,
    _upstream: Upstream,
    sidecar: Sidecar,
}

impl Instance {
    async fn start(
        name: &str,
        xds_url: &str,
        extra_args: &[&str],
        dir: &std::path::Path,
    ) -> Instance {
        let ip = unique_ip();
        let upstream = Upstream::start(name, (ip, 8080).into()).await;
        let sidecar = Sidecar::start(name, ip, xds_url, extra_args, dir);
        Instance {
            name: name.into(),
            ip,
            _upstream: upstream,
            sidecar,
        }
    }
}

struct World {
    dir: PathBuf,
    controller: Controller,
    client: Sidecar,
    client_ip: IpAddr,
    catalog: Vec<Instance>,
    extra_args: Vec<&'static str>,
}

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl World {
    fn yaml(&self, names: &[&str]) -> String {
        let mut w = vec![("frontend-1", "frontend", self.client_ip, 8080)];
        for i in &self.catalog {
            if names.contains(&i.name.as_str()) {
                w.push((i.name.as_str(), "catalog", i.ip, 8080));
            }
        }
        round_robin(mesh_yaml(&[("frontend", 8080), ("catalog", 8080)], &w))
    }

    fn write(&self, text: &str) {
        let tmp = self.dir.join("mesh.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("mesh.yaml")).unwrap();
    }

    async fn add_instance(&mut self, name: &str) {
        let instance = Instance::start(
            name,
            &self.controller.xds_url(),
            &self.extra_args,
            &self.dir,
        )
        .await;
        self.catalog.push(instance);
    }

    async fn start(tag: &str, extra_args: &[&'static str]) -> World {
        let dir = std::env::temp_dir().join(format!("mesh-e2e-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let client_ip = unique_ip();
        let file = dir.join("mesh.yaml");
        // The controller address is chosen first so instances can start with it.
        let (xds, admin, secure) = (
            mesh_tests::free_addr(),
            mesh_tests::free_addr(),
            mesh_tests::free_addr(),
        );
        let xds_url = format!("http://{xds}");
        let mut catalog = Vec::new();
        for name in ["catalog-1", "catalog-2"] {
            catalog.push(Instance::start(name, &xds_url, extra_args, &dir).await);
        }
        let world_yaml = |catalog: &[Instance]| {
            let mut w = vec![("frontend-1", "frontend", client_ip, 8080)];
            w.extend(
                catalog
                    .iter()
                    .map(|i| (i.name.as_str(), "catalog", i.ip, 8080)),
            );
            round_robin(mesh_yaml(&[("frontend", 8080), ("catalog", 8080)], &w))
        };
        std::fs::write(&file, world_yaml(&catalog)).unwrap();
        let controller = Controller::start_on(&file, &dir, xds, admin, secure, &[]).await;
        let client = Sidecar::start("frontend-1", client_ip, &xds_url, extra_args, &dir);
        client.wait_ready().await;
        for i in &catalog {
            i.sidecar.wait_ready().await;
        }
        World {
            dir,
            controller,
            client,
            client_ip,
            catalog,
            extra_args: extra_args.to_vec(),
        }
    }

    /// Sends `n` requests to catalog through the client sidecar (explicit proxy) and
    /// counts answers per upstream server; failures count under "error <status>".
    async fn spread(&self, n: usize) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for _ in 0..n {
            let key =
                match get_via_proxy(&self.client.outbound(), "http://catalog.default:8080/items")
                    .await
                {
                    Some((200, body)) => {
                        let v: serde_json::Value =
                            serde_json::from_str(&body).expect("upstream JSON");
                        assert_eq!(
                            v["mesh_headers"],
                            serde_json::json!([]),
                            "hop headers leak to the app"
                        );
                        v["server"].as_str().unwrap().to_string()
                    }
                    Some((status, body)) => format!("error {status}: {body}"),
                    None => "error: no answer".into(),
                };
            *seen.entry(key).or_default() += 1;
        }
        seen
    }

    async fn wait_spread(&self, what: &str, expect: &[&str]) {
        let mut want: Vec<String> = expect.iter().map(|s| s.to_string()).collect();
        want.sort();
        eventually(what, Duration::from_secs(10), || {
            let want = want.clone();
            async move {
                let mut got: Vec<String> = self.spread(12).await.into_keys().collect();
                got.sort();
                (got == want).then_some(())
            }
        })
        .await;
    }
}

async fn traffic_and_changes(extra: &[&'static str]) {
    let mut w = World::start(if extra.is_empty() { "delta" } else { "sotw" }, extra).await;

    // Round robin over both endpoints, every request answered.
    let spread = w.spread(20).await;
    assert_eq!(spread.get("catalog-1"), Some(&10), "{spread:?}");
    assert_eq!(spread.get("catalog-2"), Some(&10), "{spread:?}");

    // Plain (non-proxy) request routed by Host header.
    let req = http::Request::get("/plain")
        .header("host", "catalog:8080")
        .body(http_body_util::Empty::new())
        .unwrap();
    let (status, body) = mesh_tests::http::send((w.client_ip, 15001).into(), req)
        .await
        .expect("answer");
    assert_eq!(status, 200, "{body}");

    // Adding an endpoint reaches the proxy; removing one takes it away.
    w.add_instance("catalog-3").await;
    w.catalog[2].sidecar.wait_ready().await;
    w.write(&w.yaml(&["catalog-1", "catalog-2", "catalog-3"]));
    w.wait_spread("catalog-3 added", &["catalog-1", "catalog-2", "catalog-3"])
        .await;
    w.write(&w.yaml(&["catalog-2", "catalog-3"]));
    w.wait_spread("catalog-1 removed", &["catalog-2", "catalog-3"])
        .await;

    // Controller gone: the proxy keeps its last good config.
    let (xds, admin, secure) = (w.controller.xds, w.controller.admin, w.controller.secure);
    w.controller.proc.kill().await;
    let spread = w.spread(20).await;
    assert_eq!(
        spread.len(),
        2,
        "traffic flows without the controller: {spread:?}"
    );
    assert!(spread.keys().all(|k| !k.starts_with("error")), "{spread:?}");

    // Controller back with a changed file: the proxy reconnects and resyncs.
    w.write(&w.yaml(&["catalog-1", "catalog-2", "catalog-3"]));
    w.controller =
        Controller::start_on(&w.dir.join("mesh.yaml"), &w.dir, xds, admin, secure, &[]).await;
    w.wait_spread(
        "resync after controller restart",
        &["catalog-1", "catalog-2", "catalog-3"],
    )
    .await;
    let syncz = w.controller.admin_json("/debug/syncz").await;
    let client = syncz
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node_id"] == "frontend-1.default")
        .expect("client reconnected");
    assert_eq!(client["workload"], "frontend-1");
    assert_eq!(client["admin_address"], format!("{}:15000", w.client_ip));
}

#[tokio::test]
async fn delta_proxies_route_balance_and_survive_controller_restart() {
    traffic_and_changes(&[]).await;
}

#[tokio::test]
async fn sotw_proxies_route_balance_and_survive_controller_restart() {
    traffic_and_changes(&["--xds-protocol", "sotw"]).await;
}

#[tokio::test]
async fn unknown_service_and_empty_service_get_clear_503s() {
    let w = World::start("errors", &[]).await;
    let (status, body) = get_via_proxy(&w.client.outbound(), "http://nosuch.default:8080/")
        .await
        .expect("answer");
    assert_eq!(status, 503);
    assert!(
        body.contains("nosuch.default:8080"),
        "body names the host: {body}"
    );

    // frontend has a service but its only workload is the client itself, without
    // an app; make a service with no endpoints at all.
    let mut yaml = w.yaml(&["catalog-1", "catalog-2"]);
    yaml.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\nspec: {selector: {app: nothing}, ports: [{port: 9000}]}\n");
    w.write(&yaml);
    let (status, body) = eventually("empty service routed", Duration::from_secs(10), || async {
        get_via_proxy(&w.client.outbound(), "http://empty.default:9000/")
            .await
            .filter(|(_, b)| !b.contains("no service"))
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("no endpoints"), "{body}");
    assert!(
        body.contains("empty.default.svc.cluster.local:9000"),
        "{body}"
    );

    // Garbage on the wire gets an HTTP error, and the proxy keeps serving.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((w.client_ip, 15001))
        .await
        .unwrap();
    s.write_all(b"\x16\x03\x01garbage\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    let spread = w.spread(4).await;
    assert_eq!(spread.values().sum::<usize>(), 4);
    assert!(spread.keys().all(|k| !k.starts_with("error")), "{spread:?}");
}

#[tokio::test]
async fn bad_mesh_files_are_reported_and_change_nothing() {
    let w = World::start("badfile", &[]).await;
    let before = w.controller.admin_json("/debug/registry").await;
    let dump_before = mesh_tests::http::get(&w.client.admin_url("/config_dump"))
        .await
        .unwrap()
        .1;
    let good = w.yaml(&["catalog-1", "catalog-2"]);
    let cases = [
        (
            "malformed",
            format!("{good}---\nkind: [unclosed\n"),
            "malformed",
        ),
        (
            "unknown kind",
            format!("{good}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n"),
            "unknown kind",
        ),
        (
            "duplicate",
            format!(
                "{good}---\napiVersion: v1\nkind: Service\nmetadata: {{name: catalog, namespace: default}}\nspec: {{ports: [{{port: 1}}]}}\n"
            ),
            "duplicate Service/default/catalog",
        ),
        (
            "port out of range",
            format!(
                "{good}---\napiVersion: v1\nkind: Service\nmetadata: {{name: big}}\nspec: {{ports: [{{port: 70000}}]}}\n"
            ),
            "out of range",
        ),
    ];
    for (what, text, expect) in cases {
        w.write(&text);
        let reg = eventually(
            &format!("{what} reported"),
            Duration::from_secs(5),
            || async {
                let reg = w.controller.admin_json("/debug/registry").await;
                reg["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(expect))
                    .then_some(reg)
            },
        )
        .await;
        let err = reg["last_error"].as_str().unwrap();
        assert!(
            err.contains("mesh.yaml") && err.contains("document"),
            "{what}: error names file and document: {err}"
        );
        assert_eq!(
            reg["revision"], before["revision"],
            "{what}: model unchanged"
        );
        assert_eq!(reg["model"], before["model"], "{what}: model unchanged");
        assert!(
            w.controller.proc.log_text().contains(expect),
            "{what}: error is logged"
        );
    }
    // The proxies never saw any of it, and traffic still flows.
    let dump_after = mesh_tests::http::get(&w.client.admin_url("/config_dump"))
        .await
        .unwrap()
        .1;
    assert_eq!(
        dump_before, dump_after,
        "proxy config changed after bad files"
    );
    let spread = w.spread(6).await;
    assert_eq!(spread.len(), 2, "{spread:?}");
    // Fixing the file clears the error.
    w.write(&good);
    eventually("error cleared", Duration::from_secs(5), || async {
        w.controller.admin_json("/debug/registry").await["last_error"]
            .is_null()
            .then_some(())
    })
    .await;
}
