//! What this controller just wrote, so that its own writes do not make it work again.
//!
//! The watch caches lag behind the controller's writes. Its new Secret triggers a reconcile
//! (the Secret watch sees it) that may read the EncryptedSecret before the status it just wrote
//! is back from the watch, see no fingerprint, and write everything again. Remembering the
//! status it wrote (until the cache shows it) and the resourceVersion of the Secret it wrote
//! (until its watch event arrives) makes both harmless: the first lets the reconcile see that
//! nothing changed, the second drops the trigger altogether.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::sync::lock;

use crate::api::{EncryptedSecret, EncryptedSecretStatus};

type Key = (String, String);

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_owned(), name.to_owned())
}

fn key_of(es: &EncryptedSecret) -> Key {
    key(
        es.metadata.namespace.as_deref().unwrap_or_default(),
        es.metadata.name.as_deref().unwrap_or_default(),
    )
}

struct WrittenStatus {
    uid: Option<String>,
    generation: Option<i64>,
    status: EncryptedSecretStatus,
}

/// See [`RecentWrites::latest`].
#[derive(Debug)]
pub enum Seen {
    /// The watch cache shows what this controller last wrote, or it wrote nothing since.
    Current,
    /// The cache has this spec but not yet the status written for it: the object with it.
    Written(Box<EncryptedSecret>),
    /// The cache's copy is older than a spec this controller wrote (a re-wrap patched the
    /// values): acting on it would undo that; the watch event of the new spec comes.
    Behind,
}

#[derive(Default)]
pub struct RecentWrites {
    statuses: Mutex<HashMap<Key, WrittenStatus>>,
    secrets: Mutex<HashMap<Key, String>>,
}

impl RecentWrites {
    pub fn new() -> Self {
        RecentWrites::default()
    }

    /// How the watch cache's copy `es` stands to what this controller last wrote for it. Once
    /// the cache shows the written status, or a newer spec, the write is forgotten.
    pub fn latest(&self, es: &EncryptedSecret) -> Seen {
        let mut statuses = lock(&self.statuses);
        let key = key_of(es);
        let Some(written) = statuses.get(&key) else {
            return Seen::Current;
        };
        if written.uid != es.metadata.uid || written.generation < es.metadata.generation {
            statuses.remove(&key);
            return Seen::Current;
        }
        if written.generation > es.metadata.generation {
            // The controller itself wrote a newer spec (a re-wrap's values) and its status;
            // the watch has not caught up. Keep both until it does.
            return Seen::Behind;
        }
        if es.status.as_ref() == Some(&written.status) {
            statuses.remove(&key);
            return Seen::Current;
        }
        let mut latest = es.clone();
        latest.status = Some(written.status.clone());
        Seen::Written(Box::new(latest))
    }

    pub fn wrote_status(&self, es: &EncryptedSecret, status: &EncryptedSecretStatus) {
        lock(&self.statuses).insert(
            key_of(es),
            WrittenStatus {
                uid: es.metadata.uid.clone(),
                generation: es.metadata.generation,
                status: status.clone(),
            },
        );
    }

    pub fn wrote_secret(&self, namespace: &str, name: &str, resource_version: &str) {
        lock(&self.secrets).insert(key(namespace, name), resource_version.to_owned());
    }

    /// Whether a Secret watch event is the echo of this controller's own write (and then
    /// forgets the write: the echo comes once).
    pub fn is_own_secret_write(&self, namespace: &str, name: &str, resource_version: &str) -> bool {
        let mut secrets = lock(&self.secrets);
        let key = key(namespace, name);
        if secrets.get(&key).map(String::as_str) == Some(resource_version) {
            secrets.remove(&key);
            true
        } else {
            false
        }
    }

    /// Forgets the statuses that `shown(namespace, name, status)` says the watch cache shows by
    /// now (a reconcile would forget them too, but may not come for a resync interval).
    pub fn forget_shown_statuses(
        &self,
        shown: impl Fn(&str, &str, &EncryptedSecretStatus) -> bool,
    ) {
        lock(&self.statuses).retain(|(ns, name), written| !shown(ns, name, &written.status));
    }

    /// Forgets objects for which `exists(namespace, name)` is false.
    pub fn retain(&self, exists: impl Fn(&str, &str) -> bool) {
        lock(&self.statuses).retain(|(ns, name), _| exists(ns, name));
        lock(&self.secrets).retain(|(ns, name), _| exists(ns, name));
    }

    /// Remembered writes, for tests and metrics.
    pub fn len(&self) -> usize {
        lock(&self.statuses).len() + lock(&self.secrets).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es(generation: i64) -> EncryptedSecret {
        let mut es = EncryptedSecret::with_name(Some("a"), "n", Default::default());
        es.metadata.uid = Some("u".into());
        es.metadata.generation = Some(generation);
        es
    }

    #[test]
    fn a_written_status_is_seen_until_the_cache_shows_it() {
        let recent = RecentWrites::new();
        let status = EncryptedSecretStatus {
            applied_fingerprint: Some("f".into()),
            ..Default::default()
        };
        recent.wrote_status(&es(1), &status);
        let Seen::Written(seen) = recent.latest(&es(1)) else {
            panic!("not seen")
        };
        assert_eq!(seen.status.as_ref(), Some(&status));
        // The cache caught up: forgotten.
        let mut caught_up = es(1);
        caught_up.status = Some(status.clone());
        assert!(matches!(recent.latest(&caught_up), Seen::Current));
        assert!(recent.is_empty());
        // A new generation is a new spec: the old status says nothing about it.
        recent.wrote_status(&es(1), &status);
        assert!(matches!(recent.latest(&es(2)), Seen::Current));
        assert!(recent.is_empty());
        // The controller patched the spec itself (generation 2) and wrote its status; the
        // cache still has generation 1: behind, and the write is kept until it catches up.
        recent.wrote_status(&es(2), &status);
        assert!(matches!(recent.latest(&es(1)), Seen::Behind));
        assert!(matches!(recent.latest(&es(1)), Seen::Behind));
        assert!(matches!(recent.latest(&es(2)), Seen::Written(_)));
        recent.retain(|_, _| false);
        // Forgotten once the cache shows it, without a reconcile.
        recent.wrote_status(&es(1), &status);
        recent.forget_shown_statuses(|_, _, s| s != &status);
        assert!(!recent.is_empty());
        recent.forget_shown_statuses(|_, _, s| s == &status);
        assert!(recent.is_empty());
    }

    #[test]
    fn the_echo_of_an_own_write_is_recognized_once() {
        let recent = RecentWrites::new();
        recent.wrote_secret("a", "n", "7");
        assert!(
            !recent.is_own_secret_write("a", "n", "8"),
            "someone else's change"
        );
        assert!(recent.is_own_secret_write("a", "n", "7"));
        assert!(!recent.is_own_secret_write("a", "n", "7"), "only once");
        recent.wrote_secret("a", "n", "9");
        recent.retain(|_, _| false);
        assert!(recent.is_empty());
    }
}
