//! `mesh-bench`: benchmarks of the real `mesh-controller` and `mesh-proxy` binaries.
//!
//! Every benchmark measures a baseline in the same run and reports ratios; nothing
//! here asserts on timings. Everything runs on loopback (127.0.0.0/8), is bounded in
//! count and time (`--max-seconds`, a watchdog), and kills every process it starts.
//!
//! ```text
//! mesh-bench startup     --runs 20
//! mesh-bench convergence --runs 30 [--debounce-ms 100]
//! mesh-bench overhead    --requests 20000 --concurrency 16
//! mesh-bench xds-scale   --proxies 1000
//! mesh-bench mtls        --connectors 8 --handshake-seconds 5 --requests 20000
//! mesh-bench restart     --runs 20
//! ```
//! Results are printed as markdown. See docs/performance.md.
#![forbid(unsafe_code)]

#[path = "mesh-bench/restart.rs"]
mod restart;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_xds::ResourceType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Clock ticks per second of /proc/<pid>/stat utime/stime. `sysconf(_SC_CLK_TCK)`
/// needs unsafe code (forbidden here); it is 100 on every Linux we run on.
const CLK_TCK: f64 = 100.0;

#[derive(Parser, Debug)]
#[command(
    name = "mesh-bench",
    about = "Benchmarks of mesh-controller and mesh-proxy"
)]
struct Cli {
    /// Where mesh-controller and mesh-proxy are (default: this executable's directory).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Hard limit for the whole run: the watchdog kills every child and exits.
    #[arg(long, global = true, default_value_t = 600)]
    max_seconds: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// exec -> /ready of mesh-proxy, vs exec -> exit of /bin/true; RSS.
    Startup {
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Seconds of idle before the second RSS reading.
        #[arg(long, default_value_t = 3)]
        idle_seconds: u64,
    },
    /// Mesh file edit -> the proxy's /config_dump shows it.
    Convergence {
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Controller `--debounce-ms` values to try, comma separated.
        #[arg(long, default_value = "100,10")]
        debounce_ms: String,
    },
    /// Request overhead of two sidecars vs direct (and vs nginx when installed).
    Overhead {
        #[arg(long, default_value_t = 20000)]
        requests: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Measured rounds; scenarios alternate within each round.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Path of nginx; skipped when missing.
        #[arg(long, default_value = "/usr/sbin/nginx")]
        nginx: PathBuf,
    },
    /// N Delta ADS streams: initial sync, then fan-out time of a mesh file change.
    XdsScale {
        #[arg(long, default_value_t = 1000)]
        proxies: usize,
        #[arg(long, default_value_t = 10)]
        services: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 100)]
        debounce_ms: u64,
    },
    /// Mutual TLS: handshakes/s against a sidecar's inbound port (vs a bare rustls
    /// server), the added latency of the mTLS hop (vs plaintext mesh and direct),
    /// and how many handshakes the pooled sidecar-to-sidecar connection costs.
    Mtls {
        /// Concurrent handshake loops (each its own source IP).
        #[arg(long, default_value_t = 8)]
        connectors: usize,
        /// Seconds per handshake measurement.
        #[arg(long, default_value_t = 5)]
        handshake_seconds: u64,
        /// Requests per latency scenario and round at `--concurrency`.
        #[arg(long, default_value_t = 20000)]
        requests: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Requests per scenario and round on one connection, one at a time.
        #[arg(long, default_value_t = 3000)]
        serial_requests: usize,
        /// Measured rounds; targets and scenarios alternate within each round.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// A crashed sidecar under `meshctl up`: SIGKILL -> respawned -> ready again.
    Restart {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// (internal) The upstream HTTP server of `overhead`, run as its own process.
    Upstream {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// (internal) The baseline of `mtls`: a bare rustls server (the sidecar's own
    /// server configuration) that completes a handshake, sends one HTTP/2 SETTINGS
    /// frame and waits for the client to close.
    TlsServer {
        #[arg(long)]
        addr: SocketAddr,
        /// Holds key.der, chain-<i>.der and anchors.pem (written by `mtls`).
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Upstream { addr } = cli.cmd {
        return upstream_main(addr);
    }
    if let Cmd::TlsServer { addr, dir } = &cli.cmd {
        return tls_server_main(*addr, dir);
    }
    let bin_dir = match cli.bin_dir.clone() {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .to_path_buf(),
    };
    let env = Env::new(bin_dir, &cli.cmd)?;
    watchdog(Duration::from_secs(cli.max_seconds));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Startup { runs, idle_seconds } => startup(&env, runs, idle_seconds).await,
            Cmd::Convergence { runs, debounce_ms } => {
                let values: Vec<u64> = debounce_ms
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--debounce-ms")?;
                convergence(&env, runs, &values).await
            }
            Cmd::Overhead {
                requests,
                concurrency,
                rounds,
                nginx,
            } => overhead(&env, requests, concurrency, rounds, &nginx).await,
            Cmd::XdsScale {
                proxies,
                services,
                rounds,
                debounce_ms,
            } => xds_scale(&env, proxies, services, rounds, debounce_ms).await,
            Cmd::Mtls {
                connectors,
                handshake_seconds,
                requests,
                concurrency,
                serial_requests,
                rounds,
            } => {
                mtls(
                    &env,
                    MtlsOpts {
                        connectors,
                        handshake_seconds,
                        requests,
                        concurrency,
                        serial_requests,
                        rounds,
                    },
                )
                .await
            }
            Cmd::Restart { runs } => restart::restart(&env, runs).await,
            Cmd::Upstream { .. } | Cmd::TlsServer { .. } => unreachable!(),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    kill_all();
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&env.dir);
        }
        Err(_) => eprintln!("logs kept in {}", env.dir.display()),
    }
    result
}

// ---------------------------------------------------------------------------------
// Processes: every child is registered and killed at the end, on drop, or by the
// watchdog.

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn kill_all() {
    let pids: Vec<u32> = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in pids {
        kill_pid(pid);
    }
}

fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "mesh-bench: --max-seconds {} reached; killing children",
            limit.as_secs()
        );
        kill_all();
        std::process::exit(3);
    });
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Env {
    bin_dir: PathBuf,
    dir: PathBuf,
}

impl Env {
    fn new(bin_dir: PathBuf, cmd: &Cmd) -> anyhow::Result<Env> {
        for name in ["mesh-controller", "mesh-proxy"] {
            if !bin_dir.join(name).exists() {
                bail!(
                    "{} not found in {}: build with `cargo build --release --workspace --bins` or pass --bin-dir",
                    name,
                    bin_dir.display()
                );
            }
        }
        let tag = match cmd {
            Cmd::Startup { .. } => "startup",
            Cmd::Convergence { .. } => "convergence",
            Cmd::Overhead { .. } => "overhead",
            Cmd::XdsScale { .. } => "xds-scale",
            Cmd::Mtls { .. } => "mtls",
            Cmd::Restart { .. } => "restart",
            Cmd::Upstream { .. } => "upstream",
            Cmd::TlsServer { .. } => "tls-server",
        };
        let dir = std::env::temp_dir().join(format!("mesh-bench-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Env { bin_dir, dir })
    }

    fn spawn(&self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<Proc> {
        let log = self.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Ok(Proc {
            child,
            name: name.into(),
            log,
        })
    }

    async fn controller(&self, file: &Path, debounce_ms: u64, tag: &str) -> anyhow::Result<Ctl> {
        let xds = free_addr();
        let admin = free_addr();
        // The TLS port (Certify, secure xDS) on a free port too: its default,
        // 127.0.0.1:15012, would collide with any other controller on the host.
        let secure = free_addr();
        let args = vec![
            "--registry".into(),
            "file".into(),
            "--file".into(),
            file.display().to_string(),
            "--xds-addr".into(),
            xds.to_string(),
            "--admin-addr".into(),
            admin.to_string(),
            "--debounce-ms".into(),
            debounce_ms.to_string(),
            "--secure-xds-addr".into(),
            secure.to_string(),
        ];
        let proc = self.spawn(
            &format!("controller-{tag}"),
            &self.bin_dir.join("mesh-controller"),
            &args,
        )?;
        let ready = wait_ready(admin, Duration::from_secs(20), Duration::from_millis(5)).await;
        if ready.is_none() {
            bail!("controller not ready; see {}", proc.log.display());
        }
        Ok(Ctl {
            proc,
            xds,
            admin,
            secure,
        })
    }

    fn proxy_args(
        &self,
        workload: &str,
        ip: IpAddr,
        xds: SocketAddr,
        extra: &[&str],
    ) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--workload".into(),
            workload.into(),
            "--namespace".into(),
            "default".into(),
            "--ip".into(),
            ip.to_string(),
            "--xds-addr".into(),
            format!("http://{xds}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }
}

struct Ctl {
    proc: Proc,
    xds: SocketAddr,
    admin: SocketAddr,
    /// TLS port: Certify and xDS for sidecars with an identity.
    secure: SocketAddr,
}

fn free_addr() -> SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port");
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

// ---------------------------------------------------------------------------------
// /proc readings.

/// utime + stime of `pid` in seconds (all threads).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = match stat.rfind(')') {
        Some(i) => &stat[i + 2..],
        None => return f64::NAN,
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    let stime: f64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    (utime + stime) / CLK_TCK
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Processes whose parent is `pid` (nginx workers).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat"))
                && let Some(i) = stat.rfind(')')
                && stat[i + 2..].split_whitespace().nth(1) == Some(&pid.to_string())
            {
                out.push(p);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Statistics and output.

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn md_table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!("|{}", " --- |".repeat(header.len()));
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
    println!();
}

fn machine_line() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "_machine: {} CPUs ({}), loadavg at start {}_\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

// ---------------------------------------------------------------------------------
// HTTP helpers.

/// One `GET path` on a fresh connection; the status, or None if nothing answered.
async fn raw_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = s.read(&mut buf[n..]).await.ok()?;
        if m == 0 {
            return None;
        }
        n += m;
    }
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

/// Polls `GET /ready` every `every` until 200; the time it answered.
async fn wait_ready(admin: SocketAddr, limit: Duration, every: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if raw_status(admin, "/ready").await == Some(200) {
            return Some(Instant::now());
        }
        tokio::time::sleep(every).await;
    }
    None
}

async fn get_body(url: &str) -> anyhow::Result<String> {
    match mesh_tests::http::get(url).await {
        Some((200, body)) => Ok(body),
        Some((s, body)) => bail!("{url}: {s} {body}"),
        None => bail!("{url}: no answer"),
    }
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all().ok();
    std::fs::rename(&tmp, path)?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Mesh files.

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {mesh.io/inject: enabled}}\n";

fn service_doc(name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{selector: {{app: {name}}}, ports: [{{name: http, port: {port}}}]}}\n"
    )
}

