//! The controller's runtime wiring (watches, owned-Secret triggers, stores, readiness, status
//! and events) end to end, against the in-process fake of the Kubernetes API in
//! `tests/common/fake_api.rs`. It stands in for the kind suite, which needs Docker.

mod common;
#[path = "common/fake_api.rs"]
mod fake_api;
#[path = "common/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fake_api::Fake;
use harness::*;
use kmseal::binding::Scope;
use kmseal::kms::MemoryKms;
use kmseal::random::OsRandom;
use kmseal::seal::{self, PlainSecret, Wrapper};
use serde_json::Value;
use zeroize::Zeroizing;

/// A fake with one EncryptedSecret prod/db sealed under a key of `memory`.
async fn fake_with_one_object(memory: &MemoryKms) -> Fake {
    let key = memory.create_key();
    let plain = PlainSecret {
        namespace: Some("prod".into()),
        name: "db".into(),
        data: BTreeMap::from([("password".to_owned(), Zeroizing::new(b"s3cr3t".to_vec()))]),
        ..PlainSecret::default()
    };
    let es = seal::seal_secret(
        &Wrapper::Kms {
            kms: memory,
            key_id: &key,
        },
        &plain,
        Scope::Strict,
        &mut OsRandom,
        1,
    )
    .await
    .unwrap();
    let fake = Fake::default();
    fake.add_encrypted(&es);
    fake
}

