//! Pure reconcile decisions: (EncryptedSecret, existing Secret metadata) → what to do, and
//! (outcome) → the Secret to apply and the status to report. No I/O, no clock, no KMS: the
//! controller supplies all of those, so every decision here is unit-tested directly.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::api::{Condition, EncryptedSecret, EncryptedSecretStatus};

/// Label on every Secret kmseal manages; the controller's Secret watch filters on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "kmseal";
/// Annotation a user puts on an existing Secret to let kmseal take it over: only a Secret no
/// other controller owns, and kmseal then replaces it whole (this annotation included, unless
/// the template sets it).
pub const ADOPT_ANNOTATION: &str = "kmseal.dev/managed";
/// The field manager of kmseal's Secret writes and status applies.
pub const FIELD_MANAGER: &str = "kmseal-controller";
pub const READY: &str = "Ready";

/// Bumped whenever the Secret kmseal produces from the same spec changes shape, so an upgraded
/// controller re-applies once instead of trusting fingerprints from an older one.
const SECRET_SHAPE_VERSION: &str = "kmseal-secret-v2";

pub use crate::category::reason;

/// What the controller knows of an existing Secret: its metadata only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExistingSecret {
    pub resource_version: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
    /// Kept when kmseal replaces the Secret: they belong to whoever added them.
    pub finalizers: Vec<String>,
}

impl From<&ObjectMeta> for ExistingSecret {
    fn from(m: &ObjectMeta) -> Self {
        ExistingSecret {
            resource_version: m.resource_version.clone(),
            annotations: m.annotations.clone().unwrap_or_default(),
            owner_references: m.owner_references.clone().unwrap_or_default(),
            finalizers: m.finalizers.clone().unwrap_or_default(),
        }
    }
}

/// A Secret's metadata cut down to what [`plan`] and [`desired_secret`] read of it (and what
/// maps it to its EncryptedSecret: the controller owner reference). The watch cache of managed
/// Secrets keeps only this, so its memory does not grow with labels and annotations that other
/// tools add.
pub fn secret_meta_read(meta: ObjectMeta) -> ObjectMeta {
    let annotations: BTreeMap<String, String> = meta
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k == ADOPT_ANNOTATION)
        .collect();
    let owners: Vec<OwnerReference> = meta
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.controller == Some(true))
        .collect();
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        resource_version: meta.resource_version,
        annotations: (!annotations.is_empty()).then_some(annotations),
        owner_references: (!owners.is_empty()).then_some(owners),
        finalizers: meta.finalizers,
        ..ObjectMeta::default()
    }
}

/// An EncryptedSecret's metadata cut down to what the controller reads of it: its identity
/// (name, namespace, uid), what says which spec it has (generation, resourceVersion) and the
/// scope annotation, and the labels and annotations by which a GitOps tool marks what it
/// applies (they decide the rotation policy). Other labels, managed fields and other
/// annotations (`kubectl apply`'s last-applied-configuration holds a second copy of the whole
/// object) are dropped.
pub fn encrypted_meta_read(meta: ObjectMeta) -> ObjectMeta {
    let annotations: BTreeMap<String, String> = meta
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            k == crate::api::PLAIN_SCOPE_ANNOTATION || crate::rotation::is_gitops_marker(k)
        })
        .collect();
    let labels: BTreeMap<String, String> = meta
        .labels
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| crate::rotation::is_gitops_marker(k))
        .collect();
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        generation: meta.generation,
        resource_version: meta.resource_version,
        deletion_timestamp: meta.deletion_timestamp,
        annotations: (!annotations.is_empty()).then_some(annotations),
        labels: (!labels.is_empty()).then_some(labels),
        ..ObjectMeta::default()
    }
}

/// Who an existing Secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Controlled by this EncryptedSecret.
    Owned,
    /// Not ours, but annotated `kmseal.dev/managed: "true"`: we may take it over.
    Adoptable,
    /// Someone else's; describes the owner, if any, for the message.
    Foreign(String),
}

pub fn ownership(es: &EncryptedSecret, existing: &ExistingSecret) -> Ownership {
    let uid = es.metadata.uid.as_deref().unwrap_or("");
    let controller = existing
        .owner_references
        .iter()
        .find(|r| r.controller == Some(true));
    let adoptable = existing
        .annotations
        .get(ADOPT_ANNOTATION)
        .map(String::as_str)
        == Some("true");
    match controller {
        Some(owner) if !uid.is_empty() && owner.uid == uid => Ownership::Owned,
        // Another controller's Secret is never taken, whatever its annotations say.
        Some(owner) => Ownership::Foreign(format!(
            "controlled by {} {}",
            crate::text::bounded(&owner.kind, 63),
            crate::text::bounded(&owner.name, 253)
        )),
        None if adoptable => Ownership::Adoptable,
        None => Ownership::Foreign("not created by kmseal".to_owned()),
    }
}

/// The first decision: whether anything needs doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The Secret is exactly what was last applied from this spec: no KMS call, no write.
    UpToDate,
    /// Decrypt, then create the Secret; if one appeared meanwhile, the create fails and the
    /// object is refused (nothing that is not ours is ever overwritten).
    Create,
    /// Decrypt, then replace the Secret whole, on condition that it still has this
    /// resourceVersion: the one whose ownership was checked.
    Replace { resource_version: String },
    /// A Secret we do not own is in the way; leave it untouched.
    Refuse { message: String },
    /// The object asks for what the controller may not do (a key its namespace may not use,
    /// a forbidden Secret type, a malformed item): no KMS call, no write.
    Reject {
        reason: &'static str,
        message: String,
    },
}

