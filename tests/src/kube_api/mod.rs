//! A faithful in-process Kubernetes API server for tests.
//!
//! No real API server can run on the machines that test the mesh, so the
//! Kubernetes registry, the injection webhook's clients and meshctl are tested
//! against this one: plain HTTP/1.1 on `127.0.0.1:<free port>`, the real JSON
//! shapes, one global `resourceVersion`, LIST with selectors and pagination, WATCH
//! with history, bookmarks and `410 Gone` after a simulated compaction, optimistic
//! concurrency (409), TokenReview and discovery. kube-rs and client-go talk to it
//! through the kubeconfig [`KubeApi::write_kubeconfig`] writes.
//!
//! ```no_run
//! # async fn demo() {
//! use mesh_tests::kube_api::KubeApi;
//! let api = KubeApi::start().await;
//! api.load_fixtures(&KubeApi::fixtures_dir());
//! let dir = std::env::temp_dir();
//! api.write_kubeconfig(&dir.join("kubeconfig")).unwrap();
//! api.patch("v1", "Namespace", None, "legacy",
//!     serde_json::json!({"metadata": {"labels": {"mesh.io/inject": "enabled"}}}));
//! api.compact(); // every watcher relists
//! # }
//! ```
//!
//! Semantics follow the real server where a client could tell the difference,
//! as `tests/tests/kube_api.rs` shows with kube-rs: list items without `kind`,
//! `DELETED` events carrying the deletion's resourceVersion, selector watches
//! turning "starts matching" into `ADDED` and "stops matching" into `DELETED`
//! (the watch cache's behaviour), `ERROR` 410 events for too-old watches, no-op
//! updates that write nothing, status kept out of main-resource writes, 422 for
//! custom-resource updates without a resourceVersion. Known simplifications: deletion is immediate
//! (no finalizers, no `deletionTimestamp`, namespaces vanish with their
//! contents at once), strategic merge patch and server-side apply merge like a
//! JSON merge patch (lists are replaced, no field ownership), no admission
//! webhooks are called, no RBAC, no protobuf, no aggregated discovery.

mod patch;
mod resources;
mod selector;
mod server;
mod status;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;

pub use resources::ResourceType;
pub use selector::{FieldSelector, LabelSelector};
pub use server::DEFAULT_AUDIENCE;
pub use status::ApiError;

use store::{PatchKind, Source, Store};

/// The identity a TokenReview returns for a token tests registered, so the
/// controller's `Certify` path can be tested with real TokenReview round trips.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenUser {
    /// `status.user.username`, e.g. `system:serviceaccount:demo:reviews`.
    pub username: String,
    /// `status.user.uid`.
    pub uid: String,
    /// `status.user.groups`.
    pub groups: Vec<String>,
    /// Audiences the token was issued for; empty means the API server's own
    /// ([`DEFAULT_AUDIENCE`]). A review succeeds only if it asks for one of them.
    pub audiences: Vec<String>,
    /// `status.user.extra` (pod name and uid for projected tokens).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl TokenUser {
    /// The user a projected token of service account `sa` in `namespace` maps to,
    /// with the groups a real cluster adds.
    pub fn service_account(namespace: &str, sa: &str, audiences: &[&str]) -> Self {
        TokenUser {
            username: format!("system:serviceaccount:{namespace}:{sa}"),
            uid: store::uuid(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            audiences: audiences.iter().map(|s| s.to_string()).collect(),
            extra: BTreeMap::new(),
        }
    }
}

/// One request the server answered, for tests that assert how a client talks to
/// the API (which selectors it used, that it watched, that it authenticated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The raw query string (empty if none).
    pub query: String,
    /// The HTTP status answered (200 for watches, whatever they stream).
    pub status: u16,
    /// The bearer token sent, if any.
    pub token: Option<String>,
    /// The client's User-Agent.
    pub user_agent: Option<String>,
}

impl RequestRecord {
    /// Whether this was a watch request.
    pub fn is_watch(&self) -> bool {
        self.query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1")
    }
}

/// State shared by the server's connections and the test's handle.
pub(crate) struct Shared {
    state: Mutex<Store>,
    changes: tokio::sync::watch::Sender<()>,
    addr: SocketAddr,
    open_watches: AtomicUsize,
    bookmark_ms: AtomicU64,
}

impl Shared {
    /// Wakes every watch to look for new events (or for the end of its epoch).
    fn notify(&self) {
        self.changes.send_replace(());
    }

    fn bookmark_interval(&self) -> Duration {
        Duration::from_millis(self.bookmark_ms.load(Ordering::Relaxed).max(10))
    }
}

/// A running test API server; stops (ending every watch) when dropped.
pub struct KubeApi {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi")
            .field("addr", &self.shared.addr)
            .finish()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.closed = true;
            st.epoch += 1;
        }
        self.shared.notify();
        self.task.abort();
    }
}

