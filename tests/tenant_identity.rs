//! Per-tenant AWS identity: an object's KMS calls go out under the role of a ServiceAccount of
//! its own namespace, as the key policy and the object choose, and never under the
//! controller's. The reconciler over the in-memory cluster, with in-memory doubles of KMS (which
//! enforces per-role key grants), of the API server's ServiceAccounts and tokens, and of STS
//! (which checks a role's trust in the token's `sub`).
//!
//! Each attack is what a tenant who controls their namespace's EncryptedSecrets and
//! ServiceAccounts can do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::ByteString;
use kmseal::api::EncryptedSecret;
use kmseal::binding::Scope;
use kmseal::controller::fake::InMemoryCluster;
use kmseal::controller::tenant_identity::memory::{MemoryIdentityApi, MemorySts};
use kmseal::controller::tenant_identity::{MAX_IDENTITIES, TenantIdentities};
use kmseal::controller::{Admission, Reconciled, Reconciler};
use kmseal::identity::{IdentityRule, IdentitySettings, Requirement};
use kmseal::kms::{CachingKms, MemoryKms};
use kmseal::metrics::Metrics;
use kmseal::policy::{KeyPolicy, KeyRef, NamespacePattern, Rule, SecretTypes};
use kmseal::random::OsRandom;
use kmseal::reconcile::{self, reason};
use kmseal::seal::{self, PlainSecret, Wrapper};
use zeroize::Zeroizing;

const ROLE_A: &str = "arn:aws:iam::111122223333:role/team-a-decrypt";
const ROLE_B: &str = "arn:aws:iam::111122223333:role/team-b-decrypt";

type Stack = CachingKms<Arc<MemoryKms>>;

struct World {
    r: Reconciler<Stack, InMemoryCluster>,
    kms: Arc<MemoryKms>,
    api: Arc<MemoryIdentityApi>,
    sts: Arc<MemorySts>,
    ids: Arc<TenantIdentities>,
}

fn on(rules: Vec<IdentityRule>, default: Option<&str>) -> IdentitySettings {
    IdentitySettings {
        enabled: true,
        default_service_account: default.map(str::to_owned),
        required_by_default: false,
        rules,
    }
}

fn world_with(mut policy: KeyPolicy, identity: IdentitySettings, latency: Duration) -> World {
    policy.identity = identity;
    let kms = Arc::new(MemoryKms::new("eu-west-1"));
    let api = Arc::new(MemoryIdentityApi::new().with_latency(latency));
    let sts = Arc::new(MemorySts::new().with_latency(latency));
    let ids = Arc::new(TenantIdentities::new(api.clone(), sts.clone(), 0.0));
    let r = Reconciler::new(
        CachingKms::new(kms.clone(), 100, Duration::from_secs(300)),
        InMemoryCluster::new(),
        Arc::new(Metrics::new()),
        Arc::new(Admission::new(policy, SecretTypes::default())),
    )
    .with_identities(ids.clone());
    World {
        r,
        kms,
        api,
        sts,
        ids,
    }
}

fn world(identity: IdentitySettings) -> World {
    world_with(KeyPolicy::any_key(), identity, Duration::ZERO)
}

async fn sealed(
    kms: &MemoryKms,
    key: &str,
    namespace: &str,
    name: &str,
    service_account: Option<&str>,
) -> EncryptedSecret {
    let plain = PlainSecret {
        namespace: Some(namespace.into()),
        name: name.into(),
        data: BTreeMap::from([("password".into(), Zeroizing::new(b"s3cr3t".to_vec()))]),
        ..PlainSecret::default()
    };
    let mut es = seal::seal_secret(
        &Wrapper::Kms { kms, key_id: key },
        &plain,
        Scope::Strict,
        &mut OsRandom,
        1,
    )
    .await
    .unwrap();
    es.spec.service_account_name = service_account.map(str::to_owned);
    es.metadata.uid = Some(format!("uid-{namespace}-{name}"));
    es.metadata.generation = Some(1);
    es
}

async fn step(w: &World, es: &EncryptedSecret) -> Reconciled {
    let current = w.r.api().with_status(es);
    w.r.reconcile(&current).await.expect("reconcile").0
}

/// The object's Ready reason and message.
fn ready(w: &World, es: &EncryptedSecret) -> (String, String) {
    let current = w.r.api().with_status(es);
    let c = reconcile::ready_condition(current.status.as_ref()).expect("a Ready condition");
    (c.reason.clone(), c.message.clone())
}

