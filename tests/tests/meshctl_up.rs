//! `meshctl up` on the embedded demo: every service serves traffic over mutual TLS
//! (STRICT), a killed sidecar is restarted while its app keeps running and certifies
//! again from its token file, `meshctl proxy-config ... secrets` and `meshctl check`
//! work against the running mesh, and nothing is left behind.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use mesh_tests::process::bin;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes: it runs nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// `started <what> <ns>/<name> at ... pid N` -> ("<what> <ns>/<name>", N)
fn started(line: &str) -> Option<(String, u32)> {
    let rest = line.strip_prefix("started ")?;
    let mut words = rest.split_whitespace();
    let what = format!("{} {}", words.next()?, words.next()?);
    let pid_at = rest.find(" pid ")?;
    let pid = rest[pid_at + 5..].split_whitespace().next()?.parse().ok()?;
    Some((what, pid))
}

/// The table rows of the last table printed: service -> (requests, success %, mTLS).
fn last_table(lines: &[String]) -> HashMap<String, (u64, f64, String)> {
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("SERVICE"))
        .expect("a table was printed");
    lines[start + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("stopping"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // SERVICE MESHED REQUESTS SUCCESS RPS P50 P95 P99 TCP MTLS
            let requests = cols.get(2)?.parse().ok()?;
            let success = cols.get(3)?.trim_end_matches('%').parse().ok()?;
            let mtls = cols.get(9)?.to_string();
            Some((cols[0].to_string(), (requests, success, mtls)))
        })
        .collect()
}

/// Catalog-1's sidecar admin address: the runner gives the demo's second workload
/// 127.0.1.2.
const CATALOG_1_ADMIN: &str = "127.0.1.2:15000";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const CATALOG_ID: &str = "spiffe://cluster.local/ns/default/sa/catalog";

