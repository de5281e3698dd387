//! The controller's settings, in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the controller learns what runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    /// A multi-document YAML file, watched for changes.
    File,
    /// A Kubernetes cluster: Namespaces, Services, EndpointSlices, Pods and the
    /// mesh's custom resources, watched through the API server.
    Kubernetes,
}

/// Command-line settings of `mesh-controller`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "mesh-controller", about = "The mesh control plane", version)]
pub struct ControllerArgs {
    /// Registry source.
    #[arg(long, value_enum, default_value = "file")]
    pub registry: RegistryKind,
    /// The mesh file (with `--registry file`).
    #[arg(long, required_if_eq("registry", "file"))]
    pub file: Option<PathBuf>,
    /// Kubeconfig for `--registry kubernetes`; without it `$KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account are tried.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The audience a Kubernetes service-account token must be issued for to be
    /// accepted by `Certify` (checked with a TokenReview; `--registry kubernetes`
    /// only). A dedicated audience keeps API-server tokens from being replayed here.
    #[arg(long, default_value = "mesh")]
    pub token_audience: String,
    /// HTTPS address of the sidecar-injection admission webhook; "" (the default)
    /// switches it off.
    #[arg(long, default_value = "", value_parser = parse_optional_addr)]
    pub webhook_addr: OptionalAddr,
    /// What the webhook injects (`--proxy-image`, `--init-image`,
    /// `--image-pull-policy`, `--injected-xds-addr`).
    #[command(flatten)]
    pub inject: crate::inject::InjectFlags,
    /// Plaintext xDS + identity gRPC address (loopback and tests only); "" disables it.
    #[arg(long, default_value = "127.0.0.1:15010", value_parser = parse_optional_addr)]
    pub xds_addr: OptionalAddr,
    /// Switches the plaintext xDS port off (same as `--xds-addr ""`).
    #[arg(long)]
    pub no_plaintext_xds: bool,
    /// xDS + identity gRPC over TLS (mutual once the proxy holds a certificate); "" disables it.
    #[arg(long, default_value = "127.0.0.1:15012", value_parser = parse_optional_addr)]
    pub secure_xds_addr: OptionalAddr,
    /// Switches the TLS xDS port off (same as `--secure-xds-addr ""`).
    #[arg(long)]
    pub no_secure: bool,
    /// Admin HTTP address (`/ready`, `/metrics`, `/debug/*`, `/tokens`, `/ca/*`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub admin_addr: SocketAddr,
    /// Quiet time after a registry change before pushing, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// Cluster domain used in service FQDNs.
    #[arg(long, default_value = mesh_model::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// SPIFFE trust domain of every identity the CA issues.
    #[arg(long, default_value = mesh_model::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Directory holding the CA and the token signing key (created if missing);
    /// without it both live in memory and are lost on restart.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// A user CA certificate (PEM: signing CA first, then its issuers up to the
    /// root) to sign with instead of a self-signed root; needs `--ca-key`.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The private key (PEM) of `--ca-cert`.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// With `--registry kubernetes` and neither `--ca-dir` nor `--ca-cert`: the
    /// Secret (`namespace/name`, or `name` in `$POD_NAMESPACE`, else
    /// `mesh-system`) that keeps the CA, so every replica signs with the same root
    /// and a restart keeps it.
    #[arg(long, default_value = "mesh-ca")]
    pub ca_secret: String,
    /// The `coordination.k8s.io` Lease (`namespace/name` or `name`) electing the
    /// one replica that creates and rotates the root in `--ca-secret`.
    #[arg(long, default_value = "mesh-controller-leader")]
    pub leader_lease: String,
    /// Lifetime of workload certificates ("24h", "5s", "1h30m").
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub workload_cert_ttl: Duration,
    /// Lifetime of a self-signed root the controller creates.
    #[arg(long, default_value = "87600h", value_parser = parse_duration)]
    pub root_cert_ttl: Duration,
    /// During a root rotation, how long to wait for every proxy to ACK the new
    /// trust bundle before signing with the new root anyway.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub rotation_grace: Duration,
}

impl ControllerArgs {
    /// The plaintext xDS address, unless switched off.
    pub fn plaintext_addr(&self) -> Option<SocketAddr> {
        self.xds_addr.0.filter(|_| !self.no_plaintext_xds)
    }

    /// The TLS xDS address, unless switched off.
    pub fn secure_addr(&self) -> Option<SocketAddr> {
        self.secure_xds_addr.0.filter(|_| !self.no_secure)
    }
}

/// A listen address that an empty flag value switches off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(OptionalAddr(None));
    }
    s.parse()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:15010 (or \"\" for off): {e}"))
}

/// Parses durations like `5s`, `24h`, `1h30m`, `500ms`, `2d`; a bare number is
/// seconds. Units: ms, s, m, h, d.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. 30s, 5m, 24h".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?}: expected a number at {rest:?}"));
        }
        let n: u64 = rest[..digits].parse().map_err(|e| format!("{s:?}: {e}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => return Err(format!("{s:?}: {n} needs a unit (ms, s, m, h, d)")),
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (use ms, s, m, h, d)"
                ));
            }
        };
        total = total.saturating_add(part);
    }
    if total.is_zero() {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        for bad in ["", "h", "5x", "5 s", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listeners_can_be_switched_off() {
        let base = ["mesh-controller", "--file", "m.yaml"];
        let a = ControllerArgs::parse_from(base);
        assert_eq!(a.plaintext_addr(), Some("127.0.0.1:15010".parse().unwrap()));
        assert_eq!(a.secure_addr(), Some("127.0.0.1:15012".parse().unwrap()));
        assert_eq!(a.workload_cert_ttl, Duration::from_secs(86400));
        let a = ControllerArgs::parse_from(base.iter().chain(&["--xds-addr", "", "--no-secure"]));
        assert_eq!((a.plaintext_addr(), a.secure_addr()), (None, None));
        let a = ControllerArgs::parse_from(base.iter().chain(&[
            "--no-plaintext-xds",
            "--secure-xds-addr",
            "",
        ]));
        assert_eq!((a.plaintext_addr(), a.secure_addr()), (None, None));
        assert!(ControllerArgs::try_parse_from(base.iter().chain(&["--ca-cert", "x"])).is_err());
    }

    #[test]
    fn kubernetes_registry_needs_no_file() {
        let a = ControllerArgs::parse_from(["mesh-controller", "--registry", "kubernetes"]);
        assert_eq!(a.registry, RegistryKind::Kubernetes);
        assert_eq!((a.kubeconfig, a.token_audience.as_str()), (None, "mesh"));
        let a = ControllerArgs::parse_from([
            "mesh-controller",
            "--registry",
            "kubernetes",
            "--kubeconfig",
            "/tmp/kc",
            "--token-audience",
            "mesh-test",
        ]);
        assert_eq!(a.kubeconfig, Some(PathBuf::from("/tmp/kc")));
        assert_eq!(a.token_audience, "mesh-test");
    }
}
