//! The Grafana dashboards in deploy/grafana type-check against Grafana's published
//! schema (@grafana/schema's Dashboard, through `tsc --strict` in tests/dashboards),
//! and the check is strict: a misspelt field or a value of the wrong type fails it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn has(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `npm ci` once (the lock file pins @grafana/schema and typescript).
fn install() {
    let dir = project();
    if dir.join("node_modules/@grafana/schema").exists()
        && dir.join("node_modules/typescript").exists()
    {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .expect("run npm ci");
    assert!(
        out.status.success(),
        "npm ci in {}: {}",
        dir.display(),
        text(&out)
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `node check.mjs [dir]`.
fn check(dir: Option<&Path>) -> Output {
    let mut cmd = Command::new("node");
    cmd.arg("check.mjs").current_dir(project());
    if let Some(dir) = dir {
        cmd.arg(dir);
    }
    cmd.output().expect("run node")
}

/// Turns a valid dashboard into an invalid one.
type Breakage = fn(&mut serde_json::Value);

#[test]
fn dashboards_match_grafanas_schema_and_the_check_is_strict() {
    if !has("node") || !has("npm") {
        eprintln!("SKIPPED: node and npm are needed for the dashboard schema check");
        return;
    }
    install();
    let out = check(None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("5 dashboards match @grafana/schema"),
        "{}",
        text(&out)
    );

    // One broken copy per kind of mistake; each must fail, naming the problem.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/service.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&shipped).unwrap()).unwrap();
    let cases: [(&str, Breakage, &str); 3] = [
        (
            "misspelt panel field",
            |d| {
                let p = d["panels"][0].as_object_mut().unwrap();
                let title = p.remove("title").unwrap();
                p.insert("titel".into(), title);
            },
            "'\"titel\"' does not exist",
        ),
        (
            "wrong type",
            |d| d["schemaVersion"] = "42".into(),
            "not assignable to type 'number'",
        ),
        (
            "misspelt query field",
            |d| {
                let t = d["panels"][0]["targets"][0].as_object_mut().unwrap();
                let expr = t.remove("expr").unwrap();
                t.insert("exrp".into(), expr);
            },
            "PromTarget",
        ),
    ];
    for (what, break_it, expected) in cases {
        let dir = std::env::temp_dir().join(format!(
            "mesh-dashboard-{}-{}",
            what.replace(' ', "-"),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broken = original.clone();
        break_it(&mut broken);
        std::fs::write(dir.join("service.json"), broken.to_string()).unwrap();
        let out = check(Some(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!out.status.success(), "{what} passed the check");
        assert!(text(&out).contains(expected), "{what}: {}", text(&out));
    }
}
