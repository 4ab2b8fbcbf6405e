//! The KMS operations kmseal uses, behind a trait: the AWS implementation for real use and an
//! in-memory double for unit tests.

use std::fmt;
use std::future::Future;

use zeroize::Zeroizing;

use crate::binding::EncryptionContext;
use crate::category::Category;
use crate::envelope::{DataKey, WrapAlgorithm};

pub mod aws;
pub mod cache;
pub mod fair;
pub mod health;
/// An in-memory KMS for tests, benchmarks and examples (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod profiles;

pub use aws::{AwsKms, AwsSettings};
pub use cache::CachingKms;
pub use fair::FairKms;
pub use health::{HealthKms, KmsHealth};
#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryKms;

/// A fresh data key: plaintext for local use, wrapped for storage.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The full ARN of the key that generated it (KMS resolves aliases).
    pub key_arn: String,
    /// The key material KMS used, where it says (AWS does since 2025; emulators do not).
    pub key_material_id: Option<String>,
    pub plaintext: DataKey,
    pub wrapped: Vec<u8>,
}

/// Whose AWS credentials a call goes out under.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Principal {
    /// The controller's own (IRSA, a profile, the environment).
    #[default]
    Controller,
    /// A tenant ServiceAccount's role, assumed for it (see [`crate::identity`]).
    Tenant(std::sync::Arc<TenantSession>),
}

/// Credentials STS issued for one [`TenantIdentity`].
pub struct TenantSession {
    pub identity: TenantIdentity,
    pub credentials: aws_credential_types::Credentials,
    /// When they expire (Unix seconds).
    pub expires: u64,
}

impl PartialEq for TenantSession {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
            && self.credentials.access_key_id() == other.credentials.access_key_id()
    }
}

impl Eq for TenantSession {}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Controller => f.write_str("Controller"),
            Principal::Tenant(session) => f
                .debug_struct("Tenant")
                .field("identity", &session.identity)
                .field("expires", &session.expires)
                .finish_non_exhaustive(),
        }
    }
}

impl Principal {
    pub const CONTROLLER: &'static Principal = &Principal::Controller;

    /// A stable text for cache keys: empty for the controller.
    pub fn cache_key(&self) -> String {
        match self {
            Principal::Controller => String::new(),
            Principal::Tenant(session) => session.identity.key(),
        }
    }

    /// The assumed role, for a tenant.
    pub fn role_arn(&self) -> Option<&str> {
        match self {
            Principal::Controller => None,
            Principal::Tenant(session) => Some(&session.identity.role_arn),
        }
    }
}

pub use crate::identity::TenantIdentity;

/// A check made right before a request leaves the process: `false` drops the request (it
/// fails as [`KmsErrorKind::Cancelled`]). The controller uses it to make no KMS call for an
/// object that was deleted or changed while the call waited for its turn.
pub type Proceed<'a> = &'a (dyn Fn() -> bool + Send + Sync);

/// One `Decrypt` call.
#[derive(Clone, Copy)]
pub struct DecryptRequest<'a> {
    /// The key that must answer. `None` lets KMS use the key named in a symmetric blob.
    pub key_id: Option<&'a str>,
    pub ciphertext: &'a [u8],
    pub algorithm: WrapAlgorithm,
    pub context: &'a EncryptionContext,
    /// On whose behalf the call is made (the namespace); the controller's KMS budget is
    /// shared fairly between tenants.
    pub tenant: &'a str,
    /// Whose credentials the call goes out under.
    pub principal: &'a Principal,
    pub proceed: Option<Proceed<'a>>,
}

impl<'a> DecryptRequest<'a> {
    /// A request for `tenant` with no cancellation check.
    pub fn new(
        key_id: Option<&'a str>,
        ciphertext: &'a [u8],
        algorithm: WrapAlgorithm,
        context: &'a EncryptionContext,
        tenant: &'a str,
    ) -> Self {
        DecryptRequest {
            key_id,
            ciphertext,
            algorithm,
            context,
            tenant,
            principal: Principal::CONTROLLER,
            proceed: None,
        }
    }

    /// Whether the request should still be sent.
    pub fn should_proceed(&self) -> bool {
        self.proceed.is_none_or(|proceed| proceed())
    }
}

impl fmt::Debug for DecryptRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptRequest")
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .field("algorithm", &self.algorithm)
            .field("context", &self.context)
            .field("tenant", &self.tenant)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// What KMS says about a key: `DescribeKey`'s answer, and, from [`key_facts`], when its