fn password(w: &World, namespace: &str, name: &str) -> Option<ByteString> {
    w.r.api()
        .secret(namespace, name)?
        .data?
        .get("password")
        .cloned()
}

#[tokio::test]
async fn a_named_service_account_decrypts_with_its_own_role_and_never_the_controllers() {
    let w = world(on(vec![], None));
    let key = w.kms.create_key();
    // Only team A's role may use the key, as the key's own policy would say.
    w.kms.restrict(&key, &[ROLE_A]);
    w.api.add("team-a", "app", Some(ROLE_A));
    w.sts.trust(ROLE_A, "team-a", "app");
    let es = sealed(&w.kms, &key, "team-a", "db", Some("app")).await;

    assert_eq!(step(&w, &es).await, Reconciled::Applied);
    assert_eq!(
        password(&w, "team-a", "db"),
        Some(ByteString(b"s3cr3t".to_vec()))
    );
    assert_eq!(w.kms.principals(), vec![ROLE_A.to_owned()]);
    // STS saw the role, and a session name that says which namespace and object.
    assert_eq!(
        w.sts.calls(),
        vec![(ROLE_A.to_owned(), "kmseal@team-a.db".to_owned())]
    );
}

#[tokio::test]
async fn attack_a_service_account_annotated_with_another_tenants_role_gets_nothing() {
    // Team B controls its namespace's ServiceAccounts, so it can annotate one with team A's
    // role. STS refuses (A's role trusts only team-a's ServiceAccount), and the controller
    // does not fall back to its own role, which could decrypt the value.
    let w = world(on(vec![], None));
    let key = w.kms.create_key();
    w.api.add("team-a", "app", Some(ROLE_A));
    w.sts.trust(ROLE_A, "team-a", "app");
    w.api.add("team-b", "thief", Some(ROLE_A));
    let es = sealed(&w.kms, &key, "team-b", "db", Some("thief")).await;

    assert_eq!(
        step(&w, &es).await,
        Reconciled::Failed(reason::ASSUME_ROLE_DENIED)
    );
    let (why, message) = ready(&w, &es);
    assert_eq!(why, reason::ASSUME_ROLE_DENIED);
    assert!(
        message.contains("sub = system:serviceaccount:team-b:thief"),
        "{message}"
    );
    assert!(!message.contains("memory-token"), "no token in the status");
    assert_eq!(w.kms.calls.decrypt.load(Ordering::Relaxed), 0);
    assert!(w.kms.principals().is_empty(), "no KMS call at all");
    assert_eq!(password(&w, "team-b", "db"), None);
}

#[tokio::test]
async fn an_identity_that_fails_keeps_the_secret_and_says_why() {
    let w = world(on(vec![], None));
    let key = w.kms.create_key();
    w.api.add("team-a", "app", Some(ROLE_A));
    w.sts.trust(ROLE_A, "team-a", "app");
    w.api.add("team-a", "bare", None);
    w.api.add(
        "team-a",
        "user",
        Some("arn:aws:iam::111122223333:user/alice"),
    );
    w.api.add("team-a", "norbac", Some(ROLE_A));

    // Each way a changed spec's identity can be wrong, with its own reason; the Secret made
    // under the old one stays. (One object each: a failure's backoff outlasts spec changes.)
    let cases = [
        ("gone", reason::SERVICE_ACCOUNT_NOT_FOUND, "does not exist"),
        (
            "bare",
            reason::NO_ROLE_ANNOTATION,
            "eks.amazonaws.com/role-arn",
        ),
        ("user", reason::NO_ROLE_ANNOTATION, "not an IAM role ARN"),
        // The controller may not ask for tokens (installed without tenantIdentity's RBAC).
        (
            "norbac",
            reason::ASSUME_ROLE_DENIED,
            "serviceaccounts/token",
        ),
    ];
    for (sa, expected, says) in cases {
        let name = format!("db-{sa}");
        let mut es = sealed(&w.kms, &key, "team-a", &name, Some("app")).await;
        assert_eq!(step(&w, &es).await, Reconciled::Applied);
        w.api.refuse_tokens.store(sa == "norbac", Ordering::Relaxed);
        es.spec.service_account_name = Some(sa.to_owned());
        es.metadata.generation = Some(2);
        assert_eq!(step(&w, &es).await, Reconciled::Failed(expected), "{sa}");
        let (why, message) = ready(&w, &es);
        assert_eq!(why, expected);
        assert!(message.contains(says), "{sa}: {message}");
        assert_eq!(
            password(&w, "team-a", &name),
            Some(ByteString(b"s3cr3t".to_vec())),
            "the Secret is kept"
        );
    }
    assert!(
        w.kms.principals().iter().all(|p| p == ROLE_A),
        "nothing went out as the controller: {:?}",
        w.kms.principals()
    );
}

