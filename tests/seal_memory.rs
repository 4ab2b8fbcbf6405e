//! Sealing and opening whole Secrets against the in-memory KMS double: KMS call counts,
//! bindings, merging, offline RSA sealing, and failure categories.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kmseal::api::{EncryptedSecret, PLAIN_SCOPE_ANNOTATION};
use kmseal::binding::{EncryptionContext, Scope};
use kmseal::envelope;
use kmseal::kms::{
    DecryptRequest, Decrypted, GeneratedKey, KeyFacts, Kms, KmsError, MemoryKms, PublicKeyInfo,
    ReEncryptRequest, ReEncrypted,
};
use kmseal::open::{self, ItemFormat, OpenError, Opened, Rules};
use kmseal::policy::{KeyPolicy, ResolvedAliases};
use kmseal::random::{Random, RandomError};
use kmseal::seal::{self, OfflineKey, PlainSecret, Wrapper};
use zeroize::Zeroizing;

/// Deterministic bytes, so sealed output is reproducible.
struct Counter(u8);
impl Random for Counter {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomError> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

fn secret(items: &[(&str, &[u8])]) -> PlainSecret {
    PlainSecret {
        namespace: Some("prod".into()),
        name: "db".into(),
        // A type of its own: it requires no items (kubernetes.io/basic-auth would need a
        // username or a password, and most of these Secrets have neither).
        type_: Some("example.com/login".into()),
        labels: BTreeMap::from([("team".into(), "payments".into())]),
        data: items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Zeroizing::new(v.to_vec())))
            .collect(),
        ..PlainSecret::default()
    }
}

/// Seals `items` as prod/db, strict scope, under `key`.
async fn seal_strict(kms: &MemoryKms, key: &str, items: &[(&str, &[u8])]) -> EncryptedSecret {
    let wrapper = Wrapper::Kms { kms, key_id: key };
    seal::seal_secret(&wrapper, &secret(items), Scope::Strict, &mut Counter(0), 1)
        .await
        .unwrap()
}

/// Every item opened on its own, as the CLI does (no key policy: the caller's IAM decides).
async fn open_each(
    kms: &impl Kms,
    es: &EncryptedSecret,
    namespace: &str,
    name: &str,
) -> BTreeMap<String, Result<Opened, OpenError>> {
    let (policy, aliases) = (KeyPolicy::unrestricted(), ResolvedAliases::new());
    let rules = Rules {
        policy: &policy,
        aliases: &aliases,
    };
    open::open_each(kms, es, namespace, name, rules).await
}

async fn open_ok(kms: &impl Kms, es: &EncryptedSecret) -> BTreeMap<String, Vec<u8>> {
    open_each(kms, es, "prod", "db")
        .await
        .into_iter()
        .map(|(k, v)| (k, v.unwrap().plaintext.to_vec()))
        .collect()
}

#[tokio::test]
async fn one_generate_data_key_per_seal_and_one_decrypt_per_wrapped_key() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let wrapper = Wrapper::Kms {
        kms: &kms,
        key_id: &key,
    };
    let input = secret(&[
        ("username", b"admin"),
        ("password", b"s3cr3t"),
        ("port", b"5432"),
    ]);
    let es = seal::seal_secret(&wrapper, &input, Scope::Strict, &mut Counter(0), 1)
        .await
        .unwrap();
    assert_eq!(kms.calls.generate_data_key.load(Ordering::Relaxed), 1);
    assert_eq!(es.spec.encrypted_data.len(), 3);
    // Each item has its own nonce (offset of the nonce: after the header).
    let nonces: std::collections::BTreeSet<Vec<u8>> = es
        .spec
        .encrypted_data
        .values()
        .map(|v| {
            let env = envelope::parse(&BASE64.decode(v).unwrap()).unwrap();
            env.nonce.to_vec()
        })
        .collect();
    assert_eq!(nonces.len(), 3);
    let opened = open_ok(&kms, &es).await;
    assert_eq!(opened["password"], b"s3cr3t");
    assert_eq!(opened["username"], b"admin");
    assert_eq!(
        kms.calls.decrypt.load(Ordering::Relaxed),
        1,
        "one wrapped key, one Decrypt"
    );
    assert_eq!(es.spec.key_id.as_deref(), Some(key.as_str()));
    let template = es.spec.template.as_ref().unwrap();
    assert_eq!(template.type_.as_deref(), Some("example.com/login"));
    assert_eq!(
        template.metadata.as_ref().unwrap().labels["team"],
        "payments"
    );
}

