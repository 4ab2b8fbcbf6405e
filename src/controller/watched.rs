//! EncryptedSecrets as the controller lists and watches them: each object is deserialized on
//! its own, so one that does not match kmseal's types is logged and skipped instead of failing
//! the whole list (which would stop the initial sync for every object).

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};

use crate::api::EncryptedSecret;
use crate::open;
use crate::reconcile;
use crate::wrapping::ItemKeys;

/// One listed or watched EncryptedSecret: the object, or its metadata and why it does not
/// deserialize.
#[derive(Debug, Clone)]
pub enum Watched {
    Valid(Arc<EncryptedSecret>),
    /// An object not settled (yet), kept with its values decoded (see [`Compact`]).
    Compact(Arc<Compact>),
    /// An object whose Secret is known to be right (see [`Settled`]).
    Settled(Arc<Settled>),
    Malformed {
        metadata: Box<ObjectMeta>,
        error: String,
    },
}

/// An EncryptedSecret whose status says its Secret was produced from exactly this spec, kept
/// without its sealed values (1.2 KB per object in the controller benchmark's objects). What a reconcile reads of the values without a write (the fingerprint
/// the status is compared with, the keys the policy checks) is kept; a write (drift repair)
/// first GETs the object whole.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The object with an empty `spec.encryptedData`.
    pub object: Arc<EncryptedSecret>,
    /// [`reconcile::fingerprint`] of the whole object.
    pub fingerprint: String,
    /// [`open::item_keys`] of the values.
    pub keys: ItemKeys,
}

/// An EncryptedSecret whose Secret is not known to be right (a cold start holds every object
/// so until its status comes back), kept whole but compact: its values decoded from base64
/// (three quarters of the text) in one boxed slice rather than a map of strings (whose node
/// alone takes about 540 bytes, however few the items). [`Compact::whole`] gives the object
/// back byte for byte.
#[derive(Debug, Clone)]
pub struct Compact {
    /// The object with an empty `spec.encryptedData`.
    pub object: Arc<EncryptedSecret>,
    values: Box<[CompactValue]>,
}

/// An item name and its value, decoded.
type CompactValue = (Box<str>, Box<[u8]>);

impl Compact {
    /// `es` compacted, or `es` back when a value would not come back the same (not canonical
    /// base64: a tenant's typo, kept as it is for the reconcile to report).
    pub fn new(mut es: EncryptedSecret) -> Result<Compact, Box<EncryptedSecret>> {
        use base64::Engine;
        let engine = &base64::engine::general_purpose::STANDARD;
        let mut values = Vec::with_capacity(es.spec.encrypted_data.len());
        for (item, text) in &es.spec.encrypted_data {
            let Ok(bytes) = engine.decode(text) else {
                return Err(Box::new(es));
            };
            if engine.encode(&bytes) != *text {
                return Err(Box::new(es));
            }
            values.push((item.as_str().into(), bytes.into_boxed_slice()));
        }
        es.spec.encrypted_data = Default::default();
        Ok(Compact {
            object: Arc::new(es),
            values: values.into_boxed_slice(),
        })
    }

    /// The object as it was listed or watched, values and all.
    pub fn whole(&self) -> EncryptedSecret {
        use base64::Engine;
        let engine = &base64::engine::general_purpose::STANDARD;
        let mut es = (*self.object).clone();
        es.spec.encrypted_data = self
            .values
            .iter()
            .map(|(item, bytes)| (item.to_string(), engine.encode(bytes)))
            .collect();
        es
    }
}

impl Watched {
    /// The watch cache's form of `es`: [`Watched::Settled`] when its status shows a Ready
    /// Secret produced from this very spec and its items' keys read cleanly, else the whole
    /// object, [`Watched::Compact`] where its values allow.
    pub fn settle(es: EncryptedSecret) -> Watched {
        let fingerprint = reconcile::fingerprint(&es);
        let applied = es.status.as_ref().is_some_and(|s| {
            s.applied_fingerprint.as_deref() == Some(fingerprint.as_str())
                && s.secret_resource_version.is_some()
        }) && reconcile::ready_condition(es.status.as_ref())
            .is_some_and(|c| c.status == "True");
        if !applied {
            return Watched::compact(es);
        }
        let Ok(keys) = open::item_keys(&es) else {
            return Watched::compact(es);
        };
        // What needs the item names is decided here, while they are at hand: an object whose
        // type lacks a required item is not kept without them (it is refused on every
        // reconcile, which needs them).
        let type_ = reconcile::secret_type(&es);
        if crate::policy::check_required_items(type_, |i| es.spec.encrypted_data.contains_key(i))
            .is_err()
        {
            return Watched::compact(es);
        }
        let mut object = es;
        object.spec.encrypted_data = Default::default();
        Watched::Settled(Arc::new(Settled {
            object: Arc::new(object),
            fingerprint,
            keys,
        }))
    }
}

impl Watched {
    fn compact(es: EncryptedSecret) -> Watched {
        match Compact::new(es) {
            Ok(compact) => Watched::Compact(Arc::new(compact)),
            Err(es) => Watched::Valid(Arc::new(*es)),
        }
    }
}

