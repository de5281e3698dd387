//! Starting and stopping one child process, with its output in a log file.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::plan::CommandSpec;

/// Set in every child's environment; the embedded subcommands then exit when `up` dies.
pub const PARENT_WATCH_ENV: &str = "MESHCTL_UP_CHILD";

/// Starts `spec` with stdout and stderr appended to `log`; with `echo`, also copied to
/// meshctl's stderr prefixed by `tag`.
///
/// Each child gets its own process group, so a terminal's Ctrl-C reaches only `up`,
/// which then stops the children in order (apps before sidecars before the controller).
/// `kill_on_drop` is the safety net if `up` unwinds without stopping them.
pub fn spawn(spec: &CommandSpec, log: &Path, echo: Option<&str>) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(&spec.env)
        .env(PARENT_WATCH_ENV, "1")
        // Output goes to log files: no terminal colour codes (tracing honours NO_COLOR).
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(v) = spec.env.get("NO_COLOR") {
        cmd.env("NO_COLOR", v);
    }
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    match echo {
        None => {
            cmd.stdout(file.try_clone()?).stderr(file);
            cmd.spawn()
        }
        Some(tag) => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn()?;
            let file = tokio::fs::File::from_std(file);
            let sink = std::sync::Arc::new(tokio::sync::Mutex::new(file));
            if let Some(out) = child.stdout.take() {
                tokio::spawn(tee(out, sink.clone(), tag.to_string()));
            }
            if let Some(err) = child.stderr.take() {
                tokio::spawn(tee(err, sink, tag.to_string()));
            }
            Ok(child)
        }
    }
}

async fn tee(
    from: impl AsyncRead + Unpin,
    file: std::sync::Arc<tokio::sync::Mutex<tokio::fs::File>>,
    tag: String,
) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[{tag}] {line}");
        let mut f = file.lock().await;
        let _ = f.write_all(line.as_bytes()).await;
        let _ = f.write_all(b"\n").await;
    }
}

/// Stops a child and everything it started: SIGTERM to its process group, then
/// SIGKILL if the child is still there after `grace`; always reaps it, and finally
/// kills whatever of its group is left, so nothing is left behind.
pub async fn terminate(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        // Already reaped.
        return child.wait().await;
    };
    let group = Pid::from_raw(pid);
    let status = match child.try_wait()? {
        Some(status) => status,
        None => {
            if let Err(e) = killpg(group, Signal::SIGTERM) {
                tracing::debug!(pid, "SIGTERM failed: {e}");
            }
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => status?,
                Err(_) => {
                    tracing::warn!(pid, "still running {grace:?} after SIGTERM; killing");
                    let _ = killpg(group, Signal::SIGKILL);
                    child.kill().await?;
                    child.wait().await?
                }
            }
        }
    };
    // Leftover grandchildren (e.g. of a shell command) share the group.
    let _ = killpg(group, Signal::SIGKILL);
    Ok(status)
}

/// The last `n` lines of a log file, indented, for error messages ("" if unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("\n    {l}"))
        .collect()
}

/// In a child started by `up` (marked by [`PARENT_WATCH_ENV`]), exits the process if
/// its parent goes away, so that even a SIGKILLed `up` leaves no sidecar behind.
pub fn exit_with_parent() {
    if std::env::var_os(PARENT_WATCH_ENV).is_none() {
        return;
    }
    let parent = std::os::unix::process::parent_id();
    let spawned = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if std::os::unix::process::parent_id() != parent {
                    eprintln!("meshctl up (pid {parent}) is gone; exiting");
                    std::process::exit(1);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch the parent process: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Instant;

    fn sh(script: &str) -> CommandSpec {
        CommandSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
            env_remove: vec!["HOME".into()],
        }
    }

    fn log_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("meshctl-test-{}-{name}.log", std::process::id()))
    }

    #[tokio::test]
    async fn output_goes_to_the_log_with_env_applied() {
        let log = log_path("out");
        let _ = std::fs::remove_file(&log);
        let mut child = spawn(
            &sh("echo $GREETING ${HOME:-nohome}; echo err >&2"),
            &log,
            None,
        )
        .unwrap();
        assert!(child.wait().await.unwrap().success());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("hello nohome"), "{text}");
        assert!(text.contains("err"), "{text}");
        let _ = std::fs::remove_file(&log);
    }

    #[tokio::test]
    async fn terminate_uses_sigterm_then_sigkill() {
        let log = log_path("term");
        let mut polite = spawn(&sh("exec sleep 30"), &log, None).unwrap();
        let status = terminate(&mut polite, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!status.success());

        let mut stubborn = spawn(
            &sh("trap '' TERM; while true; do sleep 0.05; done"),
            &log,
            None,
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        let status = terminate(&mut stubborn, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let log = log_path("tail");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&log, 2), "\n    b\n    c");
        assert_eq!(log_tail(Path::new("/nonexistent"), 2), "");
        let _ = std::fs::remove_file(&log);
    }
}
