//! Transparent capture end to end, in network namespaces: two "pods", each with
//! a real app (as UID 1000), real `mesh-init` rules (the injector's flags) and a
//! real `mesh-proxy` (as UID 1337), and the real controller, all joined by a
//! bridge in a "node" namespace. The apps dial a service's virtual IP with no
//! proxy settings; capture, mutual TLS and metrics are checked from outside.
//!
//! Needs root, iptables and iproute2; without them the test prints why and
//! passes. Every address is in 10.77.0.0/16 and exists only inside the
//! namespaces this test creates (and deletes, also on failure).

use std::fs::File;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use mesh_tests::process::{Controller, bin};
use nix::sched::{CloneFlags, setns};

/// The flags the injected init container passes (control-plane inject.rs).
const INJECTED: &[&str] = &[
    "--outbound-port",
    "15001",
    "--inbound-port",
    "15006",
    "--proxy-uid",
    "1337",
];
const PROXY_UID: u32 = 1337;
const APP_UID: u32 = 1000;
const NODE_IP: &str = "10.77.0.1";
const A_IP: &str = "10.77.0.2";
const B_IP: &str = "10.77.0.3";
/// Service b's virtual IP: routed nowhere, only capture knows it.
const B_VIP: &str = "10.77.1.10";
/// A port both sides exclude from capture.
const EXCLUDED: u16 = 9000;

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {mesh.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default, annotations: {mesh.io/opaque-ports: "2525"}}
spec:
  clusterIP: 10.77.1.10
  selector: {app: b}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: smtp, port: 2525}, {name: ws, port: 8081}]
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: a-1, namespace: default, labels: {app: a}}
spec: {address: 10.77.0.2, ports: [{port: 8080}], serviceAccount: a}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: b-1, namespace: default, labels: {app: b}}
spec: {address: 10.77.0.3, ports: [{port: 8080}, {port: 8081}, {port: 2525}, {port: 9000}], serviceAccount: b}
"#;

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        });
    if euid.as_deref() != Some("0") {
        return Some("not root".into());
    }
    for (tool, arg) in [("iptables-restore", "--version"), ("ip", "-V")] {
        if !Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!("`{tool}` not available"));
        }
    }
    None
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `ip ARGS` in the root namespace (creating and wiring namespaces).
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}