/// Polls `f` every 100 ms until it gives `Ok`, or returns its last error after
/// `timeout` (an error, not a panic: this runs in a task while `up` is read).
async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(format!("{what} (after {timeout:?}): {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What the checks against the running mesh found.
#[derive(Debug)]
struct Observed {
    /// catalog-1's destination-side request series over mutual TLS from frontend.
    mtls_series: String,
    /// `meshctl proxy-config catalog-1 secrets -o json`.
    secrets: serde_json::Value,
    /// `meshctl check`: exit success, stdout.
    check: (bool, String),
}

/// Runs while `up` runs, once the restarted catalog-1 sidecar is back: its metrics
/// show mTLS traffic from frontend, its certificate is catalog's, and the mesh checks
/// out.
async fn observe_running_mesh() -> Result<Observed, String> {
    let timeout = Duration::from_secs(8);
    poll("restarted catalog-1 sidecar ready", timeout, || async {
        match mesh_tests::http::get(&format!("http://{CATALOG_1_ADMIN}/ready")).await {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let mtls_series = poll(
        "mTLS requests from frontend at catalog-1",
        timeout,
        || async {
            let (status, page) =
                mesh_tests::http::get(&format!("http://{CATALOG_1_ADMIN}/metrics"))
                    .await
                    .ok_or("no answer")?;
            if status != 200 {
                return Err(format!("status {status}"));
            }
            let destination: Vec<&str> = page
                .lines()
                .filter(|l| {
                    l.starts_with("mesh_requests_total{") && l.contains(r#"reporter="destination""#)
                })
                .collect();
            if let Some(plain) = destination
                .iter()
                .find(|l| l.contains(r#"connection_security_policy="none""#))
            {
                // STRICT: nothing may arrive in the clear. Not retried away: fail now.
                return Ok(Err(format!("plaintext request reached catalog-1: {plain}")));
            }
            destination
                .iter()
                .find(|l| {
                    l.contains(r#"connection_security_policy="mutual_tls""#)
                        && l.contains(&format!(r#"source_principal="{FRONTEND_ID}""#))
                })
                .map(|l| Ok(l.to_string()))
                .ok_or_else(|| format!("no such series yet in:\n{}", destination.join("\n")))
        },
    )
    .await??;

    let meshctl = bin("meshctl");
    let out = Command::new(&meshctl)
        .args(["proxy-config", "catalog-1", "secrets", "-o", "json"])
        .output()
        .await
        .map_err(|e| format!("run meshctl proxy-config: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "meshctl proxy-config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let secrets: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "proxy-config -o json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;

    let out = Command::new(&meshctl)
        .arg("check")
        .output()
        .await
        .map_err(|e| format!("run meshctl check: {e}"))?;
    let check = (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    Ok(Observed {
        mtls_series,
        secrets,
        check,
    })
}

#[tokio::test]
async fn up_runs_the_demo_restarts_sidecars_and_cleans_up() {
    let mut child = Command::new(bin("meshctl"))
        .args(["up", "--duration", "14", "--interval", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start meshctl up");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    let mut pids: HashMap<String, u32> = HashMap::new();
    let mut killed = None;
    let mut observer = None;
    let read = async {
        while let Some(line) = out.next_line().await.expect("read stdout") {
            if let Some((what, pid)) = started(&line) {
                pids.insert(what, pid);
            }
            if line == "mesh ready" && killed.is_none() {
                // Kill catalog-1's sidecar: the runner must restart it and leave
                // the app alone.
                let sidecar = pids["sidecar default/catalog-1"];
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &sidecar.to_string()])
                    .status();
                killed = Some(sidecar);
            }
            if let Some(rest) = line.strip_prefix("restarted sidecar default/catalog-1 pid ") {
                pids.insert(
                    "sidecar default/catalog-1".into(),
                    rest.trim().parse().unwrap(),
                );
                // Check the mesh while it runs; keep reading `up`'s output meanwhile.
                if observer.is_none() {
                    observer = Some(tokio::spawn(observe_running_mesh()));
                }
            }
            lines.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("meshctl up ends after --duration");
    let status = child.wait().await.expect("wait");
    let text = lines.join("\n");
    assert!(status.success(), "meshctl up failed:\n{text}");
    assert!(lines.iter().any(|l| l == "mesh ready"), "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with("mTLS STRICT: ")),
        "up says it runs mTLS STRICT:\n{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("sidecar default/catalog-1 ready in ")
                && l.ends_with(&format!(" as {CATALOG_ID}"))),
        "catalog-1's sidecar certifies as catalog:\n{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("restarted sidecar default/catalog-1 pid ")),
        "the killed sidecar was restarted:\n{text}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("app default/catalog-1 exited")),
        "the app outlived its sidecar:\n{text}"
    );
    let table = last_table(&lines);
    for service in ["frontend.default", "catalog.default", "orders.default"] {
        let (requests, success, mtls) = table
            .get(service)
            .cloned()
            .unwrap_or_else(|| panic!("{service} missing from the table:\n{text}"));
        assert!(requests > 0, "{service} served no requests:\n{text}");
        assert!(success >= 90.0, "{service} success {success}%:\n{text}");
        assert_eq!(mtls, "100%", "{service} not all mTLS:\n{text}");
    }

    let observed = observer
        .expect("the restarted sidecar was observed")
        .await
        .expect("observer task")
        .unwrap_or_else(|e| panic!("{e}\nmeshctl up said:\n{text}"));
    assert!(
        observed.mtls_series.ends_with(|c: char| c.is_ascii_digit()),
        "{observed:?}"
    );
    let cert = &observed.secrets["certificate"];
    assert_eq!(cert["identity"], CATALOG_ID, "{:#}", observed.secrets);
    assert!(
        cert["chain"].as_array().is_some_and(|c| !c.is_empty()),
        "{:#}",
        observed.secrets
    );
    assert!(
        cert["not_after"].as_i64() > cert["not_before"].as_i64(),
        "{:#}",
        observed.secrets
    );
    assert!(
        observed.secrets["trust_bundle"]["roots"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{:#}",
        observed.secrets
    );
    let (check_ok, check_out) = &observed.check;
    assert!(check_ok, "meshctl check failed:\n{check_out}");
    for group in ["Controller", "Certificates", "Proxies"] {
        assert!(
            check_out.lines().any(|l| l == group),
            "{group} missing:\n{check_out}"
        );
    }
    assert!(check_out.contains(" 0 failed"), "{check_out}");
    assert!(
        check_out.contains(&format!("catalog-1.default: {CATALOG_ID} expires in ")),
        "{check_out}"
    );

    // Nothing it started is left: not the processes, not their listeners.
    assert!(pids.len() >= 15, "controller, 7 sidecars, 7 apps: {pids:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left: Vec<_> = pids.iter().filter(|(_, pid)| alive(**pid)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    for addr in [
        "127.0.0.1:15010",
        "127.0.0.1:15012",
        "127.0.0.1:15014",
        "127.0.1.1:15001",
        "127.0.1.2:8080",
    ] {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still accepts connections"
        );
    }
    assert!(killed.is_some());
}

#[tokio::test]
async fn up_rejects_a_bad_mesh_file_with_its_name() {
    let dir = std::env::temp_dir().join(format!("mesh-up-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 99999}]}\n",
    )
    .unwrap();
    let out = Command::new(bin("meshctl"))
        .args(["up", "-f"])
        .arg(&file)
        .output()
        .await
        .expect("run meshctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("broken.yaml") && stderr.contains("document 1"),
        "{stderr}"
    );
    assert!(stderr.contains("out of range"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
