//! The controller's runtime wiring (watches, owned-Secret triggers, stores, readiness, status
//! and events) end to end, against a small in-process fake of the Kubernetes API: list and
//! watch (streamed), metadata-only requests, server-side apply and the status subresource.
//! It stands in for the kind suite, which needs Docker.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use kmseal::api::EncryptedSecret;
use kmseal::binding::Scope;
use kmseal::config::ControllerArgs;
use kmseal::controller::runtime::run_with;
use kmseal::kms::{CachingKms, MemoryKms};
use kmseal::metrics::Metrics;
use kmseal::random::OsRandom;
use kmseal::seal::{self, PlainSecret, Wrapper};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use zeroize::Zeroizing;

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;
type Key = (String, String);

#[derive(Default)]
struct State {
    version: u64,
    encrypted: BTreeMap<Key, Value>,
    secrets: BTreeMap<Key, Value>,
    es_watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    secret_watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    events: Vec<Value>,
    secret_applies: u64,
    leases: BTreeMap<Key, Value>,
    /// Paths and queries of EncryptedSecret list/watch requests.
    es_requests: Vec<String>,
}

/// The fake API server's state, shared with the test.
#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

const MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", "kmseal");

fn managed(secret: &Value) -> bool {
    secret["metadata"]["labels"][MANAGED.0] == MANAGED.1
}

fn partial(secret: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": secret["metadata"]})
}

fn line(event: &str, object: &Value) -> Bytes {
    let mut text = serde_json::to_vec(&json!({"type": event, "object": object})).unwrap();
    text.push(b'\n');
    Bytes::from(text)
}

impl State {
    fn bump(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn notify_es(&mut self, event: &str, object: &Value) {
        let bytes = line(event, object);
        self.es_watchers
            .retain(|w| w.unbounded_send(bytes.clone()).is_ok());
    }

    /// Secret watchers see metadata only, and only managed Secrets (label selector).
    fn notify_secret(&mut self, before: Option<&Value>, after: Option<&Value>) {
        let event = match (before.filter(|b| managed(b)), after.filter(|a| managed(a))) {
            (None, Some(a)) => Some(("ADDED", partial(a))),
            (Some(_), Some(a)) => Some(("MODIFIED", partial(a))),
            (Some(b), None) => Some(("DELETED", partial(after.unwrap_or(b)))),
            (None, None) => None,
        };
        if let Some((event, object)) = event {
            let bytes = line(event, &object);
            self.secret_watchers
                .retain(|w| w.unbounded_send(bytes.clone()).is_ok());
        }
    }
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    fn add_encrypted(&self, es: &EncryptedSecret) {
        let mut state = self.lock();
        let mut value = serde_json::to_value(es).unwrap();
        value["metadata"]["resourceVersion"] = state.bump().into();
        value["metadata"]["uid"] = format!("uid-{}", state.version).into();
        value["metadata"]["generation"] = 1.into();
        let key = key_of(&value);
        state.encrypted.insert(key, value.clone());
        state.notify_es("ADDED", &value);
    }

    fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.lock().secrets.get(&(ns.into(), name.into())).cloned()
    }

    fn status(&self, ns: &str, name: &str) -> Value {
        self.lock().encrypted[&(ns.to_owned(), name.to_owned())]["status"].clone()
    }

    /// A user edits (Some) or deletes (None) a Secret.
    fn user_writes_secret(&self, ns: &str, name: &str, new: Option<Value>) {
        let mut state = self.lock();
        let key = (ns.to_owned(), name.to_owned());
        let before = state.secrets.remove(&key);
        let after = new.map(|mut s| {
            s["metadata"]["resourceVersion"] = state.bump().into();
            state.secrets.insert(key.clone(), s.clone());
            s
        });
        state.notify_secret(before.as_ref(), after.as_ref());
    }