/// material last rotated (`ListKeyRotations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    /// The key's ARN (an alias resolves to its target key).
    pub key_arn: String,
    /// e.g. `Enabled`, `Disabled`, `PendingDeletion`.
    pub state: String,
    /// The current key material, where KMS says (`CurrentKeyMaterialId`).
    pub current_material_id: Option<String>,
    /// When the material last rotated (Unix seconds); `None`: never, KMS would not say, or
    /// not asked (`describe_key` alone).
    pub last_rotation: Option<u64>,
    /// For a key pending deletion: when it will be deleted (Unix seconds).
    pub deletion_date: Option<u64>,
}

/// One `ReEncrypt`: a wrapped data key moved under another key (or the same key's current
/// material) inside KMS; the plaintext data key never leaves it.
#[derive(Debug)]
pub struct ReEncryptRequest<'a> {
    pub ciphertext: &'a [u8],
    /// The key the data key is wrapped under now (KMS checks it; some emulators need it).
    pub source_key_id: &'a str,
    pub source_algorithm: WrapAlgorithm,
    pub source_context: &'a EncryptionContext,
    pub destination_key_id: &'a str,
    pub destination_context: &'a EncryptionContext,
    /// Whose credentials the call goes out under.
    pub principal: &'a Principal,
}

/// What `ReEncrypt` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReEncrypted {
    /// The destination key's ARN.
    pub key_arn: String,
    /// The destination key material, where KMS says.
    pub key_material_id: Option<String>,
    /// The data key, wrapped under the destination key.
    pub wrapped: Vec<u8>,
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

    /// `DescribeKey`: resolves an alias to its key and reports the key's state.
    fn describe_key(&self, key_id: &str)
    -> impl Future<Output = Result<KeyFacts, KmsError>> + Send;

    /// `ReEncrypt` (symmetric destination, the same algorithm KMS-wrapped envelopes use).
    fn re_encrypt(
        &self,
        request: ReEncryptRequest<'_>,
    ) -> impl Future<Output = Result<ReEncrypted, KmsError>> + Send;

    /// `ListKeyRotations`: when the key's material last rotated (Unix seconds), `None` if it
    /// never did. Only for keys of the caller's account.
    fn last_rotation(
        &self,
        key_id: &str,
    ) -> impl Future<Output = Result<Option<u64>, KmsError>> + Send;

    /// [`Kms::describe_key`] under `principal`'s credentials. By default the controller's own
    /// calls are served and a tenant's refused: a layer that does not pass the principal on
    /// must never make the call with the controller's credentials instead.
    fn describe_key_as(
        &self,
        key_id: &str,
        principal: &Principal,
    ) -> impl Future<Output = Result<KeyFacts, KmsError>> + Send {
        async move {
            match principal {
                Principal::Controller => self.describe_key(key_id).await,
                Principal::Tenant(_) => Err(not_as_tenant("kms:DescribeKey", key_id)),
            }
        }
    }

    /// [`Kms::last_rotation`] under `principal`'s credentials (the default as for
    /// [`Kms::describe_key_as`]).
    fn last_rotation_as(
        &self,
        key_id: &str,
        principal: &Principal,
    ) -> impl Future<Output = Result<Option<u64>, KmsError>> + Send {
        async move {
            match principal {
                Principal::Controller => self.last_rotation(key_id).await,
                Principal::Tenant(_) => Err(not_as_tenant("kms:ListKeyRotations", key_id)),
            }
        }
    }
}

/// A layer that cannot make a call under a tenant's credentials.
fn not_as_tenant(action: &'static str, key_id: &str) -> KmsError {
    KmsError::new(
        KmsErrorKind::Configuration,
        action,
        Some(key_id),
        "this KMS cannot make calls under a tenant's identity",
    )
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

    fn describe_key(
        &self,
        key_id: &str,
    ) -> impl Future<Output = Result<KeyFacts, KmsError>> + Send {
        (**self).describe_key(key_id)
    }

    fn re_encrypt(
        &self,
        request: ReEncryptRequest<'_>,
    ) -> impl Future<Output = Result<ReEncrypted, KmsError>> + Send {
        (**self).re_encrypt(request)
    }

    fn last_rotation(
        &self,
        key_id: &str,
    ) -> impl Future<Output = Result<Option<u64>, KmsError>> + Send {
        (**self).last_rotation(key_id)
    }

    fn describe_key_as(
        &self,
        key_id: &str,
        principal: &Principal,
    ) -> impl Future<Output = Result<KeyFacts, KmsError>> + Send {
        (**self).describe_key_as(key_id, principal)
    }

    fn last_rotation_as(
        &self,
        key_id: &str,
        principal: &Principal,
    ) -> impl Future<Output = Result<Option<u64>, KmsError>> + Send {
        (**self).last_rotation_as(key_id, principal)
    }
}

/// What KMS says about a key, for rotation: one `DescribeKey`, then `ListKeyRotations`, whose
/// failure (another account's key, an emulator without it) only leaves the rotation date out:
/// material ids are then the only signal.
pub async fn key_facts<K: Kms>(kms: &K, key_id: &str) -> Result<KeyFacts, KmsError> {
    key_facts_as(kms, key_id, Principal::CONTROLLER).await
}

