//! An in-memory KMS for unit tests and benchmarks.
//!
//! It enforces what matters to kmseal: encryption contexts, the key that must answer, key
//! state, access denial, and RSA-OAEP unwrapping. It counts calls so tests can assert cost,
//! and can add latency to model a remote KMS.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rsa::pkcs8::EncodePublicKey;
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PrivateKey};
use zeroize::Zeroizing;

use super::{
    DecryptRequest, Decrypted, GeneratedKey, KeyFacts, Kms, KmsError, KmsErrorKind, PublicKeyInfo,
    ReEncryptRequest, ReEncrypted,
};
use crate::binding::EncryptionContext;
use crate::envelope::{DataKey, WrapAlgorithm};

const BLOB_MAGIC: &[u8] = b"memkms1";

enum Material {
    /// Every material the key had, oldest first; the last is current.
    Symmetric(Vec<Version>),
    Rsa(Box<PrivateKey>),
}

/// One key material of a symmetric key.
struct Version {
    bytes: Zeroizing<[u8; 32]>,
    /// When it replaced the previous one (Unix seconds); `None` for the first.
    rotated_at: Option<u64>,
}

struct Key {
    arn: String,
    material: Material,
    enabled: bool,
    /// Scheduled for deletion at this time (Unix seconds): unusable, as in KMS.
    deletion_date: Option<u64>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Key>,
    aliases: HashMap<String, String>,
    denied: HashSet<(&'static str, String)>,
    /// Keys only these principals may use ("controller", or a tenant's role ARN), as a key
    /// policy would say.
    restricted: HashMap<String, HashSet<String>>,
    /// Whose credentials every `Decrypt` and `ReEncrypt` came with, in order.
    principals: Vec<String>,
    /// Whose credentials every `DescribeKey` and `ListKeyRotations` made through the `_as`
    /// calls came with, in order.
    lookup_principals: Vec<String>,
    /// The tenant of every `Decrypt`, in the order they arrived.
    decrypt_tenants: Vec<String>,
}

/// Call counters, by operation.
#[derive(Debug, Default)]
pub struct CallCounts {
    pub generate_data_key: AtomicU64,
    pub decrypt: AtomicU64,
    pub get_public_key: AtomicU64,
    pub describe_key: AtomicU64,
    pub re_encrypt: AtomicU64,
    pub list_key_rotations: AtomicU64,
}

pub struct MemoryKms {
    region: String,
    state: Mutex<State>,
    latency: Duration,
    next_id: AtomicU64,
    pub calls: CallCounts,
}

impl MemoryKms {
    pub fn new(region: &str) -> Self {
        MemoryKms {
            region: region.to_owned(),
            state: Mutex::new(State::default()),
            latency: Duration::ZERO,
            next_id: AtomicU64::new(1),
            calls: CallCounts::default(),
        }
    }

    /// Every call sleeps this long first, as a remote KMS would.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    fn new_arn(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!(
            "arn:aws:kms:{}:000000000000:key/{prefix}{n:08x}-0000-4000-8000-000000000000",
            self.region
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic in another test thread must not hide this test's result.
        crate::sync::lock(&self.state)
    }

    /// Creates a symmetric key and returns its ARN.
    pub fn create_key(&self) -> String {
        let arn = self.new_arn("");
        self.lock().keys.insert(
            arn.clone(),
            Key {
                arn: arn.clone(),
                material: Material::Symmetric(vec![Version {
                    bytes: random_material(),
                    rotated_at: None,
                }]),
                enabled: true,
                deletion_date: None,
            },
        );
        arn
    }

    /// Rotates a symmetric key's material at `at` (Unix seconds), as automatic rotation or
    /// `RotateKeyOnDemand` do: the key id stays, old ciphertexts still decrypt.
    pub fn rotate_key(&self, arn: &str, at: u64) {
        if let Some(Key {
            material: Material::Symmetric(versions),
            ..
        }) = self.lock().keys.get_mut(arn)
        {
            versions.push(Version {
                bytes: random_material(),
                rotated_at: Some(at),
            });
        }
    }

    /// Schedules a key for deletion at `date` (Unix seconds): it can no longer be used.
    pub fn schedule_deletion(&self, arn: &str, date: u64) {
        if let Some(key) = self.lock().keys.get_mut(arn) {
            key.deletion_date = Some(date);
        }
    }

