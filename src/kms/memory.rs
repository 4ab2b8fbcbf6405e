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
    DecryptRequest, Decrypted, GeneratedKey, KeyDescription, Kms, KmsError, KmsErrorKind,
    PublicKeyInfo,
};
use crate::binding::EncryptionContext;
use crate::envelope::{DataKey, WrapAlgorithm};

const BLOB_MAGIC: &[u8] = b"memkms1";

enum Material {
    Symmetric(Zeroizing<[u8; 32]>),
    Rsa(Box<PrivateKey>),
}

struct Key {
    arn: String,
    material: Material,
    enabled: bool,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Key>,
    aliases: HashMap<String, String>,
    denied: HashSet<(&'static str, String)>,
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
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a symmetric key and returns its ARN.
    pub fn create_key(&self) -> String {
        let arn = self.new_arn("");
        let mut material = Zeroizing::new([0u8; 32]);
        // A test double: an OS RNG failure is a broken machine, not a case to handle.
        crate::random::fill(&mut *material).expect("OS random number generator");
        self.lock().keys.insert(
            arn.clone(),
            Key {
                arn: arn.clone(),
                material: Material::Symmetric(material),
                enabled: true,
            },
        );
        arn
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

    /// Takes back a [`MemoryKms::deny`].
    pub fn allow(&self, action: &'static str, arn: &str) {
        self.lock().denied.remove(&(action, arn.to_owned()));
    }

    pub fn total_calls(&self) -> u64 {
        self.calls.generate_data_key.load(Ordering::Relaxed)
            + self.calls.decrypt.load(Ordering::Relaxed)
            + self.calls.get_public_key.load(Ordering::Relaxed)
            + self.calls.describe_key.load(Ordering::Relaxed)
    }

    /// The tenant of every `Decrypt` so far, in arrival order.
    pub fn decrypt_tenants(&self) -> Vec<String> {
        self.lock().decrypt_tenants.clone()
    }

    /// A stable, fake key material id for a key (AWS reports 64 hex digits).
    fn material_id(arn: &str) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(arn.as_bytes())
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
        let Material::Symmetric(material) = &key.material else {
            return Err(KmsError::new(
                KmsErrorKind::KeyUsage,
                action,
                Some(key_id),
                "asymmetric keys cannot generate data keys",
            ));
        };
        let rng_failed = |_| {
            KmsError::new(
                KmsErrorKind::Unavailable,
                action,
                Some(key_id),
                "no randomness",
            )
        };
        let mut data_key = Zeroizing::new([0u8; 32]);
        crate::random::fill(&mut *data_key).map_err(rng_failed)?;
        let plaintext = DataKey::from_slice(&data_key[..])
            .map_err(|_| KmsError::new(KmsErrorKind::Other, action, Some(key_id), "key"))?;
        let mut nonce = [0u8; 12];
        crate::random::fill(&mut nonce).map_err(rng_failed)?;
        let sealed = Aes256Gcm::new((&**material).into())
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.expose(),
                    aad: &context_aad(context),
                },
            )
            .map_err(|_| KmsError::new(KmsErrorKind::Other, action, Some(key_id), "encrypt"))?;
        let mut wrapped = BLOB_MAGIC.to_vec();
        wrapped.extend_from_slice(&(key.arn.len() as u16).to_be_bytes());
        wrapped.extend_from_slice(key.arn.as_bytes());
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(&sealed);
        Ok(GeneratedKey {
            key_arn: key.arn.clone(),
            key_material_id: Some(Self::material_id(&key.arn)),
            plaintext,
            wrapped,
        })
    }

    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        self.calls.decrypt.fetch_add(1, Ordering::Relaxed);
        self.lock().decrypt_tenants.push(request.tenant.to_owned());
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
                let blob = request.ciphertext;
                let rest = blob.strip_prefix(BLOB_MAGIC).ok_or_else(invalid)?;
                if rest.len() < 2 {
                    return Err(invalid());
                }
                let arn_len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let rest = &rest[2..];
                if rest.len() < arn_len + 12 {
                    return Err(invalid());
                }
                let blob_arn = std::str::from_utf8(&rest[..arn_len]).map_err(|_| invalid())?;
                if let Some(key_id) = request.key_id {
                    let wanted = self.resolve(&state, key_id);
                    if wanted.as_deref() != Some(blob_arn) {
                        return Err(KmsError::new(
                            KmsErrorKind::InvalidCiphertext,
                            action,
                            Some(key_id),
                            "IncorrectKeyException: the ciphertext was encrypted under another key",
                        ));
                    }
                }
                let key = self.usable(&state, action, blob_arn)?;
                let Material::Symmetric(material) = &key.material else {
                    return Err(invalid());
                };
                let nonce: [u8; 12] = rest[arn_len..arn_len + 12]
                    .try_into()
                    .map_err(|_| invalid())?;
                let plaintext = Aes256Gcm::new((&**material).into())
                    .decrypt(
                        &Nonce::from(nonce),
                        Payload {
                            msg: &rest[arn_len + 12..],
                            aad: &context_aad(request.context),
                        },
                    )
                    .map_err(|_| invalid())?;
                Ok(Decrypted {
                    key_arn: key.arn.clone(),
                    plaintext: Zeroizing::new(plaintext),
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

    async fn describe_key(&self, key_id: &str) -> Result<KeyDescription, KmsError> {
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
        Ok(KeyDescription {
            key_arn: key.arn.clone(),
            key_state: if key.enabled { "Enabled" } else { "Disabled" }.to_owned(),
            current_key_material_id: matches!(key.material, Material::Symmetric(_))
                .then(|| Self::material_id(&key.arn)),
        })
    }
}
