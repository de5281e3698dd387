//! A client for the controller's admin API (`--admin-addr`, 15014 by default).
//!
//! Every command that talks to the controller goes through here, so the flag, the
//! environment variable and the error messages are the same everywhere: an operator
//! sees "cannot reach the controller at ..." or the controller's own `{"error"}` text,
//! never a bare transport error or a JSON dump.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::http_client::{ClientError, HttpClient};

/// Where the controller's admin API is when neither `--controller` nor
/// `MESH_CONTROLLER` says otherwise: the local controller `meshctl up` starts.
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:15014";

/// How long one admin request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The `--controller` flag, shared by every command that talks to the admin API.
#[derive(Debug, Clone, Args)]
pub struct ControllerFlag {
    /// The controller's admin API: `http://host:port` or `host:port`.
    #[arg(
        long = "controller",
        env = "MESH_CONTROLLER",
        value_name = "URL",
        default_value = DEFAULT_CONTROLLER
    )]
    pub controller: String,
}

/// Why an admin request failed, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No connection, or no answer in time.
    #[error(
        "cannot reach the controller at {base} ({error}); is it running? (set --controller or MESH_CONTROLLER)"
    )]
    Unreachable {
        /// The admin base URL.
        base: String,
        /// What went wrong (not a `source`: the message already includes it).
        error: ClientError,
    },
    /// The controller answered with an error status.
    #[error("controller refused {what} ({status}): {message}")]
    Refused {
        /// The request, e.g. `POST /tokens`.
        what: String,
        /// The HTTP status.
        status: http::StatusCode,
        /// The controller's `error` field, else its body.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer to {what}: {reason}")]
    Unexpected {
        /// The request.
        what: String,
        /// What was wrong.
        reason: String,
    },
}

/// A join token as the controller issued it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct IssuedToken {
    /// The signed token.
    pub token: String,
    /// The SPIFFE ID it lets a sidecar certify as.
    pub identity: String,
}

/// A client for one controller's admin API.
#[derive(Debug, Clone)]
pub struct Controller {
    base: String,
    client: HttpClient,
}

impl Controller {
    /// A client for `base` (`http://host:port`, or a bare `host:port`).
    pub fn new(base: &str) -> Controller {
        Controller {
            base: normalize_base(base),
            client: HttpClient::direct(),
        }
    }

    /// From the `--controller` flag.
    pub fn from_flag(flag: &ControllerFlag) -> Controller {
        Controller::new(&flag.controller)
    }

    /// The base URL, e.g. `http://127.0.0.1:15014`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, error: ClientError) -> AdminError {
        AdminError::Unreachable {
            base: self.base.clone(),
            error,
        }
    }

    /// GETs `path` and returns the body of a 2xx answer as text.
    pub async fn get_text(&self, path: &str) -> Result<String, AdminError> {
        let reply = self
            .client
            .get(&self.url(path), TIMEOUT)
            .await
            .map_err(|e| self.unreachable(e))?;
        let body = String::from_utf8_lossy(&reply.body).to_string();
        if !reply.status.is_success() {
            return Err(AdminError::Refused {
                what: format!("GET {path}"),
                status: reply.status,
                message: error_message(&body),
            });
        }
        Ok(body)
    }

    /// GETs `path` and parses the answer as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, AdminError> {
        let body = self.get_text(path).await?;
        serde_json::from_str(&body).map_err(|e| AdminError::Unexpected {
            what: format!("GET {path}"),
            reason: format!("not JSON: {e}"),
        })
    }

    /// `GET /ready`: whether the controller is up.
    pub async fn ready(&self) -> Result<(), AdminError> {
        self.get_text("/ready").await.map(drop)
    }

    /// `GET /ca/bundle`: the trust anchors (PEM) sidecars verify peers with.
    pub async fn trust_bundle(&self) -> Result<String, AdminError> {
        let pem = self.get_text("/ca/bundle").await?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(AdminError::Unexpected {
                what: "GET /ca/bundle".into(),
                reason: "no PEM certificate in the answer".into(),
            });
        }
        Ok(pem)
    }

    /// `POST /tokens`: a join token for `namespace/service_account`, valid for
    /// `ttl` (the controller's default, 24 h, when `None`).
    pub async fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, AdminError> {
        let what = "POST /tokens".to_string();
        let mut body = serde_json::json!({
            "namespace": namespace,
            "service_account": service_account,
        });
        if let Some(ttl) = ttl {
            body["ttl_seconds"] = ttl_seconds(ttl)
                .map_err(|reason| AdminError::Unexpected {
                    what: what.clone(),
                    reason,
                })?
                .into();
        }
        let reply = self
            .client
            .post_json(&self.url("/tokens"), &body, TIMEOUT)
            .await
            .map_err(|e| self.unreachable(e))?;
        let text = String::from_utf8_lossy(&reply.body).to_string();
        if !reply.status.is_success() {
            return Err(AdminError::Refused {
                what,
                status: reply.status,
                message: error_message(&text),
            });
        }
        serde_json::from_str(&text).map_err(|e| AdminError::Unexpected {
            what,
            reason: format!("expected {{\"token\", \"identity\"}}: {e}"),
        })
    }
}

