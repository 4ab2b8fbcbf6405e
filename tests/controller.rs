//! The controller's reconcile loop against an in-memory cluster, with the in-memory KMS
//! (multi-step scenarios) and with moto (real KMS semantics, counted calls).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kmseal::api::{EncryptedSecret, SecretTemplate, TemplateMetadata};
use kmseal::binding::Scope;
use kmseal::controller::fake::InMemoryCluster;
use kmseal::controller::{Admission, Reconciled, Reconciler};
use kmseal::kms::{CachingKms, Kms, MemoryKms};
use kmseal::metrics::{MeteredKms, Metrics};
use kmseal::random::OsRandom;
use kmseal::reconcile::{self, reason};
use kmseal::seal::{self, PlainSecret, Wrapper};
use zeroize::Zeroizing;

type Stack<K> = CachingKms<MeteredKms<K>>;

fn reconciler<K: Kms>(kms: K, cluster: InMemoryCluster) -> Reconciler<Stack<K>, InMemoryCluster> {
    let metrics = Arc::new(Metrics::new());
    let kms = CachingKms::new(
        MeteredKms::new(kms, metrics.clone()),
        100,
        Duration::from_secs(300),
    );
    Reconciler::new(kms, cluster, metrics, Arc::new(Admission::any_key()))
}

fn plain(items: &[(&str, &str)]) -> PlainSecret {
    PlainSecret {
        namespace: Some("prod".into()),
        name: "db".into(),
        type_: Some("kubernetes.io/basic-auth".into()),
        labels: BTreeMap::from([("app".into(), "api".into())]),
        data: items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Zeroizing::new(v.as_bytes().to_vec())))
            .collect(),
        ..PlainSecret::default()
    }
}

async fn sealed<K: Kms>(kms: &K, key: &str, items: &[(&str, &str)]) -> EncryptedSecret {
    let mut es = seal::seal_secret(
        &Wrapper::Kms { kms, key_id: key },
        &plain(items),
        Scope::Strict,
        &mut OsRandom,
        1,
    )
    .await
    .unwrap();
    // What the API server adds on create.
    es.metadata.uid = Some("3f0c2a10-0000-4000-8000-000000000001".into());
    es.metadata.generation = Some(1);
    es
}

fn data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

/// One reconcile of the object as the API server currently has it (with its status).
async fn step<K: Kms>(r: &Reconciler<K, InMemoryCluster>, es: &EncryptedSecret) -> Reconciled {
    let current = r.api().with_status(es);
    r.reconcile(&current).await.expect("reconcile").0
}

fn decrypt_calls<K>(r: &Reconciler<Stack<K>, InMemoryCluster>) -> u64
where
    K: Kms,
{
    r.kms().misses()
}

#[tokio::test]
async fn create_update_and_remove_items() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let mut es = sealed(&kms, &key, &[("username", "app"), ("password", "s3cr3t")]).await;
    let r = reconciler(kms, InMemoryCluster::new());

    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    let secret = r.api().secret("prod", "db").expect("Secret created");
    assert_eq!(data(&secret)["password"], "s3cr3t");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    let labels = secret.metadata.labels.clone().unwrap();
    assert_eq!(labels[reconcile::MANAGED_BY_LABEL], "kmseal");
    assert_eq!(labels["app"], "api");
    let owner = &secret.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("EncryptedSecret", "db")
    );
    assert_eq!(owner.controller, Some(true));
    let status = r.api().with_status(&es).status.unwrap();
    assert_eq!(status.conditions[0].status, "True");
    assert_eq!(status.conditions[0].reason, reason::SYNCED);
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.secret_name.as_deref(), Some("db"));
    assert_eq!(status.key_arns, vec![key.clone()]);

    // Update: replace one item, drop another, change a label.
    let update = sealed(r.kms().inner().inner(), &key, &[("password", "rotated")]).await;
    es.spec = update.spec.clone();
    es.spec.template = Some(SecretTemplate {
        type_: Some("kubernetes.io/basic-auth".into()),
        metadata: Some(TemplateMetadata {
            labels: BTreeMap::from([("app".into(), "web".into())]),
            ..TemplateMetadata::default()
        }),
        immutable: None,
    });
    es.metadata.generation = Some(2);
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    let secret = r.api().secret("prod", "db").unwrap();
    assert_eq!(
        data(&secret),
        BTreeMap::from([("password".into(), "rotated".into())])
    );
    assert_eq!(secret.metadata.labels.unwrap()["app"], "web");
    assert_eq!(
        r.api().with_status(&es).status.unwrap().observed_generation,
        Some(2)
    );
}

