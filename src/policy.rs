//! What a tenant's EncryptedSecret may ask of the controller, decided before any KMS call:
//! which KMS keys each namespace may use, whether plain cluster-scope items are allowed, and
//! which Secret types may be produced.
//!
//! Pure: the controller gathers the inputs (the policy file, its flags, the keys its policy's
//! aliases point to) and carries out the decision. A tenant controls everything in their
//! EncryptedSecret, so nothing here trusts the object: the key of an envelope is the one its
//! header names (and KMS checks), the key of a plain item is matched against the policy as
//! text, never looked up.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::Deserialize;

use crate::arn::{self, KmsArn};
use crate::binding::Scope;
use crate::category::Category;

/// The largest policy file the controller reads.
pub const MAX_POLICY_LEN: usize = 1024 * 1024;
/// At most this many key rules, and this many namespace patterns per rule.
pub const MAX_RULES: usize = 1000;
pub const MAX_PATTERNS: usize = 1000;

/// Secret types a tenant may ask for unless the operator says otherwise.
pub const DEFAULT_SECRET_TYPES: &[&str] = &[
    "Opaque",
    "kubernetes.io/basic-auth",
    "kubernetes.io/ssh-auth",
    "kubernetes.io/tls",
    "kubernetes.io/dockerconfigjson",
    "kubernetes.io/dockercfg",
];

/// Never produced, whatever the operator allows: the API server would fill such a Secret with
/// a token of any ServiceAccount the template names, minted with the controller's rights.
pub const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";

/// A key as the operator names it in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// `arn:…:key/ID`: that key (and, for a multi-region key, its replicas).
    Key(String),
    /// `arn:…:alias/NAME`: the key the alias points to, resolved by the controller.
    Alias(String),
    /// `mrk-…`: a multi-region key in any region (its replicas share the id).
    MultiRegion(String),
}

impl KeyRef {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let text = text.trim();
        if let Some(arn) = KmsArn::parse(text) {
            let printable = text.bytes().all(|b| b.is_ascii_graphic());
            if printable && text.len() <= 2048 {
                if arn.resource.starts_with("key/") && arn.resource.len() > 4 {
                    return Ok(KeyRef::Key(text.to_owned()));
                }
                if arn.resource.starts_with("alias/") && arn.resource.len() > 6 {
                    return Ok(KeyRef::Alias(text.to_owned()));
                }
            }
        }
        let is_mrk = text.strip_prefix("mrk-").is_some_and(|hex| {
            !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if is_mrk {
            return Ok(KeyRef::MultiRegion(text.to_owned()));
        }
        Err(PolicyError::Invalid(format!(
            "{:?} is not a key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), an alias ARN (arn:aws:kms:REGION:ACCOUNT:alias/NAME) or a multi-region key id (mrk-…); bare key ids and alias names are refused because they mean different keys in different accounts and regions",
            crate::text::bounded(text, 120)
        )))
    }

    pub fn as_str(&self) -> &str {
        match self {
            KeyRef::Key(s) | KeyRef::Alias(s) | KeyRef::MultiRegion(s) => s,
        }
    }
}

pub use crate::pattern::NamespacePattern;

/// One rule: these namespaces may use this key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub key: KeyRef,
    pub namespaces: Vec<NamespacePattern>,
}

impl Rule {
    fn applies_to(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|p| p.matches(namespace))
    }
}

/// The keys an alias pointed to when the controller last asked KMS (alias ARN → key ARN).
pub type ResolvedAliases = HashMap<String, String>;

/// Which keys each namespace may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// `None`: any key (single-tenant clusters, and the CLI, whose user's own IAM decides).
    rules: Option<Vec<Rule>>,
    /// Whether plain KMS ciphertext items may use cluster scope.
    pub allow_cluster_scope_plain_items: bool,
    /// Whether a plain item must name its key in `spec.keyId` (always, in the controller).
    pub require_plain_key_id: bool,
    /// Whose AWS credentials each namespace's objects use (see [`crate::identity`]).
    pub identity: crate::identity::IdentitySettings,
}

