//! What KMS says about the keys values are under (and should be under), for the `KeyCurrent`
//! condition: asked in the background, once per key per `--key-refresh-interval` (default
//! [`KEY_FACTS_TTL`]), never while reconciling. A reconcile reads what is known and marks what
//! is missing as wanted; the next refresh asks for it, and when what is known changed, every
//! object is judged again.
//!
//! Tenants name keys (in their values' clear headers), so what a tenant can make the
//! controller follow is bounded, whoever asks: the reconciler asks only for keys the object's
//! namespace may use (after the key policy), each namespace may have at most
//! [`MAX_KEYS_PER_NAMESPACE`] keys followed and all namespaces together [`MAX_KEYS`], while
//! the keys the policy itself names always have room. A key KMS cannot describe is asked
//! again later and later (10 s, 20 s, … up to every 5 minutes, or the refresh interval if
//! longer), and a key nobody asked about for a while is dropped.
//!
//! A key is looked up with the credentials of whoever uses it ([`Whose`]): the controller's
//! own, or, for objects with per-tenant identity, their ServiceAccount's role. Each is its
//! own entry, and a ServiceAccount's entries count against its namespace's share, the key
//! policy's keys too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use futures::future::BoxFuture;

use crate::kms::KeyFacts;
use crate::kms::{Kms, KmsErrorKind, Principal};

/// Whose credentials a key is looked up with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Whose {
    Controller,
    /// This ServiceAccount's role (per-tenant identity).
    ServiceAccount {
        namespace: String,
        name: String,
    },
}

/// Gives the credentials of a [`Whose`] for a lookup (the runtime asks per-tenant identity);
/// `None` when there are none now (the lookup waits as if KMS were unavailable).
pub type Resolve<'a> = &'a (dyn Fn(&Whose) -> BoxFuture<'static, Option<Principal>> + Sync);

/// Only the controller's own credentials: lookups for a ServiceAccount wait.
pub fn controller_only(whose: &Whose) -> BoxFuture<'static, Option<Principal>> {
    let principal = (*whose == Whose::Controller).then_some(Principal::Controller);
    Box::pin(async move { principal })
}

type EntryKey = (Whose, String);

/// How long what KMS said about a key is used before asking again, by default.
pub const KEY_FACTS_TTL: Duration = Duration::from_secs(300);
/// How often wanted keys are looked up.
pub const KEY_FACTS_CHECK: Duration = Duration::from_secs(5);
/// At most this many keys are followed for tenants, besides the key policy's own.
pub const MAX_KEYS: usize = 1000;
/// At most this many keys are followed for one namespace, besides the key policy's own.
pub const MAX_KEYS_PER_NAMESPACE: usize = 32;
/// A key nobody asked about for this long is dropped, by default (the runtime makes it longer
/// than its resync interval, which asks about every key in use).
pub const KEY_FACTS_IDLE: Duration = Duration::from_secs(1800);

/// Who a followed key is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    /// The key policy names it: always followed.
    Policy,
    /// The namespace that first asked about it; it counts against that namespace's share.
    Namespace(String),
}

struct Entry {
    holder: Holder,
    /// What KMS said, and when.
    known: Option<(KeyFacts, Instant)>,
    /// When to ask KMS next.
    due: Instant,
    /// Lookups that failed in a row.
    failures: u32,
    /// When a reconcile last asked about it.
    wanted: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<EntryKey, Entry>,
    /// Keys followed per namespace (entries held by a namespace).
    per_namespace: HashMap<String, usize>,
}

impl Inner {
    fn held(&self) -> usize {
        self.per_namespace.values().sum()
    }

    fn release(&mut self, holder: &Holder) {
        if let Holder::Namespace(namespace) = holder
            && let Some(count) = self.per_namespace.get_mut(namespace)
        {
            *count -= 1;
            if *count == 0 {
                self.per_namespace.remove(namespace);
            }
        }
    }
}

pub struct KeyFactsCache {
    inner: Mutex<Inner>,
    idle: Duration,
}

impl Default for KeyFactsCache {
    fn default() -> Self {
        KeyFactsCache::new(KEY_FACTS_IDLE)
    }
}

/// When a key whose lookup failed `failures` times in a row is asked about again: the check
/// interval, doubling, up to the refresh interval `ttl` or [`KEY_FACTS_TTL`], the longer.
fn retry_delay(failures: u32, ttl: Duration) -> Duration {
    let doubled = KEY_FACTS_CHECK.saturating_mul(1 << failures.min(16));
    doubled.min(ttl.max(KEY_FACTS_TTL))
}

