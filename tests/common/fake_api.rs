//! A small in-process fake of the Kubernetes API for the controller's runtime tests: list and
//! watch (streamed), metadata-only requests, create and replace of Secrets with their
//! preconditions, the status subresource, events and Leases. It stands in for the kind suite,
//! which needs Docker.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use kmseal::api::EncryptedSecret;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;
pub type Key = (String, String);

#[derive(Default)]
pub struct State {
    pub version: u64,
    pub encrypted: BTreeMap<Key, Value>,
    pub secrets: BTreeMap<Key, Value>,
    pub es_watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    pub secret_watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    pub events: Vec<Value>,
    /// How late EncryptedSecret watch events arrive (0: at once).
    pub es_event_delay: std::time::Duration,
    pub secret_writes: u64,
    pub event_patches: u64,
    pub status_writes: u64,
    /// Merge patches of EncryptedSecret values (re-wraps).
    pub value_patches: u64,
    pub secret_gets: u64,
    /// GETs of one EncryptedSecret.
    pub es_gets: u64,
    pub leases: BTreeMap<Key, Value>,
    /// Paths and queries of EncryptedSecret list/watch requests.
    pub es_requests: Vec<String>,
}

/// The bearer token of the "user" identity: requests with it are a person's (kubectl), not the
/// controller's (whose kubeconfig has no credentials).
pub const USER_TOKEN: &str = "e2e-user";

