//! What an object's clear headers say about how its values are wrapped: which keys, which
//! key material, since when, which format; read without KMS and without the data keys (see
//! `open::item_keys`). The key policy, the `KeyCurrent` verdict and re-wrap planning all work
//! from this.

use std::collections::HashMap;

use crate::binding::Scope;
use crate::envelope::{Version, WrapAlgorithm};

/// The keys an object's items name, read without KMS and without decoding whole values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemKeys {
    /// The scope of the plain KMS ciphertext items, if there are any (their key is
    /// `spec.keyId`).
    pub plain_scope: Option<Scope>,
    /// How the envelope items are wrapped: one entry per distinct (key, material, version,
    /// algorithm); usually one per object (one data key). The watch cache keeps this for every
    /// settled object, so its strings are shared between objects (see [`intern`]).
    pub wrappings: Vec<Wrapping>,
}

impl ItemKeys {
    /// The key ARNs in the envelope headers, sorted, without duplicates.
    pub fn envelope_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.wrappings.iter().map(|w| &*w.key_arn).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// One shared copy of a string that many objects carry (key ARNs, key material ids): the
/// watch cache holds one per settled object otherwise. Copies no object holds any more are
/// dropped as the table grows, so it stays bounded by what is in use.
pub fn intern(text: &str) -> std::sync::Arc<str> {
    static TABLE: std::sync::LazyLock<std::sync::Mutex<Interner>> =
        std::sync::LazyLock::new(|| std::sync::Mutex::new(Interner::default()));
    crate::sync::lock(&TABLE).get(text)
}

/// The table behind [`intern`].
#[derive(Default)]
struct Interner {
    copies: HashMap<Box<str>, std::sync::Weak<str>>,
    /// The size at which dead copies are dropped next.
    limit: usize,
}

impl Interner {
    fn get(&mut self, text: &str) -> std::sync::Arc<str> {
        if let Some(shared) = self.copies.get(text).and_then(std::sync::Weak::upgrade) {
            return shared;
        }
        if self.copies.len() >= self.limit.max(64) {
            self.copies.retain(|_, weak| weak.strong_count() > 0);
            self.limit = self.copies.len() * 2;
        }
        let shared: std::sync::Arc<str> = std::sync::Arc::from(text);
        self.copies
            .insert(text.into(), std::sync::Arc::downgrade(&shared));
        shared
    }
}

/// How some envelope items are wrapped, as their clear headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapping {
    pub key_arn: std::sync::Arc<str>,
    pub key_material_id: Option<std::sync::Arc<str>>,
    /// The oldest wrap time among them (Unix seconds).
    pub wrapped_at: u64,
    pub version: Version,
    pub algorithm: WrapAlgorithm,
    /// How many items.
    pub items: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_strings_are_shared_and_forgotten_when_unused() {
        let text = "arn:aws:kms:eu-west-1:111122223333:key/interned-test";
        let (a, b) = (intern(text), intern(text));
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        let weak = std::sync::Arc::downgrade(&a);
        drop((a, b));
        assert!(
            weak.upgrade().is_none(),
            "the table holds no strong reference"
        );
        // Many short-lived strings do not pile up; live ones stay shared.
        let mut table = Interner::default();
        let kept = table.get("kept");
        for i in 0..10_000 {
            drop(table.get(&format!("transient-{i}")));
        }
        assert!(table.copies.len() <= 130, "{} copies", table.copies.len());
        assert!(std::sync::Arc::ptr_eq(&kept, &table.get("kept")));
    }
}
