//! TrafficPolicy across processes: a mesh file with a TrafficPolicy and endpoint
//! weights, the real controller translating it, the real sidecars enforcing it,
//! real upstream servers counting what reaches them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use mesh_tests::http::{Upstream, send};
use mesh_tests::process::{Controller, Sidecar};
use mesh_tests::{eventually, unique_ip};

fn mesh_file(catalog: &[(&str, IpAddr, u32)], client: IpAddr, policy: &str) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {mesh.io/inject: enabled}}\n",
    );
    for name in ["frontend", "catalog"] {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{selector: {{app: {name}}}, ports: [{{name: http, port: 8080}}]}}\n"
        ));
    }
    let mut workloads = vec![("frontend-1", "frontend", client, 1)];
    workloads.extend(catalog.iter().map(|(n, ip, w)| (*n, "catalog", *ip, *w)));
    for (name, app, ip, weight) in workloads {
        out.push_str(&format!(
            "---\napiVersion: mesh.io/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, labels: {{app: {app}}}, annotations: {{mesh.io/endpoint-weight: \"{weight}\"}}}}\nspec: {{address: {ip}, ports: [{{name: http, port: 8080}}], serviceAccount: {app}}}\n"
        ));
    }
    out.push_str(&format!(
        "---\napiVersion: mesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: catalog}}\nspec:\n  targetRef: {{kind: Service, name: catalog}}\n{policy}"
    ));
    out
}

/// GET catalog through the client sidecar with `headers`: the answering server.
async fn call(client: IpAddr, headers: &[(&str, &str)]) -> String {
    let mut req = http::Request::get("/items").header("host", "catalog:8080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match send(
        (client, 15001).into(),
        req.body(http_body_util::Empty::new()).unwrap(),
    )
    .await
    {
        Some((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).expect("upstream JSON");
            v["server"].as_str().unwrap().to_string()
        }
        other => format!("error {other:?}"),
    }
}

#[tokio::test]
async fn weights_and_sticky_hashing_from_the_mesh_file() {
    let dir = std::env::temp_dir().join(format!("mesh-traffic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (client_ip, ip1, ip2) = (unique_ip(), unique_ip(), unique_ip());
    let _u1 = Upstream::start("catalog-1", (ip1, 8080).into()).await;
    let _u2 = Upstream::start("catalog-2", (ip2, 8080).into()).await;
    let catalog = [("catalog-1", ip1, 3), ("catalog-2", ip2, 1)];
    let file = dir.join("mesh.yaml");
    let write = |text: String| {
        let tmp = dir.join("mesh.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write(mesh_file(
        &catalog,
        client_ip,
        "  loadBalancer: {simple: ROUND_ROBIN}\n",
    ));
    let controller = Controller::start(&file, &dir).await;
    let xds = controller.xds_url();
    let client = Sidecar::start("frontend-1", client_ip, &xds, &[], &dir);
    let s1 = Sidecar::start("catalog-1", ip1, &xds, &[], &dir);
    let s2 = Sidecar::start("catalog-2", ip2, &xds, &[], &dir);
    for s in [&client, &s1, &s2] {
        s.wait_ready().await;
    }

    // Weights 3:1 from the Workload annotations, weighted round robin.
    eventually("catalog reachable", Duration::from_secs(10), || async {
        (call(client_ip, &[]).await == "catalog-1" || call(client_ip, &[]).await == "catalog-1")
            .then_some(())
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        *seen.entry(call(client_ip, &[]).await).or_default() += 1;
    }
    let heavy = seen.get("catalog-1").copied().unwrap_or(0) as f64 / 400.0;
    assert!((heavy - 0.75).abs() <= 0.03, "3:1 by weight: {seen:?}");

    // Switch the policy to consistent hashing on a header: each user sticks.
    write(mesh_file(
        &catalog,
        client_ip,
        "  loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n",
    ));
    eventually("ring hash applied", Duration::from_secs(10), || async {
        let first = call(client_ip, &[("x-user", "probe")]).await;
        let mut same = true;
        for _ in 0..12 {
            same &= call(client_ip, &[("x-user", "probe")]).await == first;
        }
        same.then_some(())
    })
    .await;
    let mut owners = HashMap::new();
    for user in 0..24 {
        let user = format!("user-{user}");
        let first = call(client_ip, &[("x-user", &user)]).await;
        assert!(!first.starts_with("error"), "{first}");
        for _ in 0..8 {
            assert_eq!(
                call(client_ip, &[("x-user", &user)]).await,
                first,
                "{user} sticks"
            );
        }
        *owners.entry(first).or_insert(0) += 1;
    }
    assert_eq!(
        owners.len(),
        2,
        "users spread over both endpoints: {owners:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
