//! Tenant isolation: attacks by a tenant who may only create EncryptedSecrets in their own
//! namespace, against the controller's reconcile loop with moto (real encryption-context
//! checks) or the in-memory KMS (counted calls). Each test is an attack that succeeded before
//! envelope v2 and the key policy; the KMS calls it may cost are counted, not guessed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kmseal::api::{EncryptedSecret, EncryptedSecretSpec, PLAIN_SCOPE_ANNOTATION, SecretTemplate};
use kmseal::binding::{Binding, EncryptionContext, Scope};
use kmseal::controller::fake::InMemoryCluster;
use kmseal::controller::{Admission, Reconciled, Reconciler};
use kmseal::envelope::{self, Header, Version, WrapAlgorithm};
use kmseal::kms::{
    AwsKms, CachingKms, DecryptRequest, Decrypted, GeneratedKey, KeyFacts, Kms, KmsError,
    KmsErrorKind, MemoryKms, PublicKeyInfo, ReEncryptRequest, ReEncrypted,
};
use kmseal::policy::{KeyPolicy, SecretTypes};
use kmseal::random::OsRandom;
use kmseal::reconcile::{self, reason};
use kmseal::seal::{self, PlainSecret, Wrapper};
use zeroize::Zeroizing;

const REGION: &str = "us-east-1";

/// Counts the `Decrypt` calls that reach the KMS (below the data-key cache), and can run a
/// hook on each, e.g. to change the world mid-reconcile.
struct Counting<K> {
    inner: K,
    decrypts: AtomicU64,
    on_decrypt: std::sync::Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl<K> Counting<K> {
    fn new(inner: K) -> Self {
        Counting {
            inner,
            decrypts: AtomicU64::new(0),
            on_decrypt: std::sync::Mutex::new(None),
        }
    }
    fn decrypts(&self) -> u64 {
        self.decrypts.load(Ordering::Relaxed)
    }
}

impl<K: Kms> Kms for Counting<K> {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        self.inner.generate_data_key(key_id, context).await
    }
    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        self.decrypts.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &*self.on_decrypt.lock().unwrap() {
            hook();
        }
        self.inner.decrypt(request).await
    }
    async fn public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        self.inner.public_key(key_id).await
    }
    async fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KmsError> {
        self.inner.describe_key(key_id).await
    }
    async fn re_encrypt(&self, request: ReEncryptRequest<'_>) -> Result<ReEncrypted, KmsError> {
        self.inner.re_encrypt(request).await
    }
    async fn last_rotation(&self, key_id: &str) -> Result<Option<u64>, KmsError> {
        self.inner.last_rotation(key_id).await
    }
}

type Controller<K> = Reconciler<CachingKms<Arc<Counting<K>>>, Arc<InMemoryCluster>>;

fn controller<K: Kms>(
    kms: K,
    admission: Admission,
) -> (Controller<K>, Arc<Counting<K>>, Arc<InMemoryCluster>) {
    let counting = Arc::new(Counting::new(kms));
    let cluster = Arc::new(InMemoryCluster::new());
    let r = Reconciler::new(
        CachingKms::new(counting.clone(), 100, Duration::from_secs(300)),
        cluster.clone(),
        Arc::new(kmseal::metrics::Metrics::new()),
        Arc::new(admission),
    );
    (r, counting, cluster)
}

/// Only `key` for `namespaces`.
fn allow(key: &str, namespaces: &[&str]) -> Admission {
    let list = namespaces
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n  - key: {key}\n    namespaces: [{list}]\n"
    );
    Admission::new(
        KeyPolicy::from_rules(KeyPolicy::parse_rules(&text).unwrap()),
        SecretTypes::default(),
    )
}

fn object(namespace: &str, name: &str, items: &[(&str, &[u8])]) -> EncryptedSecret {
    let mut es = EncryptedSecret::with_name(
        Some(namespace),
        name,
        EncryptedSecretSpec {
            encrypted_data: items
                .iter()
                .map(|(k, v)| ((*k).to_owned(), BASE64.encode(v)))
                .collect(),
            ..EncryptedSecretSpec::default()
        },
    );
    es.metadata.uid = Some(format!("uid-{namespace}-{name}"));
    es.metadata.generation = Some(1);
    es
}