    fn handle(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        accept: &str,
        body: &[u8],
    ) -> Response<ResponseBody> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let watch = query.contains("watch=true") || query.contains("watch=1");
        let mut state = self.lock();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["apis", "kmseal.dev", "v1alpha1", "encryptedsecrets"])
            | (
                "GET",
                [
                    "apis",
                    "kmseal.dev",
                    "v1alpha1",
                    "namespaces",
                    _,
                    "encryptedsecrets",
                ],
            ) => {
                state.es_requests.push(format!("{path}?{query}"));
                if watch {
                    let (tx, rx) = mpsc::unbounded();
                    state.es_watchers.push(tx);
                    return stream(rx);
                }
                let namespace = (segments.len() == 6).then(|| segments[4]);
                let items: Vec<Value> = state
                    .encrypted
                    .iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
                    .map(|(_, v)| v.clone())
                    .collect();
                ok(
                    json!({"apiVersion": "kmseal.dev/v1alpha1", "kind": "EncryptedSecretList",
                          "metadata": {"resourceVersion": state.version.to_string()}, "items": items}),
                )
            }
            (
                "PATCH",
                [
                    "apis",
                    "kmseal.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "encryptedsecrets",
                    name,
                    "status",
                ],
            ) => {
                let patch: Value = serde_json::from_slice(body).unwrap();
                let rv = state.bump();
                let key = ((*ns).to_owned(), (*name).to_owned());
                let Some(object) = state.encrypted.get_mut(&key) else {
                    return not_found();
                };
                object["status"] = patch["status"].clone();
                object["metadata"]["resourceVersion"] = rv.into();
                let object = object.clone();
                state.notify_es("MODIFIED", &object);
                ok(object)
            }
            ("GET", ["api", "v1", "secrets"])
            | ("GET", ["api", "v1", "namespaces", _, "secrets"]) => {
                assert!(
                    accept.contains("PartialObjectMetadata"),
                    "Secrets are only listed as metadata: {accept}"
                );
                assert!(
                    query.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dkmseal"),
                    "{query}"
                );
                if watch {
                    let (tx, rx) = mpsc::unbounded();
                    state.secret_watchers.push(tx);
                    return stream(rx);
                }
                let items: Vec<Value> = state
                    .secrets
                    .values()
                    .filter(|s| managed(s))
                    .map(partial)
                    .collect();
                ok(
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                          "metadata": {"resourceVersion": state.version.to_string()}, "items": items}),
                )
            }
            ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
                assert!(
                    accept.contains("PartialObjectMetadata"),
                    "a Secret is only read as metadata"
                );
                match state.secrets.get(&((*ns).to_owned(), (*name).to_owned())) {
                    Some(secret) => ok(partial(secret)),
                    None => not_found(),
                }
            }
            ("PATCH", ["api", "v1", "namespaces", ns, "secrets", name]) => {
                assert!(query.contains("fieldManager=kmseal-controller"), "{query}");
                state.secret_applies += 1;
                let applied: Value = serde_json::from_slice(body).unwrap();
                let key = ((*ns).to_owned(), (*name).to_owned());
                let before = state.secrets.get(&key).cloned();
                let mut next = before.clone().unwrap_or_else(
                    || json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}}),
                );
                for field in ["data", "type", "immutable"] {
                    next[field] = applied[field].clone();
                }
                for field in [
                    "name",
                    "namespace",
                    "labels",
                    "annotations",
                    "ownerReferences",
                ] {
                    next["metadata"][field] = applied["metadata"][field].clone();
                }
                let changed = before.as_ref().map(|b| {
                    let mut b = b.clone();
                    b["metadata"]["resourceVersion"] = Value::Null;
                    let mut n = next.clone();
                    n["metadata"]["resourceVersion"] = Value::Null;
                    b != n
                });
                if changed != Some(false) {
                    next["metadata"]["resourceVersion"] = state.bump().into();
                }
                state.secrets.insert(key, next.clone());
                state.notify_secret(before.as_ref(), Some(&next));
                ok(next)
            }
            (
                "GET",
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "leases",
                    name,
                ],
            ) => match state.leases.get(&((*ns).to_owned(), (*name).to_owned())) {
                Some(lease) => ok(lease.clone()),
                None => not_found(),
            },
            (
                "POST",
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "leases",
                ],
            ) => {
                let mut lease: Value = serde_json::from_slice(body).unwrap();
                let key = (
                    (*ns).to_owned(),
                    lease["metadata"]["name"].as_str().unwrap().to_owned(),
                );
                if state.leases.contains_key(&key) {
                    let mut conflict = not_found();
                    *conflict.status_mut() = StatusCode::CONFLICT;
                    return conflict;
                }
                lease["metadata"]["namespace"] = (*ns).into();
                lease["metadata"]["resourceVersion"] = state.bump().into();
                state.leases.insert(key, lease.clone());
                ok(lease)
            }
            (
                "PATCH",
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "leases",
                    name,
                ],
            ) => {
                // Merge semantics for spec fields (null removes), enough for a lease holder.
                let patch: Value = serde_json::from_slice(body).unwrap();
                let rv = state.bump();
                let Some(lease) = state
                    .leases
                    .get_mut(&((*ns).to_owned(), (*name).to_owned()))
                else {
                    return not_found();
                };
                if let Some(fields) = patch["spec"].as_object() {
                    for (field, value) in fields {
                        if value.is_null() {
                            if let Some(spec) = lease["spec"].as_object_mut() {
                                spec.remove(field);
                            }
                        } else {
                            lease["spec"][field] = value.clone();
                        }
                    }
                }
                lease["metadata"]["resourceVersion"] = rv.into();
                ok(lease.clone())
            }
            ("POST", ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
                let event: Value = serde_json::from_slice(body).unwrap();
                state.events.push(event.clone());
                ok(event)
            }
            _ => panic!("unexpected request: {method} {path}?{query}"),
        }
    }
}