/// Why the policy refuses, told to the tenant. Never carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Invalid(String),
    /// The policy file could not be read or is not a key policy.
    #[error("--key-policy {path}: {message}")]
    File { path: String, message: String },
    #[error(
        "KMS key {key} may not be used in namespace {namespace}{pending}; seal the value under a key your namespace may use, or ask your platform team to allow this one (kmseal key policy)"
    )]
    KeyNotAllowed {
        key: String,
        namespace: String,
        pending: Pending,
    },
    #[error(
        "plain KMS ciphertext items must name their key in spec.keyId; set it to the key the value was encrypted with (see docs/cli.md: values from aws kms encrypt)"
    )]
    PlainKeyIdMissing,
    #[error(
        "spec.keyId {key} does not name a KMS key namespace {namespace} may use{pending}; name the key the way the key policy does (its key ARN or key id, or the policy's alias ARN or alias name), or ask your platform team to allow it"
    )]
    PlainKeyNotAllowed {
        key: String,
        namespace: String,
        pending: Pending,
    },
    #[error(
        "cluster scope is not allowed for plain KMS ciphertext items in this cluster; encrypt the value with kmseal.dev/namespace and kmseal.dev/item in its encryption context and drop the kmseal.dev/scope annotation, or seal it with `kmseal seal`"
    )]
    PlainClusterScope,
    #[error(
        "Secret type {0:?} may not be produced by kmseal in this cluster{reason}; use Opaque or another allowed type", reason = type_reason(.0))]
    SecretTypeNotAllowed(String),
    /// The API server refuses a Secret of this type without these items.
    #[error(
        "a Secret of type {type_} needs {needs}, and the API server refuses it without; add {missing}, or use type Opaque"
    )]
    ItemsMissingForType {
        type_: &'static str,
        needs: &'static str,
        missing: String,
    },
}

/// One `identities` entry, checked.
fn identity_rule(rule: &IdentityRuleFile) -> Result<crate::identity::IdentityRule, String> {
    use crate::identity::Requirement;
    if rule.namespaces.is_empty() || rule.namespaces.len() > MAX_PATTERNS {
        return Err(format!(
            "list 1 to {MAX_PATTERNS} namespaces (or \"*\" for all)"
        ));
    }
    let namespaces = rule
        .namespaces
        .iter()
        .map(|n| NamespacePattern::parse(n))
        .collect::<Result<_, _>>()?;
    let service_account = match &rule.service_account {
        Some(sa) if crate::identity::valid_service_account_name(sa) => Some(sa.clone()),
        Some(sa) => {
            return Err(format!(
                "serviceAccount {:?} is not a ServiceAccount name",
                crate::text::bounded(sa, 120)
            ));
        }
        None => None,
    };
    let requirement = match rule.identity.as_deref() {
        None | Some("optional") => Requirement::Optional,
        Some("required") => Requirement::Required,
        Some(other) => {
            return Err(format!(
                "identity {:?} is neither required nor optional",
                crate::text::bounded(other, 40)
            ));
        }
    };
    Ok(crate::identity::IdentityRule {
        namespaces,
        service_account,
        requirement,
    })
}

fn type_reason(type_: &str) -> &'static str {
    if type_ == SERVICE_ACCOUNT_TOKEN {
        " (the API server would fill it with a ServiceAccount token minted with the controller's rights)"
    } else {
        " (not among the controller's --allowed-secret-types)"
    }
}

/// Aliases of the policy that apply but could not be resolved yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending(pub usize);

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(
                f,
                " ({n} alias(es) of the policy could not be resolved yet; it is retried)"
            ),
        }
    }
}

impl PolicyError {
    /// A fixed category for metrics, conditions and events.
    pub fn category(&self) -> Category {
        match self {
            PolicyError::Invalid(_) | PolicyError::File { .. } => Category::InvalidPolicy,
            PolicyError::KeyNotAllowed { .. }
            | PolicyError::PlainKeyNotAllowed { .. }
            | PolicyError::PlainKeyIdMissing
            | PolicyError::PlainClusterScope => Category::KeyNotAllowed,
            PolicyError::SecretTypeNotAllowed(_) => Category::TypeNotAllowed,
            PolicyError::ItemsMissingForType { .. } => Category::InvalidInput,
        }
    }
}

/// The policy file, as written by the operator (or rendered by the Helm chart).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    api_version: String,
    kind: String,
    #[serde(default)]
    keys: Vec<RuleFile>,
    #[serde(default)]
    identities: Vec<IdentityRuleFile>,
}