#[tokio::test]
async fn unchanged_objects_cost_nothing_even_after_a_restart() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let es = sealed(&kms, &key, &[("password", "s3cr3t")]).await;
    let r = reconciler(kms, InMemoryCluster::new());
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    let kms_calls = decrypt_calls(&r);
    let writes = r.api().calls.status_applies.load(Ordering::Relaxed);
    assert_eq!(kms_calls, 1);
    // Periodic resync: nothing to do, nothing written.
    for _ in 0..3 {
        assert_eq!(step(&r, &es).await, Reconciled::UpToDate);
    }
    assert_eq!(decrypt_calls(&r), kms_calls);
    assert_eq!(
        r.api().calls.status_applies.load(Ordering::Relaxed),
        writes,
        "status written only on change"
    );
    assert_eq!(r.api().calls.secret_applies.load(Ordering::Relaxed), 1);

    // A restart: new process, empty cache, same cluster state.
    let (kms, api) = r.into_parts();
    let memory = kms.into_inner().into_inner();
    let restarted = reconciler(memory, api);
    assert_eq!(step(&restarted, &es).await, Reconciled::UpToDate);
    assert_eq!(
        decrypt_calls(&restarted),
        0,
        "a restart with nothing changed makes no KMS call"
    );
    assert_eq!(
        restarted
            .kms()
            .inner()
            .inner()
            .calls
            .decrypt
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn drift_is_repaired_from_the_cache() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let es = sealed(&kms, &key, &[("password", "s3cr3t")]).await;
    let r = reconciler(kms, InMemoryCluster::new());
    step(&r, &es).await;
    // Someone edits the managed Secret.
    let mut edited = r.api().secret("prod", "db").unwrap();
    edited.data = Some(BTreeMap::from([(
        "password".into(),
        ByteString(b"hacked".to_vec()),
    )]));
    r.api().put_secret(edited);
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    assert_eq!(
        data(&r.api().secret("prod", "db").unwrap())["password"],
        "s3cr3t"
    );
    // Someone deletes it.
    r.api().delete_secret("prod", "db");
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    assert_eq!(
        data(&r.api().secret("prod", "db").unwrap())["password"],
        "s3cr3t"
    );
    assert_eq!(decrypt_calls(&r), 1, "repairs reuse the cached data key");
    assert!(r.kms().hits() >= 2);
}

#[tokio::test]
async fn a_failed_decrypt_leaves_the_secret_exactly_as_it_was() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let mut es = sealed(&kms, &key, &[("password", "s3cr3t"), ("user", "app")]).await;
    let r = reconciler(kms, InMemoryCluster::new());
    step(&r, &es).await;
    let before = r.api().secret("prod", "db").unwrap();
    // A tampered item: one character of the ciphertext changed.
    let value = es.spec.encrypted_data.get_mut("password").unwrap();
    let flipped = if value.ends_with('A') { 'B' } else { 'A' };
    value.pop();
    value.pop();
    value.push(flipped);
    value.push('=');
    es.metadata.generation = Some(2);
    let outcome = step(&r, &es).await;
    assert!(matches!(outcome, Reconciled::Failed(_)), "{outcome:?}");
    assert_eq!(
        r.api().secret("prod", "db").unwrap(),
        before,
        "Secret untouched"
    );
    let status = r.api().with_status(&es).status.unwrap();
    let ready = &status.conditions[0];
    assert_eq!(ready.status, "False");
    assert!(
        [reason::DECRYPT_FAILED, reason::INVALID_SPEC].contains(&ready.reason.as_str()),
        "{}",
        ready.reason
    );
    assert!(ready.message.contains("item password"), "{}", ready.message);
    assert!(
        ready.message.contains("left unchanged"),
        "{}",
        ready.message
    );
    assert!(!ready.message.contains("s3cr3t"));
    // The warning event is emitted once, not on every retry.
    step(&r, &es).await;
    step(&r, &es).await;
    let warnings: Vec<_> = r
        .api()
        .events()
        .into_iter()
        .filter(|(_, e)| e.warning)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[tokio::test(start_paused = true)]