fn key_of(value: &Value) -> Key {
    (
        value["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        value["metadata"]["name"].as_str().unwrap_or("").to_owned(),
    )
}

fn ok(value: Value) -> Response<ResponseBody> {
    let bytes = Bytes::from(serde_json::to_vec(&value).unwrap());
    Response::new(http_body_util::Full::new(bytes).boxed_unsync())
}

fn not_found() -> Response<ResponseBody> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
    let mut response = ok(body);
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

fn stream(rx: mpsc::UnboundedReceiver<Bytes>) -> Response<ResponseBody> {
    use futures::StreamExt;
    let frames = rx.map(|bytes| Ok::<_, Infallible>(http_body::Frame::data(bytes)));
    Response::new(StreamBody::new(frames).boxed_unsync())
}

/// A client of the fake; `calls` counts its requests other than Lease ones.
fn client(fake: Fake, calls: Arc<std::sync::atomic::AtomicU64>) -> Client {
    let service = tower::service_fn(move |request: Request<Body>| {
        let fake = fake.clone();
        if !request.uri().path().contains("/leases") {
            calls.fetch_add(1, Ordering::Relaxed);
        }
        async move {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or("").to_owned();
            let accept = request
                .headers()
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = request
                .into_body()
                .collect_bytes()
                .await
                .unwrap_or_default();
            Ok::<_, Infallible>(fake.handle(&method, &path, &query, &accept, &body))
        }
    });
    Client::new(service, "default")
}

async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(5), check).await
}

