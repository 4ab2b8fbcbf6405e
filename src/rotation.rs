//! Key rotation planning: which sealed values are no longer under the key and key material they
//! should be, and which keys put values at risk.
//!
//! Pure: decided from an envelope's clear header (key ARN, key material id, wrap time, version)
//! and what KMS says about keys ([`KeyFacts`]: one `DescribeKey`, and `ListKeyRotations` where
//! KMS answers it, per distinct key). Nothing here calls KMS or needs a data key.

use std::fmt;

use crate::arn;
use crate::envelope::{Header, Version, WrapAlgorithm};
use crate::kms::KeyFacts;
use crate::kms::{Kms, KmsError, KmsErrorKind, ReEncryptRequest};

/// Why a value should be re-wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stale {
    /// Wrapped under another key than the one it should be (`spec.keyId`, `--key`, or an alias
    /// that now points elsewhere).
    KeyChanged,
    /// Under the right key, but under material older than the key's current one.
    MaterialRotated,
}

impl Stale {
    /// A fixed reason, for conditions, metrics and output.
    pub fn reason(self) -> &'static str {
        match self {
            Stale::KeyChanged => "KeyChanged",
            Stale::MaterialRotated => "MaterialRotated",
        }
    }
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Whether a value under `header` is stale, given the key it should be under. `None`: current,
/// as far as KMS lets anyone tell (a material change is seen from material ids when both are
/// known, else from the wrap time against the last rotation, else not at all).
pub fn staleness(header: &Header, desired: &KeyFacts) -> Option<Stale> {
    stale_wrapping(
        &header.key_arn,
        header.key_material_id.as_deref(),
        header.wrapped_at,
        desired,
    )
}

fn stale_wrapping(
    key_arn: &str,
    material_id: Option<&str>,
    wrapped_at: u64,
    desired: &KeyFacts,
) -> Option<Stale> {
    if !arn::same_key(key_arn, &desired.key_arn) {
        return Some(Stale::KeyChanged);
    }
    match (material_id, desired.current_material_id.as_deref()) {
        (Some(item), Some(current)) => (item != current).then_some(Stale::MaterialRotated),
        _ => desired
            .last_rotation
            .filter(|&rotated| wrapped_at < rotated)
            .map(|_| Stale::MaterialRotated),
    }
}

/// What the controller reports about an object's keys (its `KeyCurrent` condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCurrent {
    /// Every value is under the key it should be, on its current material, and no key is at
    /// risk.
    Current,
    /// Something needs doing: `reason` is the condition's reason, `values` how many values.
    NotCurrent {
        reason: &'static str,
        values: usize,
        message: String,
    },
}

/// The `KeyCurrent` verdict for an object's wrappings, given the key they should be under
/// (`desired`, a key id or alias the object names; `None`: the key each is under) and what KMS
/// says about keys (`facts`; `None` for a key not known yet). `None`: not every needed fact is
/// known, so nothing is said. A key at risk comes first (values will stop opening), then a key
/// change, then rotated material.
pub fn key_current(
    wrappings: &[crate::wrapping::Wrapping],
    desired: Option<&str>,
    facts: &dyn Fn(&str) -> Option<KeyFacts>,
    now: u64,
) -> Option<KeyCurrent> {
    let target = match desired {
        Some(id) => Some(facts(id)?),
        None => None,
    };
    let (mut at_risk, mut changed, mut rotated) = (None::<(KeyRisk, String, usize)>, 0, 0);
    let mut changed_from = None;
    for w in wrappings {
        let own = facts(&w.key_arn)?;
        let target = target.as_ref().unwrap_or(&own);
        let stale = stale_wrapping(
            &w.key_arn,
            w.key_material_id.as_deref(),
            w.wrapped_at,
            target,
        );
        if let Some(r) = risk(&own, now) {
            let entry = at_risk.get_or_insert((r, w.key_arn.to_string(), 0));
            entry.2 += w.items;
        }
        match stale {
            Some(Stale::KeyChanged) => {
                changed += w.items;
                changed_from.get_or_insert_with(|| w.key_arn.to_string());
            }
            Some(Stale::MaterialRotated) => rotated += w.items,
            None => {}
        }
    }
    let fix =
        "re-wrap them in Git with kmseal rewrap (no decrypt permission needed), or seal them again";
    Some(if let Some((r, key, values)) = at_risk {
        KeyCurrent::NotCurrent {
            reason: r.reason(),
            values,
            message: format!("{values} value(s) are under key {key}: {r}"),
        }
    } else if changed > 0 {
        let to = target.map(|t| t.key_arn).unwrap_or_default();
        KeyCurrent::NotCurrent {
            reason: Stale::KeyChanged.reason(),
            values: changed,
            message: format!(
                "{changed} value(s) are under key {}, but spec.keyId names key {to}; they still open; {fix}",
                changed_from.unwrap_or_default()
            ),
        }
    } else if rotated > 0 {
        KeyCurrent::NotCurrent {
            reason: Stale::MaterialRotated.reason(),
            values: rotated,
            message: format!(
                "{rotated} value(s) are under older key material than their key's current one; they still open; {fix}"
            ),
        }
    } else {
        KeyCurrent::Current
    })
}

