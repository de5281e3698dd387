//! `meshctl inject -f manifest.yaml`: client-side sidecar injection, with the
//! same code the controller's admission webhook runs
//! (`mesh_controller::inject`), for clusters without the webhook or to see what
//! it would do.

use std::io::Read as _;

use anyhow::Context as _;
use mesh_controller::inject::{InjectSettings, ObjectOutcome, inject_object};
use serde::Deserialize as _;
use serde_json::Value;

use crate::cli::InjectArgs;

/// What happened to one object, for the summary on stderr.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `Kind/name` of the object.
    pub object: String,
    /// What injection did.
    pub outcome: ObjectOutcome,
}

/// Injects every Pod and pod template in a multi-document YAML stream; other
/// documents pass through unchanged (re-serialized). `kind: List` documents are
/// handled item by item. Empty documents are dropped.
///
/// Output is YAML with keys in alphabetical order and without the input's
/// comments: documents go through JSON, exactly as the API server sees them.
pub fn inject_manifest(
    input: &str,
    settings: &InjectSettings,
) -> anyhow::Result<(String, Vec<Report>)> {
    let mut docs = Vec::new();
    let mut reports = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let yaml = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("document {}: not valid YAML", i + 1))?;
        if yaml.is_null() {
            continue;
        }
        let mut json: Value = serde_json::to_value(&yaml)
            .with_context(|| format!("document {}: not a Kubernetes object", i + 1))?;
        if json.get("kind").and_then(Value::as_str) == Some("List") {
            if let Some(items) = json.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    reports.push(inject_one(item, settings, i)?);
                }
            }
        } else {
            reports.push(inject_one(&mut json, settings, i)?);
        }
        docs.push(serde_yaml::to_string(&json)?);
    }
    Ok((docs.join("---\n"), reports))
}

fn inject_one(object: &mut Value, settings: &InjectSettings, doc: usize) -> anyhow::Result<Report> {
    let name = format!(
        "{}/{}",
        object.get("kind").and_then(Value::as_str).unwrap_or("?"),
        object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    );
    let outcome =
        inject_object(object, settings).with_context(|| format!("document {}: {name}", doc + 1))?;
    Ok(Report {
        object: name,
        outcome,
    })
}

/// Runs `meshctl inject`: reads the file (or stdin for `-`), prints the result
/// to stdout and a line per pod-bearing object to stderr.
pub fn run(args: &InjectArgs) -> anyhow::Result<()> {
    let input = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the manifest from stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let (output, reports) = inject_manifest(&input, &args.inject.settings())?;
    print!("{output}");
    for r in reports {
        match r.outcome {
            ObjectOutcome::Injected => eprintln!("{}: sidecar injected", r.object),
            ObjectOutcome::Skipped(why) => eprintln!("{}: unchanged ({why})", r.object),
            ObjectOutcome::NotAPod => {}
        }
    }
    Ok(())
}
