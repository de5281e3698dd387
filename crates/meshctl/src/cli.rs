//! The command line: every subcommand's flags, in one place.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::controller::ControllerFlag;

/// `meshctl`: operate the mesh, or run it locally with `meshctl up`.
#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Operate the mesh; run it locally with `meshctl up`"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. The hidden ones make the binary self-contained: `up` starts the
/// controller and the sidecars as `meshctl controller ...` / `meshctl proxy ...`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole mesh on this machine: controller, sidecars and apps from a mesh file.
    Up(UpArgs),
    /// Join tokens that let a sidecar obtain its workload certificate.
    Token(TokenArgs),
    /// Show what one sidecar holds: its certificate and trust bundle, or its xDS config.
    ProxyConfig(ProxyConfigArgs),
    /// Every connected proxy's xDS sync state (CDS, LDS, EDS, RDS, SDS), with the
    /// reason of each rejected config.
    ProxyStatus(ProxyStatusArgs),
    /// Golden signals per service or workload: success rate, RPS, latency, TCP
    /// connections, from Prometheus or straight from the sidecars.
    Stat(StatArgs),
    /// Check the mesh's health: cluster (CRDs, controller, webhook), controller,
    /// certificates and root expiry, proxy sync.
    Check(CheckArgs),
    /// Add the mesh sidecar to the Pods and pod templates of a manifest (what the
    /// cluster's webhook does), printing the result for `kubectl apply -f -`.
    Inject(InjectArgs),
    /// Print every manifest that installs the mesh on Kubernetes, for
    /// `kubectl apply -f -`.
    Install(InstallArgs),
    /// Switch the mesh on or off for a Kubernetes namespace (its mesh.io/inject label).
    Namespace(NamespaceArgs),
    /// Run the control plane (takes `mesh-controller`'s flags).
    #[command(hide = true, disable_help_flag = true, disable_version_flag = true)]
    Controller(PassThrough),
    /// Run a sidecar (takes `mesh-proxy`'s flags).
    #[command(hide = true, disable_help_flag = true, disable_version_flag = true)]
    Proxy(PassThrough),
    /// A demo HTTP service that answers with JSON and calls its dependencies.
    DemoApp(DemoAppArgs),
    /// A load generator that sends GETs at a steady rate, through `http_proxy`.
    DemoLoad(DemoLoadArgs),
}

/// Arguments handed unchanged to an embedded binary's own parser.
#[derive(Debug, Args)]
pub struct PassThrough {
    /// The embedded binary's flags.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

/// Flags of `meshctl up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Mesh file (multi-document YAML); the built-in demo when omitted.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Stop everything and exit after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// The controller's plaintext xDS port on 127.0.0.1.
    #[arg(long, default_value_t = 15010)]
    pub xds_port: u16,
    /// The controller's TLS xDS + identity port on 127.0.0.1, which the sidecars use.
    #[arg(long, default_value_t = 15012)]
    pub secure_port: u16,
    /// Run without identities: no certificates, plaintext between sidecars (the
    /// mTLS-less development mode; the default is mTLS, STRICT).
    #[arg(long)]
    pub plaintext: bool,
    /// The controller's admin port on 127.0.0.1.
    #[arg(long, default_value_t = 15014)]
    pub admin_port: u16,
    /// Run this `mesh-controller` binary instead of the embedded controller.
    #[arg(long, value_name = "PATH")]
    pub controller_bin: Option<PathBuf>,
    /// Run this `mesh-proxy` binary instead of the embedded sidecar.
    #[arg(long, value_name = "PATH")]
    pub proxy_bin: Option<PathBuf>,
    /// How long the controller and each sidecar may take to become ready.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub ready_timeout: u64,
    /// Seconds between refreshes of the live service table (0 turns it off).
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    pub interval: u64,
    /// Stream every process's output to stderr too (it always goes to the run dir).
    #[arg(short, long)]
    pub verbose: bool,
}

