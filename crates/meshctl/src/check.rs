//! `meshctl check`: is the mesh healthy? Grouped checks with ✔ / ⚠ / ✘ and a hint for
//! every problem; the exit status is non-zero when anything failed.
//!
//! With a kubeconfig, a `Cluster` group (see [`crate::check_cluster`]) comes
//! first: CRDs, the controller Deployment, the injection webhook, meshed
//! namespaces.
//!
//! Gathering (HTTP to the controller and to each sidecar's admin port) is separate
//! from judging: the `evaluate_*` functions are pure over the parsed JSON and the
//! current time, so every threshold is unit-tested without a running mesh.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::cli::CheckArgs;
use crate::controller::Controller;
use crate::format::{relative, rfc3339, unix_now};
use crate::http_client::HttpClient;

/// A root closer to expiry than this is a warning.
pub const ROOT_WARN_SECS: i64 = 30 * 86_400;
/// A workload certificate with less than this fraction of its lifetime left is a
/// warning (the sidecar should have rotated at 50–70 %).
pub const CERT_WARN_FRACTION: f64 = 0.2;
/// A workload certificate with less than this left is a warning whatever its lifetime.
pub const CERT_WARN_SECS: i64 = 3600;

/// How bad one finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// All good.
    Ok,
    /// Works now, needs attention soon.
    Warn,
    /// Broken.
    Fail,
}

impl Level {
    fn mark(self) -> &'static str {
        match self {
            Level::Ok => "✔",
            Level::Warn => "⚠",
            Level::Fail => "✘",
        }
    }
}

/// One finding: a line of output, and what to do about it when it is not OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub level: Level,
    /// What was found.
    pub message: String,
    /// What to do (warnings and failures).
    pub hint: Option<String>,
}

