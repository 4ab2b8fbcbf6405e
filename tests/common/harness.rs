//! Running the controller's runtime (`run_with`) against the in-process fake of the Kubernetes
//! API (`fake_api.rs`) and a KMS of the test's choosing, and reading what it did: shared by the
//! runtime tests and the background-isolation tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures::FutureExt;
use kmseal::binding::Scope;
use kmseal::config::ControllerArgs;
use kmseal::controller::runtime::run_with;
use kmseal::kms::{CachingKms, MemoryKms};
use kmseal::metrics::Metrics;
use kmseal::random::OsRandom;
use kmseal::seal::{self, PlainSecret, Wrapper};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::fake_api::{Fake, client};

pub async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(5), check).await
}

pub async fn eventually_within(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    for _ in 0..(limit.as_millis() / 25) {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn data(secret: &Value, item: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(secret["data"][item].as_str().unwrap_or(""))
        .unwrap()
}

pub struct Running {
    pub calls: Arc<std::sync::atomic::AtomicU64>,
    pub metrics: Arc<Metrics>,
    pub stop: futures::channel::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<Result<(), kmseal::controller::runtime::RunError>>,
    pub ready: Arc<AtomicBool>,
}

pub fn start(fake: &Fake, memory: Arc<MemoryKms>) -> Running {
    start_with(fake, memory, &[])
}

/// The controller with `flags`; `--allow-any-key` unless they set a key policy.
pub fn start_with(fake: &Fake, memory: Arc<MemoryKms>, flags: &[&str]) -> Running {
    start_with_kms(fake, |_| (memory, None), flags)
}

/// The same, with the KMS stack below the cache built from the parsed flags.
pub fn start_with_kms<K: kmseal::kms::Kms + 'static>(
    fake: &Fake,
    kms: impl FnOnce(&ControllerArgs) -> (K, Option<Arc<kmseal::kms::fair::Gate>>),
    flags: &[&str],
) -> Running {
    let policy = flags
        .iter()
        .any(|f| f.starts_with("--allowed-keys") || f.starts_with("--key-policy"));
    let any_key = (!policy).then_some("--allow-any-key");
    let args: ControllerArgs = clap::Parser::parse_from(
        std::iter::once("kmseal-controller")
            .chain(any_key)
            .chain(flags.iter().copied()),
    );
    let health = kmseal::kms::KmsHealth::new();
    let (kms, gate) = kms(&args);
    let parts = kmseal::controller::runtime::KmsParts {
        health: health.clone(),
        gate,
    };
    let kms = Arc::new(CachingKms::new(
        kmseal::kms::HealthKms::new(kms, health),
        100,
        Duration::from_secs(300),
    ));
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = futures::channel::oneshot::channel::<()>();
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let client = client(fake.clone(), calls.clone());
    let task = tokio::spawn({
        let (ready, metrics) = (ready.clone(), metrics.clone());
        async move {
            run_with(
                client,
                kms,
                parts,
                &args,
                metrics,
                ready,
                stopped.map(|_| ()).boxed(),
            )
            .await
        }
    });
    Running {
        calls,
        metrics,
        stop,
        task,
        ready,
    }
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("graceful shutdown")
            .unwrap()
            .unwrap();
    }
}

pub async fn sealed_in(
    memory: &MemoryKms,
    key: &str,
    namespace: &str,
    name: &str,
) -> kmseal::api::EncryptedSecret {
    seal::seal_secret(
        &Wrapper::Kms {
            kms: memory,
            key_id: key,
        },
        &PlainSecret {
            namespace: Some(namespace.into()),
            name: name.into(),
            data: BTreeMap::from([("password".to_owned(), Zeroizing::new(b"s3cr3t".to_vec()))]),
            ..PlainSecret::default()
        },
        Scope::Strict,
        &mut OsRandom,
        1,
    )
    .await
    .unwrap()
}

pub fn ready(fake: &Fake, namespace: &str, name: &str) -> bool {
    fake.lock()
        .encrypted
        .get(&(namespace.to_owned(), name.to_owned()))
        .is_some_and(|es| es["status"]["conditions"][0]["status"] == "True")
}

pub fn counter(running: &Running, line: &str) -> u64 {
    running
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with(line))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The key ARN each value of an object is wrapped under, as its stored spec says.
pub fn value_keys(fake: &Fake, namespace: &str, name: &str) -> Vec<String> {
    let object = fake.lock().encrypted[&(namespace.to_owned(), name.to_owned())].clone();
    object["spec"]["encryptedData"]
        .as_object()
        .unwrap()
        .values()
        .map(
            |v| match kmseal::open::decode_item(v.as_str().unwrap()).unwrap() {
                kmseal::open::Decoded::Envelope(e) => e.header.key_arn.clone(),
                kmseal::open::Decoded::Plain(_) => String::new(),
            },
        )
        .collect()
}

pub fn key_current_reason(fake: &Fake, namespace: &str, name: &str) -> Option<(String, String)> {
    fake.status(namespace, name)["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "KeyCurrent")
        .map(|c| {
            (
                c["reason"].as_str().unwrap().to_owned(),
                c["message"].as_str().unwrap().to_owned(),
            )
        })
}
