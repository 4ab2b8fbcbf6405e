//! `kmseal validate`: offline checks of manifests, for CI and pre-commit hooks. Sealed files
//! come from `kmseal seal` with the in-memory KMS; validate itself never calls KMS (the tests
//! that go through the real binary give it no credentials and no endpoint).

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Outcome, run, temp_file};
use kmseal::cli::{EXIT_ERROR, EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED};
use kmseal::kms::MemoryKms;
use serde_json::{Value, json};

const PLAINTEXT: &str = "hunter2-plaintext";

fn secret(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\nstringData:\n  password: {PLAINTEXT}\n  user: admin\n"
    )
}

async fn sealed(kms: &MemoryKms, key: &str, namespace: &str, name: &str) -> String {
    let out = run(kms, &["seal", "--key", key], &secret(namespace, name)).await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    out.stdout
}

/// The manifest as JSON, changed by `f`, written back as JSON (which is YAML too).
fn mutate(manifest: &str, f: impl FnOnce(&mut Value)) -> String {
    let mut value: Value = serde_saphyr::from_str(manifest).unwrap();
    f(&mut value);
    serde_json::to_string_pretty(&value).unwrap()
}

async fn validate(kms: &MemoryKms, args: &[&str], stdin: &str) -> Outcome {
    let mut argv = vec!["validate"];
    argv.extend_from_slice(args);
    let out = run(kms, &argv, stdin).await;
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(PLAINTEXT), "plaintext in the output: {text}");
    }
    out
}

/// The `-o json` report of `stdin`, and the exit code.
async fn json_report(kms: &MemoryKms, args: &[&str], stdin: &str) -> (i32, Value) {
    let mut argv = vec!["-o", "json"];
    argv.extend_from_slice(args);
    let out = validate(kms, &argv, stdin).await;
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", out.stdout, out.stderr));
    (out.code, report)
}

/// The codes of the findings of a report, with their severity.
fn codes(report: &Value) -> Vec<(String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(severity: &str, code: &str) -> (String, String) {
    (severity.to_owned(), code.to_owned())
}

#[tokio::test]
async fn a_sealed_file_is_valid_and_needs_no_kms() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let manifest = sealed(&kms, &key, "prod", "db").await;

    let out = validate(&kms, &["-"], &manifest).await;
    assert_eq!(out.code, EXIT_OK, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "1 EncryptedSecret(s) in 1 file(s): 0 error(s), 0 warning(s)"
    );

    let (code, report) = json_report(&kms, &["-"], &manifest).await;
    assert_eq!(code, EXIT_OK);
    assert_eq!(report["encryptedSecrets"], 1);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["findings"], json!([]));

    // The real binary, with no credentials, region or endpoint: nothing to call.
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "db.yaml", manifest.as_bytes());
    let output = common::kmseal(false)
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{output:?}");
}

#[tokio::test]
async fn a_directory_is_walked_and_plain_secrets_are_refused() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("apps/db")).unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    let good = sealed(&kms, &key, "prod", "db").await;
    temp_file(&dir, "apps/db/sealed.yaml", good.as_bytes());
    temp_file(&dir, "apps/db/plain.yml", secret("prod", "leak").as_bytes());
    // Other objects and other YAML are not its business; hidden directories and other
    // extensions are not read at all.
    temp_file(
        &dir,
        "apps/deploy.yaml",
        b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n---\n",
    );
    temp_file(&dir, "ci.yaml", b"on: [push]\njobs: {}\n");
    temp_file(&dir, ".git/config.yaml", b": not yaml: [");
    temp_file(&dir, "notes.txt", b": not yaml: [");
    // A Secret without data (filled by something else) is fine.
    temp_file(
        &dir,
        "apps/empty-secret.json",
        br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"},"type":"kubernetes.io/service-account-token"}"#,
    );
    let root = dir.path().to_str().unwrap();

    let (code, report) = json_report(&kms, &[root], "").await;
    assert_eq!(code, EXIT_VERIFY_FAILED, "{report:#}");
    assert_eq!(report["files"], 5, "{report:#}");
    assert_eq!(report["encryptedSecrets"], 1);
    assert_eq!(codes(&report), [pair("error", "plain_secret")]);
    let finding = &report["findings"][0];
    assert!(
        finding["file"]
            .as_str()
            .unwrap()
            .ends_with("apps/db/plain.yml")
    );
    assert_eq!(finding["document"], 1);
    assert_eq!(finding["name"], "leak");
    assert!(
        finding["message"].as_str().unwrap().contains("2 value(s)"),
        "{finding}"
    );

    // Allowed, it is only a warning.
    let (code, report) = json_report(&kms, &["--allow-plain-secrets", "-f", root], "").await;
    assert_eq!(code, EXIT_OK);
    assert_eq!(codes(&report), [pair("warning", "plain_secret")]);

    let text = validate(&kms, &[root], "").await;
    assert!(
        text.stdout
            .contains("plain.yml: document 1: Secret prod/leak: error [plain_secret]: "),
        "{}",
        text.stdout
    );
}

