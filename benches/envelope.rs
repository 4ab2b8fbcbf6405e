//! Seal and open throughput of the envelope format, for a typical value and the 1 MiB maximum,
//! and of a whole Secret through the in-memory KMS (no network).
//! Run: cargo bench --bench envelope

use std::collections::BTreeMap;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kmseal::binding::{Binding, Scope};
use kmseal::envelope::{self, DataKey, Header, Version, WrapAlgorithm};
use kmseal::kms::MemoryKms;
use kmseal::random::OsRandom;
use kmseal::seal::{self, PlainSecret, Wrapper};
use zeroize::Zeroizing;

fn header() -> Header {
    Header {
        version: Version::V2,
        scope: Scope::Strict,
        algorithm: WrapAlgorithm::KmsSymmetric,
        wrapped_at: 1_764_000_000,
        key_arn: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            .into(),
        key_material_id: Some("0f".repeat(32)),
        wrapped_key: vec![7; 184],
    }
}

fn envelope_bench(c: &mut Criterion) {
    let key = DataKey::from_bytes([1; 32]);
    let binding = Binding::new(Scope::Strict, "prod", "db-credentials");
    let header = header();
    let mut group = c.benchmark_group("envelope");
    for (label, size) in [
        ("64 B", 64usize),
        ("4 KiB", 4096),
        ("1 MiB", envelope::MAX_PLAINTEXT_LEN),
    ] {
        let value = vec![0x42u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", label), &value, |b, value| {
            b.iter(|| envelope::seal(&header, &key, [9; 12], &binding, "password", value).unwrap())
        });
        let sealed = envelope::seal(&header, &key, [9; 12], &binding, "password", &value).unwrap();
        group.bench_with_input(
            BenchmarkId::new("parse+open", label),
            &sealed,
            |b, sealed| {
                b.iter(|| {
                    let parsed = envelope::parse(sealed).unwrap();
                    parsed.open(&key, &binding, "password").unwrap()
                })
            },
        );
    }
    group.finish();
}

fn secret_bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kms = MemoryKms::new("eu-west-1");
    let key_id = kms.create_key();
    let secret = PlainSecret {
        namespace: Some("prod".into()),
        name: "db".into(),
        data: (0..8)
            .map(|i| (format!("item{i}"), Zeroizing::new(vec![0x42u8; 256])))
            .collect::<BTreeMap<_, _>>(),
        ..PlainSecret::default()
    };
    let wrapper = Wrapper::Kms {
        kms: &kms,
        key_id: &key_id,
    };
    let mut group = c.benchmark_group("secret (8 items of 256 B, in-memory KMS)");
    group.bench_function("seal", |b| {
        b.iter(|| {
            runtime
                .block_on(seal::seal_secret(
                    &wrapper,
                    &secret,
                    Scope::Strict,
                    &mut OsRandom,
                    0,
                ))
                .unwrap()
        })
    });
    let sealed = runtime
        .block_on(seal::seal_secret(
            &wrapper,
            &secret,
            Scope::Strict,
            &mut OsRandom,
            0,
        ))
        .unwrap();
    let (policy, aliases) = (
        kmseal::policy::KeyPolicy::unrestricted(),
        kmseal::policy::ResolvedAliases::new(),
    );
    let rules = kmseal::open::Rules {
        policy: &policy,
        aliases: &aliases,
    };
    group.bench_function("open", |b| {
        b.iter(|| {
            runtime.block_on(kmseal::open::open_all(
                &kms,
                &sealed,
                "prod",
                "db",
                rules,
                kmseal::kms::Principal::CONTROLLER,
                None,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, envelope_bench, secret_bench);
criterion_main!(benches);
