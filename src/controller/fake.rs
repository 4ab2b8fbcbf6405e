//! An in-memory cluster for controller tests and benchmarks.
//!
//! It keeps what kmseal's reconciles touch (Secrets, EncryptedSecret statuses, events) with
//! the API server behaviour they rely on: a create fails if the Secret exists, a replace fails
//! unless the resourceVersion still matches, a replace that changes nothing keeps the
//! resourceVersion, and every change gets a new one. It counts every call so tests can assert
//! API cost.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{ApiError, ClusterApi, WriteError};
use crate::api::{EncryptedSecret, EncryptedSecretStatus};
use crate::reconcile::{DesiredSecret, EventSpec, ExistingSecret};

type Key = (String, String);

/// Runs right before the next Secret write, e.g. to race it.
type Hook = Box<dyn FnOnce(&InMemoryCluster) + Send>;

#[derive(Default)]
struct State {
    secrets: BTreeMap<Key, Secret>,
    statuses: BTreeMap<Key, EncryptedSecretStatus>,
    events: Vec<(Key, EventSpec)>,
    /// EncryptedSecrets as the "cluster" has them now (`None`: deleted); objects never put
    /// here count as current.
    current: BTreeMap<Key, Option<EncryptedSecret>>,
}

/// Counters of API calls by kind.
#[derive(Debug, Default)]
pub struct ApiCalls {
    pub secret_gets: AtomicU64,
    /// GETs of an EncryptedSecret (for a write whose watched copy holds no values).
    pub encrypted_gets: AtomicU64,
    pub secret_applies: AtomicU64,
    pub status_applies: AtomicU64,
    /// Merge patches of EncryptedSecret values (re-wraps).
    pub value_patches: AtomicU64,
    pub events: AtomicU64,
}

#[derive(Default)]
pub struct InMemoryCluster {
    state: Mutex<State>,
    next_version: AtomicU64,
    before_write: Mutex<Option<Hook>>,
    pub calls: ApiCalls,
}

fn key_of(namespace: Option<&str>, name: Option<&str>) -> Key {
    (
        namespace.unwrap_or_default().to_owned(),
        name.unwrap_or_default().to_owned(),
    )
}