/// The `KeyCurrent` reasons an in-cluster re-wrap reports.
pub const REWRAP_FAILED: &str = "RewrapFailed";
pub const REWRAP_REVERTED: &str = "RewrapReverted";

/// What the controller does about an object's keys (its `KeyCurrent` condition and the
/// re-wrap queue), decided from its wrappings and what is known, with no KMS call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not every fact is known yet: the condition stays as it is.
    Unknown,
    /// Nothing to do: no `KeyCurrent` condition.
    Current,
    /// Stale values the controller re-wraps in place; the re-wrap writes the status, so the
    /// condition stays as it is. `queue`: whether to queue it (not when its last re-wrap was
    /// set back).
    Rewrap {
        reason: &'static str,
        values: usize,
        queue: bool,
    },
    /// A `KeyCurrent` condition saying this.
    Report {
        reason: &'static str,
        values: usize,
        message: String,
    },
}

/// The `KeyCurrent` reason when `spec.keyId` names a key the key policy does not name for the
/// namespace: its values are allowed (their own keys are), but where the key moves is not
/// followed, so a rotation would silently do nothing.
pub const KEY_ID_NOT_ALLOWED: &str = "KeyIdNotAllowed";

/// The [`Verdict`] once the key policy's view of `spec.keyId` is added: `refusal` (the
/// policy's own words) when the policy does not name it, which a `KeyCurrent` condition says
/// when nothing weightier does (a stale or endangered value keeps its verdict); and once it is
/// named again, a condition that said so (`reported`) goes even before the key facts are
/// known. Only the policy speaks here, never KMS.
pub fn with_key_id(verdict: Verdict, refusal: Option<&str>, reported: Option<&str>) -> Verdict {
    match (refusal, verdict) {
        (Some(refusal), Verdict::Unknown | Verdict::Current) => Verdict::Report {
            reason: KEY_ID_NOT_ALLOWED,
            values: 0,
            message: format!(
                "{refusal}; kmseal does not follow where spec.keyId points, so a key rotation would not re-wrap these values"
            ),
        },
        (None, Verdict::Unknown) if reported == Some(KEY_ID_NOT_ALLOWED) => Verdict::Current,
        (_, verdict) => verdict,
    }
}

/// The [`Verdict`] for an object: its wrappings, the key its values should be under
/// (`desired`), what KMS says about keys (`facts`), its rotation policy and where that came
/// from, whether a re-wrap may move its values at all (`may_rewrap`: false once a re-wrap
/// found nothing it can move), and the reason of the `KeyCurrent` condition its status has
/// for this generation.
pub fn verdict(
    wrappings: &[crate::wrapping::Wrapping],
    desired: Option<&str>,
    facts: &dyn Fn(&str) -> Option<KeyFacts>,
    now: u64,
    policy: (RotationPolicy, PolicySource),
    may_rewrap: bool,
    reported: Option<&str>,
) -> Verdict {
    let Some(judged) = key_current(wrappings, desired, facts, now) else {
        return Verdict::Unknown;
    };
    let KeyCurrent::NotCurrent {
        reason,
        values,
        mut message,
    } = judged
    else {
        return Verdict::Current;
    };
    // Only v2 values wrapped by KMS can be re-wrapped in the cluster, and only for a key
    // change or rotated material (not a key at risk).
    let movable = may_rewrap
        && (reason == Stale::KeyChanged.reason() || reason == Stale::MaterialRotated.reason())
        && wrappings
            .iter()
            .any(|w| w.version == Version::V2 && w.algorithm == WrapAlgorithm::KmsSymmetric);
    if !movable {
        return Verdict::Report {
            reason,
            values,
            message,
        };
    }
    match policy {
        (RotationPolicy::Rewrap, _) => Verdict::Rewrap {
            reason,
            values,
            // A re-wrap that was set back stays reported; a failed one is tried again (after
            // its retry delay, which the queue keeps).
            queue: reported != Some(REWRAP_REVERTED),
        },
        (RotationPolicy::Report, source) => {
            message.push_str(&match source {
                PolicySource::Spec => {
                    "; kmseal only reports this (spec.rotation.policy: Report)".to_owned()
                }
                PolicySource::GitOps(marker, tool) => format!(
                    "; kmseal only reports this, as {tool} applies this object ({marker}) and would set re-wrapped values back; set spec.rotation.policy: Rewrap to let kmseal re-wrap them (see docs/rotation.md)"
                ),
                PolicySource::Default => {
                    "; kmseal only reports this (--rotation-policy Report)".to_owned()
                }
            });
            Verdict::Report {
                reason,
                values,
                message,
            }
        }
    }
}

