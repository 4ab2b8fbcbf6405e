//! Secret → EncryptedSecret and back: the envelope and the KMS put together.
//!
//! Sealing makes one `GenerateDataKey` call (or none, with a public key) per Secret and uses
//! that data key for every item, each with a fresh nonce. Opening makes one `Decrypt` call per
//! distinct wrapped data key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PublicKey};
use zeroize::Zeroizing;

use crate::api::{
    EncryptedSecret, EncryptedSecretSpec, PLAIN_SCOPE_ANNOTATION, SecretTemplate, TemplateMetadata,
};
use crate::arn;
use crate::binding::{self, Binding, EncryptionContext, NameError, Scope};
use crate::envelope::{
    self, DATA_KEY_LEN, DataKey, EnvelopeError, Header, NONCE_LEN, WrapAlgorithm,
};
use crate::kms::{DecryptRequest, Kms, KmsError, KmsErrorKind};
use crate::random::{Random, RandomError};

/// The smallest RSA modulus KMS issues (RSA_2048), in bytes.
const MIN_RSA_BYTES: usize = 256;
/// KMS ciphertext blobs are at most 6144 bytes.
pub const MAX_PLAIN_KMS_CIPHERTEXT: usize = 6144;
/// The longest base64 text any valid item can have.
pub const MAX_ITEM_BASE64_LEN: usize = envelope::MAX_SEALED_LEN.div_ceil(3) * 4;

/// A Secret in plaintext, on its way to being sealed. Values are zeroized on drop and never
/// printed by `Debug`.
#[derive(Clone, Default)]
pub struct PlainSecret {
    pub namespace: Option<String>,
    pub name: String,
    pub type_: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub immutable: Option<bool>,
    pub data: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for PlainSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("type", &self.type_)
            .field("items", &self.data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The public key of an asymmetric KMS key, for sealing offline.
#[derive(Clone)]
pub struct OfflineKey {
    pub key_arn: String,
    key: PublicKey,
}

impl fmt::Debug for OfflineKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfflineKey")
            .field("key_arn", &self.key_arn)
            .finish_non_exhaustive()
    }
}

impl OfflineKey {
    /// From a DER SubjectPublicKeyInfo (what KMS `GetPublicKey` returns).
    pub fn from_der(key_arn: &str, der: &[u8]) -> Result<Self, SealError> {
        if arn::KmsArn::parse(key_arn).is_none() {
            return Err(SealError::PublicKey(format!(
                "{key_arn:?} is not a KMS key ARN; the public key file must name its key with a `key-arn:` line, or pass --key ARN"
            )));
        }
        let key = PublicKey::from_public_key_der(der).map_err(|_| {
            SealError::PublicKey(
                "the public key is not an RSA SubjectPublicKeyInfo; export it again with `kmseal pubkey`"
                    .into(),
            )
        })?;
        // KMS RSA keys are 2048 bits or more; a smaller one did not come from KMS.
        if key.size() < MIN_RSA_BYTES {
            return Err(SealError::PublicKey(format!(
                "the RSA key has {} bits; KMS keys have at least 2048, export it again with `kmseal pubkey`",
                key.size() * 8
            )));
        }
        Ok(OfflineKey {
            key_arn: key_arn.to_owned(),
            key,
        })
    }

    fn wrap(&self, data_key: &DataKey) -> Result<Vec<u8>, SealError> {
        let mut rng = getrandom::SysRng;
        self.key
            .encrypt(&mut rng, Oaep::<Sha256>::new(), data_key.expose())
            .map_err(|e| SealError::PublicKey(format!("RSA-OAEP wrapping failed: {e}")))
    }
}

/// What wraps the data key.
pub enum Wrapper<'a, K> {
    /// `GenerateDataKey` under this KMS key.
    Kms { kms: &'a K, key_id: &'a str },
    /// A local data key wrapped with an RSA public key; no KMS call.
    Offline(&'a OfflineKey),
}

/// Why a Secret could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    PublicKey(String),
    #[error("item {item:?}: {source}")]
    Envelope { item: String, source: EnvelopeError },
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

impl SealError {
    pub fn category(&self) -> &'static str {
        match self {
            SealError::Name(_) | SealError::Input(_) => "invalid_input",
            SealError::PublicKey(_) => "invalid_public_key",
            SealError::Envelope { source, .. } => source.category(),
            SealError::Kms(e) => e.category(),
            SealError::Random(_) => "random",
        }
    }
}

/// Checks that the object can carry values of this scope and returns its namespace.
fn target<'a>(
    scope: Scope,
    namespace: Option<&'a str>,
    name: &'a str,
) -> Result<&'a str, SealError> {
    binding::validate_name(name)?;
    match namespace {
        Some(ns) => {
            binding::validate_namespace(ns)?;
            Ok(ns)
        }
        None if scope == Scope::Cluster => Ok(""),
        None => Err(SealError::Input(format!(
            "Secret {name:?} has no namespace, but scope {scope} binds values to one; set metadata.namespace or pass --namespace (or use --scope cluster)"
        ))),
    }
}

