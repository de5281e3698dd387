//! The `Cluster` group of `meshctl check`: what the API server says about the
//! mesh's installation. The admin-API checks can only say "the controller I
//! was pointed at answers"; a cluster can still be missing its CRDs, have no
//! ready controller replica, or carry a webhook configuration the API server
//! cannot use (no `caBundle`), and then pods silently start without sidecars
//! (`failurePolicy: Ignore`). These checks find that from the operator's seat.
//!
//! As in [`crate::check`], gathering (kube-rs reads, one HTTPS dry-run POST to
//! the webhook) is separate from judging: the `evaluate_*` functions are pure
//! over the fetched objects.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use mesh_controller::inject::{NAMESPACE_LABEL, NAMESPACE_LABEL_ENABLED};
use mesh_controller::webhook::{WEBHOOK_CONFIGURATION, WEBHOOK_NAME};
use serde_json::{Value, json};

use crate::check::{Finding, Group};
use crate::cli::CheckArgs;

/// The mesh's CustomResourceDefinitions (`deploy/kubernetes/10-crds.yaml`).
pub const CRDS: [&str; 2] = ["trafficpolicies.mesh.io", "authorizationpolicies.mesh.io"];
/// The control plane's namespace.
pub const CONTROL_NAMESPACE: &str = "mesh-system";
/// The controller's Deployment (and Service) in [`CONTROL_NAMESPACE`].
pub const CONTROLLER_DEPLOYMENT: &str = "mesh-controller";
/// What to run when something `meshctl install` creates is missing.
pub const INSTALL_HINT: &str = "install the mesh: meshctl install | kubectl apply -f -";
/// Where to look when the controller is not ready.
pub const LOGS_HINT: &str = "see why: kubectl -n mesh-system logs deploy/mesh-controller (and kubectl -n mesh-system describe deploy/mesh-controller)";

/// How long any one API request or the webhook dry-run may take: `check` must
/// answer promptly even against a black-holed API server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API server said about one object: found, absent (404), or why it
/// could not be read.
pub type Lookup<T> = Result<Option<T>, String>;

/// Whether the cluster checks should run: a kubeconfig was given (`--kubeconfig`,
/// or `--context` naming one in the default file), `$KUBECONFIG` is set, or
/// `~/.kube/config` exists. Without any, `check` stays the local-mesh check it
/// was, rather than failing on a cluster nobody asked about.
pub fn cluster_configured(
    flag: Option<&Path>,
    context: Option<&str>,
    kubeconfig_env: Option<&OsStr>,
    home_config_exists: bool,
) -> bool {
    flag.is_some()
        || context.is_some()
        || kubeconfig_env.is_some_and(|v| !v.is_empty())
        || home_config_exists
}

/// Everything read from the API server, for [`evaluate_cluster`].
#[derive(Debug, Clone)]
pub struct ClusterFacts {
    /// Each of [`CRDS`] by name.
    pub crds: Vec<(String, Lookup<CustomResourceDefinition>)>,
    /// `mesh-system/mesh-controller`.
    pub deployment: Lookup<Deployment>,
    /// [`WEBHOOK_CONFIGURATION`].
    pub webhook: Lookup<MutatingWebhookConfiguration>,
    /// Names of the namespaces labelled `mesh.io/inject=enabled`.
    pub meshed_namespaces: Result<Vec<String>, String>,
}

fn unreadable(what: &str, error: &str) -> Finding {
    Finding::warn(
        format!("cannot read {what}: {error}"),
        "check that your kubeconfig user may get/list it (kubectl auth can-i get ...)",
    )
}

/// One CRD: present and, when the API server reports it, `Established`.
pub fn evaluate_crd(name: &str, crd: &Lookup<CustomResourceDefinition>) -> Finding {
    match crd {
        Err(e) => unreadable(&format!("CRD {name}"), e),
        Ok(None) => Finding::fail(format!("CRD {name} is missing"), INSTALL_HINT),
        Ok(Some(crd)) => {
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Established"));
            match established {
                Some(c) if c.status != "True" => Finding::fail(
                    format!(
                        "CRD {name} is not established: {}",
                        c.message.as_deref().unwrap_or("(no message)")
                    ),
                    format!("kubectl describe crd {name}"),
                ),
                _ => Finding::ok(format!("CRD {name} is installed")),
            }
        }
    }
}

