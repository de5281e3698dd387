//! `mesh-bench restart`: how long a crashed sidecar takes to be ready again.
//!
//! Runs the demo mesh under `meshctl up` (mutual TLS, STRICT, the demo's steady
//! load), SIGKILLs one sidecar again and again, and times kill → the supervisor's
//! respawn → the new sidecar's `/ready` (a new certificate and a full xDS sync
//! included). The app behind it must keep its process throughout. The baseline,
//! in the same run, is a plain exec → exit of `/bin/true`.

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{CHILDREN, Env, free_addr, kill_pid, machine_line, md_table, pct, raw_status, sorted};

/// The sidecar that is killed: one of the demo's two catalog instances.
const VICTIM: &str = "default/catalog-1";

/// One line of `meshctl up`'s stdout that this benchmark reacts to.
enum Event {
    /// `started sidecar <key> at <ip> pid <pid>`.
    SidecarStarted(IpAddr, u32),
    /// `started app <key> ... pid <pid>`.
    AppStarted(u32),
    /// `restarted sidecar <key> pid <pid>`, with when it was read.
    SidecarRestarted(u32, Instant),
    /// `mesh ready`.
    Ready,
}

fn parse(line: &str) -> Option<Event> {
    let pid_of = |s: &str| {
        s.rsplit_once(" pid ")?
            .1
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    if line == "mesh ready" {
        return Some(Event::Ready);
    }
    if let Some(rest) = line.strip_prefix(&format!("started sidecar {VICTIM} at ")) {
        let ip = rest.split_whitespace().next()?.parse().ok()?;
        return Some(Event::SidecarStarted(ip, pid_of(rest)?));
    }
    if let Some(rest) = line.strip_prefix(&format!("started app {VICTIM}")) {
        return Some(Event::AppStarted(pid_of(rest)?));
    }
    if let Some(rest) = line.strip_prefix(&format!("restarted sidecar {VICTIM}")) {
        return Some(Event::SidecarRestarted(pid_of(rest)?, Instant::now()));
    }
    None
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs the benchmark: `runs` kills, each after the sidecar has been up a while
/// (the supervisor restarts a sidecar at once only if it ran for over a second).
pub async fn restart(env: &Env, runs: usize) -> anyhow::Result<()> {
    let meshctl = env.bin_dir.join("meshctl");
    if !meshctl.exists() {
        bail!(
            "{} not found: build the release binaries",
            meshctl.display()
        );
    }
    let ports = [free_addr(), free_addr(), free_addr()].map(|a| a.port().to_string());
    let log = env.dir.join("meshctl-up.log");
    let mut up = Command::new(&meshctl)
        .args(["up", "--interval", "0", "--duration", "3600"])
        .args(["--xds-port", &ports[0], "--secure-port", &ports[1]])
        .args(["--admin-port", &ports[2]])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", meshctl.display()))?;
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(up.id());
    let stdout = up.stdout.take().context("meshctl stdout")?;
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(e) = parse(&line)
                && tx.send(e).is_err()
            {
                return;
            }
        }
    });
    let result = measure(&events, runs).await;
    // SIGTERM lets `up` stop its children; the watchdog list kills it otherwise.
    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    let _ = up.wait();
    if result.is_err() {
        eprintln!("meshctl up's log: {}", log.display());
        kill_pid(up.id());
    }
    result
}

async fn measure(events: &mpsc::Receiver<Event>, runs: usize) -> anyhow::Result<()> {
    let next = |limit: Duration| {
        events
            .recv_timeout(limit)
            .map_err(|_| anyhow::anyhow!("meshctl up said nothing for {limit:?}"))
    };
    let (mut sidecar_ip, mut sidecar_pid, mut app_pid) = (None, None, None);
    loop {
        match next(Duration::from_secs(60))? {
            Event::SidecarStarted(ip, pid) => (sidecar_ip, sidecar_pid) = (Some(ip), Some(pid)),
            Event::AppStarted(pid) => app_pid = Some(pid),
            Event::Ready => break,
            Event::SidecarRestarted(..) => {
                bail!("{VICTIM}'s sidecar restarted before the mesh was ready")
            }
        }
    }
    let (Some(ip), Some(mut pid), Some(app_pid)) = (sidecar_ip, sidecar_pid, app_pid) else {
        bail!("meshctl up did not report {VICTIM}'s sidecar and app");
    };
    let admin = SocketAddr::new(ip, 15000);

    let mut baseline = Vec::new();
    let (mut respawn, mut to_ready) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = Instant::now();
        Command::new("/bin/true").status()?;
        baseline.push(t0.elapsed().as_secs_f64() * 1e3);

        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed = Instant::now();
        kill_pid(pid);
        let (new_pid, respawned) = loop {
            if let Event::SidecarRestarted(p, at) = next(Duration::from_secs(10))? {
                break (p, at);
            }
        };
        let ready = loop {
            if raw_status(admin, "/ready").await == Some(200) {
                break Instant::now();
            }
            if killed.elapsed() > Duration::from_secs(10) {
                bail!("{VICTIM}'s restarted sidecar (pid {new_pid}) not ready in 10 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if !alive(app_pid) {
            bail!("{VICTIM}'s app (pid {app_pid}) died with its sidecar");
        }
        respawn.push((respawned - killed).as_secs_f64() * 1e3);
        to_ready.push((ready - killed).as_secs_f64() * 1e3);
        pid = new_pid;
    }

    println!("## restart\n");
    machine_line();
    let rows: Vec<Vec<String>> = [
        ("`/bin/true` exec→exit (baseline)", sorted(baseline)),
        ("SIGKILL → supervisor respawned it", sorted(respawn)),
        ("SIGKILL → new sidecar `/ready` 200", sorted(to_ready)),
    ]
    .into_iter()
    .map(|(what, v)| {
        vec![
            what.to_string(),
            format!("{:.1}", pct(&v, 50.0)),
            format!("{:.1}", pct(&v, 90.0)),
            format!("{:.1}", pct(&v, 100.0)),
        ]
    })
    .collect();
    md_table(&["what (ms)", "p50", "p90", "max"], &rows);
    println!(
        "{runs} kills of {VICTIM}'s sidecar under `meshctl up` (mTLS, demo load); its app (pid {app_pid}) kept running throughout.\n"
    );
    Ok(())
}
