//! `mesh-init` against real iptables, inside a throwaway network namespace so
//! the host's rules are never touched. Needs root and the iptables/iproute2
//! tools; without them the namespace tests print why and pass, so a plain
//! `cargo test` on a laptop or CI runner stays green.
//!
//! The tests that need neither (dry-run output, a missing iptables) always run.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-init");

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

/// Why the namespace tests cannot run here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        });
    if euid.as_deref() != Some("0") {
        return Some("not root".into());
    }
    for (tool, arg) in [
        ("iptables-restore", "--version"),
        ("iptables-save", "--version"),
        ("ip", "-V"),
    ] {
        if !Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!("`{tool}` not available"));
        }
    }
    None
}

/// Prints the skip notice and returns true when the namespace tests cannot run.
fn skip(test: &str) -> bool {
    match missing_prerequisite() {
        Some(why) => {
            eprintln!(
                "{test}: skipping: needs root and iptables (apt-get install iptables iproute2): {why}"
            );
            true
        }
        None => false,
    }
}

/// A network namespace deleted on drop, so a failing assertion never leaks one.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "mesh-cap-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            text(&out.stderr)
        );
        Netns(name)
    }

    /// Runs a program inside the namespace.
    fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Runs mesh-init inside the namespace, asserting it succeeds; returns stdout.
    fn mesh_init(&self, args: &[&str]) -> String {
        let out = self.exec(BIN, args);
        assert!(
            out.status.success(),
            "mesh-init {args:?} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// The namespace's nat table, without the timestamped comment lines.
    fn nat(&self) -> String {
        let out = self.exec("iptables-save", &["-t", "nat"]);
        assert!(out.status.success(), "iptables-save: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn count(haystack: &str, line: &str) -> usize {
    haystack.lines().filter(|l| *l == line).count()
}

#[test]
fn install_reinstall_cleanup_in_a_namespace() {
    if skip("install_reinstall_cleanup_in_a_namespace") {
        return;
    }
    let ns = Netns::new();
    let clean = ns.nat();
    assert!(
        !clean.contains("MESH_"),
        "fresh namespace has mesh rules:\n{clean}"
    );

    let mut args = INJECTED.to_vec();
    args.extend([
        "--exclude-outbound-cidrs",
        "10.96.0.0/12",
        "--exclude-outbound-ports",
        "5432",
    ]);
    ns.mesh_init(&args);
    let nat = ns.nat();
    for line in [
        ":MESH_INBOUND - [0:0]",
        ":MESH_IN_REDIRECT - [0:0]",
        ":MESH_OUTPUT - [0:0]",
        ":MESH_REDIRECT - [0:0]",
        "-A PREROUTING -p tcp -j MESH_INBOUND",
        "-A OUTPUT -p tcp -j MESH_OUTPUT",
        "-A MESH_INBOUND -p tcp -m tcp --dport 15000 -j RETURN",
        "-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT",
        "-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A MESH_OUTPUT -o lo -j RETURN",
        "-A MESH_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A MESH_OUTPUT -d 10.96.0.0/12 -j RETURN",
        "-A MESH_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
        "-A MESH_OUTPUT -j MESH_REDIRECT",
        "-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert_eq!(count(&nat, line), 1, "missing `{line}` in:\n{nat}");
    }

    // A second run (a restarted init container, other flags) replaces the
    // rules rather than stacking a second set of jumps.
    ns.mesh_init(INJECTED);
    let again = ns.nat();
    assert_eq!(
        count(&again, "-A PREROUTING -p tcp -j MESH_INBOUND"),
        1,
        "{again}"
    );
    assert_eq!(
        count(&again, "-A OUTPUT -p tcp -j MESH_OUTPUT"),
        1,
        "{again}"
    );
    assert!(
        !again.contains("10.96.0.0/12"),
        "old flags survived:\n{again}"
    );

    // --cleanup --dry-run shows the removal but changes nothing.
    let plan = ns.mesh_init(&["--cleanup", "--dry-run"]);
    assert!(
        plan.contains("-D PREROUTING -p tcp -j MESH_INBOUND"),
        "{plan}"
    );
    assert!(plan.contains("-X MESH_REDIRECT"), "{plan}");
    assert_eq!(ns.nat(), again);

    // --cleanup removes everything and leaves the table as it was.
    ns.mesh_init(&["--cleanup"]);
    let after = ns.nat();
    assert!(!after.contains("MESH_"), "left behind:\n{after}");
    assert_eq!(after, clean);
    // ...and is idempotent.
    let out = ns.mesh_init(&["--cleanup"]);
    assert!(out.contains("nothing to remove"), "{out}");

    // --dry-run prints the document and installs nothing.
    let doc = ns.mesh_init(&[&["--dry-run"], INJECTED].concat());
    assert!(
        doc.starts_with("*nat\n") && doc.ends_with("COMMIT\n"),
        "{doc}"
    );
    assert!(doc.contains("-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
    assert_eq!(ns.nat(), clean);
}

#[test]
fn dry_run_needs_no_privileges() {
    let out = Command::new(BIN)
        .args(INJECTED)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc = text(&out.stdout);
    assert!(
        doc.contains("-A PREROUTING -p tcp -j MESH_INBOUND\n"),
        "{doc}"
    );
    assert!(
        doc.contains("-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"),
        "{doc}"
    );
}

#[test]
fn missing_iptables_is_a_clear_error() {
    // A PATH with no iptables on it: mesh-init must fail naming the tool, and
    // (as nothing can run) cannot touch the host's rules.
    let out = Command::new(BIN)
        .args(INJECTED)
        .env("PATH", "/nonexistent/mesh-init-test")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("`iptables-save` not found on PATH"), "{err}");
}

#[test]
fn bad_flags_fail_before_touching_anything() {
    let out = Command::new(BIN)
        .args(["--exclude-outbound-cidrs", "10.0.0.0/40"])
        .env("PATH", "/nonexistent/mesh-init-test")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--exclude-outbound-cidrs"), "{err}");
    assert!(err.contains("prefix length"), "{err}");
}
