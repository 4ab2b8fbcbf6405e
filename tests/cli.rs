//! The `kmseal` command line: in-process through `cli::execute` with the in-memory KMS, and a
//! few runs of the real binary for what needs no KMS.

mod common;

use common::{run, run_on};

use assert_cmd::Command;
use clap::CommandFactory;
use kmseal::cli::{
    self, Cli, EXIT_ERROR, EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED, EXIT_VERIFY_UNCHECKED,
};
use kmseal::kms::{Kms, MemoryKms};
use predicates::prelude::*;

const SECRET: &str = "\
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: prod
  labels:
    app: api
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{\"big\":\"json\"}'
type: kubernetes.io/basic-auth
data:
  username: YWRtaW4=
stringData:
  password: hunter2-plaintext
";

#[test]
fn command_line_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[tokio::test]
async fn seal_verify_unseal_round_trip() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let sealed = run(&kms, &["seal", "--key", &key], SECRET).await;
    assert_eq!(sealed.code, EXIT_OK, "{}", sealed.stderr);
    assert!(
        !sealed.stdout.contains("hunter2"),
        "plaintext leaked into the manifest"
    );
    assert!(sealed.stdout.contains("kind: EncryptedSecret"));
    assert!(sealed.stdout.contains("type: kubernetes.io/basic-auth"));
    assert!(
        !sealed.stdout.contains("last-applied"),
        "kubectl bookkeeping is not copied"
    );

    let verified = run(&kms, &["verify"], &sealed.stdout).await;
    assert_eq!(
        verified.code, EXIT_OK,
        "{}{}",
        verified.stdout, verified.stderr
    );
    assert!(
        verified.stdout.contains("2 ok, 0 failed"),
        "{}",
        verified.stdout
    );
    assert!(!verified.stdout.contains("hunter2"));

    let unsealed = run(&kms, &["unseal"], &sealed.stdout).await;
    assert_eq!(unsealed.code, EXIT_OK, "{}", unsealed.stderr);
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_saphyr::from_str(&unsealed.stdout).unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data["password"].0, b"hunter2-plaintext");
    assert_eq!(data["username"].0, b"admin");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    assert_eq!(secret.metadata.labels.unwrap()["app"], "api");
    assert_eq!(secret.metadata.namespace.as_deref(), Some("prod"));
}

#[tokio::test]
async fn json_output_and_multiple_documents() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let two = format!("{SECRET}---\n{}", SECRET.replace("name: db", "name: db2"));
    let sealed = run(&kms, &["seal", "--key", &key, "-o", "json"], &two).await;
    assert_eq!(sealed.code, EXIT_OK, "{}", sealed.stderr);
    let list: serde_json::Value = serde_json::from_str(&sealed.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let verified = run(&kms, &["verify"], &sealed.stdout).await;
    assert!(
        verified.stdout.contains("4 ok, 0 failed"),
        "{}",
        verified.stdout
    );
}

#[tokio::test]
async fn seal_from_literals_and_files() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    std::fs::write(&cert, b"CERT").unwrap();
    let from_file = format!("tls.key={}", cert.display());
    let sealed = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--name",
            "web",
            "-n",
            "prod",
            "--type",
            "kubernetes.io/tls",
            "--from-literal",
            "token=a=b=c",
            "--from-file",
            cert.to_str().unwrap(),
            "--from-file",
            &from_file,
        ],
        "",
    )
    .await;
    assert_eq!(sealed.code, EXIT_OK, "{}", sealed.stderr);
    let unsealed = run(&kms, &["unseal", "-o", "json"], &sealed.stdout).await;
    let secret: serde_json::Value = serde_json::from_str(&unsealed.stdout).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["data"]["token"], "YT1iPWM="); // "a=b=c"
    assert_eq!(secret["data"]["tls.crt"], "Q0VSVA==");
    assert_eq!(secret["data"]["tls.key"], "Q0VSVA==");
}

#[tokio::test]
async fn merge_into_updates_the_file_in_place() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let sealed = run(&kms, &["seal", "--key", &key], SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let file = common::temp_file(&dir, "db.yaml", sealed.stdout.as_bytes());
    let merged = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--name",
            "db",
            "-n",
            "prod",
            "--from-literal",
            "password=rotated",
            "--merge-into",
            file.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(merged.code, EXIT_OK, "{}", merged.stderr);
    assert!(merged.stdout.is_empty());
    let after = std::fs::read_to_string(&file).unwrap();
    let username_line = |text: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with("username:"))
            .map(str::to_owned)
    };
    assert_eq!(
        username_line(&after),
        username_line(&sealed.stdout),
        "untouched item is byte-identical"
    );
    let unsealed = run(&kms, &["unseal", "-o", "json"], &after).await;
    let secret: serde_json::Value = serde_json::from_str(&unsealed.stdout).unwrap();
    assert_eq!(secret["data"]["password"], "cm90YXRlZA=="); // "rotated"
    assert_eq!(secret["data"]["username"], "YWRtaW4=");
}

#[tokio::test]
async fn verify_reports_each_bad_item_and_unseal_prints_nothing() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let sealed = run(&kms, &["seal", "--key", &key], SECRET).await;
    // Move the object to another namespace: every item must fail, and say why.
    let moved = sealed.stdout.replace("namespace: prod", "namespace: dev");
    let verified = run(&kms, &["verify"], &moved).await;
    assert_eq!(verified.code, EXIT_VERIFY_FAILED);
    assert!(
        verified.stdout.contains("0 ok, 2 failed"),
        "{}",
        verified.stdout
    );
    assert!(
        verified.stdout.contains("[invalid_ciphertext]"),
        "{}",
        verified.stdout
    );
    assert!(verified.stdout.contains("re-seal"), "{}", verified.stdout);
    let unsealed = run(&kms, &["unseal"], &moved).await;
    assert_eq!(unsealed.code, EXIT_ERROR);
    assert!(unsealed.stdout.is_empty(), "no partial Secret is printed");
    assert!(
        unsealed.stderr.contains("nothing printed"),
        "{}",
        unsealed.stderr
    );
}