/// Seals `items` for `namespace`/`name` under one fresh data key. Returns the key ARN and the
/// sealed values (base64).
#[allow(clippy::too_many_arguments)]
pub async fn seal_items<K: Kms, R: Random>(
    wrapper: &Wrapper<'_, K>,
    scope: Scope,
    namespace: Option<&str>,
    name: &str,
    items: &BTreeMap<String, Zeroizing<Vec<u8>>>,
    rng: &mut R,
    sealed_at: u64,
) -> Result<(String, BTreeMap<String, String>), SealError> {
    let namespace = target(scope, namespace, name)?;
    for (item, value) in items {
        binding::validate_item_key(item)?;
        if value.len() > envelope::MAX_PLAINTEXT_LEN {
            return Err(SealError::Envelope {
                item: item.clone(),
                source: EnvelopeError::TooLarge {
                    len: value.len(),
                    max: envelope::MAX_PLAINTEXT_LEN,
                },
            });
        }
    }
    let binding = Binding::new(scope, namespace, name);
    let (key_arn, algorithm, data_key, wrapped_key) = match wrapper {
        Wrapper::Kms { kms, key_id } => {
            let generated = kms
                .generate_data_key(key_id, &binding.encryption_context())
                .await?;
            (
                generated.key_arn,
                WrapAlgorithm::KmsSymmetric,
                generated.plaintext,
                generated.wrapped,
            )
        }
        Wrapper::Offline(offline) => {
            let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
            rng.fill(&mut *bytes)?;
            let data_key = DataKey::from_slice(&*bytes).map_err(|source| SealError::Envelope {
                item: String::new(),
                source,
            })?;
            let wrapped = offline.wrap(&data_key)?;
            (
                offline.key_arn.clone(),
                WrapAlgorithm::RsaOaepSha256,
                data_key,
                wrapped,
            )
        }
    };
    let header = Header {
        scope,
        algorithm,
        sealed_at,
        key_arn: key_arn.clone(),
        wrapped_key,
    };
    let mut sealed = BTreeMap::new();
    for (item, value) in items {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)?;
        let bytes =
            envelope::seal(&header, &data_key, nonce, &binding, item, value).map_err(|source| {
                SealError::Envelope {
                    item: item.clone(),
                    source,
                }
            })?;
        sealed.insert(item.clone(), BASE64.encode(bytes));
    }
    Ok((key_arn, sealed))
}

fn template_of(secret: &PlainSecret) -> Option<SecretTemplate> {
    let metadata =
        (!secret.labels.is_empty() || !secret.annotations.is_empty()).then(|| TemplateMetadata {
            labels: secret.labels.clone(),
            annotations: secret.annotations.clone(),
        });
    let template = SecretTemplate {
        type_: secret.type_.clone(),
        metadata,
        immutable: secret.immutable,
    };
    (template != SecretTemplate::default()).then_some(template)
}

/// Seals a whole Secret into a new EncryptedSecret.
pub async fn seal_secret<K: Kms, R: Random>(
    wrapper: &Wrapper<'_, K>,
    secret: &PlainSecret,
    scope: Scope,
    rng: &mut R,
    sealed_at: u64,
) -> Result<EncryptedSecret, SealError> {
    let (key_arn, encrypted_data) = seal_items(
        wrapper,
        scope,
        secret.namespace.as_deref(),
        &secret.name,
        &secret.data,
        rng,
        sealed_at,
    )
    .await?;
    let key_id = match wrapper {
        // Keep the key as the user named it: an alias survives re-pointing during rotation.
        Wrapper::Kms { key_id, .. } => (*key_id).to_owned(),
        Wrapper::Offline(_) => key_arn,
    };
    Ok(EncryptedSecret::with_name(
        secret.namespace.as_deref(),
        &secret.name,
        EncryptedSecretSpec {
            encrypted_data,
            template: template_of(secret),
            key_id: Some(key_id),
        },
    ))
}

