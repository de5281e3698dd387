//! A small parser for the Prometheus / OpenMetrics text exposition format.
//!
//! `meshctl` reads sidecar `/metrics` pages itself (no Prometheus server needed for
//! `up` and `stat`), so it needs only samples: `name{labels} value`. Comments, `# TYPE`
//! and `# HELP` lines, timestamps and OpenMetrics exemplars are accepted and ignored.

use std::collections::BTreeMap;

/// One sample: a series (name and labels) and its current value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name as exposed, e.g. `mesh_request_duration_seconds_bucket`.
    pub name: String,
    /// The series' labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// The value; `+Inf`, `-Inf` and `NaN` are allowed.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or `""` when absent (as PromQL treats it).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Why a metrics page could not be read, with the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number in the page.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

/// Parses a whole exposition page into samples, in page order.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|reason| ParseError {
            line: index + 1,
            reason,
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| format!("no value after {line:?}"))?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    // OpenMetrics exemplars follow ` # `; they are not part of the value.
    let rest = rest.split(" # ").next().unwrap_or_default();
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("missing value for {name}"))?;
    let value = parse_value(value).ok_or_else(|| format!("invalid value {value:?}"))?;
    // An optional timestamp may follow; anything more is an error.
    if let Some(ts) = fields.next() {
        ts.parse::<f64>()
            .map_err(|_| format!("unexpected text {ts:?} after value"))?;
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected text {extra:?} after timestamp"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Reads `a="x",b="y"}` into `labels`; returns what follows the closing brace.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        if !valid_name(key) {
            return Err(format!("invalid label name {key:?}"));
        }
        s = s[eq + 1..].trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key} value is not quoted"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value for label {key}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated value for label {key}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses a sample value, including the special spellings Prometheus uses.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_histograms_and_comments() {
        let page = r#"# HELP mesh_requests Requests.
# TYPE mesh_requests counter
mesh_requests_total{reporter="destination",destination_service="catalog.default.svc.cluster.local",response_code="200"} 42
mesh_request_duration_seconds_bucket{le="0.005",reporter="destination"} 3
mesh_request_duration_seconds_bucket{le="+Inf",reporter="destination"} 7.0
process_start_time_seconds 1.7e9
# EOF
"#;
        let samples = parse(page).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].name, "mesh_requests_total");
        assert_eq!(samples[0].label("response_code"), "200");
        assert_eq!(samples[0].label("missing"), "");
        assert_eq!(samples[0].value, 42.0);
        assert_eq!(samples[2].label("le"), "+Inf");
        assert_eq!(samples[3].value, 1.7e9);
        assert!(samples[3].labels.is_empty());
    }

    #[test]
    fn escapes_timestamps_exemplars_and_special_values() {
        let page = "a{x=\"q\\\"uo\\\\te\\n\",y=\"}{,\",} 1 1700000000000\n\
                    b_total 5 # {trace_id=\"abc\"} 1.0\n\
                    c NaN\nd -Inf\ne{} +Inf\n";
        let s = parse(page).unwrap();
        assert_eq!(s[0].label("x"), "q\"uo\\te\n");
        assert_eq!(s[0].label("y"), "}{,");
        assert_eq!(s[0].value, 1.0);
        assert_eq!(s[1].value, 5.0);
        assert!(s[2].value.is_nan());
        assert_eq!(s[3].value, f64::NEG_INFINITY);
        assert_eq!(s[4].value, f64::INFINITY);
    }

    #[test]
    fn errors_name_the_line() {
        for bad in [
            "ok 1\nbroken{a=\"x\" 1\n",
            "ok 1\nno_value\n",
            "ok 1\nv{a=x} 1\n",
            "ok 1\nv abc\n",
            "ok 1\n9bad 1\n",
            "ok 1\nv{a=\"x} 1\n",
            "ok 1\nv 1 2 3\n",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.line, 2, "{bad:?}: {e}");
            assert!(e.to_string().starts_with("metrics line 2:"), "{e}");
        }
    }
}
