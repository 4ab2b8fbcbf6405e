//! The IAM policy documents kmseal's roles need, from a key policy: least privilege, each KMS
//! permission limited to the namespaces that may use the key through the encryption context
//! every kmseal value carries (`kmseal.dev/namespace`). `kmseal iam-policy` prints them. Pure.
//!
//! - The controller's role: for each key, what the controller does with it (open values,
//!   re-wrap them, seal envelope v1 values again, look the key up) for the namespaces that may
//!   use it, except the namespaces whose objects all go out under their own ServiceAccount's
//!   role (per-tenant identity): for those, nothing but the lookups of the policy's aliases.
//! - A tenant's role (one namespace): the same for the keys that namespace may use, for that
//!   namespace only; and its trust policy, for one ServiceAccount of the cluster's OIDC
//!   provider.

use serde_json::{Value, json};

use crate::identity::{IdentitySettings, Requirement};
use crate::policy::{KeyRef, Rule};

/// What opens and moves values: limited by the namespace condition.
const USE: &[&str] = &["kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"];
/// The controller's envelope v1 upgrade also seals (a new data key per object).
const CONTROLLER_USE: &[&str] = &[
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
];
/// The `KeyCurrent` condition and alias resolution: no encryption context to condition on.
const LOOK_UP: &[&str] = &["kms:DescribeKey", "kms:ListKeyRotations"];

const CONTEXT: &str = "kms:EncryptionContext:kmseal.dev/namespace";

