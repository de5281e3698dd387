//! `meshctl up`: a whole mesh on one machine, from one mesh file.
//!
//! Starts the controller on the resolved file, a sidecar per meshed workload on its own
//! loopback address, then each app once its sidecar is ready; supervises them (sidecars
//! come back when they die) and shows live per-service numbers until stopped, when it
//! stops everything it started, in order, and cleans up.

pub mod addresses;
pub mod plan;
pub mod process;
pub mod ready;
pub mod supervise;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use crate::cli::UpArgs;
use crate::http_client::HttpClient;
use crate::stat;
use plan::{Launcher, PlannedWorkload};
use supervise::{Restart, Settings, Supervised};

/// How long a process may take to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// Runs the mesh until SIGINT, SIGTERM or `--duration`; errors if it cannot start.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let (text, origin) = match &args.file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read mesh file {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            crate::DEMO_MESH.to_string(),
            "built-in demo mesh".to_string(),
        ),
    };
    let mut objects = mesh_model::parse_documents(&text, &origin)
        .map_err(|e| anyhow::anyhow!("invalid mesh file: {e}"))?;
    addresses::assign(&mut objects)?;
    let workloads = plan::workloads(&objects);
    let self_exe = std::env::current_exe().context("cannot find meshctl's own executable")?;

    let run_dir = RunDir::create()?;
    let mesh_file = run_dir.path.join("mesh.yaml");
    std::fs::write(&mesh_file, mesh_model::render_documents(&objects))
        .with_context(|| format!("cannot write {}", mesh_file.display()))?;
    println!(
        "run dir {} (mesh file, one log per process)",
        run_dir.path.display()
    );

    let settings = Arc::new(Settings {
        log_dir: run_dir.path.clone(),
        verbose: args.verbose,
        grace: GRACE,
    });
    let mut procs = Processes::default();
    let outcome = tokio::select! {
        result = bring_up_and_watch(&args, &workloads, &self_exe, &mesh_file, settings, &mut procs) => result,
        reason = stop_requested(args.duration) => {
            println!("stopping ({reason})");
            Ok(())
        }
    };
    procs.stop_all().await;
    match &outcome {
        Ok(()) => run_dir.remove(),
        Err(_) => println!("logs kept in {}", run_dir.path.display()),
    }
    println!("stopped");
    outcome
}

/// Resolves with the reason when `up` should stop.
async fn stop_requested(duration: Option<u64>) -> String {
    let elapsed = async {
        match duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        signal = crate::signals::shutdown() => signal.to_string(),
        () = elapsed => format!("--duration {}s elapsed", duration.unwrap_or_default()),
    }
}

/// Everything `up` started, by role, so it can stop them in order.
#[derive(Default)]
struct Processes {
    controller: Vec<Supervised>,
    sidecars: Vec<Supervised>,
    apps: Vec<Supervised>,
}

impl Processes {
    /// Apps first (they may still be talking through their sidecars), then sidecars
    /// (which drain), then the controller; each group stopped concurrently.
    async fn stop_all(&mut self) {
        for group in [&mut self.apps, &mut self.sidecars, &mut self.controller] {
            futures::future::join_all(group.drain(..).map(Supervised::stop)).await;
        }
    }
}

