//! Pure reconcile decisions: (EncryptedSecret, existing Secret metadata) → what to do, and
//! (outcome) → the Secret to apply and the status to report. No I/O, no clock, no KMS: the
//! controller supplies all of those, so every decision here is unit-tested directly.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::api::{Condition, EncryptedSecret, EncryptedSecretStatus};

/// Label on every Secret kmseal manages; the controller's Secret watch filters on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "kmseal";
/// Annotation a user puts on an existing Secret to let kmseal take it over.
pub const ADOPT_ANNOTATION: &str = "kmseal.dev/managed";
/// The server-side apply field manager for Secrets and status.
pub const FIELD_MANAGER: &str = "kmseal-controller";
pub const READY: &str = "Ready";

/// Bumped whenever the Secret kmseal produces from the same spec changes shape, so an upgraded
/// controller re-applies once instead of trusting fingerprints from an older one.
const SECRET_SHAPE_VERSION: &str = "kmseal-secret-v1";

/// Ready condition reasons: a small fixed set, also used as event reasons.
pub mod reason {
    pub const SYNCED: &str = "Synced";
    pub const SECRET_EXISTS: &str = "SecretExists";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const DECRYPT_FAILED: &str = "DecryptFailed";
    pub const ACCESS_DENIED: &str = "AccessDenied";
    pub const NO_CREDENTIALS: &str = "NoCredentials";
    pub const KEY_NOT_FOUND: &str = "KeyNotFound";
    pub const KEY_DISABLED: &str = "KeyDisabled";
    pub const THROTTLED: &str = "Throttled";
    pub const KMS_UNAVAILABLE: &str = "KmsUnavailable";
    pub const APPLY_FAILED: &str = "ApplyFailed";

    pub const ALL: [&str; 11] = [
        SYNCED,
        SECRET_EXISTS,
        INVALID_SPEC,
        DECRYPT_FAILED,
        ACCESS_DENIED,
        NO_CREDENTIALS,
        KEY_NOT_FOUND,
        KEY_DISABLED,
        THROTTLED,
        KMS_UNAVAILABLE,
        APPLY_FAILED,
    ];
}

/// The condition reason for a failure category (see `KmsErrorKind::as_str`,
/// `EnvelopeError::category`, `OpenError::category`).
pub fn reason_for_category(category: &str) -> &'static str {
    match category {
        "access_denied" => reason::ACCESS_DENIED,
        "credentials" => reason::NO_CREDENTIALS,
        "key_not_found" => reason::KEY_NOT_FOUND,
        "key_disabled" => reason::KEY_DISABLED,
        "throttled" => reason::THROTTLED,
        "unreachable" | "kms_unavailable" | "kms_error" => reason::KMS_UNAVAILABLE,
        "tampered" | "invalid_ciphertext" | "wrong_key" | "key_usage" => reason::DECRYPT_FAILED,
        "malformed" | "too_large" | "unsupported_version" | "invalid_input" | "invalid_request" => {
            reason::INVALID_SPEC
        }
        _ => reason::APPLY_FAILED,
    }
}

/// What the controller knows of an existing Secret: its metadata only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExistingSecret {
    pub resource_version: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
}