/// How a statement names a key: its resource, and the condition an alias adds.
fn resource_of(key: &KeyRef) -> (String, Option<(&'static str, Value)>) {
    match key {
        KeyRef::Key(arn) => (arn.clone(), None),
        KeyRef::Alias(arn) => match crate::arn::KmsArn::parse(arn) {
            // An alias authorizes nothing itself: the key it points to does, with the alias
            // among the key's aliases.
            Some(parsed) => (
                format!(
                    "arn:{}:kms:{}:{}:key/*",
                    parsed.partition, parsed.region, parsed.account
                ),
                Some((
                    "ForAnyValue:StringEquals",
                    json!({"kms:ResourceAliases": parsed.resource}),
                )),
            ),
            None => (arn.clone(), None),
        },
        KeyRef::MultiRegion(id) => (format!("arn:aws:kms:*:*:key/{id}"), None),
    }
}

/// One statement: `actions` on `key`, with the alias condition and `context`, if any.
fn statement(key: &KeyRef, actions: &[&str], context: Option<(&str, Value)>) -> Value {
    let (resource, alias) = resource_of(key);
    let mut condition = serde_json::Map::new();
    for (operator, values) in alias.into_iter().chain(context) {
        condition.insert(operator.to_owned(), values);
    }
    let mut statement = json!({
        "Effect": "Allow",
        "Action": actions,
        "Resource": resource,
    });
    if !condition.is_empty() {
        statement["Condition"] = Value::Object(condition);
    }
    statement
}

fn document(statements: Vec<Value>) -> Value {
    json!({"Version": "2012-10-17", "Statement": statements})
}

fn patterns(rule: &Rule) -> Vec<String> {
    rule.namespaces
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect()
}

/// Whether every object of the namespaces `pattern` names goes out under a ServiceAccount's
/// role: the default ServiceAccount flag, a `required` identity rule for exactly that pattern,
/// or `--require-service-account` where no rule for it says optional.
fn locked(pattern: &str, identity: &IdentitySettings) -> bool {
    if !identity.enabled {
        return false;
    }
    if identity.default_service_account.is_some() {
        return true;
    }
    let rule = identity
        .rules
        .iter()
        .find(|r| r.namespaces.iter().any(|p| p.as_str() == pattern));
    match rule {
        Some(rule) => rule.service_account.is_some() || rule.requirement == Requirement::Required,
        None => identity.required_by_default,
    }
}

/// The controller role's permissions policy.
pub fn controller_policy(rules: &[Rule], identity: &IdentitySettings) -> Value {
    let mut statements = vec![];
    for rule in rules {
        let served: Vec<String> = patterns(rule)
            .into_iter()
            .filter(|p| !locked(p, identity))
            .collect();
        if !served.is_empty() {
            statements.push(statement(
                &rule.key,
                CONTROLLER_USE,
                Some(("StringLike", json!({ CONTEXT: served }))),
            ));
            statements.push(statement(&rule.key, LOOK_UP, None));
        } else if matches!(rule.key, KeyRef::Alias(_)) {
            // The policy's aliases are resolved with the controller's role, whoever uses them.
            statements.push(statement(&rule.key, &["kms:DescribeKey"], None));
        }
    }
    document(statements)
}

/// The permissions policy of a tenant's role for `namespace`: the keys it may use, for it only.
pub fn tenant_policy(rules: &[Rule], namespace: &str) -> Value {
    let statements = rules
        .iter()
        .filter(|r| r.namespaces.iter().any(|p| p.matches(namespace)))
        .flat_map(|rule| {
            [
                statement(
                    &rule.key,
                    USE,
                    Some(("StringEquals", json!({ CONTEXT: namespace }))),
                ),
                statement(&rule.key, LOOK_UP, None),
            ]
        })
        .collect();
    document(statements)
}

/// The trust policy of a tenant's role: `sts:AssumeRoleWithWebIdentity` for ServiceAccount
/// `namespace/service_account` through the OIDC provider `provider_arn`
/// (`arn:aws:iam::ACCOUNT:oidc-provider/ISSUER`), for `audience`. `None` for an ARN that is
/// not an OIDC provider's.
pub fn trust_policy(
    provider_arn: &str,
    namespace: &str,
    service_account: &str,
    audience: &str,
) -> Option<Value> {
    let arn = crate::arn::Arn::parse(provider_arn)?;
    let issuer = arn
        .resource
        .strip_prefix("oidc-provider/")
        .filter(|issuer| arn.service == "iam" && arn.region.is_empty() && !issuer.is_empty())?;
    Some(document(vec![json!({
        "Effect": "Allow",
        "Principal": {"Federated": provider_arn},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {
            format!("{issuer}:sub"): format!("system:serviceaccount:{namespace}:{service_account}"),
            format!("{issuer}:aud"): audience,
        }}
    })]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityRule;
    use crate::policy::{KeyPolicy, NamespacePattern};

    const A: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const ALIAS: &str = "arn:aws:kms:eu-west-1:111122223333:alias/payments";

    fn rules() -> Vec<Rule> {
        KeyPolicy::parse_rules(&format!(
            "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n- key: {A}\n  namespaces: [team-a, \"shared-*\"]\n- key: {ALIAS}\n  namespaces: [payments]\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_controller_may_use_each_key_for_its_namespaces_only() {
        let policy = controller_policy(&rules(), &IdentitySettings::default());
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 4);
        assert_eq!(statements[0]["Resource"], A);
        assert_eq!(
            statements[0]["Condition"]["StringLike"][CONTEXT],
            json!(["team-a", "shared-*"])
        );
        assert!(
            statements[0]["Action"]
                .as_array()
                .unwrap()
                .contains(&json!("kms:Decrypt"))
        );
        assert!(
            statements[1]["Condition"].is_null(),
            "lookups take no context"
        );
        // An alias: the account's keys that have the alias.
        assert_eq!(
            statements[2]["Resource"],
            "arn:aws:kms:eu-west-1:111122223333:key/*"
        );
        assert_eq!(
            statements[2]["Condition"]["ForAnyValue:StringEquals"]["kms:ResourceAliases"],
            "alias/payments"
        );
        assert_eq!(
            statements[2]["Condition"]["StringLike"][CONTEXT],
            json!(["payments"])
        );
    }

    #[test]
    fn locked_namespaces_take_nothing_from_the_controller() {
        let required = IdentitySettings {
            enabled: true,
            required_by_default: false,
            default_service_account: None,
            rules: vec![IdentityRule {
                namespaces: vec![NamespacePattern::parse("team-a").unwrap()],
                service_account: None,
                requirement: Requirement::Required,
            }],
        };
        let policy = controller_policy(&rules(), &required);
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(
            statements[0]["Condition"]["StringLike"][CONTEXT],
            json!(["shared-*"]),
            "team-a is locked to its own role"
        );
        // Every namespace locked: only the alias lookup is left.
        let everywhere = IdentitySettings {
            default_service_account: Some("kmseal".into()),
            ..required
        };
        let policy = controller_policy(&rules(), &everywhere);
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 1, "{policy}");
        assert_eq!(statements[0]["Action"], json!(["kms:DescribeKey"]));
    }

    #[test]
    fn a_tenant_role_gets_its_namespaces_keys_for_it_only() {
        let policy = tenant_policy(&rules(), "shared-x");
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0]["Resource"], A);
        assert_eq!(
            statements[0]["Condition"]["StringEquals"][CONTEXT],
            "shared-x"
        );
        assert!(
            !statements[0]["Action"]
                .as_array()
                .unwrap()
                .contains(&json!("kms:GenerateDataKey"))
        );
        assert!(
            tenant_policy(&rules(), "other")["Statement"]
                .as_array()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_trust_policy_names_the_service_account_and_audience() {
        let provider =
            "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABC";
        let trust = trust_policy(provider, "team-a", "kmseal", "sts.amazonaws.com").unwrap();
        let condition = &trust["Statement"][0]["Condition"]["StringEquals"];
        assert_eq!(
            condition["oidc.eks.eu-west-1.amazonaws.com/id/ABC:sub"],
            "system:serviceaccount:team-a:kmseal"
        );
        assert_eq!(
            condition["oidc.eks.eu-west-1.amazonaws.com/id/ABC:aud"],
            "sts.amazonaws.com"
        );
        assert!(trust_policy("arn:aws:iam::1:role/x", "a", "b", "c").is_none());
    }
}