/// Ready replicas of the controller Deployment, or `None` when it is absent or
/// unreadable.
pub fn ready_replicas(deployment: &Lookup<Deployment>) -> Option<i32> {
    deployment.as_ref().ok()?.as_ref().map(|d| {
        d.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    })
}

/// The controller Deployment: at least one ready replica. Fewer than desired
/// but at least one is fine: the leader election keeps one doing the work.
pub fn evaluate_deployment(deployment: &Lookup<Deployment>) -> Finding {
    let name = format!("Deployment {CONTROL_NAMESPACE}/{CONTROLLER_DEPLOYMENT}");
    match deployment {
        Err(e) => unreadable(&name, e),
        Ok(None) => Finding::fail(format!("{name} is missing"), INSTALL_HINT),
        Ok(Some(d)) => {
            let ready = ready_replicas(deployment).unwrap_or(0);
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            if ready >= 1 {
                Finding::ok(format!("{name}: {ready}/{desired} replicas ready"))
            } else {
                Finding::fail(format!("{name}: 0/{desired} replicas ready"), LOGS_HINT)
            }
        }
    }
}

/// The mesh's webhook in the configuration, by name.
pub fn mesh_webhook(config: &MutatingWebhookConfiguration) -> Option<&MutatingWebhook> {
    config
        .webhooks
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|w| w.name == WEBHOOK_NAME)
}

/// The webhook configuration: present, with our webhook, and a `caBundle` the
/// API server can verify the webhook with. An empty `caBundle` is a failure
/// once a controller replica is ready (it sets the bundle at start), a warning
/// before (it will).
pub fn evaluate_webhook_config(
    config: &Lookup<MutatingWebhookConfiguration>,
    controller_ready: bool,
) -> Vec<Finding> {
    let name = format!("MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}");
    let config = match config {
        Err(e) => return vec![unreadable(&name, e)],
        Ok(None) => {
            return vec![Finding::fail(
                format!("{name} is missing: no pod gets the sidecar"),
                INSTALL_HINT,
            )];
        }
        Ok(Some(c)) => c,
    };
    let Some(webhook) = mesh_webhook(config) else {
        return vec![Finding::fail(
            format!("{name} has no webhook {WEBHOOK_NAME}"),
            format!("re-apply it: {INSTALL_HINT}"),
        )];
    };
    let mut out = Vec::new();
    let bundle = webhook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.as_slice())
        .unwrap_or_default();
    let set_hint = "the controller sets caBundle at start and after root rotations (RBAC: patch on this configuration); look for \"caBundle\" in kubectl -n mesh-system logs deploy/mesh-controller";
    if bundle.is_empty() {
        let message = format!(
            "{name}: caBundle is empty, so the API server cannot call the webhook and pods start without the sidecar"
        );
        out.push(if controller_ready {
            Finding::fail(message, set_hint)
        } else {
            Finding::warn(message, format!("start the controller first; {set_hint}"))
        });
    } else {
        match std::str::from_utf8(bundle)
            .map_err(|e| e.to_string())
            .and_then(|pem| mesh_identity::tls::anchors_from_pem(pem).map_err(|e| e.to_string()))
        {
            Ok(anchors) => out.push(Finding::ok(format!(
                "{name}: caBundle holds {} certificate{}",
                anchors.len(),
                if anchors.len() == 1 { "" } else { "s" }
            ))),
            Err(e) => out.push(Finding::fail(
                format!("{name}: caBundle is not a PEM certificate bundle: {e}"),
                set_hint,
            )),
        }
    }
    if webhook.failure_policy.as_deref() == Some("Fail") {
        out.push(Finding::warn(
            format!("{name}: failurePolicy Fail: a controller outage blocks pod creation in meshed namespaces"),
            "use failurePolicy: Ignore, as meshctl install does",
        ));
    }
    out
}

/// At least one meshed namespace; none is a warning (nothing is wrong, but
/// nothing gets a sidecar).
pub fn evaluate_namespaces(names: &Result<Vec<String>, String>) -> Finding {
    match names {
        Err(e) => unreadable("namespaces", e),
        Ok(names) if names.is_empty() => Finding::warn(
            format!(
                "no namespace is labelled {NAMESPACE_LABEL}={NAMESPACE_LABEL_ENABLED}: no pod gets the sidecar"
            ),
            "mesh a namespace: meshctl namespace enable NS",
        ),
        Ok(names) => Finding::ok(format!(
            "{} meshed namespace{}: {}",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        )),
    }
}