fn with_scope(mut es: EncryptedSecret, scope: &str) -> EncryptedSecret {
    es.metadata.annotations = Some(BTreeMap::from([(
        PLAIN_SCOPE_ANNOTATION.to_owned(),
        scope.to_owned(),
    )]));
    es
}

async fn step<K: Kms>(r: &Controller<K>, es: &EncryptedSecret) -> Reconciled {
    r.reconcile(&r.api().with_status(es)).await.unwrap().0
}

fn ready_reason<K: Kms>(r: &Controller<K>, es: &EncryptedSecret) -> String {
    r.api().with_status(es).status.unwrap().conditions[0]
        .reason
        .clone()
}

async fn sealed<K: Kms>(kms: &K, key: &str, ns: &str, name: &str, scope: Scope) -> EncryptedSecret {
    let mut es = seal::seal_secret(
        &Wrapper::Kms { kms, key_id: key },
        &PlainSecret {
            namespace: Some(ns.into()),
            name: name.into(),
            data: BTreeMap::from([("k".to_owned(), Zeroizing::new(b"v".to_vec()))]),
            ..PlainSecret::default()
        },
        scope,
        &mut OsRandom,
        1,
    )
    .await
    .unwrap();
    es.metadata.uid = Some(format!("uid-{ns}-{name}"));
    es.metadata.generation = Some(1);
    es
}

