//! A bounded cache of decrypted data keys in front of any `Kms`.
//!
//! `Decrypt` is the expensive call (quota, latency, money). Every EncryptedSecret whose items
//! share a wrapped data key, and every repeated reconcile of it, needs the same plaintext data
//! key; the cache keeps it for a while. Entries are keyed by a digest of the whole request
//! (whose credentials, key, algorithm, encryption context, ciphertext), so a hit is exactly the
//! call KMS would have answered for the same caller. Plaintext is zeroized when an entry expires, is evicted, or the cache is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{
    DecryptRequest, Decrypted, GeneratedKey, KeyFacts, Kms, KmsError, PublicKeyInfo,
    ReEncryptRequest, ReEncrypted,
};
use crate::binding::EncryptionContext;

struct Entry {
    key_arn: String,
    plaintext: Zeroizing<Vec<u8>>,
    stored: Instant,
    /// Whose request decrypted it (the namespace): each has a share of the cache. One copy
    /// per namespace, shared by its entries.
    tenant: std::sync::Arc<str>,
}

/// An entry before it is stored.
struct Fresh {
    key_arn: String,
    plaintext: Zeroizing<Vec<u8>>,
    stored: Instant,
}

/// A record of an entry in insertion order; it is stale once the entry is gone or was stored
/// again later.
type Record = ([u8; 32], Instant);

/// Entries, in insertion order overall (entries only ever get older, so expiry takes from the
/// front) and per tenant (eviction takes a tenant's oldest), in amortized constant time per
/// insert.
#[derive(Default)]
struct Entries {
    map: HashMap<[u8; 32], Entry>,
    order: VecDeque<Record>,
    by_tenant: HashMap<std::sync::Arc<str>, VecDeque<Record>>,
    /// Live entries per tenant.
    counts: HashMap<std::sync::Arc<str>, usize>,
}

/// The cache's copy of a tenant's name (one per tenant, shared by its entries).
fn entries_tenant(entries: &Entries, tenant: &str) -> std::sync::Arc<str> {
    entries
        .counts
        .get_key_value(tenant)
        .map_or_else(|| std::sync::Arc::from(tenant), |(t, _)| t.clone())
}

impl Entries {
    fn live(&self, (key, stored): &Record) -> bool {
        self.map.get(key).is_some_and(|e| e.stored == *stored)
    }

    fn remove(&mut self, key: &[u8; 32]) {
        if let Some(entry) = self.map.remove(key)
            && let Some(count) = self.counts.get_mut(&entry.tenant)
        {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&entry.tenant);
                self.by_tenant.remove(&entry.tenant);
            }
        }
    }

    /// Removes `tenant`'s oldest entry.
    fn evict_oldest_of(&mut self, tenant: &str) {
        while let Some(record) = self.by_tenant.get_mut(tenant).and_then(VecDeque::pop_front) {
            if self.live(&record) {
                self.remove(&record.0);
                return;
            }
        }
    }

    /// Whose entry makes room for one of `tenant`'s in a full cache of `capacity`: its own
    /// oldest when it holds its share (the capacity divided between the tenants that hold
    /// entries, itself included) or more; else the oldest of the tenant that holds the most.
    fn evictee(&self, tenant: &std::sync::Arc<str>, capacity: usize) -> std::sync::Arc<str> {
        let holders = self.counts.len() + usize::from(!self.counts.contains_key(tenant));
        let share = (capacity / holders.max(1)).max(1);
        if self.counts.get(tenant).copied().unwrap_or(0) >= share {
            return tenant.clone();
        }
        self.counts
            .iter()
            .max_by_key(|(_, count)| **count)
            .map_or_else(|| tenant.clone(), |(t, _)| t.clone())
    }

    /// Drops the stale records once they outnumber the entries.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let order = std::mem::take(&mut self.order);
            self.order = order.into_iter().filter(|r| self.live(r)).collect();
            let mut by_tenant = std::mem::take(&mut self.by_tenant);
            for records in by_tenant.values_mut() {
                records.retain(|r| self.live(r));
            }
            by_tenant.retain(|_, records| !records.is_empty());
            self.by_tenant = by_tenant;
        }
    }
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
    /// A cache of at most `capacity` data keys, each kept for at most `ttl`. When it is full,
    /// a tenant (namespace) holding less than its share (the capacity divided between the
    /// tenants holding entries) takes the place of the oldest entry of the tenant holding the
    /// most; one holding its share or more replaces its own oldest.
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

    /// How many entries `tenant`'s requests put in the cache.
    pub fn held_by(&self, tenant: &str) -> usize {
        self.lock().counts.get(tenant).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        crate::sync::lock(&self.entries)
    }

    fn insert(&self, key: [u8; 32], fresh: Fresh, tenant: &str) {
        let mut entries = self.lock();
        let entry = Entry {
            key_arn: fresh.key_arn,
            plaintext: fresh.plaintext,
            stored: fresh.stored,
            tenant: entries_tenant(&entries, tenant),
        };
        let now = Instant::now();
        while let Some(record) = entries.order.front().copied() {
            if entries.live(&record) {
                if now.duration_since(record.1) < self.ttl {
                    break;
                }
                entries.remove(&record.0);
            }
            entries.order.pop_front();
        }
        entries.remove(&key);
        if entries.map.len() >= self.capacity {
            let evictee = entries.evictee(&entry.tenant, self.capacity);
            entries.evict_oldest_of(&evictee);
        }
        while entries.order.front().is_some_and(|r| !entries.live(r)) {
            entries.order.pop_front();
        }
        let record = (key, entry.stored);
        entries.order.push_back(record);
        entries
            .by_tenant
            .entry(entry.tenant.clone())
            .or_default()
            .push_back(record);
        *entries.counts.entry(entry.tenant.clone()).or_insert(0) += 1;
        entries.map.insert(key, entry);
        entries.compact();
    }
}

