//! `meshctl stat --prometheus URL`: the same rows, computed by a Prometheus server
//! with PromQL over a window, through its HTTP API (`/api/v1/query`).
//!
//! The queries need nothing from the scrape configuration but the `instance` label
//! every target has: open connections are per sidecar, and are attributed to the
//! services or workloads that sidecar received requests for by joining on it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::scrape::GroupKey;
use super::{Grouping, Row};
use crate::http_client::HttpClient;

/// Why a query failed, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No connection, or no answer in time.
    #[error("cannot reach Prometheus at {base}: {error}")]
    Unreachable {
        /// The server's base URL.
        base: String,
        /// What went wrong.
        error: crate::http_client::ClientError,
    },
    /// Prometheus refused the query (its `error` field), or answered garbage.
    #[error("Prometheus at {base} failed {query:?}: {reason}")]
    Failed {
        /// The server's base URL.
        base: String,
        /// The PromQL expression.
        query: String,
        /// What Prometheus said, or why its answer was unreadable.
        reason: String,
    },
}

/// One series of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// The value (`NaN` when Prometheus says so, e.g. a quantile of nothing).
    pub value: f64,
}

impl Series {
    /// The value of label `name`, or `""`.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<AnswerData>,
}

#[derive(Deserialize)]
struct AnswerData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<AnswerSeries>,
}

#[derive(Deserialize)]
struct AnswerSeries {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// A Prometheus server's query API.
#[derive(Debug, Clone)]
pub struct Prometheus {
    base: String,
    client: HttpClient,
}

impl Prometheus {
    /// A client for `base` (`http://host:9090` or `host:9090`).
    pub fn new(base: &str) -> Prometheus {
        Prometheus {
            base: crate::controller::normalize_base(base),
            client: HttpClient::direct(),
        }
    }

    /// Evaluates `query` at `at` (Unix seconds; the server's now when `None`); it
    /// must yield an instant vector. Queries whose results are combined are given the
    /// same `at`, so that they describe the same window.
    pub async fn query(&self, query: &str, at: Option<f64>) -> Result<Vec<Series>, QueryError> {
        let mut url = format!("{}/api/v1/query?query={}", self.base, percent_encode(query));
        if let Some(at) = at {
            url.push_str(&format!("&time={at:.3}"));
        }
        let reply = self
            .client
            .get(&url, Duration::from_secs(10))
            .await
            .map_err(|error| QueryError::Unreachable {
                base: self.base.clone(),
                error,
            })?;
        let failed = |reason: String| QueryError::Failed {
            base: self.base.clone(),
            query: query.to_string(),
            reason,
        };
        let answer: Answer = serde_json::from_slice(&reply.body).map_err(|e| {
            failed(format!(
                "status {}, unreadable answer: {e}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body).trim()
            ))
        })?;
        if answer.status != "success" {
            return Err(failed(answer.error.unwrap_or(answer.status)));
        }
        let data = answer
            .data
            .ok_or_else(|| failed("no data in the answer".into()))?;
        if data.result_type != "vector" {
            return Err(failed(format!(
                "a {} instead of a vector",
                data.result_type
            )));
        }
        Ok(data
            .result
            .into_iter()
            .map(|s| Series {
                labels: s.metric,
                value: crate::prom::parse_value(&s.value.1).unwrap_or(f64::NAN),
            })
            .collect())
    }
}

/// `application/x-www-form-urlencoded` escaping of a query parameter.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The PromQL expressions behind each column, for one grouping, namespace and window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queries {
    /// Requests in the window.
    pub requests: String,
    /// Non-5xx requests in the window.
    pub success: String,
    /// Mutual-TLS requests in the window.
    pub mtls: String,
    /// Requests per second over the window.
    pub rps: String,
    /// p50, p95 and p99 latency over the window.
    pub quantiles: [String; 3],
    /// Sidecars that received requests for the group.
    pub meshed: String,
    /// Open inbound connections at those sidecars.
    pub tcp_connections: String,
}