/// Finding 1: another application's ciphertext (no encryption context, under a key the
/// controller's role may use) put into an EncryptedSecret with `kmseal.dev/scope: cluster`
/// came out in the tenant's Secret. Now it is refused by the policy with no KMS call, and where
/// a call is made at all, its context makes KMS refuse it.
#[tokio::test]
async fn foreign_ciphertext_is_never_decrypted_for_a_tenant() {
    let Some(emu) = common::moto() else { return };
    let admin = common::admin(&emu.url, REGION).await;
    let payments = common::create_symmetric_key(&admin).await;
    let tenant_key = common::create_symmetric_key(&admin).await;
    let foreign = admin
        .encrypt()
        .key_id(&payments)
        .plaintext(aws_sdk_kms::primitives::Blob::new(b"payments-db".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap()
        .into_inner();
    let aws = || async { AwsKms::from_sdk_config(common::sdk_config(&emu.url, REGION).await) };
    let loot = |scope: &str, key_id: Option<&str>| {
        let mut es = with_scope(object("tenant-a", "loot", &[("loot", &foreign)]), scope);
        es.spec.key_id = key_id.map(str::to_owned);
        es
    };

    // The tenant may use its own key only; payments is another team's.
    let (r, kms, _) = controller(aws().await, allow(&tenant_key, &["tenant-a"]));
    for es in [
        loot("cluster", None),
        loot("cluster", Some(&payments)),
        loot("strict", Some(&payments)),
        loot("strict", Some("alias/payments")),
        loot("cluster", Some(&tenant_key)),
    ] {
        assert!(matches!(step(&r, &es).await, Reconciled::Failed(_)));
        assert_eq!(ready_reason(&r, &es), reason::KEY_NOT_ALLOWED);
        assert!(r.api().secret("tenant-a", "loot").is_none());
    }
    assert_eq!(kms.decrypts(), 0, "refused before any KMS call");

    // Even with the key allowed and the operator's opt-in to plain cluster scope, the context
    // always carries the namespace (`*`) and the item, which the foreign ciphertext lacks.
    let admission = allow(&payments, &["tenant-a"]);
    let mut policy = admission.snapshot().policy.clone();
    policy.allow_cluster_scope_plain_items = true;
    admission.set_policy(policy);
    let (r, kms, _) = controller(aws().await, admission);
    for scope in ["strict", "namespace", "cluster"] {
        let mut es = loot(scope, Some(&payments));
        // Each a new object: a failed one's retry would wait for its backoff.
        es.metadata.uid = Some(format!("uid-loot-{scope}"));
        assert_eq!(
            step(&r, &es).await,
            Reconciled::Failed(reason::DECRYPT_FAILED)
        );
        assert!(r.api().secret("tenant-a", "loot").is_none(), "{scope}");
    }
    assert_eq!(kms.decrypts(), 3, "one refused Decrypt per attempt");
}

/// Finding 2: the wrapped data key of an envelope, put in as a plain item, came out as the
/// Secret's value (32 bytes, enough to forge values under the original header). Every
/// envelope's data-key context (v1 and v2) now differs from every plain-item context, so KMS
/// refuses, whatever scope the tenant picks and even with the key allowed.
#[tokio::test]
async fn a_wrapped_data_key_never_comes_out_as_a_value() {
    let Some(emu) = common::moto() else { return };
    let admin = common::admin(&emu.url, REGION).await;
    let key = common::create_symmetric_key(&admin).await;
    let aws = AwsKms::from_sdk_config(common::sdk_config(&emu.url, REGION).await);
    let mut wrapped_keys = Vec::new();
    for scope in Scope::ALL {
        // v2, as `kmseal seal` writes it.
        let es = sealed(&aws, &key, "tenant-a", "dk", scope).await;
        let value = BASE64.decode(&es.spec.encrypted_data["k"]).unwrap();
        wrapped_keys.push(envelope::parse(&value).unwrap().header.wrapped_key);
        // v1, as kmseal 0.1 wrote it.
        let binding = Binding::new(scope, "tenant-a", "dk");
        let generated = aws
            .generate_data_key(&key, &binding.context_v1())
            .await
            .unwrap();
        wrapped_keys.push(generated.wrapped);
    }
    let admission = allow(&key, &["tenant-a"]);
    let mut policy = admission.snapshot().policy.clone();
    policy.allow_cluster_scope_plain_items = true;
    admission.set_policy(policy);
    let (r, kms, _) = controller(aws, admission);
    for (i, wrapped) in wrapped_keys.iter().enumerate() {
        for scope in ["strict", "namespace", "cluster"] {
            let mut es = with_scope(object("tenant-a", "dk", &[("k", wrapped)]), scope);
            es.spec.key_id = Some(key.clone());
            // Each a new object: a failed one's retry would wait for its backoff.
            es.metadata.uid = Some(format!("uid-dk-{i}-{scope}"));
            assert_eq!(
                step(&r, &es).await,
                Reconciled::Failed(reason::DECRYPT_FAILED),
                "wrapped key {i} as a {scope} plain item"
            );
            assert!(r.api().secret("tenant-a", "dk").is_none());
        }
    }
    assert_eq!(kms.decrypts(), wrapped_keys.len() as u64 * 3);
}

/// A value sealed under a key another namespace may use is refused with no KMS call: the key in
/// the header is checked against the policy first, for v2 and v1 values alike.
#[tokio::test]
async fn a_key_not_allowed_for_the_namespace_costs_no_kms_call() {
    let memory = MemoryKms::new("eu-west-1");
    let payments = memory.create_key();
    let tenant = memory.create_key();
    let theirs = sealed(&memory, &payments, "tenant-a", "x", Scope::Strict).await;
    // A v1 value under the same key.
    let v1 = common::sealed_v1(&memory, &payments, "tenant-a", "x1", &[("k", b"v")])
        .await
        .remove(0)
        .1;
    let v1_object = object("tenant-a", "x1", &[("k", &v1)]);
    let admission = Admission::new(
        KeyPolicy::from_rules(
            KeyPolicy::parse_rules(&format!(
                "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n  - key: {payments}\n    namespaces: [payments]\n  - key: {tenant}\n    namespaces: [\"tenant-*\"]\n"
            ))
            .unwrap(),
        ),
        SecretTypes::default(),
    );
    let (r, kms, _) = controller(memory, admission);
    for es in [&theirs, &v1_object] {
        assert_eq!(
            step(&r, es).await,
            Reconciled::Failed(reason::KEY_NOT_ALLOWED)
        );
        let message = r.api().with_status(es).status.unwrap().conditions[0]
            .message
            .clone();
        assert!(
            message.contains(&payments) && message.contains("tenant-a"),
            "{message}"
        );
    }
    assert_eq!(kms.decrypts(), 0);
    // Its own key works, in any namespace the pattern matches.
    let own = sealed(&kms.inner, &tenant, "tenant-a", "y", Scope::Strict).await;
    assert_eq!(step(&r, &own).await, Reconciled::Applied);
    assert_eq!(kms.decrypts(), 1);
}

/// Finding 3: 3,000 junk items cost 3,000 Decrypt calls per attempt. An object holds at most
/// 256 items; past that it is refused with no call, and within it the first failed call ends
/// the attempt; a retry before its backoff is over makes none.
#[tokio::test(start_paused = true)]
async fn junk_items_cost_at_most_one_decrypt_per_attempt() {
    let memory = MemoryKms::new("eu-west-1");
    let key = memory.create_key();
    // Envelopes that name an allowed key but wrap garbage: each would need its own Decrypt.
    let junk = |n: usize| -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let header = Header {
                    version: Version::V2,
                    scope: Scope::Strict,
                    algorithm: WrapAlgorithm::KmsSymmetric,
                    wrapped_at: 0,
                    key_arn: key.clone(),
                    key_material_id: None,
                    wrapped_key: format!("junk-{i}").into_bytes(),
                };
                let mut value = header.encode().unwrap();
                value.extend_from_slice(&[0; 12 + 16]);
                (format!("i{i}"), value)
            })
            .collect()
    };
    let (r, kms, _) = controller(memory, allow(&key, &["tenant-a"]));
    let thousand = junk(1000);
    let items: Vec<(&str, &[u8])> = thousand
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let es = object("tenant-a", "junk", &items);
    assert_eq!(
        step(&r, &es).await,
        Reconciled::Failed(reason::INVALID_SPEC)
    );
    assert_eq!(kms.decrypts(), 0, "over the item limit: refused before KMS");
    let es = object("tenant-a", "junk", &items[..kmseal::api::MAX_ITEMS]);
    for attempt in 1..=3 {
        assert_eq!(
            step(&r, &es).await,
            Reconciled::Failed(reason::DECRYPT_FAILED)
        );
        assert_eq!(kms.decrypts(), attempt, "one Decrypt per attempt");
        assert_eq!(step(&r, &es).await, Reconciled::BackingOff);
        assert_eq!(kms.decrypts(), attempt, "none during the backoff");
        tokio::time::advance(Duration::from_secs(300)).await;
    }
}

