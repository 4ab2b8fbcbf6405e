//! `kmseal rewrap`: sealed files follow key changes and key rotation through KMS `ReEncrypt`,
//! in place, without a single `Decrypt`. In-process with the in-memory KMS (which reports key
//! material ids, as AWS does and neither emulator does), then through the binary on moto.

mod common;

use std::sync::atomic::Ordering;

use common::{Outcome, run, temp_file};
use kmseal::cli::{EXIT_ERROR, EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED, EXIT_VERIFY_UNCHECKED};
use kmseal::kms::MemoryKms;

const PLAINTEXT: &str = "hunter2-plaintext";

fn secret(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\nstringData:\n  password: {PLAINTEXT}\n  user: admin\n"
    )
}

async fn seal(kms: &MemoryKms, key: &str, namespace: &str, name: &str, format: &str) -> String {
    let out = run(
        kms,
        &["seal", "--key", key, "-o", format],
        &secret(namespace, name),
    )
    .await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    out.stdout
}

async fn rewrap(kms: &MemoryKms, args: &[&str]) -> Outcome {
    let mut argv = vec!["rewrap"];
    argv.extend_from_slice(args);
    let out = run(kms, &argv, "").await;
    assert!(!out.stdout.contains(PLAINTEXT) && !out.stderr.contains(PLAINTEXT));
    out
}

/// The lines of `before` and `after` that differ, in pairs.
fn changed_lines(before: &str, after: &str) -> Vec<(String, String)> {
    assert_eq!(before.lines().count(), after.lines().count(), "{after}");
    before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

/// The value strings of a line `key: value` or `"key": "value",`.
fn value_of(line: &str) -> &str {
    line.rsplit(':')
        .next()
        .unwrap()
        .trim()
        .trim_end_matches(',')
        .trim_matches('"')
}

/// `sealed`'s two values verify under `key` and unseal to the test's Secret.
async fn opens_under(kms: &MemoryKms, sealed: &str, key: &str) {
    let verified = run(kms, &["verify"], sealed).await;
    assert_eq!(verified.code, EXIT_OK, "{}", verified.stdout);
    assert_eq!(
        verified.stdout.matches(&format!("key {key}")).count(),
        2,
        "{}",
        verified.stdout
    );
    let unsealed = run(kms, &["unseal"], sealed).await;
    assert!(
        unsealed
            .stdout
            .contains("password: aHVudGVyMi1wbGFpbnRleHQ="),
        "{}",
        unsealed.stdout
    );
}

#[tokio::test]
async fn an_alias_moved_to_another_key_is_followed_in_place_without_decrypt() {
    let kms = MemoryKms::new("eu-west-1");
    let (old, new) = (kms.create_key(), kms.create_key());
    kms.create_alias("alias/app", &old);
    let dir = tempfile::tempdir().unwrap();
    // A YAML file a person edited (a comment, fields in their own order), and a JSON one.
    let yaml = format!(
        "# database credentials, sealed for prod\n{}",
        seal(&kms, "alias/app", "prod", "db", "yaml").await
    );
    let yaml_path = temp_file(&dir, "db.yaml", yaml.as_bytes());
    let json = seal(&kms, "alias/app", "prod", "api", "json").await;
    let json_path = temp_file(&dir, "api.json", json.as_bytes());
    let root = dir.path().to_str().unwrap();

    let current = rewrap(&kms, &["--check", root]).await;
    assert_eq!(current.code, EXIT_OK, "{}", current.stdout);
    assert!(
        current.stdout.contains("4 value(s): 0 stale"),
        "{}",
        current.stdout
    );

    kms.create_alias("alias/app", &new);
    let stale = rewrap(&kms, &["--check", root]).await;
    assert_eq!(stale.code, EXIT_VERIFY_FAILED, "{}", stale.stdout);
    assert_eq!(stale.stdout.matches("STALE").count(), 4, "{}", stale.stdout);
    assert!(
        stale.stdout.contains("[KeyChanged]: under "),
        "{}",
        stale.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&yaml_path).unwrap(),
        yaml,
        "--check changes nothing"
    );

    let decrypts = kms.calls.decrypt.load(Ordering::Relaxed);
    let done = rewrap(&kms, &[root]).await;
    assert_eq!(done.code, EXIT_OK, "{}{}", done.stdout, done.stderr);
    assert!(
        done.stdout.contains("4 value(s): 4 stale, 4 rewrapped"),
        "{}",
        done.stdout
    );
    // One ReEncrypt per data key (one per object), never a Decrypt.
    assert_eq!(kms.calls.re_encrypt.load(Ordering::Relaxed), 2);
    assert_eq!(kms.calls.decrypt.load(Ordering::Relaxed), decrypts);

    // Only the value strings changed.
    for (path, before) in [(&yaml_path, &yaml), (&json_path, &json)] {
        let after = std::fs::read_to_string(path).unwrap();
        let changed = changed_lines(before, &after);
        assert_eq!(changed.len(), 2, "{after}");
        for (a, b) in changed {
            let (old_value, new_value) = (value_of(&a), value_of(&b));
            assert_eq!(a.replace(old_value, new_value), b);
        }
    }
    assert!(
        std::fs::read_to_string(&yaml_path)
            .unwrap()
            .starts_with("# database credentials")
    );

    // Under the new key, and the same Secret comes out.
    let sealed = std::fs::read_to_string(&yaml_path).unwrap();
    opens_under(&kms, &sealed, &new).await;

    // Idempotent: nothing left to do.
    let again = rewrap(&kms, &[root]).await;
    assert_eq!(again.code, EXIT_OK);
    assert!(
        again.stdout.contains("0 stale, 0 rewrapped"),
        "{}",
        again.stdout
    );
    assert_eq!(std::fs::read_to_string(&yaml_path).unwrap(), sealed);
    assert_eq!(rewrap(&kms, &["--check", root]).await.code, EXIT_OK);
}