impl KubeApi {
    /// The bearer token the kubeconfig carries; any token (or none) is accepted.
    pub const TOKEN: &'static str = "mesh-test-admin-token";

    /// Starts a server on a free port of 127.0.0.1 with the namespaces every
    /// cluster has (`default`, `kube-system`, `kube-public`, `kube-node-lease`)
    /// and the `default/kubernetes` Service.
    pub async fn start() -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test API server");
        let addr = listener.local_addr().expect("local address");
        let (changes, _) = tokio::sync::watch::channel(());
        let shared = Arc::new(Shared {
            state: Mutex::new(Store::new()),
            changes,
            addr,
            open_watches: AtomicUsize::new(0),
            bookmark_ms: AtomicU64::new(1000),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| server::handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        KubeApi { shared, task }
    }

    fn state(&self) -> MutexGuard<'_, Store> {
        self.shared.state.lock().expect("state lock")
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`, the kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig (cluster, user with [`KubeApi::TOKEN`], context `mesh-test`
    /// with namespace `default`) pointing at this server.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mesh-test\n  cluster:\n    server: {url}\nusers:\n- name: mesh-test\n  user:\n    token: {token}\ncontexts:\n- name: mesh-test\n  context:\n    cluster: mesh-test\n    user: mesh-test\n    namespace: default\ncurrent-context: mesh-test\npreferences: {{}}\n",
            url = self.url(),
            token = Self::TOKEN
        )
    }

    /// Writes [`KubeApi::kubeconfig_yaml`] to `path`, for `--kubeconfig PATH` or
    /// `KUBECONFIG=PATH`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    fn type_of(&self, obj: &Value) -> Result<ResourceType, ApiError> {
        let (av, kind) = (
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
        );
        self.type_named(av, kind)
    }

    fn type_named(&self, api_version: &str, kind: &str) -> Result<ResourceType, ApiError> {
        self.state().type_for(api_version, kind).ok_or_else(|| {
            ApiError::bad_request(format!(
                "no resource serves apiVersion {api_version:?} kind {kind:?}"
            ))
        })
    }

    fn namespace_of(t: &ResourceType, obj: &Value) -> Option<String> {
        t.namespaced.then(|| {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        })
    }

    fn after_write<T>(&self, r: Result<T, ApiError>) -> Result<T, ApiError> {
        self.shared.notify();
        r
    }

    /// Seeds an object as the cluster's state (`apiVersion` and `kind` pick the
    /// resource; a namespaced object without a namespace goes to `default`).
    /// Unlike a client's create, `status`, `uid` and `creationTimestamp` given in
    /// the object are kept, so fixtures look as a cluster returns them.
    pub fn try_create(&self, obj: Value) -> Result<Value, ApiError> {
        let t = self.type_of(&obj)?;
        let ns = Self::namespace_of(&t, &obj);
        let r = self
            .state()
            .create(&t, ns.as_deref(), obj, Source::Seed)
            .map(|o| store::with_type(&t, &o));
        self.after_write(r)
    }

    /// [`KubeApi::try_create`], panicking with the API error.
    pub fn create(&self, obj: Value) -> Value {
        self.try_create(obj)
            .unwrap_or_else(|e| panic!("create: {e}"))
    }

    /// Replaces an object (PUT semantics, including status): a stale
    /// `metadata.resourceVersion` is a 409 Conflict; none means unconditional.
    pub fn try_replace(&self, obj: Value) -> Result<Value, ApiError> {
        let t = self.type_of(&obj)?;
        let ns = Self::namespace_of(&t, &obj);
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut st = self.state();
        let mut obj = obj;
        if t.custom && obj["metadata"]["resourceVersion"].is_null() {
            obj["metadata"]["resourceVersion"] =
                st.get(&t, ns.as_deref(), &name)?["metadata"]["resourceVersion"].clone();
        }
        let r = st.replace(&t, ns.as_deref(), &name, obj.clone(), false);
        let r = match r {
            Ok(_) if t.status_subresource && obj.get("status").is_some() => {
                st.replace(&t, ns.as_deref(), &name, obj, true)
            }
            r => r,
        };
        drop(st);
        self.after_write(r)
    }

    /// Creates the object, or replaces it unconditionally if it exists (what
    /// `kubectl apply` amounts to for a test).
    pub fn apply(&self, obj: Value) -> Value {
        let mut obj = obj;
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        match self.try_create(obj.clone()) {
            Err(e) if e.reason == "AlreadyExists" => self.try_replace(obj),
            r => r,
        }
        .unwrap_or_else(|e| panic!("apply: {e}"))
    }

    /// Applies a JSON merge patch to an object, as `kubectl patch --type merge`
    /// would: for types with a status subresource the status is left alone (use
    /// [`KubeApi::patch_status`]). Panics if the object does not exist.
    pub fn patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        merge_patch: Value,
    ) -> Value {
        self.patch_inner(api_version, kind, namespace, name, merge_patch, false)
    }

    /// Merge-patches an object's `/status` (the kubelet setting a pod's IP, a
    /// controller reporting conditions).
    pub fn patch_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        merge_patch: Value,
    ) -> Value {
        self.patch_inner(api_version, kind, namespace, name, merge_patch, true)
    }

    fn patch_inner(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        merge_patch: Value,
        status: bool,
    ) -> Value {
        let r = self.type_named(api_version, kind).and_then(|t| {
            self.state()
                .patch(&t, namespace, name, PatchKind::Merge, &merge_patch, status)
        });
        self.after_write(r)
            .unwrap_or_else(|e| panic!("patch {kind} {name}: {e}"))
    }

    /// Deletes an object; `None` if it did not exist.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let t = self.type_named(api_version, kind).ok()?;
        let r = self.state().delete(&t, namespace, name, &Value::Null);
        self.after_write(r).ok()
    }

    /// The stored object, with `kind` and `apiVersion`.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let t = self.type_named(api_version, kind).ok()?;
        self.state().get(&t, namespace, name).ok()
    }

    /// All objects of a type (in `namespace`, or everywhere), with `kind` and
    /// `apiVersion`, in etcd key order.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(t) = self.type_named(api_version, kind) else {
            return Vec::new();
        };
        let list = self
            .state()
            .list(&t, namespace, &store::ListQuery::default())
            .expect("list current state");
        list["items"]
            .as_array()
            .map(|a| a.iter().map(|o| store::with_type(&t, o)).collect())
            .unwrap_or_default()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    /// Simulated etcd compaction: every resourceVersion handed out so far
    /// becomes too old (watches from it get an `ERROR` event with a 410
    /// `Expired` Status, exact lists and continue tokens a 410), and open watches
    /// end, as when an API server restarts after compaction. Clients resume
    /// their watch from the version they had, get the 410 and must relist.
    pub fn compact(&self) {
        self.state().compact();
        self.shared.notify();
    }

    /// Ends every open watch without compacting (an API server restart or a
    /// dropped connection): clients resume from their last resourceVersion.
    pub fn close_watches(&self) {
        self.state().epoch += 1;
        self.shared.notify();
    }

    /// How many watch streams are open right now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` watches are open (a controller has synced and
    /// is watching), panicking after `timeout`.
    pub async fn wait_for_watches(&self, n: usize, timeout: Duration) {
        crate::eventually(&format!("{n} open watches"), timeout, || async {
            (self.open_watches() >= n).then_some(())
        })
        .await
    }

    /// How often watches that asked for bookmarks get one (default 1 s).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.shared
            .bookmark_ms
            .store(every.as_millis() as u64, Ordering::Relaxed);
    }

    /// Makes TokenReviews of `token` succeed as `user` (for the audiences in
    /// `user.audiences`); any other token is refused with `status.error`.
    pub fn token_review_allow(&self, token: &str, user: TokenUser) {
        self.state().tokens.insert(token.to_string(), user);
    }

    /// Makes `token` unknown again (a deleted service account or pod).
    pub fn token_review_revoke(&self, token: &str) {
        self.state().tokens.remove(token);
    }

    /// Issues a random token for service account `sa` in `namespace`, valid for
    /// `audiences`, as a projected service-account token would be.
    pub fn service_account_token(&self, namespace: &str, sa: &str, audiences: &[&str]) -> String {
        let token = format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.{}",
            store::uuid().replace('-', ""),
            store::uuid().replace('-', "")
        );
        self.token_review_allow(&token, TokenUser::service_account(namespace, sa, audiences));
        token
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests.clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Serves an extra resource type (one a test needs that is not built in).
    pub fn register_resource(&self, t: ResourceType) {
        self.state().register(t);
    }

    /// `tests/fixtures/kubernetes`: objects as a real cluster returns them.
    pub fn fixtures_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kubernetes")
    }

    /// Seeds every `*.json` file in `dir` (one object, or a `List` of them):
    /// namespaces and CRDs first, then the rest in file-name order. Returns the
    /// stored objects; panics on unreadable or unservable files.
    pub fn load_fixtures(&self, dir: &Path) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read fixtures {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let mut objs = Vec::new();
        for f in files {
            let text =
                std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", f.display()));
            if v["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
                objs.extend(v["items"].as_array().cloned().unwrap_or_default());
            } else {
                objs.push(v);
            }
        }
        let rank = |o: &Value| match o["kind"].as_str() {
            Some("Namespace") => 0,
            Some("CustomResourceDefinition") => 1,
            _ => 2,
        };
        objs.sort_by_key(rank);
        objs.into_iter()
            .map(|o| {
                let what = format!("{} {}", o["kind"], o["metadata"]["name"]);
                self.try_create(o)
                    .unwrap_or_else(|e| panic!("fixture {what}: {e}"))
            })
            .collect()
    }
}
