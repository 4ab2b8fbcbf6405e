//! The envelope: one self-contained sealed value, formats v2 (written) and v1 (read).
//!
//! Pure: no I/O, no clock, no randomness of its own (the nonce and the wrap time are passed in),
//! so every byte it produces can be pinned by known-answer tests. `docs/format.md` describes the
//! layouts and what authenticates what; keep the two in step.
//!
//! ```text
//! v2:
//! offset        size   field
//! 0             6      magic "kmseal"
//! 6             1      format version (2)
//! 7             1      scope: 0 strict, 1 namespace, 2 cluster
//! 8             1      wrapping: 1 KMS symmetric (GenerateDataKey), 2 RSAES_OAEP_SHA_256
//! 9             8      wrapped at, Unix seconds, big-endian
//! 17            2      key ARN length A (1..=2048), big-endian
//! 19            A      key ARN (printable ASCII)
//! 19+A          2      key material id length M (0..=128), big-endian
//! 21+A          M      key material id (printable ASCII)
//! 21+A+M        2      wrapped data key length W (1..=6144), big-endian
//! 23+A+M        W      wrapped data key
//! 23+A+M+W      12     nonce
//! 35+A+M+W      n+16   AES-256-GCM ciphertext of the n-byte value (n <= 1 MiB), then the tag
//! ```
//! The first 9 bytes are the fixed prefix; the v2 AAD is the prefix followed by the binding
//! (see [`crate::binding::Binding::aad_v2`]), so the wrapping (bytes 9 up to the nonce) can be
//! replaced without touching the value. v1 has no key material id and its AAD covers the whole
//! header ([`crate::binding::Binding::aad_v1`]).

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::binding::{Binding, BindingError, Scope};
use crate::category::Category;

pub const MAGIC: &[u8; 6] = b"kmseal";
/// The version `kmseal seal` writes.
pub const VERSION: u8 = 2;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const DATA_KEY_LEN: usize = 32;
/// The Kubernetes limit on a whole Secret; no single value can be larger.
pub const MAX_PLAINTEXT_LEN: usize = 1024 * 1024;
pub const MAX_KEY_ARN_LEN: usize = 2048;
/// KMS reports key material ids as 64 hex digits; room to spare, and a bound.
pub const MAX_KEY_MATERIAL_ID_LEN: usize = 128;
/// KMS ciphertext blobs are at most 6144 bytes; RSA-4096 wraps into 512.
pub const MAX_WRAPPED_KEY_LEN: usize = 6144;
/// Magic, version, scope, algorithm: the part of the header that the v2 AAD covers.
pub const PREFIX_LEN: usize = 6 + 1 + 1 + 1;
const FIXED_HEADER_LEN: usize = PREFIX_LEN + 8;
/// The largest well-formed sealed value of any version, in bytes (a v2 one).
pub const MAX_SEALED_LEN: usize = FIXED_HEADER_LEN
    + 2
    + MAX_KEY_ARN_LEN
    + 2
    + MAX_KEY_MATERIAL_ID_LEN
    + 2
    + MAX_WRAPPED_KEY_LEN
    + NONCE_LEN
    + MAX_PLAINTEXT_LEN
    + TAG_LEN;
/// The largest well-formed v1 sealed value, in bytes.
pub const MAX_SEALED_LEN_V1: usize = MAX_SEALED_LEN - 2 - MAX_KEY_MATERIAL_ID_LEN;

/// An envelope format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// kmseal 0.1: the AAD covers the whole header. Opened, never written.
    V1,
    /// The AAD covers the fixed prefix only; the data key can be re-wrapped.
    V2,
}

impl Version {
    pub fn code(self) -> u8 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Version::V1),
            2 => Some(Version::V2),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.code())
    }
}

/// How the data key is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WrapAlgorithm {
    /// `GenerateDataKey` under a symmetric KMS key; unwrapped with `Decrypt` (SYMMETRIC_DEFAULT)
    /// and the binding's encryption context.
    KmsSymmetric,
    /// A local random data key wrapped with the RSA public key of an asymmetric KMS key
    /// (RSAES_OAEP_SHA_256); unwrapped with `Decrypt`. KMS takes no encryption context here.
    RsaOaepSha256,
}

