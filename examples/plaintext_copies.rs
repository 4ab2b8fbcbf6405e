//! How many copies of a secret value stay in the controller's memory after a reconcile.
//!
//! Seals a Secret whose value is a random marker, reconciles it with the real `KubeClusterApi`
//! (kube client, hyper, plain HTTP) against the stub API server of
//! `scripts/plaintext-copies.sh`, which runs in another process, then scans this process's own
//! writable memory (`/proc/self/mem`) for the marker and for its base64 form. The needles this
//! program keeps to search with are not counted. Linux only.
//!
//! Run: scripts/plaintext-copies.sh

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kmseal::binding::Scope;
use kmseal::controller::{Admission, KubeClusterApi, Reconciled, Reconciler};
use kmseal::kms::{CachingKms, MemoryKms};
use kmseal::metrics::Metrics;
use kmseal::random::OsRandom;
use kmseal::seal::{self, PlainSecret, Wrapper};
use zeroize::Zeroizing;

/// Writable mappings of this process: where copies can be.
fn writable_regions() -> Vec<Range<u64>> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            if !perms.starts_with("rw") || line.contains("[vvar") || line.contains("[vsyscall") {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?)
        })
        .collect()
}

/// Reads this process's memory through one buffer, allocated once and wiped after every
/// scan: a freed scan buffer would itself hold copies of whatever it read.
struct Scanner {
    buffer: Vec<u8>,
}

impl Scanner {
    const CHUNK: usize = 1 << 20;

    fn new() -> Self {
        Scanner {
            buffer: vec![0u8; Self::CHUNK + 4096],
        }
    }

    /// Addresses where `needle` occurs in writable memory, except inside `skip`.
    fn find(&mut self, needle: &[u8], skip: &[Range<u64>]) -> Vec<u64> {
        let mut mem = std::fs::File::open("/proc/self/mem").expect("/proc/self/mem");
        let own = range_of(&self.buffer);
        let mut found = Vec::with_capacity(64);
        for region in writable_regions() {
            let mut at = region.start;
            while at < region.end {
                let want = ((region.end - at) as usize).min(Self::CHUNK + needle.len());
                if mem.seek(SeekFrom::Start(at)).is_err() {
                    break;
                }
                let Ok(got) = mem.read(&mut self.buffer[..want]) else {
                    break;
                };
                if got == 0 {
                    break;
                }
                for (i, window) in self.buffer[..got].windows(needle.len()).enumerate() {
                    let address = at + i as u64;
                    let skipped =
                        own.contains(&address) || skip.iter().any(|r| r.contains(&address));
                    if window == needle && !skipped && !found.contains(&address) {
                        found.push(address);
                    }
                }
                at += got.saturating_sub(needle.len()).max(1) as u64;
            }
        }
        self.buffer.fill(0);
        found
    }
}

fn range_of(bytes: &[u8]) -> Range<u64> {
    let start = bytes.as_ptr() as u64;
    start..start + bytes.len() as u64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .expect("usage: plaintext_copies http://127.0.0.1:PORT");
    let mut scanner = Scanner::new();
    let mut raw = Zeroizing::new([0u8; 24]);
    kmseal::random::fill(&mut *raw).expect("randomness");
    // A printable value, 48 characters, that exists nowhere else.
    let marker: Zeroizing<Vec<u8>> = Zeroizing::new(
        raw.iter()
            .flat_map(|b| {
                [
                    b"0123456789abcdef"[usize::from(b >> 4)],
                    b"0123456789abcdef"[usize::from(b & 15)],
                ]
            })
            .collect(),
    );
    let marker_b64 = Zeroizing::new(BASE64.encode(&*marker).into_bytes());

    let memory = MemoryKms::new("eu-west-1");
    let key = memory.create_key();
    let mut es = seal::seal_secret(
        &Wrapper::Kms {
            kms: &memory,
            key_id: &key,
        },
        &PlainSecret {
            namespace: Some("prod".into()),
            name: "db".into(),
            data: BTreeMap::from([("password".to_owned(), Zeroizing::new(marker.to_vec()))]),
            ..PlainSecret::default()
        },
        Scope::Strict,
        &mut OsRandom,
        1,
    )
    .await
    .expect("seal");
    es.metadata.uid = Some("00000000-0000-4000-8000-000000000001".into());
    es.metadata.generation = Some(1);

    let skip = [range_of(&marker), range_of(&marker_b64)];
    let before = (
        scanner.find(&marker, &skip).len(),
        scanner.find(&marker_b64, &skip).len(),
    );

    let config = kube::Config::new(url.parse().expect("a URL"));
    let client = kube::Client::try_from(config).expect("client");
    let reconciler = Reconciler::new(
        CachingKms::new(memory, 100, Duration::from_secs(300)),
        KubeClusterApi::new(client, None, None),
        Arc::new(Metrics::new()),
        Arc::new(Admission::any_key()),
    );
    let (outcome, _) = reconciler.reconcile(&es).await.expect("reconcile");
    assert_eq!(outcome, Reconciled::Applied, "the stub API server answered");
    // Let the HTTP connection's tasks settle, as in a running controller between reconciles.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = (
        scanner.find(&marker, &skip).len(),
        scanner.find(&marker_b64, &skip).len(),
    );
    if std::env::var_os("KMSEAL_DEBUG_COPIES").is_some() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mut addresses = scanner.find(&marker, &skip);
        addresses.extend(scanner.find(&marker_b64, &skip));
        for address in addresses {
            let region = maps.lines().find(|l| {
                let r = l.split_whitespace().next().unwrap();
                let (a, b) = r.split_once('-').unwrap();
                (u64::from_str_radix(a, 16).unwrap()..u64::from_str_radix(b, 16).unwrap())
                    .contains(&address)
            });
            eprintln!("{address:x} in {}", region.unwrap_or("?"));
        }
    }
    // The scan finds what is there: a deliberate plain copy is counted, then wiped.
    let mut control = marker.to_vec();
    let control_count = scanner.find(&marker, &skip).len();
    zeroize::Zeroize::zeroize(&mut control);
    drop(control);
    println!("copies of a secret value in the controller's writable memory (this process):");
    println!("  control, one deliberate copy held: {control_count} raw");
    println!(
        "  before the reconcile: {} raw, {} base64",
        before.0, before.1
    );
    println!(
        "  after the reconcile (Secret written, data key cached): {} raw, {} base64",
        after.0, after.1
    );
}
