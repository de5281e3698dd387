//! The original destination of a captured connection.
//!
//! `mesh-init`'s iptables `REDIRECT` rewrites a captured connection's destination
//! to the sidecar's listener; the kernel's connection tracking keeps the address
//! the app really dialled, and `SO_ORIGINAL_DST` reads it back. That address is
//! what transparent capture routes by: a service's cluster IP and port, or any
//! other destination the connection passes through to.
//!
//! A connection that was not redirected (explicit proxy use, the local runner,
//! sidecars dialling each other's inbound port) has no such entry, or one whose
//! destination is the listener itself; both mean "no original destination".

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use nix::sys::socket::{getsockopt, sockopt::OriginalDst};
use tokio::net::TcpStream;

/// The address `stream`'s peer originally connected to before an iptables
/// `REDIRECT`, or `None` when the connection was not redirected.
///
/// IPv4 only, like `mesh-init`'s rules.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let raw = match getsockopt(stream, OriginalDst) {
        Ok(raw) => raw,
        // ENOENT: no conntrack entry (no NAT happened, or conntrack is not
        // loaded); ENOPROTOOPT on IPv6 sockets. Either way: not redirected.
        Err(e) => {
            tracing::trace!(%local, "no original destination: {e}");
            return None;
        }
    };
    let dst = SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
        u16::from_be(raw.sin_port),
    ));
    not_the_listener(dst, local)
}

/// `dst`, unless it is the listener's own address (conntrack knows the
/// connection but nothing rewrote it).
fn not_the_listener(dst: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
    (dst != local).then_some(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_itself_is_no_original_destination() {
        let local: SocketAddr = "10.0.0.5:15001".parse().unwrap();
        assert_eq!(not_the_listener(local, local), None);
        let svc: SocketAddr = "10.96.0.10:80".parse().unwrap();
        assert_eq!(not_the_listener(svc, local), Some(svc));
    }

    #[tokio::test]
    async fn an_unredirected_connection_has_none() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
        assert_eq!(original_dst(&client), None);
    }
}