impl From<&ObjectMeta> for ExistingSecret {
    fn from(m: &ObjectMeta) -> Self {
        ExistingSecret {
            resource_version: m.resource_version.clone(),
            labels: m.labels.clone().unwrap_or_default(),
            annotations: m.annotations.clone().unwrap_or_default(),
            owner_references: m.owner_references.clone().unwrap_or_default(),
        }
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
    match controller {
        Some(owner) if !uid.is_empty() && owner.uid == uid => Ownership::Owned,
        _ if existing
            .annotations
            .get(ADOPT_ANNOTATION)
            .map(String::as_str)
            == Some("true") =>
        {
            Ownership::Adoptable
        }
        Some(owner) => Ownership::Foreign(format!("controlled by {} {}", owner.kind, owner.name)),
        None => Ownership::Foreign("not created by kmseal".to_owned()),
    }
}

/// The first decision: whether anything needs doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The Secret is exactly what was last applied from this spec: no KMS call, no write.
    UpToDate,
    /// Decrypt and apply the Secret.
    Apply,
    /// A Secret we do not own is in the way; leave it untouched.
    Refuse { message: String },
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

pub fn plan(es: &EncryptedSecret, existing: Option<&ExistingSecret>) -> Plan {
    let Some(existing) = existing else {
        return Plan::Apply;
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
        Ownership::Adoptable => return Plan::Apply,
        Ownership::Owned => {}
    }
    let status = es.status.as_ref();
    let ready = ready_condition(status).is_some_and(|c| c.status == "True");
    let unchanged = status.is_some_and(|s| {
        s.applied_fingerprint.as_deref() == Some(fingerprint(es).as_str())
            && s.secret_resource_version.is_some()
            && s.secret_resource_version == existing.resource_version
            && s.observed_generation == es.metadata.generation
    });
    if ready && unchanged {
        Plan::UpToDate
    } else {
        Plan::Apply
    }
}

/// The Secret to server-side apply. Every field kmseal sets is listed, so fields it stops
/// setting (a removed item, label or annotation) are removed by the API server.
pub fn desired_secret(es: &EncryptedSecret, data: BTreeMap<String, ByteString>) -> Secret {
    let template = es.spec.template.clone().unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels;
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    let owner = es.controller_owner_ref(&());
    Secret {
        metadata: ObjectMeta {
            name: es.metadata.name.clone(),
            namespace: es.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!meta.annotations.is_empty()).then_some(meta.annotations),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some(template.type_.unwrap_or_else(|| "Opaque".to_owned())),
        immutable: template.immutable,
        data: Some(data),
        ..Secret::default()
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
    }
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

/// Per-object retry delay after `failures` consecutive failures: 5 s doubling to 5 min, with
/// up to 20% jitter (`jitter` in 0..1) so many objects failing together do not retry together.
pub fn backoff_delay(failures: u32, jitter: f64) -> Duration {
    const BASE: f64 = 5.0;
    const MAX: f64 = 300.0;
    let exp = BASE * 2f64.powi(failures.saturating_sub(1).min(16) as i32);
    let capped = exp.min(MAX);
    Duration::from_secs_f64(capped * (1.0 + 0.2 * jitter.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
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
            },
        );
        es.metadata.uid = Some("uid-1".into());
        es.metadata.generation = Some(generation);
        es
    }

    fn owned(es: &EncryptedSecret, rv: &str) -> ExistingSecret {
        ExistingSecret {
            resource_version: Some(rv.into()),
            owner_references: vec![es.controller_owner_ref(&()).unwrap()],
            labels: BTreeMap::from([(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into())]),
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
        assert_eq!(plan(&es(1), None), Plan::Apply);
    }

    #[test]
    fn unchanged_object_is_up_to_date() {
        let mut es = es(1);
        synced(&mut es, "100");
        assert_eq!(plan(&es, Some(&owned(&es, "100"))), Plan::UpToDate);
    }

    #[test]
    fn edited_secret_is_repaired() {
        let mut es = es(1);
        synced(&mut es, "100");
        assert_eq!(plan(&es, Some(&owned(&es, "101"))), Plan::Apply);
    }

    #[test]
    fn deleted_secret_is_recreated() {
        let mut es = es(1);
        synced(&mut es, "100");
        assert_eq!(plan(&es, None), Plan::Apply);
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
        assert_eq!(plan(&es, Some(&existing)), Plan::Apply);
        // A spec change without a generation bump (it cannot happen, but be safe) is caught
        // by the fingerprint.
        es.metadata.generation = Some(1);
        assert_eq!(plan(&es, Some(&existing)), Plan::Apply);
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
        assert_eq!(plan(&es, Some(&owned(&es, "100"))), Plan::Apply);
    }

    #[test]
    fn foreign_secret_is_refused_with_the_way_out() {
        let es = es(1);
        let foreign = ExistingSecret {
            resource_version: Some("5".into()),
            ..ExistingSecret::default()
        };
        match plan(&es, Some(&foreign)) {
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
        assert!(matches!(plan(&es, Some(&theirs)), Plan::Refuse { .. }));
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
        assert_eq!(plan(&es, Some(&adoptable)), Plan::Apply);
    }

    #[test]
    fn desired_secret_carries_template_label_and_owner() {
        let es = es(1);
        let data = BTreeMap::from([("password".into(), ByteString(b"x".to_vec()))]);
        let secret = desired_secret(&es, data);
        let labels = secret.metadata.labels.unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(labels["app"], "api");
        assert_eq!(secret.metadata.annotations.unwrap()["note"], "x");
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        let owner = &secret.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.kind, "EncryptedSecret");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(secret.data.unwrap().len(), 1, "only the items of the spec");
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
    fn backoff_grows_to_five_minutes() {
        assert_eq!(backoff_delay(1, 0.0), Duration::from_secs(5));
        assert_eq!(backoff_delay(2, 0.0), Duration::from_secs(10));
        assert_eq!(backoff_delay(7, 0.0), Duration::from_secs(300));
        assert_eq!(backoff_delay(u32::MAX, 0.0), Duration::from_secs(300));
        assert_eq!(backoff_delay(7, 1.0), Duration::from_secs(360));
    }

    #[test]
    fn categories_map_to_known_reasons() {
        for category in [
            "access_denied",
            "tampered",
            "throttled",
            "malformed",
            "unreachable",
            "whatever",
        ] {
            assert!(reason::ALL.contains(&reason_for_category(category)));
        }
        assert_eq!(reason_for_category("tampered"), reason::DECRYPT_FAILED);
    }
}
