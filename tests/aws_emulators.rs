//! kmseal against two independent KMS/STS emulators on loopback: moto for the whole flow,
//! LocalStack for what moto fakes (real RSA, key states, multi-region replicas). The real
//! binary is used wherever the behaviour is what a user runs.

mod common;

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;
use kmseal::binding::Scope;
use kmseal::kms::AwsKms;
use kmseal::random::OsRandom;
use kmseal::seal::{self, PlainSecret, Wrapper};
use zeroize::Zeroizing;

const REGION: &str = "us-east-1";

fn plain(namespace: &str, name: &str, items: &[(&str, &[u8])]) -> PlainSecret {
    PlainSecret {
        namespace: Some(namespace.into()),
        name: name.into(),
        data: items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Zeroizing::new(v.to_vec())))
            .collect(),
        ..PlainSecret::default()
    }
}

/// Every item opened on its own, as the CLI does (no key policy: the caller's IAM decides).
async fn open_each(
    kms: &AwsKms,
    es: &kmseal::api::EncryptedSecret,
    namespace: &str,
    name: &str,
) -> BTreeMap<String, Result<kmseal::open::Opened, kmseal::open::OpenError>> {
    let (policy, aliases) = (
        kmseal::policy::KeyPolicy::unrestricted(),
        kmseal::policy::ResolvedAliases::new(),
    );
    let rules = kmseal::open::Rules {
        policy: &policy,
        aliases: &aliases,
    };
    kmseal::open::open_each(kms, es, namespace, name, rules).await
}

/// `kmseal seal` of the one-item Secret prod/db (`k=v`) under `key`.
fn seal_small(emu: &Emulator, key: &str) -> std::process::Output {
    kmseal(true)
        .args(["seal", "--key", key, "--endpoint", &emu.url])
        .args(["--name", "db", "-n", "prod", "--from-literal", "k=v"])
        .output()
        .unwrap()
}

/// Library round trip and context binding, on both emulators.
#[tokio::test]
async fn aws_kms_round_trip_and_context_binding() {
    for emu in [moto(), localstack()].into_iter().flatten() {
        let admin = admin(&emu.url, REGION).await;
        let key = create_symmetric_key(&admin).await;
        let kms = AwsKms::from_sdk_config(sdk_config(&emu.url, REGION).await);
        let secret = plain("prod", "db", &[("password", b"s3cr3t"), ("user", b"app")]);
        let es = seal::seal_secret(
            &Wrapper::Kms {
                kms: &kms,
                key_id: &key,
            },
            &secret,
            Scope::Strict,
            &mut OsRandom,
            1,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: seal: {e}", emu.name));
        let opened = open_each(&kms, &es, "prod", "db").await;
        for (item, expected) in [("password", &b"s3cr3t"[..]), ("user", b"app")] {
            let o = opened[item]
                .as_ref()
                .unwrap_or_else(|e| panic!("{}: {item}: {e}", emu.name));
            assert_eq!(&**o.plaintext, expected, "{}", emu.name);
            assert_eq!(o.key_arn, key, "{}", emu.name);
        }
        // The emulator's KMS enforces the encryption context: a moved value never reaches AES.
        for (namespace, name) in [("dev", "db"), ("prod", "other")] {
            let moved = open_each(&kms, &es, namespace, name).await;
            let err = moved["password"].as_ref().unwrap_err();
            assert_eq!(
                err.category().as_str(),
                "invalid_ciphertext",
                "{}: {err}",
                emu.name
            );
            assert!(err.to_string().contains("re-seal"), "{err}");
        }
    }
}

#[test]
fn cli_seal_verify_unseal_round_trip_on_moto() {
    let Some(emu) = moto() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = rt.block_on(async { create_symmetric_key(&admin(&emu.url, REGION).await).await });
    let manifest = secret_manifest(
        "prod",
        "db",
        &[("password", "hunter2-plaintext"), ("user", "app")],
    );
    let sealed = kmseal(true)
        .args(["seal", "--key", &key, "--endpoint", &emu.url])
        .write_stdin(manifest)
        .output()
        .unwrap();
    assert!(sealed.status.success(), "{}", stderr(&sealed));
    let sealed_text = stdout(&sealed);
    assert!(!sealed_text.contains("hunter2"));
    let verified = kmseal(true)
        .args(["verify", "--endpoint", &emu.url, "--region", REGION])
        .write_stdin(sealed_text.clone())
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}{}",
        stdout(&verified),
        stderr(&verified)
    );
    assert!(stdout(&verified).contains("2 ok, 0 failed"));
    assert!(!stdout(&verified).contains("hunter2"));
    let unsealed = kmseal(true)
        .args(["unseal", "--endpoint", &emu.url, "-o", "json"])
        .write_stdin(sealed_text)
        .output()
        .unwrap();
    assert!(unsealed.status.success(), "{}", stderr(&unsealed));
    let secret: serde_json::Value = serde_json::from_str(&stdout(&unsealed)).unwrap();
    assert_eq!(
        secret["data"]["password"],
        BASE64.encode("hunter2-plaintext")
    );
}