/// Why a stale value cannot be re-wrapped in place (it must be sealed again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRewrappable {
    /// Envelope v1 authenticates its wrapping, so it cannot be swapped.
    OldFormat,
    /// Wrapped offline with an RSA key: its format fixes the wrapping algorithm.
    RsaWrapped,
}

impl fmt::Display for NotRewrappable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotRewrappable::OldFormat => {
                "it is envelope v1, whose wrapping cannot be replaced; seal it again with kmseal seal (that needs kms:Decrypt, or the plaintext)"
            }
            NotRewrappable::RsaWrapped => {
                "it was sealed offline with an RSA key; seal it again with kmseal seal --public-key for the new key"
            }
        })
    }
}

/// Whether `ReEncrypt` can move a value's data key (v2, KMS-wrapped).
pub fn rewrappable(header: &Header) -> Result<(), NotRewrappable> {
    if header.version == Version::V1 {
        return Err(NotRewrappable::OldFormat);
    }
    if header.algorithm != WrapAlgorithm::KmsSymmetric {
        return Err(NotRewrappable::RsaWrapped);
    }
    Ok(())
}

pub use crate::api::RotationPolicy;

/// Labels and annotations by which GitOps tools mark what they apply, and the tool. Such an
/// object's `spec` is re-applied from Git, which would undo an in-cluster re-wrap; so, unless
/// the object asks for `Rewrap` itself, its stale values are only reported.
/// `app.kubernetes.io/instance` is Argo CD's label tracking (and Helm sets it too).
pub const GITOPS_MARKERS: [(&str, &str); 4] = [
    ("argocd.argoproj.io/tracking-id", "Argo CD"),
    (
        "app.kubernetes.io/instance",
        "Argo CD (label tracking) or Helm",
    ),
    ("kustomize.toolkit.fluxcd.io/name", "Flux"),
    ("helm.toolkit.fluxcd.io/name", "Flux"),
];

/// Whether a label or annotation key is one of [`GITOPS_MARKERS`].
pub fn is_gitops_marker(key: &str) -> bool {
    GITOPS_MARKERS.iter().any(|(marker, _)| *marker == key)
}

/// Where an object's rotation policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// `spec.rotation.policy`.
    Spec,
    /// A GitOps tool applies the object: (the marker, the tool).
    GitOps(&'static str, &'static str),
    /// The controller's `--rotation-policy`.
    Default,
}

/// The rotation policy for an object: its own `spec.rotation.policy`, else `Report` for what a
/// GitOps tool applies (`markers`: the keys of its labels and annotations), else `default`.
pub fn rotation_policy<'a>(
    spec: Option<RotationPolicy>,
    markers: impl IntoIterator<Item = &'a str>,
    default: RotationPolicy,
) -> (RotationPolicy, PolicySource) {
    if let Some(policy) = spec {
        return (policy, PolicySource::Spec);
    }
    let keys: Vec<&str> = markers.into_iter().collect();
    for (marker, tool) in GITOPS_MARKERS {
        if keys.contains(&marker) {
            return (RotationPolicy::Report, PolicySource::GitOps(marker, tool));
        }
    }
    (default, PolicySource::Default)
}

/// Where a re-wrap moves values, as recorded in the status: the key, and the material where
/// KMS names it (else the time of the key's last rotation).
pub fn rewrap_target(target: &KeyFacts) -> String {
    match (&target.current_material_id, target.last_rotation) {
        (Some(material), _) => format!("{}#{material}", target.key_arn),
        (None, Some(rotated)) => format!("{}@{rotated}", target.key_arn),
        (None, None) => target.key_arn.clone(),
    }
}