/// `identities`: for these namespaces, a default ServiceAccount and whether one is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IdentityRuleFile {
    namespaces: Vec<String>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    identity: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    key: String,
    namespaces: Vec<String>,
}

pub const POLICY_API_VERSION: &str = "kmseal.dev/v1alpha1";
pub const POLICY_KIND: &str = "KeyPolicy";

impl KeyPolicy {
    /// Any key for any namespace, plain cluster scope allowed, `spec.keyId` optional: what the
    /// CLI uses (its user's IAM decides), and `--allow-any-key`'s starting point.
    pub fn unrestricted() -> Self {
        KeyPolicy {
            rules: None,
            allow_cluster_scope_plain_items: true,
            require_plain_key_id: false,
            identity: Default::default(),
        }
    }

    /// Any key for any namespace (`--allow-any-key`, single-tenant clusters), but plain items
    /// still name their key and stay bound to their namespace.
    pub fn any_key() -> Self {
        KeyPolicy {
            rules: None,
            allow_cluster_scope_plain_items: false,
            require_plain_key_id: true,
            identity: Default::default(),
        }
    }

    /// Only what the rules allow.
    pub fn from_rules(rules: Vec<Rule>) -> Self {
        KeyPolicy {
            rules: Some(rules),
            allow_cluster_scope_plain_items: false,
            require_plain_key_id: true,
            identity: Default::default(),
        }
    }

    /// The rules, or `None` for any key.
    pub fn rules(&self) -> Option<&[Rule]> {
        self.rules.as_deref()
    }

