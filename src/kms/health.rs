//! Whether KMS is answering: the outcome of the last real KMS request (below the data-key
//! cache), so that the controller notices when an outage ends and retries the objects that were
//! waiting for it at once, instead of each at the end of its backoff.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::{
    DecryptRequest, Decrypted, GeneratedKey, KeyFacts, Kms, KmsError, KmsErrorKind, PublicKeyInfo,
    ReEncryptRequest, ReEncrypted,
};
use crate::binding::EncryptionContext;

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// The last request KMS answered (whatever it answered: a refusal is an answer).
    answered: Option<Instant>,
    /// The last request that failed because KMS was unavailable, throttling or unreachable.
    unavailable: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct KmsHealth {
    seen: Mutex<Seen>,
}

impl KmsHealth {
    pub fn new() -> Arc<Self> {
        Arc::new(KmsHealth::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        crate::sync::lock(&self.seen)
    }

    pub fn record<T>(&self, result: &Result<T, KmsError>) {
        let now = Instant::now();
        let mut seen = self.lock();
        match result {
            Err(e) if unavailable(e.kind) => seen.unavailable = Some(now),
            Err(e) if matches!(e.kind, KmsErrorKind::Cancelled | KmsErrorKind::Deferred) => {}
            _ => seen.answered = Some(now),
        }
    }

    /// Whether KMS has answered since `since`.
    pub fn answered_since(&self, since: Instant) -> bool {
        self.lock().answered.is_some_and(|a| a > since)
    }

    /// Whether the most recent request found KMS unavailable.
    pub fn is_down(&self) -> bool {
        let seen = *self.lock();
        match (seen.unavailable, seen.answered) {
            (Some(down), Some(up)) => down > up,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// The failures that say nothing about the request, only about KMS's availability.
pub fn unavailable(kind: KmsErrorKind) -> bool {
    matches!(
        kind,
        KmsErrorKind::Throttled | KmsErrorKind::Unavailable | KmsErrorKind::Unreachable
    )
}

/// A [`Kms`] whose outcomes are recorded in a [`KmsHealth`].
pub struct HealthKms<K> {
    inner: K,
    health: Arc<KmsHealth>,
}

impl<K> HealthKms<K> {
    pub fn new(inner: K, health: Arc<KmsHealth>) -> Self {
        HealthKms { inner, health }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }
}

impl<K: Kms> Kms for HealthKms<K> {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        let result = self.inner.generate_data_key(key_id, context).await;
        self.health.record(&result);
        result
    }

    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        let result = self.inner.decrypt(request).await;
        self.health.record(&result);
        result
    }

    async fn public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        let result = self.inner.public_key(key_id).await;
        self.health.record(&result);
        result
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KmsError> {
        let result = self.inner.describe_key(key_id).await;
        self.health.record(&result);
        result
    }

    async fn re_encrypt(&self, request: ReEncryptRequest<'_>) -> Result<ReEncrypted, KmsError> {
        let result = self.inner.re_encrypt(request).await;
        self.health.record(&result);
        result
    }

    async fn last_rotation(&self, key_id: &str) -> Result<Option<u64>, KmsError> {
        let result = self.inner.last_rotation(key_id).await;
        self.health.record(&result);
        result
    }

    async fn describe_key_as(
        &self,
        key_id: &str,
        principal: &super::Principal,
    ) -> Result<KeyFacts, KmsError> {
        let result = self.inner.describe_key_as(key_id, principal).await;
        self.health.record(&result);
        result
    }

    async fn last_rotation_as(
        &self,
        key_id: &str,
        principal: &super::Principal,
    ) -> Result<Option<u64>, KmsError> {
        let result = self.inner.last_rotation_as(key_id, principal).await;
        self.health.record(&result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn err(kind: KmsErrorKind) -> Result<(), KmsError> {
        Err(KmsError::new(kind, "kms:Decrypt", None, ""))
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_after_an_outage_is_noticed() {
        let health = KmsHealth::new();
        assert!(!health.is_down());
        let start = Instant::now();
        health.record(&err(KmsErrorKind::Unreachable));
        assert!(health.is_down());
        assert!(!health.answered_since(start));
        tokio::time::advance(Duration::from_secs(1)).await;
        // A refusal is an answer: KMS is back.
        health.record(&err(KmsErrorKind::AccessDenied));
        assert!(!health.is_down());
        assert!(health.answered_since(start));
        // What the controller withdrew says nothing either way.
        tokio::time::advance(Duration::from_secs(1)).await;
        health.record(&err(KmsErrorKind::Throttled));
        health.record(&err(KmsErrorKind::Deferred));
        assert!(health.is_down());
    }
}
