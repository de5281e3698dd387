//! Per-service golden signals from sidecar metrics, and the table that shows them.
//!
//! Used by `meshctl up`'s live view and meant for `meshctl stat`: both scrape sidecars'
//! `/metrics` pages, so the numbers are computed here rather than by a Prometheus server.
//! Only `reporter="destination"` series count, so each request is counted once, by the
//! sidecar that received it. MTLS is the share of requests that arrived over mutual
//! TLS (`connection_security_policy="mutual_tls"`), as the receiving sidecar saw it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::prom::Sample;

const REQUESTS: &str = "mesh_requests_total";
const BUCKETS: &str = "mesh_request_duration_seconds_bucket";
const MUTUAL_TLS: &str = "mutual_tls";

/// Cumulative counts for one service as seen by one sidecar (or summed over several).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceCounts {
    /// All requests.
    pub requests: f64,
    /// Requests answered with anything but a 5xx.
    pub success: f64,
    /// Requests that arrived over mutual TLS (`connection_security_policy`).
    pub mtls: f64,
    /// Cumulative latency histogram: `(upper bound in seconds, count)`, sorted by bound.
    pub buckets: Vec<(f64, f64)>,
}

impl ServiceCounts {
    fn add_bucket(&mut self, le: f64, count: f64) {
        match self.buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => {
                self.buckets.push((le, count));
                self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    fn add(&mut self, other: &ServiceCounts) {
        self.requests += other.requests;
        self.success += other.success;
        self.mtls += other.mtls;
        for (le, count) in &other.buckets {
            self.add_bucket(*le, *count);
        }
    }

    /// `self - earlier`, treating a decrease as a counter reset (the sidecar restarted),
    /// as Prometheus' `increase` does.
    fn since(&self, earlier: &ServiceCounts) -> ServiceCounts {
        if self.requests < earlier.requests {
            return self.clone();
        }
        let buckets = self
            .buckets
            .iter()
            .map(|(le, count)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(b, _)| b == le)
                    .map_or(0.0, |(_, c)| *c);
                (*le, (count - before).max(0.0))
            })
            .collect();
        ServiceCounts {
            requests: self.requests - earlier.requests,
            success: (self.success - earlier.success).max(0.0),
            mtls: (self.mtls - earlier.mtls).max(0.0),
            buckets,
        }
    }
}

/// One sidecar's metrics, by destination service FQDN.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Counts by `destination_service`.
    pub services: BTreeMap<String, ServiceCounts>,
}

impl Snapshot {
    /// Extracts the destination-reported request counts and latency buckets.
    pub fn from_samples(samples: &[Sample]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for s in samples {
            if s.label("reporter") != "destination" || !s.value.is_finite() {
                continue;
            }
            let service = s.label("destination_service");
            if s.name == REQUESTS {
                let counts = snapshot.services.entry(service.to_string()).or_default();
                counts.requests += s.value;
                if !s.label("response_code").starts_with('5') {
                    counts.success += s.value;
                }
                if s.label("connection_security_policy") == MUTUAL_TLS {
                    counts.mtls += s.value;
                }
            } else if s.name == BUCKETS {
                let Some(le) = crate::prom::parse_value(s.label("le")) else {
                    continue;
                };
                let counts = snapshot.services.entry(service.to_string()).or_default();
                counts.add_bucket(le, s.value);
            }
        }
        snapshot
    }
}

/// Snapshots of several sidecars taken together, keyed by sidecar (e.g. its address).
pub type MeshSnapshot = BTreeMap<String, Snapshot>;

