//! Observability end to end, with real processes on loopback: `meshctl proxy-status`
//! shows a NACKing proxy as ERROR with its reason and forgets disconnected ones;
//! `meshctl stat` turns a known traffic pattern into the expected numbers, scraping
//! the sidecars and through a real Prometheus; and every PromQL expression of every
//! Grafana dashboard in deploy/grafana returns data from that Prometheus.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mesh_tests::TestDir;
use mesh_tests::http::{Upstream, get_via_proxy};
use mesh_tests::process::{Controller, Proc, Sidecar, bin};
use mesh_tests::prometheus::Prometheus;
use mesh_tests::xds::{Sotw, node};
use mesh_tests::{eventually, mesh_yaml, unique_ip};
use mesh_xds::types::ENDPOINT;
use serde_json::Value;

const CATALOG_FQDN: &str = "catalog.default.svc.cluster.local";
const FRONTEND_FQDN: &str = "frontend.default.svc.cluster.local";
const NACK_REASON: &str = "endpoint 1 is unacceptable";
const WAIT: Duration = Duration::from_secs(30);

/// Runs `meshctl args`; its stdout, or a panic with its stderr when it fails.
async fn meshctl(args: &[&str]) -> String {
    let out = tokio::process::Command::new(bin("meshctl"))
        .args(args)
        .output()
        .await
        .expect("run meshctl");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "meshctl {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `meshctl <args> -o json`, parsed.
async fn meshctl_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = meshctl(&all).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("meshctl {all:?}: not JSON ({e}): {out}"))
}

/// The object in a JSON array whose `key` is `value`.
fn find<'a>(rows: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    rows.as_array()?.iter().find(|r| r[key] == value)
}

