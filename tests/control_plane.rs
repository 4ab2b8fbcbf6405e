//! What only a real API server can show, against the control plane `scripts/test.sh` builds
//! from Go modules and starts (`scripts/control-plane.sh`: etcd, kube-apiserver with RBAC and
//! an audit log, kube-controller-manager with garbage collection and ServiceAccount tokens),
//! and moto for KMS and STS.
//!
//! The controller is the real `kmseal-controller` binary, run on this host as a Helm release
//! of `charts/kmseal` would run it: the release is installed on the server (helm 3 and 4), and
//! the binary gets the Deployment's environment and a TokenRequest token of the release's
//! ServiceAccount, so the chart's RBAC is exactly what it has; its AWS credentials come through
//! IRSA (a token the API server signed for `sts.amazonaws.com`, exchanged at moto's STS).
//! Counts are the server's, from its audit log. The tests take turns: each runs alone.

#[path = "common/e2e.rs"]
mod checks;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::cluster::{self, ControlPlane, ControllerProcess, Release};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kmseal::api::EncryptedSecret;
use kmseal::binding::Scope;
use kmseal::kms::AwsKms;
use kmseal::random::OsRandom;
use kmseal::seal::{self, PlainSecret, Wrapper};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use zeroize::Zeroizing;

const REGION: &str = "us-east-1";
const ROLE: &str = "arn:aws:iam::000000000000:role/kmseal-controller";

/// One test at a time on the shared control plane: each runs controllers that watch (some
/// every namespace) and counts requests in the audit log.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct World {
    cp: ControlPlane,
    moto: String,
    admin: kube::Client,
    kms_admin: aws_sdk_kms::Client,
    kms: AwsKms,
    sdk: aws_config::SdkConfig,
}

async fn world() -> Option<World> {
    let cp = ControlPlane::from_env()?;
    let moto = common::moto()?.url;
    let admin = cp.admin().await;
    cluster::install_crd(&admin).await;
    let sdk = common::sdk_config(&moto, REGION).await;
    Some(World {
        kms_admin: common::admin(&moto, REGION).await,
        kms: AwsKms::from_sdk_config(sdk.clone()),
        sdk,
        cp,
        moto,
        admin,
    })
}

impl World {
    async fn key(&self) -> String {
        common::create_symmetric_key(&self.kms_admin).await
    }

    /// An alias of its own (moto keeps aliases between runs) pointing to `key`: (alias, ARN).
    async fn alias(&self, key: &str) -> (String, String) {
        let alias = format!("alias/kmseal-cp-{}", &key[key.len() - 12..]);
        self.kms_admin
            .create_alias()
            .alias_name(&alias)
            .target_key_id(key)
            .send()
            .await
            .unwrap();
        let arn = format!("{}{alias}", &key[..key.find("key/").unwrap()]);
        (alias, arn)
    }

    /// The `--set` values every release here uses: KMS at moto, IRSA emulated (the chart's
    /// projected token for STS), quick key refreshes and resyncs.
    fn base_values(&self) -> Vec<String> {
        vec![
            format!("aws.endpoint={}", self.moto),
            format!("aws.region={REGION}"),
            "irsaEmulation.enabled=true".into(),
            format!("irsaEmulation.roleArn={ROLE}"),
            "controller.keyRefreshInterval=2".into(),
            "controller.resyncInterval=5".into(),
            "controller.logFormat=text".into(),
        ]
    }

