//! The admission webhook's decisions (`kmseal::webhook::review`): an AdmissionReview in, the
//! answer out, for every finding `kmseal validate` makes of one object, with the same code and
//! message; and what is never refused (DELETE, status, removing items, pre-existing problems).

mod common;

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::run;
use kmseal::kms::MemoryKms;
use kmseal::open::Rules;
use kmseal::policy::{KeyPolicy, ResolvedAliases, SecretTypes};
use kmseal::validate::Options;
use kmseal::webhook::{Verdict, review};
use serde_json::{Value, json};

const PLAINTEXT: &str = "hunter2-plaintext";

struct Fixture {
    kms: MemoryKms,
    allowed: String,
    other: String,
    policy: KeyPolicy,
    aliases: ResolvedAliases,
    types: SecretTypes,
}

impl Fixture {
    fn new() -> Fixture {
        let kms = MemoryKms::new("eu-west-1");
        let allowed = kms.create_key();
        let other = kms.create_key();
        let policy = KeyPolicy::from_rules(
            KeyPolicy::rules_for_all_namespaces(std::slice::from_ref(&allowed)).unwrap(),
        );
        Fixture {
            kms,
            allowed,
            other,
            policy,
            aliases: ResolvedAliases::new(),
            types: SecretTypes::default(),
        }
    }

    fn options(&self) -> Options<'_> {
        Options {
            rules: Rules {
                policy: &self.policy,
                aliases: &self.aliases,
            },
            types: &self.types,
            namespace: None,
            allow_plain_secrets: false,
            repo: None,
        }
    }

    /// An EncryptedSecret sealed for prod/`name`, as JSON.
    async fn sealed(&self, key: &str, name: &str, items: &[(&str, &str)]) -> Value {
        let mut args = vec![
            "seal", "--key", key, "--name", name, "-n", "prod", "-o", "json",
        ];
        let literals: Vec<String> = items.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for literal in &literals {
            args.extend(["--from-literal", literal.as_str()]);
        }
        let out = run(&self.kms, &args, "").await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// `kmseal validate -o json` of the object, with the same key policy: its findings as
    /// (severity, code, item, message).
    async fn validate(&self, object: &Value) -> Vec<(String, String, Option<String>, String)> {
        let out = run(
            &self.kms,
            &[
                "validate",
                "-o",
                "json",
                "--allowed-keys",
                &self.allowed,
                "-",
            ],
            &object.to_string(),
        )
        .await;
        let report: Value = serde_json::from_str(&out.stdout).expect(&out.stderr);
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["severity"].as_str().unwrap().to_owned(),
                    f["code"].as_str().unwrap().to_owned(),
                    f["item"].as_str().map(str::to_owned),
                    f["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

fn request(
    operation: &str,
    object: Option<&Value>,
    old: Option<&Value>,
    sub: Option<&str>,
) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "8d6e1e4a-0000-4000-8000-000000000001",
            "kind": {"group": "kmseal.dev", "version": "v1alpha1", "kind": "EncryptedSecret"},
            "resource": {"group": "kmseal.dev", "version": "v1alpha1", "resource": "encryptedsecrets"},
            "subResource": sub,
            "name": "db",
            "namespace": "prod",
            "operation": operation,
            "userInfo": {"username": "tenant"},
            "object": object,
            "oldObject": old,
            "dryRun": false
        }
    })
}

/// The response to one review, as the API server would read it.
fn decide(fixture: &Fixture, review_json: Value) -> (Value, Verdict) {
    let review_in: kube::core::admission::AdmissionReview<kube::core::DynamicObject> =
        serde_json::from_value(review_json).unwrap();
    let request: kube::core::admission::AdmissionRequest<_> = review_in.try_into().unwrap();
    let (response, verdict) = review(&request, &fixture.options());
    let out = serde_json::to_value(response.into_review()).unwrap();
    assert!(!out.to_string().contains(PLAINTEXT));
    (out["response"].clone(), verdict)
}

fn reencode(value: &str, change: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut bytes = BASE64.decode(value).unwrap();
    change(&mut bytes);
    BASE64.encode(bytes)
}

