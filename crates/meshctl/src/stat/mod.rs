//! `meshctl stat` and `meshctl up`'s live table: golden signals per destination
//! service or workload.
//!
//! Two sources give the same [`Row`]s: the sidecars' own `/metrics` pages
//! ([`scrape`]: no server needed, totals since the sidecars started) and a Prometheus
//! server ([`prometheus`]: PromQL over a window). Both count what the receiving
//! sidecar reported (`reporter="destination"`), so every request is counted once.

pub mod prometheus;
pub mod scrape;

use std::fmt::Write as _;

use anyhow::Context as _;
use serde::Serialize;

use crate::cli::{OutputFormat, StatArgs, StatTarget};
use crate::controller::Controller;
use crate::http_client::HttpClient;

/// What one row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// `destination_service`.
    Services,
    /// `destination_workload` (with its namespace).
    Workloads,
}

impl Grouping {
    /// The metric label that names a row.
    pub fn label(self) -> &'static str {
        match self {
            Grouping::Services => "destination_service",
            Grouping::Workloads => "destination_workload",
        }
    }

    /// The first column's heading.
    pub fn heading(self) -> &'static str {
        match self {
            Grouping::Services => "SERVICE",
            Grouping::Workloads => "WORKLOAD",
        }
    }
}

impl From<StatTarget> for Grouping {
    fn from(target: StatTarget) -> Grouping {
        match target {
            StatTarget::Services => Grouping::Services,
            StatTarget::Workloads => Grouping::Workloads,
        }
    }
}

/// One line of the table (and one object of `-o json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// `name.namespace` of the service or workload.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Sidecars that received requests for it.
    pub meshed: usize,
    /// Requests counted (since the sidecars started, or in the Prometheus window).
    pub requests: f64,
    /// Fraction (0-1) of non-5xx responses; `None` with no requests.
    pub success: Option<f64>,
    /// Requests per second; `None` when not measured.
    pub rps: Option<f64>,
    /// Median latency in seconds.
    pub p50: Option<f64>,
    /// 95th percentile latency in seconds.
    pub p95: Option<f64>,
    /// 99th percentile latency in seconds.
    pub p99: Option<f64>,
    /// Open inbound TCP connections at its sidecars.
    pub tcp_connections: Option<f64>,
    /// Fraction (0-1) of requests that arrived over mutual TLS; `None` with no
    /// requests.
    pub mtls: Option<f64>,
}

/// `catalog.default.svc.cluster.local` -> `catalog.default`; other names unchanged.
pub fn short_name(fqdn: &str) -> String {
    match fqdn.find(".svc.") {
        Some(i) => fqdn[..i].to_string(),
        None if fqdn.is_empty() => "(unknown)".to_string(),
        None => fqdn.to_string(),
    }
}

/// Estimates quantile `q` from cumulative buckets as PromQL's `histogram_quantile` does:
/// linear interpolation inside the bucket holding the rank; the highest finite bound when
/// the rank falls in the `+Inf` bucket. `None` without an `+Inf` bucket or observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = buckets.to_vec();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.len() < 2 || buckets.last()?.0 != f64::INFINITY || !(0.0..=1.0).contains(&q) {
        return None;
    }
    // Scrapes are not atomic: force the counts to be monotonic, as Prometheus does.
    for i in 1..buckets.len() {
        if buckets[i].1 < buckets[i - 1].1 {
            buckets[i].1 = buckets[i - 1].1;
        }
    }
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let b = buckets.iter().position(|(_, c)| *c >= rank)?;
    if b == buckets.len() - 1 {
        return Some(buckets[b - 1].0);
    }
    let (end, count) = buckets[b];
    if b == 0 && end <= 0.0 {
        return Some(end);
    }
    let (start, count_start) = if b == 0 { (0.0, 0.0) } else { buckets[b - 1] };
    let in_bucket = count - count_start;
    if in_bucket <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank - count_start) / in_bucket)
}

/// The column headings after the first.
const COLUMNS: [&str; 9] = [
    "MESHED", "REQUESTS", "SUCCESS", "RPS", "P50", "P95", "P99", "TCP", "MTLS",
];

