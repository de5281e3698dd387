//! gRPC awareness for metrics: a gRPC call's outcome is its `grpc-status`, which
//! arrives in the response trailers (or, for a call that fails at once, in the
//! headers of a trailers-only response), while the HTTP status is nearly always
//! 200. [`observe`] finds it without buffering: the body is streamed through
//! untouched and the status is reported once, when it is seen.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderMap, HeaderName};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::upstream::ProxyBody;

/// The header (or trailer) that carries a gRPC call's status code.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// `grpc_status` label of a response that is not gRPC.
pub const NOT_GRPC: &str = "";
/// `grpc_status` label of a gRPC response that ended without a valid status.
pub const MISSING: &str = "unknown";

/// The canonical codes' label values; anything else is [`MISSING`].
const CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// The label for a `grpc-status` value, without allocating.
pub fn status_label(value: &[u8]) -> &'static str {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .and_then(|code| CODES.get(code).copied())
        .unwrap_or(MISSING)
}

/// Whether a response is gRPC (`content-type: application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

type Report = Box<dyn FnOnce(&'static str) + Send>;

/// An upstream body streamed through, reporting the gRPC status found in its
/// trailers once; a body that ends or is dropped without one reports [`MISSING`].
pub struct Observed {
    inner: Incoming,
    report: Option<Report>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("watching", &self.report.is_some())
            .finish()
    }
}

impl Observed {
    /// A body passed through without watching.
    pub fn plain(inner: Incoming) -> Observed {
        Observed {
            inner,
            report: None,
        }
    }

    fn finish(&mut self, label: &'static str) {
        if let Some(report) = self.report.take() {
            report(label);
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let label = trailers
                        .get(&GRPC_STATUS)
                        .map_or(MISSING, |v| status_label(v.as_bytes()));
                    self.finish(label);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(MISSING),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish(MISSING);
    }
}

/// Passes `resp` on, calling `report` once with its `grpc_status` label: at once
/// for a non-gRPC or trailers-only response, else when the trailers arrive.
pub fn observe(
    resp: Response<Incoming>,
    report: impl FnOnce(&'static str) + Send + 'static,
) -> Response<ProxyBody> {
    let label = if !is_grpc(resp.headers()) {
        Some(NOT_GRPC)
    } else {
        resp.headers()
            .get(&GRPC_STATUS)
            .map(|v| status_label(v.as_bytes()))
    };
    match label {
        Some(label) => {
            report(label);
            resp.map(|b| http_body_util::Either::Left(Observed::plain(b)))
        }
        None => resp.map(|inner| {
            http_body_util::Either::Left(Observed {
                inner,
                report: Some(Box::new(report)),
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(status_label(b"0"), "0");
        assert_eq!(status_label(b"5"), "5");
        assert_eq!(status_label(b"16"), "16");
        assert_eq!(status_label(b"17"), MISSING);
        assert_eq!(status_label(b"x"), MISSING);
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/grpc+proto".parse().unwrap(),
        );
        assert!(is_grpc(&h));
    }
}