    /// Adds an RSA key pair (ENCRYPT_DECRYPT) and returns its ARN.
    pub fn add_rsa_key(&self, private: PrivateKey) -> String {
        let arn = self.new_arn("");
        self.lock().keys.insert(
            arn.clone(),
            Key {
                arn: arn.clone(),
                material: Material::Rsa(Box::new(private)),
                enabled: true,
                deletion_date: None,
            },
        );
        arn
    }

    pub fn create_alias(&self, alias: &str, arn: &str) {
        self.lock().aliases.insert(alias.to_owned(), arn.to_owned());
    }

    pub fn set_enabled(&self, arn: &str, enabled: bool) {
        if let Some(key) = self.lock().keys.get_mut(arn) {
            key.enabled = enabled;
        }
    }

    /// Makes `action` (e.g. `kms:Decrypt`) on `arn` answer AccessDenied.
    pub fn deny(&self, action: &'static str, arn: &str) {
        self.lock().denied.insert((action, arn.to_owned()));
    }

    /// Lets only these principals use `arn` ("controller", or a tenant's role ARN).
    pub fn restrict(&self, arn: &str, principals: &[&str]) {
        self.lock().restricted.insert(
            arn.to_owned(),
            principals.iter().map(|p| (*p).to_owned()).collect(),
        );
    }

    /// Whose credentials every `Decrypt` and `ReEncrypt` so far came with ("controller" or
    /// a role ARN).
    pub fn principals(&self) -> Vec<String> {
        self.lock().principals.clone()
    }

    /// Whose credentials every `describe_key_as` and `last_rotation_as` came with.
    pub fn lookup_principals(&self) -> Vec<String> {
        self.lock().lookup_principals.clone()
    }

    /// Records a key lookup under `principal` and refuses it where the key is restricted.
    fn lookup_as(
        &self,
        action: &'static str,
        key_id: &str,
        principal: &crate::kms::Principal,
    ) -> Result<(), KmsError> {
        let mut state = self.lock();
        state
            .lookup_principals
            .push(Self::principal_name(principal));
        match self.resolve(&state, key_id) {
            Some(arn) => Self::check_principal(&state, action, &arn, principal),
            None => Ok(()),
        }
    }

    fn principal_name(principal: &crate::kms::Principal) -> String {
        principal.role_arn().unwrap_or("controller").to_owned()
    }

