//! Prometheus metrics. Every label value comes from a small fixed set (outcomes, operations,
//! failure categories); object names and error texts never become labels, so cardinality stays
//! bounded however many objects the controller manages.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::binding::EncryptionContext;
use crate::kms::{
    DecryptRequest, Decrypted, GeneratedKey, KeyFacts, Kms, KmsError, PublicKeyInfo,
    ReEncryptRequest, ReEncrypted,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `applied`, `up_to_date`, `refused` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A Ready or KeyCurrent condition reason (see `reconcile::reason`, `rotation`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KmsLabels {
    /// `GenerateDataKey`, `Decrypt`, `GetPublicKey` or `DescribeKey`.
    pub operation: &'static str,
    /// `ok` or a failure category (`throttled`, `access_denied`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// All of the controller's metrics and the registry that exposes them.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub failures: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub kms_requests: Family<KmsLabels, Counter>,
    pub kms_attempts: Family<OperationLabels, Counter>,
    pub kms_duration: Family<OperationLabels, Histogram>,
    pub data_key_cache: Family<CacheLabels, Counter>,
    pub managed_objects: Gauge,
    /// Sealed values not under the key and material they should be, or under a key at risk,
    /// by `KeyCurrent` reason.
    pub stale_values: Family<ReasonLabels, Gauge>,
    /// Values the controller re-wrapped in the cluster, or tried to, by result.
    pub rewrapped_values: Family<ResultLabels, Counter>,
    /// Admission reviews by result (`allowed`, `warned`, `denied`, `invalid`).
    pub admission_reviews: Family<ResultLabels, Counter>,
    pub admission_duration: Histogram,
    /// Per-tenant identity's calls (`TokenRequest`, `AssumeRoleWithWebIdentity`), by outcome
    /// (`ok`, `failed`).
    pub identity_requests: Family<KmsLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kmseal");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of EncryptedSecrets, by result",
            reconciles.clone(),
        );
        let failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Failed reconciles, by Ready condition reason",
            failures.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one EncryptedSecret",
            reconcile_duration.clone(),
        );
        let kms_requests = Family::<KmsLabels, Counter>::default();
        registry.register(
            "kms_requests",
            "KMS requests, by operation and outcome (after the data-key cache; SDK retries of a request count once)",
            kms_requests.clone(),
        );
        let kms_attempts = Family::<OperationLabels, Counter>::default();
        registry.register(
            "kms_attempts",
            "HTTP attempts at KMS requests, retries included (a request counts once in kmseal_kms_requests_total)",
            kms_attempts.clone(),
        );
        let kms_duration = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "kms_request_duration_seconds",
            "KMS request latency, including SDK retries",
            kms_duration.clone(),
        );
        let identity_requests = Family::<KmsLabels, Counter>::default();
        registry.register(
            "identity_requests",
            "Per-tenant identity's TokenRequest and STS AssumeRoleWithWebIdentity calls, by operation and outcome",
            identity_requests.clone(),
        );
        let data_key_cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "data_key_cache",
            "Data-key cache lookups, by result",
            data_key_cache.clone(),
        );
        let managed_objects = Gauge::default();
        registry.register(
            "managed_objects",
            "EncryptedSecrets the controller currently manages",
            managed_objects.clone(),
        );
        let stale_values = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "stale_values",
            "Sealed values not under the key and key material they should be, or under a key that is disabled or pending deletion, by KeyCurrent reason",
            stale_values.clone(),
        );
        let rewrapped_values = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rewrapped_values",
            "Sealed values the controller moved to their current key and key material with kms:ReEncrypt (result rewrapped), could not move (failed), or found set back after a move and left (reverted)",
            rewrapped_values.clone(),
        );
        let admission_reviews = Family::<ResultLabels, Counter>::default();
        registry.register(
            "admission_reviews",
            "EncryptedSecret admission reviews the webhook answered, by result: allowed, warned (allowed with warnings), denied, or invalid (a request that is not an AdmissionReview)",
            admission_reviews.clone(),
        );
        let admission_duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "admission_duration_seconds",
            "Time from an admission review's request body to its answer (no KMS or API call is made)",
            admission_duration.clone(),
        );
        Metrics {
            registry,
            rewrapped_values,
            admission_reviews,
            admission_duration,
            reconciles,
            failures,
            reconcile_duration,
            kms_requests,
            kms_attempts,
            kms_duration,
            data_key_cache,
            managed_objects,
            stale_values,
            identity_requests,
        }
    }

    /// The text exposition format, for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn observe_kms<T>(
        &self,
        operation: &'static str,
        started: Instant,
        result: &Result<T, KmsError>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.category().as_str(),
        };
        self.kms_requests
            .get_or_create(&KmsLabels { operation, outcome })
            .inc();
        self.kms_duration
            .get_or_create(&OperationLabels { operation })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Counts and times every call that reaches the wrapped KMS.
