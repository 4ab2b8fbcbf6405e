//! The real `kmseal-controller` binary over N EncryptedSecrets: API requests and writes per
//! object, KMS calls, time, and the controller process's memory, on a cold start, on a
//! restart, and on a start after the objects' alias moved to another key (key rotation in the
//! cluster, under the default KMS and re-wrap budgets, with new objects added meanwhile to
//! time ordinary reconciles). It prints figures and asserts nothing about timings.
//!
//! The Kubernetes API is the test suite's in-process fake (`tests/common/fake_api.rs`), served
//! over HTTP on loopback from this process; it honours metadata-only requests as the real API
//! server does, so the controller's memory is what it would hold in a cluster. With `--real`,
//! it is a real kube-apiserver (`scripts/control-plane.sh`), and the requests are counted from
//! its audit log. KMS is moto's server. Run it with `scripts/bench-controller-binary.sh
//! [--real]`, which builds the release binaries and starts moto (and the control plane).
//! Flags: `--objects N`, `--namespaces N`, `--items N` (3), `--value-bytes N`
//! (64), `--kms-requests-per-second R` (default 0: off, for the first two phases),
//! `--no-rotation` (skip the third phase); `--real --admin-kubeconfig F --controller-kubeconfig
//! F --audit-log F --controller-user U` (the script passes them); `MALLOC_ARENA_MAX` and
//! `BENCH_LD_PRELOAD` (as `LD_PRELOAD`) are passed to the controller, for allocator experiments.

#[path = "../tests/common/fake_api.rs"]
mod fake_api;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fake_api::Fake;
use futures::StreamExt;
use kmseal::binding::Scope;
use kmseal::kms::AwsKms;
use kmseal::random::OsRandom;
use kmseal::seal::{self, PlainSecret, Wrapper};
use zeroize::Zeroizing;

struct Params {
    objects: usize,
    items: usize,
    value_bytes: usize,
    kms_rps: String,
    namespaces: usize,
    moto: String,
    controller: std::path::PathBuf,
    rotation: bool,
    /// The real API server: (admin kubeconfig, the controller's kubeconfig, audit log, the
    /// controller's user name).
    real: Option<Real>,
}

struct Real {
    admin_kubeconfig: std::path::PathBuf,
    controller_kubeconfig: std::path::PathBuf,
    audit_log: std::path::PathBuf,
    controller_user: String,
}

