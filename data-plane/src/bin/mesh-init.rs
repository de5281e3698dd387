//! Entry point of `mesh-init`, the pod init container that installs the iptables
//! rules sending the app's TCP traffic through the sidecar. The logic lives in
//! `mesh_proxy::capture` (pure rule generation, unit-tested); this is only the CLI
//! shell.
#![forbid(unsafe_code)]

use clap::Parser as _;
use mesh_proxy::capture;

fn main() -> anyhow::Result<()> {
    capture::run(&capture::InitArgs::parse())
}