/// The fake API server's state, shared with the test.
#[derive(Clone, Default)]
pub struct Fake(pub Arc<Mutex<State>>);

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
        if self.es_event_delay.is_zero() {
            self.es_watchers
                .retain(|w| w.unbounded_send(bytes.clone()).is_ok());
        } else {
            // A watch that lags behind writes, as a real one can under load.
            let watchers = self.es_watchers.clone();
            let delay = self.es_event_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                for w in watchers {
                    let _ = w.unbounded_send(bytes.clone());
                }
            });
        }
    }

    /// Stores a changed EncryptedSecret as the API server does: a new generation when its spec
    /// differs from `before`'s, a new resourceVersion, and a watch event.
    fn store_es_change(&mut self, key: Key, before: &Value, mut object: Value) -> Value {
        let generation = before["metadata"]["generation"].as_i64().unwrap_or(1);
        object["metadata"]["generation"] =
            (generation + i64::from(object["spec"] != before["spec"])).into();
        object["metadata"]["resourceVersion"] = self.bump().into();
        self.encrypted.insert(key, object.clone());
        self.notify_es("MODIFIED", &object);
        object
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
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    pub fn add_encrypted(&self, es: &EncryptedSecret) {
        self.add_raw(serde_json::to_value(es).unwrap());
    }

    /// Adds an EncryptedSecret as raw JSON, as the API server would store it (the CRD schema
    /// aside): it need not match kmseal's types.
    pub fn add_raw(&self, mut value: Value) {
        let mut state = self.lock();
        value["metadata"]["resourceVersion"] = state.bump().into();
        value["metadata"]["uid"] = format!("uid-{}", state.version).into();
        value["metadata"]["generation"] = 1.into();
        let key = key_of(&value);
        state.encrypted.insert(key, value.clone());
        state.notify_es("ADDED", &value);
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.lock().secrets.get(&(ns.into(), name.into())).cloned()
    }

    pub fn status(&self, ns: &str, name: &str) -> Value {
        self.lock().encrypted[&(ns.to_owned(), name.to_owned())]["status"].clone()
    }

    /// A user (or a GitOps tool) applies `spec` to an existing EncryptedSecret: a new
    /// generation when it differs, the status kept.
    pub fn user_sets_spec(&self, ns: &str, name: &str, spec: Value) {
        let mut state = self.lock();
        let key = (ns.to_owned(), name.to_owned());
        let before = state.encrypted[&key].clone();
        let mut object = before.clone();
        object["spec"] = spec;
        state.store_es_change(key, &before, object);
    }

    /// A user edits (Some) or deletes (None) a Secret.
    pub fn user_writes_secret(&self, ns: &str, name: &str, new: Option<Value>) {
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

    /// Answers a request, given its head and its whole body.
    pub fn respond(&self, request: &http::request::Parts, body: &[u8]) -> Response<ResponseBody> {
        let accept = request
            .headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let query = request.uri.query().unwrap_or("");
        let user = request
            .headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == format!("Bearer {USER_TOKEN}").as_bytes());
        if user && let Some(response) = self.handle_user(&request.method, request.uri.path(), body)
        {
            return response;
        }
        self.handle(&request.method, request.uri.path(), query, accept, body)
    }

    /// What a person (or the end-to-end checks) does through kubectl: create, replace and
    /// delete EncryptedSecrets and Secrets, and read Secrets whole. Requests the controller
    /// also makes (lists, watches, one EncryptedSecret) are answered by [`Fake::handle`].
    fn handle_user(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Option<Response<ResponseBody>> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut state = self.lock();
        let parse = || serde_json::from_slice::<Value>(body).unwrap();
        Some(match (method.as_str(), segments.as_slice()) {
            ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
                match state.secrets.get(&((*ns).to_owned(), (*name).to_owned())) {
                    Some(secret) => ok(secret.clone()),
                    None => not_found(),
                }
            }
            ("POST", ["api", "v1", "namespaces", ns, "secrets"]) => {
                let mut secret = parse();
                if invalid_for_its_type(&secret).is_some() {
                    return Some(status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid"));
                }
                secret["metadata"]["namespace"] = (*ns).into();
                let key = key_of(&secret);
                if state.secrets.contains_key(&key) {
                    return Some(status(StatusCode::CONFLICT, "AlreadyExists"));
                }
                secret["metadata"]["resourceVersion"] = state.bump().into();
                secret["metadata"]["uid"] = format!("uid-{}", state.version).into();
                state.secrets.insert(key, secret.clone());
                state.notify_secret(None, Some(&secret));
                ok(secret)
            }
            ("PUT", ["api", "v1", "namespaces", ns, "secrets", name]) => {
                let mut secret = parse();
                if invalid_for_its_type(&secret).is_some() {
                    return Some(status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid"));
                }
                let key = ((*ns).to_owned(), (*name).to_owned());
                let Some(before) = state.secrets.get(&key).cloned() else {
                    return Some(not_found());
                };
                let wanted = &secret["metadata"]["resourceVersion"];
                if !wanted.is_null() && *wanted != before["metadata"]["resourceVersion"] {
                    return Some(status(StatusCode::CONFLICT, "Conflict"));
                }
                secret["metadata"]["resourceVersion"] = state.bump().into();
                state.secrets.insert(key, secret.clone());
                state.notify_secret(Some(&before), Some(&secret));
                ok(secret)
            }
            ("DELETE", ["api", "v1", "namespaces", ns, "secrets", name]) => {
                let key = ((*ns).to_owned(), (*name).to_owned());
                let Some(before) = state.secrets.remove(&key) else {
                    return Some(not_found());
                };
                state.notify_secret(Some(&before), None);
                ok(before)
            }
            (
                "POST",
                [
                    "apis",
                    "kmseal.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "encryptedsecrets",
                ],
            ) => {
                let mut object = parse();
                object["metadata"]["namespace"] = (*ns).into();
                let key = key_of(&object);
                if state.encrypted.contains_key(&key) {
                    return Some(status(StatusCode::CONFLICT, "AlreadyExists"));
                }
                object["metadata"]["resourceVersion"] = state.bump().into();
                object["metadata"]["uid"] = format!("uid-{}", state.version).into();
                object["metadata"]["generation"] = 1.into();
                state.encrypted.insert(key, object.clone());
                state.notify_es("ADDED", &object);
                ok(object)
            }
            (
                "PUT",
                [
                    "apis",
                    "kmseal.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "encryptedsecrets",
                    name,
                ],
            ) => {
                let mut object = parse();
                let key = ((*ns).to_owned(), (*name).to_owned());
                let Some(before) = state.encrypted.get(&key).cloned() else {
                    return Some(not_found());
                };
                // The main resource cannot change the status; the spec bumps the generation.
                object["status"] = before["status"].clone();
                object["metadata"]["uid"] = before["metadata"]["uid"].clone();
                ok(state.store_es_change(key, &before, object))
            }
            (
                "DELETE",
                [
                    "apis",
                    "kmseal.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "encryptedsecrets",
                    name,
                ],
            ) => {
                let key = ((*ns).to_owned(), (*name).to_owned());
                let Some(before) = state.encrypted.remove(&key) else {
                    return Some(not_found());
                };
                state.notify_es("DELETED", &before);
                ok(before)
            }
            _ => return None,
        })
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
                let (items, next) = page(
                    state
                        .encrypted
                        .iter()
                        .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
                        .map(|(k, v)| (k, v.clone())),
                    query,
                );
                ok(
                    json!({"apiVersion": "kmseal.dev/v1alpha1", "kind": "EncryptedSecretList",
                          "metadata": list_meta(state.version, next), "items": items}),
                )
            }
            (
                "GET",
                [
                    "apis",
                    "kmseal.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "encryptedsecrets",
                    name,
                ],
            ) => {
                state.es_gets += 1;
                match state.encrypted.get(&((*ns).to_owned(), (*name).to_owned())) {
                    Some(object) => ok(object.clone()),
                    None => not_found(),
                }
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
                state.status_writes += 1;
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
                ],
            ) => {
                // A merge patch of spec.encryptedData values (a re-wrap), with the object's
                // resourceVersion as precondition, as the API server does it.
                let patch: Value = serde_json::from_slice(body).unwrap();
                let key = ((*ns).to_owned(), (*name).to_owned());
                let Some(before) = state.encrypted.get(&key).cloned() else {
                    return not_found();
                };
                let wanted = &patch["metadata"]["resourceVersion"];
                if !wanted.is_null() && *wanted != before["metadata"]["resourceVersion"] {
                    return status(StatusCode::CONFLICT, "Conflict");
                }
                state.value_patches += 1;
                let mut object = before.clone();
                if let Some(values) = patch["spec"]["encryptedData"].as_object() {
                    for (item, value) in values {
                        object["spec"]["encryptedData"][item] = value.clone();
                    }
                }
                ok(state.store_es_change(key, &before, object))
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
                let namespace = (segments.len() == 5).then(|| segments[3]);
                let (items, next) = page(
                    state
                        .secrets
                        .iter()
                        .filter(|((ns, _), s)| namespace.is_none_or(|n| n == ns) && managed(s))
                        .map(|(k, s)| (k, partial(s))),
                    query,
                );
                ok(
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                          "metadata": list_meta(state.version, next), "items": items}),
                )
            }
            ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
                state.secret_gets += 1;
                assert!(
                    accept.contains("PartialObjectMetadata"),
                    "a Secret is only read as metadata"
                );
                match state.secrets.get(&((*ns).to_owned(), (*name).to_owned())) {
                    Some(secret) => ok(partial(secret)),
                    None => not_found(),
                }
            }
            ("POST", ["api", "v1", "namespaces", ns, "secrets"]) => {
                assert!(query.contains("fieldManager=kmseal-controller"), "{query}");
                assert!(
                    accept.contains("as=PartialObjectMetadata"),
                    "a write is answered with metadata only: {accept}"
                );
                state.secret_writes += 1;
                let mut created: Value = serde_json::from_slice(body).unwrap();
                if invalid_for_its_type(&created).is_some() {
                    return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
                }
                let name = created["metadata"]["name"].as_str().unwrap().to_owned();
                let key = ((*ns).to_owned(), name);
                if state.secrets.contains_key(&key) {
                    return status(StatusCode::CONFLICT, "AlreadyExists");
                }
                assert!(
                    created["metadata"].get("resourceVersion").is_none(),
                    "resourceVersion should not be set on objects to be created"
                );
                created["metadata"]["resourceVersion"] = state.bump().into();
                state.secrets.insert(key, created.clone());
                state.notify_secret(None, Some(&created));
                ok(partial(&created))
            }
            ("PUT", ["api", "v1", "namespaces", ns, "secrets", name]) => {
                assert!(query.contains("fieldManager=kmseal-controller"), "{query}");
                assert!(
                    accept.contains("as=PartialObjectMetadata"),
                    "a write is answered with metadata only: {accept}"
                );
                state.secret_writes += 1;
                let mut next: Value = serde_json::from_slice(body).unwrap();
                let key = ((*ns).to_owned(), (*name).to_owned());
                let Some(before) = state.secrets.get(&key).cloned() else {
                    return not_found();
                };
                if next["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"] {
                    return status(StatusCode::CONFLICT, "Conflict");
                }
                if next["type"] != before["type"] || invalid_for_its_type(&next).is_some() {
                    return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
                }
                let changed = {
                    let mut b = before.clone();
                    b["metadata"]["resourceVersion"] = Value::Null;
                    let mut n = next.clone();
                    n["metadata"]["resourceVersion"] = Value::Null;
                    b != n
                };
                if changed {
                    next["metadata"]["resourceVersion"] = state.bump().into();
                }
                state.secrets.insert(key, next.clone());
                state.notify_secret(Some(&before), Some(&next));
                ok(partial(&next))
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
            ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => {
                // The recorder patches an event it published before: the same event again.
                state.event_patches += 1;
                let patch: Value = serde_json::from_slice(body).unwrap();
                ok(patch)
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

/// One page of a list, as the API server serves it: at most `limit` items (all without one)
/// after the `continue` token, which here is the last key served.
fn page<'a>(
    items: impl Iterator<Item = (&'a Key, Value)>,
    query: &str,
) -> (Vec<Value>, Option<String>) {
    let param = |name: &str| {
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| v.replace("%2F", "/"))
        })
    };
    let limit = param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let after: Option<Key> = param("continue").and_then(|token| {
        let (ns, name) = token.split_once('/')?;
        Some((ns.to_owned(), name.to_owned()))
    });
    let mut served = Vec::new();
    let mut last = None;
    let mut rest = items.filter(|(key, _)| after.as_ref().is_none_or(|a| *key > a));
    for (key, value) in rest.by_ref().take(limit) {
        served.push(value);
        last = Some(format!("{}/{}", key.0, key.1));
    }
    let more = rest.next().is_some();
    (served, last.filter(|_| more))
}