/// Scrapes every `(sidecar, metrics URL)` concurrently. Sidecars that do not answer
/// (restarting, say) or serve an unreadable page are left out of this snapshot, and
/// logged at debug level: a live view should skip a beat, not stop.
pub async fn scrape(
    client: &crate::http_client::HttpClient,
    targets: &[(String, String)],
    timeout: Duration,
) -> MeshSnapshot {
    let pages = futures::future::join_all(targets.iter().map(|(sidecar, url)| async move {
        let page = client.get(url, timeout).await;
        (sidecar, url, page)
    }))
    .await;
    let mut mesh = MeshSnapshot::new();
    for (sidecar, url, page) in pages {
        let page = match page {
            Ok(r) if r.status.is_success() => r.body,
            Ok(r) => {
                tracing::debug!(url, status = %r.status, "metrics scrape failed");
                continue;
            }
            Err(e) => {
                tracing::debug!(url, "metrics scrape failed: {e}");
                continue;
            }
        };
        match crate::prom::parse(&String::from_utf8_lossy(&page)) {
            Ok(samples) => {
                mesh.insert(sidecar.clone(), Snapshot::from_samples(&samples));
            }
            Err(e) => tracing::debug!(url, "unreadable metrics: {e}"),
        }
    }
    mesh
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `name.namespace` of the service.
    pub service: String,
    /// Requests since the sidecars started.
    pub requests: f64,
    /// Fraction (0-1) of non-5xx responses; `None` with no requests.
    pub success: Option<f64>,
    /// Requests per second over the window; `None` without an earlier snapshot.
    pub rps: Option<f64>,
    /// Median latency in seconds.
    pub p50: Option<f64>,
    /// 99th percentile latency in seconds.
    pub p99: Option<f64>,
    /// Fraction (0-1) of requests that arrived over mutual TLS; `None` with no
    /// requests.
    pub mtls: Option<f64>,
}