/// `meshctl token ...`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// What to do with tokens.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// The token subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Ask the controller for a join token; prints only the token (for `$(...)`).
    Create(TokenCreateArgs),
}

/// How `token create` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenOutput {
    /// Just the token.
    Token,
    /// `{"token", "identity"}`.
    Json,
}

/// Flags of `meshctl token create`.
#[derive(Debug, Clone, Args)]
pub struct TokenCreateArgs {
    /// The namespace of the identity the token certifies.
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// The service account of the identity the token certifies.
    #[arg(long = "service-account", visible_alias = "sa")]
    pub service_account: String,
    /// How long the token is valid ("24h", "30m", "7d"); the controller's default
    /// (24h) when omitted.
    #[arg(long, value_name = "DURATION", value_parser = mesh_controller::config::parse_duration)]
    pub ttl: Option<Duration>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "token")]
    pub output: TokenOutput,
    /// The controller's admin API.
    #[command(flatten)]
    pub controller: ControllerFlag,
}

/// Table for people, JSON for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// The raw section of the config dump.
    Json,
}

/// Which part of a sidecar's `/config_dump` to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// The workload certificate (SPIFFE ID, serial, validity, chain) and trust bundle.
    #[value(alias = "secret")]
    Secrets,
    /// CDS: the clusters.
    #[value(alias = "cluster")]
    Clusters,
    /// LDS: the listeners.
    #[value(alias = "listener")]
    Listeners,
    /// RDS: the route configurations.
    #[value(alias = "route")]
    Routes,
    /// EDS: the endpoints of each cluster.
    #[value(alias = "endpoint")]
    Endpoints,
    /// Everything.
    All,
}

impl Section {
    /// The section's key in `/config_dump`.
    pub fn key(self) -> &'static str {
        match self {
            Section::Secrets => "secrets",
            Section::Clusters => "clusters",
            Section::Listeners => "listeners",
            Section::Routes => "routes",
            Section::Endpoints => "endpoints",
            Section::All => "",
        }
    }
}

/// Flags of `meshctl proxy-config`.
#[derive(Debug, Clone, Args)]
pub struct ProxyConfigArgs {
    /// The proxy: node id (`catalog-1.default`), workload name (`catalog-1`, with
    /// `-n`), or admin address (`127.0.1.2:15000`).
    pub proxy: String,
    /// What to show.
    #[arg(value_enum)]
    pub section: Section,
    /// The namespace of a bare workload name.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// The controller's admin API (to find the proxy's admin address).
    #[command(flatten)]
    pub controller: ControllerFlag,
}

/// Flags of `meshctl proxy-status`.
#[derive(Debug, Clone, Args)]
pub struct ProxyStatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// The controller's admin API.
    #[command(flatten)]
    pub controller: ControllerFlag,
}

/// What `meshctl stat` groups its rows by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatTarget {
    /// One row per destination service.
    #[value(alias = "service", alias = "svc")]
    Services,
    /// One row per destination workload (instance).
    #[value(alias = "workload")]
    Workloads,
}

/// Flags of `meshctl stat`.
#[derive(Debug, Clone, Args)]
pub struct StatArgs {
    /// One row per service or per workload.
    #[arg(value_enum, default_value = "services")]
    pub target: StatTarget,
    /// Only this namespace (of the destination); every namespace when omitted.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Ask this Prometheus server (`http://host:9090`) instead of scraping the
    /// sidecars: numbers over `--window`.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// With `--prometheus`, the window the numbers cover ("1m", "30s", "1h").
    #[arg(long, value_name = "DURATION", default_value = "1m",
          value_parser = mesh_controller::config::parse_duration)]
    pub window: Duration,
    /// Without `--prometheus`, how long to sample the sidecars for RPS.
    #[arg(long, value_name = "DURATION", default_value = "2s",
          value_parser = mesh_controller::config::parse_duration)]
    pub sample: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// The controller's admin API (to find the sidecars).
    #[command(flatten)]
    pub controller: ControllerFlag,
}

