//! The preface that opens a sidecar-to-sidecar TCP connection.
//!
//! A proxied TCP connection travels to the destination sidecar's inbound port
//! (15006) on its own mutual-TLS connection with ALPN `mesh-tcp` (plaintext in
//! dev mode). The inbound side cannot learn the target app port from the
//! connection (it was dialled directly, not redirected), so the client sends one
//! ASCII line first:
//!
//! ```text
//! MESH-TCP/1 <target-port> <source-workload> <source-namespace> <destination-service>\n
//! ```
//!
//! e.g. `MESH-TCP/1 3306 web-1 shop db.shop.svc.cluster.local\n`. Every field is
//! one token without spaces or control characters (`-` when unknown); the line is
//! at most [`MAX_LEN`] bytes. The source fields label metrics like the HTTP hop
//! headers do; they are not trusted for policy (the certificate is). The app's
//! bytes follow immediately.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The first token: protocol name and version.
pub const MAGIC: &str = "MESH-TCP/1";
/// Longest accepted preface line, newline included.
pub const MAX_LEN: usize = 512;

/// The decoded preface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preface {
    /// The app port on the destination workload.
    pub target_port: u16,
    /// The calling workload (metrics only).
    pub source_workload: String,
    /// The calling workload's namespace (metrics only).
    pub source_namespace: String,
    /// The service the caller connected to (metrics only).
    pub destination_service: String,
}

/// Why a preface was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrefaceError {
    /// The connection failed or ended before the line was complete.
    #[error("reading the preface: {0}")]
    Io(#[from] std::io::Error),
    /// No newline within [`MAX_LEN`] bytes.
    #[error("preface longer than {MAX_LEN} bytes")]
    TooLong,
    /// The line is not a valid preface.
    #[error("malformed preface: {0}")]
    Malformed(String),
}

/// A field as sent: `-` for an empty value, anything unsafe replaced by `_`.
fn token(s: &str) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

impl Preface {
    /// The line to send, newline included.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{MAGIC} {} {} {} {}\n",
            self.target_port,
            token(&self.source_workload),
            token(&self.source_namespace),
            token(&self.destination_service)
        )
        .into_bytes()
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Preface, PrefaceError> {
        let bad = |why: &str| PrefaceError::Malformed(why.to_string());
        let line = std::str::from_utf8(line).map_err(|_| bad("not ASCII"))?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !line.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(bad("control characters"));
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let [magic, port, workload, namespace, service] = fields[..] else {
            return Err(bad("expected 5 space-separated fields"));
        };
        if magic != MAGIC {
            return Err(bad("unknown protocol or version"));
        }
        let target_port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("target port is not 1-65535"))?;
        let field = |s: &str| {
            if s == "-" {
                String::new()
            } else {
                s.to_string()
            }
        };
        if [workload, namespace, service].iter().any(|f| f.is_empty()) {
            return Err(bad("empty field"));
        }
        Ok(Preface {
            target_port,
            source_workload: field(workload),
            source_namespace: field(namespace),
            destination_service: field(service),
        })
    }

    /// Reads the preface from `io`; returns it with the bytes read past its
    /// newline (the start of the app's data, to be forwarded first).
    pub async fn read<R: AsyncRead + Unpin>(
        io: &mut R,
    ) -> Result<(Preface, Vec<u8>), PrefaceError> {
        let mut buf = Vec::with_capacity(128);
        let mut chunk = [0u8; 256];
        loop {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(PrefaceError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                if end >= MAX_LEN {
                    return Err(PrefaceError::TooLong);
                }
                let rest = buf.split_off(end + 1);
                buf.pop();
                return Ok((Preface::parse(&buf)?, rest));
            }
            if buf.len() >= MAX_LEN {
                return Err(PrefaceError::TooLong);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Preface {
        Preface {
            target_port: 3306,
            source_workload: "web-1".into(),
            source_namespace: "shop".into(),
            destination_service: "db.shop.svc.cluster.local".into(),
        }
    }

    #[test]
    fn encodes_the_documented_line() {
        assert_eq!(
            sample().encode(),
            b"MESH-TCP/1 3306 web-1 shop db.shop.svc.cluster.local\n"
        );
        let unknown = Preface {
            source_workload: String::new(),
            source_namespace: "a b".into(),
            ..sample()
        };
        assert_eq!(
            unknown.encode(),
            b"MESH-TCP/1 3306 - a_b db.shop.svc.cluster.local\n"
        );
        assert_eq!(
            Preface::parse(b"MESH-TCP/1 3306 - a_b x")
                .unwrap()
                .source_workload,
            ""
        );
    }

    #[tokio::test]
    async fn reads_the_line_and_keeps_what_follows() {
        let mut wire = sample().encode();
        wire.extend_from_slice(b"\x0a\x00app bytes");
        let (p, rest) = Preface::read(&mut wire.as_slice()).await.unwrap();
        assert_eq!(p, sample());
        assert_eq!(rest, b"\x0a\x00app bytes");
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_preface() {
        for (wire, why) in [
            (&b"GET / HTTP/1.1\r\n"[..], "5 space-separated"),
            (b"MESH-TCP/2 80 a b c\n", "version"),
            (b"MESH-TCP/1 0 a b c\n", "1-65535"),
            (b"MESH-TCP/1 70000 a b c\n", "1-65535"),
            (b"MESH-TCP/1 80 a  c\n", "empty field"),
            (b"MESH-TCP/1 80 a\tb c d\n", "control"),
        ] {
            let e = Preface::read(&mut &wire[..]).await.unwrap_err();
            assert!(e.to_string().contains(why), "{e} for {wire:?}");
        }
        let long = vec![b'x'; MAX_LEN + 1];
        let e = Preface::read(&mut long.as_slice()).await.unwrap_err();
        assert!(matches!(e, PrefaceError::TooLong), "{e}");
        let e = Preface::read(&mut &b"MESH-TCP/1 80"[..]).await.unwrap_err();
        assert!(matches!(e, PrefaceError::Io(_)), "{e}");
    }
}