impl WrapAlgorithm {
    pub fn code(self) -> u8 {
        match self {
            WrapAlgorithm::KmsSymmetric => 1,
            WrapAlgorithm::RsaOaepSha256 => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(WrapAlgorithm::KmsSymmetric),
            2 => Some(WrapAlgorithm::RsaOaepSha256),
            _ => None,
        }
    }

    /// The KMS `EncryptionAlgorithmSpec` name for `Decrypt`.
    pub fn kms_name(self) -> &'static str {
        match self {
            WrapAlgorithm::KmsSymmetric => "SYMMETRIC_DEFAULT",
            WrapAlgorithm::RsaOaepSha256 => "RSAES_OAEP_SHA_256",
        }
    }

    /// Whether KMS binds the wrapped key to an encryption context.
    pub fn uses_encryption_context(self) -> bool {
        matches!(self, WrapAlgorithm::KmsSymmetric)
    }
}

/// A plaintext AES-256 data key. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    pub fn from_bytes(bytes: [u8; DATA_KEY_LEN]) -> Self {
        DataKey(Zeroizing::new(bytes))
    }

    /// Copies a key out of a buffer, which must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        if bytes.len() != DATA_KEY_LEN {
            return Err(EnvelopeError::DataKeyLength(bytes.len()));
        }
        key.copy_from_slice(bytes);
        Ok(DataKey(key))
    }

    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// Everything that is not encrypted: the fixed prefix and the wrapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub scope: Scope,
    pub algorithm: WrapAlgorithm,
    /// Unix seconds when the data key was wrapped (v1: when the value was sealed); rotation
    /// uses it to find old values. Not authenticated in v2.
    pub wrapped_at: u64,
    /// The KMS key that wrapped the data key, as a full ARN. KMS checks it on `Decrypt`.
    pub key_arn: String,
    /// The key material KMS used, where it said (v2 only). A rotation hint, not authenticated.
    pub key_material_id: Option<String>,
    pub wrapped_key: Vec<u8>,
}

impl Header {
    /// The fixed prefix: magic, version, scope, algorithm.
    pub fn prefix(&self) -> [u8; PREFIX_LEN] {
        let mut prefix = [0u8; PREFIX_LEN];
        prefix[..6].copy_from_slice(MAGIC);
        prefix[6] = self.version.code();
        prefix[7] = self.scope.code();
        prefix[8] = self.algorithm.code();
        prefix
    }

    /// The exact header bytes that start the sealed value (everything before the nonce).
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        validate_key_arn(&self.key_arn)?;
        if self.wrapped_key.is_empty() || self.wrapped_key.len() > MAX_WRAPPED_KEY_LEN {
            return Err(EnvelopeError::WrappedKeyLength(self.wrapped_key.len()));
        }
        let material = match (self.version, &self.key_material_id) {
            (Version::V1, None) => None,
            (Version::V1, Some(_)) => return Err(EnvelopeError::InvalidKeyMaterialId),
            (Version::V2, material) => {
                let material = material.as_deref().unwrap_or("");
                validate_key_material_id(material)?;
                Some(material)
            }
        };
        let mut out = Vec::with_capacity(
            FIXED_HEADER_LEN
                + 6
                + self.key_arn.len()
                + material.map_or(0, str::len)
                + self.wrapped_key.len(),
        );
        out.extend_from_slice(&self.prefix());
        out.extend_from_slice(&self.wrapped_at.to_be_bytes());
        push_u16_prefixed(&mut out, self.key_arn.as_bytes())?;
        if let Some(material) = material {
            push_u16_prefixed(&mut out, material.as_bytes())?;
        }
        push_u16_prefixed(&mut out, &self.wrapped_key)?;
        Ok(out)
    }
}

