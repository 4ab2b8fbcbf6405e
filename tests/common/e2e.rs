//! The end-to-end checks, written once against "a cluster + a KMS endpoint": in kind they
//! drive the deployed chart (`kind/e2e.sh` runs `cargo run --example e2e`); on every CI run
//! `tests/e2e.rs` drives the real `kmseal-controller` binary over the fake API server and
//! moto. They act as a person would (kubectl create, edit, delete) and watch what the
//! controller does.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kmseal::api::EncryptedSecret;
use kmseal::binding::Scope;
use kmseal::kms::AwsKms;
use kmseal::random::OsRandom;
use kmseal::seal::{self, PlainSecret, Wrapper};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use zeroize::Zeroizing;

/// Where the checks run.
pub struct Target {
    /// A client with a person's rights in `namespace`.
    pub client: kube::Client,
    /// The KMS the values are sealed with (the controller's, reached from here).
    pub kms: AwsKms,
    pub namespace: String,
    /// A key the controller may use for `namespace`.
    pub allowed_key: String,
    /// A key it may not use there.
    pub other_key: String,
    /// Whether Kubernetes' garbage collector runs (a real cluster; not the fake).
    pub garbage_collection: bool,
    /// How long to wait for the controller each time.
    pub timeout: Duration,
    /// For the key-rotation check; skipped without.
    pub rotation: Option<RotationTarget>,
}

/// What the key-rotation check needs: an alias the namespace may use (the key policy names
/// it), pointing to `allowed_key`, and a key to move it to.
pub struct RotationTarget {
    /// `alias/...`.
    pub alias: String,
    pub next_key: String,
    /// KMS with the right to move the alias.
    pub admin: aws_sdk_kms::Client,
}

type Checked = Result<(), String>;
type Check = fn(&Target) -> futures::future::BoxFuture<'_, Checked>;

/// Runs every check, in order (later ones build on earlier objects); stops at the first
/// failure, named.
pub async fn run_all(t: &Target) -> Checked {
    let checks: [(&str, Check); 8] = [
        ("the Secret appears, whole", |t| Box::pin(secret_appears(t))),
        ("a changed Secret is repaired", |t| {
            Box::pin(drift_is_repaired(t))
        }),
        ("a tampered value keeps the Secret", |t| {
            Box::pin(tampered_value_keeps_the_secret(t))
        }),
        ("a foreign Secret is refused", |t| {
            Box::pin(foreign_secret_is_refused(t))
        }),
        ("an annotated Secret is adopted, replaced whole", |t| {
            Box::pin(annotated_secret_is_adopted(t))
        }),
        ("a key the namespace may not use is refused", |t| {
            Box::pin(other_key_is_refused(t))
        }),
        ("a moved alias re-wraps the values, not the Secret", |t| {
            Box::pin(rotation_after_the_alias_moves(t))
        }),
        ("deleting the EncryptedSecret deletes the Secret", |t| {
            Box::pin(deletion_collects_the_secret(t))
        }),
    ];
    for (name, check) in checks {
        if name.starts_with("deleting") && !t.garbage_collection {
            println!("skipped: {name} (no garbage collector here)");
            continue;
        }
        if name.starts_with("a moved alias") && t.rotation.is_none() {
            println!("skipped: {name} (no alias to move)");
            continue;
        }
        check(t).await.map_err(|e| format!("{name}: {e}"))?;
        println!("ok: {name}");
    }
    Ok(())
}

const NAME: &str = "e2e-db";
const LABEL: (&str, &str) = ("app.kubernetes.io/part-of", "e2e");

fn values() -> BTreeMap<String, Zeroizing<Vec<u8>>> {
    BTreeMap::from([
        ("username".to_owned(), Zeroizing::new(b"app".to_vec())),
        (
            "password".to_owned(),
            Zeroizing::new(b"e2e-not-a-real-secret".to_vec()),
        ),
    ])
}