/// Stale values of one object that share a data key: one `ReEncrypt` moves them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapGroup<T = String> {
    pub reason: Stale,
    /// The wrapping they share now.
    pub header: Header,
    /// The values (their item names, or whatever the caller keeps of them).
    pub items: Vec<T>,
    /// Where they go.
    pub target: KeyFacts,
}

/// How a stale value can be brought to the key and material it should be under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// One `ReEncrypt` of its data key (envelope v2, KMS-wrapped).
    Move,
    /// Envelope v1 authenticates its wrapping: open it and seal it again as v2.
    SealV1Again,
    /// Only sealing it again from the plaintext (an RSA-wrapped value).
    SealAgain(NotRewrappable),
}

/// What one value needs, from its clear header, what KMS says about the key it is under
/// (`own`) and the key it should be under (`target`), at `now` (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueState {
    Current,
    /// Current, but under a key that puts it at risk.
    AtRisk(KeyRisk),
    Stale(Stale, Fix),
}

/// [`ValueState`] of the value under `header`. The kmseal CLI reports every value by it; the
/// controller re-wraps only what it can [`Fix::Move`] (see [`plan_rewrap`]).
pub fn classify(header: &Header, own: &KeyFacts, target: &KeyFacts, now: u64) -> ValueState {
    let Some(reason) = staleness(header, target) else {
        return risk(own, now).map_or(ValueState::Current, ValueState::AtRisk);
    };
    let fix = if header.version == Version::V1 && header.algorithm == WrapAlgorithm::KmsSymmetric {
        Fix::SealV1Again
    } else {
        match rewrappable(header) {
            Ok(()) => Fix::Move,
            Err(why) => Fix::SealAgain(why),
        }
    };
    ValueState::Stale(reason, fix)
}

/// Adds a value to move to the group of the values that share its data key, or starts one.
pub fn add_to_group<T>(
    groups: &mut Vec<RewrapGroup<T>>,
    reason: Stale,
    header: &Header,
    target: &KeyFacts,
    item: T,
) {
    match groups
        .iter_mut()
        .find(|g| g.header.wrapped_key == header.wrapped_key && g.header.key_arn == header.key_arn)
    {
        Some(group) => group.items.push(item),
        None => groups.push(RewrapGroup {
            reason,
            header: header.clone(),
            items: vec![item],
            target: target.clone(),
        }),
    }
}

/// What an in-cluster re-wrap of one object should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewrapPlan {
    /// Nothing it can move: every value is current, cannot be moved by `ReEncrypt` (v1, RSA),
    /// or is under a key KMS will not use (disabled, pending deletion); the KeyCurrent
    /// condition reports the latter two.
    Nothing,
    /// Move these (`target`: the record for the status).
    Move {
        groups: Vec<RewrapGroup>,
        target: String,
    },
    /// The object was re-wrapped to this very target before, and its values are stale again:
    /// they were set back (a GitOps tool re-applied them, say). Not moved again.
    Reverted { values: usize, target: String },
}

/// What to re-wrap of an object's envelope `items` (name, clear header), given the key they
/// should be under (`desired`, a key id or alias the object may name; `None`: each its own
/// key), what KMS says about keys (`facts`), the target recorded by the object's last re-wrap,
/// and now (Unix seconds). `None` while a needed fact is not known.
pub fn plan_rewrap(
    items: &[(&str, &Header)],
    desired: Option<&str>,
    facts: &dyn Fn(&str) -> Option<KeyFacts>,
    last_target: Option<&str>,
    now: u64,
) -> Option<RewrapPlan> {
    let desired = match desired {
        Some(id) => Some(facts(id)?),
        None => None,
    };
    let mut groups: Vec<RewrapGroup> = Vec::new();
    for (item, header) in items {
        let own = facts(&header.key_arn)?;
        let target = desired.clone().unwrap_or_else(|| own.clone());
        // KMS will not use a key at risk (disabled, pending deletion): reported, not moved.
        if let ValueState::Stale(reason, Fix::Move) = classify(header, &own, &target, now)
            && risk(&own, now).is_none()
            && risk(&target, now).is_none()
        {
            add_to_group(&mut groups, reason, header, &target, (*item).to_owned());
        }
    }
    if groups.is_empty() {
        return Some(RewrapPlan::Nothing);
    }
    let mut targets: Vec<String> = groups.iter().map(|g| rewrap_target(&g.target)).collect();
    targets.sort();
    targets.dedup();
    let target = targets.join(" ");
    if last_target == Some(target.as_str()) {
        let values = groups.iter().map(|g| g.items.len()).sum();
        return Some(RewrapPlan::Reverted { values, target });
    }
    Some(RewrapPlan::Move { groups, target })
}