pub struct MeteredKms<K> {
    inner: K,
    metrics: Arc<Metrics>,
}

impl<K> MeteredKms<K> {
    pub fn new(inner: K, metrics: Arc<Metrics>) -> Self {
        MeteredKms { inner, metrics }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }

    pub fn into_inner(self) -> K {
        self.inner
    }
}

impl<K: Kms> Kms for MeteredKms<K> {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        let started = Instant::now();
        let result = self.inner.generate_data_key(key_id, context).await;
        self.metrics
            .observe_kms("GenerateDataKey", started, &result);
        result
    }

    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        let started = Instant::now();
        let result = self.inner.decrypt(request).await;
        self.metrics.observe_kms("Decrypt", started, &result);
        result
    }

    async fn public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        let started = Instant::now();
        let result = self.inner.public_key(key_id).await;
        self.metrics.observe_kms("GetPublicKey", started, &result);
        result
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KmsError> {
        let started = Instant::now();
        let result = self.inner.describe_key(key_id).await;
        self.metrics.observe_kms("DescribeKey", started, &result);
        result
    }

    async fn re_encrypt(&self, request: ReEncryptRequest<'_>) -> Result<ReEncrypted, KmsError> {
        let started = Instant::now();
        let result = self.inner.re_encrypt(request).await;
        self.metrics.observe_kms("ReEncrypt", started, &result);
        result
    }

    async fn last_rotation(&self, key_id: &str) -> Result<Option<u64>, KmsError> {
        let started = Instant::now();
        let result = self.inner.last_rotation(key_id).await;
        self.metrics
            .observe_kms("ListKeyRotations", started, &result);
        result
    }

    async fn describe_key_as(
        &self,
        key_id: &str,
        principal: &crate::kms::Principal,
    ) -> Result<KeyFacts, KmsError> {
        let started = Instant::now();
        let result = self.inner.describe_key_as(key_id, principal).await;
        self.metrics.observe_kms("DescribeKey", started, &result);
        result
    }

    async fn last_rotation_as(
        &self,
        key_id: &str,
        principal: &crate::kms::Principal,
    ) -> Result<Option<u64>, KmsError> {
        let started = Instant::now();
        let result = self.inner.last_rotation_as(key_id, principal).await;
        self.metrics
            .observe_kms("ListKeyRotations", started, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::MemoryKms;

    #[tokio::test]
    async fn kms_calls_are_counted_by_operation_and_outcome() {
        let metrics = Arc::new(Metrics::new());
        let memory = MemoryKms::new("eu-west-1");
        let key = memory.create_key();
        let kms = MeteredKms::new(memory, metrics.clone());
        kms.generate_data_key(&key, &EncryptionContext::new())
            .await
            .unwrap();
        kms.generate_data_key("alias/missing", &EncryptionContext::new())
            .await
            .unwrap_err();
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"kmseal_kms_requests_total{operation="GenerateDataKey",outcome="ok"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"kmseal_kms_requests_total{operation="GenerateDataKey",outcome="key_not_found"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("kmseal_kms_request_duration_seconds_count"));
        assert!(!text.contains("alias/missing"), "no key names in labels");
    }
}