fn lease_holder(fake: &Fake) -> Option<String> {
    fake.lock()
        .leases
        .get(&("kmseal".to_owned(), "kmseal-controller".to_owned()))
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn leader_flags(identity: &'static str) -> [&'static str; 7] {
    [
        "--leader-election",
        "--leader-election-namespace",
        "kmseal",
        // Renewals every 4 s with a 2 s margin: robust on a loaded CI machine.
        "--lease-duration",
        "6",
        "--pod-name",
        identity,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    let a = start_with(&fake, memory.clone(), &leader_flags("pod-a"));
    eventually("the leader creates the Secret", || {
        fake.secret("prod", "db").is_some()
    })
    .await;
    assert_eq!(lease_holder(&fake).as_deref(), Some("pod-a"));

    let b = start_with(&fake, memory.clone(), &leader_flags("pod-b"));
    eventually("a standby is ready (rolling updates need it)", || {
        b.ready.load(Ordering::Relaxed)
    })
    .await;
    // Longer than one lease: the holder must have renewed, and the standby must not take over.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        lease_holder(&fake).as_deref(),
        Some("pod-a"),
        "the leader keeps renewing"
    );
    assert_eq!(
        b.calls.load(Ordering::Relaxed),
        0,
        "a standby neither watches nor writes"
    );

    // The leader dies without releasing the Lease; the standby takes over after it expires.
    a.task.abort();
    fake.user_writes_secret("prod", "db", None);
    eventually_within(
        "the standby becomes leader and repairs",
        Duration::from_secs(25),
        || lease_holder(&fake).as_deref() == Some("pod-b") && fake.secret("prod", "db").is_some(),
    )
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_stops() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    let a = start_with(&fake, memory.clone(), &leader_flags("pod-a"));
    eventually("leader", || lease_holder(&fake).as_deref() == Some("pod-a")).await;
    // Another instance holds the Lease now (e.g. after a network partition healed).
    {
        let mut state = fake.lock();
        let lease = state
            .leases
            .get_mut(&("kmseal".to_owned(), "kmseal-controller".to_owned()))
            .unwrap();
        lease["spec"]["holderIdentity"] = "pod-z".into();
        lease["spec"]["leaseDurationSeconds"] = 3600.into();
        lease["spec"]["renewTime"] = kmseal::time::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .replace('Z', ".000000Z")
        .into();
    }
    let result = tokio::time::timeout(Duration::from_secs(25), a.task)
        .await
        .expect("the former leader stops")
        .unwrap();
    assert!(
        matches!(
            result,
            Err(kmseal::controller::runtime::RunError::LostLease)
        ),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_syncs_repairs_and_restarts_for_free() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;

    let running = start(&fake, memory.clone());
    eventually("the Secret is created", || {
        fake.secret("prod", "db").is_some()
    })
    .await;
    let secret = fake.secret("prod", "db").unwrap();
    assert_eq!(data(&secret, "password"), b"s3cr3t");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "EncryptedSecret"
    );
    eventually("Ready=True", || {
        fake.status("prod", "db")["conditions"][0]["status"] == "True"
    })
    .await;
    eventually("/readyz after the initial sync", || {
        running.ready.load(Ordering::Relaxed)
    })
    .await;

    // Drift: a user edits the Secret; the watch brings it back.
    let mut edited = secret.clone();
    edited["data"]["password"] = "aGFja2Vk".into();
    fake.user_writes_secret("prod", "db", Some(edited));
    eventually("the edit is repaired", || {
        fake.secret("prod", "db")
            .is_some_and(|s| data(&s, "password") == b"s3cr3t")
    })
    .await;
    // A user deletes it; it comes back.
    fake.user_writes_secret("prod", "db", None);
    eventually("the deleted Secret is recreated", || {
        fake.secret("prod", "db").is_some()
    })
    .await;
    assert_eq!(
        memory.calls.decrypt.load(Ordering::Relaxed),
        1,
        "repairs use the cached data key"
    );
    running.stop().await;

    // Restart with nothing changed: the new process lists, finds everything in place, and
    // makes no KMS call and no Secret write.
    let applies = fake.lock().secret_writes;
    let running = start(&fake, memory.clone());
    eventually("ready after restart", || {
        running.ready.load(Ordering::Relaxed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        memory.calls.decrypt.load(Ordering::Relaxed),
        1,
        "no KMS call after a restart"
    );
    assert_eq!(
        fake.lock().secret_writes,
        applies,
        "no Secret write after a restart"
    );
    // The restarted controller keeps the object without its values (its status shows the
    // Secret was produced from this spec): a repair GETs it once, whole.
    let gets = fake.lock().es_gets;
    fake.user_writes_secret("prod", "db", None);
    eventually("the deleted Secret is recreated after the restart", || {
        fake.secret("prod", "db")
            .is_some_and(|s| data(&s, "password") == b"s3cr3t")
    })
    .await;
    assert_eq!(
        fake.lock().es_gets,
        gets + 1,
        "one GET of the EncryptedSecret"
    );
    assert_eq!(memory.calls.decrypt.load(Ordering::Relaxed), 2);
    running.stop().await;
    let events = fake.lock().events.clone();
    assert!(events.iter().any(|e| e["reason"] == "Synced"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_selector_scope_the_watches() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    let running = start_with(
        &fake,
        memory.clone(),
        &[
            "--namespace",
            "prod",
            "--namespace",
            "staging",
            "--selector",
            "shard=a",
        ],
    );
    eventually("ready", || running.ready.load(Ordering::Relaxed)).await;
    eventually("the Secret in prod", || fake.secret("prod", "db").is_some()).await;
    let requests = fake.lock().es_requests.clone();
    for ns in ["prod", "staging"] {
        let path = format!("/apis/kmseal.dev/v1alpha1/namespaces/{ns}/encryptedsecrets?");
        assert!(
            requests.iter().any(|r| r.starts_with(&path)),
            "{ns} is watched: {requests:?}"
        );
    }
    assert!(
        requests
            .iter()
            .all(|r| r.contains("labelSelector=shard%3Da")),
        "every EncryptedSecret request carries the selector: {requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("/apis/kmseal.dev/v1alpha1/encryptedsecrets")),
        "no cluster-wide watch: {requests:?}"
    );
    running.stop().await;
}

/// A namespace full of bad objects (40 objects of 256 junk items each, every item needing its
/// own Decrypt) cannot delay another namespace's Secret by more than a turn: counted in KMS
/// calls, at most 2 of the noisy namespace's calls are made between the quiet object's
/// creation and its own Decrypt (one already admitted, then round-robin). Measured without the
/// per-namespace share of waiting requests: 9; before the per-object stop: 10,240 per round.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_noisy_namespace_does_not_delay_another() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let key = memory.create_key();
    let fake = Fake::default();
    for i in 0..40 {
        let mut es = kmseal::api::EncryptedSecret::with_name(
            Some("noisy"),
            &format!("junk-{i}"),
            Default::default(),
        );
        for item in 0..kmseal::api::MAX_ITEMS {
            let header = kmseal::envelope::Header {
                version: kmseal::envelope::Version::V2,
                scope: Scope::Strict,
                algorithm: kmseal::envelope::WrapAlgorithm::KmsSymmetric,
                wrapped_at: 0,
                key_arn: key.clone(),
                key_material_id: None,
                wrapped_key: format!("junk-{i}-{item}").into_bytes(),
            };
            let mut value = header.encode().unwrap();
            value.extend_from_slice(&[0; 28]);
            use base64::Engine;
            es.spec.encrypted_data.insert(
                format!("i{item}"),
                base64::engine::general_purpose::STANDARD.encode(value),
            );
        }
        fake.add_encrypted(&es);
    }
    let gate_memory = memory.clone();
    let running = start_with_kms(
        &fake,
        move |args| {
            let gate = kmseal::controller::runtime::kms_gate(args);
            (
                kmseal::kms::FairKms::new(gate_memory, gate.clone()),
                Some(gate),
            )
        },
        &["--kms-requests-per-second", "20"],
    );
    eventually("the noisy namespace is failing", || {
        memory.calls.decrypt.load(Ordering::Relaxed) >= 20
    })
    .await;
    let before = memory.decrypt_tenants().len();
    let started = tokio::time::Instant::now();
    let quiet = fake_with_one_object_in(&memory, "quiet").await;
    fake.add_encrypted(&quiet);
    eventually("the quiet namespace's Secret", || {
        fake.secret("quiet", "db").is_some()
    })
    .await;
    let waited = started.elapsed();
    let tenants = memory.decrypt_tenants();
    let quiet_at = tenants[before..]
        .iter()
        .position(|t| t == "quiet")
        .expect("the quiet namespace made its call");
    assert!(
        quiet_at <= 2,
        "{quiet_at} noisy calls went first: {:?}",
        &tenants[before..before + quiet_at]
    );
    // The same bound in (virtual) time: three slots of the 20/s budget.
    assert!(waited <= Duration::from_millis(150), "{waited:?}");
    // Each noisy attempt stopped at its first failed Decrypt.
    let noisy = tenants.iter().filter(|t| *t == "noisy").count() as u64;
    let text = running.metrics.encode();
    let attempts: u64 = text
        .lines()
        .filter(|l| l.starts_with("kmseal_reconcile_failures_total{reason=\"DecryptFailed\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(noisy, attempts, "one Decrypt per failed attempt");
    running.stop().await;
}

async fn fake_with_one_object_in(
    memory: &MemoryKms,
    namespace: &str,
) -> kmseal::api::EncryptedSecret {
    sealed_in(memory, &memory.create_key(), namespace, "db").await
}

/// One EncryptedSecret that does not match kmseal's types (say, written when the CRD schema was
/// older) is logged and skipped; the others sync and the controller becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_object_does_not_block_the_others() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    fake.add_raw(serde_json::json!({
        "apiVersion": "kmseal.dev/v1alpha1", "kind": "EncryptedSecret",
        "metadata": {"name": "broken", "namespace": "prod"},
        "spec": {"encryptedData": ["not", "a", "map"], "template": 7}
    }));
    let running = start(&fake, memory.clone());
    eventually("the good object syncs", || {
        fake.secret("prod", "db").is_some()
    })
    .await;
    eventually("ready after the initial sync", || {
        running.ready.load(Ordering::Relaxed)
    })
    .await;
    assert!(fake.secret("prod", "broken").is_none());
    running.stop().await;
}

/// The key policy file is re-read when it changes, and every object is checked again: a value
/// under a key the first policy did not allow syncs once the file allows it, with no change to
/// the object; an invalid edit keeps the last good policy.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_changed_policy_file_is_applied_to_every_object() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    let key = {
        let es = fake.lock().encrypted[&("prod".to_owned(), "db".to_owned())].clone();
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD
            .decode(es["spec"]["encryptedData"]["password"].as_str().unwrap())
            .unwrap();
        kmseal::envelope::parse(&value).unwrap().header.key_arn
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key-policy.yaml");
    let policy = |key: &str| {
        format!(
            "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n  - key: {key}\n    namespaces: [prod]\n"
        )
    };
    let other = memory.create_key();
    std::fs::write(&path, policy(&other)).unwrap();
    let running = start_with(
        &fake,
        memory.clone(),
        &["--key-policy", path.to_str().unwrap()],
    );
    eventually("refused: the key is not allowed", || {
        fake.status("prod", "db")["conditions"][0]["reason"] == "KeyNotAllowed"
    })
    .await;
    assert_eq!(memory.calls.decrypt.load(Ordering::Relaxed), 0);
    std::fs::write(&path, "keys: [").unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(
        fake.secret("prod", "db").is_none(),
        "an invalid edit changes nothing"
    );
    std::fs::write(&path, policy(&key)).unwrap();
    let allowed = tokio::time::Instant::now();
    eventually_within(
        "synced once the file allows the key",
        Duration::from_secs(30),
        || fake.secret("prod", "db").is_some(),
    )
    .await;
    // The README says: re-read within 10 seconds of a change.
    assert!(
        allowed.elapsed() <= Duration::from_secs(11),
        "{:?}",
        allowed.elapsed()
    );
    running.stop().await;
}

/// A policy alias that cannot be resolved at start (here `kms:DescribeKey` is denied) keeps
/// values under its key refused, and is resolved again every 10 s until it is; then the object
/// syncs without any change to it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_unresolved_policy_alias_is_retried_until_it_resolves() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let key = memory.create_key();
    memory.create_alias("alias/team", &key);
    memory.deny("kms:DescribeKey", &key);
    let fake = Fake::default();
    fake.add_encrypted(&sealed_in(&memory, &key, "prod", "db").await);
    let alias = "arn:aws:kms:eu-west-1:000000000000:alias/team";
    let running = start_with(&fake, memory.clone(), &["--allowed-keys", alias]);
    eventually("refused while the alias is unresolved", || {
        fake.status("prod", "db")["conditions"][0]["reason"] == "KeyNotAllowed"
    })
    .await;
    assert_eq!(memory.calls.decrypt.load(Ordering::Relaxed), 0);
    memory.allow("kms:DescribeKey", &key);
    let allowed = tokio::time::Instant::now();
    eventually_within(
        "synced once the alias resolves",
        Duration::from_secs(30),
        || fake.secret("prod", "db").is_some(),
    )
    .await;
    assert!(
        allowed.elapsed() <= Duration::from_secs(11),
        "{:?}",
        allowed.elapsed()
    );
    running.stop().await;
}

