//! The server's "etcd": objects, one global resourceVersion, the retained event
//! history watches resume from, and compaction.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use super::resources::{self, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::{RequestRecord, TokenUser};

/// Where an object lives: storage is per group and resource, not per version,
/// as in a real server (every served version reads the same objects).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ObjKey {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    fn new(t: &ResourceType, namespace: &str, name: &str) -> Self {
        ObjKey {
            group: t.group.clone(),
            plural: t.plural.clone(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    fn same_resource(&self, t: &ResourceType) -> bool {
        self.group == t.group && self.plural == t.plural
    }

    /// The etcd-style key suffix pagination orders and resumes by.
    fn sort_key(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

/// What a write did, as a watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One retained write: the object after it (for a delete, its last state stamped
/// with the deletion's resourceVersion) and before it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub key: ObjKey,
    pub kind: EventKind,
    pub object: Value,
    pub prev: Option<Value>,
}

/// Who is writing: the API (clients through HTTP, with the real server's
/// create-time status reset) or the test seeding the cluster's state directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Client,
    Seed,
}

/// A parsed list request.
#[derive(Debug, Default, Clone)]
pub(crate) struct ListQuery {
    pub label: LabelSelector,
    pub field: FieldSelector,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// The mutable state behind the server's lock.
#[derive(Debug)]
pub(crate) struct Store {
    pub rv: u64,
    /// Watches and exact reads need a resourceVersion at or after this one.
    pub compacted: u64,
    /// Bumped to end every open watch (compaction, restart, shutdown).
    pub epoch: u64,
    pub closed: bool,
    pub objects: BTreeMap<ObjKey, Value>,
    pub history: Vec<Event>,
    pub types: Vec<ResourceType>,
    pub tokens: HashMap<String, TokenUser>,
    pub requests: Vec<RequestRecord>,
    next_cluster_ip: u32,
}

/// `2024-05-01T12:00:00Z` for now, without a date library.
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A random version-4 UUID, as `metadata.uid`.
pub(crate) fn uuid() -> String {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj["metadata"][field].as_str().filter(|s| !s.is_empty())
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

/// Removes `kind`/`apiVersion`, as a real server's list items come.
fn strip_type(mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    obj
}

/// Sets `kind`/`apiVersion` first (they lead every object a real server returns).
pub(crate) fn with_type(t: &ResourceType, obj: &Value) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("kind".into(), json!(t.kind));
    out.insert("apiVersion".into(), json!(t.api_version()));
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            if k != "kind" && k != "apiVersion" {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn spec_changed(t: &ResourceType, old: &Value, new: &Value) -> bool {
    if t.custom {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
                m.remove("kind");
                m.remove("apiVersion");
            }
            v
        };
        strip(old) != strip(new)
    } else {
        old.get("spec") != new.get("spec")
    }
}

impl Store {
    pub fn new() -> Self {
        let mut s = Store {
            rv: 1,
            compacted: 0,
            epoch: 0,
            closed: false,
            objects: BTreeMap::new(),
            history: Vec::new(),
            types: resources::builtin(),
            tokens: HashMap::new(),
            requests: Vec::new(),
            next_cluster_ip: 1,
        };
        // Every real cluster has these namespaces (and the `kubernetes` Service).
        let ns = s.type_for("v1", "Namespace").expect("namespaces");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            s.create(&ns, None, json!({"metadata": {"name": name}}), Source::Seed)
                .expect("seed namespace");
        }
        let svc = s.type_for("v1", "Service").expect("services");
        s.create(
            &svc,
            Some("default"),
            json!({
                "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}
            }),
            Source::Seed,
        )
        .expect("seed kubernetes service");
        s
    }

    /// The type served at `group/version/plural`.
    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The type of objects with this `apiVersion` and `kind`.
    pub fn type_for(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .cloned()
    }

    /// Registers (or replaces) a served type.
    pub fn register(&mut self, t: ResourceType) {
        self.types
            .retain(|x| !(x.group == t.group && x.version == t.version && x.plural == t.plural));
        self.types.push(t);
    }

    /// Records a write: bumps the global resourceVersion, stamps it, keeps the event.
    fn commit(&mut self, key: ObjKey, kind: EventKind, obj: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let prev = self.objects.get(&key).cloned();
        let mut object = match obj {
            Some(o) => o,
            None => prev.clone().unwrap_or(Value::Null),
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        match kind {
            EventKind::Deleted => {
                self.objects.remove(&key);
            }
            _ => {
                self.objects.insert(key.clone(), object.clone());
            }
        }
        self.history.push(Event {
            rv,
            key,
            kind,
            object: object.clone(),
            prev,
        });
        object
    }

    fn check_namespace(&self, t: &ResourceType, ns: Option<&str>) -> Result<String, ApiError> {
        match (t.namespaced, ns) {
            (true, Some(ns)) => {
                let key = ObjKey {
                    group: String::new(),
                    plural: "namespaces".into(),
                    namespace: String::new(),
                    name: ns.to_string(),
                };
                if self.objects.contains_key(&key) {
                    Ok(ns.to_string())
                } else {
                    let nst = self.type_for("v1", "Namespace").expect("namespaces");
                    Err(ApiError::not_found(&nst, ns))
                }
            }
            (true, None) => Err(ApiError::bad_request(
                "the namespace of the object must be set for a namespaced resource",
            )),
            (false, _) => Ok(String::new()),
        }
    }

    /// Fills the defaults a real server's defaulting and admission add.
    fn default_object(&mut self, t: &ResourceType, obj: &mut Value) {
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        match (t.group.as_str(), t.kind.as_str()) {
            ("", "Namespace") => {
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
                if obj["spec"]["finalizers"].is_null() {
                    obj["spec"]["finalizers"] = json!(["kubernetes"]);
                }
                if obj["status"]["phase"].is_null() {
                    obj["status"]["phase"] = json!("Active");
                }
            }
            ("", "Service") => {
                let spec = &mut obj["spec"];
                if spec["type"].is_null() {
                    spec["type"] = json!("ClusterIP");
                }
                if spec["clusterIP"].is_null() {
                    let n = self.next_cluster_ip;
                    self.next_cluster_ip += 1;
                    spec["clusterIP"] = json!(format!("10.96.{}.{}", n / 250, n % 250 + 1));
                }
                if spec["clusterIPs"].is_null() {
                    spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
                }
                for (k, v) in [
                    ("sessionAffinity", json!("None")),
                    ("ipFamilies", json!(["IPv4"])),
                    ("ipFamilyPolicy", json!("SingleStack")),
                    ("internalTrafficPolicy", json!("Cluster")),
                ] {
                    if spec[k].is_null() {
                        spec[k] = v;
                    }
                }
                if let Some(ports) = spec["ports"].as_array_mut() {
                    for p in ports {
                        if p["protocol"].is_null() {
                            p["protocol"] = json!("TCP");
                        }
                        if p["targetPort"].is_null() {
                            p["targetPort"] = p["port"].clone();
                        }
                    }
                }
                if obj["status"].is_null() {
                    obj["status"] = json!({"loadBalancer": {}});
                }
            }
            ("", "Pod") => {
                let spec = &mut obj["spec"];
                if spec["serviceAccountName"].is_null() {
                    spec["serviceAccountName"] = json!("default");
                }
                if spec["serviceAccount"].is_null() {
                    spec["serviceAccount"] = spec["serviceAccountName"].clone();
                }
                for (k, v) in [
                    ("restartPolicy", json!("Always")),
                    ("dnsPolicy", json!("ClusterFirst")),
                    ("terminationGracePeriodSeconds", json!(30)),
                    ("schedulerName", json!("default-scheduler")),
                    ("enableServiceLinks", json!(true)),
                ] {
                    if spec[k].is_null() {
                        spec[k] = v;
                    }
                }
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = spec[list].as_array_mut() {
                        for c in cs {
                            if let Some(ports) = c["ports"].as_array_mut() {
                                for p in ports {
                                    if p["protocol"].is_null() {
                                        p["protocol"] = json!("TCP");
                                    }
                                }
                            }
                        }
                    }
                }
                if obj["status"]["phase"].is_null() {
                    obj["status"]["phase"] = json!("Pending");
                }
            }
            ("", "Secret") if obj["type"].is_null() => obj["type"] = json!("Opaque"),
            ("discovery.k8s.io", "EndpointSlice") => {
                if let Some(ports) = obj["ports"].as_array_mut() {
                    for p in ports {
                        if p["protocol"].is_null() {
                            p["protocol"] = json!("TCP");
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Creates an object of type `t` in `ns`; `Source::Client` applies the real
    /// server's create-time reset of `status` for types with a status subresource.
    pub fn create(
        &mut self,
        t: &ResourceType,
        ns: Option<&str>,
        body: Value,
        source: Source,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be an object",
            ));
        }
        let mut obj = with_type(t, &body);
        if let Some(bk) = body["kind"].as_str()
            && bk != t.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind {bk:?} of the object does not match the resource {}",
                t.qualified()
            )));
        }
        let body_ns = meta_str(&obj, "namespace").map(str::to_string);
        let ns = ns.map(str::to_string).or(body_ns.clone());
        if t.namespaced
            && let (Some(a), Some(b)) = (&ns, &body_ns)
            && a != b
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let ns = self.check_namespace(t, ns.as_deref())?;
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) => n.to_string(),
            (None, Some(g)) => format!("{g}{}", random_suffix()),
            (None, None) => {
                return Err(ApiError::invalid(
                    t,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        let key = ObjKey::new(t, &ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(t, &name));
        }
        let meta = obj["metadata"].as_object_mut().expect("metadata object");
        meta.insert("name".into(), json!(name));
        if t.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.remove("resourceVersion");
        if source == Source::Client || !meta.contains_key("uid") {
            meta.insert("uid".into(), json!(uuid()));
        }
        if source == Source::Client || !meta.contains_key("creationTimestamp") {
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        }
        if source == Source::Client {
            // Only the server sets these; a seeded terminating object keeps them.
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
        }
        meta.remove("managedFields");
        if source == Source::Client
            && t.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        self.default_object(t, &mut obj);
        if obj.get("spec").is_some() || t.custom {
            obj["metadata"]["generation"] = json!(1);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("generation");
        }
        if t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions" {
            for rt in ResourceType::from_crd(&obj) {
                self.register(rt);
            }
        }
        Ok(self.commit(key, EventKind::Added, Some(obj)))
    }

    /// The stored object, with its type.
    pub fn get(&self, t: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let key = ObjKey::new(t, if t.namespaced { ns.unwrap_or("") } else { "" }, name);
        self.objects
            .get(&key)
            .map(|o| with_type(t, o))
            .ok_or_else(|| ApiError::not_found(t, name))
    }

    /// PUT: replaces the object (or only its status), with optimistic concurrency
    /// on `metadata.resourceVersion`. An update that changes nothing writes
    /// nothing, as on a real server.
    pub fn replace(
        &mut self,
        t: &ResourceType,
        ns: Option<&str>,
        name: &str,
        body: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let ns = if t.namespaced { ns.unwrap_or("") } else { "" };
        let key = ObjKey::new(t, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(t, name))?;
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be an object",
            ));
        }
        if let Some(n) = meta_str(&body, "name")
            && n != name
        {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        if t.namespaced
            && let Some(n) = meta_str(&body, "namespace")
            && n != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        match meta_str(&body, "resourceVersion") {
            Some(rv) if Some(rv) != meta_str(&old, "resourceVersion") => {
                return Err(ApiError::conflict(t, name));
            }
            None if t.custom => {
                return Err(ApiError::invalid(
                    t,
                    name,
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                ));
            }
            _ => {}
        }
        if let Some(uid) = meta_str(&body, "uid")
            && Some(uid) != meta_str(&old, "uid")
        {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    t.qualified(),
                    meta_str(&old, "uid").unwrap_or_default()
                ),
                details: None,
            });
        }
        let mut new = if status_only {
            let mut n = old.clone();
            n["status"] = body.get("status").cloned().unwrap_or(Value::Null);
            if n["status"].is_null()
                && let Some(m) = n.as_object_mut()
            {
                m.remove("status");
            }
            n
        } else {
            let mut n = with_type(t, &body);
            if t.status_subresource {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            n
        };
        for f in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
            match old["metadata"].get(f) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        new["metadata"]["name"] = json!(name);
        if t.namespaced {
            new["metadata"]["namespace"] = json!(ns);
        }
        self.default_object(t, &mut new);
        if spec_changed(t, &old, &new)
            && let Some(g) = old["metadata"]["generation"].as_i64()
        {
            new["metadata"]["generation"] = json!(g + 1);
        }
        if new == old {
            return Ok(with_type(t, &old));
        }
        if t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions" {
            for rt in ResourceType::from_crd(&new) {
                self.register(rt);
            }
        }
        let out = self.commit(key, EventKind::Modified, Some(new));
        Ok(with_type(t, &out))
    }

    /// DELETE: removes the object (and, for a namespace, everything in it),
    /// checking `preconditions` from DeleteOptions.
    pub fn delete(
        &mut self,
        t: &ResourceType,
        ns: Option<&str>,
        name: &str,
        preconditions: &Value,
    ) -> Result<Value, ApiError> {
        let ns = if t.namespaced { ns.unwrap_or("") } else { "" };
        let key = ObjKey::new(t, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(t, name))?;
        if let Some(rv) = preconditions["resourceVersion"].as_str()
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    t.qualified(),
                    meta_str(&old, "resourceVersion").unwrap_or_default()
                ),
                details: None,
            });
        }
        if let Some(uid) = preconditions["uid"].as_str()
            && Some(uid) != meta_str(&old, "uid")
        {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    t.qualified(),
                    meta_str(&old, "uid").unwrap_or_default()
                ),
                details: None,
            });
        }
        if t.group.is_empty() && t.plural == "namespaces" {
            let inside: Vec<ObjKey> = self
                .objects
                .keys()
                .filter(|k| k.namespace == name)
                .cloned()
                .collect();
            for k in inside {
                self.commit(k, EventKind::Deleted, None);
            }
        }
        if t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions" {
            let builtin = resources::builtin();
            for rt in ResourceType::from_crd(&old) {
                if !builtin.contains(&rt) {
                    self.types.retain(|x| *x != rt);
                    let inside: Vec<ObjKey> = self
                        .objects
                        .keys()
                        .filter(|k| k.same_resource(&rt))
                        .cloned()
                        .collect();
                    for k in inside {
                        self.commit(k, EventKind::Deleted, None);
                    }
                }
            }
        }
        let out = self.commit(key, EventKind::Deleted, None);
        Ok(with_type(t, &out))
    }

    /// The objects of type `t` (in `ns`, or all) as they were at `rv`, rebuilt by
    /// undoing the retained history after it; sorted in etcd key order.
    fn snapshot(&self, t: &ResourceType, ns: Option<&str>, rv: u64) -> Vec<(String, Value)> {
        let in_scope = |k: &ObjKey| k.same_resource(t) && ns.is_none_or(|ns| k.namespace == ns);
        let mut objs: BTreeMap<ObjKey, Value> = self
            .objects
            .iter()
            .filter(|(k, _)| in_scope(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for e in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if !in_scope(&e.key) {
                continue;
            }
            match &e.prev {
                Some(p) => objs.insert(e.key.clone(), p.clone()),
                None => objs.remove(&e.key),
            };
        }
        let mut out: Vec<(String, Value)> =
            objs.into_iter().map(|(k, v)| (k.sort_key(), v)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// LIST with the real server's resourceVersion semantics and pagination.
    pub fn list(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        q: &ListQuery,
    ) -> Result<Value, ApiError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (at, start) = if let Some(c) = q.continue_token.as_deref().filter(|c| !c.is_empty()) {
            let bad = || ApiError::bad_request("continue key is not valid");
            let token: Value = b64
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(bad)?;
            let rv = token["rv"].as_u64().ok_or_else(bad)?;
            let start = token["start"].as_str().ok_or_else(bad)?.to_string();
            if rv < self.compacted {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ));
            }
            (rv, Some(start))
        } else {
            let rv = q.resource_version.as_deref().filter(|s| !s.is_empty());
            let exact = match q.resource_version_match.as_deref() {
                Some("Exact") => true,
                Some("NotOlderThan") => false,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "resourceVersionMatch: Unsupported value: {other:?}"
                    )));
                }
                // Legacy semantics: a non-zero version with a limit is exact.
                None => q.limit.is_some() && rv.is_some_and(|r| r != "0"),
            };
            match rv {
                None | Some("0") => (self.rv, None),
                Some(r) => {
                    let r = parse_rv(r)?;
                    if r > self.rv {
                        return Err(ApiError::too_large_resource_version(r, self.rv));
                    }
                    if exact {
                        if r < self.compacted {
                            return Err(ApiError::expired(
                                "The resourceVersion for the provided list is too old.",
                            ));
                        }
                        (r, None)
                    } else {
                        (self.rv, None)
                    }
                }
            }
        };
        let all = self.snapshot(t, ns, at);
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        let mut remaining = 0usize;
        for (k, obj) in all {
            if start.as_deref().is_some_and(|s| k.as_str() <= s) {
                continue;
            }
            if !(q.label.matches(&obj) && q.field.matches(&obj)) {
                continue;
            }
            if q.limit.is_some_and(|l| l > 0 && items.len() >= l) {
                more = true;
                remaining += 1;
                continue;
            }
            last_key = Some(k);
            items.push(strip_type(obj));
        }
        let mut meta = json!({"resourceVersion": at.to_string()});
        if more && let Some(k) = last_key {
            let token = json!({"v": "meta.k8s.io/v1", "rv": at, "start": k});
            meta["continue"] = json!(b64.encode(token.to_string()));
            if q.label.is_empty() && q.field.is_empty() {
                meta["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(json!({
            "kind": format!("{}List", t.kind),
            "apiVersion": t.api_version(),
            "metadata": meta,
            "items": items,
        }))
    }

    /// Current objects for a watch's synthetic ADDED events.
    pub fn initial_events(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        label: &LabelSelector,
        field: &FieldSelector,
    ) -> Vec<Value> {
        self.snapshot(t, ns, self.rv)
            .into_iter()
            .filter(|(_, o)| label.matches(o) && field.matches(o))
            .map(|(_, o)| json!({"type": "ADDED", "object": with_type(t, &o)}))
            .collect()
    }

    /// Watch events after `after`, filtered the way the real watch cache filters:
    /// an object that starts matching the selectors arrives as ADDED, one that
    /// stops matching as DELETED (its previous state, at the new version).
    pub fn events_after(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        label: &LabelSelector,
        field: &FieldSelector,
        after: u64,
    ) -> Vec<Value> {
        let start = self.history.partition_point(|e| e.rv <= after);
        let passes = |o: &Value| label.matches(o) && field.matches(o);
        let mut out = Vec::new();
        for e in &self.history[start..] {
            if !e.key.same_resource(t) || ns.is_some_and(|ns| e.key.namespace != ns) {
                continue;
            }
            let prev_ok = e.prev.as_ref().is_some_and(passes);
            let (kind, obj) = match e.kind {
                EventKind::Added if passes(&e.object) => ("ADDED", e.object.clone()),
                EventKind::Deleted if prev_ok => ("DELETED", e.object.clone()),
                EventKind::Modified => match (prev_ok, passes(&e.object)) {
                    (true, true) => ("MODIFIED", e.object.clone()),
                    (false, true) => ("ADDED", e.object.clone()),
                    (true, false) => {
                        let mut o = e.prev.clone().expect("previous state");
                        o["metadata"]["resourceVersion"] = json!(e.rv.to_string());
                        ("DELETED", o)
                    }
                    (false, false) => continue,
                },
                _ => continue,
            };
            out.push(json!({"type": kind, "object": with_type(t, &obj)}));
        }
        out
    }

    /// Simulated etcd compaction: every resourceVersion handed out so far becomes
    /// too old to watch or read exactly from, and open watches end (as when an API
    /// server restarts), so clients come back with their old version and get 410.
    /// The global version moves on by one so that a fresh list is watchable.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.compacted = self.rv;
        self.history.clear();
        self.epoch += 1;
    }
}

