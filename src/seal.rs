//! Secret → EncryptedSecret: the envelope and the KMS put together (opening is `crate::open`).
//!
//! Sealing makes one `GenerateDataKey` call (or none, with a public key) per Secret and uses
//! that data key for every item, each with a fresh nonce. It always writes envelope v2.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PublicKey};
use zeroize::Zeroizing;

use crate::api::MAX_ITEMS;
use crate::api::{EncryptedSecret, EncryptedSecretSpec, SecretTemplate, TemplateMetadata};
use crate::arn;
use crate::binding::{self, Binding, NameError, Scope};
use crate::category::Category;
use crate::envelope::{
    self, DATA_KEY_LEN, DataKey, EnvelopeError, Header, NONCE_LEN, Version, WrapAlgorithm,
};
use crate::kms::{Kms, KmsError};
use crate::policy::{self, PolicyError, SERVICE_ACCOUNT_TOKEN};
use crate::random::{Random, RandomError};

/// The smallest RSA modulus KMS issues (RSA_2048), in bytes.
const MIN_RSA_BYTES: usize = 256;

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
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl SealError {
    pub fn category(&self) -> Category {
        match self {
            SealError::Name(_) | SealError::Input(_) => Category::InvalidInput,
            SealError::PublicKey(_) => Category::InvalidPublicKey,
            SealError::Envelope { source, .. } => source.category(),
            SealError::Kms(e) => e.category(),
            SealError::Random(_) => Category::Random,
            SealError::Policy(e) => e.category(),
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

/// The most data (the values' bytes, together) the Kubernetes API server accepts in one
/// Secret (`MaxSecretSize` in its validation).
pub const MAX_SECRET_DATA_LEN: usize = 1024 * 1024;

/// Seals `items` for `namespace`/`name` under one fresh data key, as envelope v2. Returns the
/// key ARN and the sealed values (base64).
#[allow(clippy::too_many_arguments)]
pub async fn seal_items<K: Kms, R: Random>(
    wrapper: &Wrapper<'_, K>,
    scope: Scope,
    namespace: Option<&str>,
    name: &str,
    items: &BTreeMap<String, Zeroizing<Vec<u8>>>,
    rng: &mut R,
    wrapped_at: u64,
) -> Result<(String, BTreeMap<String, String>), SealError> {
    let namespace = target(scope, namespace, name)?;
    if items.len() > MAX_ITEMS {
        return Err(SealError::Input(format!(
            "the Secret has {} items; an EncryptedSecret holds at most {MAX_ITEMS}: split it",
            items.len()
        )));
    }
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
    let total: usize = items.values().map(|v| v.len()).sum();
    if total > MAX_SECRET_DATA_LEN {
        return Err(SealError::Input(format!(
            "the Secret's values add up to {total} bytes; Kubernetes refuses a Secret whose data is over {MAX_SECRET_DATA_LEN} bytes (1 MiB) in total: split it into several Secrets"
        )));
    }
    let binding = Binding::new(scope, namespace, name);
    let (key_arn, key_material_id, algorithm, data_key, wrapped_key) = match wrapper {
        Wrapper::Kms { kms, key_id } => {
            let generated = kms.generate_data_key(key_id, &binding.context_v2()).await?;
            (
                generated.key_arn,
                generated.key_material_id,
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
                None,
                WrapAlgorithm::RsaOaepSha256,
                data_key,
                wrapped,
            )
        }
    };
    // A material id that does not fit the format is a hint lost, not a reason to fail.
    let key_material_id = key_material_id.filter(|id| {
        id.len() <= envelope::MAX_KEY_MATERIAL_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
    });
    let header = Header {
        version: Version::V2,
        scope,
        algorithm,
        wrapped_at,
        key_arn: key_arn.clone(),
        key_material_id,
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

/// Refuses, before any KMS call, a Secret the controller or the API server would refuse for its
/// type: a ServiceAccount token; a type without the items it needs (`has`); a Docker config
/// that is not JSON (`value`: an item's plaintext, when at hand).
fn check_type<'v>(
    type_: Option<&str>,
    has: impl Fn(&str) -> bool,
    value: impl Fn(&str) -> Option<&'v [u8]>,
) -> Result<(), SealError> {
    let type_ = type_.unwrap_or("Opaque");
    if type_ == SERVICE_ACCOUNT_TOKEN {
        return Err(PolicyError::SecretTypeNotAllowed(type_.to_owned()).into());
    }
    policy::check_required_items(type_, has)?;
    let config = match type_ {
        "kubernetes.io/dockerconfigjson" => ".dockerconfigjson",
        "kubernetes.io/dockercfg" => ".dockercfg",
        _ => return Ok(()),
    };
    match value(config) {
        Some(v) if serde_json::from_slice::<serde_json::Value>(v).is_err() => {
            Err(SealError::Input(format!(
                "item {config} is not JSON, and the API server refuses a Secret of type {type_} whose {config} is not; check the file (e.g. docker login writes ~/.docker/config.json)"
            )))
        }
        _ => Ok(()),
    }
}

/// Seals a whole Secret into a new EncryptedSecret.
pub async fn seal_secret<K: Kms, R: Random>(
    wrapper: &Wrapper<'_, K>,
    secret: &PlainSecret,
    scope: Scope,
    rng: &mut R,
    wrapped_at: u64,
) -> Result<EncryptedSecret, SealError> {
    check_type(
        secret.type_.as_deref(),
        |i| secret.data.contains_key(i),
        |i| secret.data.get(i).map(|v| v.as_slice()),
    )?;
    let (key_arn, encrypted_data) = seal_items(
        wrapper,
        scope,
        secret.namespace.as_deref(),
        &secret.name,
        &secret.data,
        rng,
        wrapped_at,
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
            service_account_name: None,
            rotation: None,
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
    wrapped_at: u64,
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
    // The type after the merge, and the items it will have.
    let type_ = secret.type_.as_deref().or(existing
        .spec
        .template
        .as_ref()
        .and_then(|t| t.type_.as_deref()));
    check_type(
        type_,
        |i| secret.data.contains_key(i) || existing.spec.encrypted_data.contains_key(i),
        |i| secret.data.get(i).map(|v| v.as_slice()),
    )?;
    let (_, sealed) = seal_items(
        wrapper,
        scope,
        namespace.as_deref(),
        &name,
        &secret.data,
        rng,
        wrapped_at,
    )
    .await?;
    existing.spec.encrypted_data.extend(sealed);
    if existing.spec.encrypted_data.len() > MAX_ITEMS {
        return Err(SealError::Input(format!(
            "the merged EncryptedSecret would hold {} items; at most {MAX_ITEMS}: split it",
            existing.spec.encrypted_data.len()
        )));
    }
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