#[tokio::test]
async fn hostile_and_wrong_input_gets_clear_errors() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a, namespace: b}\nstringData: {password: \"hunter2\n",
            "not valid YAML",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            "expected a Secret",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {namespace: b}\n",
            "no metadata.name",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a, namespace: b}\ndata: {k: '%%%'}\n",
            "not valid base64",
        ),
        ("", "holds no Secret"),
        (
            "a: &a [*a, *a]\nb: &b [*a, *a]\nc: [*b, *b, *b, *b]\n",
            "line",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\nstringData: {k: v}\n",
            "--namespace",
        ),
    ];
    for (input, expected) in cases {
        let out = run(&kms, &["seal", "--key", &key], input).await;
        assert_eq!(out.code, EXIT_ERROR, "input {input:?} was accepted");
        assert!(
            out.stderr.contains(expected),
            "input {input:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let out = run(&kms, &["seal", "--key", &key], &deep).await;
    assert_eq!(out.code, EXIT_ERROR);
    let out = run(
        &kms,
        &["verify"],
        "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n",
    )
    .await;
    assert!(
        out.stderr.contains("expected an EncryptedSecret"),
        "{}",
        out.stderr
    );
    assert_eq!(
        kms.calls
            .generate_data_key
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn pubkey_then_offline_seal() {
    let kms = MemoryKms::new("eu-west-1");
    let rsa_key = kms.add_rsa_key(rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap());
    let pem = run(&kms, &["pubkey", "--key", &rsa_key], "").await;
    assert_eq!(pem.code, EXIT_OK, "{}", pem.stderr);
    assert!(pem.stdout.contains(&format!("# key-arn: {rsa_key}")));
    assert!(pem.stdout.contains("-----BEGIN PUBLIC KEY-----"));
    let dir = tempfile::tempdir().unwrap();
    let pem_path = common::temp_file(&dir, "key.pem", pem.stdout.as_bytes());
    let sealed = run(
        &kms,
        &["seal", "--public-key", pem_path.to_str().unwrap()],
        SECRET,
    )
    .await;
    assert_eq!(sealed.code, EXIT_OK, "{}", sealed.stderr);
    assert_eq!(
        kms.calls
            .generate_data_key
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let unsealed = run(&kms, &["unseal", "-o", "json"], &sealed.stdout).await;
    assert_eq!(unsealed.code, EXIT_OK, "{}", unsealed.stderr);
    assert!(unsealed.stdout.contains("aHVudGVyMi1wbGFpbnRleHQ="));
    // A symmetric key has no public key, and the message says what to use instead.
    let sym = kms.create_key();
    let out = run(&kms, &["pubkey", "--key", &sym], "").await;
    assert_eq!(out.code, EXIT_ERROR);
    assert!(out.stderr.contains("RSA"), "{}", out.stderr);
    assert!(kms.public_key(&sym).await.is_err());
}

#[test]
fn public_key_files_are_checked() {
    let err = cli::parse_public_key("garbage", None).unwrap_err();
    assert!(err.message.contains("key-arn"), "{}", err.message);
    let err = cli::parse_public_key("# key-arn: arn:aws:kms:eu-west-1:1:key/x\n-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n", None).unwrap_err();
    assert!(err.message.contains("base64"), "{}", err.message);
    let err = cli::parse_public_key(
        "# key-arn: arn:aws:kms:eu-west-1:1:key/x\n-----BEGIN PUBLIC KEY-----\nAAAA\n",
        None,
    )
    .unwrap_err();
    assert!(err.message.contains("truncated"), "{}", err.message);
    let err = cli::parse_public_key(
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        Some("not-an-arn"),
    )
    .unwrap_err();
    assert!(err.message.contains("not a KMS key ARN"), "{}", err.message);
}

#[test]
fn rfc3339_formats_known_instants() {
    assert_eq!(kmseal::time::rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(kmseal::time::rfc3339(1_764_000_000), "2025-11-24T16:00:00Z");
    assert_eq!(kmseal::time::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
}

// The real binary, for what needs no KMS.

#[test]
fn binary_prints_the_crd() {
    Command::cargo_bin("kmseal")
        .unwrap()
        .arg("crd")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "name: encryptedsecrets.kmseal.dev",
        ));
}

#[test]
fn binary_usage_errors_exit_2_and_help_shows_examples() {
    Command::cargo_bin("kmseal")
        .unwrap()
        .args(["seal", "--scope", "wide"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown scope"));
    Command::cargo_bin("kmseal")
        .unwrap()
        .args(["--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit codes"))
        // Every command's codes are in the list, rewrap --check's too.
        .stdout(predicate::str::contains(
            "rewrap left stale values (with --check: found any)",
        ))
        .stdout(predicate::str::contains(
            "verify, rewrap or keys could not check",
        ));
}

#[test]
fn binary_seal_without_key_says_what_to_pass() {
    Command::cargo_bin("kmseal")
        .unwrap()
        .args(["seal", "--name", "a", "-n", "b", "--from-literal", "k=v"])
        .env_remove("KMSEAL_KEY")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pass --key"));
}

#[test]
fn binary_works_as_a_kubectl_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-kmseal");
    std::os::unix::fs::symlink(assert_cmd::cargo::cargo_bin("kmseal"), &plugin).unwrap();
    let out = std::process::Command::new(&plugin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Usage: kubectl kmseal"), "{help}");
}

/// kubectl completes `kubectl kmseal ...` by running `kubectl_complete-kmseal` with the words.
#[test]
fn binary_completes_arguments_for_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let completer = dir.path().join("kubectl_complete-kmseal");
    std::os::unix::fs::symlink(assert_cmd::cargo::cargo_bin("kmseal"), &completer).unwrap();
    let complete = |words: &[&str]| {
        let out = std::process::Command::new(&completer)
            .args(words)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let scopes = complete(&["seal", "--scope", ""]);
    assert_eq!(scopes, "strict\nnamespace\ncluster\n:4\n");
    let subcommands = complete(&["va"]);
    assert!(subcommands.starts_with("validate\t"), "{subcommands}");
    // A path: the shell completes file names.
    assert_eq!(complete(&["validate", ""]), ":0\n");
}

/// krew-release-bot's rendering of `.krew.yaml`: `{{ .TagName }}` and `addURIAndSha`.
fn render_krew_template(template: &str, tag: &str) -> String {
    let mut out = String::new();
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(call) = trimmed.strip_prefix("{{addURIAndSha \"") {
            let (url, rest) = call.split_once('"').unwrap();
            assert_eq!(rest, " .TagName }}", "{line}");
            let url = url.replace("{{ .TagName }}", tag);
            out.push_str(&format!(
                "{indent}uri: {url}\n{indent}sha256: {}\n",
                "ab".repeat(32)
            ));
        } else {
            out.push_str(&line.replace("{{ .TagName }}", tag));
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_krew_manifest_installs_the_kmseal_binary_on_every_platform() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let template = std::fs::read_to_string(root.join(".krew.yaml")).unwrap();
    let rendered = render_krew_template(&template, "v1.2.3");
    assert!(!rendered.contains("{{"), "{rendered}");
    let plugin: serde_json::Value = serde_saphyr::from_str(&rendered).unwrap();
    assert_eq!(
        plugin["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(plugin["kind"], "Plugin");
    // krew links `bin` as kubectl-<name>; the binary recognises that name (test above).
    assert_eq!(plugin["metadata"]["name"], "kmseal");
    let spec = &plugin["spec"];
    assert_eq!(spec["version"], "v1.2.3");
    for field in ["homepage", "shortDescription", "description"] {
        assert!(
            spec[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}"
        );
    }
    let mut seen = Vec::new();
    for platform in spec["platforms"].as_array().unwrap() {
        let labels = &platform["selector"]["matchLabels"];
        let (os, arch) = (
            labels["os"].as_str().unwrap(),
            labels["arch"].as_str().unwrap(),
        );
        seen.push(format!("{os}/{arch}"));
        let uri = platform["uri"].as_str().unwrap();
        assert_eq!(
            uri,
            format!(
                "https://github.com/kmseal/kmseal/releases/download/v1.2.3/kmseal-v1.2.3-{os}-{arch}.tar.gz"
            )
        );
        assert_eq!(platform["sha256"].as_str().unwrap().len(), 64);
        // The CLI binary, as Cargo.toml names it, and the license krew's index requires.
        assert_eq!(platform["bin"], "kmseal");
        let files: Vec<&str> = platform["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["from"].as_str().unwrap())
            .collect();
        assert_eq!(files, ["kmseal", "LICENSE"]);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["darwin/amd64", "darwin/arm64", "linux/amd64", "linux/arm64"]
    );
    assert!(assert_cmd::cargo::cargo_bin("kmseal").exists());
    let license = std::fs::read_to_string(root.join("LICENSE")).unwrap();
    assert!(license.contains("Apache License") && license.contains("Version 2.0"));
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(cargo.contains("license = \"Apache-2.0\""));
}

/// The scope comes from `--scope` (strict by default), never from the file's headers, which
/// nothing authenticates before KMS opens them; a file of another scope is refused unchanged.
#[tokio::test]
async fn merge_keeps_the_scope_of_the_file() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let sealed = run(
        &kms,
        &["seal", "--key", &key, "--scope", "namespace"],
        SECRET,
    )
    .await;
    assert_eq!(sealed.code, EXIT_OK, "{}", sealed.stderr);
    let dir = tempfile::tempdir().unwrap();
    let file = common::temp_file(&dir, "db.yaml", sealed.stdout.as_bytes());
    let merged = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--name",
            "db",
            "-n",
            "prod",
            "--from-literal",
            "added=1",
            "--merge-into",
            file.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(merged.code, EXIT_USAGE, "{}", merged.stderr);
    assert!(
        merged.stderr.contains("pass --scope namespace"),
        "{}",
        merged.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), sealed.stdout);
    let merged = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--scope",
            "namespace",
            "--from-literal",
            "added=1",
            "--merge-into",
            file.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(merged.code, EXIT_OK, "{}", merged.stderr);
    // Renamed, the whole object still opens: every item, old and new, is namespace-scoped.
    let renamed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("name: db", "name: renamed");
    let verified = run(&kms, &["verify"], &renamed).await;
    assert!(
        verified.stdout.contains("3 ok, 0 failed"),
        "{}",
        verified.stdout
    );
    assert_eq!(
        verified.stdout.matches("scope namespace").count(),
        3,
        "{}",
        verified.stdout
    );
}

#[tokio::test]
async fn a_bare_pem_needs_the_key_arn_from_the_command_line() {
    let kms = MemoryKms::new("eu-west-1");
    let rsa_key = kms.add_rsa_key(rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap());
    let pem = run(&kms, &["pubkey", "--key", &rsa_key], "").await.stdout;
    let bare: String = pem
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.pem");
    std::fs::write(&path, bare).unwrap();
    let without = run(
        &kms,
        &["seal", "--public-key", path.to_str().unwrap()],
        SECRET,
    )
    .await;
    assert_eq!(without.code, EXIT_ERROR);
    assert!(
        without.stderr.contains("pass --key ARN"),
        "{}",
        without.stderr
    );
    let with = run(
        &kms,
        &[
            "seal",
            "--public-key",
            path.to_str().unwrap(),
            "--key",
            &rsa_key,
        ],
        SECRET,
    )
    .await;
    assert_eq!(with.code, EXIT_OK, "{}", with.stderr);
    let unsealed = run(&kms, &["unseal"], &with.stdout).await;
    assert_eq!(unsealed.code, EXIT_OK, "{}", unsealed.stderr);
}

/// `-n` and `--name` fill in what a manifest leaves out, and a conflict with what it says is a
/// usage error before any KMS call: sealing binds the values to the namespace and name, so a
/// silent choice would bind them to the wrong one (`kubectl apply -n` refuses the same).
#[tokio::test]
async fn namespace_and_name_flags_never_silently_lose_to_the_manifest() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let generated = || {
        kms.calls
            .generate_data_key
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = generated();
    let other_namespace = run(&kms, &["seal", "--key", &key, "-n", "dev"], SECRET).await;
    assert_eq!(
        other_namespace.code, EXIT_USAGE,
        "{}",
        other_namespace.stderr
    );
    assert!(other_namespace.stdout.is_empty());
    assert!(
        other_namespace.stderr.contains("namespace prod") && other_namespace.stderr.contains("dev"),
        "{}",
        other_namespace.stderr
    );
    let other_name = run(&kms, &["seal", "--key", &key, "--name", "cache"], SECRET).await;
    assert_eq!(other_name.code, EXIT_USAGE, "{}", other_name.stderr);
    assert!(
        other_name.stderr.contains("--name says cache"),
        "{}",
        other_name.stderr
    );
    assert_eq!(generated(), before, "nothing sealed");
    // Agreeing flags are fine.
    let same = run(
        &kms,
        &["seal", "--key", &key, "-n", "prod", "--name", "db"],
        SECRET,
    )
    .await;
    assert_eq!(same.code, EXIT_OK, "{}", same.stderr);
    // A manifest without a namespace takes -n's.
    let unplaced = SECRET.replace("  namespace: prod\n", "");
    let sealed = run(&kms, &["seal", "--key", &key, "-n", "dev"], &unplaced).await;
    assert_eq!(sealed.code, EXIT_OK, "{}", sealed.stderr);
    let unsealed = run(&kms, &["unseal", "-o", "json"], &sealed.stdout).await;
    let secret: serde_json::Value = serde_json::from_str(&unsealed.stdout).unwrap();
    assert_eq!(secret["metadata"]["namespace"], "dev");
}

/// Command lines that cannot work as given exit 2, as the README says, and `--merge-into`
/// takes the name from the file it adds to.
#[tokio::test]
async fn usage_errors_exit_2_and_merge_into_needs_no_name() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let both = run(
        &kms,
        &["seal", "--key", &key, "-f", "-", "--from-literal", "a=b"],
        SECRET,
    )
    .await;
    assert_eq!(both.code, EXIT_USAGE, "{}", both.stderr);
    let nameless = run(&kms, &["seal", "--key", &key, "--from-literal", "a=b"], "").await;
    assert_eq!(nameless.code, EXIT_USAGE, "{}", nameless.stderr);
    assert!(
        nameless.stderr.contains("need --name"),
        "{}",
        nameless.stderr
    );

    let sealed = run(&kms, &["seal", "--key", &key], SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let file = common::temp_file(&dir, "db.yaml", sealed.stdout.as_bytes());
    let merged = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--from-literal",
            "token=t0k3n",
            "--merge-into",
            file.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(merged.code, EXIT_OK, "{}", merged.stderr);
    let after = std::fs::read_to_string(&file).unwrap();
    let unsealed = run(&kms, &["unseal", "-o", "json"], &after).await;
    let secret: serde_json::Value = serde_json::from_str(&unsealed.stdout).unwrap();
    assert_eq!(secret["metadata"]["name"], "db");
    assert_eq!(secret["data"]["token"], "dDBrM24="); // "t0k3n"
}

/// Oversized input is reported with its real size (a capped read used to report the cap, e.g.
/// "1048577 bytes" for a 2 MB file), or as "larger" for stdin, whose size is unknown.
#[tokio::test]
async fn oversized_input_is_reported_with_its_real_size() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 2_000_000]).unwrap();
    let from_file = format!("big={}", big.display());
    let out = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--name",
            "a",
            "-n",
            "b",
            "--from-file",
            &from_file,
        ],
        "",
    )
    .await;
    assert_eq!(out.code, EXIT_ERROR);
    assert!(
        out.stderr.contains("2000000 bytes") && out.stderr.contains("1048576"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("1048577"), "{}", out.stderr);

    let manifest = dir.path().join("huge.yaml");
    std::fs::write(&manifest, vec![b'#'; 17_000_000]).unwrap();
    let out = run(
        &kms,
        &["seal", "--key", &key, "-f", manifest.to_str().unwrap()],
        "",
    )
    .await;
    assert_eq!(out.code, EXIT_ERROR);
    assert!(out.stderr.contains("17000000 bytes"), "{}", out.stderr);
    let piped = "#".repeat(17_000_000);
    let out = run(&kms, &["seal", "--key", &key], &piped).await;
    assert_eq!(out.code, EXIT_ERROR);
    assert!(
        out.stderr.contains("larger") && !out.stderr.contains("16777217"),
        "{}",
        out.stderr
    );
}

/// Kubernetes refuses a Secret whose values are over 1 MiB together; sealing one would only
/// fail later, at `kubectl apply`, so it is refused before any KMS call.
#[tokio::test]
async fn a_secret_over_1_mib_in_total_is_refused() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "seal".to_owned(),
        "--key".to_owned(),
        key.clone(),
        "--name".to_owned(),
        "a".to_owned(),
        "-n".to_owned(),
        "b".to_owned(),
    ];
    for part in ["one", "two"] {
        let path = dir.path().join(part);
        std::fs::write(&path, vec![b'x'; 600_000]).unwrap();
        args.push("--from-file".to_owned());
        args.push(format!("{part}={}", path.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&kms, &args, "").await;
    assert_eq!(out.code, EXIT_ERROR, "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("1200000 bytes") && out.stderr.contains("1048576"),
        "{}",
        out.stderr
    );
    assert_eq!(
        kms.calls
            .generate_data_key
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// A CI gate must tell "re-seal needed" (3) from "this job cannot reach or use KMS" (4).
#[tokio::test]
async fn verify_tells_bad_items_from_an_environment_that_cannot_check_them() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let sealed = run(&kms, &["seal", "--key", &key], SECRET).await;
    kms.deny("kms:Decrypt", &key);
    let denied = run(&kms, &["verify"], &sealed.stdout).await;
    assert_eq!(denied.code, EXIT_VERIFY_UNCHECKED, "{}", denied.stdout);
    assert!(
        denied.stdout.contains("0 ok, 0 failed, 2 not checked")
            && denied.stdout.contains("UNCHECKED")
            && denied.stdout.contains("[access_denied]"),
        "{}",
        denied.stdout
    );
    // Bad items under a usable key are still 3.
    kms.allow("kms:Decrypt", &key);
    let moved = sealed.stdout.replace("namespace: prod", "namespace: dev");
    assert_eq!(
        run(&kms, &["verify"], &moved).await.code,
        EXIT_VERIFY_FAILED
    );
    // Both: what could not be checked may be bad too, so the environment comes first.
    let other = kms.create_key();
    let elsewhere = run(&kms, &["seal", "--key", &other], SECRET).await;
    kms.deny("kms:Decrypt", &other);
    let both = format!("{moved}---\n{}", elsewhere.stdout);
    let out = run(&kms, &["verify"], &both).await;
    assert_eq!(out.code, EXIT_VERIFY_UNCHECKED, "{}", out.stdout);
    assert!(
        out.stdout.contains("0 ok, 2 failed, 2 not checked"),
        "{}",
        out.stdout
    );
}

/// The real binary with no credentials, and with KMS unreachable: exit 4, not 3.
#[tokio::test]
async fn binary_verify_exits_4_without_credentials_or_network() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let sealed = run(&kms, &["seal", "--key", &key], SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let file = common::temp_file(&dir, "db.yaml", sealed.stdout.as_bytes());
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let verify = |credentials: bool| {
        let mut cmd = common::kmseal(credentials);
        cmd.env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_REGION", "eu-west-1")
            .args(["verify", "--endpoint", &endpoint, "-f"])
            .arg(&file);
        cmd
    };
    verify(true)
        .assert()
        .code(EXIT_VERIFY_UNCHECKED)
        .stdout(predicate::str::contains("[unreachable]"))
        // The root cause, not the SDK's wrapper chain.
        .stdout(predicate::str::contains("DispatchFailure").not())
        .stdout(predicate::str::contains("ConnectorError").not());
    verify(false)
        .assert()
        .code(EXIT_VERIFY_UNCHECKED)
        .stdout(predicate::str::contains("[credentials]"))
        .stdout(predicate::str::contains("DispatchFailure").not())
        .stdout(predicate::str::contains("Attempted").not())
        .stdout(predicate::str::contains("KMS said").not());
}

/// `--merge-into` writes through a temp file it creates new (a symlink planted at the old
/// predictable temp name is not followed), and a symlinked target stays a symlink.
#[cfg(unix)]
#[tokio::test]
async fn merge_into_writes_safely_beside_the_file() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let sealed = run(&kms, &["seal", "--key", &key], SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let real = common::temp_file(&dir, "real.yaml", sealed.stdout.as_bytes());
    let link = dir.path().join("db.yaml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    for planted in [".db.yaml.kmseal-tmp", ".real.yaml.kmseal-tmp"] {
        std::os::unix::fs::symlink(&victim, dir.path().join(planted)).unwrap();
    }
    let merged = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--from-literal",
            "added=1",
            "--merge-into",
            link.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(merged.code, EXIT_OK, "{}", merged.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let after = std::fs::read_to_string(&real).unwrap();
    assert!(after.contains("added:"), "{after}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kmseal-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// With `--public-key`, the file's key wins over KMSEAL_KEY (usually set for online sealing),
/// and a `--key` naming another key is a usage error that says so (it blamed the PEM file).
#[tokio::test]
async fn the_public_key_file_wins_over_kmseal_key_and_conflicts_with_another_key() {
    let kms = MemoryKms::new("eu-west-1");
    let rsa_key = kms.add_rsa_key(rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap());
    let pem = run(&kms, &["pubkey", "--key", &rsa_key], "").await;
    let dir = tempfile::tempdir().unwrap();
    let pem_path = common::temp_file(&dir, "key.pem", pem.stdout.as_bytes());
    let secret_path = common::temp_file(&dir, "secret.yaml", SECRET.as_bytes());
    let seal = || {
        let mut cmd = common::kmseal(false);
        cmd.args(["seal", "--public-key"])
            .arg(&pem_path)
            .arg("-f")
            .arg(&secret_path);
        cmd
    };
    let sealed = seal()
        .env("KMSEAL_KEY", "alias/kmseal")
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let unsealed = run(
        &kms,
        &["unseal", "-o", "json"],
        &String::from_utf8(sealed).unwrap(),
    )
    .await;
    assert_eq!(unsealed.code, EXIT_OK, "{}", unsealed.stderr);
    seal()
        .args(["--key", "alias/other"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("name different keys"));
    // The file's own ARN given again is fine.
    seal().args(["--key", &rsa_key]).assert().code(0);
}

/// A missing region is said as what it is, with what to do: KMS was never asked, so it is not
/// "KMS rejected ... as invalid".
#[test]
fn binary_without_a_region_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let secret_path = common::temp_file(&dir, "secret.yaml", SECRET.as_bytes());
    common::kmseal(true)
        .args(["seal", "--key", "alias/kmseal", "-f"])
        .arg(&secret_path)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no AWS region is configured"))
        .stderr(predicate::str::contains("--region"))
        .stderr(predicate::str::contains("rejected").not())
        .stderr(predicate::str::contains("KMS said").not());
}

/// An endpoint that answers HTTP 500 with a page that is no AWS error (a proxy, say): the
/// report names the status, and counts as the environment (exit 4), not as a bad item.
#[tokio::test]
async fn binary_verify_names_the_http_status_of_a_non_kms_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let sealed = run(&kms, &["seal", "--key", &key], SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let file = common::temp_file(&dir, "db.yaml", sealed.stdout.as_bytes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = conn.read(&mut buf).await;
                let body = "<html>proxy error</html>";
                let _ = conn
                    .write_all(
                        format!(
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    let out = tokio::task::spawn_blocking(move || {
        common::kmseal(true)
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_REGION", "eu-west-1")
            .args(["verify", "--endpoint", &endpoint, "-f"])
            .arg(&file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(EXIT_VERIFY_UNCHECKED), "{report}");
    assert!(report.contains("HTTP 500"), "{report}");
    assert!(!report.contains("Unknown"), "{report}");
}

/// Reading a manifest from a terminal says so (it seemed to hang); from a pipe it does not.
#[tokio::test]
async fn reading_stdin_from_a_terminal_says_so() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let at_terminal = run_on(&kms, &["seal", "--key", &key], SECRET, true).await;
    assert_eq!(at_terminal.code, EXIT_OK, "{}", at_terminal.stderr);
    assert!(
        at_terminal
            .stderr
            .contains("reading the manifest from stdin"),
        "{}",
        at_terminal.stderr
    );
    let piped = run(&kms, &["seal", "--key", &key], SECRET).await;
    assert!(!piped.stderr.contains("stdin"), "{}", piped.stderr);
}

/// `pubkey --out FILE` writes the file only once the key was fetched and checked: a failure
/// leaves no empty file behind (as `> FILE` does), and the file it writes seals offline.
#[tokio::test]
async fn pubkey_out_writes_only_a_good_key() {
    let kms = MemoryKms::new("eu-west-1");
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("key.pem");
    let sym = kms.create_key();
    let failed = run(
        &kms,
        &["pubkey", "--key", &sym, "--out", pem_path.to_str().unwrap()],
        "",
    )
    .await;
    assert_eq!(failed.code, EXIT_ERROR);
    assert!(!pem_path.exists(), "no file after a failure");
    let rsa_key = kms.add_rsa_key(rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap());
    let written = run(
        &kms,
        &[
            "pubkey",
            "--key",
            &rsa_key,
            "--out",
            pem_path.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(written.code, EXIT_OK, "{}", written.stderr);
    assert!(written.stdout.is_empty());
    let sealed = run(
        &kms,
        &["seal", "--public-key", pem_path.to_str().unwrap()],
        SECRET,
    )
    .await;
    assert_eq!(sealed.code, EXIT_OK, "{}", sealed.stderr);
}

/// `kmseal completion SHELL` prints a script the shell accepts (`bash -n`), covering the
/// subcommands and their flags.
#[test]
fn completion_scripts_parse() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::cargo_bin("kmseal")
            .unwrap()
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["seal", "verify", "--merge-into", "--public-key"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        if shell == "bash" {
            let path = dir.path().join("kmseal.bash");
            std::fs::write(&path, &script).unwrap();
            let status = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .status()
                .unwrap();
            assert!(status.success(), "bash -n rejects the completion script");
        }
    }
    Command::cargo_bin("kmseal")
        .unwrap()
        .args(["completion", "tcsh"])
        .assert()
        .code(2);
}

/// What the API server would refuse for the Secret's type (a ServiceAccount token, a type
/// without its required items, a Docker config that is not JSON) is refused by `seal` before
/// any KMS call, with the fix; `--merge-into` judges the file as it will be after the merge.
#[tokio::test]
async fn seal_refuses_what_the_cluster_refuses_for_the_secrets_type() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let generated = || {
        kms.calls
            .generate_data_key
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let seal = |type_: &'static str, items: &'static [&'static str]| {
        let mut args = vec!["seal", "--key", &key, "--name", "web", "-n", "prod"];
        args.extend(["--type", type_]);
        for item in items {
            args.extend(["--from-literal", item]);
        }
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let kms = &kms;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(kms, &args, "").await
        }
    };
    let refused = [
        (
            "kubernetes.io/tls",
            &["tls.crt=CERT"][..],
            "needs items tls.crt and tls.key, and the API server refuses it without; add tls.key, or use type Opaque",
        ),
        (
            "kubernetes.io/basic-auth",
            &["user=admin"][..],
            "add username or password",
        ),
        (
            "kubernetes.io/ssh-auth",
            &["id_ed25519=KEY"][..],
            "add ssh-privatekey",
        ),
        (
            "kubernetes.io/dockerconfigjson",
            &[".dockerconfigjson={not json"][..],
            "item .dockerconfigjson is not JSON",
        ),
        (
            "kubernetes.io/service-account-token",
            &["token=x"][..],
            "may not be produced by kmseal",
        ),
    ];
    for (type_, items, says) in refused {
        let out = seal(type_, items).await;
        assert_eq!(out.code, EXIT_ERROR, "{type_}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{type_}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{type_}");
        assert!(!out.stderr.contains("CERT") && !out.stderr.contains("not json"));
    }
    assert_eq!(generated(), 0, "nothing was sent to KMS");
    let fine = seal(
        "kubernetes.io/dockerconfigjson",
        &[".dockerconfigjson={\"auths\":{}}"],
    )
    .await;
    assert_eq!(fine.code, EXIT_OK, "{}", fine.stderr);

    // A tls file built in two merges: the first holds tls.crt only, which the type refuses;
    // as Opaque it can be sealed, and a merge that adds tls.key and the type is accepted.
    let first = seal("Opaque", &["tls.crt=CERT"]).await;
    assert_eq!(first.code, EXIT_OK, "{}", first.stderr);
    let dir = tempfile::tempdir().unwrap();
    let file = common::temp_file(&dir, "web.yaml", first.stdout.as_bytes());
    let merge = |items: &'static [&'static str]| {
        let mut args: Vec<String> = [
            "seal",
            "--key",
            &key,
            "--type",
            "kubernetes.io/tls",
            "--merge-into",
            file.to_str().unwrap(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        for item in items {
            args.push("--from-literal".to_owned());
            args.push((*item).to_owned());
        }
        let kms = &kms;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(kms, &args, "").await
        }
    };
    let before = generated();
    let out = merge(&["ca.crt=CA"]).await;
    assert_eq!(out.code, EXIT_ERROR, "{}", out.stderr);
    assert!(out.stderr.contains("add tls.key"), "{}", out.stderr);
    assert_eq!(generated(), before);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first.stdout);
    let out = merge(&["tls.key=KEY"]).await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    let unsealed = run(
        &kms,
        &["unseal", "-o", "json"],
        &std::fs::read_to_string(&file).unwrap(),
    )
    .await;
    let secret: serde_json::Value = serde_json::from_str(&unsealed.stdout).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["data"]["tls.key"], "S0VZ");
}

/// `seal -w FILE` writes the file only once sealing succeeded: a failure leaves no file (a
/// shell redirect would leave an empty one). `-w` and `-o` make no sense with `--merge-into`,
/// which keeps the file's own format: usage errors, not silently ignored.
#[tokio::test]
async fn seal_writes_its_file_only_on_success() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("db.encrypted.yaml");
    let out_arg = out.to_str().unwrap();
    let sealed = run(&kms, &["seal", "--key", &key, "-w", out_arg], SECRET).await;
    assert_eq!(sealed.code, EXIT_OK, "{}", sealed.stderr);
    assert!(sealed.stdout.is_empty());
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("kind: EncryptedSecret"), "{written}");
    let unsealed = run(&kms, &["unseal", "-o", "json"], &written).await;
    assert_eq!(unsealed.code, EXIT_OK, "{}", unsealed.stderr);

    // A failure (a key KMS does not know) leaves no file behind.
    let missing = dir.path().join("never.yaml");
    let failed = run(
        &kms,
        &[
            "seal",
            "--key",
            "arn:aws:kms:eu-west-1:111122223333:key/00000000-0000-4000-8000-000000000000",
            "-w",
            missing.to_str().unwrap(),
        ],
        SECRET,
    )
    .await;
    assert_ne!(failed.code, EXIT_OK);
    assert!(!missing.exists(), "{}", failed.stderr);

    for extra in [["-w", out_arg], ["-o", "json"]] {
        let mut args = vec![
            "seal",
            "--key",
            &key,
            "--from-literal",
            "password=n3w",
            "--merge-into",
            out_arg,
        ];
        args.extend(extra);
        let refused = common::kmseal(false).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(
            refused.status.code(),
            Some(EXIT_USAGE),
            "{extra:?}: {stderr}"
        );
        assert!(stderr.contains("cannot be used with"), "{stderr}");
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), written);
}

/// `-n` that contradicts the file is a usage error (2) for `verify` and `unseal`, as for
/// `seal`, and so is one that contradicts the `--merge-into` file; nothing is sent to KMS.
#[tokio::test]
async fn a_namespace_flag_that_contradicts_the_file_is_a_usage_error() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let sealed = run(&kms, &["seal", "--key", &key], SECRET).await;
    assert_eq!(sealed.code, EXIT_OK, "{}", sealed.stderr);
    let decrypts = || kms.calls.decrypt.load(std::sync::atomic::Ordering::Relaxed);
    for command in ["verify", "unseal"] {
        let out = run(&kms, &[command, "-n", "dev"], &sealed.stdout).await;
        assert_eq!(out.code, EXIT_USAGE, "{command}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("EncryptedSecret db is in namespace prod, but -n says dev; drop -n"),
            "{command}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{command}: {}", out.stdout);
        // The same namespace is fine.
        let out = run(&kms, &[command, "-n", "prod"], &sealed.stdout).await;
        assert_eq!(out.code, EXIT_OK, "{command}: {}", out.stderr);
    }
    let before = decrypts();
    let dir = tempfile::tempdir().unwrap();
    let file = common::temp_file(&dir, "db.yaml", sealed.stdout.as_bytes());
    let generated = || {
        kms.calls
            .generate_data_key
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let generated_before = generated();
    let out = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "-n",
            "dev",
            "--from-literal",
            "password=n3w",
            "--merge-into",
            file.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(out.code, EXIT_USAGE, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("is in namespace prod, but -n says dev; drop -n"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), sealed.stdout);
    assert_eq!((decrypts(), generated()), (before, generated_before));
}

/// Flags that cannot work are refused before anything is read or sent, with the likely fix: a
/// key named without `alias/`, an endpoint without its scheme, a `--from-file` path whose file
/// name cannot be an item name.
#[test]
fn flags_that_cannot_work_say_what_was_meant() {
    let dir = tempfile::tempdir().unwrap();
    let spaced = common::temp_file(&dir, "my key.pem", b"k");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "seal",
                "--key",
                "kmseal-local",
                "--name",
                "a",
                "-n",
                "b",
                "--from-literal",
                "x=y",
            ],
            "did you mean alias/kmseal-local?",
        ),
        (
            &["pubkey", "--key", "kmseal-rsa"],
            "did you mean alias/kmseal-rsa?",
        ),
        (
            &["verify", "--endpoint", "localhost:4566", "-f", "-"],
            "give its scheme, e.g. http://localhost:4566",
        ),
        (
            &[
                "seal",
                "--key",
                "alias/k",
                "--name",
                "a",
                "-n",
                "b",
                "--from-file",
                spaced.to_str().unwrap(),
            ],
            "name the item: --from-file KEY=",
        ),
    ];
    for (args, says) in cases {
        let output = common::kmseal(false).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_USAGE), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// Comments the user wrote in a sealed file, between items, at the ends of lines and at the
/// end of the file, survive `--merge-into` byte for byte, in LF and CRLF files: the only lines
/// that differ are the replaced value's and the added item's.
#[tokio::test]
async fn merge_into_keeps_every_comment_and_changes_only_its_lines() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let sealed = run(&kms, &["seal", "--key", &key], SECRET).await;
    assert_eq!(sealed.code, EXIT_OK, "{}", sealed.stderr);
    // The sealed file as a person keeps it in Git.
    let mut rich =
        String::from("# Database login for prod. Edit with kmseal seal --merge-into.\n\n");
    for line in sealed.stdout.lines() {
        if line.trim_start().starts_with("username:") {
            rich.push_str("    # who the app logs in as\n\n");
        }
        rich.push_str(line);
        if line.trim_start().starts_with("password:") || line.trim_start().starts_with("keyId:") {
            rich.push_str("   # rotated monthly");
        }
        rich.push('\n');
    }
    rich.push_str("# end of file\n");
    for eol in ["\n", "\r\n"] {
        let before = rich.replace('\n', eol);
        let dir = tempfile::tempdir().unwrap();
        let file = common::temp_file(&dir, "db.yaml", before.as_bytes());
        let merged = run(
            &kms,
            &[
                "seal",
                "--key",
                &key,
                "--from-literal",
                "password=rotated",
                "--from-literal",
                "token=t0k3n",
                "--merge-into",
                file.to_str().unwrap(),
            ],
            "",
        )
        .await;
        assert_eq!(merged.code, EXIT_OK, "{}", merged.stderr);
        assert!(!merged.stderr.contains("written anew"), "{}", merged.stderr);
        let after = std::fs::read_to_string(&file).unwrap();
        let old: Vec<&str> = before.split(eol).collect();
        let new: Vec<&str> = after.split(eol).collect();
        assert_eq!(new.len(), old.len() + 1, "one line added: {after:?}");
        let changed: Vec<(usize, &str)> = old
            .iter()
            .zip(&new)
            .enumerate()
            .filter(|(_, (o, n))| o != n)
            .map(|(i, (o, _))| (i, *o))
            .collect();
        // The password line changed its value and kept its comment; the token line went in
        // after the last item; nothing else moved.
        let password = old.iter().position(|l| l.contains("password:")).unwrap();
        assert!(
            new[password].ends_with("   # rotated monthly"),
            "{}",
            new[password]
        );
        assert!(
            new[password].starts_with("    password: "),
            "{}",
            new[password]
        );
        let token = new
            .iter()
            .position(|l| l.starts_with("    token: "))
            .unwrap();
        assert!(new[token - 1].starts_with("    username: "), "{after}");
        let mut without_token = new.clone();
        without_token.remove(token);
        let differing: Vec<usize> = old
            .iter()
            .zip(&without_token)
            .enumerate()
            .filter(|(_, (o, n))| o != n)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(differing, [password], "{changed:?}");
        if eol == "\n" {
            assert!(!after.contains('\r'));
        } else {
            assert!(!after.replace("\r\n", "").contains('\n'), "{after:?}");
        }
        let unsealed = run(&kms, &["unseal", "-o", "json"], &after).await;
        let secret: serde_json::Value = serde_json::from_str(&unsealed.stdout).unwrap();
        assert_eq!(secret["data"]["password"], "cm90YXRlZA=="); // "rotated"
        assert_eq!(secret["data"]["token"], "dDBrM24="); // "t0k3n"
        assert_eq!(secret["data"]["username"], "YWRtaW4=");
    }
}

/// In a file of several EncryptedSecrets, `--name` picks the one to merge into and the others
/// stay byte-identical; without it the command says which names there are. What cannot be
/// edited line by line (flow style) has its document written anew, says so, and still leaves
/// the other documents alone.
#[tokio::test]
async fn merge_into_one_document_of_several() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let db = run(&kms, &["seal", "--key", &key], SECRET).await.stdout;
    let api = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--name",
            "api",
            "-n",
            "prod",
            "--from-literal",
            "a=1",
        ],
        "",
    )
    .await
    .stdout;
    let text = format!("# two secrets\n---\n{db}---\n# the api's own\n{api}");
    let dir = tempfile::tempdir().unwrap();
    let file = common::temp_file(&dir, "all.yaml", text.as_bytes());
    let path = file.to_str().unwrap();
    let merge = |name: Option<&'static str>| {
        let mut args = vec![
            "seal".to_owned(),
            "--key".to_owned(),
            key.clone(),
            "--from-literal".to_owned(),
            "b=2".to_owned(),
            "--merge-into".to_owned(),
            path.to_owned(),
        ];
        if let Some(name) = name {
            args.extend(["--name".to_owned(), name.to_owned()]);
        }
        let kms = &kms;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(kms, &args, "").await
        }
    };
    let unnamed = merge(None).await;
    assert_eq!(unnamed.code, EXIT_USAGE, "{}", unnamed.stderr);
    assert!(
        unnamed
            .stderr
            .contains("holds 2 EncryptedSecrets (db, api); pass --name"),
        "{}",
        unnamed.stderr
    );
    let missing = merge(Some("web")).await;
    assert_eq!(missing.code, EXIT_USAGE, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("no EncryptedSecret named web"),
        "{}",
        missing.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    let merged = merge(Some("api")).await;
    assert_eq!(merged.code, EXIT_OK, "{}", merged.stderr);
    let after = std::fs::read_to_string(&file).unwrap();
    let prefix = format!("# two secrets\n---\n{db}---\n# the api's own\n");
    assert!(after.starts_with(&prefix), "{after}");
    assert_eq!(after.lines().count(), text.lines().count() + 1);
    let objects = kmseal::manifest::read_encrypted_secrets(&after).unwrap();
    assert_eq!(objects.len(), 2);
    assert!(objects[1].spec.encrypted_data.contains_key("b"));

    // Flow style: written anew, said so, the first document untouched.
    let flow = api.replace("\n  encryptedData:\n    a: ", "\n  encryptedData: {a: ");
    let flow = {
        let at = flow.find("{a: ").unwrap();
        let end = flow[at..].find('\n').unwrap() + at;
        format!("{}}}{}", &flow[..end], &flow[end..])
    };
    assert!(
        kmseal::manifest::read_encrypted_secrets(&flow).is_ok(),
        "{flow}"
    );
    let text = format!("{db}---\n{flow}");
    std::fs::write(&file, &text).unwrap();
    let merged = merge(Some("api")).await;
    assert_eq!(merged.code, EXIT_OK, "{}", merged.stderr);
    assert!(merged.stderr.contains("written anew"), "{}", merged.stderr);
    let after = std::fs::read_to_string(&file).unwrap();
    assert!(after.starts_with(&format!("{db}---\n")), "{after}");
    let objects = kmseal::manifest::read_encrypted_secrets(&after).unwrap();
    assert_eq!(objects[1].spec.encrypted_data.len(), 2);
}

