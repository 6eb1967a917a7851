//! fed-crypto benchmarks, each beside a peer measured in the same run:
//! X-Wing on every ML-KEM backend of the build (`--features fast-kem` for
//! libcrux) against the `x-wing` crate, the channel against raw `aes-gcm` on the
//! same buffers, and hybrid against Ed25519-only signatures.
//!
//! Run with `cargo xtask bench crypto`; figures go to docs/BENCHMARKS.md.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use aes_gcm::{Aes256Gcm, KeyInit, aead::AeadInOut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fed_crypto::{
    ChannelConfig, Identity, KemBackend, Role, SecureChannel, XWingSecretKey,
    mlkem::{MlKemDecapsulationKey, MlKemEncapsulationKey},
};
use x_wing::{Decapsulate, Decapsulator};

const SEED: [u8; 32] = [0x42; 32];
const ESEED: [u8; 64] = [0x24; 64];

fn xwing(c: &mut Criterion) {
    let mut g = c.benchmark_group("xwing");
    let theirs = x_wing::DecapsulationKey::from(SEED);
    let their_ek = theirs.encapsulation_key().clone();
    let eseed = ESEED.into();
    for &backend in KemBackend::ALL {
        let name = backend.name();
        g.bench_function(format!("keygen/fed-crypto-{name}"), |b| {
            b.iter(|| XWingSecretKey::from_seed_with(black_box(&SEED), backend))
        });
        let ours = XWingSecretKey::from_seed_with(&SEED, backend);
        g.bench_function(format!("encaps/fed-crypto-{name}"), |b| {
            b.iter(|| ours.public_key().encapsulate_derand(black_box(&ESEED)))
        });
        let (ct, _) = ours.public_key().encapsulate_derand(&ESEED);
        g.bench_function(format!("decaps/fed-crypto-{name}"), |b| {
            b.iter(|| ours.decapsulate(black_box(&ct)))
        });
    }
    g.bench_function("keygen/x-wing", |b| {
        b.iter(|| x_wing::DecapsulationKey::from(black_box(SEED)))
    });
    g.bench_function("encaps/x-wing", |b| {
        b.iter(|| their_ek.encapsulate_deterministic(black_box(&eseed)))
    });
    let ours = XWingSecretKey::from_seed(&SEED);
    let (ct, _) = ours.public_key().encapsulate_derand(&ESEED);
    let their_ct = x_wing::Ciphertext::try_from(ct.as_bytes().as_slice()).unwrap();
    g.bench_function("decaps/x-wing", |b| {
        b.iter(|| theirs.decapsulate(black_box(&their_ct)))
    });
    g.finish();
}

/// The parts X-Wing is made of, to show where its time goes: X25519, and
/// ML-KEM-768 on each backend.
fn components(c: &mut Criterion) {
    let mut g = c.benchmark_group("xwing-components");
    let secret = x25519_dalek::StaticSecret::from([7u8; 32]);
    let public = x25519_dalek::PublicKey::from([9u8; 32]);
    g.bench_function("x25519/base-mul", |b| {
        b.iter(|| x25519_dalek::PublicKey::from(black_box(&secret)))
    });
    g.bench_function("x25519/dh", |b| {
        b.iter(|| secret.diffie_hellman(black_box(&public)))
    });
    let seed = [3u8; 64];
    let m = [5u8; 32];
    for &backend in KemBackend::ALL {
        let name = backend.name();
        g.bench_function(format!("ml-kem-768/keygen/{name}"), |b| {
            b.iter(|| MlKemDecapsulationKey::from_seed(backend, black_box(&seed)))
        });
        let dk = MlKemDecapsulationKey::from_seed(backend, &seed);
        let ek = dk.encapsulation_key().clone();
        g.bench_function(format!("ml-kem-768/encaps/{name}"), |b| {
            b.iter(|| ek.encapsulate_derand(black_box(&m)))
        });
        let (ct, _) = ek.encapsulate_derand(&m);
        g.bench_function(format!("ml-kem-768/decaps/{name}"), |b| {
            b.iter(|| dk.decapsulate(black_box(&ct)))
        });
        let ek_bytes = *ek.as_bytes();
        g.bench_function(format!("ml-kem-768/ek-decode/{name}"), |b| {
            b.iter(|| MlKemEncapsulationKey::from_bytes(backend, black_box(&ek_bytes)).unwrap())
        });
    }
    g.finish();
}

fn signatures(c: &mut Criterion) {
    let mut g = c.benchmark_group("sign");
    let msg = [7u8; 256];
    const LABEL: &str = "exo-federation v1 bench";
    for (name, pq) in [("ed25519", false), ("hybrid-ed25519-ml-dsa-65", true)] {
        let id = Identity::from_seeds(&[1; 32], pq.then_some(&[2; 32]));
        let sig = id.sign(LABEL, &msg).unwrap();
        g.bench_function(format!("sign/{name}"), |b| {
            b.iter(|| id.sign(LABEL, black_box(&msg)).unwrap())
        });
        g.bench_function(format!("verify/{name}"), |b| {
            b.iter(|| id.public().verify(LABEL, black_box(&msg), &sig).unwrap())
        });
    }
    g.finish();
}

fn channel(c: &mut Criterion) {
    const LEN: usize = 16 * 1024;
    let mut g = c.benchmark_group("channel-16KiB-seal+open");
    g.throughput(Throughput::Bytes(LEN as u64));
    let payload = vec![0x5au8; LEN];

    let mut tx = SecureChannel::new(
        &[1; 32],
        &[2; 32],
        Role::Initiator,
        ChannelConfig::default(),
    )
    .unwrap();
    let mut rx = SecureChannel::new(
        &[1; 32],
        &[2; 32],
        Role::Responder,
        ChannelConfig::default(),
    )
    .unwrap();
    let mut frame = Vec::with_capacity(LEN + fed_crypto::FRAME_OVERHEAD);
    g.bench_function("fed-crypto", |b| {
        b.iter(|| {
            frame.clear();
            tx.seal_into(black_box(&payload), &mut frame).unwrap();
            black_box(rx.open_in_place(&mut frame).unwrap());
        })
    });

    let cipher = Aes256Gcm::new(&[3u8; 32].into());
    let mut buf = payload.clone();
    let mut counter = 0u64;
    g.bench_function("raw-aes-gcm", |b| {
        b.iter(|| {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            let nonce = nonce.into();
            buf.copy_from_slice(black_box(&payload));
            let tag = cipher
                .encrypt_inout_detached(&nonce, &[0u8; 18], buf.as_mut_slice().into())
                .unwrap();
            cipher
                .decrypt_inout_detached(&nonce, &[0u8; 18], buf.as_mut_slice().into(), &tag)
                .unwrap();
            black_box(&buf);
        })
    });
    g.finish();
}

criterion_group!(benches, xwing, components, signatures, channel);
criterion_main!(benches);