/// What a fault-injecting KMS does with each request.
const KMS_OK: u8 = 0;
const KMS_DOWN: u8 = 1;
const KMS_HUNG: u8 = 2;

/// A KMS that can be made unavailable (as in an outage) or to hang (a blackhole: connections
/// accepted, no answer) until released, and counts the `Decrypt` calls that reach it.
struct Faulty<K> {
    inner: K,
    mode: Arc<std::sync::atomic::AtomicU8>,
    decrypts: Arc<std::sync::atomic::AtomicU64>,
}

impl<K> Faulty<K> {
    async fn fault(&self, action: &'static str) -> Result<(), kmseal::kms::KmsError> {
        loop {
            match self.mode.load(Ordering::SeqCst) {
                KMS_DOWN => {
                    return Err(kmseal::kms::KmsError::new(
                        kmseal::kms::KmsErrorKind::Unavailable,
                        action,
                        None,
                        "ServiceUnavailableException",
                    ));
                }
                KMS_HUNG => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => return Ok(()),
            }
        }
    }
}

impl<K: kmseal::kms::Kms> kmseal::kms::Kms for Faulty<K> {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &kmseal::binding::EncryptionContext,
    ) -> Result<kmseal::kms::GeneratedKey, kmseal::kms::KmsError> {
        self.inner.generate_data_key(key_id, context).await
    }
    async fn decrypt(
        &self,
        request: kmseal::kms::DecryptRequest<'_>,
    ) -> Result<kmseal::kms::Decrypted, kmseal::kms::KmsError> {
        self.decrypts.fetch_add(1, Ordering::SeqCst);
        self.fault("kms:Decrypt").await?;
        self.inner.decrypt(request).await
    }
    async fn public_key(
        &self,
        key_id: &str,
    ) -> Result<kmseal::kms::PublicKeyInfo, kmseal::kms::KmsError> {
        self.inner.public_key(key_id).await
    }
    async fn describe_key(
        &self,
        key_id: &str,
    ) -> Result<kmseal::kms::KeyFacts, kmseal::kms::KmsError> {
        self.fault("kms:DescribeKey").await?;
        self.inner.describe_key(key_id).await
    }
    async fn re_encrypt(
        &self,
        request: kmseal::kms::ReEncryptRequest<'_>,
    ) -> Result<kmseal::kms::ReEncrypted, kmseal::kms::KmsError> {
        self.fault("kms:ReEncrypt").await?;
        self.inner.re_encrypt(request).await
    }
    async fn last_rotation(&self, key_id: &str) -> Result<Option<u64>, kmseal::kms::KmsError> {
        self.fault("kms:ListKeyRotations").await?;
        self.inner.last_rotation(key_id).await
    }
}

struct Faults {
    mode: Arc<std::sync::atomic::AtomicU8>,
    decrypts: Arc<std::sync::atomic::AtomicU64>,
}

impl Faults {
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
    fn decrypts(&self) -> u64 {
        self.decrypts.load(Ordering::SeqCst)
    }
}

/// The controller over `fake` with a faulty KMS in front of `memory`, behind the controller's
/// own fair budget (50/s, as by default).
fn start_faulty(fake: &Fake, memory: Arc<MemoryKms>) -> (Running, Faults) {
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(KMS_OK));
    let decrypts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let faulty = Faulty {
        inner: memory,
        mode: mode.clone(),
        decrypts: decrypts.clone(),
    };
    let running = start_with_kms(
        fake,
        move |args| {
            let gate = kmseal::controller::runtime::kms_gate(args);
            (kmseal::kms::FairKms::new(faulty, gate.clone()), Some(gate))
        },
        &[],
    );
    (running, Faults { mode, decrypts })
}

/// A cold start writes each Secret once, each status once, and publishes one event per object:
/// the controller's own Secret and status writes trigger no second reconcile, even when the
/// EncryptedSecret watch lags (here by 300 ms) so that the reconcile triggered by the new
/// Secret reads the object before its status is back. API requests per object, counted by the
/// fake API server: a GET (the Secret is not in the watch cache yet), the create, the status
/// and the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_writes_each_secret_and_status_once() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let key = memory.create_key();
    let fake = Fake::default();
    fake.lock().es_event_delay = Duration::from_millis(300);
    const OBJECTS: u64 = 60;
    for i in 0..OBJECTS {
        let es = sealed_in(&memory, &key, &format!("ns-{}", i % 6), &format!("app-{i}")).await;
        fake.add_encrypted(&es);
    }
    let running = start(&fake, memory.clone());
    eventually("every object ready", || {
        (0..OBJECTS).all(|i| ready(&fake, &format!("ns-{}", i % 6), &format!("app-{i}")))
    })
    .await;
    // Time for any echo of the controller's own writes to come back and be acted on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let state = fake.lock();
        assert_eq!(state.secret_writes, OBJECTS, "one Secret write per object");
        assert_eq!(state.status_writes, OBJECTS, "one status write per object");
        assert_eq!(state.events.len() as u64, OBJECTS, "one event per object");
        assert_eq!(state.event_patches, 0, "no event repeated");
        assert!(state.secret_gets <= OBJECTS);
    }
    let requests = running.calls.load(Ordering::Relaxed);
    // The lists and watches of EncryptedSecrets and Secrets, then at most 4 per object.
    assert!(requests <= 4 * OBJECTS + 4, "{requests} API requests");
    assert_eq!(memory.calls.decrypt.load(Ordering::Relaxed), OBJECTS);
    running.stop().await;
}