/// `seal --raw` prints one sealed value and nothing else; the value opens only where it was
/// bound (namespace, name and item), as any sealed item.
#[tokio::test]
async fn seal_raw_prints_one_value_bound_to_its_item() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let raw = run(
        &kms,
        &[
            "seal", "--raw", "--item", "password", "--name", "db", "-n", "prod", "--key", &key,
        ],
        "hunter2-raw",
    )
    .await;
    assert_eq!(raw.code, EXIT_OK, "{}", raw.stderr);
    let value = raw.stdout.strip_suffix('\n').expect("one line");
    assert!(!value.contains('\n') && !value.contains(' '), "{value}");
    assert!(!raw.stdout.contains("hunter2"));
    let manifest = |name: &str, item: &str| {
        format!(
            "apiVersion: kmseal.dev/v1alpha1\nkind: EncryptedSecret\nmetadata:\n  name: {name}\n  namespace: prod\nspec:\n  encryptedData:\n    {item}: {value}\n"
        )
    };
    let unsealed = run(&kms, &["unseal", "-o", "json"], &manifest("db", "password")).await;
    assert_eq!(unsealed.code, EXIT_OK, "{}", unsealed.stderr);
    let secret: serde_json::Value = serde_json::from_str(&unsealed.stdout).unwrap();
    assert_eq!(
        secret["data"]["password"], "aHVudGVyMi1yYXc=",
        "the bytes as read"
    );
    for (name, item) in [("other", "password"), ("db", "token")] {
        let moved = run(&kms, &["verify"], &manifest(name, item)).await;
        assert_eq!(
            moved.code, EXIT_VERIFY_FAILED,
            "{name} {item}: {}",
            moved.stdout
        );
    }

    // Without what binds the value, nothing is sealed.
    let no_namespace = run(
        &kms,
        &[
            "seal", "--raw", "--item", "p", "--name", "db", "--key", &key,
        ],
        "v",
    )
    .await;
    assert_ne!(no_namespace.code, EXIT_OK);
    assert!(
        no_namespace.stderr.contains("--namespace"),
        "{}",
        no_namespace.stderr
    );
    assert!(no_namespace.stdout.is_empty());
    let bad_item = run(
        &kms,
        &[
            "seal", "--raw", "--item", "a/b", "--name", "db", "-n", "p", "--key", &key,
        ],
        "v",
    )
    .await;
    assert_eq!(bad_item.code, EXIT_USAGE, "{}", bad_item.stderr);
    for args in [
        &["seal", "--raw", "--name", "db", "-n", "p"][..],
        &["seal", "--raw", "--item", "p", "-n", "p"],
        &["seal", "--item", "p", "--name", "db", "-n", "p"],
        &[
            "seal", "--raw", "--item", "p", "--name", "db", "-f", "x.yaml",
        ],
        &[
            "seal",
            "--raw",
            "--item",
            "p",
            "--name",
            "db",
            "--from-literal",
            "a=b",
        ],
        &["seal", "--raw", "--item", "p", "--name", "db", "-o", "json"],
        &[
            "seal",
            "--raw",
            "--item",
            "p",
            "--name",
            "db",
            "--merge-into",
            "x",
        ],
    ] {
        let mut argv = vec!["kmseal"];
        argv.extend_from_slice(args);
        let e = <Cli as clap::Parser>::try_parse_from(argv).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE, "{args:?}");
    }
    // Over 1 MiB: said, nothing printed.
    let big = "x".repeat(1024 * 1024 + 1);
    let too_big = run(
        &kms,
        &[
            "seal", "--raw", "--item", "p", "--name", "db", "-n", "p", "--key", &key,
        ],
        &big,
    )
    .await;
    assert_eq!(too_big.code, EXIT_ERROR);
    assert!(too_big.stderr.contains("1 MiB"), "{}", too_big.stderr);
    assert!(too_big.stdout.is_empty());
}