impl InMemoryCluster {
    pub fn new() -> Self {
        InMemoryCluster {
            next_version: AtomicU64::new(1),
            ..InMemoryCluster::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    fn bump(&self) -> String {
        self.next_version
            .fetch_add(1, Ordering::Relaxed)
            .to_string()
    }

    /// The stored Secret, as a user would `kubectl get` it.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.lock()
            .secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Creates or replaces a Secret as another actor would (a user, another controller).
    pub fn put_secret(&self, mut secret: Secret) {
        secret.metadata.resource_version = Some(self.bump());
        let key = key_of(
            secret.metadata.namespace.as_deref(),
            secret.metadata.name.as_deref(),
        );
        self.lock().secrets.insert(key, secret);
    }

    pub fn delete_secret(&self, namespace: &str, name: &str) {
        self.lock()
            .secrets
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// The EncryptedSecret as the API server would return it: with its stored status.
    pub fn with_status(&self, es: &EncryptedSecret) -> EncryptedSecret {
        let mut es = es.clone();
        es.status = self
            .lock()
            .statuses
            .get(&key_of(
                es.metadata.namespace.as_deref(),
                es.metadata.name.as_deref(),
            ))
            .cloned();
        es
    }

    pub fn events(&self) -> Vec<(Key, EventSpec)> {
        self.lock().events.clone()
    }

    pub fn secret_count(&self) -> usize {
        self.lock().secrets.len()
    }

    /// Records `es` as the object the cluster has now.
    pub fn put_encrypted(&self, es: &EncryptedSecret) {
        let key = key_of(
            es.metadata.namespace.as_deref(),
            es.metadata.name.as_deref(),
        );
        self.lock().current.insert(key, Some(es.clone()));
    }

    /// The EncryptedSecret is deleted: reconciles of it are no longer current.
    pub fn delete_encrypted(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        self.lock().current.insert(key, None);
    }

    /// Runs `hook` right before the next Secret write (after the reconcile planned it).
    pub fn before_next_write(&self, hook: impl FnOnce(&InMemoryCluster) + Send + 'static) {
        *crate::sync::lock(&self.before_write) = Some(Box::new(hook));
    }

    fn run_hook(&self) {
        let hook = crate::sync::lock(&self.before_write).take();
        if let Some(hook) = hook {
            hook(self);
        }
    }

    /// Stores a write as the API server would, and returns the resourceVersion.
    fn store(&self, key: Key, desired: &DesiredSecret, before: Option<Secret>) -> String {
        let mut next = Secret {
            metadata: desired.metadata.clone(),
            type_: Some(desired.type_.clone()),
            immutable: desired.immutable,
            data: Some(
                desired
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        // The body's resourceVersion is a precondition, not content; an unchanged Secret keeps
        // its version.
        next.metadata.resource_version = None;
        let kept = before.and_then(|mut b| {
            let version = b.metadata.resource_version.take();
            (b == next).then_some(version).flatten()
        });
        next.metadata.resource_version = Some(kept.unwrap_or_else(|| self.bump()));
        let version = next.metadata.resource_version.clone().unwrap_or_default();
        self.lock().secrets.insert(key, next);
        version
    }
}

impl ClusterApi for InMemoryCluster {
    async fn secret_meta(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ExistingSecret>, ApiError> {
        self.calls.secret_gets.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .lock()
            .secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|s| ExistingSecret::from(&s.metadata)))
    }

    async fn encrypted_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<EncryptedSecret>, ApiError> {
        self.calls.encrypted_gets.fetch_add(1, Ordering::Relaxed);
        let now = self
            .lock()
            .current
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .flatten();
        Ok(now.map(|es| self.with_status(&es)))
    }

    async fn create_secret(&self, desired: &DesiredSecret) -> Result<String, WriteError> {
        self.run_hook();
        self.calls.secret_applies.fetch_add(1, Ordering::Relaxed);
        let key = key_of(
            desired.metadata.namespace.as_deref(),
            desired.metadata.name.as_deref(),
        );
        if self.lock().secrets.contains_key(&key) {
            return Err(WriteError::Conflict);
        }
        Ok(self.store(key, desired, None))
    }

    async fn replace_secret(&self, desired: &DesiredSecret) -> Result<String, WriteError> {
        self.run_hook();
        self.calls.secret_applies.fetch_add(1, Ordering::Relaxed);
        let key = key_of(
            desired.metadata.namespace.as_deref(),
            desired.metadata.name.as_deref(),
        );
        let before = self.lock().secrets.get(&key).cloned();
        let Some(before) = before else {
            return Err(WriteError::Gone);
        };
        if before.metadata.resource_version != desired.metadata.resource_version {
            return Err(WriteError::Conflict);
        }
        if before.immutable == Some(true)
            && (before.data.as_ref().map(|d| d.keys().collect::<Vec<_>>())
                != Some(desired.data.keys().collect())
                || before.data.as_ref().is_some_and(|d| {
                    d.iter()
                        .any(|(k, v)| desired.data.get(k).map(|n| n.as_slice()) != Some(&v.0[..]))
                }))
        {
            return Err(WriteError::Api(ApiError::Other(
                "Secret is immutable: field is immutable when `immutable` is set".into(),
            )));
        }
        if before.type_.as_deref().unwrap_or("Opaque") != desired.type_ {
            return Err(WriteError::Api(ApiError::Other(
                "Secret type: field is immutable".into(),
            )));
        }
        Ok(self.store(key, desired, Some(before)))
    }

    async fn patch_values(
        &self,
        es: &EncryptedSecret,
        values: &BTreeMap<String, String>,
    ) -> Result<EncryptedSecret, WriteError> {
        self.calls.value_patches.fetch_add(1, Ordering::Relaxed);
        let key = key_of(
            es.metadata.namespace.as_deref(),
            es.metadata.name.as_deref(),
        );
        let now = self.lock().current.get(&key).cloned();
        let mut now = match now {
            Some(Some(now)) => now,
            Some(None) => return Err(WriteError::Gone),
            None => es.clone(),
        };
        if now.metadata.resource_version != es.metadata.resource_version {
            return Err(WriteError::Conflict);
        }
        let before = now.spec.clone();
        for (item, value) in values {
            now.spec.encrypted_data.insert(item.clone(), value.clone());
        }
        if now.spec != before {
            now.metadata.generation = Some(now.metadata.generation.unwrap_or(1) + 1);
        }
        now.metadata.resource_version = Some(self.bump());
        self.lock().current.insert(key, Some(now.clone()));
        Ok(self.with_status(&now))
    }

    async fn apply_status(
        &self,
        es: &EncryptedSecret,
        status: &EncryptedSecretStatus,
    ) -> Result<(), ApiError> {
        self.calls.status_applies.fetch_add(1, Ordering::Relaxed);
        let key = key_of(
            es.metadata.namespace.as_deref(),
            es.metadata.name.as_deref(),
        );
        self.lock().statuses.insert(key, status.clone());
        Ok(())
    }

    async fn publish_event(&self, es: &EncryptedSecret, event: &EventSpec) -> Result<(), ApiError> {
        self.calls.events.fetch_add(1, Ordering::Relaxed);
        let key = key_of(
            es.metadata.namespace.as_deref(),
            es.metadata.name.as_deref(),
        );
        self.lock().events.push((key, event.clone()));
        Ok(())
    }

    fn is_current(&self, es: &EncryptedSecret) -> bool {
        let key = key_of(
            es.metadata.namespace.as_deref(),
            es.metadata.name.as_deref(),
        );
        match self.lock().current.get(&key) {
            None => true,
            Some(None) => false,
            Some(Some(now)) => {
                now.metadata.uid == es.metadata.uid
                    && now.metadata.generation == es.metadata.generation
            }
        }
    }
}
