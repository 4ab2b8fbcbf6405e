//! The KMS operations kmseal uses, behind a trait: the AWS implementation for real use and an
//! in-memory double for unit tests.

use std::fmt;
use std::future::Future;

use zeroize::Zeroizing;

use crate::binding::EncryptionContext;
use crate::envelope::{DataKey, WrapAlgorithm};

pub mod aws;
pub mod cache;
pub mod limit;
pub mod memory;

pub use aws::{AwsKms, AwsSettings};
pub use cache::CachingKms;
pub use limit::RateLimitedKms;
pub use memory::MemoryKms;

/// A fresh data key: plaintext for local use, wrapped for storage.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The full ARN of the key that generated it (KMS resolves aliases).
    pub key_arn: String,
    pub plaintext: DataKey,
    pub wrapped: Vec<u8>,
}

/// One `Decrypt` call.
#[derive(Debug, Clone, Copy)]
pub struct DecryptRequest<'a> {
    /// The key that must answer. `None` lets KMS use the key named in a symmetric blob.
    pub key_id: Option<&'a str>,
    pub ciphertext: &'a [u8],
    pub algorithm: WrapAlgorithm,
    pub context: &'a EncryptionContext,
}

/// What `Decrypt` returned.
pub struct Decrypted {
    /// The ARN of the key that decrypted, as KMS reports it.
    pub key_arn: String,
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decrypted")
            .field("key_arn", &self.key_arn)
            .field("plaintext", &"[redacted]")
            .finish()
    }
}

/// The public half of an asymmetric KMS key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyInfo {
    pub key_arn: String,
    /// DER-encoded SubjectPublicKeyInfo.
    pub der: Vec<u8>,
    /// e.g. `RSA_4096`.
    pub key_spec: String,
    pub key_usage: String,
    /// e.g. `RSAES_OAEP_SHA_256`.
    pub encryption_algorithms: Vec<String>,
}

/// The KMS operations kmseal needs.
pub trait Kms: Send + Sync {
    /// `GenerateDataKey` (AES_256) under `key_id` with `context`.
    fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> impl Future<Output = Result<GeneratedKey, KmsError>> + Send;

    /// `Decrypt`.
    fn decrypt(
        &self,
        request: DecryptRequest<'_>,
    ) -> impl Future<Output = Result<Decrypted, KmsError>> + Send;

    /// `GetPublicKey`.
    fn public_key(
        &self,
        key_id: &str,
    ) -> impl Future<Output = Result<PublicKeyInfo, KmsError>> + Send;
}

/// Shared KMS stacks (one cache and one rate limit for several controllers).
impl<K: Kms> Kms for std::sync::Arc<K> {
    fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> impl Future<Output = Result<GeneratedKey, KmsError>> + Send {
        (**self).generate_data_key(key_id, context)
    }

    fn decrypt(
        &self,
        request: DecryptRequest<'_>,
    ) -> impl Future<Output = Result<Decrypted, KmsError>> + Send {
        (**self).decrypt(request)
    }

    fn public_key(
        &self,
        key_id: &str,
    ) -> impl Future<Output = Result<PublicKeyInfo, KmsError>> + Send {
        (**self).public_key(key_id)
    }
}

/// A small, fixed set of failure categories: metric labels, condition reasons, exit paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KmsErrorKind {
    AccessDenied,
    KeyNotFound,
    KeyDisabled,
    /// KMS is temporarily unable to use the key or answer (KeyUnavailable, internal errors).
    Unavailable,
    /// The ciphertext does not decrypt: altered, another encryption context, or another key.
    InvalidCiphertext,
    /// The key cannot be used for this operation (wrong key usage or key spec).
    KeyUsage,
    Throttled,
    Unreachable,
    Credentials,
    InvalidRequest,
    /// KMS answered with a key other than the one the value names.
    WrongKey,
    Other,
}

impl KmsErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KmsErrorKind::AccessDenied => "access_denied",
            KmsErrorKind::KeyNotFound => "key_not_found",
            KmsErrorKind::KeyDisabled => "key_disabled",
            KmsErrorKind::Unavailable => "kms_unavailable",
            KmsErrorKind::InvalidCiphertext => "invalid_ciphertext",
            KmsErrorKind::KeyUsage => "key_usage",
            KmsErrorKind::Throttled => "throttled",
            KmsErrorKind::Unreachable => "unreachable",
            KmsErrorKind::Credentials => "credentials",
            KmsErrorKind::InvalidRequest => "invalid_request",
            KmsErrorKind::WrongKey => "wrong_key",
            KmsErrorKind::Other => "kms_error",
        }
    }

    /// Worth retrying later without any change by the user.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            KmsErrorKind::Throttled | KmsErrorKind::Unreachable | KmsErrorKind::Unavailable
        )
    }
}