#[tokio::test]
async fn rotated_key_material_is_refreshed_on_the_same_key() {
    let kms = MemoryKms::new("eu-west-1");
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(
        &dir,
        "db.yaml",
        seal(&kms, &key, "prod", "db", "yaml").await.as_bytes(),
    );
    let file = path.to_str().unwrap();
    kms.rotate_key(&key, 1_764_000_001);

    let stale = rewrap(&kms, &["--check", file]).await;
    assert_eq!(stale.code, EXIT_VERIFY_FAILED);
    assert_eq!(
        stale.stdout.matches("[MaterialRotated]").count(),
        2,
        "{}",
        stale.stdout
    );

    let done = rewrap(&kms, &[file]).await;
    assert_eq!(done.code, EXIT_OK, "{}", done.stdout);
    assert_eq!(rewrap(&kms, &["--check", file]).await.code, EXIT_OK);
    let verified = run(&kms, &["verify", "-f", file], "").await;
    assert_eq!(verified.code, EXIT_OK, "{}", verified.stdout);
}

#[tokio::test]
async fn what_rewrap_cannot_fix_is_reported_and_left_alone() {
    let kms = MemoryKms::new("eu-west-1");
    let (old, new) = (kms.create_key(), kms.create_key());
    let dir = tempfile::tempdir().unwrap();

    // A key pending deletion, with nothing to move its values to: a risk, and a failed gate.
    let doomed = temp_file(
        &dir,
        "doomed.yaml",
        seal(&kms, &old, "prod", "db", "yaml").await.as_bytes(),
    );
    kms.schedule_deletion(&old, 1_764_000_000 + 5 * 86_400);
    let out = rewrap(&kms, &["--check", doomed.to_str().unwrap()]).await;
    assert_eq!(out.code, EXIT_VERIFY_FAILED, "{}", out.stdout);
    assert!(out.stdout.contains("RISK"), "{}", out.stdout);
    assert!(
        out.stdout.contains("pending deletion in 5 day(s)"),
        "{}",
        out.stdout
    );

    // Moving to a key needs ReEncryptTo on it: denied, the run is blocked (exit 4, as verify's
    // environment failures) and the file is untouched.
    let denied_dir = tempfile::tempdir().unwrap();
    let sealed = seal(&kms, &new, "prod", "db", "yaml").await;
    let moving = sealed.replace(&format!("keyId: {new}"), &format!("keyId: {old}"));
    let path = temp_file(&denied_dir, "db.yaml", moving.as_bytes());
    kms.deny("kms:ReEncryptTo", &old);
    let out = rewrap(&kms, &[path.to_str().unwrap()]).await;
    assert_eq!(out.code, EXIT_VERIFY_UNCHECKED, "{}", out.stdout);
    assert_eq!(out.stdout.matches("FAILED").count(), 2, "{}", out.stdout);
    assert!(out.stdout.contains("[access_denied]"), "{}", out.stdout);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), moving);

    // A manifest without a namespace: its values are bound to one; -n says which.
    let unbound = sealed
        .lines()
        .filter(|l| !l.trim_start().starts_with("namespace:"))
        .collect::<Vec<_>>()
        .join("\n");
    let path = temp_file(&denied_dir, "unbound.yaml", unbound.as_bytes());
    let out = rewrap(&kms, &["--check", "--key", &old, path.to_str().unwrap()]).await;
    assert_eq!(out.code, EXIT_ERROR, "{}", out.stdout);
    assert!(out.stdout.contains("pass -n/--namespace"), "{}", out.stdout);

    // Plain `aws kms encrypt` items are named and left alone.
    let plain = sealed.replace(
        "    password: ",
        "    token: AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8w\n    password: ",
    );
    let path = temp_file(&denied_dir, "plain.yaml", plain.as_bytes());
    let out = rewrap(&kms, &["--check", path.to_str().unwrap()]).await;
    assert!(
        out.stdout.contains("db token: plain KMS ciphertext"),
        "{}",
        out.stdout
    );

    // Nothing named, or stdin: usage errors.
    assert_eq!(rewrap(&kms, &[]).await.code, EXIT_USAGE);
    assert_eq!(rewrap(&kms, &["-"]).await.code, EXIT_USAGE);
}

