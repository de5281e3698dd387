//! The test API server (mesh_tests::kube_api) speaks Kubernetes well enough for
//! kube-rs: these tests drive it with kube 5 and k8s-openapi types, the same
//! client stack the controller uses, so a behaviour that passes here is one the
//! controller's tests can rely on.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config, ResourceExt};
use mesh_tests::kube_api::{KubeApi, TokenUser};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// A kube client configured the way the controller will be: from a kubeconfig file.
async fn client(api: &KubeApi) -> Client {
    let dir = std::env::temp_dir().join(format!(
        "kube-api-{}-{}",
        std::process::id(),
        api.addr().port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    api.write_kubeconfig(&path).unwrap();
    let kc = Kubeconfig::read_from(&path).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    assert_eq!(config.default_namespace, "default");
    Client::try_from(config).expect("client")
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
        "data": {"k": "v"}
    }))
    .unwrap()
}

async fn next_event<S, T>(s: &mut S) -> T
where
    S: futures::Stream<Item = T> + Unpin,
{
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("event within the timeout")
        .expect("stream still open")
}

#[tokio::test]
async fn fixtures_deserialize_into_k8s_openapi_types() {
    let api = KubeApi::start().await;
    let loaded = api.load_fixtures(&KubeApi::fixtures_dir());
    assert!(loaded.len() >= 10);
    let c = client(&api).await;

    let nss: Api<Namespace> = Api::all(c.clone());
    let demo = nss.get("demo").await.unwrap();
    assert_eq!(
        demo.labels().get("mesh.io/inject").map(String::as_str),
        Some("enabled")
    );
    // Every real cluster's namespaces are there too.
    assert!(nss.get("kube-system").await.is_ok());

    let svcs: Api<Service> = Api::namespaced(c.clone(), "demo");
    let reviews = svcs.get("reviews").await.unwrap();
    let spec = reviews.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.118.24"));
    assert_eq!(spec.selector.unwrap()["app"], "reviews");
    assert_eq!(
        reviews.metadata.uid.as_deref(),
        Some("3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9")
    );

    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "demo");
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=reviews"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let eps = &list.items[0].endpoints;
    let terminating: Vec<_> = eps
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.terminating) == Some(true))
        .collect();
    assert_eq!(terminating.len(), 1);
    assert_eq!(
        terminating[0].conditions.as_ref().unwrap().serving,
        Some(true)
    );
    let target = eps[0].target_ref.as_ref().unwrap();
    assert_eq!(
        (target.kind.as_deref(), target.namespace.as_deref()),
        (Some("Pod"), Some("demo"))
    );

    let pods: Api<Pod> = Api::all(c.clone());
    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 3);
    let p = pods_by_name(&all.items, "reviews-v1-5c7b9f8d6-x2kqp");
    assert_eq!(
        p.spec.as_ref().unwrap().service_account_name.as_deref(),
        Some("reviews")
    );
    assert_eq!(
        p.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.1.12")
    );

    // A real list: metadata.resourceVersion is the current one, items carry no kind.
    let (status, body) =
        mesh_tests::http::get(&format!("{}/api/v1/namespaces/demo/pods", api.url()))
            .await
            .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "PodList");
    assert_eq!(
        v["metadata"]["resourceVersion"],
        api.resource_version().to_string()
    );
    assert!(v["items"][0].get("kind").is_none());
    assert!(v["items"][0]["metadata"]["resourceVersion"].is_string());
}

fn pods_by_name<'a>(pods: &'a [Pod], name: &str) -> &'a Pod {
    pods.iter()
        .find(|p| p.name_any() == name)
        .expect("pod present")
}