/// A failed object is retried at the first step of its backoff (5–6 s), not at once: the
/// status the controller writes about the failure does not trigger a retry.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_object_is_retried_at_its_first_backoff_step() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    let (running, kms) = start_faulty(&fake, memory.clone());
    kms.set(KMS_DOWN);
    eventually("the first attempt fails", || {
        fake.status("prod", "db")["conditions"][0]["reason"] == "KmsUnavailable"
    })
    .await;
    let failed_at = tokio::time::Instant::now();
    assert_eq!(kms.decrypts(), 1);
    tokio::time::sleep(Duration::from_millis(4900)).await;
    assert_eq!(kms.decrypts(), 1, "no retry before the first backoff step");
    eventually_within("the first retry", Duration::from_secs(2), || {
        kms.decrypts() == 2
    })
    .await;
    let retried_after = failed_at.elapsed();
    assert!(
        retried_after >= Duration::from_secs(5) && retried_after <= Duration::from_millis(6100),
        "{retried_after:?}"
    );
    running.stop().await;
}

/// When KMS answers again after an outage, the objects that failed for want of it are retried
/// within seconds (a probe every 15 s while they wait), not at the end of their backoff.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn objects_waiting_for_kms_are_retried_when_it_answers_again() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let key = memory.create_key();
    let fake = Fake::default();
    for i in 0..3 {
        fake.add_encrypted(&sealed_in(&memory, &key, "prod", &format!("app-{i}")).await);
    }
    let (running, kms) = start_faulty(&fake, memory.clone());
    kms.set(KMS_DOWN);
    // 200 s of outage: each object has failed 6 times and waits ~2 more minutes.
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert!(kms.decrypts() >= 15, "{}", kms.decrypts());
    kms.set(KMS_OK);
    let back = tokio::time::Instant::now();
    eventually_within("every object ready", Duration::from_secs(60), || {
        (0..3).all(|i| ready(&fake, "prod", &format!("app-{i}")))
    })
    .await;
    let recovered_after = back.elapsed();
    assert!(
        recovered_after <= Duration::from_secs(20),
        "{recovered_after:?} after KMS came back"
    );
    running.stop().await;
}

