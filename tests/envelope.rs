//! The envelope formats: known-answer vectors for v1 and v2 (computed independently by
//! `tests/vectors/generate.py` from docs/format.md), round trips, and negative tests.

use std::collections::BTreeMap;

use kmseal::binding::{Binding, Scope};
use kmseal::envelope::{self, DataKey, EnvelopeError, Header, Version, WrapAlgorithm};
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
    #[serde(default)]
    rewrapped: Vec<Rewrapped>,
    #[serde(default)]
    plain_contexts: Vec<PlainContext>,
}

#[derive(Deserialize)]
struct Vector {
    description: String,
    scope: String,
    algorithm: String,
    #[serde(alias = "sealed_at")]
    wrapped_at: u64,
    key_arn: String,
    #[serde(default)]
    key_material_id: Option<String>,
    wrapped_key_hex: String,
    data_key_hex: String,
    nonce_hex: String,
    namespace: String,
    name: String,
    item: String,
    plaintext_hex: String,
    encryption_context: BTreeMap<String, String>,
    header_hex: String,
    aad_hex: String,
    sealed_base64: String,
}

#[derive(Deserialize)]
struct Rewrapped {
    description: String,
    original: usize,
    wrapped_at: u64,
    key_arn: String,
    key_material_id: String,
    wrapped_key_hex: String,
    header_hex: String,
    sealed_base64: String,
}

