//! The I/O shell around [`crate::reconcile`]: reads what it needs from the cluster, calls KMS,
//! writes the Secret and the status, publishes events, and decides when to look again.
//!
//! Cluster access goes through [`ClusterApi`], implemented for a real API server by
//! [`KubeClusterApi`] and in memory by `fake::InMemoryCluster` for tests and benchmarks (the
//! `testing` feature).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::api::{EncryptedSecret, EncryptedSecretStatus};
use crate::kms::Kms;
use crate::metrics::{Metrics, ReasonLabels, ResultLabels};
use crate::open;
use crate::reconcile::{
    self, DesiredSecret, EventSpec, ExistingSecret, OpenFailed, Outcome, Plan, Written, reason,
};
use crate::rotation;
use crate::time::{now_rfc3339, unix_now};
use crate::wrapping::ItemKeys;

pub mod admission;
pub mod body;
/// An in-memory cluster for tests and benchmarks (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod key_facts;
pub mod recent;
pub mod resync;
pub mod retries;
pub mod rewrap;
pub mod runtime;
pub mod secret_index;
pub mod tenant_identity;
pub mod waiting_room;
pub mod watched;
pub mod webhook_certs;
pub mod webhook_server;

pub use admission::Admission;
pub use recent::RecentWrites;
pub use waiting_room::WaitingRoom;

/// A failure to talk to the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

impl ApiError {
    /// Whether the API server answered (and refused); otherwise it could not be asked.
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            ApiError::Kube(kube::Error::Api(_)) | ApiError::Other(_)
        )
    }

    /// A short, secret-free description for conditions and events.
    pub fn summary(&self) -> String {
        match self {
            ApiError::Kube(kube::Error::Api(status)) => {
                format!(
                    "{} ({})",
                    crate::text::bounded(&status.message, 300),
                    status.code
                )
            }
            other => crate::text::bounded(&other.to_string(), 300),
        }
    }
}

