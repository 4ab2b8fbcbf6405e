//! Which AWS identity an EncryptedSecret's KMS calls go out under: the controller's own role, or
//! the role of a ServiceAccount in the object's namespace (per-tenant identity).
//!
//! Pure: the operator's settings (`--tenant-identity`, `--default-service-account`, the key
//! policy file's `identities` rules) and the object decide which ServiceAccount; the
//! ServiceAccount's annotations decide which role. The controller gathers them and makes the
//! calls (`controller::tenant_identity`). A tenant names only a ServiceAccount of its own
//! namespace (there is no namespace field), and an object that names one, or must, never falls
//! back to the controller's role.

use std::collections::BTreeMap;
use std::fmt;

use crate::category::Category;
use crate::pattern::NamespacePattern;

/// The IRSA annotation that names a ServiceAccount's IAM role.
pub const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// The IRSA annotation that names the audience of the ServiceAccount's tokens.
pub const AUDIENCE_ANNOTATION: &str = "eks.amazonaws.com/audience";
/// The audience STS expects unless the ServiceAccount says otherwise.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
/// At most this many identity rules in a policy file.
pub const MAX_IDENTITY_RULES: usize = 1000;

/// Whether a namespace's objects must go out under a ServiceAccount's role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Requirement {
    /// An object may name a ServiceAccount; one that does not uses the default, if any, else the
    /// controller's role.
    #[default]
    Optional,
    /// Every object uses a ServiceAccount's role: its own, or the default; never the
    /// controller's.
    Required,
}

/// One `identities` rule of the key policy file: for these namespaces, this default
/// ServiceAccount and requirement. The first rule that matches a namespace applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRule {
    pub namespaces: Vec<NamespacePattern>,
    pub service_account: Option<String>,
    pub requirement: Requirement,
}

/// The operator's identity settings, as the controller's flags and policy file give them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentitySettings {
    /// `--tenant-identity`: objects may (and by the rules must) use a ServiceAccount's role.
    pub enabled: bool,
    /// `--default-service-account`: the ServiceAccount (in the object's own namespace) of every
    /// object that names none and whose namespace's rule gives no default; Flux's lockdown.
    pub default_service_account: Option<String>,
    /// `--require-service-account`: the requirement of namespaces no rule matches.
    pub required_by_default: bool,
    pub rules: Vec<IdentityRule>,
}

/// Whose credentials an object's KMS calls use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Controller,
    /// This ServiceAccount of the object's namespace.
    ServiceAccount(String),
}

/// A ServiceAccount's IRSA target, from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleTarget {
    pub role_arn: String,
    pub audience: String,
}

/// Why an object cannot have the identity it asks for. Told to the tenant: never holds a token,
/// credentials, or what only the operator should see (STS's own words go to the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "spec.serviceAccountName {service_account:?} is set, but per-tenant identity is off in this cluster; remove it, or ask your platform team to turn on tenantIdentity (see docs/multi-tenancy.md#per-tenant-aws-identity)"
    )]
    Off { service_account: String },
    #[error(
        "namespace {namespace} must decrypt with a ServiceAccount's own AWS role: set spec.serviceAccountName to a ServiceAccount of this namespace whose eks.amazonaws.com/role-arn annotation names that role (see docs/multi-tenancy.md#per-tenant-aws-identity)"
    )]
    Required { namespace: String },
    #[error(
        "spec.serviceAccountName {0:?} is not a ServiceAccount name: use lowercase letters, digits, '-' and '.', at most 253 characters"
    )]
    InvalidName(String),
    #[error(
        "ServiceAccount {namespace}/{service_account} does not exist; create it with the eks.amazonaws.com/role-arn annotation, or name another in spec.serviceAccountName"
    )]
    ServiceAccountNotFound {
        namespace: String,
        service_account: String,
    },
    #[error(
        "ServiceAccount {namespace}/{service_account} has no valid eks.amazonaws.com/role-arn annotation{found}; annotate it with the ARN of the IAM role its values may be decrypted with (arn:aws:iam::ACCOUNT:role/NAME)"
    )]
    NoRoleAnnotation {
        namespace: String,
        service_account: String,
        /// Empty, or what was wrong with the annotation there.
        found: Found,
    },
    #[error(
        "AWS refused to let ServiceAccount {namespace}/{service_account} assume role {role_arn}; the role's trust policy must allow sts:AssumeRoleWithWebIdentity for the cluster's OIDC provider with sub = system:serviceaccount:{namespace}:{service_account} and aud = {audience} (the controller's log has STS's answer)"
    )]
    AssumeRoleDenied {
        namespace: String,
        service_account: String,
        role_arn: String,
        audience: String,
    },
    #[error(
        "the controller may not request a token for ServiceAccount {namespace}/{service_account}; ask your platform team to install kmseal with tenantIdentity.enabled (it grants create on serviceaccounts/token)"
    )]
    TokenRefused {
        namespace: String,
        service_account: String,
    },
    /// The API server or STS could not answer now; retried with backoff.
    #[error(
        "{what} could not be reached for ServiceAccount {namespace}/{service_account} right now; the controller retries with backoff"
    )]
    Unavailable {
        what: &'static str,
        namespace: String,
        service_account: String,
        throttled: bool,
    },
    /// Not asked yet: this namespace already has its share of STS calls waiting.
    #[error(
        "sts:AssumeRoleWithWebIdentity for namespace {0} was not sent yet: this namespace already has its share of STS calls waiting"
    )]
    Deferred(String),
    /// The controller cannot make the call at all (no region for STS).
    #[error(
        "the controller's AWS settings cannot reach STS ({0}); ask your platform team (the controller's log has the details)"
    )]
    Configuration(String),
}