/// A raw ADS stream as `workload` that subscribes to catalog's endpoints and NACKs
/// them, as a proxy that cannot apply its config does.
async fn nacking_stream(xds_url: &str, workload: &str) -> Sotw {
    let mut stream = Sotw::open(xds_url).await;
    let names = vec![format!("{CATALOG_FQDN}:8080")];
    stream
        .send(DiscoveryRequest {
            node: Some(node(workload)),
            type_url: ENDPOINT.into(),
            resource_names: names.clone(),
            ..Default::default()
        })
        .await;
    let eds = stream.recv().await;
    stream
        .send(DiscoveryRequest {
            type_url: ENDPOINT.into(),
            resource_names: names,
            response_nonce: eds.nonce,
            error_detail: Some(RpcStatus {
                code: 3,
                message: NACK_REASON.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    stream
}

/// A controller on a mesh of `frontend-1` and `catalog-1` (plaintext), with their
/// addresses; the sidecars are the test's to start.
async fn frontend_and_catalog(tag: &str) -> (TestDir, Controller, IpAddr, IpAddr) {
    let dir = TestDir::new(tag);
    let (frontend_ip, catalog_ip) = (unique_ip(), unique_ip());
    let file = dir.0.join("mesh.yaml");
    let yaml = mesh_yaml(
        &[("frontend", 8080), ("catalog", 8080)],
        &[
            ("frontend-1", "frontend", frontend_ip, 8080),
            ("catalog-1", "catalog", catalog_ip, 8080),
        ],
    );
    std::fs::write(&file, yaml).unwrap();
    let controller = Controller::start(&file, &dir.0).await;
    (dir, controller, frontend_ip, catalog_ip)
}

#[tokio::test]
async fn proxy_status_shows_a_nack_with_its_reason_and_forgets_disconnected_proxies() {
    let (dir, controller, frontend_ip, _) = frontend_and_catalog("status").await;
    let admin = format!("http://{}", controller.admin);
    let mut frontend = Sidecar::start(
        "frontend-1",
        frontend_ip,
        &controller.xds_url(),
        &[],
        &dir.0,
    );
    frontend.wait_ready().await;
    let nacker = nacking_stream(&controller.xds_url(), "catalog-1").await;

    let rows = eventually(
        "the NACK and the synced sidecar in proxy-status",
        WAIT,
        || async {
            let rows = meshctl_json(&["proxy-status", "--controller", &admin]).await;
            let nacked = find(&rows, "proxy", "catalog-1.default")?;
            let synced = find(&rows, "proxy", "frontend-1.default")?;
            (nacked["status"]["EDS"] == "ERROR"
                && synced["status"]["CDS"] == "SYNCED"
                && synced["status"]["LDS"] == "SYNCED")
                .then(|| rows.clone())
        },
    )
    .await;
    let nacked = find(&rows, "proxy", "catalog-1.default").unwrap();
    assert_eq!(nacked["errors"]["EDS"], NACK_REASON, "{rows}");
    assert_eq!(nacked["workload"], "catalog-1");
    assert_eq!(nacked["namespace"], "default");
    // Only EDS was ever asked for on the raw stream.
    assert_eq!(nacked["status"]["CDS"], "NOT SENT", "{rows}");
    let synced = find(&rows, "proxy", "frontend-1.default").unwrap();
    assert!(synced["errors"].as_object().unwrap().is_empty(), "{rows}");
    assert_ne!(synced["version"], "-", "{rows}");

    // The table: a row per proxy under the header, the reason below it.
    let table = meshctl(&["proxy-status", "--controller", &admin]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "PROXY",
            "WORKLOAD",
            "NAMESPACE",
            "CDS",
            "LDS",
            "EDS",
            "RDS",
            "SDS",
            "VERSION",
            "AGE"
        ]
    );
    let nacked_line = table
        .lines()
        .find(|l| l.starts_with("catalog-1.default "))
        .unwrap_or_else(|| panic!("no catalog-1 row:\n{table}"));
    assert!(nacked_line.contains("ERROR"), "{table}");
    assert!(
        table.contains(&format!("  catalog-1.default EDS: {NACK_REASON}\n")),
        "{table}"
    );

    // Disconnected proxies disappear: first the raw stream, then the sidecar.
    drop(nacker);
    eventually("the closed stream gone from proxy-status", WAIT, || async {
        let rows = meshctl_json(&["proxy-status", "--controller", &admin]).await;
        (find(&rows, "proxy", "catalog-1.default").is_none()).then_some(())
    })
    .await;
    frontend.proc.kill().await;
    eventually(
        "the killed sidecar gone from proxy-status",
        WAIT,
        || async {
            let rows = meshctl_json(&["proxy-status", "--controller", &admin]).await;
            (rows.as_array()?.is_empty()).then_some(())
        },
    )
    .await;
    let table = meshctl(&["proxy-status", "--controller", &admin]).await;
    assert_eq!(table.trim(), format!("no proxies connected to {admin}"));
}

/// Sends `ok` GETs of `/items` and `failing` GETs of `/status/500` to `url_base`
/// through the sidecar at `proxy`, and checks each got what the pattern says.
async fn send_pattern(proxy: &str, url_base: &str, ok: usize, failing: usize) {
    for i in 0..ok + failing {
        let (path, expect) = if i < failing {
            // 500, not 503: the default retry policy retries 503s, and each
            // retry would be one more request at the destination.
            ("/status/500", 500)
        } else {
            ("/items", 200)
        };
        let got = get_via_proxy(proxy, &format!("{url_base}{path}")).await;
        assert_eq!(
            got.as_ref().map(|r| r.0),
            Some(expect),
            "{url_base}{path}: {got:?}"
        );
    }
}

/// `(requests, non-5xx requests)` of `service` as `meshctl stat` scrapes them.
async fn scraped_totals(admin: &str, service: &str) -> (f64, f64) {
    let rows = meshctl_json(&["stat", "--controller", admin, "--sample", "1ms"]).await;
    let row = find(&rows, "name", service).unwrap_or_else(|| panic!("{service} in {rows}"));
    let requests = number(&row["requests"]);
    (requests, (requests * number(&row["success"])).round())
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test]
async fn stat_scraping_the_sidecars_matches_a_known_traffic_pattern() {
    let (dir, controller, frontend_ip, catalog_ip) = frontend_and_catalog("stat").await;
    let admin = format!("http://{}", controller.admin);
    let _upstream = Upstream::start("catalog-1", (catalog_ip, 8080).into()).await;
    let frontend = Sidecar::start(
        "frontend-1",
        frontend_ip,
        &controller.xds_url(),
        &[],
        &dir.0,
    );
    let catalog = Sidecar::start("catalog-1", catalog_ip, &controller.xds_url(), &[], &dir.0);
    frontend.wait_ready().await;
    catalog.wait_ready().await;
    // The sidecar is ready before it has the route to catalog: wait for a success,
    // and count what the warm-up left.
    eventually("a route to catalog", WAIT, || async {
        get_via_proxy(&frontend.outbound(), "http://catalog.default:8080/warmup")
            .await
            .filter(|r| r.0 == 200)
    })
    .await;
    let (base, base_good) = scraped_totals(&admin, "catalog.default").await;
    // 100 requests, 10 failing.
    send_pattern(&frontend.outbound(), "http://catalog.default:8080", 90, 10).await;
    let (total, good) = (base + 100.0, base_good + 90.0);

    let rows = meshctl_json(&["stat", "--controller", &admin, "--sample", "1s"]).await;
    let row = find(&rows, "name", "catalog.default").unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(number(&row["requests"]), total, "{row}");
    assert!(
        (number(&row["success"]) - good / total).abs() < 0.005,
        "{row}"
    );
    assert_eq!(row["meshed"], 1, "{row}");
    // Nothing was sent while meshctl sampled.
    assert_eq!(number(&row["rps"]), 0.0, "{row}");
    for q in ["p50", "p95", "p99"] {
        assert!(number(&row[q]) > 0.0, "{q}: {row}");
    }
    assert!(number(&row["tcp_connections"]) >= 0.0, "{row}");
    assert_eq!(number(&row["mtls"]), 0.0, "plaintext mesh: {row}");
    // Only catalog received requests.
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");

    let rows = meshctl_json(&["stat", "workloads", "-n", "default", "--controller", &admin]).await;
    let row = find(&rows, "name", "catalog-1.default").unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(number(&row["requests"]), total, "{row}");
    assert!(
        (number(&row["success"]) - good / total).abs() < 0.005,
        "{row}"
    );
    let rows = meshctl_json(&["stat", "-n", "elsewhere", "--controller", &admin]).await;
    assert_eq!(rows, serde_json::json!([]));

    let table = meshctl(&["stat", "--controller", &admin]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "SERVICE", "MESHED", "REQUESTS", "SUCCESS", "RPS", "P50", "P95", "P99", "TCP", "MTLS"
        ]
    );
    let line: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("catalog.default "))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .collect();
    let percent = format!("{:.2}%", good / total * 100.0);
    assert_eq!(
        &line[1..4],
        ["1", &format!("{total}"), percent.as_str()],
        "{table}"
    );
}

/// One meshed workload of the Prometheus test: its sidecar and what it runs.
struct Workload {
    name: &'static str,
    ip: IpAddr,
    sidecar: Sidecar,
    _app: Option<Proc>,
    _upstream: Option<Upstream>,
}

/// The dashboard variables' values in the test mesh.
const VARIABLES: [(&str, &str); 6] = [
    ("namespace", "default"),
    ("service", FRONTEND_FQDN),
    ("workload", "frontend-1"),
    // A window covering the whole test: every rate sees all its traffic.
    ("__rate_interval", "5m"),
    ("__range", "5m"),
    ("__interval", "1m"),
];

/// Replaces `$name` and `${name}` by the test's values, longest names first so
/// that `$__range` is not read as `$__r...`.
fn substitute(expr: &str) -> String {
    let mut vars = VARIABLES.to_vec();
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_string();
    for (name, value) in vars {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// Every `(dashboard file, panel title, refId, expr)` in deploy/grafana.
fn dashboard_queries() -> Vec<(String, String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "dashboards in {}: {files:?}",
        dir.display()
    );
    let mut out = Vec::new();
    for file in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let mut panels: Vec<&Value> = Vec::new();
        for p in d["panels"].as_array().unwrap() {
            panels.push(p);
            panels.extend(p["panels"].as_array().into_iter().flatten());
        }
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    name.clone(),
                    p["title"].as_str().unwrap_or("?").to_string(),
                    t["refId"].as_str().unwrap_or("?").to_string(),
                    t["expr"]
                        .as_str()
                        .expect("every target has an expr")
                        .to_string(),
                ));
            }
        }
        // Variables: every label_values query must offer the value the test uses.
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(q) = v["query"]["query"].as_str() {
                out.push((
                    name.clone(),
                    format!("variable {}", v["name"].as_str().unwrap()),
                    "label_values".into(),
                    q.to_string(),
                ));
            }
        }
    }
    out
}

