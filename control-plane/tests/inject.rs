//! Sidecar injection end to end: a real AdmissionReview (as the API server sends
//! it) over HTTPS to the webhook, the JSONPatch applied with an independent RFC
//! 6902 applier, and the result checked strictly against the Pod schema
//! (`k8s_openapi` types, unknown fields fail).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use mesh_controller::inject::{
    InjectSettings, ObjectOutcome, Outcome, Skip, inject_object, inject_pod,
};
use mesh_controller::webhook::{self, NamespaceLookup};
use mesh_identity::tls::{ALPN_H2, ClientAuth};
use mesh_identity::{CertificateAuthority, Identity};
use mesh_tests::strict::strict;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

const REVIEW: &str = include_str!("inject_fixtures/admission-review-pod.json");
const DEPLOYMENT: &str = include_str!("inject_fixtures/deployment.json");
const WEBHOOK_HOST: &str = "mesh-controller.mesh-system.svc";

// ---------------------------------------------------------------------------
// Helpers: strict schema check and an RFC 6902 applier, independent of the code
// under test.

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Applies RFC 6902 `add`, `remove` and `replace` operations (all injection uses).
fn apply_patch(doc: &mut Value, ops: &[Value]) {
    for op in ops {
        let path = op["path"].as_str().expect("path");
        let kind = op["op"].as_str().expect("op");
        if path.is_empty() {
            assert_eq!(kind, "add", "only add on the root");
            *doc = op["value"].clone();
            continue;
        }
        assert!(path.starts_with('/'), "path {path:?} must start with /");
        let (parent, last) = path.rsplit_once('/').unwrap();
        let last = unescape(last);
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("{kind} {path}: parent {parent:?} does not exist"));
        match (kind, target) {
            ("add", Value::Object(m)) => {
                m.insert(last, op["value"].clone());
            }
            ("add", Value::Array(a)) => {
                if last == "-" {
                    a.push(op["value"].clone());
                } else {
                    let i: usize = last.parse().expect("array index");
                    assert!(i <= a.len(), "add {path}: index out of range");
                    a.insert(i, op["value"].clone());
                }
            }
            ("remove", Value::Object(m)) => {
                m.remove(&last).expect("remove: member exists");
            }
            ("replace", Value::Object(m)) => {
                assert!(m.contains_key(&last), "replace {path}: no such member");
                m.insert(last, op["value"].clone());
            }
            (k, t) => panic!("unsupported {k} on {t}"),
        }
    }
}

fn review() -> Value {
    serde_json::from_str(REVIEW).unwrap()
}

