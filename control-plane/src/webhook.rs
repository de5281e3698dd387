//! The sidecar-injection admission webhook (HTTPS, port 15017), and the two
//! things a cluster needs from the controller for it to work: the webhook
//! configuration's `caBundle` and the `mesh-trust-anchors` ConfigMaps.
//!
//! The rule that shapes everything here: **a mesh outage must never block pod
//! creation**. The webhook configuration says `failurePolicy: Ignore`, and the
//! webhook itself answers every well-formed request with `allowed: true`: a pod
//! it cannot understand is admitted unchanged with a warning, never refused.
//! Only a body that is not JSON at all gets HTTP 400 (the API server never sends
//! one; with `Ignore` even that admits the pod).
//!
//! The namespace's `mesh.io/inject=enabled` label is not in the AdmissionReview:
//! the webhook configuration's `namespaceSelector` guarantees it, so the webhook
//! trusts it unless a [`NamespaceLookup`] (the registry's view) says otherwise.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::inject::{self, InjectSettings, Outcome};
use crate::registry::RegistryState;

/// The name of the MutatingWebhookConfiguration in `deploy/kubernetes/`.
pub const WEBHOOK_CONFIGURATION: &str = "mesh-sidecar-injector";
/// The webhook's path on the controller's 15017 port.
pub const INJECT_PATH: &str = "/inject";
/// The biggest AdmissionReview accepted (the API server caps objects at ~3 MiB).
const MAX_BODY: usize = 8 << 20;
/// How long the API server's client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a namespace is meshed, as far as the controller's registry knows:
/// `Some(true|false)`, or `None` when it does not know (then the webhook trusts
/// the configuration's `namespaceSelector`). Lets the webhook refuse to inject
/// into a namespace the registry knows is unlabelled, e.g. when the webhook
/// configuration was edited by hand.
pub type NamespaceLookup = Arc<dyn Fn(&str) -> Option<bool> + Send + Sync>;

/// Where the webhook's TLS configuration comes from: fixed, or kept fresh by
/// [`crate::identity::serving::start`] (re-issued before expiry and on root
/// changes). Either way the webhook derives its own configuration from it: the
/// same certificate, no client certificates (the API server sends none), and
/// ALPN for both HTTP/2 and HTTP/1.1.
pub enum TlsSource {
    /// One configuration for the process's lifetime.
    Fixed(Arc<ServerConfig>),
    /// The current configuration, replaced when the certificate is re-issued.
    Watched(watch::Receiver<Arc<ServerConfig>>),
}

impl From<Arc<ServerConfig>> for TlsSource {
    fn from(c: Arc<ServerConfig>) -> Self {
        TlsSource::Fixed(c)
    }
}

impl From<watch::Receiver<Arc<ServerConfig>>> for TlsSource {
    fn from(c: watch::Receiver<Arc<ServerConfig>>) -> Self {
        TlsSource::Watched(c)
    }
}

impl TlsSource {
    fn current(&self) -> Arc<ServerConfig> {
        match self {
            TlsSource::Fixed(c) => c.clone(),
            TlsSource::Watched(rx) => rx.borrow().clone(),
        }
    }
}

/// The webhook's TLS configuration: `base`'s certificate (its resolver follows
/// re-issues), TLS 1.2 and 1.3 (older API servers), no client authentication,
/// ALPN h2 and http/1.1.
pub fn webhook_tls(base: &ServerConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(base.cert_resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves AdmissionReviews on `listener` (HTTPS) until the task is dropped.
///
/// `namespaces`, when given, is consulted for each request's namespace (see
/// [`NamespaceLookup`]). Accept errors are logged and retried; a failed
/// handshake or connection affects only itself.
pub async fn serve(
    listener: TcpListener,
    tls: impl Into<TlsSource>,
    settings: InjectSettings,
    namespaces: Option<NamespaceLookup>,
) {
    let source = tls.into();
    let settings = Arc::new(settings);
    let mut base = source.current();
    let mut derived = match webhook_tls(&base) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook's TLS configuration; injection is off");
            return;
        }
    };
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let now = source.current();
        if !Arc::ptr_eq(&now, &base) {
            match webhook_tls(&now) {
                Ok(c) => {
                    derived = c;
                    base = now;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot rebuild the webhook's TLS configuration; keeping the previous one")
                }
            }
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(derived.clone());
        let settings = settings.clone();
        let namespaces = namespaces.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake on the webhook port failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake on the webhook port timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let settings = settings.clone();
                let namespaces = namespaces.clone();
                async move { Ok::<_, Infallible>(handle(req, &settings, namespaces.as_ref()).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts")
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    settings: &InjectSettings,
    namespaces: Option<&NamespaceLookup>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") => respond(StatusCode::OK, "text/plain", "ready\n"),
        (&Method::POST, INJECT_PATH) => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read an AdmissionReview");
                    return respond(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("cannot read body: {e}\n"),
                    );
                }
            };
            match review(&body, settings, namespaces) {
                Ok(answer) => respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec(&answer).expect("JSON values serialize"),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "webhook request is not JSON");
                    respond(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"))
                }
            }
        }
        (_, path) => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such endpoint {path}: POST AdmissionReviews to {INJECT_PATH}\n"),
        ),
    }
}

