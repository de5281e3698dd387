//! Entry point of `mesh-proxy`.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    mesh_proxy::cli_main(std::env::args_os().collect())
}
