//! The I/O shell around [`crate::reconcile`]: reads what it needs from the cluster, calls KMS,
//! applies the Secret and the status, publishes events, and decides when to look again.
//!
//! Cluster access goes through [`ClusterApi`], implemented for a real API server by
//! [`KubeClusterApi`] and in memory by [`fake::InMemoryCluster`] for tests and benchmarks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource};
use serde::Serialize;

use crate::api::{EncryptedSecret, EncryptedSecretStatus};
use crate::kms::Kms;
use crate::metrics::{Metrics, ReasonLabels, ResultLabels};
use crate::reconcile::{self, EventSpec, ExistingSecret, Outcome, Plan, reason};
use crate::seal;

pub mod fake;
pub mod runtime;

/// A failure to talk to the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

impl ApiError {
    /// A short, secret-free description for conditions and events.
    pub fn summary(&self) -> String {
        match self {
            ApiError::Kube(kube::Error::Api(status)) => {
                format!("{} ({})", truncate(&status.message, 300), status.code)
            }
            other => truncate(&other.to_string(), 300),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// The cluster operations a reconcile needs.
pub trait ClusterApi: Send + Sync {
    /// Metadata of the Secret `namespace/name`, if it exists.
    fn secret_meta(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ExistingSecret>, ApiError>> + Send;

    /// Server-side applies the Secret; returns its resourceVersion afterwards.
    fn apply_secret(
        &self,
        secret: &Secret,
    ) -> impl Future<Output = Result<String, ApiError>> + Send;

    /// Server-side applies the status subresource.
    fn apply_status(
        &self,
        es: &EncryptedSecret,
        status: &EncryptedSecretStatus,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Publishes an event about the EncryptedSecret.
    fn publish_event(
        &self,
        es: &EncryptedSecret,
        event: &EventSpec,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// The status subresource as a server-side apply body: typed, with apiVersion and kind from
/// the CRD's Rust type.
#[derive(Debug, Serialize)]
struct StatusApply<'a> {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    status: &'a EncryptedSecretStatus,
}

/// [`ClusterApi`] on a real API server.
pub struct KubeClusterApi {
    client: Client,
    /// Metadata of the Secrets kmseal manages, kept by a label-filtered watch. Secrets not in it
    /// (new ones, foreign ones) are looked up with a GET.
    managed: Option<Store<PartialObjectMeta<Secret>>>,
    recorder: Recorder,
}

impl KubeClusterApi {
    pub fn new(
        client: Client,
        managed: Option<Store<PartialObjectMeta<Secret>>>,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: reconcile::FIELD_MANAGER.to_owned(),
                instance,
            },
        );
        KubeClusterApi {
            client,
            managed,
            recorder,
        }
    }
}

impl ClusterApi for KubeClusterApi {
    async fn secret_meta(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ExistingSecret>, ApiError> {
        if let Some(store) = &self.managed
            && let Some(meta) = store.get(&ObjectRef::new(name).within(namespace))
        {
            return Ok(Some(ExistingSecret::from(&meta.metadata)));
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        Ok(api
            .get_metadata_opt(name)
            .await?
            .map(|meta| ExistingSecret::from(&meta.metadata)))
    }

    async fn apply_secret(&self, secret: &Secret) -> Result<String, ApiError> {
        let namespace = secret.metadata.namespace.as_deref().unwrap_or_default();
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let mut body = serde_json::to_value(secret).map_err(|e| ApiError::Other(e.to_string()))?;
        body["apiVersion"] = "v1".into();
        body["kind"] = "Secret".into();
        let params = PatchParams::apply(reconcile::FIELD_MANAGER).force();
        let applied = api.patch(name, &params, &Patch::Apply(&body)).await?;
        Ok(applied.metadata.resource_version.unwrap_or_default())
    }

    async fn apply_status(
        &self,
        es: &EncryptedSecret,
        status: &EncryptedSecretStatus,
    ) -> Result<(), ApiError> {
        let namespace = es.metadata.namespace.as_deref().unwrap_or_default();
        let name = es.metadata.name.as_deref().unwrap_or_default();
        let api: Api<EncryptedSecret> = Api::namespaced(self.client.clone(), namespace);
        let body = StatusApply {
            api_version: EncryptedSecret::api_version(&()).into_owned(),
            kind: EncryptedSecret::kind(&()).into_owned(),
            status,
        };
        let params = PatchParams::apply(reconcile::FIELD_MANAGER).force();
        api.patch_status(name, &params, &Patch::Apply(&body))
            .await?;
        Ok(())
    }

    async fn publish_event(&self, es: &EncryptedSecret, event: &EventSpec) -> Result<(), ApiError> {
        let event = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.to_owned(),
            note: Some(truncate(&event.note, 1000)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        self.recorder
            .publish(&event, &es.object_ref(&()))
            .await
            .map_err(ApiError::from)
    }
}

/// What one reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// Nothing to do: no KMS call, no write.
    UpToDate,
    /// The Secret was applied.
    Applied,
    /// A foreign Secret is in the way.
    Refused,
    /// Decrypting or applying failed; the Secret was left as it was.
    Failed(&'static str),
}

/// Timing knobs.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often an up-to-date object is looked at again (cheap: no KMS call).
    pub resync: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            resync: Duration::from_secs(600),
        }
    }
}

/// Reconciles EncryptedSecrets with a KMS and a cluster.
pub struct Reconciler<K, A> {
    pub kms: K,
    pub api: A,
    pub metrics: Arc<Metrics>,
    pub timing: Timing,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<(String, String), u32>>,
}

/// Why a reconcile could not finish; the object is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the EncryptedSecret has no namespace or name")]
    Unnamed,
    #[error(transparent)]
    Api(#[from] ApiError),
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::cli::rfc3339(secs)
}

fn jitter() -> f64 {
    let mut byte = [0u8; 1];
    // Jitter only spreads retries; without randomness, no jitter is fine.
    let _ = crate::random::fill(&mut byte);
    f64::from(byte[0]) / 255.0
}

impl<K: Kms, A: ClusterApi> Reconciler<K, A> {
    pub fn new(kms: K, api: A, metrics: Arc<Metrics>, timing: Timing) -> Self {
        Reconciler {
            kms,
            api,
            metrics,
            timing,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn key(es: &EncryptedSecret) -> (String, String) {
        (
            es.metadata.namespace.clone().unwrap_or_default(),
            es.metadata.name.clone().unwrap_or_default(),
        )
    }

    fn record_failure(&self, es: &EncryptedSecret) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(Self::key(es)).or_insert(0);
        *count = count.saturating_add(1);
        reconcile::backoff_delay(*count, jitter())
    }

    fn record_success(&self, es: &EncryptedSecret) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Self::key(es));
    }

    /// Drops the backoff state of objects for which `exists(namespace, name)` is false
    /// (deleted EncryptedSecrets are never reconciled again, so nothing else would).
    pub fn prune_failures(&self, exists: impl Fn(&str, &str) -> bool) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(namespace, name), _| exists(namespace, name));
    }

    /// Objects currently in backoff.
    pub fn failing_objects(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The back-off for an object whose reconcile returned an error.
    pub fn error_backoff(&self, es: &EncryptedSecret) -> Duration {
        self.record_failure(es)
    }

    /// Reconciles one object and says when to look at it again.
    pub async fn reconcile(
        &self,
        es: &EncryptedSecret,
    ) -> Result<(Reconciled, Action), ReconcileError> {
        let started = Instant::now();
        let result = self.reconcile_inner(es).await;
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        let (label, failure) = match &result {
            Ok((Reconciled::UpToDate, _)) => ("up_to_date", None),
            Ok((Reconciled::Applied, _)) => ("applied", None),
            Ok((Reconciled::Refused, _)) => ("refused", Some(reason::SECRET_EXISTS)),
            Ok((Reconciled::Failed(r), _)) => ("failed", Some(*r)),
            Err(_) => ("failed", Some(reason::APPLY_FAILED)),
        };
        self.metrics
            .reconciles
            .get_or_create(&ResultLabels { result: label })
            .inc();
        if let Some(reason) = failure {
            self.metrics
                .failures
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
        result
    }

    async fn reconcile_inner(
        &self,
        es: &EncryptedSecret,
    ) -> Result<(Reconciled, Action), ReconcileError> {
        let namespace = es
            .metadata
            .namespace
            .as_deref()
            .ok_or(ReconcileError::Unnamed)?;
        let name = es.metadata.name.as_deref().ok_or(ReconcileError::Unnamed)?;
        let existing = self.api.secret_meta(namespace, name).await?;
        match reconcile::plan(es, existing.as_ref()) {
            Plan::UpToDate => {
                self.record_success(es);
                Ok((Reconciled::UpToDate, Action::requeue(self.timing.resync)))
            }
            Plan::Refuse { message } => {
                let outcome = Outcome {
                    ready: false,
                    reason: reason::SECRET_EXISTS,
                    message,
                    key_arns: vec![],
                    applied: None,
                };
                self.report(es, &outcome).await?;
                // The Secret watch only sees managed Secrets, so look again for a hand-over.
                Ok((
                    Reconciled::Refused,
                    Action::requeue(self.record_failure(es)),
                ))
            }
            Plan::Apply => self.apply(es, namespace, name).await,
        }
    }

    async fn apply(
        &self,
        es: &EncryptedSecret,
        namespace: &str,
        name: &str,
    ) -> Result<(Reconciled, Action), ReconcileError> {
        let opened = seal::open_all(&self.kms, es, namespace, name).await;
        let failed: Vec<(&String, &seal::OpenError)> = opened
            .iter()
            .filter_map(|(item, r)| r.as_ref().err().map(|e| (item, e)))
            .collect();
        if let Some((item, first)) = failed.first() {
            let more = if failed.len() > 1 {
                format!(" ({} more items failed too)", failed.len() - 1)
            } else {
                String::new()
            };
            let outcome = Outcome {
                ready: false,
                reason: reconcile::reason_for_category(first.category()),
                message: format!(
                    "item {item}: {first}{more}; the existing Secret, if any, was left unchanged"
                ),
                key_arns: vec![],
                applied: None,
            };
            self.report(es, &outcome).await?;
            return Ok((
                Reconciled::Failed(outcome.reason),
                Action::requeue(self.record_failure(es)),
            ));
        }
        let mut key_arns = BTreeSet::new();
        let mut data = BTreeMap::new();
        for (item, result) in opened {
            if let Ok(o) = result {
                key_arns.insert(o.key_arn);
                data.insert(item, ByteString(o.plaintext.to_vec()));
            }
        }
        let secret = reconcile::desired_secret(es, data);
        let applied = self.api.apply_secret(&secret).await;
        drop(secret);
        let outcome = match applied {
            Ok(resource_version) => Outcome {
                ready: true,
                reason: reason::SYNCED,
                message: format!(
                    "Secret {name} has the {} item(s) of this EncryptedSecret",
                    es.spec.encrypted_data.len()
                ),
                key_arns: key_arns.into_iter().collect(),
                applied: Some((reconcile::fingerprint(es), resource_version)),
            },
            Err(e) => Outcome {
                ready: false,
                reason: reason::APPLY_FAILED,
                message: format!(
                    "applying Secret {name} failed: {}{}",
                    e.summary(),
                    if es.spec.template.as_ref().and_then(|t| t.immutable) == Some(true) {
                        "; an immutable Secret cannot change: delete it and kmseal recreates it"
                    } else {
                        ""
                    }
                ),
                key_arns: vec![],
                applied: None,
            },
        };
        self.report(es, &outcome).await?;
        if outcome.ready {
            self.record_success(es);
            Ok((Reconciled::Applied, Action::requeue(self.timing.resync)))
        } else {
            Ok((
                Reconciled::Failed(outcome.reason),
                Action::requeue(self.record_failure(es)),
            ))
        }
    }

    /// Writes the status if it changed and emits an event if the Ready condition changed.
    async fn report(&self, es: &EncryptedSecret, outcome: &Outcome) -> Result<(), ApiError> {
        let next = reconcile::next_status(es, outcome, &now_rfc3339());
        if let Some(event) = reconcile::transition_event(es, outcome) {
            // An event is best effort: failing to publish it must not block the status.
            if let Err(e) = self.api.publish_event(es, &event).await {
                tracing::warn!(error = %e.summary(), "could not publish an event");
            }
        }
        if reconcile::status_changed(es, &next) {
            self.api.apply_status(es, &next).await?;
        }
        Ok(())
    }
}
