//! Balancing and resilience against real upstream servers: a real sidecar fed by
//! an in-process ADS server, upstreams that can be told to be slow, answer an
//! error status, hold requests until released, or die; plain HTTP clients.
//!
//! Assertions are on counts and ratios with margins, never on how long
//! something took, so a noisy machine slows these tests down but does not fail
//! them.

mod fake_ads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use fake_ads::FakeAds;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_model::{Object, TrafficPolicy, parse_documents};
use mesh_proxy::{Proxy, ProxyArgs};
use mesh_xds::ResourceType;
use mesh_xds::any::pack;
use mesh_xds::{metadata, names, policy, resources};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const CAT: &str = "catalog.default.svc.cluster.local:8080";

/// What an upstream does with a request.
const OK: u32 = 0;
/// Answer 200 after `delay_ms`.
const SLOW: u32 = 1;
/// Answer `status` at once (after `delay_ms`).
const FAIL: u32 = 2;
/// Wait for a permit from `gate` before answering 200.
const HOLD: u32 = 3;

/// A real HTTP/1.1 server on its own port that counts what it receives.
struct Upstream {
    name: String,
    addr: SocketAddr,
    mode: AtomicU32,
    delay_ms: AtomicU64,
    status: AtomicU16,
    hits: AtomicU32,
    in_flight: AtomicU32,
    gate: Semaphore,
    tasks: std::sync::Mutex<JoinSet<()>>,
}