async fn sealed(t: &Target, name: &str, key: &str) -> Result<EncryptedSecret, String> {
    let secret = PlainSecret {
        namespace: Some(t.namespace.clone()),
        name: name.to_owned(),
        type_: Some("kubernetes.io/basic-auth".to_owned()),
        labels: BTreeMap::from([(LABEL.0.to_owned(), LABEL.1.to_owned())]),
        data: values(),
        ..PlainSecret::default()
    };
    let wrapper = Wrapper::Kms {
        kms: &t.kms,
        key_id: key,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    seal::seal_secret(&wrapper, &secret, Scope::Strict, &mut OsRandom, now)
        .await
        .map_err(|e| format!("sealing: {e}"))
}

fn encrypted(t: &Target) -> Api<EncryptedSecret> {
    Api::namespaced(t.client.clone(), &t.namespace)
}

fn secrets(t: &Target) -> Api<Secret> {
    Api::namespaced(t.client.clone(), &t.namespace)
}

/// Polls `probe` until it gives `Some`, or fails after the target's timeout with `waiting`.
async fn until<T, F, Fut>(t: &Target, waiting: &str, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = tokio::time::Instant::now() + t.timeout;
    loop {
        if let Some(found) = probe().await? {
            return Ok(found);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("no {waiting} within {:?}", t.timeout));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn secret(t: &Target, name: &str) -> Result<Option<Secret>, String> {
    secrets(t).get_opt(name).await.map_err(|e| e.to_string())
}

/// The Ready condition once it has `status`: (reason, message).
async fn ready_is(t: &Target, name: &str, status: &str) -> Result<(String, String), String> {
    until(t, &format!("Ready={status} on {name}"), || async {
        let es = encrypted(t).get(name).await.map_err(|e| e.to_string())?;
        Ok(es
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.status == status && es.metadata.generation == c.observed_generation)
            .map(|c| (c.reason, c.message)))
    })
    .await
}

fn data_is_the_values(secret: &Secret) -> bool {
    let want: BTreeMap<String, ByteString> = values()
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.to_vec())))
        .collect();
    secret.data.as_ref() == Some(&want)
}

async fn secret_appears(t: &Target) -> Checked {
    let es = sealed(t, NAME, &t.allowed_key).await?;
    let created = encrypted(t)
        .create(&PostParams::default(), &es)
        .await
        .map_err(|e| format!("creating the EncryptedSecret: {e}"))?;
    let secret = until(t, "Secret with the values", || async {
        Ok(secret(t, NAME).await?.filter(data_is_the_values))
    })
    .await?;
    if secret.type_.as_deref() != Some("kubernetes.io/basic-auth") {
        return Err(format!("type {:?}", secret.type_));
    }
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    if labels.get(LABEL.0).map(String::as_str) != Some(LABEL.1) {
        return Err(format!("labels {labels:?}"));
    }
    let owner = secret
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|o| o.kind == "EncryptedSecret")
        .ok_or("no owner reference")?;
    if owner.name != NAME
        || Some(&owner.uid) != created.metadata.uid.as_ref()
        || owner.controller != Some(true)
    {
        return Err(format!("owner reference {owner:?}"));
    }
    ready_is(t, NAME, "True").await?;
    Ok(())
}

async fn drift_is_repaired(t: &Target) -> Checked {
    let mut changed = secret(t, NAME).await?.ok_or("no Secret")?;
    changed
        .data
        .get_or_insert_default()
        .insert("password".into(), ByteString(b"edited by hand".to_vec()));
    secrets(t)
        .replace(NAME, &PostParams::default(), &changed)
        .await
        .map_err(|e| format!("editing the Secret: {e}"))?;
    until(t, "repaired Secret", || async {
        Ok(secret(t, NAME).await?.filter(data_is_the_values))
    })
    .await?;
    Ok(())
}

async fn tampered_value_keeps_the_secret(t: &Target) -> Checked {
    let mut es = encrypted(t).get(NAME).await.map_err(|e| e.to_string())?;
    let value = es
        .spec
        .encrypted_data
        .get_mut("password")
        .ok_or("no password item")?;
    let mut bytes = BASE64.decode(value.as_bytes()).map_err(|e| e.to_string())?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    *value = BASE64.encode(bytes);
    encrypted(t)
        .replace(NAME, &PostParams::default(), &es)
        .await
        .map_err(|e| format!("changing the EncryptedSecret: {e}"))?;
    let (reason, message) = ready_is(t, NAME, "False").await?;
    if reason != "DecryptFailed" || !message.contains("password") {
        return Err(format!("condition {reason}: {message}"));
    }
    let kept = secret(t, NAME).await?.ok_or("the Secret is gone")?;
    if !data_is_the_values(&kept) {
        return Err("the Secret changed".into());
    }
    Ok(())
}

async fn foreign_secret_is_refused(t: &Target) -> Checked {
    let name = "e2e-foreign";
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(t.namespace.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "token".into(),
            ByteString(b"theirs".to_vec()),
        )])),
        ..Default::default()
    };
    secrets(t)
        .create(&PostParams::default(), &foreign)
        .await
        .map_err(|e| format!("creating the foreign Secret: {e}"))?;
    let es = sealed(t, name, &t.allowed_key).await?;
    encrypted(t)
        .create(&PostParams::default(), &es)
        .await
        .map_err(|e| format!("creating the EncryptedSecret: {e}"))?;
    let (reason, _) = ready_is(t, name, "False").await?;
    if reason != "SecretExists" {
        return Err(format!("reason {reason}"));
    }
    let kept = secret(t, name).await?.ok_or("the foreign Secret is gone")?;
    if kept.data != foreign.data {
        return Err("the foreign Secret was overwritten".into());
    }
    Ok(())
}