/// Why a Secret write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Create: a Secret of that name exists. Replace: the Secret is no longer the version
    /// whose ownership was checked. Either way nothing was written.
    #[error("the Secret changed or appeared meanwhile (409 Conflict)")]
    Conflict,
    /// Replace: the Secret was deleted meanwhile.
    #[error("the Secret was deleted meanwhile (404 Not Found)")]
    Gone,
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// The cluster operations a reconcile needs.
pub trait ClusterApi: Send + Sync {
    /// Metadata of the Secret `namespace/name`, if it exists.
    fn secret_meta(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ExistingSecret>, ApiError>> + Send;

    /// The EncryptedSecret `namespace/name` as the API server has it now, if it exists: for a
    /// write whose watched copy no longer holds the values (see [`watched::Settled`]).
    fn encrypted_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<EncryptedSecret>, ApiError>> + Send;

    /// Creates the Secret; fails with [`WriteError::Conflict`] if one of that name exists.
    /// Returns its resourceVersion.
    fn create_secret(
        &self,
        secret: &DesiredSecret,
    ) -> impl Future<Output = Result<String, WriteError>> + Send;

    /// Replaces the Secret whole, on condition that it still has the resourceVersion in
    /// `secret.metadata` ([`WriteError::Conflict`] otherwise). Returns the new resourceVersion.
    fn replace_secret(
        &self,
        secret: &DesiredSecret,
    ) -> impl Future<Output = Result<String, WriteError>> + Send;

    /// Sets some values of `spec.encryptedData` (a key rotation's re-wrap) with a merge patch
    /// under its own field manager ([`REWRAP_FIELD_MANAGER`]), on condition that the object
    /// still has `es`'s resourceVersion ([`WriteError::Conflict`] otherwise; [`WriteError::Gone`]
    /// when deleted). Returns the object as patched.
    fn patch_values(
        &self,
        es: &EncryptedSecret,
        values: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<EncryptedSecret, WriteError>> + Send;

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

    /// Whether `es` is still the object as the cluster has it now (not deleted, not changed in
    /// anything that decides the Secret). A reconcile of an outdated object stops making KMS
    /// calls.
    fn is_current(&self, es: &EncryptedSecret) -> bool;
}

/// One cluster shared by several reconcilers (tests, benchmarks).
impl<A: ClusterApi> ClusterApi for Arc<A> {
    fn secret_meta(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ExistingSecret>, ApiError>> + Send {
        (**self).secret_meta(namespace, name)
    }

    fn encrypted_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<EncryptedSecret>, ApiError>> + Send {
        (**self).encrypted_secret(namespace, name)
    }

    fn create_secret(
        &self,
        secret: &DesiredSecret,
    ) -> impl Future<Output = Result<String, WriteError>> + Send {
        (**self).create_secret(secret)
    }

    fn replace_secret(
        &self,
        secret: &DesiredSecret,
    ) -> impl Future<Output = Result<String, WriteError>> + Send {
        (**self).replace_secret(secret)
    }

    fn patch_values(
        &self,
        es: &EncryptedSecret,
        values: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<EncryptedSecret, WriteError>> + Send {
        (**self).patch_values(es, values)
    }

    fn apply_status(
        &self,
        es: &EncryptedSecret,
        status: &EncryptedSecretStatus,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        (**self).apply_status(es, status)
    }

    fn publish_event(
        &self,
        es: &EncryptedSecret,
        event: &EventSpec,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        (**self).publish_event(es, event)
    }

    fn is_current(&self, es: &EncryptedSecret) -> bool {
        (**self).is_current(es)
    }
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

/// Whether the object the cluster has now is still `es`, as far as the Secret goes.
pub type CurrentCheck = Arc<dyn Fn(&EncryptedSecret) -> bool + Send + Sync>;

/// [`ClusterApi`] on a real API server.
pub struct KubeClusterApi {
    client: Client,
    /// Metadata of the Secrets kmseal manages, kept by a label-filtered watch. Secrets not in it
    /// (new ones, foreign ones) are looked up with a GET.
    managed: Option<Arc<secret_index::SecretIndex>>,
    current: Option<CurrentCheck>,
    /// Who publishes the events. Each event gets its own [`Recorder`]: one shared recorder
    /// keeps every event it published for six minutes (to count repeats as a series), which
    /// on a cold start of 10,000 objects held about 30 MiB. Events are published only on
    /// transitions, so there is little to count.
    reporter: Reporter,
    /// Secrets a GET found absent, and when: a reconcile that comes back soon after (deferred
    /// by the KMS budget, say) does not ask again. Safe, because a create of a Secret that
    /// appeared meanwhile fails and is refused.
    absent: Mutex<HashMap<(String, String), Instant>>,
}

/// How long a Secret a GET found absent is taken as absent without asking again: long enough
/// for an object to wait its turn in the KMS budget during a cold start (10,000 objects at
/// 50/s take 200 s).
const ABSENT_FOR: Duration = Duration::from_secs(900);

/// Asks the API server to answer a write with the object's metadata only, so the response
/// never carries the Secret's data back.
const METADATA_ONLY: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

impl KubeClusterApi {
    pub fn new(
        client: Client,
        managed: Option<Arc<secret_index::SecretIndex>>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: reconcile::FIELD_MANAGER.to_owned(),
            instance,
        };
        KubeClusterApi {
            client,
            managed,
            current: None,
            reporter,
            absent: Mutex::new(HashMap::new()),
        }
    }

    /// Lets reconciles know when their object changed or went away (the runtime passes a
    /// lookup in its EncryptedSecret store).
    pub fn with_current_check(mut self, current: CurrentCheck) -> Self {
        self.current = Some(current);
        self
    }

    /// POST (create) or PUT (replace) of a Secret, with a zeroizing body and a metadata-only
    /// response.
    async fn write_secret(
        &self,
        secret: &DesiredSecret,
        create: bool,
    ) -> Result<String, WriteError> {
        let namespace = secret.metadata.namespace.as_deref().unwrap_or_default();
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let body = body::secret_body(secret).map_err(|e| ApiError::Other(e.to_string()))?;
        let collection = format!("/api/v1/namespaces/{namespace}/secrets");
        let query = format!("fieldManager={}", reconcile::FIELD_MANAGER);
        let (method, uri) = if create {
            (http::Method::POST, format!("{collection}?{query}"))
        } else {
            (http::Method::PUT, format!("{collection}/{name}?{query}"))
        };
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, METADATA_ONLY)
            // The buffer is wiped when the HTTP stack lets go of the body.
            .body(kube::client::Body::from(bytes::Bytes::from_owner(body)))
            .map_err(|e| ApiError::Other(e.to_string()))?;
        let response = self.client.send(request).await.map_err(ApiError::from)?;
        let status = response.status();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| ApiError::Other(format!("reading the API server's answer: {e}")))?
            .to_bytes();
        match status.as_u16() {
            200..=299 => {
                let meta: PartialObjectMeta<Secret> =
                    serde_json::from_slice(&bytes).map_err(|_| {
                        ApiError::Other("the API server's answer is not object metadata".into())
                    })?;
                Ok(meta.metadata.resource_version.unwrap_or_default())
            }
            409 => Err(WriteError::Conflict),
            404 if !create => Err(WriteError::Gone),
            code => {
                // A Status object; its message says what the API server refused, never data.
                let message = serde_json::from_slice::<kube::core::Status>(&bytes)
                    .map(|s| s.message)
                    .unwrap_or_else(|_| "no explanation".into());
                Err(WriteError::Api(ApiError::Other(format!(
                    "{} ({code})",
                    crate::text::bounded(&message, 300)
                ))))
            }
        }
    }
}

impl ClusterApi for KubeClusterApi {
    async fn secret_meta(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ExistingSecret>, ApiError> {
        if let Some(index) = &self.managed {
            // Until the watch has listed, a Secret missing from it may just not be there yet.
            let _ = tokio::time::timeout(STORE_SYNC_WAIT, index.wait_until_ready()).await;
            if let Some(existing) = index.get(namespace, name) {
                return Ok(Some(existing));
            }
        }
        let key = (namespace.to_owned(), name.to_owned());
        {
            let mut absent = crate::sync::lock(&self.absent);
            match absent.get(&key) {
                Some(at) if at.elapsed() < ABSENT_FOR => return Ok(None),
                Some(_) => {
                    absent.remove(&key);
                }
                None => {}
            }
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let found = api
            .get_metadata_opt(name)
            .await?
            .map(|meta| ExistingSecret::from(&meta.metadata));
        if found.is_none() {
            let mut absent = crate::sync::lock(&self.absent);
            // Expired entries go when the map doubles: amortized constant time per insert.
            if absent.len() >= 1024 && absent.len().is_power_of_two() {
                absent.retain(|_, at| at.elapsed() < ABSENT_FOR);
            }
            absent.insert(key, Instant::now());
        }
        Ok(found)
    }

    async fn encrypted_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<EncryptedSecret>, ApiError> {
        let api: Api<EncryptedSecret> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?)
    }

    async fn create_secret(&self, secret: &DesiredSecret) -> Result<String, WriteError> {
        let written = self.write_secret(secret, true).await;
        // Whatever happened, the Secret is no longer known to be absent.
        let key = (
            secret.metadata.namespace.clone().unwrap_or_default(),
            secret.metadata.name.clone().unwrap_or_default(),
        );
        crate::sync::lock(&self.absent).remove(&key);
        written
    }

    async fn replace_secret(&self, secret: &DesiredSecret) -> Result<String, WriteError> {
        self.write_secret(secret, false).await
    }

    async fn patch_values(
        &self,
        es: &EncryptedSecret,
        values: &BTreeMap<String, String>,
    ) -> Result<EncryptedSecret, WriteError> {
        let namespace = es.metadata.namespace.as_deref().unwrap_or_default();
        let name = es.metadata.name.as_deref().unwrap_or_default();
        let api: Api<EncryptedSecret> = Api::namespaced(self.client.clone(), namespace);
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": es.metadata.resource_version},
            "spec": {"encryptedData": values},
        });
        let params = PatchParams {
            field_manager: Some(REWRAP_FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match api.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(patched) => Ok(patched),
            Err(kube::Error::Api(status)) if status.code == 409 => Err(WriteError::Conflict),
            Err(kube::Error::Api(status)) if status.code == 404 => Err(WriteError::Gone),
            Err(e) => Err(WriteError::Api(e.into())),
        }
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
            note: Some(crate::text::bounded(&event.note, 1000)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(&event, &es.object_ref(&()))
            .await
            .map_err(ApiError::from)
    }

    fn is_current(&self, es: &EncryptedSecret) -> bool {
        self.current.as_ref().is_none_or(|current| current(es))
    }
}

/// How long a reconcile waits for the managed-Secret watch to list before it asks the API
/// server for a Secret it does not see.
const STORE_SYNC_WAIT: Duration = Duration::from_secs(30);

/// The field manager of the controller's re-wraps of `spec.encryptedData` values: apart from
/// its own, so `kubectl get --show-managed-fields` tells them from what people applied.
pub const REWRAP_FIELD_MANAGER: &str = "kmseal-rewrap";

/// What one reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// Nothing to do: no KMS call, no write.
    UpToDate,
    /// The Secret was written.
    Applied,
    /// A foreign Secret is in the way.
    Refused,
    /// Deciding, decrypting or writing failed; the Secret was left as it was.
    Failed(&'static str),
    /// The object changed or was deleted while it was being reconciled: nothing more was done
    /// (no further KMS call, no write); the change itself triggers the next reconcile.
    Cancelled,
    /// Its namespace already has its share of KMS requests waiting: tried again shortly, with
    /// nothing reported.
    Deferred,
    /// It failed before and waits out its backoff or its namespace's failure budget (see
    /// [`retries`]): nothing was sent to KMS or written; tried again when that is over.
    BackingOff,
}

/// How often deferred objects are brought back, as far as the KMS budget has room, when no
/// request leaving the budget brought them back earlier: a safety net, not the normal way back.
pub const DEFERRED_RETRY: Duration = Duration::from_secs(30);

/// Reconciles EncryptedSecrets with a KMS and a cluster.
pub struct Reconciler<K, A> {
    kms: K,
    api: A,
    metrics: Arc<Metrics>,
    /// What tenants may ask for: keys per namespace, Secret types.
    admission: Arc<Admission>,
    /// What this controller just wrote, so its own writes do not make it work again.
    recent: Arc<RecentWrites>,
    /// Failed objects' backoff and the namespaces' failure budgets.
    retries: Mutex<retries::Retries>,
    /// Objects whose last attempt found KMS unavailable: retried as soon as it answers again.
    kms_waiting: Mutex<HashMap<(String, String), KmsWaiting>>,
    /// Objects the KMS budget turned away, brought back when it has room.
    deferred: Arc<WaitingRoom>,
    /// What KMS says about keys, for the `KeyCurrent` condition (refreshed in the background).
    key_facts: Arc<key_facts::KeyFactsCache>,
    /// Objects whose values are not current: (reason, values), for the `stale_values` gauge.
    not_current: Mutex<HashMap<(String, String), NotCurrent>>,
    /// Key rotation in the cluster: the policy and the queue of objects to re-wrap.
    rotation: Arc<rewrap::Rotation>,
    /// Tenants' ServiceAccount credentials (per-tenant identity); `None` when it is off.
    identities: Option<Arc<tenant_identity::TenantIdentities>>,
}

/// What a [`Reconciler`] shares with the rest of the runtime.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    /// One for every scope: keys are looked up once, whoever uses them.
    pub key_facts: Arc<key_facts::KeyFactsCache>,
    pub rotation: Arc<rewrap::Rotation>,
    /// Per-tenant identity's credentials, when it is on.
    pub identities: Option<Arc<tenant_identity::TenantIdentities>>,
}

/// An object's values that are not current: the `KeyCurrent` reason and how many.
type NotCurrent = (&'static str, usize);

/// What a status write says about the values' keys (the `KeyCurrent` condition).
#[derive(Debug, Clone, Copy)]
enum KeyView<'a> {
    /// The object passed the key policy: its values' keys, as the reconcile read them.
    Judge(&'a ItemKeys),
    /// Refused before any KMS call (a key the namespace may not use, a malformed item):
    /// nothing is said about any key it names, and a condition from before goes.
    Refused,
    /// The keys could not be read here: the condition stays as it is.
    Unknown,
}

impl<'a> From<Option<&'a ItemKeys>> for KeyView<'a> {
    fn from(keys: Option<&'a ItemKeys>) -> Self {
        keys.map_or(KeyView::Unknown, KeyView::Judge)
    }
}

/// An attempt at KMS for `es`, for its backoff.
fn attempt_of(es: &EncryptedSecret) -> retries::Attempt<'_> {
    retries::Attempt {
        namespace: es.metadata.namespace.as_deref().unwrap_or_default(),
        name: es.metadata.name.as_deref().unwrap_or_default(),
        uid: es.metadata.uid.as_deref().unwrap_or_default(),
        generation: es.metadata.generation,
    }
}

/// An object waiting for KMS to come back.
#[derive(Debug, Clone)]
struct KmsWaiting {
    since: tokio::time::Instant,
    /// A key its items use, to ask KMS whether it is back.
    key: Option<String>,
}

/// Why a reconcile could not finish; the object is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the EncryptedSecret has no namespace or name")]
    Unnamed,
    #[error(transparent)]
    Api(#[from] ApiError),
}

fn jitter() -> f64 {
    let mut byte = [0u8; 1];
    // Jitter only spreads retries; without randomness, no jitter is fine.
    let _ = crate::random::fill(&mut byte);
    f64::from(byte[0]) / 255.0
}

/// An object's opened values, sorted for the write and a v1 upgrade.
struct Values {
    /// Every value, for the Secret.
    data: BTreeMap<String, Zeroizing<Vec<u8>>>,
    /// The keys they were opened with.
    key_arns: Vec<String>,
    /// The plaintexts of the values the upgrade seals again.
    upgrading: BTreeMap<String, Zeroizing<Vec<u8>>>,
    /// The keys of the values the upgrade leaves as they are.
    kept: BTreeSet<String>,
}

impl Values {
    fn sort(opened: BTreeMap<String, open::Opened>, upgrade: Option<&[rewrap::V1Upgrade]>) -> Self {
        let mut key_arns = BTreeSet::new();
        let mut values = Values {
            data: BTreeMap::new(),
            key_arns: vec![],
            upgrading: BTreeMap::new(),
            kept: BTreeSet::new(),
        };
        for (item, o) in opened {
            if upgrade.into_iter().flatten().any(|u| u.item == item) {
                values.upgrading.insert(item.clone(), o.plaintext.clone());
            } else {
                values.kept.insert(o.key_arn.clone());
            }
            key_arns.insert(o.key_arn);
            values.data.insert(item, o.plaintext);
        }
        values.key_arns = key_arns.into_iter().collect();
        values
    }
}

impl<K: Kms, A: ClusterApi> Reconciler<K, A> {
    /// A reconciler with a key-facts cache and a re-wrap queue of its own (`Rewrap` by
    /// default), as tests and benchmarks use it.
    pub fn new(kms: K, api: A, metrics: Arc<Metrics>, admission: Arc<Admission>) -> Self {
        Reconciler::with(
            kms,
            api,
            Shared {
                metrics,
                admission,
                key_facts: Arc::new(key_facts::KeyFactsCache::default()),
                rotation: Arc::new(rewrap::Rotation::new(crate::api::RotationPolicy::Rewrap)),
                identities: None,
            },
        )
    }