/// A failed KMS call, with enough context to say what to do. Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsError {
    pub kind: KmsErrorKind,
    /// The KMS action, e.g. `kms:Decrypt`.
    pub action: &'static str,
    /// The key as the caller named it, if any.
    pub key: Option<String>,
    /// The region the call went to, if known.
    pub region: Option<String>,
    /// What KMS (or the transport) said, already free of secrets.
    pub detail: String,
}

impl KmsError {
    pub fn new(
        kind: KmsErrorKind,
        action: &'static str,
        key: Option<&str>,
        detail: impl Into<String>,
    ) -> Self {
        KmsError {
            kind,
            action,
            key: key.map(str::to_owned),
            region: None,
            detail: detail.into(),
        }
    }

    pub fn in_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    pub fn category(&self) -> &'static str {
        self.kind.as_str()
    }

    fn key_text(&self) -> &str {
        self.key.as_deref().unwrap_or("(from the ciphertext)")
    }

    fn region_text(&self) -> String {
        self.region
            .as_deref()
            .map(|r| format!(" in region {r}"))
            .unwrap_or_default()
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key_text();
        let region = self.region_text();
        let action = self.action;
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(" (KMS said: {})", self.detail)
        };
        match self.kind {
            KmsErrorKind::AccessDenied => write!(
                f,
                "KMS denied {action} on key {key}{region}{detail}; grant {action} to the role kmseal runs as, in the key policy or its IAM policy (see README#iam)"
            ),
            KmsErrorKind::KeyNotFound => write!(
                f,
                "KMS key {key} was not found{region}{detail}; check the key id or alias and the region (--region or AWS_REGION; a key ARN selects its own region)"
            ),
            KmsErrorKind::KeyDisabled => write!(
                f,
                "KMS key {key}{region} is disabled or pending deletion{detail}; enable it (aws kms enable-key) or cancel its deletion (aws kms cancel-key-deletion), or re-seal under another key"
            ),
            KmsErrorKind::Unavailable => write!(
                f,
                "KMS could not use key {key}{region} right now{detail}; this is usually temporary, retry later"
            ),
            KmsErrorKind::InvalidCiphertext => write!(
                f,
                "KMS refused to decrypt with key {key}{region}{detail}: the value was altered, sealed for another namespace or name (encryption context), or sealed under another key; re-seal it with `kmseal seal` for this object"
            ),
            KmsErrorKind::KeyUsage => write!(
                f,
                "KMS key {key}{region} cannot be used for {action}{detail}; use a symmetric ENCRYPT_DECRYPT key for `seal --key`, or an RSA ENCRYPT_DECRYPT key for `pubkey` and `seal --public-key`"
            ),
            KmsErrorKind::Throttled => write!(
                f,
                "KMS throttled {action} on key {key}{region} and retries ran out{detail}; retry later, raise AWS_MAX_ATTEMPTS or set AWS_RETRY_MODE=adaptive, or ask AWS for a higher KMS request quota"
            ),
            KmsErrorKind::Unreachable => write!(
                f,
                "could not reach KMS{region} for {action}{detail}; check the network, the region, and the endpoint (--endpoint or AWS_ENDPOINT_URL_KMS)"
            ),
            KmsErrorKind::Credentials => write!(
                f,
                "no usable AWS credentials for {action}{detail}; provide them through IRSA (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE), a profile (AWS_PROFILE), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ),
            KmsErrorKind::InvalidRequest => write!(
                f,
                "KMS rejected {action} on key {key}{region} as invalid{detail}"
            ),
            KmsErrorKind::WrongKey => write!(
                f,
                "KMS decrypted with key {}{region}, but the value names key {key}; the value was tampered with, refusing it",
                self.detail
            ),
            KmsErrorKind::Other => write!(f, "KMS {action} on key {key}{region} failed{detail}"),
        }
    }
}

impl std::error::Error for KmsError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_fix() {
        let e = KmsError::new(
            KmsErrorKind::AccessDenied,
            "kms:Decrypt",
            Some("arn:aws:kms:us-east-1:1:key/k"),
            "not authorized",
        );
        let text = e.to_string();
        assert!(text.contains("kms:Decrypt"), "{text}");
        assert!(text.contains("arn:aws:kms:us-east-1:1:key/k"), "{text}");
        assert!(text.contains("key policy"), "{text}");
        assert_eq!(e.category(), "access_denied");
        let nf = KmsError::new(
            KmsErrorKind::KeyNotFound,
            "kms:GenerateDataKey",
            Some("alias/x"),
            "",
        )
        .in_region("eu-west-1");
        assert!(nf.to_string().contains("region eu-west-1"));
        assert!(nf.to_string().contains("check the key id"));
    }
}
