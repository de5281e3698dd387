//! A pooled HTTP/1.1 client that can send every request through an explicit HTTP proxy.
//!
//! The demo app and load generator reach other services the way a meshed app does
//! locally: through their sidecar's outbound port, named by `http_proxy`. Requests to
//! the proxy use the absolute form (`GET http://catalog.default:8080/items`), so the
//! sidecar routes by the authority the app asked for.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Why a request failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The proxy setting or the URL could not be used.
    #[error("invalid URL {0:?}: {1}")]
    InvalidUrl(String, String),
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Connecting, sending or reading failed.
    #[error("request failed: {0}")]
    Transport(String),
}

/// What a GET returned.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The response status.
    pub status: StatusCode,
    /// The whole response body.
    pub body: Bytes,
}

/// A cheaply clonable client, direct or through one HTTP proxy.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<ProxyConnector, Full<Bytes>>,
    proxied: bool,
}

impl HttpClient {
    /// A client that connects straight to each URL's host (no proxy).
    pub fn direct() -> HttpClient {
        Self::build(None)
    }

    /// A client that sends everything to `proxy` (`http://host:port`).
    pub fn via_proxy(proxy: &str) -> Result<HttpClient, ClientError> {
        let uri: Uri = proxy.parse().map_err(|e: http::uri::InvalidUri| {
            ClientError::InvalidUrl(proxy.into(), e.to_string())
        })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ClientError::InvalidUrl(
                proxy.into(),
                "a proxy must be http://host:port".into(),
            ));
        }
        Ok(Self::build(Some(uri)))
    }

    /// Uses `http_proxy` (or `HTTP_PROXY`) when set, as curl does; direct otherwise.
    pub fn from_env() -> Result<HttpClient, ClientError> {
        match proxy_from_env() {
            Some(proxy) => Self::via_proxy(&proxy),
            None => Ok(Self::direct()),
        }
    }

    /// Whether requests go through a proxy.
    pub fn is_proxied(&self) -> bool {
        self.proxied
    }

    fn build(proxy: Option<Uri>) -> HttpClient {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        let proxied = proxy.is_some();
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(ProxyConnector { http, proxy });
        HttpClient { inner, proxied }
    }

    /// GETs `url` and reads the whole body, all within `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Reply, ClientError> {
        self.request(Method::GET, url, None, timeout).await
    }

    /// POSTs a JSON body to `url` and reads the whole answer, all within `timeout`:
    /// what the controller's admin API (`POST /tokens`) takes.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let bytes = Bytes::from(body.to_string());
        self.request(
            Method::POST,
            url,
            Some(("application/json", bytes)),
            timeout,
        )
        .await
    }

    /// Sends one request (with an optional `(content type, body)`) and reads the
    /// whole answer, all within `timeout`.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<(&str, Bytes)>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| {
            ClientError::InvalidUrl(url.into(), e.to_string())
        })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ClientError::InvalidUrl(
                url.into(),
                "only absolute http:// URLs are supported".into(),
            ));
        }
        let mut builder = Request::builder().method(method).uri(uri);
        let body = match body {
            Some((content_type, bytes)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                Full::new(bytes)
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .map_err(|e| ClientError::InvalidUrl(url.into(), e.to_string()))?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| ClientError::Transport(error_chain(&e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Transport(error_chain(&e)))?
                .to_bytes();
            Ok(Reply { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}

/// The proxy URL from the environment, lower case first (curl's convention).
pub fn proxy_from_env() -> Option<String> {
    ["http_proxy", "HTTP_PROXY"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| !v.trim().is_empty())
}

/// hyper's errors hide their cause in `source()`; show the whole chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Connects to the proxy when there is one (marking the connection proxied, so the
/// pooled client keeps the absolute-form URI), else to the URL's own host.
#[derive(Clone, Debug)]
struct ProxyConnector {
    http: HttpConnector,
    proxy: Option<Uri>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = ProxiedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<ProxiedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let proxy = self.proxy.clone();
        Box::pin(async move {
            let proxied = proxy.is_some();
            let target = proxy.unwrap_or(dst);
            let io = tower_service::Service::call(&mut http, target).await?;
            Ok(ProxiedIo { io, proxied })
        })
    }
}

/// A TCP connection that remembers whether it leads to a proxy.
struct ProxiedIo {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for ProxiedIo {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for ProxiedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ProxiedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot fake proxy that records the request line it received.
    async fn fake_proxy() -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            // Read the head and then as much body as content-length announces.
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                let Some(end) = text.find("\r\n\r\n") else {
                    continue;
                };
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_string)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if n == 0 || got.len() >= end + 4 + length {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&got).to_string();
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            head
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn proxied_requests_use_absolute_form() {
        let (proxy, task) = fake_proxy().await;
        let client = HttpClient::via_proxy(&proxy).unwrap();
        let reply = client
            .get("http://catalog.default:8080/items", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(&reply.body[..], b"ok");
        let head = task.await.unwrap();
        assert!(
            head.starts_with("GET http://catalog.default:8080/items HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_lowercase().contains("host: catalog.default:8080"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn post_sends_json_with_its_content_type() {
        let (proxy, task) = fake_proxy().await;
        let client = HttpClient::via_proxy(&proxy).unwrap();
        let reply = client
            .post_json(
                "http://ctl:15014/tokens",
                &serde_json::json!({"namespace": "a"}),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let head = task.await.unwrap();
        assert!(
            head.starts_with("POST http://ctl:15014/tokens HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        assert!(head.ends_with(r#"{"namespace":"a"}"#), "{head}");
    }

    #[test]
    fn bad_urls_are_rejected() {
        assert!(HttpClient::via_proxy("socks5://x:1").is_err());
        assert!(HttpClient::via_proxy("not a url").is_err());
    }

    #[tokio::test]
    async fn relative_urls_are_rejected() {
        let e = HttpClient::direct()
            .get("/items", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidUrl(..)), "{e}");
    }
}