async fn bring_up_and_watch(
    args: &UpArgs,
    workloads: &[PlannedWorkload],
    self_exe: &Path,
    mesh_file: &Path,
    settings: Arc<Settings>,
    procs: &mut Processes,
) -> anyhow::Result<()> {
    let client = HttpClient::direct();
    let timeout = Duration::from_secs(args.ready_timeout);
    let xds = SocketAddr::from(([127, 0, 0, 1], args.xds_port));
    let admin = SocketAddr::from(([127, 0, 0, 1], args.admin_port));

    let controller = plan::controller(
        &Launcher::new(self_exe, "controller", args.controller_bin.as_deref()),
        mesh_file,
        xds,
        admin,
    );
    procs.controller.push(Supervised::start(
        "controller".into(),
        format!(" (xds {xds}, admin {admin})"),
        "controller",
        controller,
        Restart::Never,
        settings.clone(),
    )?);
    let took = ready::wait_ready(
        &client,
        &format!("http://{admin}/ready"),
        &procs.controller[0],
        timeout,
    )
    .await?;
    println!("controller ready in {} ms", took.as_millis());

    let proxy = Launcher::new(self_exe, "proxy", args.proxy_bin.as_deref());
    let meshed: Vec<&PlannedWorkload> = workloads.iter().filter(|w| w.injected).collect();
    for w in &meshed {
        procs.sidecars.push(Supervised::start(
            format!("sidecar {}", w.key()),
            format!(" at {}", w.address),
            &format!("{}.{}.sidecar", w.namespace, w.name),
            plan::sidecar(&proxy, xds, w),
            Restart::Always,
            settings.clone(),
        )?);
    }
    // Workloads outside the mesh have nothing to wait for.
    for w in workloads.iter().filter(|w| !w.injected) {
        if let Some(app) = start_app(w, self_exe, &settings)? {
            procs.apps.push(app);
        }
    }
    // Each serving app starts as soon as its own sidecar is ready; apps without
    // ports (clients such as load generators) start once every serving app listens,
    // so their first requests find someone to answer.
    let mut waits: FuturesUnordered<_> = procs
        .sidecars
        .iter()
        .zip(&meshed)
        .map(|(sidecar, w)| {
            let client = &client;
            async move {
                let url = format!("http://{}:15000/ready", w.address);
                (*w, ready::wait_ready(client, &url, sidecar, timeout).await)
            }
        })
        .collect();
    let mut clients = Vec::new();
    let mut serving = Vec::new();
    while let Some((w, result)) = waits.next().await {
        let took = result?;
        println!("sidecar {} ready in {} ms", w.key(), took.as_millis());
        match w.port {
            None => clients.push(w),
            Some(port) => {
                if let Some(app) = start_app(w, self_exe, &settings)? {
                    serving.push((SocketAddr::new(w.address, port), procs.apps.len()));
                    procs.apps.push(app);
                }
            }
        }
    }
    drop(waits);
    for (addr, index) in serving {
        ready::wait_listening(addr, &procs.apps[index], timeout).await?;
    }
    for w in clients {
        if let Some(app) = start_app(w, self_exe, &settings)? {
            procs.apps.push(app);
        }
    }
    println!("mesh ready");

    if args.interval == 0 || meshed.is_empty() {
        // Nothing to show: no table, or no sidecars to ask.
        std::future::pending::<()>().await;
    }
    let targets: Vec<(String, String)> = meshed
        .iter()
        .map(|w| (w.key(), format!("http://{}:15000/metrics", w.address)))
        .collect();
    live_table(&client, &targets, Duration::from_secs(args.interval)).await
}

fn start_app(
    w: &PlannedWorkload,
    self_exe: &Path,
    settings: &Arc<Settings>,
) -> anyhow::Result<Option<Supervised>> {
    let Some(spec) = plan::app(w, self_exe) else {
        println!("{}: no command, no app to start", w.key());
        return Ok(None);
    };
    let at = match w.port {
        Some(port) => format!(" at {}:{port}", w.address),
        None => format!(" at {}", w.address),
    };
    Supervised::start(
        format!("app {}", w.key()),
        at,
        &format!("{}.{}.app", w.namespace, w.name),
        spec,
        Restart::Never,
        settings.clone(),
    )
    .map(Some)
}

/// Prints the per-service table every `every`, with rates over the last interval.
async fn live_table(
    client: &HttpClient,
    targets: &[(String, String)],
    every: Duration,
) -> anyhow::Result<()> {
    let mut earlier: Option<(stat::MeshSnapshot, Instant)> = None;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut said_idle = false;
    loop {
        ticks.tick().await;
        let now = stat::scrape(client, targets, Duration::from_secs(1)).await;
        let at = Instant::now();
        let rows = match &earlier {
            Some((snapshot, then)) => stat::rows(Some(snapshot), &now, at - *then),
            None => stat::rows(None, &now, Duration::ZERO),
        };
        if rows.is_empty() {
            if !said_idle {
                println!("(no requests yet)");
                said_idle = true;
            }
        } else {
            print!("\n{}", stat::render(&rows));
        }
        earlier = Some((now, at));
    }
}

/// The run's temporary directory: the resolved mesh file and the logs.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn create() -> anyhow::Result<RunDir> {
        let path = std::env::temp_dir().join(format!("meshctl-up-{}", std::process::id()));
        // A leftover from an earlier process with the same pid is stale.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create run dir {}", path.display()))?;
        Ok(RunDir { path })
    }

    fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}
