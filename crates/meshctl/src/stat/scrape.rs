//! Golden signals computed from sidecars' own `/metrics` pages, no Prometheus needed.
//!
//! Used by `meshctl up`'s live table and by `meshctl stat` without `--prometheus`.
//! Only `reporter="destination"` series count, so each request is counted once, by the
//! sidecar that received it. MTLS is the share of requests that arrived over mutual
//! TLS (`connection_security_policy="mutual_tls"`), as the receiving sidecar saw it.
//! TCP is the receiving sidecars' open inbound connections (opened minus closed).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Grouping, Row, histogram_quantile};
use crate::prom::Sample;

const REQUESTS: &str = "mesh_requests_total";
const BUCKETS: &str = "mesh_request_duration_seconds_bucket";
const TCP_OPENED: &str = "mesh_tcp_connections_opened_total";
const TCP_CLOSED: &str = "mesh_tcp_connections_closed_total";
const MUTUAL_TLS: &str = "mutual_tls";

/// What a row is about: a destination service or workload, and its namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// The destination's namespace (`destination_namespace`).
    pub namespace: String,
    /// The service FQDN or the workload name.
    pub name: String,
}

impl GroupKey {
    /// The key of a series: services keep their FQDN (shortened for display),
    /// workloads are shown as `name.namespace`, like node ids.
    pub fn of(grouping: Grouping, name: &str, namespace: &str) -> GroupKey {
        let name = match grouping {
            Grouping::Services => name.to_string(),
            Grouping::Workloads => format!("{name}.{namespace}"),
        };
        GroupKey {
            namespace: namespace.to_string(),
            name,
        }
    }
}

/// Cumulative counts for one group as seen by one sidecar (or summed over several).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// All requests.
    pub requests: f64,
    /// Requests answered with anything but a 5xx.
    pub success: f64,
    /// Requests that arrived over mutual TLS (`connection_security_policy`).
    pub mtls: f64,
    /// Cumulative latency histogram: `(upper bound in seconds, count)`, sorted by bound.
    pub buckets: Vec<(f64, f64)>,
}

impl Counts {
    fn add_bucket(&mut self, le: f64, count: f64) {
        match self.buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => {
                self.buckets.push((le, count));
                self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.success += other.success;
        self.mtls += other.mtls;
        for (le, count) in &other.buckets {
            self.add_bucket(*le, *count);
        }
    }

    /// `self - earlier`, treating a decrease as a counter reset (the sidecar restarted),
    /// as Prometheus' `increase` does.
    fn since(&self, earlier: &Counts) -> Counts {
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
        Counts {
            requests: self.requests - earlier.requests,
            success: (self.success - earlier.success).max(0.0),
            mtls: (self.mtls - earlier.mtls).max(0.0),
            buckets,
        }
    }
}

/// One sidecar's metrics, by destination group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Counts by destination service or workload.
    pub groups: BTreeMap<GroupKey, Counts>,
    /// The sidecar's open inbound connections (a gauge, not a counter).
    pub open_connections: f64,
}

impl Snapshot {
    /// Extracts the destination-reported request counts, latency buckets and
    /// inbound connection counts, grouped by `grouping`.
    pub fn from_samples(samples: &[Sample], grouping: Grouping) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for s in samples {
            if s.label("reporter") != "destination" || !s.value.is_finite() {
                continue;
            }
            let key = || {
                GroupKey::of(
                    grouping,
                    s.label(grouping.label()),
                    s.label("destination_namespace"),
                )
            };
            match s.name.as_str() {
                REQUESTS => {
                    let counts = snapshot.groups.entry(key()).or_default();
                    counts.requests += s.value;
                    if !s.label("response_code").starts_with('5') {
                        counts.success += s.value;
                    }
                    if s.label("connection_security_policy") == MUTUAL_TLS {
                        counts.mtls += s.value;
                    }
                }
                BUCKETS => {
                    if let Some(le) = crate::prom::parse_value(s.label("le")) {
                        snapshot
                            .groups
                            .entry(key())
                            .or_default()
                            .add_bucket(le, s.value);
                    }
                }
                TCP_OPENED => snapshot.open_connections += s.value,
                TCP_CLOSED => snapshot.open_connections -= s.value,
                _ => {}
            }
        }
        snapshot.open_connections = snapshot.open_connections.max(0.0);
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
    grouping: Grouping,
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
                mesh.insert(sidecar.clone(), Snapshot::from_samples(&samples, grouping));
            }
            Err(e) => tracing::debug!(url, "unreadable metrics: {e}"),
        }
    }
    mesh
}

/// Computes the table rows.
///
/// With an `earlier` snapshot taken `elapsed` before `now`, success, RPS and latency
/// describe that window (as `meshctl up`'s refreshing table shows); without one they
/// describe everything since the sidecars started. REQUESTS is always the running
/// total, MESHED the sidecars that received requests for the group, TCP their open
/// inbound connections now.
pub fn rows(earlier: Option<&MeshSnapshot>, now: &MeshSnapshot, elapsed: Duration) -> Vec<Row> {
    let mut totals: BTreeMap<&GroupKey, Counts> = BTreeMap::new();
    let mut window: BTreeMap<&GroupKey, Counts> = BTreeMap::new();
    let mut sidecars: BTreeMap<&GroupKey, BTreeSet<&str>> = BTreeMap::new();
    let mut connections: BTreeMap<&GroupKey, f64> = BTreeMap::new();
    for (sidecar, snapshot) in now {
        for (key, counts) in &snapshot.groups {
            totals.entry(key).or_default().add(counts);
            sidecars.entry(key).or_default().insert(sidecar);
            *connections.entry(key).or_default() += snapshot.open_connections;
            let before = earlier
                .and_then(|e| e.get(sidecar))
                .and_then(|s| s.groups.get(key));
            let delta = match before {
                Some(before) => counts.since(before),
                None => counts.clone(),
            };
            window.entry(key).or_default().add(&delta);
        }
    }
    totals
        .into_iter()
        .map(|(key, total)| {
            let w = match earlier {
                Some(_) => window.remove(key).unwrap_or_default(),
                None => total.clone(),
            };
            let secs = elapsed.as_secs_f64();
            let rps = (earlier.is_some() && secs > 0.0).then(|| w.requests / secs);
            Row {
                name: super::short_name(&key.name),
                namespace: key.namespace.clone(),
                meshed: sidecars.get(key).map_or(0, BTreeSet::len),
                requests: total.requests,
                success: (w.requests > 0.0).then(|| w.success / w.requests),
                rps,
                p50: histogram_quantile(0.5, &w.buckets),
                p95: histogram_quantile(0.95, &w.buckets),
                p99: histogram_quantile(0.99, &w.buckets),
                tcp_connections: connections.get(key).copied(),
                mtls: (w.requests > 0.0).then(|| w.mtls / w.requests),
            }
        })
        .collect()
}

