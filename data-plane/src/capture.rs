//! Transparent traffic capture: the iptables `nat` rules `mesh-init` installs in a
//! pod's network namespace so the app's TCP traffic flows through the sidecar
//! without the app knowing (the way Istio's `istio-init` does it).
//!
//! Everything lives in four dedicated chains so the rules are easy to find and
//! to remove, and never interleave with anyone else's:
//!
//! - `PREROUTING -p tcp -j MESH_INBOUND`: traffic arriving at the pod. Excluded
//!   ports and the proxy's own ports `RETURN`; the rest goes to
//!   `MESH_IN_REDIRECT`, which redirects it to the inbound listener (15006).
//! - `OUTPUT -p tcp -j MESH_OUTPUT`: traffic the pod sends. The proxy's own
//!   traffic (its UID, optionally its GID) `RETURN`s, or it would loop into
//!   itself; so does loopback (`-o lo`, `127.0.0.1`) and the excluded CIDRs and
//!   ports; the rest goes to `MESH_REDIRECT`, which redirects it to the outbound
//!   listener (15001).
//!
//! The proxy's own traffic is returned even when it goes to the pod's own IP:
//! sidecars dial each other's inbound port (15006) directly, so a call from a
//! workload to itself reaches its inbound listener without a hairpin rule.
//!
//! The rules are built as an `iptables-restore` document by a pure function
//! ([`Capture::restore_document`]) so they can be unit-tested exactly and printed
//! by `--dry-run`, and are applied in one atomic `iptables-restore --noflush`
//! transaction. Removal ([`cleanup_document`]) is derived from what
//! `iptables-save` shows, so it also removes rules left by an earlier or
//! differently-flagged run, and is likewise applied in one transaction.
//!
//! Only IPv4 is captured (`iptables`, not `ip6tables`).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Chain for traffic arriving at the pod.
pub const CHAIN_INBOUND: &str = "MESH_INBOUND";
/// Chain that redirects captured inbound traffic to the inbound listener.
pub const CHAIN_IN_REDIRECT: &str = "MESH_IN_REDIRECT";
/// Chain for traffic the pod sends.
pub const CHAIN_OUTPUT: &str = "MESH_OUTPUT";
/// Chain that redirects captured outbound traffic to the outbound listener.
pub const CHAIN_REDIRECT: &str = "MESH_REDIRECT";
/// All chains `mesh-init` owns, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    CHAIN_INBOUND,
    CHAIN_IN_REDIRECT,
    CHAIN_OUTPUT,
    CHAIN_REDIRECT,
];

/// The sidecar's admin port: kubelet probes and `meshctl` must reach it
/// directly, so it is never captured, whatever the flags say.
pub const ADMIN_PORT: u16 = 15000;

/// Command-line flags of `mesh-init`. Lists are comma-separated strings (not
/// repeated flags) because that is how pod specs and Istio users write them.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "mesh-init",
    about = "Install the iptables rules that send a pod's TCP traffic through the mesh sidecar",
    version
)]
pub struct InitArgs {
    /// Port of the sidecar's outbound listener; captured outbound TCP goes here.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Port of the sidecar's inbound listener; captured inbound TCP goes here.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// UID the sidecar runs as; its traffic is never captured (it would loop).
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// GID the sidecar runs as; when given, that group's traffic is not captured either.
    #[arg(long)]
    pub proxy_gid: Option<u32>,
    /// Inbound ports to capture: `*` for all TCP ports, a comma list, or empty
    /// for no inbound capture.
    #[arg(long, default_value = "*")]
    pub include_inbound_ports: String,
    /// Inbound ports that bypass the sidecar (comma list). The admin port
    /// (15000) and the sidecar's own ports are always excluded.
    #[arg(long, default_value = "")]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports that bypass the sidecar (comma list).
    #[arg(long, default_value = "")]
    pub exclude_outbound_ports: String,
    /// Outbound destination IPv4 CIDRs that bypass the sidecar (comma list).
    #[arg(long, default_value = "")]
    pub exclude_outbound_cidrs: String,
    /// Print the `iptables-restore` input instead of applying it (with
    /// `--cleanup`: print what would be removed).
    #[arg(long)]
    pub dry_run: bool,
    /// Remove everything mesh-init installed; succeeds when nothing is installed.
    #[arg(long)]
    pub cleanup: bool,
}