fn pod_of(review: &Value) -> Value {
    review["request"]["object"].clone()
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// A webhook served over real HTTPS, with a serving certificate from the mesh CA.

struct Webhook {
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_webhook(namespaces: Option<NamespaceLookup>) -> Webhook {
    let ca = CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let (issued, key) = ca
        .issue_server(
            &Identity::new("cluster.local", "mesh-system", "mesh-controller"),
            &[WEBHOOK_HOST],
            Duration::from_secs(600),
        )
        .unwrap();
    let creds = mesh_identity::tls::Credentials::new(
        issued.chain_der,
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
    )
    .unwrap();
    // The same configuration the secure xDS port uses: the webhook derives its own.
    let server = mesh_identity::tls::server_config(
        &creds,
        &ca.trust_anchors(),
        ClientAuth::Optional,
        &[ALPN_H2],
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(webhook::serve(
        listener,
        server,
        InjectSettings::default(),
        namespaces,
    ));
    // The API server verifies the webhook like this: the caBundle as roots, the
    // Service's DNS name.
    let mut roots = rustls::RootCertStore::empty();
    for der in ca.trust_anchors() {
        roots.add(der.into()).unwrap();
    }
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Webhook {
        addr,
        client: Arc::new(client),
        task,
    }
}

impl Webhook {
    async fn post(&self, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.client.clone())
            .connect(ServerName::try_from(WEBHOOK_HOST).unwrap(), tcp)
            .await
            .expect("TLS handshake with the webhook (verified against the mesh CA)");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(format!("https://{WEBHOOK_HOST}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body.to_vec())
    }

    /// Sends an AdmissionReview; returns the response part and the decoded patch.
    async fn review(&self, review: &Value) -> (Value, Option<Vec<Value>>) {
        let (status, body) = self
            .post("/inject", serde_json::to_vec(review).unwrap())
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], review["request"]["uid"]);
        assert_eq!(response["allowed"], true, "the webhook never blocks a pod");
        let patch = response.get("patch").map(|p| {
            assert_eq!(response["patchType"], "JSONPatch");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p.as_str().unwrap())
                .unwrap();
            serde_json::from_slice(&raw).unwrap()
        });
        (response, patch)
    }
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn webhook_patch_yields_a_valid_pod_with_both_containers() {
    let hook = start_webhook(None).await;
    let review = review();
    let original = pod_of(&review);
    strict::<Pod>(&original, "pod");

    let (_, patch) = hook.review(&review).await;
    let patch = patch.expect("a pod in a labelled namespace gets a patch");
    let mut patched = original.clone();
    apply_patch(&mut patched, &patch);

    let pod: Pod = strict(&patched, "patched pod");
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init[0].name, "mesh-init");
    assert_eq!(init[1].name, "mesh-proxy");
    assert_eq!(
        init[1].restart_policy.as_deref(),
        Some("Always"),
        "native sidecar"
    );
    assert_eq!(spec.containers[0].name, "web", "the app is untouched");
    assert_eq!(spec.containers.len(), 1);

    let init_sc = init[0].security_context.as_ref().unwrap();
    let caps = init_sc.capabilities.as_ref().unwrap().add.clone().unwrap();
    assert!(caps.contains(&"NET_ADMIN".into()) && caps.contains(&"NET_RAW".into()));
    assert_eq!(init_sc.run_as_user, Some(0));
    let args = init[0].args.clone().unwrap().join(" ");
    assert_eq!(
        args,
        "--outbound-port 15001 --inbound-port 15006 --proxy-uid 1337 --exclude-inbound-ports 15000"
    );

    let proxy = &init[1];
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(1337));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop,
        Some(vec!["ALL".into()])
    );
    let startup = proxy
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.path.as_deref(), Some("/ready"));
    let ready = proxy
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/ready"));
    let res = proxy.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "10m");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "64Mi");
    let env: std::collections::BTreeMap<_, _> = proxy
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    assert_eq!(
        env["MESH_XDS_ADDR"].value.as_deref(),
        Some("https://mesh-controller.mesh-system.svc:15012")
    );
    assert_eq!(
        env["MESH_WORKLOAD"]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.name"
    );
    assert_eq!(
        env["MESH_TOKEN_FILE"].value.as_deref(),
        Some("/var/run/secrets/mesh/token")
    );
    assert_eq!(
        env["MESH_TRUST_ANCHORS"].value.as_deref(),
        Some("/var/run/mesh/trust/ca.pem")
    );

    let volumes = spec.volumes.as_ref().unwrap();
    assert_eq!(volumes.len(), 3, "the pod's own volume is kept");
    let token = volumes.iter().find(|v| v.name == "mesh-token").unwrap();
    let sat = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(sat.audience.as_deref(), Some("mesh"));
    assert_eq!(sat.expiration_seconds, Some(3600));
    let anchors = volumes
        .iter()
        .find(|v| v.name == "mesh-trust-anchors")
        .unwrap();
    assert_eq!(
        anchors.config_map.as_ref().unwrap().name,
        "mesh-trust-anchors"
    );
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()["mesh.io/injected"],
        "true"
    );

    // The patch and the direct mutation (what `meshctl inject` prints) agree.
    let Outcome::Injected { pod: direct, .. } =
        inject_pod(&original, true, &InjectSettings::default()).unwrap()
    else {
        panic!("not injected")
    };
    assert_eq!(direct, patched);
}