#[tokio::test]
async fn every_finding_of_validate_is_the_webhooks_answer() {
    let f = Fixture::new();
    let good = f.sealed(&f.allowed, "db", &[("password", PLAINTEXT)]).await;
    let value = good["spec"]["encryptedData"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut object = good.clone();
        change(&mut object);
        object
    };
    cases.push(("an unknown field", with(&|o| o["spec"]["extra"] = json!(1))));
    cases.push((
        "a value that is not base64",
        with(&|o| o["spec"]["encryptedData"]["password"] = json!("%%%not-base64")),
    ));
    let future = reencode(&value, |b| b[6] = 9);
    cases.push((
        "an envelope from a newer kmseal",
        with(&|o| o["spec"]["encryptedData"]["password"] = json!(future)),
    ));
    cases.push((
        "an invalid item name",
        with(&|o| o["spec"]["encryptedData"]["bad/name"] = json!(value)),
    ));
    cases.push((
        "an invalid scope annotation",
        with(&|o| {
            o["metadata"]["annotations"] = json!({"kmseal.dev/scope": "galaxy"});
        }),
    ));
    cases.push((
        "a forbidden Secret type",
        with(&|o| o["spec"]["template"] = json!({"type": "kubernetes.io/service-account-token"})),
    ));
    cases.push((
        "a TLS Secret without its key",
        with(&|o| o["spec"]["template"] = json!({"type": "kubernetes.io/tls"})),
    ));
    let foreign = f.sealed(&f.other, "db", &[("password", PLAINTEXT)]).await;
    cases.push(("a key the namespace may not use", foreign));
    let big = "x".repeat(600 * 1024);
    let a = f.sealed(&f.allowed, "db", &[("a", &big)]).await;
    let b = f.sealed(&f.allowed, "db", &[("b", &big)]).await;
    let mut too_large = a.clone();
    too_large["spec"]["encryptedData"]["b"] = b["spec"]["encryptedData"]["b"].clone();
    cases.push(("over 1 MiB in all", too_large));

    let mut codes = BTreeSet::new();
    for (what, object) in &cases {
        let expected: Vec<_> = f
            .validate(object)
            .await
            .into_iter()
            .filter(|(severity, ..)| severity == "error")
            .collect();
        assert!(!expected.is_empty(), "{what}: validate finds nothing");
        let (response, verdict) = decide(&f, request("CREATE", Some(object), None, None));
        assert_eq!(verdict, Verdict::Denied, "{what}: {response}");
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap();
        for (_, code, item, text) in &expected {
            let shown = match item {
                Some(item) => format!("[{code}] {item}: {text}"),
                None => format!("[{code}] {text}"),
            };
            assert!(
                message.contains(&shown),
                "{what}: {message}\nexpected {shown}"
            );
            codes.insert(code.clone());
        }
        // The same on `kubectl apply --dry-run=server`.
        let mut dry = request("CREATE", Some(object), None, None);
        dry["request"]["dryRun"] = json!(true);
        assert_eq!(decide(&f, dry).1, Verdict::Denied);
    }
    for code in [
        "schema",
        "malformed",
        "unsupported_version",
        "invalid_input",
        "type_not_allowed",
        "key_not_allowed",
        "too_large",
    ] {
        assert!(codes.contains(code), "no case gives {code}: {codes:?}");
    }

    // A good object is admitted, with nothing to say.
    let (response, verdict) = decide(&f, request("CREATE", Some(&good), None, None));
    assert_eq!(verdict, Verdict::Allowed, "{response}");
    assert_eq!(response["allowed"], true);
    assert!(response.get("warnings").is_none_or(Value::is_null));
}

