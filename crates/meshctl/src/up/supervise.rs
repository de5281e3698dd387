//! Keeping one process running (or not) until told to stop.
//!
//! Each process gets a task that owns its [`tokio::process::Child`]: the task reaps it,
//! reports its exits, restarts it when the policy says so (sidecars: a sidecar failure
//! must not take the app down, so the runner brings the sidecar back at once), and
//! stops it on request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::plan::CommandSpec;
use super::process;

/// Whether a process that exits on its own is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Log the exit and leave it (apps, the controller).
    Never,
    /// Start it again, at once if it had been up a while, with growing backoff if it
    /// keeps failing right after start (sidecars).
    Always,
}

/// Settings shared by every supervised process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where log files go.
    pub log_dir: PathBuf,
    /// Whether to copy output to meshctl's stderr too.
    pub verbose: bool,
    /// How long a process may take to exit after SIGTERM.
    pub grace: Duration,
}

/// What a supervised process is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Running with this pid; `starts` counts starts so far (1 = never restarted).
    Running {
        /// The current pid.
        pid: u32,
        /// How many times it has been started.
        starts: u32,
    },
    /// Exited and will not be restarted: how it ended.
    Exited(String),
}

/// One supervised process: the handle `up` keeps to watch and stop it.
pub struct Supervised {
    /// How the process is named in output, e.g. `sidecar default/catalog-1`.
    pub name: String,
    /// The log file.
    pub log: PathBuf,
    state: watch::Receiver<State>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Supervised {
    /// Starts `spec` now; fails only if the very first spawn fails.
    pub fn start(
        name: String,
        detail: String,
        log_name: &str,
        spec: CommandSpec,
        restart: Restart,
        settings: Arc<Settings>,
    ) -> anyhow::Result<Supervised> {
        let log = settings.log_dir.join(format!("{log_name}.log"));
        let echo = settings.verbose.then_some(log_name);
        let child = process::spawn(&spec, &log, echo).map_err(|e| {
            anyhow::anyhow!("cannot start {name} ({}): {e}", spec.program.display())
        })?;
        let pid = child.id().unwrap_or_default();
        println!("started {name}{detail} pid {pid} (log {})", log.display());
        let (state_tx, state) = watch::channel(State::Running { pid, starts: 1 });
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(keep(
            name.clone(),
            spec,
            log.clone(),
            log_name.to_string(),
            restart,
            settings,
            child,
            state_tx,
            stop_rx,
        ));
        Ok(Supervised {
            name,
            log,
            state,
            stop: Some(stop),
            task,
        })
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Stops the process (SIGTERM, then SIGKILL after the grace period) and waits
    /// until it has been reaped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::warn!("supervisor of {} failed: {e}", self.name);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn keep(
    name: String,
    spec: CommandSpec,
    log: PathBuf,
    log_name: String,
    restart: Restart,
    settings: Arc<Settings>,
    mut child: tokio::process::Child,
    state: watch::Sender<State>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut starts = 1u32;
    let mut started = Instant::now();
    let mut backoff = Duration::ZERO;
    loop {
        tokio::select! {
            status = child.wait() => {
                let how = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                if restart == Restart::Never {
                    println!("{name} exited ({how})");
                    state.send_replace(State::Exited(how));
                    return;
                }
                // Quick failures back off (100 ms doubling to 5 s); a process that ran
                // for a while comes back immediately.
                backoff = if started.elapsed() > Duration::from_secs(1) {
                    Duration::ZERO
                } else {
                    (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
                };
                if backoff.is_zero() {
                    println!("{name} exited ({how}); restarting");
                } else {
                    println!("{name} exited ({how}); restarting in {backoff:?}");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => {
                        state.send_replace(State::Exited(how));
                        return;
                    }
                }
                let echo = settings.verbose.then_some(log_name.as_str());
                match process::spawn(&spec, &log, echo) {
                    Ok(c) => {
                        child = c;
                        starts += 1;
                        started = Instant::now();
                        let pid = child.id().unwrap_or_default();
                        println!("restarted {name} pid {pid}");
                        state.send_replace(State::Running { pid, starts });
                    }
                    Err(e) => {
                        // Keep trying: the next wait() fails fast and backs off again.
                        println!("cannot restart {name}: {e}");
                    }
                }
            }
            _ = &mut stop => {
                let how = match process::terminate(&mut child, settings.grace).await {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("stop failed: {e}"),
                };
                tracing::debug!("{name} stopped ({how})");
                state.send_replace(State::Exited(how));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn settings(dir: &str) -> Arc<Settings> {
        let log_dir =
            std::env::temp_dir().join(format!("meshctl-sup-{}-{dir}", std::process::id()));
        std::fs::create_dir_all(&log_dir).unwrap();
        Arc::new(Settings {
            log_dir,
            verbose: false,
            grace: Duration::from_secs(2),
        })
    }

    fn sh(script: &str) -> CommandSpec {
        CommandSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
            env_remove: vec![],
        }
    }

    async fn wait_for(s: &Supervised, f: impl Fn(&State) -> bool) -> State {
        for _ in 0..200 {
            let state = s.state();
            if f(&state) {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("state never matched: {:?}", s.state());
    }

    #[tokio::test]
    async fn restarts_when_policy_says_so_and_stops_cleanly() {
        let set = settings("restart");
        let s = Supervised::start(
            "sidecar t".into(),
            String::new(),
            "t",
            sh("sleep 0.1"),
            Restart::Always,
            set.clone(),
        )
        .unwrap();
        wait_for(
            &s,
            |st| matches!(st, State::Running { starts, .. } if *starts >= 2),
        )
        .await;
        s.stop().await;
        let _ = std::fs::remove_dir_all(&set.log_dir);
    }

    #[tokio::test]
    async fn never_policy_reports_the_exit() {
        let set = settings("never");
        let s = Supervised::start(
            "app t".into(),
            String::new(),
            "t",
            sh("exit 3"),
            Restart::Never,
            set.clone(),
        )
        .unwrap();
        let st = wait_for(&s, |st| matches!(st, State::Exited(_))).await;
        assert_eq!(st, State::Exited("exit status: 3".into()));
        s.stop().await;
        let _ = std::fs::remove_dir_all(&set.log_dir);
    }

    #[tokio::test]
    async fn stop_kills_a_running_process() {
        let set = settings("stop");
        let s = Supervised::start(
            "app t".into(),
            String::new(),
            "t",
            sh("exec sleep 30"),
            Restart::Always,
            set.clone(),
        )
        .unwrap();
        let State::Running { pid, .. } = s.state() else {
            panic!("not running")
        };
        s.stop().await;
        // The process is gone (reaped): signalling it fails.
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        assert!(!alive);
        let _ = std::fs::remove_dir_all(&set.log_dir);
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let set = settings("missing");
        let err = rt.block_on(async {
            let mut spec = sh("");
            spec.program = "/nonexistent/bin".into();
            Supervised::start(
                "app x".into(),
                String::new(),
                "x",
                spec,
                Restart::Never,
                set.clone(),
            )
            .err()
            .unwrap()
        });
        assert!(
            err.to_string()
                .contains("cannot start app x (/nonexistent/bin)"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&set.log_dir);
    }
}