/// Finding 3, continued: work goes on after the object is deleted. An object whose items need
/// two Decrypt calls is deleted during the first: the second is never made.
#[tokio::test]
async fn a_deleted_object_makes_no_further_kms_calls() {
    let memory = MemoryKms::new("eu-west-1");
    let key = memory.create_key();
    let mut es = sealed(&memory, &key, "tenant-a", "two", Scope::Strict).await;
    // A second data key (as `kmseal seal --merge-into` adds one).
    let more = seal::merge_into(
        &Wrapper::Kms {
            kms: &memory,
            key_id: &key,
        },
        es.clone(),
        &PlainSecret {
            namespace: Some("tenant-a".into()),
            name: "two".into(),
            data: BTreeMap::from([("k2".to_owned(), Zeroizing::new(b"v2".to_vec()))]),
            ..PlainSecret::default()
        },
        Scope::Strict,
        &mut OsRandom,
        2,
    )
    .await
    .unwrap();
    es.spec = more.spec;
    let (r, kms, cluster) = controller(memory, allow(&key, &["tenant-a"]));
    cluster.put_encrypted(&es);
    let deleting = cluster.clone();
    *kms.on_decrypt.lock().unwrap() = Some(Box::new(move || {
        deleting.delete_encrypted("tenant-a", "two");
    }));
    assert_eq!(step(&r, &es).await, Reconciled::Cancelled);
    assert_eq!(kms.decrypts(), 1, "the second data key was never asked for");
    assert!(r.api().secret("tenant-a", "two").is_none());
    assert!(
        r.api().with_status(&es).status.is_none(),
        "nothing reported for a deleted object"
    );
}

