//! HTTP: routing Kubernetes REST paths to the store, and streaming watches.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::resources::{self, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{ListQuery, PatchKind, Source, with_type};
use super::{RequestRecord, Shared, TokenUser};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// The audience a real API server's own tokens carry; TokenReviews without
/// `spec.audiences` are checked against it.
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| {
        q.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Percent-decoding (with `+` as space) of a query component.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed resource path.
struct Target {
    t: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn resolve(shared: &Shared, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let st = shared.state.lock().expect("state lock");
    let find = |plural: &str| st.find_type(group, version, plural);
    let sub = |s: Option<&&str>| -> Result<bool, ApiError> {
        match s {
            None => Ok(false),
            Some(&"status") => Ok(true),
            Some(_) => Err(ApiError::no_resource()),
        }
    };
    match rest {
        // /namespaces/{ns}/{plural}[/{name}[/status]] for namespaced types.
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            let t = find(plural).ok_or_else(ApiError::no_resource)?;
            if !t.namespaced || tail.len() > 2 {
                return Err(ApiError::no_resource());
            }
            Ok(Target {
                namespace: Some(ns.to_string()),
                name: tail.first().map(|s| s.to_string()),
                status: sub(tail.get(1))?,
                t,
            })
        }
        [plural, tail @ ..] if tail.len() <= 2 => {
            let t = find(plural).ok_or_else(ApiError::no_resource)?;
            if t.namespaced && !tail.is_empty() {
                return Err(ApiError::no_resource());
            }
            Ok(Target {
                namespace: None,
                name: tail.first().map(|s| s.to_string()),
                status: sub(tail.get(1))?,
                t,
            })
        }
        _ => Err(ApiError::no_resource()),
    }
}

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_string);
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let user_agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let resp = route(
        &shared,
        &method,
        &path,
        query.as_deref(),
        &content_type,
        &body,
    )
    .await
    .unwrap_or_else(|e| error_response(&e));
    let record = RequestRecord {
        method: method.to_string(),
        path,
        query: query.unwrap_or_default(),
        status: resp.status().as_u16(),
        token,
        user_agent,
    };
    shared
        .state
        .lock()
        .expect("state lock")
        .requests
        .push(record);
    Ok(resp)
}

