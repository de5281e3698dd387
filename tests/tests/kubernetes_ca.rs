//! The CA kept in a Kubernetes Secret, with a Lease electing the one replica
//! that creates and rotates the root: real `mesh-controller` binaries (two
//! replicas with different `POD_NAME`s) against the test API server.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mesh_tests::TestDir;
use mesh_tests::kube_api::KubeApi;
use mesh_tests::process::{Proc, bin};
use serde_json::{Value, json};

const NS: &str = "mesh-system";
const SECRET: &str = "mesh-ca";
const LEASE: &str = "mesh-controller-leader";

/// One controller replica: `mesh-controller --registry kubernetes` with the CA
/// in the Secret (no `--ca-dir`) and its own pod name.
struct Replica {
    pod: String,
    proc: Proc,
    admin: SocketAddr,
}

impl Replica {
    fn start(pod: &str, kubeconfig: &Path, log_dir: &Path) -> Replica {
        let (xds, admin, secure) = (
            mesh_tests::free_addr(),
            mesh_tests::free_addr(),
            mesh_tests::free_addr(),
        );
        let args = [
            "--registry".to_string(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--xds-addr".into(),
            xds.to_string(),
            "--admin-addr".into(),
            admin.to_string(),
            "--secure-xds-addr".into(),
            secure.to_string(),
            "--debounce-ms".into(),
            "50".into(),
            "--ca-secret".into(),
            format!("{NS}/{SECRET}"),
            "--leader-lease".into(),
            format!("{NS}/{LEASE}"),
        ];
        let log = log_dir.join(format!("{pod}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = tokio::process::Command::new(bin("mesh-controller"))
            .args(args)
            .env("POD_NAME", pod)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start mesh-controller");
        Replica {
            pod: pod.to_string(),
            proc: Proc {
                name: pod.to_string(),
                child,
                log,
            },
            admin,
        }
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}/ready", self.admin);
        let deadline = Instant::now() + Duration::from_secs(30);
        while mesh_tests::http::get_status(&url).await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.pod,
                self.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn bundle(&self) -> String {
        let (status, pem) = mesh_tests::http::get(&format!("http://{}/ca/bundle", self.admin))
            .await
            .expect("admin reachable");
        assert_eq!(status, 200, "{}: GET /ca/bundle: {pem}", self.pod);
        assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
        pem
    }

    async fn debug_ca(&self) -> Value {
        let (status, body) = mesh_tests::http::get(&format!("http://{}/debug/ca", self.admin))
            .await
            .expect("admin reachable");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn is_leader(&self) -> bool {
        self.debug_ca().await["leader"] == json!(true)
    }
}

fn lease_holder(api: &KubeApi) -> Option<String> {
    api.get("coordination.k8s.io/v1", "Lease", Some(NS), LEASE)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
}

fn secrets(api: &KubeApi) -> Vec<Value> {
    api.list("v1", "Secret", Some(NS))
}

fn roots(pem: &str) -> usize {
    pem.matches("BEGIN CERTIFICATE").count()
}

/// Waits until exactly one of `replicas` says it leads and the Lease names it;
/// returns its index.
async fn one_leader(api: &KubeApi, replicas: &[&Replica], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            if r.is_leader().await {
                leaders.push(i);
            }
        }
        let holder = lease_holder(api);
        if let [i] = leaders[..]
            && holder.as_deref() == Some(replicas[i].pod.as_str())
        {
            return i;
        }
        assert!(
            leaders.len() <= 1,
            "two leaders at once: {leaders:?} (Lease holder {holder:?})"
        );
        assert!(
            Instant::now() < deadline,
            "no single leader within {within:?}: leaders {leaders:?}, Lease holder {holder:?}\n{}",
            replicas
                .iter()
                .map(|r| format!("--- {}\n{}", r.pod, r.proc.log_text()))
                .collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_ca_secret_and_elect_one_leader() {
    let api = KubeApi::start().await;
    api.load_fixtures(&KubeApi::fixtures_dir());
    if api.get("v1", "Namespace", None, NS).is_none() {
        api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    }
    let dir = TestDir::new("leader");
    let kubeconfig = dir.0.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();

    // Two replicas at once: one Lease holder, one Secret, one root.
    let a = Replica::start("mesh-controller-a", &kubeconfig, &dir.0);
    let b = Replica::start("mesh-controller-b", &kubeconfig, &dir.0);
    a.wait_ready().await;
    b.wait_ready().await;
    let leader = one_leader(&api, &[&a, &b], Duration::from_secs(10)).await;
    let stored = secrets(&api);
    assert_eq!(stored.len(), 1, "exactly one Secret: {stored:#?}");
    let secret = &stored[0];
    assert_eq!(secret["metadata"]["name"], SECRET);
    assert_eq!(secret["type"], "Opaque");
    assert!(secret["data"]["ca.json"].is_string(), "{secret:#}");
    assert!(secret["data"]["token-key.pk8"].is_string(), "{secret:#}");
    let bundle = a.bundle().await;
    assert_eq!(roots(&bundle), 1);
    assert_eq!(
        bundle,
        b.bundle().await,
        "both replicas serve the same root"
    );

    let (mut leader, follower) = if leader == 0 { (a, b) } else { (b, a) };
    let debug = follower.debug_ca().await;
    assert_eq!(debug["source"], "kubernetes_secret", "{debug:#}");
    assert_eq!(debug["holder"], json!(leader.pod), "{debug:#}");

    // Only the leader rotates; the follower's bundle follows the Secret.
    let (status, body) = mesh_tests::http::post(&format!("http://{}/ca/rotate", follower.admin))
        .await
        .unwrap();
    assert_eq!(status, 409, "a follower refuses to rotate: {body}");
    let (status, body) = mesh_tests::http::post(&format!("http://{}/ca/rotate", leader.admin))
        .await
        .unwrap();
    assert_eq!(status, 202, "the leader rotates: {body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while roots(&follower.bundle().await) != 2 {
        assert!(
            Instant::now() < deadline,
            "the follower never picked up the new root:\n{}",
            follower.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rotated = leader.bundle().await;
    assert_eq!(roots(&rotated), 2);
    assert_eq!(rotated, follower.bundle().await);

    // The leader dies: the follower takes the Lease over once it expires.
    let killed_at = Instant::now();
    leader.proc.kill().await;
    one_leader(&api, &[&follower], Duration::from_secs(30)).await;
    let took = killed_at.elapsed();
    assert!(took <= Duration::from_secs(25), "takeover took {took:?}");
    assert_eq!(
        follower.bundle().await,
        rotated,
        "the new leader keeps the roots"
    );
    assert_eq!(secrets(&api).len(), 1);
    let debug = follower.debug_ca().await;
    assert_eq!(debug["holder"], json!(follower.pod), "{debug:#}");
    // It resumed the interrupted rotation (signing with the new root, both trusted).
    assert_eq!(debug["signers"], 2, "{debug:#}");

    // A restarted replica loads the same roots from the Secret and follows.
    let c = Replica::start("mesh-controller-c", &kubeconfig, &dir.0);
    c.wait_ready().await;
    assert_eq!(c.bundle().await, rotated, "a restart keeps the roots");
    assert!(!c.is_leader().await);
    assert_eq!(c.debug_ca().await["holder"], json!(follower.pod));
    assert_eq!(secrets(&api).len(), 1);
}
