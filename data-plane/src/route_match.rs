//! Per-request route evaluation: does a request meet a route's conditions, and the
//! route's header edits, compiled once per config so a request only compares and
//! inserts.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::decode::{HeaderEdits, RequestMatch};

/// What route matching reads from a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// The view of a request's parts.
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method,
            path: uri.path(),
            query: uri.query(),
            headers,
        }
    }
}

impl RequestMatch {
    /// Whether `req` meets every condition. Several values of one header are
    /// compared joined by `,`, as Envoy does; a query parameter's first
    /// occurrence counts, compared as sent (not percent-decoded).
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path)
            && self.headers.iter().all(|(name, value)| {
                if name == ":method" {
                    return req.method.as_str() == value;
                }
                header_equals(req.headers, name, value)
            })
            && self
                .query
                .iter()
                .all(|(name, value)| query_value(req.query, name) == Some(value.as_str()))
    }
}

fn header_equals(headers: &HeaderMap, name: &str, value: &str) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    match values.next() {
        None => first.as_bytes() == value.as_bytes(),
        Some(second) => {
            let mut joined = Vec::with_capacity(value.len());
            for v in [first, second].into_iter().chain(values) {
                if !joined.is_empty() {
                    joined.push(b',');
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined == value.as_bytes()
        }
    }
}

fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// A route's header edits as header names and values, ready to apply.
#[derive(Debug, Clone, Default)]
pub struct CompiledEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    append: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl CompiledEdits {
    /// Compiles `edits` (names and values were checked when decoded).
    pub fn compile(edits: &HeaderEdits) -> CompiledEdits {
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        CompiledEdits {
            set: pairs(&edits.set),
            append: pairs(&edits.append),
            remove: edits
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.append.is_empty() && self.remove.is_empty()
    }

    /// Removes, then sets, then appends (Gateway API keeps the three lists'
    /// names apart, so the order only matters for hand-written xDS).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.append {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::PathMatch;

    fn matcher(headers: &[(&str, &str)], query: &[(&str, &str)]) -> RequestMatch {
        let own = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        RequestMatch {
            path: PathMatch::Prefix("/api/".into()),
            headers: own(headers),
            query: own(query),
        }
    }

    fn check(m: &RequestMatch, method: Method, uri: &str, headers: &[(&str, &str)]) -> bool {
        let uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m.matches(&RequestView::new(&method, &uri, &map))
    }

    #[test]
    fn path_method_headers_and_query() {
        let m = matcher(&[(":method", "GET"), ("x-canary", "yes")], &[("v", "2")]);
        let ok = [("x-canary", "yes")];
        assert!(check(&m, Method::GET, "/api/items?a=1&v=2", &ok));
        assert!(!check(&m, Method::POST, "/api/items?v=2", &ok), "method");
        assert!(
            !check(&m, Method::GET, "/api/items?v=3", &ok),
            "query value"
        );
        assert!(!check(&m, Method::GET, "/api/items", &ok), "no query");
        assert!(!check(&m, Method::GET, "/other?v=2", &ok), "path");
        assert!(
            !check(&m, Method::GET, "/api/items?v=2", &[]),
            "header missing"
        );
        assert!(
            !check(&m, Method::GET, "/api/items?v=2", &[("x-canary", "YES")]),
            "values are case-sensitive"
        );
        let joined = matcher(&[("x-a", "1,2")], &[]);
        assert!(check(
            &joined,
            Method::GET,
            "/api/",
            &[("x-a", "1"), ("x-a", "2")]
        ));
    }

    #[test]
    fn edits_remove_set_append() {
        let edits = CompiledEdits::compile(&HeaderEdits {
            set: vec![("x-set".into(), "new".into())],
            append: vec![("x-add".into(), "2".into())],
            remove: vec!["x-gone".into()],
        });
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("1"));
        h.insert("x-gone", HeaderValue::from_static("bye"));
        edits.apply(&mut h);
        assert_eq!(h.get("x-set").unwrap(), "new");
        let added: Vec<_> = h.get_all("x-add").iter().collect();
        assert_eq!(added, ["1", "2"]);
        assert!(h.get("x-gone").is_none());
    }
}