/// Which inbound ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every TCP port except the excluded ones.
    All,
    /// Only these ports (excluded ones still win).
    Only(BTreeSet<u16>),
}

/// Validated capture settings: what [`InitArgs`] describe, with the
/// always-excluded ports added, lists sorted and deduplicated so the generated
/// rules are deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Outbound listener port.
    pub outbound_port: u16,
    /// Inbound listener port.
    pub inbound_port: u16,
    /// UID whose traffic is never captured.
    pub proxy_uid: u32,
    /// GID whose traffic is never captured.
    pub proxy_gid: Option<u32>,
    /// Inbound ports captured.
    pub include_inbound: InboundPorts,
    /// Inbound ports never captured (includes the admin and proxy ports).
    pub exclude_inbound: BTreeSet<u16>,
    /// Outbound destination ports never captured.
    pub exclude_outbound_ports: BTreeSet<u16>,
    /// Outbound destination networks never captured (normalized to `a.b.c.d/n`).
    pub exclude_outbound_cidrs: Vec<(Ipv4Addr, u8)>,
}

impl TryFrom<&InitArgs> for Capture {
    type Error = anyhow::Error;

    fn try_from(a: &InitArgs) -> anyhow::Result<Self> {
        let outbound_port = check_port("--outbound-port", a.outbound_port)?;
        let inbound_port = check_port("--inbound-port", a.inbound_port)?;
        if outbound_port == inbound_port {
            bail!(
                "--outbound-port and --inbound-port are both {outbound_port}: the sidecar \
                 tells directions apart by port, so they must differ"
            );
        }
        let include_inbound = match a.include_inbound_ports.trim() {
            "*" => InboundPorts::All,
            list => InboundPorts::Only(parse_ports("--include-inbound-ports", list)?),
        };
        let mut exclude_inbound = parse_ports("--exclude-inbound-ports", &a.exclude_inbound_ports)?;
        // Traffic addressed to the sidecar itself (peers dial 15006 directly,
        // probes hit the admin port) must reach it unchanged.
        exclude_inbound.extend([ADMIN_PORT, outbound_port, inbound_port]);
        let exclude_outbound_ports =
            parse_ports("--exclude-outbound-ports", &a.exclude_outbound_ports)?;
        let mut exclude_outbound_cidrs = Vec::new();
        for item in split_list(&a.exclude_outbound_cidrs) {
            let cidr = parse_cidr(item).context("--exclude-outbound-cidrs")?;
            if !exclude_outbound_cidrs.contains(&cidr) {
                exclude_outbound_cidrs.push(cidr);
            }
        }
        Ok(Capture {
            outbound_port,
            inbound_port,
            proxy_uid: a.proxy_uid,
            proxy_gid: a.proxy_gid,
            include_inbound,
            exclude_inbound,
            exclude_outbound_ports,
            exclude_outbound_cidrs,
        })
    }
}

