//! What `meshctl up` will run, decided before anything starts: pure and testable.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use mesh_model::{Model, ModelOptions, MtlsMode, Object};

/// A program and its arguments and environment changes (on top of meshctl's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments (without argv\[0\]).
    pub args: Vec<String>,
    /// Variables to set.
    pub env: BTreeMap<String, String>,
    /// Inherited variables to remove.
    pub env_remove: Vec<String>,
}

/// How to start an embedded binary: meshctl itself plus a subcommand word, or a
/// separately built `mesh-controller` / `mesh-proxy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the binary's own flags (e.g. `["proxy"]`).
    pub prefix: Vec<String>,
}

impl Launcher {
    /// `override_bin` as is, else `self_exe <subcommand>`.
    pub fn new(self_exe: &Path, subcommand: &str, override_bin: Option<&Path>) -> Launcher {
        match override_bin {
            Some(bin) => Launcher {
                program: bin.to_path_buf(),
                prefix: Vec::new(),
            },
            None => Launcher {
                program: self_exe.to_path_buf(),
                prefix: vec![subcommand.to_string()],
            },
        }
    }

    fn command(&self, args: Vec<String>) -> CommandSpec {
        CommandSpec {
            program: self.program.clone(),
            args: self.prefix.iter().cloned().chain(args).collect(),
            env: BTreeMap::new(),
            env_remove: Vec::new(),
        }
    }
}

/// One workload instance to run, with everything decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWorkload {
    /// Instance name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its (possibly assigned) address.
    pub address: IpAddr,
    /// The first declared port, the one the app is told to listen on.
    pub port: Option<u16>,
    /// Whether it gets a sidecar: meshed namespace and not annotated out.
    pub injected: bool,
    /// Its service account: the identity its sidecar's token and certificate carry.
    pub service_account: String,
    /// Whether its inbound side refuses plaintext (annotation, else namespace's,
    /// else STRICT).
    pub mtls_mode: MtlsMode,
    /// The app's argv as written (may be empty: sidecar only).
    pub command: Vec<String>,
    /// The app's extra environment as written.
    pub env: BTreeMap<String, String>,
}

impl PlannedWorkload {
    /// `namespace/name`, how the runner names the instance in its output.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The workloads of `objects` (addresses already assigned), in file order.
pub fn workloads(objects: &[Object]) -> Vec<PlannedWorkload> {
    let model = Model::new(objects.iter().cloned(), ModelOptions::default());
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Workload(w) => Some(w),
            _ => None,
        })
        .map(|w| PlannedWorkload {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            address: w.address.expect("addresses are assigned before planning"),
            port: w.ports.first().map(|p| p.port),
            injected: model.is_meshed(&w.namespace) && w.is_injected(),
            service_account: w.service_account.clone(),
            mtls_mode: model.mtls_mode(w),
            command: w.command.clone(),
            env: w.env.clone(),
        })
        .collect()
}

/// How the mesh `up` runs is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Identities on: the controller runs its CA from `ca_dir` and serves xDS and
    /// `Certify` over TLS at `secure`; sidecars certify with join tokens.
    Mtls {
        /// The controller's TLS xDS address.
        secure: SocketAddr,
        /// Where the CA and the token signing key live for this run.
        ca_dir: PathBuf,
    },
    /// No identities (`--plaintext`): the TLS port is off, sidecars talk plaintext.
    Plaintext,
}

/// The controller, watching the resolved mesh file.
pub fn controller(
    launcher: &Launcher,
    file: &Path,
    xds: SocketAddr,
    admin: SocketAddr,
    security: &Security,
) -> CommandSpec {
    let mut args: Vec<String> = vec![
        "--registry".into(),
        "file".into(),
        "--file".into(),
        file.display().to_string(),
        "--xds-addr".into(),
        xds.to_string(),
        "--admin-addr".into(),
        admin.to_string(),
    ];
    match security {
        // With identities on, every sidecar uses the TLS port: the plaintext port,
        // which binds nothing to a certificate, is switched off.
        Security::Mtls { secure, ca_dir } => args.extend([
            "--secure-xds-addr".into(),
            secure.to_string(),
            "--ca-dir".into(),
            ca_dir.display().to_string(),
            "--no-plaintext-xds".into(),
        ]),
        Security::Plaintext => args.push("--no-secure".into()),
    }
    launcher.command(args)
}

