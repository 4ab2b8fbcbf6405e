//! Retries on throttling. Neither emulator throttles, so a small fault-injecting proxy sits in
//! front of moto: it answers the first N KMS requests with ThrottlingException, then passes
//! requests through.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REGION: &str = "us-east-1";

struct Stub {
    url: String,
    throttled: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
}

/// Reads one HTTP/1.1 message (a request or a response): headers and a Content-Length body.
/// The whole message is returned as it arrived.
async fn read_message(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[header_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

async fn start_stub(upstream: &str, throttle_first: usize) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let throttled = Arc::new(AtomicUsize::new(0));
    let forwarded = Arc::new(AtomicUsize::new(0));
    let (t, f) = (throttled.clone(), forwarded.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let (t, f, upstream) = (t.clone(), f.clone(), upstream.clone());
            tokio::spawn(async move {
                let Some((head, body)) = read_message(&mut client).await else {
                    return;
                };
                let is_kms = head
                    .to_ascii_lowercase()
                    .contains("x-amz-target: trentservice.");
                if is_kms && t.load(Ordering::SeqCst) < throttle_first {
                    t.fetch_add(1, Ordering::SeqCst);
                    let payload = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
                    let response = format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: stub\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                        payload.len()
                    );
                    let _ = client.write_all(response.as_bytes()).await;
                    return;
                }
                f.fetch_add(1, Ordering::SeqCst);
                // Pass through with one request per connection, so the reply ends at EOF.
                let head: String = head
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
                    .map(|l| format!("{l}\r\n"))
                    .collect::<String>()
                    + "Connection: close\r\n\r\n";
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                if server.write_all(head.as_bytes()).await.is_err()
                    || server.write_all(&body).await.is_err()
                {
                    return;
                }
                // Read the reply by its length: the server may keep the connection open.
                let Some((reply_head, reply_body)) = read_message(&mut server).await else {
                    return;
                };
                let _ = client.write_all(reply_head.as_bytes()).await;
                let _ = client.write_all(&reply_body).await;
            });
        }
    });
    Stub {
        url,
        throttled,
        forwarded,
    }
}

async fn seal_through(
    stub: &Stub,
    key: &str,
    max_attempts: &str,
    mode: &str,
) -> std::process::Output {
    let (url, key, max_attempts, mode) = (
        stub.url.clone(),
        key.to_owned(),
        max_attempts.to_owned(),
        mode.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        kmseal(true)
            .env("AWS_MAX_ATTEMPTS", max_attempts)
            .env("AWS_RETRY_MODE", mode)
            .args([
                "seal",
                "--key",
                &key,
                "--endpoint",
                &url,
                "--region",
                REGION,
            ])
            .args(["--name", "db", "-n", "prod", "--from-literal", "k=v"])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_is_retried_until_kms_answers() {
    let Some(emu) = moto() else { return };
    let key = create_symmetric_key(&admin(&emu.url, REGION).await).await;
    // Adaptive mode also rate-limits the client after a throttle (by design it can wait tens
    // of seconds after several), so it gets one throttle; standard mode gets three.
    for (mode, throttles) in [("standard", 3), ("adaptive", 1)] {
        let stub = start_stub(&emu.url, throttles).await;
        let out = seal_through(&stub, &key, "5", mode).await;
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert_eq!(stub.throttled.load(Ordering::SeqCst), throttles, "{mode}");
        assert_eq!(
            stub.forwarded.load(Ordering::SeqCst),
            1,
            "{mode}: one GenerateDataKey got through"
        );
        assert!(stdout(&out).contains("kind: EncryptedSecret"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_aws_max_attempts_with_a_clear_message() {
    let Some(emu) = moto() else { return };
    let key = create_symmetric_key(&admin(&emu.url, REGION).await).await;
    let stub = start_stub(&emu.url, usize::MAX).await;
    let out = seal_through(&stub, &key, "3", "standard").await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stub.throttled.load(Ordering::SeqCst),
        3,
        "AWS_MAX_ATTEMPTS=3 means three tries"
    );
    assert_eq!(stub.forwarded.load(Ordering::SeqCst), 0);
    let err = stderr(&out);
    assert!(err.contains("KMS throttled kms:GenerateDataKey"), "{err}");
    assert!(err.contains("AWS_MAX_ATTEMPTS"), "{err}");
}

/// `kmseal_kms_requests_total` counts a request once, however often the SDK retried it;
/// `kmseal_kms_attempts_total` counts every HTTP attempt.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_and_their_attempts() {
    use kmseal::kms::Kms;
    let Some(emu) = moto() else { return };
    let key = create_symmetric_key(&admin(&emu.url, REGION).await).await;
    let stub = start_stub(&emu.url, 2).await;
    let metrics = std::sync::Arc::new(kmseal::metrics::Metrics::new());
    let counted = metrics.clone();
    let aws = kmseal::kms::AwsKms::from_sdk_config(sdk_config(&stub.url, REGION).await)
        .with_attempt_observer(move |operation| {
            counted
                .kms_attempts
                .get_or_create(&kmseal::metrics::OperationLabels { operation })
                .inc();
        });
    let kms = kmseal::metrics::MeteredKms::new(aws, metrics.clone());
    kms.generate_data_key(&key, &Default::default())
        .await
        .expect("the third attempt gets through");
    let text = metrics.encode();
    assert!(
        text.contains(r#"kmseal_kms_requests_total{operation="GenerateDataKey",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"kmseal_kms_attempts_total{operation="GenerateDataKey"} 3"#),
        "{text}"
    );
}