impl KeyFactsCache {
    /// A cache that drops keys nobody asked about for `idle`.
    pub fn new(idle: Duration) -> Self {
        KeyFactsCache {
            inner: Mutex::new(Inner::default()),
            idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// What is known about `key_id` (a key ARN, or a key id or alias the object names), asked
    /// for an object in `namespace` that may use the key; `policy` says the key policy names
    /// it. When nothing is known, the key is wanted for the next refresh, if the namespace
    /// (and all namespaces together) still have room for another key.
    pub fn get(&self, namespace: &str, key_id: &str, policy: bool) -> Option<KeyFacts> {
        self.get_for(namespace, key_id, policy, &Whose::Controller)
    }

    /// [`KeyFactsCache::get`], looked up with `whose` credentials.
    pub fn get_for(
        &self,
        namespace: &str,
        key_id: &str,
        policy: bool,
        whose: &Whose,
    ) -> Option<KeyFacts> {
        let now = Instant::now();
        let mut inner = self.lock();
        // A ServiceAccount's lookups count against its namespace, the policy's keys too: a
        // tenant names as many ServiceAccounts as it likes.
        let policy = policy && *whose == Whose::Controller;
        let holder = if policy {
            Holder::Policy
        } else {
            Holder::Namespace(namespace.to_owned())
        };
        let entry_key = (whose.clone(), key_id.to_owned());
        if let Some(entry) = inner.entries.get_mut(&entry_key) {
            entry.wanted = now;
            let facts = entry.known.as_ref().map(|(facts, _)| facts.clone());
            if policy && entry.holder != Holder::Policy {
                // The policy names it now: it no longer counts against a namespace's share.
                let before = std::mem::replace(&mut entry.holder, Holder::Policy);
                inner.release(&before);
            }
            return facts;
        }
        if let Holder::Namespace(ns) = &holder {
            let mine = inner.per_namespace.get(ns).copied().unwrap_or(0);
            if mine >= MAX_KEYS_PER_NAMESPACE || inner.held() >= MAX_KEYS {
                tracing::debug!(
                    namespace,
                    key = key_id,
                    "not following another key for this namespace: it has its share"
                );
                return None;
            }
            *inner.per_namespace.entry(ns.clone()).or_insert(0) += 1;
        }
        inner.entries.insert(
            entry_key,
            Entry {
                holder,
                known: None,
                due: now,
                failures: 0,
                wanted: now,
            },
        );
        None
    }

    /// How many keys are followed for `namespace` (not counting the key policy's own).
    pub fn followed_for(&self, namespace: &str) -> usize {
        self.lock()
            .per_namespace
            .get(namespace)
            .copied()
            .unwrap_or(0)
    }

    /// How many keys are followed in all.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks KMS about the keys that are due: newly wanted, known for longer than `ttl`, or
    /// failed and waited out their retry delay. A key KMS does not answer for is asked again
    /// after a delay that doubles with each failure (see [`retry_delay`]); what was known about it is
    /// kept while KMS is only unavailable, and dropped when KMS says the key is not there (or
    /// not the controller's to describe). Keys nobody asked about for the idle time are
    /// dropped first. Returns how many keys were asked about, and whether what is known
    /// changed (a key newly known, or what KMS says about one is different).
    pub async fn refresh<K: Kms>(&self, kms: &K, ttl: Duration) -> (usize, bool) {
        self.refresh_with(kms, ttl, &controller_only).await
    }

    /// [`KeyFactsCache::refresh`], with the credentials `resolve` gives for each entry's
    /// [`Whose`].
    pub async fn refresh_with<K: Kms>(
        &self,
        kms: &K,
        ttl: Duration,
        resolve: Resolve<'_>,
    ) -> (usize, bool) {
        let now = Instant::now();
        let due: Vec<EntryKey> = {
            let mut inner = self.lock();
            let idle = self.idle;
            let gone: Vec<EntryKey> = inner
                .entries
                .iter()
                .filter(|(_, e)| now.duration_since(e.wanted) >= idle)
                .map(|(k, _)| k.clone())
                .collect();
            for key in gone {
                if let Some(entry) = inner.entries.remove(&key) {
                    inner.release(&entry.holder);
                }
            }
            inner
                .entries
                .iter()
                .filter(|(_, e)| e.due <= now)
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut changed = false;
        for entry_key in &due {
            let (whose, key_id) = entry_key;
            let answer = match resolve(whose).await {
                Some(principal) => crate::kms::key_facts_as(kms, key_id, &principal).await,
                None => Err(crate::kms::KmsError::new(
                    KmsErrorKind::Credentials,
                    "kms:DescribeKey",
                    Some(key_id),
                    "no credentials for this identity now",
                )),
            };
            let mut inner = self.lock();
            let Some(entry) = inner.entries.get_mut(entry_key) else {
                continue;
            };
            let at = Instant::now();
            match answer {
                Ok(facts) => {
                    entry.failures = 0;
                    entry.due = at + ttl;
                    let before = entry.known.replace((facts.clone(), at));
                    changed |= before.is_none_or(|(old, _)| old != facts);
                }
                Err(e) => {
                    entry.failures = entry.failures.saturating_add(1);
                    entry.due = at + retry_delay(entry.failures, ttl);
                    let gone = matches!(
                        e.kind,
                        KmsErrorKind::KeyNotFound
                            | KmsErrorKind::AccessDenied
                            | KmsErrorKind::InvalidRequest
                    );
                    if gone && entry.known.take().is_some() {
                        changed = true;
                    }
                    tracing::debug!(key = %key_id, error = %e, failures = entry.failures, "cannot describe a key for rotation checks");
                }
            }
        }
        (due.len(), changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::MemoryKms;
    use std::sync::atomic::Ordering;

    #[tokio::test(start_paused = true)]
    async fn keys_are_asked_about_once_per_ttl_and_only_when_wanted() {
        let kms = MemoryKms::new("eu-west-1");
        let key = kms.create_key();
        kms.create_alias("alias/app", &key);
        let cache = KeyFactsCache::default();
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (0, false));
        assert!(cache.get("a", "alias/app", false).is_none());
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (1, true));
        assert_eq!(cache.get("a", "alias/app", false).unwrap().key_arn, key);
        // Known and fresh: no call.
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (0, false));
        assert_eq!(kms.calls.describe_key.load(Ordering::Relaxed), 1);
        // Stale: asked again, and a moved alias is seen.
        let other = kms.create_key();
        kms.create_alias("alias/app", &other);
        tokio::time::advance(KEY_FACTS_TTL).await;
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (1, true));
        assert_eq!(cache.get("a", "alias/app", false).unwrap().key_arn, other);
        // Asked again, the same answer: nothing changed.
        tokio::time::advance(KEY_FACTS_TTL).await;
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (1, false));
    }