/// [`key_facts`] under `principal`'s credentials.
pub async fn key_facts_as<K: Kms>(
    kms: &K,
    key_id: &str,
    principal: &Principal,
) -> Result<KeyFacts, KmsError> {
    let description = kms.describe_key_as(key_id, principal).await?;
    let last_rotation = kms
        .last_rotation_as(&description.key_arn, principal)
        .await
        .ok()
        .flatten();
    Ok(KeyFacts {
        last_rotation,
        ..description
    })
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
    /// kmseal's own AWS settings cannot make the call (no region); KMS was never asked.
    Configuration,
    InvalidRequest,
    /// KMS answered with a key other than the one the value names.
    WrongKey,
    /// The caller withdrew the request before it was sent (see [`Proceed`]).
    Cancelled,
    /// Not sent: the tenant already has its share of requests waiting for KMS; try later.
    Deferred,
    Other,
}

impl KmsErrorKind {
    /// The failure category (metric labels, condition reasons).
    pub fn category(self) -> Category {
        match self {
            KmsErrorKind::AccessDenied => Category::AccessDenied,
            KmsErrorKind::KeyNotFound => Category::KeyNotFound,
            KmsErrorKind::KeyDisabled => Category::KeyDisabled,
            KmsErrorKind::Unavailable => Category::KmsUnavailable,
            KmsErrorKind::InvalidCiphertext => Category::InvalidCiphertext,
            KmsErrorKind::KeyUsage => Category::KeyUsage,
            KmsErrorKind::Throttled => Category::Throttled,
            KmsErrorKind::Unreachable => Category::Unreachable,
            KmsErrorKind::Credentials => Category::Credentials,
            KmsErrorKind::Configuration => Category::Configuration,
            KmsErrorKind::InvalidRequest => Category::InvalidRequest,
            KmsErrorKind::WrongKey => Category::WrongKey,
            KmsErrorKind::Cancelled => Category::Cancelled,
            KmsErrorKind::Deferred => Category::Deferred,
            KmsErrorKind::Other => Category::KmsError,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.category().as_str()
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

    pub fn category(&self) -> Category {
        self.kind.category()
    }

    /// Whether the failure comes from where the call was made (credentials, network, KMS
    /// availability, quotas, permissions) rather than from the value or its key: the same
    /// value may decrypt elsewhere or later.
    pub fn is_environment(&self) -> bool {
        matches!(
            self.kind,
            KmsErrorKind::AccessDenied
                | KmsErrorKind::Unavailable
                | KmsErrorKind::Throttled
                | KmsErrorKind::Unreachable
                | KmsErrorKind::Credentials
                | KmsErrorKind::Configuration
                | KmsErrorKind::InvalidRequest
                | KmsErrorKind::Cancelled
                | KmsErrorKind::Deferred
        )
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
        f.write_str(&self.messages().0)
    }
}

impl KmsError {
    /// What to say about this failure, every kind in one table: (the operator's message: the
    /// key, region, action, KMS's own words and the fix; the tenant's, for an EncryptedSecret's
    /// status and events: what went wrong with which key and what to do, without what only the
    /// operator should see: the controller's role, the region, KMS's own words, which name the
    /// role on AWS).
    fn messages(&self) -> (String, String) {
        let key = self.key_text();
        let region = self.region_text();
        let action = self.action;
        let detail = if self.detail.is_empty() {
            String::new()
        } else if matches!(
            self.kind,
            KmsErrorKind::Unreachable | KmsErrorKind::Credentials
        ) {
            // KMS was never asked: the detail is the local root cause.
            format!(" ({})", self.detail)
        } else {
            format!(" (KMS said: {})", self.detail)
        };
        match self.kind {
            KmsErrorKind::AccessDenied => (format!("KMS denied {action} on key {key}{region}{detail}; grant {action} to the role kmseal runs as, in the key policy or its IAM policy (see docs/aws.md#iam)"), format!(
                "the controller is not allowed {action} with KMS key {key}; ask your platform team to grant it in the key policy (the controller's log has the details)"
            )),
            KmsErrorKind::KeyNotFound => (format!("KMS key {key} was not found{region}{detail}; check the key id or alias and the region (--region or AWS_REGION; a key ARN selects its own region)"), format!(
                "KMS key {key} does not exist where the controller looks for it; check the key, or ask your platform team"
            )),
            KmsErrorKind::KeyDisabled => (format!("KMS key {key}{region} is disabled or pending deletion{detail}; enable it (aws kms enable-key) or cancel its deletion (aws kms cancel-key-deletion), or re-seal under another key"), format!(
                "KMS key {key} is disabled or pending deletion; ask your platform team to enable it, or re-seal under another key"
            )),
            KmsErrorKind::Unavailable => (format!("KMS could not use key {key}{region} right now{detail}; this is usually temporary, retry later"), format!("KMS could not be used for {action} right now; the controller retries with backoff")),
            KmsErrorKind::InvalidCiphertext => (format!("KMS refused to decrypt with key {key}{region}{detail}: the value was altered, sealed for another namespace or name (encryption context), or sealed under another key; re-seal it with `kmseal seal` for this object"), format!(
                "KMS refused to decrypt with key {key}: the value was altered, sealed for another namespace, name or item, or under another key; re-seal it with `kmseal seal` for this object"
            )),
            KmsErrorKind::KeyUsage => (format!("KMS key {key}{region} cannot be used for {action}{detail}; use a symmetric ENCRYPT_DECRYPT key for `seal --key`, or an RSA ENCRYPT_DECRYPT key for `pubkey` and `seal --public-key`"), format!(
                "KMS key {key} cannot be used this way (wrong key type or usage); re-seal under a symmetric ENCRYPT_DECRYPT key"
            )),
            KmsErrorKind::Throttled => (format!("KMS throttled {action} on key {key}{region} and retries ran out{detail}; retry later, raise AWS_MAX_ATTEMPTS or set AWS_RETRY_MODE=adaptive, or ask AWS for a higher KMS request quota"), format!(
                "KMS throttled {action}; the controller retries with backoff"
            )),
            KmsErrorKind::Unreachable => (format!("could not reach KMS{region} for {action}{detail}; check the network, the region, and the endpoint (--endpoint or AWS_ENDPOINT_URL_KMS)"), format!("KMS could not be used for {action} right now; the controller retries with backoff")),
            KmsErrorKind::Credentials => (format!("no usable AWS credentials for {action}{detail}; provide them through IRSA (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE), a profile (AWS_PROFILE), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"), "the controller has no usable AWS credentials; ask your platform team (the controller's log has the details)".to_owned()),
            KmsErrorKind::Configuration => (format!("cannot call KMS for {action} on key {key}: {}",
                self.detail), "the controller's AWS settings cannot reach KMS (no region); ask your platform team (the controller's log has the details)".to_owned()),
            KmsErrorKind::InvalidRequest => (format!("KMS rejected {action} on key {key}{region} as invalid{detail}"), format!(
                "KMS rejected {action} with key {key} as invalid; re-seal the value, or ask your platform team (the controller's log has the details)"
            )),
            KmsErrorKind::WrongKey => (format!("KMS decrypted with key {}{region}, but the value names key {key}; the value was tampered with, refusing it",
                self.detail), format!(
                "KMS refused to decrypt with key {key}: the value was altered, sealed for another namespace, name or item, or under another key; re-seal it with `kmseal seal` for this object"
            )),
            KmsErrorKind::Cancelled => {
                let operator = format!("{action} on key {key} was not sent: the object changed or was deleted while it waited");
                (operator.clone(), operator)
            }
            KmsErrorKind::Deferred => {
                let operator = format!("{action} on key {key} was not sent yet: this namespace already has its share of KMS requests waiting");
                (operator.clone(), operator)
            }
            KmsErrorKind::Other => (format!("KMS {action} on key {key}{region} failed{detail}"), format!("KMS could not be used for {action} right now; the controller retries with backoff")),
        }
    }

    /// The failure as a tenant is told it (see [`KmsError::messages`]).
    pub fn tenant_message(&self) -> String {
        self.messages().1
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
        assert_eq!(e.category().as_str(), "access_denied");
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

    #[test]
    fn tenants_never_see_the_operators_detail() {
        let role = "arn:aws:sts::111122223333:assumed-role/kmseal-controller/i-0abc";
        for kind in [
            KmsErrorKind::AccessDenied,
            KmsErrorKind::KeyNotFound,
            KmsErrorKind::KeyDisabled,
            KmsErrorKind::Unavailable,
            KmsErrorKind::InvalidCiphertext,
            KmsErrorKind::KeyUsage,
            KmsErrorKind::Throttled,
            KmsErrorKind::Unreachable,
            KmsErrorKind::Credentials,
            KmsErrorKind::InvalidRequest,
            KmsErrorKind::Other,
        ] {
            let e = KmsError::new(
                kind,
                "kms:Decrypt",
                Some("arn:aws:kms:us-east-1:1:key/k"),
                format!("User: {role} is not authorized to perform: kms:Decrypt"),
            )
            .in_region("us-east-1");
            let text = e.tenant_message();
            assert!(!text.contains(role), "{kind:?}: {text}");
            assert!(!text.contains("not authorized"), "{kind:?}: {text}");
            assert!(e.to_string().contains(role), "the operator's text keeps it");
        }
    }
}