/// Flags of `meshctl check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The controller's admin API.
    #[command(flatten)]
    pub controller: ControllerFlag,
    /// Kubeconfig of the cluster to check (CRDs, controller Deployment, webhook,
    /// meshed namespaces); `$KUBECONFIG` or `~/.kube/config` when omitted. With
    /// none of them the cluster checks are skipped.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; the current one when omitted.
    #[arg(long)]
    pub context: Option<String>,
}

/// Flags of `meshctl inject`.
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// The manifest (multi-document YAML or JSON); `-` reads stdin.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// What to inject (the controller's defaults when omitted).
    #[command(flatten)]
    pub inject: mesh_controller::inject::InjectFlags,
}

/// Flags of `meshctl install`.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Image repository of the controller and the sidecar images.
    #[arg(long, default_value = mesh_controller::inject::DEFAULT_HUB)]
    pub hub: String,
    /// Image tag of both images.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub tag: String,
}

/// `meshctl namespace ...`.
#[derive(Debug, Clone, Args)]
pub struct NamespaceArgs {
    /// Enable or disable.
    #[command(subcommand)]
    pub command: NamespaceCommand,
}

/// The namespace subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum NamespaceCommand {
    /// Label the namespace mesh.io/inject=enabled: it joins the mesh.
    Enable(NamespaceTarget),
    /// Remove the label: the namespace leaves the mesh.
    Disable(NamespaceTarget),
}

/// Which namespace, in which cluster.
#[derive(Debug, Clone, Args)]
pub struct NamespaceTarget {
    /// The namespace.
    pub namespace: String,
    /// Kubeconfig file; `$KUBECONFIG`, `~/.kube/config` or the in-cluster
    /// service account when omitted.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; the current one when omitted.
    #[arg(long)]
    pub context: Option<String>,
}

/// Flags of `meshctl demo-app`.
#[derive(Debug, Clone, Args)]
pub struct DemoAppArgs {
    /// The service this instance belongs to, reported in every answer.
    #[arg(long)]
    pub service: String,
    /// Where to listen; defaults to `$MESH_ADDRESS:$MESH_PORT` (set by `meshctl up`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Instance name reported in answers; defaults to `$MESH_WORKLOAD`.
    #[arg(long)]
    pub instance: Option<String>,
    /// A dependency to call (through `http_proxy`) on every request; repeatable.
    #[arg(long = "call", value_name = "URL")]
    pub calls: Vec<String>,
    /// Timeout of each dependency call, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Flags of `meshctl demo-load`.
#[derive(Debug, Clone, Args)]
pub struct DemoLoadArgs {
    /// The URL to GET, e.g. `http://frontend.default:8080/`.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// Requests per second.
    #[arg(long, default_value_t = 20.0)]
    pub rps: f64,
    /// Most requests in flight at once; the rate drops when all are busy.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Timeout of each request, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Seconds between summary log lines.
    #[arg(long, default_value_t = 10)]
    pub report_every: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pass_through_keeps_flags() {
        let cli = Cli::parse_from(["meshctl", "proxy", "--workload", "a", "--help"]);
        let Command::Proxy(p) = cli.command else {
            panic!("not proxy")
        };
        assert_eq!(p.args, ["--workload", "a", "--help"]);
    }

    #[test]
    fn up_defaults() {
        let cli = Cli::parse_from(["meshctl", "up", "-f", "x.yaml", "--duration", "5"]);
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.file, Some(PathBuf::from("x.yaml")));
        assert_eq!(up.duration, Some(5));
        assert_eq!(
            (up.xds_port, up.secure_port, up.admin_port),
            (15010, 15012, 15014)
        );
        assert!(!up.plaintext);
    }