/// A refusal decided before any KMS call (by the key policy, the Secret types, the limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

/// A stable digest of everything the produced Secret depends on.
pub fn fingerprint(es: &EncryptedSecret) -> String {
    let mut hasher = Sha256::new();
    hasher.update(SECRET_SHAPE_VERSION.as_bytes());
    hasher.update([0]);
    // serde_json writes maps in key order (BTreeMap), so equal specs hash equally.
    hasher.update(serde_json::to_vec(&es.spec).unwrap_or_default());
    hasher.update([0]);
    hasher.update(es.metadata.uid.as_deref().unwrap_or("").as_bytes());
    let scope = es
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::PLAIN_SCOPE_ANNOTATION))
        .map(String::as_str)
        .unwrap_or("");
    hasher.update([0]);
    hasher.update(scope.as_bytes());
    let digest = hasher.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn ready_condition(status: Option<&EncryptedSecretStatus>) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == READY)
}

/// `admitted` is the verdict of the checks that need no KMS (key policy, Secret type, limits),
/// made on every reconcile: a key the policy stops allowing turns the object not ready even
/// when nothing else changed (the Secret is kept).
pub fn plan(
    es: &EncryptedSecret,
    existing: Option<&ExistingSecret>,
    admitted: Result<(), Rejection>,
) -> Plan {
    plan_with(es, &fingerprint(es), existing, admitted)
}

/// [`plan`] with the object's [`fingerprint`] computed already (the watch cache keeps it for
/// objects it keeps without their values).
pub fn plan_with(
    es: &EncryptedSecret,
    fingerprint: &str,
    existing: Option<&ExistingSecret>,
    admitted: Result<(), Rejection>,
) -> Plan {
    if let Err(Rejection { reason, message }) = admitted {
        return Plan::Reject { reason, message };
    }
    let Some(existing) = existing else {
        return Plan::Create;
    };
    let replace = Plan::Replace {
        resource_version: existing.resource_version.clone().unwrap_or_default(),
    };
    match ownership(es, existing) {
        Ownership::Foreign(owner) => {
            let name = es.metadata.name.as_deref().unwrap_or("");
            return Plan::Refuse {
                message: format!(
                    "a Secret named {name} already exists and is {owner}; kmseal will not overwrite it. To hand it over, annotate it: kubectl annotate secret {name} {ADOPT_ANNOTATION}=true (or delete it, or rename the EncryptedSecret)"
                ),
            };
        }
        Ownership::Adoptable => return replace,
        Ownership::Owned => {}
    }
    let status = es.status.as_ref();
    let ready = ready_condition(status).is_some_and(|c| c.status == "True");
    let unchanged = status.is_some_and(|s| {
        s.applied_fingerprint.as_deref() == Some(fingerprint)
            && s.secret_resource_version.is_some()
            && s.secret_resource_version == existing.resource_version
            && s.observed_generation == es.metadata.generation
    });
    if ready && unchanged {
        Plan::UpToDate
    } else {
        replace
    }
}

/// The Secret type an EncryptedSecret asks for (`Opaque` when its template names none).
pub fn secret_type(es: &EncryptedSecret) -> &str {
    es.spec
        .template
        .as_ref()
        .and_then(|t| t.type_.as_deref())
        .filter(|t| !t.is_empty())
        .unwrap_or("Opaque")
}

/// The whole Secret kmseal writes: it creates it, or replaces it (never merges), so the Secret
/// is exactly this, and a removed item, label or annotation is gone. The values stay in
/// zeroizing buffers until the request body is written.
pub struct DesiredSecret {
    /// Name, namespace, labels, annotations, owner reference; for a replace, the
    /// resourceVersion precondition and the finalizers someone else added.
    pub metadata: ObjectMeta,
    pub type_: String,
    pub immutable: Option<bool>,
    pub data: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for DesiredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesiredSecret")
            .field("metadata", &self.metadata)
            .field("type", &self.type_)
            .field("items", &self.data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

pub fn desired_secret(
    es: &EncryptedSecret,
    data: BTreeMap<String, Zeroizing<Vec<u8>>>,
    replacing: Option<(&str, &ExistingSecret)>,
) -> DesiredSecret {
    let template = es.spec.template.clone().unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels;
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    let owner = es.controller_owner_ref(&());
    let (resource_version, finalizers) = match replacing {
        Some((rv, existing)) => (
            Some(rv.to_owned()),
            (!existing.finalizers.is_empty()).then(|| existing.finalizers.clone()),
        ),
        None => (None, None),
    };
    DesiredSecret {
        metadata: ObjectMeta {
            name: es.metadata.name.clone(),
            namespace: es.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!meta.annotations.is_empty()).then_some(meta.annotations),
            owner_references: owner.map(|o| vec![o]),
            resource_version,
            finalizers,
            ..ObjectMeta::default()
        },
        type_: secret_type(es).to_owned(),
        immutable: template.immutable,
        data,
    }
}

/// How a reconcile ended, for the status.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    /// Keys the items were opened with (on success).
    pub key_arns: Vec<String>,
    /// What was applied: (fingerprint, the Secret's resourceVersion after the apply).
    pub applied: Option<(String, String)>,
}

