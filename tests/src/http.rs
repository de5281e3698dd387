//! Minimal HTTP client and upstream server for tests (hyper, real sockets).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `req` over a new HTTP/1.1 connection to `addr`; the URI is sent as given,
/// so an absolute URI makes this an explicit-proxy request.
pub async fn send(addr: SocketAddr, req: Request<Empty<Bytes>>) -> Option<(u16, String)> {
    send_body(addr, req).await
}

async fn send_body<B>(addr: SocketAddr, req: Request<B>) -> Option<(u16, String)>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let fut = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, fut).await.ok().flatten()
}

fn authority_addr(uri: &http::Uri) -> Option<SocketAddr> {
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(80);
    format!("{host}:{port}").parse().ok()
}

/// GETs `url` (an IP URL) directly.
pub async fn get(url: &str) -> Option<(u16, String)> {
    let uri: http::Uri = url.parse().ok()?;
    let addr = authority_addr(&uri)?;
    let req = Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(http::header::HOST, uri.authority()?.as_str())
        .body(Empty::new())
        .ok()?;
    send(addr, req).await
}

/// The status of GET `url`, if the server answered.
pub async fn get_status(url: &str) -> Option<u16> {
    get(url).await.map(|(s, _)| s)
}

/// POSTs to `url` with an empty body.
pub async fn post(url: &str) -> Option<(u16, String)> {
    let uri: http::Uri = url.parse().ok()?;
    let addr = authority_addr(&uri)?;
    let req = Request::post(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(http::header::HOST, uri.authority()?.as_str())
        .body(Empty::new())
        .ok()?;
    send(addr, req).await
}

/// POSTs `body` as JSON to `url`.
pub async fn post_json(url: &str, body: &serde_json::Value) -> Option<(u16, String)> {
    let uri: http::Uri = url.parse().ok()?;
    let addr = authority_addr(&uri)?;
    let req = Request::post(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(http::header::HOST, uri.authority()?.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .ok()?;
    send_body(addr, req).await
}

/// GETs `url` through the HTTP proxy at `proxy` (`http://ip:port`), as
/// `http_proxy=... curl url` would.
pub async fn get_via_proxy(proxy: &str, url: &str) -> Option<(u16, String)> {
    let proxy: http::Uri = proxy.parse().ok()?;
    let addr = authority_addr(&proxy)?;
    let uri: http::Uri = url.parse().ok()?;
    let req = Request::get(uri.clone())
        .header(http::header::HOST, uri.authority()?.as_str())
        .body(Empty::new())
        .ok()?;
    send(addr, req).await
}

/// A response as a test sees it.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body text.
    pub body: String,
    /// Trailers (HTTP/2).
    pub trailers: Option<http::HeaderMap>,
}

impl Answer {
    /// The body as the JSON a test [`Upstream`] answers with.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends `req` as is over a new connection to `addr` (HTTP/2 prior knowledge when
/// `h2`) and returns the whole answer, trailers included.
pub async fn exchange(addr: SocketAddr, req: Request<Full<Bytes>>, h2: bool) -> Option<Answer> {
    let fut = async {
        let io = TokioIo::new(TcpStream::connect(addr).await.ok()?);
        let resp = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .ok()?;
            tokio::spawn(conn);
            sender.send_request(req).await.ok()?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
            tokio::spawn(conn);
            sender.send_request(req).await.ok()?
        };
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.ok()?;
        let trailers = collected.trailers().cloned();
        Some(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            trailers,
        })
    };
    tokio::time::timeout(TIMEOUT, fut).await.ok().flatten()
}

/// A gRPC-speaking upstream (HTTP/2 only): every call gets HTTP 200, an empty
/// message and the gRPC status `code` in the trailers, as real servers send an
/// error after headers.
#[derive(Debug)]
pub struct GrpcUpstream {
    /// Calls served.
    pub calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcUpstream {
    /// Starts it on `addr`, answering every call with status `code`.
    pub async fn start(addr: SocketAddr, code: u32) -> GrpcUpstream {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("gRPC upstream cannot bind {addr}: {e}"));
        let calls = Arc::new(AtomicU64::new(0));
        let counter = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", code.into());
                            trailers
                                .insert("grpc-message", http::HeaderValue::from_static("not here"));
                            // An empty message (flag 0, length 0), then the trailers.
                            let frames = futures::stream::iter([
                                Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(
                                    &[0, 0, 0, 0, 0],
                                ))),
                                Ok(hyper::body::Frame::trailers(trailers)),
                            ]);
                            async move {
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .header("content-type", "application/grpc")
                                        .body(http_body_util::StreamBody::new(frames))
                                        .expect("valid response"),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GrpcUpstream { calls, task }
    }
}

/// A test upstream: answers every request with JSON naming itself (method, path,
/// headers it received) and an `x-upstream` response header, and counts.
/// A path `/status/<code>` is answered with that status (for known failure rates).
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts an upstream called `name` on `addr`.
    pub async fn start(name: &str, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("upstream {name} cannot bind {addr}: {e}"));
        let hits = Arc::new(AtomicU64::new(0));
        let name: Arc<str> = name.into();
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let headers: serde_json::Map<String, serde_json::Value> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_string(), v.to_str().unwrap_or("?").into())
                                })
                                .collect();
                            let body = serde_json::json!({
                                "server": &*name,
                                "method": req.method().as_str(),
                                "headers": headers,
                                "path": req.uri().path(),
                                "host": req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()),
                                "mesh_headers": req.headers().keys().filter(|k| k.as_str().starts_with("mesh-")).map(|k| k.as_str()).collect::<Vec<_>>(),
                            });
                            let status = req
                                .uri()
                                .path()
                                .strip_prefix("/status/")
                                .and_then(|code| code.parse::<u16>().ok())
                                .and_then(|code| StatusCode::from_u16(code).ok())
                                .unwrap_or(StatusCode::OK);
                            let upstream = name.to_string();
                            async move {
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .header("x-upstream", upstream)
                                        .body(Full::new(Bytes::from(body.to_string())))
                                        .expect("valid response"),
                                )
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, hits, task }
    }
}