#[tokio::test]
async fn each_kind_of_bad_encrypted_secret_is_named() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let good = sealed(&kms, &key, "prod", "db").await;
    let value_of = |item: &str| -> String {
        let v: Value = serde_saphyr::from_str(&good).unwrap();
        v["spec"]["encryptedData"][item]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let envelope = BASE64.decode(value_of("password")).unwrap();
    let mut wrong_version = envelope.clone();
    wrong_version[6] = 9;
    let plain_blob = BASE64.encode([7u8; 150]);

    type Change = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "a misspelt field",
            Box::new(|v| v["spec"]["encryptedDate"] = json!({})),
            "schema",
        ),
        (
            "a rotation policy that does not exist",
            Box::new(|v| v["spec"]["rotation"] = json!({"policy": "Sometimes"})),
            "schema",
        ),
        (
            "values at the top level",
            Box::new(|v| v["data"] = json!({"password": "eA=="})),
            "schema",
        ),
        (
            "encryptedData as a list",
            Box::new(|v| v["spec"]["encryptedData"] = json!(["a"])),
            "schema",
        ),
        (
            "no name",
            Box::new(|v| {
                v["metadata"].as_object_mut().unwrap().remove("name");
            }),
            "schema",
        ),
        (
            "a name Kubernetes refuses",
            Box::new(|v| v["metadata"]["name"] = json!("DB_Secret")),
            "schema",
        ),
        (
            "another API version",
            Box::new(|v| v["apiVersion"] = json!("kmseal.dev/v9")),
            "schema",
        ),
        (
            "257 items",
            Box::new(|v| {
                let items: serde_json::Map<String, Value> =
                    (0..257).map(|i| (format!("k{i}"), json!("eA=="))).collect();
                v["spec"]["encryptedData"] = Value::Object(items);
            }),
            "schema",
        ),
        (
            "an item key a Secret cannot have",
            Box::new(|v| v["spec"]["encryptedData"]["bad/key"] = json!("eA==")),
            "invalid_input",
        ),
        (
            "plaintext pasted in place of a sealed value",
            Box::new(|v| v["spec"]["encryptedData"]["password"] = json!(PLAINTEXT)),
            "malformed",
        ),
        (
            "an unknown envelope version",
            Box::new(move |v| {
                v["spec"]["encryptedData"]["password"] = json!(BASE64.encode(&wrong_version))
            }),
            "unsupported_version",
        ),
        (
            "a truncated envelope",
            Box::new(move |v| {
                v["spec"]["encryptedData"]["password"] = json!(BASE64.encode(&envelope[..40]))
            }),
            "malformed",
        ),
        (
            "a service-account-token Secret",
            Box::new(|v| {
                v["spec"]["template"] = json!({"type": "kubernetes.io/service-account-token"})
            }),
            "type_not_allowed",
        ),
        (
            "a tls Secret without tls.crt and tls.key",
            Box::new(|v| v["spec"]["template"] = json!({"type": "kubernetes.io/tls"})),
            "invalid_input",
        ),
        (
            "an unknown scope annotation",
            Box::new(|v| v["metadata"]["annotations"] = json!({"kmseal.dev/scope": "galaxy"})),
            "invalid_input",
        ),
        (
            "a plain KMS item without spec.keyId",
            Box::new(move |v| {
                v["spec"]["encryptedData"]["token"] = json!(plain_blob);
                v["spec"].as_object_mut().unwrap().remove("keyId");
            }),
            "key_not_allowed",
        ),
    ];
    for (what, change, code) in cases {
        let manifest = mutate(&good, change);
        let (exit, report) = json_report(&kms, &["-"], &manifest).await;
        assert_eq!(exit, EXIT_VERIFY_FAILED, "{what}: {report:#}");
        assert!(
            codes(&report).contains(&pair("error", code)),
            "{what}: expected {code}: {report:#}"
        );
    }
}