/// What was wrong with a role annotation, for [`IdentityError::NoRoleAnnotation`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Found(pub Option<String>);

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => Ok(()),
            Some(value) => write!(f, " (it says {value:?}, which is not an IAM role ARN)"),
        }
    }
}

impl IdentityError {
    pub fn category(&self) -> Category {
        match self {
            IdentityError::Off { .. } | IdentityError::Required { .. } => {
                Category::IdentityNotAllowed
            }
            IdentityError::InvalidName(_) => Category::InvalidInput,
            IdentityError::ServiceAccountNotFound { .. } => Category::ServiceAccountNotFound,
            IdentityError::NoRoleAnnotation { .. } => Category::NoRoleAnnotation,
            IdentityError::AssumeRoleDenied { .. } | IdentityError::TokenRefused { .. } => {
                Category::AssumeRoleDenied
            }
            IdentityError::Unavailable {
                throttled: true, ..
            } => Category::Throttled,
            IdentityError::Unavailable { .. } => Category::Unreachable,
            IdentityError::Deferred(_) => Category::Deferred,
            IdentityError::Configuration(_) => Category::Configuration,
        }
    }

    /// Whether the object's own setup (its ServiceAccount, the role's trust policy) is at fault,
    /// so the attempt counts against its namespace's failure budget.
    pub fn is_tenants(&self) -> bool {
        matches!(
            self,
            IdentityError::ServiceAccountNotFound { .. }
                | IdentityError::NoRoleAnnotation { .. }
                | IdentityError::AssumeRoleDenied { .. }
        )
    }
}

impl IdentitySettings {
    /// The rule for `namespace`, if any.
    fn rule_for(&self, namespace: &str) -> Option<&IdentityRule> {
        self.rules
            .iter()
            .find(|r| r.namespaces.iter().any(|p| p.matches(namespace)))
    }

    /// Whose credentials the KMS calls of an object in `namespace` use, given the
    /// `spec.serviceAccountName` it names (if any). Decided before any call.
    pub fn choose(&self, namespace: &str, named: Option<&str>) -> Result<Choice, IdentityError> {
        let named = named.filter(|n| !n.is_empty());
        if !self.enabled {
            return match named {
                Some(name) => Err(IdentityError::Off {
                    service_account: crate::text::bounded(name, 253),
                }),
                None => Ok(Choice::Controller),
            };
        }
        if let Some(name) = named {
            return if valid_service_account_name(name) {
                Ok(Choice::ServiceAccount(name.to_owned()))
            } else {
                Err(IdentityError::InvalidName(crate::text::bounded(name, 253)))
            };
        }
        let rule = self.rule_for(namespace);
        let default = rule
            .and_then(|r| r.service_account.as_deref())
            .or(self.default_service_account.as_deref());
        let requirement = rule.map_or(
            if self.required_by_default {
                Requirement::Required
            } else {
                Requirement::Optional
            },
            |r| r.requirement,
        );
        match (default, requirement) {
            (Some(sa), _) => Ok(Choice::ServiceAccount(sa.to_owned())),
            (None, Requirement::Required) => Err(IdentityError::Required {
                namespace: namespace.to_owned(),
            }),
            (None, Requirement::Optional) => Ok(Choice::Controller),
        }
    }
}