impl Finding {
    pub(crate) fn ok(message: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn warn(message: impl Into<String>, hint: impl Into<String>) -> Finding {
        Finding {
            level: Level::Warn,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub(crate) fn fail(message: impl Into<String>, hint: impl Into<String>) -> Finding {
        Finding {
            level: Level::Fail,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

/// The controller: reachable, and its registry loaded without errors.
pub fn evaluate_controller(
    base: &str,
    ready: Result<(), String>,
    registry: Option<Result<Value, String>>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    match ready {
        Ok(()) => out.push(Finding::ok(format!("admin API at {base} is ready"))),
        Err(e) => {
            out.push(Finding::fail(
                e,
                "start the controller (`meshctl up` runs one) or point --controller / MESH_CONTROLLER at it",
            ));
            return out;
        }
    }
    match registry {
        None => {}
        Some(Err(e)) => out.push(Finding::fail(
            format!("cannot read /debug/registry: {e}"),
            "check the controller's log",
        )),
        Some(Ok(reg)) => {
            let source = reg.get("source").and_then(Value::as_str).unwrap_or("?");
            let revision = reg.get("revision").and_then(Value::as_u64).unwrap_or(0);
            match reg.get("last_error").and_then(Value::as_str) {
                None => out.push(Finding::ok(format!(
                    "registry ({source}, revision {revision}) loaded without errors"
                ))),
                Some(e) => out.push(Finding::fail(
                    format!("registry ({source}) rejected its last change: {e}"),
                    "fix the object named in the error; the controller keeps serving the previous model until then",
                )),
            }
        }
    }
    out
}

/// The CA's roots, from `/debug/ca`: warn within 30 days of expiry, fail once expired.
pub fn evaluate_roots(ca: &Value, now: i64) -> Vec<Finding> {
    let roots = ca
        .get("roots")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if roots.is_empty() {
        return vec![Finding::fail(
            "the CA reports no trust anchors",
            "check the controller's log and its --ca-dir",
        )];
    }
    let rotation = ca
        .get("rotation")
        .filter(|r| !r.is_null())
        .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_string));
    roots
        .iter()
        .map(|root| {
            let subject = root.get("subject").and_then(Value::as_str).unwrap_or("?");
            let Some(not_after) = root.get("not_after").and_then(Value::as_i64) else {
                return Finding::fail(format!("root {subject} has no expiry"), "check /debug/ca");
            };
            let left = not_after - now;
            let what = format!(
                "root {subject} expires {} ({})",
                rfc3339(not_after),
                relative(left)
            );
            let hint = match &rotation {
                Some(phase) => format!("rotate the root: POST /ca/rotate (rotation now: {phase})"),
                None => "rotate the root: POST /ca/rotate on the controller's admin API".into(),
            };
            if left <= 0 {
                Finding::fail(format!("{what}: expired"), hint)
            } else if left < ROOT_WARN_SECS {
                Finding::warn(format!("{what}: less than 30 days left"), hint)
            } else {
                Finding::ok(what)
            }
        })
        .collect()
}

/// One proxy's workload certificate, from the `secrets` section of its
/// `/config_dump`: warn with < 20 % of its lifetime or < 1 h left, fail once expired.
pub fn evaluate_certificate(node: &str, secrets: &Value, now: i64) -> Finding {
    let cert = secrets.get("certificate").filter(|c| c.is_object());
    let Some(cert) = cert else {
        if secrets.get("identity_enabled").and_then(Value::as_bool) == Some(false) {
            return Finding::warn(
                format!("{node}: no certificate (identity off: plaintext dev mode)"),
                "give the sidecar a join token (meshctl token create) and --trust-anchors",
            );
        }
        return Finding::fail(
            format!("{node}: holds no workload certificate"),
            "check the sidecar's log for Certify errors (token expired or for the wrong identity?)",
        );
    };
    let identity = cert.get("identity").and_then(Value::as_str).unwrap_or("?");
    let (Some(not_before), Some(not_after)) = (
        cert.get("not_before").and_then(Value::as_i64),
        cert.get("not_after").and_then(Value::as_i64),
    ) else {
        return Finding::fail(
            format!("{node}: certificate {identity} has no validity period"),
            "check the sidecar's /config_dump",
        );
    };
    let left = not_after - now;
    let lifetime = (not_after - not_before).max(1);
    let fraction = left as f64 / lifetime as f64;
    let what = format!("{node}: {identity} expires {}", relative(left));
    let hint = "the sidecar rotates at 50–70% of the lifetime: check its log for Certify errors and that the controller is reachable";
    if left <= 0 {
        Finding::fail(format!("{what}: expired"), hint)
    } else if fraction < CERT_WARN_FRACTION || left < CERT_WARN_SECS {
        Finding::warn(
            format!("{what} ({:.0}% of its lifetime left)", fraction * 100.0),
            hint,
        )
    } else {
        Finding::ok(what)
    }
}

/// A proxy whose `/config_dump` could not be read.
pub fn unreadable_dump(node: &str, error: &str) -> Finding {
    Finding::warn(
        format!("{node}: cannot read its certificate: {error}"),
        "run meshctl check where the sidecars' admin ports (15000) are reachable",
    )
}

/// Every stream in `/debug/syncz`: each type SYNCED; ERROR fails with the NACK
/// reason; STALE (sent, not yet ACKed) warns. NOT SENT is normal for types the
/// proxy has not subscribed to.
pub fn evaluate_sync(syncz: &Value) -> Vec<Finding> {
    let entries = syncz.as_array().map(Vec::as_slice).unwrap_or_default();
    if entries.is_empty() {
        return vec![Finding::warn(
            "no proxies are connected",
            "start sidecars pointed at the controller (meshctl up does)",
        )];
    }
    let mut entries: Vec<&Value> = entries.iter().collect();
    entries.sort_by_key(|e| e.get("node_id").and_then(Value::as_str).unwrap_or("?"));
    let mut out = Vec::new();
    for e in entries {
        let node = e.get("node_id").and_then(Value::as_str).unwrap_or("?");
        let types: BTreeMap<String, Value> = e
            .get("types")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut synced = Vec::new();
        let mut errors = Vec::new();
        let mut stale = Vec::new();
        for (ty, t) in &types {
            match t.get("status").and_then(Value::as_str).unwrap_or("?") {
                "SYNCED" => synced.push(ty.as_str()),
                "ERROR" => errors.push(format!(
                    "{ty} rejected: {}",
                    t.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("(no reason given)")
                )),
                "STALE" => stale.push(format!(
                    "{ty} sent {} but not yet acknowledged (has {})",
                    t.get("sent_version").and_then(Value::as_str).unwrap_or("?"),
                    t.get("acked_version")
                        .and_then(Value::as_str)
                        .unwrap_or("nothing")
                )),
                _ => {}
            }
        }
        let security = match (
            e.get("secure").and_then(Value::as_bool),
            e.get("identity").and_then(Value::as_str),
        ) {
            (Some(true), Some(id)) => format!(" over mTLS as {id}"),
            (Some(true), None) => " over TLS".to_string(),
            _ => String::new(),
        };
        if !errors.is_empty() {
            out.push(Finding::fail(
                format!("{node}: {}", errors.join("; ")),
                "the proxy keeps its previous config; fix the resource named in the reason (see the controller's log and `meshctl proxy-config`)",
            ));
        } else if !stale.is_empty() {
            out.push(Finding::warn(
                format!("{node}: {}", stale.join("; ")),
                "usually a push in flight: run the check again; if it persists the proxy is stuck (see its log)",
            ));
        } else if synced.is_empty() {
            out.push(Finding::warn(
                format!("{node}: connected{security} but nothing sent yet"),
                "run the check again in a moment; if it persists see the controller's log",
            ));
        } else {
            out.push(Finding::ok(format!(
                "{node}: {} synced{security}",
                synced.join(", ")
            )));
        }
    }
    out
}

/// Proxies to read certificates from: `(node id, admin address)`, one per node
/// (its newest stream), sorted by node id.
pub fn cert_targets(syncz: &Value) -> Vec<(String, Option<String>)> {
    let mut newest: BTreeMap<String, (u64, Option<String>)> = BTreeMap::new();
    for e in syncz.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(node) = e.get("node_id").and_then(Value::as_str) else {
            continue;
        };
        let at = e
            .get("connected_at_unix")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let admin = e
            .get("admin_address")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .map(str::to_string);
        let slot = newest
            .entry(node.to_string())
            .or_insert((at, admin.clone()));
        if at >= slot.0 {
            *slot = (at, admin);
        }
    }
    newest.into_iter().map(|(n, (_, a))| (n, a)).collect()
}

/// A titled group of findings.
#[derive(Debug, Clone)]
pub struct Group {
    /// The heading, e.g. `Certificates`.
    pub title: &'static str,
    /// What was found.
    pub findings: Vec<Finding>,
}

/// The report text and the worst level in it.
pub fn render(groups: &[Group]) -> (String, Level) {
    let mut out = String::new();
    let mut counts = [0usize; 3];
    for g in groups {
        out.push_str(g.title);
        out.push('\n');
        for f in &g.findings {
            counts[f.level as usize] += 1;
            out.push_str(&format!("  {} {}\n", f.level.mark(), f.message));
            if let (Some(hint), true) = (&f.hint, f.level != Level::Ok) {
                out.push_str(&format!("      hint: {hint}\n"));
            }
        }
    }
    let [ok, warn, fail] = counts;
    out.push_str(&format!(
        "\n{ok} passed, {warn} warning{}, {fail} failed\n",
        if warn == 1 { "" } else { "s" }
    ));
    let worst = if fail > 0 {
        Level::Fail
    } else if warn > 0 {
        Level::Warn
    } else {
        Level::Ok
    };
    (out, worst)
}

/// Runs every check, prints the report, and fails when any check failed.
pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    // The cluster's view first: when the controller is not even deployed, that
    // is the root cause the admin API's "unreachable" below follows from.
    let mut groups = Vec::new();
    if let Some(cluster) = crate::check_cluster::gather_if_configured(&args).await {
        groups.push(cluster);
    }
    groups.extend(gather(&Controller::from_flag(&args.controller)).await);
    let (text, worst) = render(&groups);
    print!("{text}");
    if worst == Level::Fail {
        let failed = groups
            .iter()
            .flat_map(|g| &g.findings)
            .filter(|f| f.level == Level::Fail)
            .count();
        anyhow::bail!(
            "{failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Asks the controller and every connected sidecar, and judges what they say.
pub async fn gather(controller: &Controller) -> Vec<Group> {
    let now = unix_now();
    let ready = controller.ready().await.map_err(|e| e.to_string());
    let reachable = ready.is_ok();
    let registry = if reachable {
        Some(
            controller
                .get_json("/debug/registry")
                .await
                .map_err(|e| e.to_string()),
        )
    } else {
        None
    };
    let mut groups = vec![Group {
        title: "Controller",
        findings: evaluate_controller(controller.base(), ready, registry),
    }];
    if !reachable {
        return groups;
    }

    let syncz = controller.get_json("/debug/syncz").await;
    let mut certs = match controller.get_json("/debug/ca").await {
        Ok(ca) => evaluate_roots(&ca, now),
        Err(e) => vec![Finding::fail(
            format!("cannot read /debug/ca: {e}"),
            "a controller without the CA is older than the identity issue; upgrade it",
        )],
    };
    let proxies = match &syncz {
        Ok(syncz) => {
            let client = HttpClient::direct();
            let targets = cert_targets(syncz);
            let dumps = futures::future::join_all(targets.iter().map(|(node, admin)| {
                let client = &client;
                async move {
                    let Some(admin) = admin else {
                        return unreadable_dump(node, "it did not report an admin address");
                    };
                    let admin = crate::proxy_config::reachable_admin(admin);
                    match tokio::time::timeout(
                        Duration::from_secs(3),
                        crate::proxy_config::fetch_dump(client, &admin),
                    )
                    .await
                    {
                        Ok(Ok(dump)) => evaluate_certificate(
                            node,
                            dump.get("secrets").unwrap_or(&Value::Null),
                            now,
                        ),
                        Ok(Err(e)) => unreadable_dump(node, &e.to_string()),
                        Err(_) => unreadable_dump(node, "timed out"),
                    }
                }
            }))
            .await;
            certs.extend(dumps);
            evaluate_sync(syncz)
        }
        Err(e) => vec![Finding::fail(
            format!("cannot read /debug/syncz: {e}"),
            "check the controller's log",
        )],
    };
    groups.push(Group {
        title: "Certificates",
        findings: certs,
    });
    groups.push(Group {
        title: "Proxies",
        findings: proxies,
    });
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;
    const DAY: i64 = 86_400;

    #[test]
    fn controller_findings() {
        let f = evaluate_controller("http://c", Err("refused".into()), None);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].level, Level::Fail);
        assert!(f[0].hint.as_deref().unwrap().contains("--controller"));

        let good = json!({"source": "file", "revision": 3, "last_error": null});
        let f = evaluate_controller("http://c", Ok(()), Some(Ok(good)));
        assert_eq!(
            f.iter().map(|f| f.level).collect::<Vec<_>>(),
            [Level::Ok, Level::Ok]
        );
        assert_eq!(
            f[1].message,
            "registry (file, revision 3) loaded without errors"
        );

        let bad = json!({"source": "file", "revision": 3, "last_error": "mesh.yaml document 2: bad port"});
        let f = evaluate_controller("http://c", Ok(()), Some(Ok(bad)));
        assert_eq!(f[1].level, Level::Fail);
        assert!(f[1].message.contains("document 2: bad port"), "{:?}", f[1]);
    }

    fn ca(not_after: i64) -> Value {
        json!({"roots": [{"subject": "CN=root", "serial": "1", "not_after": not_after}], "rotation": null})
    }

    #[test]
    fn root_expiry_thresholds() {
        let level = |left: i64| evaluate_roots(&ca(NOW + left), NOW)[0].level;
        assert_eq!(level(3650 * DAY), Level::Ok);
        assert_eq!(level(30 * DAY), Level::Ok);
        assert_eq!(level(30 * DAY - 1), Level::Warn);
        assert_eq!(level(1), Level::Warn);
        assert_eq!(level(0), Level::Fail);
        assert_eq!(level(-DAY), Level::Fail);
        let f = &evaluate_roots(&ca(NOW - DAY), NOW)[0];
        assert!(f.message.ends_with("(1d 0h ago): expired"), "{f:?}");
        assert!(f.hint.as_deref().unwrap().contains("/ca/rotate"));
        assert_eq!(
            evaluate_roots(&json!({"roots": []}), NOW)[0].level,
            Level::Fail
        );
    }

    fn secrets(not_before: i64, not_after: i64) -> Value {
        json!({"identity_enabled": true, "certificate": {
            "identity": "spiffe://cluster.local/ns/default/sa/catalog",
            "serial": "ab", "not_before": not_before, "not_after": not_after, "chain": [{}]
        }})
    }

    #[test]
    fn certificate_thresholds() {
        // 24 h certificates: warn below 20 % (4.8 h) left.
        let day = |left: i64| {
            evaluate_certificate("c", &secrets(NOW + left - DAY, NOW + left), NOW).level
        };
        assert_eq!(day(DAY), Level::Ok);
        assert_eq!(day(5 * 3600), Level::Ok);
        assert_eq!(day(4 * 3600), Level::Warn);
        assert_eq!(day(0), Level::Fail);
        // 10-day certificates: 20 % is 2 days, so the fraction warns first.
        assert_eq!(
            evaluate_certificate("c", &secrets(NOW - 9 * DAY, NOW + DAY), NOW).level,
            Level::Warn
        );
        // 2 h certificates, 1.5 h left (75 %): the 1 h floor does not trigger...
        assert_eq!(
            evaluate_certificate("c", &secrets(NOW - 1800, NOW + 5400), NOW).level,
            Level::Ok
        );
        // ...but 50 minutes left does, even at 83 % of a 1 h lifetime.
        assert_eq!(
            evaluate_certificate("c", &secrets(NOW - 600, NOW + 3000), NOW).level,
            Level::Warn
        );
        let f = evaluate_certificate("catalog-1.default", &secrets(NOW - DAY, NOW - 60), NOW);
        assert_eq!(f.level, Level::Fail);
        assert_eq!(
            f.message,
            "catalog-1.default: spiffe://cluster.local/ns/default/sa/catalog expires 1m 0s ago: expired"
        );
    }

    #[test]
    fn missing_certificates() {
        let off = json!({"identity_enabled": false, "certificate": null});
        assert_eq!(evaluate_certificate("a", &off, NOW).level, Level::Warn);
        let missing = json!({"identity_enabled": true, "certificate": null});
        assert_eq!(evaluate_certificate("a", &missing, NOW).level, Level::Fail);
        assert_eq!(
            evaluate_certificate("a", &Value::Null, NOW).level,
            Level::Fail
        );
    }

    fn stream(node: &str, at: u64, types: Value) -> Value {
        json!({"node_id": node, "admin_address": format!("{node}:15000"), "connected_at_unix": at,
               "secure": true, "identity": "spiffe://cluster.local/ns/default/sa/x", "types": types})
    }

    #[test]
    fn sync_states() {
        let synced = json!({"status": "SYNCED", "acked_version": "1"});
        let syncz = json!([
            stream(
                "a",
                1,
                json!({"CDS": synced, "LDS": synced, "SDS": {"status": "NOT SENT"}})
            ),
            stream(
                "b",
                1,
                json!({"CDS": synced, "LDS": {"status": "ERROR", "error": "listener inbound: bad port"}})
            ),
            stream(
                "c",
                1,
                json!({"CDS": {"status": "STALE", "sent_version": "2", "acked_version": "1"}})
            ),
            stream("d", 1, json!({"CDS": {"status": "NOT SENT"}})),
        ]);
        let f = evaluate_sync(&syncz);
        let levels: Vec<Level> = f.iter().map(|f| f.level).collect();
        assert_eq!(levels, [Level::Ok, Level::Fail, Level::Warn, Level::Warn]);
        assert_eq!(
            f[0].message,
            "a: CDS, LDS synced over mTLS as spiffe://cluster.local/ns/default/sa/x"
        );
        assert_eq!(f[1].message, "b: LDS rejected: listener inbound: bad port");
        assert_eq!(
            f[2].message,
            "c: CDS sent 2 but not yet acknowledged (has 1)"
        );
        assert_eq!(evaluate_sync(&json!([]))[0].level, Level::Warn);
    }

    #[test]
    fn cert_targets_take_each_nodes_newest_stream() {
        let mut old = stream("a", 1, json!({}));
        old["admin_address"] = json!("old:15000");
        let syncz = json!([stream("b", 5, json!({})), old, stream("a", 2, json!({}))]);
        assert_eq!(
            cert_targets(&syncz),
            [
                ("a".to_string(), Some("a:15000".to_string())),
                ("b".to_string(), Some("b:15000".to_string()))
            ]
        );
    }

    #[test]
    fn report_counts_and_worst_level() {
        let groups = vec![
            Group {
                title: "Controller",
                findings: vec![Finding::ok("up")],
            },
            Group {
                title: "Proxies",
                findings: vec![
                    Finding::warn("slow", "wait"),
                    Finding::fail("broken", "fix it"),
                ],
            },
        ];
        let (text, worst) = render(&groups);
        assert_eq!(worst, Level::Fail);
        assert_eq!(
            text,
            "Controller\n  ✔ up\nProxies\n  ⚠ slow\n      hint: wait\n  ✘ broken\n      hint: fix it\n\n1 passed, 1 warning, 1 failed\n"
        );
        let (_, worst) = render(&groups[..1]);
        assert_eq!(worst, Level::Ok);
    }
}
