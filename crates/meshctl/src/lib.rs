//! `meshctl`: the operator's CLI, including the local runner behind `meshctl up`.
//!
//! The binary is self-contained: besides its user-facing subcommands it embeds the
//! controller (`meshctl controller`) and the sidecar (`meshctl proxy`), so `up` needs
//! nothing but itself.
#![forbid(unsafe_code)]

pub mod check;
pub mod check_cluster;
pub mod cli;
pub mod controller;
pub mod demo_app;
pub mod format;
pub mod http_client;
pub mod inject;
pub mod install;
pub mod load;
pub mod namespace;
pub mod prom;
pub mod proxy_config;
pub mod proxy_status;
pub mod signals;
pub mod stat;
pub mod token;
pub mod up;

use std::ffi::OsString;

use clap::Parser as _;

use cli::{Cli, Command, TokenCommand};

/// The demo mesh `meshctl up` runs when no file is given.
pub const DEMO_MESH: &str = include_str!("../../../deploy/local/demo.yaml");

/// Runs a parsed command line: the whole of `main`.
///
/// Each subcommand builds its own runtime, because the embedded sidecar insists on
/// building its own (`mesh_proxy::main`).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Controller(pass) => {
            up::process::exit_with_parent();
            let args = mesh_controller::ControllerArgs::parse_from(with_argv0(
                "mesh-controller",
                pass.args,
            ));
            mesh_controller::init_tracing();
            runtime()?.block_on(mesh_controller::run(args))
        }
        Command::Proxy(pass) => {
            up::process::exit_with_parent();
            mesh_proxy::cli_main(with_argv0("mesh-proxy", pass.args).collect())
        }
        Command::Up(args) => {
            init_tracing("warn");
            runtime()?.block_on(up::run(args))
        }
        Command::Token(args) => match args.command {
            TokenCommand::Create(args) => {
                init_tracing("warn");
                current_thread()?.block_on(token::create(args))
            }
        },
        Command::ProxyConfig(args) => {
            init_tracing("warn");
            current_thread()?.block_on(proxy_config::run(args))
        }
        Command::ProxyStatus(args) => {
            init_tracing("warn");
            current_thread()?.block_on(proxy_status::run(args))
        }
        Command::Stat(args) => {
            init_tracing("warn");
            current_thread()?.block_on(stat::run(args))
        }
        Command::Check(args) => {
            init_tracing("warn");
            current_thread()?.block_on(check::run(args))
        }
        Command::Inject(args) => {
            init_tracing("warn");
            inject::run(&args)
        }
        Command::Install(args) => install::run(&args),
        Command::Namespace(args) => {
            init_tracing("warn");
            current_thread()?.block_on(namespace::run(args))
        }
        Command::DemoApp(args) => {
            up::process::exit_with_parent();
            init_tracing("info");
            runtime()?.block_on(demo_app::run(args))
        }
        Command::DemoLoad(args) => {
            up::process::exit_with_parent();
            init_tracing("info");
            runtime()?.block_on(load::run(args))
        }
    }
}

fn with_argv0(argv0: &str, args: Vec<OsString>) -> impl Iterator<Item = OsString> {
    std::iter::once(OsString::from(argv0)).chain(args)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A one-thread runtime for the short operator commands: nothing to parallelise.
fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `default_level`).
fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use mesh_model::Object;

    #[test]
    fn demo_mesh_parses_and_has_the_expected_shape() {
        let objects = mesh_model::parse_documents(super::DEMO_MESH, "demo.yaml").unwrap();
        let workloads: Vec<_> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Workload(w) => Some(w),
                _ => None,
            })
            .collect();
        let names: Vec<_> = workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "frontend-1",
                "catalog-1",
                "catalog-2",
                "orders-1",
                "orders-2",
                "orders-3",
                "loadgen-1"
            ]
        );
        assert!(
            workloads
                .iter()
                .all(|w| w.address.is_none() && w.command[0] == "meshctl")
        );
        let planned = {
            let mut objects = objects.clone();
            crate::up::addresses::assign(&mut objects).unwrap();
            crate::up::plan::workloads(&objects)
        };
        assert!(planned.iter().all(|w| w.injected));
        let services = objects
            .iter()
            .filter(|o| matches!(o, Object::Service(_)))
            .count();
        assert_eq!(services, 3);
    }
}