/// Adds or replaces the items of `secret` in `existing`, which needs no decrypt permission:
/// items not in `secret` keep their exact ciphertext.
pub async fn merge_into<K: Kms, R: Random>(
    wrapper: &Wrapper<'_, K>,
    mut existing: EncryptedSecret,
    secret: &PlainSecret,
    scope: Scope,
    rng: &mut R,
    sealed_at: u64,
) -> Result<EncryptedSecret, SealError> {
    let name = existing.metadata.name.clone().unwrap_or_default();
    let namespace = existing.metadata.namespace.clone();
    if !secret.name.is_empty() && secret.name != name {
        return Err(SealError::Input(format!(
            "the Secret is named {:?} but the EncryptedSecret to merge into is named {name:?}; seal into a new file instead",
            secret.name
        )));
    }
    if let (Some(given), Some(ns)) = (&secret.namespace, &namespace)
        && given != ns
    {
        return Err(SealError::Input(format!(
            "the Secret is in namespace {given:?} but the EncryptedSecret to merge into is in {ns:?}"
        )));
    }
    let (_, sealed) = seal_items(
        wrapper,
        scope,
        namespace.as_deref(),
        &name,
        &secret.data,
        rng,
        sealed_at,
    )
    .await?;
    existing.spec.encrypted_data.extend(sealed);
    if let Some(update) = template_of(secret) {
        let template = existing.spec.template.get_or_insert_with(Default::default);
        if update.type_.is_some() {
            template.type_ = update.type_;
        }
        if update.immutable.is_some() {
            template.immutable = update.immutable;
        }
        if let Some(meta) = update.metadata {
            let target = template.metadata.get_or_insert_with(Default::default);
            target.labels.extend(meta.labels);
            target.annotations.extend(meta.annotations);
        }
    }
    if existing.spec.key_id.is_none()
        && let Wrapper::Kms { key_id, .. } = wrapper
    {
        existing.spec.key_id = Some((*key_id).to_owned());
    }
    Ok(existing)
}

/// How an item was sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemFormat {
    /// A kmseal envelope (format v1).
    Envelope {
        scope: Scope,
        algorithm: WrapAlgorithm,
        sealed_at: u64,
    },
    /// Plain KMS ciphertext (`aws kms encrypt`), bound by the encryption context only.
    PlainKms { scope: Scope },
}

/// A decrypted item.
pub struct Opened {
    pub key_arn: String,
    pub format: ItemFormat,
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("key_arn", &self.key_arn)
            .field("format", &self.format)
            .field("plaintext", &"[redacted]")
            .finish()
    }
}

/// Why one item could not be opened. Never holds plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the value is not valid base64; it was damaged, copy it again from the sealed file")]
    Base64,
    #[error("the value is {len} bytes of base64, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error(
        "the value is neither a kmseal envelope nor plain KMS ciphertext ({len} bytes; KMS ciphertext is at most {MAX_PLAIN_KMS_CIPHERTEXT})"
    )]
    NotCiphertext { len: usize },
    #[error(
        "the EncryptedSecret has no {0}, but the value is bound to one; set metadata.{0} (or pass --namespace)"
    )]
    MissingTarget(&'static str),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(
        "the {PLAIN_SCOPE_ANNOTATION} annotation has an unknown value {0:?}: use strict, namespace or cluster"
    )]
    BadScopeAnnotation(String),
}

impl OpenError {
    pub fn category(&self) -> &'static str {
        match self {
            OpenError::Base64 | OpenError::NotCiphertext { .. } => "malformed",
            OpenError::TooLarge { .. } => "too_large",
            OpenError::MissingTarget(_) | OpenError::BadScopeAnnotation(_) => "invalid_input",
            OpenError::Envelope(e) => e.category(),
            OpenError::Kms(e) => e.category(),
        }
    }
}

enum Parsed {
    Envelope(envelope::Envelope),
    Plain(Vec<u8>),
}

fn decode_item(value: &str) -> Result<Parsed, OpenError> {
    let trimmed = value.trim();
    if trimmed.len() > MAX_ITEM_BASE64_LEN {
        return Err(OpenError::TooLarge {
            len: trimmed.len(),
            max: MAX_ITEM_BASE64_LEN,
        });
    }
    let bytes = BASE64.decode(trimmed).map_err(|_| OpenError::Base64)?;
    if envelope::is_envelope(&bytes) {
        return Ok(Parsed::Envelope(envelope::parse(&bytes)?));
    }
    if bytes.is_empty() || bytes.len() > MAX_PLAIN_KMS_CIPHERTEXT {
        return Err(OpenError::NotCiphertext { len: bytes.len() });
    }
    Ok(Parsed::Plain(bytes))
}

/// The scope all envelope items of `es` share, if they share one.
pub fn common_scope(es: &EncryptedSecret) -> Option<Scope> {
    let mut scopes = es
        .spec
        .encrypted_data
        .values()
        .filter_map(|value| match decode_item(value) {
            Ok(Parsed::Envelope(env)) => Some(env.header.scope),
            _ => None,
        });
    let first = scopes.next()?;
    scopes.all(|s| s == first).then_some(first)
}

