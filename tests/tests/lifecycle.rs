//! The sidecar's lifecycle with real processes: `mesh-proxy wait-ready` holds an
//! app back until its sidecar is ready, and SIGTERM drains: the listener stops
//! taking connections, requests under way finish, and the process exits within
//! its grace period even when a request never ends.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_tests::TestDir;
use mesh_tests::http::get_via_proxy;
use mesh_tests::process::{Controller, Proc, Sidecar, bin};
use mesh_tests::{eventually, mesh_yaml, unique_ip};
use tokio::sync::{mpsc, watch};

/// An app that reports each request it receives and answers only once released
/// (`release` set to true), so a test can hold requests in flight.
async fn held_app(addr: SocketAddr) -> (mpsc::UnboundedReceiver<String>, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (release, release_rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen_tx, release_rx) = (seen_tx.clone(), release_rx.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let (seen_tx, mut release_rx) = (seen_tx.clone(), release_rx.clone());
                    async move {
                        let _ = seen_tx.send(req.uri().path().to_string());
                        let _ = release_rx.wait_for(|r| *r).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(format!("done {}", req.uri().path())),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (seen, release)
}

/// `client-1` calling `slow-1` (the held app), both with sidecars and identities.
struct Mesh {
    _dir: TestDir,
    _controller: Controller,
    client: Sidecar,
    server: Sidecar,
    seen: mpsc::UnboundedReceiver<String>,
    release: watch::Sender<bool>,
}

impl Mesh {
    async fn start(tag: &str, sidecar_flags: &[&str]) -> Mesh {
        let dir = TestDir::new(tag);
        let (client_ip, server_ip) = (unique_ip(), unique_ip());
        let file = dir.0.join("mesh.yaml");
        std::fs::write(
            &file,
            mesh_yaml(
                &[("client", 8080), ("slow", 8080)],
                &[
                    ("client-1", "client", client_ip, 8080),
                    ("slow-1", "slow", server_ip, 8080),
                ],
            ),
        )
        .unwrap();
        let controller = Controller::start(&file, &dir.0).await;
        let (seen, release) = held_app((server_ip, 8080).into()).await;
        let client = Sidecar::start_secure(
            "client-1",
            "client",
            client_ip,
            &controller,
            sidecar_flags,
            &dir.0,
        )
        .await;
        let server = Sidecar::start_secure(
            "slow-1",
            "slow",
            server_ip,
            &controller,
            sidecar_flags,
            &dir.0,
        )
        .await;
        client.wait_ready().await;
        server.wait_ready().await;
        Mesh {
            _dir: dir,
            _controller: controller,
            client,
            server,
            seen,
            release,
        }
    }

    /// Starts a request through the client sidecar; resolves to its answer.
    fn call(&self, path: &str) -> tokio::task::JoinHandle<Option<(u16, String)>> {
        let (proxy, url) = (
            self.client.outbound(),
            format!("http://slow.default:8080{path}"),
        );
        tokio::spawn(async move { get_via_proxy(&proxy, &url).await })
    }

    /// Waits until the app holds the request for `path`.
    async fn app_holds(&mut self, path: &str) {
        let got = tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
            .await
            .expect("the request reached the app")
            .expect("app running");
        assert_eq!(got, path);
    }
}

fn sigterm(proc: &Proc) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proc.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

async fn exits_within(proc: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    tokio::time::timeout(limit, proc.child.wait())
        .await
        .unwrap_or_else(|_| panic!("{} still running after {limit:?}", proc.name))
        .expect("wait")
}

/// Whether a TCP connection to `addr` is refused (the listener is closed).
async fn refused(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

/// Which sidecar of the pair a test stops.
#[derive(Clone, Copy)]
enum Side {
    /// The caller's: its outbound listener (15001) carries the request.
    Client,
    /// The callee's: its inbound listener (15006) carries the request.
    Server,
}

/// SIGTERM on one sidecar while a request it carries is held by the app: the
/// listener closes at once, the request still completes, the process exits 0.
async fn sigterm_drains(side: Side) {
    let tag = match side {
        Side::Client => "client",
        Side::Server => "server",
    };
    let mut m = Mesh::start(tag, &[]).await;
    let path = format!("/in-flight-{tag}");
    let call = m.call(&path);
    m.app_holds(&path).await;
    let (sidecar, port) = match side {
        Side::Client => (&mut m.client, 15001),
        Side::Server => (&mut m.server, 15006),
    };
    sigterm(&sidecar.proc);
    let listener = SocketAddr::new(sidecar.ip, port);
    eventually(
        &format!("{tag} sidecar's listener {listener} closed"),
        Duration::from_secs(5),
        || async { refused(listener).await.then_some(()) },
    )
    .await;
    m.release.send_replace(true);
    let (status, body) = call.await.unwrap().expect("an answer");
    assert_eq!((status, body), (200, format!("done {path}")));
    let sidecar = match side {
        Side::Client => &mut m.client,
        Side::Server => &mut m.server,
    };
    let exit = exits_within(&mut sidecar.proc, Duration::from_secs(10)).await;
    let log = sidecar.proc.log_text();
    assert!(exit.success(), "clean exit: {exit}\n{log}");
    assert!(log.contains("signal received"), "{log}");
}

#[tokio::test]
async fn sigterm_on_the_server_sidecar_lets_requests_under_way_finish() {
    sigterm_drains(Side::Server).await;
}

#[tokio::test]
async fn sigterm_on_the_client_sidecar_lets_requests_under_way_finish() {
    sigterm_drains(Side::Client).await;
}

#[tokio::test]
async fn a_request_that_never_ends_does_not_hold_shutdown_past_the_grace_period() {
    let mut m = Mesh::start("grace", &["--drain-seconds", "1"]).await;
    let call = m.call("/forever");
    m.app_holds("/forever").await;
    sigterm(&m.server.proc);
    // Never released: the sidecar gives up after its 1 s grace period.
    let exit = exits_within(&mut m.server.proc, Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}");
    let log = m.server.proc.log_text();
    assert!(log.contains("grace period over"), "{log}");
    let answer = call.await.unwrap();
    assert_ne!(
        answer.as_ref().map(|(s, _)| *s),
        Some(200),
        "the cut request cannot have succeeded: {answer:?}"
    );
}

/// Runs `mesh-proxy wait-ready` with `args`; the child, stdout and stderr piped.
fn wait_ready(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(bin("mesh-proxy"))
        .arg("wait-ready")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start mesh-proxy wait-ready")
}

#[tokio::test]
async fn wait_ready_returns_only_once_the_sidecar_is_ready() {
    let dir = TestDir::new("wait");
    let ip = unique_ip();
    let file = dir.0.join("mesh.yaml");
    std::fs::write(
        &file,
        mesh_yaml(&[("web", 8080)], &[("web-1", "web", ip, 8080)]),
    )
    .unwrap();
    let admin = format!("{ip}:15000");
    // Started before the sidecar exists, as a postStart hook or wrapper would be.
    let mut waiter = wait_ready(&["--admin-addr", &admin, "--timeout", "30"]);
    let controller = Controller::start(&file, &dir.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait-ready must still wait: no sidecar yet"
    );
    let sidecar = Sidecar::start_secure("web-1", "web", ip, &controller, &[], &dir.0).await;
    let out = tokio::time::timeout(Duration::from_secs(30), waiter.wait_with_output())
        .await
        .expect("wait-ready finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ready after"), "{stdout}");
    // It returned because the sidecar really is ready.
    let status = mesh_tests::http::get_status(&sidecar.admin_url("/ready")).await;
    assert_eq!(status, Some(200));
}

#[tokio::test]
async fn wait_ready_gives_up_with_the_reason() {
    // A port nobody listens on: the sidecar never comes.
    let admin = mesh_tests::free_addr().to_string();
    let out = wait_ready(&["--admin-addr", &admin, "--timeout", "0.3"])
        .wait_with_output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not ready after 0.3s") && stderr.contains(&admin),
        "{stderr}"
    );
    let bad = wait_ready(&["--timeout", "never"])
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a bad flag is a usage error");
}