fn params() -> Params {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let exe = std::env::current_exe().expect("current exe");
    let release = exe
        .parent()
        .and_then(|examples| examples.parent())
        .expect("target/<profile>/examples");
    Params {
        objects: value("--objects").map_or(10_000, |v| v.parse().expect("--objects N")),
        kms_rps: value("--kms-requests-per-second").unwrap_or_else(|| "0".into()),
        items: value("--items").map_or(3, |v| v.parse().expect("--items N")),
        value_bytes: value("--value-bytes").map_or(64, |v| v.parse().expect("--value-bytes N")),
        namespaces: value("--namespaces").map_or(50, |v| v.parse().expect("--namespaces N")),
        moto: value("--moto")
            .or_else(|| std::env::var("KMSEAL_TEST_MOTO_URL").ok())
            .expect("--moto URL or KMSEAL_TEST_MOTO_URL"),
        controller: value("--controller")
            .map(Into::into)
            .unwrap_or_else(|| release.join("kmseal-controller")),
        rotation: !args.iter().any(|a| a == "--no-rotation"),
        real: args.iter().any(|a| a == "--real").then(|| {
            let path = |flag: &str| -> std::path::PathBuf {
                value(flag)
                    .unwrap_or_else(|| panic!("--real needs {flag}"))
                    .into()
            };
            Real {
                admin_kubeconfig: path("--admin-kubeconfig"),
                controller_kubeconfig: path("--controller-kubeconfig"),
                audit_log: path("--audit-log"),
                controller_user: value("--controller-user")
                    .expect("--real needs --controller-user"),
            }
        }),
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn_controller(
    p: &Params,
    kubeconfig: &std::path::Path,
    metrics_port: u16,
    kms_rps: &str,
) -> Child {
    Command::new(&p.controller)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .envs(std::env::var("MALLOC_ARENA_MAX").map(|v| ("MALLOC_ARENA_MAX", v)))
        .envs(std::env::var("BENCH_LD_PRELOAD").map(|v| ("LD_PRELOAD", v)))
        .args(["--kubeconfig"])
        .arg(kubeconfig)
        .args(["--endpoint", &p.moto, "--allow-any-key"])
        // Unlimited by default, to measure the controller rather than the 50/s budget.
        .args(["--kms-requests-per-second", kms_rps])
        .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kmseal-controller (build it with --release)")
}

async fn metric(port: u16, line: &str) -> f64 {
    let Ok(text) = reqwest_lite(port, "/metrics").await else {
        return 0.0;
    };
    text.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A plain HTTP/1.0 GET on loopback (no client crate needed).
async fn reqwest_lite(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await?;
    Ok(out)
}

#[derive(Clone, Copy, Default)]
struct Counts {
    requests: u64,
    secret_gets: u64,
    secret_writes: u64,
    status_writes: u64,
    events: u64,
    event_patches: u64,
    value_patches: u64,
}

impl Counts {
    /// What happened between `before` and these counts.
    fn since(self, before: Counts) -> Counts {
        Counts {
            requests: self.requests - before.requests,
            secret_gets: self.secret_gets - before.secret_gets,
            secret_writes: self.secret_writes - before.secret_writes,
            status_writes: self.status_writes - before.status_writes,
            events: self.events - before.events,
            event_patches: self.event_patches - before.event_patches,
            value_patches: self.value_patches - before.value_patches,
        }
    }
}

/// Where the objects live: the fake (counting what it answers) or a real API server (counting
/// from its audit log what the controller's user asked).
enum Cluster {
    Fake {
        fake: Fake,
        requests: Arc<AtomicU64>,
    },
    Real {
        client: kube::Client,
        audit_log: std::path::PathBuf,
        user: String,
    },
}

impl Cluster {
    async fn add(&self, es: &kmseal::api::EncryptedSecret) {
        match self {
            Cluster::Fake { fake, .. } => fake.add_encrypted(es),
            Cluster::Real { client, .. } => {
                let namespace = es.metadata.namespace.as_deref().unwrap_or_default();
                let api: kube::Api<kmseal::api::EncryptedSecret> =
                    kube::Api::namespaced(client.clone(), namespace);
                api.create(&Default::default(), es)
                    .await
                    .expect("create an EncryptedSecret");
            }
        }
    }

    /// Objects whose status matches `pick`.
    async fn count(&self, pick: impl Fn(&serde_json::Value) -> bool) -> usize {
        match self {
            Cluster::Fake { fake, .. } => fake
                .lock()
                .encrypted
                .values()
                .filter(|es| pick(&es["status"]))
                .count(),
            Cluster::Real { client, .. } => {
                let api: kube::Api<kmseal::api::EncryptedSecret> = kube::Api::all(client.clone());
                let mut count = 0;
                let mut params = kube::api::ListParams::default().limit(2000);
                loop {
                    let page = api.list(&params).await.expect("list EncryptedSecrets");
                    count += page
                        .items
                        .iter()
                        .filter(|es| pick(&serde_json::to_value(&es.status).unwrap_or_default()))
                        .count();
                    match page.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(next) => params = params.continue_token(&next),
                        None => break,
                    }
                }
                count
            }
        }
    }

    async fn ready_count(&self) -> usize {
        self.count(|status| status["conditions"][0]["status"] == "True")
            .await
    }

    async fn is_ready(&self, namespace: &str, name: &str) -> bool {
        match self {
            Cluster::Fake { fake, .. } => fake
                .lock()
                .encrypted
                .get(&(namespace.to_owned(), name.to_owned()))
                .is_some_and(|es| es["status"]["conditions"][0]["status"] == "True"),
            Cluster::Real { client, .. } => {
                let api: kube::Api<kmseal::api::EncryptedSecret> =
                    kube::Api::namespaced(client.clone(), namespace);
                api.get_opt(name).await.ok().flatten().is_some_and(|es| {
                    es.status.is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
            }
        }
    }

    async fn rewrapped_count(&self) -> usize {
        self.count(|status| !status["rewrapped"].is_null()).await
    }

    /// How often to look at the objects while waiting.
    fn poll(&self) -> Duration {
        match self {
            Cluster::Fake { .. } => Duration::from_millis(100),
            // A list of 10,000 objects is work for the API server too.
            Cluster::Real { .. } => Duration::from_secs(2),
        }
    }

    fn counts(&self) -> Counts {
        match self {
            Cluster::Fake { fake, requests } => {
                let s = fake.lock();
                Counts {
                    requests: requests.load(Ordering::Relaxed),
                    secret_gets: s.secret_gets,
                    secret_writes: s.secret_writes,
                    status_writes: s.status_writes,
                    events: s.events.len() as u64,
                    event_patches: s.event_patches,
                    value_patches: s.value_patches,
                }
            }
            Cluster::Real {
                audit_log, user, ..
            } => {
                let text = std::fs::read_to_string(audit_log).unwrap_or_default();
                let mut c = Counts::default();
                for line in text.lines() {
                    let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                        continue;
                    };
                    if e["stage"] != "RequestReceived" || e["user"]["username"] != user.as_str() {
                        continue;
                    }
                    let (verb, resource, sub) = (
                        e["verb"].as_str().unwrap_or_default(),
                        e["objectRef"]["resource"].as_str().unwrap_or_default(),
                        e["objectRef"]["subresource"].as_str().unwrap_or_default(),
                    );
                    if resource == "leases" {
                        continue;
                    }
                    c.requests += 1;
                    match (verb, resource, sub) {
                        ("get", "secrets", _) => c.secret_gets += 1,
                        ("create" | "update", "secrets", _) => c.secret_writes += 1,
                        ("patch", "encryptedsecrets", "status") => c.status_writes += 1,
                        ("patch", "encryptedsecrets", "") => c.value_patches += 1,
                        ("create", "events", _) => c.events += 1,
                        ("patch", "events", _) => c.event_patches += 1,
                        _ => {}
                    }
                }
                c
            }
        }
    }
}

struct Phase {
    name: &'static str,
    wall: Duration,
    delta: Counts,
    decrypts: f64,
    peak_rss_kib: u64,
    end_rss_kib: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let p = params();
    let n = p.objects;
    println!("kmseal-controller binary benchmark");
    println!(
        "objects: {n} in {} namespaces, {} items of {} B each, one data key per object",
        p.namespaces, p.items, p.value_bytes
    );

    // Keys and objects, sealed against moto.
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(kmseal::kms::aws::https_client())
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new("test", "test", None, None, "bench"),
            ),
        )
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&p.moto)
        .load()
        .await;
    let admin = aws_sdk_kms::Client::new(&sdk);
    let create_key = || async {
        admin
            .create_key()
            .send()
            .await
            .expect("moto: create_key")
            .key_metadata
            .and_then(|m| m.arn)
            .expect("a key ARN")
    };
    let first_key = create_key().await;
    // Objects name the alias (spec.keyId), as `kmseal seal --key alias/...` writes them.
    const ALIAS: &str = "alias/kmseal-bench";
    admin
        .create_alias()
        .alias_name(ALIAS)
        .target_key_id(&first_key)
        .send()
        .await
        .expect("moto: create_alias");
    let key = ALIAS.to_owned();
    let kms = Arc::new(AwsKms::from_sdk_config(sdk));
    let started = Instant::now();
    let sealed: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let (kms, key, namespaces) = (kms.clone(), key.clone(), p.namespaces);
            let (items, value_bytes) = (p.items, p.value_bytes);
            async move {
                let secret = PlainSecret {
                    namespace: Some(format!("ns-{:02}", i % namespaces)),
                    name: format!("app-{i:05}"),
                    data: (0..items)
                        .map(|item| {
                            (
                                format!("item-{item}"),
                                Zeroizing::new(vec![b'x'; value_bytes]),
                            )
                        })
                        .collect::<BTreeMap<_, _>>(),
                    ..PlainSecret::default()
                };
                seal::seal_secret(
                    &Wrapper::Kms {
                        kms: &*kms,
                        key_id: &key,
                    },
                    &secret,
                    Scope::Strict,
                    &mut OsRandom,
                    0,
                )
                .await
                .expect("seal against moto")
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    println!(
        "setup: sealed {n} objects against moto in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, kubeconfig) = match &p.real {
        None => {
            // The fake API server, over HTTP.
            let fake = Fake::default();
            let requests = Arc::new(AtomicU64::new(0));
            let api_port = fake_api::serve_http(fake.clone(), requests.clone()).await;
            let kubeconfig = dir.path().join("kubeconfig");
            std::fs::write(&kubeconfig, fake_api::kubeconfig(api_port, false)).expect("kubeconfig");
            (Cluster::Fake { fake, requests }, kubeconfig)
        }
        Some(real) => {
            let text = std::fs::read_to_string(&real.admin_kubeconfig).expect("admin kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::from_yaml(&text).expect("a kubeconfig"),
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .expect("the admin's kubeconfig");
            let client = kube::Client::try_from(config).expect("a client");
            let cluster = Cluster::Real {
                client,
                audit_log: real.audit_log.clone(),
                user: real.controller_user.clone(),
            };
            (cluster, real.controller_kubeconfig.clone())
        }
    };
    if let Cluster::Real { client, .. } = &cluster {
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
        for i in 0..p.namespaces {
            let namespace: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
                serde_json::json!({"metadata": {"name": format!("ns-{i:02}")}}),
            )
            .expect("a namespace");
            match api.create(&Default::default(), &namespace).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => panic!("creating a namespace: {e}"),
            }
        }
    }
    let started = Instant::now();
    futures::stream::iter(&sealed)
        .for_each_concurrent(16, |es| cluster.add(es))
        .await;
    drop(sealed);
    println!(
        "setup: {n} objects stored in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        if p.real.is_some() {
            "the real API server"
        } else {
            "the fake API server"
        }
    );

    let mut phases = Vec::new();
    for name in ["cold start", "restart"] {
        let metrics_port = free_port();
        let before = cluster.counts();
        let started = Instant::now();
        let mut child = spawn_controller(&p, &kubeconfig, metrics_port, &p.kms_rps);
        let pid = child.id();
        let mut peak = 0;
        // Done when every object is ready and the controller reports ready, then 3 s more
        // for any echo of its own writes to come back and be acted on.
        let mut done_at: Option<Instant> = None;
        loop {
            tokio::time::sleep(cluster.poll()).await;
            peak = peak.max(status_kib(pid, "VmRSS:"));
            let all_ready = cluster.ready_count().await == n
                && reqwest_lite(metrics_port, "/readyz")
                    .await
                    .is_ok_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"));
            if all_ready && done_at.is_none() {
                done_at = Some(Instant::now());
            }
            if let Some(at) = done_at
                && at.elapsed() >= Duration::from_secs(3)
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(1800) {
                panic!(
                    "not done after 30 min: {} of {n} ready",
                    cluster.ready_count().await
                );
            }
        }
        let wall = done_at.expect("done") - started;
        let after = cluster.counts();
        let decrypts = metric(
            metrics_port,
            "kmseal_kms_requests_total{operation=\"Decrypt\",outcome=\"ok\"}",
        )
        .await;
        let peak_rss_kib = status_kib(pid, "VmHWM:").max(peak);
        let end_rss_kib = status_kib(pid, "VmRSS:");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = child.wait();
        phases.push(Phase {
            name,
            wall,
            delta: after.since(before),
            decrypts,
            peak_rss_kib,
            end_rss_kib,
        });
    }

    let rotation = if p.rotation {
        Some(rotation_phase(&p, &cluster, &kubeconfig, &admin, &kms, &first_key).await)
    } else {
        None
    };

    println!();
    println!(
        "{:<11} {:>8} {:>9} {:>8} {:>8} {:>9} {:>8} {:>7} {:>8} {:>9} {:>9}",
        "phase",
        "wall s",
        "requests",
        "/object",
        "Sec GET",
        "Sec write",
        "status",
        "events",
        "Decrypt",
        "peak MiB",
        "end MiB"
    );
    for ph in &phases {
        let d = ph.delta;
        println!(
            "{:<11} {:>8.1} {:>9} {:>8.2} {:>8} {:>9} {:>8} {:>7} {:>8} {:>9.1} {:>9.1}",
            ph.name,
            ph.wall.as_secs_f64(),
            d.requests,
            d.requests as f64 / n as f64,
            d.secret_gets,
            d.secret_writes,
            d.status_writes,
            d.events + d.event_patches,
            ph.decrypts,
            ph.peak_rss_kib as f64 / 1024.0,
            ph.end_rss_kib as f64 / 1024.0,
        );
    }
    println!();
    println!(
        "requests: every API request but Leases (lists, watches, GETs, writes, events), {};",
        if p.real.is_some() {
            "from the API server's audit log"
        } else {
            "as the fake answered them"
        }
    );
    println!("wall: from the process start until every object is ready and /readyz answers;");
    println!(
        "peak/end MiB: the controller process's VmHWM / VmRSS; KMS rate limit: {}/s (0: off).",
        p.kms_rps
    );
    if let Some(r) = rotation {
        println!();
        println!(
            "rotation: the alias moved to another key, then the controller started with the default budgets (KMS 50/s, re-wrap 10/s)"
        );
        println!(
            "  all {n} re-wrapped in {:.1} s; ReEncrypt {} ({:.2} per object), Decrypt {} (the {} new objects: {}), value patches {}, Secret writes {} (new objects: {}), status writes {}, events {}, peak {:.1} MiB",
            r.wall.as_secs_f64(),
            r.re_encrypts,
            r.re_encrypts / n as f64,
            r.decrypts,
            r.probes.len(),
            r.probes.len(),
            r.value_patches,
            r.delta.secret_writes,
            r.probes.len(),
            r.delta.status_writes,
            r.delta.events + r.delta.event_patches,
            r.peak_rss_kib as f64 / 1024.0,
        );
        let mut latencies: Vec<f64> = r.probes.iter().map(Duration::as_secs_f64).collect();
        latencies.sort_by(f64::total_cmp);
        if !latencies.is_empty() {
            println!(
                "  ordinary reconciles meanwhile: a new object every 10 s was Ready after p50 {:.2} s, max {:.2} s ({} objects)",
                latencies[latencies.len() / 2],
                latencies[latencies.len() - 1],
                latencies.len()
            );
        }
    }
}