/// What a sidecar needs to obtain its certificate: files, never argv, so the token
/// does not show in `ps`. The sidecar re-reads the token file before every
/// certificate request, so a restarted sidecar certifies again from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarIdentity {
    /// The controller's TLS address.
    pub secure: SocketAddr,
    /// The join token (mode 0600).
    pub token_file: PathBuf,
    /// The controller's trust bundle (PEM).
    pub trust_anchors: PathBuf,
}

/// Where `up` keeps a workload's join token: `<run dir>/<ns>.<name>.token`.
pub fn token_file(run_dir: &Path, w: &PlannedWorkload) -> PathBuf {
    run_dir.join(format!("{}.{}.token", w.namespace, w.name))
}

/// A workload's sidecar, bound to the workload's own address: over TLS with an
/// identity, or plaintext to `xds` without one.
pub fn sidecar(
    launcher: &Launcher,
    xds: SocketAddr,
    w: &PlannedWorkload,
    identity: Option<&SidecarIdentity>,
) -> CommandSpec {
    let mut args: Vec<String> = match identity {
        Some(id) => vec![
            "--xds-addr".into(),
            format!("https://{}", id.secure),
            "--trust-anchors".into(),
            id.trust_anchors.display().to_string(),
            "--token-file".into(),
            id.token_file.display().to_string(),
        ],
        None => vec!["--xds-addr".into(), format!("http://{xds}")],
    };
    args.extend([
        "--workload".into(),
        w.name.clone(),
        "--namespace".into(),
        w.namespace.clone(),
        "--ip".into(),
        w.address.to_string(),
    ]);
    let mut spec = launcher.command(args);
    // A token in meshctl's own environment must not override the file.
    spec.env_remove
        .extend(["MESH_TOKEN".to_string(), "MESH_TOKEN_FILE".to_string()]);
    spec
}

/// The startup line about transport security: every meshed workload's mode, with
/// the exceptions named when they differ.
pub fn mtls_summary(workloads: &[PlannedWorkload], security: &Security) -> String {
    let meshed: Vec<&PlannedWorkload> = workloads.iter().filter(|w| w.injected).collect();
    if *security == Security::Plaintext {
        return "mTLS off (--plaintext): sidecars have no identities and talk plaintext".into();
    }
    let permissive: Vec<String> = meshed
        .iter()
        .filter(|w| w.mtls_mode == MtlsMode::Permissive)
        .map(|w| w.key())
        .collect();
    let mode = if permissive.is_empty() {
        "mTLS STRICT: plaintext between sidecars is refused".to_string()
    } else if permissive.len() == meshed.len() {
        "mTLS PERMISSIVE: sidecars accept mTLS and plaintext".to_string()
    } else {
        format!(
            "mTLS STRICT (PERMISSIVE for {}): plaintext between sidecars is refused",
            permissive.join(", ")
        )
    };
    format!(
        "{mode}; every sidecar gets a SPIFFE certificate for its service account from the controller's CA"
    )
}

/// The app's argv: `meshctl` as argv\[0\] means this very binary, so demos work without
/// `meshctl` on `PATH`. `None` when the workload has no command.
pub fn resolve_argv(command: &[String], self_exe: &Path) -> Option<(PathBuf, Vec<String>)> {
    let (first, rest) = command.split_first()?;
    let program = if first == "meshctl" {
        self_exe.to_path_buf()
    } else {
        PathBuf::from(first)
    };
    Some((program, rest.to_vec()))
}