#[tokio::test]
async fn crud_round_trip_with_real_errors() {
    let api = KubeApi::start().await;
    let c = client(&api).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());

    let created = cms
        .create(&PostParams::default(), &cm("one", &[("app", "a")]))
        .await
        .unwrap();
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));

    let dup = cms
        .create(&PostParams::default(), &cm("one", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&dup, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{dup:?}"
    );

    let got = cms.get("one").await.unwrap();
    assert_eq!(got.data.unwrap()["k"], "v");

    let patched = cms
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k2": "v2"}, "metadata": {"labels": {"tier": "x"}}})),
        )
        .await
        .unwrap();
    let rv2: u64 = patched.resource_version().unwrap().parse().unwrap();
    assert!(rv2 > rv1, "every write bumps the global resourceVersion");
    assert_eq!(patched.labels().len(), 2);

    // JSON patch (RFC 6902), as the injection webhook's patches are written.
    let req = http::Request::patch("/api/v1/namespaces/default/configmaps/one")
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "test", "path": "/data/k", "value": "v"}, {"op": "remove", "path": "/data/k"}]).to_string().into_bytes())
        .unwrap();
    let patched: ConfigMap = c.request(req).await.unwrap();
    assert_eq!(patched.data.unwrap().len(), 1);

    // Server-side apply creates, then updates.
    let ssa = PatchParams::apply("mesh-tests");
    let applied = cms
        .patch("two", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "two"}, "data": {"a": "1"}})))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["a"], "1");

    // generateName
    let mut g = cm("", &[]);
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let gen_obj = cms.create(&PostParams::default(), &g).await.unwrap();
    assert!(gen_obj.name_any().starts_with("gen-") && gen_obj.name_any().len() == 9);

    let names: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(names.len(), 3);

    let deleted = cms.delete("one", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_left());
    let gone = cms.get("one").await.unwrap_err();
    assert!(
        matches!(&gone, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{gone:?}"
    );
    assert!(
        matches!(cms.delete("one", &DeleteParams::default()).await, Err(kube::Error::Api(s)) if s.code == 404)
    );

    // A namespace that does not exist is a 404, as with the real NamespaceLifecycle plugin.
    let nowhere: Api<ConfigMap> = Api::namespaced(c.clone(), "nowhere");
    let e = nowhere
        .create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 404), "{e:?}");

    // Unknown resources are 404 with a Status.
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::default_namespaced_with(c.clone(), &ar);
    let e = widgets.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&e, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{e:?}"
    );

    // Every request carried the kubeconfig's bearer token.
    assert!(
        api.requests()
            .iter()
            .all(|r| r.token.as_deref() == Some(KubeApi::TOKEN))
    );
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    let api = KubeApi::start().await;
    let c = client(&api).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "before"}}));
    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    assert!(matches!(
        next_event(&mut events).await.unwrap(),
        watcher::Event::Init
    ));
    match next_event(&mut events).await.unwrap() {
        watcher::Event::InitApply(o) => assert_eq!(o.name_any(), "before"),
        e => panic!("expected InitApply, got {e:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await.unwrap(),
        watcher::Event::InitDone
    ));
    // The watch itself opens on the next poll, from the list's version: nothing
    // written in between is lost.

    cms.create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    match next_event(&mut events).await.unwrap() {
        watcher::Event::Apply(o) => assert_eq!(o.name_any(), "x"),
        e => panic!("expected Apply, got {e:?}"),
    }
    api.patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "x",
        json!({"data": {"n": "1"}}),
    );
    match next_event(&mut events).await.unwrap() {
        watcher::Event::Apply(o) => assert_eq!(o.data.unwrap()["n"], "1"),
        e => panic!("expected Apply, got {e:?}"),
    }
    api.delete("v1", "ConfigMap", Some("default"), "x").unwrap();
    match next_event(&mut events).await.unwrap() {
        watcher::Event::Delete(o) => assert_eq!(o.name_any(), "x"),
        e => panic!("expected Delete, got {e:?}"),
    }

    // The raw wire events: ADDED, MODIFIED, DELETED, each with the object's type.
    let mut raw = cms
        .watch(&WatchParams::default(), &api.resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("y", &[]))
        .await
        .unwrap();
    cms.patch(
        "y",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "b"}})),
    )
    .await
    .unwrap();
    cms.delete("y", &DeleteParams::default()).await.unwrap();
    assert!(matches!(
        next_event(&mut raw).await.unwrap(),
        WatchEvent::Added(_)
    ));
    assert!(matches!(
        next_event(&mut raw).await.unwrap(),
        WatchEvent::Modified(_)
    ));
    match next_event(&mut raw).await.unwrap() {
        WatchEvent::Deleted(o) => {
            let rv: u64 = o.resource_version().unwrap().parse().unwrap();
            assert_eq!(
                rv,
                api.resource_version(),
                "DELETED carries the deletion's version"
            );
        }
        e => panic!("expected Deleted, got {e:?}"),
    }
}