fn parse_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    if content_type.starts_with("application/apply-patch+yaml")
        || content_type.starts_with("application/yaml")
    {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the object provided is unrecognized (must be of type JSON): {e}"
            ))
        })
    }
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let types = || shared.state.lock().expect("state lock").types.clone();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => {
            return Ok(json_response(
                200,
                &resources::api_versions(&shared.addr.to_string()),
            ));
        }
        ["apis"] => return Ok(json_response(200, &resources::api_group_list(&types()))),
        ["apis", g] => {
            return resources::api_group(&types(), g)
                .map(|v| json_response(200, &v))
                .ok_or_else(ApiError::no_resource);
        }
        ["api", v] => {
            return resources::api_resource_list(&types(), "", v)
                .map(|v| json_response(200, &v))
                .ok_or_else(ApiError::no_resource);
        }
        ["apis", g, v] => {
            return resources::api_resource_list(&types(), g, v)
                .map(|v| json_response(200, &v))
                .ok_or_else(ApiError::no_resource);
        }
        ["version"] => return Ok(json_response(200, &version_info())),
        ["healthz" | "readyz" | "livez", ..] => {
            return Ok(Response::builder()
                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from_static(b"ok")).boxed())
                .expect("valid response"));
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_resource()),
    };
    let target = resolve(shared, group, version, rest)?;
    let q = query_pairs(query);
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let t = &target.t;
    let ns = target.namespace.as_deref();
    if t.create_only {
        return match (method, &target.name) {
            (&Method::POST, None) => {
                let body = parse_body(content_type, body)?;
                Ok(json_response(201, &token_review(shared, t, &body)?))
            }
            _ => Err(ApiError::method_not_allowed(format!(
                "{} is create-only",
                t.qualified()
            ))),
        };
    }
    let selectors = || -> Result<(LabelSelector, FieldSelector), ApiError> {
        let label = LabelSelector::parse(&param("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        let field = FieldSelector::parse(&param("fieldSelector").unwrap_or_default(), &t.kind)
            .map_err(ApiError::bad_request)?;
        Ok((label, field))
    };
    let st = || shared.state.lock().expect("state lock");
    match (method, target.name.as_deref()) {
        (&Method::GET, None) => {
            let (label, field) = selectors()?;
            if matches!(param("watch").as_deref(), Some("true" | "1")) {
                return Ok(start_watch(shared, t.clone(), ns, label, field, &param));
            }
            let lq = ListQuery {
                label,
                field,
                resource_version: param("resourceVersion"),
                resource_version_match: param("resourceVersionMatch"),
                limit: param("limit")
                    .map(|l| l.parse::<usize>())
                    .transpose()
                    .map_err(|_| ApiError::bad_request("limit must be a number"))?,
                continue_token: param("continue"),
            };
            Ok(json_response(200, &st().list(t, ns, &lq)?))
        }
        (&Method::POST, None) => {
            let body = parse_body(content_type, body)?;
            let out = st().create(t, ns, body, Source::Client)?;
            shared.notify();
            Ok(json_response(201, &with_type(t, &out)))
        }
        (&Method::DELETE, None) => {
            let (label, field) = selectors()?;
            let mut s = st();
            let all = s.list(
                t,
                ns,
                &ListQuery {
                    label,
                    field,
                    ..Default::default()
                },
            )?;
            let mut deleted = Vec::new();
            for item in all["items"].as_array().into_iter().flatten() {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                let item_ns = item["metadata"]["namespace"].as_str();
                deleted.push(s.delete(t, item_ns, name, &Value::Null)?);
            }
            let rv = s.rv;
            drop(s);
            shared.notify();
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
            ))
        }
        (&Method::GET, Some(name)) => Ok(json_response(200, &st().get(t, ns, name)?)),
        (&Method::PUT, Some(name)) => {
            let body = parse_body(content_type, body)?;
            let out = st().replace(t, ns, name, body, target.status)?;
            shared.notify();
            Ok(json_response(200, &out))
        }
        (&Method::PATCH, Some(name)) => {
            let kind = PatchKind::from_content_type(content_type).ok_or_else(|| {
                ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type})"
                ))
            })?;
            if kind == PatchKind::Apply && param("fieldManager").is_none_or(|f| f.is_empty()) {
                return Err(ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
                    details: None,
                });
            }
            let patch = parse_body(content_type, body)?;
            let out = st().patch(t, ns, name, kind, &patch, target.status)?;
            shared.notify();
            Ok(json_response(200, &out))
        }
        (&Method::DELETE, Some(name)) => {
            let opts = parse_body("application/json", body).unwrap_or(Value::Null);
            let out = st().delete(t, ns, name, &opts["preconditions"])?;
            shared.notify();
            Ok(json_response(200, &out))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {method} {path}"
        ))),
    }
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0",
        "gitCommit": "mesh-tests",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `TokenReview` create: authenticates `spec.token` against the tokens tests