/// `verify -o json`: per object, per item, ok with what opened it, bad or unchecked with a
/// reason code and the message; a summary; the same exit codes as the text.
#[tokio::test]
async fn verify_json_reports_each_item() {
    let kms = MemoryKms::new("eu-west-1");
    let good = kms.create_key();
    let denied = kms.create_key();
    let one = run(&kms, &["seal", "--key", &good], SECRET).await;
    let bad = one.stdout.replace("name: db", "name: moved");
    let two = run(
        &kms,
        &[
            "seal",
            "--key",
            &denied,
            "--name",
            "other",
            "-n",
            "prod",
            "--from-literal",
            "k=v",
        ],
        "",
    )
    .await;
    kms.deny("kms:Decrypt", &denied);
    let input = format!("{}---\n{bad}---\n{}", one.stdout, two.stdout);
    let verified = run(&kms, &["verify", "-o", "json"], &input).await;
    assert_eq!(verified.code, EXIT_VERIFY_UNCHECKED, "{}", verified.stderr);
    let report: serde_json::Value = serde_json::from_str(&verified.stdout).unwrap();
    let objects = report["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 3);
    assert_eq!(objects[0]["namespace"], "prod");
    assert_eq!(objects[0]["name"], "db");
    let first = &objects[0]["items"][0];
    assert_eq!(first["result"], "ok", "{first}");
    assert_eq!(first["key"], good.as_str());
    assert!(first["bytes"].as_u64().unwrap() > 0);
    let moved = &objects[1]["items"][0];
    assert_eq!(moved["result"], "bad", "{moved}");
    assert_eq!(moved["reason"], "invalid_ciphertext");
    assert!(moved["message"].as_str().unwrap().contains("re-seal"));
    let unchecked = &objects[2]["items"][0];
    assert_eq!(unchecked["result"], "unchecked", "{unchecked}");
    assert_eq!(unchecked["reason"], "access_denied");
    assert_eq!(report["summary"]["ok"], 2);
    assert_eq!(report["summary"]["bad"], 2);
    assert_eq!(report["summary"]["unchecked"], 1);
    assert!(!verified.stdout.contains("hunter2"));

    let only_bad = run(&kms, &["verify", "-o", "json"], &bad).await;
    assert_eq!(only_bad.code, EXIT_VERIFY_FAILED);
    let text = run(&kms, &["verify"], &bad).await;
    assert!(
        text.stdout.contains("0 ok, 2 failed, 0 not checked"),
        "{}",
        text.stdout
    );
}

/// Each subcommand's help shows its own flags under headings; the commands that never call
/// KMS show no AWS flag.
#[test]
fn help_shows_only_each_commands_flags_grouped() {
    let help = |sub: &str| {
        let out = common::kmseal(false)
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        common::stdout(&out)
    };
    for sub in ["validate", "crd", "completion"] {
        let text = help(sub);
        for flag in ["--region", "--endpoint", "--profile", "--role-arn", "AWS:"] {
            assert!(!text.contains(flag), "{sub} --help shows {flag}:\n{text}");
        }
    }
    let seal = help("seal");
    let mut at = 0;
    for heading in ["The Secret:", "The key:", "Output:", "AWS:"] {
        let found = seal[at..]
            .find(&format!("\n{heading}\n"))
            .unwrap_or_else(|| panic!("seal --help has no {heading} after the last:\n{seal}"));
        at += found + 1;
    }
    for (heading, flag) in [
        ("The key:", "--public-key"),
        ("Output:", "--merge-into"),
        ("AWS:", "--region"),
    ] {
        let section = &seal[seal.find(heading).unwrap()..];
        let section = &section[..section[1..].find("\n\n").map_or(section.len(), |e| e + 1)];
        assert!(
            section.contains(flag),
            "{flag} not under {heading}:\n{section}"
        );
    }
    for sub in ["verify", "unseal", "pubkey", "rewrap", "keys"] {
        assert!(help(sub).contains("\nAWS:\n"), "{sub}");
    }
    // The AWS flags belong to the commands now: after the command, as before.
    let e = <Cli as clap::Parser>::try_parse_from(["kmseal", "--region", "x", "crd"]);
    assert!(e.is_err());
}

/// The examples in `--help` print as written: no line is wrapped in the middle of a command
/// (every line is a comment, starts a command, or continues one that ends with `\`), and each
/// kmseal command in them parses.
#[test]
fn help_examples_are_whole_commands_that_parse() {
    let out = common::kmseal(false).arg("--help").output().unwrap();
    let help = common::stdout(&out);
    let examples = &help[help.find("Examples:\n").expect("examples") + 10..];
    let examples = &examples[..examples.find("\nExit codes").unwrap()];
    let mut commands = Vec::new();
    let mut continued: Option<String> = None;
    for line in examples.lines() {
        let text = line.trim();
        if let Some(open) = continued.take() {
            let joined = format!("{open} {}", text.trim_end_matches('\\').trim());
            if text.ends_with('\\') {
                continued = Some(joined);
            } else {
                commands.push(joined);
            }
            continue;
        }
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        assert!(
            ["kmseal ", "kubectl ", "printf "]
                .iter()
                .any(|p| text.starts_with(p)),
            "a wrapped or unknown example line: {line:?}\n{examples}"
        );
        if text.ends_with('\\') {
            continued = Some(text.trim_end_matches('\\').trim().to_owned());
        } else {
            commands.push(text.to_owned());
        }
    }
    assert!(continued.is_none());
    let mut parsed = 0;
    for command in &commands {
        for part in command.split(" | ") {
            let Some(rest) = part.trim().strip_prefix("kmseal ") else {
                continue;
            };
            let mut argv = vec!["kmseal"];
            argv.extend(rest.split_whitespace());
            <Cli as clap::Parser>::try_parse_from(&argv)
                .unwrap_or_else(|e| panic!("example {command:?} does not parse: {e}"));
            parsed += 1;
        }
    }
    assert!(parsed >= 9, "{parsed} kmseal examples");
}

/// A profile that does not exist is named, with those that do, and no SDK log line reaches
/// stderr.
#[test]
fn binary_names_a_missing_profile_and_the_ones_there_are() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::temp_file(
        &dir,
        "config",
        b"[default]\nregion = eu-west-1\n[profile prod]\nregion = eu-west-1\n",
    );
    let file = common::temp_file(&dir, "es.yaml", b"apiVersion: kmseal.dev/v1alpha1\nkind: EncryptedSecret\nmetadata: {name: a, namespace: b}\nspec: {encryptedData: {}}\n");
    for (flag, env) in [(Some("dve"), None), (None, Some("dve"))] {
        let mut cmd = common::kmseal(true);
        cmd.env("AWS_CONFIG_FILE", &config)
            .args(["verify", "-f", file.to_str().unwrap()]);
        if let Some(name) = flag {
            cmd.args(["--profile", name]);
        }
        if let Some(name) = env {
            cmd.env("AWS_PROFILE", name);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(EXIT_ERROR));
        let stderr = common::stderr(&out);
        assert_eq!(
            stderr,
            format!(
                "error: profile `dve` not found in {} or /dev/null (profiles: default, prod); pass --profile with one of them, or set AWS_PROFILE\n",
                config.display()
            )
        );
        assert!(out.stdout.is_empty());
    }
    let out = common::kmseal(true)
        .env("AWS_CONFIG_FILE", &config)
        .args(["verify", "-f", file.to_str().unwrap(), "--profile", "prod"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_OK), "{}", common::stderr(&out));
}

