//! `mesh-proxy wait-ready`: blocks until a sidecar's `/ready` answers 200.
//!
//! An app must not start sending before its sidecar can carry the traffic. With
//! Kubernetes' native sidecars the startup probe already orders this; everywhere
//! else (a classic sidecar container's `postStart` hook, a shell wrapper such as
//! `mesh-proxy wait-ready && exec app`, a VM's unit file) this command does it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The subcommand's name: `mesh-proxy wait-ready`.
pub const COMMAND: &str = "wait-ready";

/// Settings of `mesh-proxy wait-ready`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "mesh-proxy wait-ready",
    about = "Wait until the sidecar is ready (its /ready answers 200); exit 1 on timeout"
)]
pub struct WaitReadyArgs {
    /// The sidecar's admin address.
    #[arg(long, env = "MESH_PROXY_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Seconds to wait before giving up.
    #[arg(long, default_value_t = 60.0, value_parser = positive_seconds)]
    pub timeout: f64,
    /// Milliseconds between two checks.
    #[arg(long, default_value_t = 20)]
    pub interval_ms: u64,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// What one look at `/ready` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// 200.
    Ready,
    /// Answered, but not 200: the body says what is missing.
    NotReady(String),
    /// Nothing answered (not started yet, or restarting).
    Unreachable(String),
}

/// One `GET /ready` on a fresh connection (the sidecar may restart in between).
pub async fn check(admin: SocketAddr) -> Readiness {
    let stream = match TcpStream::connect(admin).await {
        Ok(s) => s,
        Err(e) => return Readiness::Unreachable(format!("{admin}: {e}")),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return Readiness::Unreachable(format!("{admin}: {e}")),
    };
    tokio::spawn(conn);
    let req = Request::get("/ready")
        .header(http::header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())
        .expect("static request is valid");
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return Readiness::Unreachable(format!("{admin}: {e}")),
    };
    let status = resp.status();
    let body = match resp.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
        Err(e) => format!("(body unreadable: {e})"),
    };
    if status == StatusCode::OK {
        Readiness::Ready
    } else {
        Readiness::NotReady(format!("{status}: {body}"))
    }
}

/// Polls until ready; the error says what the sidecar last reported.
pub async fn wait(args: &WaitReadyArgs) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.timeout);
    let interval = Duration::from_millis(args.interval_ms.max(1));
    loop {
        let last = match tokio::time::timeout_at(deadline.into(), check(args.admin_addr)).await {
            Ok(Readiness::Ready) => return Ok(start.elapsed()),
            Ok(Readiness::NotReady(why)) => format!("not ready: {why}"),
            Ok(Readiness::Unreachable(why)) => format!("unreachable: {why}"),
            Err(_) => "no answer".to_string(),
        };
        if Instant::now() + interval >= deadline {
            anyhow::bail!(
                "sidecar at {} not ready after {}s; last check: {last}",
                args.admin_addr,
                args.timeout
            );
        }
        tokio::time::sleep(interval).await;
    }
}

/// The whole `wait-ready` command: a small single-threaded runtime, one line on
/// success, the reason on failure.
pub fn main(args: WaitReadyArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let took = runtime.block_on(wait(&args))?;
    println!(
        "sidecar at {} ready after {} ms",
        args.admin_addr,
        took.as_millis()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags() {
        let a = WaitReadyArgs::try_parse_from(["wait-ready"]).unwrap();
        assert_eq!(a.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(a.timeout, 60.0);
        let b = WaitReadyArgs::try_parse_from(["wait-ready", "--timeout", "0.5"]).unwrap();
        assert_eq!(b.timeout, 0.5);
        for bad in ["0", "-1", "soon", "NaN"] {
            assert!(
                WaitReadyArgs::try_parse_from(["wait-ready", "--timeout", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn times_out_naming_the_address_when_nothing_listens() {
        // Bind and drop: the port is (almost certainly) closed now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let args = WaitReadyArgs {
            admin_addr: addr,
            timeout: 0.2,
            interval_ms: 20,
        };
        let err = wait(&args).await.unwrap_err().to_string();
        assert!(
            err.contains(&addr.to_string()) && err.contains("unreachable"),
            "{err}"
        );
    }
}