/// registered, intersecting audiences like the real service-account authenticator.
fn token_review(shared: &Shared, t: &ResourceType, body: &Value) -> Result<Value, ApiError> {
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_string()]);
    let user: Option<TokenUser> = shared
        .state
        .lock()
        .expect("state lock")
        .tokens
        .get(token)
        .cloned();
    let status = match user {
        None => json!({
            "user": {},
            "error": "[invalid bearer token, square/go-jose: compact JWS format must have three parts]"
        }),
        Some(u) => {
            let has: Vec<String> = if u.audiences.is_empty() {
                vec![DEFAULT_AUDIENCE.to_string()]
            } else {
                u.audiences.clone()
            };
            let both: Vec<String> = wanted.iter().filter(|a| has.contains(a)).cloned().collect();
            if both.is_empty() {
                json!({
                    "user": {},
                    "error": format!(
                        "[invalid bearer token, token audiences {has:?} is invalid for the target audiences {wanted:?}]"
                    )
                })
            } else {
                let mut user = json!({"username": u.username, "uid": u.uid, "groups": u.groups});
                if !u.extra.is_empty() {
                    user["extra"] = json!(u.extra);
                }
                json!({"authenticated": true, "user": user, "audiences": both})
            }
        }
    };
    let mut spec = body["spec"].clone();
    if spec.is_null() {
        spec = json!({});
    }
    Ok(json!({
        "kind": t.kind,
        "apiVersion": t.api_version(),
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    }))
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Opens a watch: a 200 chunked stream of one JSON event per line.
fn start_watch(
    shared: &Arc<Shared>,
    t: ResourceType,
    ns: Option<&str>,
    label: LabelSelector,
    field: FieldSelector,
    param: &dyn Fn(&str) -> Option<String>,
) -> Response<Body> {
    let rv = param("resourceVersion").filter(|s| !s.is_empty());
    let bookmarks = param("allowWatchBookmarks").as_deref() == Some("true");
    let send_initial = param("sendInitialEvents").as_deref() == Some("true");
    let timeout = param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let ns = ns.map(str::to_string);
    // Subscribe before reading the state so no write between the two is missed.
    let mut changed = shared.changes.subscribe();
    let (mut first, last, epoch) = {
        let st = shared.state.lock().expect("state lock");
        let mut first = Vec::new();
        let mut last = st.rv;
        match rv.as_deref() {
            None | Some("0") => {
                first = st.initial_events(&t, ns.as_deref(), &label, &field);
            }
            Some(r) if send_initial => {
                let _ = r;
                first = st.initial_events(&t, ns.as_deref(), &label, &field);
            }
            Some(r) => match r.parse::<u64>() {
                Ok(r) if r < st.compacted => {
                    first.push(json!({"type": "ERROR", "object": ApiError::expired(
                        format!("too old resource version: {r} ({})", st.compacted)).to_status()}));
                    last = u64::MAX;
                }
                Ok(r) => {
                    first = st.events_after(&t, ns.as_deref(), &label, &field, r);
                }
                Err(_) => {
                    first.push(json!({"type": "ERROR", "object":
                        ApiError::bad_request(format!("invalid resource version: {r:?}")).to_status()}));
                    last = u64::MAX;
                }
            },
        }
        (first, last, st.epoch)
    };
    let bookmark = {
        let (kind, api_version) = (t.kind.clone(), t.api_version());
        move |rv: u64, initial_end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": meta}})
        }
    };
    let failed = last == u64::MAX;
    if send_initial && !failed {
        first.push(bookmark(last, true));
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let shared = shared.clone();
    let interval = shared.bookmark_interval();
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let _guard = WatchGuard(shared.clone());
        for e in &first {
            if tx.send(Ok(Frame::data(line(e)))).await.is_err() {
                return;
            }
        }
        if failed {
            return;
        }
        let mut last = last;
        let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tick.tick(), if bookmarks => {
                    if tx.send(Ok(Frame::data(line(&bookmark(last, false))))).await.is_err() {
                        return;
                    }
                    continue;
                }
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => return,
                _ = tx.closed() => return,
            }
            let (events, ended) = {
                let st = shared.state.lock().expect("state lock");
                if st.epoch != epoch || st.closed {
                    (Vec::new(), true)
                } else {
                    let ev = st.events_after(&t, ns.as_deref(), &label, &field, last);
                    last = st.rv;
                    (ev, false)
                }
            };
            for e in &events {
                if tx.send(Ok(Frame::data(line(e)))).await.is_err() {
                    return;
                }
            }
            if ended {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("valid response")
}

struct WatchGuard(Arc<Shared>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}