fn list_meta(version: u64, next: Option<String>) -> Value {
    match next {
        Some(token) => json!({"resourceVersion": version.to_string(), "continue": token}),
        None => json!({"resourceVersion": version.to_string()}),
    }
}

/// What the API server's Secret validation refuses for the Secret's type (its required keys),
/// as `kubectl` would be told (422 Invalid).
fn invalid_for_its_type(secret: &Value) -> Option<String> {
    let has = |key: &str| {
        secret["data"][key].as_str().is_some_and(|v| !v.is_empty())
            || secret["stringData"][key]
                .as_str()
                .is_some_and(|v| !v.is_empty())
    };
    let missing = |keys: &[&str]| {
        keys.iter()
            .filter(|k| !has(k))
            .map(|k| format!("data[{k}]: Required value"))
            .collect::<Vec<_>>()
    };
    let problems = match secret["type"].as_str().unwrap_or("Opaque") {
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            missing(&["username", "password"])
        }
        "kubernetes.io/ssh-auth" => missing(&["ssh-privatekey"]),
        "kubernetes.io/tls" => missing(&["tls.crt", "tls.key"]),
        "kubernetes.io/dockerconfigjson" => missing(&[".dockerconfigjson"]),
        "kubernetes.io/dockercfg" => missing(&[".dockercfg"]),
        _ => Vec::new(),
    };
    (!problems.is_empty()).then(|| problems.join(", "))
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