async fn kms_failures_keep_the_secret_and_say_why() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let es = sealed(&kms, &key, &[("password", "s3cr3t")]).await;
    let cluster = InMemoryCluster::new();
    let r = reconciler(kms, cluster);
    step(&r, &es).await;
    let before = r.api().secret("prod", "db").unwrap();
    // A restart while the key is disabled: the cache is empty, so KMS must be asked.
    let (kms, api) = r.into_parts();
    let memory = kms.into_inner().into_inner();
    memory.set_enabled(&key, false);
    let r = reconciler(memory, api);
    let mut changed = es.clone();
    changed.metadata.generation = Some(2);
    assert_eq!(
        step(&r, &changed).await,
        Reconciled::Failed(reason::KEY_DISABLED)
    );
    assert_eq!(r.api().secret("prod", "db").unwrap(), before);
    let ready = r.api().with_status(&es).status.unwrap().conditions[0].clone();
    assert!(ready.message.contains("enable it"), "{}", ready.message);
    assert!(
        !ready.message.contains("KMS said"),
        "tenants get a reason and a fix, not KMS's words: {}",
        ready.message
    );
    r.kms().inner().inner().set_enabled(&key, true);
    // Not before its backoff is over, even once the key is back (nothing is sent to KMS)...
    assert_eq!(step(&r, &changed).await, Reconciled::BackingOff);
    // ... and then at its first step.
    tokio::time::advance(std::time::Duration::from_secs(6)).await;
    assert_eq!(step(&r, &changed).await, Reconciled::Applied);
    let events = r.api().events();
    let last = &events.last().unwrap().1;
    assert_eq!(
        (last.warning, last.reason),
        (false, reason::SYNCED),
        "recovery is announced"
    );
}

#[tokio::test]
async fn a_foreign_secret_is_refused_until_handed_over() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let es = sealed(&kms, &key, &[("password", "s3cr3t")]).await;
    let cluster = InMemoryCluster::new();
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("db".into()),
            namespace: Some("prod".into()),
            labels: Some(BTreeMap::from([("theirs".into(), "x".into())])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/basic-auth".into()),
        data: Some(BTreeMap::from([
            ("password".into(), ByteString(b"theirs".to_vec())),
            ("theirs-only".into(), ByteString(b"x".to_vec())),
        ])),
        ..Secret::default()
    };
    cluster.put_secret(foreign.clone());
    let r = reconciler(kms, cluster);
    assert_eq!(step(&r, &es).await, Reconciled::Refused);
    let untouched = r.api().secret("prod", "db").unwrap();
    assert_eq!(data(&untouched)["password"], "theirs");
    assert_eq!(
        decrypt_calls(&r),
        0,
        "no KMS call for a Secret we will not write"
    );
    let ready = r.api().with_status(&es).status.unwrap().conditions[0].clone();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason::SECRET_EXISTS)
    );
    let events = r.api().events();
    assert_eq!(events.len(), 1);
    assert!(events[0].1.warning && events[0].1.note.contains("kmseal.dev/managed=true"));
    // The owner hands it over with the annotation.
    let mut annotated = untouched;
    annotated.metadata.annotations = Some(BTreeMap::from([(
        reconcile::ADOPT_ANNOTATION.into(),
        "true".into(),
    )]));
    r.api().put_secret(annotated);
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    let adopted = r.api().secret("prod", "db").unwrap();
    // Adopted means replaced whole: exactly the desired Secret, nothing of the old one left.
    assert_eq!(
        data(&adopted),
        BTreeMap::from([("password".into(), "s3cr3t".into())])
    );
    assert_eq!(adopted.metadata.owner_references.unwrap()[0].name, "db");
    let annotations = adopted.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key(reconcile::ADOPT_ANNOTATION),
        "{annotations:?}"
    );
    assert!(!adopted.metadata.labels.unwrap().contains_key("theirs"));
}

