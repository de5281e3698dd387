//! The Kubernetes-facing commands, run as the real binary: `meshctl inject`,
//! `meshctl install`, and `meshctl namespace enable|disable` against a small
//! fake API server (HTTP, the real Namespace and Status JSON shapes).

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

fn meshctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "meshctl-k8s-{}-{}-{name}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).unwrap())
        .collect()
}

fn init_names(pod_spec: &Value) -> Vec<&str> {
    pod_spec["initContainers"]
        .as_array()
        .map(|a| a.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

const MANIFEST: &str = r#"
# a comment, dropped
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: web:1
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
  annotations: {mesh.io/inject: disabled}
spec:
  containers: [{name: sh, image: busybox}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: report:1}]
---
apiVersion: v1
kind: List
items:
  - apiVersion: apps/v1
    kind: StatefulSet
    metadata: {name: db}
    spec:
      serviceName: db
      selector: {matchLabels: {app: db}}
      template:
        metadata: {labels: {app: db}}
        spec:
          containers: [{name: db, image: db:1}]
---
"#;

#[test]
fn inject_command_injects_pod_templates_and_leaves_the_rest() {
    let dir = scratch("inject");
    let file = dir.join("app.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let out = meshctl()
        .args(["inject", "-f"])
        .arg(&file)
        .args(["--proxy-image", "registry.local/mesh-proxy:dev"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let docs = yaml_docs(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(docs.len(), 6, "empty documents dropped, the rest kept");
    let input = yaml_docs(MANIFEST);
    assert_eq!(docs[0], input[0], "Namespace unchanged");
    assert_eq!(docs[2], input[2], "Service unchanged");
    assert_eq!(docs[3], input[3], "opted-out Pod unchanged");

    let web = &docs[1]["spec"]["template"];
    assert_eq!(init_names(&web["spec"]), ["mesh-init", "mesh-proxy"]);
    assert_eq!(
        web["spec"]["initContainers"][1]["image"],
        "registry.local/mesh-proxy:dev"
    );
    assert_eq!(web["metadata"]["annotations"]["mesh.io/injected"], "true");
    assert_eq!(docs[1]["spec"]["replicas"], 2);
    let cron = &docs[4]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(init_names(cron), ["mesh-init", "mesh-proxy"]);
    let db = &docs[5]["items"][0]["spec"]["template"]["spec"];
    assert_eq!(init_names(db), ["mesh-init", "mesh-proxy"]);

    assert!(
        stderr.contains("Deployment/web: sidecar injected"),
        "{stderr}"
    );
    assert!(stderr.contains("Pod/debug: unchanged"), "{stderr}");

    // Injecting the output again changes nothing.
    let again_file = dir.join("injected.yaml");
    std::fs::write(&again_file, serde_yaml::to_string(&docs[1]).unwrap()).unwrap();
    let again = meshctl()
        .args(["inject", "-f"])
        .arg(&again_file)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        yaml_docs(&String::from_utf8(again.stdout).unwrap()),
        [docs[1].clone()]
    );

    // Bad input: a clear error naming the document.
    std::fs::write(&file, "kind: Pod\nspec: {volumes: 3}\n").unwrap();
    let bad = meshctl()
        .args(["inject", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("document 1") && err.contains("spec.volumes"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn inject_reads_stdin() {
    let mut child = meshctl()
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\"},\"spec\":{\"containers\":[{\"name\":\"c\",\"image\":\"i\"}]}}")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let docs = yaml_docs(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(init_names(&docs[0]["spec"]), ["mesh-init", "mesh-proxy"]);
}

#[test]
fn install_prints_every_manifest() {
    let out = meshctl()
        .args(["install", "--hub", "registry.local/mesh", "--tag", "dev"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = yaml_docs(&text);
    let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Deployment",
        "Service",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(kinds[0], "Namespace", "the namespace comes first");
    assert!(text.contains("image: registry.local/mesh/mesh-controller:dev"));
    assert!(text.contains("registry.local/mesh/mesh-proxy:dev"));
}

// ---------------------------------------------------------------------------
// A fake API server for namespace patches.

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    authorization: String,
    body: Value,
}

async fn fake_api(
    seen: Arc<Mutex<Vec<Seen>>>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let header = |h: &str| {
                                req.headers()
                                    .get(h)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let (content_type, authorization) =
                                (header("content-type"), header("authorization"));
                            let bytes = req.into_body().collect().await.unwrap().to_bytes();
                            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            seen.lock().unwrap().push(Seen {
                                method: method.clone(),
                                path: path.clone(),
                                content_type,
                                authorization,
                                body: body.clone(),
                            });
                            let name = path.strip_prefix("/api/v1/namespaces/").unwrap_or("");
                            let (status, answer) = if method != "PATCH" || name.is_empty() {
                                (
                                    405,
                                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": "unexpected", "reason": "MethodNotAllowed", "code": 405}),
                                )
                            } else if name == "missing" {
                                (
                                    404,
                                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": "namespaces \"missing\" not found", "reason": "NotFound",
                                "details": {"name": "missing", "kind": "namespaces"}, "code": 404}),
                                )
                            } else {
                                let mut labels = json!({"kubernetes.io/metadata.name": name});
                                if let Some(v) = body
                                    .pointer("/metadata/labels/mesh.io~1inject")
                                    .and_then(Value::as_str)
                                {
                                    labels["mesh.io/inject"] = json!(v);
                                }
                                (
                                    200,
                                    json!({"kind": "Namespace", "apiVersion": "v1",
                                "metadata": {"name": name, "uid": "4b6f0d47-9a55-4c1e-8d7e-0f5d7a3c2b19",
                                    "resourceVersion": "1234", "creationTimestamp": "2025-05-01T09:00:00Z",
                                    "labels": labels},
                                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
                                )
                            };
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(
                                        serde_json::to_vec(&answer).unwrap(),
                                    )))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, task)
}

fn kubeconfig(dir: &std::path::Path, addr: std::net::SocketAddr) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: admin\n  user:\n    token: secret-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: admin\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_enable_and_disable_patch_the_label() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (addr, server) = fake_api(seen.clone()).await;
    let dir = scratch("ns");
    let config = kubeconfig(&dir, addr);
    let run = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            meshctl()
                .args(&args)
                .arg("--kubeconfig")
                .arg(&config)
                .env_remove("KUBECONFIG")
                .output()
                .unwrap()
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let out = run(args(&["namespace", "enable", "shop"])).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("mesh.io/inject=enabled"));
    let out = run(args(&["namespace", "disable", "shop"])).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(args(&["namespace", "enable", "missing"]))
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("namespace missing does not exist"), "{err}");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for s in &seen {
        assert_eq!(s.method, "PATCH");
        assert_eq!(s.content_type, "application/merge-patch+json");
        assert_eq!(s.authorization, "Bearer secret-token");
    }
    assert_eq!(seen[0].path, "/api/v1/namespaces/shop");
    assert_eq!(
        seen[0].body,
        json!({"metadata": {"labels": {"mesh.io/inject": "enabled"}}})
    );
    assert_eq!(
        seen[1].body,
        json!({"metadata": {"labels": {"mesh.io/inject": null}}})
    );
    server.abort();
    let _ = std::fs::remove_dir_all(dir);
}