/// The scope for plain KMS ciphertext items of this EncryptedSecret.
pub fn plain_scope(es: &EncryptedSecret) -> Result<Scope, OpenError> {
    match es
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PLAIN_SCOPE_ANNOTATION))
    {
        None => Ok(Scope::Strict),
        Some(value) => value
            .parse()
            .map_err(|_| OpenError::BadScopeAnnotation(value.chars().take(40).collect())),
    }
}

fn require_target(binding: &Binding<'_>) -> Result<(), OpenError> {
    if binding.bound_namespace().is_some_and(str::is_empty) {
        return Err(OpenError::MissingTarget("namespace"));
    }
    if binding.bound_name().is_some_and(str::is_empty) {
        return Err(OpenError::MissingTarget("name"));
    }
    Ok(())
}

/// Decrypts every item of `es` as the Secret `namespace`/`name` (normally the EncryptedSecret's
/// own). Items fail independently; the result has one entry per item, in item order.
pub async fn open_all<K: Kms>(
    kms: &K,
    es: &EncryptedSecret,
    namespace: &str,
    name: &str,
) -> BTreeMap<String, Result<Opened, OpenError>> {
    type GroupKey = (WrapAlgorithm, String, Vec<u8>, Scope);
    let mut results = BTreeMap::new();
    let mut envelopes = Vec::new();
    for (item, value) in &es.spec.encrypted_data {
        match decode_item(value) {
            Ok(Parsed::Envelope(env)) => envelopes.push((item.clone(), env)),
            Ok(Parsed::Plain(blob)) => {
                let outcome = open_plain(kms, es, namespace, name, &blob).await;
                results.insert(item.clone(), outcome);
            }
            Err(e) => {
                results.insert(item.clone(), Err(e));
            }
        }
    }
    // One Decrypt per distinct wrapped key (and binding, which the context depends on).
    let mut unwrapped: HashMap<GroupKey, Result<(String, DataKey), OpenError>> = HashMap::new();
    for (item, env) in envelopes {
        let binding = env.binding_for(namespace, name);
        let outcome = match require_target(&binding) {
            Err(e) => Err(e),
            Ok(()) => {
                let group: GroupKey = (
                    env.header.algorithm,
                    env.header.key_arn.clone(),
                    env.header.wrapped_key.clone(),
                    env.header.scope,
                );
                if !unwrapped.contains_key(&group) {
                    let key = unwrap_data_key(kms, &env, &binding).await;
                    unwrapped.insert(group.clone(), key);
                }
                match &unwrapped[&group] {
                    Err(e) => Err(e.clone()),
                    Ok((answered, data_key)) => env
                        .open(data_key, &binding, &item)
                        .map(|plaintext| Opened {
                            key_arn: answered.clone(),
                            format: ItemFormat::Envelope {
                                scope: env.header.scope,
                                algorithm: env.header.algorithm,
                                sealed_at: env.header.sealed_at,
                            },
                            plaintext,
                        })
                        .map_err(OpenError::from),
                }
            }
        };
        results.insert(item, outcome);
    }
    results
}

async fn unwrap_data_key<K: Kms>(
    kms: &K,
    env: &envelope::Envelope,
    binding: &Binding<'_>,
) -> Result<(String, DataKey), OpenError> {
    let context = if env.header.algorithm.uses_encryption_context() {
        binding.encryption_context()
    } else {
        EncryptionContext::new()
    };
    let decrypted = kms
        .decrypt(DecryptRequest {
            key_id: Some(&env.header.key_arn),
            ciphertext: &env.header.wrapped_key,
            algorithm: env.header.algorithm,
            context: &context,
        })
        .await?;
    if !arn::same_key(&env.header.key_arn, &decrypted.key_arn) {
        return Err(OpenError::Kms(KmsError::new(
            KmsErrorKind::WrongKey,
            "kms:Decrypt",
            Some(&env.header.key_arn),
            decrypted.key_arn.clone(),
        )));
    }
    let data_key = DataKey::from_slice(&decrypted.plaintext)?;
    Ok((decrypted.key_arn, data_key))
}

async fn open_plain<K: Kms>(
    kms: &K,
    es: &EncryptedSecret,
    namespace: &str,
    name: &str,
    blob: &[u8],
) -> Result<Opened, OpenError> {
    let scope = plain_scope(es)?;
    let binding = Binding::new(scope, namespace, name);
    require_target(&binding)?;
    let context = binding.encryption_context();
    let decrypted = kms
        .decrypt(DecryptRequest {
            // A symmetric blob names its key. `spec.keyId` is the rotation target and comes
            // from the same hands as the value, so passing it would add no protection.
            key_id: None,
            ciphertext: blob,
            algorithm: WrapAlgorithm::KmsSymmetric,
            context: &context,
        })
        .await?;
    Ok(Opened {
        key_arn: decrypted.key_arn,
        format: ItemFormat::PlainKms { scope },
        plaintext: decrypted.plaintext,
    })
}