/// With KMS accepting requests but not answering, reconciles that need it hold at most half of
/// the reconcile slots; repairing a deleted Secret whose data key is cached does not wait.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn drift_repair_does_not_wait_for_a_hung_kms() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    let key = memory.create_key();
    let (running, kms) = start_faulty(&fake, memory.clone());
    eventually("synced", || fake.secret("prod", "db").is_some()).await;
    kms.set(KMS_HUNG);
    for i in 0..40 {
        fake.add_encrypted(
            &sealed_in(
                &memory,
                &key,
                &format!("busy-{}", i % 8),
                &format!("app-{i}"),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck = kms.decrypts();
    assert!(
        (1..=9).contains(&stuck),
        "{stuck} Decrypt calls hang (at most 8 held)"
    );
    fake.user_writes_secret("prod", "db", None);
    let deleted = tokio::time::Instant::now();
    eventually_within("the deleted Secret is back", Duration::from_secs(5), || {
        fake.secret("prod", "db").is_some()
    })
    .await;
    assert!(
        deleted.elapsed() <= Duration::from_secs(1),
        "{:?}",
        deleted.elapsed()
    );
    kms.set(KMS_OK);
    // The objects turned away by the full budget come back as it frees room, not at their
    // 30 s fallback.
    eventually_within(
        "the others sync once KMS answers",
        Duration::from_secs(10),
        || {
            (0..40).all(|i| {
                fake.secret(&format!("busy-{}", i % 8), &format!("app-{i}"))
                    .is_some()
            })
        },
    )
    .await;
    running.stop().await;
}

/// The periodic resync looks at each object once per interval (no KMS call, no write), spread
/// over the interval rather than all at once; an object backing off after a failure keeps to
/// its backoff instead of being retried by the resync.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_resync_looks_at_each_object_once_per_interval() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let key = memory.create_key();
    let fake = Fake::default();
    const OBJECTS: u64 = 20;
    for i in 0..OBJECTS {
        fake.add_encrypted(&sealed_in(&memory, &key, "prod", &format!("app-{i}")).await);
    }
    // An item that is not base64: refused before any KMS call, and backing off.
    let mut broken = sealed_in(&memory, &key, "prod", "broken").await;
    broken
        .spec
        .encrypted_data
        .insert("password".into(), "not base64!".into());
    fake.add_encrypted(&broken);
    let running = start_with(
        &fake,
        memory.clone(),
        &["--resync-interval", "2", "--rotation-policy", "report"],
    );
    eventually("every object ready", || {
        (0..OBJECTS).all(|i| ready(&fake, "prod", &format!("app-{i}")))
    })
    .await;
    let up_to_date = |r: &Running| counter(r, "kmseal_reconciles_total{result=\"up_to_date\"}");
    let failed = |r: &Running| counter(r, "kmseal_reconciles_total{result=\"failed\"}");
    let (before, failed_before) = (up_to_date(&running), failed(&running));
    let decrypts = memory.calls.decrypt.load(Ordering::Relaxed);
    let writes = |fake: &Fake| {
        let state = fake.lock();
        state.secret_writes + state.status_writes
    };
    let written = writes(&fake);
    // 15 intervals: each good object is looked at 15 times (±1 at the edges).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let resynced = up_to_date(&running) - before;
    assert!(
        (14 * OBJECTS..=16 * OBJECTS).contains(&resynced),
        "{resynced} resyncs of {OBJECTS} objects in 15 intervals"
    );
    // Spread: in any one second, only a slice of the objects.
    let before = up_to_date(&running);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(up_to_date(&running) - before < OBJECTS, "a burst");
    // The broken object's backoff (5, 10, 20 s... from its first failure) allows at most 3
    // retries in these 31 s; the resync would have made it about 15.
    let retried = failed(&running) - failed_before;
    assert!(retried <= 3, "{retried} retries of a backing-off object");
    assert_eq!(memory.calls.decrypt.load(Ordering::Relaxed), decrypts);
    assert_eq!(writes(&fake), written);
    running.stop().await;
}

/// Rotation, reported (issue 8's in-cluster part): the controller judges each object's values
/// from their clear headers and what KMS says about keys (looked up in the background), and
/// sets a KeyCurrent=False condition only while something needs doing, so current objects
/// cost no write. An alias moved, rotated material, a key scheduled for deletion, and back.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn stale_values_are_reported_without_a_kms_call_or_a_write_per_object() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let (first, second) = (memory.create_key(), memory.create_key());
    memory.create_alias("alias/app", &first);
    let fake = Fake::default();
    // a: sealed under the alias (spec.keyId names it); b: under the first key by its ARN.
    fake.add_encrypted(&sealed_in(&memory, "alias/app", "prod", "a").await);
    fake.add_encrypted(&sealed_in(&memory, &first, "prod", "b").await);
    let running = start_with(
        &fake,
        memory.clone(),
        &["--resync-interval", "2", "--rotation-policy", "report"],
    );
    eventually("both ready", || {
        ready(&fake, "prod", "a") && ready(&fake, "prod", "b")
    })
    .await;
    let key_current = |name: &str| {
        fake.status("prod", name)["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "KeyCurrent")
            .cloned()
    };
    let stale = |r: &Running, reason: &str| {
        counter(r, &format!("kmseal_stale_values{{reason=\"{reason}\"}}"))
    };
    let writes = |fake: &Fake| {
        let state = fake.lock();
        (state.secret_writes, state.status_writes)
    };
    let (secret_writes, status_writes) = writes(&fake);
    let decrypts = memory.calls.decrypt.load(Ordering::Relaxed);

    // Current: facts looked up, nothing written.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(memory.calls.describe_key.load(Ordering::Relaxed) >= 2);
    assert_eq!((key_current("a"), key_current("b")), (None, None));
    assert_eq!(writes(&fake), (secret_writes, status_writes));

    // The alias moves: a is under another key than it names; b is not concerned.
    memory.create_alias("alias/app", &second);
    tokio::time::sleep(Duration::from_secs(620)).await;
    let condition = key_current("a").expect("KeyCurrent on a");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "KeyChanged");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains(&second) && message.contains("kmseal rewrap"),
        "{message}"
    );
    assert_eq!(key_current("b"), None);
    assert_eq!(stale(&running, "KeyChanged"), 1);
    assert_eq!(writes(&fake), (secret_writes, status_writes + 1));
    // Still ready: the Secret is right, only its keys are not current.
    assert!(ready(&fake, "prod", "a"));

    // The first key's material rotates: b is under older material (material ids).
    memory.rotate_key(&first, 1_800_000_000);
    tokio::time::sleep(Duration::from_secs(620)).await;
    assert_eq!(
        key_current("b").expect("KeyCurrent on b")["reason"],
        "MaterialRotated"
    );
    assert_eq!(stale(&running, "MaterialRotated"), 1);

    // Back to the first key for the alias, and both re-sealed on its current material: nothing
    // left to report, the conditions go, the gauge returns to zero.
    memory.create_alias("alias/app", &first);
    for (name, key) in [("a", "alias/app"), ("b", first.as_str())] {
        let fresh = sealed_in(&memory, key, "prod", name).await;
        let mut object = fake.lock().encrypted[&("prod".to_owned(), name.to_owned())].clone();
        object["spec"] = serde_json::to_value(&fresh.spec).unwrap();
        object["status"] = Value::Null;
        fake.add_raw(object);
    }
    tokio::time::sleep(Duration::from_secs(620)).await;
    assert_eq!((key_current("a"), key_current("b")), (None, None));
    assert_eq!(
        stale(&running, "KeyChanged") + stale(&running, "MaterialRotated"),
        0
    );

    // The key scheduled for deletion: both are at risk, with the days left.
    memory.schedule_deletion(&first, 4_000_000_000);
    tokio::time::sleep(Duration::from_secs(620)).await;
    let condition = key_current("b").expect("KeyCurrent on b");
    assert_eq!(condition["reason"], "KeyPendingDeletion");
    assert!(condition["message"].as_str().unwrap().contains("day(s)"));
    assert_eq!(stale(&running, "KeyPendingDeletion"), 2);
    // All of it without a Decrypt or a Secret write, but for the two re-sealed objects.
    assert!(memory.calls.decrypt.load(Ordering::Relaxed) <= decrypts + 2);
    assert!(writes(&fake).0 <= secret_writes + 2);
    running.stop().await;
}

/// An object of two values (one data key) in prod, sealed under `key`.
async fn two_values(memory: &MemoryKms, key: &str, name: &str) -> kmseal::api::EncryptedSecret {
    seal::seal_secret(
        &Wrapper::Kms {
            kms: memory,
            key_id: key,
        },
        &PlainSecret {
            namespace: Some("prod".into()),
            name: name.into(),
            data: BTreeMap::from([
                ("password".to_owned(), Zeroizing::new(b"s3cr3t".to_vec())),
                ("user".to_owned(), Zeroizing::new(b"admin".to_vec())),
            ]),
            ..PlainSecret::default()
        },
        Scope::Strict,
        &mut OsRandom,
        1,
    )
    .await
    .unwrap()
}

