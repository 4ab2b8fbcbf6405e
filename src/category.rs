//! The small, fixed set of failure categories every error maps to: metric labels, `kmseal
//! validate` finding codes, CLI output, and (through [`Category::reason`]) the controller's
//! condition and event reasons. Never an error's text or an object's name, so a label's
//! cardinality stays bounded.

use std::fmt;

/// The `Ready` condition's reasons, also the event reasons: a small fixed set.
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
    pub const KEY_NOT_ALLOWED: &str = "KeyNotAllowed";
    pub const TYPE_NOT_ALLOWED: &str = "SecretTypeNotAllowed";
    /// The object may not use the identity it asks for (or must name one).
    pub const IDENTITY_NOT_ALLOWED: &str = "IdentityNotAllowed";
    pub const SERVICE_ACCOUNT_NOT_FOUND: &str = "ServiceAccountNotFound";
    pub const NO_ROLE_ANNOTATION: &str = "NoRoleAnnotation";
    pub const ASSUME_ROLE_DENIED: &str = "AssumeRoleDenied";

    pub const ALL: [&str; 17] = [
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
        KEY_NOT_ALLOWED,
        TYPE_NOT_ALLOWED,
        IDENTITY_NOT_ALLOWED,
        SERVICE_ACCOUNT_NOT_FOUND,
        NO_ROLE_ANNOTATION,
        ASSUME_ROLE_DENIED,
    ];
}

/// What kind of failure it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    // KMS, and where it runs.
    AccessDenied,
    Credentials,
    KeyNotFound,
    KeyDisabled,
    Throttled,
    Unreachable,
    KmsUnavailable,
    /// KMS failed in a way it did not explain.
    KmsError,
    /// kmseal's own AWS settings cannot make the call (no region).
    Configuration,
    InvalidRequest,
    /// A KMS call withdrawn before it was sent (its object changed or went away).
    Cancelled,
    /// A KMS call not sent yet: the namespace has its share waiting.
    Deferred,
    // The value.
    Tampered,
    InvalidCiphertext,
    WrongKey,
    KeyUsage,
    Malformed,
    TooLarge,
    UnsupportedVersion,
    InvalidInput,
    InvalidPublicKey,
    // What the key policy and the Secret types allow.
    KeyNotAllowed,
    TypeNotAllowed,
    InvalidPolicy,
    // Per-tenant AWS identity.
    IdentityNotAllowed,
    ServiceAccountNotFound,
    NoRoleAnnotation,
    AssumeRoleDenied,
    /// The operating system's randomness failed.
    Random,
}

impl Category {
    /// The label, e.g. `access_denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::AccessDenied => "access_denied",
            Category::Credentials => "credentials",
            Category::KeyNotFound => "key_not_found",
            Category::KeyDisabled => "key_disabled",
            Category::Throttled => "throttled",
            Category::Unreachable => "unreachable",
            Category::KmsUnavailable => "kms_unavailable",
            Category::KmsError => "kms_error",
            Category::Configuration => "configuration",
            Category::InvalidRequest => "invalid_request",
            Category::Cancelled => "cancelled",
            Category::Deferred => "deferred",
            Category::Tampered => "tampered",
            Category::InvalidCiphertext => "invalid_ciphertext",
            Category::WrongKey => "wrong_key",
            Category::KeyUsage => "key_usage",
            Category::Malformed => "malformed",
            Category::TooLarge => "too_large",
            Category::UnsupportedVersion => "unsupported_version",
            Category::InvalidInput => "invalid_input",
            Category::InvalidPublicKey => "invalid_public_key",
            Category::KeyNotAllowed => "key_not_allowed",
            Category::TypeNotAllowed => "type_not_allowed",
            Category::InvalidPolicy => "invalid_policy",
            Category::IdentityNotAllowed => "identity_not_allowed",
            Category::ServiceAccountNotFound => "service_account_not_found",
            Category::NoRoleAnnotation => "no_role_annotation",
            Category::AssumeRoleDenied => "assume_role_denied",
            Category::Random => "random",
        }
    }

    /// The `Ready` condition reason a failure of this category gives an object. Every
    /// category says which: a new one does not compile without its reason.
    pub fn reason(self) -> &'static str {
        match self {
            Category::AccessDenied => reason::ACCESS_DENIED,
            Category::Credentials => reason::NO_CREDENTIALS,
            Category::KeyNotFound => reason::KEY_NOT_FOUND,
            Category::KeyDisabled => reason::KEY_DISABLED,
            Category::Throttled => reason::THROTTLED,
            // Not the value's fault, and retried: KMS (or reaching it) is the problem.
            Category::Unreachable
            | Category::KmsUnavailable
            | Category::KmsError
            | Category::Configuration
            | Category::Cancelled
            | Category::Deferred => reason::KMS_UNAVAILABLE,
            Category::Tampered
            | Category::InvalidCiphertext
            | Category::WrongKey
            | Category::KeyUsage => reason::DECRYPT_FAILED,
            Category::Malformed
            | Category::TooLarge
            | Category::UnsupportedVersion
            | Category::InvalidInput
            | Category::InvalidRequest
            | Category::InvalidPublicKey => reason::INVALID_SPEC,
            // The policy cannot admit the object: nothing is sent to KMS for it.
            Category::KeyNotAllowed | Category::InvalidPolicy => reason::KEY_NOT_ALLOWED,
            Category::TypeNotAllowed => reason::TYPE_NOT_ALLOWED,
            Category::IdentityNotAllowed => reason::IDENTITY_NOT_ALLOWED,
            Category::ServiceAccountNotFound => reason::SERVICE_ACCOUNT_NOT_FOUND,
            Category::NoRoleAnnotation => reason::NO_ROLE_ANNOTATION,
            Category::AssumeRoleDenied => reason::ASSUME_ROLE_DENIED,
            // Nothing the tenant did or can fix; the Secret could not be written.
            Category::Random => reason::APPLY_FAILED,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_one_of_the_fixed_set() {
        let all = [
            Category::AccessDenied,
            Category::Credentials,
            Category::KeyNotFound,
            Category::KeyDisabled,
            Category::Throttled,
            Category::Unreachable,
            Category::KmsUnavailable,
            Category::KmsError,
            Category::Configuration,
            Category::InvalidRequest,
            Category::Cancelled,
            Category::Deferred,
            Category::Tampered,
            Category::InvalidCiphertext,
            Category::WrongKey,
            Category::KeyUsage,
            Category::Malformed,
            Category::TooLarge,
            Category::UnsupportedVersion,
            Category::InvalidInput,
            Category::InvalidPublicKey,
            Category::KeyNotAllowed,
            Category::TypeNotAllowed,
            Category::InvalidPolicy,
            Category::IdentityNotAllowed,
            Category::ServiceAccountNotFound,
            Category::NoRoleAnnotation,
            Category::AssumeRoleDenied,
            Category::Random,
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels.len(), all.len(), "labels are distinct");
        for c in all {
            assert!(reason::ALL.contains(&c.reason()), "{c}");
            assert!(
                c.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
        }
        assert_eq!(Category::InvalidPolicy.reason(), reason::KEY_NOT_ALLOWED);
    }
}