/// Every cluster finding except the webhook dry-run.
pub fn evaluate_cluster(facts: &ClusterFacts) -> Vec<Finding> {
    let mut out: Vec<Finding> = facts
        .crds
        .iter()
        .map(|(name, crd)| evaluate_crd(name, crd))
        .collect();
    out.push(evaluate_deployment(&facts.deployment));
    let ready = ready_replicas(&facts.deployment).unwrap_or(0) >= 1;
    out.extend(evaluate_webhook_config(&facts.webhook, ready));
    out.push(evaluate_namespaces(&facts.meshed_namespaces));
    out
}

/// Where to send the webhook dry-run, as the API server would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// `host:port` candidates to connect to, in order.
    pub connect: Vec<String>,
    /// The name the serving certificate must carry (the API server's check).
    pub server_name: String,
    /// The request path.
    pub path: String,
    /// What the report calls it.
    pub describe: String,
}

fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Resolves the webhook's `clientConfig` to addresses: a `url` as written; a
/// `service` to its cluster IP (when set) and its cluster DNS name (which
/// resolves only inside the cluster). The certificate is checked for
/// `<service>.<namespace>.svc`, as the API server does.
pub fn webhook_endpoint(
    webhook: &MutatingWebhook,
    service: Option<&Service>,
) -> Result<WebhookEndpoint, String> {
    let cc = &webhook.client_config;
    if let Some(url) = &cc.url {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("clientConfig.url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("clientConfig.url {url:?} is not https"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("clientConfig.url {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().map_or(443, i32::from);
        return Ok(WebhookEndpoint {
            connect: vec![host_port(&host, port)],
            server_name: host,
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string()),
            describe: url.clone(),
        });
    }
    let Some(svc) = &cc.service else {
        return Err("clientConfig has neither url nor service".into());
    };
    let port = svc.port.unwrap_or(443);
    let dns = format!("{}.{}.svc", svc.name, svc.namespace);
    let mut connect = Vec::new();
    if let Some(ip) = service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        connect.push(host_port(ip, port));
    }
    connect.push(host_port(&dns, port));
    Ok(WebhookEndpoint {
        connect,
        server_name: dns.clone(),
        path: svc.path.clone().unwrap_or_else(|| "/".into()),
        describe: format!("service {}/{} port {port}", svc.namespace, svc.name),
    })
}

/// Why the dry-run did not produce an AdmissionReview.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DryRunError {
    /// No TCP connection from here: normal outside the cluster network.
    #[error("not reachable from here: {0}")]
    Unreachable(String),
    /// Connected, but TLS failed (typically: the certificate does not verify
    /// against `caBundle`, which breaks the API server too).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// TLS worked; the HTTP exchange did not.
    #[error("{0}")]
    Http(String),
}

/// The AdmissionReview the dry-run sends: a minimal Pod CREATE with
/// `dryRun: true`, shaped as the API server sends it.
pub fn dry_run_review(uid: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "meshctl-check",
            "namespace": "meshctl-check",
            "operation": "CREATE",
            "userInfo": {"username": "meshctl-check"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "meshctl-check", "namespace": "meshctl-check"},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
            },
            "oldObject": null,
            "dryRun": true,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// Judges the dry-run: the webhook must answer `allowed: true` for the uid it