    async fn delete_namespaces(&self, names: &[&str]) {
        let api: Api<Namespace> = Api::all(self.admin.clone());
        for name in names {
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
        for name in names {
            for _ in 0..600 {
                if api.get_opt(name).await.unwrap().is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn target(&self, namespace: &str, allowed: &str, other: &str) -> checks::Target {
        checks::Target {
            client: self.admin.clone(),
            kms: AwsKms::from_sdk_config(self.sdk.clone()),
            namespace: namespace.to_owned(),
            allowed_key: allowed.to_owned(),
            other_key: other.to_owned(),
            garbage_collection: true,
            timeout: Duration::from_secs(60),
            rotation: None,
        }
    }
}

fn helm(version: &str) -> Option<std::path::PathBuf> {
    cluster::helm(version)
}

/// The requests the API server answered for `user` since `from` (an index into the audit log),
/// that it refused for what they were (not a 404 for a Secret that is not there, nor a 409 for
/// an object that changed meanwhile, which the controller expects and handles).
fn refused(cp: &ControlPlane, user: &str, from: usize) -> Vec<cluster::Request> {
    cluster::requests(&cp.audit()[from..])
        .into_iter()
        .filter(|r| r.user == user && r.code >= 400 && r.code != 404 && r.code != 409)
        .collect()
}

fn tail(controller: &ControllerProcess) -> String {
    let log = controller.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn run_checks(target: &checks::Target, controller: &ControllerProcess) {
    if let Err(failure) = checks::run_all(target).await {
        panic!("{failure}\ncontroller log:\n{}", tail(controller));
    }
}

async fn sealed(
    kms: &AwsKms,
    key: &str,
    namespace: &str,
    name: &str,
    items: &[(&str, &[u8])],
) -> EncryptedSecret {
    let secret = PlainSecret {
        namespace: Some(namespace.into()),
        name: name.into(),
        data: items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Zeroizing::new(v.to_vec())))
            .collect(),
        ..PlainSecret::default()
    };
    seal::seal_secret(
        &Wrapper::Kms { kms, key_id: key },
        &secret,
        Scope::Strict,
        &mut OsRandom,
        1_800_000_000,
    )
    .await
    .unwrap()
}

/// The CRD from `crds/` is accepted, and for good and bad manifests the API server
/// (`kubectl apply --dry-run=server`) and `kmseal validate` (offline) agree.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_and_kmseal_validate_agree_on_good_and_bad_manifests() {
    let Some(w) = world().await else { return };
    let _turn = SERIAL.lock().await;
    cluster::namespace(&w.admin, "validate").await;
    let key = w.key().await;
    let good = serde_json::to_value(
        sealed(&w.kms, &key, "validate", "good", &[("password", b"pw")]).await,
    )
    .unwrap();
    let value = good["spec"]["encryptedData"]["password"].clone();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        edit(&mut v);
        v
    };
    let items = |n: usize| {
        Value::Object(
            (0..n)
                .map(|i| (format!("item-{i}"), value.clone()))
                .collect(),
        )
    };
    let cases: Vec<(&str, Value, bool)> = vec![
        ("a sealed object", good.clone(), true),
        (
            "256 items",
            with(&|v| v["spec"]["encryptedData"] = items(256)),
            true,
        ),
        (
            "257 items",
            with(&|v| v["spec"]["encryptedData"] = items(257)),
            false,
        ),
        (
            "an unknown field (a misspelt encryptedData)",
            with(&|v| v["spec"]["encryptedDate"] = json!({"password": "x"})),
            false,
        ),
        (
            "an unknown top-level field",
            with(&|v| v["data"] = json!({"password": "eA=="})),
            false,
        ),
        (
            "a rotation policy that is not Rewrap or Report",
            with(&|v| v["spec"]["rotation"] = json!({"policy": "Sometimes"})),
            false,
        ),
        (
            "a name that is not a DNS subdomain",
            with(&|v| v["metadata"]["name"] = json!("Bad_Name")),
            false,
        ),
        (
            "encryptedData that is not a map",
            with(&|v| v["spec"]["encryptedData"] = json!("password")),
            false,
        ),
        (
            "an item value that is not a string",
            with(&|v| v["spec"]["encryptedData"]["password"] = json!(42)),
            false,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut table = Vec::new();
    for (i, (what, manifest, valid)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case-{i}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
        let server = w.cp.kubectl(
            None,
            &["apply", "--dry-run=server", "-f", file.to_str().unwrap()],
            None,
        );
        let validate = std::process::Command::new(env!("CARGO_BIN_EXE_kmseal"))
            .arg("validate")
            .arg(&file)
            .env_clear()
            .output()
            .unwrap();
        let accepted = server.status.success();
        let passed = validate.status.code() == Some(0);
        table.push(format!(
            "{what}: server {}, kmseal validate {}",
            if accepted { "accepts" } else { "refuses" },
            if passed { "passes" } else { "fails" }
        ));
        assert_eq!(
            accepted,
            *valid,
            "{what}: kubectl apply --dry-run=server: {}",
            String::from_utf8_lossy(&server.stderr)
        );
        assert_eq!(
            passed,
            *valid,
            "{what}: kmseal validate (exit {:?}): {}{}",
            validate.status.code(),
            String::from_utf8_lossy(&validate.stdout),
            String::from_utf8_lossy(&validate.stderr)
        );
        if !valid {
            assert_eq!(validate.status.code(), Some(3), "{what}: an error, exit 3");
        }
    }
    println!("{}", table.join("\n"));
    // A dry run stores nothing.
    let stored: Api<EncryptedSecret> = Api::namespaced(w.admin.clone(), "validate");
    assert!(
        stored
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    w.delete_namespaces(&["validate"]).await;
}

/// The chart's default variant (every namespace, a ClusterRole), installed with helm 3: the
/// API server accepts it, and the controller running with exactly its RBAC and IRSA passes
/// every end-to-end check (Secret, drift, tampering, a foreign Secret, adoption, a key not
/// allowed, re-wrap after an alias moves, garbage collection), with no 403 in its log and no
/// request of it refused by the server (events and status applies included).
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_installs_and_its_rbac_is_all_the_controller_needs() {
    let Some(w) = world().await else { return };
    let Some(helm) = helm("KMSEAL_TEST_HELM3") else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let (allowed, other, next) = (w.key().await, w.key().await, w.key().await);
    let (alias, alias_arn) = w.alias(&allowed).await;
    let mut set = w.base_values();
    set.push(format!("kms.allowedKeys={{{allowed},{alias_arn}}}"));
    let release = Release {
        helm,
        name: "kmseal".into(),
        namespace: "kmseal-system".into(),
        set,
    };
    release.install(&w.cp);
    cluster::namespace(&w.admin, "e2e-cluster").await;
    let dir = tempfile::tempdir().unwrap();
    let from = w.cp.audit().len();
    let controller = release.controller(&w.cp, dir.path(), "kmseal-0").await;

    // IRSA for real: the token the API server signed for STS, for the release's account.
    let sts_token = std::fs::read_to_string(dir.path().join("kmseal-0.sts-token")).unwrap();
    let claims = cluster::claims(&sts_token);
    assert_eq!(claims["aud"], json!(["sts.amazonaws.com"]), "{claims}");
    assert_eq!(claims["sub"], "system:serviceaccount:kmseal-system:kmseal");

    let mut target = w.target("e2e-cluster", &allowed, &other);
    target.rotation = Some(checks::RotationTarget {
        alias,
        next_key: next,
        admin: w.kms_admin.clone(),
    });
    run_checks(&target, &controller).await;
    assert!(
        controller.forbidden_lines().is_empty(),
        "{:?}",
        controller.forbidden_lines()
    );
    let user = release.user(&w.cp);
    let refused = refused(&w.cp, &user, from);
    assert!(
        refused.is_empty(),
        "refused by the API server: {refused:#?}"
    );
    let made: Vec<_> = cluster::requests(&w.cp.audit()[from..])
        .into_iter()
        .filter(|r| r.user == user)
        .collect();
    for (verb, resource, subresource) in [
        ("create", "events", ""),
        ("patch", "encryptedsecrets", "status"),
        ("create", "secrets", ""),
        ("update", "secrets", ""),
        ("patch", "encryptedsecrets", ""),
    ] {
        assert!(
            made.iter().any(|r| r.verb == verb
                && r.resource == resource
                && r.subresource == subresource
                && r.code < 300),
            "no accepted {verb} {resource}/{subresource}"
        );
    }
    drop(controller);
    w.delete_namespaces(&["e2e-cluster"]).await;
    release.uninstall(&w.cp);
    w.delete_namespaces(&["kmseal-system"]).await;
}

/// The chart's namespaced variant (a Role in each listed namespace), installed with helm 4:
/// every check passes in its namespace, and the controller cannot read Secrets anywhere
/// else (the API server says 403).
#[tokio::test(flavor = "multi_thread")]
async fn the_namespaced_chart_confines_the_controller_to_its_namespaces() {
    let Some(w) = world().await else { return };
    let Some(helm) = helm("KMSEAL_TEST_HELM4") else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let (allowed, other) = (w.key().await, w.key().await);
    cluster::namespace(&w.admin, "e2e-ns").await;
    cluster::namespace(&w.admin, "elsewhere").await;
    let mut set = w.base_values();
    set.push(format!("kms.allowedKeys={{{allowed}}}"));
    set.push("controller.namespaces={e2e-ns}".into());
    let release = Release {
        helm,
        name: "tenants-kmseal".into(),
        namespace: "kmseal-tenants".into(),
        set,
    };
    release.install(&w.cp);
    let dir = tempfile::tempdir().unwrap();
    let from = w.cp.audit().len();
    let controller = release.controller(&w.cp, dir.path(), "kmseal-0").await;
    run_checks(&w.target("e2e-ns", &allowed, &other), &controller).await;
    assert!(
        controller.forbidden_lines().is_empty(),
        "{:?}",
        controller.forbidden_lines()
    );
    let user = release.user(&w.cp);
    assert!(refused(&w.cp, &user, from).is_empty());
    // With the controller's own credentials, outside its namespace: 403.
    let kubeconfig = std::fs::read_to_string(dir.path().join("kmseal-0.kubeconfig")).unwrap();
    let as_controller = cluster::client_from(&kubeconfig).await;
    for namespace in ["elsewhere", "kmseal-tenants"] {
        let secrets: Api<Secret> = Api::namespaced(as_controller.clone(), namespace);
        match secrets.list(&Default::default()).await {
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            other => panic!("listing Secrets in {namespace}: {other:?}"),
        }
    }
    let everywhere: Api<Secret> = Api::all(as_controller);
    assert!(matches!(
        everywhere.list(&Default::default()).await,
        Err(kube::Error::Api(status)) if status.code == 403
    ));
    drop(controller);
    w.delete_namespaces(&["e2e-ns", "elsewhere"]).await;
    release.uninstall(&w.cp);
    w.delete_namespaces(&["kmseal-tenants"]).await;
}

async fn lease_holder(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

async fn ready(client: &kube::Client, namespace: &str, name: &str) -> bool {
    let api: Api<EncryptedSecret> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.ok().flatten().is_some_and(|es| {
        es.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                && s.observed_generation == es.metadata.generation
        })
    })
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// Two replicas with leader election: only the Lease holder reconciles; when it dies, the
/// other takes over within the lease duration and reconciles what is new.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_elect_one_leader_and_a_standby_takes_over() {
    let Some(w) = world().await else { return };
    let Some(helm) = helm("KMSEAL_TEST_HELM3") else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let key = w.key().await;
    cluster::namespace(&w.admin, "ha").await;
    const LEASE: u64 = 6;
    let mut set = w.base_values();
    set.push(format!("kms.allowedKeys={{{key}}}"));
    set.push("controller.namespaces={ha}".into());
    set.push(format!("controller.leaseDuration={LEASE}"));
    let release = Release {
        helm,
        name: "kmseal".into(),
        namespace: "kmseal-ha".into(),
        set,
    };
    release.install(&w.cp);
    let dir = tempfile::tempdir().unwrap();
    let a = release.controller(&w.cp, dir.path(), "kmseal-a").await;
    let b = release.controller(&w.cp, dir.path(), "kmseal-b").await;
    let api: Api<EncryptedSecret> = Api::namespaced(w.admin.clone(), "ha");
    api.create(
        &PostParams::default(),
        &sealed(&w.kms, &key, "ha", "first", &[("k", b"v")]).await,
    )
    .await
    .unwrap();
    wait_for(
        "the first object ready",
        Duration::from_secs(60),
        async || ready(&w.admin, "ha", "first").await,
    )
    .await;
    let holder = lease_holder(&w.admin, "kmseal-ha", "kmseal")
        .await
        .expect("a Lease holder");
    let (mut leader, standby) = if holder == "kmseal-a" { (a, b) } else { (b, a) };
    let reconciles = "kmseal_reconciles_total";
    assert!(leader.metric(reconciles).await.unwrap() >= 1.0);
    assert_eq!(
        standby.metric(reconciles).await.unwrap(),
        0.0,
        "the standby reconciles nothing"
    );
    assert_eq!(
        cluster::http_get(standby.metrics_port, "/readyz")
            .await
            .as_deref(),
        Some("ready"),
        "a standby reports ready"
    );
    // The leader dies without a word.
    leader.signal("KILL");
    let killed = tokio::time::Instant::now();
    wait_for("the leader gone", Duration::from_secs(5), async || {
        leader.exited()
    })
    .await;
    api.create(
        &PostParams::default(),
        &sealed(&w.kms, &key, "ha", "second", &[("k", b"v")]).await,
    )
    .await
    .unwrap();
    wait_for(
        "the standby took over",
        Duration::from_secs(LEASE * 3),
        async || ready(&w.admin, "ha", "second").await,
    )
    .await;
    let took = killed.elapsed();
    let new_holder = lease_holder(&w.admin, "kmseal-ha", "kmseal").await.unwrap();
    assert_ne!(new_holder, holder);
    println!(
        "figure: leader killed; the standby ({new_holder}) held the Lease and reconciled a new object {:.1} s later (lease duration {LEASE} s)",
        took.as_secs_f64()
    );
    // Within the lease duration, plus the standby's renewal period and a reconcile.
    assert!(
        took <= Duration::from_secs(LEASE + LEASE / 3 + 3),
        "{took:?}"
    );
    drop((leader, standby));
    w.delete_namespaces(&["ha"]).await;
    release.uninstall(&w.cp);
    w.delete_namespaces(&["kmseal-ha"]).await;
}

/// A tenant with its own credentials (a ServiceAccount with a Role that allows EncryptedSecrets
/// in its namespace only) makes the tenant-isolation attacks with kubectl, against a
/// controller with a key policy: it gets no Secret, no plaintext, and no word about another
/// tenant's key.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_attacking_with_kubectl_gets_nothing() {
    let Some(w) = world().await else { return };
    let Some(helm) = helm("KMSEAL_TEST_HELM4") else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let (key_a, key_b, shared) = (w.key().await, w.key().await, w.key().await);
    for ns in ["tenant-a", "tenant-b"] {
        cluster::namespace(&w.admin, ns).await;
    }
    let mut set = w.base_values();
    set.extend([
        "controller.namespaces={tenant-a,tenant-b}".to_owned(),
        format!("kms.keyPolicy[0].key={key_a}"),
        "kms.keyPolicy[0].namespaces={tenant-a}".to_owned(),
        format!("kms.keyPolicy[1].key={key_b}"),
        "kms.keyPolicy[1].namespaces={tenant-b}".to_owned(),
        format!("kms.keyPolicy[2].key={shared}"),
        "kms.keyPolicy[2].namespaces={tenant-a,tenant-b}".to_owned(),
    ]);
    let release = Release {
        helm,
        name: "kmseal".into(),
        namespace: "kmseal-mt".into(),
        set,
    };
    release.install(&w.cp);
    // The tenant: may create, read and change EncryptedSecrets in tenant-a, nothing else.
    let tenant_rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "alice", "namespace": "tenant-a"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "encryptedsecrets-editor", "namespace": "tenant-a"},
         "rules": [{"apiGroups": ["kmseal.dev"], "resources": ["encryptedsecrets"], "verbs": ["*"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "alice", "namespace": "tenant-a"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "encryptedsecrets-editor"},
         "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": "tenant-a"}]}
    ]});
    let out =
        w.cp.kubectl(None, &["apply", "-f", "-"], Some(&tenant_rbac.to_string()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice.kubeconfig");
    let token = cluster::token(&w.admin, "tenant-a", "alice", None, 3600).await;
    std::fs::write(&alice, w.cp.token_kubeconfig(&token)).unwrap();
    let controller = release.controller(&w.cp, dir.path(), "kmseal-0").await;

    // The victim's objects in tenant-b.
    let victims: Api<EncryptedSecret> = Api::namespaced(w.admin.clone(), "tenant-b");
    let victim_db = sealed(
        &w.kms,
        &key_b,
        "tenant-b",
        "db",
        &[("password", b"victim-pw")],
    )
    .await;
    let victim_shared = sealed(
        &w.kms,
        &shared,
        "tenant-b",
        "shared",
        &[("password", b"victim-shared")],
    )
    .await;
    for es in [&victim_db, &victim_shared] {
        victims.create(&PostParams::default(), es).await.unwrap();
    }
    for name in ["db", "shared"] {
        wait_for(
            "the victim's objects ready",
            Duration::from_secs(60),
            async || ready(&w.admin, "tenant-b", name).await,
        )
        .await;
    }
    let victim_secrets: Api<Secret> = Api::namespaced(w.admin.clone(), "tenant-b");
    let before = victim_secrets.get("db").await.unwrap().data;

    // The attacks, each an EncryptedSecret in tenant-a applied by the tenant with kubectl.
    let mut copied = victim_db.clone();
    copied.metadata.namespace = Some("tenant-a".into());
    copied.metadata.name = Some("copied-under-b".into());
    let mut rebound = victim_shared.clone();
    rebound.metadata.namespace = Some("tenant-a".into());
    rebound.metadata.name = Some("shared".into());
    let mut token_secret = sealed(&w.kms, &key_a, "tenant-a", "sa-token", &[("token", b"x")]).await;
    token_secret.spec.template = Some(kmseal::api::SecretTemplate {
        type_: Some("kubernetes.io/service-account-token".into()),
        metadata: Some(kmseal::api::TemplateMetadata {
            annotations: BTreeMap::from([(
                "kubernetes.io/service-account.name".into(),
                "default".into(),
            )]),
            ..Default::default()
        }),
        immutable: None,
    });
    let under_b = sealed(&w.kms, &key_b, "tenant-a", "under-b", &[("password", b"x")]).await;
    let attacks: Vec<(&str, EncryptedSecret, &str)> = vec![
        (
            "the victim's value copied as it is",
            copied,
            "KeyNotAllowed",
        ),
        (
            "a value of a shared key, sealed for the victim's namespace",
            rebound,
            "DecryptFailed",
        ),
        (
            "a service-account-token Secret",
            token_secret,
            "SecretTypeNotAllowed",
        ),
        ("a value under the victim's key", under_b, "KeyNotAllowed"),
    ];
    for (what, es, _) in &attacks {
        let out = w.cp.kubectl(
            Some(&alice),
            &["apply", "-f", "-"],
            Some(&serde_json::to_string(es).unwrap()),
        );
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (what, es, reason) in &attacks {
        let name = es.metadata.name.clone().unwrap();
        wait_for(what, Duration::from_secs(60), async || {
            let out = w.cp.kubectl(
                Some(&alice),
                &[
                    "get",
                    "encryptedsecret",
                    &name,
                    "-n",
                    "tenant-a",
                    "-o",
                    "json",
                ],
                None,
            );
            let es: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            es["status"]["conditions"][0]["reason"] == *reason
        })
        .await;
        let out = w.cp.kubectl(
            Some(&alice),
            &[
                "get",
                "encryptedsecret",
                &name,
                "-n",
                "tenant-a",
                "-o",
                "json",
            ],
            None,
        );
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        let conditions = status["status"]["conditions"].as_array().unwrap();
        assert!(
            conditions.iter().all(|c| c["type"] != "KeyCurrent"),
            "{what}: nothing about the key: {conditions:?}"
        );
        let text = status.to_string();
        assert!(!text.contains("victim-pw") && !text.contains("victim-shared"));
    }
    // Nothing came out in tenant-a, and the victim's Secret is as it was.
    let tenant_secrets: Api<Secret> = Api::namespaced(w.admin.clone(), "tenant-a");
    let names: BTreeSet<String> = tenant_secrets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| !n.starts_with("alice") && n != "kube-root-ca.crt")
        .collect();
    assert!(names.is_empty(), "Secrets in tenant-a: {names:?}");
    assert_eq!(victim_secrets.get("db").await.unwrap().data, before);
    // And the tenant can neither read Secrets nor write outside its namespace.
    for (what, args) in [
        ("read Secrets", vec!["get", "secrets", "-n", "tenant-a"]),
        (
            "read the victim's objects",
            vec!["get", "encryptedsecrets", "-n", "tenant-b"],
        ),
    ] {
        let out = w.cp.kubectl(Some(&alice), &args, None);
        assert!(!out.status.success(), "the tenant could {what}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("forbidden"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut elsewhere = sealed(&w.kms, &key_a, "tenant-b", "planted", &[("k", b"v")]).await;
    elsewhere.metadata.namespace = Some("tenant-b".into());
    let out = w.cp.kubectl(
        Some(&alice),
        &["apply", "-f", "-"],
        Some(&serde_json::to_string(&elsewhere).unwrap()),
    );
    assert!(!out.status.success(), "the tenant wrote in tenant-b");
    assert!(
        controller.forbidden_lines().is_empty(),
        "{}",
        tail(&controller)
    );
    drop(controller);
    w.delete_namespaces(&["tenant-a", "tenant-b"]).await;
    release.uninstall(&w.cp);
    w.delete_namespaces(&["kmseal-mt"]).await;
}

/// The controller on a control plane of its own, with the admin's kubeconfig and static test
/// credentials for moto.
fn admin_controller(cp: &ControlPlane, moto: &str, key: &str, dir: &Path) -> ControllerProcess {
    admin_controller_with(cp, moto, key, &[], &[], dir.join("controller.log"))
}

/// [`admin_controller`] with more environment, arguments, and its log at `log`.
fn admin_controller_with(
    cp: &ControlPlane,
    moto: &str,
    key: &str,
    env: &[(&str, &str)],
    args: &[String],
    log: std::path::PathBuf,
) -> ControllerProcess {
    let mut all = BTreeMap::from([
        (
            "KMSEAL_KUBECONFIG".to_owned(),
            cp.kubeconfig.to_str().unwrap().to_owned(),
        ),
        ("KMSEAL_ALLOWED_KEYS".to_owned(), key.to_owned()),
        ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
        ("AWS_REGION".to_owned(), REGION.to_owned()),
        ("AWS_ENDPOINT_URL".to_owned(), moto.to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    ControllerProcess::spawn(&all, args, log)
}

fn values_of(n: usize) -> Vec<(String, Vec<u8>)> {
    vec![("password".to_owned(), format!("pw-{n}").into_bytes())]
}

async fn secret_data(client: &kube::Client, namespace: &str, name: &str) -> Option<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.data?.get("password").map(|v| v.0.clone()))
}

/// Faults a fake cannot make honestly, on a control plane of its own: kube-apiserver restarted
/// in the middle of a cold start, and an etcd compaction that expires the controller's
/// watches while it is away (Secrets deleted then are seen only by the relist, never as a
/// Delete event). Afterwards every object is Ready, every Secret has exactly its
/// values, and no Secret that had no reason to change did.
#[tokio::test(flavor = "multi_thread")]
async fn an_apiserver_restart_and_an_etcd_compaction_lose_nothing() {
    let Some(w) = world().await else { return };
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let own = ControlPlane::start_own(&dir.path().join("plane"));
    let admin = own.admin().await;
    cluster::install_crd(&admin).await;
    cluster::namespace(&admin, "faults").await;
    let key = w.key().await;
    const OBJECTS: usize = 150;
    let api: Api<EncryptedSecret> = Api::namespaced(admin.clone(), "faults");
    for i in 0..OBJECTS {
        let values = values_of(i);
        let items: Vec<(&str, &[u8])> = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let es = sealed(&w.kms, &key, "faults", &format!("app-{i}"), &items).await;
        api.create(&PostParams::default(), &es).await.unwrap();
    }
    let controller = admin_controller(&own, &w.moto, &key, dir.path());
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "faults");
    let managed = || async {
        secrets
            .list(&kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=kmseal"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0)
    };
    wait_for(
        "the cold start under way",
        Duration::from_secs(120),
        async || managed().await >= 10,
    )
    .await;
    let during = managed().await;
    own.restart_apiserver(Duration::from_secs(2));
    let all_right = || async {
        for i in 0..OBJECTS {
            let name = format!("app-{i}");
            if !ready(&admin, "faults", &name).await
                || secret_data(&admin, "faults", &name).await != Some(values_of(i)[0].1.clone())
            {
                return false;
            }
        }
        true
    };
    wait_for(
        "every object Ready after the restart",
        Duration::from_secs(240),
        async || all_right().await,
    )
    .await;
    assert_eq!(managed().await, OBJECTS);
    println!(
        "figure: kube-apiserver restarted after {during} of {OBJECTS} Secrets were written; all {OBJECTS} Ready afterwards, none lost or wrong"
    );

    // The controller is away (stopped) while things change and etcd's history is compacted;
    // the API server restarts, so its watches must resume from a resourceVersion that is gone.
    let versions: BTreeMap<String, String> = secrets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| Some((s.metadata.name?, s.metadata.resource_version?)))
        .collect();
    controller.signal("STOP");
    // Its watches are cut before anything changes, so no event of what follows can reach it
    // (not even one already on its way): only the relist after the compaction tells.
    own.restart_apiserver(Duration::from_secs(0));
    for i in 0..5 {
        secrets
            .delete(&format!("app-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let changed: Vec<usize> = (5..10).collect();
    for &i in &changed {
        let name = format!("app-{i}");
        let new = values_of(1000 + i);
        let items: Vec<(&str, &[u8])> = new
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let fresh = sealed(&w.kms, &key, "faults", &name, &items).await;
        let mut now = api.get(&name).await.unwrap();
        now.spec = fresh.spec;
        api.replace(&name, &PostParams::default(), &now)
            .await
            .unwrap();
    }
    let revision = own.compact_etcd();
    own.restart_apiserver(Duration::from_secs(0));
    controller.signal("CONT");
    let expected = |i: usize| {
        if changed.contains(&i) {
            values_of(1000 + i)[0].1.clone()
        } else {
            values_of(i)[0].1.clone()
        }
    };
    wait_for(
        "deleted Secrets restored and changed ones rewritten",
        Duration::from_secs(180),
        async || {
            for i in 0..OBJECTS {
                let name = format!("app-{i}");
                if !ready(&admin, "faults", &name).await
                    || secret_data(&admin, "faults", &name).await != Some(expected(i))
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let after: BTreeMap<String, String> = secrets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| Some((s.metadata.name?, s.metadata.resource_version?)))
        .collect();
    for i in 10..OBJECTS {
        let name = format!("app-{i}");
        assert_eq!(
            after.get(&name),
            versions.get(&name),
            "{name} was rewritten for nothing"
        );
    }
    println!(
        "figure: etcd compacted at revision {revision} while the controller was stopped: 5 deleted Secrets restored, 5 changed specs applied, the other {} Secrets untouched",
        OBJECTS - 10
    );
    drop(controller);
}

/// The README's "4 API requests per object", counted by the API server: a cold start of 1,000
/// objects, then a restart with nothing to do.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_counts_four_requests_per_object_and_none_on_restart() {
    let Some(w) = world().await else { return };
    let Some(helm) = helm("KMSEAL_TEST_HELM3") else {
        return;
    };
    let _turn = SERIAL.lock().await;
    const OBJECTS: usize = 1000;
    let key = w.key().await;
    cluster::namespace(&w.admin, "count").await;
    let mut set = w.base_values();
    set.push(format!("kms.allowedKeys={{{key}}}"));
    set.push("controller.namespaces={count}".into());
    // Resyncs as by default: they cost no request, but keep the restart's count to itself.
    set.retain(|v| !v.starts_with("controller.resyncInterval"));
    let release = Release {
        helm,
        name: "kmseal".into(),
        namespace: "kmseal-count".into(),
        set,
    };
    release.install(&w.cp);
    let api: Api<EncryptedSecret> = Api::namespaced(w.admin.clone(), "count");
    for i in 0..OBJECTS {
        let es = sealed(
            &w.kms,
            &key,
            "count",
            &format!("app-{i}"),
            &[("password", b"pw")],
        )
        .await;
        api.create(&PostParams::default(), &es).await.unwrap();
    }
    let user = release.user(&w.cp);
    // What the controller asked about the objects and their Secrets and events: everything
    // in their namespace but the lists and watches of its start.
    let per_object = |from: usize| {
        cluster::received(&w.cp.audit()[from..], &user)
            .into_iter()
            .filter(|r| r.namespace == "count" && r.verb != "list" && r.verb != "watch")
            .collect::<Vec<_>>()
    };
    let all_ready = async || {
        let list = api.list(&Default::default()).await.unwrap();
        list.items.len() == OBJECTS
            && list.items.iter().all(|es| {
                es.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
    };
    let dir = tempfile::tempdir().unwrap();
    let from = w.cp.audit().len();
    let started = tokio::time::Instant::now();
    let controller = release.controller(&w.cp, dir.path(), "kmseal-0").await;
    wait_for("all ready", Duration::from_secs(300), all_ready).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cold = per_object(from);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in &cold {
        *kinds
            .entry(format!(
                "{} {}{}",
                r.verb,
                r.resource,
                if r.subresource.is_empty() {
                    String::new()
                } else {
                    format!("/{}", r.subresource)
                }
            ))
            .or_default() += 1;
    }
    let total = cluster::received(&w.cp.audit()[from..], &user).len();
    println!(
        "figure: cold start of {OBJECTS} objects on the real API server: {} requests about them ({:.2} per object: {kinds:?}), {total} requests in all, Ready in {:.1} s",
        cold.len(),
        cold.len() as f64 / OBJECTS as f64,
        took.as_secs_f64()
    );
    // 4 per object: the GET of a Secret not there yet, its create, the status, the event.
    // The real watch lags: now and then an object looked at again right after its Secret
    // was created is not in the watch cache yet, and costs one more GET (1 in 1,000 here).
    assert!(
        cold.len() * 100 <= 401 * OBJECTS,
        "{} requests for {OBJECTS} objects: {kinds:?}",
        cold.len()
    );
    for kind in [
        "create secrets",
        "create events",
        "patch encryptedsecrets/status",
    ] {
        assert_eq!(kinds.get(kind), Some(&OBJECTS), "{kind}: {kinds:?}");
    }
    drop(controller);
    // A restart with nothing changed: lists and watches, nothing per object.
    let from = w.cp.audit().len();
    let controller = release.controller(&w.cp, dir.path(), "kmseal-1").await;
    wait_for("the restart synced", Duration::from_secs(60), async || {
        controller.log_text().contains("initial sync done")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let restart = per_object(from);
    let total = cluster::received(&w.cp.audit()[from..], &user).len();
    println!(
        "figure: restart with {OBJECTS} objects up to date: {} requests about them, {total} in all (lists, watches, the Lease)",
        restart.len()
    );
    assert!(restart.is_empty(), "{restart:#?}");
    drop(controller);
    w.delete_namespaces(&["count"]).await;
    release.uninstall(&w.cp);
    w.delete_namespaces(&["kmseal-count"]).await;
}

/// A CA and, signed by it, a serving certificate for 127.0.0.1 in `dir/tls` (tls.crt, tls.key),
/// made with openssl. Returns the CA certificate (PEM) and the serving certificate's serial.
fn webhook_certificates(dir: &Path, ca: Option<&str>) -> (String, String) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    if ca.is_none() {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=kmseal-test-webhook-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
    }
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "new.key",
        "-out",
        "new.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "new.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "new.crt",
    ]);
    let serial = run(&["x509", "-in", "new.crt", "-noout", "-serial"]);
    // The key first, then the certificate, each replaced whole (as a Secret volume updates).
    std::fs::rename(dir.join("new.key"), dir.join("tls/tls.key")).unwrap();
    std::fs::rename(dir.join("new.crt"), dir.join("tls/tls.crt")).unwrap();
    (
        std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        serial.trim().trim_start_matches("serial=").to_owned(),
    )
}

/// The serial of the certificate served on `port` (openssl s_client).
fn served_serial(port: u16) -> String {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

/// The admission webhook on the real API server: it calls the controller over TLS with the
/// caBundle it was given; `kubectl apply` (and `--dry-run=server`) of a value under a key the
/// namespace may not use fails with `kmseal validate`'s message; a good object is admitted; a
/// bad object can be deleted; with the webhook down and `failurePolicy: Ignore` applies go
/// through and the controller still refuses the object; a new certificate is served without a
/// restart.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_asks_the_webhook_over_tls() {
    let Some(w) = world().await else { return };
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, first_serial) = webhook_certificates(dir.path(), None);
    let (allowed, other) = (w.key().await, w.key().await);
    let ns = "webhook-t";
    w.delete_namespaces(&[ns]).await;
    let out = w.cp.kubectl(None, &["create", "namespace", ns], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.cp.kubectl(
        None,
        &["label", "namespace", ns, "kmseal-webhook-test=on"],
        None,
    );

    let port = cluster::free_port();
    let start = || {
        let args = [
            "--webhook-address".to_owned(),
            format!("127.0.0.1:{port}"),
            "--webhook-cert-dir".to_owned(),
            dir.path().join("tls").display().to_string(),
        ];
        admin_controller_with(
            &w.cp,
            &w.moto,
            &allowed,
            &[("KMSEAL_NAMESPACES", ns)],
            &args,
            dir.path().join("controller.log"),
        )
    };
    let controller = start();
    wait_for("the webhook listens", Duration::from_secs(30), async || {
        controller
            .log_text()
            .contains("admission webhook listening")
    })
    .await;
    assert_eq!(served_serial(port), first_serial);

    use base64::Engine;
    let configuration = |policy: &str| {
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "kmseal-test-webhook"},
            "webhooks": [{
                "name": "validate.kmseal.dev",
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{port}/validate"),
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca),
                },
                "rules": [{
                    "apiGroups": ["kmseal.dev"], "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["encryptedsecrets"],
                    "scope": "Namespaced",
                }],
                "failurePolicy": policy,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
                "namespaceSelector": {"matchLabels": {"kmseal-webhook-test": "on"}},
            }],
        })
        .to_string()
    };
    let apply = |manifest: &str, extra: &[&str]| {
        let mut args = vec!["apply", "-f", "-"];
        args.extend_from_slice(extra);
        w.cp.kubectl(None, &args, Some(manifest))
    };
    let out = apply(&configuration("Fail"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let manifest = |es: &EncryptedSecret| serde_json::to_string(es).unwrap();
    let bad = sealed(&w.kms, &other, ns, "bad", &[("password", b"pw-bad")]).await;
    let good = sealed(&w.kms, &allowed, ns, "good", &[("password", b"pw-good")]).await;
    // What kmseal validate says of the bad object, offline.
    let validated = std::process::Command::new(env!("CARGO_BIN_EXE_kmseal"))
        .args(["validate", "-o", "json", "--allowed-keys", &allowed, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(manifest(&bad).as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let report: Value = serde_json::from_slice(&validated.stdout).unwrap();
    let finding = &report["findings"][0];
    assert_eq!(finding["code"], "key_not_allowed", "{report:#}");
    let said = finding["message"].as_str().unwrap().to_owned();

    // The server caches webhook configurations for a moment: wait until it asks.
    wait_for(
        "the API server asks the webhook",
        Duration::from_secs(30),
        async || {
            !apply(&manifest(&bad), &["--dry-run=server"])
                .status
                .success()
        },
    )
    .await;
    for extra in [&["--dry-run=server"][..], &[]] {
        let out = apply(&manifest(&bad), extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}: admitted");
        assert!(stderr.contains("denied the request"), "{extra:?}: {stderr}");
        assert!(
            stderr.contains("[key_not_allowed] password: "),
            "{extra:?}: {stderr}"
        );
        assert!(
            stderr.contains(&said),
            "validate's message: {said}\n{stderr}"
        );
        assert!(!stderr.contains("pw-bad"));
    }
    let out = apply(&manifest(&good), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A new certificate (a new key, the same CA) is served without a restart, and trusted.
    let (_, second_serial) = webhook_certificates(dir.path(), Some(&ca));
    assert_ne!(second_serial, first_serial);
    wait_for(
        "the new certificate is served",
        Duration::from_secs(20),
        async || served_serial(port) == second_serial,
    )
    .await;
    assert!(
        !apply(&manifest(&bad), &["--dry-run=server"])
            .status
            .success()
    );
    assert!(
        apply(&manifest(&good), &["--dry-run=server"])
            .status
            .success()
    );

    // Counted by result.
    let metrics = cluster::http_get(controller.metrics_port, "/metrics")
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains("admission_reviews_total{result=\"denied\"}"),
        "{metrics}"
    );

    // With the webhook down and failurePolicy Ignore, applies go through; the controller,
    // back, still refuses the object; and a bad object is deleted like any other.
    let out = apply(&configuration("Ignore"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(controller);
    wait_for(
        "the webhook is down and ignored",
        Duration::from_secs(30),
        async || apply(&manifest(&bad), &[]).status.success(),
    )
    .await;
    let controller = start();
    wait_for(
        "the controller refuses the object",
        Duration::from_secs(60),
        async || {
            let out = w.cp.kubectl(
                None,
                &["get", "encryptedsecret", "bad", "-n", ns, "-o", "json"],
                None,
            );
            let es: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            es["status"]["conditions"][0]["reason"] == "KeyNotAllowed"
        },
    )
    .await;
    let out =
        w.cp.kubectl(None, &["delete", "encryptedsecret", "bad", "-n", ns], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    w.cp.kubectl(
        None,
        &[
            "delete",
            "validatingwebhookconfiguration",
            "kmseal-test-webhook",
        ],
        None,
    );
    drop(controller);
    w.delete_namespaces(&[ns]).await;
}

/// The webhook's own certificate (`--webhook-secret`): the controller makes a CA and a serving
/// certificate, keeps them in a Secret of its namespace and sets the CA as the configuration's
/// caBundle; the API server then trusts it, and a second replica serves the same certificate.
#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_makes_and_publishes_its_own_certificate() {
    let Some(w) = world().await else { return };
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let allowed = w.key().await;
    let other = w.key().await;
    let (tenant, home) = ("webhook-own", "kmseal-webhook-own");
    w.delete_namespaces(&[tenant, home]).await;
    for ns in [tenant, home] {
        let out = w.cp.kubectl(None, &["create", "namespace", ns], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    w.cp.kubectl(
        None,
        &["label", "namespace", tenant, "kmseal-webhook-own=on"],
        None,
    );
    let configuration = "kmseal-test-webhook-own";
    let ports = [cluster::free_port(), cluster::free_port()];
    let hook = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": configuration},
        "webhooks": ports.iter().enumerate().map(|(i, port)| json!({
            "name": format!("validate{i}.kmseal.dev"),
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate")},
            "rules": [{
                "apiGroups": ["kmseal.dev"], "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE"], "resources": ["encryptedsecrets"],
            }],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
            "namespaceSelector": {"matchLabels": {"kmseal-webhook-own": "on"}},
        })).collect::<Vec<_>>(),
    });
    let out =
        w.cp.kubectl(None, &["apply", "-f", "-"], Some(&hook.to_string()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let start = |port: u16, n: usize| {
        let args = [
            format!("--webhook-address=127.0.0.1:{port}"),
            "--webhook-secret=kmseal-webhook-tls".to_owned(),
            format!("--webhook-configuration={configuration}"),
            "--webhook-hosts=127.0.0.1".to_owned(),
        ];
        admin_controller_with(
            &w.cp,
            &w.moto,
            &allowed,
            &[("KMSEAL_NAMESPACES", tenant), ("POD_NAMESPACE", home)],
            &args,
            dir.path().join(format!("controller-{n}.log")),
        )
    };
    let first = start(ports[0], 0);
    wait_for(
        "the first replica listens",
        Duration::from_secs(30),
        async || first.log_text().contains("admission webhook listening"),
    )
    .await;
    let get_hook = || {
        let out = w.cp.kubectl(
            None,
            &[
                "get",
                "validatingwebhookconfiguration",
                configuration,
                "-o",
                "json",
            ],
            None,
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default()
    };
    let bundle = get_hook()["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!bundle.is_empty(), "the caBundle is set: {}", tail(&first));
    assert_eq!(
        get_hook()["webhooks"][1]["clientConfig"]["caBundle"],
        bundle.as_str()
    );
    let out = w.cp.kubectl(
        None,
        &[
            "get",
            "secret",
            "kmseal-webhook-tls",
            "-n",
            home,
            "-o",
            "json",
        ],
        None,
    );
    let secret: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");

    // The second replica finds the Secret and serves the same certificate.
    let second = start(ports[1], 1);
    wait_for(
        "the second replica listens",
        Duration::from_secs(30),
        async || second.log_text().contains("admission webhook listening"),
    )
    .await;
    let serial = served_serial(ports[0]);
    assert!(!serial.is_empty());
    assert_eq!(
        served_serial(ports[1]),
        serial,
        "one certificate for every replica"
    );
    assert!(
        !second.log_text().contains("webhook certificate issued"),
        "{}",
        tail(&second)
    );

    // The API server trusts it: a value under a key the namespace may not use is refused at
    // apply, by either replica (both webhooks are called).
    let bad = sealed(&w.kms, &other, tenant, "bad", &[("password", b"pw-bad")]).await;
    let good = sealed(
        &w.kms,
        &allowed,
        tenant,
        "good",
        &[("password", b"pw-good")],
    )
    .await;
    let apply = |es: &EncryptedSecret| {
        w.cp.kubectl(
            None,
            &["apply", "-f", "-"],
            Some(&serde_json::to_string(es).unwrap()),
        )
    };
    wait_for(
        "the API server asks the webhooks",
        Duration::from_secs(30),
        async || {
            let out = apply(&bad);
            String::from_utf8_lossy(&out.stderr).contains("[key_not_allowed]")
        },
    )
    .await;
    let out = apply(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    w.cp.kubectl(
        None,
        &["delete", "validatingwebhookconfiguration", configuration],
        None,
    );
    drop((first, second));
    w.delete_namespaces(&[tenant, home]).await;
}

/// The chart's webhook, installed on the real API server: by default the controller, as the
/// release's ServiceAccount, makes its certificate and sets the caBundle with nothing but the
/// chart's RBAC (no request refused); with a Secret of one's own, the server takes the
/// configuration and its caBundle.
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_installs_the_webhook_and_its_rbac_is_enough() {
    let Some(w) = world().await else { return };
    let Some(helm) = helm("KMSEAL_TEST_HELM3") else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let key = w.key().await;
    let mut set = w.base_values();
    set.push(format!("kms.allowedKeys={{{key}}}"));
    set.push("webhook.enabled=true".into());
    set.push(format!("webhook.port={}", cluster::free_port()));
    set.push("controller.namespaces={kmseal-wh-tenant}".into());
    let release = Release {
        helm: helm.clone(),
        name: "kmseal".into(),
        namespace: "kmseal-wh".into(),
        set: set.clone(),
    };
    cluster::namespace(&w.admin, "kmseal-wh-tenant").await;
    release.install(&w.cp);
    let objects = release.rendered(&w.cp);
    let name = objects
        .iter()
        .find(|o| o["kind"] == "ValidatingWebhookConfiguration")
        .and_then(|o| o["metadata"]["name"].as_str())
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let from = w.cp.audit().len();
    let controller = release.controller(&w.cp, dir.path(), "kmseal-0").await;
    wait_for("the caBundle is set", Duration::from_secs(30), async || {
        let out = w.cp.kubectl(
            None,
            &["get", "validatingwebhookconfiguration", &name, "-o", "json"],
            None,
        );
        let hook: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        hook["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .is_some_and(|b| !b.is_empty())
    })
    .await;
    let out = w.cp.kubectl(
        None,
        &[
            "get",
            "secret",
            "-n",
            "kmseal-wh",
            "kmseal-webhook-tls",
            "-o",
            "name",
        ],
        None,
    );
    assert!(out.status.success(), "{}", tail(&controller));
    let user = release.user(&w.cp);
    let refused = refused(&w.cp, &user, from);
    assert!(
        refused.is_empty(),
        "refused by the API server: {refused:#?}"
    );
    assert!(
        controller.forbidden_lines().is_empty(),
        "{:?}",
        controller.forbidden_lines()
    );
    drop(controller);
    release.uninstall(&w.cp);
    w.delete_namespaces(&["kmseal-wh"]).await;

    // A Secret of one's own: the server takes the configuration with its caBundle.
    let mut own = set;
    own.push("webhook.secretName=kmseal-webhook-own".into());
    own.push("webhook.caBundle=LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==".into());
    let release = Release {
        helm,
        name: "kmseal".into(),
        namespace: "kmseal-wh".into(),
        set: own,
    };
    release.install(&w.cp);
    let out = w.cp.kubectl(
        None,
        &["get", "validatingwebhookconfiguration", &name, "-o", "json"],
        None,
    );
    let hook: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        hook["webhooks"][0]["clientConfig"]["caBundle"],
        "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
    );
    release.uninstall(&w.cp);
    w.delete_namespaces(&["kmseal-wh", "kmseal-wh-tenant"])
        .await;
}

/// The Ready condition's reason of `namespace/name`, as the server has it now.
async fn ready_reason(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    let api: Api<EncryptedSecret> = Api::namespaced(client.clone(), namespace);
    let es = api.get_opt(name).await.ok().flatten()?;
    kmseal::reconcile::ready_condition(es.status.as_ref()).map(|c| c.reason.clone())
}

/// Per-tenant identity on the real server, installed by the chart (helm 4, namespaced): the
/// chart's RBAC is enough to read a tenant's ServiceAccount and ask for a token of it
/// (TokenRequest), the token is traded at STS (moto) for the ServiceAccount's role, and the
/// object's values open with it; a ServiceAccount without a role and a missing one each get
/// their own reason; one TokenRequest and one STS call serve every object of one
/// ServiceAccount. (moto's KMS does not tell accounts or roles apart, so that the KMS calls
/// carry the role's credentials is shown in `tests/aws_emulators.rs`, on the wire.)
#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_service_account_role_opens_its_values_on_the_real_server() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let Some(w) = world().await else { return };
    let Some(helm) = helm("KMSEAL_TEST_HELM4") else {
        return;
    };
    let _turn = SERIAL.lock().await;
    const TENANT: &str = "e2e-identity";
    const TENANT_ROLE: &str = "arn:aws:iam::000000000000:role/e2e-identity-decrypt";
    let key = w.key().await;
    cluster::namespace(&w.admin, TENANT).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(w.admin.clone(), TENANT);
    for (name, role) in [("app", Some(TENANT_ROLE)), ("bare", None)] {
        let sa: ServiceAccount = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "annotations": role
                    .map(|r| json!({"eks.amazonaws.com/role-arn": r}))
                    .unwrap_or(json!({})),
            }
        }))
        .unwrap();
        accounts.create(&PostParams::default(), &sa).await.unwrap();
    }
    let mut set = w.base_values();
    set.push(format!("kms.allowedKeys={{{key}}}"));
    set.push("tenantIdentity.enabled=true".into());
    set.push(format!("controller.namespaces={{{TENANT}}}"));
    let release = Release {
        helm,
        name: "identity-kmseal".into(),
        namespace: "kmseal-identity".into(),
        set,
    };
    release.install(&w.cp);
    let dir = tempfile::tempdir().unwrap();
    let from = w.cp.audit().len();
    let controller = release.controller(&w.cp, dir.path(), "kmseal-0").await;

    let objects: Api<EncryptedSecret> = Api::namespaced(w.admin.clone(), TENANT);
    let cases = [
        ("db-1", "app"),
        ("db-2", "app"),
        ("db-3", "app"),
        ("no-role", "bare"),
        ("ghost", "missing"),
    ];
    for (name, sa) in cases {
        let mut es = sealed(&w.kms, &key, TENANT, name, &[("password", b"tenant-pw")]).await;
        es.spec.service_account_name = Some(sa.into());
        objects.create(&PostParams::default(), &es).await.unwrap();
    }
    for name in ["db-1", "db-2", "db-3"] {
        wait_for(name, Duration::from_secs(60), async || {
            ready(&w.admin, TENANT, name).await
        })
        .await;
        assert_eq!(
            secret_data(&w.admin, TENANT, name).await.as_deref(),
            Some(&b"tenant-pw"[..])
        );
    }
    for (name, expected) in [
        ("no-role", "NoRoleAnnotation"),
        ("ghost", "ServiceAccountNotFound"),
    ] {
        wait_for(expected, Duration::from_secs(60), async || {
            ready_reason(&w.admin, TENANT, name).await.as_deref() == Some(expected)
        })
        .await;
        assert!(secret_data(&w.admin, TENANT, name).await.is_none());
    }
    let sts_ok = controller
        .metric("kmseal_identity_requests_total{operation=\"AssumeRoleWithWebIdentity\",outcome=\"ok\"}")
        .await;
    let tokens_ok = controller
        .metric("kmseal_identity_requests_total{operation=\"TokenRequest\",outcome=\"ok\"}")
        .await;
    println!(
        "three objects of one ServiceAccount: {tokens_ok:?} TokenRequest(s), {sts_ok:?} STS call(s)"
    );
    assert_eq!(
        (tokens_ok, sts_ok),
        (Some(1.0), Some(1.0)),
        "{}",
        tail(&controller)
    );
    // The server saw the controller's TokenRequest for the tenant's ServiceAccount, granted by
    // the chart's RBAC, and refused it nothing.
    let user = release.user(&w.cp);
    let token_requests: Vec<_> = cluster::requests(&w.cp.audit()[from..])
        .into_iter()
        .filter(|r| r.user == user && r.subresource == "token")
        .collect();
    assert_eq!(token_requests.len(), 1, "{token_requests:?}");
    assert_eq!(
        (
            token_requests[0].namespace.as_str(),
            token_requests[0].name.as_str(),
            token_requests[0].code
        ),
        (TENANT, "app", 201)
    );
    assert!(
        refused(&w.cp, &user, from).is_empty(),
        "{:?}",
        refused(&w.cp, &user, from)
    );
    assert!(
        controller.forbidden_lines().is_empty(),
        "{:?}",
        controller.forbidden_lines()
    );
    let log = controller.log_text();
    assert!(
        log.contains("assumed a tenant's role"),
        "{}",
        tail(&controller)
    );
    assert!(!log.contains("eyJ"), "no token in the log");
    drop(controller);
    w.delete_namespaces(&[TENANT]).await;
    release.uninstall(&w.cp);
    w.delete_namespaces(&["kmseal-identity"]).await;
}

/// The chart's cert-manager way on the real server, against cert-manager's own CRDs (from its
/// Go module; its controllers cannot be built here, so the test does their two jobs): the
/// server accepts the chart's Issuer and Certificate as cert-manager's schemas define them;
/// the configuration asks cainjector for the Certificate's CA; the Secret cert-manager would
/// write (for the Certificate's DNS names) is what the controller serves from the mounted
/// directory; and the CA injected as the caBundle verifies it. The chart's RBAC is enough.
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_installs_the_webhook_for_cert_manager() {
    use base64::Engine;
    let Some(w) = world().await else { return };
    let Some(helm) = helm("KMSEAL_TEST_HELM4") else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let crds: Vec<String> = ["issuers", "clusterissuers", "certificates"]
        .iter()
        .map(|kind| {
            w.cp.cert_manager_crds
                .join(format!("cert-manager.io_{kind}.yaml"))
                .display()
                .to_string()
        })
        .collect();
    for crd in &crds {
        let out =
            w.cp.kubectl(None, &["apply", "--server-side", "-f", crd], None);
        assert!(
            out.status.success(),
            "{crd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for kind in ["issuers", "certificates"] {
        let out = w.cp.kubectl(
            None,
            &[
                "wait",
                "--for=condition=Established",
                &format!("crd/{kind}.cert-manager.io"),
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key = w.key().await;
    let port = cluster::free_port();
    let mut set = w.base_values();
    set.push(format!("kms.allowedKeys={{{key}}}"));
    set.push("webhook.enabled=true".into());
    set.push("webhook.certManager.enabled=true".into());
    set.push(format!("webhook.port={port}"));
    set.push("controller.namespaces={kmseal-cm-tenant}".into());
    let release = Release {
        helm,
        name: "kmseal".into(),
        namespace: "kmseal-cm".into(),
        set,
    };
    cluster::namespace(&w.admin, "kmseal-cm-tenant").await;
    release.install(&w.cp);
    let get = |args: &[&str]| -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let out = w.cp.kubectl(None, &all, None);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let objects = release.rendered(&w.cp);
    let named = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .and_then(|o| o["metadata"]["name"].as_str())
            .unwrap_or_else(|| panic!("the chart renders a {kind}"))
            .to_owned()
    };
    let (certificate_name, issuer_name, configuration) = (
        named("Certificate"),
        named("Issuer"),
        named("ValidatingWebhookConfiguration"),
    );
    // Stored as cert-manager's CRDs define them.
    let certificate = get(&["certificate", "-n", "kmseal-cm", &certificate_name]);
    let issuer = get(&["issuer", "-n", "kmseal-cm", &issuer_name]);
    assert!(issuer["spec"]["selfSigned"].is_object(), "{issuer}");
    assert_eq!(
        certificate["spec"]["issuerRef"]["name"],
        issuer_name.as_str()
    );
    let hook = get(&["validatingwebhookconfiguration", &configuration]);
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("kmseal-cm/{certificate_name}").as_str()
    );
    let service = format!(
        "{}.kmseal-cm.svc",
        hook["webhooks"][0]["clientConfig"]["service"]["name"]
            .as_str()
            .unwrap()
    );
    let dns_names: Vec<String> = certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    assert!(
        dns_names.contains(&service),
        "{dns_names:?} names {service}"
    );

    // cert-manager's job: the Secret the Certificate names, for its DNS names.
    let issued =
        kmseal::controller::webhook_certs::issue(&dns_names, kmseal::time::unix_now(), None)
            .unwrap();
    let secret_name = certificate["spec"]["secretName"].as_str().unwrap();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name, "namespace": "kmseal-cm"},
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": issued.cert_pem,
            "tls.key": issued.key_pem.as_str(),
            "ca.crt": issued.ca_bundle,
        }
    });
    let out =
        w.cp.kubectl(None, &["apply", "-f", "-"], Some(&secret.to_string()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // cainjector's job: the Certificate's CA as the caBundle.
    let patch = json!([{
        "op": "add",
        "path": "/webhooks/0/clientConfig/caBundle",
        "value": base64::engine::general_purpose::STANDARD.encode(&issued.ca_bundle),
    }]);
    let out = w.cp.kubectl(
        None,
        &[
            "patch",
            "validatingwebhookconfiguration",
            &configuration,
            "--type",
            "json",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let from = w.cp.audit().len();
    let controller = release.controller(&w.cp, dir.path(), "kmseal-0").await;
    wait_for("the webhook listens", Duration::from_secs(30), async || {
        controller
            .log_text()
            .contains("admission webhook listening")
    })
    .await;
    // It serves the certificate cert-manager issued, and the injected CA verifies it.
    let cert_file = dir.path().join("issued.crt");
    std::fs::write(&cert_file, &issued.cert_pem).unwrap();
    let serial = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&cert_file)
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&serial.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned();
    assert!(!serial.is_empty());
    assert_eq!(served_serial(port), serial, "{}", tail(&controller));
    let hook = get(&["validatingwebhookconfiguration", &configuration]);
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(
            hook["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let ca_file = dir.path().join("bundle.pem");
    std::fs::write(&ca_file, bundle).unwrap();
    let verified = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca_file)
        .arg(&cert_file)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let user = release.user(&w.cp);
    let refused = refused(&w.cp, &user, from);
    assert!(
        refused.is_empty(),
        "refused by the API server: {refused:#?}"
    );
    assert!(
        controller.forbidden_lines().is_empty(),
        "{:?}",
        controller.forbidden_lines()
    );
    drop(controller);
    release.uninstall(&w.cp);
    w.delete_namespaces(&["kmseal-cm", "kmseal-cm-tenant"])
        .await;
    for crd in &crds {
        w.cp.kubectl(None, &["delete", "--ignore-not-found", "-f", crd], None);
    }
}

/// What a recording proxy in front of moto saw: which role session each access key id is, from
/// STS's answers, and each KMS `Decrypt`'s access key id and namespace (its encryption context).
#[derive(Default, Debug)]
struct Wire {
    sessions: BTreeMap<String, String>,
    decrypts: Vec<(String, String)>,
}

/// Reads one HTTP/1.1 message head and its content-length body from `stream`.
async fn read_message(stream: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buffer.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            return Some((head, buffer[end + 4..end + 4 + length].to_vec()));
        }
    }
}

/// Forwards every request to `upstream` (one per connection) and records in `wire` what
/// the proxy saw.
async fn recording_proxy(upstream: String, wire: std::sync::Arc<std::sync::Mutex<Wire>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let (target, wire) = (target.clone(), wire.clone());
            tokio::spawn(async move {
                let Some((head, body)) = read_message(&mut client).await else {
                    return;
                };
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                };
                // One request per connection: moto closes after its answer.
                let forwarded: String = head
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect::<String>()
                    + "connection: close\r\n\r\n";
                let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let _ = server.write_all(forwarded.as_bytes()).await;
                let _ = server.write_all(&body).await;
                let mut answer = Vec::new();
                let _ = server.read_to_end(&mut answer).await;
                let _ = client.write_all(&answer).await;
                let _ = client.shutdown().await;
                let text = String::from_utf8_lossy(&answer);
                let between = |open: &str, close: &str| {
                    let start = text.find(open)? + open.len();
                    let end = text[start..].find(close)? + start;
                    Some(text[start..end].to_owned())
                };
                let mut wire = wire.lock().unwrap();
                if String::from_utf8_lossy(&body).contains("Action=AssumeRoleWithWebIdentity")
                    && let (Some(key), Some(arn)) = (
                        between("<AccessKeyId>", "</AccessKeyId>"),
                        between("<Arn>", "</Arn>"),
                    )
                {
                    wire.sessions.insert(key, arn);
                }
                if header("x-amz-target").as_deref() == Some("TrentService.Decrypt") {
                    let key = header("authorization")
                        .and_then(|a| {
                            let start = a.find("Credential=")? + "Credential=".len();
                            a[start..].split('/').next().map(str::to_owned)
                        })
                        .unwrap_or_default();
                    let namespace = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|b| {
                            b["EncryptionContext"]["kmseal.dev/namespace"]
                                .as_str()
                                .map(str::to_owned)
                        })
                        .unwrap_or_default();
                    wire.decrypts.push((key, namespace));
                }
            });
        }
    });
    url
}

/// The worked example of docs/multi-tenancy.md on the real server, with moto behind a
/// recording proxy: two tenants, each with its own key and its own role (its ServiceAccount's
/// annotation), the chart locking both to their own roles. Each tenant's Secret is written,
/// and every KMS `Decrypt` for a tenant's object is signed with an access key id that STS
/// issued for that tenant's role, in a session named for its namespace and object; the
/// controller's own role is never assumed (it needs no KMS permission for these tenants).
#[tokio::test(flavor = "multi_thread")]
async fn two_tenants_decrypt_with_their_own_roles_on_the_real_server() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let Some(w) = world().await else { return };
    let Some(helm) = helm("KMSEAL_TEST_HELM3") else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let wire = std::sync::Arc::new(std::sync::Mutex::new(Wire::default()));
    let proxy = recording_proxy(w.moto.clone(), wire.clone()).await;
    // What a run that failed midway left behind.
    w.delete_namespaces(&["e2e-team-a", "e2e-team-b"]).await;
    let tenants = [("e2e-team-a", w.key().await), ("e2e-team-b", w.key().await)];
    for (namespace, _) in &tenants {
        cluster::namespace(&w.admin, namespace).await;
        let accounts: Api<ServiceAccount> = Api::namespaced(w.admin.clone(), namespace);
        let sa: ServiceAccount = serde_json::from_value(json!({
            "metadata": {
                "name": "kmseal",
                "annotations": {
                    "eks.amazonaws.com/role-arn":
                        format!("arn:aws:iam::000000000000:role/kmseal-{namespace}"),
                },
            }
        }))
        .unwrap();
        accounts.create(&PostParams::default(), &sa).await.unwrap();
    }
    let mut set: Vec<String> = w
        .base_values()
        .into_iter()
        .map(|v| {
            if v.starts_with("aws.endpoint=") {
                format!("aws.endpoint={proxy}")
            } else {
                v
            }
        })
        .collect();
    for (i, (namespace, key)) in tenants.iter().enumerate() {
        set.push(format!("kms.keyPolicy[{i}].key={key}"));
        set.push(format!("kms.keyPolicy[{i}].namespaces={{{namespace}}}"));
    }
    set.push("tenantIdentity.enabled=true".into());
    set.push("tenantIdentity.defaultServiceAccount=kmseal".into());
    set.push("tenantIdentity.required=true".into());
    set.push("controller.namespaces={e2e-team-a,e2e-team-b}".into());
    let release = Release {
        helm,
        name: "kmseal".into(),
        namespace: "kmseal-two".into(),
        set,
    };
    release.install(&w.cp);
    let dir = tempfile::tempdir().unwrap();
    let controller = release.controller(&w.cp, dir.path(), "kmseal-0").await;
    for (namespace, key) in &tenants {
        let objects: Api<EncryptedSecret> = Api::namespaced(w.admin.clone(), namespace);
        for name in ["db", "api"] {
            let value = format!("{namespace}-{name}");
            let es = sealed(
                &w.kms,
                key,
                namespace,
                name,
                &[("password", value.as_bytes())],
            )
            .await;
            objects.create(&PostParams::default(), &es).await.unwrap();
        }
    }
    for (namespace, _) in &tenants {
        for name in ["db", "api"] {
            wait_for(name, Duration::from_secs(60), async || {
                ready(&w.admin, namespace, name).await
            })
            .await;
            assert_eq!(
                secret_data(&w.admin, namespace, name).await.as_deref(),
                Some(format!("{namespace}-{name}").as_bytes())
            );
        }
    }
    let wire = std::mem::take(&mut *wire.lock().unwrap());
    println!("{wire:#?}");
    assert!(wire.decrypts.len() >= 4, "{wire:#?}");
    for (key, namespace) in &wire.decrypts {
        let session = wire.sessions.get(key).unwrap_or_else(|| {
            panic!("a Decrypt signed by {key}, which STS did not issue: {wire:#?}")
        });
        assert!(
            session.contains(&format!(
                "assumed-role/kmseal-{namespace}/kmseal@{namespace}."
            )),
            "the Decrypt for {namespace} was signed as {session}"
        );
    }
    // The controller's own role was not even assumed: every STS session is a tenant's.
    assert!(
        wire.sessions
            .values()
            .all(|s| s.contains("assumed-role/kmseal-e2e-team-")),
        "{wire:#?}"
    );
    assert_eq!(wire.sessions.len(), 2, "one session per tenant: {wire:#?}");
    drop(wire);
    drop(controller);
    release.uninstall(&w.cp);
    w.delete_namespaces(&["e2e-team-a", "e2e-team-b", "kmseal-two"])
        .await;
}
