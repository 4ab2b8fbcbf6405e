//! What KMS says about the keys values are under (and should be under), for the `KeyCurrent`
//! condition: asked in the background, once per key per `--key-refresh-interval` (default
//! [`KEY_FACTS_TTL`]), never while reconciling. A reconcile reads what is known and marks what
//! is missing as wanted; the next refresh asks for it, and when what is known changed, every
//! object is judged again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::kms::Kms;
use crate::rotation::KeyFacts;

/// How long what KMS said about a key is used before asking again, by default.
pub const KEY_FACTS_TTL: Duration = Duration::from_secs(300);
/// How often wanted keys are looked up.
pub const KEY_FACTS_CHECK: Duration = Duration::from_secs(5);
/// At most this many keys are followed: tenants name keys, and each costs a `DescribeKey`.
pub const MAX_KEYS: usize = 1000;

#[derive(Default)]
struct Inner {
    known: HashMap<String, (KeyFacts, Instant)>,
    wanted: BTreeSet<String>,
}

#[derive(Default)]
pub struct KeyFactsCache {
    inner: Mutex<Inner>,
}

impl KeyFactsCache {
    pub fn new() -> Self {
        KeyFactsCache::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is known about `key_id` (a key ARN, or a key id or alias the object names); when
    /// nothing is, it is wanted for the next refresh.
    pub fn get(&self, key_id: &str) -> Option<KeyFacts> {
        let mut inner = self.lock();
        if let Some((facts, _)) = inner.known.get(key_id) {
            return Some(facts.clone());
        }
        if inner.known.len() + inner.wanted.len() < MAX_KEYS {
            inner.wanted.insert(key_id.to_owned());
        }
        None
    }

    /// Asks KMS about the wanted keys and those known for longer than `ttl`. A key KMS does
    /// not answer for stays wanted (and what was known about it is kept). Returns how many
    /// keys were asked about, and whether what is known changed (a key newly known, or what
    /// KMS says about one is different).
    pub async fn refresh<K: Kms>(&self, kms: &K, ttl: Duration) -> (usize, bool) {
        let due: Vec<String> = {
            let inner = self.lock();
            inner
                .wanted
                .iter()
                .cloned()
                .chain(
                    inner
                        .known
                        .iter()
                        .filter(|(_, (_, at))| at.elapsed() >= ttl)
                        .map(|(k, _)| k.clone()),
                )
                .collect()
        };
        let mut changed = false;
        for key_id in &due {
            match crate::kms::key_facts(kms, key_id).await {
                Ok(facts) => {
                    let mut inner = self.lock();
                    inner.wanted.remove(key_id);
                    let before = inner
                        .known
                        .insert(key_id.clone(), (facts.clone(), Instant::now()));
                    changed |= before.is_none_or(|(old, _)| old != facts);
                }
                Err(e) => {
                    tracing::debug!(key = %key_id, error = %e, "cannot describe a key for rotation checks");
                    self.lock().wanted.insert(key_id.clone());
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
        let cache = KeyFactsCache::new();
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (0, false));
        assert!(cache.get("alias/app").is_none());
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (1, true));
        assert_eq!(cache.get("alias/app").unwrap().key_arn, key);
        // Known and fresh: no call.
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (0, false));
        assert_eq!(kms.calls.describe_key.load(Ordering::Relaxed), 1);
        // Stale: asked again, and a moved alias is seen.
        let other = kms.create_key();
        kms.create_alias("alias/app", &other);
        tokio::time::advance(KEY_FACTS_TTL).await;
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (1, true));
        assert_eq!(cache.get("alias/app").unwrap().key_arn, other);
        // Asked again, the same answer: nothing changed.
        tokio::time::advance(KEY_FACTS_TTL).await;
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (1, false));
        // A key KMS cannot describe stays wanted.
        assert!(cache.get("alias/missing").is_none());
        cache.refresh(&kms, KEY_FACTS_TTL).await;
        assert!(cache.get("alias/missing").is_none());
        assert_eq!(cache.refresh(&kms, KEY_FACTS_TTL).await, (1, false));
    }
}