/// A manifest that is not YAML gets what is wrong, in kmseal's words, with line and column,
/// and never a character of the input (the parser's own message quotes it).
#[tokio::test]
async fn yaml_syntax_errors_say_what_is_wrong_without_quoting_it() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let head = "apiVersion: v1\nkind: Secret\nmetadata: {name: a, namespace: b}\nstringData:\n";
    let deep = format!(
        "{head}  k: v\nextra: {}{}\n",
        "[".repeat(400),
        "]".repeat(400)
    );
    let cases = [
        (
            format!("{head}\tpassword: hunter2\n"),
            "line 5, column 2: a tab character is not allowed for indentation",
        ),
        (
            format!("{head}  password: \"hunter2\n"),
            "line 5, column 13: unterminated quoted string",
        ),
        (deep, "nesting deeper than"),
    ];
    for (input, says) in &cases {
        for args in [&["seal", "--key", key.as_str()][..], &["validate", "-"]] {
            let out = run(&kms, args, input).await;
            let all = format!("{}{}", out.stdout, out.stderr);
            assert_ne!(out.code, EXIT_OK, "{args:?} {input:?}");
            assert!(all.contains(says), "{args:?}: {all}");
            assert!(
                !all.contains("hunter2") && !all.contains("[["),
                "{args:?}: {all}"
            );
        }
    }
}

