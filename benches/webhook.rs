//! The admission webhook's latency: N reviews (half of them denied) through the real HTTPS
//! listener (`kmseal::controller::webhook_server`) on one kept-alive connection, as the API
//! server sends them, and the decision alone (`kmseal::webhook::review`). Prints p50, p99 and
//! the maximum; it asserts nothing about timings. Figures: docs/performance.md.
//!
//! Run: cargo bench --bench webhook [-- --reviews N]
//!
//! Without `--bench` (as `cargo test --benches` and cargo-nextest run it) it does a quick smoke
//! run of 20 reviews instead, and answers the test harness's `--list` with that one test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use kmseal::binding::Scope;
use kmseal::controller::Admission;
use kmseal::controller::webhook_certs::issue;
use kmseal::controller::webhook_server::{CertSource, start};
use kmseal::kms::MemoryKms;
use kmseal::metrics::Metrics;
use kmseal::policy::{KeyPolicy, SecretTypes};
use kmseal::random::OsRandom;
use kmseal::seal::{PlainSecret, Wrapper, seal_secret};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use zeroize::Zeroizing;

fn review(object: &Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "8d6e1e4a-0000-4000-8000-000000000001",
            "kind": {"group": "kmseal.dev", "version": "v1alpha1", "kind": "EncryptedSecret"},
            "resource": {"group": "kmseal.dev", "version": "v1alpha1", "resource": "encryptedsecrets"},
            "name": "db",
            "namespace": "prod",
            "operation": "CREATE",
            "userInfo": {"username": "tenant"},
            "object": object,
            "dryRun": false
        }
    })
    .to_string()
    .into_bytes()
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    format!(
        "p50 {:>7.1} µs   p99 {:>7.1} µs   max {:>7.1} µs",
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        samples.last().unwrap().as_secs_f64() * 1e6
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("smoke: test");
        }
        return;
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let reviews: usize = args
        .iter()
        .position(|a| a == "--reviews")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if smoke { 20 } else { 1000 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        println!(
            "kmseal admission webhook benchmark{}: {reviews} reviews, half denied",
            if smoke {
                " (smoke run: no --bench flag)"
            } else {
                ""
            }
        );
        // Two objects of 3 items of 64 B: one under the allowed key, one under another.
        let kms = MemoryKms::new("eu-west-1");
        let (allowed, other) = (kms.create_key(), kms.create_key());
        let mut objects = Vec::new();
        for key in [&allowed, &other] {
            let secret = PlainSecret {
                namespace: Some("prod".into()),
                name: "db".into(),
                data: ["a", "b", "c"]
                    .iter()
                    .map(|k| ((*k).to_owned(), Zeroizing::new(vec![b'x'; 64])))
                    .collect(),
                ..PlainSecret::default()
            };
            let es = seal_secret(
                &Wrapper::Kms {
                    kms: &kms,
                    key_id: key,
                },
                &secret,
                Scope::Strict,
                &mut OsRandom,
                1_800_000_000,
            )
            .await
            .expect("seal");
            objects.push(serde_json::to_value(es).unwrap());
        }
        let bodies = [review(&objects[0]), review(&objects[1])];
        let policy = KeyPolicy::from_rules(
            KeyPolicy::rules_for_all_namespaces(std::slice::from_ref(&allowed)).unwrap(),
        );
        let admission = Arc::new(Admission::new(policy.clone(), SecretTypes::default()));

        // The decision alone.
        let aliases = kmseal::policy::ResolvedAliases::new();
        let types = SecretTypes::default();
        let options = kmseal::validate::Options {
            rules: kmseal::open::Rules {
                policy: &policy,
                aliases: &aliases,
            },
            types: &types,
            namespace: None,
            allow_plain_secrets: false,
            repo: None,
        };
        let requests: Vec<kube::core::admission::AdmissionRequest<kube::core::DynamicObject>> =
            bodies
                .iter()
                .map(|b| {
                    let review: kube::core::admission::AdmissionReview<kube::core::DynamicObject> =
                        serde_json::from_slice(b).unwrap();
                    review.try_into().unwrap()
                })
                .collect();
        let mut decided = Vec::with_capacity(reviews);
        for i in 0..reviews {
            let started = Instant::now();
            let _ = kmseal::webhook::review(&requests[i % 2], &options);
            decided.push(started.elapsed());
        }
        println!(
            "decision only (webhook::review):        {}",
            percentiles(decided)
        );

        // Through the HTTPS listener, one kept-alive connection.
        let dir = tempfile::tempdir().unwrap();
        let issued = issue(&["127.0.0.1".to_owned()], kmseal::time::unix_now(), None).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &issued.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), issued.key_pem.as_bytes()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let never: futures::future::BoxFuture<'static, ()> = Box::pin(futures::future::pending());
        let _server = start(
            address,
            CertSource::Files(dir.path().to_path_buf()),
            admission,
            SecretTypes::default(),
            Arc::new(Metrics::new()),
            futures::FutureExt::shared(never),
        )
        .await
        .expect("webhook listener");
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(issued.ca_bundle.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let tls = connector
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .expect("TLS to the webhook");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut served = Vec::with_capacity(reviews);
        let mut denied = 0;
        for i in 0..reviews {
            let request = hyper::Request::post("/validate")
                .header("content-type", "application/json")
                .header("host", "127.0.0.1")
                .body(Full::new(bytes::Bytes::from(bodies[i % 2].clone())))
                .unwrap();
            let started = Instant::now();
            // The previous response's connection state settles first (HTTP/1.1, one at a time).
            sender.ready().await.unwrap();
            let response = sender.send_request(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            served.push(started.elapsed());
            let answer: Value = serde_json::from_slice(&body).unwrap();
            denied += usize::from(answer["response"]["allowed"] == false);
        }
        println!(
            "HTTPS round trip (one connection):      {}",
            percentiles(served)
        );
        println!(
            "{denied} of {reviews} denied; review body {} B",
            bodies[0].len()
        );
        assert_eq!(
            denied,
            reviews / 2,
            "every other review is of the object under another key"
        );
    });
}
