//! `meshctl check --kubeconfig ...` against the test API server: an empty
//! cluster fails naming what is missing and how to fix it; the manifests from
//! `deploy/kubernetes/` plus a ready Deployment, a labelled namespace and a real
//! `mesh-controller` (which fills the webhook's caBundle and answers the
//! dry-run AdmissionReview) pass.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use mesh_tests::TestDir;
use mesh_tests::kube_api::KubeApi;
use mesh_tests::process::{Controller, bin};
use serde_json::{Value, json};

/// Every document of `deploy/kubernetes/*.yaml`, in file order.
fn manifests() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

/// Creates the manifests the test API server serves (it has no
/// PodDisruptionBudget, which `check` does not look at), editing each with `edit`.
fn install(api: &KubeApi, mut edit: impl FnMut(&mut Value)) {
    for mut doc in manifests() {
        edit(&mut doc);
        let what = format!("{} {}", doc["kind"], doc["metadata"]["name"]);
        match api.try_create(doc) {
            Ok(_) => {}
            Err(e) if e.to_string().contains("no resource serves") => {}
            Err(e) => panic!("create {what}: {e}"),
        }
    }
}

/// Runs `meshctl check` with `args`, isolated from the developer's own
/// kubeconfig; returns (success, stdout + stderr).
async fn check(args: &[&str], home: &Path) -> (bool, String) {
    let out = tokio::process::Command::new(bin("meshctl"))
        .arg("check")
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("MESH_CONTROLLER")
        .env("HOME", home)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("meshctl check finishes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_cluster_fails_with_hints() {
    let api = KubeApi::start().await;
    let dir = TestDir::new("empty");
    let kubeconfig = dir.0.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    // Nothing listens on the admin address either.
    let controller = format!("http://{}", mesh_tests::free_addr());
    let (ok, out) = check(
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--controller",
            &controller,
        ],
        &dir.0,
    )
    .await;
    assert!(!ok, "an empty cluster passed:\n{out}");
    let cluster = out.find("Cluster\n").expect("a Cluster group");
    assert!(
        cluster < out.find("Controller\n").expect("a Controller group"),
        "Cluster comes first:\n{out}"
    );
    for line in [
        "✘ CRD trafficpolicies.mesh.io is missing",
        "✘ CRD authorizationpolicies.mesh.io is missing",
        "hint: install the mesh: meshctl install | kubectl apply -f -",
        "✘ Deployment mesh-system/mesh-controller is missing",
        "✘ MutatingWebhookConfiguration mesh-sidecar-injector is missing",
        "⚠ no namespace is labelled mesh.io/inject=enabled",
        "hint: mesh a namespace: meshctl namespace enable NS",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    // Installed but the controller is not running: its Deployment has no ready
    // replica (the hint says where to look) and caBundle is still empty.
    install(&api, |_| {});
    let (ok, out) = check(
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--controller",
            &controller,
        ],
        &dir.0,
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("✔ CRD trafficpolicies.mesh.io is installed"),
        "{out}"
    );
    assert!(
        out.contains("✘ Deployment mesh-system/mesh-controller: 0/2 replicas ready"),
        "{out}"
    );
    assert!(
        out.contains("hint: see why: kubectl -n mesh-system logs deploy/mesh-controller"),
        "{out}"
    );
    assert!(
        out.contains("⚠ MutatingWebhookConfiguration mesh-sidecar-injector: caBundle is empty"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_api_server_fails_once() {
    let dir = TestDir::new("gone");
    let kubeconfig = dir.0.join("kubeconfig");
    {
        let api = KubeApi::start().await;
        api.write_kubeconfig(&kubeconfig).unwrap();
    }
    let controller = format!("http://{}", mesh_tests::free_addr());
    let (ok, out) = check(
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--controller",
            &controller,
        ],
        &dir.0,
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("✘ cannot reach the API server"), "{out}");
    assert!(
        !out.contains("CRD "),
        "one finding, not one per object:\n{out}"
    );
}

/// Starts the real controller against `api` with its webhook on `webhook`;
/// returns it and its admin address once ready.
async fn controller(api: &KubeApi, dir: &Path, webhook: SocketAddr) -> (Controller, SocketAddr) {
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let (webhook, ca) = (webhook.to_string(), dir.join("ca").display().to_string());
    let extra = ["--webhook-addr", &webhook, "--ca-dir", &ca];
    let controller = Controller::start_kubernetes(&kubeconfig, dir, &extra).await;
    let admin = controller.admin;
    (controller, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn installed_cluster_with_a_running_controller_passes() {
    let api = KubeApi::start().await;
    let dir = TestDir::new("pass");
    let webhook = mesh_tests::free_addr();
    // The webhook configuration points at the controller by URL: "localhost"
    // is one of its serving certificate's names, so the dry-run verifies it
    // exactly as the API server would (caBundle roots, URL host).
    install(&api, |doc| {
        if doc["kind"] == "MutatingWebhookConfiguration" {
            doc["webhooks"][0]["clientConfig"] =
                json!({"url": format!("https://localhost:{}/inject", webhook.port())});
        }
    });
    api.patch_status(
        "apps/v1",
        "Deployment",
        Some("mesh-system"),
        "mesh-controller",
        json!({"status": {"replicas": 2, "readyReplicas": 1, "availableReplicas": 1}}),
    );
    api.create(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"mesh.io/inject": "enabled"}}}));
    let installed = api
        .get(
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
            None,
            "mesh-sidecar-injector",
        )
        .unwrap();
    let (ctl, admin) = controller(&api, &dir.0, webhook).await;

    // caBundle as the controller's trust bundle, where the API server reads
    // it. Set here rather than left to the controller: its start-up patch
    // (`webhook::keep_ca_bundle`) is awaited first, then the configuration is
    // written whole, because the test API server merges strategic-merge lists
    // wholesale instead of by `name` and would drop the clientConfig.
    let get = || {
        api.get(
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
            None,
            "mesh-sidecar-injector",
        )
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while get()["metadata"]["resourceVersion"] == installed["metadata"]["resourceVersion"] {
        assert!(
            Instant::now() < deadline,
            "controller never patched the webhook:\n{}",
            ctl.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, bundle) = mesh_tests::http::get(&format!("http://{admin}/ca/bundle"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let mut config = installed;
    config["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    config["webhooks"][0]["clientConfig"]["caBundle"] =
        json!(base64::engine::general_purpose::STANDARD.encode(bundle));
    api.try_replace(config).unwrap();

    let kubeconfig = dir.0.join("kubeconfig");
    let (ok, out) = check(
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--controller",
            &format!("http://{admin}"),
        ],
        &dir.0,
    )
    .await;
    assert!(
        ok,
        "check failed:\n{out}\ncontroller log:\n{}",
        ctl.proc.log_text()
    );
    for line in [
        "✔ CRD trafficpolicies.mesh.io is installed",
        "✔ CRD authorizationpolicies.mesh.io is installed",
        "✔ Deployment mesh-system/mesh-controller: 1/2 replicas ready",
        "✔ MutatingWebhookConfiguration mesh-sidecar-injector: caBundle holds 1 certificate",
        "✔ 1 meshed namespace: shop",
        &format!(
            "✔ webhook at https://localhost:{}/inject answered a dry-run AdmissionReview: allowed",
            webhook.port()
        ),
        "✔ admin API at",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains('✘'), "{out}");

    // The same cluster with the controller gone: the admin API fails, and the
    // webhook is unreachable from here, which is a warning, not a failure.
    drop(ctl);
    let (ok, out) = check(
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--controller",
            &format!("http://{admin}"),
        ],
        &dir.0,
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("⚠ webhook at https://localhost:")
            && out.contains("is not reachable from here"),
        "{out}"
    );
}