impl Capture {
    /// The `iptables-restore --noflush` input that installs the capture rules.
    ///
    /// Chains are declared first (an existing chain of the same name is flushed
    /// by the restore), then the redirect targets, then the inbound and outbound
    /// paths, each hooked into the built-in chain right before its own rules.
    pub fn restore_document(&self) -> String {
        let mut d = String::from("*nat\n");
        for chain in CHAINS {
            d += &format!(":{chain} - [0:0]\n");
        }
        d += &format!(
            "-A {CHAIN_IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}\n",
            self.inbound_port
        );
        d += &format!(
            "-A {CHAIN_REDIRECT} -p tcp -j REDIRECT --to-ports {}\n",
            self.outbound_port
        );

        // Inbound. With nothing to capture, PREROUTING is left untouched.
        let capture_inbound = match &self.include_inbound {
            InboundPorts::All => true,
            InboundPorts::Only(ports) => !ports.is_subset(&self.exclude_inbound),
        };
        if capture_inbound {
            d += &format!("-A PREROUTING -p tcp -j {CHAIN_INBOUND}\n");
            match &self.include_inbound {
                InboundPorts::All => {
                    for port in &self.exclude_inbound {
                        d +=
                            &format!("-A {CHAIN_INBOUND} -p tcp -m tcp --dport {port} -j RETURN\n");
                    }
                    d += &format!("-A {CHAIN_INBOUND} -p tcp -j {CHAIN_IN_REDIRECT}\n");
                }
                InboundPorts::Only(ports) => {
                    for port in ports.difference(&self.exclude_inbound) {
                        d += &format!(
                            "-A {CHAIN_INBOUND} -p tcp -m tcp --dport {port} -j {CHAIN_IN_REDIRECT}\n"
                        );
                    }
                }
            }
        }

        // Outbound: first everything that bypasses the sidecar, then redirect.
        d += &format!("-A OUTPUT -p tcp -j {CHAIN_OUTPUT}\n");
        d += &format!(
            "-A {CHAIN_OUTPUT} -m owner --uid-owner {} -j RETURN\n",
            self.proxy_uid
        );
        if let Some(gid) = self.proxy_gid {
            d += &format!("-A {CHAIN_OUTPUT} -m owner --gid-owner {gid} -j RETURN\n");
        }
        d += &format!("-A {CHAIN_OUTPUT} -o lo -j RETURN\n");
        d += &format!("-A {CHAIN_OUTPUT} -d 127.0.0.1/32 -j RETURN\n");
        for (net, len) in &self.exclude_outbound_cidrs {
            d += &format!("-A {CHAIN_OUTPUT} -d {net}/{len} -j RETURN\n");
        }
        for port in &self.exclude_outbound_ports {
            d += &format!("-A {CHAIN_OUTPUT} -p tcp -m tcp --dport {port} -j RETURN\n");
        }
        d += &format!("-A {CHAIN_OUTPUT} -j {CHAIN_REDIRECT}\n");
        d += "COMMIT\n";
        d
    }
}

/// The `iptables-restore --noflush` input that removes everything mesh-init
/// installed, given the current `iptables-save -t nat` output; `None` when
/// there is nothing to remove.
///
/// Every rule outside our chains that jumps into one of them is deleted (one
/// `-D` per copy, so duplicates from repeated runs all go), then our chains are
/// flushed and only then deleted: they reference each other, and a chain that
/// is still referenced cannot be deleted.
pub fn cleanup_document(saved: &str) -> Option<String> {
    let mut jumps = Vec::new();
    let mut present = Vec::new();
    let mut in_nat = false;
    for line in saved.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
        } else if !in_nat {
            continue;
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if CHAINS.contains(&name) {
                present.push(name);
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let tokens: Vec<&str> = rule.split_whitespace().collect();
            let chain = tokens.first().copied().unwrap_or_default();
            // The rule's target: the last `-j`/`-g` (a comment could mention one).
            let target = tokens
                .windows(2)
                .filter(|w| w[0] == "-j" || w[0] == "-g")
                .map(|w| w[1])
                .next_back();
            if !CHAINS.contains(&chain) && target.is_some_and(|t| CHAINS.contains(&t)) {
                jumps.push(rule);
            }
        }
    }
    if jumps.is_empty() && present.is_empty() {
        return None;
    }
    let mut d = String::from("*nat\n");
    for rule in jumps {
        d += &format!("-D {rule}\n");
    }
    for chain in &present {
        d += &format!("-F {chain}\n");
    }
    for chain in &present {
        d += &format!("-X {chain}\n");
    }
    d += "COMMIT\n";
    Some(d)
}

