//! `meshctl up` on the embedded demo: every service serves traffic, a killed sidecar
//! is restarted while its app keeps running, and nothing is left behind.

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

/// The table rows of the last table printed: service -> (requests, success %).
fn last_table(lines: &[String]) -> HashMap<String, (u64, f64)> {
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("SERVICE"))
        .expect("a table was printed");
    lines[start + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("stopping"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let requests = cols.get(1)?.parse().ok()?;
            let success = cols.get(2)?.trim_end_matches('%').parse().ok()?;
            Some((cols[0].to_string(), (requests, success)))
        })
        .collect()
}

#[tokio::test]
async fn up_runs_the_demo_restarts_sidecars_and_cleans_up() {
    let mut child = Command::new(bin("meshctl"))
        .args(["up", "--duration", "12", "--interval", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start meshctl up");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    let mut pids: HashMap<String, u32> = HashMap::new();
    let mut killed = None;
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
        let (requests, success) = table
            .get(service)
            .copied()
            .unwrap_or_else(|| panic!("{service} missing from the table:\n{text}"));
        assert!(requests > 0, "{service} served no requests:\n{text}");
        assert!(success >= 90.0, "{service} success {success}%:\n{text}");
    }
    // Nothing it started is left: not the processes, not their listeners.
    assert!(pids.len() >= 15, "controller, 7 sidecars, 7 apps: {pids:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left: Vec<_> = pids.iter().filter(|(_, pid)| alive(**pid)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    for addr in [
        "127.0.0.1:15010",
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