impl Outcome {
    /// Not ready, for `reason`, saying `message`.
    pub fn failed(reason: &'static str, message: String) -> Self {
        Outcome {
            ready: false,
            reason,
            message,
            key_arns: vec![],
            applied: None,
        }
    }
}

/// What a failed open of an object's values means for it.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenFailed {
    /// The object changed or was deleted meanwhile: stop; its watch event brings the next
    /// reconcile.
    Cancelled,
    /// Its namespace already has its share of KMS requests waiting: wait for room.
    Deferred,
    /// Report `outcome` and back off. `detail` is the operator's view (KMS's own words), for
    /// the log only; `charged`: the failure is the object's doing and counts against its and
    /// its namespace's retry budget (KMS down, throttling or without credentials is not).
    Failed {
        outcome: Outcome,
        detail: String,
        charged: bool,
    },
}

/// Decides what a failed [`open::open_all`](crate::open::open_all) means.
pub fn open_failed(failure: &crate::open::Failure) -> OpenFailed {
    use crate::kms::KmsErrorKind;
    use crate::open::OpenError;
    match &failure.error {
        OpenError::Kms(e) if e.kind == KmsErrorKind::Cancelled => return OpenFailed::Cancelled,
        OpenError::Kms(e) if e.kind == KmsErrorKind::Deferred => return OpenFailed::Deferred,
        _ => {}
    }
    let item = failure
        .item
        .as_deref()
        .map(|i| format!("item {i}: "))
        .unwrap_or_default();
    let reason = failure.error.category().reason();
    OpenFailed::Failed {
        outcome: Outcome::failed(
            reason,
            format!(
                "{item}{}; the existing Secret, if any, was left unchanged",
                failure.error.tenant_message()
            ),
        ),
        detail: failure.error.to_string(),
        charged: !matches!(
            reason,
            reason::THROTTLED | reason::KMS_UNAVAILABLE | reason::NO_CREDENTIALS
        ),
    }
}

/// How a create or replace of the Secret went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write<'a> {
    /// Written; the Secret's new resourceVersion.
    Written(&'a str),
    /// Create: a Secret of that name exists. Replace: it is no longer the version whose
    /// ownership was checked.
    Conflict,
    /// Replace: the Secret was deleted meanwhile.
    Gone,
    /// The API server refused it; its summary of why.
    Refused(&'a str),
    /// The API server could not be asked (a connection or transport failure); what failed.
    Unreachable(&'a str),
}

/// What a [`Write`] means for the object.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// The Secret has the object's values: report it Ready.
    Ready(Outcome),
    /// A foreign Secret appeared while it was being created: refused, and looked at again.
    Foreign(Outcome),
    /// Changed or deleted since its ownership was checked: nothing was written; plan again
    /// soon, with fresh metadata.
    Again,
    /// Report the failure and back off.
    Failed(Outcome),
}

/// Decides what writing the Secret `name` for `es` came to. `creating`: a create, not a
/// replace; `key_arns`: the keys its values were opened with.
pub fn after_write(
    es: &EncryptedSecret,
    name: &str,
    creating: bool,
    key_arns: Vec<String>,
    write: Write<'_>,
) -> Written {
    match write {
        Write::Written(resource_version) => Written::Ready(Outcome {
            ready: true,
            reason: reason::SYNCED,
            message: format!(
                "Secret {name} has the {} item(s) of this EncryptedSecret",
                es.spec.encrypted_data.len()
            ),
            key_arns,
            applied: Some((fingerprint(es), resource_version.to_owned())),
        }),
        Write::Conflict if creating => Written::Foreign(Outcome::failed(
            reason::SECRET_EXISTS,
            format!(
                "a Secret named {name} appeared while kmseal was creating it; kmseal will not overwrite it. To hand it over, annotate it: kubectl annotate secret {name} {ADOPT_ANNOTATION}=true"
            ),
        )),
        Write::Conflict | Write::Gone => Written::Again,
        Write::Unreachable(summary) => Written::Failed(Outcome::failed(
            reason::APPLY_FAILED,
            format!(
                "writing Secret {name} failed: the API server could not be reached ({summary}); kmseal tries again"
            ),
        )),
        Write::Refused(summary) => Written::Failed(Outcome::failed(
            reason::APPLY_FAILED,
            format!(
                "writing Secret {name} failed: {summary}{}",
                if es.spec.template.as_ref().and_then(|t| t.immutable) == Some(true) {
                    "; an immutable Secret cannot change: delete it and kmseal recreates it"
                } else {
                    "; a Secret's type cannot change either: delete it and kmseal recreates it"
                }
            ),
        )),
    }
}

/// The type of the condition that says whether an object's values are under the key and key
/// material they should be (present only when they are not, so current objects cost no write).
pub const KEY_CURRENT: &str = "KeyCurrent";

/// Whether applying `verdict` (see [`with_key_current`]) would change `status`.
pub fn key_current_differs(
    status: Option<&EncryptedSecretStatus>,
    verdict: &Option<Option<Condition>>,
) -> bool {
    let Some(verdict) = verdict else {
        return false;
    };
    let current = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == KEY_CURRENT));
    match (current, verdict) {
        (None, None) => false,
        (Some(c), Some(v)) => {
            (&c.status, &c.reason, &c.message, c.observed_generation)
                != (&v.status, &v.reason, &v.message, v.observed_generation)
        }
        _ => true,
    }
}