/// Runs `mesh-init` with its parsed flags, writing what it did to stdout.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    if args.cleanup {
        let saved = command_output("iptables-save", &["-t", "nat"], None)?;
        match (cleanup_document(&saved), args.dry_run) {
            (None, _) => println!("mesh-init: no capture rules installed, nothing to remove"),
            (Some(doc), true) => print!("{doc}"),
            (Some(doc), false) => {
                restore(&doc)?;
                println!("mesh-init: capture rules removed");
            }
        }
        return Ok(());
    }
    let capture = Capture::try_from(args)?;
    let doc = capture.restore_document();
    if args.dry_run {
        print!("{doc}");
        return Ok(());
    }
    // Re-running (a restarted init container, changed flags) replaces the
    // rules instead of stacking a second set of jumps onto the first.
    let saved = command_output("iptables-save", &["-t", "nat"], None)?;
    if let Some(old) = cleanup_document(&saved) {
        restore(&old)?;
    }
    restore(&doc)?;
    println!(
        "mesh-init: capturing outbound TCP to {} and inbound TCP to {}",
        capture.outbound_port, capture.inbound_port
    );
    Ok(())
}

/// Applies a document with `iptables-restore --noflush` (`--wait`: take the
/// xtables lock rather than fail when another process holds it).
fn restore(doc: &str) -> anyhow::Result<()> {
    command_output("iptables-restore", &["--noflush", "--wait"], Some(doc)).map(drop)
}