fn workload_doc(name: &str, app: &str, ip: IpAddr, port: u16) -> String {
    format!(
        "---\napiVersion: mesh.io/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\nspec: {{address: {ip}, ports: [{{name: http, port: {port}}}], serviceAccount: {app}}}\n"
    )
}

// ---------------------------------------------------------------------------------
// 1. startup

async fn startup(env: &Env, runs: usize, idle_seconds: u64) -> anyhow::Result<()> {
    let file = env.dir.join("mesh.yaml");
    let wl_ip = ip(61, 0, 2);
    std::fs::write(
        &file,
        format!(
            "{NS}{}{}",
            service_doc("w", 8080),
            workload_doc("w", "w", wl_ip, 8080)
        ),
    )?;
    let ctl = env.controller(&file, 100, "startup").await?;
    let proxy = env.bin_dir.join("mesh-proxy");

    println!("## startup\n");
    machine_line();

    // Baselines: process spawn cost, and loading the proxy binary (`--version`).
    let mut spawn_true = Vec::new();
    let mut spawn_version = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        Command::new("/bin/true").status()?;
        spawn_true.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        Command::new(&proxy)
            .arg("--version")
            .stdout(Stdio::null())
            .status()?;
        spawn_version.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let spawn_true = sorted(spawn_true);
    let spawn_version = sorted(spawn_version);

    let mut rows = vec![
        vec![
            "`/bin/true` exec→exit (baseline)".into(),
            format!("{:.2}", pct(&spawn_true, 50.0)),
            format!("{:.2}", pct(&spawn_true, 90.0)),
            format!("{:.2}", pct(&spawn_true, 100.0)),
            "1.00".into(),
            "".into(),
            "".into(),
            "".into(),
        ],
        vec![
            "`mesh-proxy --version` exec→exit".into(),
            format!("{:.2}", pct(&spawn_version, 50.0)),
            format!("{:.2}", pct(&spawn_version, 90.0)),
            format!("{:.2}", pct(&spawn_version, 100.0)),
            format!("{:.1}", pct(&spawn_version, 50.0) / pct(&spawn_true, 50.0)),
            "".into(),
            "".into(),
            "".into(),
        ],
    ];
    let mut rss_rows = Vec::new();
    for (label, extra) in [
        ("default (`--concurrency 2`)", vec![]),
        ("`--concurrency 1`", vec!["--concurrency", "1"]),
    ] {
        let subnet = if extra.is_empty() { 1 } else { 2 };
        let mut ready_ms = Vec::new();
        let mut at_ready = Vec::new();
        let mut procs = Vec::new();
        for i in 0..runs {
            let pip = ip(61, subnet, (i + 1) as u8);
            let args = env.proxy_args("w", pip, ctl.xds, &extra);
            let admin = SocketAddr::new(pip, 15000);
            let t0 = Instant::now();
            let p = env.spawn(&format!("proxy-{subnet}-{i}"), &proxy, &args)?;
            let Some(t1) =
                wait_ready(admin, Duration::from_secs(10), Duration::from_millis(1)).await
            else {
                bail!("{} not ready in 10 s; see {}", p.name, p.log.display());
            };
            ready_ms.push((t1 - t0).as_secs_f64() * 1e3);
            at_ready.push(rss_kib(p.pid()));
            procs.push(p);
        }
        // Every proxy of this set idles (all stay up) for at least idle_seconds.
        tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
        let idle: Vec<(u64, u64)> = procs.iter().map(|p| rss_kib(p.pid())).collect();
        drop(procs);
        let r = sorted(ready_ms);
        rows.push(vec![
            format!("`mesh-proxy` exec→`/ready` 200, {label}"),
            format!("{:.2}", pct(&r, 50.0)),
            format!("{:.2}", pct(&r, 90.0)),
            format!("{:.2}", pct(&r, 100.0)),
            format!("{:.1}", pct(&r, 50.0) / pct(&spawn_true, 50.0)),
            format!("{:.2}", pct(&r, 50.0) - pct(&spawn_true, 50.0)),
            format!("{}", r.iter().filter(|v| **v <= 100.0).count()),
            format!("{}", r.iter().filter(|v| **v >= 30.0).count()),
        ]);
        let rss = |v: &[(u64, u64)], hwm: bool| {
            sorted(
                v.iter()
                    .map(|(r, h)| mib(if hwm { *h } else { *r }))
                    .collect(),
            )
        };
        let (a_rss, a_hwm, i_rss, i_hwm) = (
            rss(&at_ready, false),
            rss(&at_ready, true),
            rss(&idle, false),
            rss(&idle, true),
        );
        rss_rows.push(vec![
            label.to_string(),
            format!("{:.2} / {:.2}", pct(&a_rss, 50.0), pct(&a_rss, 100.0)),
            format!("{:.2} / {:.2}", pct(&a_hwm, 50.0), pct(&a_hwm, 100.0)),
            format!("{:.2} / {:.2}", pct(&i_rss, 50.0), pct(&i_rss, 100.0)),
            format!("{:.2} / {:.2}", pct(&i_hwm, 50.0), pct(&i_hwm, 100.0)),
            format!("{}", idle.iter().filter(|(r, _)| *r < 8 * 1024).count()),
        ]);
    }
    drop(ctl);
    println!("Latency, ms ({runs} runs each; the proxies start one after another and stay up):\n");
    md_table(
        &[
            "what",
            "p50",
            "p90",
            "max",
            "p50 ÷ baseline p50",
            "p50 − baseline p50 (ms)",
            "runs ≤ 100 ms",
            "runs ≥ 30 ms",
        ],
        &rows,
    );
    println!("Memory, MiB (median / max over {runs} proxies; idle = after ≥ {idle_seconds} s):\n");
    md_table(
        &[
            "proxy",
            "VmRSS at ready",
            "VmHWM at ready",
            "VmRSS idle",
            "VmHWM idle",
            "idle VmRSS < 8 MiB",
        ],
        &rss_rows,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 2. convergence

async fn convergence(env: &Env, runs: usize, debounces: &[u64]) -> anyhow::Result<()> {
    println!("## convergence\n");
    machine_line();
    let mut rows = Vec::new();
    let mut metric_rows = Vec::new();
    for (k, &debounce) in debounces.iter().enumerate() {
        let file = env.dir.join(format!("mesh-{debounce}.yaml"));
        let pip = ip(62, k as u8, 1);
        let base = format!(
            "{NS}{}{}{}",
            service_doc("svc", 8080),
            workload_doc("client", "client", pip, 8080),
            workload_doc("svc-1", "svc", ip(62, 100, 1), 8080),
        );
        std::fs::write(&file, &base)?;
        let ctl = env
            .controller(&file, debounce, &format!("d{debounce}"))
            .await?;
        let args = env.proxy_args("client", pip, ctl.xds, &[]);
        let p = env.spawn(
            &format!("proxy-d{debounce}"),
            &env.bin_dir.join("mesh-proxy"),
            &args,
        )?;
        let admin = SocketAddr::new(pip, 15000);
        if wait_ready(admin, Duration::from_secs(10), Duration::from_millis(5))
            .await
            .is_none()
        {
            bail!("proxy not ready; see {}", p.log.display());
        }
        let dump_url = format!("http://{admin}/config_dump");
        let mut lat = Vec::new();
        let mut lat_add = Vec::new();
        let mut lat_remove = Vec::new();
        let mut timeouts = 0;
        for i in 0..runs {
            // Edits land at varying phases of the controller's 200 ms file poll.
            tokio::time::sleep(Duration::from_millis(150 + (i as u64 * 37) % 200)).await;
            let add = i % 2 == 0;
            let marker = format!("127.62.200.{}", i / 2 + 1);
            let text = if add {
                format!(
                    "{base}{}",
                    workload_doc(&format!("extra-{i}"), "svc", marker.parse()?, 8080)
                )
            } else {
                base.clone()
            };
            write_atomic(&file, &text)?;
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs(10);
            let mut done = None;
            while Instant::now() < deadline {
                if let Ok(body) = get_body(&dump_url).await
                    && body.contains(&format!("\"{marker}:8080\"")) == add
                {
                    done = Some(t0.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            match done {
                Some(ms) => {
                    lat.push(ms);
                    if add {
                        lat_add.push(ms)
                    } else {
                        lat_remove.push(ms)
                    }
                }
                None => timeouts += 1,
            }
        }
        let metrics = get_body(&format!("http://{}/metrics", ctl.admin)).await?;
        let hist = histogram(&metrics, "mesh_xds_convergence_seconds");
        drop(p);
        drop(ctl);
        let all = sorted(lat);
        let add = sorted(lat_add);
        let rem = sorted(lat_remove);
        for (what, v) in [
            ("add + remove", &all),
            ("add only", &add),
            ("remove only", &rem),
        ] {
            rows.push(vec![
                format!("{debounce}"),
                what.into(),
                format!("{}", v.len()),
                format!("{:.1}", pct(v, 50.0)),
                format!("{:.1}", pct(v, 99.0)),
                format!("{:.1}", pct(v, 100.0)),
                format!("{:.1}", mean(v)),
                format!("{}", v.iter().filter(|x| **x <= 1000.0).count()),
            ]);
        }
        if timeouts > 0 {
            println!("debounce {debounce}: {timeouts} edits not seen within 10 s\n");
        }
        metric_rows.push(vec![
            format!("{debounce}"),
            format!("{}", hist.count),
            format!("{:.2}", hist.sum / hist.count.max(1) as f64 * 1e3),
            format!("≤ {}", hist.quantile_bound(0.5)),
            format!("≤ {}", hist.quantile_bound(0.99)),
        ]);
    }
    println!(
        "Edit (write temp + rename) → proxy `/config_dump` shows the change, polled every 2 ms; ms. \
         File poll interval 200 ms (fixed); flags `--debounce-ms N`:\n"
    );
    md_table(
        &[
            "--debounce-ms",
            "edits",
            "n",
            "p50",
            "p99",
            "max",
            "mean",
            "≤ 1000 ms",
        ],
        &rows,
    );
    println!(
        "Controller `mesh_xds_convergence_seconds` (registry change seen → proxy ACK; per ACKed type; \
         excludes the file-poll delay):\n"
    );
    md_table(
        &[
            "--debounce-ms",
            "observations",
            "mean ms",
            "p50 bucket (s)",
            "p99 bucket (s)",
        ],
        &metric_rows,
    );
    Ok(())
}

#[derive(Default, Debug)]
struct Hist {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Hist {
    /// The upper bound of the bucket holding quantile `q`.
    fn quantile_bound(&self, q: f64) -> String {
        let want = (q * self.count as f64).ceil() as u64;
        for (le, c) in &self.buckets {
            if *c >= want.max(1) {
                return if le.is_infinite() {
                    "+Inf".into()
                } else {
                    format!("{le}")
                };
            }
        }
        "n/a".into()
    }
}

fn histogram(text: &str, name: &str) -> Hist {
    let mut h = Hist::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{le=\"")) {
            let (le, rest) = rest.split_once('"').unwrap_or(("", ""));
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            let c = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            h.buckets.push((le, c));
        } else if let Some(v) = line.strip_prefix(&format!("{name}_sum ")) {
            h.sum = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix(&format!("{name}_count ")) {
            h.count = v.trim().parse().unwrap_or(0);
        }
    }
    h
}

// ---------------------------------------------------------------------------------
// 3. overhead

fn upstream_main(addr: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        let body = Bytes::from_static(b"{\"server\":\"upstream\",\"ok\":true}\n");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(StatusCode::OK)
                                    .header("content-type", "application/json")
                                    .body(Full::new(body))
                                    .expect("valid response"),
                            )
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

struct LoadResult {
    seconds: f64,
    ok: usize,
    errors: usize,
    lat_us: Vec<f64>,
}

/// `requests` GETs of `uri` over `concurrency` keep-alive HTTP/1.1 connections to
/// `addr` (an absolute `uri` makes it an explicit-proxy request).
async fn load(
    addr: SocketAddr,
    uri: &str,
    host: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<LoadResult> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let uri = uri.to_string();
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(requests / concurrency + 1);
            let mut errors = 0usize;
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await?;
            tokio::spawn(conn);
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < requests {
                let req = Request::get(uri.as_str())
                    .header(http::header::HOST, host.as_str())
                    .body(Empty::new())?;
                let t = Instant::now();
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let ok = resp.status() == StatusCode::OK;
                resp.into_body().collect().await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                if !ok {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let mut all = Vec::with_capacity(requests);
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await??;
        all.extend(lat);
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(LoadResult {
        seconds,
        ok: all.len() - errors,
        errors,
        lat_us: sorted(all),
    })
}

/// A load target and the processes whose CPU is charged to it.
struct Scenario {
    name: &'static str,
    addr: SocketAddr,
    uri: String,
    host: String,
    /// (label, pids) whose CPU is measured.
    cpu: Vec<(&'static str, Vec<u32>)>,
}

async fn overhead(
    env: &Env,
    requests: usize,
    concurrency: usize,
    rounds: usize,
    nginx: &Path,
) -> anyhow::Result<()> {
    println!("## overhead\n");
    machine_line();
    let up_ip = ip(63, 0, 1);
    let cl_ip = ip(63, 0, 2);
    let ngx_ip = ip(63, 0, 3);
    let up_addr = SocketAddr::new(up_ip, 8080);
    let file = env.dir.join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "{NS}{}{}{}{}",
            service_doc("upstream", 8080),
            service_doc("client", 8080),
            workload_doc("upstream-1", "upstream", up_ip, 8080),
            workload_doc("client-1", "client", cl_ip, 8080),
        ),
    )?;
    let me = std::env::current_exe()?;
    let upstream = env.spawn(
        "upstream",
        &me,
        &["upstream".into(), "--addr".into(), up_addr.to_string()],
    )?;
    let ctl = env.controller(&file, 100, "overhead").await?;
    let proxy = env.bin_dir.join("mesh-proxy");
    let server_sc = env.spawn(
        "proxy-upstream",
        &proxy,
        &env.proxy_args("upstream-1", up_ip, ctl.xds, &[]),
    )?;
    let client_sc = env.spawn(
        "proxy-client",
        &proxy,
        &env.proxy_args("client-1", cl_ip, ctl.xds, &[]),
    )?;
    for (sc, ipaddr) in [(&server_sc, up_ip), (&client_sc, cl_ip)] {
        if wait_ready(
            SocketAddr::new(ipaddr, 15000),
            Duration::from_secs(10),
            Duration::from_millis(5),
        )
        .await
        .is_none()
        {
            bail!("{} not ready; see {}", sc.name, sc.log.display());
        }
    }
    if raw_status(up_addr, "/").await != Some(200) {
        bail!("upstream not answering; see {}", upstream.log.display());
    }

    let mut scenarios = vec![
        Scenario {
            name: "direct (baseline)",
            addr: up_addr,
            uri: "/".into(),
            host: format!("{up_addr}"),
            cpu: vec![("upstream", vec![upstream.pid()])],
        },
        Scenario {
            name: "mesh: client sidecar → server sidecar → upstream",
            addr: SocketAddr::new(cl_ip, 15001),
            uri: "http://upstream.default:8080/".into(),
            host: "upstream.default:8080".into(),
            cpu: vec![
                ("upstream", vec![upstream.pid()]),
                ("client sidecar", vec![client_sc.pid()]),
                ("server sidecar", vec![server_sc.pid()]),
            ],
        },
    ];

    // nginx as a plain reverse proxy, client -> nginx -> upstream.
    let mut nginx_proc = None;
    let mut nginx_conf_text = None;
    if nginx.exists() {
        let d = env.dir.join("nginx");
        std::fs::create_dir_all(&d)?;
        let conf = format!(
            r#"worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream app {{
        server {up_addr};
        keepalive 64;
    }}
    server {{
        listen {ngx_ip}:8080;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
            d = d.display()
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, &conf)?;
        let p = env.spawn(
            "nginx",
            nginx,
            &[
                "-p".into(),
                d.display().to_string(),
                "-e".into(),
                d.join("error.log").display().to_string(),
                "-c".into(),
                conf_path.display().to_string(),
            ],
        )?;
        let ngx_addr = SocketAddr::new(ngx_ip, 8080);
        let mut up = false;
        for _ in 0..200 {
            if raw_status(ngx_addr, "/").await == Some(200) {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if up {
            let mut pids = vec![p.pid()];
            let workers = children_of(p.pid());
            // Workers outlive a SIGKILLed master: register them to be killed too.
            CHILDREN
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(workers.iter().copied());
            pids.extend(workers);
            scenarios.push(Scenario {
                name: "nginx reverse proxy → upstream (reference)",
                addr: ngx_addr,
                uri: "/".into(),
                host: "upstream.default:8080".into(),
                cpu: vec![
                    ("upstream", vec![upstream.pid()]),
                    ("nginx (master+worker)", pids),
                ],
            });
            nginx_conf_text = Some(conf);
            nginx_proc = Some(p);
        } else {
            println!("nginx did not answer; skipped (log {})\n", p.log.display());
        }
    } else {
        println!("nginx not installed at {}; skipped\n", nginx.display());
    }

    // Warm up every path (connection pools, allocator).
    for s in &scenarios {
        let r = load(s.addr, &s.uri, &s.host, 2000, concurrency).await?;
        if r.errors > 0 {
            bail!("{}: {} errors during warm-up", s.name, r.errors);
        }
    }

    let bench_pid = std::process::id();
    let mut rows = Vec::new();
    let mut cpu_rows = Vec::new();
    let mut ratios: Vec<(usize, &'static str, f64)> = Vec::new();
    for round in 1..=rounds {
        let mut direct: Option<(f64, f64, f64)> = None;
        let mut mesh_cpu_per_k = None;
        for s in &scenarios {
            let before: Vec<f64> = s
                .cpu
                .iter()
                .map(|(_, pids)| pids.iter().map(|p| cpu_seconds(*p)).sum())
                .collect();
            let self_before = cpu_seconds(bench_pid);
            let r = load(s.addr, &s.uri, &s.host, requests, concurrency).await?;
            let self_cpu = cpu_seconds(bench_pid) - self_before;
            let after: Vec<f64> = s
                .cpu
                .iter()
                .map(|(_, pids)| pids.iter().map(|p| cpu_seconds(*p)).sum())
                .collect();
            let rps = r.ok as f64 / r.seconds;
            let p50 = pct(&r.lat_us, 50.0);
            let p99 = pct(&r.lat_us, 99.0);
            let (d_rps, d_p50, d_p99) = *direct.get_or_insert((rps, p50, p99));
            rows.push(vec![
                format!("{round}"),
                s.name.into(),
                format!("{}", r.ok),
                format!("{}", r.errors),
                format!("{rps:.0}"),
                format!("{:.0}", p50),
                format!("{:.0}", p99),
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    rps / d_rps,
                    p50 / d_p50,
                    p99 / d_p99
                ),
            ]);
            let per_k = |cpu: f64| cpu * 1000.0 / requests as f64 * 1e3; // ms per 1000 requests
            let mut proxy_total = 0.0;
            for (i, (label, _)) in s.cpu.iter().enumerate() {
                let d = after[i] - before[i];
                if *label != "upstream" {
                    proxy_total += d;
                }
                cpu_rows.push(vec![
                    format!("{round}"),
                    s.name.into(),
                    label.to_string(),
                    format!("{:.2}", d),
                    format!("{:.1}", per_k(d)),
                ]);
            }
            cpu_rows.push(vec![
                format!("{round}"),
                s.name.into(),
                "load generator (mesh-bench)".into(),
                format!("{:.2}", self_cpu),
                format!("{:.1}", per_k(self_cpu)),
            ]);
            if s.name.starts_with("mesh") {
                mesh_cpu_per_k = Some(per_k(proxy_total));
                ratios.push((
                    round,
                    "both sidecars, ms CPU / 1000 req",
                    per_k(proxy_total),
                ));
            }
            if s.name.starts_with("nginx") {
                ratios.push((round, "nginx, ms CPU / 1000 req", per_k(proxy_total)));
                if let Some(m) = mesh_cpu_per_k {
                    ratios.push((round, "both sidecars ÷ nginx", m / per_k(proxy_total)));
                    ratios.push((
                        round,
                        "one sidecar (mean of two) ÷ nginx",
                        m / 2.0 / per_k(proxy_total),
                    ));
                }
            }
        }
    }
    if let Some(p) = nginx_proc {
        let workers = children_of(p.pid());
        drop(p);
        for w in workers {
            kill_pid(w);
        }
    }
    drop(client_sc);
    drop(server_sc);
    drop(ctl);
    drop(upstream);

    println!(
        "{requests} requests per scenario and round, {concurrency} keep-alive HTTP/1.1 connections (hyper client in mesh-bench); \
         upstream = `mesh-bench upstream` (hyper, separate process, current-thread runtime, 34-byte JSON body); \
         the mesh path sends absolute-form `GET http://upstream.default:8080/` to the client sidecar's :15001 \
         (sidecar → sidecar is pooled h2c). Latency in µs; ratio columns are vs. direct in the same round:\n"
    );
    md_table(
        &[
            "round",
            "scenario",
            "ok",
            "errors",
            "req/s",
            "p50 µs",
            "p99 µs",
            "ratio req/s / p50 / p99",
        ],
        &rows,
    );
    println!("CPU (utime+stime from /proc/<pid>/stat, CLK_TCK = 100, so ±0.01 s per reading):\n");
    md_table(
        &["round", "scenario", "process", "CPU s", "CPU ms / 1000 req"],
        &cpu_rows,
    );
    md_table(
        &["round", "ratio", "value"],
        &ratios
            .iter()
            .map(|(r, w, v)| vec![format!("{r}"), w.to_string(), format!("{v:.2}")])
            .collect::<Vec<_>>(),
    );
    if let Some(conf) = nginx_conf_text {
        println!("nginx config used (written by mesh-bench):\n\n```nginx\n{conf}```\n");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// 4. xds-scale

enum Event {
    Synced(Instant, usize),
    Updated(usize, Instant),
    Failed(usize, String),
}

/// A log line without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn scale_mesh(proxies: usize, services: usize, extra: Option<usize>) -> String {
    let mut out = String::from(NS);
    for s in 0..services {
        out.push_str(&service_doc(&format!("svc-{s}"), 8080));
    }
    for i in 0..proxies {
        let a = ip(64, (i / 250) as u8, (i % 250 + 1) as u8);
        out.push_str(&workload_doc(
            &format!("p-{i}"),
            &format!("svc-{}", i % services),
            a,
            8080,
        ));
    }
    if let Some(r) = extra {
        out.push_str(&workload_doc(
            &format!("extra-{r}"),
            "svc-0",
            ip(65, 0, (r % 250 + 1) as u8),
            8080,
        ));
    }
    out
}

async fn ads_stream(
    i: usize,
    url: String,
    target: String,
    tx: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(url).await?;
    client = client.max_decoding_message_size(256 * 1024 * 1024);
    let (req_tx, req_rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let node = mesh_tests::xds::node(&format!("p-{i}"));
    for (k, ty) in ResourceType::ALL.iter().enumerate() {
        req_tx.send(DeltaDiscoveryRequest {
            node: (k == 0).then(|| node.clone()),
            type_url: ty.type_url().into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })?;
    }
    let mut stream = client
        .delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(req_rx))
        .await?
        .into_inner();
    let mut seen = std::collections::HashSet::new();
    let mut synced = false;
    let mut bytes = 0usize;
    while let Some(resp) = stream.message().await? {
        let now = Instant::now();
        if !synced {
            bytes += prost::Message::encoded_len(&resp);
        }
        req_tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })?;
        if !synced {
            seen.insert(resp.type_url.clone());
            if seen.len() == 4 {
                synced = true;
                let _ = tx.send(Event::Synced(now, bytes));
            }
        } else if resp.type_url == mesh_xds::types::ENDPOINT
            && resp.resources.iter().any(|r| r.name == target)
        {
            let _ = tx.send(Event::Updated(i, now));
        }
    }
    Ok(())
}

async fn xds_scale(
    env: &Env,
    proxies: usize,
    services: usize,
    rounds: usize,
    debounce: u64,
) -> anyhow::Result<()> {
    println!("## xds-scale ({proxies} Delta streams)\n");
    machine_line();
    let file = env.dir.join("mesh.yaml");
    let base = scale_mesh(proxies, services, None);
    std::fs::write(&file, &base)?;
    let ctl = env.controller(&file, debounce, "scale").await?;
    let cpid = ctl.proc.pid();
    let me = std::process::id();
    let (rss0, _) = rss_kib(cpid);
    let target = mesh_xds::names::service_port("svc-0.default.svc.cluster.local", 8080);
    let url = format!("http://{}", ctl.xds);
    let (tx, mut rx) = mpsc::unbounded_channel();

    // Connect all streams, at most 64 connecting at a time.
    let cpu_c0 = cpu_seconds(cpid);
    let cpu_s0 = cpu_seconds(me);
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(proxies);
    for i in 0..proxies {
        let (url, target, tx) = (url.clone(), target.clone(), tx.clone());
        let permit = sem.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let tx2 = tx.clone();
            // The permit is held until the stream is synced or failed.
            let (ptx, prx) = tokio::sync::oneshot::channel::<()>();
            let guard = tokio::spawn(async move {
                let _ = prx.await;
                drop(permit);
            });
            let (etx, mut erx) = mpsc::unbounded_channel();
            let fwd = tokio::spawn(async move {
                let mut ptx = Some(ptx);
                while let Some(ev) = erx.recv().await {
                    if matches!(ev, Event::Synced(..))
                        && let Some(p) = ptx.take()
                    {
                        let _ = p.send(());
                    }
                    let _ = tx.send(ev);
                }
            });
            if let Err(e) = ads_stream(i, url, target, etx).await {
                let _ = tx2.send(Event::Failed(i, format!("{e:#}")));
            }
            let _ = fwd.await;
            guard.abort();
        }));
    }
    let mut synced = 0;
    let mut failed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sync_times = Vec::new();
    let mut initial_bytes = 0usize;
    while synced + failed.len() < proxies {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(Event::Synced(at, b))) => {
                synced += 1;
                initial_bytes += b;
                sync_times.push((at - t0).as_secs_f64());
            }
            Ok(Some(Event::Failed(i, e))) => failed.push((i, e)),
            Ok(Some(Event::Updated(..))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let cpu_connect = cpu_seconds(cpid) - cpu_c0;
    let self_connect = cpu_seconds(me) - cpu_s0;
    let (rss1, hwm1) = rss_kib(cpid);
    println!(
        "Initial sync: {synced}/{proxies} streams synced (CDS, EDS, LDS, RDS received) in {connect_secs:.2} s \
         (64 connecting at a time); {} failed{}. Controller CPU {cpu_connect:.2} s, mesh-bench CPU {self_connect:.2} s.\n",
        failed.len(),
        failed
            .first()
            .map(|(i, e)| format!(" (first: stream {i}: {e})"))
            .unwrap_or_default()
    );
    if synced < proxies {
        drop(tasks);
        bail!("not every stream synced");
    }

    // Rounds: add / remove one endpoint of svc-0 (every proxy gets a new EDS for it).
    let mut rows = Vec::new();
    let mut per_stream_all = Vec::new();
    let cpu_u0 = cpu_seconds(cpid);
    let self_u0 = cpu_seconds(me);
    let mut update_wall = 0.0;
    for r in 0..rounds {
        tokio::time::sleep(Duration::from_millis(700 + (r as u64 * 71) % 200)).await;
        while rx.try_recv().is_ok() {}
        let text = if r % 2 == 0 {
            scale_mesh(proxies, services, Some(r))
        } else {
            base.clone()
        };
        let w0 = Instant::now();
        write_atomic(&env.dir.join("mesh.yaml"), &text)?;
        let t0 = Instant::now();
        let mut got: HashMap<usize, f64> = HashMap::with_capacity(proxies);
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < proxies {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some(Event::Updated(i, at))) => {
                    got.entry(i).or_insert((at - t0).as_secs_f64() * 1e3);
                }
                Ok(Some(Event::Failed(i, e))) => bail!("stream {i} failed: {e}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        update_wall += w0.elapsed().as_secs_f64();
        let v = sorted(got.values().copied().collect());
        let first = pct(&v, 0.0);
        rows.push(vec![
            format!("{}", r + 1),
            if r % 2 == 0 {
                "add".into()
            } else {
                "remove".into()
            },
            format!("{}/{proxies}", v.len()),
            format!("{:.0}", first),
            format!("{:.0}", pct(&v, 50.0)),
            format!("{:.0}", pct(&v, 99.0)),
            format!("{:.0}", pct(&v, 100.0)),
            format!("{:.0}", pct(&v, 100.0) - first),
        ]);
        per_stream_all.extend(v);
    }
    let cpu_update = cpu_seconds(cpid) - cpu_u0;
    let self_update = cpu_seconds(me) - self_u0;
    let (rss2, hwm2) = rss_kib(cpid);
    let builds: Vec<String> = std::fs::read_to_string(&ctl.proc.log)
        .unwrap_or_default()
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("built xDS snapshot"))
        .filter_map(|l| {
            l.split("build_ms=")
                .nth(1)
                .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
        })
        .collect();
    for t in tasks {
        t.abort();
    }
    drop(ctl);
    println!(
        "Per round: mesh file edit → each stream receives the new `svc-0` EDS (ms). {services} services, \
         {proxies} workloads (one per stream, so each service has {} endpoints), controller flags \
         `--debounce-ms {debounce}` (file poll 200 ms). \"spread\" = last − first stream, the controller's fan-out time:\n",
        proxies / services
    );
    md_table(
        &[
            "round",
            "edit",
            "streams updated",
            "first",
            "p50",
            "p99",
            "all done",
            "spread",
        ],
        &rows,
    );
    let all = sorted(per_stream_all);
    println!(
        "All rounds, per stream: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms.\n",
        pct(&all, 50.0),
        pct(&all, 99.0),
        pct(&all, 100.0)
    );
    md_table(
        &["controller", "value"],
        &[
            vec![
                "VmRSS before streams".into(),
                format!("{:.1} MiB", mib(rss0)),
            ],
            vec![
                "VmRSS / VmHWM all synced".into(),
                format!("{:.1} / {:.1} MiB", mib(rss1), mib(hwm1)),
            ],
            vec![
                "VmRSS / VmHWM after rounds".into(),
                format!("{:.1} / {:.1} MiB", mib(rss2), mib(hwm2)),
            ],
            vec![
                "initial xDS bytes per stream (encoded responses, mean)".into(),
                format!("{:.1} KiB", initial_bytes as f64 / 1024.0 / proxies as f64),
            ],
            vec![
                "RSS per stream (synced − before)".into(),
                format!("{:.1} KiB", (rss1 as f64 - rss0 as f64) / proxies as f64),
            ],
            vec![
                "CPU, initial sync of all streams".into(),
                format!(
                    "{cpu_connect:.2} s ({:.2} ms per stream)",
                    cpu_connect * 1e3 / proxies as f64
                ),
            ],
            vec![
                "CPU, all rounds".into(),
                format!(
                    "{cpu_update:.2} s over {update_wall:.1} s of rounds ({:.2} ms per stream per round)",
                    cpu_update * 1e3 / (proxies * rounds) as f64
                ),
            ],
            vec![
                "mesh-bench CPU (the streams' client side), rounds".into(),
                format!("{self_update:.2} s"),
            ],
            vec![
                "snapshot build_ms (controller log, per change)".into(),
                builds.join(", "),
            ],
        ],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 5. mtls

struct MtlsOpts {
    connectors: usize,
    handshake_seconds: u64,
    requests: usize,
    concurrency: usize,
    serial_requests: usize,
    rounds: usize,
}

/// `mesh.identity.v1` messages (proto/mesh/identity/v1/identity.proto), declared
/// here because the tests crate does not depend on mesh-proto.
mod certify_pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CertifyRequest {
        #[prost(string, tag = "1")]
        pub token: String,
        #[prost(bytes = "vec", tag = "2")]
        pub csr_der: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CertifyResponse {
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub cert_chain_der: Vec<Vec<u8>>,
        #[prost(int64, tag = "2")]
        pub valid_until: i64,
    }
}

/// The HTTP/2 client preface followed by an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
/// An empty HTTP/2 SETTINGS frame: what an HTTP/2 server sends first.
const H2_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A join token for `default/<sa>` from the controller's admin API.
async fn join_token(admin: SocketAddr, sa: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({"namespace": "default", "service_account": sa});
    let (status, text) = mesh_tests::http::post_json(&format!("http://{admin}/tokens"), &body)
        .await
        .context("controller admin not reachable")?;
    if status != 200 {
        bail!("POST /tokens: {status} {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["token"]
        .as_str()
        .context("no token in reply")?
        .to_string())
}

/// A workload certificate the way a sidecar gets one: a fresh ECDSA P-256
/// `WorkloadKey`, a CSR, and `mesh.identity.v1.Identity/Certify` with a join token
/// over TLS to the controller's secure port (the controller's SPIFFE ID checked).
/// Returns the credentials, the chain (DER, leaf first) and the PKCS#8 key.
async fn certify(
    secure: SocketAddr,
    anchors: &[Vec<u8>],
    token: &str,
) -> anyhow::Result<(mesh_identity::tls::Credentials, Vec<Vec<u8>>, Vec<u8>)> {
    use mesh_identity::tls::{ALPN_H2, Credentials, client_config, mesh_server_name};
    let key = mesh_identity::csr::WorkloadKey::generate()?;
    let csr_der = key.csr_der()?;
    let config = client_config(None, anchors, &[ALPN_H2])?;
    let tcp = TcpStream::connect(secure).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(mesh_server_name(), tcp)
        .await
        .context("TLS handshake with the controller")?;
    let peer = mesh_identity::tls::peer_identity(tls.get_ref().1.peer_certificates())
        .map(|i| i.to_string())
        .unwrap_or_default();
    if !peer.ends_with("/ns/mesh-system/sa/mesh-controller") {
        bail!("the secure port answered as {peer:?}, not the controller");
    }
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    let conn = tokio::spawn(conn);
    let msg = prost::Message::encode_to_vec(&certify_pb::CertifyRequest {
        token: token.to_string(),
        csr_der,
    });
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let req = Request::post(format!("http://{secure}/mesh.identity.v1.Identity/Certify"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(Bytes::from(framed)))?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let field = |name: &str| {
        collected
            .trailers()
            .and_then(|t| t.get(name))
            .or_else(|| parts.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (status, message) = (field("grpc-status"), field("grpc-message"));
    let data = collected.to_bytes();
    conn.abort();
    if status != "0" || data.len() < 5 {
        bail!("Certify failed: grpc-status {status:?} {message}");
    }
    let reply = <certify_pb::CertifyResponse as prost::Message>::decode(&data[5..])?;
    let key_der = key.private_key_der().secret_der().to_vec();
    let creds = Credentials::new(reply.cert_chain_der.clone(), key.private_key_der())?;
    Ok((creds, reply.cert_chain_der, key_der))
}

/// `mesh-bench tls-server`: the handshake baseline, its own process so its CPU is
/// measured like the sidecar's. Same server configuration as the sidecar's inbound
/// (`mesh_identity::tls::server_config`, client certificate required, ALPN h2 and
/// http/1.1), same runtime size (2 worker threads, the sidecar's `--concurrency`).
fn tls_server_main(addr: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    use mesh_identity::tls::{ALPN_H2, ClientAuth, Credentials, server_config};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let key = std::fs::read(dir.join("key.der"))?;
    let mut chain = Vec::new();
    while let Ok(der) = std::fs::read(dir.join(format!("chain-{}.der", chain.len()))) {
        chain.push(der);
    }
    let anchors =
        mesh_identity::tls::anchors_from_pem(&std::fs::read_to_string(dir.join("anchors.pem"))?)?;
    let creds = Credentials::new(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))?;
    let config = server_config(
        &creds,
        &anchors,
        ClientAuth::Required,
        &[ALPN_H2, b"http/1.1"],
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let limit = Duration::from_secs(10);
                let Ok(Ok(mut tls)) = tokio::time::timeout(limit, acceptor.accept(stream)).await
                else {
                    return;
                };
                if tls.write_all(&H2_SETTINGS).await.is_err() || tls.flush().await.is_err() {
                    return;
                }
                let mut buf = [0u8; 256];
                while let Ok(Ok(n)) = tokio::time::timeout(limit, tls.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    })
}

#[derive(Default)]
struct HsResult {
    ok: usize,
    errors: usize,
    resumed: usize,
    seconds: f64,
    lat_us: Vec<f64>,
    first_error: Option<String>,
}

/// One client connection: TCP from `src`, TLS 1.3 handshake, the server's identity
/// checked, the HTTP/2 preface sent and the server's first bytes (its SETTINGS)
/// read, which proves the server finished the handshake and accepted our
/// certificate. Returns whether the session was resumed.
async fn one_handshake(
    connector: &tokio_rustls::TlsConnector,
    src: IpAddr,
    target: SocketAddr,
    expected: &str,
) -> anyhow::Result<bool> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let tcp = sock.connect(target).await?;
    tcp.set_nodelay(true)?;
    // Close with a reset: tens of thousands of TIME_WAIT sockets would otherwise
    // exhaust the ephemeral ports and make every bind() a long search (kernel CPU
    // charged to the client).
    tcp.set_zero_linger()?;
    let mut tls = connector
        .connect(mesh_identity::tls::mesh_server_name(), tcp)
        .await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let seen = mesh_identity::tls::peer_identity(tls.get_ref().1.peer_certificates())
        .map(|i| i.to_string());
    if seen.as_deref() != Some(expected) {
        bail!("server identity {seen:?}, expected {expected}");
    }
    tls.write_all(H2_PREFACE).await?;
    tls.flush().await?;
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).await?;
    if n == 0 {
        bail!("closed by the server before it sent anything");
    }
    Ok(resumed)
}

/// `connectors` loops of [`one_handshake`] against `target` for `duration`;
/// connector k connects from 127.66.1.(k+1).
async fn handshake_loop(
    target: SocketAddr,
    expected: &str,
    config: Arc<rustls::ClientConfig>,
    connectors: usize,
    duration: Duration,
) -> HsResult {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for k in 0..connectors {
        let src = ip(66, 1, (k % 250 + 1) as u8);
        let config = config.clone();
        let expected = expected.to_string();
        tasks.push(tokio::spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(config);
            let mut r = HsResult::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let one = tokio::time::timeout(
                    Duration::from_secs(5),
                    one_handshake(&connector, src, target, &expected),
                )
                .await;
                match one {
                    Ok(Ok(resumed)) => {
                        r.ok += 1;
                        r.resumed += resumed as usize;
                        r.lat_us.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    Ok(Err(e)) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {
                        r.errors += 1;
                        r.first_error.get_or_insert("timed out after 5 s".into());
                    }
                }
            }
            r
        }));
    }
    let mut all = HsResult::default();
    for t in tasks {
        if let Ok(r) = t.await {
            all.ok += r.ok;
            all.errors += r.errors;
            all.resumed += r.resumed;
            all.lat_us.extend(r.lat_us);
            if all.first_error.is_none() {
                all.first_error = r.first_error;
            }
        }
    }
    all.seconds = start.elapsed().as_secs_f64();
    all.lat_us = sorted(all.lat_us);
    all
}

/// ESTABLISHED TCP connections of process `pid` to `to`: /proc/net/tcp rows whose
/// socket inode is one of the process's file descriptors. (By inode, not by
/// source address: a sidecar's outbound connections to another loopback address
/// leave from 127.0.0.1, not from its own `--ip`.)
fn established(pid: u32, to: SocketAddr) -> usize {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            if let Ok(link) = std::fs::read_link(e.path())
                && let Some(n) = link
                    .to_str()
                    .and_then(|l| l.strip_prefix("socket:["))
                    .and_then(|l| l.strip_suffix(']'))
            {
                inodes.insert(n.to_string());
            }
        }
    }
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    // "0300427F:3A9E": the address as the kernel's native-endian u32, then the port.
    let parse = |s: &str| -> Option<SocketAddr> {
        let (a, p) = s.split_once(':')?;
        let a = u32::from_str_radix(a, 16).ok()?;
        let p = u16::from_str_radix(p, 16).ok()?;
        Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(a.to_le_bytes())),
            p,
        ))
    };
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[3] == "01" && parse(f[2]) == Some(to) && inodes.contains(f[9])
        })
        .count()
}

