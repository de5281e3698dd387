//! Starting the mesh's binaries and making sure they die with the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The directory holding the workspace's built binaries: the parent of the test
/// executable's `deps/` directory, wherever CARGO_TARGET_DIR points.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// The path of a workspace binary; panics with the fix if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// The child.
    pub child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args`, logging stdout and stderr to `<log_dir>/<name>.log`.
    pub fn start(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Proc {
        Proc::start_with_env(name, program, args, &[], log_dir)
    }

    /// Like [`Proc::start`], with extra environment variables (e.g. `http_proxy`
    /// for an app that calls through its sidecar).
    pub fn start_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log file");
        let child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// Its log so far, for assertion messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM (through `kill`, to stay free of unsafe code) and waits up to
    /// `grace` for it to exit; returns whether it exited in time.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(grace, self.child.wait()).await.is_ok()
    }
}

/// A running controller with the address it serves.
#[derive(Debug)]
pub struct Controller {
    /// The process.
    pub proc: Proc,
    /// Plaintext xDS address.
    pub xds: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// TLS address (xDS and Certify).
    pub secure: SocketAddr,
}

impl Controller {
    /// Starts `mesh-controller` on `file` with fresh ports and waits until ready.
    pub async fn start(file: &Path, log_dir: &Path) -> Controller {
        Self::start_with(file, log_dir, &[]).await
    }

    /// Like [`Controller::start`], with extra controller flags.
    pub async fn start_with(file: &Path, log_dir: &Path, extra: &[&str]) -> Controller {
        let (xds, admin, secure) = (crate::free_addr(), crate::free_addr(), crate::free_addr());
        Self::start_on(file, log_dir, xds, admin, secure, extra).await
    }

    /// Starts `mesh-controller` on `file` at the given addresses and waits until ready.
    pub async fn start_on(
        file: &Path,
        log_dir: &Path,
        xds: SocketAddr,
        admin: SocketAddr,
        secure: SocketAddr,
        extra: &[&str],
    ) -> Controller {
        let registry = vec![
            "--registry".into(),
            "file".into(),
            "--file".into(),
            file.display().to_string(),
            // The CA lives beside the mesh file, so a restarted controller keeps it.
            "--ca-dir".into(),
            file.with_extension("ca").display().to_string(),
        ];
        Self::launch(registry, log_dir, (xds, admin, secure), extra).await
    }

    /// Starts `mesh-controller --registry kubernetes` with `kubeconfig` (for
    /// example a `kube_api::KubeApi`'s) on fresh ports and waits until ready. The
    /// CA is wherever `extra` says (`--ca-dir`), else in a Secret.
    pub async fn start_kubernetes(kubeconfig: &Path, log_dir: &Path, extra: &[&str]) -> Controller {
        let registry = vec![
            "--registry".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
        ];
        let addrs = (crate::free_addr(), crate::free_addr(), crate::free_addr());
        Self::launch(registry, log_dir, addrs, extra).await
    }

    async fn launch(
        mut args: Vec<String>,
        log_dir: &Path,
        (xds, admin, secure): (SocketAddr, SocketAddr, SocketAddr),
        extra: &[&str],
    ) -> Controller {
        args.extend([
            "--xds-addr".into(),
            xds.to_string(),
            "--admin-addr".into(),
            admin.to_string(),
            "--secure-xds-addr".into(),
            secure.to_string(),
            "--debounce-ms".into(),
            "50".into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::start("controller", &bin("mesh-controller"), &args, log_dir);
        let c = Controller {
            proc,
            xds,
            admin,
            secure,
        };
        let url = format!("http://{admin}/ready");
        let log = c.proc.log.clone();
        crate::eventually(
            &format!("controller ready (log {})", log.display()),
            Duration::from_secs(15),
            || {
                let url = url.clone();
                async move { crate::http::get_status(&url).await.filter(|s| *s == 200) }
            },
        )
        .await;
        c
    }

    /// `http://<xds>` for proxies.
    pub fn xds_url(&self) -> String {
        format!("http://{}", self.xds)
    }

    /// `https://<secure>` for sidecars with an identity.
    pub fn secure_url(&self) -> String {
        format!("https://{}", self.secure)
    }

    /// A join token for `service_account` in `namespace`, from the admin API.
    pub async fn token(&self, namespace: &str, service_account: &str) -> String {
        let body = serde_json::json!({"namespace": namespace, "service_account": service_account});
        let url = format!("http://{}/tokens", self.admin);
        let (status, text) = crate::http::post_json(&url, &body)
            .await
            .expect("admin reachable");
        assert_eq!(status, 200, "POST /tokens: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("token JSON");
        v["token"].as_str().expect("token field").to_string()
    }

    /// The trust bundle (PEM) sidecars verify the controller with.
    pub async fn bundle(&self) -> String {
        let (status, pem) = crate::http::get(&format!("http://{}/ca/bundle", self.admin))
            .await
            .expect("admin reachable");
        assert_eq!(status, 200, "GET /ca/bundle: {pem}");
        pem
    }

    /// GETs an admin path and parses it as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let url = format!("http://{}{path}", self.admin);
        let (status, body) = crate::http::get(&url).await.expect("admin reachable");
        assert_eq!(status, 200, "{url}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url} is not JSON ({e}): {body}"))
    }
}