/// Computes the table rows.
///
/// With an `earlier` snapshot taken `elapsed` before `now`, success, RPS and latency
/// describe that window (as `meshctl stat` over a window would); without one they
/// describe everything since the sidecars started. REQUESTS is always the running total.
pub fn rows(earlier: Option<&MeshSnapshot>, now: &MeshSnapshot, elapsed: Duration) -> Vec<Row> {
    let mut totals: BTreeMap<&str, ServiceCounts> = BTreeMap::new();
    let mut window: BTreeMap<&str, ServiceCounts> = BTreeMap::new();
    for (sidecar, snapshot) in now {
        for (service, counts) in &snapshot.services {
            totals.entry(service).or_default().add(counts);
            let before = earlier
                .and_then(|e| e.get(sidecar))
                .and_then(|s| s.services.get(service));
            let delta = match before {
                Some(before) => counts.since(before),
                None => counts.clone(),
            };
            window.entry(service).or_default().add(&delta);
        }
    }
    totals
        .into_iter()
        .map(|(service, total)| {
            let w = match earlier {
                Some(_) => window.remove(service).unwrap_or_default(),
                None => total.clone(),
            };
            let secs = elapsed.as_secs_f64();
            let rps = (earlier.is_some() && secs > 0.0).then(|| w.requests / secs);
            let success = (w.requests > 0.0).then(|| w.success / w.requests);
            let mtls = (w.requests > 0.0).then(|| w.mtls / w.requests);
            Row {
                service: short_name(service),
                requests: total.requests,
                success,
                rps,
                p50: histogram_quantile(0.5, &w.buckets),
                p99: histogram_quantile(0.99, &w.buckets),
                mtls,
            }
        })
        .collect()
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

/// Renders rows as an aligned table with a header, one service per line.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "SERVICE", "REQUESTS", "SUCCESS", "RPS", "P50", "P99", "MTLS",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.service.clone(),
                format!("{:.0}", r.requests),
                r.success
                    .map_or("-".into(), |s| format!("{:.2}%", s * 100.0)),
                r.rps.map_or("-".into(), |v| format!("{v:.1}")),
                r.p50.map_or("-".into(), format_latency),
                r.p99.map_or("-".into(), format_latency),
                r.mtls.map_or("-".into(), |m| format!("{:.0}%", m * 100.0)),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cols: [&str; 7]| {
        let mut text = String::new();
        for (i, (col, w)) in cols.iter().zip(widths).enumerate() {
            if i == 0 {
                let _ = write!(text, "{col:<w$}");
            } else {
                let _ = write!(text, "  {col:>w$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &cells {
        line([
            &row[0], &row[1], &row[2], &row[3], &row[4], &row[5], &row[6],
        ]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::parse;

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

    const PAGE: &str = r#"
mesh_requests_total{reporter="destination",destination_service="catalog.default.svc.cluster.local",response_code="200",connection_security_policy="mutual_tls"} 90
mesh_requests_total{reporter="destination",destination_service="catalog.default.svc.cluster.local",response_code="503",connection_security_policy="none"} 10
mesh_requests_total{reporter="source",destination_service="orders.default.svc.cluster.local",response_code="200"} 1000
mesh_request_duration_seconds_bucket{reporter="destination",destination_service="catalog.default.svc.cluster.local",le="0.01"} 50
mesh_request_duration_seconds_bucket{reporter="destination",destination_service="catalog.default.svc.cluster.local",le="0.1"} 100
mesh_request_duration_seconds_bucket{reporter="destination",destination_service="catalog.default.svc.cluster.local",le="+Inf"} 100
"#;

    fn mesh(pages: &[(&str, &str)]) -> MeshSnapshot {
        pages
            .iter()
            .map(|(k, p)| (k.to_string(), Snapshot::from_samples(&parse(p).unwrap())))
            .collect()
    }

    #[test]
    fn cumulative_rows_sum_sidecars_and_skip_source_reports() {
        let now = mesh(&[("a", PAGE), ("b", PAGE)]);
        let rows = rows(None, &now, Duration::from_secs(3));
        assert_eq!(rows.len(), 1, "{rows:?}");
        let r = &rows[0];
        assert_eq!(r.service, "catalog.default");
        assert_eq!(r.requests, 200.0);
        assert!(close(r.success, 0.9));
        assert!(close(r.mtls, 0.9));
        assert_eq!(r.rps, None);
        assert!(close(r.p50, 0.01));
    }

    #[test]
    fn windowed_rows_use_deltas_and_handle_resets() {
        let earlier = mesh(&[("a", PAGE), ("b", PAGE)]);
        let later_page = PAGE.replace("} 90", "} 120").replace("} 100\n", "} 130\n");
        // Sidecar b restarted: its counters start again from small values.
        let reset_page = r#"mesh_requests_total{reporter="destination",destination_service="catalog.default.svc.cluster.local",response_code="200"} 6"#;
        let now = mesh(&[("a", &later_page), ("b", reset_page)]);
        let rows = rows(Some(&earlier), &now, Duration::from_secs(3));
        let r = &rows[0];
        assert_eq!(r.requests, 130.0 + 6.0);
        // Window: 30 from a, 6 from b, all successes.
        assert!(close(r.rps, 12.0), "{r:?}");
        assert!(close(r.success, 1.0), "{r:?}");
        // a's 30 new requests were mutual TLS; b's 6 carried no policy label.
        assert!(close(r.mtls, 30.0 / 36.0), "{r:?}");
        // a's 30 new requests all landed in (0.01, 0.1].
        assert!(close(r.p50, 0.01 + 0.09 * 0.5), "{r:?}");
    }

    #[test]
    fn table_is_aligned() {
        let rows = vec![
            Row {
                service: "catalog.default".into(),
                requests: 1234.0,
                success: Some(0.995),
                rps: Some(20.04),
                p50: Some(0.0012),
                p99: Some(0.0000456),
                mtls: Some(1.0),
            },
            Row {
                service: "frontend.default".into(),
                requests: 0.0,
                success: None,
                rps: None,
                p50: None,
                p99: Some(1.5),
                mtls: None,
            },
        ];
        let table = render(&rows);
        let expected = "\
SERVICE           REQUESTS  SUCCESS   RPS    P50    P99  MTLS
catalog.default       1234   99.50%  20.0  1.2ms   46us  100%
frontend.default         0        -     -      -  1.50s     -
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