#[tokio::test]
async fn the_inventory_shows_keys_materials_and_stale_values() {
    let kms = MemoryKms::new("eu-west-1");
    let (first, second) = (kms.create_key(), kms.create_key());
    kms.create_alias("alias/app", &first);
    let dir = tempfile::tempdir().unwrap();
    temp_file(
        &dir,
        "a.yaml",
        seal(&kms, "alias/app", "prod", "a", "yaml")
            .await
            .as_bytes(),
    );
    temp_file(
        &dir,
        "b.yaml",
        seal(&kms, &first, "prod", "b", "yaml").await.as_bytes(),
    );
    temp_file(
        &dir,
        "c.json",
        seal(&kms, &second, "dev", "c", "json").await.as_bytes(),
    );
    temp_file(&dir, "other.yaml", b"kind: ConfigMap\napiVersion: v1\n");
    kms.create_alias("alias/app", &second);
    kms.schedule_deletion(&second, 1_900_000_000);
    let root = dir.path().to_str().unwrap();

    let out = run(&kms, &["keys", "-o", "json", root], "").await;
    assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    let inventory: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(inventory["encryptedSecrets"], 3);
    let keys = inventory["keys"].as_array().unwrap();
    let of = |arn: &str| keys.iter().find(|k| k["keyArn"] == arn).unwrap().clone();
    let (a, b) = (of(&first), of(&second));
    assert_eq!(
        (a["objects"].clone(), a["values"].clone()),
        (2.into(), 4.into())
    );
    assert_eq!(a["state"], "Enabled");
    // Only the object sealed under the alias should move: the other names its key.
    assert_eq!(a["stale"], serde_json::json!({"KeyChanged": 2}));
    assert_eq!(a["formats"], serde_json::json!({"v2": 4}));
    assert_eq!(a["materialIds"].as_array().unwrap().len(), 1);
    assert_eq!(b["state"], "PendingDeletion");
    assert_eq!(b["deletionDate"], "2030-03-17T17:46:40Z");
    assert_eq!(b["stale"], serde_json::json!({}));

    let text = run(&kms, &["keys", root], "").await;
    assert!(
        text.stdout
            .contains("stale: 2 KeyChanged (kmseal rewrap moves them)"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("2 key(s), 3 EncryptedSecret(s) in 3 file(s)"),
        "{}",
        text.stdout
    );

    // Offline: what the files say, no KMS call.
    let calls = kms.total_calls();
    let offline = run(&kms, &["keys", "--offline", "-o", "json", root], "").await;
    assert_eq!(offline.code, EXIT_OK);
    assert_eq!(kms.total_calls(), calls);
    let inventory: serde_json::Value = serde_json::from_str(&offline.stdout).unwrap();
    assert!(inventory["keys"][0].get("state").is_none());
    assert!(inventory["keys"][0].get("stale").is_none());
    assert_eq!(inventory["keys"][0]["values"], 4);
}

/// A v1 value (kmseal 0.1) whose key changed: its wrapping is authenticated, so ReEncrypt
/// cannot move it; rewrap opens it (kms:Decrypt) and seals it again as v2 under the new key
/// (kms:GenerateDataKey), says so, and the same Secret comes out. Without decrypt permission
/// it fails and names both permissions.
#[tokio::test]
async fn a_stale_v1_value_is_sealed_again_as_v2_and_says_what_it_used() {
    use base64::Engine;
    let kms = MemoryKms::new("eu-west-1");
    let (old, new) = (kms.create_key(), kms.create_key());
    kms.create_alias("alias/app", &old);
    let sealed = seal(&kms, "alias/app", "prod", "db", "yaml").await;
    // Replace the password's value with the same plaintext sealed as v1.
    let v1 = common::sealed_v1(
        &kms,
        &old,
        "prod",
        "db",
        &[("password", PLAINTEXT.as_bytes())],
    )
    .await
    .remove(0)
    .1;
    let v1 = base64::engine::general_purpose::STANDARD.encode(v1);
    let line = sealed
        .lines()
        .find(|l| l.trim_start().starts_with("password:"))
        .unwrap();
    let file = sealed.replace(value_of(line), &v1);
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "db.yaml", file.as_bytes());
    let root = dir.path().to_str().unwrap();
    kms.create_alias("alias/app", &new);

    let check = rewrap(&kms, &["--check", root]).await;
    assert_eq!(check.code, EXIT_VERIFY_FAILED, "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains("it is envelope v1, which rewrap seals again as v2"),
        "{}",
        check.stdout
    );

    // Without kms:Decrypt on the old key: the v2 value moves, the v1 value fails, naming both
    // permissions; the file keeps the v1 value.
    kms.deny("kms:Decrypt", &old);
    let denied = rewrap(&kms, &[root]).await;
    assert_eq!(denied.code, EXIT_VERIFY_UNCHECKED, "{}", denied.stdout);
    assert!(
        denied.stdout.contains("envelope v1")
            && denied.stdout.contains("kms:Decrypt")
            && denied.stdout.contains("kms:GenerateDataKey"),
        "{}",
        denied.stdout
    );
    assert!(std::fs::read_to_string(&path).unwrap().contains(&v1));

    kms.allow("kms:Decrypt", &old);
    let before = std::fs::read_to_string(&path).unwrap();
    let done = rewrap(&kms, &[root]).await;
    assert_eq!(done.code, EXIT_OK, "{}{}", done.stdout, done.stderr);
    assert!(
        done.stdout.contains("upgraded ")
            && done.stdout.contains("envelope v1 sealed again as v2")
            && done.stdout.contains("kms:Decrypt and kms:GenerateDataKey"),
        "{}",
        done.stdout
    );
    let after = std::fs::read_to_string(&path).unwrap();
    let changed = changed_lines(&before, &after);
    assert_eq!(changed.len(), 1, "only the v1 value's line: {after}");
    assert!(!after.contains(&v1));
    // Now all v2 under the new key, and the same Secret comes out.
    opens_under(&kms, &after, &new).await;
    let again = rewrap(&kms, &["--check", root]).await;
    assert_eq!(again.code, EXIT_OK, "{}", again.stdout);
}