#[tokio::test]
async fn namespaces_sizes_and_duplicates() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let good = sealed(&kms, &key, "prod", "db").await;

    // -n against the manifest's namespace: refused, as kubectl apply -n does.
    let (code, report) = json_report(&kms, &["-n", "dev", "-"], &good).await;
    assert_eq!(code, EXIT_VERIFY_FAILED);
    assert_eq!(codes(&report), [pair("error", "namespace_mismatch")]);

    // No namespace in the file (kustomize sets it): a warning; -n fills it in.
    let unbound = mutate(&good, |v| {
        v["metadata"].as_object_mut().unwrap().remove("namespace");
    });
    let (code, report) = json_report(&kms, &["-"], &unbound).await;
    assert_eq!(code, EXIT_OK);
    assert_eq!(codes(&report), [pair("warning", "namespace_unknown")]);
    let (code, report) = json_report(&kms, &["-n", "prod", "-"], &unbound).await;
    assert_eq!(code, EXIT_OK);
    assert_eq!(codes(&report), []);

    // Two values of 600 kB each: each fine, together over Kubernetes' 1 MiB.
    let big = "x".repeat(600_000);
    let mut items = serde_json::Map::new();
    for item in ["a", "b"] {
        let out = run(
            &kms,
            &[
                "seal",
                "--key",
                &key,
                "--name",
                "big",
                "-n",
                "prod",
                "--from-literal",
                &format!("{item}={big}"),
                "-o",
                "json",
            ],
            "",
        )
        .await;
        assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        items.insert(item.into(), v["spec"]["encryptedData"][item].clone());
    }
    let too_big = mutate(&good, |v| {
        v["metadata"]["name"] = json!("big");
        v["spec"]["encryptedData"] = Value::Object(items);
    });
    let (code, report) = json_report(&kms, &["-"], &too_big).await;
    assert_eq!(code, EXIT_VERIFY_FAILED);
    assert_eq!(codes(&report), [pair("error", "too_large")]);
    assert!(
        report["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("1200000 bytes"),
        "{report:#}"
    );

    // The same object twice, across files: applying both keeps only the last.
    let dir = tempfile::tempdir().unwrap();
    let first = temp_file(&dir, "a.yaml", good.as_bytes());
    let second = temp_file(&dir, "b.yaml", format!("---\n{good}").as_bytes());
    let (code, report) = json_report(
        &kms,
        &[first.to_str().unwrap(), second.to_str().unwrap()],
        "",
    )
    .await;
    assert_eq!(code, EXIT_VERIFY_FAILED);
    assert_eq!(codes(&report), [pair("error", "duplicate")]);
    assert!(
        report["findings"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("b.yaml")
    );
    assert!(
        report["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("a.yaml, document 1"),
        "{report:#}"
    );

    // Empty: a warning.
    let empty = mutate(&good, |v| v["spec"]["encryptedData"] = json!({}));
    let (code, report) = json_report(&kms, &["-"], &empty).await;
    assert_eq!(code, EXIT_OK);
    assert_eq!(codes(&report), [pair("warning", "empty")]);
}

#[tokio::test]
async fn the_key_policy_is_checked_as_the_controller_checks_it() {
    let kms = MemoryKms::new("eu-west-1");
    let (payments, shared) = (kms.create_key(), kms.create_key());
    let dir = tempfile::tempdir().unwrap();
    let policy = temp_file(
        &dir,
        "policy.yaml",
        format!(
            "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n- key: {payments}\n  namespaces: [payments]\n- key: arn:aws:kms:eu-west-1:111122223333:alias/shared\n  namespaces: ['shared-*']\n"
        )
        .as_bytes(),
    );
    let policy = policy.to_str().unwrap();

    let own = sealed(&kms, &payments, "payments", "db").await;
    let (code, report) = json_report(&kms, &["--key-policy", policy, "-"], &own).await;
    assert_eq!(code, EXIT_OK, "{report:#}");
    assert_eq!(codes(&report), []);

    // Another namespace's key: refused, before any KMS call, as the controller would.
    let stolen = sealed(&kms, &payments, "web", "db").await;
    let (code, report) = json_report(&kms, &["--key-policy", policy, "-"], &stolen).await;
    assert_eq!(code, EXIT_VERIFY_FAILED);
    assert_eq!(
        codes(&report),
        [
            pair("error", "key_not_allowed"),
            pair("error", "key_not_allowed")
        ]
    );
    assert!(
        report["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("may not be used in namespace web")
    );

    // A key that only an alias of the policy may allow: cannot be told offline.
    let other = sealed(&kms, &shared, "shared-tools", "db").await;
    let (code, report) = json_report(&kms, &["--key-policy", policy, "-"], &other).await;
    assert_eq!(code, EXIT_OK, "{report:#}");
    assert_eq!(
        codes(&report),
        [
            pair("warning", "alias_unresolved"),
            pair("warning", "alias_unresolved")
        ]
    );

    // --allowed-keys, as the controller's flag.
    let (code, _) = json_report(&kms, &["--allowed-keys", &payments, "-"], &other).await;
    assert_eq!(code, EXIT_VERIFY_FAILED);
    let (code, _) = json_report(&kms, &["--allowed-keys", &shared, "-"], &other).await;
    assert_eq!(code, EXIT_OK);

    // The policy file itself, kept beside the manifests, is checked rather than refused.
    let (code, report) = json_report(&kms, &[policy], "").await;
    assert_eq!(code, EXIT_OK, "{report:#}");
    let broken = temp_file(
        &dir,
        "broken-policy.yaml",
        b"apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n- key: alias/bare\n  namespaces: [x]\n",
    );
    let (code, report) = json_report(&kms, &[broken.to_str().unwrap()], "").await;
    assert_eq!(code, EXIT_VERIFY_FAILED);
    assert_eq!(codes(&report), [pair("error", "invalid_policy")]);

    // A broken policy file is the command's failure, not the manifest's.
    let bad = temp_file(&dir, "bad.yaml", b"kind: Nope\n");
    let out = validate(&kms, &["--key-policy", bad.to_str().unwrap(), "-"], &own).await;
    assert_eq!(out.code, EXIT_ERROR, "{}", out.stderr);
    assert!(out.stderr.contains("key policy"), "{}", out.stderr);
}

#[tokio::test]
async fn hostile_and_unreadable_input() {
    let kms = MemoryKms::new("eu-west-1");
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
    let syntax =
        format!("apiVersion: v1\nkind: Secret\nstringData:\n  password: {PLAINTEXT}\n  : : [\n");
    let deep_list = format!(
        "{}{}",
        "{kind: List, items: [".repeat(5000),
        "]}".repeat(5000)
    );
    for (what, input) in [
        ("nesting", nested.as_str()),
        ("alias expansion", laughs),
        ("a syntax error next to a secret", syntax.as_str()),
        ("Lists in Lists", deep_list.as_str()),
    ] {
        let (code, report) = json_report(&kms, &["-"], input).await;
        assert!(
            code == EXIT_VERIFY_FAILED || code == EXIT_OK,
            "{what}: {code} {report:#}"
        );
        if what == "a syntax error next to a secret" {
            assert_eq!(codes(&report), [pair("error", "syntax")], "{report:#}");
            let message = report["findings"][0]["message"].as_str().unwrap();
            assert!(message.contains("line 5"), "{message}");
        }
    }

    // Not text, and too large: named, with the real size.
    let dir = tempfile::tempdir().unwrap();
    let binary = temp_file(&dir, "blob.yaml", &[0xff, 0xfe, 0x00, 0x80]);
    let huge = temp_file(&dir, "huge.yaml", &vec![b'#'; 17 * 1024 * 1024]);
    let (code, report) = json_report(
        &kms,
        &[binary.to_str().unwrap(), huge.to_str().unwrap()],
        "",
    )
    .await;
    assert_eq!(code, EXIT_VERIFY_FAILED);
    assert_eq!(
        codes(&report),
        [
            pair("error", "not_a_manifest"),
            pair("error", "not_a_manifest")
        ]
    );
    assert!(
        report["findings"][1]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{} bytes", 17 * 1024 * 1024)),
        "{report:#}"
    );

    // A path that is not there: the check is incomplete, so exit 1 (not 3).
    let missing = dir.path().join("missing.yaml");
    let (code, report) = json_report(&kms, &[missing.to_str().unwrap()], "").await;
    assert_eq!(code, EXIT_ERROR);
    assert_eq!(codes(&report), [pair("error", "unreadable")]);

    // Nothing to check: a usage error.
    let out = validate(&kms, &[], "").await;
    assert_eq!(out.code, EXIT_USAGE);
    assert!(
        out.stderr.contains("kmseal validate deploy/"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_symlink_loop_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("a/loop")).unwrap();
    temp_file(&dir, "a/x.yaml", b"kind: ConfigMap\napiVersion: v1\n");
    let output = common::kmseal(false)
        .args(["validate", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("in 1 file(s)"),
        "{output:?}"
    );
}

/// The hook definitions users point pre-commit at, run by pre-commit itself.
#[tokio::test]
async fn the_pre_commit_hook_refuses_a_plain_secret() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let hooks: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo.join(".pre-commit-hooks.yaml")).unwrap(),
    )
    .unwrap();
    // The cargo-built hook and the PATH one differ only in how kmseal is installed.
    let (built, system) = (&hooks[0], &hooks[1]);
    assert_eq!(built["language"], "rust");
    assert_eq!(system["language"], "system");
    for field in ["entry", "types", "exclude"] {
        assert_eq!(built[field], system[field], "{field}");
    }

    let Some(pre_commit) = common::pre_commit() else {
        return;
    };
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let work = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(work.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    temp_file(
        &work,
        "sealed.yaml",
        sealed(&kms, &key, "prod", "db").await.as_bytes(),
    );
    temp_file(&work, "plain.yaml", secret("prod", "leak").as_bytes());
    std::fs::create_dir(work.path().join("templates")).unwrap();
    temp_file(&work, "templates/chart.yaml", b"{{ .Values.x }}: [\n");
    git(&["add", "."]);

    let kmseal_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kmseal"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        kmseal_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cache = tempfile::tempdir().unwrap();
    let run_hook = |files: &[&str]| {
        let mut args = vec![
            "try-repo",
            repo.to_str().unwrap(),
            "kmseal-validate-system",
            "--color",
            "never",
            "--files",
        ];
        args.extend_from_slice(files);
        std::process::Command::new(&pre_commit)
            .args(&args)
            .current_dir(work.path())
            .env("PATH", &path)
            .env("PRE_COMMIT_HOME", cache.path())
            .output()
            .unwrap()
    };
    let passed = run_hook(&["sealed.yaml", "templates/chart.yaml"]);
    assert!(passed.status.success(), "{passed:?}");
    let refused = run_hook(&["sealed.yaml", "plain.yaml"]);
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        stdout.contains("plain.yaml: document 1: Secret prod/leak: error [plain_secret]"),
        "{stdout}"
    );
    assert!(!stdout.contains(PLAINTEXT));
}

/// A value in the old envelope format still opens, so it is only a warning.
#[tokio::test]
async fn envelope_v1_items_are_a_warning() {
    let kms = MemoryKms::new("eu-west-1");
    let vectors: Value = serde_json::from_str(include_str!("vectors/envelope_v1.json")).unwrap();
    let vector = &vectors["vectors"][0];
    let manifest = json!({
        "apiVersion": "kmseal.dev/v1alpha1",
        "kind": "EncryptedSecret",
        "metadata": {"name": vector["name"], "namespace": vector["namespace"]},
        "spec": {"encryptedData": {vector["item"].as_str().unwrap(): vector["sealed_base64"]}},
    })
    .to_string();
    let (code, report) = json_report(&kms, &["-"], &manifest).await;
    assert_eq!(code, EXIT_OK, "{report:#}");
    assert_eq!(codes(&report), [pair("warning", "old_format")]);
}

/// Every EncryptedSecret the CLI writes validates against the CRD's openAPIV3Schema, checked by
/// an independent validator (check-jsonschema), not only by `kmseal validate`'s own walker.
#[tokio::test]
async fn the_clis_manifests_validate_against_the_crd_schema_independently() {
    let Some(checker) = common::tool("check-jsonschema", "KMSEAL_TEST_CHECK_JSONSCHEMA") else {
        return;
    };
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    let crd: Value = serde_saphyr::from_str(&kmseal::cli::crd_yaml().unwrap()).unwrap();
    let schema = temp_file(
        &dir,
        "schema.json",
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            .to_string()
            .as_bytes(),
    );

    let mut manifests: Vec<Value> = Vec::new();
    let yaml = sealed(&kms, &key, "prod", "db").await;
    manifests.push(serde_saphyr::from_str(&yaml).unwrap());
    let json = run(
        &kms,
        &["seal", "--key", &key, "-o", "json"],
        &secret("dev", "api"),
    )
    .await;
    manifests.push(serde_json::from_str(&json.stdout).unwrap());
    let literals = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--name",
            "tls",
            "-n",
            "web",
            "--scope",
            "namespace",
            "--type",
            "kubernetes.io/tls",
            "--from-literal",
            "tls.crt=x",
            "--from-literal",
            "tls.key=y",
        ],
        "",
    )
    .await;
    manifests.push(serde_saphyr::from_str(&literals.stdout).unwrap());
    let file = temp_file(&dir, "db.yaml", yaml.as_bytes());
    let merged = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--from-literal",
            "extra=z",
            "--merge-into",
            file.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(merged.code, EXIT_OK, "{}", merged.stderr);
    manifests.push(serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap());

    let check = |name: &str, manifest: &Value| {
        let instance = temp_file(&dir, name, manifest.to_string().as_bytes());
        std::process::Command::new(&checker)
            .arg("--schemafile")
            .arg(&schema)
            .arg(&instance)
            .output()
            .unwrap()
    };
    for (i, manifest) in manifests.iter().enumerate() {
        assert_eq!(manifest["kind"], "EncryptedSecret", "{manifest}");
        let out = check(&format!("instance-{i}.json"), manifest);
        assert!(out.status.success(), "{manifest}: {out:?}");
    }
    // And the checker does refuse what the schema forbids.
    let mut bad = manifests[0].clone();
    bad["spec"]["encryptedData"]["x"] = json!(5);
    assert!(!check("bad.json", &bad).status.success());
}