/// was asked about. Unreachable from here is only a warning: the API server
/// calls the webhook from inside the cluster, and this machine may well not
/// reach cluster IPs.
pub fn evaluate_dry_run(describe: &str, uid: &str, result: &Result<Value, DryRunError>) -> Finding {
    let what = format!("webhook at {describe}");
    match result {
        Err(DryRunError::Unreachable(e)) => Finding::warn(
            format!("{what} is not reachable from here ({e}); dry-run skipped"),
            "the API server calls it from inside the cluster, which this machine may not reach; the controller's readiness covers it, or run meshctl check from a pod in the cluster",
        ),
        Err(e @ DryRunError::Tls(_)) => Finding::fail(
            format!("{what}: {e}"),
            "the API server will fail the same way: the caBundle must hold the mesh CA the controller's certificate comes from; restart the controller so it sets caBundle again, and check its log",
        ),
        Err(DryRunError::Http(e)) => Finding::fail(
            format!("{what} did not answer a dry-run AdmissionReview: {e}"),
            LOGS_HINT,
        ),
        Ok(review) => {
            let response = &review["response"];
            if response["uid"].as_str() != Some(uid) {
                Finding::fail(
                    format!(
                        "{what} answered for uid {} instead of {uid}",
                        response["uid"]
                    ),
                    LOGS_HINT,
                )
            } else if response["allowed"].as_bool() != Some(true) {
                Finding::fail(
                    format!(
                        "{what} refused a dry-run pod: {}",
                        response["status"]["message"]
                            .as_str()
                            .unwrap_or("(no reason)")
                    ),
                    "the mesh's webhook admits every pod; is something else serving there? see the controller's log",
                )
            } else {
                Finding::ok(format!(
                    "{what} answered a dry-run AdmissionReview: allowed"
                ))
            }
        }
    }
}

/// A kube client from `--kubeconfig`/`--context`, else `$KUBECONFIG` or
/// `~/.kube/config`, with short timeouts so an unreachable cluster fails the
/// check quickly instead of hanging it.
async fn client(args: &CheckArgs) -> anyhow::Result<(kube::Client, String)> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None => kube::Config::from_kubeconfig(&options).await?,
    };
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    let url = config.cluster_url.to_string();
    Ok((kube::Client::try_from(config)?, url))
}

fn lookup<T>(r: Result<Option<T>, kube::Error>) -> Lookup<T> {
    r.map_err(|e| e.to_string())
}

/// Runs the cluster checks when a kubeconfig is configured (see
/// [`cluster_configured`]).
pub async fn gather_if_configured(args: &CheckArgs) -> Option<Group> {
    let home_config = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".kube").join("config"))
        .is_some_and(|p| p.is_file());
    let env = std::env::var_os("KUBECONFIG");
    if !cluster_configured(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        env.as_deref(),
        home_config,
    ) {
        return None;
    }
    Some(Group {
        title: "Cluster",
        findings: gather(args).await,
    })
}

/// Reads the cluster and judges it; the webhook dry-run runs when the
/// configuration has a `caBundle` to verify the webhook with.
pub async fn gather(args: &CheckArgs) -> Vec<Finding> {
    let (client, url) = match client(args).await {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::fail(
                format!("cannot load the kubeconfig: {e:#}"),
                "give --kubeconfig PATH (and --context), or set KUBECONFIG",
            )];
        }
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{NAMESPACE_LABEL}={NAMESPACE_LABEL_ENABLED}");
    // The first request doubles as the reachability probe: when the API server
    // does not answer, one finding says so instead of one per object.
    let meshed = match namespaces
        .list_metadata(&ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => Ok(list
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect()),
        Err(kube::Error::Api(e)) => Err(format!("{} ({})", e.message, e.code)),
        Err(e) => {
            return vec![Finding::fail(
                format!("cannot reach the API server at {url}: {e}"),
                "check the kubeconfig and context (kubectl cluster-info)",
            )];
        }
    };
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crds = Vec::new();
    for name in CRDS {
        crds.push((name.to_string(), lookup(crd_api.get_opt(name).await)));
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), CONTROL_NAMESPACE);
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let facts = ClusterFacts {
        crds,
        deployment: lookup(deployments.get_opt(CONTROLLER_DEPLOYMENT).await),
        webhook: lookup(webhooks.get_opt(WEBHOOK_CONFIGURATION).await),
        meshed_namespaces: meshed,
    };
    let mut out = evaluate_cluster(&facts);
    if let Some(finding) = dry_run(&client, &facts).await {
        out.push(finding);
    }
    out
}