#[derive(Deserialize)]
struct PlainContext {
    scope: String,
    namespace: String,
    name: String,
    item: String,
    encryption_context: BTreeMap<String, String>,
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn load(version: Version) -> Vectors {
    let text = match version {
        Version::V1 => include_str!("vectors/envelope_v1.json"),
        Version::V2 => include_str!("vectors/envelope_v2.json"),
    };
    serde_json::from_str::<Vectors>(text).unwrap()
}

fn header_of(version: Version, v: &Vector) -> Header {
    Header {
        version,
        scope: v.scope.parse().unwrap(),
        algorithm: match v.algorithm.as_str() {
            "kms-symmetric" => WrapAlgorithm::KmsSymmetric,
            "rsaes-oaep-sha256" => WrapAlgorithm::RsaOaepSha256,
            other => panic!("unknown algorithm {other}"),
        },
        wrapped_at: v.wrapped_at,
        key_arn: v.key_arn.clone(),
        key_material_id: v.key_material_id.clone().filter(|m| !m.is_empty()),
        wrapped_key: hex(&v.wrapped_key_hex),
    }
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn known_answer_vectors_seal_to_exact_bytes() {
    for (version, count) in [(Version::V1, 3), (Version::V2, 4)] {
        let vectors = load(version).vectors;
        assert_eq!(vectors.len(), count);
        for v in &vectors {
            let header = header_of(version, v);
            let what = format!("{version} {}", v.description);
            assert_eq!(header.encode().unwrap(), hex(&v.header_hex), "{what}");
            let binding = Binding::new(header.scope, &v.namespace, &v.name);
            let aad = match version {
                Version::V1 => binding.aad_v1(&hex(&v.header_hex), &v.item),
                Version::V2 => binding.aad_v2(&header.prefix(), &v.item),
            };
            assert_eq!(aad.unwrap(), hex(&v.aad_hex), "{what}");
            let context = match version {
                Version::V1 => binding.context_v1(),
                Version::V2 => binding.context_v2(),
            };
            assert_eq!(context, v.encryption_context, "{what}");
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
            assert_eq!(sealed, b64(&v.sealed_base64), "{what}");
        }
    }
}

#[test]
fn known_answer_vectors_open() {
    for version in [Version::V1, Version::V2] {
        for v in &load(version).vectors {
            let parsed = envelope::parse(&b64(&v.sealed_base64)).unwrap();
            assert_eq!(parsed.header, header_of(version, v), "{}", v.description);
            assert_eq!(parsed.header_bytes(), hex(&v.header_hex).as_slice());
            let key = DataKey::from_slice(&hex(&v.data_key_hex)).unwrap();
            let binding = parsed.binding_for(&v.namespace, &v.name);
            let plaintext = parsed.open(&key, &binding, &v.item).unwrap();
            assert_eq!(*plaintext, hex(&v.plaintext_hex), "{}", v.description);
        }
    }
}

/// v2 leaves the wrapping out of the AAD: a value re-wrapped elsewhere (by the independent
/// implementation) still opens with its data key, and the Rust re-wrap makes the same bytes.
#[test]
fn rewrapped_v2_values_open_with_the_same_data_key() {
    let vectors = load(Version::V2);
    assert!(!vectors.rewrapped.is_empty());
    for r in &vectors.rewrapped {
        let v = &vectors.vectors[r.original];
        let original = envelope::parse(&b64(&v.sealed_base64)).unwrap();
        let wrapping = Header {
            wrapped_at: r.wrapped_at,
            key_arn: r.key_arn.clone(),
            key_material_id: Some(r.key_material_id.clone()).filter(|m| !m.is_empty()),
            wrapped_key: hex(&r.wrapped_key_hex),
            ..original.header.clone()
        };
        assert_eq!(
            wrapping.encode().unwrap(),
            hex(&r.header_hex),
            "{}",
            r.description
        );
        let rewrapped = original.rewrapped(&wrapping).unwrap();
        assert_eq!(rewrapped, b64(&r.sealed_base64), "{}", r.description);
        let parsed = envelope::parse(&rewrapped).unwrap();
        let key = DataKey::from_slice(&hex(&v.data_key_hex)).unwrap();
        let binding = parsed.binding_for(&v.namespace, &v.name);
        assert_eq!(
            *parsed.open(&key, &binding, &v.item).unwrap(),
            hex(&v.plaintext_hex),
            "{}",
            r.description
        );
    }
}

#[test]
fn plain_item_contexts_match_the_document() {
    let vectors = load(Version::V2);
    assert_eq!(vectors.plain_contexts.len(), 3);
    for p in &vectors.plain_contexts {
        let binding = Binding::new(p.scope.parse().unwrap(), &p.namespace, &p.name);
        assert_eq!(
            binding.plain_context(&p.item),
            p.encryption_context,
            "{}",
            p.scope
        );
    }
}

struct Fixture {
    header: Header,
    key: DataKey,
    sealed: Vec<u8>,
}

fn fixture(scope: Scope) -> Fixture {
    fixture_of(Version::V2, scope)
}

fn fixture_of(version: Version, scope: Scope) -> Fixture {
    let header = Header {
        version,
        scope,
        algorithm: WrapAlgorithm::KmsSymmetric,
        wrapped_at: 1_764_000_000,
        key_arn: "arn:aws:kms:eu-west-1:111122223333:key/k".into(),
        key_material_id: (version == Version::V2).then(|| "a".repeat(64)),
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
fn every_changed_byte_is_rejected_in_v1() {
    let f = fixture_of(Version::V1, Scope::Strict);
    for i in 0..f.sealed.len() {
        let mut bytes = f.sealed.clone();
        bytes[i] ^= 0x01;
        let result = open(&f, &bytes, "prod", "db", "password");
        assert!(result.is_err(), "flipping byte {i} was not detected");
    }
}

/// In v2, GCM covers the prefix, the nonce and the ciphertext; a changed byte in the wrapping
/// either breaks the layout or changes what is sent to KMS (which then refuses it: the KMS
/// tests cover that), never the value.
#[test]
fn every_changed_byte_in_v2_is_rejected_or_left_to_kms() {
    let f = fixture(Scope::Strict);
    let wrapping = envelope::PREFIX_LEN..f.header.encode().unwrap().len();
    for i in 0..f.sealed.len() {
        let mut bytes = f.sealed.clone();
        bytes[i] ^= 0x01;
        let result = open(&f, &bytes, "prod", "db", "password");
        if wrapping.contains(&i) {
            if result.is_ok() {
                let parsed = envelope::parse(&bytes).unwrap();
                assert_ne!(
                    parsed.header, f.header,
                    "byte {i}: the wrapping KMS sees changed"
                );
                assert_eq!(parsed.header.prefix(), f.header.prefix());
            }
        } else {
            assert!(result.is_err(), "flipping byte {i} was not detected");
        }
    }
}

#[test]
fn a_v2_value_relabelled_v1_does_not_open() {
    let f = fixture(Scope::Strict);
    let mut bytes = f.sealed.clone();
    bytes[6] = 1;
    assert!(open(&f, &bytes, "prod", "db", "password").is_err());
    let v1 = fixture_of(Version::V1, Scope::Strict);
    let mut bytes = v1.sealed.clone();
    bytes[6] = 2;
    assert!(open(&v1, &bytes, "prod", "db", "password").is_err());
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
    bytes[6] = 3;
    let err = envelope::parse(&bytes).unwrap_err();
    assert_eq!(err, EnvelopeError::UnsupportedVersion(3));
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
    fn parser_never_panics_behind_valid_magic(
        version in 1u8..=2,
        tail in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = b"kmseal".to_vec();
        bytes.push(version);
        bytes.extend_from_slice(&tail);
        let _ = envelope::parse_header(&bytes);
        if let Ok(parsed) = envelope::parse(&bytes) {
            // Whatever parses must still refuse to decrypt without the right key.
            let binding = parsed.binding_for("prod", "db");
            prop_assert!(parsed.open(&DataKey::from_bytes([42; 32]), &binding, "password").is_err());
        }
    }

    /// Hostile v2 input shaped like the real thing: valid prefix and lengths, random fields.
    #[test]
    fn hostile_v2_headers_never_panic(
        scope in 0u8..4,
        algorithm in 0u8..4,
        arn_len in 0u16..2100,
        material_len in 0u16..200,
        wrapped_len in 0u16..6200,
        fill in any::<u8>(),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = b"kmseal\x02".to_vec();
        bytes.extend_from_slice(&[scope, algorithm]);
        bytes.extend_from_slice(&0u64.to_be_bytes());
        for len in [arn_len, material_len, wrapped_len] {
            bytes.extend_from_slice(&len.to_be_bytes());
            let mut field = vec![fill; usize::from(len)];
            if len >= 4 && fill == b'a' {
                field[..4].copy_from_slice(b"arn:");
            }
            bytes.extend_from_slice(&field);
        }
        bytes.extend_from_slice(&tail);
        if let Ok(parsed) = envelope::parse(&bytes) {
            let binding = parsed.binding_for("prod", "db");
            prop_assert!(parsed.open(&DataKey::from_bytes([42; 32]), &binding, "password").is_err());
        }
    }

    #[test]
    fn mutated_values_never_decrypt(v1 in any::<bool>(), index in 0usize..400, value in any::<u8>()) {
        let f = fixture_of(if v1 { Version::V1 } else { Version::V2 }, Scope::Strict);
        let mut bytes = f.sealed.clone();
        // In v2 the wrapping is KMS's to check (see above): mutate everything else.
        let wrapping = envelope::PREFIX_LEN..f.header.encode().unwrap().len();
        let covered: Vec<usize> = (0..bytes.len())
            .filter(|i| v1 || !wrapping.contains(i))
            .collect();
        let i = covered[index % covered.len()];
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
        ("largest base64 item", kmseal::api::MAX_ITEM_BASE64_LEN),
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
        "0 ≤ *M* ≤ 128",
        "1 ≤ *W* ≤ 6144",
        "\"kmseal.dev/v1\"",
        "\"kmseal.dev/v2\"",
        "`kmseal.dev/namespace`",
        "`kmseal.dev/name`",
        "`kmseal.dev/v`",
        "`kmseal.dev/item`",
        "at most 253 bytes",
        "at most 256 by the controller's",
    ] {
        assert!(doc.contains(needle), "docs/format.md lost {needle:?}");
    }
    assert!(
        doc.contains(&thousands(envelope::MAX_SEALED_LEN_V1)),
        "v1 limit"
    );
    assert_eq!(envelope::MAX_KEY_ARN_LEN, 2048);
    assert_eq!(envelope::MAX_KEY_MATERIAL_ID_LEN, 128);
    assert_eq!(envelope::MAX_WRAPPED_KEY_LEN, 6144);
    assert_eq!(kmseal::binding::MAX_BOUND_FIELD_LEN, 253);
    assert_eq!(kmseal::api::MAX_ITEMS, 256);
    assert_eq!(kmseal::binding::CONTEXT_NAMESPACE, "kmseal.dev/namespace");
    assert_eq!(kmseal::binding::CONTEXT_NAME, "kmseal.dev/name");
    assert_eq!(kmseal::binding::CONTEXT_VERSION, "kmseal.dev/v");
    assert_eq!(kmseal::binding::CONTEXT_ITEM, "kmseal.dev/item");
}