impl<'de> Deserialize<'de> for Watched {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a JSON tree: a watch event's object may come buffered by serde (its `type`
        // after its `object`), which only a self-describing value can take.
        let value = serde_json::Value::deserialize(deserializer)?;
        let metadata = || {
            value
                .get("metadata")
                .and_then(|m| ObjectMeta::deserialize(m).ok())
                .unwrap_or_default()
        };
        Ok(match EncryptedSecret::deserialize(&value) {
            Ok(es) => Watched::Valid(Arc::new(es)),
            Err(e) => Watched::Malformed {
                metadata: Box::new(metadata()),
                // An EncryptedSecret holds no plaintext; the message is still kept short.
                error: e.to_string().chars().take(200).collect(),
            },
        })
    }
}

impl Watched {
    /// The object, if it is a valid EncryptedSecret; a settled or compact one without its
    /// values.
    pub fn object(&self) -> Result<&Arc<EncryptedSecret>, &str> {
        match self {
            Watched::Valid(es) => Ok(es),
            Watched::Compact(compact) => Ok(&compact.object),
            Watched::Settled(settled) => Ok(&settled.object),
            Watched::Malformed { error, .. } => Err(error),
        }
    }
}

impl Resource for Watched {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        EncryptedSecret::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        EncryptedSecret::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        EncryptedSecret::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        EncryptedSecret::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Watched::Valid(es) => &es.metadata,
            Watched::Compact(compact) => &compact.object.metadata,
            Watched::Settled(settled) => &settled.object.metadata,
            Watched::Malformed { metadata, .. } => metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Watched::Valid(es) => &mut Arc::make_mut(es).metadata,
            Watched::Compact(compact) => {
                &mut Arc::make_mut(&mut Arc::make_mut(compact).object).metadata
            }
            Watched::Settled(settled) => {
                &mut Arc::make_mut(&mut Arc::make_mut(settled).object).metadata
            }
            Watched::Malformed { metadata, .. } => metadata,
        }
    }
}

/// Whether `current` (the object as the cluster has it now) is still what `seen` was, in
/// everything that decides the Secret: the same object (uid), the same spec (generation), the
/// same scope annotation for plain items.
pub fn still_current(seen: &EncryptedSecret, current: Option<&Watched>) -> bool {
    let Some(Ok(now)) = current.map(Watched::object) else {
        return false;
    };
    same_spec(now, seen)
}