/// `status` with its `KeyCurrent` condition set (`Some(Some(_))`), removed (`Some(None)`), or
/// left as it is (`None`: not known yet). `lastTransitionTime` stays while the condition's
/// status does.
pub fn with_key_current(
    mut status: EncryptedSecretStatus,
    verdict: Option<Option<Condition>>,
) -> EncryptedSecretStatus {
    let Some(verdict) = verdict else {
        return status;
    };
    let old = status
        .conditions
        .iter()
        .position(|c| c.type_ == KEY_CURRENT)
        .map(|i| status.conditions.remove(i));
    if let Some(mut condition) = verdict {
        if let Some(old) = old.filter(|o| o.status == condition.status) {
            condition.last_transition_time = old.last_transition_time;
        }
        status.conditions.push(condition);
    }
    status
}

/// The next status: `lastTransitionTime` moves only when the Ready status flips, and what a
/// failure cannot know (keys, the last apply) is carried over.
pub fn next_status(es: &EncryptedSecret, outcome: &Outcome, now: &str) -> EncryptedSecretStatus {
    let old = es.status.as_ref();
    let old_ready = ready_condition(old);
    let status_text = if outcome.ready { "True" } else { "False" };
    let last_transition_time = match old_ready {
        Some(c) if c.status == status_text => c.last_transition_time.clone(),
        _ => Some(now.to_owned()),
    };
    let condition = Condition {
        type_: READY.to_owned(),
        status: status_text.to_owned(),
        reason: outcome.reason.to_owned(),
        message: outcome.message.clone(),
        last_transition_time,
        observed_generation: es.metadata.generation,
    };
    let mut conditions: Vec<Condition> = old
        .map(|s| {
            s.conditions
                .iter()
                .filter(|c| c.type_ != READY)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    conditions.insert(0, condition);
    let (applied_fingerprint, secret_resource_version) = match &outcome.applied {
        Some((fp, rv)) => (Some(fp.clone()), Some(rv.clone())),
        None => (
            old.and_then(|s| s.applied_fingerprint.clone()),
            old.and_then(|s| s.secret_resource_version.clone()),
        ),
    };
    let key_arns = if outcome.ready {
        outcome.key_arns.clone()
    } else {
        old.map(|s| s.key_arns.clone()).unwrap_or_default()
    };
    EncryptedSecretStatus {
        conditions,
        observed_generation: es.metadata.generation,
        secret_name: es.metadata.name.clone(),
        key_arns,
        applied_fingerprint,
        secret_resource_version,
        rewrapped: old.and_then(|s| s.rewrapped.clone()),
    }
}

/// The status after an in-cluster re-wrap patched some values (`patched`: the object as the
/// API server returned it) from the keys `moved_from`: the Secret is still right, since the
/// re-wrapped values open to the same plaintext, so the status says it was produced from the
/// new spec (no `Decrypt`, no Secret write follow), and records the re-wrap. `envelope_keys`:
/// the keys of the patched object's envelope values.
pub fn rewrapped_status(
    mut status: EncryptedSecretStatus,
    patched: &EncryptedSecret,
    envelope_keys: &[&str],
    moved_from: &[&str],
    record: crate::api::RewrapRecord,
) -> EncryptedSecretStatus {
    status.applied_fingerprint = Some(fingerprint(patched));
    status.observed_generation = patched.metadata.generation;
    if let Some(ready) = status.conditions.iter_mut().find(|c| c.type_ == READY) {
        ready.observed_generation = patched.metadata.generation;
    }
    // Keys no value is under any more go; plain KMS items' keys stay.
    status
        .key_arns
        .retain(|k| !moved_from.contains(&k.as_str()) || envelope_keys.contains(&k.as_str()));
    status
        .key_arns
        .extend(envelope_keys.iter().map(|k| (*k).to_owned()));
    status.key_arns.sort();
    status.key_arns.dedup();
    status.rewrapped = Some(record);
    status
}

/// Whether a status write is needed at all.
pub fn status_changed(es: &EncryptedSecret, next: &EncryptedSecretStatus) -> bool {
    es.status.as_ref() != Some(next)
}

/// An event to emit: only when the Ready condition changes status or reason, not on every
/// retry of the same failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

pub fn transition_event(es: &EncryptedSecret, outcome: &Outcome) -> Option<EventSpec> {
    let old = ready_condition(es.status.as_ref());
    let status_text = if outcome.ready { "True" } else { "False" };
    let same = old.is_some_and(|c| c.status == status_text && c.reason == outcome.reason);
    (!same).then(|| EventSpec {
        warning: !outcome.ready,
        reason: outcome.reason,
        note: outcome.message.clone(),
    })
}

/// Per-object retry delay after `failures` consecutive failures: 5 s doubling to 5 min, each
/// up to 20% longer at random (`jitter` in 0..1) so many objects failing together do not retry
/// together, and never longer than 5 min.
pub fn backoff_delay(failures: u32, jitter: f64) -> Duration {
    const BASE: f64 = 5.0;
    const MAX: f64 = 300.0;
    let exp = BASE * 2f64.powi(failures.saturating_sub(1).min(16) as i32);
    Duration::from_secs_f64((exp * (1.0 + 0.2 * jitter.clamp(0.0, 1.0))).min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_current_verdict_differs_only_in_what_it_says() {
        let condition = |reason: &str, time: &str| Condition {
            type_: KEY_CURRENT.to_owned(),
            status: "False".to_owned(),
            reason: reason.to_owned(),
            message: "m".to_owned(),
            last_transition_time: Some(time.to_owned()),
            observed_generation: Some(1),
        };
        let status = EncryptedSecretStatus {
            conditions: vec![condition("KeyChanged", "t0")],
            ..Default::default()
        };
        // Unknown, or the same verdict at another time: nothing to write.
        assert!(!key_current_differs(Some(&status), &None));
        assert!(!key_current_differs(
            Some(&status),
            &Some(Some(condition("KeyChanged", "t1")))
        ));
        assert!(key_current_differs(
            Some(&status),
            &Some(Some(condition("MaterialRotated", "t1")))
        ));
        assert!(key_current_differs(Some(&status), &Some(None)));
        assert!(!key_current_differs(None, &Some(None)));
        // Applying it keeps the transition time while the status stays False.
        let next = with_key_current(status, Some(Some(condition("MaterialRotated", "t1"))));
        assert_eq!(
            next.conditions[0].last_transition_time.as_deref(),
            Some("t0")
        );
        assert_eq!(next.conditions[0].reason, "MaterialRotated");
    }
    use crate::api::{EncryptedSecretSpec, SecretTemplate, TemplateMetadata};

    fn es(generation: i64) -> EncryptedSecret {
        let mut es = EncryptedSecret::with_name(
            Some("prod"),
            "db",
            EncryptedSecretSpec {
                encrypted_data: BTreeMap::from([("password".into(), "a21zZWFs".into())]),
                template: Some(SecretTemplate {
                    type_: Some("kubernetes.io/basic-auth".into()),
                    metadata: Some(TemplateMetadata {
                        labels: BTreeMap::from([("app".into(), "api".into())]),
                        annotations: BTreeMap::from([("note".into(), "x".into())]),
                    }),
                    immutable: None,
                }),
                key_id: None,
                service_account_name: None,
                rotation: None,
            },
        );
        es.metadata.uid = Some("uid-1".into());
        es.metadata.generation = Some(generation);
        es
    }

    #[test]
    fn a_failed_open_is_reported_charged_only_when_it_is_the_objects_doing() {
        use crate::kms::{KmsError, KmsErrorKind};
        use crate::open::{Failure, OpenError};
        let kms = |kind, detail: &str| Failure {
            item: Some("password".into()),
            error: OpenError::Kms(KmsError::new(
                kind,
                "kms:Decrypt",
                Some("arn:aws:kms:eu-west-1:111122223333:key/k"),
                detail,
            )),
        };
        assert_eq!(
            open_failed(&kms(KmsErrorKind::Cancelled, "")),
            OpenFailed::Cancelled
        );
        assert_eq!(
            open_failed(&kms(KmsErrorKind::Deferred, "")),
            OpenFailed::Deferred
        );
        let charged = |kind| match open_failed(&kms(kind, "role/op said so")) {
            OpenFailed::Failed {
                outcome,
                detail,
                charged,
            } => {
                assert!(!outcome.ready);
                assert!(
                    outcome.message.starts_with("item password: "),
                    "{outcome:?}"
                );
                assert!(
                    outcome
                        .message
                        .ends_with("the existing Secret, if any, was left unchanged"),
                    "{outcome:?}"
                );
                // KMS's own words are the operator's: in the detail, never in the status.
                assert!(detail.contains("role/op said so"), "{detail}");
                assert!(!outcome.message.contains("role/op"), "{outcome:?}");
                (outcome.reason, charged)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            charged(KmsErrorKind::InvalidCiphertext),
            (reason::DECRYPT_FAILED, true)
        );
        assert_eq!(
            charged(KmsErrorKind::AccessDenied),
            (reason::ACCESS_DENIED, true)
        );
        assert_eq!(charged(KmsErrorKind::Throttled), (reason::THROTTLED, false));
        assert_eq!(
            charged(KmsErrorKind::Unavailable),
            (reason::KMS_UNAVAILABLE, false)
        );
        assert_eq!(
            charged(KmsErrorKind::Credentials),
            (reason::NO_CREDENTIALS, false)
        );
        // A whole-object failure names no item.
        let whole = Failure {
            item: None,
            error: OpenError::TooManyItems { count: 300 },
        };
        match open_failed(&whole) {
            OpenFailed::Failed {
                outcome, charged, ..
            } => {
                assert!(
                    outcome
                        .message
                        .starts_with("the EncryptedSecret has 300 items")
                );
                assert!(charged);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_write_is_ready_foreign_tried_again_or_failed() {
        let es = es(1);
        let keys = vec!["arn:aws:kms:eu-west-1:111122223333:key/k".to_owned()];
        match after_write(&es, "db", true, keys.clone(), Write::Written("7")) {
            Written::Ready(outcome) => {
                assert!(outcome.ready);
                assert_eq!(outcome.reason, reason::SYNCED);
                assert_eq!(outcome.key_arns, keys);
                assert_eq!(outcome.applied, Some((fingerprint(&es), "7".to_owned())));
                assert_eq!(
                    outcome.message,
                    "Secret db has the 1 item(s) of this EncryptedSecret"
                );
            }
            other => panic!("{other:?}"),
        }
        // A Secret that appeared during a create is someone else's; during a replace, ours
        // changed or went: plan again.
        match after_write(&es, "db", true, keys.clone(), Write::Conflict) {
            Written::Foreign(outcome) => {
                assert_eq!(outcome.reason, reason::SECRET_EXISTS);
                assert!(
                    outcome
                        .message
                        .contains("kubectl annotate secret db kmseal.dev/managed=true"),
                    "{outcome:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            after_write(&es, "db", false, keys.clone(), Write::Conflict),
            Written::Again
        );
        assert_eq!(
            after_write(&es, "db", false, keys.clone(), Write::Gone),
            Written::Again
        );
        let refused = |es: &EncryptedSecret| match after_write(
            es,
            "db",
            false,
            vec![],
            Write::Refused("field is immutable (422)"),
        ) {
            Written::Failed(outcome) => {
                assert_eq!(outcome.reason, reason::APPLY_FAILED);
                assert!(
                    outcome
                        .message
                        .starts_with("writing Secret db failed: field is immutable (422); ")
                );
                outcome.message
            }
            other => panic!("{other:?}"),
        };
        assert!(refused(&es).contains("a Secret's type cannot change"));
        // A connection that failed is no reason to suggest deleting the Secret.
        match after_write(
            &es,
            "db",
            true,
            vec![],
            Write::Unreachable("client error (Connect)"),
        ) {
            Written::Failed(outcome) => {
                assert_eq!(outcome.reason, reason::APPLY_FAILED);
                assert_eq!(
                    outcome.message,
                    "writing Secret db failed: the API server could not be reached (client error (Connect)); kmseal tries again"
                );
            }
            other => panic!("{other:?}"),
        }
        let mut immutable = es.clone();
        immutable.spec.template.as_mut().unwrap().immutable = Some(true);
        assert!(refused(&immutable).contains("an immutable Secret cannot change"));
    }

    fn owned(es: &EncryptedSecret, rv: &str) -> ExistingSecret {
        ExistingSecret {
            resource_version: Some(rv.into()),
            owner_references: vec![es.controller_owner_ref(&()).unwrap()],
            ..ExistingSecret::default()
        }
    }

    fn synced(es: &mut EncryptedSecret, rv: &str) {
        let outcome = Outcome {
            ready: true,
            reason: reason::SYNCED,
            message: "ok".into(),
            key_arns: vec!["arn:k".into()],
            applied: Some((fingerprint(es), rv.into())),
        };
        es.status = Some(next_status(es, &outcome, "2026-11-24T00:00:00Z"));
    }

    #[test]
    fn new_object_is_applied() {
        assert_eq!(plan(&es(1), None, Ok(())), Plan::Create);
    }

    #[test]
    fn unchanged_object_is_up_to_date() {
        let mut es = es(1);
        synced(&mut es, "100");
        assert_eq!(plan(&es, Some(&owned(&es, "100")), Ok(())), Plan::UpToDate);
    }

    #[test]
    fn edited_secret_is_repaired() {
        let mut es = es(1);
        synced(&mut es, "100");
        assert_eq!(
            plan(&es, Some(&owned(&es, "101")), Ok(())),
            Plan::Replace {
                resource_version: "101".into()
            }
        );
    }

    #[test]
    fn deleted_secret_is_recreated() {
        let mut es = es(1);
        synced(&mut es, "100");
        assert_eq!(plan(&es, None, Ok(())), Plan::Create);
    }

    #[test]
    fn updated_spec_is_applied() {
        let mut es = es(1);
        synced(&mut es, "100");
        let existing = owned(&es, "100");
        es.spec
            .encrypted_data
            .insert("new".into(), "a21zZWFs".into());
        es.metadata.generation = Some(2);
        assert_eq!(
            plan(&es, Some(&existing), Ok(())),
            Plan::Replace {
                resource_version: "100".into()
            }
        );
        // A spec change without a generation bump (it cannot happen, but be safe) is caught
        // by the fingerprint.
        es.metadata.generation = Some(1);
        assert_eq!(
            plan(&es, Some(&existing), Ok(())),
            Plan::Replace {
                resource_version: "100".into()
            }
        );
    }

    #[test]
    fn failed_object_is_retried() {
        let mut es = es(1);
        synced(&mut es, "100");
        let failure = Outcome {
            ready: false,
            reason: reason::THROTTLED,
            message: "later".into(),
            key_arns: vec![],
            applied: None,
        };
        es.status = Some(next_status(&es, &failure, "2026-11-24T00:01:00Z"));
        assert_eq!(
            plan(&es, Some(&owned(&es, "100")), Ok(())),
            Plan::Replace {
                resource_version: "100".into()
            }
        );
    }

    #[test]
    fn foreign_secret_is_refused_with_the_way_out() {
        let es = es(1);
        let foreign = ExistingSecret {
            resource_version: Some("5".into()),
            ..ExistingSecret::default()
        };
        match plan(&es, Some(&foreign), Ok(())) {
            Plan::Refuse { message } => {
                assert!(message.contains("kmseal.dev/managed=true"), "{message}");
                assert!(message.contains("not created by kmseal"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Owned by another EncryptedSecret (another uid): still foreign.
        let mut other = es.clone();
        other.metadata.uid = Some("uid-2".into());
        let theirs = owned(&other, "5");
        assert!(matches!(
            plan(&es, Some(&theirs), Ok(())),
            Plan::Refuse { .. }
        ));
    }

    /// The watch cache keeps only what the plan reads: the decisions on the cut-down metadata
    /// are the ones on the whole metadata.
    #[test]
    fn cut_down_metadata_decides_as_the_whole() {
        let es = es(1);
        let owner = es.controller_owner_ref(&()).unwrap();
        let mut other_owner = owner.clone();
        other_owner.controller = None;
        other_owner.uid = "someone-else".into();
        let full = |annotations: &[(&str, &str)], owners: Vec<OwnerReference>| ObjectMeta {
            name: Some("db".into()),
            namespace: Some("team-a".into()),
            uid: Some("secret-uid".into()),
            resource_version: Some("7".into()),
            labels: Some(BTreeMap::from([("big".into(), "x".repeat(500))])),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            owner_references: Some(owners),
            finalizers: Some(vec!["example.com/keep".into()]),
            ..ObjectMeta::default()
        };
        let cases = [
            full(&[("note", "x")], vec![other_owner.clone(), owner.clone()]),
            full(
                &[(ADOPT_ANNOTATION, "true"), ("note", "y")],
                vec![other_owner.clone()],
            ),
            full(&[("note", "z")], vec![]),
        ];
        for meta in cases {
            let slim = secret_meta_read(meta.clone());
            assert_eq!(slim.labels, None);
            assert_eq!(slim.uid, None);
            assert!(
                slim.annotations
                    .iter()
                    .flatten()
                    .all(|(k, _)| k == ADOPT_ANNOTATION)
            );
            assert!(
                slim.owner_references
                    .iter()
                    .flatten()
                    .all(|r| r.controller == Some(true))
            );
            assert_eq!(slim.finalizers, meta.finalizers);
            assert_eq!(
                plan(&es, Some(&ExistingSecret::from(&slim)), Ok(())),
                plan(&es, Some(&ExistingSecret::from(&meta)), Ok(()))
            );
        }
        let mut watched = es.metadata.clone();
        watched.labels = Some(BTreeMap::from([("team".into(), "a".into())]));
        watched.annotations = Some(BTreeMap::from([
            (
                crate::api::PLAIN_SCOPE_ANNOTATION.into(),
                "namespace".into(),
            ),
            (
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                "{}".into(),
            ),
        ]));
        let slim = encrypted_meta_read(watched.clone());
        assert_eq!(slim.labels, None);
        assert_eq!(
            slim.annotations.unwrap().keys().collect::<Vec<_>>(),
            [crate::api::PLAIN_SCOPE_ANNOTATION]
        );
        assert_eq!(
            (slim.name, slim.namespace, slim.uid, slim.generation),
            (
                watched.name,
                watched.namespace,
                watched.uid,
                watched.generation
            )
        );
    }

    #[test]
    fn annotated_secret_is_adopted() {
        let es = es(1);
        let adoptable = ExistingSecret {
            resource_version: Some("5".into()),
            annotations: BTreeMap::from([(ADOPT_ANNOTATION.into(), "true".into())]),
            ..ExistingSecret::default()
        };
        assert_eq!(ownership(&es, &adoptable), Ownership::Adoptable);
        assert_eq!(
            plan(&es, Some(&adoptable), Ok(())),
            Plan::Replace {
                resource_version: "5".into()
            }
        );
    }

    #[test]
    fn another_controllers_secret_is_never_adopted() {
        let es = es(1);
        let theirs = ExistingSecret {
            resource_version: Some("5".into()),
            annotations: BTreeMap::from([(ADOPT_ANNOTATION.into(), "true".into())]),
            owner_references: vec![OwnerReference {
                api_version: "cert-manager.io/v1".into(),
                kind: "Certificate".into(),
                name: "web".into(),
                uid: "cert-uid".into(),
                controller: Some(true),
                ..OwnerReference::default()
            }],
            ..ExistingSecret::default()
        };
        match plan(&es, Some(&theirs), Ok(())) {
            Plan::Refuse { message } => {
                assert!(
                    message.contains("controlled by Certificate web"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rejection_comes_first_and_keeps_everything() {
        let mut es = es(1);
        synced(&mut es, "100");
        let rejection = Rejection {
            reason: reason::KEY_NOT_ALLOWED,
            message: "no".into(),
        };
        assert_eq!(
            plan(&es, Some(&owned(&es, "100")), Err(rejection.clone())),
            Plan::Reject {
                reason: reason::KEY_NOT_ALLOWED,
                message: "no".into()
            }
        );
        assert!(matches!(
            plan(&es, None, Err(rejection)),
            Plan::Reject { .. }
        ));
    }

    #[test]
    fn desired_secret_carries_template_label_and_owner() {
        let es = es(1);
        let data = BTreeMap::from([("password".into(), Zeroizing::new(b"s3cr3t-value".to_vec()))]);
        let existing = ExistingSecret {
            finalizers: vec!["backup.example.com/keep".into()],
            annotations: BTreeMap::from([(ADOPT_ANNOTATION.into(), "true".into())]),
            ..ExistingSecret::default()
        };
        let created = desired_secret(&es, BTreeMap::new(), None);
        assert_eq!(created.metadata.resource_version, None);
        assert_eq!(created.metadata.finalizers, None);
        let secret = desired_secret(&es, data, Some(("7", &existing)));
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(
            secret.metadata.finalizers,
            Some(vec!["backup.example.com/keep".to_owned()])
        );
        assert!(
            !secret
                .metadata
                .annotations
                .clone()
                .unwrap()
                .contains_key(ADOPT_ANNOTATION),
            "an adopted Secret becomes exactly the desired one"
        );
        assert!(
            !format!("{secret:?}").contains("s3cr3t"),
            "values are not printed"
        );
        let labels = secret.metadata.labels.unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(labels["app"], "api");
        assert_eq!(secret.metadata.annotations.unwrap()["note"], "x");
        assert_eq!(secret.type_, "kubernetes.io/basic-auth");
        let owner = &secret.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.kind, "EncryptedSecret");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(secret.data.len(), 1, "only the items of the spec");
    }

    #[test]
    fn transition_time_moves_only_on_flips() {
        let mut es = es(1);
        synced(&mut es, "100");
        let t0 = ready_condition(es.status.as_ref())
            .unwrap()
            .last_transition_time
            .clone();
        synced(&mut es, "101");
        let again = ready_condition(es.status.as_ref()).unwrap();
        assert_eq!(
            again.last_transition_time, t0,
            "True -> True keeps the time"
        );
        let failure = Outcome {
            ready: false,
            reason: reason::ACCESS_DENIED,
            message: "denied".into(),
            key_arns: vec![],
            applied: None,
        };
        let failed = next_status(&es, &failure, "2026-11-24T01:00:00Z");
        let cond = &failed.conditions[0];
        assert_eq!(
            cond.last_transition_time.as_deref(),
            Some("2026-11-24T01:00:00Z")
        );
        assert_eq!(cond.observed_generation, Some(1));
        assert_eq!(
            failed.key_arns,
            vec!["arn:k".to_owned()],
            "kept from the last success"
        );
        assert_eq!(failed.secret_resource_version.as_deref(), Some("101"));
    }

    #[test]
    fn events_only_on_transitions() {
        let mut es = es(1);
        let failure = Outcome {
            ready: false,
            reason: reason::THROTTLED,
            message: "slow down".into(),
            key_arns: vec![],
            applied: None,
        };
        let first = transition_event(&es, &failure).unwrap();
        assert!(first.warning);
        es.status = Some(next_status(&es, &failure, "t"));
        assert_eq!(
            transition_event(&es, &failure),
            None,
            "same failure again: no event"
        );
        let other = Outcome {
            reason: reason::ACCESS_DENIED,
            ..failure.clone()
        };
        assert!(
            transition_event(&es, &other).is_some(),
            "another reason: event"
        );
        assert!(!status_changed(&es, &next_status(&es, &failure, "t")));
    }

    #[test]
    fn a_rewrapped_status_says_the_secret_is_right_for_the_new_spec() {
        let mut before = es(1);
        synced(&mut before, "7");
        before.status.as_mut().unwrap().key_arns = vec!["old".into(), "plain".into()];
        let mut patched = before.clone();
        patched
            .spec
            .encrypted_data
            .insert("password".into(), "bmV3".into());
        patched.metadata.generation = Some(2);
        let record = crate::api::RewrapRecord {
            target: "new#m".into(),
            time: "t".into(),
            values: 1,
        };
        let status = rewrapped_status(
            before.status.clone().unwrap(),
            &patched,
            &["new"],
            &["old"],
            record.clone(),
        );
        assert_eq!(status.key_arns, ["new", "plain"]);
        assert_eq!(status.rewrapped, Some(record));
        assert_eq!(status.secret_resource_version.as_deref(), Some("7"));
        // The next reconcile of the patched object finds nothing to do.
        patched.status = Some(status);
        let existing = owned(&patched, "7");
        assert_eq!(plan(&patched, Some(&existing), Ok(())), Plan::UpToDate);
        // While the old status would have it write the Secret again.
        patched.status = before.status.clone();
        assert!(matches!(
            plan(&patched, Some(&existing), Ok(())),
            Plan::Replace { .. }
        ));
    }

    #[test]
    fn backoff_grows_to_five_minutes() {
        assert_eq!(backoff_delay(1, 0.0), Duration::from_secs(5));
        assert_eq!(backoff_delay(2, 0.0), Duration::from_secs(10));
        assert_eq!(backoff_delay(7, 0.0), Duration::from_secs(300));
        assert_eq!(backoff_delay(u32::MAX, 0.0), Duration::from_secs(300));
        assert_eq!(backoff_delay(1, 1.0), Duration::from_secs(6));
        assert_eq!(backoff_delay(6, 1.0), Duration::from_secs(192));
        assert_eq!(
            backoff_delay(7, 1.0),
            Duration::from_secs(300),
            "jitter never lifts the cap"
        );
    }
}
