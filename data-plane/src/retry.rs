//! When a failed attempt is retried, and after how long.
//!
//! Envoy's conditions, with the mesh's safety rule: a request that may have
//! reached the app (reset, timeout, an error status) is retried only when its
//! method is idempotent; one that certainly did not (connect failure, refused
//! stream) is retried whatever the method. Only bodies the proxy holds in full
//! (at most [`MAX_BUFFERED_BODY`]) can be sent again.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use crate::decode_policy::RetrySpec;

/// Largest request body kept for retries (64 KiB); larger ones stream through
/// and are not retried.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(StatusCode),
    /// No connection could be made: nothing was sent.
    ConnectFailure,
    /// The peer refused the stream: nothing was processed.
    RefusedStream,
    /// The connection or stream broke before the response.
    Reset,
    /// The attempt's own timeout (per-try) expired.
    Timeout,
}

impl Outcome {
    /// Whether outlier detection counts this as a failure of the endpoint
    /// (5xx, and local-origin failures, which Envoy folds into 5xx).
    pub fn is_endpoint_failure(self) -> bool {
        match self {
            Outcome::Status(s) => s.is_server_error(),
            _ => true,
        }
    }
}

/// Whether a request with `method` may be repeated without changing its
/// effect (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether `spec` retries an attempt that ended with `outcome`.
pub fn retriable(spec: &RetrySpec, outcome: Outcome, idempotent: bool) -> bool {
    let on = &spec.on;
    match outcome {
        Outcome::ConnectFailure => on.connect_failure || on.five_xx || on.gateway_error,
        Outcome::RefusedStream => on.refused_stream || on.five_xx,
        Outcome::Reset => idempotent && (on.reset || on.five_xx || on.gateway_error),
        Outcome::Timeout => idempotent && (on.reset || on.five_xx || on.gateway_error),
        Outcome::Status(s) => {
            let code = s.as_u16();
            idempotent
                && ((on.five_xx && s.is_server_error())
                    || (on.gateway_error && matches!(code, 502..=504))
                    || (on.retriable_4xx && code == 409)
                    || (on.status_codes && spec.codes.contains(&code)))
        }
    }
}

/// The wait before retry number `retry` (1-based): random in
/// [0, (2^retry − 1) × base), capped at the maximum, as Envoy does.
pub fn backoff(spec: &RetrySpec, retry: u32) -> Duration {
    let factor = (1u64 << retry.min(20)) - 1;
    let ceiling = spec
        .backoff_base
        .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
        .min(spec.backoff_max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(fastrand::u64(..nanos))
}

/// A request body: held in full (replayable) or streaming (sent once).
#[derive(Debug)]
pub enum RequestBody {
    /// The whole body.
    Buffered(Bytes),
    /// Too large or of unknown length: streams through.
    Streaming(Incoming),
}

/// Reads `body` into memory when it is known to be at most
/// [`MAX_BUFFERED_BODY`] (an empty body, or a `Content-Length` within it);
/// otherwise leaves it streaming.
pub async fn buffer(body: Incoming) -> Result<RequestBody, hyper::Error> {
    if body.is_end_stream() {
        return Ok(RequestBody::Buffered(Bytes::new()));
    }
    match body.size_hint().exact() {
        Some(len) if len <= MAX_BUFFERED_BODY => {
            Ok(RequestBody::Buffered(body.collect().await?.to_bytes()))
        }
        _ => Ok(RequestBody::Streaming(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_policy::RetryOn;

    fn spec(on: RetryOn) -> RetrySpec {
        RetrySpec {
            on,
            codes: vec![503],
            num_retries: 2,
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            avoid_previous_hosts: true,
        }
    }

    #[test]
    fn conditions_respect_idempotency() {
        let default = spec(RetryOn {
            connect_failure: true,
            refused_stream: true,
            reset: true,
            status_codes: true,
            ..Default::default()
        });
        assert!(
            retriable(&default, Outcome::ConnectFailure, false),
            "nothing was sent"
        );
        assert!(retriable(&default, Outcome::RefusedStream, false));
        assert!(retriable(&default, Outcome::Reset, true));
        assert!(
            !retriable(&default, Outcome::Reset, false),
            "a POST may have run"
        );
        assert!(retriable(
            &default,
            Outcome::Status(StatusCode::SERVICE_UNAVAILABLE),
            true
        ));
        assert!(!retriable(
            &default,
            Outcome::Status(StatusCode::SERVICE_UNAVAILABLE),
            false
        ));
        assert!(!retriable(
            &default,
            Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR),
            true
        ));
        assert!(!retriable(&default, Outcome::Timeout, false));
        let five = spec(RetryOn {
            five_xx: true,
            ..Default::default()
        });
        assert!(retriable(
            &five,
            Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR),
            true
        ));
        assert!(retriable(&five, Outcome::Timeout, true));
        assert!(retriable(&five, Outcome::ConnectFailure, false));
        assert!(!retriable(
            &five,
            Outcome::Status(StatusCode::CONFLICT),
            true
        ));
        let gw = spec(RetryOn {
            gateway_error: true,
            ..Default::default()
        });
        assert!(retriable(
            &gw,
            Outcome::Status(StatusCode::GATEWAY_TIMEOUT),
            true
        ));
        assert!(!retriable(
            &gw,
            Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR),
            true
        ));
        assert!(is_idempotent(&Method::PUT) && !is_idempotent(&Method::POST));
        assert!(Outcome::Reset.is_endpoint_failure());
        assert!(!Outcome::Status(StatusCode::NOT_FOUND).is_endpoint_failure());
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let s = spec(RetryOn::default());
        for _ in 0..200 {
            assert!(backoff(&s, 1) < Duration::from_millis(25));
            assert!(backoff(&s, 2) < Duration::from_millis(75));
            assert!(backoff(&s, 10) < Duration::from_millis(250));
        }
        let max = (0..500).map(|_| backoff(&s, 3)).max().unwrap();
        assert!(
            max > Duration::from_millis(100),
            "jitter spans the range: {max:?}"
        );
    }
}