/// Renders rows as an aligned table: names left-aligned, numbers right-aligned.
pub fn render(grouping: Grouping, rows: &[Row]) -> String {
    let dash = || "-".to_string();
    let mut cells: Vec<Vec<String>> = vec![
        std::iter::once(grouping.heading())
            .chain(COLUMNS)
            .map(str::to_string)
            .collect(),
    ];
    cells.extend(rows.iter().map(|r| {
        vec![
            r.name.clone(),
            r.meshed.to_string(),
            format!("{:.0}", r.requests),
            r.success
                .map_or_else(dash, |s| format!("{:.2}%", s * 100.0)),
            r.rps.map_or_else(dash, |v| format!("{v:.1}")),
            r.p50.map_or_else(dash, format_latency),
            r.p95.map_or_else(dash, format_latency),
            r.p99.map_or_else(dash, format_latency),
            r.tcp_connections.map_or_else(dash, |c| format!("{c:.0}")),
            r.mtls.map_or_else(dash, |m| format!("{:.0}%", m * 100.0)),
        ]
    }));
    let mut widths = vec![0; COLUMNS.len() + 1];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut text = String::new();
        for (i, (col, w)) in row.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(text, "{col:<w$}");
            } else {
                let _ = write!(text, "  {col:>w$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Seconds as a short human latency: `850us`, `12.5ms`, `1.20s`.
pub fn format_latency(seconds: f64) -> String {
    if seconds < 0.001 {
        format!("{:.0}us", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.1}ms", seconds * 1e3)
    } else {
        format!("{seconds:.2}s")
    }
}

/// The sidecars to scrape, from the controller's `/debug/syncz`: `(node id,
/// metrics URL)` of every connected proxy that reported an admin address.
pub async fn sidecar_targets(controller: &Controller) -> anyhow::Result<Vec<(String, String)>> {
    let syncz = controller.get_json("/debug/syncz").await?;
    let streams = crate::proxy_status::parse(syncz)
        .with_context(|| format!("unexpected /debug/syncz from {}", controller.base()))?;
    let mut targets: Vec<(String, String)> = streams
        .into_iter()
        .filter_map(|s| {
            let admin = crate::proxy_config::reachable_admin(s.admin_address.as_deref()?);
            Some((s.node_id, format!("http://{admin}/metrics")))
        })
        .collect();
    targets.sort();
    targets.dedup_by(|a, b| a.0 == b.0);
    Ok(targets)
}

/// Runs `meshctl stat`.
pub async fn run(args: StatArgs) -> anyhow::Result<()> {
    let grouping = Grouping::from(args.target);
    let mut rows = match &args.prometheus {
        Some(url) => {
            let server = prometheus::Prometheus::new(url);
            prometheus::rows(&server, grouping, args.namespace.as_deref(), args.window).await?
        }
        None => {
            let controller = Controller::from_flag(&args.controller);
            let targets = sidecar_targets(&controller).await?;
            if targets.is_empty() {
                anyhow::bail!(
                    "no proxies with an admin address are connected to {}",
                    controller.base()
                );
            }
            scrape::sampled_rows(&HttpClient::direct(), &targets, grouping, args.sample).await
        }
    };
    if let Some(ns) = &args.namespace {
        rows.retain(|r| &r.namespace == ns);
    }
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        OutputFormat::Table if rows.is_empty() => println!("no requests recorded yet"),
        OutputFormat::Table => print!("{}", render(grouping, &rows)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn quantile_interpolates_like_promql() {
        // 10 observations <= 0.1, 10 more in (0.1, 0.2], none above.
        let buckets = [(0.1, 10.0), (0.2, 20.0), (0.4, 20.0), (INF, 20.0)];
        assert!(close(histogram_quantile(0.5, &buckets), 0.1));
        assert!(close(histogram_quantile(0.25, &buckets), 0.05));
        assert!(close(histogram_quantile(0.75, &buckets), 0.15));
        assert!(close(histogram_quantile(0.99, &buckets), 0.198));
        assert!(close(histogram_quantile(1.0, &buckets), 0.2));
    }

    #[test]
    fn quantile_edge_cases() {
        // Rank in the +Inf bucket: the highest finite bound.
        assert!(close(
            histogram_quantile(0.99, &[(0.1, 1.0), (INF, 10.0)]),
            0.1
        ));
        // Unsorted input and non-monotonic counts are repaired.
        assert!(close(
            histogram_quantile(0.5, &[(INF, 4.0), (0.2, 3.0), (0.1, 4.0)]),
            0.05
        ));
        assert_eq!(histogram_quantile(0.5, &[(0.1, 1.0), (0.2, 2.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(0.1, 0.0), (INF, 0.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[]), None);
        assert_eq!(histogram_quantile(1.5, &[(0.1, 1.0), (INF, 1.0)]), None);
    }

    #[test]
    fn table_is_aligned() {
        let rows = vec![
            Row {
                name: "catalog.default".into(),
                namespace: "default".into(),
                meshed: 2,
                requests: 1234.0,
                success: Some(0.995),
                rps: Some(20.04),
                p50: Some(0.0012),
                p95: Some(0.0031),
                p99: Some(0.0000456),
                tcp_connections: Some(3.0),
                mtls: Some(1.0),
            },
            Row {
                name: "frontend.default".into(),
                namespace: "default".into(),
                meshed: 1,
                requests: 0.0,
                success: None,
                rps: None,
                p50: None,
                p95: None,
                p99: Some(1.5),
                tcp_connections: None,
                mtls: None,
            },
        ];
        let table = render(Grouping::Services, &rows);
        let expected = "\
SERVICE           MESHED  REQUESTS  SUCCESS   RPS    P50    P95    P99  TCP  MTLS
catalog.default        2      1234   99.50%  20.0  1.2ms  3.1ms   46us    3  100%
frontend.default       1         0        -     -      -      -  1.50s    -     -
";
        assert_eq!(table, expected);
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name("a.b.svc.cluster.local"), "a.b");
        assert_eq!(short_name("a.b.svc.example.org"), "a.b");
        assert_eq!(short_name("external.com"), "external.com");
        assert_eq!(short_name(""), "(unknown)");
    }
}