/// A key that puts the values under it at risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRisk {
    Disabled,
    /// Values under it open until the deletion, then never again.
    PendingDeletion {
        days_left: u64,
    },
}

impl KeyRisk {
    pub fn reason(self) -> &'static str {
        match self {
            KeyRisk::Disabled => "KeyDisabled",
            KeyRisk::PendingDeletion { .. } => "KeyPendingDeletion",
        }
    }
}

impl fmt::Display for KeyRisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRisk::Disabled => f.write_str(
                "the key is disabled: its values do not open until it is enabled again (kms:EnableKey), or they are moved to another key",
            ),
            KeyRisk::PendingDeletion { days_left } => write!(
                f,
                "the key is pending deletion in {days_left} day(s): cancel it (kms:CancelKeyDeletion), or move the values to another key before then; after it they never open again"
            ),
        }
    }
}

/// The risk a key's state puts on values under it, at `now` (Unix seconds).
pub fn risk(facts: &KeyFacts, now: u64) -> Option<KeyRisk> {
    match facts.state.as_str() {
        "Disabled" => Some(KeyRisk::Disabled),
        "PendingDeletion" | "PendingReplicaDeletion" => Some(KeyRisk::PendingDeletion {
            days_left: facts
                .deletion_date
                .map_or(0, |date| date.saturating_sub(now).div_ceil(86_400)),
        }),
        _ => None,
    }
}