    /// A key KMS cannot describe is asked again later and later, not every check; once a
    /// reconcile stops asking about it, it is dropped.
    #[tokio::test(start_paused = true)]
    async fn keys_kms_cannot_describe_back_off_and_are_dropped() {
        let kms = MemoryKms::new("eu-west-1");
        let cache = KeyFactsCache::new(Duration::from_secs(600));
        let missing = "arn:aws:kms:eu-west-1:000000000000:key/missing";
        assert!(cache.get("a", missing, false).is_none());
        let mut asked_at = Vec::new();
        let start = Instant::now();
        for _ in 0..(590 / 5) {
            if cache.refresh(&kms, KEY_FACTS_TTL).await.0 > 0 {
                asked_at.push(start.elapsed().as_secs());
            }
            cache.get("a", missing, false);
            tokio::time::advance(KEY_FACTS_CHECK).await;
        }
        // 0, then 10 s, 20 s, 40 s, 80 s, 160 s apart, then once per refresh interval.
        assert_eq!(asked_at, [0, 10, 30, 70, 150, 310], "{asked_at:?}");
        assert_eq!(cache.followed_for("a"), 1);
        // Nobody asks any more: dropped after the idle time, and its share is free again.
        tokio::time::advance(Duration::from_secs(600)).await;
        cache.refresh(&kms, KEY_FACTS_TTL).await;
        assert!(cache.is_empty());
        assert_eq!(cache.followed_for("a"), 0);
    }

    /// What KMS knew about a key is kept while KMS is unavailable, and dropped when the key is
    /// gone.
    #[tokio::test(start_paused = true)]
    async fn a_deleted_key_is_forgotten() {
        let kms = MemoryKms::new("eu-west-1");
        let key = kms.create_key();
        let cache = KeyFactsCache::default();
        cache.get("a", &key, false);
        cache.refresh(&kms, KEY_FACTS_TTL).await;
        assert!(cache.get("a", &key, false).is_some());
        kms.deny("kms:DescribeKey", &key);
        tokio::time::advance(KEY_FACTS_TTL).await;
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (1, true));
        assert!(cache.get("a", &key, false).is_none());
    }

    /// Each namespace has a share of the keys followed, all of them together a bound, and the
    /// key policy's own keys always have room.
    #[tokio::test(start_paused = true)]
    async fn a_namespace_can_have_only_its_share_of_keys_followed() {
        let kms = MemoryKms::new("eu-west-1");
        let cache = KeyFactsCache::default();
        let key = |ns: &str, i: usize| format!("arn:aws:kms:eu-west-1:000000000000:key/{ns}-{i}");
        for i in 0..100 {
            cache.get("noisy", &key("noisy", i), false);
        }
        assert_eq!(cache.followed_for("noisy"), MAX_KEYS_PER_NAMESPACE);
        assert_eq!(cache.len(), MAX_KEYS_PER_NAMESPACE);
        // A key another namespace follows already costs nothing more.
        cache.get("other", &key("noisy", 0), false);
        assert_eq!(cache.followed_for("other"), 0);
        // Fill the table from many namespaces.
        let mut namespaces = 0;
        while cache.lock().held() < MAX_KEYS {
            for i in 0..MAX_KEYS_PER_NAMESPACE {
                cache.get(
                    &format!("ns{namespaces}"),
                    &key(&format!("ns{namespaces}"), i),
                    false,
                );
            }
            namespaces += 1;
        }
        cache.get("late", &key("late", 0), false);
        assert_eq!(cache.followed_for("late"), 0, "the table is full");
        // The policy's keys still get in, and are looked up.
        let policy_key = kms.create_key();
        assert!(cache.get("late", &policy_key, true).is_none());
        cache.refresh(&kms, KEY_FACTS_TTL).await;
        assert!(cache.get("late", &policy_key, true).is_some());
        assert!(cache.lock().held() <= MAX_KEYS);
    }
}