#[tokio::test]
async fn a_cold_start_of_one_tenants_objects_makes_one_token_request_and_one_sts_call() {
    let w = world_with(
        KeyPolicy::any_key(),
        on(vec![], None),
        Duration::from_millis(20),
    );
    let key = w.kms.create_key();
    w.api.add("team-a", "app", Some(ROLE_A));
    w.sts.trust(ROLE_A, "team-a", "app");
    let mut objects = vec![];
    for i in 0..200 {
        objects.push(sealed(&w.kms, &key, "team-a", &format!("db-{i}"), Some("app")).await);
    }
    let results = futures::future::join_all(objects.iter().map(|es| step(&w, es))).await;
    assert!(
        results.iter().all(|r| *r == Reconciled::Applied),
        "{results:?}"
    );
    let calls = &w.ids.calls;
    println!(
        "cold start of 200 objects of one ServiceAccount: {} ServiceAccount read(s), {} TokenRequest(s), {} STS call(s)",
        calls.service_account_reads.load(Ordering::Relaxed),
        calls.token_requests.load(Ordering::Relaxed),
        calls.assume_role_calls.load(Ordering::Relaxed),
    );
    assert_eq!(calls.service_account_reads.load(Ordering::Relaxed), 1);
    assert_eq!(calls.token_requests.load(Ordering::Relaxed), 1);
    assert_eq!(calls.assume_role_calls.load(Ordering::Relaxed), 1);
    assert_eq!(w.sts.calls().len(), 1);
}

#[tokio::test]
async fn attack_a_cached_data_key_never_opens_a_value_for_another_identity() {
    // The object opened once under role A, so its data key is cached. Its spec then names
    // ServiceAccount "other" (role B, which may not use the key): the cached key must not
    // answer; B's own Decrypt is made, and refused.
    let w = world(on(vec![], None));
    let key = w.kms.create_key();
    w.kms.restrict(&key, &[ROLE_A]);
    w.api.add("team-a", "app", Some(ROLE_A));
    w.api.add("team-a", "other", Some(ROLE_B));
    w.sts.trust(ROLE_A, "team-a", "app");
    w.sts.trust(ROLE_B, "team-a", "other");
    let mut es = sealed(&w.kms, &key, "team-a", "db", Some("app")).await;
    assert_eq!(step(&w, &es).await, Reconciled::Applied);

    es.spec.service_account_name = Some("other".into());
    es.metadata.generation = Some(2);
    assert_eq!(
        step(&w, &es).await,
        Reconciled::Failed(reason::ACCESS_DENIED)
    );
    let (_, message) = ready(&w, &es);
    assert!(
        message.contains(&format!(
            "under role {ROLE_B} of ServiceAccount team-a/other"
        )),
        "{message}"
    );
    assert_eq!(
        w.kms.principals(),
        vec![ROLE_A.to_owned(), ROLE_B.to_owned()],
        "B's request reached KMS"
    );
    assert_eq!(w.r.kms().hits(), 0);
}

#[tokio::test]
async fn the_key_policy_comes_first_no_token_and_no_sts_call_for_a_key_refused() {
    // A key no object is sealed under.
    let allowed = "arn:aws:kms:eu-west-1:000000000000:key/deadbeef-0000-4000-8000-000000000000";
    let policy = KeyPolicy::from_rules(vec![Rule {
        key: KeyRef::parse(allowed).unwrap(),
        namespaces: vec![NamespacePattern::parse("team-a").unwrap()],
    }]);
    let w = world_with(policy, on(vec![], None), Duration::ZERO);
    let other = w.kms.create_key();
    w.api.add("team-a", "app", Some(ROLE_A));
    w.sts.trust(ROLE_A, "team-a", "app");
    let es = sealed(&w.kms, &other, "team-a", "db", Some("app")).await;
    assert_eq!(
        step(&w, &es).await,
        Reconciled::Failed(reason::KEY_NOT_ALLOWED)
    );
    assert_eq!(w.ids.calls.service_account_reads.load(Ordering::Relaxed), 0);
    assert_eq!(w.ids.calls.token_requests.load(Ordering::Relaxed), 0);
    assert!(w.sts.calls().is_empty());
    assert!(w.ids.is_empty(), "nothing is cached for it either");
}

