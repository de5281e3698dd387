//! Shared helpers for the mesh's end-to-end tests: real processes, real sockets.
//!
//! Tests start the built binaries (`mesh-controller`, `mesh-proxy`, `meshctl`) from
//! the cargo target directory, give every test its own loopback addresses so tests
//! run in parallel with the standard sidecar ports, and kill every process they start
//! when they end, even on panic.
#![forbid(unsafe_code)]

pub mod http;
pub mod kube_api;
pub mod process;
pub mod xds;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

/// A loopback address no other test in this run uses: 127.<a>.<b>.<c>, derived from
/// the process id and a counter, so test binaries and tests don't collide.
pub fn unique_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let a = 100 + (pid % 100) as u8;
    let b = ((pid / 100) % 250) as u8 + 1;
    let c = (n % 250) as u8 + 1;
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A free address on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `f` every 50 ms until it returns `Some`, or panics naming `what` after
/// `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A mesh file in namespace `default` (labelled into the mesh) with the given
/// services `(name, port)` and workloads `(name, app label, ip, port)`.
pub fn mesh_yaml(services: &[(&str, u16)], workloads: &[(&str, &str, IpAddr, u16)]) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {mesh.io/inject: enabled}}\n",
    );
    for (name, port) in services {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{selector: {{app: {name}}}, ports: [{{name: http, port: {port}}}]}}\n"
        ));
    }
    for (name, app, ip, port) in workloads {
        out.push_str(&format!(
            "---\napiVersion: mesh.io/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\nspec: {{address: {ip}, ports: [{{name: http, port: {port}}}], serviceAccount: {app}}}\n"
        ));
    }
    out
}
