//! The Secrets kmseal manages, as the label-filtered, metadata-only watch reports them, kept as
//! only what a reconcile reads of each ([`ExistingSecret`]).
//!
//! kube's reflector store would keep a whole `PartialObjectMeta<Secret>` per Secret (an
//! `ObjectMeta` of some 430 bytes before any of its strings, a type header, and a key that
//! copies the name again): about 1 KB each. This keeps about a third of that, which at 10,000
//! Secrets is several MiB of the controller's memory.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Secret;
use kube::api::PartialObjectMeta;
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::reconcile::ExistingSecret;

type Key = (Box<str>, Box<str>);

#[derive(Default)]
struct Maps {
    current: HashMap<Key, ExistingSecret>,
    /// A relist in progress: what it has listed so far (it replaces `current` when done).
    relisting: Option<HashMap<Key, ExistingSecret>>,
}

/// See the module documentation.
#[derive(Default)]
pub struct SecretIndex {
    maps: RwLock<Maps>,
    ready: AtomicBool,
    listed: Notify,
}

fn key_of(meta: &PartialObjectMeta<Secret>) -> Key {
    (
        meta.metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
            .into(),
        meta.metadata.name.as_deref().unwrap_or_default().into(),
    )
}

impl SecretIndex {
    pub fn new() -> Self {
        SecretIndex::default()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        crate::sync::write(&self.maps)
    }

    /// Takes in one watch event (the watcher's relist protocol included: a relist replaces
    /// everything once it is done, so Secrets deleted meanwhile go). Returns true when a
    /// relist other than the first just completed: the watch was away (its connection lost,
    /// its resourceVersion compacted), and whatever was deleted meanwhile, no Delete event
    /// will ever say so. The caller then has every EncryptedSecret without its Secret
    /// reconciled; comparing with the previous list would miss the Secrets written after the
    /// last event that reached the watch.
    pub fn apply(&self, event: &watcher::Event<PartialObjectMeta<Secret>>) -> bool {
        let mut maps = self.write();
        match event {
            watcher::Event::Apply(meta) => {
                maps.current
                    .insert(key_of(meta), ExistingSecret::from(&meta.metadata));
            }
            watcher::Event::Delete(meta) => {
                maps.current.remove(&key_of(meta));
            }
            watcher::Event::Init => maps.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(meta) => {
                maps.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(key_of(meta), ExistingSecret::from(&meta.metadata));
            }
            watcher::Event::InitDone => {
                if let Some(listed) = maps.relisting.take() {
                    maps.current = listed;
                }
                drop(maps);
                let relisted = self.ready.swap(true, Ordering::AcqRel);
                self.listed.notify_waiters();
                return relisted;
            }
        }
        false
    }

    /// The Secret `namespace/name`, if the watch has it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<ExistingSecret> {
        let maps = crate::sync::read(&self.maps);
        maps.current.get(&(namespace.into(), name.into())).cloned()
    }

    pub fn len(&self) -> usize {
        crate::sync::read(&self.maps).current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once the watch has listed every Secret once.
    pub async fn wait_until_ready(&self) {
        loop {
            let listed = self.listed.notified();
            if self.ready.load(Ordering::Acquire) {
                return;
            }
            listed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn secret(name: &str, rv: &str) -> PartialObjectMeta<Secret> {
        PartialObjectMeta::<Secret> {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("a".into()),
                resource_version: Some(rv.into()),
                owner_references: Some(vec![OwnerReference {
                    controller: Some(true),
                    kind: "EncryptedSecret".into(),
                    name: name.into(),
                    uid: "u".into(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        }
    }

    #[tokio::test]
    async fn it_follows_the_watch_and_a_relist_replaces_everything() {
        use watcher::Event;
        let index = std::sync::Arc::new(SecretIndex::new());
        let waiting = tokio::spawn({
            let index = index.clone();
            async move { index.wait_until_ready().await }
        });
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(secret("x", "1")));
        index.apply(&Event::InitApply(secret("y", "2")));
        assert!(index.get("a", "x").is_none(), "not until the list is done");
        assert!(!index.apply(&Event::InitDone), "the first list");
        waiting.await.unwrap();
        let x = index.get("a", "x").unwrap();
        assert_eq!(x.resource_version.as_deref(), Some("1"));
        assert_eq!(x.owner_references[0].kind, "EncryptedSecret");
        index.apply(&Event::Apply(secret("x", "3")));
        assert_eq!(
            index.get("a", "x").unwrap().resource_version.as_deref(),
            Some("3")
        );
        index.apply(&Event::Delete(secret("y", "2")));
        assert!(index.get("a", "y").is_none());
        assert_eq!(index.len(), 1);
        // A relist (after a watch expired): what it did not list is gone, and the relist is
        // reported (the first list is not) so that owners without a Secret are reconciled.
        assert!(!index.apply(&Event::Init));
        assert!(!index.apply(&Event::InitApply(secret("z", "4"))));
        assert!(index.apply(&Event::InitDone), "a relist");
        assert!(index.get("a", "x").is_none());
        assert!(index.get("a", "z").is_some());
        assert!(index.get("b", "z").is_none(), "namespaced");
        index.wait_until_ready().await;
    }
}
