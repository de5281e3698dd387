//! Entry point of `mesh-proxy`.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> anyhow::Result<()> {
    mesh_proxy::init_tracing();
    mesh_proxy::main(mesh_proxy::ProxyArgs::parse())
}