/// Finding 4: ownership was checked before the KMS calls and the later write was forced. A
/// Secret someone creates in that window is now left alone: the create fails and the object is
/// refused.
#[tokio::test]
async fn a_secret_created_during_the_reconcile_is_not_taken_over() {
    let memory = MemoryKms::new("eu-west-1");
    let key = memory.create_key();
    let es = sealed(&memory, &key, "tenant-a", "raced", Scope::Strict).await;
    let (r, _, cluster) = controller(memory, allow(&key, &["tenant-a"]));
    let theirs = Secret {
        metadata: ObjectMeta {
            name: Some("raced".into()),
            namespace: Some("tenant-a".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "k".into(),
            ByteString(b"theirs".to_vec()),
        )])),
        ..Secret::default()
    };
    let racing = theirs.clone();
    cluster.before_next_write(move |c| c.put_secret(racing));
    assert_eq!(step(&r, &es).await, Reconciled::Refused);
    let after = r.api().secret("tenant-a", "raced").unwrap();
    assert_eq!(after.data, theirs.data, "their data is untouched");
    assert_eq!(
        after.metadata.owner_references, None,
        "no owner reference added"
    );
    assert_eq!(ready_reason(&r, &es), reason::SECRET_EXISTS);

    // The same race against a replace: a Secret we own is replaced by someone else between the
    // ownership check and our write. Our write is refused by its precondition; the next
    // reconcile sees a foreign Secret.
    let es2 = sealed(
        &r.kms().inner().inner,
        &key,
        "tenant-a",
        "owned",
        Scope::Strict,
    )
    .await;
    assert_eq!(step(&r, &es2).await, Reconciled::Applied);
    let mut edited = es2.clone();
    edited.metadata.generation = Some(2);
    let mut replacement = theirs.clone();
    replacement.metadata.name = Some("owned".into());
    let expected = replacement.data.clone();
    cluster.before_next_write(move |c| {
        c.delete_secret("tenant-a", "owned");
        c.put_secret(replacement);
    });
    assert_eq!(step(&r, &edited).await, Reconciled::Cancelled);
    assert_eq!(r.api().secret("tenant-a", "owned").unwrap().data, expected);
    assert_eq!(step(&r, &edited).await, Reconciled::Refused);
    assert_eq!(r.api().secret("tenant-a", "owned").unwrap().data, expected);
}

/// Finding 5: the controller may create Secrets, so a template of type
/// service-account-token would have it mint a token for any ServiceAccount in the namespace.
#[tokio::test]
async fn service_account_token_secrets_are_refused() {
    let memory = MemoryKms::new("eu-west-1");
    let key = memory.create_key();
    let mut es = sealed(&memory, &key, "tenant-a", "token", Scope::Strict).await;
    es.spec.template = Some(SecretTemplate {
        type_: Some("kubernetes.io/service-account-token".into()),
        metadata: Some(kmseal::api::TemplateMetadata {
            annotations: BTreeMap::from([(
                "kubernetes.io/service-account.name".into(),
                "admin".into(),
            )]),
            ..Default::default()
        }),
        immutable: None,
    });
    let (r, kms, _) = controller(memory, allow(&key, &["tenant-a"]));
    assert_eq!(
        step(&r, &es).await,
        Reconciled::Failed(reason::TYPE_NOT_ALLOWED)
    );
    assert!(r.api().secret("tenant-a", "token").is_none());
    assert_eq!(kms.decrypts(), 0);
    let message = r.api().with_status(&es).status.unwrap().conditions[0]
        .message
        .clone();
    assert!(message.contains("ServiceAccount token"), "{message}");
    // Any type the operator did not allow is refused the same way.
    es.spec.template.as_mut().unwrap().type_ = Some("bootstrap.kubernetes.io/token".into());
    assert_eq!(
        step(&r, &es).await,
        Reconciled::Failed(reason::TYPE_NOT_ALLOWED)
    );
}

