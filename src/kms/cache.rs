//! A bounded cache of decrypted data keys in front of any `Kms`.
//!
//! `Decrypt` is the expensive call (quota, latency, money). Every EncryptedSecret whose items
//! share a wrapped data key, and every repeated reconcile of it, needs the same plaintext data
//! key; the cache keeps it for a while. Entries are keyed by a digest of the whole request
//! (key, algorithm, encryption context, ciphertext), so a hit is exactly the call KMS would have
//! answered. Plaintext is zeroized when an entry expires, is evicted, or the cache is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{
    DecryptRequest, Decrypted, GeneratedKey, KeyDescription, Kms, KmsError, PublicKeyInfo,
    ReEncryptRequest, ReEncrypted,
};
use crate::binding::EncryptionContext;

struct Entry {
    key_arn: String,
    plaintext: Zeroizing<Vec<u8>>,
    stored: Instant,
}

/// Entries, and their keys in insertion order: entries only ever get older, so expiry and
/// eviction both take from the front, in amortized constant time per insert.
#[derive(Default)]
struct Entries {
    map: HashMap<[u8; 32], Entry>,
    order: VecDeque<([u8; 32], Instant)>,
}

pub struct CachingKms<K> {
    inner: K,
    entries: Mutex<Entries>,
    capacity: usize,
    ttl: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    on_lookup: Option<Box<dyn Fn(bool) + Send + Sync>>,
}

impl<K> CachingKms<K> {
    /// A cache of at most `capacity` data keys, each kept for at most `ttl`.
    pub fn new(inner: K, capacity: usize, ttl: Duration) -> Self {
        CachingKms {
            inner,
            entries: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
            ttl,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            on_lookup: None,
        }
    }

    /// Calls `observe(hit)` on every lookup, e.g. to count hits and misses in metrics.
    pub fn on_lookup(mut self, observe: impl Fn(bool) + Send + Sync + 'static) -> Self {
        self.on_lookup = Some(Box::new(observe));
        self
    }

    fn observe(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(observe) = &self.on_lookup {
            observe(hit);
        }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// The wrapped KMS; cached keys are zeroized as the cache drops.
    pub fn into_inner(self) -> K {
        self.inner
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, key: [u8; 32], entry: Entry) {
        let mut entries = self.lock();
        let now = Instant::now();
        let Entries { map, order } = &mut *entries;
        while let Some((oldest, stored)) = order.front().copied() {
            let expired = now.duration_since(stored) >= self.ttl;
            if !expired && map.len() < self.capacity {
                break;
            }
            order.pop_front();
            // A queue record is stale when its key was stored again later.
            if map.get(&oldest).is_some_and(|e| e.stored == stored) {
                map.remove(&oldest);
            }
        }
        order.push_back((key, entry.stored));
        map.insert(key, entry);
    }
}

fn request_digest(request: &DecryptRequest<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(request.key_id.unwrap_or("").as_bytes());
    field(request.algorithm.kms_name().as_bytes());
    for (k, v) in request.context {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    field(request.ciphertext);
    hasher.finalize().into()
}

impl<K: Kms> Kms for CachingKms<K> {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        self.inner.generate_data_key(key_id, context).await
    }

    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        let digest = request_digest(&request);
        {
            let entries = self.lock();
            if let Some(entry) = entries.map.get(&digest)
                && entry.stored.elapsed() < self.ttl
            {
                self.observe(true);
                return Ok(Decrypted {
                    key_arn: entry.key_arn.clone(),
                    plaintext: entry.plaintext.clone(),
                });
            }
        }
        self.observe(false);
        let decrypted = self.inner.decrypt(request).await?;
        self.insert(
            digest,
            Entry {
                key_arn: decrypted.key_arn.clone(),
                plaintext: decrypted.plaintext.clone(),
                stored: Instant::now(),
            },
        );
        Ok(decrypted)
    }

    async fn public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        self.inner.public_key(key_id).await
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyDescription, KmsError> {
        self.inner.describe_key(key_id).await
    }

    async fn re_encrypt(&self, request: ReEncryptRequest<'_>) -> Result<ReEncrypted, KmsError> {
        self.inner.re_encrypt(request).await
    }

    async fn last_rotation(&self, key_id: &str) -> Result<Option<u64>, KmsError> {
        self.inner.last_rotation(key_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::WrapAlgorithm;
    use crate::kms::MemoryKms;

    fn context(ns: &str) -> EncryptionContext {
        EncryptionContext::from([("kmseal.dev/namespace".to_owned(), ns.to_owned())])
    }

    #[tokio::test]
    async fn repeated_decrypts_hit_the_cache_and_differences_miss() {
        let memory = MemoryKms::new("eu-west-1");
        let key = memory.create_key();
        let a = memory.generate_data_key(&key, &context("a")).await.unwrap();
        let cache = CachingKms::new(memory, 10, Duration::from_secs(60));
        let ctx_a = context("a");
        let request = DecryptRequest::new(
            Some(&key),
            &a.wrapped,
            WrapAlgorithm::KmsSymmetric,
            &ctx_a,
            "a",
        );
        for _ in 0..3 {
            let d = cache.decrypt(request).await.unwrap();
            assert_eq!(&*d.plaintext, a.plaintext.expose());
        }
        assert_eq!((cache.hits(), cache.misses()), (2, 1));
        assert_eq!(cache.inner().calls.decrypt.load(Ordering::Relaxed), 1);
        // Another context is another request: it must reach KMS (and fail there).
        let other = DecryptRequest {
            context: &context("b"),
            ..request
        };
        assert!(cache.decrypt(other).await.is_err());
        assert_eq!(cache.inner().calls.decrypt.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn entries_expire_and_capacity_is_bounded() {
        let memory = MemoryKms::new("eu-west-1");
        let key = memory.create_key();
        let mut wrapped = Vec::new();
        for i in 0..5 {
            wrapped.push(
                memory
                    .generate_data_key(&key, &context(&format!("n{i}")))
                    .await
                    .unwrap(),
            );
        }
        let cache = CachingKms::new(memory, 3, Duration::from_secs(60));
        for (i, w) in wrapped.iter().enumerate() {
            let ctx = context(&format!("n{i}"));
            cache
                .decrypt(DecryptRequest::new(
                    Some(&key),
                    &w.wrapped,
                    WrapAlgorithm::KmsSymmetric,
                    &ctx,
                    "t",
                ))
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.lock().order.len(), 3, "the queue is bounded too");
        let short = CachingKms::new(MemoryKms::new("eu-west-1"), 3, Duration::ZERO);
        let key = short.inner().create_key();
        let w = short
            .inner()
            .generate_data_key(&key, &context("x"))
            .await
            .unwrap();
        let ctx = context("x");
        let request = DecryptRequest::new(
            Some(&key),
            &w.wrapped,
            WrapAlgorithm::KmsSymmetric,
            &ctx,
            "t",
        );
        short.decrypt(request).await.unwrap();
        short.decrypt(request).await.unwrap();
        assert_eq!(short.hits(), 0, "a zero TTL never serves from the cache");
    }
}