/// Whole seconds for the controller's `ttl_seconds`: sub-second parts round up, and
/// less than a second is refused here rather than by the controller.
pub fn ttl_seconds(ttl: Duration) -> Result<u64, String> {
    if ttl < Duration::from_secs(1) {
        return Err(format!(
            "a token lifetime must be at least 1s (got {ttl:?})"
        ));
    }
    Ok(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
}

/// `host:port` -> `http://host:port`; a trailing `/` is dropped.
pub fn normalize_base(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    }
}

/// The controller's `{"error": "..."}` text, else the body itself (trimmed).
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            let text = body.trim();
            if text.is_empty() {
                "(empty answer)".to_string()
            } else {
                text.to_string()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bases_are_normalized() {
        assert_eq!(normalize_base("127.0.0.1:15014"), "http://127.0.0.1:15014");
        assert_eq!(normalize_base("http://ctl:1/"), "http://ctl:1");
        assert_eq!(normalize_base(" https://ctl:1 "), "https://ctl:1");
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(r#"{"error": "bad namespace \"A\""}"#),
            "bad namespace \"A\""
        );
        assert_eq!(error_message("not found\n"), "not found");
        assert_eq!(error_message(""), "(empty answer)");
        assert_eq!(error_message(r#"{"other": 1}"#), r#"{"other": 1}"#);
    }

    #[test]
    fn ttls_round_up_to_seconds() {
        assert_eq!(ttl_seconds(Duration::from_secs(86400)), Ok(86400));
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), Ok(2));
        assert!(ttl_seconds(Duration::from_millis(500)).is_err());
    }

    /// A one-shot admin server answering `status` with `body`; returns its base URL
    /// and the request it saw.
    async fn fake_admin(
        status: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Enough for one small request: the head and a short JSON body.
            while !String::from_utf8_lossy(&got).contains('}') {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&got).to_string()
        });
        (format!("{addr}"), task)
    }

    #[tokio::test]
    async fn create_token_sends_the_request_and_reads_the_token() {
        let (base, seen) = fake_admin(
            "200 OK",
            r#"{"token":"t0k","identity":"spiffe://cluster.local/ns/a/sa/b"}"#,
        )
        .await;
        let issued = Controller::new(&base)
            .create_token("a", "b", Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        assert_eq!(issued.token, "t0k");
        assert_eq!(issued.identity, "spiffe://cluster.local/ns/a/sa/b");
        let request = seen.await.unwrap();
        assert!(request.starts_with("POST /tokens HTTP/1.1"), "{request}");
        let body: Value = serde_json::from_str(&request[request.find('{').unwrap()..]).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"namespace": "a", "service_account": "b", "ttl_seconds": 3600})
        );
    }

    #[tokio::test]
    async fn controller_errors_are_shown_with_their_reason() {
        let (base, _seen) = fake_admin(
            "400 Bad Request",
            r#"{"error":"namespace \"A\" is not a DNS label"}"#,
        )
        .await;
        let err = Controller::new(&base)
            .create_token("A", "b", None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "controller refused POST /tokens (400 Bad Request): namespace \"A\" is not a DNS label"
        );
    }

    #[tokio::test]
    async fn an_absent_controller_is_named() {
        // A port nothing listens on: bind, note it, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = Controller::new(&addr.to_string())
            .ready()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot reach the controller at http://{addr} (")),
            "{text}"
        );
        assert!(text.contains("MESH_CONTROLLER"), "{text}");
    }
}