fn push_u16_prefixed(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), EnvelopeError> {
    // Every caller has bounded the length far below u16::MAX; refuse rather than truncate.
    let len = u16::try_from(bytes.len()).map_err(|_| EnvelopeError::TooLarge {
        len: bytes.len(),
        max: usize::from(u16::MAX),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn validate_key_arn(arn: &str) -> Result<(), EnvelopeError> {
    let ok = arn.len() <= MAX_KEY_ARN_LEN
        && arn.starts_with("arn:")
        && arn.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(EnvelopeError::InvalidKeyArn)
    }
}

fn validate_key_material_id(id: &str) -> Result<(), EnvelopeError> {
    if id.len() <= MAX_KEY_MATERIAL_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(EnvelopeError::InvalidKeyMaterialId)
    }
}

/// A parsed sealed value.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    pub header: Header,
    header_bytes: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("header", &self.header)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Why a value could not be sealed or opened. None of these carry key or plaintext bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the value is truncated: it ends inside the {0}")]
    Truncated(&'static str),
    #[error("the value is not a kmseal envelope (it does not start with the kmseal magic bytes)")]
    NotAnEnvelope,
    #[error(
        "the value uses envelope format version {0}, but this kmseal understands only versions 1 and 2: upgrade kmseal"
    )]
    UnsupportedVersion(u8),
    #[error("the value names an unknown scope code {0}: it is corrupt or from a newer kmseal")]
    UnknownScope(u8),
    #[error(
        "the value names an unknown key-wrapping algorithm code {0}: it is corrupt or from a newer kmseal"
    )]
    UnknownAlgorithm(u8),
    #[error("the value's key ARN is empty, too long or not printable ASCII")]
    InvalidKeyArn,
    #[error("the value's key material id is too long or not printable ASCII")]
    InvalidKeyMaterialId,
    #[error("the value's wrapped data key has an invalid length ({0} bytes; 1 to 6144 allowed)")]
    WrappedKeyLength(usize),
    #[error("the value is {len} bytes, over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("a data key must be 32 bytes, got {0}")]
    DataKeyLength(usize),
    #[error("{0}")]
    Binding(#[from] BindingError),
    #[error("only v2 values can be re-wrapped; re-seal a v1 value")]
    NotRewrappable,
    #[error(
        "the value does not authenticate: it was altered, or it was sealed for another namespace, name or item; re-seal it with `kmseal seal` for this object"
    )]
    Tampered,
}

impl EnvelopeError {
    /// A fixed, low-cardinality category for metrics, conditions and events.
    pub fn category(&self) -> Category {
        match self {
            EnvelopeError::Tampered => Category::Tampered,
            EnvelopeError::UnsupportedVersion(_) => Category::UnsupportedVersion,
            EnvelopeError::TooLarge { .. } => Category::TooLarge,
            EnvelopeError::Binding(_) => Category::InvalidInput,
            EnvelopeError::Truncated(_)
            | EnvelopeError::NotAnEnvelope
            | EnvelopeError::UnknownScope(_)
            | EnvelopeError::UnknownAlgorithm(_)
            | EnvelopeError::InvalidKeyArn
            | EnvelopeError::InvalidKeyMaterialId
            | EnvelopeError::WrappedKeyLength(_)
            | EnvelopeError::DataKeyLength(_)
            | EnvelopeError::NotRewrappable => Category::Malformed,
        }
    }
}

fn aad(
    header: &Header,
    header_bytes: &[u8],
    binding: &Binding<'_>,
    item: &str,
) -> Result<Vec<u8>, EnvelopeError> {
    Ok(match header.version {
        Version::V1 => binding.aad_v1(header_bytes, item)?,
        Version::V2 => binding.aad_v2(&header.prefix(), item)?,
    })
}