#[tokio::test]
async fn a_required_identity_and_a_default_lock_a_tenant_to_its_own_role() {
    let locked = IdentityRule {
        namespaces: vec![NamespacePattern::parse("locked-*").unwrap()],
        service_account: None,
        requirement: Requirement::Required,
    };
    let w = world(on(vec![locked.clone()], None));
    let key = w.kms.create_key();
    let es = sealed(&w.kms, &key, "locked-a", "db", None).await;
    assert_eq!(
        step(&w, &es).await,
        Reconciled::Failed(reason::IDENTITY_NOT_ALLOWED)
    );
    assert!(ready(&w, &es).1.contains("spec.serviceAccountName"));
    assert_eq!(w.kms.calls.decrypt.load(Ordering::Relaxed), 0);

    // --default-service-account: every object that names none uses that ServiceAccount of
    // its own namespace.
    let w = world(on(vec![locked], Some("kmseal")));
    let key = w.kms.create_key();
    w.kms.restrict(&key, &[ROLE_A]);
    w.api.add("locked-a", "kmseal", Some(ROLE_A));
    w.sts.trust(ROLE_A, "locked-a", "kmseal");
    let es = sealed(&w.kms, &key, "locked-a", "db", None).await;
    assert_eq!(step(&w, &es).await, Reconciled::Applied);
    assert_eq!(w.kms.principals(), vec![ROLE_A.to_owned()]);
}

#[tokio::test]
async fn with_the_feature_off_an_object_naming_a_service_account_is_refused() {
    let w = world(IdentitySettings::default());
    let key = w.kms.create_key();
    w.api.add("team-a", "app", Some(ROLE_A));
    let es = sealed(&w.kms, &key, "team-a", "db", Some("app")).await;
    assert_eq!(
        step(&w, &es).await,
        Reconciled::Failed(reason::IDENTITY_NOT_ALLOWED)
    );
    assert!(ready(&w, &es).1.contains("per-tenant identity is off"));
    assert_eq!(w.kms.calls.decrypt.load(Ordering::Relaxed), 0);
    assert!(w.sts.calls().is_empty());
}

#[tokio::test]
async fn attack_many_service_accounts_do_not_push_out_another_namespaces_credentials() {
    let w = world(on(vec![], None));
    w.api.add("team-b", "app", Some(ROLE_B));
    w.sts.trust(ROLE_B, "team-b", "app");
    w.ids.principal("team-b", "app", "db").await.unwrap();
    for i in 0..100 {
        let sa = format!("sa-{i}");
        w.api.add("team-a", &sa, Some(ROLE_A));
        w.sts.trust(ROLE_A, "team-a", &sa);
        w.ids.principal("team-a", &sa, "db").await.unwrap();
    }
    assert!(w.ids.len() <= 33, "{} kept", w.ids.len());
    let before = w.ids.calls.assume_role_calls.load(Ordering::Relaxed);
    w.ids.principal("team-b", "app", "db").await.unwrap();
    assert_eq!(
        w.ids.calls.assume_role_calls.load(Ordering::Relaxed),
        before,
        "team B's credentials were still cached"
    );

    // Many namespaces at their share fill the table: at most 1,000 are kept, and a full
    // table gives up an entry of the namespace holding the most, not team B's one.
    for n in 0..40 {
        let namespace = format!("ns-{n}");
        for i in 0..30 {
            let sa = format!("sa-{i}");
            w.api.add(&namespace, &sa, Some(ROLE_A));
            w.sts.trust(ROLE_A, &namespace, &sa);
            w.ids.principal(&namespace, &sa, "db").await.unwrap();
        }
    }
    assert_eq!(w.ids.len(), MAX_IDENTITIES);
    let before = w.ids.calls.assume_role_calls.load(Ordering::Relaxed);
    w.ids.principal("team-b", "app", "db").await.unwrap();
    assert_eq!(
        w.ids.calls.assume_role_calls.load(Ordering::Relaxed),
        before,
        "team B's credentials survived a full table"
    );
}

