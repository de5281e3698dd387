//! Protocol detection on the outbound listener: is a new connection HTTP?
//!
//! The proxy peeks (never consumes) the first bytes the app sends. An HTTP/1
//! request line starts with a method token and a space, HTTP/2 with prior
//! knowledge with the connection preface; anything else is opaque TCP. A client
//! that sends nothing within [`SNIFF_TIMEOUT`] is treated as TCP too: it is
//! probably waiting for a server-speaks-first protocol's greeting. Ports
//! declared opaque are never sniffed at all (the caller skips detection), so
//! those protocols pay no delay.

use std::time::Duration;

use tokio::net::TcpStream;

/// How long to wait for the client's first bytes before calling it TCP.
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(250);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The request methods that mark HTTP/1 (RFC 9110 and PATCH), each followed by
/// a space on the wire.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// Bytes needed to decide in every case (the longest marker).
const DECIDING_LEN: usize = H2_PREFACE.len();

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x: served by the HTTP path.
    Http1,
    /// HTTP/2 with prior knowledge: served by the HTTP path.
    Http2,
    /// Anything else: proxied as opaque TCP.
    Tcp,
}

impl Protocol {
    /// The application protocol Envoy's HTTP inspector reports, which filter
    /// chains match in `application_protocols`; `None` for TCP.
    pub fn alpn(self) -> Option<&'static str> {
        match self {
            Protocol::Http1 => Some("http/1.1"),
            Protocol::Http2 => Some("h2c"),
            Protocol::Tcp => None,
        }
    }
}

/// The verdict on the bytes seen so far; `None` while they could still become
/// either.
pub fn classify(prefix: &[u8]) -> Option<Protocol> {
    let mut undecided = false;
    let markers = METHODS
        .iter()
        .map(|m| (*m, Protocol::Http1))
        .chain([(H2_PREFACE, Protocol::Http2)]);
    for (marker, protocol) in markers {
        let n = prefix.len().min(marker.len());
        if prefix[..n] == marker[..n] {
            if n == marker.len() {
                return Some(protocol);
            }
            undecided = true;
        }
    }
    (!undecided).then_some(Protocol::Tcp)
}

/// Whether the connection starts with `magic` (peeked, within [`SNIFF_TIMEOUT`]).
pub async fn starts_with(stream: &TcpStream, magic: &[u8]) -> bool {
    peek_until(stream, |seen| {
        let n = seen.len().min(magic.len());
        if seen[..n] != magic[..n] {
            Some(false)
        } else {
            (n == magic.len()).then_some(true)
        }
    })
    .await
    .unwrap_or(false)
}

/// Peeks at `stream` until [`classify`] decides, the client stops sending, or
/// [`SNIFF_TIMEOUT`] passes (then: TCP).
pub async fn detect(stream: &TcpStream) -> Protocol {
    peek_until(stream, classify).await.unwrap_or(Protocol::Tcp)
}

/// Peeks at the first bytes (at most [`DECIDING_LEN`]) until `decide` returns
/// a verdict; `None` when the client closes, fails or stays silent for
/// [`SNIFF_TIMEOUT`].
async fn peek_until<T>(stream: &TcpStream, decide: impl Fn(&[u8]) -> Option<T>) -> Option<T> {
    let mut buf = [0u8; DECIDING_LEN];
    let sniff = async {
        let mut seen = 0;
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if let Some(v) = decide(&buf[..n]) {
                return Some(v);
            }
            if n == buf.len() {
                return None;
            }
            if n == seen {
                // `peek` returns at once while data is buffered: wait a moment for
                // the rest of the first segment instead of spinning.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(SNIFF_TIMEOUT, sniff)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::tests::pair;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn methods_preface_and_others() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"DELETE /x"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(Protocol::Http2.alpn(), Some("h2c"));
        assert_eq!(Protocol::Tcp.alpn(), None);
        // Still ambiguous.
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        // Decided against HTTP.
        assert_eq!(classify(b"GETX"), Some(Protocol::Tcp));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Protocol::Tcp));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Tcp), "TLS");
        assert_eq!(classify(b"*3\r\n$3\r\nSET"), Some(Protocol::Tcp), "redis");
        assert_eq!(classify(b"PRI * HTTP/1.1"), Some(Protocol::Tcp));
    }

    #[tokio::test]
    async fn detects_split_request_and_silent_clients() {
        let (mut client, server) = pair().await;
        client.write_all(b"PA").await.unwrap();
        let detecting = tokio::spawn(async move { (detect(&server).await, server) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"TCH /x HTTP/1.1\r\n").await.unwrap();
        let (proto, server) = detecting.await.unwrap();
        assert_eq!(proto, Protocol::Http1);
        // Peeked, not consumed.
        let mut first = [0u8; 5];
        server.peek(&mut first).await.unwrap();
        assert_eq!(&first, b"PATCH");

        // A client waiting for the server to speak first.
        let (_client, server) = pair().await;
        assert_eq!(detect(&server).await, Protocol::Tcp);

        let (mut client, server) = pair().await;
        client.write_all(b"MESH-TCP/1 80 a b c\n").await.unwrap();
        assert!(starts_with(&server, b"MESH-TCP/1 ").await);
        assert!(!starts_with(&server, b"MESH-TCX").await);
    }
}