    /// A reconciler over `kms` and `api` with what it shares with the runtime.
    pub fn with(kms: K, api: A, shared: Shared) -> Self {
        let Shared {
            metrics,
            admission,
            key_facts,
            rotation,
            identities,
        } = shared;
        Reconciler {
            kms,
            api,
            metrics,
            admission,
            recent: Arc::new(RecentWrites::new()),
            retries: Mutex::new(retries::Retries::new()),
            kms_waiting: Mutex::new(HashMap::new()),
            deferred: Arc::new(WaitingRoom::new()),
            key_facts,
            not_current: Mutex::new(HashMap::new()),
            rotation,
            identities,
        }
    }

    /// Makes tenants' objects use their ServiceAccounts' roles (per-tenant identity).
    pub fn with_identities(mut self, identities: Arc<tenant_identity::TenantIdentities>) -> Self {
        self.identities = Some(identities);
        self
    }

    /// Whose credentials the object's KMS calls go out under: the controller's, or those of
    /// the ServiceAccount the policy and the object choose. Never the controller's for an
    /// object that has (or must have) a ServiceAccount.
    pub(crate) async fn principal_for(
        &self,
        es: &EncryptedSecret,
    ) -> Result<crate::kms::Principal, crate::identity::IdentityError> {
        use crate::identity::{Choice, IdentityError};
        match self.admission.identity_of(es)? {
            Choice::Controller => Ok(crate::kms::Principal::Controller),
            Choice::ServiceAccount(service_account) => match &self.identities {
                Some(identities) => {
                    let (namespace, name) = Self::key(es);
                    identities
                        .principal(&namespace, &service_account, &name)
                        .await
                }
                None => Err(IdentityError::Off { service_account }),
            },
        }
    }