#[tokio::test]
async fn metrics_count_by_result_and_reason_only() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let es = sealed(&kms, &key, &[("password", "s3cr3t")]).await;
    let r = reconciler(kms, InMemoryCluster::new());
    step(&r, &es).await;
    step(&r, &es).await;
    let text = r.metrics().encode();
    assert!(
        text.contains(r#"kmseal_reconciles_total{result="applied"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"kmseal_reconciles_total{result="up_to_date"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"kmseal_kms_requests_total{operation="Decrypt",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("kmseal_reconcile_duration_seconds_count 2"),
        "{text}"
    );
    assert!(
        !text.contains("prod") && !text.contains("\"db\""),
        "no object names in metrics"
    );
}

/// The same flow against moto: a real KMS enforcing encryption contexts, with KMS calls counted.
#[tokio::test]
async fn controller_flow_against_moto() {
    let Some(emu) = common::moto() else { return };
    let admin = common::admin(&emu.url, "us-east-1").await;
    let key = common::create_symmetric_key(&admin).await;
    let aws = kmseal::kms::AwsKms::from_sdk_config(common::sdk_config(&emu.url, "us-east-1").await);
    let mut es = sealed(&aws, &key, &[("password", "from-moto"), ("user", "app")]).await;
    let r = reconciler(aws, InMemoryCluster::new());
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    assert_eq!(
        data(&r.api().secret("prod", "db").unwrap())["password"],
        "from-moto"
    );
    let text = r.metrics().encode();
    assert!(
        text.contains(r#"kmseal_kms_requests_total{operation="Decrypt",outcome="ok"} 1"#),
        "{text}"
    );
    // Copied to another namespace, it is refused by KMS's context check; nothing is written.
    let mut moved = es.clone();
    moved.metadata.namespace = Some("dev".into());
    moved.metadata.uid = Some("other-uid".into());
    assert_eq!(
        step(&r, &moved).await,
        Reconciled::Failed(reason::DECRYPT_FAILED)
    );
    assert!(r.api().secret("dev", "db").is_none());
    // Restart with nothing changed: zero KMS requests.
    let (kms, api) = r.into_parts();
    let restarted = reconciler(kms.into_inner().into_inner(), api);
    assert_eq!(step(&restarted, &es).await, Reconciled::UpToDate);
    assert!(
        !restarted
            .metrics()
            .encode()
            .contains("kmseal_kms_requests_total{"),
        "no KMS request after restart"
    );
    // A changed spec is still caught.
    es.spec.encrypted_data.remove("user");
    es.metadata.generation = Some(2);
    assert_eq!(step(&restarted, &es).await, Reconciled::Applied);
    assert_eq!(
        data(&restarted.api().secret("prod", "db").unwrap())
            .keys()
            .collect::<Vec<_>>(),
        ["password"]
    );
    // A deleted Secret is recreated.
    restarted.api().delete_secret("prod", "db");
    assert_eq!(step(&restarted, &es).await, Reconciled::Applied);
    assert_eq!(
        data(&restarted.api().secret("prod", "db").unwrap())["password"],
        "from-moto"
    );
    // A foreign Secret of the same name elsewhere is refused and left alone.
    let mut elsewhere = es.clone();
    elsewhere.metadata.namespace = Some("staging".into());
    elsewhere.metadata.uid = Some("uid-staging".into());
    restarted.api().put_secret(Secret {
        metadata: ObjectMeta {
            name: Some("db".into()),
            namespace: Some("staging".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "password".into(),
            ByteString(b"theirs".to_vec()),
        )])),
        ..Secret::default()
    });
    assert_eq!(step(&restarted, &elsewhere).await, Reconciled::Refused);
    assert_eq!(
        data(&restarted.api().secret("staging", "db").unwrap())["password"],
        "theirs"
    );
}

#[tokio::test]
async fn backoff_state_of_deleted_objects_is_pruned() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let es = sealed(&kms, &key, &[("password", "s3cr3t")]).await;
    kms.set_enabled(&key, false);
    let r = reconciler(kms, InMemoryCluster::new());
    assert!(matches!(step(&r, &es).await, Reconciled::Failed(_)));
    assert_eq!(r.failing_objects(), 1);
    r.prune_failures(|_, _| true);
    assert_eq!(r.failing_objects(), 1, "still exists: kept");
    r.prune_failures(|_, _| false);
    assert_eq!(r.failing_objects(), 0, "deleted: forgotten");
}

