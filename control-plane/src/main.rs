//! Entry point of `mesh-controller`.
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesh_controller::init_tracing();
    mesh_controller::run(mesh_controller::ControllerArgs::parse()).await
}