/// The sum of a counter's samples whose line contains every string of `labels`.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Inbound connections a sidecar accepted (`mesh_tcp_connections_opened_total`,
/// reporter destination) and its failed inbound TLS handshakes.
async fn inbound_accepted(admin: SocketAddr) -> anyhow::Result<(f64, f64)> {
    let m = get_body(&format!("http://{admin}/metrics")).await?;
    Ok((
        counter(
            &m,
            "mesh_tcp_connections_opened_total",
            &["reporter=\"destination\""],
        ),
        counter(&m, "mesh_inbound_tls_handshake_failures_total", &[]),
    ))
}

/// A mesh path of the latency runs: client sidecar → server sidecar → upstream.
struct MeshPath {
    server_ip: Ipv4Addr,
    client_pid: u32,
    server_pid: u32,
    upstream_pid: u32,
}

impl MeshPath {
    fn inbound(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.server_ip), 15006)
    }
    fn server_admin(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.server_ip), 15000)
    }
}

/// A load target of the latency runs.
struct MtlsScenario<'a> {
    name: &'static str,
    addr: SocketAddr,
    uri: &'static str,
    host: String,
    upstream_pid: u32,
    path: Option<&'a MeshPath>,
}

async fn mtls(env: &Env, o: MtlsOpts) -> anyhow::Result<()> {
    println!("## mtls\n");
    machine_line();
    let v4 = |c: u8| Ipv4Addr::new(127, 66, 0, c);
    let (up_plain, cl_plain, up_tls, cl_tls, base_ip) = (v4(1), v4(2), v4(3), v4(4), v4(5));
    let file = env.dir.join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "{NS}{}{}{}{}{}{}{}{}",
            service_doc("up-plain", 8080),
            service_doc("client-plain", 8080),
            service_doc("up-mtls", 8080),
            service_doc("client-mtls", 8080),
            workload_doc("up-plain-1", "up-plain", up_plain.into(), 8080),
            workload_doc("client-plain-1", "client-plain", cl_plain.into(), 8080),
            workload_doc("up-mtls-1", "up-mtls", up_tls.into(), 8080),
            workload_doc("client-mtls-1", "client-mtls", cl_tls.into(), 8080),
        ),
    )?;
    let me = std::env::current_exe()?;
    let mut upstreams = Vec::new();
    for (name, a) in [("upstream-plain", up_plain), ("upstream-mtls", up_tls)] {
        let addr = SocketAddr::new(a.into(), 8080);
        let args = ["upstream".into(), "--addr".into(), addr.to_string()];
        upstreams.push(env.spawn(name, &me, &args)?);
    }
    let ctl = env.controller(&file, 100, "mtls").await?;
    let bundle = get_body(&format!("http://{}/ca/bundle", ctl.admin)).await?;
    let anchors_pem = env.dir.join("trust-anchors.pem");
    std::fs::write(&anchors_pem, &bundle)?;
    let anchors = mesh_identity::tls::anchors_from_pem(&bundle)?;

    // Sidecars: dev mode (no token, plaintext xDS, h2c between sidecars) and with
    // identities (token + trust anchors, xDS over the TLS port, mutual TLS between
    // sidecars; the mesh's default mode, STRICT, on the inbound side).
    let proxy = env.bin_dir.join("mesh-proxy");
    let mut sidecars = Vec::new();
    for (wl, a) in [("up-plain-1", up_plain), ("client-plain-1", cl_plain)] {
        let args = env.proxy_args(wl, a.into(), ctl.xds, &[]);
        sidecars.push((env.spawn(&format!("proxy-{wl}"), &proxy, &args)?, a));
    }
    for (wl, sa, a) in [
        ("up-mtls-1", "up-mtls", up_tls),
        ("client-mtls-1", "client-mtls", cl_tls),
    ] {
        let token = env.dir.join(format!("{wl}.token"));
        std::fs::write(&token, join_token(ctl.admin, sa).await?)?;
        let mut args = env.proxy_args(wl, a.into(), ctl.xds, &[]);
        let xds = args
            .iter()
            .position(|s| s == "--xds-addr")
            .context("proxy args")?;
        args[xds + 1] = format!("https://{}", ctl.secure);
        args.extend([
            "--token-file".into(),
            token.display().to_string(),
            "--trust-anchors".into(),
            anchors_pem.display().to_string(),
        ]);
        sidecars.push((env.spawn(&format!("proxy-{wl}"), &proxy, &args)?, a));
    }
    for (sc, a) in &sidecars {
        let admin = SocketAddr::new((*a).into(), 15000);
        if wait_ready(admin, Duration::from_secs(15), Duration::from_millis(5))
            .await
            .is_none()
        {
            bail!("{} not ready; see {}", sc.name, sc.log.display());
        }
    }
    let pid_of = |a: Ipv4Addr| {
        sidecars
            .iter()
            .find(|(_, x)| *x == a)
            .map(|(p, _)| p.pid())
            .expect("sidecar")
    };
    let plain = MeshPath {
        server_ip: up_plain,
        client_pid: pid_of(cl_plain),
        server_pid: pid_of(up_plain),
        upstream_pid: upstreams[0].pid(),
    };
    let tls = MeshPath {
        server_ip: up_tls,
        client_pid: pid_of(cl_tls),
        server_pid: pid_of(up_tls),
        upstream_pid: upstreams[1].pid(),
    };
    let server_id = "spiffe://cluster.local/ns/default/sa/up-mtls";
    let base_id = "spiffe://cluster.local/ns/default/sa/bench-server";

    // The handshake loop's client identity and the baseline server's identity:
    // both from the same controller's CA through Certify, like a sidecar's.
    let token = join_token(ctl.admin, "bench-client").await?;
    let (client_creds, _, _) = certify(ctl.secure, &anchors, &token).await?;
    let token = join_token(ctl.admin, "bench-server").await?;
    let (_, base_chain, base_key) = certify(ctl.secure, &anchors, &token).await?;
    let base_dir = env.dir.join("tls-server");
    std::fs::create_dir_all(&base_dir)?;
    std::fs::write(base_dir.join("key.der"), &base_key)?;
    for (i, der) in base_chain.iter().enumerate() {
        std::fs::write(base_dir.join(format!("chain-{i}.der")), der)?;
    }
    std::fs::write(base_dir.join("anchors.pem"), &bundle)?;
    let base_addr = SocketAddr::new(base_ip.into(), 15006);
    let base_args = [
        "tls-server".into(),
        "--addr".into(),
        base_addr.to_string(),
        "--dir".into(),
        base_dir.display().to_string(),
    ];
    let base = env.spawn("tls-server", &me, &base_args)?;
    let mut listening = false;
    for _ in 0..200 {
        if TcpStream::connect(base_addr).await.is_ok() {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !listening {
        bail!("tls-server not listening; see {}", base.log.display());
    }
    println!(
        "Certificates: ECDSA P-256 keys (`WorkloadKey`) for the sidecars, the handshake client and the baseline \
         server, all issued by the controller's CA through `Certify` (join token from `POST /tokens`); chain \
         length {} (leaf{}), trust bundle {} root(s).\n",
        base_chain.len(),
        if base_chain.len() > 1 {
            " + intermediates"
        } else {
            " only"
        },
        anchors.len(),
    );

    // --- 1. Handshakes per second --------------------------------------------
    let alpn: &[&[u8]] = &[mesh_identity::tls::ALPN_H2];
    let default_config = mesh_identity::tls::client_config(Some(&client_creds), &anchors, alpn)?;
    let full_config = {
        let mut c = (*default_config).clone();
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    };
    let targets = [
        (
            "rustls baseline (`mesh-bench tls-server`)",
            base_addr,
            base_id,
            base.pid(),
        ),
        (
            "sidecar inbound :15006 (`mesh-proxy`, STRICT)",
            tls.inbound(),
            server_id,
            tls.server_pid,
        ),
    ];
    let bench_pid = std::process::id();
    let dur = Duration::from_secs(o.handshake_seconds);
    for (_, addr, id, _) in &targets {
        let warm = Duration::from_secs(1);
        let r = handshake_loop(*addr, id, full_config.clone(), o.connectors, warm).await;
        if r.ok == 0 {
            bail!(
                "no handshake with {addr} succeeded: {}",
                r.first_error.unwrap_or_default()
            );
        }
    }
    let (accepted0, failures0) = inbound_accepted(tls.server_admin()).await?;
    let mut hs_rows = Vec::new();
    let mut hs_ratios: Vec<Vec<String>> = Vec::new();
    let mut hs_attempts = 0usize;
    // Per-round ratios and sums, for the medians at the end.
    let mut m: HashMap<&'static str, Vec<f64>> = HashMap::new();
    for round in 1..=o.rounds {
        for (mode, config) in [
            ("full (resumption off)", full_config.clone()),
            (
                "resumption on (rustls default, like the sidecar's client)",
                default_config.clone(),
            ),
        ] {
            let mut per_target = Vec::new();
            for (name, addr, id, pid) in &targets {
                let s0 = cpu_seconds(*pid);
                let c0 = cpu_seconds(bench_pid);
                let r = handshake_loop(*addr, id, config.clone(), o.connectors, dur).await;
                let s = cpu_seconds(*pid) - s0;
                let c = cpu_seconds(bench_pid) - c0;
                if *pid == tls.server_pid {
                    hs_attempts += r.ok + r.errors;
                }
                let rate = r.ok as f64 / r.seconds;
                let per = |cpu: f64| cpu * 1e3 / r.ok.max(1) as f64;
                let errors = match &r.first_error {
                    Some(e) => format!("{} ({e})", r.errors),
                    None => format!("{}", r.errors),
                };
                hs_rows.push(vec![
                    format!("{round}"),
                    mode.into(),
                    name.to_string(),
                    format!("{}", r.ok),
                    errors,
                    format!("{}", r.resumed),
                    format!("{rate:.0}"),
                    format!("{:.2}", pct(&r.lat_us, 50.0) / 1e3),
                    format!("{:.2}", pct(&r.lat_us, 99.0) / 1e3),
                    format!("{:.3}", per(s)),
                    format!("{:.3}", per(c)),
                ]);
                per_target.push((rate, per(s)));
            }
            let full = mode.starts_with("full");
            let key = |a: &'static str, b: &'static str| if full { a } else { b };
            m.entry(key("hs full rate", "hs resumed rate"))
                .or_default()
                .push(per_target[1].0 / per_target[0].0);
            m.entry(key("hs full cpu", "hs resumed cpu"))
                .or_default()
                .push(per_target[1].1 / per_target[0].1);
            m.entry(key("hs full sidecar rate", "hs resumed sidecar rate"))
                .or_default()
                .push(per_target[1].0);
            m.entry(key("hs full sidecar cpu", "hs resumed sidecar cpu"))
                .or_default()
                .push(per_target[1].1);
            hs_ratios.push(vec![
                format!("{round}"),
                mode.into(),
                format!("{:.2}", per_target[1].0 / per_target[0].0),
                format!("{:.2}", per_target[1].1 / per_target[0].1),
            ]);
        }
    }
    let (accepted1, failures1) = inbound_accepted(tls.server_admin()).await?;
    drop(base);

    println!(
        "### Handshakes per second\n\n{} connectors (each its own source IP 127.66.1.k), {} s per measurement, \
         after 1 s of warm-up per target; targets alternate. One handshake = TCP connect, TLS 1.3 handshake with a \
         client certificate (ECDSA P-256), server SPIFFE ID checked, HTTP/2 preface sent, first server bytes (its \
         SETTINGS) read, close (SO_LINGER 0, so no TIME_WAIT piles up). Time in ms from connect to first server bytes. CPU from /proc/<pid>/stat \
         (CLK_TCK 100): server = the sidecar or the baseline process, client = mesh-bench (the connectors):\n",
        o.connectors, o.handshake_seconds
    );
    md_table(
        &[
            "round",
            "client sessions",
            "server",
            "handshakes",
            "errors",
            "resumed",
            "handshakes/s",
            "p50 ms",
            "p99 ms",
            "server CPU ms / handshake",
            "client CPU ms / handshake",
        ],
        &hs_rows,
    );
    md_table(
        &[
            "round",
            "client sessions",
            "sidecar ÷ baseline, handshakes/s",
            "sidecar ÷ baseline, server CPU / handshake",
        ],
        &hs_ratios,
    );
    println!(
        "The sidecar's own count over the measurements: `mesh_tcp_connections_opened_total{{reporter=\"destination\"}}` \
         +{:.0} (client attempts {hs_attempts}), `mesh_inbound_tls_handshake_failures_total` +{:.0}.\n",
        accepted1 - accepted0,
        failures1 - failures0
    );

    // --- 2. Latency of the mTLS hop; 3. pooling ----------------------------------
    let direct_addr = SocketAddr::new(up_plain.into(), 8080);
    let scenarios = [
        MtlsScenario {
            name: "direct (baseline)",
            addr: direct_addr,
            uri: "/",
            host: direct_addr.to_string(),
            upstream_pid: plain.upstream_pid,
            path: None,
        },
        MtlsScenario {
            name: "plaintext mesh (dev mode, h2c between sidecars)",
            addr: SocketAddr::new(cl_plain.into(), 15001),
            uri: "http://up-plain.default:8080/",
            host: "up-plain.default:8080".into(),
            upstream_pid: plain.upstream_pid,
            path: Some(&plain),
        },
        MtlsScenario {
            name: "mTLS mesh (identities, STRICT)",
            addr: SocketAddr::new(cl_tls.into(), 15001),
            uri: "http://up-mtls.default:8080/",
            host: "up-mtls.default:8080".into(),
            upstream_pid: tls.upstream_pid,
            path: Some(&tls),
        },
    ];
    // Inbound connections each server sidecar accepted before any request.
    let mut accepted_start = Vec::new();
    for s in &scenarios {
        accepted_start.push(match s.path {
            Some(p) => inbound_accepted(p.server_admin()).await?.0,
            None => 0.0,
        });
    }
    let mut sent = [0usize; 3];
    for (i, s) in scenarios.iter().enumerate() {
        let r = load(s.addr, s.uri, &s.host, 2000, o.concurrency).await?;
        sent[i] += 2000;
        if r.errors > 0 {
            bail!("{}: {} errors during warm-up", s.name, r.errors);
        }
    }
    let mut rows = Vec::new();
    let mut cpu_rows = Vec::new();
    let mut ratio_rows = Vec::new();
    let mut serial_rows = Vec::new();
    let mut serial_ratio_rows = Vec::new();
    let mut pool_rows = Vec::new();
    let per_k = |cpu: f64, n: usize| cpu * 1e6 / n as f64;
    for round in 1..=o.rounds {
        // (req/s, p50, p99, both sidecars' CPU per 1000) per scenario.
        let mut res: Vec<(f64, f64, f64, f64)> = Vec::new();
        for (i, s) in scenarios.iter().enumerate() {
            let pids: Vec<u32> = s
                .path
                .map(|p| vec![p.client_pid, p.server_pid])
                .unwrap_or_default();
            let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
            let u0 = cpu_seconds(s.upstream_pid);
            let b0 = cpu_seconds(bench_pid);
            let acc0 = match s.path {
                Some(p) => inbound_accepted(p.server_admin()).await?.0,
                None => 0.0,
            };
            let r = load(s.addr, s.uri, &s.host, o.requests, o.concurrency).await?;
            sent[i] += o.requests;
            let b = cpu_seconds(bench_pid) - b0;
            let u = cpu_seconds(s.upstream_pid) - u0;
            let d: Vec<f64> = pids
                .iter()
                .zip(&before)
                .map(|(p, b)| cpu_seconds(*p) - b)
                .collect();
            let rps = r.ok as f64 / r.seconds;
            let (p50, p99) = (pct(&r.lat_us, 50.0), pct(&r.lat_us, 99.0));
            let sidecars: f64 = d.iter().sum();
            res.push((rps, p50, p99, per_k(sidecars, o.requests)));
            rows.push(vec![
                format!("{round}"),
                s.name.into(),
                format!("{}", r.ok),
                format!("{}", r.errors),
                format!("{rps:.0}"),
                format!("{p50:.0}"),
                format!("{p99:.0}"),
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    rps / res[0].0,
                    p50 / res[0].1,
                    p99 / res[0].2
                ),
            ]);
            let cell = |v: Option<&f64>| {
                v.map(|c| format!("{:.1}", per_k(*c, o.requests)))
                    .unwrap_or_default()
            };
            cpu_rows.push(vec![
                format!("{round}"),
                s.name.into(),
                cell(d.first()),
                cell(d.get(1)),
                cell((!d.is_empty()).then_some(&sidecars)),
                cell(Some(&u)),
                cell(Some(&b)),
            ]);
            if let Some(p) = s.path {
                let acc1 = inbound_accepted(p.server_admin()).await?.0;
                pool_rows.push(vec![
                    format!("{round}"),
                    s.name.into(),
                    format!("{}", o.requests),
                    format!("{:.0}", acc1 - acc0),
                    format!("{:.3}", (acc1 - acc0) * 1000.0 / o.requests as f64),
                    format!("{}", established(p.client_pid, p.inbound())),
                ]);
            }
        }
        let (d, pl, tl) = (res[0], res[1], res[2]);
        for (k, v) in [
            ("rps", tl.0 / pl.0),
            ("p50", tl.1 / pl.1),
            ("p99", tl.2 / pl.2),
            ("cpu", tl.3 / pl.3),
            ("cpu plain", pl.3),
            ("cpu mtls", tl.3),
            ("rps plain vs direct", pl.0 / d.0),
            ("rps mtls vs direct", tl.0 / d.0),
        ] {
            m.entry(k).or_default().push(v);
        }
        ratio_rows.push(vec![
            format!("{round}"),
            format!("{:.2}", tl.0 / pl.0),
            format!("{:.2}", tl.1 / pl.1),
            format!("{:.2}", tl.2 / pl.2),
            format!("{:.1} / {:.1} = {:.2}", tl.3, pl.3, tl.3 / pl.3),
            format!("{:.0} / {:.0}", pl.1 - d.1, tl.1 - d.1),
            format!("{:.0}", tl.1 - pl.1),
        ]);

        // One connection, one request at a time.
        let mut ser: Vec<(f64, f64)> = Vec::new();
        for (i, s) in scenarios.iter().enumerate() {
            let r = load(s.addr, s.uri, &s.host, o.serial_requests, 1).await?;
            sent[i] += o.serial_requests;
            let (p50, p99) = (pct(&r.lat_us, 50.0), pct(&r.lat_us, 99.0));
            ser.push((p50, p99));
            serial_rows.push(vec![
                format!("{round}"),
                s.name.into(),
                format!("{}", r.ok),
                format!("{}", r.errors),
                format!("{:.0}", r.ok as f64 / r.seconds),
                format!("{p50:.0}"),
                format!("{p99:.0}"),
                format!("{:.0}", mean(&r.lat_us)),
                format!("{:.0}", p50 - ser[0].0),
            ]);
        }
        for (k, v) in [
            ("serial plain add", ser[1].0 - ser[0].0),
            ("serial mtls add", ser[2].0 - ser[0].0),
            ("serial diff", ser[2].0 - ser[1].0),
            ("serial p50 ratio", ser[2].0 / ser[1].0),
        ] {
            m.entry(k).or_default().push(v);
        }
        serial_ratio_rows.push(vec![
            format!("{round}"),
            format!("{:.0}", ser[1].0 - ser[0].0),
            format!("{:.0}", ser[2].0 - ser[0].0),
            format!("{:.0}", ser[2].0 - ser[1].0),
            format!("{:.2}", ser[2].0 / ser[1].0),
            format!("{:.2}", ser[2].1 / ser[1].1),
        ]);
    }
    let mut pool_total = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        if let Some(p) = s.path {
            let (acc, fail) = inbound_accepted(p.server_admin()).await?;
            let n = acc - accepted_start[i];
            pool_total.push(vec![
                s.name.into(),
                format!("{}", sent[i]),
                format!("{n:.0}"),
                format!("{:.4}", n * 1000.0 / sent[i] as f64),
                format!("{fail:.0}"),
                format!("{}", established(p.client_pid, p.inbound())),
            ]);
        }
    }
    drop(sidecars);
    drop(ctl);
    drop(upstreams);

    println!(
        "### Latency of the mTLS hop\n\n{} requests per scenario and round over {} keep-alive HTTP/1.1 connections \
         (hyper client in mesh-bench), after 2,000 warm-up requests per scenario; scenarios alternate within each \
         round. Same path as `overhead`: absolute-form GET to the client sidecar's :15001 → server sidecar :15006 → \
         `mesh-bench upstream` (one per mesh, identical). Latency in µs; ratio columns vs direct in the same round:\n",
        o.requests, o.concurrency
    );
    md_table(
        &[
            "round",
            "scenario",
            "ok",
            "errors",
            "req/s",
            "p50 µs",
            "p99 µs",
            "vs direct: req/s / p50 / p99",
        ],
        &rows,
    );
    println!("CPU, ms per 1,000 requests (/proc/<pid>/stat, CLK_TCK 100, ±0.01 s per reading):\n");
    md_table(
        &[
            "round",
            "scenario",
            "client sidecar",
            "server sidecar",
            "both sidecars",
            "upstream",
            "load generator",
        ],
        &cpu_rows,
    );
    println!("mTLS mesh ÷ plaintext mesh, same round:\n");
    md_table(
        &[
            "round",
            "req/s",
            "p50",
            "p99",
            "both sidecars' CPU / 1000 req (ms): mTLS / plaintext",
            "p50 added over direct (µs): plaintext / mTLS",
            "p50 mTLS − plaintext (µs)",
        ],
        &ratio_rows,
    );
    println!(
        "One connection, one request at a time ({} requests per scenario and round); µs:\n",
        o.serial_requests
    );
    md_table(
        &[
            "round",
            "scenario",
            "ok",
            "errors",
            "req/s",
            "p50",
            "p99",
            "mean",
            "p50 − direct p50",
        ],
        &serial_rows,
    );
    md_table(
        &[
            "round",
            "plaintext mesh adds (p50, µs)",
            "mTLS mesh adds (p50, µs)",
            "mTLS − plaintext (p50, µs)",
            "mTLS ÷ plaintext p50",
            "mTLS ÷ plaintext p99",
        ],
        &serial_ratio_rows,
    );
    println!(
        "### Pooling: connections (= TLS handshakes on the mTLS path) per request\n\n\
         New inbound connections at the server sidecar (`mesh_tcp_connections_opened_total{{reporter=\"destination\"}}` \
         delta; only the client sidecar connects to it), and ESTABLISHED client sidecar → server sidecar :15006 \
         connections of the client sidecar (its socket inodes in /proc/net/tcp) after the run. Per measured {}-request run at concurrency {}:\n",
        o.requests, o.concurrency
    );
    md_table(
        &[
            "round",
            "scenario",
            "requests",
            "new connections",
            "per 1,000 requests",
            "ESTABLISHED after",
        ],
        &pool_rows,
    );
    println!("Whole latency phase (warm-up, measured and one-at-a-time runs):\n");
    md_table(
        &[
            "scenario",
            "requests",
            "connections accepted",
            "per 1,000 requests",
            "TLS handshake failures (sidecar metric, total)",
            "ESTABLISHED at end",
        ],
        &pool_total,
    );
    let row = |what: &str, k: &str, digits: usize| {
        let v = sorted(m.get(k).cloned().unwrap_or_default());
        vec![
            what.to_string(),
            format!("{:.digits$}", pct(&v, 50.0)),
            format!("{:.digits$} – {:.digits$}", pct(&v, 0.0), pct(&v, 100.0)),
        ]
    };
    println!("### Summary: median over {} rounds (min – max)\n", o.rounds);
    md_table(
        &["what", "median", "range"],
        &[
            row("full handshakes/s, sidecar", "hs full sidecar rate", 0),
            row(
                "sidecar CPU ms per full handshake",
                "hs full sidecar cpu",
                3,
            ),
            row(
                "full handshakes/s, sidecar ÷ rustls baseline",
                "hs full rate",
                2,
            ),
            row(
                "server CPU per full handshake, sidecar ÷ baseline",
                "hs full cpu",
                2,
            ),
            row(
                "resumed handshakes/s, sidecar",
                "hs resumed sidecar rate",
                0,
            ),
            row(
                "sidecar CPU ms per resumed handshake",
                "hs resumed sidecar cpu",
                3,
            ),
            row(
                "resumed handshakes/s, sidecar ÷ baseline",
                "hs resumed rate",
                2,
            ),
            row(
                "server CPU per resumed handshake, sidecar ÷ baseline",
                "hs resumed cpu",
                2,
            ),
            row("req/s, plaintext mesh ÷ direct", "rps plain vs direct", 2),
            row("req/s, mTLS mesh ÷ direct", "rps mtls vs direct", 2),
            row("req/s, mTLS ÷ plaintext", "rps", 2),
            row("p50, mTLS ÷ plaintext", "p50", 2),
            row("p99, mTLS ÷ plaintext", "p99", 2),
            row(
                "both sidecars' CPU ms / 1000 req, plaintext",
                "cpu plain",
                1,
            ),
            row("both sidecars' CPU ms / 1000 req, mTLS", "cpu mtls", 1),
            row("both sidecars' CPU / 1000 req, mTLS ÷ plaintext", "cpu", 2),
            row(
                "one at a time: plaintext mesh adds (p50 µs)",
                "serial plain add",
                0,
            ),
            row(
                "one at a time: mTLS mesh adds (p50 µs)",
                "serial mtls add",
                0,
            ),
            row("one at a time: mTLS − plaintext (p50 µs)", "serial diff", 0),
            row("one at a time: p50 mTLS ÷ plaintext", "serial p50 ratio", 2),
        ],
    );
    Ok(())
}