fn request_digest(request: &DecryptRequest<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    // Whose credentials: one identity's cached data key never answers another's request.
    field(request.principal.cache_key().as_bytes());
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
        let tenant = request.tenant;
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
            Fresh {
                key_arn: decrypted.key_arn.clone(),
                plaintext: decrypted.plaintext.clone(),
                stored: Instant::now(),
            },
            tenant,
        );
        Ok(decrypted)
    }

    async fn public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        self.inner.public_key(key_id).await
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KmsError> {
        self.inner.describe_key(key_id).await
    }

    async fn re_encrypt(&self, request: ReEncryptRequest<'_>) -> Result<ReEncrypted, KmsError> {
        self.inner.re_encrypt(request).await
    }

    async fn last_rotation(&self, key_id: &str) -> Result<Option<u64>, KmsError> {
        self.inner.last_rotation(key_id).await
    }

    async fn describe_key_as(
        &self,
        key_id: &str,
        principal: &super::Principal,
    ) -> Result<KeyFacts, KmsError> {
        self.inner.describe_key_as(key_id, principal).await
    }

    async fn last_rotation_as(
        &self,
        key_id: &str,
        principal: &super::Principal,
    ) -> Result<Option<u64>, KmsError> {
        self.inner.last_rotation_as(key_id, principal).await
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

    /// One tenant decrypting more data keys than the cache holds pushes out only its own
    /// entries once it holds its share; another tenant's stay.
    #[tokio::test]
    async fn a_tenant_over_its_share_evicts_only_its_own_entries() {
        let memory = MemoryKms::new("eu-west-1");
        let key = memory.create_key();
        let victim = memory
            .generate_data_key(&key, &context("victim"))
            .await
            .unwrap();
        let mut flood = Vec::new();
        for _ in 0..50 {
            flood.push(
                memory
                    .generate_data_key(&key, &context("noisy"))
                    .await
                    .unwrap(),
            );
        }
        let cache = CachingKms::new(memory, 10, Duration::from_secs(60));
        let ctx = context("victim");
        let victim_request = DecryptRequest::new(
            Some(&key),
            &victim.wrapped,
            WrapAlgorithm::KmsSymmetric,
            &ctx,
            "victim",
        );
        cache.decrypt(victim_request).await.unwrap();
        let noisy = context("noisy");
        for generated in &flood {
            cache
                .decrypt(DecryptRequest::new(
                    Some(&key),
                    &generated.wrapped,
                    WrapAlgorithm::KmsSymmetric,
                    &noisy,
                    "noisy",
                ))
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 10);
        assert_eq!(cache.held_by("victim"), 1);
        assert_eq!(cache.held_by("noisy"), 9);
        let calls = cache.inner().calls.decrypt.load(Ordering::Relaxed);
        cache.decrypt(victim_request).await.unwrap();
        assert_eq!(
            cache.inner().calls.decrypt.load(Ordering::Relaxed),
            calls,
            "a hit"
        );
        // A third tenant under its share (10 / 3) takes the place of the largest holder's.
        let third = cache
            .inner()
            .generate_data_key(&key, &context("third"))
            .await
            .unwrap();
        let ctx3 = context("third");
        cache
            .decrypt(DecryptRequest::new(
                Some(&key),
                &third.wrapped,
                WrapAlgorithm::KmsSymmetric,
                &ctx3,
                "third",
            ))
            .await
            .unwrap();
        assert_eq!(
            (
                cache.held_by("victim"),
                cache.held_by("noisy"),
                cache.held_by("third")
            ),
            (1, 8, 1)
        );
        let entries = cache.lock();
        assert!(
            entries.order.len() <= 2 * entries.map.len() + 64,
            "records stay bounded"
        );
    }
}
