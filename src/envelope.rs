//! Envelope format v1: one self-contained sealed value.
//!
//! Pure: no I/O, no clock, no randomness of its own (the nonce and the seal time are passed in),
//! so every byte it produces can be pinned by known-answer tests. `docs/format.md` describes the
//! layout; keep the two in step.
//!
//! ```text
//! offset    size   field
//! 0         6      magic "kmseal"
//! 6         1      format version (1)
//! 7         1      scope: 0 strict, 1 namespace, 2 cluster
//! 8         1      wrapping: 1 KMS symmetric (GenerateDataKey), 2 RSAES_OAEP_SHA_256
//! 9         8      sealed at, Unix seconds, big-endian
//! 17        2      key ARN length A (1..=2048), big-endian
//! 19        A      key ARN (printable ASCII)
//! 19+A      2      wrapped data key length W (1..=6144), big-endian
//! 21+A      W      wrapped data key
//! 21+A+W    12     nonce
//! 33+A+W    n+16   AES-256-GCM ciphertext of the n-byte value, then the tag
//! ```
//! The header is bytes `0..21+A+W`; the AAD is the header followed by the binding
//! (see [`crate::binding::Binding::aad`]).

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::binding::{Binding, Scope};

pub const MAGIC: &[u8; 6] = b"kmseal";
pub const VERSION: u8 = 1;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const DATA_KEY_LEN: usize = 32;
/// The Kubernetes limit on a whole Secret; no single value can be larger.
pub const MAX_PLAINTEXT_LEN: usize = 1024 * 1024;
pub const MAX_KEY_ARN_LEN: usize = 2048;
/// KMS ciphertext blobs are at most 6144 bytes; RSA-4096 wraps into 512.
pub const MAX_WRAPPED_KEY_LEN: usize = 6144;
const FIXED_HEADER_LEN: usize = 6 + 1 + 1 + 1 + 8;
/// The largest well-formed sealed value, in bytes.
pub const MAX_SEALED_LEN: usize = FIXED_HEADER_LEN
    + 2
    + MAX_KEY_ARN_LEN
    + 2
    + MAX_WRAPPED_KEY_LEN
    + NONCE_LEN
    + MAX_PLAINTEXT_LEN
    + TAG_LEN;

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

/// Everything authenticated but not encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub scope: Scope,
    pub algorithm: WrapAlgorithm,
    /// Unix seconds; rotation uses it to find old values.
    pub sealed_at: u64,
    /// The KMS key that wrapped the data key, as a full ARN.
    pub key_arn: String,
    pub wrapped_key: Vec<u8>,
}

impl Header {
    /// The exact header bytes that start the sealed value and the AAD.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        validate_key_arn(&self.key_arn)?;
        if self.wrapped_key.is_empty() || self.wrapped_key.len() > MAX_WRAPPED_KEY_LEN {
            return Err(EnvelopeError::WrappedKeyLength(self.wrapped_key.len()));
        }
        let mut out =
            Vec::with_capacity(FIXED_HEADER_LEN + 4 + self.key_arn.len() + self.wrapped_key.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.scope.code());
        out.push(self.algorithm.code());
        out.extend_from_slice(&self.sealed_at.to_be_bytes());
        push_u16_prefixed(&mut out, self.key_arn.as_bytes());
        push_u16_prefixed(&mut out, &self.wrapped_key);
        Ok(out)
    }
}

fn push_u16_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Callers have bounded the length well below u16::MAX.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
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
        "the value uses envelope format version {0}, but this kmseal understands only version {VERSION}: upgrade kmseal"
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
    #[error("the value's wrapped data key has an invalid length ({0} bytes; 1 to 6144 allowed)")]
    WrappedKeyLength(usize),
    #[error("the value is {len} bytes, over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("a data key must be 32 bytes, got {0}")]
    DataKeyLength(usize),
    #[error(
        "the value does not authenticate: it was altered, or it was sealed for another namespace, name or item; re-seal it with `kmseal seal` for this object"
    )]
    Tampered,
}

impl EnvelopeError {
    /// A fixed, low-cardinality category for metrics, conditions and events.
    pub fn category(&self) -> &'static str {
        match self {
            EnvelopeError::Tampered => "tampered",
            EnvelopeError::UnsupportedVersion(_) => "unsupported_version",
            EnvelopeError::TooLarge { .. } => "too_large",
            _ => "malformed",
        }
    }
}

