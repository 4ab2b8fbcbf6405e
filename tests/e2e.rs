//! The end-to-end checks (`common/e2e.rs`, which `kind/e2e.sh` runs against a kind cluster)
//! against the real `kmseal-controller` binary, the fake API server served over HTTP as a
//! cluster's would be, and moto: on every CI run, without Docker.

#[path = "common/e2e.rs"]
mod checks;
mod common;
#[path = "common/fake_api.rs"]
mod fake_api;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use common::{admin, create_symmetric_key, moto, sdk_config};
use kmseal::kms::AwsKms;

const REGION: &str = "us-east-1";

/// Kills the controller however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn client(kubeconfig: &str) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_end_to_end_checks_pass_against_the_controller_binary() {
    let Some(emu) = moto() else { return };
    let admin = admin(&emu.url, REGION).await;
    let (allowed, other, next) = (
        create_symmetric_key(&admin).await,
        create_symmetric_key(&admin).await,
        create_symmetric_key(&admin).await,
    );
    // The namespace may use the alias (whichever key it points to) and the first key.
    // Its own alias each run: moto keeps its keys and aliases between runs.
    let alias = &format!("alias/kmseal-e2e-{}", &next[next.len() - 12..]);
    admin
        .create_alias()
        .alias_name(alias)
        .target_key_id(&allowed)
        .send()
        .await
        .unwrap();
    let alias_arn = format!(
        "{}{alias}",
        &allowed[..allowed.find("key/").expect("a key ARN")]
    );

    let fake = fake_api::Fake::default();
    let port = fake_api::serve_http(fake.clone(), Arc::new(AtomicU64::new(0))).await;
    let dir = tempfile::tempdir().unwrap();
    let controller_kubeconfig = dir.path().join("controller.kubeconfig");
    std::fs::write(&controller_kubeconfig, fake_api::kubeconfig(port, false)).unwrap();

    let _controller = Running(
        Command::new(env!("CARGO_BIN_EXE_kmseal-controller"))
            .env_clear()
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", REGION)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn")
            .arg("--kubeconfig")
            .arg(&controller_kubeconfig)
            .args(["--endpoint", &emu.url])
            .args(["--allowed-keys", &format!("{allowed},{alias_arn}")])
            // Rotation seen within seconds rather than minutes.
            .args(["--key-refresh-interval", "2", "--resync-interval", "5"])
            .args(["--metrics-address", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    let target = checks::Target {
        client: client(&fake_api::kubeconfig(port, true)).await,
        kms: AwsKms::from_sdk_config(sdk_config(&emu.url, REGION).await),
        namespace: "e2e".to_owned(),
        allowed_key: allowed,
        other_key: other,
        garbage_collection: false,
        timeout: Duration::from_secs(60),
        rotation: Some(checks::RotationTarget {
            alias: alias.to_owned(),
            next_key: next,
            admin,
        }),
    };
    if let Err(failure) = checks::run_all(&target).await {
        panic!("{failure}");
    }
}