/// PATCH content types a real server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchKind {
    /// From the request's Content-Type.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchKind::Apply)
            }
            _ => None,
        }
    }
}

impl Store {
    /// PATCH: applies the patch to the stored object and replaces it, keeping
    /// optimistic concurrency when the patch itself names a resourceVersion.
    /// Server-side apply creates the object when it does not exist.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        t: &ResourceType,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch: &Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let current = match self.get(t, ns, name) {
            Ok(c) => c,
            Err(e) if kind == PatchKind::Apply && !status_only => {
                let _ = e;
                let mut body = patch.clone();
                if meta_str(&body, "name").is_none() {
                    body["metadata"]["name"] = json!(name);
                }
                return self.create(t, ns, body, Source::Client);
            }
            Err(e) => return Err(e),
        };
        let mut new = current.clone();
        match kind {
            PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                if kind == PatchKind::Merge {
                    super::patch::merge(&mut new, patch);
                } else {
                    super::patch::strategic_merge(&mut new, patch);
                }
            }
            PatchKind::Json => super::patch::json_patch(&mut new, patch).map_err(|e| ApiError {
                code: 422,
                reason: "Invalid",
                message: format!(
                    "the server rejected our request due to an error in our request: {e}"
                ),
                details: None,
            })?,
        }
        if new["metadata"]["resourceVersion"].is_null() {
            new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        }
        self.replace(t, ns, name, new, status_only)
    }
}