fn status(code: StatusCode, reason: &str) -> Response<ResponseBody> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code.as_u16(), "message": reason});
    let mut response = ok(body);
    *response.status_mut() = code;
    response
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

/// Serves the fake over HTTP on loopback, as an API server process would; `requests` counts
/// the requests other than Lease ones. Returns the port.
pub async fn serve_http(fake: Fake, requests: Arc<std::sync::atomic::AtomicU64>) -> u16 {
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (fake, requests) = (fake.clone(), requests.clone());
        async move {
            if !request.uri().path().contains("/leases") {
                requests.fetch_add(1, Ordering::Relaxed);
            }
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let response = fake.respond(&parts, &body);
            let (parts, body) = response.into_parts();
            axum::response::Response::from_parts(parts, axum::body::Body::new(body))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A kubeconfig for the fake at `port`; with `user`, the person's identity (see
/// [`USER_TOKEN`]), else the controller's.
pub fn kubeconfig(port: u16, user: bool) -> String {
    let credentials = if user {
        format!("{{token: {USER_TOKEN}}}")
    } else {
        "{}".to_owned()
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\nusers:\n- name: fake\n  user: {credentials}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n"
    )
}

/// A client of the fake; `calls` counts its requests other than Lease ones.
pub fn client(fake: Fake, calls: Arc<std::sync::atomic::AtomicU64>) -> Client {
    let service = tower::service_fn(move |request: Request<Body>| {
        let fake = fake.clone();
        if !request.uri().path().contains("/leases") {
            calls.fetch_add(1, Ordering::Relaxed);
        }
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap_or_default();
            Ok::<_, Infallible>(fake.respond(&parts, &body))
        }
    });
    Client::new(service, "default")
}