/// `label_values(SELECTOR, LABEL)` -> (selector, label).
fn label_values(query: &str) -> Option<(&str, &str)> {
    let inner = query.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim(), label.trim()))
}

#[tokio::test]
async fn real_prometheus_answers_every_dashboard_query_and_stat_from_a_live_mesh() {
    let Some(prometheus_bin) = mesh_tests::prometheus::binary() else {
        eprintln!(
            "SKIPPED: no Prometheus (install the Debian package `prometheus`, or set MESH_PROMETHEUS)"
        );
        return;
    };
    let dir = TestDir::new("prometheus");
    let ips: Vec<IpAddr> = (0..3).map(|_| unique_ip()).collect();
    let file = dir.0.join("mesh.yaml");
    let services = [("frontend", 8080), ("catalog", 8080)];
    let members = [
        ("loadgen-1", "loadgen", ips[0], 8080),
        ("frontend-1", "frontend", ips[1], 8080),
        ("catalog-1", "catalog", ips[2], 8080),
    ];
    std::fs::write(&file, mesh_yaml(&services, &members)).unwrap();
    let controller = Controller::start(&file, &dir.0).await;
    let mut workloads = Vec::new();
    for (name, app, ip, _) in members {
        let sidecar = Sidecar::start_secure(name, app, ip, &controller, &[], &dir.0).await;
        sidecar.wait_ready().await;
        let (app_proc, upstream) = match name {
            "frontend-1" => {
                let args: Vec<String> = [
                    "demo-app",
                    "--service",
                    "frontend",
                    "--listen",
                    &format!("{ip}:8080"),
                    "--call",
                    "http://catalog.default:8080/items",
                ]
                .map(String::from)
                .to_vec();
                let proxy = sidecar.outbound();
                let env = [("http_proxy", proxy.as_str()), ("MESH_WORKLOAD", name)];
                let app =
                    Proc::start_with_env("app-frontend-1", &bin("meshctl"), &args, &env, &dir.0);
                (Some(app), None)
            }
            "catalog-1" => (None, Some(Upstream::start(name, (ip, 8080).into()).await)),
            _ => (None, None),
        };
        workloads.push(Workload {
            name,
            ip,
            sidecar,
            _app: app_proc,
            _upstream: upstream,
        });
    }
    let _nacker = nacking_stream(&controller.xds_url(), "loadgen-1").await;
    // Prometheus with the local mesh's scrape config and the targets `meshctl up`
    // would write, scraping every second.
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/local.yml"),
    )
    .unwrap();
    assert!(config.contains("scrape_interval: 5s"), "{config}");
    std::fs::write(
        dir.0.join("prometheus.yml"),
        config.replace("scrape_interval: 5s", "scrape_interval: 1s"),
    )
    .unwrap();
    let controller_targets =
        serde_json::json!([{"targets": [controller.admin.to_string()], "labels": {}}]);
    let proxy_targets: Vec<Value> = workloads
        .iter()
        .map(|w| serde_json::json!({"targets": [format!("{}:15000", w.ip)], "labels": {"namespace": "default", "workload": w.name}}))
        .collect();
    std::fs::write(
        dir.0.join("controller-targets.json"),
        controller_targets.to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.0.join("proxy-targets.json"),
        Value::from(proxy_targets).to_string(),
    )
    .unwrap();
    let prometheus =
        Prometheus::start(&prometheus_bin, &dir.0.join("prometheus.yml"), &dir.0).await;
    eventually("Prometheus scraping all four targets", WAIT, || async {
        (prometheus.scalar("count(up == 1)").await? == 4.0).then_some(())
    })
    .await;

    // A registry change while Prometheus watches: pushes, ACKs and convergence it sees.
    let converged = "sum(mesh_xds_convergence_seconds_count)";
    let before = prometheus.scalar(converged).await.unwrap_or(0.0);
    let mut changed = services.to_vec();
    changed.push(("orders", 8080));
    std::fs::write(&file, mesh_yaml(&changed, &members)).unwrap();
    eventually("Prometheus seeing the change converge", WAIT, || async {
        (prometheus.scalar(converged).await? > before).then_some(())
    })
    .await;

    // The pattern, per round: loadgen sends catalog 9 good and 1 failing request and
    // frontend 2 (each calls catalog once). Ten rounds: catalog gets 120, 110 good.
    let loadgen = &workloads[0].sidecar;
    let ten_rounds = || async {
        for _ in 0..10 {
            send_pattern(&loadgen.outbound(), "http://catalog.default:8080", 9, 1).await;
            send_pattern(&loadgen.outbound(), "http://frontend.default:8080", 2, 0).await;
        }
    };
    eventually("routes to catalog and frontend", WAIT, || async {
        let catalog =
            get_via_proxy(&loadgen.outbound(), "http://catalog.default:8080/items").await?;
        let frontend = get_via_proxy(&loadgen.outbound(), "http://frontend.default:8080/").await?;
        (catalog.0 == 200 && frontend.0 == 200).then_some(())
    })
    .await;
    // A first ten rounds, held by Prometheus before the measured ten. `increase`
    // counts from a series' first sample in its window and extrapolates to the
    // window's edges, but never below a counter's zero: with every series already
    // at least one pattern's worth high, every series of catalog (one target, so the
    // same sample times) is extrapolated alike, and the shares come out exact.
    ten_rounds().await;
    let admin = format!("http://{}", controller.admin);
    let (base, base_good) = scraped_totals(&admin, "catalog.default").await;
    let catalog_total = r#"sum(mesh_requests_total{reporter="destination",destination_service="catalog.default.svc.cluster.local"})"#;
    eventually("Prometheus holding the first rounds", WAIT, || async {
        (prometheus.scalar(catalog_total).await? == base).then_some(())
    })
    .await;
    // `meshctl stat --prometheus` looks at a window that starts here; two scrapes
    // fall inside it before the measured rounds begin.
    let window_start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ten_rounds().await;
    let (total, good) = (base + 120.0, base_good + 110.0);
    eventually("Prometheus seeing every request", WAIT, || async {
        (prometheus.scalar(catalog_total).await? == total).then_some(())
    })
    .await;
    eventually("Prometheus holding the NACK", WAIT, || async {
        (prometheus.scalar("sum(mesh_xds_rejects_total)").await? > 0.0).then_some(())
    })
    .await;

    // meshctl stat, both ways. Scraping: totals since start.
    let rows = meshctl_json(&["stat", "--controller", &admin, "--sample", "1s"]).await;
    let catalog = find(&rows, "name", "catalog.default").unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(number(&catalog["requests"]), total, "{catalog}");
    assert!(
        (number(&catalog["success"]) - good / total).abs() < 0.005,
        "{catalog}"
    );
    assert_eq!(number(&catalog["mtls"]), 1.0, "{catalog}");
    // Through Prometheus: the ten rounds, in whole seconds not reaching back before
    // `window_start` (see there).
    let window = format!("{}s", window_start.elapsed().as_secs() - 1);
    let rows = meshctl_json(&["stat", "--prometheus", &prometheus.url, "--window", &window]).await;
    let catalog = find(&rows, "name", "catalog.default").unwrap_or_else(|| panic!("{rows}"));
    assert!(
        (number(&catalog["success"]) - 110.0 / 120.0).abs() < 0.005,
        "{catalog}"
    );
    // `increase` extrapolates towards the window's edges: at least the 120.
    assert!(number(&catalog["requests"]) >= 119.9, "{catalog}");
    assert_eq!(catalog["meshed"], 1, "{catalog}");
    assert_eq!(number(&catalog["mtls"]), 1.0, "{catalog}");
    assert!(number(&catalog["rps"]) > 0.0, "{catalog}");
    for q in ["p50", "p95", "p99"] {
        assert!(number(&catalog[q]) > 0.0, "{q}: {catalog}");
    }
    let frontend = find(&rows, "name", "frontend.default").unwrap_or_else(|| panic!("{rows}"));
    assert!(
        (number(&frontend["success"]) - 1.0).abs() < 1e-9,
        "{frontend}"
    );
    assert!(frontend["tcp_connections"].is_number(), "{frontend}");
    let rows = meshctl_json(&["stat", "workloads", "--prometheus", &prometheus.url]).await;
    assert!(find(&rows, "name", "catalog-1.default").is_some(), "{rows}");

    // Every dashboard expression returns data (and every variable offers its value).
    let mut failures = Vec::new();
    let queries = dashboard_queries();
    for (dashboard, panel, ref_id, expr) in &queries {
        let what = format!("{dashboard} / {panel} / {ref_id}: {expr}");
        let query = substitute(expr);
        assert!(!query.contains('$'), "unsubstituted variable in {what}");
        if let Some((selector, label)) = label_values(&query) {
            let url = format!(
                "{}/api/v1/label/{label}/values?match[]={}",
                prometheus.url,
                mesh_tests::prometheus::encode(selector)
            );
            let (_, body) = mesh_tests::http::get(&url)
                .await
                .expect("Prometheus answers");
            let values: Value = serde_json::from_str(&body).unwrap();
            let wanted = VARIABLES
                .iter()
                .find(|(n, _)| panel.ends_with(n))
                .map(|(_, v)| *v);
            let offered = values["data"].as_array().cloned().unwrap_or_default();
            if !offered
                .iter()
                .any(|v| Some(v.as_str().unwrap_or("")) == wanted)
            {
                failures.push(format!("{what} offers {offered:?}, not {wanted:?}"));
            }
            continue;
        }
        let result = prometheus.query(&query).await;
        let has_data = match &result {
            Ok(series) => series.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            }),
            Err(e) => {
                failures.push(format!("{what} failed: {e}"));
                continue;
            }
        };
        if !has_data {
            failures.push(format!("{what} returned no data: {result:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries failed:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );
}