#[tokio::test]
async fn seal_is_deterministic_given_randomness_and_time() {
    // The memory KMS wraps with its own randomness, so compare everything after the header.
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let wrapper = Wrapper::Kms {
        kms: &kms,
        key_id: &key,
    };
    let input = secret(&[("a", b"1")]);
    let es = seal::seal_secret(&wrapper, &input, Scope::Strict, &mut Counter(100), 7)
        .await
        .unwrap();
    let env = envelope::parse(&BASE64.decode(&es.spec.encrypted_data["a"]).unwrap()).unwrap();
    assert_eq!(
        env.nonce,
        [101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112]
    );
    assert_eq!(env.header.wrapped_at, 7);
    assert_eq!(env.header.version, envelope::Version::V2);
    assert!(
        env.header.key_material_id.is_some(),
        "the material id KMS reported is kept"
    );
}

#[tokio::test]
async fn moved_values_fail_through_kms_context_and_aad() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let es = seal_strict(&kms, &key, &[("password", b"x")]).await;
    for (namespace, name) in [("dev", "db"), ("prod", "other")] {
        let results = open_each(&kms, &es, namespace, name).await;
        let err = results["password"].as_ref().unwrap_err();
        assert_eq!(
            err.category().as_str(),
            "invalid_ciphertext",
            "{namespace}/{name}: {err}"
        );
    }
    // Same object, item renamed: KMS accepts the context, the AAD does not.
    let mut swapped = es.clone();
    let value = swapped.spec.encrypted_data.remove("password").unwrap();
    swapped.spec.encrypted_data.insert("username".into(), value);
    let results = open_each(&kms, &swapped, "prod", "db").await;
    assert_eq!(
        results["username"]
            .as_ref()
            .unwrap_err()
            .category()
            .as_str(),
        "tampered"
    );
}

#[tokio::test]
async fn merge_keeps_untouched_ciphertext_byte_for_byte() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let wrapper = Wrapper::Kms {
        kms: &kms,
        key_id: &key,
    };
    let original = seal_strict(&kms, &key, &[("keep", b"old"), ("replace", b"old")]).await;
    let decrypts_before = kms.calls.decrypt.load(Ordering::Relaxed);
    let mut update = secret(&[("replace", b"new"), ("added", b"new")]);
    update.type_ = None;
    let merged = seal::merge_into(
        &wrapper,
        original.clone(),
        &update,
        Scope::Strict,
        &mut Counter(50),
        2,
    )
    .await
    .unwrap();
    assert_eq!(
        kms.calls.decrypt.load(Ordering::Relaxed),
        decrypts_before,
        "merge needs no Decrypt"
    );
    assert_eq!(
        merged.spec.encrypted_data["keep"],
        original.spec.encrypted_data["keep"]
    );
    assert_ne!(
        merged.spec.encrypted_data["replace"],
        original.spec.encrypted_data["replace"]
    );
    let opened = open_ok(&kms, &merged).await;
    assert_eq!(opened["keep"], b"old");
    assert_eq!(opened["replace"], b"new");
    assert_eq!(opened["added"], b"new");
    assert_eq!(
        merged.spec.template.unwrap().type_.as_deref(),
        Some("example.com/login"),
        "an update without a type keeps the existing one"
    );
    // Two data keys are now in use: one Decrypt each.
    let before = kms.calls.decrypt.load(Ordering::Relaxed);
    open_ok(&kms, &original).await;
    assert_eq!(kms.calls.decrypt.load(Ordering::Relaxed) - before, 1);
}

#[tokio::test]
async fn merge_refuses_another_object() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let wrapper = Wrapper::Kms {
        kms: &kms,
        key_id: &key,
    };
    let es = seal_strict(&kms, &key, &[("a", b"1")]).await;
    let mut other = secret(&[("b", b"2")]);
    other.name = "not-db".into();
    let err = seal::merge_into(&wrapper, es, &other, Scope::Strict, &mut Counter(0), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not-db"), "{err}");
}

#[tokio::test]
async fn disabled_and_denied_keys_have_categories_and_fixes() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let es = seal_strict(&kms, &key, &[("a", b"1")]).await;
    kms.set_enabled(&key, false);
    let results = open_each(&kms, &es, "prod", "db").await;
    let err = results["a"].as_ref().unwrap_err();
    assert_eq!(err.category().as_str(), "key_disabled");
    assert!(err.to_string().contains("enable-key"), "{err}");
    kms.set_enabled(&key, true);
    kms.deny("kms:Decrypt", &key);
    let results = open_each(&kms, &es, "prod", "db").await;
    let err = results["a"].as_ref().unwrap_err();
    assert_eq!(err.category().as_str(), "access_denied");
    assert!(
        err.to_string().contains("kms:Decrypt") && err.to_string().contains(&key),
        "{err}"
    );
    let err = seal::seal_secret(
        &Wrapper::Kms {
            kms: &kms,
            key_id: "alias/missing",
        },
        &secret(&[("a", b"1")]),
        Scope::Strict,
        &mut Counter(0),
        1,
    )
    .await
    .unwrap_err();
    assert_eq!(err.category().as_str(), "key_not_found");
}

