//! The validating admission webhook's decision: an AdmissionReview of an EncryptedSecret in, the
//! answer out. Pure: the checks are `kmseal validate`'s for one object
//! ([`crate::validate::check_encrypted_secret`], the same code), held against the policy the
//! caller passes (the controller's live key policy and the aliases it last resolved). No KMS
//! call and no API call is made here, so the webhook can never be an oracle for what a key
//! would open, and it answers in microseconds.
//!
//! What is never refused, so a tenant can always clean up and no object gets stuck after a
//! policy change: a DELETE (and CONNECT), a write to a subresource (`status`), an UPDATE that
//! only removes items (or changes nothing the checks look at, e.g. finalizers), and an UPDATE
//! whose problems were all there before (allowed, with them as warnings).

use std::collections::BTreeSet;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::Value;

use crate::validate::{Finding, Options, Severity, check_encrypted_secret};

/// The result of one review, for metrics: `allowed`, `warned` (allowed with warnings) or
/// `denied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Warned,
    Denied,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Warned => "warned",
            Verdict::Denied => "denied",
        }
    }
}

/// The most warnings sent back (kubectl prints each; the API server caps them too).
const MAX_WARNINGS: usize = 10;
/// The most denial reasons listed in the message.
const MAX_REASONS: usize = 5;

/// Decides on one request.
pub fn review(
    request: &AdmissionRequest<DynamicObject>,
    options: &Options<'_>,
) -> (AdmissionResponse, Verdict) {
    let mut response = AdmissionResponse::from(request);
    let never_refused = matches!(request.operation, Operation::Delete | Operation::Connect)
        || request
            .sub_resource
            .as_deref()
            .is_some_and(|s| !s.is_empty());
    let Some(object) = request.object.as_ref().filter(|_| !never_refused) else {
        return (response, Verdict::Allowed);
    };
    let namespace = request.namespace.as_deref().filter(|n| !n.is_empty());
    let options = Options {
        namespace: namespace.or(options.namespace),
        ..*options
    };
    let findings = findings_of(object, &options);
    let old = match (&request.operation, &request.old_object) {
        (Operation::Update, Some(old)) => Some(old),
        _ => None,
    };
    let (mut errors, mut warnings): (Vec<&Finding>, Vec<&Finding>) =
        findings.iter().partition(|f| f.severity == Severity::Error);
    let mut before = Vec::new();
    if let Some(old) = old {
        let old_findings = findings_of(old, &options);
        let had: BTreeSet<(&str, Option<&str>)> = old_findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| (f.code, f.item.as_deref()))
            .collect();
        // Problems the object already had stay allowed, as warnings: the update did not
        // cause them, and refusing it would keep the object as it is anyway.
        let (old_problems, new_problems): (Vec<&Finding>, Vec<&Finding>) = errors
            .into_iter()
            .partition(|f| had.contains(&(f.code, f.item.as_deref())));
        errors = new_problems;
        before = old_problems;
        if only_removes_items(old, object) {
            before.append(&mut errors);
        }
    }
    let mut texts: Vec<String> = before
        .iter()
        .map(|f| format!("{} (there before this update)", shown(f)))
        .collect();
    texts.extend(warnings.drain(..).map(shown));
    texts.truncate(MAX_WARNINGS);
    if !texts.is_empty() {
        response.warnings = Some(texts);
    }
    if errors.is_empty() {
        let verdict = if response.warnings.is_some() {
            Verdict::Warned
        } else {
            Verdict::Allowed
        };
        return (response, verdict);
    }
    let mut reasons: Vec<String> = errors.iter().take(MAX_REASONS).map(|f| shown(f)).collect();
    if errors.len() > MAX_REASONS {
        reasons.push(format!(
            "and {} more (kmseal validate lists them all)",
            errors.len() - MAX_REASONS
        ));
    }
    (response.deny(reasons.join("; ")), Verdict::Denied)
}

fn findings_of(object: &DynamicObject, options: &Options<'_>) -> Vec<Finding> {
    match serde_json::to_value(object) {
        Ok(value) => check_encrypted_secret("<admission>", value, options),
        Err(_) => Vec::new(),
    }
}

/// A finding as `kmseal validate` prints it, without the file: "[code] item: message".
fn shown(f: &Finding) -> String {
    match &f.item {
        Some(item) => format!("[{}] {item}: {}", f.code, f.message),
        None => format!("[{}] {}", f.code, f.message),
    }
}

/// Whether `new` differs from `old` only by items it no longer has (and in what the checks do
/// not read: finalizers, labels, managed fields): its spec is the old one with some items
/// dropped, and its annotations (which may set the scope) are the same.
fn only_removes_items(old: &DynamicObject, new: &DynamicObject) -> bool {
    let spec = |o: &DynamicObject| o.data.get("spec").cloned().unwrap_or(Value::Null);
    let (Value::Object(mut old_spec), Value::Object(mut new_spec)) = (spec(old), spec(new)) else {
        return false;
    };
    let items = |spec: &mut serde_json::Map<String, Value>| match spec.remove("encryptedData") {
        Some(Value::Object(items)) => Some(items),
        None | Some(Value::Null) => Some(serde_json::Map::new()),
        Some(_) => None,
    };
    let (Some(old_items), Some(new_items)) = (items(&mut old_spec), items(&mut new_spec)) else {
        return false;
    };
    old_spec == new_spec
        && old.metadata.annotations == new.metadata.annotations
        && new_items.len() < old_items.len()
        && new_items
            .iter()
            .all(|(item, value)| old_items.get(item) == Some(value))
}