#[tokio::test]
async fn an_immutable_secret_that_cannot_change_says_how_to_proceed() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let mut es = sealed(&kms, &key, &[("password", "one")]).await;
    es.spec
        .template
        .get_or_insert_with(Default::default)
        .immutable = Some(true);
    let r = reconciler(kms, InMemoryCluster::new());
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    let update = sealed(r.kms().inner().inner(), &key, &[("password", "two")]).await;
    es.spec.encrypted_data = update.spec.encrypted_data;
    es.metadata.generation = Some(2);
    assert_eq!(
        step(&r, &es).await,
        Reconciled::Failed(reason::APPLY_FAILED)
    );
    let ready = r.api().with_status(&es).status.unwrap().conditions[0].clone();
    assert!(
        ready.message.contains("delete it and kmseal recreates it"),
        "{}",
        ready.message
    );
    assert_eq!(
        data(&r.api().secret("prod", "db").unwrap())["password"],
        "one"
    );
}

/// Values sealed by kmseal 0.1 (envelope v1, v1 encryption context) still open in the
/// controller, under the same key policy as v2 values.
#[tokio::test]
async fn v1_values_from_kmseal_0_1_still_open() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let mut es = sealed(&kms, &key, &[("password", "v2-value")]).await;
    use base64::Engine;
    for (item, v1) in common::sealed_v1(&kms, &key, "prod", "db", &[("legacy", b"v1-value")]).await
    {
        es.spec
            .encrypted_data
            .insert(item, base64::engine::general_purpose::STANDARD.encode(v1));
    }
    let r = reconciler(kms, InMemoryCluster::new());
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    let secret = r.api().secret("prod", "db").unwrap();
    assert_eq!(data(&secret)["legacy"], "v1-value");
    assert_eq!(data(&secret)["password"], "v2-value");
    assert_eq!(decrypt_calls(&r), 2, "one Decrypt per data key, v1 and v2");
}

/// An invalid `kmseal.dev/scope` annotation makes the object invalid even when every item is an
/// envelope (which ignores it): a typo is reported, not silently ignored.
#[tokio::test]
async fn an_invalid_scope_annotation_is_reported_even_without_plain_items() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let mut es = sealed(&kms, &key, &[("password", "s3cr3t")]).await;
    es.metadata.annotations = Some(BTreeMap::from([(
        kmseal::api::PLAIN_SCOPE_ANNOTATION.into(),
        "cluster-wide-please".into(),
    )]));
    let r = reconciler(kms, InMemoryCluster::new());
    assert_eq!(
        step(&r, &es).await,
        Reconciled::Failed(reason::INVALID_SPEC)
    );
    assert_eq!(decrypt_calls(&r), 0);
    let message = r.api().with_status(&es).status.unwrap().conditions[0]
        .message
        .clone();
    assert!(message.contains("kmseal.dev/scope"), "{message}");
}

/// An object the watch cache keeps settled (without its items) stays Ready when reconciled
/// again (a resync, its Secret's event): the Secret type's required items were checked when it
/// settled, not against the empty stand-in (which once made a basic-auth object flap to
/// InvalidSpec on every Secret event).
#[tokio::test]
async fn a_settled_object_of_a_type_with_required_items_stays_ready() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let es = sealed(&kms, &key, &[("username", "admin"), ("password", "s3cr3t")]).await;
    let r = reconciler(kms, InMemoryCluster::new());
    assert_eq!(step(&r, &es).await, Reconciled::Applied);
    let current = r.api().with_status(&es);
    let kmseal::controller::watched::Watched::Settled(settled) =
        kmseal::controller::watched::Watched::settle(current)
    else {
        panic!("a Ready object is settled");
    };
    assert!(settled.object.spec.encrypted_data.is_empty());
    for _ in 0..3 {
        let (outcome, _) = r.reconcile_settled(&settled).await.expect("reconcile");
        assert_eq!(outcome, Reconciled::UpToDate);
    }
    let status = r.api().with_status(&es).status.unwrap();
    assert_eq!(
        reconcile::ready_condition(Some(&status)).unwrap().status,
        "True",
        "{status:?}"
    );
}
