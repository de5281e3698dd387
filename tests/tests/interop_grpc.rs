//! Interoperability: a real proxyless gRPC client (grpcio, Python) resolves a mesh
//! service through the controller's xDS and round-robins over its endpoints, which
//! are real gRPC servers. Needs `python3` with `grpcio` and `grpcio-health-checking`
//! (installed by the README's test command).

use std::path::PathBuf;
use std::time::Duration;

use mesh_tests::process::{Controller, Proc};
use mesh_tests::unique_ip;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

#[tokio::test]
async fn grpcio_client_accepts_our_xds_and_balances() {
    let have_grpcio = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_health"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_grpcio,
        "python3 with grpcio and grpcio-health-checking is required: pip install grpcio grpcio-health-checking"
    );
    let dir = std::env::temp_dir().join(format!("mesh-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ip1, ip2) = (unique_ip(), unique_ip());
    let yaml = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: default, labels: {{mesh.io/inject: enabled}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: catalog}}
spec: {{selector: {{app: catalog}}, ports: [{{name: grpc, port: 8080, appProtocol: grpc}}]}}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {{name: catalog-1, labels: {{app: catalog}}}}
spec: {{address: {ip1}, ports: [{{port: 8080}}], serviceAccount: catalog}}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {{name: catalog-2, labels: {{app: catalog}}}}
spec: {{address: {ip2}, ports: [{{port: 8080}}], serviceAccount: catalog}}
"#
    );
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, yaml).unwrap();
    let controller = Controller::start(&file, &dir).await;
    let python = PathBuf::from("python3");
    let server = script("grpc_health_server.py").display().to_string();
    let _s1 = Proc::start(
        "grpc-1",
        &python,
        &[server.clone(), format!("{ip1}:8080"), "catalog-1".into()],
        &dir,
    );
    let _s2 = Proc::start(
        "grpc-2",
        &python,
        &[server, format!("{ip2}:8080"), "catalog-2".into()],
        &dir,
    );
    for ip in [ip1, ip2] {
        mesh_tests::eventually(
            "gRPC server listening",
            Duration::from_secs(20),
            || async move { tokio::net::TcpStream::connect((ip, 8080)).await.ok() },
        )
        .await;
    }
    let out = tokio::process::Command::new("python3")
        .arg(script("grpc_xds_client.py"))
        .arg(controller.xds.to_string())
        .arg("catalog.default.svc.cluster.local:8080")
        .arg("20")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .expect("gRPC client finished in time")
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("client prints JSON");
    assert_eq!(result["ok"], 20, "every call succeeds: {result}");
    let servers = result["servers"].as_object().expect("servers");
    assert_eq!(
        servers.len(),
        2,
        "round robin reaches both endpoints: {result}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