/// Seals one value. `nonce` must be fresh for every call under the same data key. The header's
/// version decides the layout and AAD (`kmseal seal` always writes v2).
pub fn seal(
    header: &Header,
    data_key: &DataKey,
    nonce: [u8; NONCE_LEN],
    binding: &Binding<'_>,
    item: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(EnvelopeError::TooLarge {
            len: plaintext.len(),
            max: MAX_PLAINTEXT_LEN,
        });
    }
    let header_bytes = header.encode()?;
    let aad = aad(header, &header_bytes, binding, item)?;
    let cipher = Aes256Gcm::new(data_key.expose().into());
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        // AES-GCM only fails on inputs far beyond our size limit.
        .map_err(|_| EnvelopeError::TooLarge {
            len: plaintext.len(),
            max: MAX_PLAINTEXT_LEN,
        })?;
    let mut out = header_bytes;
    out.reserve(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// True when the bytes claim to be an envelope (as opposed to plain KMS ciphertext).
pub fn is_envelope(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EnvelopeError> {
        if self.rest.len() < n {
            return Err(EnvelopeError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, EnvelopeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<usize, EnvelopeError> {
        let b = self.take(2, what)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, EnvelopeError> {
        let b = self.take(8, what)?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(b);
        Ok(u64::from_be_bytes(bytes))
    }

    /// `len` bytes of text; `invalid` when they are not UTF-8.
    fn text(
        &mut self,
        len: usize,
        what: &'static str,
        invalid: EnvelopeError,
    ) -> Result<&'a str, EnvelopeError> {
        std::str::from_utf8(self.take(len, what)?).map_err(|_| invalid)
    }
}

/// Parses the header of a sealed value from its first bytes, which may be cut anywhere after
/// the header (so rotation and the key policy can read a header without the whole value).
/// Returns the header and its length in bytes.
pub fn parse_header(bytes: &[u8]) -> Result<(Header, usize), EnvelopeError> {
    if !bytes.starts_with(MAGIC) {
        return Err(if MAGIC.starts_with(bytes) {
            EnvelopeError::Truncated("magic bytes")
        } else {
            EnvelopeError::NotAnEnvelope
        });
    }
    let mut r = Reader {
        rest: &bytes[MAGIC.len()..],
    };
    let version_code = r.byte("format version")?;
    let version =
        Version::from_code(version_code).ok_or(EnvelopeError::UnsupportedVersion(version_code))?;
    let scope_code = r.byte("scope")?;
    let scope = Scope::from_code(scope_code).ok_or(EnvelopeError::UnknownScope(scope_code))?;
    let algorithm_code = r.byte("wrapping algorithm")?;
    let algorithm = WrapAlgorithm::from_code(algorithm_code)
        .ok_or(EnvelopeError::UnknownAlgorithm(algorithm_code))?;
    let wrapped_at = r.u64("wrap time")?;
    let arn_len = r.u16("key ARN length")?;
    if arn_len == 0 || arn_len > MAX_KEY_ARN_LEN {
        return Err(EnvelopeError::InvalidKeyArn);
    }
    let key_arn = r
        .text(arn_len, "key ARN", EnvelopeError::InvalidKeyArn)?
        .to_owned();
    validate_key_arn(&key_arn)?;
    let key_material_id = match version {
        Version::V1 => None,
        Version::V2 => {
            let len = r.u16("key material id length")?;
            if len > MAX_KEY_MATERIAL_ID_LEN {
                return Err(EnvelopeError::InvalidKeyMaterialId);
            }
            let id = r.text(len, "key material id", EnvelopeError::InvalidKeyMaterialId)?;
            validate_key_material_id(id)?;
            (!id.is_empty()).then(|| id.to_owned())
        }
    };
    let wrapped_len = r.u16("wrapped data key length")?;
    if wrapped_len == 0 || wrapped_len > MAX_WRAPPED_KEY_LEN {
        return Err(EnvelopeError::WrappedKeyLength(wrapped_len));
    }
    let wrapped_key = r.take(wrapped_len, "wrapped data key")?.to_vec();
    let header_len = bytes.len() - r.rest.len();
    Ok((
        Header {
            version,
            scope,
            algorithm,
            wrapped_at,
            key_arn,
            key_material_id,
            wrapped_key,
        },
        header_len,
    ))
}

/// Parses a sealed value. Never panics, whatever the input.
pub fn parse(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
    if bytes.len() > MAX_SEALED_LEN {
        return Err(EnvelopeError::TooLarge {
            len: bytes.len(),
            max: MAX_SEALED_LEN,
        });
    }
    let (header, header_len) = parse_header(bytes)?;
    let mut r = Reader {
        rest: &bytes[header_len..],
    };
    let nonce: [u8; NONCE_LEN] = r
        .take(NONCE_LEN, "nonce")?
        .try_into()
        .map_err(|_| EnvelopeError::Truncated("nonce"))?;
    if r.rest.len() < TAG_LEN {
        return Err(EnvelopeError::Truncated("authentication tag"));
    }
    // However it was made, a value over the limit never opens.
    if r.rest.len() > MAX_PLAINTEXT_LEN + TAG_LEN {
        return Err(EnvelopeError::TooLarge {
            len: r.rest.len() - TAG_LEN,
            max: MAX_PLAINTEXT_LEN,
        });
    }
    Ok(Envelope {
        header,
        header_bytes: bytes[..header_len].to_vec(),
        nonce,
        ciphertext: r.rest.to_vec(),
    })
}

impl Envelope {
    /// The exact header bytes as they were sealed.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_bytes
    }

    /// Decrypts the value for `item` of the object described by `binding`. The binding's scope
    /// must be the one in the header; callers build it with [`Envelope::binding_for`].
    pub fn open(
        &self,
        data_key: &DataKey,
        binding: &Binding<'_>,
        item: &str,
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let aad = aad(&self.header, &self.header_bytes, binding, item)?;
        let cipher = Aes256Gcm::new(data_key.expose().into());
        cipher
            .decrypt(
                &Nonce::from(self.nonce),
                Payload {
                    msg: &self.ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| EnvelopeError::Tampered)
    }

    /// The binding this value must satisfy when it is used for `namespace`/`name`.
    pub fn binding_for<'a>(&self, namespace: &'a str, name: &'a str) -> Binding<'a> {
        Binding::new(self.header.scope, namespace, name)
    }

    /// This v2 value with its wrapping replaced (as after a KMS `ReEncrypt`): the prefix,
    /// nonce and ciphertext stay byte for byte the same. The new header's version, scope and
    /// algorithm must be this value's.
    pub fn rewrapped(&self, wrapping: &Header) -> Result<Vec<u8>, EnvelopeError> {
        if self.header.version != Version::V2 || wrapping.prefix() != self.header.prefix() {
            return Err(EnvelopeError::NotRewrappable);
        }
        let mut out = wrapping.encode()?;
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: Version) -> Header {
        Header {
            version,
            scope: Scope::Strict,
            algorithm: WrapAlgorithm::KmsSymmetric,
            wrapped_at: 1_700_000_000,
            key_arn: "arn:aws:kms:us-east-1:000000000000:key/k".into(),
            key_material_id: (version == Version::V2).then(|| "m".repeat(64)),
            wrapped_key: vec![7; 40],
        }
    }

    #[test]
    fn round_trip_and_binding_in_both_versions() {
        for version in [Version::V1, Version::V2] {
            let key = DataKey::from_bytes([1; 32]);
            let b = Binding::new(Scope::Strict, "ns", "name");
            let sealed = seal(&header(version), &key, [2; 12], &b, "item", b"hello").unwrap();
            let env = parse(&sealed).unwrap();
            assert_eq!(env.header, header(version));
            assert_eq!(&*env.open(&key, &b, "item").unwrap(), b"hello");
            assert_eq!(
                env.open(&key, &b, "other"),
                Err(EnvelopeError::Tampered),
                "swapped item"
            );
            let moved = Binding::new(Scope::Strict, "ns2", "name");
            assert_eq!(env.open(&key, &moved, "item"), Err(EnvelopeError::Tampered));
        }
    }

    #[test]
    fn a_v2_value_survives_a_new_wrapping_and_a_v1_value_does_not() {
        let key = DataKey::from_bytes([1; 32]);
        let b = Binding::new(Scope::Strict, "ns", "name");
        let sealed = seal(&header(Version::V2), &key, [2; 12], &b, "item", b"hello").unwrap();
        let env = parse(&sealed).unwrap();
        let wrapping = Header {
            wrapped_at: 1_800_000_000,
            key_arn: "arn:aws:kms:us-east-1:000000000000:key/new".into(),
            key_material_id: None,
            wrapped_key: vec![9; 200],
            ..header(Version::V2)
        };
        let rewrapped = parse(&env.rewrapped(&wrapping).unwrap()).unwrap();
        assert_eq!(rewrapped.header, wrapping);
        assert_eq!(rewrapped.nonce, env.nonce);
        assert_eq!(rewrapped.ciphertext, env.ciphertext);
        assert_eq!(&*rewrapped.open(&key, &b, "item").unwrap(), b"hello");
        // Changing the scope is not a re-wrap.
        let widened = Header {
            scope: Scope::Cluster,
            ..wrapping.clone()
        };
        assert_eq!(env.rewrapped(&widened), Err(EnvelopeError::NotRewrappable));
        let v1 =
            parse(&seal(&header(Version::V1), &key, [2; 12], &b, "item", b"x").unwrap()).unwrap();
        assert_eq!(
            v1.rewrapped(&header(Version::V1)),
            Err(EnvelopeError::NotRewrappable)
        );
    }

    #[test]
    fn data_key_debug_is_redacted() {
        let key = DataKey::from_bytes([0xAB; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab,"));
        assert_eq!(shown, "DataKey([redacted])");
    }

    #[test]
    fn header_rejects_bad_fields() {
        for version in [Version::V1, Version::V2] {
            let mut h = header(version);
            h.key_arn = "not-an-arn".into();
            assert_eq!(h.encode(), Err(EnvelopeError::InvalidKeyArn));
            let mut h = header(version);
            h.wrapped_key = vec![];
            assert_eq!(h.encode(), Err(EnvelopeError::WrappedKeyLength(0)));
            let mut h = header(version);
            h.wrapped_key = vec![0; MAX_WRAPPED_KEY_LEN + 1];
            assert!(h.encode().is_err());
        }
        let mut h = header(Version::V2);
        h.key_material_id = Some("x".repeat(MAX_KEY_MATERIAL_ID_LEN + 1));
        assert_eq!(h.encode(), Err(EnvelopeError::InvalidKeyMaterialId));
        h.key_material_id = Some("with space".into());
        assert_eq!(h.encode(), Err(EnvelopeError::InvalidKeyMaterialId));
        let mut h = header(Version::V1);
        h.key_material_id = Some("m".into());
        assert_eq!(
            h.encode(),
            Err(EnvelopeError::InvalidKeyMaterialId),
            "v1 has no room for it"
        );
    }

    #[test]
    fn oversized_plaintext_is_refused_when_sealing_and_opening() {
        let key = DataKey::from_bytes([1; 32]);
        let b = Binding::new(Scope::Cluster, "a", "b");
        let big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(
            seal(&header(Version::V2), &key, [0; 12], &b, "i", &big),
            Err(EnvelopeError::TooLarge { .. })
        ));
        // Sealed by hand, past the limit: it still never opens.
        for version in [Version::V1, Version::V2] {
            let h = header(version);
            let header_bytes = h.encode().unwrap();
            let aad = aad(&h, &header_bytes, &b, "i").unwrap();
            let ciphertext = Aes256Gcm::new(key.expose().into())
                .encrypt(
                    &Nonce::from([0; 12]),
                    Payload {
                        msg: &big,
                        aad: &aad,
                    },
                )
                .unwrap();
            let mut bytes = header_bytes;
            bytes.extend_from_slice(&[0; 12]);
            bytes.extend_from_slice(&ciphertext);
            assert!(bytes.len() <= MAX_SEALED_LEN);
            assert!(matches!(parse(&bytes), Err(EnvelopeError::TooLarge { .. })));
        }
    }

    #[test]
    fn headers_parse_from_a_prefix_of_the_value() {
        let key = DataKey::from_bytes([1; 32]);
        let b = Binding::new(Scope::Strict, "ns", "name");
        let sealed = seal(&header(Version::V2), &key, [2; 12], &b, "item", b"hello").unwrap();
        let (parsed, len) = parse_header(&sealed).unwrap();
        assert_eq!(parsed, header(Version::V2));
        assert_eq!(parse_header(&sealed[..len]).unwrap().0, parsed);
        assert!(matches!(
            parse_header(&sealed[..len - 1]),
            Err(EnvelopeError::Truncated(_))
        ));
    }
}
