//! The repository config, `.kmseal.yaml`: rules matched by path (and namespace) choose the key,
//! scope and rotation policy for `seal` and `--merge-into`, the key `rewrap` and `keys` hold
//! values to, and what `validate` calls an error. In-process with the in-memory KMS.

mod common;

use std::path::{Path, PathBuf};

use common::{Outcome, run};
use kmseal::cli::{EXIT_ERROR, EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED};
use kmseal::kms::MemoryKms;

const PLAINTEXT: &str = "hunter2-plaintext";

fn secret(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\nstringData:\n  password: {PLAINTEXT}\n"
    )
}

/// A repository: `.git`, a `.kmseal.yaml` for two accounts' keys and three namespaces.
struct Repo {
    dir: tempfile::TempDir,
    prod: String,
    payments: String,
    staging: String,
}

impl Repo {
    fn new(kms: &MemoryKms) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        for sub in ["clusters/prod", "clusters/staging", "apps"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let (prod, payments, staging) = (kms.create_key(), kms.create_key(), kms.create_key());
        kms.create_alias("alias/kmseal-staging", &staging);
        let config = format!(
            "# keys by cluster\nrules:\n  - path: clusters/prod/**\n    namespace: payments\n    key: {payments}\n    rotation: Report\n\n  - path: clusters/prod/**\n    key: {prod}\n  - path: clusters/staging/**\n    key: alias/kmseal-staging\n    scope: namespace\n"
        );
        std::fs::write(dir.path().join(".kmseal.yaml"), config).unwrap();
        Repo {
            dir,
            prod,
            payments,
            staging,
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn config(&self) -> String {
        self.path(".kmseal.yaml").display().to_string()
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

async fn keys_of(kms: &MemoryKms, file: &Path) -> serde_json::Value {
    let out = run(kms, &["verify", "-o", "json", "-f", s(file)], "").await;
    assert_eq!(out.code, EXIT_OK, "{}{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn seal_takes_key_scope_and_rotation_from_the_first_matching_rule() {
    let kms = MemoryKms::new("eu-west-1");
    let repo = Repo::new(&kms);

    // No --key: the path and namespace pick the rule.
    let cases = [
        ("clusters/prod/web.yaml", "web", &repo.prod, None, "strict"),
        (
            "clusters/prod/pay.yaml",
            "payments",
            &repo.payments,
            Some("Report"),
            "strict",
        ),
        (
            "clusters/staging/web.yaml",
            "web",
            &repo.staging,
            None,
            "namespace",
        ),
    ];
    for (file, namespace, key, rotation, scope) in cases {
        let out_file = repo.path(file);
        let out = run(
            &kms,
            &["seal", "-w", s(&out_file), "-v"],
            &secret(namespace, "db"),
        )
        .await;
        assert_eq!(out.code, EXIT_OK, "{file}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!(" of {}: key ", repo.config())),
            "-v says which rule: {}",
            out.stderr
        );
        let report = keys_of(&kms, &out_file).await;
        let item = &report["objects"][0]["items"][0];
        assert_eq!(item["key"], key.as_str(), "{file}");
        assert!(
            item["format"]
                .as_str()
                .unwrap()
                .contains(&format!("scope {scope}")),
            "{file}: {item}"
        );
        let text = read(&out_file);
        match rotation {
            Some(policy) => assert!(text.contains(&format!("policy: {policy}")), "{text}"),
            None => assert!(!text.contains("rotation"), "{text}"),
        }
        assert!(!text.contains(PLAINTEXT));
    }
    let out = run(
        &kms,
        &["seal", "-w", s(&repo.path("clusters/prod/pay.yaml")), "-v"],
        &secret("payments", "db"),
    )
    .await;
    assert!(
        out.stderr
            .contains("(namespace payments): rule 1 (line 3) of"),
        "{}",
        out.stderr
    );

    // The command line wins over the rule; the rule wins over nothing matching.
    let flagged = repo.path("clusters/prod/flagged.yaml");
    let out = run(
        &kms,
        &[
            "seal",
            "--key",
            &repo.staging,
            "--scope",
            "cluster",
            "-w",
            s(&flagged),
        ],
        &secret("web", "db"),
    )
    .await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    let item = &keys_of(&kms, &flagged).await["objects"][0]["items"][0];
    assert_eq!(item["key"], repo.staging.as_str());
    assert!(item["format"].as_str().unwrap().contains("scope cluster"));

    // No rule matches and no key given: the usage error names the config as a way.
    let out = run(
        &kms,
        &["seal", "-w", s(&repo.path("apps/x.yaml")), "-v"],
        &secret("web", "db"),
    )
    .await;
    assert_eq!(out.code, EXIT_USAGE, "{}", out.stderr);
    assert!(out.stderr.contains("no rule of"), "{}", out.stderr);
    assert!(out.stderr.contains(".kmseal.yaml"), "{}", out.stderr);
    assert!(!repo.path("apps/x.yaml").exists());
}

/// KMSEAL_KEY is the least specific: a rule wins over it, `--key` over both.
#[tokio::test]
async fn a_rule_wins_over_kmseal_key_in_the_environment() {
    let kms = MemoryKms::new("eu-west-1");
    let repo = Repo::new(&kms);
    let out_file = repo.path("clusters/prod/env.yaml");
    let argv = ["kmseal", "seal", "--key", &repo.staging, "-w", s(&out_file)];
    let mut cli = <kmseal::cli::Cli as clap::Parser>::try_parse_from(argv).unwrap();
    if let kmseal::cli::Command::Seal(seal) = &mut cli.command {
        seal.key_from_env = true;
    }
    let out = common::execute(&kms, &cli, &secret("web", "db")).await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    let item = &keys_of(&kms, &out_file).await["objects"][0]["items"][0];
    assert_eq!(
        item["key"],
        repo.prod.as_str(),
        "the rule's key, not KMSEAL_KEY's"
    );
}

#[tokio::test]
async fn merge_into_and_raw_follow_the_rule_of_their_file() {
    let kms = MemoryKms::new("eu-west-1");
    let repo = Repo::new(&kms);
    let file = repo.path("clusters/staging/db.yaml");
    let out = run(&kms, &["seal", "-w", s(&file)], &secret("web", "db")).await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    let out = run(
        &kms,
        &[
            "seal",
            "--merge-into",
            s(&file),
            "--from-literal",
            "token=t0ken",
        ],
        "",
    )
    .await;
    assert_eq!(
        out.code, EXIT_OK,
        "the rule's scope (namespace) matches the file's: {}",
        out.stderr
    );
    let report = keys_of(&kms, &file).await;
    for item in report["objects"][0]["items"].as_array().unwrap() {
        assert_eq!(item["key"], repo.staging.as_str(), "{item}");
        assert!(item["format"].as_str().unwrap().contains("scope namespace"));
    }

    // --raw, printed to stdout from the current directory: the rule for `-` there.
    let out = run(
        &kms,
        &[
            "seal",
            "--raw",
            "--item",
            "p",
            "--name",
            "db",
            "-n",
            "web",
            "-w",
            s(&repo.path("clusters/prod/value.txt")),
        ],
        "v",
    )
    .await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
}

#[tokio::test]
async fn validate_calls_a_value_under_another_key_than_its_rule_an_error() {
    let kms = MemoryKms::new("eu-west-1");
    let repo = Repo::new(&kms);
    let good = repo.path("clusters/prod/good.yaml");
    let out = run(&kms, &["seal", "-w", s(&good)], &secret("web", "db")).await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    // Sealed under the staging key, then put where the prod rule applies.
    let moved = repo.path("clusters/prod/moved.yaml");
    let out = run(
        &kms,
        &["seal", "--key", &repo.staging, "-w", s(&moved)],
        &secret("web", "other"),
    )
    .await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    let out = run(
        &kms,
        &["validate", "-o", "json", s(&repo.path("clusters"))],
        "",
    )
    .await;
    assert_eq!(out.code, EXIT_VERIFY_FAILED, "{}{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let findings: Vec<_> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "key_not_the_rules")
        .collect();
    assert_eq!(findings.len(), 1, "{report:#}");
    assert!(
        findings[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("moved.yaml")
    );
    let message = findings[0]["message"].as_str().unwrap();
    assert!(message.contains("rule 2 (line 8)"), "{message}");
    assert!(
        message.contains(&format!("says key {}", repo.prod)),
        "{message}"
    );

    // Without the config (another one that says nothing about this path), no such error.
    let other = repo.path("apps/.kmseal.yaml");
    std::fs::write(&other, "rules:\n  - path: nothing/**\n    key: alias/x\n").unwrap();
    let out = run(
        &kms,
        &["validate", "--config", s(&other), s(&repo.path("clusters"))],
        "",
    )
    .await;
    assert_eq!(out.code, EXIT_OK, "{}{}", out.stdout, out.stderr);
}

#[tokio::test]
async fn rewrap_moves_values_to_the_rules_key_and_refuses_a_contradiction() {
    let kms = MemoryKms::new("eu-west-1");
    let repo = Repo::new(&kms);
    // Values under the staging key, with no spec.keyId, in a prod file: rewrap moves them to
    // the prod rule's key.
    let file = repo.path("clusters/prod/db.yaml");
    let out = run(
        &kms,
        &["seal", "--key", &repo.staging, "-w", s(&file)],
        &secret("web", "db"),
    )
    .await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    let text = read(&file);
    let without_key_id: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("keyId:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, &without_key_id).unwrap();
    let out = run(&kms, &["rewrap", "-v", s(&file)], "").await;
    assert_eq!(out.code, EXIT_OK, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("1 rewrapped"), "{}", out.stdout);
    assert!(
        out.stderr.contains("rule 2 (line 8) of"),
        "-v: {}",
        out.stderr
    );
    let item = &keys_of(&kms, &file).await["objects"][0]["items"][0];
    assert_eq!(item["key"], repo.prod.as_str());

    // spec.keyId naming another key than the rule: nothing moves, and it says what to change.
    let named = repo.path("clusters/prod/named.yaml");
    let out = run(
        &kms,
        &["seal", "--key", &repo.staging, "-w", s(&named)],
        &secret("web", "named"),
    )
    .await;
    assert_eq!(out.code, EXIT_OK);
    let before = read(&named);
    let out: Outcome = run(&kms, &["rewrap", s(&named)], "").await;
    assert_eq!(out.code, EXIT_ERROR, "{}", out.stdout);
    assert!(
        out.stdout.contains("but rule 2 (line 8) of"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("set spec.keyId to"), "{}", out.stdout);
    assert_eq!(read(&named), before);

    // keys holds the values to the rule's key too: stale.
    std::fs::write(&file, &without_key_id).unwrap();
    let out = run(&kms, &["keys", "-o", "json", s(&file)], "").await;
    let inventory: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        inventory["keys"][0]["keyArn"],
        repo.staging.as_str(),
        "{inventory:#}"
    );
    assert!(
        inventory["keys"][0]["stale"]
            .as_object()
            .is_some_and(|s| !s.is_empty()),
        "{inventory:#}"
    );
}

#[tokio::test]
async fn a_config_is_found_upwards_within_the_repository_and_a_bad_one_names_its_line() {
    let kms = MemoryKms::new("eu-west-1");
    let repo = Repo::new(&kms);
    // A config above the repository root (.git) is not followed.
    let outer = tempfile::tempdir().unwrap();
    let inner = outer.path().join("repo");
    std::fs::create_dir_all(inner.join(".git")).unwrap();
    std::fs::write(
        outer.path().join(".kmseal.yaml"),
        format!("rules:\n  - key: {}\n", repo.prod),
    )
    .unwrap();
    let out = run(
        &kms,
        &["seal", "-v", "-w", s(&inner.join("x.yaml"))],
        &secret("web", "db"),
    )
    .await;
    assert_eq!(out.code, EXIT_USAGE, "{}", out.stderr);
    assert!(
        out.stderr.contains("no .kmseal.yaml found above it"),
        "{}",
        out.stderr
    );

    std::fs::write(
        repo.path(".kmseal.yaml"),
        "rules:\n  - path: clusters/**\n    key: kmseal-prod\n",
    )
    .unwrap();
    for args in [
        vec!["seal", "-w", "PATH"],
        vec!["validate", "PATH"],
        vec!["rewrap", "PATH"],
    ] {
        let file = repo.path("clusters/prod/a.yaml");
        std::fs::write(&file, "# nothing\n").unwrap();
        let argv: Vec<&str> = args
            .iter()
            .map(|a| if *a == "PATH" { s(&file) } else { a })
            .collect();
        let out = run(&kms, &argv, &secret("web", "db")).await;
        assert_eq!(
            out.code, EXIT_ERROR,
            "{args:?}: {}{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stderr.contains(&format!(
                "{}: line 2: rule 1: key: \"kmseal-prod\" is not a key id",
                repo.config()
            )),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("did you mean alias/kmseal-prod?"));
    }
}

/// The example in docs/cli.md is a config kmseal reads, and picks the rules the text says.
#[test]
fn the_documented_example_reads_as_documented() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md")).unwrap();
    let start = docs
        .find("# .kmseal.yaml at the repository root\n")
        .expect("the example");
    let example = &docs[start..start + docs[start..].find("```").unwrap()];
    let config = kmseal::repo_config::RepoConfig::parse(example).unwrap();
    let rule = |path: &str, ns: &str| config.rule_for(path, Some(ns)).map(|r| r.number);
    assert_eq!(rule("clusters/prod/payments/db.yaml", "payments"), Some(1));
    assert_eq!(rule("clusters/prod/web/db.yaml", "web"), Some(2));
    assert_eq!(rule("clusters/staging/web/db.yaml", "web"), Some(3));
    assert_eq!(
        config.rules[0].rotation,
        Some(kmseal::api::RotationPolicy::Report)
    );
    assert_eq!(
        config.rules[2].scope,
        Some(kmseal::binding::Scope::Namespace)
    );
}
