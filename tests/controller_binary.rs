//! The `kmseal-controller` binary: its KMS client through IRSA web identity (moto's STS), and
//! clear failures without credentials or without a cluster.

mod common;

use common::*;

const REGION: &str = "us-east-1";

fn controller() -> assert_cmd::Command {
    isolated("kmseal-controller", false)
}

#[test]
fn controller_kms_client_uses_irsa_web_identity() {
    let Some(emu) = moto() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = rt.block_on(async { create_symmetric_key(&admin(&emu.url, REGION).await).await });
    let dir = tempfile::tempdir().unwrap();
    let token = service_account_token(&dir);
    let out = irsa(&mut controller(), &token, &emu.url, REGION)
        .args(["--check-kms-key", &key])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "KMS access ok: kms:GenerateDataKey and kms:Decrypt on {key}"
        )),
        "{}",
        stdout(&out)
    );
}

#[test]
fn controller_without_credentials_says_where_they_come_from() {
    let Some(emu) = moto() else { return };
    let out = controller()
        .env("AWS_REGION", REGION)
        .args(["--check-kms-key", "alias/any", "--endpoint", &emu.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no usable AWS credentials"), "{err}");
    assert!(err.contains("AWS_ROLE_ARN"), "{err}");
}

#[test]
fn controller_without_a_key_policy_refuses_to_start() {
    let out = controller()
        .args([
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--metrics-address",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no KMS key is allowed"), "{err}");
    assert!(
        err.contains("--allowed-keys") && err.contains("--key-policy"),
        "{err}"
    );
    assert!(
        !err.contains("cannot reach Kubernetes"),
        "checked before anything else: {err}"
    );
    // Said once, and without terminal colours when stderr is no terminal (a log collector).
    assert_eq!(err.matches("no KMS key is allowed").count(), 1, "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn controller_without_a_cluster_fails_clearly() {
    let out = controller()
        .args([
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--metrics-address",
            "127.0.0.1:0",
            "--allowed-keys",
            "arn:aws:kms:eu-west-1:111122223333:alias/kmseal",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot reach Kubernetes"), "{err}");
    assert!(err.contains("--kubeconfig"), "{err}");
}