/// The dry-run finding, or `None` when there is nothing to try (no webhook, or
/// no `caBundle` to verify it with: already reported).
async fn dry_run(client: &kube::Client, facts: &ClusterFacts) -> Option<Finding> {
    let webhook = mesh_webhook(facts.webhook.as_ref().ok()?.as_ref()?)?;
    let bundle = webhook.client_config.ca_bundle.as_ref()?.0.clone();
    if bundle.is_empty() {
        return None;
    }
    let service = match &webhook.client_config.service {
        Some(svc) if webhook.client_config.url.is_none() => {
            let api: Api<Service> = Api::namespaced(client.clone(), &svc.namespace);
            api.get_opt(&svc.name).await.ok().flatten()
        }
        _ => None,
    };
    let endpoint = match webhook_endpoint(webhook, service.as_ref()) {
        Ok(e) => e,
        Err(e) => {
            return Some(Finding::fail(
                format!("webhook {WEBHOOK_NAME}: {e}"),
                format!("re-apply it: {INSTALL_HINT}"),
            ));
        }
    };
    let uid = format!("meshctl-check-{:016x}", fastrand::u64(..));
    let body = serde_json::to_vec(&dry_run_review(&uid)).expect("JSON values serialize");
    let result = match tokio::time::timeout(
        REQUEST_TIMEOUT * 2,
        post_review(&endpoint, &bundle, body),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(DryRunError::Http(format!(
            "no answer within {:?}",
            REQUEST_TIMEOUT * 2
        ))),
    };
    Some(evaluate_dry_run(&endpoint.describe, &uid, &result))
}