/// The app's process. Meshed apps find their sidecar through `http_proxy` (with
/// `NO_PROXY` removed so that nothing bypasses it); all apps learn who and where they
/// are from `MESH_*`. `spec.env` is applied last: what the file says explicitly wins.
pub fn app(w: &PlannedWorkload, self_exe: &Path) -> Option<CommandSpec> {
    let (program, args) = resolve_argv(&w.command, self_exe)?;
    let mut env = BTreeMap::new();
    let mut env_remove = Vec::new();
    if w.injected {
        let proxy = format!("http://{}:15001", w.address);
        env.insert("http_proxy".to_string(), proxy.clone());
        env.insert("HTTP_PROXY".to_string(), proxy);
        env_remove.extend(["NO_PROXY".to_string(), "no_proxy".to_string()]);
    }
    env.insert("MESH_WORKLOAD".into(), w.name.clone());
    env.insert("MESH_NAMESPACE".into(), w.namespace.clone());
    env.insert("MESH_ADDRESS".into(), w.address.to_string());
    match w.port {
        Some(port) => {
            env.insert("MESH_PORT".into(), port.to_string());
        }
        None => env_remove.push("MESH_PORT".into()),
    }
    for (k, v) in &w.env {
        env.insert(k.clone(), v.clone());
    }
    env_remove.retain(|k| !env.contains_key(k));
    Some(CommandSpec {
        program,
        args,
        env,
        env_remove,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {mesh.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: a-1}
spec:
  address: 127.0.1.1
  ports: [{name: http, port: 8080}, {port: 9090}]
  serviceAccount: a
  command: [meshctl, demo-app, --service, a]
  env: {EXTRA: "1", NO_PROXY: keep}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: b-1, annotations: {mesh.io/inject: disabled}}
spec: {address: 127.0.1.2, serviceAccount: b, command: [/bin/sleep, "100"]}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: c-1, namespace: outside}
spec: {address: 127.0.1.3, serviceAccount: c}
"#;

    fn planned() -> Vec<PlannedWorkload> {
        workloads(&mesh_model::parse_documents(FILE, "t").unwrap())
    }

    #[test]
    fn injection_follows_namespace_label_and_annotation() {
        let w = planned();
        let injected: Vec<_> = w.iter().map(|w| (w.name.as_str(), w.injected)).collect();
        assert_eq!(injected, [("a-1", true), ("b-1", false), ("c-1", false)]);
        assert_eq!(w[0].port, Some(8080));
        assert_eq!(w[1].port, None);
    }

    #[test]
    fn argv_resolution() {
        let exe = Path::new("/x/meshctl");
        let cmd = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            resolve_argv(&cmd(&["meshctl", "demo-app"]), exe),
            Some((exe.to_path_buf(), cmd(&["demo-app"])))
        );
        assert_eq!(
            resolve_argv(&cmd(&["/bin/echo", "meshctl"]), exe),
            Some((PathBuf::from("/bin/echo"), cmd(&["meshctl"])))
        );
        assert_eq!(resolve_argv(&[], exe), None);
    }

    #[test]
    fn app_environment() {
        let w = planned();
        let exe = Path::new("/x/meshctl");
        let a = app(&w[0], exe).unwrap();
        assert_eq!(a.program, exe);
        assert_eq!(a.args, ["demo-app", "--service", "a"]);
        let get = |k: &str| a.env.get(k).map(String::as_str);
        assert_eq!(get("http_proxy"), Some("http://127.0.1.1:15001"));
        assert_eq!(get("HTTP_PROXY"), Some("http://127.0.1.1:15001"));
        assert_eq!(get("MESH_WORKLOAD"), Some("a-1"));
        assert_eq!(get("MESH_NAMESPACE"), Some("default"));
        assert_eq!(get("MESH_ADDRESS"), Some("127.0.1.1"));
        assert_eq!(get("MESH_PORT"), Some("8080"));
        assert_eq!(get("EXTRA"), Some("1"));
        // The file set NO_PROXY explicitly, so only no_proxy is removed.
        assert_eq!(get("NO_PROXY"), Some("keep"));
        assert_eq!(a.env_remove, ["no_proxy"]);

        let b = app(&w[1], exe).unwrap();
        assert_eq!(b.program, PathBuf::from("/bin/sleep"));
        assert!(!b.env.contains_key("http_proxy"));
        assert!(b.env_remove.contains(&"MESH_PORT".to_string()));
        assert_eq!(app(&w[2], exe), None);
    }

    #[test]
    fn controller_and_sidecar_commands() {
        let exe = Path::new("/x/meshctl");
        let xds: SocketAddr = "127.0.0.1:15010".parse().unwrap();
        let admin: SocketAddr = "127.0.0.1:15014".parse().unwrap();
        let secure: SocketAddr = "127.0.0.1:15012".parse().unwrap();
        let own = Launcher::new(exe, "controller", None);
        let mtls = Security::Mtls {
            secure,
            ca_dir: "/tmp/r/ca".into(),
        };
        let c = controller(&own, Path::new("/tmp/r/mesh.yaml"), xds, admin, &mtls);
        assert_eq!(c.program, exe);
        assert_eq!(
            c.args.join(" "),
            "controller --registry file --file /tmp/r/mesh.yaml --xds-addr 127.0.0.1:15010 --admin-addr 127.0.0.1:15014 --secure-xds-addr 127.0.0.1:15012 --ca-dir /tmp/r/ca --no-plaintext-xds"
        );
        let c = controller(&own, Path::new("m.yaml"), xds, admin, &Security::Plaintext);
        assert!(c.args.join(" ").ends_with(" --no-secure"), "{:?}", c.args);

        let real = Launcher::new(exe, "proxy", Some(Path::new("/bin/mesh-proxy")));
        let w = &planned()[0];
        let s = sidecar(&real, xds, w, None);
        assert_eq!(s.program, PathBuf::from("/bin/mesh-proxy"));
        assert_eq!(
            s.args.join(" "),
            "--xds-addr http://127.0.0.1:15010 --workload a-1 --namespace default --ip 127.0.1.1"
        );
        let id = SidecarIdentity {
            secure,
            token_file: token_file(Path::new("/tmp/r"), w),
            trust_anchors: "/tmp/r/trust-anchors.pem".into(),
        };
        let s = sidecar(&real, xds, w, Some(&id));
        assert_eq!(
            s.args.join(" "),
            "--xds-addr https://127.0.0.1:15012 --trust-anchors /tmp/r/trust-anchors.pem --token-file /tmp/r/default.a-1.token --workload a-1 --namespace default --ip 127.0.1.1"
        );
        assert!(s.env_remove.contains(&"MESH_TOKEN".to_string()));
        assert!(
            !s.args.iter().any(|a| a == "--token"),
            "never the token itself"
        );
    }

    #[test]
    fn identities_and_modes_are_planned() {
        let w = planned();
        assert_eq!(w[0].service_account, "a");
        assert_eq!(w[0].mtls_mode, MtlsMode::Strict);
        let secure: SocketAddr = "127.0.0.1:15012".parse().unwrap();
        let mtls = Security::Mtls {
            secure,
            ca_dir: "/ca".into(),
        };
        assert!(mtls_summary(&w, &mtls).starts_with("mTLS STRICT: "));
        let mut mixed = w.clone();
        mixed.push(PlannedWorkload {
            name: "z-1".into(),
            mtls_mode: MtlsMode::Permissive,
            ..w[0].clone()
        });
        assert!(
            mtls_summary(&mixed, &mtls).starts_with("mTLS STRICT (PERMISSIVE for default/z-1): "),
            "{}",
            mtls_summary(&mixed, &mtls)
        );
        assert!(mtls_summary(&w, &Security::Plaintext).starts_with("mTLS off"));
    }
}