/// A ServiceAccount name as the API server accepts it (a DNS-1123 subdomain).
pub fn valid_service_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// An IAM role ARN: `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
pub fn valid_role_arn(arn: &str) -> bool {
    let Some(crate::arn::Arn {
        partition,
        service: "iam",
        region: "",
        account,
        resource,
    }) = crate::arn::Arn::parse(arn)
    else {
        return false;
    };
    let name_chars = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
    };
    matches!(
        partition,
        "aws" | "aws-cn" | "aws-us-gov" | "aws-iso" | "aws-iso-b"
    ) && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && arn.len() <= 2048
        && resource
            .strip_prefix("role/")
            .is_some_and(|rest| name_chars(rest) && !rest.ends_with('/'))
}

/// The role and audience a ServiceAccount's annotations name.
pub fn role_target(
    namespace: &str,
    service_account: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<RoleTarget, IdentityError> {
    let missing = |found: Option<&str>| IdentityError::NoRoleAnnotation {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        found: Found(found.map(|f| crate::text::bounded(f, 120))),
    };
    let role_arn = annotations
        .get(ROLE_ARN_ANNOTATION)
        .map(|r| r.trim())
        .ok_or_else(|| missing(None))?;
    if !valid_role_arn(role_arn) {
        return Err(missing(Some(role_arn)));
    }
    let audience = annotations
        .get(AUDIENCE_ANNOTATION)
        .map(|a| a.trim())
        .filter(|a| !a.is_empty() && a.len() <= 253 && a.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or(DEFAULT_AUDIENCE);
    Ok(RoleTarget {
        role_arn: role_arn.to_owned(),
        audience: audience.to_owned(),
    })
}

/// The STS session name for a call made for `namespace`/`name`: it names both in CloudTrail
/// (`kmseal@NAMESPACE.NAME`, cut to STS's 64 characters; characters STS refuses become `-`).
pub fn session_name(namespace: &str, name: &str) -> String {
    let text: String = format!("kmseal@{namespace}.{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    text
}

/// What one set of tenant credentials is for: they are cached per this, never shared
/// beyond it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantIdentity {
    pub namespace: String,
    pub service_account: String,
    pub role_arn: String,
    pub audience: String,
    /// The STS endpoint that issued them.
    pub sts_endpoint: String,
}

impl TenantIdentity {
    /// A stable text of the whole identity, for cache keys.
    pub fn key(&self) -> String {
        [
            self.namespace.as_str(),
            &self.service_account,
            &self.role_arn,
            &self.audience,
            &self.sts_endpoint,
        ]
        .iter()
        .map(|part| format!("{}:{part}", part.len()))
        .collect::<Vec<_>>()
        .join("|")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, sa: Option<&str>, requirement: Requirement) -> IdentityRule {
        IdentityRule {
            namespaces: vec![NamespacePattern::parse(pattern).unwrap()],
            service_account: sa.map(str::to_owned),
            requirement,
        }
    }

    #[test]
    fn off_means_the_controller_and_a_named_service_account_is_refused() {
        let off = IdentitySettings::default();
        assert_eq!(off.choose("a", None), Ok(Choice::Controller));
        assert!(matches!(
            off.choose("a", Some("app")),
            Err(IdentityError::Off { .. })
        ));
    }

    #[test]
    fn the_object_the_rule_and_the_flag_decide_in_that_order() {
        let settings = IdentitySettings {
            enabled: true,
            required_by_default: false,
            default_service_account: Some("kmseal".into()),
            rules: vec![
                rule("locked-*", None, Requirement::Required),
                rule("team-a", Some("decrypter"), Requirement::Optional),
            ],
        };
        assert_eq!(
            settings.choose("team-a", Some("app")),
            Ok(Choice::ServiceAccount("app".into()))
        );
        assert_eq!(
            settings.choose("team-a", None),
            Ok(Choice::ServiceAccount("decrypter".into()))
        );
        // The flag's default applies where no rule gives one, even under `required`.
        assert_eq!(
            settings.choose("locked-x", None),
            Ok(Choice::ServiceAccount("kmseal".into()))
        );
        assert_eq!(
            settings.choose("other", None),
            Ok(Choice::ServiceAccount("kmseal".into()))
        );
        let strict = IdentitySettings {
            default_service_account: None,
            ..settings
        };
        assert_eq!(
            strict.choose("locked-x", None),
            Err(IdentityError::Required {
                namespace: "locked-x".into()
            })
        );
        assert_eq!(strict.choose("other", None), Ok(Choice::Controller));
        assert_eq!(strict.choose("other", Some("")), Ok(Choice::Controller));
        // --require-service-account: namespaces no rule matches must name one; a rule that
        // says optional still exempts its namespaces.
        let everywhere = IdentitySettings {
            required_by_default: true,
            rules: vec![rule("dev", None, Requirement::Optional)],
            ..strict
        };
        assert!(matches!(
            everywhere.choose("other", None),
            Err(IdentityError::Required { .. })
        ));
        assert_eq!(everywhere.choose("dev", None), Ok(Choice::Controller));
    }

    #[test]
    fn hostile_names_are_refused() {
        let settings = IdentitySettings {
            enabled: true,
            ..Default::default()
        };
        for name in [
            "../kube-system/x",
            "kube-system/default",
            "system:serviceaccount:kube-system:x",
            "UPPER",
            "-a",
            "a-",
            "a..b",
            &"a".repeat(254),
            "a\nb",
        ] {
            assert!(
                matches!(
                    settings.choose("team-a", Some(name)),
                    Err(IdentityError::InvalidName(_))
                ),
                "{name:?}"
            );
        }
        assert!(valid_service_account_name("my-app.v2"));
    }

    #[test]
    fn role_annotations_are_checked() {
        let annotations =
            |role: &str| BTreeMap::from([(ROLE_ARN_ANNOTATION.to_owned(), role.to_owned())]);
        let target = role_target(
            "a",
            "app",
            &annotations("arn:aws:iam::111122223333:role/team-a/decrypt"),
        )
        .unwrap();
        assert_eq!(target.audience, DEFAULT_AUDIENCE);
        for bad in [
            "",
            "arn:aws:iam::111122223333:user/alice",
            "arn:aws:iam::1111:role/x",
            "arn:aws:kms:us-east-1:111122223333:key/x",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/a b",
        ] {
            let e = role_target("a", "app", &annotations(bad)).unwrap_err();
            assert_eq!(e.category(), Category::NoRoleAnnotation, "{bad:?}");
        }
        let none = role_target("a", "app", &BTreeMap::new()).unwrap_err();
        assert!(none.to_string().contains("eks.amazonaws.com/role-arn"));
        let mut with_audience = annotations("arn:aws-cn:iam::111122223333:role/r");
        with_audience.insert(AUDIENCE_ANNOTATION.into(), "my-aud".into());
        assert_eq!(
            role_target("a", "app", &with_audience).unwrap().audience,
            "my-aud"
        );
    }

    #[test]
    fn session_names_fit_sts() {
        let name = session_name("team-a", &"x".repeat(200));
        assert_eq!(name.len(), 64);
        assert!(name.starts_with("kmseal@team-a.xxx"));
        assert_eq!(session_name("a", "b/c d"), "kmseal@a.b-c-d");
    }

    #[test]
    fn the_denial_names_the_trust_policy_fix() {
        let e = IdentityError::AssumeRoleDenied {
            namespace: "team-a".into(),
            service_account: "app".into(),
            role_arn: "arn:aws:iam::111122223333:role/r".into(),
            audience: DEFAULT_AUDIENCE.into(),
        };
        assert!(
            e.to_string()
                .contains("sub = system:serviceaccount:team-a:app")
        );
        assert_eq!(e.category().reason(), "AssumeRoleDenied");
    }
}