#[test]
fn one_mebibyte_value_through_the_binary_on_moto() {
    let Some(emu) = moto() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = rt.block_on(async { create_symmetric_key(&admin(&emu.url, REGION).await).await });
    let dir = tempfile::tempdir().unwrap();
    let value: Vec<u8> = (0..kmseal::envelope::MAX_PLAINTEXT_LEN)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    let file = temp_file(&dir, "blob.bin", &value);
    let sealed = kmseal(true)
        .args([
            "seal",
            "--key",
            &key,
            "--endpoint",
            &emu.url,
            "--name",
            "big",
            "-n",
            "prod",
        ])
        .args(["--from-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(sealed.status.success(), "{}", stderr(&sealed));
    let unsealed = kmseal(true)
        .args(["unseal", "--endpoint", &emu.url, "-o", "json"])
        .write_stdin(sealed.stdout.clone())
        .output()
        .unwrap();
    assert!(unsealed.status.success(), "{}", stderr(&unsealed));
    let secret: serde_json::Value = serde_json::from_str(&stdout(&unsealed)).unwrap();
    let data = BASE64
        .decode(secret["data"]["blob.bin"].as_str().unwrap())
        .unwrap();
    assert!(data == value, "1 MiB value changed in the round trip");
    // One byte more is refused before any KMS call, with the limit in the message.
    let bigger = temp_file(
        &dir,
        "bigger.bin",
        &vec![0u8; kmseal::envelope::MAX_PLAINTEXT_LEN + 1],
    );
    let refused = kmseal(true)
        .args([
            "seal",
            "--key",
            &key,
            "--endpoint",
            &emu.url,
            "--name",
            "big",
            "-n",
            "prod",
        ])
        .args(["--from-file", bigger.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("over the limit"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn unknown_key_says_check_id_and_region() {
    let Some(emu) = moto() else { return };
    let out = kmseal(true)
        .args([
            "seal",
            "--key",
            "alias/does-not-exist",
            "--endpoint",
            &emu.url,
            "--region",
            REGION,
        ])
        .args(["--name", "a", "-n", "b", "--from-literal", "k=v"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("KMS key alias/does-not-exist was not found in region us-east-1"),
        "{err}"
    );
    assert!(
        err.contains("check the key id or alias and the region"),
        "{err}"
    );
}

/// moto answers a Decrypt whose KeyId does not match the ciphertext with AccessDenied; a
/// header edited to name another key provokes exactly that.
#[test]
fn access_denied_names_action_key_and_fix() {
    let Some(emu) = moto() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (key, other) = rt.block_on(async {
        let admin = admin(&emu.url, REGION).await;
        (
            create_symmetric_key(&admin).await,
            create_symmetric_key(&admin).await,
        )
    });
    let sealed = seal_small(&emu, &key);
    assert!(sealed.status.success(), "{}", stderr(&sealed));
    let text = stdout(&sealed);
    let es: kmseal::api::EncryptedSecret = serde_saphyr::from_str(&text).unwrap();
    let mut bytes = BASE64.decode(&es.spec.encrypted_data["k"]).unwrap();
    // Both ARNs have the same length; swap the key ARN inside the header.
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap();
    bytes[at..at + other.len()].copy_from_slice(other.as_bytes());
    let edited = text.replace(&es.spec.encrypted_data["k"], &BASE64.encode(&bytes));
    let out = kmseal(true)
        .args(["verify", "--endpoint", &emu.url])
        .write_stdin(edited)
        .output()
        .unwrap();
    // Access denied is a failure of where verify runs (exit 4), not proof that the item is
    // bad: real KMS answers a mismatched key with IncorrectKeyException instead (exit 3).
    assert_eq!(out.status.code(), Some(4));
    let report = stdout(&out);
    assert!(report.contains("[access_denied]"), "{report}");
    assert!(
        report.contains(&format!("KMS denied kms:Decrypt on key {other}")),
        "{report}"
    );
    assert!(report.contains("key policy"), "{report}");
}

#[test]
fn disabled_and_pending_deletion_keys_on_localstack() {
    let Some(emu) = localstack() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = rt.block_on(admin(&emu.url, REGION));
    for pending_deletion in [false, true] {
        let key = rt.block_on(create_symmetric_key(&admin));
        let sealed = seal_small(&emu, &key);
        assert!(sealed.status.success(), "{}", stderr(&sealed));
        rt.block_on(async {
            if pending_deletion {
                admin
                    .schedule_key_deletion()
                    .key_id(&key)
                    .pending_window_in_days(7)
                    .send()
                    .await
                    .unwrap();
            } else {
                admin.disable_key().key_id(&key).send().await.unwrap();
            }
        });
        let out = kmseal(true)
            .args(["verify", "--endpoint", &emu.url])
            .write_stdin(sealed.stdout.clone())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
        let report = stdout(&out);
        assert!(report.contains("[key_disabled]"), "{report}");
        assert!(
            report.contains("is disabled or pending deletion"),
            "{report}"
        );
        assert!(
            report.contains(if pending_deletion {
                "pending deletion"
            } else {
                "is disabled."
            }),
            "{report}"
        );
        // Sealing under it fails the same way.
        let out = seal_small(&emu, &key);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("enable-key"), "{}", stderr(&out));
    }
}

/// The everyday KMS CLI workflow: `aws kms encrypt` output is accepted as an item.
#[test]
fn aws_cli_ciphertext_is_accepted_for_its_namespace_name_and_item() {
    let Some(emu) = moto() else { return };
    let Ok(aws) = std::env::var("KMSEAL_TEST_AWS_CLI") else {
        assert!(
            std::env::var_os("KMSEAL_REQUIRE_EMULATORS").is_none(),
            "KMSEAL_TEST_AWS_CLI unset"
        );
        eprintln!("SKIPPED: no AWS CLI (KMSEAL_TEST_AWS_CLI unset)");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = rt.block_on(async { create_symmetric_key(&admin(&emu.url, REGION).await).await });
    let dir = tempfile::tempdir().unwrap();
    let plaintext = temp_file(&dir, "token.txt", b"from-aws-cli");
    // Exactly the command the README shows.
    let encrypted = std::process::Command::new(&aws)
        .args(["kms", "encrypt", "--key-id", &key])
        .arg("--plaintext")
        .arg(format!("fileb://{}", plaintext.display()))
        .args([
            "--encryption-context",
            "kmseal.dev/namespace=prod,kmseal.dev/name=api,kmseal.dev/item=token",
        ])
        .args(["--output", "text", "--query", "CiphertextBlob"])
        .args(["--endpoint-url", &emu.url, "--region", REGION])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(encrypted.status.success(), "{}", stderr(&encrypted));
    let blob = stdout(&encrypted).trim().to_owned();
    let manifest = format!(
        "apiVersion: kmseal.dev/v1alpha1\nkind: EncryptedSecret\nmetadata:\n  name: api\n  namespace: prod\nspec:\n  keyId: {key}\n  encryptedData:\n    token: {blob}\n"
    );
    let out = kmseal(true)
        .args([
            "unseal",
            "--endpoint",
            &emu.url,
            "--region",
            REGION,
            "-o",
            "json",
        ])
        .write_stdin(manifest.clone())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let secret: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(secret["data"]["token"], BASE64.encode("from-aws-cli"));
    // Bound to prod/api/token: the same value under another name or item is refused by KMS.
    for moved in [
        manifest.replace("name: api", "name: web"),
        manifest.replace("token:", "other:"),
    ] {
        let out = kmseal(true)
            .args(["verify", "--endpoint", &emu.url, "--region", REGION])
            .write_stdin(moved)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert!(
            stdout(&out).contains("[invalid_ciphertext]"),
            "{}",
            stdout(&out)
        );
    }
}

/// A new RSA key for encryption (ENCRYPT_DECRYPT) on the emulator at `url`: its ARN.
async fn rsa_key(url: &str, spec: aws_sdk_kms::types::KeySpec) -> String {
    admin(url, REGION)
        .await
        .create_key()
        .key_spec(spec)
        .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap()
}

/// Offline sealing with the public key of a real RSA key; decryption through LocalStack.
#[test]
fn rsa_offline_sealing_round_trip_on_localstack() {
    let Some(emu) = localstack() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = rt.block_on(rsa_key(&emu.url, aws_sdk_kms::types::KeySpec::Rsa3072));
    let pem = kmseal(true)
        .args(["pubkey", "--key", &key, "--endpoint", &emu.url])
        .output()
        .unwrap();
    assert!(pem.status.success(), "{}", stderr(&pem));
    let dir = tempfile::tempdir().unwrap();
    let pem_file = temp_file(&dir, "key.pem", &pem.stdout);
    // No credentials, no endpoint, no region: sealing is fully offline.
    let sealed = kmseal(false)
        .args([
            "seal",
            "--public-key",
            pem_file.to_str().unwrap(),
            "--scope",
            "namespace",
        ])
        .write_stdin(secret_manifest("prod", "db", &[("password", "rsa-sealed")]))
        .output()
        .unwrap();
    assert!(sealed.status.success(), "{}", stderr(&sealed));
    let unsealed = kmseal(true)
        .args(["unseal", "--endpoint", &emu.url, "-o", "json"])
        .write_stdin(sealed.stdout.clone())
        .output()
        .unwrap();
    assert!(unsealed.status.success(), "{}", stderr(&unsealed));
    let secret: serde_json::Value = serde_json::from_str(&stdout(&unsealed)).unwrap();
    assert_eq!(secret["data"]["password"], BASE64.encode("rsa-sealed"));
    // RSA takes no encryption context; the AAD alone keeps the namespace binding.
    let moved = String::from_utf8(sealed.stdout)
        .unwrap()
        .replace("namespace: prod", "namespace: dev");
    let out = kmseal(true)
        .args(["verify", "--endpoint", &emu.url])
        .write_stdin(moved)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout(&out).contains("[tampered]"), "{}", stdout(&out));
}

/// A value sealed in one region decrypts through the multi-region replica in another.
#[test]
fn multi_region_replica_decrypts_locally_on_localstack() {
    let Some(emu) = localstack() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let primary = rt.block_on(async {
        let admin = admin(&emu.url, "us-east-1").await;
        let arn = admin
            .create_key()
            .multi_region(true)
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .arn
            .unwrap();
        admin
            .replicate_key()
            .key_id(&arn)
            .replica_region("us-west-2")
            .send()
            .await
            .unwrap();
        arn
    });
    assert!(
        primary.contains(":us-east-1:") && primary.contains("key/mrk-"),
        "{primary}"
    );
    let sealed = kmseal(true)
        .args([
            "seal",
            "--key",
            &primary,
            "--endpoint",
            &emu.url,
            "--name",
            "db",
            "-n",
            "prod",
            "--from-literal",
            "k=mrk",
        ])
        .output()
        .unwrap();
    assert!(sealed.status.success(), "{}", stderr(&sealed));
    let out = kmseal(true)
        .args(["verify", "--endpoint", &emu.url, "--region", "us-west-2"])
        .write_stdin(sealed.stdout.clone())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let replica = primary.replace(":us-east-1:", ":us-west-2:");
    assert!(
        stdout(&out).contains(&format!("key {replica}")),
        "the replica in us-west-2 answered: {}",
        stdout(&out)
    );
}

/// The IRSA path: credentials from AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE through STS,
/// with no static keys anywhere.
#[test]
fn web_identity_credentials_through_sts_on_moto() {
    let Some(emu) = moto() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = rt.block_on(async { create_symmetric_key(&admin(&emu.url, REGION).await).await });
    let dir = tempfile::tempdir().unwrap();
    let token = service_account_token(&dir);
    let mut seal_cmd = kmseal(false);
    irsa(&mut seal_cmd, &token, &emu.url, REGION);
    let sealed = seal_cmd
        .args([
            "seal",
            "--key",
            &key,
            "--name",
            "db",
            "-n",
            "prod",
            "--from-literal",
            "k=irsa",
        ])
        .output()
        .unwrap();
    assert!(
        sealed.status.success(),
        "web identity did not yield credentials: {}",
        stderr(&sealed)
    );
    let mut unseal_cmd = kmseal(false);
    irsa(&mut unseal_cmd, &token, &emu.url, REGION);
    let out = unseal_cmd
        .args([
            "unseal",
            "-o",
            "json",
            "--role-arn",
            "arn:aws:iam::000000000000:role/cross-account",
        ])
        .write_stdin(sealed.stdout.clone())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "role chaining on top of web identity: {}",
        stderr(&out)
    );
    assert!(stdout(&out).contains(&BASE64.encode("irsa")));
    // Without the token file, and no other source, the message lists the sources to use.
    let out = kmseal(false)
        .env("AWS_REGION", REGION)
        .args([
            "seal",
            "--key",
            &key,
            "--endpoint",
            &emu.url,
            "--name",
            "db",
            "-n",
            "prod",
            "--from-literal",
            "k=v",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no usable AWS credentials"), "{err}");
    assert!(err.contains("AWS_WEB_IDENTITY_TOKEN_FILE"), "{err}");
}

#[test]
fn unreachable_endpoint_says_check_network_and_endpoint() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let out = kmseal(true)
        .env("AWS_MAX_ATTEMPTS", "1")
        .args([
            "seal",
            "--key",
            "alias/x",
            "--region",
            REGION,
            "--endpoint",
            &closed,
        ])
        .args(["--name", "a", "-n", "b", "--from-literal", "k=v"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("could not reach KMS in region us-east-1"),
        "{err}"
    );
    assert!(err.contains("--endpoint"), "{err}");
}

#[tokio::test]
async fn one_data_key_serves_all_items_on_both_emulators() {
    for emu in [moto(), localstack()].into_iter().flatten() {
        let admin = admin(&emu.url, REGION).await;
        let key = create_symmetric_key(&admin).await;
        let kms = AwsKms::from_sdk_config(sdk_config(&emu.url, REGION).await);
        let items: BTreeMap<String, Zeroizing<Vec<u8>>> = (0..5)
            .map(|i| (format!("k{i}"), Zeroizing::new(vec![i as u8; 10])))
            .collect();
        let (arn, sealed) = seal::seal_items(
            &Wrapper::Kms {
                kms: &kms,
                key_id: &key,
            },
            Scope::Namespace,
            Some("prod"),
            "db",
            &items,
            &mut OsRandom,
            1,
        )
        .await
        .unwrap();
        assert_eq!(arn, key);
        let wrapped: std::collections::BTreeSet<Vec<u8>> = sealed
            .values()
            .map(|v| {
                kmseal::envelope::parse(&BASE64.decode(v).unwrap())
                    .unwrap()
                    .header
                    .wrapped_key
            })
            .collect();
        assert_eq!(wrapped.len(), 1, "{}: one data key for all items", emu.name);
    }
}

/// moto even hands out a "public key" for a symmetric key; `pubkey` checks the key spec and
/// usage itself, so no emulator's leniency can produce a file that `seal` would misuse.
#[test]
fn pubkey_refuses_symmetric_keys_on_both_emulators() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for emu in [moto(), localstack()].into_iter().flatten() {
        let key = rt.block_on(async { create_symmetric_key(&admin(&emu.url, REGION).await).await });
        let out = kmseal(true)
            .args(["pubkey", "--key", &key, "--endpoint", &emu.url])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", emu.name);
        assert!(
            stdout(&out).is_empty(),
            "{}: no key file is written",
            emu.name
        );
        let err = stderr(&out);
        assert!(
            err.contains("offline sealing needs an RSA key") || err.contains("cannot be used"),
            "{}: {err}",
            emu.name
        );
    }
}

/// Runs `scripts/local-kms.sh` with `args`; returns its exports and a guard that stops it. One
/// at a time: the script keeps one server (its pid file) and stops the previous one.
fn local_kms(args: &[&str]) -> (Vec<(String, String)>, impl Drop) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = env!("CARGO_MANIFEST_DIR");
    let script = format!("{root}/scripts/local-kms.sh");
    struct Stop(
        String,
        #[allow(dead_code)] std::sync::MutexGuard<'static, ()>,
    );
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("bash")
                .args([self.0.as_str(), "stop"])
                .output();
        }
    }
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    let stop = Stop(script, turn);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exports = String::from_utf8(out.stdout).unwrap();
    let vars: Vec<(String, String)> = exports
        .lines()
        .flat_map(|l| l.trim_start_matches("export ").split(' '))
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    assert!(
        vars.iter().any(|(k, _)| k == "AWS_ENDPOINT_URL"),
        "{exports}"
    );
    (vars, stop)
}

/// `scripts/local-kms.sh`, the README's local recipe: its exports alone let the real CLI seal
/// under `alias/kmseal-local` and verify, and `stop` stops the server.
#[test]
fn the_local_kms_recipe_gives_a_working_environment() {
    // Only where the emulators are installed (the test command installs them).
    let Some(_emu) = moto() else { return };
    let (vars, _stop) = local_kms(&[]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = secret_manifest("prod", "db", &[("password", "s3cr3t")]);
    let secret = temp_file(&dir, "secret.yaml", manifest.as_bytes());
    let cli = || {
        // Nothing but the recipe's exports (they bring the credentials).
        let mut cmd = kmseal(false);
        cmd.envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    };
    let sealed = cli().args(["seal", "-f"]).arg(&secret).output().unwrap();
    assert!(sealed.status.success(), "{}", stderr(&sealed));
    cli()
        .arg("verify")
        .write_stdin(sealed.stdout)
        .assert()
        .code(0)
        .stdout(predicates::str::contains("1 ok, 0 failed"));
}

/// `scripts/local-kms.sh --localstack`: the docs' offline sealing, tried locally. Its RSA key's
/// public key seals with no KMS call, and what it sealed opens through its KMS.
#[test]
fn the_local_kms_recipe_with_localstack_seals_offline() {
    let Some(_emu) = localstack() else { return };
    let (vars, _stop) = local_kms(&["--localstack"]);
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("local.pem");
    let cli = || {
        let mut cmd = kmseal(false);
        cmd.envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    };
    cli()
        .args(["pubkey", "--key", "alias/kmseal-local-rsa", "--out"])
        .arg(&pem)
        .assert()
        .code(0);
    // Sealing offline needs nothing but the key file: no endpoint, no credentials.
    let manifest = secret_manifest("prod", "db", &[("password", "s3cr3t")]);
    let sealed = kmseal(false)
        .args(["seal", "--public-key"])
        .arg(&pem)
        .write_stdin(manifest)
        .output()
        .unwrap();
    assert!(sealed.status.success(), "{}", stderr(&sealed));
    cli()
        .arg("verify")
        .write_stdin(sealed.stdout)
        .assert()
        .code(0)
        .stdout(predicates::str::contains("rsa-oaep-sha256"))
        .stdout(predicates::str::contains("1 ok, 0 failed"));
}

async fn re_encrypt(
    kms: &AwsKms,
    ciphertext: &[u8],
    source: &str,
    destination: &str,
    source_context: &kmseal::binding::EncryptionContext,
    destination_context: &kmseal::binding::EncryptionContext,
) -> Result<kmseal::kms::ReEncrypted, kmseal::kms::KmsError> {
    use kmseal::kms::Kms;
    kms.re_encrypt(kmseal::kms::ReEncryptRequest {
        ciphertext,
        source_key_id: source,
        source_algorithm: kmseal::envelope::WrapAlgorithm::KmsSymmetric,
        source_context,
        destination_key_id: destination,
        destination_context,
        principal: kmseal::kms::Principal::CONTROLLER,
    })
    .await
}

/// `ReEncrypt`, `DescribeKey`'s rotation facts and `ListKeyRotations` through `AwsKms`, as each
/// emulator supports them: both re-encrypt (LocalStack only with the source key named, which
/// `AwsKms` always does); moto lists rotations with their dates; LocalStack reports the current
/// key material instead and has no `ListKeyRotations`.
#[tokio::test]
async fn re_encrypt_and_rotation_facts_on_both_emulators() {
    use kmseal::envelope::WrapAlgorithm;
    use kmseal::kms::{DecryptRequest, Kms, KmsErrorKind};
    for emu in [moto(), localstack()].into_iter().flatten() {
        let admin = admin(&emu.url, REGION).await;
        let (first, second) = (
            create_symmetric_key(&admin).await,
            create_symmetric_key(&admin).await,
        );
        let kms = AwsKms::from_sdk_config(sdk_config(&emu.url, REGION).await);
        let context = kmseal::binding::EncryptionContext::from([(
            "kmseal.dev/namespace".to_owned(),
            "prod".to_owned(),
        )]);
        let other = kmseal::binding::EncryptionContext::from([(
            "kmseal.dev/namespace".to_owned(),
            "dev".to_owned(),
        )]);
        let generated = kms.generate_data_key(&first, &context).await.unwrap();
        let blob = generated.wrapped.clone();
        for destination in [&second, &first] {
            let moved = re_encrypt(&kms, &blob, &first, destination, &context, &context)
                .await
                .unwrap();
            assert_eq!(&moved.key_arn, destination, "{}", emu.name);
            let opened = kms
                .decrypt(DecryptRequest::new(
                    Some(destination),
                    &moved.wrapped,
                    WrapAlgorithm::KmsSymmetric,
                    &context,
                    "prod",
                ))
                .await
                .unwrap();
            assert_eq!(
                &opened.plaintext[..],
                &generated.plaintext.expose()[..],
                "{}",
                emu.name
            );
        }
        let err = re_encrypt(&kms, &blob, &first, &second, &other, &context)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind,
            KmsErrorKind::InvalidCiphertext,
            "{}: {err}",
            emu.name
        );

        let before = kms.describe_key(&first).await.unwrap();
        assert_eq!(before.state, "Enabled");
        admin
            .rotate_key_on_demand()
            .key_id(&first)
            .send()
            .await
            .unwrap();
        let after = kms.describe_key(&first).await.unwrap();
        match emu.name {
            "moto" => {
                let rotated = kms.last_rotation(&first).await.unwrap();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                assert!(
                    rotated.is_some_and(|t| t.abs_diff(now) < 300),
                    "{rotated:?}"
                );
                assert_eq!(kms.last_rotation(&second).await.unwrap(), None);
            }
            _ => {
                assert!(after.current_material_id.is_some());
                assert_ne!(after.current_material_id, before.current_material_id);
                assert!(kms.last_rotation(&first).await.is_err());
            }
        }

        admin
            .schedule_key_deletion()
            // moto fails (HTTP 500) on a key ARN here.
            .key_id(second.rsplit('/').next().unwrap())
            .pending_window_in_days(7)
            .send()
            .await
            .unwrap();
        let pending = kms.describe_key(&second).await.unwrap();
        assert_eq!(pending.state, "PendingDeletion", "{}", emu.name);
        assert!(pending.deletion_date.is_some(), "{}", emu.name);
    }
}

/// `kmseal rewrap` through the binary on moto: an alias moved to another key, then that key's
/// material rotated (moto gives no material ids, so the wrap time is compared with
/// `ListKeyRotations`' date).
#[test]
fn rewrap_follows_an_alias_and_a_rotation_on_moto() {
    let Some(emu) = moto() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = rt.block_on(admin(&emu.url, REGION));
    let (first, second) = rt.block_on(async {
        (
            create_symmetric_key(&admin).await,
            create_symmetric_key(&admin).await,
        )
    });
    let bare = |arn: &str| arn.rsplit('/').next().unwrap().to_owned();
    let alias = format!("alias/rewrap-{}", bare(&first));
    rt.block_on(
        admin
            .create_alias()
            .alias_name(&alias)
            .target_key_id(bare(&first))
            .send(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sealed = kmseal(true)
        .args([
            "seal",
            "--key",
            &alias,
            "--endpoint",
            &emu.url,
            "--region",
            REGION,
        ])
        .write_stdin(secret_manifest(
            "prod",
            "db",
            &[("password", "hunter2-plaintext")],
        ))
        .output()
        .unwrap();
    assert!(sealed.status.success(), "{}", stderr(&sealed));
    let path = temp_file(&dir, "db.yaml", &sealed.stdout);
    let file = path.to_str().unwrap();
    let rewrap = |check: bool| {
        let mut cmd = kmseal(true);
        cmd.args(["rewrap", "--endpoint", &emu.url, "--region", REGION, file]);
        if check {
            cmd.arg("--check");
        }
        cmd.output().unwrap()
    };
    assert_eq!(
        rewrap(true).status.code(),
        Some(0),
        "{}",
        stdout(&rewrap(true))
    );

    rt.block_on(
        admin
            .update_alias()
            .alias_name(&alias)
            .target_key_id(bare(&second))
            .send(),
    )
    .unwrap();
    let check = rewrap(true);
    assert_eq!(
        check.status.code(),
        Some(3),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(
        stdout(&check).contains("[KeyChanged]"),
        "{}",
        stdout(&check)
    );
    let done = rewrap(false);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}{}",
        stdout(&done),
        stderr(&done)
    );
    let verified = kmseal(true)
        .args([
            "verify",
            "--endpoint",
            &emu.url,
            "--region",
            REGION,
            "-f",
            file,
        ])
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", stdout(&verified));
    assert!(
        stdout(&verified).contains(&format!("key {second}")),
        "{}",
        stdout(&verified)
    );

    // Rotation dates have one-second resolution: rotate after the wrap's second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rt.block_on(admin.rotate_key_on_demand().key_id(&second).send())
        .unwrap();
    let check = rewrap(true);
    assert_eq!(check.status.code(), Some(3), "{}", stdout(&check));
    assert!(
        stdout(&check).contains("[MaterialRotated]"),
        "{}",
        stdout(&check)
    );
    assert_eq!(rewrap(false).status.code(), Some(0));
    assert_eq!(
        rewrap(true).status.code(),
        Some(0),
        "{}",
        stdout(&rewrap(true))
    );
}

/// `pubkey` reads the key spec from `KeySpec`, or from the older `CustomerMasterKeySpec` where
/// that is all an emulator (moto) answers: an RSA key gives a key file on both emulators.
/// (moto's public key does not match its private key, so only LocalStack can then decrypt
/// what was sealed offline: see `rsa_offline_sealing_round_trip_on_localstack`.)
#[test]
fn pubkey_reads_the_key_spec_either_way_on_both_emulators() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for emu in [moto(), localstack()].into_iter().flatten() {
        let key = rt.block_on(rsa_key(&emu.url, aws_sdk_kms::types::KeySpec::Rsa2048));
        let out = kmseal(true)
            .args(["pubkey", "--key", &key, "--endpoint", &emu.url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", emu.name, stderr(&out));
        let pem = stdout(&out);
        assert!(pem.contains("# key-spec: RSA_2048"), "{}: {pem}", emu.name);
        assert!(pem.contains(&key), "{}: {pem}", emu.name);
    }
}

/// Per-tenant identity's STS call (`AssumeRoleWithWebIdentity`, unsigned: the token is the
/// credential) on moto: credentials for the role, with their expiry, and a key decrypted with
/// them; an unreachable STS is a transient failure, not a denial.
#[tokio::test]
async fn a_tenants_role_is_assumed_at_sts_on_moto() {
    use kmseal::controller::tenant_identity::{AssumeRequest, AwsSts, Sts, StsFailure};
    let Some(emu) = moto() else { return };
    let sts = AwsSts::new(&kmseal::kms::AwsSettings {
        region: Some(REGION.into()),
        endpoint: Some(emu.url.clone()),
        ..Default::default()
    });
    assert_eq!(sts.endpoint(), emu.url);
    let token =
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dGVhbS1hOmFwcCJ9.c2ln";
    let issued = sts
        .assume_role_with_web_identity(AssumeRequest {
            role_arn: "arn:aws:iam::000000000000:role/team-a-decrypt",
            session_name: "kmseal@team-a.db",
            token,
            duration_seconds: 3600,
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let now = kmseal::time::unix_now();
    assert!(issued.expires > now + 600, "{} vs {now}", issued.expires);
    assert!(!issued.credentials.access_key_id().is_empty());

    // The KMS stack with those credentials decrypts (moto checks the context, not the role).
    let key = create_symmetric_key(&admin(&emu.url, REGION).await).await;
    let sdk = common::sdk_config(&emu.url, REGION).await;
    let kms = kmseal::kms::AwsKms::from_sdk_config(sdk);
    use kmseal::kms::Kms;
    let context = kmseal::binding::EncryptionContext::from([("a".to_owned(), "b".to_owned())]);
    let generated = kms.generate_data_key(&key, &context).await.unwrap();
    let principal =
        kmseal::kms::Principal::Tenant(std::sync::Arc::new(kmseal::kms::TenantSession {
            identity: kmseal::identity::TenantIdentity {
                namespace: "team-a".into(),
                service_account: "app".into(),
                role_arn: "arn:aws:iam::000000000000:role/team-a-decrypt".into(),
                audience: "sts.amazonaws.com".into(),
                sts_endpoint: sts.endpoint(),
            },
            credentials: issued.credentials,
            expires: issued.expires,
        }));
    let decrypted = kms
        .decrypt(kmseal::kms::DecryptRequest {
            principal: &principal,
            ..kmseal::kms::DecryptRequest::new(
                Some(&key),
                &generated.wrapped,
                kmseal::envelope::WrapAlgorithm::KmsSymmetric,
                &context,
                "team-a",
            )
        })
        .await
        .unwrap();
    assert_eq!(&decrypted.plaintext[..], generated.plaintext.expose());

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = AwsSts::new(&kmseal::kms::AwsSettings {
        region: Some(REGION.into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    });
    let failed = unreachable
        .assume_role_with_web_identity(AssumeRequest {
            role_arn: "arn:aws:iam::000000000000:role/team-a-decrypt",
            session_name: "kmseal@team-a.db",
            token,
            duration_seconds: 3600,
        })
        .await;
    assert!(
        matches!(
            failed,
            Err(StsFailure::Unavailable {
                throttled: false,
                ..
            })
        ),
        "{:?}",
        failed.err()
    );
}
