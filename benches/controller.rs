//! The controller's reconcile logic over many EncryptedSecrets: an in-memory cluster and the
//! in-memory KMS with added latency, behind `CachingKms(MeteredKms(..))` (the controller's KMS
//! stack without its rate limiter). Prints one table of figures; it asserts nothing about
//! timings. Figures and how to read them: docs/performance.md.
//!
//! Run: cargo bench --bench controller [-- --objects N --kms-latency-ms M --concurrency C
//!      --cache-capacity K]
//!
//! Phases, each over all N objects:
//! 1. cold start: no Secret exists yet, the data-key cache is empty;
//! 2. full resync: nothing changed;
//! 3. restart: a new reconciler (empty cache) over the same cluster and KMS;
//! 4. drift repair: 1% of the Secrets were edited by someone else.
//!
//! Without `--bench` (as `cargo test --benches` and cargo-nextest run it) it does a quick smoke
//! run instead: 100 objects, no KMS latency, unless the flags say otherwise. It answers the test
//! harness's `--list` with that one smoke test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::ByteString;
use kmseal::api::EncryptedSecret;
use kmseal::binding::Scope;
use kmseal::controller::fake::InMemoryCluster;
use kmseal::controller::{Admission, Reconciled, Reconciler};
use kmseal::kms::{CachingKms, MemoryKms};
use kmseal::metrics::{MeteredKms, Metrics};
use kmseal::random::OsRandom;
use kmseal::seal::{self, PlainSecret, Wrapper};
use zeroize::Zeroizing;

type Stack = CachingKms<MeteredKms<MemoryKms>>;
type Controller = Reconciler<Stack, InMemoryCluster>;

const NAMESPACES: usize = 50;
const ITEMS: [&str; 3] = ["username", "password", "api-token"];
const VALUE_LEN: usize = 64;
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// The item the drift phase tampers with.
const EDITED_ITEM: &str = "password";

struct Params {
    objects: usize,
    latency: Duration,
    concurrency: usize,
    cache_capacity: usize,
    smoke: bool,
}

fn parse_args() -> Params {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let mut objects = None;
    let mut latency_ms = None;
    let mut concurrency = None;
    let mut cache_capacity = None;
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (args[i].as_str(), None),
        };
        let slot = match flag {
            "--objects" => &mut objects,
            "--kms-latency-ms" => &mut latency_ms,
            "--concurrency" => &mut concurrency,
            "--cache-capacity" => &mut cache_capacity,
            _ => {
                i += 1;
                continue;
            }
        };
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i).cloned().unwrap_or_default()
            }
        };
        match value.parse::<u64>() {
            Ok(n) => *slot = Some(n),
            Err(_) => {
                eprintln!("{flag} needs a non-negative integer, got {value:?}");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    let (default_objects, default_latency) = if smoke { (100, 0) } else { (10_000, 5) };
    Params {
        objects: objects.unwrap_or(default_objects).max(1) as usize,
        latency: Duration::from_millis(latency_ms.unwrap_or(default_latency)),
        concurrency: concurrency.unwrap_or(64).max(1) as usize,
        cache_capacity: cache_capacity.unwrap_or(4096).max(1) as usize,
        smoke,
    }
}

fn namespace(i: usize) -> String {
    format!("team-{:02}", i % NAMESPACES)
}

fn name(i: usize) -> String {
    format!("app-{i:05}")
}

/// A deterministic 64-byte value, so the drift phase can check what was restored.
fn value(i: usize, item: &str) -> Vec<u8> {
    let mut v = format!("{item}-of-app-{i:05}-").into_bytes();
    v.resize(VALUE_LEN, b'x');
    v
}

async fn seal_all(kms: &MemoryKms, key: &str, n: usize) -> Vec<EncryptedSecret> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut objects = Vec::with_capacity(n);
    for i in 0..n {
        let plain = PlainSecret {
            namespace: Some(namespace(i)),
            name: name(i),
            type_: Some("Opaque".into()),
            labels: BTreeMap::from([("app".into(), name(i))]),
            data: ITEMS
                .iter()
                .map(|item| ((*item).to_owned(), Zeroizing::new(value(i, item))))
                .collect(),
            ..PlainSecret::default()
        };
        let mut es = seal::seal_secret(
            &Wrapper::Kms { kms, key_id: key },
            &plain,
            Scope::Strict,
            &mut OsRandom,
            now,
        )
        .await
        .expect("sealing with the in-memory KMS");
        // What the API server adds on create.
        es.metadata.uid = Some(format!("00000000-0000-4000-8000-{i:012}"));
        es.metadata.generation = Some(1);
        objects.push(es);
    }
    objects
}