/// A KMS that decrypts correctly but reports another key, as a compromised or confused
/// endpoint might.
struct LyingKms<'a>(&'a MemoryKms);
impl Kms for LyingKms<'_> {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        self.0.generate_data_key(key_id, context).await
    }
    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        let mut d = self.0.decrypt(request).await?;
        d.key_arn = "arn:aws:kms:eu-west-1:999999999999:key/attacker".into();
        Ok(d)
    }
    async fn public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        self.0.public_key(key_id).await
    }
    async fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KmsError> {
        self.0.describe_key(key_id).await
    }
    async fn re_encrypt(&self, request: ReEncryptRequest<'_>) -> Result<ReEncrypted, KmsError> {
        self.0.re_encrypt(request).await
    }
    async fn last_rotation(&self, key_id: &str) -> Result<Option<u64>, KmsError> {
        self.0.last_rotation(key_id).await
    }
}

#[tokio::test]
async fn an_answer_from_another_key_is_refused() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let es = seal_strict(&kms, &key, &[("a", b"1")]).await;
    let results = open_each(&LyingKms(&kms), &es, "prod", "db").await;
    let err = results["a"].as_ref().unwrap_err();
    assert_eq!(err.category().as_str(), "wrong_key", "{err}");
}

#[tokio::test]
async fn offline_rsa_sealing_round_trips_through_kms_decrypt() {
    let kms = MemoryKms::new("eu-west-1");
    let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
    let key = kms.add_rsa_key(private);
    let info = kms.public_key(&key).await.unwrap();
    let offline = OfflineKey::from_der(&info.key_arn, &info.der).unwrap();
    let wrapper: Wrapper<'_, MemoryKms> = Wrapper::Offline(&offline);
    let es = seal::seal_secret(
        &wrapper,
        &secret(&[("tls.key", b"-----BEGIN")]),
        Scope::Namespace,
        &mut Counter(0),
        1,
    )
    .await
    .unwrap();
    assert_eq!(
        kms.calls.generate_data_key.load(Ordering::Relaxed),
        0,
        "offline: no KMS call to seal"
    );
    let results = open_each(&kms, &es, "prod", "renamed-ok").await;
    let opened = results["tls.key"].as_ref().unwrap();
    assert_eq!(&**opened.plaintext, b"-----BEGIN");
    assert!(matches!(
        opened.format,
        ItemFormat::Envelope {
            scope: Scope::Namespace,
            ..
        }
    ));
    // With no encryption context for RSA, the AAD alone keeps the binding.
    let results = open_each(&kms, &es, "dev", "db").await;
    assert_eq!(
        results["tls.key"].as_ref().unwrap_err().category().as_str(),
        "tampered"
    );
}

#[tokio::test]
async fn plain_kms_ciphertext_is_bound_to_namespace_name_and_item() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    // Build plain KMS ciphertext the way `aws kms encrypt` would: a blob bound to a context.
    let context = |pairs: &[(&str, &str)]| -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let strict = context(&[
        ("kmseal.dev/namespace", "prod"),
        ("kmseal.dev/name", "db"),
        ("kmseal.dev/item", "token"),
    ]);
    let blob = kms.generate_data_key(&key, &strict).await.unwrap().wrapped;
    let mut es = EncryptedSecret::with_name(Some("prod"), "db", Default::default());
    es.spec
        .encrypted_data
        .insert("token".into(), BASE64.encode(&blob));
    let results = open_each(&kms, &es, "prod", "db").await;
    let opened = results["token"].as_ref().unwrap();
    assert_eq!(opened.plaintext.len(), 32);
    assert_eq!(
        opened.format,
        ItemFormat::PlainKms {
            scope: Scope::Strict
        }
    );
    for (namespace, name) in [("dev", "db"), ("prod", "other")] {
        let moved = open_each(&kms, &es, namespace, name).await;
        assert_eq!(
            moved["token"].as_ref().unwrap_err().category().as_str(),
            "invalid_ciphertext"
        );
    }
    // Moved to another item of the same object: the item is in the context now.
    let mut swapped = es.clone();
    let value = swapped.spec.encrypted_data.remove("token").unwrap();
    swapped.spec.encrypted_data.insert("other".into(), value);
    let results = open_each(&kms, &swapped, "prod", "db").await;
    assert_eq!(
        results["other"].as_ref().unwrap_err().category().as_str(),
        "invalid_ciphertext"
    );
    // The kmseal 0.1 context (no item) no longer opens.
    let old = context(&[("kmseal.dev/namespace", "prod"), ("kmseal.dev/name", "db")]);
    let old_blob = kms.generate_data_key(&key, &old).await.unwrap().wrapped;
    es.spec
        .encrypted_data
        .insert("token".into(), BASE64.encode(&old_blob));
    assert!(open_each(&kms, &es, "prod", "db").await["token"].is_err());
    // Cluster scope: the namespace is `*`.
    let cluster = context(&[("kmseal.dev/namespace", "*"), ("kmseal.dev/item", "token")]);
    let cluster_blob = kms.generate_data_key(&key, &cluster).await.unwrap().wrapped;
    es.spec
        .encrypted_data
        .insert("token".into(), BASE64.encode(&cluster_blob));
    es.metadata.annotations = Some(BTreeMap::from([(
        PLAIN_SCOPE_ANNOTATION.into(),
        "cluster".into(),
    )]));
    let results = open_each(&kms, &es, "anywhere", "else").await;
    assert!(results["token"].is_ok());
    es.metadata.annotations = Some(BTreeMap::from([(
        PLAIN_SCOPE_ANNOTATION.into(),
        "wide".into(),
    )]));
    let results = open_each(&kms, &es, "prod", "db").await;
    assert!(matches!(
        results["token"],
        Err(OpenError::BadScopeAnnotation(_))
    ));
}

