//! `meshctl up`: a whole mesh on one machine, from one mesh file.
//!
//! Starts the controller on the resolved file, a sidecar per meshed workload on its own
//! loopback address, then each app once its sidecar is ready; supervises them (sidecars
//! come back when they die) and shows live per-service numbers until stopped, when it
//! stops everything it started, in order, and cleans up.
//!
//! By default the mesh runs with identities, as in production: the controller's CA
//! lives in the run dir, each sidecar gets a join token for its service account (in a
//! 0600 file, re-issued before it expires) and the trust anchors, certifies over the
//! TLS port, and talks mutual TLS to the others (STRICT unless the file says
//! otherwise). `--plaintext` runs without identities.

pub mod addresses;
pub mod plan;
pub mod process;
pub mod ready;
pub mod scrape_config;
pub mod supervise;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use crate::cli::UpArgs;
use crate::controller::Controller;
use crate::http_client::HttpClient;
use crate::stat;
use plan::{Launcher, PlannedWorkload, Security, SidecarIdentity};
use supervise::{Restart, Settings, Supervised};

/// How long a process may take to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// Lifetime of the join tokens `up` creates; they are re-issued at half of it, so a
/// sidecar restarted at any time finds a valid token.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

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
        result = bring_up_and_watch(&args, &workloads, &self_exe, &run_dir.path, settings, &mut procs) => result,
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
    run_dir: &Path,
    settings: Arc<Settings>,
    procs: &mut Processes,
) -> anyhow::Result<()> {
    let client = HttpClient::direct();
    let timeout = Duration::from_secs(args.ready_timeout);
    let xds = SocketAddr::from(([127, 0, 0, 1], args.xds_port));
    let admin = SocketAddr::from(([127, 0, 0, 1], args.admin_port));
    let security = if args.plaintext {
        Security::Plaintext
    } else {
        Security::Mtls {
            secure: SocketAddr::from(([127, 0, 0, 1], args.secure_port)),
            ca_dir: run_dir.join("ca"),
        }
    };

    let controller = plan::controller(
        &Launcher::new(self_exe, "controller", args.controller_bin.as_deref()),
        &run_dir.join("mesh.yaml"),
        xds,
        admin,
        &security,
    );
    let detail = match &security {
        Security::Mtls { secure, .. } => {
            format!(" (xds {xds}, secure xds {secure}, admin {admin})")
        }
        Security::Plaintext => format!(" (xds {xds}, admin {admin})"),
    };
    procs.controller.push(Supervised::start(
        "controller".into(),
        detail,
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

    let meshed: Vec<&PlannedWorkload> = workloads.iter().filter(|w| w.injected).collect();
    let admin_api = Controller::new(&format!("http://{admin}"));
    let mut spiffe_ids = std::collections::HashMap::new();
    let identities = match &security {
        Security::Mtls { secure, .. } => {
            let trust_anchors = run_dir.join("trust-anchors.pem");
            let bundle = admin_api
                .trust_bundle()
                .await
                .context("cannot fetch the trust bundle")?;
            std::fs::write(&trust_anchors, bundle)
                .with_context(|| format!("cannot write {}", trust_anchors.display()))?;
            let ids: Vec<SidecarIdentity> = meshed
                .iter()
                .map(|w| SidecarIdentity {
                    secure: *secure,
                    token_file: plan::token_file(run_dir, w),
                    trust_anchors: trust_anchors.clone(),
                })
                .collect();
            let certified_as = write_tokens(&admin_api, &meshed, &ids).await?;
            for (w, identity) in meshed.iter().zip(certified_as) {
                spiffe_ids.insert(w.key(), identity);
            }
            println!(
                "trust anchors in {}; join tokens in {}/<namespace>.<workload>.token",
                trust_anchors.display(),
                run_dir.display()
            );
            Some(ids)
        }
        Security::Plaintext => None,
    };
    println!("{}", plan::mtls_summary(workloads, &security));

    let proxy = Launcher::new(self_exe, "proxy", args.proxy_bin.as_deref());
    for (i, w) in meshed.iter().enumerate() {
        let identity = identities.as_ref().map(|ids| &ids[i]);
        procs.sidecars.push(Supervised::start(
            format!("sidecar {}", w.key()),
            format!(" at {}", w.address),
            &format!("{}.{}.sidecar", w.namespace, w.name),
            plan::sidecar(&proxy, xds, w, identity),
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
        match spiffe_ids.get(&w.key()) {
            Some(id) => println!(
                "sidecar {} ready in {} ms as {id}",
                w.key(),
                took.as_millis()
            ),
            None => println!("sidecar {} ready in {} ms", w.key(), took.as_millis()),
        }
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
    let prometheus_config = scrape_config::write(run_dir, &admin.to_string(), &meshed)?;
    println!(
        "Prometheus: prometheus --config.file={} (dashboards in deploy/grafana)",
        prometheus_config.display()
    );

    let targets: Vec<(String, String)> = meshed
        .iter()
        .map(|w| (w.key(), format!("http://{}:15000/metrics", w.address)))
        .collect();
    let show = async {
        if args.interval == 0 || meshed.is_empty() {
            // Nothing to show: no table, or no sidecars to ask.
            std::future::pending::<()>().await;
        }
        live_table(&client, &targets, Duration::from_secs(args.interval)).await
    };
    let refresh = async {
        match &identities {
            Some(ids) => refresh_tokens(&admin_api, &meshed, ids).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = show => result,
        result = refresh => result,
    }
}

/// Creates a join token for each sidecar's (namespace, service account) and writes
/// it to the sidecar's token file; returns the SPIFFE IDs they certify as.
async fn write_tokens(
    admin_api: &Controller,
    meshed: &[&PlannedWorkload],
    ids: &[SidecarIdentity],
) -> anyhow::Result<Vec<String>> {
    let mut identities = Vec::new();
    for (w, id) in meshed.iter().zip(ids) {
        let issued = admin_api
            .create_token(&w.namespace, &w.service_account, Some(TOKEN_TTL))
            .await
            .with_context(|| format!("cannot create a join token for {}", w.key()))?;
        write_secret(&id.token_file, &issued.token)?;
        identities.push(issued.identity);
    }
    Ok(identities)
}

/// Re-issues every token at half its lifetime, so that a sidecar restarted late in a
/// long run still certifies. A failure is reported and retried; it never stops `up`
/// (running sidecars renew over mTLS without a token).
async fn refresh_tokens(
    admin_api: &Controller,
    meshed: &[&PlannedWorkload],
    ids: &[SidecarIdentity],
) -> anyhow::Result<()> {
    loop {
        tokio::time::sleep(TOKEN_TTL / 2).await;
        while let Err(e) = write_tokens(admin_api, meshed, ids).await {
            println!("warning: {e:#}; retrying in 1 minute");
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

/// Writes `text` to `path` readable by the owner only, atomically (a sidecar reading
/// it meanwhile sees the old or the new token, never half of one).
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
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

/// The live table is `meshctl stat services`' table, refreshed.
const GROUPING: stat::Grouping = stat::Grouping::Services;

/// Prints the per-service table every `every`, with rates over the last interval.
async fn live_table(
    client: &HttpClient,
    targets: &[(String, String)],
    every: Duration,
) -> anyhow::Result<()> {
    let mut earlier: Option<(stat::scrape::MeshSnapshot, Instant)> = None;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut said_idle = false;
    loop {
        ticks.tick().await;
        let now = stat::scrape::scrape(client, targets, GROUPING, Duration::from_secs(1)).await;
        let at = Instant::now();
        let rows = match &earlier {
            Some((snapshot, then)) => stat::scrape::rows(Some(snapshot), &now, at - *then),
            None => stat::scrape::rows(None, &now, Duration::ZERO),
        };
        if rows.is_empty() {
            if !said_idle {
                println!("(no requests yet)");
                said_idle = true;
            }
        } else {
            print!("\n{}", stat::render(GROUPING, &rows));
        }
        earlier = Some((now, at));
    }
}

/// The run's temporary directory: the resolved mesh file, the logs, and with mTLS
/// the CA, the trust anchors and the join tokens.
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
        // It holds the CA's key and join tokens: the owner's only.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict run dir {}", path.display()))?;
        Ok(RunDir { path })
    }

    fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn secrets_are_written_owner_only_and_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("meshctl-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("default.a-1.token");
        write_secret(&path, "first").unwrap();
        write_secret(&path, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