fn reconciler(memory: MemoryKms, cluster: InMemoryCluster, cache_capacity: usize) -> Controller {
    let metrics = Arc::new(Metrics::new());
    let kms = CachingKms::new(
        MeteredKms::new(memory, metrics.clone()),
        cache_capacity,
        CACHE_TTL,
    );
    Reconciler::new(kms, cluster, metrics, Arc::new(Admission::any_key()))
}

/// Cumulative counters, read before and after a phase.
#[derive(Clone, Copy)]
struct Counters {
    decrypt: u64,
    generate: u64,
    hits: u64,
    misses: u64,
    secret_gets: u64,
    secret_applies: u64,
    status_applies: u64,
    events: u64,
}

impl Counters {
    fn read(r: &Controller) -> Self {
        let memory = r.kms().inner().inner();
        let calls = &r.api().calls;
        Counters {
            decrypt: memory.calls.decrypt.load(Ordering::Relaxed),
            generate: memory.calls.generate_data_key.load(Ordering::Relaxed),
            hits: r.kms().hits(),
            misses: r.kms().misses(),
            secret_gets: calls.secret_gets.load(Ordering::Relaxed),
            secret_applies: calls.secret_applies.load(Ordering::Relaxed),
            status_applies: calls.status_applies.load(Ordering::Relaxed),
            events: calls.events.load(Ordering::Relaxed),
        }
    }

    fn since(self, before: Counters) -> Counters {
        Counters {
            decrypt: self.decrypt - before.decrypt,
            generate: self.generate - before.generate,
            // A restart starts a new cache whose counters begin at zero.
            hits: self.hits.saturating_sub(before.hits),
            misses: self.misses.saturating_sub(before.misses),
            secret_gets: self.secret_gets - before.secret_gets,
            secret_applies: self.secret_applies - before.secret_applies,
            status_applies: self.status_applies - before.status_applies,
            events: self.events - before.events,
        }
    }
}

struct Phase {
    label: &'static str,
    wall: Duration,
    counts: Counters,
    applied: usize,
    up_to_date: usize,
    other: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    rss_kib: u64,
}