/// Runs a command, feeding it `stdin`, and returns its stdout; the error names
/// the command and carries its stderr.
fn command_output(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let shown = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "`{program}` not found on PATH: mesh-init needs the iptables tools \
                 (e.g. apt-get install iptables)"
            ),
            _ => anyhow::Error::new(e).context(format!("could not start `{shown}`")),
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing the rules to `{shown}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8 output"))
}

/// Rejects port 0, which clap's `u16` lets through but iptables cannot match.
fn check_port(flag: &str, port: u16) -> anyhow::Result<u16> {
    if port == 0 {
        bail!("{flag}: 0 is not a valid port (1-65535)");
    }
    Ok(port)
}

/// The non-empty items of a comma list, trimmed.
fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Parses a comma list of ports (1-65535); an empty list is an empty set.
fn parse_ports(flag: &str, list: &str) -> anyhow::Result<BTreeSet<u16>> {
    split_list(list)
        .map(|item| match item.parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => bail!("{flag}: `{item}` is not a port (1-65535)"),
        })
        .collect()
}

/// Parses an IPv4 CIDR (`10.0.0.0/8`, or a bare address meaning `/32`) into
/// its network address and prefix length, clearing host bits so the rule reads
/// the way `iptables-save` prints it.
fn parse_cidr(item: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (addr, len) = match item.split_once('/') {
        Some((addr, len)) => {
            let len = len
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= 32)
                .with_context(|| format!("`{item}`: prefix length must be 0-32"))?;
            (addr, len)
        }
        None => (item, 32),
    };
    let ip = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip,
        Ok(IpAddr::V6(_)) => {
            bail!("`{item}`: IPv6 is not captured (only IPv4 rules are installed)")
        }
        Err(_) => bail!("`{item}` is not an IPv4 CIDR (like 10.0.0.0/8)"),
    };
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn capture(args: &[&str]) -> anyhow::Result<Capture> {
        let args =
            InitArgs::try_parse_from(std::iter::once("mesh-init").chain(args.iter().copied()))?;
        Capture::try_from(&args)
    }

    /// The flags the injected init container passes (control-plane inject.rs).
    const INJECTED: &[&str] = &[
        "--outbound-port",
        "15001",
        "--inbound-port",
        "15006",
        "--proxy-uid",
        "1337",
        "--exclude-inbound-ports",
        "15000",
    ];

    #[test]
    fn injected_flags_give_the_pod_rules() {
        let doc = capture(INJECTED).unwrap().restore_document();
        assert_eq!(
            doc,
            "*nat
:MESH_INBOUND - [0:0]
:MESH_IN_REDIRECT - [0:0]
:MESH_OUTPUT - [0:0]
:MESH_REDIRECT - [0:0]
-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j MESH_INBOUND
-A MESH_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A MESH_INBOUND -p tcp -m tcp --dport 15001 -j RETURN
-A MESH_INBOUND -p tcp -m tcp --dport 15006 -j RETURN
-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT
-A OUTPUT -p tcp -j MESH_OUTPUT
-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A MESH_OUTPUT -o lo -j RETURN
-A MESH_OUTPUT -d 127.0.0.1/32 -j RETURN
-A MESH_OUTPUT -j MESH_REDIRECT
COMMIT
"
        );
        // The defaults are the injected flags.
        assert_eq!(capture(&[]).unwrap().restore_document(), doc);
    }

    #[test]
    fn exclusions_gid_and_custom_ports() {
        let doc = capture(&[
            "--outbound-port",
            "16001",
            "--inbound-port",
            "16006",
            "--proxy-uid",
            "2000",
            "--proxy-gid",
            "3000",
            "--exclude-inbound-ports",
            "22, 8080,22",
            "--exclude-outbound-ports",
            "5432,3306",
            "--exclude-outbound-cidrs",
            "10.1.2.3/8,192.168.0.7,10.0.0.0/8",
        ])
        .unwrap()
        .restore_document();
        assert_eq!(
            doc,
            "*nat
:MESH_INBOUND - [0:0]
:MESH_IN_REDIRECT - [0:0]
:MESH_OUTPUT - [0:0]
:MESH_REDIRECT - [0:0]
-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006
-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 16001
-A PREROUTING -p tcp -j MESH_INBOUND
-A MESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A MESH_INBOUND -p tcp -m tcp --dport 8080 -j RETURN
-A MESH_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A MESH_INBOUND -p tcp -m tcp --dport 16001 -j RETURN
-A MESH_INBOUND -p tcp -m tcp --dport 16006 -j RETURN
-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT
-A OUTPUT -p tcp -j MESH_OUTPUT
-A MESH_OUTPUT -m owner --uid-owner 2000 -j RETURN
-A MESH_OUTPUT -m owner --gid-owner 3000 -j RETURN
-A MESH_OUTPUT -o lo -j RETURN
-A MESH_OUTPUT -d 127.0.0.1/32 -j RETURN
-A MESH_OUTPUT -d 10.0.0.0/8 -j RETURN
-A MESH_OUTPUT -d 192.168.0.7/32 -j RETURN
-A MESH_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN
-A MESH_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN
-A MESH_OUTPUT -j MESH_REDIRECT
COMMIT
"
        );
    }

    #[test]
    fn include_list_captures_only_those_ports() {
        let doc = capture(&["--include-inbound-ports", "8080,9090,15000"])
            .unwrap()
            .restore_document();
        let inbound: Vec<_> = doc
            .lines()
            .filter(|l| l.starts_with("-A MESH_INBOUND") || l.starts_with("-A PREROUTING"))
            .collect();
        // The admin port stays excluded even when listed.
        assert_eq!(
            inbound,
            [
                "-A PREROUTING -p tcp -j MESH_INBOUND",
                "-A MESH_INBOUND -p tcp -m tcp --dport 8080 -j MESH_IN_REDIRECT",
                "-A MESH_INBOUND -p tcp -m tcp --dport 9090 -j MESH_IN_REDIRECT",
            ]
        );
    }

    #[test]
    fn empty_include_list_leaves_inbound_alone() {
        for include in ["", "15000"] {
            let doc = capture(&["--include-inbound-ports", include])
                .unwrap()
                .restore_document();
            assert!(!doc.contains("-A PREROUTING"), "{doc}");
            assert!(!doc.contains("-A MESH_INBOUND"), "{doc}");
            assert!(doc.contains("-A OUTPUT -p tcp -j MESH_OUTPUT"), "{doc}");
        }
    }

    #[test]
    fn bad_flags_are_rejected_clearly() {
        let err = |args: &[&str]| format!("{:#}", capture(args).unwrap_err());
        assert!(err(&["--exclude-inbound-ports", "80,0"]).contains("`0` is not a port (1-65535)"));
        assert!(err(&["--exclude-outbound-ports", "70000"]).contains("`70000` is not a port"));
        assert!(err(&["--include-inbound-ports", "http"]).contains("--include-inbound-ports"));
        assert!(err(&["--outbound-port", "0"]).contains("--outbound-port: 0"));
        assert!(err(&["--inbound-port", "70000"]).contains("70000"));
        assert!(err(&["--inbound-port", "15001"]).contains("must differ"));
        assert!(err(&["--exclude-outbound-cidrs", "10.0.0.0/33"]).contains("prefix length"));
        assert!(err(&["--exclude-outbound-cidrs", "10.0.0/8"]).contains("not an IPv4 CIDR"));
        assert!(err(&["--exclude-outbound-cidrs", "fd00::/8"]).contains("IPv6"));
        assert!(err(&["--exclude-outbound-cidrs", "nope"]).contains("--exclude-outbound-cidrs"));
    }

    #[test]
    fn cidrs_normalize() {
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap(), (Ipv4Addr::UNSPECIFIED, 0));
        assert_eq!(
            parse_cidr("172.16.5.4/12").unwrap(),
            (Ipv4Addr::new(172, 16, 0, 0), 12)
        );
        assert_eq!(
            parse_cidr("1.2.3.4").unwrap(),
            (Ipv4Addr::new(1, 2, 3, 4), 32)
        );
    }

    #[test]
    fn cleanup_removes_jumps_then_chains() {
        let saved = "# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j MESH_INBOUND
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:MESH_INBOUND - [0:0]
:MESH_IN_REDIRECT - [0:0]
:MESH_OUTPUT - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j MESH_INBOUND
-A PREROUTING -p tcp -j MESH_INBOUND
-A PREROUTING -p udp -j OTHER
-A OUTPUT -p tcp -m comment --comment \"a b\" -j MESH_OUTPUT
-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT
-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A OTHER -j MESH_REDIRECT_NOT_OURS
COMMIT
";
        assert_eq!(
            cleanup_document(saved).unwrap(),
            "*nat
-D PREROUTING -p tcp -j MESH_INBOUND
-D PREROUTING -p tcp -j MESH_INBOUND
-D OUTPUT -p tcp -m comment --comment \"a b\" -j MESH_OUTPUT
-F MESH_INBOUND
-F MESH_IN_REDIRECT
-F MESH_OUTPUT
-X MESH_INBOUND
-X MESH_IN_REDIRECT
-X MESH_OUTPUT
COMMIT
"
        );
    }

    #[test]
    fn cleanup_of_a_clean_table_is_nothing() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(cleanup_document(saved), None);
        assert_eq!(cleanup_document(""), None);
    }

    #[test]
    fn installed_rules_clean_up_completely() {
        // What iptables-save prints after the restore is the document itself
        // (plus built-in chains); cleaning that must remove every line we added.
        let doc = capture(&["--proxy-gid", "1337"])
            .unwrap()
            .restore_document();
        let cleanup = cleanup_document(&doc).unwrap();
        for chain in CHAINS {
            assert!(cleanup.contains(&format!("-X {chain}\n")), "{cleanup}");
        }
        assert!(cleanup.contains("-D PREROUTING -p tcp -j MESH_INBOUND\n"));
        assert!(cleanup.contains("-D OUTPUT -p tcp -j MESH_OUTPUT\n"));
        assert_eq!(cleanup.matches("-D ").count(), 2, "{cleanup}");
    }
}
