//! Envelope format v1: known-answer vectors (computed independently by
//! `tests/vectors/generate.py` from docs/format.md), round trips, and negative tests.

use kmseal::binding::{Binding, Scope};
use kmseal::envelope::{self, DataKey, EnvelopeError, Header, WrapAlgorithm};
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    description: String,
    scope: String,
    algorithm: String,
    sealed_at: u64,
    key_arn: String,
    wrapped_key_hex: String,
    data_key_hex: String,
    nonce_hex: String,
    namespace: String,
    name: String,
    item: String,
    plaintext_hex: String,
    encryption_context: std::collections::BTreeMap<String, String>,
    header_hex: String,
    aad_hex: String,
    sealed_base64: String,
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("vectors/envelope_v1.json");
    serde_json::from_str::<Vectors>(text).unwrap().vectors
}

fn header_of(v: &Vector) -> Header {
    Header {
        scope: v.scope.parse().unwrap(),
        algorithm: match v.algorithm.as_str() {
            "kms-symmetric" => WrapAlgorithm::KmsSymmetric,
            "rsaes-oaep-sha256" => WrapAlgorithm::RsaOaepSha256,
            other => panic!("unknown algorithm {other}"),
        },
        sealed_at: v.sealed_at,
        key_arn: v.key_arn.clone(),
        wrapped_key: hex(&v.wrapped_key_hex),
    }
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn known_answer_vectors_seal_to_exact_bytes() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 3);
    for v in &vectors {
        let header = header_of(v);
        assert_eq!(
            header.encode().unwrap(),
            hex(&v.header_hex),
            "{}",
            v.description
        );
        let binding = Binding::new(header.scope, &v.namespace, &v.name);
        assert_eq!(
            binding.aad(&hex(&v.header_hex), &v.item),
            hex(&v.aad_hex),
            "{}",
            v.description
        );
        assert_eq!(
            binding.encryption_context(),
            v.encryption_context,
            "{}",
            v.description
        );
        let key = DataKey::from_slice(&hex(&v.data_key_hex)).unwrap();
        let nonce: [u8; 12] = hex(&v.nonce_hex).try_into().unwrap();
        let sealed = envelope::seal(
            &header,
            &key,
            nonce,
            &binding,
            &v.item,
            &hex(&v.plaintext_hex),
        )
        .unwrap();
        assert_eq!(sealed, b64(&v.sealed_base64), "{}", v.description);
    }
}

#[test]
fn known_answer_vectors_open() {
    for v in &vectors() {
        let parsed = envelope::parse(&b64(&v.sealed_base64)).unwrap();
        assert_eq!(parsed.header, header_of(v), "{}", v.description);
        assert_eq!(parsed.header_bytes(), hex(&v.header_hex).as_slice());
        let key = DataKey::from_slice(&hex(&v.data_key_hex)).unwrap();
        let binding = parsed.binding_for(&v.namespace, &v.name);
        let plaintext = parsed.open(&key, &binding, &v.item).unwrap();
        assert_eq!(*plaintext, hex(&v.plaintext_hex), "{}", v.description);
    }
}

struct Fixture {
    header: Header,
    key: DataKey,
    sealed: Vec<u8>,
}

fn fixture(scope: Scope) -> Fixture {
    let header = Header {
        scope,
        algorithm: WrapAlgorithm::KmsSymmetric,
        sealed_at: 1_764_000_000,
        key_arn: "arn:aws:kms:eu-west-1:111122223333:key/k".into(),
        wrapped_key: vec![9; 64],
    };
    let key = DataKey::from_bytes([42; 32]);
    let binding = Binding::new(scope, "prod", "db");
    let sealed = envelope::seal(&header, &key, [7; 12], &binding, "password", b"s3cr3t").unwrap();
    Fixture {
        header,
        key,
        sealed,
    }
}

fn open(
    f: &Fixture,
    bytes: &[u8],
    namespace: &str,
    name: &str,
    item: &str,
) -> Result<Vec<u8>, EnvelopeError> {
    let parsed = envelope::parse(bytes)?;
    let binding = parsed.binding_for(namespace, name);
    parsed.open(&f.key, &binding, item).map(|p| p.to_vec())
}

