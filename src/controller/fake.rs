//! An in-memory cluster for controller tests and benchmarks.
//!
//! It keeps what kmseal's reconciles touch (Secrets, EncryptedSecret statuses, events) with
//! the API server behaviour they rely on: a server-side apply by kmseal's field manager
//! replaces the fields it sets, an apply that changes nothing keeps the resourceVersion, and
//! every change gets a new one. It counts every call so tests can assert API cost.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::Secret;

use super::{ApiError, ClusterApi};
use crate::api::{EncryptedSecret, EncryptedSecretStatus};
use crate::reconcile::{EventSpec, ExistingSecret};

type Key = (String, String);

#[derive(Default)]
struct State {
    secrets: BTreeMap<Key, Secret>,
    statuses: BTreeMap<Key, EncryptedSecretStatus>,
    events: Vec<(Key, EventSpec)>,
}

/// Counters of API calls by kind.
#[derive(Debug, Default)]
pub struct ApiCalls {
    pub secret_gets: AtomicU64,
    pub secret_applies: AtomicU64,
    pub status_applies: AtomicU64,
    pub events: AtomicU64,
}

#[derive(Default)]
pub struct InMemoryCluster {
    state: Mutex<State>,
    next_version: AtomicU64,
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
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

    async fn apply_secret(&self, desired: &Secret) -> Result<String, ApiError> {
        self.calls.secret_applies.fetch_add(1, Ordering::Relaxed);
        let key = key_of(
            desired.metadata.namespace.as_deref(),
            desired.metadata.name.as_deref(),
        );
        let mut state = self.lock();
        let mut next = state.secrets.get(&key).cloned().unwrap_or_default();
        if next.immutable == Some(true) && next.data != desired.data {
            return Err(ApiError::Other(
                "Secret is immutable: field is immutable when `immutable` is set".into(),
            ));
        }
        let before = next.clone();
        // kmseal is the only field manager here, so its apply owns these fields outright;
        // fields it no longer sets disappear, as with server-side apply.
        next.metadata.name = desired.metadata.name.clone();
        next.metadata.namespace = desired.metadata.namespace.clone();
        next.metadata.owner_references = desired.metadata.owner_references.clone();
        let labels = desired.metadata.labels.clone().unwrap_or_default();
        let mut annotations = desired.metadata.annotations.clone().unwrap_or_default();
        // Keep an adopted Secret's own annotation (not a field kmseal sets).
        if let Some(adopt) = before
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::reconcile::ADOPT_ANNOTATION))
        {
            annotations
                .entry(crate::reconcile::ADOPT_ANNOTATION.to_owned())
                .or_insert_with(|| adopt.clone());
        }
        next.metadata.labels = Some(labels);
        next.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
        next.type_ = desired.type_.clone();
        next.immutable = desired.immutable;
        next.data = desired.data.clone();
        if next != before || before.metadata.resource_version.is_none() {
            next.metadata.resource_version = Some(self.bump());
        }
        let version = next.metadata.resource_version.clone().unwrap_or_default();
        state.secrets.insert(key, next);
        Ok(version)
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
}