/// A network namespace, deleted (with its veth ends and bridge) on drop.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Netns {
        let name = format!("mesh-e2e-{}-{role}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ns.run("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace as root, asserting success.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "{program} {args:?} in {}: {}{}",
            self.0,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Enters this namespace on the current thread.
    fn enter(&self) {
        let f = File::open(format!("/run/netns/{}", self.0)).expect("open netns");
        setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
    }

    /// A command prepared on a thread that entered this namespace, run as `uid`
    /// (also as gid) with `CommandExt::uid/gid`; `f` spawns or runs it there.
    fn as_user<T: Send>(
        &self,
        uid: u32,
        program: &Path,
        args: &[String],
        f: impl FnOnce(Command) -> T + Send,
    ) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                let mut cmd = Command::new(program);
                cmd.args(args).uid(uid).gid(uid).stdin(Stdio::null());
                f(cmd)
            })
            .join()
            .expect("spawning thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A process killed when dropped.
struct Running(Child, PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

/// The node (bridge, controller) and two pods attached to it.
struct Cluster {
    node: Netns,
    a: Netns,
    b: Netns,
    dir: PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let node = Netns::new("node");
        let bridge = "mbr0";
        node.run("ip", &["link", "add", bridge, "type", "bridge"]);
        node.run(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/24"), "dev", bridge],
        );
        node.run("ip", &["link", "set", bridge, "up"]);
        let a = Netns::new("a");
        let b = Netns::new("b");
        for (i, (pod, addr)) in [(&a, A_IP), (&b, B_IP)].into_iter().enumerate() {
            let (inside, outside) = (
                format!("mv{i}p{}", std::process::id() % 100_000),
                format!("mv{i}n{}", std::process::id() % 100_000),
            );
            ip(&[
                "link", "add", &inside, "type", "veth", "peer", "name", &outside,
            ]);
            ip(&["link", "set", &inside, "netns", &pod.0]);
            ip(&["link", "set", &outside, "netns", &node.0]);
            node.run("ip", &["link", "set", &outside, "master", bridge]);
            node.run("ip", &["link", "set", &outside, "up"]);
            pod.run(
                "ip",
                &["addr", "add", &format!("{addr}/24"), "dev", &inside],
            );
            pod.run("ip", &["link", "set", &inside, "up"]);
            // Cluster IPs need a route to be dialled at all; capture takes them
            // before they would leave the pod.
            pod.run("ip", &["route", "add", "default", "via", NODE_IP]);
        }
        let dir = std::env::temp_dir().join(format!("mesh-capture-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Cluster { node, a, b, dir }
    }

    /// Starts `program` in `pod` as `uid`, logging to `<dir>/<name>.log`.
    fn spawn(&self, pod: &Netns, uid: u32, name: &str, program: &Path, args: &[String]) -> Running {
        let log = self.dir.join(format!("{name}.log"));
        let file = File::create(&log).unwrap();
        let child = pod.as_user(uid, program, args, |mut cmd| {
            cmd.stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap_or_else(|e| panic!("start {name}: {e}"))
        });
        Running(child, log)
    }

    /// Runs the app binary's client mode in `pod` as the app user.
    fn app(&self, pod: &Netns, args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        pod.as_user(APP_UID, &bin("mesh-netns-app"), &args, |mut cmd| {
            cmd.output().expect("run mesh-netns-app")
        })
    }
}

/// The sum of the samples of `metric` whose labels contain every fragment.
fn sample(metrics: &str, metric: &str, fragments: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| fragments.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(pod_ip: &str) -> String {
    let (status, body) = mesh_tests::http::get(&format!("http://{pod_ip}:15000/metrics"))
        .await
        .expect("sidecar admin reachable");
    assert_eq!(status, 200);
    body
}

#[test]
fn apps_call_service_addresses_through_captured_mtls() {
    if let Some(why) = missing_prerequisite() {
        eprintln!(
            "apps_call_service_addresses_through_captured_mtls: skipping: needs root, iptables and iproute2: {why}"
        );
        return;
    }
    let cluster = Cluster::new();
    // The test itself lives on the node: the controller and every HTTP call it
    // makes are in the node namespace.
    std::thread::scope(|s| {
        s.spawn(|| {
            cluster.node.enter();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(scenario(&cluster));
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    });
    // Logs stay behind only when the test failed.
    let _ = std::fs::remove_dir_all(&cluster.dir);
}

async fn scenario(c: &Cluster) {
    let mesh = c.dir.join("mesh.yaml");
    std::fs::write(&mesh, MESH).unwrap();
    let secure = format!("{NODE_IP}:15012").parse().unwrap();
    let controller = Controller::start_on(
        &mesh,
        &c.dir,
        mesh_tests::free_addr(),
        mesh_tests::free_addr(),
        secure,
        &[],
    )
    .await;
    let anchors = c.dir.join("anchors.pem");
    std::fs::write(&anchors, controller.bundle().await).unwrap();

    // Capture first (as an init container would), then the sidecar, then the app.
    let exclude_in = format!("15000,{EXCLUDED}");
    let exclude_out = EXCLUDED.to_string();
    let a_init = [INJECTED, &["--exclude-outbound-ports", &exclude_out]].concat();
    let b_init = [INJECTED, &["--exclude-inbound-ports", &exclude_in]].concat();
    c.a.run(bin("mesh-init").to_str().unwrap(), &a_init);
    c.b.run(bin("mesh-init").to_str().unwrap(), &b_init);

    let mut running = Vec::new();
    for (pod, workload, sa) in [(&c.a, "a-1", "a"), (&c.b, "b-1", "b")] {
        let token = c.dir.join(format!("{workload}.token"));
        std::fs::write(&token, controller.token("default", sa).await).unwrap();
        let args: Vec<String> = [
            "--workload",
            workload,
            "--namespace",
            "default",
            "--xds-addr",
            &format!("https://{NODE_IP}:15012"),
            "--token-file",
            token.to_str().unwrap(),
            "--trust-anchors",
            anchors.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        running.push(c.spawn(
            pod,
            PROXY_UID,
            &format!("proxy-{workload}"),
            &bin("mesh-proxy"),
            &args,
        ));
    }
    let app_args: Vec<String> = [
        "serve",
        "b-1",
        "--http",
        "0.0.0.0:8080",
        "--greet",
        "0.0.0.0:2525",
        "--greet",
        &format!("0.0.0.0:{EXCLUDED}"),
        "--upgrade",
        "0.0.0.0:8081",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    running.push(c.spawn(&c.b, APP_UID, "app-b", &bin("mesh-netns-app"), &app_args));
    for ip in [A_IP, B_IP] {
        let url = format!("http://{ip}:15000/ready");
        mesh_tests::eventually(
            &format!("sidecar at {ip} ready"),
            Duration::from_secs(15),
            || {
                let url = url.clone();
                async move {
                    mesh_tests::http::get_status(&url)
                        .await
                        .filter(|s| *s == 200)
                }
            },
        )
        .await;
    }
    let logs = || {
        running
            .iter()
            .map(|r| format!("--- {}\n{}", r.1.display(), r.log()))
            .collect::<String>()
    };

    // 1. HTTP to the service's virtual IP, no proxy settings: captured, routed by
    //    Host (the cluster IP is one of the service's domains), mutual TLS.
    let url = format!("http://{B_VIP}/hello");
    let out = mesh_tests::eventually("HTTP through capture", Duration::from_secs(10), || {
        let out = c.app(&c.a, &["get", &url]);
        async move { (out.status.success() && text(&out.stdout).starts_with("200 ")).then_some(out) }
    })
    .await;
    let body = text(&out.stdout);
    assert!(body.contains("\"server\":\"b-1\""), "{body}");
    assert!(body.contains("\"path\":\"/hello\""), "{body}");
    assert!(
        body.contains("\"mesh_headers\":[]"),
        "hop headers reach the app: {body}"
    );
    let (ma, mb) = (metrics(A_IP).await, metrics(B_IP).await);
    let http = [
        "source_workload=\"a-1\"",
        "destination_service=\"b.default.svc.cluster.local\"",
        "destination_workload=\"b-1\"",
        "response_code=\"200\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let source = [&http[..], &["reporter=\"source\""]].concat();
    let destination = [
        &http[..],
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/a\"",
        ],
    ]
    .concat();
    assert!(
        sample(&ma, "mesh_requests_total", &source) >= 1.0,
        "{ma}\n{}",
        logs()
    );
    assert!(
        sample(&mb, "mesh_requests_total", &destination) >= 1.0,
        "{mb}\n{}",
        logs()
    );

    // 2. An opaque port with a server-speaks-first protocol: the client sends
    //    nothing until the greeting, then half-closes; one mTLS connection.
    let vip = format!("{B_VIP}:2525");
    let out = c.app(&c.a, &["greet", &vip, "hello"]);
    assert!(out.status.success(), "{}{}", text(&out.stderr), logs());
    assert_eq!(text(&out.stdout), "220 b-1 ready\r\ngot hello\r\n");
    let tcp = [
        "source_workload=\"a-1\"",
        "destination_service=\"b.default.svc.cluster.local\"",
        "destination_workload=\"b-1\"",
        "request_protocol=\"tcp\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let tcp_source = [&tcp[..], &["reporter=\"source\""]].concat();
    let tcp_destination = [
        &tcp[..],
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/a\"",
        ],
    ]
    .concat();
    // The client saw the end of the stream; the sidecars count the close as
    // their copy loops finish, just after.
    let (ma, mb) = mesh_tests::eventually(
        "both sidecars closed the connection",
        Duration::from_secs(5),
        || async {
            let (ma, mb) = (metrics(A_IP).await, metrics(B_IP).await);
            let closed = sample(&ma, "mesh_tcp_connections_closed_total", &tcp_source)
                + sample(&mb, "mesh_tcp_connections_closed_total", &tcp_destination);
            (closed >= 2.0).then_some((ma, mb))
        },
    )
    .await;
    for (m, labels) in [(&ma, &tcp_source), (&mb, &tcp_destination)] {
        assert_eq!(
            sample(m, "mesh_tcp_connections_opened_total", labels),
            1.0,
            "{m}"
        );
        assert_eq!(
            sample(m, "mesh_tcp_connections_closed_total", labels),
            1.0,
            "{m}"
        );
        // "hello" from the client; greeting and answer back.
        assert_eq!(
            sample(m, "mesh_tcp_received_bytes_total", labels),
            5.0,
            "{m}"
        );
        assert_eq!(
            sample(m, "mesh_tcp_sent_bytes_total", labels),
            ("220 b-1 ready\r\n".len() + "got hello\r\n".len()) as f64,
            "{m}"
        );
    }

    // 3. An HTTP/1.1 Upgrade (WebSocket) through both sidecars: 101, then the
    //    upgraded bytes both ways, over its own mutual-TLS connection.
    let ws = format!("{B_VIP}:8081");
    let out = c.app(&c.a, &["upgrade", &ws, &ws, "ping"]);
    assert!(out.status.success(), "{}{}", text(&out.stderr), logs());
    assert_eq!(
        text(&out.stdout),
        "HTTP/1.1 101 Switching Protocols\nPING",
        "{}",
        logs()
    );
    let mb = metrics(B_IP).await;
    let upgraded = [
        "reporter=\"destination\"",
        "source_workload=\"a-1\"",
        "response_code=\"101\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(sample(&mb, "mesh_requests_total", &upgraded), 1.0, "{mb}");

    // 4. An excluded port bypasses both sidecars: it works, and neither counts it.
    let opened = |m: &str| sample(m, "mesh_tcp_connections_opened_total", &[]);
    let (ma, mb) = (metrics(A_IP).await, metrics(B_IP).await);
    let before = (opened(&ma), opened(&mb));
    let direct = format!("{B_IP}:{EXCLUDED}");
    let out = c.app(&c.a, &["greet", &direct, "direct"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "220 b-1 ready\r\ngot direct\r\n");
    let (ma, mb) = (metrics(A_IP).await, metrics(B_IP).await);
    assert_eq!(
        (opened(&ma), opened(&mb)),
        before,
        "the excluded port was proxied"
    );
    drop(running);
}