    pub fn kms(&self) -> &K {
        &self.kms
    }

    pub fn api(&self) -> &A {
        &self.api
    }

    /// The KMS and the cluster, for a test that starts another reconciler over them.
    pub fn into_parts(self) -> (K, A) {
        (self.kms, self.api)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    pub fn recent(&self) -> &Arc<RecentWrites> {
        &self.recent
    }

    pub fn deferred(&self) -> &WaitingRoom {
        &self.deferred
    }

    pub fn rotation(&self) -> &rewrap::Rotation {
        &self.rotation
    }

    pub fn key_facts(&self) -> &key_facts::KeyFactsCache {
        &self.key_facts
    }

    /// The key the object's values should be under, as the key policy lets it name one (an
    /// alias of the policy is followed to where it points now); never a key the namespace may
    /// not use. `None`: each value's own key.
    /// The key the object's values should be under (`spec.keyId`, an alias resolved), or the
    /// key policy's refusal of it.
    fn desired_key(&self, es: &EncryptedSecret) -> Result<Option<String>, String> {
        let namespace = es.metadata.namespace.as_deref().unwrap_or_default();
        let snapshot = self.admission.snapshot();
        match snapshot
            .policy
            .plain_key_id(namespace, es.spec.key_id.as_deref(), &snapshot.aliases)
        {
            Ok(id) => Ok(id.map(|id| snapshot.aliases.get(&id).cloned().unwrap_or(id))),
            Err(e @ crate::policy::PolicyError::PlainKeyNotAllowed { .. }) => Err(e.to_string()),
            Err(_) => Ok(None),
        }
    }

    /// What the object's `KeyCurrent` condition should be (see [`reconcile::with_key_current`]):
    /// judged from its items' clear headers and the key facts known so far, with no KMS call;
    /// nothing at all for a refused object.
    fn key_current(
        &self,
        es: &EncryptedSecret,
        keys: KeyView<'_>,
    ) -> Option<Option<crate::api::Condition>> {
        match keys {
            KeyView::Judge(keys) => self.key_current_with(es, Some(keys), true),
            KeyView::Refused => {
                self.note_not_current(Self::key(es), None);
                Some(None)
            }
            KeyView::Unknown => None,
        }
    }

    /// What KMS says about keys, as far as known, for `es`, which may use them (the key
    /// policy allowed them), looked up with the object's own identity: unknown keys are wanted
    /// for the next refresh, as far as the namespace has room (the policy's own keys always
    /// have, when looked up with the controller's credentials).
    fn known_facts<'s>(
        &'s self,
        es: &'s EncryptedSecret,
    ) -> impl Fn(&str) -> Option<crate::kms::KeyFacts> + 's {
        let snapshot = self.admission.snapshot();
        let namespace = es.metadata.namespace.as_deref().unwrap_or_default();
        let whose = match self.admission.identity_of(es) {
            Ok(crate::identity::Choice::Controller) => Some(key_facts::Whose::Controller),
            Ok(crate::identity::Choice::ServiceAccount(name)) => {
                Some(key_facts::Whose::ServiceAccount {
                    namespace: namespace.to_owned(),
                    name,
                })
            }
            // Refused before any call: nothing is looked up for it.
            Err(_) => None,
        };
        move |id: &str| {
            let named = snapshot.policy.names(id, &snapshot.aliases);
            self.key_facts
                .get_for(namespace, id, named, whose.as_ref()?)
        }
    }