/// A commented repository file round-trips through every command that edits files in place:
/// `seal --merge-into` (one document of two) and `rewrap` (after a key rotation), with LF and
/// CRLF line ends, block and flow style, comments between items, at line ends and at the end.
/// With each value replaced by a placeholder, the file reads the same before and after, but
/// for the one line the merge adds.
#[tokio::test]
async fn a_commented_file_round_trips_through_every_editing_command() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let seal_one = |name: &'static str, items: &'static [&'static str]| {
        let kms = &kms;
        let key = key.clone();
        async move {
            let mut args = vec![
                "seal".to_owned(),
                "--key".to_owned(),
                key,
                "--name".to_owned(),
                name.to_owned(),
                "-n".to_owned(),
                "prod".to_owned(),
            ];
            for item in items {
                args.extend(["--from-literal".to_owned(), format!("{item}=v-{item}")]);
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run(kms, &argv, "").await;
            assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
            let es: serde_json::Value = serde_saphyr::from_str(&out.stdout).unwrap();
            (out.stdout, es)
        }
    };
    let (block, _) = seal_one("db", &["password", "username"]).await;
    let (_, flow) = seal_one("api", &["a", "b"]).await;
    let value = |es: &serde_json::Value, item: &str| {
        es["spec"]["encryptedData"][item]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Document 1 as written by seal, commented by hand; document 2 in flow style.
    let mut rich = String::from("# prod secrets: edit with kmseal seal --merge-into\n\n");
    for line in block.lines() {
        if line.trim_start().starts_with("username:") {
            rich.push_str("    # who the app logs in as\n\n");
        }
        rich.push_str(line);
        if line.trim_start().starts_with("password:") {
            rich.push_str("   # rotated monthly");
        }
        rich.push('\n');
    }
    rich.push_str(&format!(
        "---\n# the API's keys\napiVersion: kmseal.dev/v1alpha1\nkind: EncryptedSecret\nmetadata: {{name: api, namespace: prod}}  # flow style\nspec:\n  keyId: {key}\n  encryptedData: {{a: \"{}\", b: '{}'}}  # two on one line\n# end of file\n",
        value(&flow, "a"),
        value(&flow, "b")
    ));
    // Every base64 string of a sealed value's length as one placeholder.
    let shape = |text: &str| -> Vec<String> {
        text.split('\n')
            .map(|line| {
                line.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=".contains(c)))
                    .filter(|w| w.len() > 60)
                    .fold(line.to_owned(), |l, w| l.replace(w, "VALUE"))
            })
            .collect()
    };
    for eol in ["\n", "\r\n"] {
        let before = rich.replace('\n', eol);
        let dir = tempfile::tempdir().unwrap();
        let file = common::temp_file(&dir, "prod.yaml", before.as_bytes());
        let path = file.to_str().unwrap();
        let merged = run(
            &kms,
            &[
                "seal",
                "--key",
                &key,
                "--name",
                "db",
                "--from-literal",
                "password=n3w",
                "--from-literal",
                "token=t0k",
                "--merge-into",
                path,
            ],
            "",
        )
        .await;
        assert_eq!(merged.code, EXIT_OK, "{}", merged.stderr);
        let after_merge = std::fs::read_to_string(&file).unwrap();
        let mut expected = shape(&before);
        let username = expected
            .iter()
            .position(|l| l.contains("username:"))
            .unwrap();
        expected.insert(
            username + 1,
            format!("    token: VALUE{}", eol.trim_end_matches('\n')),
        );
        assert_eq!(shape(&after_merge), expected, "{after_merge:?}");
        let tail = &before[before.find("---").unwrap()..];
        assert!(
            after_merge.ends_with(tail),
            "the other document is byte-identical"
        );

        kms.rotate_key(&key, 1_800_000_000);
        let rewrapped = run(&kms, &["rewrap", path], "").await;
        assert_eq!(
            rewrapped.code, EXIT_OK,
            "{}{}",
            rewrapped.stdout, rewrapped.stderr
        );
        assert!(
            rewrapped.stdout.contains("5 rewrapped"),
            "{}",
            rewrapped.stdout
        );
        let after_rewrap = std::fs::read_to_string(&file).unwrap();
        assert_ne!(after_rewrap, after_merge);
        assert_eq!(shape(&after_rewrap), expected, "{after_rewrap:?}");
        if eol == "\n" {
            assert!(!after_rewrap.contains('\r'));
        } else {
            assert!(!after_rewrap.replace("\r\n", "").contains('\n'));
        }
        let verified = run(&kms, &["verify"], &after_rewrap).await;
        assert!(
            verified.stdout.contains("5 ok, 0 failed"),
            "{}",
            verified.stdout
        );
    }
}

/// `kmseal iam-policy`: the documents for two tenants and the controller, from one key policy
/// file, as the worked example in docs/multi-tenancy.md uses them.
#[tokio::test]
async fn iam_policy_prints_least_privilege_documents_for_each_role() {
    let kms = MemoryKms::new("eu-west-1");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        "arn:aws:kms:eu-west-1:111122223333:key/aaaaaaaa-12ab-34cd-56ef-1234567890ab",
        "arn:aws:kms:eu-west-1:111122223333:key/bbbbbbbb-12ab-34cd-56ef-1234567890ab",
    );
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: kmseal.dev/v1alpha1\nkind: KeyPolicy\nkeys:\n- key: {a}\n  namespaces: [team-a]\n- key: {b}\n  namespaces: [team-b]\n"
        ),
    )
    .unwrap();
    let policy = file.to_str().unwrap();
    let json = |out: &common::Outcome| -> serde_json::Value {
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    // Team A's role: its key only, for its namespace only.
    let tenant = json(
        &run(
            &kms,
            &["iam-policy", "--key-policy", policy, "-n", "team-a"],
            "",
        )
        .await,
    );
    let statements = tenant["Statement"].as_array().unwrap();
    assert!(statements.iter().all(|s| s["Resource"] == a), "{tenant}");
    assert_eq!(
        statements[0]["Condition"]["StringEquals"]["kms:EncryptionContext:kmseal.dev/namespace"],
        "team-a"
    );
    // The controller's role: both keys, each for its namespace; with every tenant locked to
    // its own role, no KMS permission on values at all.
    let controller = json(&run(&kms, &["iam-policy", "--key-policy", policy], "").await);
    assert_eq!(controller["Statement"].as_array().unwrap().len(), 4);
    let locked = json(
        &run(
            &kms,
            &[
                "iam-policy",
                "--key-policy",
                policy,
                "--tenant-identity",
                "--default-service-account",
                "kmseal",
            ],
            "",
        )
        .await,
    );
    assert_eq!(locked["Statement"], serde_json::json!([]), "{locked}");
    // The trust policy: sub and aud for the ServiceAccount.
    let provider =
        "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE";
    let trust = json(
        &run(
            &kms,
            &[
                "iam-policy",
                "--key-policy",
                policy,
                "-n",
                "team-b",
                "--trust",
                provider,
                "--service-account",
                "kmseal",
            ],
            "",
        )
        .await,
    );
    assert_eq!(
        trust["Statement"][0]["Condition"]["StringEquals"]["oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE:sub"],
        "system:serviceaccount:team-b:kmseal"
    );
    // Mistakes say what to do.
    let out = run(&kms, &["iam-policy"], "").await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--key-policy"), "{}", out.stderr);
    let out = run(
        &kms,
        &[
            "iam-policy",
            "--key-policy",
            policy,
            "-n",
            "team-a",
            "--trust",
            "arn:aws:iam::1:role/x",
            "--service-account",
            "kmseal",
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("not an OIDC provider ARN"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn seal_can_name_the_service_account_whose_role_decrypts() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let out = run(
        &kms,
        &[
            "seal",
            "--key",
            &key,
            "--name",
            "db",
            "-n",
            "team-a",
            "--from-literal",
            "p=v",
            "--service-account",
            "kmseal",
            "-o",
            "json",
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let sealed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(sealed["spec"]["serviceAccountName"], "kmseal");
    // A name that is not a ServiceAccount's is refused before anything is read or sealed.
    Command::cargo_bin("kmseal")
        .unwrap()
        .args([
            "seal",
            "--key",
            &key,
            "--name",
            "db",
            "--from-literal",
            "p=v",
            "--service-account",
            "kube-system/default",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a ServiceAccount name"));
}