/// Moves the data key of a v2 value with header `source` (bound to `namespace`/`name`) under
/// `target_key_arn` with one `ReEncrypt`: the plaintext data key never leaves KMS, and the
/// encryption context stays the value's own. Returns the new header (wrapped at `now`), checked
/// to be under the target key. Used by `kmseal rewrap` and the controller.
pub async fn move_data_key<K: Kms>(
    kms: &K,
    source: &Header,
    namespace: &str,
    name: &str,
    target_key_arn: &str,
    now: u64,
    principal: &crate::kms::Principal,
) -> Result<Header, KmsError> {
    let context = crate::binding::Binding::new(source.scope, namespace, name).context_v2();
    let moved = kms
        .re_encrypt(ReEncryptRequest {
            ciphertext: &source.wrapped_key,
            source_key_id: &source.key_arn,
            source_algorithm: WrapAlgorithm::KmsSymmetric,
            source_context: &context,
            destination_key_id: target_key_arn,
            destination_context: &context,
            principal,
        })
        .await?;
    if !crate::arn::same_key(&moved.key_arn, target_key_arn) {
        return Err(KmsError::new(
            KmsErrorKind::WrongKey,
            "kms:ReEncrypt",
            Some(target_key_arn),
            moved.key_arn,
        ));
    }
    Ok(Header {
        wrapped_at: now,
        key_arn: moved.key_arn,
        key_material_id: moved.key_material_id,
        wrapped_key: moved.wrapped,
        ..source.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::Scope;

    const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const OTHER: &str =
        "arn:aws:kms:eu-west-1:111122223333:key/9999abcd-12ab-34cd-56ef-1234567890ab";

    fn header(key: &str, material: Option<&str>, wrapped_at: u64) -> Header {
        Header {
            version: Version::V2,
            scope: Scope::Strict,
            algorithm: WrapAlgorithm::KmsSymmetric,
            wrapped_at,
            key_arn: key.to_owned(),
            key_material_id: material.map(str::to_owned),
            wrapped_key: vec![1],
        }
    }

    fn facts(key: &str, current: Option<&str>, last_rotation: Option<u64>) -> KeyFacts {
        KeyFacts {
            key_arn: key.to_owned(),
            state: "Enabled".to_owned(),
            current_material_id: current.map(str::to_owned),
            last_rotation,
            deletion_date: None,
        }
    }

    #[test]
    fn another_key_is_stale_whatever_the_material() {
        let h = header(KEY, Some("m1"), 100);
        assert_eq!(
            staleness(&h, &facts(OTHER, Some("m1"), None)),
            Some(Stale::KeyChanged)
        );
        assert_eq!(staleness(&h, &facts(KEY, Some("m1"), None)), None);
    }

    #[test]
    fn material_ids_decide_when_both_are_known() {
        let h = header(KEY, Some("m1"), 100);
        assert_eq!(
            staleness(&h, &facts(KEY, Some("m2"), None)),
            Some(Stale::MaterialRotated)
        );
        // Known ids win over dates, which are only the fallback.
        assert_eq!(staleness(&h, &facts(KEY, Some("m1"), Some(200))), None);
    }

    #[test]
    fn without_ids_the_wrap_time_is_compared_with_the_last_rotation() {
        let h = header(KEY, None, 100);
        assert_eq!(
            staleness(&h, &facts(KEY, Some("m2"), Some(150))),
            Some(Stale::MaterialRotated)
        );
        assert_eq!(staleness(&h, &facts(KEY, None, Some(100))), None);
        assert_eq!(staleness(&h, &facts(KEY, None, Some(50))), None);
        // Neither ids nor dates (an emulator without ListKeyRotations): cannot tell.
        assert_eq!(staleness(&h, &facts(KEY, Some("m2"), None)), None);
        let with_id = header(KEY, Some("m1"), 100);
        assert_eq!(
            staleness(&with_id, &facts(KEY, None, Some(150))),
            Some(Stale::MaterialRotated)
        );
    }

    fn wrapping(
        key: &str,
        material: Option<&str>,
        wrapped_at: u64,
        items: usize,
    ) -> crate::wrapping::Wrapping {
        crate::wrapping::Wrapping {
            key_arn: key.into(),
            key_material_id: material.map(Into::into),
            wrapped_at,
            version: Version::V2,
            algorithm: WrapAlgorithm::KmsSymmetric,
            items,
        }
    }

    #[test]
    fn the_key_current_verdict_waits_for_facts_and_puts_risk_first() {
        let current = facts(KEY, Some("m1"), None);
        let other = facts(OTHER, Some("o1"), None);
        let known = |id: &str| match id {
            KEY | "alias/app" => Some(current.clone()),
            OTHER | "alias/new" => Some(other.clone()),
            _ => None,
        };
        let w = [wrapping(KEY, Some("m1"), 10, 3)];
        assert_eq!(key_current(&w, None, &known, 0), Some(KeyCurrent::Current));
        assert_eq!(
            key_current(&w, Some("alias/app"), &known, 0),
            Some(KeyCurrent::Current)
        );
        // Nothing is said while a fact is missing.
        assert_eq!(key_current(&w, Some("alias/unknown"), &known, 0), None);
        assert_eq!(
            key_current(&[wrapping("arn:x", None, 1, 1)], None, &known, 0),
            None
        );

        let Some(KeyCurrent::NotCurrent {
            reason,
            values,
            message,
        }) = key_current(&w, Some("alias/new"), &known, 0)
        else {
            panic!("stale")
        };
        assert_eq!((reason, values), ("KeyChanged", 3));
        assert!(
            message.contains(OTHER) && message.contains("kmseal rewrap"),
            "{message}"
        );

        let rotated = [wrapping(KEY, Some("m0"), 10, 2)];
        assert!(matches!(
            key_current(&rotated, None, &known, 0),
            Some(KeyCurrent::NotCurrent {
                reason: "MaterialRotated",
                values: 2,
                ..
            })
        ));

        // A key pending deletion outranks the rest.
        let mut doomed = current.clone();
        doomed.state = "PendingDeletion".into();
        doomed.deletion_date = Some(3 * 86_400);
        let doomed_facts = |id: &str| (id == KEY).then(|| doomed.clone()).or_else(|| known(id));
        let Some(KeyCurrent::NotCurrent {
            reason, message, ..
        }) = key_current(&rotated, Some("alias/new"), &doomed_facts, 0)
        else {
            panic!("at risk")
        };
        assert_eq!(reason, "KeyPendingDeletion");
        assert!(message.contains("3 day(s)"), "{message}");
    }

    #[test]
    fn only_kms_wrapped_v2_values_can_be_rewrapped() {
        let mut h = header(KEY, None, 1);
        assert_eq!(rewrappable(&h), Ok(()));
        h.algorithm = WrapAlgorithm::RsaOaepSha256;
        assert_eq!(rewrappable(&h), Err(NotRewrappable::RsaWrapped));
        h.version = Version::V1;
        assert_eq!(rewrappable(&h), Err(NotRewrappable::OldFormat));
    }

    #[test]
    fn the_object_decides_then_gitops_tools_then_the_default() {
        use RotationPolicy::{Report, Rewrap};
        assert_eq!(
            rotation_policy(None, [], Rewrap),
            (Rewrap, PolicySource::Default)
        );
        assert_eq!(
            rotation_policy(None, ["team", "argocd.argoproj.io/tracking-id"], Rewrap),
            (
                Report,
                PolicySource::GitOps("argocd.argoproj.io/tracking-id", "Argo CD")
            )
        );
        assert!(matches!(
            rotation_policy(None, ["kustomize.toolkit.fluxcd.io/name"], Rewrap),
            (Report, PolicySource::GitOps(_, "Flux"))
        ));
        // The object's own choice wins: e.g. Rewrap with Argo CD's ignoreDifferences set.
        assert_eq!(
            rotation_policy(Some(Rewrap), ["app.kubernetes.io/instance"], Report),
            (Rewrap, PolicySource::Spec)
        );
        assert_eq!(
            rotation_policy(Some(Report), [], Rewrap),
            (Report, PolicySource::Spec)
        );
        assert!(GITOPS_MARKERS.iter().all(|(m, _)| is_gitops_marker(m)));
        assert!(!is_gitops_marker("app.kubernetes.io/name"));
    }

    #[test]
    fn a_rewrap_moves_each_data_key_once_and_never_twice_to_one_target() {
        let current = facts(KEY, Some("m1"), None);
        let other = facts(OTHER, Some("o1"), Some(500));
        let known = |id: &str| match id {
            KEY => Some(current.clone()),
            OTHER | "alias/new" => Some(other.clone()),
            _ => None,
        };
        let shared = header(KEY, Some("m1"), 10);
        let mut second = header(KEY, Some("m1"), 10);
        second.wrapped_key = vec![2];
        let items = [("a", &shared), ("b", &shared), ("c", &second)];
        // Current under their own key: nothing to do.
        assert_eq!(
            plan_rewrap(&items, None, &known, None, 0),
            Some(RewrapPlan::Nothing)
        );
        // Waits for facts.
        assert_eq!(plan_rewrap(&items, Some("alias/x"), &known, None, 0), None);
        let Some(RewrapPlan::Move { groups, target }) =
            plan_rewrap(&items, Some("alias/new"), &known, None, 0)
        else {
            panic!("a move")
        };
        assert_eq!(target, format!("{OTHER}#o1"));
        assert_eq!(groups.len(), 2, "one ReEncrypt per data key");
        assert_eq!(groups[0].items, ["a", "b"]);
        assert_eq!(groups[1].items, ["c"]);
        assert_eq!(groups[0].reason, Stale::KeyChanged);
        assert_eq!(groups[0].target.key_arn, OTHER);
        // Moved there once already: reverted, not moved again.
        assert_eq!(
            plan_rewrap(&items, Some("alias/new"), &known, Some(&target), 0),
            Some(RewrapPlan::Reverted {
                values: 3,
                target: target.clone()
            })
        );
        // A new target (the material rotated since) is a new move.
        let mut rotated = other.clone();
        rotated.current_material_id = Some("o2".into());
        let later = |id: &str| {
            if id == OTHER || id == "alias/new" {
                Some(rotated.clone())
            } else {
                known(id)
            }
        };
        assert!(matches!(
            plan_rewrap(&items, Some("alias/new"), &later, Some(&target), 0),
            Some(RewrapPlan::Move { .. })
        ));
        // v1 and RSA values, and keys KMS will not use, are left to the KeyCurrent report.
        let mut v1 = shared.clone();
        v1.version = Version::V1;
        let mut rsa = shared.clone();
        rsa.algorithm = WrapAlgorithm::RsaOaepSha256;
        assert_eq!(
            plan_rewrap(
                &[("a", &v1), ("b", &rsa)],
                Some("alias/new"),
                &known,
                None,
                0
            ),
            Some(RewrapPlan::Nothing)
        );
        let mut disabled = current.clone();
        disabled.state = "Disabled".into();
        let at_risk = |id: &str| (id == KEY).then(|| disabled.clone()).or_else(|| known(id));
        assert_eq!(
            plan_rewrap(&items, Some("alias/new"), &at_risk, None, 0),
            Some(RewrapPlan::Nothing)
        );
        // Material targets fall back to the rotation time.
        assert_eq!(
            rewrap_target(&facts(KEY, None, Some(77))),
            format!("{KEY}@77")
        );
    }

    #[test]
    fn disabled_and_deleted_keys_are_risks_with_days_left() {
        let mut f = facts(KEY, None, None);
        assert_eq!(risk(&f, 0), None);
        f.state = "Disabled".into();
        assert_eq!(risk(&f, 0), Some(KeyRisk::Disabled));
        f.state = "PendingDeletion".into();
        f.deletion_date = Some(10 * 86_400);
        assert_eq!(
            risk(&f, 0),
            Some(KeyRisk::PendingDeletion { days_left: 10 })
        );
        assert_eq!(
            risk(&f, 86_400 + 1),
            Some(KeyRisk::PendingDeletion { days_left: 9 })
        );
        assert_eq!(
            risk(&f, 20 * 86_400),
            Some(KeyRisk::PendingDeletion { days_left: 0 })
        );
        assert!(risk(&f, 0).unwrap().to_string().contains("10 day(s)"));
    }

    /// The whole `KeyCurrent` decision: what is re-wrapped, what is reported and how, and what
    /// is left alone, from the policy and the status alone.
    #[test]
    fn a_key_id_the_policy_does_not_name_is_said_unless_something_weightier_is() {
        let said = "spec.keyId alias/rot does not name a KMS key namespace a may use";
        let refusal = Some(said);
        for quiet in [Verdict::Unknown, Verdict::Current] {
            match with_key_id(quiet, refusal, None) {
                Verdict::Report {
                    reason, message, ..
                } => {
                    assert_eq!(reason, KEY_ID_NOT_ALLOWED);
                    assert!(message.starts_with(said), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        let stale = Verdict::Report {
            reason: "KeyDisabled",
            values: 2,
            message: "m".into(),
        };
        assert_eq!(with_key_id(stale.clone(), refusal, None), stale);
        // Named again: the condition goes, even with the key facts still unknown.
        assert_eq!(
            with_key_id(Verdict::Unknown, None, Some(KEY_ID_NOT_ALLOWED)),
            Verdict::Current
        );
        assert_eq!(
            with_key_id(Verdict::Unknown, None, Some("KeyChanged")),
            Verdict::Unknown
        );
    }

    #[test]
    fn the_verdict_rewraps_what_it_may_and_reports_the_rest() {
        let current = facts(KEY, Some("m1"), None);
        let other = facts(OTHER, Some("o1"), None);
        let known = |id: &str| match id {
            KEY => Some(current.clone()),
            OTHER | "alias/new" => Some(other.clone()),
            _ => None,
        };
        let w = [wrapping(KEY, Some("m1"), 10, 2)];
        let rewrap = (RotationPolicy::Rewrap, PolicySource::Default);
        let judge = |desired: Option<&str>, policy, may_rewrap, reported| {
            verdict(&w, desired, &known, 0, policy, may_rewrap, reported)
        };
        assert_eq!(judge(None, rewrap, true, None), Verdict::Current);
        assert_eq!(
            judge(Some("alias/gone"), rewrap, true, None),
            Verdict::Unknown
        );
        assert_eq!(
            judge(Some("alias/new"), rewrap, true, None),
            Verdict::Rewrap {
                reason: "KeyChanged",
                values: 2,
                queue: true
            }
        );
        // A failed re-wrap is queued again (its retry delay is the queue's); a reverted one not.
        assert!(matches!(
            judge(Some("alias/new"), rewrap, true, Some(REWRAP_FAILED)),
            Verdict::Rewrap { queue: true, .. }
        ));
        assert!(matches!(
            judge(Some("alias/new"), rewrap, true, Some(REWRAP_REVERTED)),
            Verdict::Rewrap { queue: false, .. }
        ));
        // Nothing the re-wrap can move: reported.
        assert!(matches!(
            judge(Some("alias/new"), rewrap, false, None),
            Verdict::Report {
                reason: "KeyChanged",
                ..
            }
        ));
        for (source, says) in [
            (PolicySource::Spec, "spec.rotation.policy: Report"),
            (PolicySource::Default, "--rotation-policy Report"),
            (
                PolicySource::GitOps("argocd.argoproj.io/tracking-id", "Argo CD"),
                "Argo CD",
            ),
        ] {
            let Verdict::Report { message, .. } = judge(
                Some("alias/new"),
                (RotationPolicy::Report, source),
                true,
                None,
            ) else {
                panic!("reported")
            };
            assert!(message.contains(says), "{message}");
        }
        // v1 values cannot be re-wrapped: reported even under Rewrap.
        let mut v1 = w.clone();
        v1[0].version = Version::V1;
        assert!(matches!(
            verdict(&v1, Some("alias/new"), &known, 0, rewrap, true, None),
            Verdict::Report { .. }
        ));
    }
}