#[tokio::test]
async fn second_injection_is_a_no_op() {
    let hook = start_webhook(None).await;
    let mut review = review();
    let (_, patch) = hook.review(&review).await;
    let mut patched = pod_of(&review);
    apply_patch(&mut patched, &patch.unwrap());
    review["request"]["object"] = patched.clone();
    let (response, patch) = hook.review(&review).await;
    assert!(patch.is_none(), "{response:#}");
    assert!(response.get("warnings").is_none());
    assert_eq!(
        inject_pod(&patched, true, &InjectSettings::default()).unwrap(),
        Outcome::Skipped(Skip::AlreadyInjected)
    );
    // Containers alone (annotation stripped) are recognised too.
    patched["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("mesh.io/injected");
    assert_eq!(
        inject_pod(&patched, true, &InjectSettings::default()).unwrap(),
        Outcome::Skipped(Skip::AlreadyInjected)
    );
}

#[tokio::test]
async fn disabled_pod_and_unlabelled_namespace_are_untouched() {
    let lookup: NamespaceLookup = Arc::new(|ns: &str| Some(ns == "shop"));
    let hook = start_webhook(Some(lookup)).await;

    let mut disabled = review();
    disabled["request"]["object"]["metadata"]["annotations"] =
        json!({"mesh.io/inject": "disabled"});
    let (response, patch) = hook.review(&disabled).await;
    assert!(patch.is_none(), "{response:#}");

    let mut elsewhere = review();
    elsewhere["request"]["namespace"] = json!("billing");
    elsewhere["request"]["object"]["metadata"]["namespace"] = json!("billing");
    let (response, patch) = hook.review(&elsewhere).await;
    assert!(patch.is_none(), "{response:#}");

    // The pure decision, as `meshctl inject` and the webhook use it.
    assert_eq!(
        inject_pod(&pod_of(&review()), false, &InjectSettings::default()).unwrap(),
        Outcome::Skipped(Skip::NamespaceNotMeshed)
    );
    assert_eq!(
        inject_pod(&pod_of(&disabled), true, &InjectSettings::default()).unwrap(),
        Outcome::Skipped(Skip::OptedOut)
    );
}

#[tokio::test]
async fn malformed_requests_never_block_pods() {
    let hook = start_webhook(None).await;
    let (status, _) = hook.post("/inject", b"<html>".to_vec()).await;
    assert_eq!(status, 400, "only non-JSON is refused");

    // A Pod whose spec is broken: admitted unchanged, with a warning.
    let mut broken = review();
    broken["request"]["object"]["spec"]["volumes"] = json!("not a list");
    let (response, patch) = hook.review(&broken).await;
    assert!(patch.is_none());
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("spec.volumes"),
        "{response:#}"
    );

    // Not a Pod at all.
    let mut service = review();
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    let (response, patch) = hook.review(&service).await;
    assert!(patch.is_none());
    assert!(response["warnings"].is_array());

    let (status, body) = hook.post("/inject", b"{}".to_vec()).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
}

#[test]
fn patch_inserts_before_existing_init_containers_and_escapes_keys() {
    let deployment: Value = serde_json::from_str(DEPLOYMENT).unwrap();
    let original = deployment["spec"]["template"].clone();
    let Outcome::Injected { pod, patch } =
        inject_pod(&original, true, &InjectSettings::default()).unwrap()
    else {
        panic!("not injected")
    };
    // Existing annotations: one op adds the key, with `/` escaped as `~1`.
    assert!(
        patch
            .iter()
            .any(|op| op["path"] == "/metadata/annotations/mesh.io~1injected"),
        "{patch:#?}"
    );
    assert!(
        patch
            .iter()
            .any(|op| op["path"] == "/spec/initContainers/0"),
        "{patch:#?}"
    );
    let mut patched = original.clone();
    apply_patch(&mut patched, &patch);
    assert_eq!(patched, pod);
    assert_eq!(
        names(&pod, "initContainers"),
        ["mesh-init", "mesh-proxy", "migrate"]
    );
    assert_eq!(
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"], "2025-05-01T10:20:00Z",
        "existing annotations are kept"
    );
}

#[test]
fn deployment_template_is_injected_and_stays_valid() {
    let original: Value = serde_json::from_str(DEPLOYMENT).unwrap();
    strict::<Deployment>(&original, "deployment");
    let mut object = original.clone();
    assert_eq!(
        inject_object(&mut object, &InjectSettings::default()).unwrap(),
        ObjectOutcome::Injected
    );
    let d: Deployment = strict(&object, "injected deployment");
    let template = d.spec.unwrap().template;
    let init = template.spec.unwrap().init_containers.unwrap();
    assert_eq!(init.len(), 3);
    assert_eq!(init[1].name, "mesh-proxy");
    assert_eq!(
        object["status"], original["status"],
        "other fields untouched"
    );
    let again = object.clone();
    assert_eq!(
        inject_object(&mut object, &InjectSettings::default()).unwrap(),
        ObjectOutcome::Skipped(Skip::AlreadyInjected)
    );
    assert_eq!(object, again);

    let mut service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}});
    let before = service.clone();
    assert_eq!(
        inject_object(&mut service, &InjectSettings::default()).unwrap(),
        ObjectOutcome::NotAPod
    );
    assert_eq!(service, before);
}

#[test]
fn pod_without_init_containers_volumes_or_annotations() {
    let bare = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bare", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    });
    let Outcome::Injected { pod, patch } =
        inject_pod(&bare, true, &InjectSettings::default()).unwrap()
    else {
        panic!("not injected")
    };
    let paths: Vec<_> = patch
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/metadata/annotations",
            "/spec/initContainers",
            "/spec/volumes"
        ]
    );
    let mut patched = bare.clone();
    apply_patch(&mut patched, &patch);
    assert_eq!(patched, pod);
    strict::<Pod>(&patched, "pod");
}

#[test]
#[should_panic(expected = "fields not in the schema")]
fn the_strict_check_catches_unknown_fields() {
    strict::<Pod>(
        &json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "restartPolicyy": "Always"}]},
        }),
        "pod",
    );
}