/// `meshctl stat` without Prometheus: totals since the sidecars started, with RPS
/// measured over `sample` between two scrapes.
pub async fn sampled_rows(
    client: &crate::http_client::HttpClient,
    targets: &[(String, String)],
    grouping: Grouping,
    sample: Duration,
) -> Vec<Row> {
    let timeout = Duration::from_secs(2);
    let first = scrape(client, targets, grouping, timeout).await;
    let started = tokio::time::Instant::now();
    tokio::time::sleep(sample).await;
    let second = scrape(client, targets, grouping, timeout).await;
    let rates = rows(Some(&first), &second, started.elapsed());
    let mut out = rows(None, &second, Duration::ZERO);
    for row in &mut out {
        row.rps = rates
            .iter()
            .find(|r| r.name == row.name && r.namespace == row.namespace)
            .and_then(|r| r.rps);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::parse;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    const PAGE: &str = r#"
mesh_requests_total{reporter="destination",destination_service="catalog.default.svc.cluster.local",destination_workload="catalog-1",destination_namespace="default",response_code="200",connection_security_policy="mutual_tls"} 90
mesh_requests_total{reporter="destination",destination_service="catalog.default.svc.cluster.local",destination_workload="catalog-1",destination_namespace="default",response_code="503",connection_security_policy="none"} 10
mesh_requests_total{reporter="source",destination_service="orders.default.svc.cluster.local",destination_namespace="default",response_code="200"} 1000
mesh_request_duration_seconds_bucket{reporter="destination",destination_service="catalog.default.svc.cluster.local",destination_workload="catalog-1",destination_namespace="default",le="0.01"} 50
mesh_request_duration_seconds_bucket{reporter="destination",destination_service="catalog.default.svc.cluster.local",destination_workload="catalog-1",destination_namespace="default",le="0.1"} 100
mesh_request_duration_seconds_bucket{reporter="destination",destination_service="catalog.default.svc.cluster.local",destination_workload="catalog-1",destination_namespace="default",le="+Inf"} 100
mesh_tcp_connections_opened_total{reporter="destination"} 7
mesh_tcp_connections_closed_total{reporter="destination"} 4
mesh_tcp_connections_opened_total{reporter="source"} 100
"#;

    fn mesh(pages: &[(&str, &str)], grouping: Grouping) -> MeshSnapshot {
        pages
            .iter()
            .map(|(k, p)| {
                let snapshot = Snapshot::from_samples(&parse(p).unwrap(), grouping);
                (k.to_string(), snapshot)
            })
            .collect()
    }

    #[test]
    fn cumulative_rows_sum_sidecars_and_skip_source_reports() {
        let now = mesh(&[("a", PAGE), ("b", PAGE)], Grouping::Services);
        let rows = rows(None, &now, Duration::from_secs(3));
        assert_eq!(rows.len(), 1, "{rows:?}");
        let r = &rows[0];
        assert_eq!(
            (r.name.as_str(), r.namespace.as_str()),
            ("catalog.default", "default")
        );
        assert_eq!(r.meshed, 2);
        assert_eq!(r.requests, 200.0);
        assert!(close(r.success, 0.9));
        assert!(close(r.mtls, 0.9));
        assert_eq!(r.rps, None);
        assert!(close(r.p50, 0.01));
        assert!(close(r.p95, 0.01 + 0.09 * 0.9));
        // 7 opened - 4 closed inbound, at each of the two sidecars.
        assert!(close(r.tcp_connections, 6.0));
    }

    #[test]
    fn workload_rows_group_by_destination_workload() {
        let other = PAGE.replace("catalog-1", "catalog-2");
        let now = mesh(&[("a", PAGE), ("b", &other)], Grouping::Workloads);
        let rows = rows(None, &now, Duration::from_secs(3));
        let names: Vec<_> = rows.iter().map(|r| (r.name.as_str(), r.meshed)).collect();
        assert_eq!(names, [("catalog-1.default", 1), ("catalog-2.default", 1)]);
        assert!(close(rows[1].tcp_connections, 3.0));
    }

    #[test]
    fn windowed_rows_use_deltas_and_handle_resets() {
        let earlier = mesh(&[("a", PAGE), ("b", PAGE)], Grouping::Services);
        let later_page = PAGE.replace("} 90", "} 120").replace("} 100\n", "} 130\n");
        // Sidecar b restarted: its counters start again from small values.
        let reset_page = r#"mesh_requests_total{reporter="destination",destination_service="catalog.default.svc.cluster.local",destination_namespace="default",response_code="200"} 6"#;
        let now = mesh(&[("a", &later_page), ("b", reset_page)], Grouping::Services);
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
}