    #[test]
    fn token_create_flags() {
        let cli = Cli::parse_from([
            "meshctl",
            "token",
            "create",
            "-n",
            "shop",
            "--service-account",
            "web",
            "--ttl",
            "1h30m",
            "--controller",
            "127.0.0.1:9",
        ]);
        let Command::Token(TokenArgs {
            command: TokenCommand::Create(t),
        }) = cli.command
        else {
            panic!("not token create")
        };
        assert_eq!(
            (t.namespace.as_str(), t.service_account.as_str()),
            ("shop", "web")
        );
        assert_eq!(t.ttl, Some(Duration::from_secs(5400)));
        assert_eq!(t.controller.controller, "127.0.0.1:9");
        assert_eq!(t.output, TokenOutput::Token);
        assert!(
            Cli::try_parse_from([
                "meshctl", "token", "create", "-n", "a", "--sa", "b", "--ttl", "5x"
            ])
            .is_err()
        );
    }

    #[test]
    fn kubernetes_commands() {
        let cli = Cli::parse_from(["meshctl", "inject", "-f", "-", "--proxy-image", "r/p:1"]);
        let Command::Inject(i) = cli.command else {
            panic!("not inject")
        };
        assert_eq!(i.file, PathBuf::from("-"));
        assert_eq!(i.inject.settings().init_image, "r/p:1");
        let cli = Cli::parse_from(["meshctl", "install", "--tag", "dev"]);
        let Command::Install(i) = cli.command else {
            panic!("not install")
        };
        assert_eq!((i.hub.as_str(), i.tag.as_str()), ("ghcr.io/mesh", "dev"));
        let cli = Cli::parse_from([
            "meshctl",
            "namespace",
            "enable",
            "shop",
            "--context",
            "kind",
        ]);
        let Command::Namespace(NamespaceArgs {
            command: NamespaceCommand::Enable(t),
        }) = cli.command
        else {
            panic!("not namespace enable")
        };
        assert_eq!(
            (t.namespace.as_str(), t.context.as_deref()),
            ("shop", Some("kind"))
        );
        assert!(Cli::try_parse_from(["meshctl", "namespace", "disable"]).is_err());
    }

    #[test]
    fn proxy_status_and_stat_flags() {
        let cli = Cli::parse_from([
            "meshctl",
            "proxy-status",
            "-o",
            "json",
            "--controller",
            "h:1",
        ]);
        let Command::ProxyStatus(p) = cli.command else {
            panic!("not proxy-status")
        };
        assert_eq!(
            (p.output, p.controller.controller.as_str()),
            (OutputFormat::Json, "h:1")
        );
        let cli = Cli::parse_from(["meshctl", "stat"]);
        let Command::Stat(s) = cli.command else {
            panic!("not stat")
        };
        assert_eq!(
            (s.target, s.namespace, s.prometheus),
            (StatTarget::Services, None, None)
        );
        assert_eq!(
            (s.window, s.sample),
            (Duration::from_secs(60), Duration::from_secs(2))
        );
        let cli = Cli::parse_from([
            "meshctl",
            "stat",
            "workloads",
            "-n",
            "shop",
            "--prometheus",
            "http://p:9090",
            "--window",
            "5m",
        ]);
        let Command::Stat(s) = cli.command else {
            panic!("not stat")
        };
        assert_eq!(s.target, StatTarget::Workloads);
        assert_eq!(s.namespace.as_deref(), Some("shop"));
        assert_eq!(s.prometheus.as_deref(), Some("http://p:9090"));
        assert_eq!(s.window, Duration::from_secs(300));
        assert!(Cli::try_parse_from(["meshctl", "stat", "pods"]).is_err());
    }

    #[test]
    fn proxy_config_flags() {
        let cli = Cli::parse_from([
            "meshctl",
            "proxy-config",
            "catalog-1",
            "secret",
            "-o",
            "json",
        ]);
        let Command::ProxyConfig(p) = cli.command else {
            panic!("not proxy-config")
        };
        assert_eq!(p.proxy, "catalog-1");
        assert_eq!(p.section, Section::Secrets);
        assert_eq!(p.output, OutputFormat::Json);
        assert_eq!(p.namespace, "default");
    }
}