/// Rotation in the cluster (issue 8): the alias an object names moves to another key. Each
/// object's data key is re-wrapped with exactly one ReEncrypt, no Decrypt, its Secret untouched,
/// only its values patched, once; an object that says Report, and one Argo CD applies, are
/// only reported. A GitOps tool setting the old values back makes no loop: it is reported.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_alias_moved_rewraps_each_data_key_once_without_a_decrypt() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let (first, second) = (memory.create_key(), memory.create_key());
    memory.create_alias("alias/app", &first);
    let fake = Fake::default();
    for name in ["a", "b", "c"] {
        fake.add_encrypted(&two_values(&memory, "alias/app", name).await);
    }
    let mut report = two_values(&memory, "alias/app", "report").await;
    report.spec.rotation = Some(kmseal::api::RotationSpec {
        policy: Some(kmseal::api::RotationPolicy::Report),
    });
    fake.add_encrypted(&report);
    let mut argo = two_values(&memory, "alias/app", "argo").await;
    argo.metadata.annotations = Some(BTreeMap::from([(
        "argocd.argoproj.io/tracking-id".to_owned(),
        "apps:kmseal.dev/EncryptedSecret:prod/argo".to_owned(),
    )]));
    fake.add_encrypted(&argo);
    let names = ["a", "b", "c", "report", "argo"];
    let running = start_with(&fake, memory.clone(), &["--resync-interval", "2"]);
    eventually("all ready", || {
        names.iter().all(|n| ready(&fake, "prod", n))
    })
    .await;
    let secrets: Vec<Value> = names
        .iter()
        .map(|n| fake.secret("prod", n).unwrap())
        .collect();
    let spec_of =
        |name: &str| fake.lock().encrypted[&("prod".to_owned(), name.to_owned())]["spec"].clone();
    let old_a = spec_of("a");
    let decrypts = memory.calls.decrypt.load(Ordering::Relaxed);
    let secret_writes = fake.lock().secret_writes;
    // Current: nothing moves.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(memory.calls.re_encrypt.load(Ordering::Relaxed), 0);
    assert_eq!(fake.lock().value_patches, 0);

    memory.create_alias("alias/app", &second);
    eventually_within("a, b, c re-wrapped", Duration::from_secs(900), || {
        ["a", "b", "c"]
            .iter()
            .all(|n| value_keys(&fake, "prod", n).iter().all(|k| *k == second))
    })
    .await;
    // Let everything settle: the reconciles the patches bring, the resync, the next facts.
    tokio::time::sleep(Duration::from_secs(620)).await;
    assert_eq!(
        memory.calls.re_encrypt.load(Ordering::Relaxed),
        3,
        "one ReEncrypt per data key, once"
    );
    assert_eq!(fake.lock().value_patches, 3);
    assert_eq!(
        memory.calls.decrypt.load(Ordering::Relaxed),
        decrypts,
        "no Decrypt"
    );
    assert_eq!(fake.lock().secret_writes, secret_writes, "no Secret write");
    for (name, before) in names.iter().zip(&secrets) {
        assert_eq!(
            fake.secret("prod", name).as_ref(),
            Some(before),
            "{name}: Secret unchanged"
        );
        assert!(ready(&fake, "prod", name), "{name} still ready");
    }
    for name in ["a", "b", "c"] {
        let status = fake.status("prod", name);
        assert!(
            status["rewrapped"]["target"]
                .as_str()
                .unwrap()
                .starts_with(&second),
            "{status}"
        );
        assert_eq!(status["rewrapped"]["values"], 2);
        assert_eq!(status["keyArns"], serde_json::json!([second.clone()]));
        assert_eq!(key_current_reason(&fake, "prod", name), None);
    }
    let rewrapped_events = fake
        .lock()
        .events
        .iter()
        .filter(|e| e["reason"] == "Rewrapped")
        .count();
    assert_eq!(rewrapped_events, 3, "one event per object");
    assert_eq!(
        counter(
            &running,
            "kmseal_rewrapped_values_total{result=\"rewrapped\"}"
        ),
        6
    );
    // Reported, not moved: the object's own policy, and Argo CD's object.
    for (name, says) in [
        ("report", "spec.rotation.policy: Report"),
        ("argo", "Argo CD"),
    ] {
        let (reason, message) = key_current_reason(&fake, "prod", name).expect(name);
        assert_eq!(reason, "KeyChanged");
        assert!(message.contains(says), "{message}");
        assert!(value_keys(&fake, "prod", name).iter().all(|k| *k == first));
    }
    assert_eq!(
        counter(&running, "kmseal_stale_values{reason=\"KeyChanged\"}"),
        4
    );

    // A GitOps tool sets a's old values back: the Secret is made from them again (they open
    // to the same data), and the values are reported, not moved a second time.
    fake.user_sets_spec("prod", "a", old_a.clone());
    tokio::time::sleep(Duration::from_secs(1300)).await;
    let (reason, message) = key_current_reason(&fake, "prod", "a").expect("reported");
    assert_eq!(reason, "RewrapReverted");
    assert!(message.contains("set them back"), "{message}");
    assert_eq!(spec_of("a"), old_a, "left as Git has it");
    assert_eq!(
        memory.calls.re_encrypt.load(Ordering::Relaxed),
        3,
        "no loop"
    );
    assert_eq!(fake.lock().value_patches, 3);
    assert!(ready(&fake, "prod", "a"));
    assert_eq!(
        fake.secret("prod", "a").unwrap()["data"],
        secrets[0]["data"]
    );
    assert_eq!(
        counter(
            &running,
            "kmseal_rewrapped_values_total{result=\"reverted\"}"
        ),
        2
    );
    running.stop().await;
}

