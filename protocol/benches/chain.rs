//! Capability chain verification against raw ed25519 verification, in one run.
//!
//! Run: `cargo bench -p hearth-protocol --bench chain`. Figures are recorded in
//! docs/benchmarks.md.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    missing_docs
)]

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer as _, SigningKey};
use hearth_protocol::capability::{
    Actions, Capability, Caveats, Chain, Grant, ModuleHash, Resource, RevocationSet, Verifier,
    VerifierConfig,
};
use hearth_protocol::key::{HolderKey, OwnerKey};
use hearth_protocol::time::UnixMillis;

/// Grants like those of an approved manifest: compute, one store with caveats, an export.
fn grants() -> Vec<Grant> {
    let caveats = Caveats {
        module_hash: Some(ModuleHash([7; 32])),
        max_result_bytes: Some(4096),
        max_runs: Some(100),
        devices: Some(BTreeSet::from(["home".to_owned()])),
        ..Caveats::default()
    };
    vec![
        Grant {
            resource: Resource::Compute,
            actions: Actions::RUN,
            caveats: caveats.clone(),
        },
        Grant {
            resource: Resource::Store("location".into()),
            actions: Actions::READ,
            caveats: Caveats {
                fields: Some(BTreeSet::from(["lat".into(), "lon".into(), "tst".into()])),
                ..caveats.clone()
            },
        },
        Grant {
            resource: Resource::Export("https://study.example.org/submit".into()),
            actions: Actions::EXPORT,
            caveats,
        },
    ]
}

fn chain(depth: u8) -> (OwnerKey, Chain) {
    let owner = OwnerKey::from_seed([1; 32]);
    let holders: Vec<HolderKey> = (0..depth)
        .map(|n| HolderKey::from_seed([n + 10; 32]))
        .collect();
    let root = Capability {
        issuer: owner.public(),
        audience: holders[0].public(),
        parent: None,
        grants: grants(),
        not_before: UnixMillis(1_000),
        expires: UnixMillis(10_000_000),
        nonce: [0; 16],
    }
    .sign(owner.secret())
    .unwrap();
    let mut chain = Chain::root(root);
    for n in 1..depth as usize {
        let link = Capability {
            issuer: holders[n - 1].public(),
            audience: holders[n].public(),
            parent: Some(chain.leaf().id()),
            grants: grants(),
            not_before: UnixMillis(1_000),
            expires: UnixMillis(10_000_000),
            nonce: [n as u8; 16],
        }
        .sign(holders[n - 1].secret())
        .unwrap();
        chain = chain.extend(link).unwrap();
    }
    (owner, chain)
}

fn bench(c: &mut Criterion) {
    // Raw ed25519: the same strict verification on a message of the same shape.
    let key = SigningKey::from_bytes(&[3; 32]);
    let verifying = key.verifying_key();
    let message = [5u8; 52];
    let signature = key.sign(&message);
    c.bench_function("ed25519 verify_strict (raw)", |b| {
        b.iter(|| {
            verifying
                .verify_strict(black_box(&message), black_box(&signature))
                .unwrap()
        })
    });

    let key_bytes = verifying.to_bytes();
    c.bench_function("ed25519 verify_strict (raw, key parsed from bytes)", |b| {
        b.iter(|| {
            let key = ed25519_dalek::VerifyingKey::from_bytes(black_box(&key_bytes)).unwrap();
            key.verify_strict(black_box(&message), black_box(&signature))
                .unwrap()
        })
    });

    for depth in 1..=3u8 {
        let (owner, chain) = chain(depth);
        let revocations = RevocationSet::new(owner.public());
        let now = UnixMillis(5_000);
        let mut uncached = Verifier::new(
            owner.public(),
            VerifierConfig::default().with_cache_capacity(0),
        );
        c.bench_function(&format!("chain verify depth {depth} (uncached)"), |b| {
            b.iter(|| {
                uncached
                    .verify(black_box(&chain), now, &revocations)
                    .unwrap()
            })
        });
        let mut cached = Verifier::new(owner.public(), VerifierConfig::default());
        cached.verify(&chain, now, &revocations).unwrap();
        c.bench_function(&format!("chain verify depth {depth} (cached)"), |b| {
            b.iter(|| cached.verify(black_box(&chain), now, &revocations).unwrap())
        });
    }

    let (_, chain2) = chain(2);
    let bytes = chain2.encode();
    c.bench_function("chain decode depth 2", |b| {
        b.iter(|| Chain::decode(black_box(&bytes)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
