//! `meshctl demo-app`: a tiny HTTP service for demos and end-to-end tests.
//!
//! Each answer says which service and instance served it and embeds what its
//! dependencies answered, so one request to the front shows the whole call tree (and
//! which instances the mesh balanced to). Dependencies are called through
//! `http_proxy`, i.e. the sidecar, as a meshed app would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::cli::DemoAppArgs;
use crate::http_client::HttpClient;

/// Everything a request handler needs, shared by all connections.
struct App {
    service: String,
    instance: String,
    calls: Vec<String>,
    client: HttpClient,
    timeout: Duration,
}

/// Where to listen: `--listen`, else `$MESH_ADDRESS:$MESH_PORT`.
fn listen_addr(args: &DemoAppArgs) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = args.listen {
        return Ok(addr);
    }
    let (Ok(ip), Ok(port)) = (std::env::var("MESH_ADDRESS"), std::env::var("MESH_PORT")) else {
        anyhow::bail!("no --listen given and MESH_ADDRESS/MESH_PORT are not both set");
    };
    format!("{ip}:{port}")
        .parse()
        .with_context(|| format!("MESH_ADDRESS/MESH_PORT give no address: {ip}:{port}"))
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(args: DemoAppArgs) -> anyhow::Result<()> {
    let addr = listen_addr(&args)?;
    let client = HttpClient::from_env().context("bad http_proxy")?;
    let instance = args
        .instance
        .clone()
        .or_else(|| std::env::var("MESH_WORKLOAD").ok())
        .unwrap_or_else(|| args.service.clone());
    let app = Arc::new(App {
        service: args.service.clone(),
        instance,
        calls: args.calls.clone(),
        client,
        timeout: Duration::from_millis(args.timeout_ms),
    });
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(
        %addr, service = %app.service, instance = %app.instance,
        calls = ?app.calls, proxied = app.client.is_proxied(), "demo app listening"
    );
    let serve = async {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(&app, req).await) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        }
    };
    tokio::select! {
        () = serve => Ok(()),
        reason = crate::signals::shutdown() => {
            tracing::info!("stopping on {reason}");
            Ok(())
        }
    }
}

async fn handle(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return reply(StatusCode::OK, json!({"status": "ok"}));
    }
    let results = futures::future::join_all(app.calls.iter().map(|url| call(app, url))).await;
    let failed = results.iter().any(|(ok, _)| !ok);
    let calls: Vec<Value> = results.into_iter().map(|(_, v)| v).collect();
    let body = json!({
        "service": app.service,
        "instance": app.instance,
        "path": path,
        "calls": calls,
    });
    let status = if failed {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    reply(status, body)
}

/// Calls one dependency; `(succeeded, what to report)`.
async fn call(app: &App, url: &str) -> (bool, Value) {
    match app.client.get(url, app.timeout).await {
        Ok(r) => {
            let body = serde_json::from_slice::<Value>(&r.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into_owned()));
            let ok = r.status.is_success();
            let mut v = json!({"url": url, "status": r.status.as_u16(), "response": body});
            if !ok {
                v["error"] = json!(format!("status {}", r.status));
            }
            (ok, v)
        }
        Err(e) => {
            tracing::debug!(url, "dependency call failed: {e}");
            (false, json!({"url": url, "error": e.to_string()}))
        }
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(service: &str, calls: Vec<String>) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let args = DemoAppArgs {
            service: service.into(),
            listen: Some(addr),
            instance: Some(format!("{service}-1")),
            calls,
            timeout_ms: 1000,
        };
        tokio::spawn(run(args));
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return addr;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("demo app did not start");
    }

    #[tokio::test]
    async fn answers_with_json_and_embeds_dependencies() {
        let backend = start("catalog", vec![]).await;
        let front = start("frontend", vec![format!("http://{backend}/items")]).await;
        let client = HttpClient::direct();
        let r = client
            .get(&format!("http://{front}/x"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["service"], "frontend");
        assert_eq!(v["instance"], "frontend-1");
        assert_eq!(v["path"], "/x");
        assert_eq!(v["calls"][0]["status"], 200);
        assert_eq!(v["calls"][0]["response"]["service"], "catalog");
        assert_eq!(v["calls"][0]["response"]["path"], "/items");

        let h = client
            .get(&format!("http://{backend}/healthz"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn failed_dependency_gives_502_with_the_error() {
        let front = start("frontend", vec!["http://127.0.0.1:1/nothing".into()]).await;
        let r = HttpClient::direct()
            .get(&format!("http://{front}/"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            v["calls"][0]["error"]
                .as_str()
                .unwrap()
                .contains("request failed"),
            "{v}"
        );
    }
}