/// A Secret someone made by hand, annotated `kmseal.dev/managed=true`, is handed over: the
/// controller replaces it whole (the annotation and the hand-made item are gone, an owner
/// reference is there).
async fn annotated_secret_is_adopted(t: &Target) -> Checked {
    let name = "e2e-adopted";
    let handmade = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(t.namespace.clone()),
            annotations: Some(BTreeMap::from([(
                "kmseal.dev/managed".to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/basic-auth".into()),
        // A basic-auth Secret needs a username or a password (the API server checks).
        data: Some(BTreeMap::from([
            ("username".into(), ByteString(b"hand-made".to_vec())),
            ("old".into(), ByteString(b"hand-made".to_vec())),
        ])),
        ..Default::default()
    };
    secrets(t)
        .create(&PostParams::default(), &handmade)
        .await
        .map_err(|e| format!("creating the Secret to hand over: {e}"))?;
    let es = sealed(t, name, &t.allowed_key).await?;
    encrypted(t)
        .create(&PostParams::default(), &es)
        .await
        .map_err(|e| format!("creating the EncryptedSecret: {e}"))?;
    let adopted = until(t, "adopted Secret", || async {
        Ok(secret(t, name).await?.filter(data_is_the_values))
    })
    .await?;
    let owned = adopted
        .metadata
        .owner_references
        .unwrap_or_default()
        .iter()
        .any(|o| o.kind == "EncryptedSecret" && o.name == name && o.controller == Some(true));
    let annotated = adopted
        .metadata
        .annotations
        .unwrap_or_default()
        .contains_key("kmseal.dev/managed");
    if !owned || annotated {
        return Err(format!("owned {owned}, still annotated {annotated}"));
    }
    ready_is(t, name, "True").await?;
    Ok(())
}

async fn other_key_is_refused(t: &Target) -> Checked {
    let name = "e2e-other-key";
    let es = sealed(t, name, &t.other_key).await?;
    encrypted(t)
        .create(&PostParams::default(), &es)
        .await
        .map_err(|e| format!("creating the EncryptedSecret: {e}"))?;
    let (reason, _) = ready_is(t, name, "False").await?;
    if reason != "KeyNotAllowed" {
        return Err(format!("reason {reason}"));
    }
    if secret(t, name).await?.is_some() {
        return Err("a Secret was written".into());
    }
    Ok(())
}

async fn deletion_collects_the_secret(t: &Target) -> Checked {
    encrypted(t)
        .delete(NAME, &DeleteParams::default())
        .await
        .map_err(|e| format!("deleting the EncryptedSecret: {e}"))?;
    until(t, "deleted Secret", || async {
        Ok(secret(t, NAME).await?.is_none().then_some(()))
    })
    .await
}

/// Key rotation in the cluster: values sealed under an alias; the alias moves to another key;
/// the controller re-wraps the values in the EncryptedSecret (they are then under the new key,
/// and its status records it) and leaves the Secret as it was.
async fn rotation_after_the_alias_moves(t: &Target) -> Checked {
    let Some(r) = &t.rotation else {
        return Ok(());
    };
    let name = "e2e-rotation";
    let es = sealed(t, name, &r.alias).await?;
    encrypted(t)
        .create(&PostParams::default(), &es)
        .await
        .map_err(|e| format!("creating the EncryptedSecret: {e}"))?;
    ready_is(t, name, "True").await?;
    let before = secret(t, name).await?.ok_or("no Secret")?;
    r.admin
        .update_alias()
        .alias_name(&r.alias)
        // A bare key id: LocalStack takes no ARN here.
        .target_key_id(r.next_key.rsplit('/').next().unwrap_or(&r.next_key))
        .send()
        .await
        .map_err(|e| format!("moving the alias: {e}"))?;
    let moved = until(t, "values re-wrapped under the new key", || async {
        let now = encrypted(t).get(name).await.map_err(|e| e.to_string())?;
        let under_next = now.spec.encrypted_data.values().all(|v| {
            matches!(kmseal::open::decode_item(v),
                Ok(kmseal::open::Decoded::Envelope(e)) if kmseal::arn::same_key(&e.header.key_arn, &r.next_key))
        });
        let recorded = now.status.as_ref().is_some_and(|s| s.rewrapped.is_some());
        Ok((under_next && recorded).then_some(now))
    })
    .await?;
    if moved.spec.encrypted_data.len() != es.spec.encrypted_data.len() {
        return Err("the items changed".into());
    }
    let (reason, _) = ready_is(t, name, "True").await?;
    if reason != "Synced" {
        return Err(format!("reason {reason}"));
    }
    let after = secret(t, name).await?.ok_or("the Secret is gone")?;
    if after.data != before.data || !data_is_the_values(&after) {
        return Err("the Secret changed".into());
    }
    Ok(())
}