    /// [`Reconciler::key_current`]; `may_rewrap` false reports stale values even when the
    /// object's policy is `Rewrap` (the re-wrap found nothing it can move).
    fn key_current_with(
        &self,
        es: &EncryptedSecret,
        keys: Option<&ItemKeys>,
        may_rewrap: bool,
    ) -> Option<Option<crate::api::Condition>> {
        let keys = keys?;
        let reported = es.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| {
                    c.type_ == reconcile::KEY_CURRENT
                        && c.observed_generation == es.metadata.generation
                })
                .map(|c| c.reason.as_str())
        });
        let (desired, refusal) = match self.desired_key(es) {
            Ok(desired) => (desired, None),
            Err(refusal) => (None, Some(refusal)),
        };
        let verdict = rotation::verdict(
            &keys.wrappings,
            desired.as_deref(),
            &self.known_facts(es),
            unix_now(),
            self.rotation.policy(es),
            may_rewrap,
            reported,
        );
        // What the condition says now, of whichever generation.
        let said = es.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == reconcile::KEY_CURRENT)
                .map(|c| c.reason.as_str())
        });
        let verdict = rotation::with_key_id(verdict, refusal.as_deref(), said);
        let key = Self::key(es);
        match verdict {
            rotation::Verdict::Unknown => None,
            rotation::Verdict::Current => {
                self.note_not_current(key, None);
                Some(None)
            }
            rotation::Verdict::Rewrap {
                reason,
                values,
                queue,
            } => {
                self.note_not_current(key.clone(), Some((reason, values)));
                if queue {
                    self.rotation.want(&key.0, &key.1);
                }
                None
            }
            rotation::Verdict::Report {
                reason,
                values,
                message,
            } => {
                self.note_not_current(key, Some((reason, values)));
                Some(Some(crate::api::Condition {
                    type_: reconcile::KEY_CURRENT.to_owned(),
                    status: "False".to_owned(),
                    reason: reason.to_owned(),
                    message,
                    last_transition_time: Some(now_rfc3339()),
                    observed_generation: es.metadata.generation,
                }))
            }
        }
    }

    /// Keeps the `stale_values` gauge: what this object contributes now.
    fn note_not_current(&self, key: (String, String), now: Option<NotCurrent>) {
        let mut map = crate::sync::lock(&self.not_current);
        let before = match now {
            Some(entry) => map.insert(key, entry),
            None => map.remove(&key),
        };
        if before == now {
            return;
        }
        if let Some((reason, values)) = before {
            self.metrics
                .stale_values
                .get_or_create(&ReasonLabels { reason })
                .dec_by(values as i64);
        }
        if let Some((reason, values)) = now {
            self.metrics
                .stale_values
                .get_or_create(&ReasonLabels { reason })
                .inc_by(values as i64);
        }
    }

    /// Puts the object in the waiting room, which brings it back: no timer per object (a
    /// cold start defers nearly every object, and kube-runtime's timers cost ~800 bytes each).
    fn defer(&self, namespace: &str, name: &str) -> (Reconciled, Action) {
        self.deferred.defer(namespace, name);
        (Reconciled::Deferred, Action::await_change())
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), KmsWaiting>> {
        crate::sync::lock(&self.kms_waiting)
    }

    /// Forgets the objects that failed for want of KMS before KMS answered again, and returns
    /// them (namespace, name): they are worth retrying now rather than at their backoff.
    pub fn recovered(&self, health: &crate::kms::KmsHealth) -> Vec<(String, String)> {
        let mut waiting = self.waiting();
        let back: Vec<_> = waiting
            .iter()
            .filter(|(_, w)| health.answered_since(w.since))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &back {
            waiting.remove(key);
        }
        back
    }

    /// A key of an object waiting for KMS, to probe KMS with; `None` when nothing waits.
    pub fn waiting_key(&self) -> Option<Option<String>> {
        self.waiting().values().next().map(|w| w.key.clone())
    }

    fn key(es: &EncryptedSecret) -> (String, String) {
        (
            es.metadata.namespace.clone().unwrap_or_default(),
            es.metadata.name.clone().unwrap_or_default(),
        )
    }

    fn retries(&self) -> std::sync::MutexGuard<'_, retries::Retries> {
        crate::sync::lock(&self.retries)
    }

    /// Records a failure of `es` and returns how long it waits. `charged`: the object itself
    /// caused a failed KMS attempt, which takes from its namespace's failure budget.
    fn record_failure(&self, es: &EncryptedSecret, charged: bool) -> Duration {
        self.retries().failed(
            &attempt_of(es),
            charged,
            jitter(),
            tokio::time::Instant::now(),
        )
    }

    /// Whether the object is waiting out a backoff after a failure: the resync sweep leaves
    /// it to its backoff.
    pub fn backing_off(&self, namespace: &str, name: &str) -> bool {
        self.retries().backing_off(namespace, name)
    }

    fn record_success(&self, es: &EncryptedSecret) {
        let (namespace, name) = Self::key(es);
        self.retries().succeeded(&namespace, &name);
    }

    /// Drops the backoff state of objects for which `exists(namespace, name)` is false
    /// (deleted EncryptedSecrets are never reconciled again, so nothing else would).
    pub fn prune_failures(&self, exists: impl Fn(&str, &str) -> bool) {
        self.retries().retain(&exists, tokio::time::Instant::now());
        self.waiting()
            .retain(|(namespace, name), _| exists(namespace, name));
        self.deferred.retain(&exists);
        self.rotation.retain(&exists);
        let gone: Vec<_> = crate::sync::lock(&self.not_current)
            .keys()
            .filter(|(namespace, name)| !exists(namespace, name))
            .cloned()
            .collect();
        for key in gone {
            self.note_not_current(key, None);
        }
        self.recent.retain(exists);
    }

    /// Objects currently in backoff.
    pub fn failing_objects(&self) -> usize {
        self.retries().failing()
    }

    /// The back-off for an object whose reconcile returned an error.
    pub fn error_backoff(&self, es: &EncryptedSecret) -> Duration {
        self.record_failure(es, false)
    }

    /// Reconciles one object and says when to look at it again.
    pub async fn reconcile(
        &self,
        es: &EncryptedSecret,
    ) -> Result<(Reconciled, Action), ReconcileError> {
        self.reconcile_known(es, None).await
    }

    /// [`Reconciler::reconcile`] of an object the watch cache keeps without its values: a
    /// write GETs it whole first.
    pub async fn reconcile_settled(
        &self,
        settled: &watched::Settled,
    ) -> Result<(Reconciled, Action), ReconcileError> {
        self.reconcile_known(&settled.object, Some(settled)).await
    }

    async fn reconcile_known(
        &self,
        es: &EncryptedSecret,
        settled: Option<&watched::Settled>,
    ) -> Result<(Reconciled, Action), ReconcileError> {
        let started = Instant::now();
        // The status this controller last wrote, if the watch cache does not show it yet.
        let latest = match self.recent.latest(es) {
            recent::Seen::Current => None,
            recent::Seen::Written(latest) => Some(latest),
            recent::Seen::Behind => {
                // An older copy than the spec this controller wrote: its watch event comes.
                return Ok((Reconciled::Cancelled, Action::await_change()));
            }
        };
        let es = latest.as_deref().unwrap_or(es);
        let result = self.reconcile_inner(es, settled).await;
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        let (label, failure) = match &result {
            Ok((Reconciled::UpToDate, _)) => ("up_to_date", None),
            Ok((Reconciled::Applied, _)) => ("applied", None),
            Ok((Reconciled::Refused, _)) => ("refused", Some(reason::SECRET_EXISTS)),
            Ok((Reconciled::Failed(r), _)) => ("failed", Some(*r)),
            Ok((Reconciled::Cancelled, _)) => ("cancelled", None),
            Ok((Reconciled::Deferred, _)) => ("deferred", None),
            Ok((Reconciled::BackingOff, _)) => ("backing_off", None),
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
        match &result {
            Ok((Reconciled::Failed(reason::THROTTLED | reason::KMS_UNAVAILABLE), _)) => {
                let keys =
                    settled.map_or_else(|| open::item_keys(es).ok(), |s| Some(s.keys.clone()));
                let key = keys
                    .and_then(|k| k.envelope_keys().first().map(|k| (*k).to_owned()))
                    .or_else(|| es.spec.key_id.clone());
                self.waiting().insert(
                    Self::key(es),
                    KmsWaiting {
                        since: tokio::time::Instant::now(),
                        key,
                    },
                );
            }
            Ok((Reconciled::Cancelled | Reconciled::Deferred | Reconciled::BackingOff, _)) => {}
            _ => {
                self.waiting().remove(&Self::key(es));
            }
        }
        result
    }

    async fn reconcile_inner(
        &self,
        es: &EncryptedSecret,
        settled: Option<&watched::Settled>,
    ) -> Result<(Reconciled, Action), ReconcileError> {
        let namespace = es
            .metadata
            .namespace
            .as_deref()
            .ok_or(ReconcileError::Unnamed)?;
        let name = es.metadata.name.as_deref().ok_or(ReconcileError::Unnamed)?;
        if self.rotation.in_progress(namespace, name) {
            // The re-wrap brings it back when it is done.
            return Ok((Reconciled::Cancelled, Action::await_change()));
        }
        let existing = self.api.secret_meta(namespace, name).await?;
        // The items' keys, read once: the key policy and the KeyCurrent verdict both use them
        // (a settled object keeps them, having no values).
        let read;
        let keys = match settled {
            Some(settled) => Ok(&settled.keys),
            None => {
                read = open::item_keys(es);
                read.as_ref()
            }
        };
        let items = match settled {
            Some(_) => admission::Items::CheckedWhenSettled,
            None => admission::Items::InObject,
        };
        let admitted = self.admission.check_keys(es, keys, items);
        let plan = match settled {
            None => reconcile::plan(es, existing.as_ref(), admitted),
            Some(settled) => {
                reconcile::plan_with(es, &settled.fingerprint, existing.as_ref(), admitted)
            }
        };
        let keys = keys.ok();
        if matches!(plan, Plan::Create | Plan::Replace { .. }) {
            let now = tokio::time::Instant::now();
            if let Err(at) = self.retries().may_attempt(&attempt_of(es), now) {
                // Failed before: it waits out its backoff, or its namespace's failure budget,
                // however often its spec changes. Nothing is sent to KMS, nothing written.
                return Ok((Reconciled::BackingOff, Action::requeue(at - now)));
            }
        }
        // A write needs the values, which a settled object's watched copy no longer holds.
        let whole;
        let es = match (&plan, settled) {
            (Plan::Create | Plan::Replace { .. }, Some(_)) => {
                match self.api.encrypted_secret(namespace, name).await? {
                    Some(now) if watched::same_spec(&now, es) => {
                        whole = now;
                        &whole
                    }
                    // Changed or deleted since: its watch event brings the next reconcile.
                    _ => return Ok((Reconciled::Cancelled, Action::await_change())),
                }
            }
            _ => es,
        };
        match plan {
            Plan::UpToDate => {
                self.record_success(es);
                // The resync's path: a status is built only when the verdict differs.
                self.write_key_current(es, self.key_current(es, keys.into()))
                    .await?;
                Ok((Reconciled::UpToDate, Action::await_change()))
            }
            Plan::Reject { reason, message } => {
                // Refused before KMS: nothing is said about any key its values name.
                self.fail(
                    es,
                    Outcome::failed(reason, message),
                    None,
                    KeyView::Refused,
                    false,
                )
                .await
            }
            Plan::Refuse { message } => {
                self.report(
                    es,
                    &Outcome::failed(reason::SECRET_EXISTS, message),
                    None,
                    keys.into(),
                )
                .await?;
                // The Secret watch only sees managed Secrets, so look again for a hand-over.
                Ok((
                    Reconciled::Refused,
                    Action::requeue(self.record_failure(es, false)),
                ))
            }
            Plan::Create => self.apply(es, namespace, name, None, keys).await,
            Plan::Replace { resource_version } => {
                let existing = existing.unwrap_or_default();
                self.apply(
                    es,
                    namespace,
                    name,
                    Some((&resource_version, &existing)),
                    keys,
                )
                .await
            }
        }
    }

    /// Reports a failure (status, and an event and a log line when the condition changes) and
    /// backs off. `detail` is the operator's view (KMS's own words, the role), for the log only.
    /// `charged`: a KMS attempt failed because of the object (see [`retries`]).
    async fn fail(
        &self,
        es: &EncryptedSecret,
        outcome: Outcome,
        detail: Option<&str>,
        keys: KeyView<'_>,
        charged: bool,
    ) -> Result<(Reconciled, Action), ReconcileError> {
        self.report(es, &outcome, detail, keys).await?;
        Ok((
            Reconciled::Failed(outcome.reason),
            Action::requeue(self.record_failure(es, charged)),
        ))
    }

    async fn apply(
        &self,
        es: &EncryptedSecret,
        namespace: &str,
        name: &str,
        replacing: Option<(&str, &ExistingSecret)>,
        keys: Option<&ItemKeys>,
    ) -> Result<(Reconciled, Action), ReconcileError> {
        // Whose credentials: a ServiceAccount's role is assumed only now, after the key policy
        // allowed every key the object names.
        let principal = match self.principal_for(es).await {
            Ok(principal) => principal,
            Err(crate::identity::IdentityError::Deferred(_)) => {
                // The STS budget has no room for this namespace now.
                return Ok((
                    Reconciled::Deferred,
                    Action::requeue(Duration::from_secs(2)),
                ));
            }
            Err(e) => {
                let charged = e.is_tenants();
                return self
                    .fail(
                        es,
                        Outcome::failed(e.category().reason(), e.to_string()),
                        None,
                        keys.into(),
                        charged,
                    )
                    .await;
            }
        };
        let snapshot = self.admission.snapshot();
        let proceed = || self.api.is_current(es);
        let opened = open::open_all(
            &self.kms,
            es,
            namespace,
            name,
            snapshot.rules(),
            &principal,
            Some(&proceed),
        )
        .await;
        let opened = match opened {
            Ok(opened) => opened,
            Err(failure) => {
                return match reconcile::open_failed(&failure) {
                    OpenFailed::Cancelled => {
                        tracing::debug!(
                            namespace,
                            name,
                            "object changed or deleted; reconcile stopped"
                        );
                        Ok((Reconciled::Cancelled, Action::await_change()))
                    }
                    OpenFailed::Deferred => Ok(self.defer(namespace, name)),
                    OpenFailed::Failed {
                        mut outcome,
                        detail,
                        charged,
                    } => {
                        if let crate::kms::Principal::Tenant(session) = &principal
                            && outcome.reason == reason::ACCESS_DENIED
                        {
                            // Not the controller's role: the tenant's own is to be granted.
                            let who = &session.identity;
                            outcome.message = format!(
                                "{}; this object's KMS calls go out under role {} of ServiceAccount {}/{}, so grant it to that role (its IAM policy and the key's key policy), not to the controller",
                                outcome.message, who.role_arn, who.namespace, who.service_account
                            );
                        }
                        self.fail(es, outcome, Some(&detail), keys.into(), charged)
                            .await
                    }
                };
            }
        };
        // Envelope v1 values to seal again as v2 while their plaintext is at hand.
        let upgrade = self.v1_upgrade_plan(es, keys);
        let values = Values::sort(opened, upgrade.as_deref());
        let secret = reconcile::desired_secret(es, values.data, replacing);
        let written = match replacing {
            None => self.api.create_secret(&secret).await,
            Some(_) => self.api.replace_secret(&secret).await,
        };
        drop(secret);
        if let Ok(resource_version) = &written {
            self.recent.wrote_secret(namespace, name, resource_version);
        }
        let summary;
        let write = match &written {
            Ok(resource_version) => reconcile::Write::Written(resource_version),
            Err(WriteError::Conflict) => reconcile::Write::Conflict,
            Err(WriteError::Gone) => reconcile::Write::Gone,
            Err(WriteError::Api(e)) => {
                summary = e.summary();
                if e.is_answer() {
                    reconcile::Write::Refused(&summary)
                } else {
                    reconcile::Write::Unreachable(&summary)
                }
            }
        };
        match reconcile::after_write(es, name, replacing.is_none(), values.key_arns, write) {
            Written::Ready(outcome) => {
                self.upgrade_and_report(es, outcome, upgrade, values.upgrading, values.kept, keys)
                    .await?;
                self.record_success(es);
                Ok((Reconciled::Applied, Action::await_change()))
            }
            Written::Foreign(outcome) => {
                self.report(es, &outcome, None, keys.into()).await?;
                Ok((
                    Reconciled::Refused,
                    Action::requeue(self.record_failure(es, false)),
                ))
            }
            Written::Again => {
                // A watch event is on its way too.
                tracing::debug!(namespace, name, "Secret changed meanwhile; planning again");
                Ok((
                    Reconciled::Cancelled,
                    Action::requeue(self.record_failure(es, false)),
                ))
            }
            Written::Failed(outcome) => self.fail(es, outcome, None, keys.into(), false).await,
        }
    }

    /// After the Secret was written: seals its envelope v1 values again as v2 (`upgrade`,
    /// with their plaintexts `upgrading`), then reports `outcome` for the spec as it now is.
    /// `kept`: the keys of the values the upgrade leaves as they are.
    async fn upgrade_and_report(
        &self,
        es: &EncryptedSecret,
        mut outcome: Outcome,
        upgrade: Option<Vec<rewrap::V1Upgrade>>,
        upgrading: BTreeMap<String, Zeroizing<Vec<u8>>>,
        mut kept: BTreeSet<String>,
        keys: Option<&ItemKeys>,
    ) -> Result<(), ApiError> {
        let upgraded = match upgrade {
            Some(plan) => self.upgrade_v1(es, &plan, upgrading).await,
            None => None,
        };
        let Some(patched) = upgraded else {
            return self.report(es, &outcome, None, keys.into()).await;
        };
        // The Secret is right for the patched spec too: its values open to the same.
        if let Some((_, rv)) = &outcome.applied {
            outcome.applied = Some((reconcile::fingerprint(&patched), rv.clone()));
        }
        let patched_keys = open::item_keys(&patched).ok();
        if let Some(k) = &patched_keys {
            kept.extend(k.envelope_keys().iter().map(|k| (*k).to_owned()));
            outcome.key_arns = kept.into_iter().collect();
        }
        self.report(&patched, &outcome, None, patched_keys.as_ref().into())
            .await
    }

    /// Writes the status if it changed; when the Ready condition changes, also emits an event
    /// and logs a line (INFO when ready, WARN when not, with the operator's `detail`).
    /// `keys`: what to say about the values' keys (`es` may be a settled object, kept without
    /// its values).
    async fn report(
        &self,
        es: &EncryptedSecret,
        outcome: &Outcome,
        detail: Option<&str>,
        keys: KeyView<'_>,
    ) -> Result<(), ApiError> {
        let next = reconcile::next_status(es, outcome, &now_rfc3339());
        let next = reconcile::with_key_current(next, self.key_current(es, keys));
        if let Some(event) = reconcile::transition_event(es, outcome) {
            let (namespace, name) = Self::key(es);
            if outcome.ready {
                tracing::info!(
                    namespace,
                    name,
                    reason = outcome.reason,
                    "EncryptedSecret ready"
                );
            } else {
                tracing::warn!(
                    namespace,
                    name,
                    reason = outcome.reason,
                    message = %outcome.message,
                    detail = detail.unwrap_or(""),
                    "EncryptedSecret not ready"
                );
            }
            self.publish(es, &event).await;
        }
        if reconcile::status_changed(es, &next) {
            self.api.apply_status(es, &next).await?;
            self.recent.wrote_status(es, &next);
        }
        Ok(())
    }

    /// Writes the `KeyCurrent` verdict (see [`reconcile::with_key_current`]) into the status,
    /// only if it changes what the status says; returns whether it did.
    async fn write_key_current(
        &self,
        es: &EncryptedSecret,
        verdict: Option<Option<crate::api::Condition>>,
    ) -> Result<bool, ApiError> {
        if !reconcile::key_current_differs(es.status.as_ref(), &verdict) {
            return Ok(false);
        }
        let next = reconcile::with_key_current(es.status.clone().unwrap_or_default(), verdict);
        self.api.apply_status(es, &next).await?;
        self.recent.wrote_status(es, &next);
        Ok(true)
    }

    /// Publishes an event. Best effort: failing to publish it must not block the status.
    async fn publish(&self, es: &EncryptedSecret, event: &EventSpec) {
        if let Err(e) = self.api.publish_event(es, event).await {
            tracing::warn!(error = %e.summary(), "could not publish an event");
        }
    }
}