/// A type the API server refuses without its items (tls without `tls.key`) is refused before
/// any KMS call, with the fix, instead of decrypting the values for a write that must fail.
#[tokio::test]
async fn a_type_without_its_required_items_is_refused_before_kms() {
    let memory = MemoryKms::new("eu-west-1");
    let key = memory.create_key();
    let mut es = sealed(&memory, &key, "tenant-a", "web", Scope::Strict).await;
    es.spec.template = Some(SecretTemplate {
        type_: Some("kubernetes.io/tls".into()),
        ..Default::default()
    });
    let (r, kms, _) = controller(memory, allow(&key, &["tenant-a"]));
    assert_eq!(
        step(&r, &es).await,
        Reconciled::Failed(reason::INVALID_SPEC)
    );
    assert_eq!(kms.decrypts(), 0);
    assert!(r.api().secret("tenant-a", "web").is_none());
    let message = r.api().with_status(&es).status.unwrap().conditions[0]
        .message
        .clone();
    assert!(
        message.contains("needs items tls.crt and tls.key")
            && message.contains("add tls.crt and tls.key"),
        "{message}"
    );
}

/// Finding 6: `kmseal.dev/managed=true` won over another controller's owner reference.
#[tokio::test]
async fn another_controllers_secret_is_never_adopted() {
    let memory = MemoryKms::new("eu-west-1");
    let key = memory.create_key();
    let es = sealed(&memory, &key, "tenant-a", "tls", Scope::Strict).await;
    let (r, kms, cluster) = controller(memory, allow(&key, &["tenant-a"]));
    let certificate = OwnerReference {
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        name: "web".into(),
        uid: "cert-uid".into(),
        controller: Some(true),
        ..OwnerReference::default()
    };
    cluster.put_secret(Secret {
        metadata: ObjectMeta {
            name: Some("tls".into()),
            namespace: Some("tenant-a".into()),
            annotations: Some(BTreeMap::from([(
                reconcile::ADOPT_ANNOTATION.into(),
                "true".into(),
            )])),
            owner_references: Some(vec![certificate.clone()]),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    });
    assert_eq!(step(&r, &es).await, Reconciled::Refused);
    let after = r.api().secret("tenant-a", "tls").unwrap();
    assert_eq!(after.metadata.owner_references, Some(vec![certificate]));
    assert_eq!(kms.decrypts(), 0);
    let message = r.api().with_status(&es).status.unwrap().conditions[0]
        .message
        .clone();
    assert!(
        message.contains("controlled by Certificate web"),
        "{message}"
    );
}

/// A KMS that fails the way AWS does when the controller's role lacks permission: its message
/// names the role.
struct Denying;
const ROLE: &str = "arn:aws:sts::111122223333:assumed-role/kmseal-controller/i-0abc";

impl Kms for Denying {
    async fn generate_data_key(
        &self,
        _: &str,
        _: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        unreachable!()
    }
    async fn decrypt(&self, request: DecryptRequest<'_>) -> Result<Decrypted, KmsError> {
        Err(KmsError::new(
            KmsErrorKind::AccessDenied,
            "kms:Decrypt",
            request.key_id,
            format!(
                "AccessDeniedException: User: {ROLE} is not authorized to perform: kms:Decrypt"
            ),
        )
        .in_region(REGION))
    }
    async fn public_key(&self, _: &str) -> Result<PublicKeyInfo, KmsError> {
        unreachable!()
    }
    async fn describe_key(&self, _: &str) -> Result<KeyFacts, KmsError> {
        unreachable!()
    }
    async fn re_encrypt(&self, _: ReEncryptRequest<'_>) -> Result<ReEncrypted, KmsError> {
        unreachable!()
    }
    async fn last_rotation(&self, _: &str) -> Result<Option<u64>, KmsError> {
        unreachable!()
    }
}

/// Finding 7: status messages handed tenants the raw KMS error text, which on AWS names the
/// controller's role. Tenants now get a reason and a fix; the detail is for the operator's log.
#[tokio::test]
async fn tenants_see_a_reason_and_a_fix_not_the_controllers_role() {
    let memory = MemoryKms::new("eu-west-1");
    let key = memory.create_key();
    let es = sealed(&memory, &key, "tenant-a", "denied", Scope::Strict).await;
    let (r, _, _) = controller(Denying, allow(&key, &["tenant-a"]));
    assert_eq!(
        step(&r, &es).await,
        Reconciled::Failed(reason::ACCESS_DENIED)
    );
    let condition = r.api().with_status(&es).status.unwrap().conditions[0].clone();
    assert!(
        condition.message.contains("platform team"),
        "{}",
        condition.message
    );
    assert!(condition.message.contains(&key), "{}", condition.message);
    for (_, event) in r.api().events() {
        assert!(!event.note.contains("assumed-role"), "{}", event.note);
    }
    assert!(
        !condition.message.contains("assumed-role"),
        "{}",
        condition.message
    );
    assert!(!condition.message.contains(REGION), "{}", condition.message);
}

/// A key the policy stops allowing is noticed on the next reconcile, even with nothing else
/// changed and no KMS call needed: the object turns not ready, and the Secret is kept.
#[tokio::test]
async fn a_revoked_key_turns_the_object_not_ready_and_keeps_the_secret() {
    let memory = MemoryKms::new("eu-west-1");
    let key = memory.create_key();
    let es = sealed(&memory, &key, "tenant-a", "revoked", Scope::Strict).await;
    let (r, kms, _) = controller(memory, allow(&key, &["tenant-a"]));
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    assert_eq!(step(&r, &es).await, Reconciled::UpToDate);
    let before = r.api().secret("tenant-a", "revoked").unwrap();
    r.admission().set_policy(KeyPolicy::from_rules(
        KeyPolicy::rules_for_all_namespaces(&[]).unwrap(),
    ));
    assert_eq!(
        step(&r, &es).await,
        Reconciled::Failed(reason::KEY_NOT_ALLOWED)
    );
    assert_eq!(r.api().secret("tenant-a", "revoked").unwrap(), before);
    assert_eq!(kms.decrypts(), 1);
}

/// The `aws kms encrypt` command of docs/cli.md, exactly, through the controller: the value opens for
/// its namespace, name and item, with the key named in `spec.keyId` and allowed by the policy.
#[tokio::test]
async fn the_documented_aws_kms_encrypt_command_works_through_the_controller() {
    let Some(emu) = common::moto() else { return };
    let Ok(aws_cli) = std::env::var("KMSEAL_TEST_AWS_CLI") else {
        assert!(std::env::var_os("KMSEAL_REQUIRE_EMULATORS").is_none());
        eprintln!("SKIPPED: no AWS CLI (KMSEAL_TEST_AWS_CLI unset)");
        return;
    };
    let admin = common::admin(&emu.url, REGION).await;
    let key = common::create_symmetric_key(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let plaintext = common::temp_file(&dir, "password.txt", b"from-the-docs");
    let doc = include_str!("../docs/cli.md");
    assert!(
        doc.contains(
            "--encryption-context kmseal.dev/namespace=prod,kmseal.dev/name=db-credentials,kmseal.dev/item=password"
        ),
        "docs/cli.md shows the command this test runs"
    );
    let out = std::process::Command::new(aws_cli)
        .args(["kms", "encrypt", "--key-id", &key])
        .arg("--plaintext")
        .arg(format!("fileb://{}", plaintext.display()))
        .args([
            "--encryption-context",
            "kmseal.dev/namespace=prod,kmseal.dev/name=db-credentials,kmseal.dev/item=password",
        ])
        .args(["--output", "text", "--query", "CiphertextBlob"])
        .args(["--endpoint-url", &emu.url, "--region", REGION])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let blob = BASE64.decode(common::stdout(&out).trim()).unwrap();
    let aws = AwsKms::from_sdk_config(common::sdk_config(&emu.url, REGION).await);
    let (r, kms, _) = controller(aws, allow(&key, &["prod"]));
    let mut es = object("prod", "db-credentials", &[("password", &blob)]);
    es.spec.key_id = Some(key.clone());
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    let secret = r.api().secret("prod", "db-credentials").unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"from-the-docs");
    assert_eq!(kms.decrypts(), 1);
    // Without spec.keyId it is refused before KMS.
    es.spec.key_id = None;
    es.metadata.generation = Some(2);
    assert_eq!(
        step(&r, &es).await,
        Reconciled::Failed(reason::KEY_NOT_ALLOWED)
    );
    assert_eq!(kms.decrypts(), 1);
}

/// A policy that names an alias allows the key the alias points to, resolved with
/// `DescribeKey` against moto; other keys stay refused.
#[tokio::test]
async fn policy_aliases_resolve_to_their_key_on_moto() {
    let Some(emu) = common::moto() else { return };
    let admin = common::admin(&emu.url, REGION).await;
    let key = common::create_symmetric_key(&admin).await;
    let other = common::create_symmetric_key(&admin).await;
    let alias = format!("alias/kmseal-isolation-{}", std::process::id());
    admin
        .create_alias()
        .alias_name(&alias)
        .target_key_id(&key)
        .send()
        .await
        .unwrap();
    let account = key.split(':').nth(4).unwrap();
    let alias_arn = format!("arn:aws:kms:{REGION}:{account}:{alias}");
    let aws = AwsKms::from_sdk_config(common::sdk_config(&emu.url, REGION).await);
    let allowed = sealed(&aws, &key, "tenant-a", "a", Scope::Strict).await;
    let refused = sealed(&aws, &other, "tenant-a", "b", Scope::Strict).await;
    let (r, kms, _) = controller(aws, allow(&alias_arn, &["tenant-a"]));
    assert_eq!(r.admission().resolve_aliases(&kms.inner).await, 0);
    assert_eq!(step(&r, &allowed).await, Reconciled::Applied);
    assert_eq!(
        step(&r, &refused).await,
        Reconciled::Failed(reason::KEY_NOT_ALLOWED)
    );
    assert_eq!(kms.decrypts(), 1);
}

/// A `spec.keyId` the key policy does not name (an alias, where the policy names the key's
/// ARN) is not followed when keys rotate. That is said where the user looks, a `KeyCurrent`
/// condition, in the policy's words only (nothing KMS knows), and costs no KMS call.
#[tokio::test]
async fn a_key_id_the_policy_does_not_name_is_reported_not_silently_ignored() {
    let memory = MemoryKms::new("eu-west-1");
    let key = memory.create_key();
    let mut es = sealed(&memory, &key, "tenant-a", "db", Scope::Strict).await;
    es.spec.key_id = Some("alias/rot".into());
    let (r, kms, _) = controller(memory, allow(&key, &["tenant-a"]));
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    let decrypts = kms.decrypts();
    assert_eq!(step(&r, &es).await, Reconciled::UpToDate);
    assert_eq!(kms.decrypts(), decrypts);
    let status = r.api().with_status(&es).status.unwrap();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True", "{status:?}");
    let current = status
        .conditions
        .iter()
        .find(|c| c.type_ == "KeyCurrent")
        .unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(current.status, "False");
    assert_eq!(current.reason, "KeyIdNotAllowed");
    assert!(
        current.message.contains("spec.keyId alias/rot")
            && current
                .message
                .contains("a key rotation would not re-wrap these values"),
        "{}",
        current.message
    );
    // Named by the policy (here: spec.keyId back to the key's ARN), the condition goes.
    es.spec.key_id = Some(key.clone());
    let _ = step(&r, &es).await;
    let status = r.api().with_status(&es).status.unwrap();
    assert!(
        status.conditions.iter().all(|c| c.type_ != "KeyCurrent"),
        "{status:?}"
    );
}
