//! `meshctl proxy-status`: every connected proxy's xDS sync state, one row each.
//!
//! Read from the controller's `/debug/syncz`, which tracks what it sent each stream
//! and what the proxy ACKed or NACKed: the controller's view, the one that matters
//! when a change "does not arrive". A NACK's reason is printed under the table,
//! because a proxy keeps its old config after one and the reason is what to fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cli::{OutputFormat, ProxyStatusArgs};
use crate::controller::Controller;
use crate::format::{human_duration, table, unix_now};

/// The xDS types in the column order of the table.
pub const TYPES: [&str; 5] = ["CDS", "LDS", "EDS", "RDS", "SDS"];

/// One resource type of one stream, as `/debug/syncz` reports it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TypeState {
    /// `SYNCED`, `STALE`, `NOT SENT` or `ERROR`.
    #[serde(default)]
    pub status: String,
    /// The last version the proxy ACKed.
    #[serde(default)]
    pub acked_version: Option<String>,
    /// The last version sent.
    #[serde(default)]
    pub sent_version: Option<String>,
    /// The proxy's NACK reason.
    #[serde(default)]
    pub error: Option<String>,
}

/// One open stream, as `/debug/syncz` reports it (unknown fields are ignored, so a
/// newer controller still reads).
#[derive(Debug, Clone, Deserialize)]
pub struct StreamState {
    /// The connection number (unique per controller run).
    #[serde(default)]
    pub connection: u64,
    /// The xDS node id.
    pub node_id: String,
    /// The workload instance, if the proxy said.
    #[serde(default)]
    pub workload: Option<String>,
    /// The proxy's namespace.
    #[serde(default)]
    pub namespace: String,
    /// The proxy's admin address, if it said (where its `/metrics` is).
    #[serde(default)]
    pub admin_address: Option<String>,
    /// When the stream opened, Unix seconds.
    #[serde(default)]
    pub connected_at_unix: i64,
    /// Per type short name (`CDS`, ...).
    #[serde(default)]
    pub types: BTreeMap<String, TypeState>,
}

/// One row of the table (and one object of `-o json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyRow {
    /// Node id.
    pub proxy: String,
    /// Workload instance (`-` when the proxy did not say).
    pub workload: String,
    /// Namespace.
    pub namespace: String,
    /// Status per type, in [`TYPES`] order as a map.
    pub status: BTreeMap<String, String>,
    /// NACK reason per type that is in ERROR.
    pub errors: BTreeMap<String, String>,
    /// The newest version the proxy ACKed, of any type (`-` before any ACK).
    pub version: String,
    /// Seconds since the stream opened.
    pub age_seconds: i64,
}

/// Parses `/debug/syncz`'s body.
pub fn parse(syncz: serde_json::Value) -> Result<Vec<StreamState>, serde_json::Error> {
    serde_json::from_value(syncz)
}

/// The rows, sorted by node id; a proxy that reconnected and is listed twice
/// shows its newest stream only (the old one is closing).
pub fn rows(streams: &[StreamState], now_unix: i64) -> Vec<ProxyRow> {
    let mut newest: BTreeMap<&str, &StreamState> = BTreeMap::new();
    for s in streams {
        let slot = newest.entry(&s.node_id).or_insert(s);
        if (s.connected_at_unix, s.connection) >= (slot.connected_at_unix, slot.connection) {
            *slot = s;
        }
    }
    newest
        .into_values()
        .map(|s| {
            let state = |ty: &str| s.types.get(ty).cloned().unwrap_or_default();
            let status = TYPES
                .iter()
                .map(|ty| {
                    let st = state(ty).status;
                    let st = if st.is_empty() { "NOT SENT".into() } else { st };
                    (ty.to_string(), st)
                })
                .collect();
            let errors = TYPES
                .iter()
                .filter_map(|ty| {
                    let t = state(ty);
                    (t.status == "ERROR").then(|| {
                        let reason = t.error.unwrap_or_else(|| "(no reason given)".into());
                        (ty.to_string(), reason)
                    })
                })
                .collect();
            ProxyRow {
                proxy: s.node_id.clone(),
                workload: s.workload.clone().unwrap_or_else(|| "-".into()),
                namespace: s.namespace.clone(),
                status,
                errors,
                version: newest_version(s.types.values()),
                age_seconds: (now_unix - s.connected_at_unix).max(0),
            }
        })
        .collect()
}