/// Seals one value. `nonce` must be fresh for every call under the same data key.
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
    let aad = binding.aad(&header_bytes, item);
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
}

/// Parses a sealed value. Never panics, whatever the input.
pub fn parse(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
    if bytes.len() > MAX_SEALED_LEN {
        return Err(EnvelopeError::TooLarge {
            len: bytes.len(),
            max: MAX_SEALED_LEN,
        });
    }
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
    let version = r.byte("format version")?;
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let scope_code = r.byte("scope")?;
    let scope = Scope::from_code(scope_code).ok_or(EnvelopeError::UnknownScope(scope_code))?;
    let algorithm_code = r.byte("wrapping algorithm")?;
    let algorithm = WrapAlgorithm::from_code(algorithm_code)
        .ok_or(EnvelopeError::UnknownAlgorithm(algorithm_code))?;
    let sealed_at = r.take(8, "seal time")?;
    let sealed_at = u64::from_be_bytes(
        sealed_at
            .try_into()
            .map_err(|_| EnvelopeError::Truncated("seal time"))?,
    );
    let arn_len = r.u16("key ARN length")?;
    if arn_len == 0 || arn_len > MAX_KEY_ARN_LEN {
        return Err(EnvelopeError::InvalidKeyArn);
    }
    let arn = r.take(arn_len, "key ARN")?;
    let key_arn = std::str::from_utf8(arn)
        .map_err(|_| EnvelopeError::InvalidKeyArn)?
        .to_owned();
    validate_key_arn(&key_arn)?;
    let wrapped_len = r.u16("wrapped data key length")?;
    if wrapped_len == 0 || wrapped_len > MAX_WRAPPED_KEY_LEN {
        return Err(EnvelopeError::WrappedKeyLength(wrapped_len));
    }
    let wrapped_key = r.take(wrapped_len, "wrapped data key")?.to_vec();
    let header_len = bytes.len() - r.rest.len();
    let nonce: [u8; NONCE_LEN] = r
        .take(NONCE_LEN, "nonce")?
        .try_into()
        .map_err(|_| EnvelopeError::Truncated("nonce"))?;
    if r.rest.len() < TAG_LEN {
        return Err(EnvelopeError::Truncated("authentication tag"));
    }
    Ok(Envelope {
        header: Header {
            scope,
            algorithm,
            sealed_at,
            key_arn,
            wrapped_key,
        },
        header_bytes: bytes[..header_len].to_vec(),
        nonce,
        ciphertext: r.rest.to_vec(),
    })
}

impl Envelope {
    /// The exact header bytes as they were sealed (authenticated as part of the AAD).
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
        let aad = binding.aad(&self.header_bytes, item);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            scope: Scope::Strict,
            algorithm: WrapAlgorithm::KmsSymmetric,
            sealed_at: 1_700_000_000,
            key_arn: "arn:aws:kms:us-east-1:000000000000:key/k".into(),
            wrapped_key: vec![7; 40],
        }
    }

    #[test]
    fn round_trip_and_binding() {
        let key = DataKey::from_bytes([1; 32]);
        let b = Binding::new(Scope::Strict, "ns", "name");
        let sealed = seal(&header(), &key, [2; 12], &b, "item", b"hello").unwrap();
        let env = parse(&sealed).unwrap();
        assert_eq!(env.header, header());
        assert_eq!(&*env.open(&key, &b, "item").unwrap(), b"hello");
        assert_eq!(
            env.open(&key, &b, "other"),
            Err(EnvelopeError::Tampered),
            "swapped item"
        );
        let moved = Binding::new(Scope::Strict, "ns2", "name");
        assert_eq!(env.open(&key, &moved, "item"), Err(EnvelopeError::Tampered));
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
        let mut h = header();
        h.key_arn = "not-an-arn".into();
        assert_eq!(h.encode(), Err(EnvelopeError::InvalidKeyArn));
        let mut h = header();
        h.wrapped_key = vec![];
        assert_eq!(h.encode(), Err(EnvelopeError::WrappedKeyLength(0)));
        let mut h = header();
        h.wrapped_key = vec![0; MAX_WRAPPED_KEY_LEN + 1];
        assert!(h.encode().is_err());
    }

    #[test]
    fn oversized_plaintext_is_refused() {
        let key = DataKey::from_bytes([1; 32]);
        let b = Binding::new(Scope::Cluster, "a", "b");
        let big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(
            seal(&header(), &key, [0; 12], &b, "i", &big),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }
}
