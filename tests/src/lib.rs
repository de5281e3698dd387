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
pub mod prometheus;
pub mod strict;
pub mod xds;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
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

/// A directory of one test's own (mesh files, logs, CA state): removed when the
/// test passes, kept when it panics so the logs can be read.
#[derive(Debug)]
pub struct TestDir(pub PathBuf);

impl TestDir {
    /// A fresh, empty directory named after `tag`, the process and a counter, so
    /// parallel tests and test binaries never share one.
    pub fn new(tag: &str) -> TestDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mesh-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free TCP port on 127.0.0.1 for a server a test is about to start.
///
/// Chosen below Linux's ephemeral range (32768+), which outgoing connections
/// draw from: an ephemeral "free" port can be taken by any client socket
/// between this check and the server's bind. Each test process walks its own
/// sequence (seeded by its pid), so parallel tests do not collide either.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const BASE: u32 = 20000;
    const SPAN: u32 = 12000;
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (BASE + seed.wrapping_add(n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {BASE}..{}", BASE + SPAN)
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
