//! Identity and mutual TLS end to end: a real controller (the CA), real sidecars
//! that certify with join tokens over the TLS port, real upstreams.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mesh_tests::http::{Upstream, get, get_via_proxy};
use mesh_tests::process::{Controller, Sidecar};
use mesh_tests::{eventually, unique_ip};

struct Mesh {
    dir: PathBuf,
    controller: Controller,
    frontend: Sidecar,
    catalog: Sidecar,
    catalog_ip: IpAddr,
    _upstream: Upstream,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn workload(name: &str, app: &str, sa: &str, ip: IpAddr) -> String {
    format!(
        "---\napiVersion: mesh.io/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\nspec: {{address: {ip}, ports: [{{name: http, port: 8080}}], serviceAccount: {sa}}}\n"
    )
}

fn service(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{selector: {{app: {name}}}, ports: [{{name: http, port: 8080}}]}}\n"
    )
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {mesh.io/inject: enabled}}\n";

impl Mesh {
    /// frontend-1 (sa frontend) calling catalog-1 (sa catalog), plus `extra` documents.
    async fn start(tag: &str, controller_flags: &[&str], extra: &str) -> Mesh {
        let dir = std::env::temp_dir().join(format!("mesh-mtls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (front_ip, catalog_ip) = (unique_ip(), unique_ip());
        let yaml = format!(
            "{NAMESPACE}{}{}{}{}{extra}",
            service("frontend"),
            service("catalog"),
            workload("frontend-1", "frontend", "frontend", front_ip),
            workload("catalog-1", "catalog", "catalog", catalog_ip),
        );
        let file = dir.join("mesh.yaml");
        std::fs::write(&file, yaml).unwrap();
        let controller = Controller::start_with(&file, &dir, controller_flags).await;
        let upstream = Upstream::start("catalog-1", (catalog_ip, 8080).into()).await;
        let frontend =
            Sidecar::start_secure("frontend-1", "frontend", front_ip, &controller, &[], &dir).await;
        let catalog =
            Sidecar::start_secure("catalog-1", "catalog", catalog_ip, &controller, &[], &dir).await;
        frontend.wait_ready().await;
        catalog.wait_ready().await;
        Mesh {
            dir,
            controller,
            frontend,
            catalog,
            catalog_ip,
            _upstream: upstream,
        }
    }

    async fn call(&self, via: &Sidecar, path: &str) -> Option<(u16, String)> {
        get_via_proxy(
            &via.outbound(),
            &format!("http://catalog.default:8080{path}"),
        )
        .await
    }
}

async fn metrics(sidecar: &Sidecar) -> String {
    get(&sidecar.admin_url("/metrics"))
        .await
        .expect("metrics")
        .1
}

fn has_series(metrics: &str, name: &str, labels: &[&str]) -> bool {
    metrics
        .lines()
        .any(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
}

#[tokio::test]
async fn requests_cross_mutual_tls_and_both_sides_know_who_called() {
    let m = Mesh::start("traffic", &[], "").await;
    let (status, body) = m.call(&m.frontend, "/items").await.expect("answer");
    assert_eq!(status, 200, "{body}");
    let dst = metrics(&m.catalog).await;
    assert!(
        has_series(
            &dst,
            "mesh_requests_total",
            &[
                "reporter=\"destination\"",
                "source_principal=\"spiffe://cluster.local/ns/default/sa/frontend\"",
                "connection_security_policy=\"mutual_tls\"",
                "response_code=\"200\"",
            ]
        ),
        "destination side:\n{dst}"
    );
    let src = metrics(&m.frontend).await;
    assert!(
        has_series(
            &src,
            "mesh_requests_total",
            &[
                "reporter=\"source\"",
                "destination_principal=\"spiffe://cluster.local/ns/default/sa/catalog\"",
                "connection_security_policy=\"mutual_tls\"",
            ]
        ),
        "source side:\n{src}"
    );
    let expiry = src
        .lines()
        .find(|l| l.starts_with("mesh_proxy_cert_expiry_timestamp_seconds "))
        .expect("cert expiry metric");
    let expiry: f64 = expiry.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(expiry > mesh_identity::unix_now() as f64, "{expiry}");
}

#[tokio::test]
async fn strict_inbound_refuses_plaintext_and_strangers() {
    let m = Mesh::start("strict", &[], "").await;
    // Plaintext HTTP straight to the inbound port: no answer.
    let plain = get(&format!("http://{}:15006/items", m.catalog_ip)).await;
    assert_eq!(plain, None, "STRICT inbound answered plaintext: {plain:?}");
    eventually("refusal counted", Duration::from_secs(5), || async {
        has_series(
            &metrics(&m.catalog).await,
            "mesh_inbound_plaintext_refused_total",
            &[],
        )
        .then_some(())
    })
    .await;

    // A client with a certificate from another CA: the handshake fails.
    let foreign =
        mesh_identity::CertificateAuthority::generate("cluster.local", Duration::from_secs(3600))
            .unwrap();
    let key = mesh_identity::csr::WorkloadKey::generate().unwrap();
    let id = mesh_identity::Identity::new("cluster.local", "default", "frontend");
    let issued = foreign
        .issue(&key.csr_der().unwrap(), &id, Duration::from_secs(60))
        .unwrap();
    let creds =
        mesh_identity::tls::Credentials::new(issued.chain_der, key.private_key_der()).unwrap();
    let anchors = mesh_identity::tls::anchors_from_pem(&m.controller.bundle().await).unwrap();
    let config = mesh_identity::tls::client_config(Some(&creds), &anchors, &[b"h2"]).unwrap();
    let tcp = tokio::net::TcpStream::connect((m.catalog_ip, 15006))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        let mut tls = connector
            .connect(mesh_identity::tls::mesh_server_name(), tcp)
            .await?;
        // TLS 1.3: the server's verdict on the client certificate arrives with
        // the first read.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .expect("handshake finished");
    assert!(
        result.is_err(),
        "a certificate from another CA was accepted"
    );
}

#[tokio::test]
async fn a_valid_certificate_for_the_wrong_identity_is_refused_by_the_caller() {
    // `rogue` (its own identity, sa rogue) answers at the address EDS gives for
    // catalog-2 (sa catalog): a real certificate, the wrong identity.
    let rogue_ip = unique_ip();
    // Round robin without retries, so the impostor is tried and its refusal is
    // what the caller sees (by default the refused attempt would be retried on
    // catalog-1, as Envoy retries a failed handshake as a connect failure).
    let extra = format!(
        "{}{}---\napiVersion: mesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: catalog}}\nspec: {{targetRef: {{name: catalog}}, loadBalancer: {{simple: ROUND_ROBIN}}, retries: {{attempts: 0}}}}\n",
        workload("catalog-2", "catalog", "catalog", rogue_ip),
        workload("rogue", "rogue", "rogue", unique_ip()),
    );
    let m = Mesh::start("rogue", &[], &extra).await;
    let _rogue_app = Upstream::start("rogue", (rogue_ip, 8080).into()).await;
    let rogue = Sidecar::start_secure("rogue", "rogue", rogue_ip, &m.controller, &[], &m.dir).await;
    rogue.wait_ready().await;
    let mut saw_refusal = false;
    for _ in 0..20 {
        let (status, body) = m.call(&m.frontend, "/").await.expect("answer");
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                v["server"], "catalog-1",
                "traffic reached the impostor: {body}"
            );
        } else {
            assert_eq!(status, 503, "{body}");
            assert!(
                body.contains("spiffe://cluster.local/ns/default/sa/rogue")
                    && body.contains("spiffe://cluster.local/ns/default/sa/catalog"),
                "names both identities: {body}"
            );
            saw_refusal = true;
        }
    }
    assert!(
        saw_refusal,
        "round robin never tried the impostor's address"
    );
}

#[tokio::test]
async fn authorization_policy_denies_and_allows() {
    let stranger_ip = unique_ip();
    let policies = format!(
        "{}---\napiVersion: mesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: frontend-only, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: catalog}}}}\n  rules:\n  - from: [{{source: {{principals: [\"spiffe://cluster.local/ns/default/sa/frontend\"]}}}}]\n---\napiVersion: mesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: catalog}}}}\n  action: DENY\n  rules:\n  - to: [{{operation: {{paths: [\"/admin*\"]}}}}]\n",
        workload("stranger-1", "stranger", "stranger", stranger_ip)
    );
    let m = Mesh::start("authz", &[], &policies).await;
    let stranger = Sidecar::start_secure(
        "stranger-1",
        "stranger",
        stranger_ip,
        &m.controller,
        &[],
        &m.dir,
    )
    .await;
    stranger.wait_ready().await;

    let (status, body) = m.call(&m.frontend, "/items").await.expect("answer");
    assert_eq!(status, 200, "allowed caller: {body}");
    let (status, body) = m.call(&m.frontend, "/admin/users").await.expect("answer");
    assert_eq!(status, 403, "DENY wins over ALLOW: {body}");
    let (status, body) = m.call(&stranger, "/items").await.expect("answer");
    assert_eq!(status, 403, "no ALLOW policy matches the stranger: {body}");
    let dst = metrics(&m.catalog).await;
    let denied: f64 = dst
        .lines()
        .filter(|l| l.starts_with("mesh_authorization_denied_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(denied, 2.0, "both denials counted:\n{dst}");
}

/// Sends requests through `via` until `stop`, counting answers and failures.
fn traffic(
    m: &Mesh,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let proxy = m.frontend.outbound();
    let (ok2, failures2) = (ok.clone(), failures.clone());
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            match get_via_proxy(&proxy, "http://catalog.default:8080/items").await {
                Some((200, _)) => {
                    ok2.fetch_add(1, Ordering::Relaxed);
                }
                other => failures2.lock().unwrap().push(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (ok, failures, task)
}

async fn serial(sidecar: &Sidecar) -> String {
    let dump: serde_json::Value =
        serde_json::from_str(&get(&sidecar.admin_url("/config_dump")).await.unwrap().1).unwrap();
    let s = &dump["secrets"];
    s["certificate"]["serial"]
        .as_str()
        .unwrap_or_else(|| panic!("no serial in secrets: {s}"))
        .to_string()
}

#[tokio::test]
async fn certificate_rotation_under_traffic_loses_nothing() {
    let m = Mesh::start("rotate", &["--workload-cert-ttl", "5s"], "").await;
    let first = (serial(&m.frontend).await, serial(&m.catalog).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failures, task) = traffic(&m, stop.clone());
    // Two lifetimes: every sidecar rotates at least once, most twice.
    tokio::time::sleep(Duration::from_secs(11)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let last = (serial(&m.frontend).await, serial(&m.catalog).await);
    assert_ne!(first.0, last.0, "frontend rotated");
    assert_ne!(first.1, last.1, "catalog rotated");
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok.load(Ordering::Relaxed) + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
}

#[tokio::test]
async fn root_rotation_under_traffic_loses_nothing() {
    let m = Mesh::start(
        "rootrot",
        &["--workload-cert-ttl", "4s", "--rotation-grace", "2s"],
        "",
    )
    .await;
    let before = m.controller.admin_json("/debug/ca").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failures, task) = traffic(&m, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) =
        mesh_tests::http::post(&format!("http://{}/ca/rotate", m.controller.admin))
            .await
            .expect("admin reachable");
    assert_eq!(status, 202, "{body}");
    let after = eventually("rotation finished", Duration::from_secs(40), || async {
        let ca = m.controller.admin_json("/debug/ca").await;
        let done =
            ca["roots"].as_array().is_some_and(|r| r.len() == 1) && ca["roots"] != before["roots"];
        done.then_some(ca)
    })
    .await;
    // Keep traffic going past the next certificate renewal under the new root.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed during root rotation: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    // Both sidecars now hold certificates from the new root.
    let new_root = after["roots"][0]["subject"].as_str().unwrap().to_string();
    for sidecar in [&m.frontend, &m.catalog] {
        let dump: serde_json::Value =
            serde_json::from_str(&get(&sidecar.admin_url("/config_dump")).await.unwrap().1)
                .unwrap();
        let issuer = dump["secrets"]["certificate"]["chain"][0]["issuer"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            issuer, new_root,
            "{}'s certificate is not from the new root: {}",
            sidecar.proc.name, dump["secrets"]
        );
    }
}