    /// Rules from `--allowed-keys`: each key for every namespace.
    pub fn rules_for_all_namespaces(keys: &[String]) -> Result<Vec<Rule>, PolicyError> {
        keys.iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| {
                Ok(Rule {
                    key: KeyRef::parse(k)?,
                    namespaces: vec![NamespacePattern::any()],
                })
            })
            .collect()
    }

    /// Parses a policy file's key rules. Errors give a position, never the text around it.
    pub fn parse_rules(text: &str) -> Result<Vec<Rule>, PolicyError> {
        Ok(KeyPolicy::parse_file(text)?.0)
    }

    /// Parses a policy file: its key rules and its identity rules.
    pub fn parse_file(
        text: &str,
    ) -> Result<(Vec<Rule>, Vec<crate::identity::IdentityRule>), PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(PolicyError::Invalid(format!(
                "the key policy is {} bytes, over the limit of {MAX_POLICY_LEN}",
                text.len()
            )));
        }
        let file: PolicyFile = serde_saphyr::from_str(text).map_err(|e| {
            let problem = crate::yaml::problem(&e);
            PolicyError::Invalid(format!(
                "the key policy is not valid{problem}; it must say apiVersion: {POLICY_API_VERSION}, kind: {POLICY_KIND}, and keys: a list of {{key, namespaces}} (see docs/multi-tenancy.md)"
            ))
        })?;
        if file.api_version != POLICY_API_VERSION || file.kind != POLICY_KIND {
            return Err(PolicyError::Invalid(format!(
                "the key policy must say apiVersion: {POLICY_API_VERSION} and kind: {POLICY_KIND}"
            )));
        }
        if file.keys.len() > MAX_RULES {
            return Err(PolicyError::Invalid(format!(
                "the key policy has {} rules; at most {MAX_RULES}",
                file.keys.len()
            )));
        }
        if file.identities.len() > crate::identity::MAX_IDENTITY_RULES {
            return Err(PolicyError::Invalid(format!(
                "the key policy has {} identity rules; at most {}",
                file.identities.len(),
                crate::identity::MAX_IDENTITY_RULES
            )));
        }
        let identities = file
            .identities
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                identity_rule(rule).map_err(|m| {
                    PolicyError::Invalid(format!("key policy identity rule {}: {m}", i + 1))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = file
            .keys
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let at = |e: PolicyError| match e {
                    PolicyError::Invalid(m) => {
                        PolicyError::Invalid(format!("key policy rule {}: {m}", i + 1))
                    }
                    other => other,
                };
                if rule.namespaces.is_empty() || rule.namespaces.len() > MAX_PATTERNS {
                    return Err(at(PolicyError::Invalid(format!(
                        "list 1 to {MAX_PATTERNS} namespaces (or \"*\" for all)"
                    ))));
                }
                Ok(Rule {
                    key: KeyRef::parse(&rule.key).map_err(at)?,
                    namespaces: rule
                        .namespaces
                        .iter()
                        .map(|n| NamespacePattern::parse(n).map_err(PolicyError::Invalid))
                        .collect::<Result<_, _>>()
                        .map_err(at)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((keys, identities))
    }

    /// The rules of the policy file at `path` (at most [`MAX_POLICY_LEN`] bytes).
    pub fn read_rules(path: &std::path::Path) -> Result<Vec<Rule>, PolicyError> {
        Ok(KeyPolicy::read_file(path)?.0)
    }

    /// The rules `--allowed-keys` and `--key-policy` give together, and the file's identity
    /// rules: what the controller, `kmseal validate` and `kmseal iam-policy` read the same way.
    pub fn rules_from_flags(
        allowed_keys: &[String],
        file: Option<&std::path::Path>,
    ) -> Result<(Vec<Rule>, Vec<crate::identity::IdentityRule>), PolicyError> {
        let mut rules = KeyPolicy::rules_for_all_namespaces(allowed_keys)?;
        let mut identities = vec![];
        if let Some(path) = file {
            let (keys, identity_rules) = KeyPolicy::read_file(path)?;
            rules.extend(keys);
            identities = identity_rules;
        }
        Ok((rules, identities))
    }

    /// The key rules and identity rules of the policy file at `path`.
    pub fn read_file(
        path: &std::path::Path,
    ) -> Result<(Vec<Rule>, Vec<crate::identity::IdentityRule>), PolicyError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_POLICY_LEN as u64 + 1).read_to_string(&mut text))
            .map_err(|e| PolicyError::File {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        KeyPolicy::parse_file(&text).map_err(|e| PolicyError::File {
            path: shown,
            message: e.to_string(),
        })
    }

    /// The policy's aliases, which the controller resolves with `DescribeKey`.
    pub fn aliases(&self) -> Vec<&str> {
        let mut aliases: Vec<&str> = self
            .rules
            .iter()
            .flatten()
            .filter_map(|r| match &r.key {
                KeyRef::Alias(a) => Some(a.as_str()),
                _ => None,
            })
            .collect();
        aliases.sort_unstable();
        aliases.dedup();
        aliases
    }

    /// Whether the policy itself names `key_id`: a key ARN of a rule, one of its aliases (or
    /// the key it points to now), or a multi-region key id as a rule writes it. Such keys are
    /// the operator's to have followed, not a tenant's; any other key an object may use (a
    /// multi-region key's ARN in some account and region, any key under `--allow-any-key`) is
    /// the tenant's say.
    pub fn names(&self, key_id: &str, aliases: &ResolvedAliases) -> bool {
        self.rules.iter().flatten().any(|rule| match &rule.key {
            KeyRef::Key(arn) => arn::same_key(arn, key_id),
            KeyRef::MultiRegion(id) => id == key_id,
            KeyRef::Alias(alias) => {
                alias == key_id
                    || aliases
                        .get(alias)
                        .is_some_and(|target| arn::same_key(target, key_id))
            }
        })
    }

    /// Whether `namespace` may use the key `key_arn` (a full key ARN, as an envelope header or
    /// KMS names it).
    pub fn check_key(
        &self,
        namespace: &str,
        key_arn: &str,
        aliases: &ResolvedAliases,
    ) -> Result<(), PolicyError> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        let mut pending = 0;
        for rule in rules.iter().filter(|r| r.applies_to(namespace)) {
            let allowed = match &rule.key {
                KeyRef::Key(allowed) => arn::same_key(allowed, key_arn),
                KeyRef::MultiRegion(id) => KmsArn::parse(key_arn)
                    .is_some_and(|a| a.resource.strip_prefix("key/") == Some(id.as_str())),
                KeyRef::Alias(alias) => match aliases.get(alias) {
                    Some(target) => arn::same_key(target, key_arn),
                    None => {
                        pending += 1;
                        false
                    }
                },
            };
            if allowed {
                return Ok(());
            }
        }
        Err(PolicyError::KeyNotAllowed {
            key: crate::text::bounded(key_arn, 120),
            namespace: namespace.to_owned(),
            pending: Pending(pending),
        })
    }

    /// The `KeyId` to decrypt a plain item of `namespace` with, from its `spec.keyId`,
    /// matched as text against the policy: no KMS call, whatever the tenant wrote. `None`
    /// lets KMS take the key from the ciphertext (only without `require_plain_key_id`).
    pub fn plain_key_id(
        &self,
        namespace: &str,
        spec_key_id: Option<&str>,
        aliases: &ResolvedAliases,
    ) -> Result<Option<String>, PolicyError> {
        let spec_key_id = spec_key_id.map(str::trim).filter(|k| !k.is_empty());
        let Some(wanted) = spec_key_id else {
            return if self.require_plain_key_id {
                Err(PolicyError::PlainKeyIdMissing)
            } else {
                Ok(None)
            };
        };
        let Some(rules) = &self.rules else {
            return Ok(Some(wanted.to_owned()));
        };
        let not_allowed = |pending| PolicyError::PlainKeyNotAllowed {
            key: crate::text::bounded(wanted, 120),
            namespace: namespace.to_owned(),
            pending: Pending(pending),
        };
        let wanted_arn = KmsArn::parse(wanted);
        let mut pending = 0;
        for rule in rules.iter().filter(|r| r.applies_to(namespace)) {
            let found = match &rule.key {
                KeyRef::Key(allowed) => {
                    let allowed_arn = KmsArn::parse(allowed);
                    match (&wanted_arn, allowed_arn) {
                        (Some(_), _) if arn::same_key(allowed, wanted) => Some(wanted.to_owned()),
                        // A bare key id names this rule's key.
                        (None, Some(a)) if a.resource.strip_prefix("key/") == Some(wanted) => {
                            Some(allowed.clone())
                        }
                        _ => None,
                    }
                }
                KeyRef::MultiRegion(id) => {
                    let named = match &wanted_arn {
                        Some(w) => w.resource.strip_prefix("key/") == Some(id.as_str()),
                        None => wanted == id,
                    };
                    named.then(|| wanted.to_owned())
                }
                KeyRef::Alias(alias) => {
                    let alias_arn = KmsArn::parse(alias);
                    let by_name = match (&wanted_arn, &alias_arn) {
                        (Some(_), _) => wanted == alias,
                        (None, Some(a)) => a.resource == wanted,
                        _ => false,
                    };
                    if by_name {
                        Some(alias.clone())
                    } else if wanted_arn.is_some() {
                        // The key the alias points to, named by its ARN.
                        match aliases.get(alias) {
                            Some(target) if arn::same_key(target, wanted) => {
                                Some(wanted.to_owned())
                            }
                            Some(_) => None,
                            None => {
                                pending += 1;
                                None
                            }
                        }
                    } else {
                        None
                    }
                }
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Err(not_allowed(pending))
    }

    /// Whether plain items may use `scope`.
    pub fn check_plain_scope(&self, scope: Scope) -> Result<(), PolicyError> {
        if scope == Scope::Cluster && !self.allow_cluster_scope_plain_items {
            Err(PolicyError::PlainClusterScope)
        } else {
            Ok(())
        }
    }
}

/// The items the Kubernetes API server requires of a Secret of `type_` (its own validation of
/// Secrets), given whether the Secret has an item: checked before any KMS call, by `seal`,
/// `validate` and the controller, so what the API server would refuse is refused first, with
/// the fix. Other types require nothing.
pub fn check_required_items(type_: &str, has: impl Fn(&str) -> bool) -> Result<(), PolicyError> {
    // (type, what it needs in words, the items, whether one of them is enough)
    const RULES: &[(&str, &str, &[&str], bool)] = &[
        (
            "kubernetes.io/basic-auth",
            "an item username or password",
            &["username", "password"],
            true,
        ),
        (
            "kubernetes.io/ssh-auth",
            "an item ssh-privatekey",
            &["ssh-privatekey"],
            false,
        ),
        (
            "kubernetes.io/tls",
            "items tls.crt and tls.key",
            &["tls.crt", "tls.key"],
            false,
        ),
        (
            "kubernetes.io/dockerconfigjson",
            "an item .dockerconfigjson",
            &[".dockerconfigjson"],
            false,
        ),
        (
            "kubernetes.io/dockercfg",
            "an item .dockercfg",
            &[".dockercfg"],
            false,
        ),
    ];
    let Some((type_, needs, items, one_is_enough)) =
        RULES.iter().find(|(t, ..)| *t == type_).copied()
    else {
        return Ok(());
    };
    let missing: Vec<&str> = items.iter().copied().filter(|i| !has(i)).collect();
    let fine = if one_is_enough {
        missing.len() < items.len()
    } else {
        missing.is_empty()
    };
    if fine {
        return Ok(());
    }
    Err(PolicyError::ItemsMissingForType {
        type_,
        needs,
        missing: missing.join(if one_is_enough { " or " } else { " and " }),
    })
}

/// Which Secret types the controller may produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretTypes(BTreeSet<String>);

impl Default for SecretTypes {
    fn default() -> Self {
        SecretTypes(
            DEFAULT_SECRET_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
        )
    }
}

impl SecretTypes {
    /// The operator's list; the service-account-token type is refused outright.
    pub fn new(types: &[String]) -> Result<Self, PolicyError> {
        let mut set = BTreeSet::new();
        for t in types.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            if t == SERVICE_ACCOUNT_TOKEN {
                return Err(PolicyError::Invalid(format!(
                    "{SERVICE_ACCOUNT_TOKEN} cannot be allowed: a tenant could have the controller mint a token for any ServiceAccount in their namespace"
                )));
            }
            set.insert(t.to_owned());
        }
        Ok(SecretTypes(set))
    }

    pub fn check(&self, type_: &str) -> Result<(), PolicyError> {
        if type_ != SERVICE_ACCOUNT_TOKEN && self.0.contains(type_) {
            Ok(())
        } else {
            Err(PolicyError::SecretTypeNotAllowed(crate::text::bounded(
                type_, 120,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "arn:aws:kms:eu-west-1:111122223333:key/aaaaaaaa-0000-4000-8000-000000000001";
    const KEY_B: &str =
        "arn:aws:kms:eu-west-1:111122223333:key/bbbbbbbb-0000-4000-8000-000000000002";
    const ALIAS: &str = "arn:aws:kms:eu-west-1:111122223333:alias/payments";
    const MRK: &str = "arn:aws:kms:us-east-1:111122223333:key/mrk-0123456789abcdef0123456789abcdef";

    fn policy(text: &str) -> KeyPolicy {
        KeyPolicy::from_rules(KeyPolicy::parse_rules(text).unwrap())
    }

    fn example() -> KeyPolicy {
        policy(&format!(
            "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n  - key: {KEY_A}\n    namespaces: [team-a, \"team-a-*\"]\n  - key: {ALIAS}\n    namespaces: [payments]\n  - key: mrk-0123456789abcdef0123456789abcdef\n    namespaces: [\"*\"]\n"
        ))
    }

    #[test]
    fn keys_are_allowed_only_for_their_namespaces() {
        let p = example();
        let none = ResolvedAliases::new();
        assert!(p.check_key("team-a", KEY_A, &none).is_ok());
        assert!(p.check_key("team-a-dev", KEY_A, &none).is_ok());
        assert!(p.check_key("team-b", KEY_A, &none).is_err());
        assert!(p.check_key("team-a", KEY_B, &none).is_err());
        // A multi-region key, by id, in any region and namespace.
        assert!(p.check_key("anything", MRK, &none).is_ok());
        assert!(
            p.check_key("x", &MRK.replace("us-east-1", "eu-west-1"), &none)
                .is_ok()
        );
        let err = p.check_key("team-b", KEY_A, &none).unwrap_err();
        assert_eq!(err.category().as_str(), "key_not_allowed");
        let text = err.to_string();
        assert!(text.contains(KEY_A) && text.contains("team-b"), "{text}");
    }

    #[test]
    fn aliases_allow_the_key_they_point_to_once_resolved() {
        let p = example();
        assert_eq!(p.aliases(), [ALIAS]);
        let err = p
            .check_key("payments", KEY_B, &ResolvedAliases::new())
            .unwrap_err();
        assert!(
            err.to_string().contains("could not be resolved yet"),
            "{err}"
        );
        let resolved = ResolvedAliases::from([(ALIAS.to_owned(), KEY_B.to_owned())]);
        assert!(p.check_key("payments", KEY_B, &resolved).is_ok());
        assert!(p.check_key("team-a", KEY_B, &resolved).is_err());
        assert!(p.check_key("payments", KEY_A, &resolved).is_err());
    }

    #[test]
    fn plain_items_name_an_allowed_key_as_text() {
        let p = example();
        let resolved = ResolvedAliases::from([(ALIAS.to_owned(), KEY_B.to_owned())]);
        let key_id = |ns: &str, k: Option<&str>| p.plain_key_id(ns, k, &resolved);
        assert_eq!(
            key_id("team-a", Some(KEY_A)).unwrap().as_deref(),
            Some(KEY_A)
        );
        // A bare id of an allowed key becomes its ARN, so the call goes to the right account.
        let bare = KEY_A.rsplit('/').next().unwrap();
        assert_eq!(
            key_id("team-a", Some(bare)).unwrap().as_deref(),
            Some(KEY_A)
        );
        // An alias name or ARN of the policy, and the key it points to.
        assert_eq!(
            key_id("payments", Some("alias/payments"))
                .unwrap()
                .as_deref(),
            Some(ALIAS)
        );
        assert_eq!(
            key_id("payments", Some(ALIAS)).unwrap().as_deref(),
            Some(ALIAS)
        );
        assert_eq!(
            key_id("payments", Some(KEY_B)).unwrap().as_deref(),
            Some(KEY_B)
        );
        // Everything else is refused without a lookup.
        for (ns, k) in [
            ("team-b", Some(KEY_A)),
            ("team-a", Some("alias/payments")),
            ("team-a", Some("alias/other")),
            (
                "payments",
                Some("arn:aws:kms:eu-west-1:999999999999:alias/payments"),
            ),
        ] {
            assert_eq!(
                key_id(ns, k).unwrap_err().category(),
                Category::KeyNotAllowed,
                "{ns} {k:?}"
            );
        }
        assert_eq!(key_id("team-a", None), Err(PolicyError::PlainKeyIdMissing));
        let named_otherwise = key_id("team-a", Some("alias/team-a"))
            .unwrap_err()
            .to_string();
        assert!(
            named_otherwise.contains("the way the key policy does"),
            "{named_otherwise}"
        );
        assert_eq!(
            KeyPolicy::unrestricted().plain_key_id("x", None, &resolved),
            Ok(None)
        );
    }

    #[test]
    fn plain_cluster_scope_needs_the_operator() {
        let mut p = example();
        assert_eq!(
            p.check_plain_scope(Scope::Cluster),
            Err(PolicyError::PlainClusterScope)
        );
        assert!(p.check_plain_scope(Scope::Namespace).is_ok());
        p.allow_cluster_scope_plain_items = true;
        assert!(p.check_plain_scope(Scope::Cluster).is_ok());
    }

    #[test]
    fn allowed_keys_flag_means_every_namespace() {
        let rules = KeyPolicy::rules_for_all_namespaces(&[KEY_A.into(), ALIAS.into()]).unwrap();
        let p = KeyPolicy::from_rules(rules);
        assert!(
            p.check_key("any-namespace", KEY_A, &ResolvedAliases::new())
                .is_ok()
        );
        for bad in [
            "alias/payments",
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:s3:::b",
            "mrk-xyz",
        ] {
            let err = KeyPolicy::rules_for_all_namespaces(&[bad.into()]).unwrap_err();
            assert_eq!(err.category().as_str(), "invalid_policy", "{bad}");
        }
    }

    #[test]
    fn identity_rules_come_from_the_same_file() {
        let head = "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\n";
        let (keys, identities) = KeyPolicy::parse_file(&format!(
            "{head}identities:\n- namespaces: [team-*]\n  serviceAccount: kmseal\n  identity: required\n- namespaces: [dev]\n"
        ))
        .unwrap();
        assert!(keys.is_empty());
        assert_eq!(identities.len(), 2);
        assert_eq!(identities[0].service_account.as_deref(), Some("kmseal"));
        assert_eq!(
            identities[0].requirement,
            crate::identity::Requirement::Required
        );
        assert_eq!(
            identities[1].requirement,
            crate::identity::Requirement::Optional
        );
        for (bad, says) in [
            ("identities:\n- namespaces: []\n", "identity rule 1"),
            (
                "identities:\n- namespaces: [a]\n  identity: always\n",
                "neither required nor optional",
            ),
            (
                "identities:\n- namespaces: [a]\n  serviceAccount: ../x\n",
                "not a ServiceAccount name",
            ),
            (
                "identities:\n- namespaces: [a]\n  roleArn: x\n",
                "not valid",
            ),
        ] {
            let e = KeyPolicy::parse_file(&format!("{head}{bad}")).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn namespace_patterns() {
        let p = |s: &str| NamespacePattern::parse(s).unwrap();
        assert!(p("*").matches("anything"));
        assert!(p("team-*").matches("team-a"));
        assert!(p("team-*").matches("team-"));
        assert!(!p("team-*").matches("team"));
        assert!(p("*-prod").matches("payments-prod"));
        assert!(p("a*b*c").matches("aXXbYYc"));
        assert!(!p("a*b*c").matches("aXXbYY"));
        assert!(!p("prod").matches("prod2"));
        for bad in ["", "Prod", "a/b", "x".repeat(64).as_str(), "a b"] {
            assert!(NamespacePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_policy_files_are_refused_with_a_position_only() {
        let secretish = "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys: [{key: \"hunter2-not-a-key\", namespaces: [a]}]\n";
        let err = KeyPolicy::parse_rules(secretish).unwrap_err().to_string();
        assert!(err.contains("rule 1"), "{err}");
        for text in [
            "",
            "[",
            "keys: {",
            "apiVersion: kmseal.dev/v1alpha1\nkind: Secret\nkeys: []\n",
            "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nextra: 1\n",
            "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys: [{key: x}]\n",
            "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys: [{key: mrk-00, namespaces: []}]\n",
            "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n",
            &"[".repeat(10_000),
            &"x".repeat(MAX_POLICY_LEN + 1),
        ] {
            let err = KeyPolicy::parse_rules(text).unwrap_err();
            assert_eq!(err.category().as_str(), "invalid_policy");
        }
        let quoting = "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys: [{key: mrk-00, namespaces: [a]}, s3cr3t-value: :]\n";
        let err = KeyPolicy::parse_rules(quoting).unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn a_secret_type_needs_the_items_the_api_server_requires() {
        let with = |items: &'static [&'static str]| move |i: &str| items.contains(&i);
        assert!(check_required_items("Opaque", with(&[])).is_ok());
        assert!(check_required_items("example.com/custom", with(&[])).is_ok());
        let tls = check_required_items("kubernetes.io/tls", with(&["tls.crt"])).unwrap_err();
        assert_eq!(
            tls.to_string(),
            "a Secret of type kubernetes.io/tls needs items tls.crt and tls.key, and the API server refuses it without; add tls.key, or use type Opaque"
        );
        assert_eq!(tls.category(), Category::InvalidInput);
        assert!(check_required_items("kubernetes.io/tls", with(&["tls.crt", "tls.key"])).is_ok());
        // basic-auth: one of the two is enough.
        assert!(check_required_items("kubernetes.io/basic-auth", with(&["password"])).is_ok());
        assert!(
            check_required_items("kubernetes.io/basic-auth", with(&["user"]))
                .unwrap_err()
                .to_string()
                .contains("needs an item username or password, and the API server refuses it without; add username or password")
        );
        for (type_, item) in [
            ("kubernetes.io/ssh-auth", "ssh-privatekey"),
            ("kubernetes.io/dockerconfigjson", ".dockerconfigjson"),
            ("kubernetes.io/dockercfg", ".dockercfg"),
        ] {
            assert!(check_required_items(type_, with(&[])).is_err(), "{type_}");
            let one = [item];
            assert!(check_required_items(type_, |i: &str| one.contains(&i)).is_ok());
        }
    }

    #[test]
    fn secret_types() {
        let types = SecretTypes::default();
        assert!(types.check("Opaque").is_ok());
        assert!(types.check("kubernetes.io/tls").is_ok());
        let sa = types.check(SERVICE_ACCOUNT_TOKEN).unwrap_err();
        assert_eq!(sa.category().as_str(), "type_not_allowed");
        assert!(sa.to_string().contains("ServiceAccount token"), "{sa}");
        assert!(types.check("bootstrap.kubernetes.io/token").is_err());
        assert!(SecretTypes::new(&[SERVICE_ACCOUNT_TOKEN.into()]).is_err());
        let custom = SecretTypes::new(&["Opaque".into(), "example.com/custom".into()]).unwrap();
        assert!(custom.check("example.com/custom").is_ok());
        assert!(custom.check("kubernetes.io/tls").is_err());
    }
}