/// A re-wrap that the EncryptedSecret watch shows late (as a real API server's watch can: the
/// real-server benchmark lost one object's record this way): the reconcile that comes after
/// the re-wrap, on the watch's older copy, must not forget the status the re-wrap wrote, or
/// the copy with the patched values would look unapplied: a Secret write, and the status
/// rewritten without the re-wrap's record.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rewrap_the_watch_shows_late_keeps_its_record_and_the_secret() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let (first, second) = (memory.create_key(), memory.create_key());
    memory.create_alias("alias/app", &first);
    let fake = Fake::default();
    const OBJECTS: usize = 5;
    for i in 0..OBJECTS {
        fake.add_encrypted(&two_values(&memory, "alias/app", &format!("app-{i}")).await);
    }
    let running = start_with(&fake, memory.clone(), &["--key-refresh-interval", "10"]);
    eventually("ready", || {
        (0..OBJECTS).all(|i| ready(&fake, "prod", &format!("app-{i}")))
    })
    .await;
    let secret_writes = fake.lock().secret_writes;
    let decrypts = memory.calls.decrypt.load(Ordering::Relaxed);
    fake.lock().es_event_delay = Duration::from_millis(300);
    memory.create_alias("alias/app", &second);
    eventually_within("all re-wrapped", Duration::from_secs(300), || {
        (0..OBJECTS).all(|i| {
            value_keys(&fake, "prod", &format!("app-{i}"))
                .iter()
                .all(|k| *k == second)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    for i in 0..OBJECTS {
        let status = fake.status("prod", &format!("app-{i}"));
        assert!(
            status["rewrapped"]["target"]
                .as_str()
                .is_some_and(|t| t.starts_with(&second)),
            "app-{i}: {status}"
        );
    }
    assert_eq!(fake.lock().secret_writes, secret_writes, "no Secret write");
    assert_eq!(
        memory.calls.decrypt.load(Ordering::Relaxed),
        decrypts,
        "no Decrypt"
    );
    running.stop().await;
}

/// A restart in the middle of a rotation: what was re-wrapped stays so, the rest is found by
/// the new process (nothing but the objects keeps the progress), and no data key is moved
/// twice.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_restart_mid_rotation_resumes_where_it_stopped() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let (first, second) = (memory.create_key(), memory.create_key());
    memory.create_alias("alias/app", &first);
    let fake = Fake::default();
    const OBJECTS: usize = 6;
    for i in 0..OBJECTS {
        fake.add_encrypted(&two_values(&memory, "alias/app", &format!("app-{i}")).await);
    }
    // One ReEncrypt every 20 s: slow enough to stop half-way.
    let flags = [
        "--resync-interval",
        "2",
        "--rewrap-requests-per-second",
        "0.05",
    ];
    let running = start_with(&fake, memory.clone(), &flags);
    eventually("ready", || {
        (0..OBJECTS).all(|i| ready(&fake, "prod", &format!("app-{i}")))
    })
    .await;
    let moved = |fake: &Fake| {
        (0..OBJECTS)
            .filter(|i| {
                value_keys(fake, "prod", &format!("app-{i}"))
                    .iter()
                    .all(|k| *k == second)
            })
            .count()
    };
    memory.create_alias("alias/app", &second);
    eventually_within("two re-wrapped", Duration::from_secs(900), || {
        moved(&fake) >= 2
    })
    .await;
    running.stop().await;
    let done = moved(&fake);
    assert!(done < OBJECTS, "stopped half-way: {done}");
    assert_eq!(
        memory.calls.re_encrypt.load(Ordering::Relaxed) as usize,
        done
    );

    let running = start_with(&fake, memory.clone(), &flags);
    eventually_within("all re-wrapped", Duration::from_secs(1200), || {
        moved(&fake) == OBJECTS
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        memory.calls.re_encrypt.load(Ordering::Relaxed) as usize,
        OBJECTS,
        "each data key moved once"
    );
    assert!((0..OBJECTS).all(|i| ready(&fake, "prod", &format!("app-{i}"))));
    running.stop().await;
}

/// A re-wrap KMS refuses (the controller's role may not kms:ReEncryptTo the new key): reported
/// as RewrapFailed, with the fix and without KMS's own words; nothing written but the status;
/// tried again only after the retry delay, and then done.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_refused_rewrap_is_reported_and_tried_again_later() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let (first, second) = (memory.create_key(), memory.create_key());
    memory.create_alias("alias/app", &first);
    memory.deny("kms:ReEncryptTo", &second);
    let fake = Fake::default();
    fake.add_encrypted(&two_values(&memory, "alias/app", "db").await);
    let running = start_with(&fake, memory.clone(), &["--resync-interval", "2"]);
    eventually("ready", || ready(&fake, "prod", "db")).await;
    let secret = fake.secret("prod", "db").unwrap();
    memory.create_alias("alias/app", &second);
    eventually_within("reported", Duration::from_secs(900), || {
        key_current_reason(&fake, "prod", "db").is_some()
    })
    .await;
    let (reason, message) = key_current_reason(&fake, "prod", "db").unwrap();
    assert_eq!(reason, "RewrapFailed");
    assert!(
        message.contains(&second) && message.contains("kms:ReEncrypt"),
        "{message}"
    );
    assert!(message.contains("still open"), "{message}");
    let attempts = memory.calls.re_encrypt.load(Ordering::Relaxed);
    assert_eq!(attempts, 1);
    // Not again before the retry delay, whatever the resyncs.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(memory.calls.re_encrypt.load(Ordering::Relaxed), attempts);
    assert_eq!(fake.lock().value_patches, 0);
    assert_eq!(fake.secret("prod", "db").unwrap(), secret);
    assert!(ready(&fake, "prod", "db"));
    assert_eq!(
        counter(&running, "kmseal_rewrapped_values_total{result=\"failed\"}"),
        2
    );
    // The role is fixed: the next attempt after the delay moves them, and the condition goes.
    memory.allow("kms:ReEncryptTo", &second);
    eventually_within("re-wrapped", Duration::from_secs(900), || {
        value_keys(&fake, "prod", "db").iter().all(|k| *k == second)
    })
    .await;
    eventually("the condition goes", || {
        key_current_reason(&fake, "prod", "db").is_none()
    })
    .await;
    assert_eq!(fake.secret("prod", "db").unwrap(), secret);
    running.stop().await;
}

/// An object of two envelope v1 values (kmseal 0.1) named `name` in prod, under `key`, that
/// names `alias/app`.
async fn two_v1_values(memory: &MemoryKms, key: &str, name: &str) -> kmseal::api::EncryptedSecret {
    use base64::Engine;
    let mut es = two_values(memory, "alias/app", name).await;
    let values = common::sealed_v1(
        memory,
        key,
        "prod",
        name,
        &[("password", b"x"), ("user", b"x")],
    );
    es.spec.encrypted_data = values
        .await
        .into_iter()
        .map(|(item, v1)| (item, base64::engine::general_purpose::STANDARD.encode(v1)))
        .collect();
    es
}

/// Envelope v1 values are sealed again as v2 when the controller writes their Secret, from the
/// plaintext it holds then: one GenerateDataKey, no Decrypt beyond the one that opened them, no
/// second Secret write; once per object.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn v1_values_are_upgraded_to_v2_while_their_secret_is_written() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let (first, second) = (memory.create_key(), memory.create_key());
    memory.create_alias("alias/app", &second);
    let fake = Fake::default();
    // Under the first key; the object names the alias, which points to the second.
    fake.add_encrypted(&two_v1_values(&memory, &first, "legacy").await);
    let generated = memory.calls.generate_data_key.load(Ordering::Relaxed);
    let running = start_with(&fake, memory.clone(), &["--resync-interval", "2"]);
    eventually("upgraded", || {
        value_keys(&fake, "prod", "legacy")
            .iter()
            .all(|k| *k == second)
            && !fake.status("prod", "legacy")["rewrapped"].is_null()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let object = fake.lock().encrypted[&("prod".to_owned(), "legacy".to_owned())].clone();
    for value in object["spec"]["encryptedData"]
        .as_object()
        .unwrap()
        .values()
    {
        let kmseal::open::Decoded::Envelope(e) =
            kmseal::open::decode_item(value.as_str().unwrap()).unwrap()
        else {
            panic!("an envelope")
        };
        assert_eq!(e.header.version, kmseal::envelope::Version::V2);
    }
    assert_eq!(
        memory.calls.decrypt.load(Ordering::Relaxed),
        1,
        "the v1 data key, once"
    );
    assert_eq!(
        memory.calls.generate_data_key.load(Ordering::Relaxed),
        generated + 1
    );
    assert_eq!(fake.lock().secret_writes, 1);
    assert_eq!(fake.lock().value_patches, 1);
    assert!(ready(&fake, "prod", "legacy"));
    assert_eq!(
        data(&fake.secret("prod", "legacy").unwrap(), "password"),
        b"x"
    );
    assert_eq!(key_current_reason(&fake, "prod", "legacy"), None);
    running.stop().await;
}

/// Values a re-wrap cannot move (envelope v1 authenticates its wrapping; these were set back
/// after an upgrade) are reported as stale even under the Rewrap policy, with no ReEncrypt and
/// no write but the status.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn stale_values_a_rewrap_cannot_move_are_reported() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let (first, second) = (memory.create_key(), memory.create_key());
    memory.create_alias("alias/app", &first);
    let mut es = two_v1_values(&memory, &first, "legacy").await;
    // Upgraded once before: the v1 values are back, and are not upgraded again.
    es.status = Some(kmseal::api::EncryptedSecretStatus {
        rewrapped: Some(kmseal::api::RewrapRecord {
            target: first.clone(),
            time: "2026-01-01T00:00:00Z".into(),
            values: 2,
        }),
        ..Default::default()
    });
    let fake = Fake::default();
    fake.add_encrypted(&es);
    let running = start_with(&fake, memory.clone(), &["--resync-interval", "2"]);
    eventually("ready", || ready(&fake, "prod", "legacy")).await;
    memory.create_alias("alias/app", &second);
    eventually_within("reported", Duration::from_secs(900), || {
        key_current_reason(&fake, "prod", "legacy").is_some()
    })
    .await;
    let (reason, message) = key_current_reason(&fake, "prod", "legacy").unwrap();
    assert_eq!(reason, "KeyChanged");
    assert!(message.contains("seal them again"), "{message}");
    let status_writes = fake.lock().status_writes;
    tokio::time::sleep(Duration::from_secs(620)).await;
    assert_eq!(memory.calls.re_encrypt.load(Ordering::Relaxed), 0);
    assert_eq!(fake.lock().value_patches, 0);
    assert_eq!(fake.lock().status_writes, status_writes, "reported once");
    running.stop().await;
}

/// A moved alias is seen within one key refresh, not at the next resync: when what KMS says
/// about keys changes, every object is judged again (here the resync is an hour away).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_moved_alias_is_judged_at_the_next_key_refresh_not_the_next_resync() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let (first, second) = (memory.create_key(), memory.create_key());
    memory.create_alias("alias/app", &first);
    let fake = Fake::default();
    fake.add_encrypted(&two_values(&memory, "alias/app", "db").await);
    let running = start_with(
        &fake,
        memory.clone(),
        &["--resync-interval", "3600", "--key-refresh-interval", "60"],
    );
    eventually("ready", || ready(&fake, "prod", "db")).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    memory.create_alias("alias/app", &second);
    // The refresh due 60 s after the last one, a 5 s check, and the re-wrap's 1 s check.
    eventually_within("re-wrapped", Duration::from_secs(75), || {
        value_keys(&fake, "prod", "db").iter().all(|k| *k == second)
    })
    .await;
    running.stop().await;
}

/// One AdmissionReview of `object` (namespace prod) to the webhook on `port`, over TLS that
/// trusts `ca_pem`: whether it was allowed.
async fn admitted(port: u16, ca_pem: &str, object: &Value) -> bool {
    use http_body_util::BodyExt;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "8d6e1e4a-0000-4000-8000-000000000002",
            "kind": {"group": "kmseal.dev", "version": "v1alpha1", "kind": "EncryptedSecret"},
            "resource": {"group": "kmseal.dev", "version": "v1alpha1", "resource": "encryptedsecrets"},
            "name": "db",
            "namespace": "prod",
            "operation": "CREATE",
            "userInfo": {"username": "tenant"},
            "object": object,
        }
    });
    let request = hyper::Request::post("/validate")
        .header("content-type", "application/json")
        .header("host", "127.0.0.1")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            review.to_string(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    answer["response"]["allowed"] == true
}