/// A check pointed at the wrong folder must fail: a path with no manifest in it is an error
/// (exit 1, "no manifests found under PATH"), unless `--allow-empty` says that is expected.
#[test]
fn a_path_without_manifests_fails_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    temp_file(&dir, "README.md", b"# not a manifest\n");
    temp_file(&dir, ".hidden.yaml", b"kind: ConfigMap\napiVersion: v1\n");
    let path = dir.path().to_str().unwrap();
    let output = common::kmseal(false)
        .args(["validate", path])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(EXIT_ERROR), "{output:?}");
    assert!(
        stdout.contains(&format!("no manifests found under {path}"))
            && stdout.contains("--allow-empty"),
        "{stdout}"
    );
    let output = common::kmseal(false)
        .args(["validate", "-o", "json", path])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["findings"][0]["code"], "no_manifests", "{report:#}");
    assert_eq!(report["errors"], 1);
    // One empty path among good ones still fails; allowed, it passes.
    let good = tempfile::tempdir().unwrap();
    temp_file(&good, "cm.yaml", b"kind: ConfigMap\napiVersion: v1\n");
    let good_path = good.path().to_str().unwrap();
    let output = common::kmseal(false)
        .args(["validate", good_path, path])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_ERROR), "{output:?}");
    let output = common::kmseal(false)
        .args(["validate", "--allow-empty", good_path, path])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("in 1 file(s): 0 error(s)"),
        "{output:?}"
    );
}

/// With a key policy, a `spec.keyId` the policy does not name (an alias where the policy lists
/// the key's ARN) is a warning: the values are fine, but a rotation would not follow it.
#[tokio::test]
async fn a_key_id_the_policy_does_not_name_is_a_warning() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let good = sealed(&kms, &key, "prod", "db").await;
    let aliased = mutate(&good, |v| v["spec"]["keyId"] = json!("alias/rot"));
    let (code, report) = json_report(&kms, &["--allowed-keys", &key, "-"], &aliased).await;
    assert_eq!(code, EXIT_OK, "{report:#}");
    assert_eq!(
        codes(&report),
        [pair("warning", "key_id_not_allowed")],
        "{report:#}"
    );
    let message = report["findings"][0]["message"].as_str().unwrap();
    assert!(message.contains("spec.keyId alias/rot"), "{message}");
    // Named as the policy names it, or with no policy at all: nothing to say.
    let (_, report) = json_report(&kms, &["--allowed-keys", &key, "-"], &good).await;
    assert!(codes(&report).is_empty(), "{report:#}");
    let (_, report) = json_report(&kms, &["-"], &aliased).await;
    assert!(codes(&report).is_empty(), "{report:#}");
}
