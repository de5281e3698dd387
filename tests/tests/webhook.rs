//! The injection webhook end to end: the real `mesh-controller` binary with
//! `--registry kubernetes` against the test API server, called over HTTPS the
//! way the API server calls it (the mesh trust bundle as roots, the Service's
//! DNS name as the server name), and the controller keeping the webhook
//! configuration's `caBundle` in the API server equal to that bundle.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mesh_tests::TestDir;
use mesh_tests::kube_api::KubeApi;
use mesh_tests::process::Controller;
use serde_json::{Value, json};

/// The name the API server checks the webhook's certificate for: the
/// configuration's `service` as `<name>.<namespace>.svc` (one of the DNS names
/// of the controller's serving certificate, `identity::serving_credentials`).
const WEBHOOK_HOST: &str = "mesh-controller.mesh-system.svc";

/// The webhook configuration exactly as `deploy/kubernetes/40-webhook.yaml` has it.
fn webhook_configuration() -> Value {
    let yaml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/kubernetes/40-webhook.yaml"),
    )
    .unwrap();
    serde_yaml::from_str(&yaml).unwrap()
}

struct Mesh {
    api: KubeApi,
    controller: Controller,
    admin: SocketAddr,
    webhook: SocketAddr,
    _dir: TestDir,
}

impl Mesh {
    /// The API server with `shop` labelled, `legacy` not, and the webhook
    /// configuration without `caBundle` (as installed); then the controller.
    async fn start(name: &str) -> Mesh {
        let api = KubeApi::start().await;
        api.create(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"mesh.io/inject": "enabled"}}}));
        api.create(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "legacy"}}));
        api.create(webhook_configuration());
        let dir = TestDir::new(name);
        let kubeconfig = dir.0.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        let webhook = mesh_tests::free_addr();
        let controller = Controller::start_kubernetes(
            &kubeconfig,
            &dir.0,
            &[
                "--webhook-addr",
                &webhook.to_string(),
                "--ca-dir",
                &dir.0.join("ca").display().to_string(),
            ],
        )
        .await;
        let admin = controller.admin;
        Mesh {
            api,
            controller,
            admin,
            webhook,
            _dir: dir,
        }
    }

    /// `GET /ca/bundle`: the PEM trust bundle.
    async fn bundle(&self) -> String {
        let (status, pem) = mesh_tests::http::get(&format!("http://{}/ca/bundle", self.admin))
            .await
            .expect("admin reachable");
        assert_eq!(status, 200, "{pem}");
        assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
        pem
    }

    /// A TLS client trusting only `bundle`, as the API server with `caBundle`.
    fn client(bundle: &str) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for der in mesh_identity::tls::anchors_from_pem(bundle).unwrap() {
            roots.add(der.into()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// POSTs `body` to `/inject` over verified HTTPS; the status and body.
    async fn post(&self, client: &Arc<rustls::ClientConfig>, body: Vec<u8>) -> (u16, Vec<u8>) {
        let tcp = tokio::net::TcpStream::connect(self.webhook).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(client.clone())
            .connect(
                rustls::pki_types::ServerName::try_from(WEBHOOK_HOST).unwrap(),
                tcp,
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "TLS handshake verified against /ca/bundle for {WEBHOOK_HOST}: {e}\n{}",
                    self.controller.proc.log_text()
                )
            });
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("/inject?timeout=5s")
            .header("host", format!("{WEBHOOK_HOST}:443"))
            .header("content-type", "application/json")
            .header("accept", "application/json, */*")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (
            status,
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
    }

    /// Sends an AdmissionReview; the response part and the decoded JSONPatch.
    async fn review(
        &self,
        client: &Arc<rustls::ClientConfig>,
        review: &Value,
    ) -> (Value, Option<Vec<Value>>) {
        let (status, body) = self.post(client, serde_json::to_vec(review).unwrap()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], review["request"]["uid"], "{response}");
        let patch = response["patch"].as_str().map(|p| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(p)
                .expect("patch is base64");
            serde_json::from_slice(&bytes).expect("patch is a JSON array")
        });
        (response, patch)
    }
}