#[test]
fn round_trip_every_scope() {
    for scope in Scope::ALL {
        let f = fixture(scope);
        assert_eq!(
            open(&f, &f.sealed, "prod", "db", "password").unwrap(),
            b"s3cr3t"
        );
        assert_eq!(envelope::parse(&f.sealed).unwrap().header, f.header);
    }
}

#[test]
fn strict_value_moved_to_another_namespace_fails() {
    let f = fixture(Scope::Strict);
    assert_eq!(
        open(&f, &f.sealed, "dev", "db", "password"),
        Err(EnvelopeError::Tampered)
    );
}

#[test]
fn strict_value_moved_to_another_name_fails() {
    let f = fixture(Scope::Strict);
    assert_eq!(
        open(&f, &f.sealed, "prod", "db2", "password"),
        Err(EnvelopeError::Tampered)
    );
}

#[test]
fn value_moved_to_another_item_fails_in_every_scope() {
    for scope in Scope::ALL {
        let f = fixture(scope);
        assert_eq!(
            open(&f, &f.sealed, "prod", "db", "username"),
            Err(EnvelopeError::Tampered)
        );
    }
}

#[test]
fn namespace_scope_allows_rename_but_not_move() {
    let f = fixture(Scope::Namespace);
    assert_eq!(
        open(&f, &f.sealed, "prod", "renamed", "password").unwrap(),
        b"s3cr3t"
    );
    assert_eq!(
        open(&f, &f.sealed, "dev", "db", "password"),
        Err(EnvelopeError::Tampered)
    );
}

#[test]
fn cluster_scope_allows_move() {
    let f = fixture(Scope::Cluster);
    assert_eq!(
        open(&f, &f.sealed, "anywhere", "else", "password").unwrap(),
        b"s3cr3t"
    );
}

#[test]
fn every_changed_byte_is_rejected() {
    let f = fixture(Scope::Strict);
    for i in 0..f.sealed.len() {
        let mut bytes = f.sealed.clone();
        bytes[i] ^= 0x01;
        let result = open(&f, &bytes, "prod", "db", "password");
        assert!(result.is_err(), "flipping byte {i} was not detected");
    }
}

#[test]
fn changing_the_scope_byte_cannot_widen_a_strict_value() {
    let f = fixture(Scope::Strict);
    let mut bytes = f.sealed.clone();
    bytes[7] = Scope::Cluster.code();
    assert_eq!(
        open(&f, &bytes, "dev", "other", "password"),
        Err(EnvelopeError::Tampered)
    );
}

#[test]
fn every_truncation_is_rejected() {
    let f = fixture(Scope::Strict);
    for len in 0..f.sealed.len() {
        let result = open(&f, &f.sealed[..len], "prod", "db", "password");
        assert!(result.is_err(), "truncation to {len} bytes was accepted");
    }
}

#[test]
fn appended_bytes_are_rejected() {
    let f = fixture(Scope::Strict);
    let mut bytes = f.sealed.clone();
    bytes.push(0);
    assert_eq!(
        open(&f, &bytes, "prod", "db", "password"),
        Err(EnvelopeError::Tampered)
    );
}

#[test]
fn wrong_data_key_is_rejected() {
    let f = fixture(Scope::Strict);
    let parsed = envelope::parse(&f.sealed).unwrap();
    let binding = parsed.binding_for("prod", "db");
    assert_eq!(
        parsed.open(&DataKey::from_bytes([43; 32]), &binding, "password"),
        Err(EnvelopeError::Tampered)
    );
}

#[test]
fn unknown_version_says_upgrade() {
    let f = fixture(Scope::Strict);
    let mut bytes = f.sealed.clone();
    bytes[6] = 2;
    let err = envelope::parse(&bytes).unwrap_err();
    assert_eq!(err, EnvelopeError::UnsupportedVersion(2));
    assert!(err.to_string().contains("upgrade kmseal"));
}