#[tokio::test]
async fn reflector_survives_compaction_without_losing_or_duplicating() {
    let api = KubeApi::start().await;
    api.load_fixtures(&KubeApi::fixtures_dir());
    let c = client(&api).await;
    let slices: Api<EndpointSlice> = Api::all(c.clone());
    let (reader, writer) = reflector::store();
    let stream = watcher(slices, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(WAIT, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reader.state().len(), 2);
    api.wait_for_watches(1, WAIT).await;
    api.clear_requests();

    // Compact, then change things before the watcher comes back: its resume
    // version is too old, so it must relist to see them.
    api.compact();
    let mut s = api
        .get(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some("demo"),
            "reviews-8vnqz",
        )
        .unwrap();
    s["endpoints"].as_array_mut().unwrap().pop();
    api.try_replace(s).unwrap();
    api.delete(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        Some("legacy"),
        "billing-k4j7d",
    )
    .unwrap();
    api.create(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "ratings-abcde", "namespace": "demo", "labels": {"kubernetes.io/service-name": "ratings"}},
        "endpoints": [{"addresses": ["10.244.1.40"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 9080}]
    }));

    mesh_tests::eventually("the reflector relisted", WAIT, || async {
        let names: Vec<String> = reader
            .state()
            .iter()
            .map(|s| format!("{}/{}", s.namespace().unwrap(), s.name_any()))
            .collect();
        let reviews = reader
            .state()
            .into_iter()
            .find(|s| s.name_any() == "reviews-8vnqz")?;
        (names.len() == 2
            && names.contains(&"demo/ratings-abcde".to_string())
            && reviews.endpoints.len() == 1)
            .then_some(())
    })
    .await;
    let reqs = api.requests();
    assert!(reqs.iter().any(|r| r.is_watch()), "it resumed its watch");
    assert!(
        reqs.iter().any(|r| !r.is_watch()
            && r.method == "GET"
            && r.path == "/apis/discovery.k8s.io/v1/endpointslices"),
        "it relisted: {reqs:?}"
    );
    task.abort();
}

#[tokio::test]
async fn too_old_versions_get_410() {
    let api = KubeApi::start().await;
    api.load_fixtures(&KubeApi::fixtures_dir());
    let c = client(&api).await;
    let pods: Api<Pod> = Api::all(c.clone());
    let old = api.resource_version().to_string();

    // Pagination: limit and continue, at one consistent snapshot.
    let page = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.metadata.remaining_item_count, Some(1));
    let token = page.metadata.continue_.clone().unwrap();
    api.delete("v1", "Pod", Some("legacy"), "billing-6f8d7c5b4-q9rtn");
    let rest = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        rest.items.len(),
        1,
        "the second page is from the first page's snapshot"
    );
    assert_eq!(rest.items[0].name_any(), "billing-6f8d7c5b4-q9rtn");
    assert!(rest.metadata.continue_.is_none());

    // Exact reads of a retained version work, and see the old state.
    let exact = pods
        .list(&ListParams::default().at(&old).matching(VersionMatch::Exact))
        .await
        .unwrap();
    assert_eq!(exact.items.len(), 3);

    api.compact();
    let e = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, kube::Error::Api(s) if s.code == 410 && s.reason == "Expired"),
        "{e:?}"
    );
    let e = pods
        .list(&ListParams::default().at(&old).matching(VersionMatch::Exact))
        .await
        .unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 410), "{e:?}");
    // NotOlderThan is satisfied by the current state.
    let now = pods
        .list(
            &ListParams::default()
                .at(&old)
                .matching(VersionMatch::NotOlderThan),
        )
        .await
        .unwrap();
    assert_eq!(now.items.len(), 2);

    // A watch from before the compaction: 200 and one ERROR event, as a real server does.
    let mut w = pods
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut w).await.unwrap() {
        WatchEvent::Error(s) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
            assert!(
                s.message
                    .starts_with(&format!("too old resource version: {old} (")),
                "{}",
                s.message
            );
        }
        e => panic!("expected ERROR, got {e:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, w.next())
            .await
            .unwrap()
            .is_none(),
        "then the stream closes"
    );
}