#[tokio::test]
async fn warnings_go_back_as_admission_warnings() {
    let f = Fixture::new();
    let mut empty = f.sealed(&f.allowed, "db", &[("password", PLAINTEXT)]).await;
    empty["spec"]["encryptedData"] = json!({});
    let expected = f.validate(&empty).await;
    assert!(
        expected
            .iter()
            .any(|(s, c, ..)| s == "warning" && c == "empty"),
        "{expected:?}"
    );
    let (response, verdict) = decide(&f, request("CREATE", Some(&empty), None, None));
    assert_eq!(verdict, Verdict::Warned, "{response}");
    assert_eq!(response["allowed"], true);
    let warnings = response["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("[empty] ")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn a_tenant_can_always_clean_up() {
    let f = Fixture::new();
    let foreign = f
        .sealed(&f.other, "db", &[("password", PLAINTEXT), ("user", "u")])
        .await;
    let good = f.sealed(&f.allowed, "db", &[("password", PLAINTEXT)]).await;

    // DELETE of a bad object, and a status write, are never refused.
    let (_, verdict) = decide(&f, request("DELETE", None, Some(&foreign), None));
    assert_eq!(verdict, Verdict::Allowed);
    let (_, verdict) = decide(
        &f,
        request("UPDATE", Some(&foreign), Some(&foreign), Some("status")),
    );
    assert_eq!(verdict, Verdict::Allowed);

    // An update that only removes items, or that leaves the object's problems as they were
    // (e.g. a label or finalizer change after a policy change), is allowed, with a warning.
    let mut fewer = foreign.clone();
    fewer["spec"]["encryptedData"]
        .as_object_mut()
        .unwrap()
        .remove("user");
    let (response, verdict) = decide(&f, request("UPDATE", Some(&fewer), Some(&foreign), None));
    assert_eq!(verdict, Verdict::Warned, "{response}");
    let mut labelled = foreign.clone();
    labelled["metadata"]["labels"] = json!({"team": "a"});
    labelled["metadata"]["finalizers"] = json!([]);
    let (response, verdict) = decide(&f, request("UPDATE", Some(&labelled), Some(&foreign), None));
    assert_eq!(verdict, Verdict::Warned, "{response}");
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("(there before this update)"),
        "{response}"
    );

    // An update that brings a new problem to a good object is refused.
    let mut worse = good.clone();
    worse["spec"]["encryptedData"]["token"] = foreign["spec"]["encryptedData"]["password"].clone();
    let (response, verdict) = decide(&f, request("UPDATE", Some(&worse), Some(&good), None));
    assert_eq!(verdict, Verdict::Denied, "{response}");
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("[key_not_allowed] token: "),
        "{response}"
    );
}

#[tokio::test]
async fn service_account_rules_are_checked_at_apply_time() {
    use kmseal::identity::{IdentityRule, IdentitySettings, Requirement};
    use kmseal::policy::NamespacePattern;
    let mut f = Fixture::new();
    let good = f.sealed(&f.allowed, "db", &[("password", PLAINTEXT)]).await;
    let mut named = good.clone();
    named["spec"]["serviceAccountName"] = json!("app");
    let denied = |f: &Fixture, object: &Value, code: &str| {
        let (response, verdict) = decide(f, request("CREATE", Some(object), None, None));
        assert_eq!(verdict, Verdict::Denied, "{response}");
        let message = response["status"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(&format!("[{code}]")), "{message}");
        message
    };

    // Per-tenant identity off: an object may not name a ServiceAccount (it would otherwise
    // be decrypted with the controller's role).
    let message = denied(&f, &named, "identity_not_allowed");
    assert!(message.contains("per-tenant identity is off"), "{message}");
    assert_eq!(
        decide(&f, request("CREATE", Some(&good), None, None)).1,
        Verdict::Allowed
    );

    // On, with prod locked to ServiceAccounts' roles.
    f.policy.identity = IdentitySettings {
        enabled: true,
        default_service_account: None,
        required_by_default: false,
        rules: vec![IdentityRule {
            namespaces: vec![NamespacePattern::parse("prod").unwrap()],
            service_account: None,
            requirement: Requirement::Required,
        }],
    };
    let message = denied(&f, &good, "identity_not_allowed");
    assert!(message.contains("spec.serviceAccountName"), "{message}");
    assert_eq!(
        decide(&f, request("CREATE", Some(&named), None, None)).1,
        Verdict::Allowed
    );
    let mut hostile = good.clone();
    hostile["spec"]["serviceAccountName"] = json!("../kube-system/default");
    denied(&f, &hostile, "invalid_input");
    // kmseal validate says the same of both, given the policy file.
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        policy.path(),
        format!(
            "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n- key: {}\n  namespaces: [\"*\"]\nidentities:\n- namespaces: [prod]\n  identity: required\n",
            f.allowed
        ),
    )
    .unwrap();
    for (object, code) in [(&good, "identity_not_allowed"), (&hostile, "invalid_input")] {
        let input = serde_json::to_string(object).unwrap();
        let out = run(
            &f.kms,
            &[
                "validate",
                "--key-policy",
                policy.path().to_str().unwrap(),
                "-o",
                "json",
                "-",
            ],
            &input,
        )
        .await;
        assert_eq!(out.code, 3, "errors found: {}", out.stdout);
        assert!(out.stdout.contains(code), "{}", out.stdout);
    }
}