impl Upstream {
    async fn start(name: &str) -> Arc<Upstream> {
        Upstream::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_on(name: &str, addr: SocketAddr) -> Arc<Upstream> {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let up = Arc::new(Upstream {
            name: name.into(),
            addr: listener.local_addr().unwrap(),
            mode: AtomicU32::new(OK),
            delay_ms: AtomicU64::new(0),
            status: AtomicU16::new(200),
            hits: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            gate: Semaphore::new(0),
            tasks: Default::default(),
        });
        let server = up.clone();
        up.tasks.lock().unwrap().spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let up = server.clone();
                // Connections live in this task's set: aborting the server
                // resets every one of them, as a killed process would.
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let up = up.clone();
                        async move { Ok::<_, std::convert::Infallible>(up.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        up
    }

    async fn answer(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _ = req.into_body().collect().await;
        let delay = Duration::from_millis(self.delay_ms.load(Ordering::SeqCst));
        let mut status = 200;
        match self.mode.load(Ordering::SeqCst) {
            SLOW => tokio::time::sleep(delay).await,
            FAIL => {
                tokio::time::sleep(delay).await;
                status = self.status.load(Ordering::SeqCst);
            }
            HOLD => self.gate.acquire().await.unwrap().forget(),
            _ => {}
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut resp = hyper::Response::new(Full::new(Bytes::from(self.name.clone())));
        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        resp
    }

    fn set(&self, mode: u32, delay_ms: u64, status: u16) {
        self.delay_ms.store(delay_ms, Ordering::SeqCst);
        self.status.store(status, Ordering::SeqCst);
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and resets every open connection.
    fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

fn traffic_policy(spec: &str) -> TrafficPolicy {
    let text = format!(
        "apiVersion: mesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: catalog}}\nspec:\n  targetRef: {{name: catalog}}\n{spec}"
    );
    match parse_documents(&text, "test").unwrap().remove(0) {
        Object::TrafficPolicy(p) => p,
        other => panic!("{other:?}"),
    }
}

fn named<M: prost::Message + prost::Name>(name: &str, m: &M) -> (String, Any) {
    (name.to_string(), pack(m))
}

/// The endpoints, without sidecars (the proxy calls the apps directly), with
/// their weights.
fn cla(endpoints: &[(SocketAddr, u32)]) -> ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .map(|(addr, weight)| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(resources::socket_address(*addr)),
                ..Default::default()
            })),
            metadata: Some(metadata::mesh_metadata(vec![(
                resources::META_WORKLOAD,
                metadata::string(addr.to_string()),
            )])),
            load_balancing_weight: Some(UInt32Value { value: *weight }),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: CAT.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A sidecar whose only service is catalog with `policy`, over `endpoints`.
struct Mesh {
    ads: FakeAds,
    proxy: Proxy,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Mesh {
    async fn start(policy_spec: &str, endpoints: &[(SocketAddr, u32)]) -> Mesh {
        let tp = traffic_policy(policy_spec);
        let ads = FakeAds::new();
        let (xds, stop) = ads.serve("127.0.0.1:0".parse().unwrap()).await;
        let cluster: Cluster = resources::service_cluster_with(CAT, false, Some(&tp));
        let routes = RouteConfiguration {
            name: names::OUTBOUND.into(),
            virtual_hosts: vec![resources::service_virtual_host_with(
                CAT,
                names::service_domains(
                    "catalog",
                    "default",
                    "cluster.local",
                    8080,
                    "default",
                    None,
                ),
                &policy::route_policy(Some(&tp)),
            )],
            ..Default::default()
        };
        ads.set(
            ResourceType::Listener,
            vec![named("outbound", &resources::outbound_listener())],
        );
        ads.set(ResourceType::Cluster, vec![named(CAT, &cluster)]);
        ads.set(ResourceType::Route, vec![named("outbound", &routes)]);
        ads.set(ResourceType::Endpoint, vec![named(CAT, &cla(endpoints))]);
        let mut args = ProxyArgs::new("web-1", "default");
        args.xds_addr = format!("http://{xds}");
        args.outbound_addr = Some("127.0.0.1:0".parse().unwrap());
        args.inbound_addr = Some("127.0.0.1:0".parse().unwrap());
        args.admin_addr = Some("127.0.0.1:0".parse().unwrap());
        args.drain_seconds = 1;
        let proxy = mesh_proxy::start(args).await.unwrap();
        let mesh = Mesh {
            ads,
            proxy,
            _stop: stop,
        };
        for _ in 0..400 {
            if mesh.get(&[]).await.0 != 503 {
                return mesh;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the sidecar never routed catalog");
    }

    fn set_endpoints(&self, endpoints: &[(SocketAddr, u32)]) {
        self.ads
            .set(ResourceType::Endpoint, vec![named(CAT, &cla(endpoints))]);
    }

    /// GET catalog with extra headers: (status, body, headers).
    async fn get(&self, headers: &[(&str, &str)]) -> (u16, String, http::HeaderMap) {
        request(self.proxy.outbound_addr, "GET", "/", headers).await
    }

    async fn metrics(&self) -> String {
        request(self.proxy.admin_addr, "GET", "/metrics", &[])
            .await
            .1
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, http::HeaderMap) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "catalog:8080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

/// `workers` clients sending `each` requests: the statuses.
async fn load(mesh: &Arc<Mesh>, workers: usize, each: usize) -> Vec<u16> {
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let mesh = mesh.clone();
        set.spawn(async move {
            let mut statuses = Vec::with_capacity(each);
            for _ in 0..each {
                statuses.push(mesh.get(&[("x-test", "load")]).await.0);
            }
            statuses
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

fn metric(text: &str, name: &str, reason: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_most_load_away_from_a_slow_endpoint() {
    let fast1 = Upstream::start("fast-1").await;
    let fast2 = Upstream::start("fast-2").await;
    let slow = Upstream::start("slow").await;
    fast1.set(SLOW, 2, 200);
    fast2.set(SLOW, 2, 200);
    slow.set(SLOW, 150, 200);
    let mesh = Arc::new(
        Mesh::start(
            "  retries: {attempts: 0}\n",
            &[(fast1.addr, 1), (fast2.addr, 1), (slow.addr, 1)],
        )
        .await,
    );
    let statuses = load(&mesh, 6, 50).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let total = fast1.hits() + fast2.hits() + slow.hits();
    let share = f64::from(slow.hits()) / f64::from(total);
    eprintln!("slow endpoint: {} of {total} requests", slow.hits());
    // Random or round-robin choice would give the slow endpoint a third.
    assert!(
        share < 0.12,
        "slow endpoint got {} of {total} requests ({share:.2}); fast: {} and {}",
        slow.hits(),
        fast1.hits(),
        fast2.hits()
    );
    assert!(
        fast1.hits() > 50 && fast2.hits() > 50,
        "both fast endpoints used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_against_a_failing_upstream() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let eps = [(a.addr, 1), (b.addr, 1)];
    let attempts = "  outlierDetection: {consecutive5xxErrors: 1000000}\n  retries: {attempts: 5, retryOn: [\"503\"], budget: {percent: 20, minRetryConcurrency: 1}}\n";
    let mesh = Arc::new(Mesh::start(attempts, &eps).await);
    for up in [&a, &b] {
        up.set(FAIL, 20, 503);
    }
    let before = a.hits() + b.hits();
    let statuses = load(&mesh, 20, 10).await;
    assert!(
        statuses.iter().all(|&s| s == 503),
        "the failure passes through"
    );
    let received = a.hits() + b.hits() - before;
    // Unbudgeted, 200 requests with 5 retries each would be 1200 attempts.
    assert!(
        received <= 200 * 16 / 10,
        "the budget (20% of requests in flight) capped retries: upstream received {received}"
    );
    assert!(received > 200, "some retries were sent: {received}");
    let m = mesh.metrics().await;
    assert!(
        metric(&m, "mesh_retries_total", "budget_exhausted") > 0,
        "{m}"
    );

    // The same load with a budget that does not bind: every retry is sent.
    for up in [&a, &b] {
        up.set(OK, 0, 200);
    }
    let control = Arc::new(
        Mesh::start(
            &attempts.replace(
                "percent: 20, minRetryConcurrency: 1",
                "percent: 100, minRetryConcurrency: 1000",
            ),
            &eps,
        )
        .await,
    );
    for up in [&a, &b] {
        up.set(FAIL, 20, 503);
    }
    let before = a.hits() + b.hits();
    load(&control, 20, 10).await;
    let unbudgeted = a.hits() + b.hits() - before;
    eprintln!("200 requests: {received} attempts with the budget, {unbudgeted} without");
    assert!(unbudgeted >= 1100, "without a binding budget: {unbudgeted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_trips_with_a_reason_and_recovers() {
    let up = Upstream::start("held").await;
    let mesh = Arc::new(
        Mesh::start(
            "  retries: {attempts: 0}\n  connectionPool: {maxRequests: 2}\n",
            &[(up.addr, 1)],
        )
        .await,
    );
    up.set(HOLD, 0, 200);
    let mut held = JoinSet::new();
    for _ in 0..2 {
        let mesh = mesh.clone();
        held.spawn(async move { mesh.get(&[("x-test", "held")]).await.0 });
    }
    while up.in_flight.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..4 {
        let (status, body, headers) = mesh.get(&[("x-test", "over")]).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(headers["x-mesh-overloaded"], "max_requests");
        assert!(
            body.contains("circuit breaker open") && body.contains("max_requests (2)"),
            "{body}"
        );
    }
    up.gate.add_permits(2);
    while let Some(s) = held.join_next().await {
        assert_eq!(s.unwrap(), 200, "admitted requests complete");
    }
    up.set(OK, 0, 200);
    assert_eq!(mesh.get(&[("x-test", "after")]).await.0, 200, "recovered");
    let m = mesh.metrics().await;
    assert_eq!(
        metric(&m, "mesh_circuit_breaker_rejections_total", "max_requests"),
        4,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_bad_endpoint_and_restores_it() {
    let good1 = Upstream::start("good-1").await;
    let good2 = Upstream::start("good-2").await;
    let bad = Upstream::start("bad").await;
    let mesh = Mesh::start(
        "  loadBalancer: {simple: ROUND_ROBIN}\n  retries: {attempts: 0}\n  outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 4s, maxEjectionPercent: 50}\n",
        &[(good1.addr, 1), (good2.addr, 1), (bad.addr, 1)],
    )
    .await;
    bad.set(FAIL, 0, 500);
    let mut failures = 0;
    for _ in 0..30 {
        if mesh.get(&[("x-test", "a")]).await.0 == 500 {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "ejected after 3 consecutive 5xx");
    let hits = bad.hits();
    for _ in 0..20 {
        assert_eq!(mesh.get(&[("x-test", "b")]).await.0, 200);
    }
    assert_eq!(bad.hits(), hits, "no traffic while ejected");
    let m = mesh.metrics().await;
    assert_eq!(
        metric(&m, "mesh_outlier_ejections_total", "consecutive_5xx"),
        1,
        "{m}"
    );
    // Healthy again and its ejection time (4 s) over: it gets traffic back.
    bad.set(OK, 0, 200);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for _ in 0..30 {
        assert_eq!(mesh.get(&[("x-test", "c")]).await.0, 200);
    }
    assert!(
        bad.hits() >= hits + 5,
        "restored: {} after {hits}",
        bad.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_stick_by_cookie_and_header() {
    let ups = [
        Upstream::start("s-1").await,
        Upstream::start("s-2").await,
        Upstream::start("s-3").await,
    ];
    let eps: Vec<_> = ups.iter().map(|u| (u.addr, 1)).collect();
    let mesh = Mesh::start(
        "  loadBalancer: {consistentHash: {httpCookie: {name: session, path: /, ttl: 1h}}}\n",
        &eps,
    )
    .await;
    let mut owners = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let (status, first, headers) = mesh.get(&[("x-test", "new")]).await;
        assert_eq!(status, 200);
        let set = headers["set-cookie"].to_str().unwrap().to_string();
        assert!(
            set.contains("Max-Age=3600") && set.contains("Path=/"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_string();
        for _ in 0..10 {
            let (status, again, headers) = mesh.get(&[("cookie", &cookie)]).await;
            assert_eq!((status, &again), (200, &first), "sticks to {first}");
            assert!(headers.get("set-cookie").is_none(), "the client has one");
        }
        owners.insert(first);
    }
    assert!(
        owners.len() >= 2,
        "sessions spread over endpoints: {owners:?}"
    );

    let header = Mesh::start(
        "  loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n",
        &eps,
    )
    .await;
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..12 {
        let user = format!("user-{user}");
        let first = header.get(&[("x-user", &user)]).await.1;
        for _ in 0..5 {
            assert_eq!(header.get(&[("x-user", &user)]).await.1, first, "{user}");
        }
        owners.insert(first);
    }
    assert!(owners.len() >= 2, "{owners:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_weights_split_as_configured() {
    let heavy = Upstream::start("heavy").await;
    let light = Upstream::start("light").await;
    let mesh = Mesh::start(
        "  loadBalancer: {simple: ROUND_ROBIN}\n",
        &[(heavy.addr, 3), (light.addr, 1)],
    )
    .await;
    let (h0, l0) = (heavy.hits(), light.hits());
    for _ in 0..400 {
        assert_eq!(mesh.get(&[("x-test", "w")]).await.0, 200);
    }
    let share = f64::from(heavy.hits() - h0) / 400.0;
    assert!(
        (share - 0.75).abs() <= 0.03,
        "3:1 split, got {share:.3} ({} / {})",
        heavy.hits() - h0,
        light.hits() - l0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_answers_504_naming_it() {
    let up = Upstream::start("stuck").await;
    let mesh = Mesh::start("  timeouts: {request: 300ms}\n", &[(up.addr, 1)]).await;
    up.set(HOLD, 0, 200);
    let (status, body, headers) = mesh.get(&[("x-test", "t")]).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(headers["x-mesh-timeout"], "route");
    assert!(
        body.contains("request timeout of 300 ms exceeded"),
        "{body}"
    );
    up.gate.add_permits(10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_idempotent_request() {
    let mut ups = vec![
        Upstream::start("r-1").await,
        Upstream::start("r-2").await,
        Upstream::start("r-3").await,
    ];
    for u in &ups {
        u.set(SLOW, 3, 200);
    }
    let eps = |ups: &[Arc<Upstream>]| ups.iter().map(|u| (u.addr, 1)).collect::<Vec<_>>();
    let mesh = Arc::new(Mesh::start("", &eps(&ups)).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = JoinSet::new();
    // Three clients: the default budget's floor is three retries in flight.
    for _ in 0..3 {
        let (mesh, stop) = (mesh.clone(), stop.clone());
        clients.spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let method = if statuses.len() % 2 == 0 {
                    "GET"
                } else {
                    "PUT"
                };
                let addr = mesh.proxy.outbound_addr;
                statuses.push(request(addr, method, "/", &[("x-test", "roll")]).await.0);
            }
            statuses
        });
    }
    for i in 0..ups.len() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The process dies first (connections reset, connects refused); the
        // registry notices later, as when a pod crashes before its endpoint goes.
        ups[i].kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let replacement = Upstream::start(&format!("r-{}b", i + 1)).await;
        replacement.set(SLOW, 3, 200);
        ups[i] = replacement;
        mesh.set_endpoints(&eps(&ups));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut statuses = Vec::new();
    while let Some(s) = clients.join_next().await {
        statuses.extend(s.unwrap());
    }
    let failed: Vec<_> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(statuses.len() > 100, "load ran: {}", statuses.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    let m = mesh.metrics().await;
    assert!(
        metric(&m, "mesh_retries_total", "retried") > 0,
        "the restart needed retries: {m}"
    );
}