/// POSTs `body` to the webhook over HTTPS, verifying its certificate against
/// `ca_bundle` for `endpoint.server_name`, exactly the API server's check.
async fn post_review(
    endpoint: &WebhookEndpoint,
    ca_bundle: &[u8],
    body: Vec<u8>,
) -> Result<Value, DryRunError> {
    let pem = std::str::from_utf8(ca_bundle).map_err(|e| DryRunError::Tls(e.to_string()))?;
    let anchors =
        mesh_identity::tls::anchors_from_pem(pem).map_err(|e| DryRunError::Tls(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for der in anchors {
        roots
            .add(der.into())
            .map_err(|e| DryRunError::Tls(format!("caBundle: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DryRunError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = rustls::pki_types::ServerName::try_from(endpoint.server_name.clone())
        .map_err(|e| DryRunError::Tls(format!("server name {}: {e}", endpoint.server_name)))?;

    let mut errors = Vec::new();
    let mut tcp = None;
    'candidates: for target in &endpoint.connect {
        let addrs = match tokio::net::lookup_host(target.as_str()).await {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!("{target}: {e}"));
                continue;
            }
        };
        for addr in addrs {
            match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break 'candidates;
                }
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: connect timed out")),
            }
        }
    }
    let Some(tcp) = tcp else {
        return Err(DryRunError::Unreachable(errors.join("; ")));
    };
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|e| DryRunError::Tls(e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| DryRunError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let req = http::Request::post(endpoint.path.as_str())
        .header(http::header::HOST, endpoint.server_name.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| DryRunError::Http(e.to_string()))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| DryRunError::Http(e.to_string()))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| DryRunError::Http(e.to_string()))?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(DryRunError::Http(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| DryRunError::Http(format!("the answer is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Level;

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn configured_when_any_kubeconfig_is_there() {
        assert!(!cluster_configured(None, None, None, false));
        assert!(!cluster_configured(None, None, Some(OsStr::new("")), false));
        assert!(cluster_configured(Some(Path::new("kc")), None, None, false));
        assert!(cluster_configured(None, Some("kind"), None, false));
        assert!(cluster_configured(
            None,
            None,
            Some(OsStr::new("/kc")),
            false
        ));
        assert!(cluster_configured(None, None, None, true));
    }

    #[test]
    fn crds() {
        let missing = evaluate_crd("trafficpolicies.mesh.io", &Ok(None));
        assert_eq!(missing.level, Level::Fail);
        assert_eq!(missing.message, "CRD trafficpolicies.mesh.io is missing");
        assert!(
            missing
                .hint
                .unwrap()
                .contains("meshctl install | kubectl apply -f -")
        );
        let crd = |status: Value| -> Lookup<CustomResourceDefinition> {
            Ok(Some(from(json!({
                "metadata": {"name": "trafficpolicies.mesh.io"},
                "spec": {"group": "mesh.io", "scope": "Namespaced",
                         "names": {"plural": "trafficpolicies", "kind": "TrafficPolicy"},
                         "versions": []},
                "status": status,
            }))))
        };
        assert_eq!(evaluate_crd("t", &crd(json!({}))).level, Level::Ok);
        let established = json!({"conditions": [{"type": "Established", "status": "True"}]});
        assert_eq!(evaluate_crd("t", &crd(established)).level, Level::Ok);
        let not = json!({"conditions": [{"type": "Established", "status": "False", "message": "names conflict"}]});
        let f = evaluate_crd("t", &crd(not));
        assert_eq!(f.level, Level::Fail);
        assert!(f.message.contains("names conflict"));
        assert_eq!(
            evaluate_crd("t", &Err("forbidden".into())).level,
            Level::Warn
        );
    }

    fn deployment(replicas: i32, ready: Option<i32>) -> Lookup<Deployment> {
        let mut status = json!({});
        if let Some(r) = ready {
            status["readyReplicas"] = json!(r);
        }
        Ok(Some(from(json!({
            "metadata": {"name": "mesh-controller", "namespace": "mesh-system"},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": status,
        }))))
    }

    #[test]
    fn controller_deployment() {
        let f = evaluate_deployment(&deployment(2, Some(1)));
        assert_eq!(f.level, Level::Ok);
        assert_eq!(
            f.message,
            "Deployment mesh-system/mesh-controller: 1/2 replicas ready"
        );
        let f = evaluate_deployment(&deployment(2, None));
        assert_eq!(f.level, Level::Fail);
        assert!(
            f.hint
                .unwrap()
                .contains("kubectl -n mesh-system logs deploy/mesh-controller")
        );
        let f = evaluate_deployment(&Ok(None));
        assert_eq!(
            (f.level, f.hint.as_deref()),
            (Level::Fail, Some(INSTALL_HINT))
        );
    }

    const PEM: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUDnU4\n-----END CERTIFICATE-----\n";

    fn webhook_config(client_config: Value, policy: &str) -> MutatingWebhookConfiguration {
        from(json!({
            "metadata": {"name": "mesh-sidecar-injector"},
            "webhooks": [{
                "name": "inject.mesh.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": policy,
                "clientConfig": client_config,
            }]
        }))
    }

    fn with_ca(mut c: MutatingWebhookConfiguration, pem: &str) -> MutatingWebhookConfiguration {
        c.webhooks.as_mut().unwrap()[0].client_config.ca_bundle =
            Some(k8s_openapi::ByteString(pem.as_bytes().to_vec()));
        c
    }

    #[test]
    fn webhook_configuration() {
        let svc = json!({"service": {"name": "mesh-controller", "namespace": "mesh-system", "path": "/inject", "port": 15017}});
        let levels = |c: &Lookup<MutatingWebhookConfiguration>, ready: bool| {
            evaluate_webhook_config(c, ready)
                .iter()
                .map(|f| f.level)
                .collect::<Vec<_>>()
        };
        assert_eq!(levels(&Ok(None), true), [Level::Fail]);
        // No caBundle yet: the controller sets it; only a ready one is late.
        let empty = Ok(Some(webhook_config(svc.clone(), "Ignore")));
        assert_eq!(levels(&empty, false), [Level::Warn]);
        assert_eq!(levels(&empty, true), [Level::Fail]);
        let good = Ok(Some(with_ca(webhook_config(svc.clone(), "Ignore"), PEM)));
        let f = evaluate_webhook_config(&good, true);
        assert_eq!(f[0].level, Level::Ok, "{f:?}");
        assert!(f[0].message.ends_with("caBundle holds 1 certificate"));
        assert_eq!(
            levels(
                &Ok(Some(with_ca(webhook_config(svc.clone(), "Fail"), PEM))),
                true
            ),
            [Level::Ok, Level::Warn]
        );
        assert_eq!(
            levels(
                &Ok(Some(with_ca(webhook_config(svc, "Ignore"), "not pem"))),
                true
            ),
            [Level::Fail]
        );
        let other: MutatingWebhookConfiguration =
            from(json!({"metadata": {"name": "mesh-sidecar-injector"}, "webhooks": []}));
        assert_eq!(levels(&Ok(Some(other)), true), [Level::Fail]);
    }

    #[test]
    fn namespaces() {
        let f = evaluate_namespaces(&Ok(vec![]));
        assert_eq!(f.level, Level::Warn);
        assert_eq!(
            f.hint.as_deref(),
            Some("mesh a namespace: meshctl namespace enable NS")
        );
        let f = evaluate_namespaces(&Ok(vec!["shop".into(), "demo".into()]));
        assert_eq!(
            (f.level, f.message.as_str()),
            (Level::Ok, "2 meshed namespaces: shop, demo")
        );
    }

    #[test]
    fn whole_cluster_in_order() {
        let facts = ClusterFacts {
            crds: CRDS.iter().map(|n| (n.to_string(), Ok(None))).collect(),
            deployment: Ok(None),
            webhook: Ok(None),
            meshed_namespaces: Ok(vec![]),
        };
        let f = evaluate_cluster(&facts);
        let levels: Vec<Level> = f.iter().map(|f| f.level).collect();
        assert_eq!(
            levels,
            [
                Level::Fail,
                Level::Fail,
                Level::Fail,
                Level::Fail,
                Level::Warn
            ]
        );
        assert_eq!(f[1].message, "CRD authorizationpolicies.mesh.io is missing");
    }

    #[test]
    fn endpoints() {
        let w = |cc: Value| mesh_webhook(&webhook_config(cc, "Ignore")).unwrap().clone();
        let svc_ref = json!({"service": {"name": "mesh-controller", "namespace": "mesh-system", "path": "/inject", "port": 15017}});
        let service: Service = from(
            json!({"metadata": {"name": "mesh-controller"}, "spec": {"clusterIP": "10.96.0.12"}}),
        );
        let e = webhook_endpoint(&w(svc_ref.clone()), Some(&service)).unwrap();
        assert_eq!(
            e.connect,
            ["10.96.0.12:15017", "mesh-controller.mesh-system.svc:15017"]
        );
        assert_eq!(e.server_name, "mesh-controller.mesh-system.svc");
        assert_eq!(e.path, "/inject");
        let headless: Service =
            from(json!({"metadata": {"name": "m"}, "spec": {"clusterIP": "None"}}));
        let e = webhook_endpoint(&w(svc_ref.clone()), Some(&headless)).unwrap();
        assert_eq!(e.connect, ["mesh-controller.mesh-system.svc:15017"]);
        let e =
            webhook_endpoint(&w(json!({"url": "https://localhost:8443/inject"})), None).unwrap();
        assert_eq!(
            (
                e.connect[0].as_str(),
                e.server_name.as_str(),
                e.path.as_str()
            ),
            ("localhost:8443", "localhost", "/inject")
        );
        let e = webhook_endpoint(&w(json!({"url": "https://[::1]/x"})), None).unwrap();
        assert_eq!(
            (e.connect[0].as_str(), e.server_name.as_str()),
            ("[::1]:443", "::1")
        );
        assert!(webhook_endpoint(&w(json!({"url": "http://h/x"})), None).is_err());
        assert!(webhook_endpoint(&w(json!({})), None).is_err());
    }

    #[test]
    fn dry_run_results() {
        let review = dry_run_review("u1");
        assert_eq!(review["request"]["dryRun"], true);
        assert_eq!(review["request"]["kind"]["kind"], "Pod");
        let answer = |allowed: bool, uid: &str| {
            Ok(
                json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "response": {"uid": uid, "allowed": allowed}}),
            )
        };
        assert_eq!(
            evaluate_dry_run("x", "u1", &answer(true, "u1")).level,
            Level::Ok
        );
        assert_eq!(
            evaluate_dry_run("x", "u1", &answer(false, "u1")).level,
            Level::Fail
        );
        assert_eq!(
            evaluate_dry_run("x", "u1", &answer(true, "u2")).level,
            Level::Fail
        );
        let f = evaluate_dry_run(
            "x",
            "u1",
            &Err(DryRunError::Unreachable("timed out".into())),
        );
        assert_eq!(f.level, Level::Warn);
        assert!(f.hint.unwrap().contains("inside the cluster"));
        let tls = Err(DryRunError::Tls("UnknownIssuer".into()));
        assert_eq!(evaluate_dry_run("x", "u1", &tls).level, Level::Fail);
        let http = Err(DryRunError::Http("HTTP 404".into()));
        assert_eq!(evaluate_dry_run("x", "u1", &http).level, Level::Fail);
    }
}