#[tokio::test]
async fn bookmarks_arrive_and_timeout_closes() {
    let api = KubeApi::start().await;
    api.set_bookmark_interval(Duration::from_millis(100));
    let c = client(&api).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let from = api.resource_version();
    let mut w = cms
        .watch(&WatchParams::default().timeout(2), &from.to_string())
        .await
        .unwrap()
        .boxed();
    api.create(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "elsewhere"}}));
    let mut bookmarks = Vec::new();
    while let Some(e) = tokio::time::timeout(WAIT, w.next())
        .await
        .expect("closes by timeoutSeconds")
    {
        match e.unwrap() {
            WatchEvent::Bookmark(b) => {
                bookmarks.push(b.metadata.resource_version.parse::<u64>().unwrap())
            }
            e => panic!("only bookmarks expected, got {e:?}"),
        }
    }
    assert!(bookmarks.len() >= 3, "{bookmarks:?}");
    assert!(bookmarks.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(
        *bookmarks.last().unwrap(),
        from + 1,
        "bookmarks advance past other resources' writes"
    );

    // Streaming lists: initial ADDED events end with the initial-events-end bookmark.
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}));
    let mut events = watcher(cms, watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    loop {
        match next_event(&mut events).await.unwrap() {
            watcher::Event::InitApply(o) => seen.push(o.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["a"]);
}

#[tokio::test]
async fn label_selectors_on_list_and_watch() {
    let api = KubeApi::start().await;
    api.load_fixtures(&KubeApi::fixtures_dir());
    let c = client(&api).await;
    let nss: Api<Namespace> = Api::all(c.clone());
    let names = |l: kube::core::ObjectList<Namespace>| {
        l.items.iter().map(|n| n.name_any()).collect::<Vec<_>>()
    };
    let sel = |s: &str| ListParams::default().labels(s);
    assert_eq!(
        names(nss.list(&sel("mesh.io/inject=enabled")).await.unwrap()),
        ["demo"]
    );
    assert_eq!(
        names(
            nss.list(&sel(
                "mesh.io/inject in (enabled,yes),kubernetes.io/metadata.name"
            ))
            .await
            .unwrap()
        ),
        ["demo"]
    );
    assert_eq!(
        nss.list(&sel("!mesh.io/inject")).await.unwrap().items.len(),
        5
    );
    assert_eq!(
        nss.list(&sel("mesh.io/inject!=enabled"))
            .await
            .unwrap()
            .items
            .len(),
        5
    );
    assert_eq!(names(nss.list(&sel("kubernetes.io/metadata.name notin (default,kube-system,kube-public,kube-node-lease,demo)")).await.unwrap()), ["legacy"]);
    let bad = nss.list(&sel("a in b")).await.unwrap_err();
    assert!(
        matches!(&bad, kube::Error::Api(s) if s.code == 400),
        "{bad:?}"
    );
    let one = nss
        .list(&ListParams::default().fields("metadata.name=legacy"))
        .await
        .unwrap();
    assert_eq!(names(one), ["legacy"]);

    // A selector watch: labelling brings the namespace in (ADDED), unlabelling
    // takes it out (DELETED), as the real watch cache reports a selector change.
    let cfg = watcher::Config::default().labels("mesh.io/inject=enabled");
    let mut events = watcher(nss.clone(), cfg).boxed();
    let mut init = Vec::new();
    loop {
        match next_event(&mut events).await.unwrap() {
            watcher::Event::InitApply(o) => init.push(o.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(init, ["demo"]);
    let label = |v: Option<&str>| json!({"metadata": {"labels": {"mesh.io/inject": v}}});
    api.patch("v1", "Namespace", None, "legacy", label(Some("enabled")));
    match next_event(&mut events).await.unwrap() {
        watcher::Event::Apply(o) => assert_eq!(o.name_any(), "legacy"),
        e => panic!("{e:?}"),
    }
    api.patch(
        "v1",
        "Namespace",
        None,
        "kube-public",
        json!({"metadata": {"labels": {"other": "x"}}}),
    );
    api.patch("v1", "Namespace", None, "legacy", label(None));
    match next_event(&mut events).await.unwrap() {
        watcher::Event::Delete(o) => assert_eq!(o.name_any(), "legacy"),
        e => panic!("expected Delete (and nothing for kube-public), got {e:?}"),
    }
    let mut raw = nss
        .watch(
            &WatchParams::default().labels("mesh.io/inject=enabled"),
            &api.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    api.patch("v1", "Namespace", None, "legacy", label(Some("enabled")));
    assert!(
        matches!(next_event(&mut raw).await.unwrap(), WatchEvent::Added(n) if n.name_any() == "legacy")
    );
    api.patch(
        "v1",
        "Namespace",
        None,
        "legacy",
        json!({"metadata": {"annotations": {"a": "b"}}}),
    );
    assert!(matches!(
        next_event(&mut raw).await.unwrap(),
        WatchEvent::Modified(_)
    ));
    api.patch("v1", "Namespace", None, "legacy", label(Some("disabled")));
    assert!(matches!(
        next_event(&mut raw).await.unwrap(),
        WatchEvent::Deleted(_)
    ));
}

#[tokio::test]
async fn token_review_checks_token_and_audience() {
    let api = KubeApi::start().await;
    let c = client(&api).await;
    let reviews: Api<TokenReview> = Api::all(c.clone());
    let token = api.service_account_token("demo", "reviews", &["mesh"]);
    let review = |token: &str, aud: &[&str]| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: Some(aud.iter().map(|s| s.to_string()).collect()),
        },
        ..Default::default()
    };

    let ok = reviews
        .create(&PostParams::default(), &review(&token, &["mesh", "other"]))
        .await
        .unwrap();
    let st = ok.status.unwrap();
    assert_eq!(st.authenticated, Some(true));
    let user = st.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:demo:reviews")
    );
    assert!(
        user.groups
            .unwrap()
            .contains(&"system:serviceaccounts:demo".to_string())
    );
    assert_eq!(st.audiences.unwrap(), ["mesh"]);

    let wrong = reviews
        .create(&PostParams::default(), &review(&token, &["vault"]))
        .await
        .unwrap();
    let st = wrong.status.unwrap();
    assert_ne!(st.authenticated, Some(true));
    assert!(
        st.error
            .unwrap()
            .contains("invalid for the target audiences")
    );

    let bad = reviews
        .create(&PostParams::default(), &review("not-a-token", &["mesh"]))
        .await
        .unwrap();
    let st = bad.status.unwrap();
    assert_ne!(st.authenticated, Some(true));
    assert!(st.error.unwrap().contains("invalid bearer token"));

    api.token_review_allow(
        "explicit",
        TokenUser {
            username: "alice".into(),
            uid: "u1".into(),
            ..Default::default()
        },
    );
    let st = reviews
        .create(&PostParams::default(), &review("explicit", &[]))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        st.authenticated,
        Some(true),
        "no audiences asked: the API server's own"
    );
    api.token_review_revoke(&token);
    let st = reviews
        .create(&PostParams::default(), &review(&token, &["mesh"]))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(st.authenticated, Some(true));
    assert!(
        reviews.list(&ListParams::default()).await.is_err(),
        "tokenreviews are create-only"
    );
}

#[tokio::test]
async fn lease_update_from_a_stale_version_conflicts() {
    let api = KubeApi::start().await;
    let c = client(&api).await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "mesh-controller"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    let mine = leases.create(&PostParams::default(), &lease).await.unwrap();
    let theirs = leases.get("mesh-controller").await.unwrap();

    let mut take = theirs.clone();
    take.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let taken = leases
        .replace("mesh-controller", &PostParams::default(), &take)
        .await
        .unwrap();
    assert_eq!(
        taken.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );

    let mut renew = mine.clone();
    renew.spec.as_mut().unwrap().lease_duration_seconds = Some(30);
    let e = leases
        .replace("mesh-controller", &PostParams::default(), &renew)
        .await
        .unwrap_err();
    match e {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(
                s.message
                    .contains("leases.coordination.k8s.io \"mesh-controller\""),
                "{}",
                s.message
            );
        }
        e => panic!("{e:?}"),
    }
    // A patch naming a stale version conflicts too; a fresh one goes through.
    let stale = json!({"metadata": {"resourceVersion": mine.resource_version()}, "spec": {"holderIdentity": "a"}});
    assert!(
        leases
            .patch(
                "mesh-controller",
                &PatchParams::default(),
                &Patch::Merge(stale)
            )
            .await
            .is_err()
    );
    let mut fresh = taken.clone();
    fresh.spec.as_mut().unwrap().holder_identity = Some("a".into());
    leases
        .replace("mesh-controller", &PostParams::default(), &fresh)
        .await
        .unwrap();
    // Writing the same object again changes nothing, not even the version.
    let same = leases.get("mesh-controller").await.unwrap();
    let again = leases
        .replace("mesh-controller", &PostParams::default(), &same)
        .await
        .unwrap();
    assert_eq!(again.resource_version(), same.resource_version());
}

#[tokio::test]
async fn status_subresource_and_defaults() {
    let api = KubeApi::start().await;
    let c = client(&api).await;
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "p"}},
        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 80}]}]},
        "status": {"podIP": "10.0.0.1"}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = created.status.unwrap();
    assert_eq!(
        (status.phase.as_deref(), status.pod_ip.as_deref()),
        (Some("Pending"), None),
        "clients can't set status on create"
    );
    assert_eq!(
        created
            .spec
            .as_ref()
            .unwrap()
            .service_account_name
            .as_deref(),
        Some("default")
    );

    api.patch_status(
        "v1",
        "Pod",
        Some("default"),
        "p",
        json!({"status": {"phase": "Running", "podIP": "10.244.0.9"}}),
    );
    let p = pods.get("p").await.unwrap();
    assert_eq!(
        p.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.0.9")
    );
    // A main-resource patch cannot change status; /status can.
    let p = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"podIP": "1.2.3.4"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        p.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.0.9")
    );
    let p = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"podIP": "10.244.0.10"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        p.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.0.10")
    );

    let svcs: Api<Service> = Api::default_namespaced(c.clone());
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "p"}, "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let spec = svc.spec.unwrap();
    assert!(
        spec.cluster_ip.unwrap().starts_with("10.96."),
        "a ClusterIP is allocated"
    );
    assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));
}