struct Rotation {
    wall: Duration,
    delta: Counts,
    re_encrypts: f64,
    decrypts: f64,
    value_patches: u64,
    peak_rss_kib: u64,
    /// How long each new object added during the rotation took to be Ready.
    probes: Vec<Duration>,
}

/// The third phase: the alias the objects name moves to a new key; a controller started then
/// re-wraps every object. Meanwhile a new object arrives every 10 s, and the time until it is
/// Ready is what an ordinary reconcile waits during a rotation.
async fn rotation_phase(
    p: &Params,
    cluster: &Cluster,
    kubeconfig: &std::path::Path,
    admin: &aws_sdk_kms::Client,
    kms: &Arc<AwsKms>,
    first_key: &str,
) -> Rotation {
    let n = p.objects;
    let second_key = admin
        .create_key()
        .send()
        .await
        .expect("moto: create_key")
        .key_metadata
        .and_then(|m| m.arn)
        .expect("a key ARN");
    admin
        .update_alias()
        .alias_name("alias/kmseal-bench")
        .target_key_id(&second_key)
        .send()
        .await
        .expect("moto: update_alias");
    assert_ne!(first_key, second_key);
    let metrics_port = free_port();
    let before = cluster.counts();
    let started = Instant::now();
    // The default budgets.
    let mut child = spawn_controller(p, kubeconfig, metrics_port, "50");
    let pid = child.id();
    let mut peak = 0;
    let mut probes: Vec<(String, Instant, Option<Duration>)> = Vec::new();
    let mut next_probe = Instant::now() + Duration::from_secs(10);
    let mut done_at = None;
    loop {
        tokio::time::sleep(cluster.poll()).await;
        peak = peak.max(status_kib(pid, "VmRSS:"));
        if done_at.is_none() && Instant::now() >= next_probe {
            next_probe += Duration::from_secs(10);
            let name = format!("probe-{:03}", probes.len());
            let secret = PlainSecret {
                namespace: Some("ns-00".into()),
                name: name.clone(),
                data: BTreeMap::from([("item-0".to_owned(), Zeroizing::new(b"x".to_vec()))]),
                ..PlainSecret::default()
            };
            let es = seal::seal_secret(
                &Wrapper::Kms {
                    kms: &**kms,
                    key_id: "alias/kmseal-bench",
                },
                &secret,
                Scope::Strict,
                &mut OsRandom,
                0,
            )
            .await
            .expect("seal a probe");
            cluster.add(&es).await;
            probes.push((name, Instant::now(), None));
        }
        for (name, added, ready) in probes.iter_mut().filter(|p| p.2.is_none()) {
            if cluster.is_ready("ns-00", name).await {
                *ready = Some(added.elapsed());
            }
        }
        if done_at.is_none() && cluster.rewrapped_count().await >= n {
            done_at = Some(Instant::now());
        }
        if let Some(at) = done_at
            && at.elapsed() >= Duration::from_secs(3)
            && probes.iter().all(|p| p.2.is_some())
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            panic!(
                "not done after 60 min: {} of {n} re-wrapped",
                cluster.rewrapped_count().await
            );
        }
    }
    let wall = done_at.expect("done") - started;
    let after = cluster.counts();
    let re_encrypts = metric(
        metrics_port,
        "kmseal_kms_requests_total{operation=\"ReEncrypt\",outcome=\"ok\"}",
    )
    .await;
    let decrypts = metric(
        metrics_port,
        "kmseal_kms_requests_total{operation=\"Decrypt\",outcome=\"ok\"}",
    )
    .await;
    let peak_rss_kib = status_kib(pid, "VmHWM:").max(peak);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    Rotation {
        wall,
        delta: after.since(before),
        re_encrypts,
        decrypts,
        value_patches: after.since(before).value_patches,
        peak_rss_kib,
        probes: probes.into_iter().filter_map(|p| p.2).collect(),
    }
}