/// Whether `a` and `b` are the same object (uid) with the same spec (generation) and scope
/// annotation: the same Secret comes of both.
pub fn same_spec(a: &EncryptedSecret, b: &EncryptedSecret) -> bool {
    let scope = |es: &EncryptedSecret| {
        es.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::api::PLAIN_SCOPE_ANNOTATION))
            .cloned()
    };
    a.metadata.uid == b.metadata.uid
        && a.metadata.generation == b.metadata.generation
        && scope(a) == scope(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_malformed_object_keeps_its_name_and_says_why() {
        let good = json!({"apiVersion": "kmseal.dev/v1alpha1", "kind": "EncryptedSecret",
            "metadata": {"name": "ok", "namespace": "a", "uid": "u1", "generation": 2},
            "spec": {"encryptedData": {"k": "a21zZWFs"}}});
        let watched: Watched = serde_json::from_str(&good.to_string()).unwrap();
        assert!(watched.object().is_ok());
        assert_eq!(watched.meta().name.as_deref(), Some("ok"));
        let bad = json!({"apiVersion": "kmseal.dev/v1alpha1", "kind": "EncryptedSecret",
            "metadata": {"name": "broken", "namespace": "a"},
            "spec": {"encryptedData": {"k": 5}, "template": "not-an-object"}});
        let watched: Watched = serde_json::from_str(&bad.to_string()).unwrap();
        assert_eq!(watched.meta().name.as_deref(), Some("broken"));
        assert!(watched.object().is_err());
        // A list with one bad item still lists the others.
        let list: Vec<Watched> = serde_json::from_str(
            &json!([
                {"metadata": {"name": "x"}, "spec": {"encryptedData": []}},
                {"metadata": {"name": "y"}, "spec": {}}
            ])
            .to_string(),
        )
        .unwrap();
        assert!(list[0].object().is_err() && list[1].object().is_ok());
    }

    /// A watch event may name its type before or after its object; the second way makes serde
    /// buffer the object, which must still deserialize (a raw-JSON shortcut did not).
    #[test]
    fn watch_events_deserialize_whatever_the_field_order() {
        let object = r#"{"apiVersion":"kmseal.dev/v1alpha1","kind":"EncryptedSecret","metadata":{"name":"ok","namespace":"a"},"spec":{}}"#;
        for event in [
            format!(r#"{{"type":"ADDED","object":{object}}}"#),
            format!(r#"{{"object":{object},"type":"MODIFIED"}}"#),
        ] {
            let parsed: kube::core::WatchEvent<Watched> = serde_json::from_str(&event).unwrap();
            match parsed {
                kube::core::WatchEvent::Added(w) | kube::core::WatchEvent::Modified(w) => {
                    assert!(w.object().is_ok(), "{event}");
                    assert_eq!(w.meta().name.as_deref(), Some("ok"));
                }
                _ => panic!("{event}"),
            }
        }
    }

    /// The watch cache drops the values of an object only when its status shows a Ready
    /// Secret made from this very spec, and keeps what the reconcile reads of them.
    #[test]
    fn only_an_applied_object_is_kept_without_its_values() {
        use crate::api::{Condition, EncryptedSecretStatus};
        let mut es = EncryptedSecret::with_name(Some("a"), "n", Default::default());
        es.metadata.uid = Some("u1".into());
        es.spec.encrypted_data.insert(
            "k".into(),
            // A plain KMS ciphertext item: its key is spec.keyId, its scope strict.
            "AQICAHh0ZXN0".into(),
        );
        es.spec.key_id = Some("arn:aws:kms:eu-west-1:111122223333:key/k".into());
        let Watched::Compact(compact) = Watched::settle(es.clone()) else {
            panic!("no status: whole, compact")
        };
        assert!(compact.object.spec.encrypted_data.is_empty());
        let json = |es: &EncryptedSecret| serde_json::to_string(es).unwrap();
        assert_eq!(json(&compact.whole()), json(&es), "byte for byte");
        assert_eq!(
            reconcile::fingerprint(&compact.whole()),
            reconcile::fingerprint(&es)
        );
        let status = |ready: &str, fingerprint: String| EncryptedSecretStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ready.into(),
                ..Condition::default()
            }],
            applied_fingerprint: Some(fingerprint),
            secret_resource_version: Some("5".into()),
            ..EncryptedSecretStatus::default()
        };
        let mut applied = es.clone();
        applied.status = Some(status("True", reconcile::fingerprint(&es)));
        let Watched::Settled(settled) = Watched::settle(applied.clone()) else {
            panic!("an applied object is settled");
        };
        assert!(settled.object.spec.encrypted_data.is_empty());
        assert_eq!(settled.fingerprint, reconcile::fingerprint(&applied));
        assert_eq!(settled.keys, open::item_keys(&applied).unwrap());
        assert_eq!(settled.object.status, applied.status);
        let mut failing = es.clone();
        failing.status = Some(status("False", reconcile::fingerprint(&es)));
        assert!(matches!(Watched::settle(failing), Watched::Compact(_)));
        // A TLS Secret's object without tls.key is not kept without its items, even Ready
        // from before the check existed: the check needs them.
        let mut tls = applied.clone();
        tls.spec.template = Some(crate::api::SecretTemplate {
            type_: Some("kubernetes.io/tls".into()),
            ..Default::default()
        });
        tls.status = Some(status("True", reconcile::fingerprint(&tls)));
        assert!(matches!(Watched::settle(tls), Watched::Compact(_)));
        let mut changed = applied.clone();
        changed
            .spec
            .encrypted_data
            .insert("k2".into(), "AQICAHh0ZXN0".into());
        assert!(
            matches!(Watched::settle(changed), Watched::Compact(_)),
            "new spec"
        );
        // A value that is not canonical base64 is kept as it is, for the reconcile to report.
        for odd in ["a21zZWFs\n", "not base64!", "a21zZWF="] {
            let mut typo = es.clone();
            typo.spec.encrypted_data.insert("k".into(), odd.into());
            let Watched::Valid(kept) = Watched::settle(typo.clone()) else {
                panic!("{odd:?}: kept whole")
            };
            assert_eq!(json(&kept), json(&typo));
        }
    }

    #[test]
    fn changes_that_decide_the_secret_make_a_reconcile_outdated() {
        let mut es = EncryptedSecret::with_name(Some("a"), "n", Default::default());
        es.metadata.uid = Some("u1".into());
        es.metadata.generation = Some(1);
        let watched = |es: &EncryptedSecret| Watched::Valid(Arc::new(es.clone()));
        assert!(still_current(&es, Some(&watched(&es))));
        assert!(!still_current(&es, None), "deleted");
        let mut changed = es.clone();
        changed.metadata.generation = Some(2);
        assert!(!still_current(&es, Some(&watched(&changed))));
        let mut recreated = es.clone();
        recreated.metadata.uid = Some("u2".into());
        assert!(!still_current(&es, Some(&watched(&recreated))));
        let mut rescoped = es.clone();
        rescoped.metadata.annotations = Some(
            [(
                crate::api::PLAIN_SCOPE_ANNOTATION.to_owned(),
                "namespace".to_owned(),
            )]
            .into(),
        );
        assert!(!still_current(&es, Some(&watched(&rescoped))));
        // A status write (new resourceVersion only) changes nothing that matters.
        let mut status_only = es.clone();
        status_only.metadata.resource_version = Some("99".into());
        assert!(still_current(&es, Some(&watched(&status_only))));
    }
}