/// A running sidecar on its own loopback IP.
#[derive(Debug)]
pub struct Sidecar {
    /// The process.
    pub proc: Proc,
    /// The IP its listeners bind (standard ports).
    pub ip: std::net::IpAddr,
}

impl Sidecar {
    /// Starts `mesh-proxy` for `workload` (namespace `default`) at `ip`; does not wait.
    pub fn start(
        workload: &str,
        ip: std::net::IpAddr,
        xds_url: &str,
        extra: &[&str],
        log_dir: &Path,
    ) -> Sidecar {
        let mut args: Vec<String> = vec![
            "--xds-addr".into(),
            xds_url.into(),
            "--workload".into(),
            workload.into(),
            "--namespace".into(),
            "default".into(),
            "--ip".into(),
            ip.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::start(
            &format!("proxy-{workload}"),
            &bin("mesh-proxy"),
            &args,
            log_dir,
        );
        Sidecar { proc, ip }
    }

    /// Starts `mesh-proxy` for `workload` with an identity: a join token for
    /// `service_account` and the controller's trust bundle, over the TLS port.
    pub async fn start_secure(
        workload: &str,
        service_account: &str,
        ip: std::net::IpAddr,
        controller: &Controller,
        extra: &[&str],
        log_dir: &Path,
    ) -> Sidecar {
        let token = log_dir.join(format!("{workload}.token"));
        std::fs::write(&token, controller.token("default", service_account).await)
            .expect("write token");
        let anchors = log_dir.join("trust-anchors.pem");
        std::fs::write(&anchors, controller.bundle().await).expect("write anchors");
        let mut args: Vec<String> = vec![
            "--token-file".into(),
            token.display().to_string(),
            "--trust-anchors".into(),
            anchors.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Sidecar::start(workload, ip, &controller.secure_url(), &args, log_dir)
    }

    /// `http://<ip>:15001`, for use as an HTTP proxy.
    pub fn outbound(&self) -> String {
        format!("http://{}:15001", self.ip)
    }

    /// `http://<ip>:15000<path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}:15000{path}", self.ip)
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        let url = self.admin_url("/ready");
        let log = self.proc.log.clone();
        crate::eventually(
            &format!("sidecar {} ready (log {})", self.proc.name, log.display()),
            Duration::from_secs(10),
            || {
                let url = url.clone();
                async move { crate::http::get_status(&url).await.filter(|s| *s == 200) }
            },
        )
        .await;
    }
}