/// A Pod CREATE as the API server sends it to a v1 webhook (the object has no
/// name yet when the ReplicaSet controller creates it from `generateName`).
fn admission_review(uid: &str, namespace: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "5bd3bd84-5d15-4a3c-9a3b-0c6f4f3b7a11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {
                    "generateName": "reviews-v1-7d8f9c6b5-",
                    "namespace": namespace,
                    "creationTimestamp": null,
                    "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "7d8f9c6b5"},
                    "annotations": annotations,
                    "ownerReferences": [{
                        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7d8f9c6b5",
                        "uid": "0f0b3c2e-6f7a-4a51-9a0e-3b1f2c4d5e6f", "controller": true, "blockOwnerDeletion": true
                    }],
                    "managedFields": []
                },
                "spec": {
                    "volumes": [{
                        "name": "kube-api-access-x7k2p",
                        "projected": {"sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
                        ], "defaultMode": 420}
                    }],
                    "containers": [{
                        "name": "reviews",
                        "image": "docker.io/example/reviews:1.0",
                        "ports": [{"name": "http", "containerPort": 9080, "protocol": "TCP"}],
                        "resources": {},
                        "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                                          "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent"
                    }],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "serviceAccountName": "reviews",
                    "serviceAccount": "reviews",
                    "securityContext": {},
                    "schedulerName": "default-scheduler",
                    "tolerations": [],
                    "priority": 0,
                    "enableServiceLinks": true,
                    "preemptionPolicy": "PreemptLowerPriority"
                },
                "status": {}
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// Applies a JSONPatch made of `add` operations (all the webhook emits), as the
/// API server does before storing the pod.
fn apply_adds(doc: &mut Value, ops: &[Value]) {
    for op in ops {
        assert_eq!(op["op"], "add", "unexpected op {op}");
        let path = op["path"].as_str().unwrap();
        let mut toks: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let last = toks.pop().unwrap();
        let mut parent = &mut *doc;
        for t in &toks {
            parent = match parent {
                Value::Array(a) => &mut a[t.parse::<usize>().unwrap()],
                other => other.get_mut(t).unwrap_or_else(|| panic!("{path}: no {t}")),
            };
        }
        let value = op["value"].clone();
        match parent {
            Value::Array(a) if last == "-" => a.push(value),
            Value::Array(a) => a.insert(last.parse().unwrap(), value),
            Value::Object(o) => {
                o.insert(last, value);
            }
            other => panic!("{path}: cannot add into {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_injects_over_verified_https_and_keeps_the_ca_bundle() {
    let mesh = Mesh::start("inject").await;
    let bundle = mesh.bundle().await;
    let client = Mesh::client(&bundle);

    // The controller fills the installed configuration's caBundle with the
    // trust bundle, so the API server can verify the webhook.
    let want = base64::engine::general_purpose::STANDARD.encode(&bundle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let config = mesh
            .api
            .get(
                "admissionregistration.k8s.io/v1",
                "MutatingWebhookConfiguration",
                None,
                "mesh-sidecar-injector",
            )
            .expect("the configuration is still there");
        // Where the API server reads it: `webhooks[].clientConfig.caBundle`.
        let ca = config["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap_or("");
        if ca == want {
            // The patch names the webhook (strategic merge by `name` in a real
            // API server; the test server merges lists wholesale, so the other
            // fields are not compared here).
            assert_eq!(config["webhooks"][0]["name"], "inject.mesh.io");
            assert_eq!(config["webhooks"].as_array().unwrap().len(), 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhooks[0].clientConfig.caBundle not set to the trust bundle (configuration now {config}):\n{}",
            mesh.controller.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A pod in the labelled namespace gets both containers.
    let review = admission_review("8f6c0f0e-0001-4a7e-9d7e-1c9a2b3c4d5e", "shop", json!({}));
    let (response, patch) = mesh.review(&client, &review).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let patch = patch.expect("a patch for a pod in a meshed namespace");
    let mut pod = review["request"]["object"].clone();
    apply_adds(&mut pod, &patch);
    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .expect("initContainers added")
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["mesh-init", "mesh-proxy"], "{pod:#}");
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(
        proxy["restartPolicy"], "Always",
        "native sidecar: {proxy:#}"
    );
    let capabilities = &pod["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"];
    assert!(
        capabilities
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "NET_ADMIN")),
        "{capabilities}"
    );
    // The app container is untouched.
    assert_eq!(
        pod["spec"]["containers"],
        review["request"]["object"]["spec"]["containers"]
    );
    // The patched pod is a valid Pod.
    let typed: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(pod.clone()).expect("patched pod deserializes as a Pod");
    assert_eq!(typed.spec.unwrap().init_containers.unwrap().len(), 2);

    // Injecting the injected pod (reinvocation) changes nothing.
    let mut again = review.clone();
    again["request"]["uid"] = json!("8f6c0f0e-0002-4a7e-9d7e-1c9a2b3c4d5e");
    again["request"]["object"] = pod;
    let (response, patch) = mesh.review(&client, &again).await;
    assert_eq!(response["allowed"], true);
    assert!(
        patch.as_ref().is_none_or(Vec::is_empty),
        "second injection must be a no-op: {response}"
    );

    // Opted out by annotation: admitted without a patch.
    let disabled = admission_review(
        "8f6c0f0e-0003-4a7e-9d7e-1c9a2b3c4d5e",
        "shop",
        json!({"mesh.io/inject": "disabled"}),
    );
    let (response, patch) = mesh.review(&client, &disabled).await;
    assert_eq!(response["allowed"], true);
    assert!(patch.is_none(), "disabled pod was patched: {response}");
    assert!(response.get("patchType").is_none(), "{response}");

    // An unlabelled namespace the registry knows: no patch, once the registry
    // has seen it (the webhook trusts the selector for unknown namespaces).
    let legacy = admission_review("8f6c0f0e-0004-4a7e-9d7e-1c9a2b3c4d5e", "legacy", json!({}));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (response, patch) = mesh.review(&client, &legacy).await;
        assert_eq!(response["allowed"], true);
        if patch.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a pod in the unlabelled namespace still gets a patch:\n{}",
            mesh.controller.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Not JSON at all: HTTP 400 (the only refusal; failurePolicy Ignore admits).
    let (status, body) = mesh.post(&client, b"{this is not json".to_vec()).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    // The certificate does not verify for any other name: the API server's
    // check is real.
    let tcp = tokio::net::TcpStream::connect(mesh.webhook).await.unwrap();
    let wrong = tokio_rustls::TlsConnector::from(client.clone())
        .connect(
            rustls::pki_types::ServerName::try_from("evil.example.com").unwrap(),
            tcp,
        )
        .await;
    assert!(wrong.is_err(), "certificate accepted for a foreign name");
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_trusts_nothing_else() {
    let mesh = Mesh::start("foreign").await;
    // A different CA's bundle (another controller's) does not verify the webhook.
    let other = Mesh::start("other").await;
    let foreign = Mesh::client(&other.bundle().await);
    let tcp = tokio::net::TcpStream::connect(mesh.webhook).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(foreign)
        .connect(
            rustls::pki_types::ServerName::try_from(WEBHOOK_HOST).unwrap(),
            tcp,
        )
        .await;
    assert!(r.is_err(), "webhook verified against a foreign CA");
}