/// Answers every HTTP request with `body` after recording its `authorization` header.
async fn recording_server(body: &'static str) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut read = 0;
                // The head, then the body its content-length says.
                loop {
                    let n = stream.read(&mut buffer[read..]).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    read += n;
                    let text = String::from_utf8_lossy(&buffer[..read]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if read >= end + 4 + length {
                            let auth = text[..end]
                                .lines()
                                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                                .unwrap_or("")
                                .to_owned();
                            record.lock().unwrap().push(auth);
                            break;
                        }
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_tenants_kms_call_is_signed_with_the_tenants_credentials_not_the_controllers() {
    use aws_credential_types::Credentials;
    use kmseal::binding::EncryptionContext;
    use kmseal::envelope::WrapAlgorithm;
    use kmseal::identity::TenantIdentity;
    use kmseal::kms::{AwsKms, DecryptRequest, Kms, Principal, TenantSession};
    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let body = r#"{"KeyId":"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#;
    let (url, seen) = recording_server(body).await;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .http_client(kmseal::kms::aws::https_client())
        .endpoint_url(&url)
        .credentials_provider(Credentials::new(
            "AKIACONTROLLER00000",
            "controller-secret",
            None,
            None,
            "test",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let kms = AwsKms::from_sdk_config(sdk);
    let tenant = Principal::Tenant(Arc::new(TenantSession {
        identity: TenantIdentity {
            namespace: "team-a".into(),
            service_account: "app".into(),
            role_arn: ROLE_A.into(),
            audience: "sts.amazonaws.com".into(),
            sts_endpoint: url.clone(),
        },
        credentials: Credentials::new(
            "ASIATENANTA00000000",
            "tenant-secret",
            Some("tenant-session".into()),
            None,
            "test",
        ),
        expires: u64::MAX,
    }));
    let context = EncryptionContext::new();
    for principal in [&tenant, Principal::CONTROLLER, &tenant] {
        let request = DecryptRequest {
            principal,
            ..DecryptRequest::new(
                Some(KEY),
                b"ciphertext",
                WrapAlgorithm::KmsSymmetric,
                &context,
                "team-a",
            )
        };
        kms.decrypt(request).await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen[0].contains("Credential=ASIATENANTA00000000/"),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].contains("Credential=AKIACONTROLLER00000/"),
        "{}",
        seen[1]
    );
    assert!(
        seen[2].contains("Credential=ASIATENANTA00000000/"),
        "{}",
        seen[2]
    );
}

#[tokio::test]
async fn key_lookups_and_re_wraps_go_out_under_the_objects_identity() {
    use kmseal::controller::key_facts::Whose;
    use kmseal::controller::rewrap::{Pacer, Turn};
    use kmseal::kms::Principal;
    let w = world(on(vec![], None));
    let key = w.kms.create_key();
    // The controller's role may not even describe the key: only team A's may.
    w.kms.restrict(&key, &[ROLE_A]);
    w.api.add("team-a", "app", Some(ROLE_A));
    w.sts.trust(ROLE_A, "team-a", "app");
    let es = sealed(&w.kms, &key, "team-a", "db", Some("app")).await;
    w.r.api().put_encrypted(&es);
    assert_eq!(step(&w, &es).await, Reconciled::Applied);

    let ids = w.ids.clone();
    let resolve = move |whose: &Whose| -> futures::future::BoxFuture<'static, Option<Principal>> {
        let ids = ids.clone();
        let whose = whose.clone();
        Box::pin(async move {
            match whose {
                Whose::Controller => Some(Principal::Controller),
                Whose::ServiceAccount { namespace, name } => {
                    ids.principal(&namespace, &name, "key-lookup").await.ok()
                }
            }
        })
    };
    let (asked, changed) =
        w.r.key_facts()
            .refresh_with(w.r.kms(), Duration::ZERO, &resolve)
            .await;
    assert_eq!((asked, changed), (1, true));
    assert_eq!(
        w.kms.lookup_principals(),
        vec![ROLE_A.to_owned(), ROLE_A.to_owned()],
        "DescribeKey and ListKeyRotations with team A's role"
    );

    // The key's material rotates: the object's values are re-wrapped with its role.
    w.kms.rotate_key(&key, kmseal::time::unix_now());
    w.r.key_facts()
        .refresh_with(w.r.kms(), Duration::ZERO, &resolve)
        .await;
    assert_eq!(step(&w, &es).await, Reconciled::UpToDate);
    let mut pacer = Pacer::new(0.0);
    let mut turns = vec![];
    for _ in 0..5 {
        let turn = w.r.rewrap_turn(&mut pacer).await;
        let done = matches!(turn, Turn::Done(..) | Turn::Idle);
        turns.push(turn);
        if done {
            break;
        }
    }
    assert!(
        turns.iter().any(|t| matches!(
            t,
            Turn::Done(_, kmseal::controller::rewrap::Rewrapped::Moved(_))
        )),
        "{turns:?}"
    );
    assert_eq!(w.kms.calls.re_encrypt.load(Ordering::Relaxed), 1);
    // Given only the controller's credentials, the tenant's key is not looked up at all.
    let before = w.kms.lookup_principals().len();
    w.r.key_facts().refresh(w.r.kms(), Duration::ZERO).await;
    assert_eq!(w.kms.lookup_principals().len(), before);
    assert!(!w.kms.lookup_principals().contains(&"controller".to_owned()));
    assert!(
        w.kms.principals().iter().all(|p| p == ROLE_A),
        "{:?}",
        w.kms.principals()
    );
}

#[tokio::test]
async fn attack_a_namespace_with_many_service_accounts_does_not_hold_up_anothers_sts_call() {
    // Team A cycles through 100 ServiceAccounts at once while STS is slow; team B asks for
    // one. A gets 4 in flight and 4 waiting, the rest come back later (Deferred); B's call
    // takes its turn ahead of A's waiting ones.
    let api = Arc::new(MemoryIdentityApi::new());
    let sts = Arc::new(MemorySts::new().with_latency(Duration::from_millis(100)));
    let ids = Arc::new(TenantIdentities::new(api.clone(), sts.clone(), 0.0));
    for i in 0..100 {
        let sa = format!("sa-{i}");
        api.add("team-a", &sa, Some(ROLE_A));
        sts.trust(ROLE_A, "team-a", &sa);
    }
    api.add("team-b", "app", Some(ROLE_B));
    sts.trust(ROLE_B, "team-b", "app");
    let a: Vec<_> = (0..100)
        .map(|i| {
            let ids = ids.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let result = ids.principal("team-a", &format!("sa-{i}"), "db").await;
                (result, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = tokio::time::Instant::now();
    ids.principal("team-b", "app", "db").await.unwrap();
    let b_took = started.elapsed();
    let mut deferred = 0;
    let mut slowest_a = Duration::ZERO;
    for task in a {
        let (result, took) = task.await.unwrap();
        match result {
            Err(kmseal::identity::IdentityError::Deferred(_)) => deferred += 1,
            Err(e) => panic!("{e}"),
            Ok(_) => slowest_a = slowest_a.max(took),
        }
    }
    println!(
        "100 of team A's ServiceAccounts at once, STS taking 100 ms: {deferred} deferred, team B's call took {} ms (one STS call of A's ahead of it), team A's slowest {} ms",
        b_took.as_millis(),
        slowest_a.as_millis()
    );
    assert_eq!(
        deferred, 92,
        "beyond 4 in flight and 4 waiting, A's calls come back later"
    );
    // B waited for one of A's calls in flight, not for A's queue: its call was the next to
    // reach STS after the 4 in flight.
    let order: Vec<String> = sts.calls().into_iter().map(|(role, _)| role).collect();
    assert_eq!(order.len(), 9, "{order:?}");
    assert_eq!(order.iter().position(|r| r == ROLE_B), Some(4), "{order:?}");
}

#[tokio::test]
async fn credentials_near_their_expiry_are_renewed_once() {
    // STS issues credentials that outlast the renewal margin by one second: after two seconds
    // they are due, and five objects asking at once make one STS call between them.
    let api = Arc::new(MemoryIdentityApi::new());
    let sts = Arc::new(
        MemorySts::new()
            .with_latency(Duration::from_millis(20))
            .with_lifetime(kmseal::controller::tenant_identity::RENEW_MARGIN.as_secs() + 1),
    );
    let ids = Arc::new(TenantIdentities::new(api.clone(), sts.clone(), 0.0));
    api.add("team-a", "app", Some(ROLE_A));
    sts.trust(ROLE_A, "team-a", "app");
    ids.principal("team-a", "app", "db").await.unwrap();
    ids.principal("team-a", "app", "db").await.unwrap();
    assert_eq!(sts.calls().len(), 1, "fresh credentials are kept");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let asks = (0..5).map(|_| ids.principal("team-a", "app", "db"));
    for result in futures::future::join_all(asks).await {
        result.unwrap();
    }
    assert_eq!(sts.calls().len(), 2, "one renewal for all five");
    assert_eq!(ids.calls.token_requests.load(Ordering::Relaxed), 2);
}