    /// AccessDenied unless `principal` may use the key `arn`.
    fn check_principal(
        state: &State,
        action: &'static str,
        arn: &str,
        principal: &crate::kms::Principal,
    ) -> Result<(), KmsError> {
        match state.restricted.get(arn) {
            Some(allowed) if !allowed.contains(&Self::principal_name(principal)) => {
                Err(KmsError::new(
                    KmsErrorKind::AccessDenied,
                    action,
                    Some(arn),
                    format!(
                        "User: {} is not authorized to perform: {action}",
                        Self::principal_name(principal)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Takes back a [`MemoryKms::deny`].
    pub fn allow(&self, action: &'static str, arn: &str) {
        self.lock().denied.remove(&(action, arn.to_owned()));
    }

    pub fn total_calls(&self) -> u64 {
        self.calls.generate_data_key.load(Ordering::Relaxed)
            + self.calls.decrypt.load(Ordering::Relaxed)
            + self.calls.get_public_key.load(Ordering::Relaxed)
            + self.calls.describe_key.load(Ordering::Relaxed)
            + self.calls.re_encrypt.load(Ordering::Relaxed)
            + self.calls.list_key_rotations.load(Ordering::Relaxed)
    }

    /// The tenant of every `Decrypt` so far, in arrival order.
    pub fn decrypt_tenants(&self) -> Vec<String> {
        self.lock().decrypt_tenants.clone()
    }

    /// A stable, fake id for a key's `version`th material (AWS reports 64 hex digits).
    fn material_id(arn: &str, version: usize) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(format!("{arn}#{version}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn resolve(&self, state: &State, key_id: &str) -> Option<String> {
        let name = key_id
            .split_once(":alias/")
            .map(|(_, a)| format!("alias/{a}"))
            .unwrap_or_else(|| key_id.to_owned());
        if let Some(arn) = state.aliases.get(&name) {
            return Some(arn.clone());
        }
        state
            .keys
            .values()
            .find(|k| k.arn == key_id || k.arn.ends_with(&format!("key/{key_id}")))
            .map(|k| k.arn.clone())
    }

    fn usable<'s>(
        &self,
        state: &'s State,
        action: &'static str,
        key_id: &str,
    ) -> Result<&'s Key, KmsError> {
        let err = |kind, detail: &str| {
            KmsError::new(kind, action, Some(key_id), detail).in_region(self.region.clone())
        };
        let arn = self
            .resolve(state, key_id)
            .ok_or_else(|| err(KmsErrorKind::KeyNotFound, "key does not exist"))?;
        if state.denied.contains(&(action, arn.clone())) {
            return Err(err(KmsErrorKind::AccessDenied, "not authorized"));
        }
        let key = &state.keys[&arn];
        if !key.enabled {
            return Err(err(KmsErrorKind::KeyDisabled, "key is disabled"));
        }
        if key.deletion_date.is_some() {
            return Err(err(
                KmsErrorKind::KeyDisabled,
                "KMSInvalidStateException: key is pending deletion",
            ));
        }
        Ok(key)
    }

    async fn pause(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

fn context_aad(context: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::new();
    for (k, v) in context {
        for field in [k, v] {
            aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
            aad.extend_from_slice(field.as_bytes());
        }
    }
    aad
}

fn random_material() -> Zeroizing<[u8; 32]> {
    let mut material = Zeroizing::new([0u8; 32]);
    // A test double: an OS RNG failure is a broken machine, not a case to handle.
    crate::random::fill(&mut *material).expect("OS random number generator");
    material
}

/// Wraps `plaintext` under the key's current material. Returns the blob (which names the key
/// and the material) and the material's id.
fn wrap(
    key: &Key,
    context: &EncryptionContext,
    plaintext: &[u8],
    action: &'static str,
    key_id: &str,
) -> Result<(Vec<u8>, String), KmsError> {
    let err = |kind, detail: &str| KmsError::new(kind, action, Some(key_id), detail);
    let Material::Symmetric(versions) = &key.material else {
        return Err(err(
            KmsErrorKind::KeyUsage,
            "asymmetric keys cannot generate data keys or be re-encrypted to",
        ));
    };
    let version = versions.len() - 1;
    let mut nonce = [0u8; 12];
    crate::random::fill(&mut nonce).map_err(|_| err(KmsErrorKind::Unavailable, "no randomness"))?;
    let sealed = Aes256Gcm::new((&*versions[version].bytes).into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &context_aad(context),
            },
        )
        .map_err(|_| err(KmsErrorKind::Other, "encrypt"))?;
    let mut wrapped = BLOB_MAGIC.to_vec();
    wrapped.extend_from_slice(&(key.arn.len() as u16).to_be_bytes());
    wrapped.extend_from_slice(key.arn.as_bytes());
    wrapped.extend_from_slice(&(version as u16).to_be_bytes());
    wrapped.extend_from_slice(&nonce);
    wrapped.extend_from_slice(&sealed);
    Ok((wrapped, MemoryKms::material_id(&key.arn, version)))
}

/// A blob's parts: the key ARN, the material version, the nonce and the sealed bytes.
fn parse_blob(blob: &[u8]) -> Option<(&str, usize, [u8; 12], &[u8])> {
    let rest = blob.strip_prefix(BLOB_MAGIC)?;
    let arn_len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let rest = rest.get(2..)?;
    let arn = std::str::from_utf8(rest.get(..arn_len)?).ok()?;
    let rest = rest.get(arn_len..)?;
    let version = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let nonce: [u8; 12] = rest.get(2..14)?.try_into().ok()?;
    Some((arn, version, nonce, rest.get(14..)?))
}

impl MemoryKms {
    /// Opens a symmetric blob as `Decrypt` (and `ReEncrypt`'s source side) does: the key it
    /// names must be the one asked for, usable, and the context must match.
    fn unwrap_blob<'s>(
        &self,
        state: &'s State,
        action: &'static str,
        key_id: Option<&str>,
        blob: &[u8],
        context: &EncryptionContext,
    ) -> Result<(&'s Key, Zeroizing<Vec<u8>>, String), KmsError> {
        let invalid = || {
            KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                action,
                key_id,
                "InvalidCiphertextException",
            )
        };
        let (blob_arn, version, nonce, sealed) = parse_blob(blob).ok_or_else(invalid)?;
        if let Some(key_id) = key_id {
            let wanted = self.resolve(state, key_id);
            if wanted.as_deref() != Some(blob_arn) {
                return Err(KmsError::new(
                    KmsErrorKind::InvalidCiphertext,
                    action,
                    Some(key_id),
                    "IncorrectKeyException: the ciphertext was encrypted under another key",
                ));
            }
        }
        let key = self.usable(state, action, blob_arn)?;
        let Material::Symmetric(versions) = &key.material else {
            return Err(invalid());
        };
        let material = versions.get(version).ok_or_else(invalid)?;
        let plaintext = Aes256Gcm::new((&*material.bytes).into())
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &context_aad(context),
                },
            )
            .map_err(|_| invalid())?;
        Ok((
            key,
            Zeroizing::new(plaintext),
            Self::material_id(&key.arn, version),
        ))
    }
}

impl Kms for MemoryKms {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        self.calls.generate_data_key.fetch_add(1, Ordering::Relaxed);
        self.pause().await;
        let action = "kms:GenerateDataKey";
        let state = self.lock();
        let key = self.usable(&state, action, key_id)?;
        let mut data_key = Zeroizing::new([0u8; 32]);
        crate::random::fill(&mut *data_key).map_err(|_| {
            KmsError::new(
                KmsErrorKind::Unavailable,
                action,
                Some(key_id),
                "no randomness",
            )
        })?;
        let plaintext = DataKey::from_slice(&data_key[..])
            .map_err(|_| KmsError::new(KmsErrorKind::Other, action, Some(key_id), "key"))?;
        let (wrapped, material_id) = wrap(key, context, plaintext.expose(), action, key_id)?;
        Ok(GeneratedKey {
            key_arn: key.arn.clone(),
            key_material_id: Some(material_id),
            plaintext,
            wrapped,
        })
    }

    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        self.calls.decrypt.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.lock();
            state.decrypt_tenants.push(request.tenant.to_owned());
            state
                .principals
                .push(Self::principal_name(request.principal));
        }
        self.pause().await;
        let action = "kms:Decrypt";
        let state = self.lock();
        let invalid = || {
            KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                action,
                request.key_id,
                "InvalidCiphertextException",
            )
        };
        match request.algorithm {
            WrapAlgorithm::KmsSymmetric => {
                let (key, plaintext, _) = self.unwrap_blob(
                    &state,
                    action,
                    request.key_id,
                    request.ciphertext,
                    request.context,
                )?;
                Self::check_principal(&state, action, &key.arn, request.principal)?;
                Ok(Decrypted {
                    key_arn: key.arn.clone(),
                    plaintext,
                })
            }
            WrapAlgorithm::RsaOaepSha256 => {
                let key_id = request.key_id.ok_or_else(|| {
                    KmsError::new(
                        KmsErrorKind::InvalidRequest,
                        action,
                        None,
                        "KeyId is required for asymmetric keys",
                    )
                })?;
                if !request.context.is_empty() {
                    return Err(KmsError::new(
                        KmsErrorKind::InvalidRequest,
                        action,
                        Some(key_id),
                        "asymmetric keys take no encryption context",
                    ));
                }
                let key = self.usable(&state, action, key_id)?;
                Self::check_principal(&state, action, &key.arn, request.principal)?;
                let Material::Rsa(private) = &key.material else {
                    return Err(KmsError::new(
                        KmsErrorKind::KeyUsage,
                        action,
                        Some(key_id),
                        "InvalidKeyUsageException: symmetric key used with an RSA algorithm",
                    ));
                };
                let plaintext = private
                    .decrypt(Oaep::<Sha256>::new(), request.ciphertext)
                    .map_err(|_| invalid())?;
                Ok(Decrypted {
                    key_arn: key.arn.clone(),
                    plaintext: Zeroizing::new(plaintext),
                })
            }
        }
    }

    async fn public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        self.calls.get_public_key.fetch_add(1, Ordering::Relaxed);
        self.pause().await;
        let action = "kms:GetPublicKey";
        let state = self.lock();
        let key = self.usable(&state, action, key_id)?;
        let Material::Rsa(private) = &key.material else {
            return Err(KmsError::new(
                KmsErrorKind::KeyUsage,
                action,
                Some(key_id),
                "UnsupportedOperationException: symmetric keys have no public key",
            ));
        };
        let der = private
            .to_public_key()
            .to_public_key_der()
            .map_err(|_| KmsError::new(KmsErrorKind::Other, action, Some(key_id), "encode"))?;
        Ok(PublicKeyInfo {
            key_arn: key.arn.clone(),
            der: der.as_bytes().to_vec(),
            key_spec: format!("RSA_{}", private.size() * 8),
            key_usage: "ENCRYPT_DECRYPT".into(),
            encryption_algorithms: vec!["RSAES_OAEP_SHA_1".into(), "RSAES_OAEP_SHA_256".into()],
        })
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KmsError> {
        self.calls.describe_key.fetch_add(1, Ordering::Relaxed);
        self.pause().await;
        let state = self.lock();
        let arn = self.resolve(&state, key_id).ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::KeyNotFound,
                "kms:DescribeKey",
                Some(key_id),
                "key does not exist",
            )
            .in_region(self.region.clone())
        })?;
        if state.denied.contains(&("kms:DescribeKey", arn.clone())) {
            return Err(KmsError::new(
                KmsErrorKind::AccessDenied,
                "kms:DescribeKey",
                Some(key_id),
                "not authorized",
            ));
        }
        let key = &state.keys[&arn];
        let key_state = match (key.deletion_date, key.enabled) {
            (Some(_), _) => "PendingDeletion",
            (None, true) => "Enabled",
            (None, false) => "Disabled",
        };
        Ok(KeyFacts {
            key_arn: key.arn.clone(),
            state: key_state.to_owned(),
            current_material_id: match &key.material {
                Material::Symmetric(versions) => {
                    Some(Self::material_id(&key.arn, versions.len() - 1))
                }
                Material::Rsa(_) => None,
            },
            last_rotation: None,
            deletion_date: key.deletion_date,
        })
    }

    async fn re_encrypt(&self, request: ReEncryptRequest<'_>) -> Result<ReEncrypted, KmsError> {
        self.calls.re_encrypt.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .principals
            .push(Self::principal_name(request.principal));
        self.pause().await;
        let state = self.lock();
        let destination_id = request.destination_key_id;
        let destination = self.usable(&state, "kms:ReEncryptTo", destination_id)?;
        Self::check_principal(
            &state,
            "kms:ReEncryptTo",
            &destination.arn,
            request.principal,
        )?;
        if let Some(source) = state.keys.get(request.source_key_id) {
            Self::check_principal(&state, "kms:ReEncryptFrom", &source.arn, request.principal)?;
        }
        let plaintext = match request.source_algorithm {
            WrapAlgorithm::KmsSymmetric => {
                self.unwrap_blob(
                    &state,
                    "kms:ReEncryptFrom",
                    Some(request.source_key_id),
                    request.ciphertext,
                    request.source_context,
                )?
                .1
            }
            WrapAlgorithm::RsaOaepSha256 => {
                let action = "kms:ReEncryptFrom";
                let source = self.usable(&state, action, request.source_key_id)?;
                let Material::Rsa(private) = &source.material else {
                    return Err(KmsError::new(
                        KmsErrorKind::KeyUsage,
                        action,
                        Some(request.source_key_id),
                        "InvalidKeyUsageException: symmetric key used with an RSA algorithm",
                    ));
                };
                Zeroizing::new(
                    private
                        .decrypt(Oaep::<Sha256>::new(), request.ciphertext)
                        .map_err(|_| {
                            KmsError::new(
                                KmsErrorKind::InvalidCiphertext,
                                action,
                                Some(request.source_key_id),
                                "InvalidCiphertextException",
                            )
                        })?,
                )
            }
        };
        let (wrapped, material_id) = wrap(
            destination,
            request.destination_context,
            &plaintext,
            "kms:ReEncryptTo",
            destination_id,
        )?;
        Ok(ReEncrypted {
            key_arn: destination.arn.clone(),
            key_material_id: Some(material_id),
            wrapped,
        })
    }

    async fn last_rotation(&self, key_id: &str) -> Result<Option<u64>, KmsError> {
        self.calls
            .list_key_rotations
            .fetch_add(1, Ordering::Relaxed);
        self.pause().await;
        let state = self.lock();
        let arn = self.resolve(&state, key_id).ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::KeyNotFound,
                "kms:ListKeyRotations",
                Some(key_id),
                "key does not exist",
            )
        })?;
        Ok(match &state.keys[&arn].material {
            Material::Symmetric(versions) => versions.iter().filter_map(|v| v.rotated_at).max(),
            Material::Rsa(_) => None,
        })
    }

    async fn describe_key_as(
        &self,
        key_id: &str,
        principal: &crate::kms::Principal,
    ) -> Result<KeyFacts, KmsError> {
        self.lookup_as("kms:DescribeKey", key_id, principal)?;
        self.describe_key(key_id).await
    }

    async fn last_rotation_as(
        &self,
        key_id: &str,
        principal: &crate::kms::Principal,
    ) -> Result<Option<u64>, KmsError> {
        self.lookup_as("kms:ListKeyRotations", key_id, principal)?;
        self.last_rotation(key_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(ns: &str) -> EncryptionContext {
        EncryptionContext::from([("kmseal.dev/namespace".to_owned(), ns.to_owned())])
    }

    fn decrypt<'a>(
        key: &'a str,
        blob: &'a [u8],
        context: &'a EncryptionContext,
    ) -> DecryptRequest<'a> {
        DecryptRequest::new(Some(key), blob, WrapAlgorithm::KmsSymmetric, context, "t")
    }

    fn re<'a>(
        ciphertext: &'a [u8],
        source: &'a str,
        destination: &'a str,
        source_context: &'a EncryptionContext,
        destination_context: &'a EncryptionContext,
    ) -> ReEncryptRequest<'a> {
        ReEncryptRequest {
            ciphertext,
            source_key_id: source,
            source_algorithm: WrapAlgorithm::KmsSymmetric,
            source_context,
            destination_key_id: destination,
            destination_context,
            principal: crate::kms::Principal::CONTROLLER,
        }
    }

    #[tokio::test]
    async fn rotated_material_still_decrypts_and_reencrypt_moves_to_the_current_one() {
        let kms = MemoryKms::new("eu-west-1");
        let key = kms.create_key();
        let ctx = context("a");
        let old = kms.generate_data_key(&key, &ctx).await.unwrap();
        let before = kms.describe_key(&key).await.unwrap();
        assert_eq!(before.current_material_id, old.key_material_id);
        assert_eq!(kms.last_rotation(&key).await.unwrap(), None);

        kms.rotate_key(&key, 1_800_000_000);
        let after = kms.describe_key(&key).await.unwrap();
        assert_ne!(after.current_material_id, before.current_material_id);
        assert_eq!(kms.last_rotation(&key).await.unwrap(), Some(1_800_000_000));
        // Old ciphertext still opens.
        let opened = kms
            .decrypt(decrypt(&key, &old.wrapped, &ctx))
            .await
            .unwrap();
        assert_eq!(&opened.plaintext[..], &old.plaintext.expose()[..]);

        // Same key, current material; the data key is unchanged, the context is checked.
        let blob = &old.wrapped;
        let moved = kms
            .re_encrypt(re(blob, &key, &key, &ctx, &ctx))
            .await
            .unwrap();
        assert_eq!(moved.key_material_id, after.current_material_id);
        let reopened = kms
            .decrypt(decrypt(&key, &moved.wrapped, &ctx))
            .await
            .unwrap();
        assert_eq!(&reopened.plaintext[..], &old.plaintext.expose()[..]);
        let err = kms
            .re_encrypt(re(blob, &key, &key, &context("b"), &ctx))
            .await
            .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::InvalidCiphertext);

        // Another key; permissions are checked on both sides.
        let other = kms.create_key();
        let moved = kms
            .re_encrypt(re(blob, &key, &other, &ctx, &ctx))
            .await
            .unwrap();
        assert_eq!(moved.key_arn, other);
        kms.deny("kms:ReEncryptTo", &other);
        let err = kms
            .re_encrypt(re(blob, &key, &other, &ctx, &ctx))
            .await
            .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::AccessDenied);
        kms.deny("kms:ReEncryptFrom", &key);
        kms.allow("kms:ReEncryptTo", &other);
        let err = kms
            .re_encrypt(re(blob, &key, &other, &ctx, &ctx))
            .await
            .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::AccessDenied);
        assert_eq!(kms.calls.re_encrypt.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn a_key_pending_deletion_says_when_and_refuses_use() {
        let kms = MemoryKms::new("eu-west-1");
        let key = kms.create_key();
        kms.schedule_deletion(&key, 1_900_000_000);
        let description = kms.describe_key(&key).await.unwrap();
        assert_eq!(description.state, "PendingDeletion");
        assert_eq!(description.deletion_date, Some(1_900_000_000));
        let err = kms
            .generate_data_key(&key, &context("a"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::KeyDisabled);
    }
}