#[test]
fn malformed_headers_have_clear_errors() {
    let f = fixture(Scope::Strict);
    let mut bytes = f.sealed.clone();
    bytes[7] = 9;
    assert_eq!(
        envelope::parse(&bytes).unwrap_err(),
        EnvelopeError::UnknownScope(9)
    );
    let mut bytes = f.sealed.clone();
    bytes[8] = 0;
    assert_eq!(
        envelope::parse(&bytes).unwrap_err(),
        EnvelopeError::UnknownAlgorithm(0)
    );
    assert_eq!(
        envelope::parse(b"nope").unwrap_err(),
        EnvelopeError::NotAnEnvelope
    );
    assert_eq!(
        envelope::parse(b"kmseal").unwrap_err(),
        EnvelopeError::Truncated("format version")
    );
    let oversized = vec![0u8; envelope::MAX_SEALED_LEN + 1];
    assert!(matches!(
        envelope::parse(&oversized),
        Err(EnvelopeError::TooLarge { .. })
    ));
}

#[test]
fn one_mebibyte_value_round_trips() {
    let header = fixture(Scope::Strict).header;
    let key = DataKey::from_bytes([1; 32]);
    let binding = Binding::new(Scope::Strict, "prod", "db");
    let value: Vec<u8> = (0..envelope::MAX_PLAINTEXT_LEN)
        .map(|i| (i % 251) as u8)
        .collect();
    let sealed = envelope::seal(&header, &key, [3; 12], &binding, "big", &value).unwrap();
    let parsed = envelope::parse(&sealed).unwrap();
    assert_eq!(*parsed.open(&key, &binding, "big").unwrap(), value);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = envelope::parse(&bytes);
    }

    #[test]
    fn parser_never_panics_behind_valid_magic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = b"kmseal\x01".to_vec();
        bytes.extend_from_slice(&tail);
        if let Ok(parsed) = envelope::parse(&bytes) {
            // Whatever parses must still refuse to decrypt without the right key.
            let binding = parsed.binding_for("prod", "db");
            prop_assert!(parsed.open(&DataKey::from_bytes([42; 32]), &binding, "password").is_err());
        }
    }

    #[test]
    fn mutated_values_never_decrypt(index in 0usize..200, value in any::<u8>()) {
        let f = fixture(Scope::Strict);
        let mut bytes = f.sealed.clone();
        let i = index % bytes.len();
        prop_assume!(bytes[i] != value);
        bytes[i] = value;
        prop_assert!(open(&f, &bytes, "prod", "db", "password").is_err());
    }
}

/// docs/format.md states the limits in words; they must be the code's.
#[test]
fn format_document_states_the_code_limits() {
    let doc = include_str!("../docs/format.md");
    let thousands = |n: usize| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    for (what, value) in [
        ("largest sealed value", envelope::MAX_SEALED_LEN),
        ("largest base64 item", kmseal::seal::MAX_ITEM_BASE64_LEN),
        ("largest value", envelope::MAX_PLAINTEXT_LEN),
    ] {
        assert!(
            doc.contains(&thousands(value)),
            "docs/format.md does not state the {what} ({})",
            thousands(value)
        );
    }
    for needle in [
        "| 0 | 6 | magic |",
        "`0` strict, `1` namespace, `2` cluster",
        "`1` KMS symmetric (`GenerateDataKey`), `2` RSAES_OAEP_SHA_256",
        "1 ≤ *A* ≤ 2048",
        "1 ≤ *W* ≤ 6144",
        "\"kmseal.dev/v1\"",
        "`kmseal.dev/namespace`",
        "`kmseal.dev/name`",
    ] {
        assert!(doc.contains(needle), "docs/format.md lost {needle:?}");
    }
    assert_eq!(envelope::MAX_KEY_ARN_LEN, 2048);
    assert_eq!(envelope::MAX_WRAPPED_KEY_LEN, 6144);
    assert_eq!(kmseal::binding::CONTEXT_NAMESPACE, "kmseal.dev/namespace");
    assert_eq!(kmseal::binding::CONTEXT_NAME, "kmseal.dev/name");
}