impl Queries {
    /// Builds every expression.
    pub fn new(grouping: Grouping, namespace: Option<&str>, window: Duration) -> Queries {
        let by = format!("{}, destination_namespace", grouping.label());
        let mut filter = r#"reporter="destination""#.to_string();
        if let Some(ns) = namespace {
            filter.push_str(&format!(
                r#",destination_namespace="{}""#,
                ns.replace('"', "")
            ));
        }
        let w = format!("{}s", window.as_secs().max(1));
        let increase = |extra: &str| {
            format!("sum by ({by}) (increase(mesh_requests_total{{{filter}{extra}}}[{w}]))")
        };
        let quantile = |q: f64| {
            format!(
                "histogram_quantile({q}, sum by ({by}, le) (rate(mesh_request_duration_seconds_bucket{{{filter}}}[{w}])))"
            )
        };
        let serving = format!("group by (instance, {by}) (mesh_requests_total{{{filter}}})");
        // A sidecar that never closed a connection has no closed series yet: count 0.
        let opened =
            r#"sum by (instance) (mesh_tcp_connections_opened_total{reporter="destination"})"#;
        let closed =
            r#"sum by (instance) (mesh_tcp_connections_closed_total{reporter="destination"})"#;
        let open = format!("({opened} - ({closed} or {opened} * 0))");
        Queries {
            requests: increase(""),
            success: increase(r#",response_code!~"5..""#),
            mtls: increase(r#",connection_security_policy="mutual_tls""#),
            rps: format!("sum by ({by}) (rate(mesh_requests_total{{{filter}}}[{w}]))"),
            quantiles: [quantile(0.5), quantile(0.95), quantile(0.99)],
            meshed: format!("count by ({by}) ({serving})"),
            tcp_connections: format!(
                "sum by ({by}) ({open} * on (instance) group_right () {serving})"
            ),
        }
    }
}

/// Computes the rows from Prometheus: one per group with requests in the window.
pub async fn rows(
    server: &Prometheus,
    grouping: Grouping,
    namespace: Option<&str>,
    window: Duration,
) -> Result<Vec<Row>, QueryError> {
    let q = Queries::new(grouping, namespace, window);
    let exprs = [
        &q.requests,
        &q.success,
        &q.mtls,
        &q.rps,
        &q.quantiles[0],
        &q.quantiles[1],
        &q.quantiles[2],
        &q.meshed,
        &q.tcp_connections,
    ];
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let answers = futures::future::join_all(exprs.iter().map(|e| server.query(e, Some(at)))).await;
    let mut columns = Vec::with_capacity(answers.len());
    for answer in answers {
        let by_key: BTreeMap<GroupKey, f64> = answer?
            .into_iter()
            .filter(|s| s.value.is_finite())
            .map(|s| {
                let key = GroupKey::of(
                    grouping,
                    s.label(grouping.label()),
                    s.label("destination_namespace"),
                );
                (key, s.value)
            })
            .collect();
        columns.push(by_key);
    }
    let get = |column: usize, key: &GroupKey| columns[column].get(key).copied();
    Ok(columns[0]
        .iter()
        .map(|(key, &requests)| {
            let share =
                |column| (requests > 0.0).then(|| get(column, key).unwrap_or(0.0) / requests);
            Row {
                name: super::short_name(&key.name),
                namespace: key.namespace.clone(),
                meshed: get(7, key).map_or(0, |n| n as usize),
                requests,
                success: share(1),
                mtls: share(2),
                rps: get(3, key),
                p50: get(4, key),
                p95: get(5, key),
                p99: get(6, key),
                tcp_connections: get(8, key),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_filter_group_and_window() {
        let q = Queries::new(Grouping::Workloads, Some("shop"), Duration::from_secs(300));
        assert_eq!(
            q.success,
            r#"sum by (destination_workload, destination_namespace) (increase(mesh_requests_total{reporter="destination",destination_namespace="shop",response_code!~"5.."}[300s]))"#
        );
        assert!(q.quantiles[1].starts_with("histogram_quantile(0.95, sum by (destination_workload, destination_namespace, le) (rate(mesh_request_duration_seconds_bucket{"));
        let q = Queries::new(Grouping::Services, None, Duration::from_millis(10));
        assert!(
            q.rps
                .ends_with(r#"(rate(mesh_requests_total{reporter="destination"}[1s]))"#),
            "{}",
            q.rps
        );
        assert!(q.tcp_connections.contains("* on (instance) group_right () group by (instance, destination_service, destination_namespace)"));
    }

    #[test]
    fn encodes_query_parameters() {
        assert_eq!(
            percent_encode(r#"a{b="c d"}[5m]"#),
            "a%7Bb%3D%22c%20d%22%7D%5B5m%5D"
        );
        assert_eq!(percent_encode("x+y/z"), "x%2By%2Fz");
    }
}