/// The highest ACKed version: versions are numbers when the controller counts
/// snapshots, so compare numerically when both are, else as text.
fn newest_version<'a>(types: impl Iterator<Item = &'a TypeState>) -> String {
    types
        .filter_map(|t| t.acked_version.as_deref())
        .filter(|v| !v.is_empty())
        .max_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            _ => a.cmp(b),
        })
        .unwrap_or("-")
        .to_string()
}

/// The table, then one line per NACK with its reason.
pub fn render(rows: &[ProxyRow]) -> String {
    let mut header = vec!["PROXY", "WORKLOAD", "NAMESPACE"];
    header.extend(TYPES);
    header.extend(["VERSION", "AGE"]);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![r.proxy.clone(), r.workload.clone(), r.namespace.clone()];
            cells.extend(TYPES.iter().map(|ty| r.status[*ty].clone()));
            cells.push(r.version.clone());
            cells.push(human_duration(r.age_seconds));
            cells
        })
        .collect();
    let mut out = table(&header, &cells);
    let errors: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.errors
                .iter()
                .map(move |(ty, reason)| format!("  {} {ty}: {reason}\n", r.proxy))
        })
        .collect();
    if !errors.is_empty() {
        out.push_str("\nrejected (the proxy keeps its previous config):\n");
        out.extend(errors);
    }
    out
}

/// Runs the command; fails when the controller cannot be read.
pub async fn run(args: ProxyStatusArgs) -> anyhow::Result<()> {
    let controller = Controller::from_flag(&args.controller);
    let syncz = controller.get_json("/debug/syncz").await?;
    let streams = parse(syncz)
        .map_err(|e| anyhow::anyhow!("unexpected /debug/syncz from {}: {e}", controller.base()))?;
    let rows = rows(&streams, unix_now());
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        OutputFormat::Table if rows.is_empty() => {
            println!("no proxies connected to {}", controller.base());
        }
        OutputFormat::Table => print!("{}", render(&rows)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn syncz() -> serde_json::Value {
        json!([
            {"connection": 1, "node_id": "b.default", "workload": "b", "namespace": "default",
             "connected_at_unix": 1000, "protocol": "delta",
             "types": {"CDS": {"status": "ERROR", "acked_version": "9", "error": "bad cluster x"},
                       "LDS": {"status": "SYNCED", "acked_version": "10"},
                       "EDS": {"status": "STALE", "acked_version": "2"},
                       "RDS": {"status": "NOT SENT"}}},
            {"connection": 2, "node_id": "a.default", "namespace": "default",
             "connected_at_unix": 900, "types": {}},
            {"connection": 3, "node_id": "a.default", "workload": "a", "namespace": "default",
             "connected_at_unix": 1100, "types": {"SDS": {"status": "SYNCED", "acked_version": "abc"}}}
        ])
    }

    #[test]
    fn rows_take_the_newest_stream_and_every_status() {
        let rows = rows(&parse(syncz()).unwrap(), 1130);
        assert_eq!(rows.len(), 2);
        let (a, b) = (&rows[0], &rows[1]);
        assert_eq!((a.proxy.as_str(), a.workload.as_str()), ("a.default", "a"));
        assert_eq!(a.age_seconds, 30);
        assert_eq!(a.status["SDS"], "SYNCED");
        assert_eq!(a.status["CDS"], "NOT SENT");
        assert_eq!(a.version, "abc");
        assert_eq!(b.status["CDS"], "ERROR");
        assert_eq!(b.status["EDS"], "STALE");
        assert_eq!(b.errors["CDS"], "bad cluster x");
        assert_eq!(b.errors.len(), 1);
        // 10 > 9 > 2 numerically.
        assert_eq!(b.version, "10");
    }

    #[test]
    fn table_shows_nack_reasons_below() {
        let text = render(&rows(&parse(syncz()).unwrap(), 1130));
        let expected = "\
PROXY      WORKLOAD  NAMESPACE  CDS       LDS       EDS       RDS       SDS       VERSION  AGE
a.default  a         default    NOT SENT  NOT SENT  NOT SENT  NOT SENT  SYNCED    abc      30s
b.default  b         default    ERROR     SYNCED    STALE     NOT SENT  NOT SENT  10       2m 10s

rejected (the proxy keeps its previous config):
  b.default CDS: bad cluster x
";
        assert_eq!(text, expected);
    }

    #[test]
    fn unreadable_syncz_is_an_error() {
        assert!(parse(json!({"not": "a list"})).is_err());
        assert!(parse(json!([{"workload": "no node id"}])).is_err());
    }
}