#[tokio::test]
async fn discovery_and_crds() {
    let api = KubeApi::start().await;
    let c = client(&api).await;
    let discovery = kube::Discovery::new(c.clone()).run().await.unwrap();
    for (group, kind) in [
        ("mesh.io", "TrafficPolicy"),
        ("mesh.io", "AuthorizationPolicy"),
        ("gateway.networking.k8s.io", "HTTPRoute"),
        ("discovery.k8s.io", "EndpointSlice"),
        ("coordination.k8s.io", "Lease"),
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration",
        ),
        ("apiextensions.k8s.io", "CustomResourceDefinition"),
        ("", "Namespace"),
    ] {
        let found = discovery.groups().any(|g| {
            g.name() == group
                && g.recommended_resources()
                    .iter()
                    .any(|(r, _)| r.kind == kind)
        });
        assert!(found, "{group} {kind} discovered");
    }
    let info = c.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");

    // Creating a CRD starts serving its resource, like a real server.
    let crds: Api<DynamicObject> = Api::all_with(
        c.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}]}
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::default_namespaced_with(c.clone(), &ar);
    let mut w = DynamicObject::new("w1", &ar);
    w.data = json!({"spec": {"size": 3}});
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    // Custom resources refuse an update without a resourceVersion (422).
    let mut unconditional = created.clone();
    unconditional.metadata.resource_version = None;
    let e = widgets
        .replace("w1", &PostParams::default(), &unconditional)
        .await
        .unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 422), "{e:?}");
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    assert!(widgets.list(&ListParams::default()).await.is_err());

    let mp: Api<DynamicObject> = Api::default_namespaced_with(
        c.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("mesh.io", "v1alpha1", "TrafficPolicy"),
            "trafficpolicies",
        ),
    );
    let n = mp.list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(n, 0);
}