/// A webhook request body that is not JSON (the only request refused with 400).
#[derive(Debug, thiserror::Error)]
#[error("the body is not JSON (expected an admission.k8s.io/v1 AdmissionReview): {0}")]
pub struct NotJson(#[from] serde_json::Error);

/// Answers one AdmissionReview (the body the API server POSTs) with an
/// AdmissionReview carrying the response: always `allowed: true`, with a
/// base64 JSONPatch when the pod gains the sidecar, and a warning when the
/// request could not be understood. Pure apart from logging.
pub fn review(
    body: &[u8],
    settings: &InjectSettings,
    namespaces: Option<&NamespaceLookup>,
) -> Result<Value, NotJson> {
    let input: Value = serde_json::from_slice(body)?;
    let api_version = input
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("admission.k8s.io/v1");
    let request = input.get("request");
    let uid = request
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut response = json!({"uid": uid, "allowed": true});
    let answer = |response: Value| {
        json!({
            "apiVersion": api_version,
            "kind": "AdmissionReview",
            "response": response,
        })
    };
    let warn = |mut response: Value, message: String| {
        tracing::warn!(uid, "{message}; admitting the pod unchanged");
        response["warnings"] = json!([format!("mesh sidecar injection skipped: {message}")]);
        response
    };
    let Some(request) = request.filter(|r| r.is_object()) else {
        return Ok(answer(warn(
            response,
            "not an AdmissionReview: no request".into(),
        )));
    };
    if uid.is_empty() {
        response = warn(response, "AdmissionReview request without uid".into());
        return Ok(answer(response));
    }
    let kind = request.pointer("/kind/kind").and_then(Value::as_str);
    let group = request
        .pointer("/kind/group")
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind != Some("Pod") || !group.is_empty() {
        return Ok(answer(warn(
            response,
            format!(
                "expected a core/v1 Pod, got {group}/{}",
                kind.unwrap_or("?")
            ),
        )));
    }
    let operation = request
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or("CREATE");
    if operation != "CREATE" {
        // A running pod's containers cannot change: nothing to inject.
        return Ok(answer(response));
    }
    let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
        return Ok(answer(warn(
            response,
            "the request has no Pod object".into(),
        )));
    };
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or("default");
    let name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let meshed = namespaces.and_then(|l| l(namespace)).unwrap_or(true);
    match inject::inject_pod(pod, meshed, settings) {
        Ok(Outcome::Injected { patch, .. }) => {
            tracing::info!(namespace, pod = name, "injected the mesh sidecar");
            let bytes = serde_json::to_vec(&patch).expect("JSON values serialize");
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        Ok(Outcome::Skipped(reason)) => {
            tracing::debug!(namespace, pod = name, %reason, "not injecting");
        }
        Err(e) => {
            response = warn(response, format!("pod {namespace}/{name}: {e}"));
        }
    }
    Ok(answer(response))
}

/// The strategic-merge patch that sets `caBundle` (base64 of the PEM trust
/// bundle) on the configuration's webhooks (merged by `name`).
pub fn ca_bundle_patch(webhook_names: &[&str], bundle_pem: &str) -> Value {
    let ca = base64::engine::general_purpose::STANDARD.encode(bundle_pem);
    json!({
        "webhooks": webhook_names
            .iter()
            // The API server reads webhooks[].clientConfig.caBundle; the list merges
            // by `name` in a strategic merge patch.
            .map(|n| json!({"name": n, "clientConfig": {"caBundle": ca}}))
            .collect::<Vec<_>>(),
    })
}

/// The webhook in [`WEBHOOK_CONFIGURATION`].
pub const WEBHOOK_NAME: &str = "inject.mesh.io";

/// Keeps the webhook configuration's `caBundle` equal to the mesh trust bundle:
/// patched at start and on every bundle change (a root rotation adds the new
/// root before the serving certificate uses it, so the API server always trusts
/// the webhook). Failures are retried every 10 s; until the first success the
/// API server cannot verify the webhook, and `failurePolicy: Ignore` admits pods
/// without the sidecar. Needs RBAC `get, patch` on this one configuration.
pub async fn keep_ca_bundle(client: kube::Client, mut bundle: watch::Receiver<Arc<str>>) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use kube::api::{Api, Patch, PatchParams};
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let params = PatchParams::default();
    loop {
        let pem = bundle.borrow_and_update().clone();
        let patch = ca_bundle_patch(&[WEBHOOK_NAME], &pem);
        match api
            .patch(WEBHOOK_CONFIGURATION, &params, &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    configuration = WEBHOOK_CONFIGURATION,
                    "webhook caBundle set to the mesh trust bundle"
                );
                if bundle.changed().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, configuration = WEBHOOK_CONFIGURATION, "cannot set the webhook caBundle; retrying in 10s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    changed = bundle.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}

/// Creates or updates the `mesh-trust-anchors` ConfigMap (key `ca.pem`) in one
/// namespace; injected sidecars mount it to verify the controller. Uses only
/// `get`, `create` and `update` (RBAC scopes get/update to this name).
pub async fn publish_trust_anchors(
    client: &kube::Client,
    namespace: &str,
    bundle_pem: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, ObjectMeta, PostParams};
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = inject::TRUST_VOLUME;
    let data = std::collections::BTreeMap::from([("ca.pem".to_string(), bundle_pem.to_string())]);
    match api.get_opt(name).await? {
        Some(existing) if existing.data.as_ref() == Some(&data) => Ok(()),
        Some(mut existing) => {
            existing.data = Some(data);
            api.replace(name, &PostParams::default(), &existing).await?;
            tracing::info!(namespace, "updated the mesh trust anchors ConfigMap");
            Ok(())
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(namespace.into()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_string(),
                            "mesh-controller".to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await?;
            tracing::info!(namespace, "created the mesh trust anchors ConfigMap");
            Ok(())
        }
    }
}

/// The meshed namespaces of a registry state, by name.
pub fn meshed_namespaces(state: &RegistryState) -> BTreeSet<String> {
    state
        .model
        .namespaces()
        .filter(|n| state.model.is_meshed(&n.name))
        .map(|n| n.name.clone())
        .collect()
}

/// A [`NamespaceLookup`] backed by the registry: `Some(meshed)` for a namespace
/// the registry knows, `None` for one it has not seen yet (a namespace created a
/// moment ago), where the webhook configuration's selector is trusted.
pub fn registry_lookup(registry: watch::Receiver<RegistryState>) -> NamespaceLookup {
    Arc::new(move |ns: &str| {
        let state = registry.borrow();
        state
            .model
            .namespaces()
            .any(|n| n.name == ns)
            .then(|| state.model.is_meshed(ns))
    })
}

/// Keeps [`publish_trust_anchors`] true for every meshed namespace: whenever
/// the set of meshed namespaces (from the registry) or the trust bundle
/// changes, every meshed namespace is brought up to date; failures are retried
/// every 10 s. Namespaces that leave the mesh keep their ConfigMap (harmless,
/// and pods still running there need it).
pub async fn keep_trust_anchors(
    client: kube::Client,
    mut registry: watch::Receiver<RegistryState>,
    mut bundle: watch::Receiver<Arc<str>>,
) {
    let mut done: (BTreeSet<String>, Arc<str>) = (BTreeSet::new(), Arc::from(""));
    loop {
        let set = meshed_namespaces(&registry.borrow_and_update());
        let pem = bundle.borrow_and_update().clone();
        let mut failed = false;
        if set != done.0 || pem != done.1 {
            for ns in &set {
                if let Err(e) = publish_trust_anchors(&client, ns, &pem).await {
                    tracing::warn!(namespace = %ns, error = %e, "cannot publish the mesh trust anchors");
                    failed = true;
                }
            }
            if !failed {
                done = (set, pem);
            }
        }
        let retry = async {
            if failed {
                tokio::time::sleep(Duration::from_secs(10)).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = retry => {}
            r = registry.changed() => if r.is_err() { return },
            r = bundle.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(pod: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "shop",
                "object": pod,
            }
        }))
        .unwrap()
    }

    #[test]
    fn answers_always_allow() {
        let s = InjectSettings::default();
        let pod = json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c"}]}});
        let out = review(&review_of(pod.clone()), &s, None).unwrap();
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let lookup: NamespaceLookup = Arc::new(|_| Some(false));
        let out = review(&review_of(pod), &s, Some(&lookup)).unwrap();
        assert!(out["response"].get("patch").is_none());
        let out = review(
            br#"{"request": {"uid": "x", "kind": {"kind": "Service"}}}"#,
            &s,
            None,
        )
        .unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(
            out["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains("Service")
        );
        let out = review(br#"[1, 2]"#, &s, None).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(review(b"not json", &s, None).is_err());
    }

    #[test]
    fn registry_decides_known_namespaces_only() {
        let objects = mesh_model::parse_documents(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {mesh.io/inject: enabled}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: ops}\n",
            "test.yaml",
        )
        .unwrap();
        let model = mesh_model::Model::new(objects, mesh_model::ModelOptions::default());
        let state = RegistryState::new("test".into(), Arc::new(model));
        assert_eq!(
            meshed_namespaces(&state).into_iter().collect::<Vec<_>>(),
            ["shop"]
        );
        let (_tx, rx) = watch::channel(state);
        let lookup = registry_lookup(rx);
        assert_eq!(lookup("shop"), Some(true));
        assert_eq!(lookup("ops"), Some(false));
        assert_eq!(lookup("new"), None);
    }

    #[test]
    fn ca_bundle_patch_shape() {
        let p = ca_bundle_patch(&[WEBHOOK_NAME], "PEM");
        assert_eq!(p["webhooks"][0]["name"], WEBHOOK_NAME);
        assert_eq!(p["webhooks"][0]["clientConfig"]["caBundle"], "UEVN");
    }
}