async fn eventually_within(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    for _ in 0..(limit.as_millis() / 25) {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn data(secret: &Value, item: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(secret["data"][item].as_str().unwrap_or(""))
        .unwrap()
}

struct Running {
    calls: Arc<std::sync::atomic::AtomicU64>,
    stop: futures::channel::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), kmseal::controller::runtime::RunError>>,
    ready: Arc<AtomicBool>,
}

fn start(fake: &Fake, memory: Arc<MemoryKms>) -> Running {
    start_with(fake, memory, &[])
}

fn start_with(fake: &Fake, memory: Arc<MemoryKms>, flags: &[&str]) -> Running {
    let kms = Arc::new(CachingKms::new(memory, 100, Duration::from_secs(300)));
    let args: ControllerArgs =
        clap::Parser::parse_from(std::iter::once("kmseal-controller").chain(flags.iter().copied()));
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = futures::channel::oneshot::channel::<()>();
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let client = client(fake.clone(), calls.clone());
    let task = tokio::spawn({
        let ready = ready.clone();
        async move {
            run_with(
                client,
                kms,
                &args,
                Arc::new(Metrics::new()),
                ready,
                stopped.map(|_| ()).boxed(),
            )
            .await
        }
    });
    Running {
        calls,
        stop,
        task,
        ready,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("graceful shutdown")
            .unwrap()
            .unwrap();
    }
}

/// A fake with one EncryptedSecret prod/db sealed under a key of `memory`.
async fn fake_with_one_object(memory: &MemoryKms) -> Fake {
    let key = memory.create_key();
    let plain = PlainSecret {
        namespace: Some("prod".into()),
        name: "db".into(),
        data: BTreeMap::from([("password".to_owned(), Zeroizing::new(b"s3cr3t".to_vec()))]),
        ..PlainSecret::default()
    };
    let es = seal::seal_secret(
        &Wrapper::Kms {
            kms: memory,
            key_id: &key,
        },
        &plain,
        Scope::Strict,
        &mut OsRandom,
        1,
    )
    .await
    .unwrap();
    let fake = Fake::default();
    fake.add_encrypted(&es);
    fake
}

fn lease_holder(fake: &Fake) -> Option<String> {
    fake.lock()
        .leases
        .get(&("kmseal".to_owned(), "kmseal-controller".to_owned()))
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn leader_flags(identity: &'static str) -> [&'static str; 7] {
    [
        "--leader-election",
        "--leader-election-namespace",
        "kmseal",
        // Renewals every 4 s with a 2 s margin: robust on a loaded CI machine.
        "--lease-duration",
        "6",
        "--pod-name",
        identity,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    let a = start_with(&fake, memory.clone(), &leader_flags("pod-a"));
    eventually("the leader creates the Secret", || {
        fake.secret("prod", "db").is_some()
    })
    .await;
    assert_eq!(lease_holder(&fake).as_deref(), Some("pod-a"));

    let b = start_with(&fake, memory.clone(), &leader_flags("pod-b"));
    eventually("a standby is ready (rolling updates need it)", || {
        b.ready.load(Ordering::Relaxed)
    })
    .await;
    // Longer than one lease: the holder must have renewed, and the standby must not take over.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        lease_holder(&fake).as_deref(),
        Some("pod-a"),
        "the leader keeps renewing"
    );
    assert_eq!(
        b.calls.load(Ordering::Relaxed),
        0,
        "a standby neither watches nor writes"
    );

    // The leader dies without releasing the Lease; the standby takes over after it expires.
    a.task.abort();
    fake.user_writes_secret("prod", "db", None);
    eventually_within(
        "the standby becomes leader and repairs",
        Duration::from_secs(25),
        || lease_holder(&fake).as_deref() == Some("pod-b") && fake.secret("prod", "db").is_some(),
    )
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_stops() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    let a = start_with(&fake, memory.clone(), &leader_flags("pod-a"));
    eventually("leader", || lease_holder(&fake).as_deref() == Some("pod-a")).await;
    // Another instance holds the Lease now (e.g. after a network partition healed).
    {
        let mut state = fake.lock();
        let lease = state
            .leases
            .get_mut(&("kmseal".to_owned(), "kmseal-controller".to_owned()))
            .unwrap();
        lease["spec"]["holderIdentity"] = "pod-z".into();
        lease["spec"]["leaseDurationSeconds"] = 3600.into();
        lease["spec"]["renewTime"] = kmseal::cli::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .replace('Z', ".000000Z")
        .into();
    }
    let result = tokio::time::timeout(Duration::from_secs(25), a.task)
        .await
        .expect("the former leader stops")
        .unwrap();
    assert!(
        matches!(
            result,
            Err(kmseal::controller::runtime::RunError::LostLease)
        ),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_syncs_repairs_and_restarts_for_free() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;

    let running = start(&fake, memory.clone());
    eventually("the Secret is created", || {
        fake.secret("prod", "db").is_some()
    })
    .await;
    let secret = fake.secret("prod", "db").unwrap();
    assert_eq!(data(&secret, "password"), b"s3cr3t");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "EncryptedSecret"
    );
    eventually("Ready=True", || {
        fake.status("prod", "db")["conditions"][0]["status"] == "True"
    })
    .await;
    eventually("/readyz after the initial sync", || {
        running.ready.load(Ordering::Relaxed)
    })
    .await;

    // Drift: a user edits the Secret; the watch brings it back.
    let mut edited = secret.clone();
    edited["data"]["password"] = "aGFja2Vk".into();
    fake.user_writes_secret("prod", "db", Some(edited));
    eventually("the edit is repaired", || {
        fake.secret("prod", "db")
            .is_some_and(|s| data(&s, "password") == b"s3cr3t")
    })
    .await;
    // A user deletes it; it comes back.
    fake.user_writes_secret("prod", "db", None);
    eventually("the deleted Secret is recreated", || {
        fake.secret("prod", "db").is_some()
    })
    .await;
    assert_eq!(
        memory.calls.decrypt.load(Ordering::Relaxed),
        1,
        "repairs use the cached data key"
    );
    running.stop().await;

    // Restart with nothing changed: the new process lists, finds everything in place, and
    // makes no KMS call and no Secret write.
    let applies = fake.lock().secret_applies;
    let running = start(&fake, memory.clone());
    eventually("ready after restart", || {
        running.ready.load(Ordering::Relaxed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        memory.calls.decrypt.load(Ordering::Relaxed),
        1,
        "no KMS call after a restart"
    );
    assert_eq!(
        fake.lock().secret_applies,
        applies,
        "no Secret write after a restart"
    );
    running.stop().await;
    let events = fake.lock().events.clone();
    assert!(events.iter().any(|e| e["reason"] == "Synced"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_selector_scope_the_watches() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    let running = start_with(
        &fake,
        memory.clone(),
        &[
            "--namespace",
            "prod",
            "--namespace",
            "staging",
            "--selector",
            "shard=a",
        ],
    );
    eventually("ready", || running.ready.load(Ordering::Relaxed)).await;
    eventually("the Secret in prod", || fake.secret("prod", "db").is_some()).await;
    let requests = fake.lock().es_requests.clone();
    for ns in ["prod", "staging"] {
        let path = format!("/apis/kmseal.dev/v1alpha1/namespaces/{ns}/encryptedsecrets?");
        assert!(
            requests.iter().any(|r| r.starts_with(&path)),
            "{ns} is watched: {requests:?}"
        );
    }
    assert!(
        requests
            .iter()
            .all(|r| r.contains("labelSelector=shard%3Da")),
        "every EncryptedSecret request carries the selector: {requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("/apis/kmseal.dev/v1alpha1/encryptedsecrets")),
        "no cluster-wide watch: {requests:?}"
    );
    running.stop().await;
}