#[tokio::test]
async fn hostile_items_fail_alone_and_clearly() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let mut es = seal_strict(&kms, &key, &[("good", b"1")]).await;
    let data = &mut es.spec.encrypted_data;
    data.insert("not-base64".into(), "***".into());
    data.insert("empty".into(), String::new());
    data.insert(
        "huge".into(),
        "A".repeat(kmseal::api::MAX_ITEM_BASE64_LEN + 4),
    );
    data.insert("truncated".into(), BASE64.encode(b"kmseal\x01\x00"));
    data.insert("too-long-for-kms".into(), BASE64.encode(vec![1u8; 7000]));
    let results = open_each(&kms, &es, "prod", "db").await;
    assert!(results["good"].is_ok());
    assert_eq!(
        results["not-base64"].as_ref().unwrap_err(),
        &OpenError::Base64
    );
    assert!(matches!(
        results["empty"],
        Err(OpenError::NotCiphertext { len: 0 })
    ));
    assert!(matches!(results["huge"], Err(OpenError::TooLarge { .. })));
    assert_eq!(
        results["truncated"]
            .as_ref()
            .unwrap_err()
            .category()
            .as_str(),
        "malformed"
    );
    assert!(matches!(
        results["too-long-for-kms"],
        Err(OpenError::NotCiphertext { .. })
    ));
}

#[tokio::test]
async fn invalid_names_and_oversized_values_are_refused_before_kms() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let wrapper = Wrapper::Kms {
        kms: &kms,
        key_id: &key,
    };
    let mut bad_item = secret(&[("a/b", b"1")]);
    let err = seal::seal_secret(&wrapper, &bad_item, Scope::Strict, &mut Counter(0), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a valid Secret key"), "{err}");
    bad_item = secret(&[("big", &vec![0u8; envelope::MAX_PLAINTEXT_LEN + 1])]);
    let err = seal::seal_secret(&wrapper, &bad_item, Scope::Strict, &mut Counter(0), 1)
        .await
        .unwrap_err();
    assert_eq!(err.category().as_str(), "too_large");
    let mut no_ns = secret(&[("a", b"1")]);
    no_ns.namespace = None;
    let err = seal::seal_secret(&wrapper, &no_ns, Scope::Strict, &mut Counter(0), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--namespace"), "{err}");
    assert!(
        seal::seal_secret(&wrapper, &no_ns, Scope::Cluster, &mut Counter(0), 1)
            .await
            .is_ok()
    );
    assert_eq!(kms.calls.generate_data_key.load(Ordering::Relaxed), 1);
}

#[test]
fn debug_output_never_shows_values() {
    let s = secret(&[("password", b"hunter2")]);
    let shown = format!("{s:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("password"),
        "{shown}"
    );
}

#[test]
fn public_keys_smaller_than_kms_issues_are_refused() {
    use rsa::pkcs8::EncodePublicKey;
    let small = rsa::PrivateKey::new(&mut getrandom::SysRng, 1024).unwrap();
    let der = small.to_public_key().to_public_key_der().unwrap();
    let err = OfflineKey::from_der("arn:aws:kms:eu-west-1:1:key/k", der.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("1024 bits"), "{err}");
    let err = OfflineKey::from_der("arn:aws:kms:eu-west-1:1:key/k", b"not der").unwrap_err();
    assert!(err.to_string().contains("not an RSA"), "{err}");
}