/// Reconciles every object once, as the API server currently has it (with its status), with at
/// most `concurrency` reconciles in flight. Like kube-runtime's controller runner, the
/// reconcile futures are polled together in one task.
async fn run_phase(
    label: &'static str,
    r: &Controller,
    objects: &[EncryptedSecret],
    concurrency: usize,
    fresh_cache: bool,
) -> Phase {
    let mut before = Counters::read(r);
    if fresh_cache {
        before.hits = 0;
        before.misses = 0;
    }
    let started = Instant::now();
    let results: Vec<(Option<Reconciled>, Duration)> = futures::stream::iter(objects)
        .map(|es| async move {
            let t = Instant::now();
            let current = r.api().with_status(es);
            let outcome = r.reconcile(&current).await.ok().map(|(o, _)| o);
            (outcome, t.elapsed())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();
    let counts = Counters::read(r).since(before);
    let mut latencies: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let count = |f: fn(&Reconciled) -> bool| {
        results
            .iter()
            .filter(|(o, _)| o.as_ref().is_some_and(f))
            .count()
    };
    let applied = count(|o| *o == Reconciled::Applied);
    let up_to_date = count(|o| *o == Reconciled::UpToDate);
    Phase {
        label,
        wall,
        counts,
        applied,
        up_to_date,
        other: results.len() - applied - up_to_date,
        p50: pct(0.50),
        p99: pct(0.99),
        max: *latencies.last().unwrap_or(&Duration::ZERO),
        rss_kib: proc_status_kib("VmRSS").unwrap_or(0),
    }
}

/// A `kB` field of /proc/self/status (Linux only).
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn print_table(n: usize, phases: &[Phase]) {
    println!(
        "{:<13} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7} {:>8} {:>8} {:>6} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "phase",
        "wall ms",
        "obj/s",
        "Decrypt",
        "/object",
        "hits",
        "misses",
        "Sec GET",
        "Sec write",
        "status",
        "events",
        "applied",
        "up2d",
        "other",
        "p50 ms",
        "p99 ms",
        "max ms",
        "RSS MiB"
    );
    for p in phases {
        println!(
            "{:<13} {:>9.1} {:>9.0} {:>8} {:>7.3} {:>7} {:>7} {:>8} {:>8} {:>7} {:>8} {:>8} {:>6} {:>7} {:>7} {:>7} {:>7} {:>8}",
            p.label,
            p.wall.as_secs_f64() * 1e3,
            n as f64 / p.wall.as_secs_f64(),
            p.counts.decrypt,
            p.counts.decrypt as f64 / n as f64,
            p.counts.hits,
            p.counts.misses,
            p.counts.secret_gets,
            p.counts.secret_applies,
            p.counts.status_applies,
            p.counts.events,
            p.applied,
            p.up_to_date,
            p.other,
            ms(p.p50),
            ms(p.p99),
            ms(p.max),
            mib(p.rss_kib),
        );
    }
}

fn main() {
    // Test runners list a harness-less target's tests with `--list` (cargo-nextest does, for
    // `--all-targets`): offer the smoke run as one test, nothing ignored. Running it then
    // comes back without `--bench`, which is the smoke run.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("smoke: test");
        }
        return;
    }
    let params = parse_args();
    let n = params.objects;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let workers = std::thread::available_parallelism().map_or(0, |p| p.get());
        println!("kmseal controller benchmark{}", if params.smoke { " (smoke run: no --bench flag)" } else { "" });
        println!(
            "objects: {n} in {NAMESPACES} namespaces, {} items of {VALUE_LEN} B each, one data key per object",
            ITEMS.len()
        );
        println!(
            "KMS: CachingKms(capacity {}, TTL {} s) -> MeteredKms -> MemoryKms, {} ms per call",
            params.cache_capacity,
            CACHE_TTL.as_secs(),
            params.latency.as_millis()
        );
        println!(
            "concurrency: {} reconciles in flight; tokio multi-thread runtime, {workers} CPUs available",
            params.concurrency
        );

        // Setup, not measured: sealing makes one GenerateDataKey per object, with no latency.
        let setup = Instant::now();
        let memory = MemoryKms::new("eu-west-1");
        let key = memory.create_key();
        let objects = seal_all(&memory, &key, n).await;
        let memory = memory.with_latency(params.latency);
        let rss_setup = proc_status_kib("VmRSS").unwrap_or(0);
        println!(
            "setup: sealed {n} objects in {} ms ({} GenerateDataKey calls, excluded below); RSS {} MiB",
            ms(setup.elapsed()),
            memory.calls.generate_data_key.load(Ordering::Relaxed),
            mib(rss_setup)
        );
        println!();

        let r = reconciler(memory, InMemoryCluster::new(), params.cache_capacity);
        let mut phases = Vec::new();
        phases.push(run_phase("cold start", &r, &objects, params.concurrency, false).await);
        let created = r.api().secret_count();
        phases.push(run_phase("full resync", &r, &objects, params.concurrency, false).await);

        // A restart: a new process with an empty cache and fresh metrics, same cluster and KMS.
        let (kms, api) = r.into_parts();
        let r = reconciler(kms.into_inner().into_inner(), api, params.cache_capacity);
        phases.push(run_phase("restart", &r, &objects, params.concurrency, true).await);

        // Someone edits 1% of the managed Secrets (at least one).
        let step = 100.min(n);
        let edited: Vec<usize> = (0..n).step_by(step).collect();
        for &i in &edited {
            let mut secret = r
                .api()
                .secret(&namespace(i), &name(i))
                .expect("the Secret exists after the cold start");
            secret
                .data
                .get_or_insert_default()
                .insert(EDITED_ITEM.into(), ByteString(b"edited by hand".to_vec()));
            r.api().put_secret(secret);
        }
        phases.push(run_phase("drift repair", &r, &objects, params.concurrency, false).await);
        let restored = edited
            .iter()
            .filter(|&&i| {
                r.api()
                    .secret(&namespace(i), &name(i))
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(EDITED_ITEM).cloned())
                    .is_some_and(|v| v.0 == value(i, EDITED_ITEM))
            })
            .count();
        let gdk: u64 = phases.iter().map(|p| p.counts.generate).sum();

        print_table(n, &phases);
        println!();
        println!(
            "wall ms: whole phase; obj/s: N / wall; Decrypt: calls that reached the (inner) KMS; hits/misses: data-key cache;"
        );
        println!(
            "Sec GET / Sec write / status / events: cluster API calls; applied / up2d (up to date) / other: reconcile results;"
        );
        println!(
            "p50/p99/max ms: one reconcile, from its start (once it has a slot) to its end; RSS: VmRSS after the phase."
        );
        println!();
        println!("Secrets created by the cold start: {created} of {n}");
        println!(
            "drift: {} Secrets edited, {} re-applied in the drift phase, {restored} restored to the sealed value",
            edited.len(),
            phases[3].applied
        );
        println!("GenerateDataKey calls during the phases: {gdk}");
        println!(
            "memory: VmHWM (peak RSS) {} MiB, VmRSS {} MiB at the end, {} MiB after setup",
            mib(proc_status_kib("VmHWM").unwrap_or(0)),
            mib(proc_status_kib("VmRSS").unwrap_or(0)),
            mib(rss_setup)
        );
        drop(r);
    });
}