/// A standby answers admission reviews (the Service spreads them over every replica), so it
/// keeps the policy as the leader does: a changed policy file is what the standby's webhook
/// reviews with, without waiting to lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standbys_webhook_reviews_with_the_reloaded_policy() {
    let memory = Arc::new(MemoryKms::new("eu-west-1"));
    let fake = fake_with_one_object(&memory).await;
    let (first, second) = (memory.create_key(), memory.create_key());
    let dir = tempfile::tempdir().unwrap();
    let policy = |keys: &[&str]| {
        let rules: String = keys
            .iter()
            .map(|k| format!("- key: {k}\n  namespaces: [prod]\n"))
            .collect();
        std::fs::write(
            dir.path().join("policy.yaml"),
            format!("apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n{rules}"),
        )
        .unwrap();
    };
    policy(&[&first]);
    let issued = kmseal::controller::webhook_certs::issue(
        &["127.0.0.1".to_owned()],
        kmseal::time::unix_now(),
        None,
    )
    .unwrap();
    std::fs::write(dir.path().join("tls.crt"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), issued.key_pem.as_bytes()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy_flag = format!("--key-policy={}", dir.path().join("policy.yaml").display());
    let webhook = [
        format!("--webhook-address=127.0.0.1:{port}"),
        format!("--webhook-cert-dir={}", dir.path().display()),
        policy_flag.clone(),
    ];
    let leader: Vec<&str> = leader_flags("pod-a")
        .into_iter()
        .chain([policy_flag.as_str()])
        .collect();
    let a = start_with(&fake, memory.clone(), &leader);
    eventually("pod-a leads", || {
        lease_holder(&fake).as_deref() == Some("pod-a")
    })
    .await;
    let standby: Vec<&str> = leader_flags("pod-b")
        .into_iter()
        .chain(webhook.iter().map(String::as_str))
        .collect();
    let b = start_with(&fake, memory.clone(), &standby);
    eventually("the standby is ready", || b.ready.load(Ordering::Relaxed)).await;

    let under_second = seal::seal_secret(
        &Wrapper::Kms {
            kms: &*memory,
            key_id: &second,
        },
        &PlainSecret {
            namespace: Some("prod".into()),
            name: "db".into(),
            data: BTreeMap::from([("password".to_owned(), Zeroizing::new(b"pw".to_vec()))]),
            ..PlainSecret::default()
        },
        Scope::Strict,
        &mut OsRandom,
        1,
    )
    .await
    .unwrap();
    let object = serde_json::to_value(&under_second).unwrap();
    assert!(
        !admitted(port, &issued.ca_bundle, &object).await,
        "the second key is not allowed yet"
    );
    policy(&[&first, &second]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !admitted(port, &issued.ca_bundle, &object).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby's webhook still refuses the newly allowed key"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        lease_holder(&fake).as_deref(),
        Some("pod-a"),
        "still a standby"
    );
    b.stop().await;
    a.stop().await;
}
