//! fed-onion benchmarks, beside Nym's `sphinx-packet` (classical X25519 Sphinx)
//! measured in the same run:
//!
//! - `build`: a packet over 3 hops (the route `sphinx-packet`'s own bench uses) and
//!   over 4 hops (3 relays + destination, our default), per size class;
//! - `process`: one relay's per-hop processing of a forward packet, per class,
//!   against `sphinx-packet` with its default 1 KiB payload and with payloads of
//!   our body sizes; the destination's processing (delivery); and, as the floor of
//!   any KEM-Sphinx hop, one X-Wing decapsulation.
//!
//! Per-iteration setup (a fresh relay, so the replay cache does not drop the
//! packet; a copy of the packet) is excluded from the timings.
//!
//! Run with `cargo bench -p fed-onion --bench onion -- --warm-up-time 2 --measurement-time 5`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{hint::black_box, time::Duration};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fed_crypto::Identity;
use fed_onion::{
    BuildOptions, KeyEpoch, Message, OnionKey, OnionKeyCertificate, Processed, Relay, RelayConfig,
    SizeClass,
};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
use sphinx_packet::{
    SphinxPacket,
    constants::{DESTINATION_ADDRESS_LENGTH, IDENTIFIER_LENGTH, NODE_ADDRESS_LENGTH},
    crypto::{PrivateKey, PublicKey},
    header::delays,
    packet::builder::SphinxPacketBuilder,
    route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes},
};

const NOW: u64 = 1_700_000_000_000;
const EPOCH: KeyEpoch = KeyEpoch {
    epoch: 1,
    not_before_ms: NOW - 3_600_000,
    not_after_ms: NOW + 3_600_000,
};

struct Hop {
    identity: Identity,
    seed: [u8; 32],
    cert: OnionKeyCertificate,
}

fn hops(n: usize) -> Vec<Hop> {
    (0..n)
        .map(|i| {
            let identity = Identity::from_seeds(&[i as u8 + 1; 32], None);
            let seed = [i as u8 + 100; 32];
            let cert = OnionKey::from_seed(&identity, &seed, EPOCH, true)
                .unwrap()
                .certificate()
                .clone();
            Hop {
                identity,
                seed,
                cert,
            }
        })
        .collect()
}

fn fresh_relay(hop: &Hop) -> Relay {
    let mut relay = Relay::new(hop.identity.node_id(), RelayConfig::default(), None).unwrap();
    relay
        .install_key(OnionKey::from_parts(&hop.seed, hop.cert.clone()).unwrap())
        .unwrap();
    relay
}

fn sphinx_route() -> (Vec<PrivateKey>, Vec<Node>, Destination, Vec<delays::Delay>) {
    let keys: Vec<PrivateKey> = (0..3u8).map(|i| PrivateKey::from([i + 1; 32])).collect();
    let nodes = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Node::new(
                NodeAddressBytes::from_bytes([i as u8 + 2; NODE_ADDRESS_LENGTH]),
                PublicKey::from(k),
            )
        })
        .collect();
    let destination = Destination::new(
        DestinationAddressBytes::from_bytes([3u8; DESTINATION_ADDRESS_LENGTH]),
        [4u8; IDENTIFIER_LENGTH],
    );
    let delays = delays::generate_from_average_duration(3, Duration::from_millis(10));
    (keys, nodes, destination, delays)
}

fn report_sizes() {
    for class in SizeClass::ALL {
        eprintln!(
            "fed-onion {class:?}: body {} B, forward packet {} B, reply packet {} B, max payload {} B",
            class.body_len(),
            class.packet_len(),
            class.reply_packet_len(),
            class.max_payload_len()
        );
    }
    let (_, nodes, destination, delays) = sphinx_route();
    for size in [1024usize, 8 * 1024, 32 * 1024] {
        let packet = SphinxPacketBuilder::new()
            .with_payload_size(size)
            .build_packet(b"query", &nodes, &destination, &delays)
            .unwrap();
        eprintln!("sphinx-packet payload {size} B: packet {} B", packet.len());
    }
}

fn build(c: &mut Criterion) {
    report_sizes();
    let mut g = c.benchmark_group("build");
    let all = hops(4);
    let payload = [0x5au8; 512];
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for n in [3usize, 4] {
        let route: Vec<OnionKeyCertificate> = all[..n].iter().map(|h| h.cert.clone()).collect();
        for class in SizeClass::ALL {
            let opts = BuildOptions {
                class: Some(class),
                reply: true,
            };
            g.bench_function(format!("fed-onion/{n}-hops/{class:?}"), |b| {
                b.iter(|| {
                    fed_onion::build_packet(black_box(&route), &payload, &opts, NOW, &mut rng)
                        .unwrap()
                })
            });
        }
    }
    let (_, nodes, destination, delays) = sphinx_route();
    for size in [1024usize, 8 * 1024, 32 * 1024] {
        g.bench_function(format!("sphinx-packet/3-hops/payload-{size}"), |b| {
            b.iter(|| {
                SphinxPacketBuilder::new()
                    .with_payload_size(size)
                    .build_packet(black_box(&payload[..]), &nodes, &destination, &delays)
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn process(c: &mut Criterion) {
    let mut g = c.benchmark_group("process");
    let all = hops(4);
    let route: Vec<OnionKeyCertificate> = all.iter().map(|h| h.cert.clone()).collect();
    let sender = Identity::from_seeds(&[99; 32], None).node_id();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    for class in SizeClass::ALL {
        let opts = BuildOptions {
            class: Some(class),
            reply: true,
        };
        let built = fed_onion::build_packet(&route, &[0x5a; 512], &opts, NOW, &mut rng).unwrap();
        // The packet as the first relay and as the destination receive it.
        let first = built.packet.clone();
        let mut packet = built.packet;
        let mut from = sender;
        for hop in &all[..3] {
            match fresh_relay(hop).process(Message::Forward(packet), from, NOW) {
                Processed::Forward { packet: p, .. } => packet = p,
                other => panic!("{other:?}"),
            }
            from = hop.identity.node_id();
        }
        let last = packet;

        // Every ML-KEM backend of the build: the relays' keys are made (outside
        // the timing) with the current one.
        for &backend in fed_crypto::KemBackend::ALL {
            backend.set_default();
            let kem = backend.name();
            g.bench_function(format!("fed-onion/relay/{class:?}/{kem}"), |b| {
                b.iter_batched(
                    || (fresh_relay(&all[0]), Message::Forward(first.clone())),
                    |(mut relay, message)| {
                        let out = relay.process(message, sender, NOW);
                        assert!(matches!(out, Processed::Forward { .. }));
                        (relay, out)
                    },
                    BatchSize::SmallInput,
                )
            });
            g.bench_function(format!("fed-onion/destination/{class:?}/{kem}"), |b| {
                b.iter_batched(
                    || (fresh_relay(&all[3]), Message::Forward(last.clone())),
                    |(mut relay, message)| {
                        let out = relay.process(message, from, NOW);
                        assert!(matches!(out, Processed::Deliver(_)));
                        (relay, out)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        fed_crypto::KemBackend::BUILD_DEFAULT.set_default();
    }

    // The floor: the X-Wing decapsulation every hop performs.
    for &backend in fed_crypto::KemBackend::ALL {
        let secret = fed_crypto::XWingSecretKey::from_seed_with(&all[0].seed, backend);
        let (ct, _) = secret.public_key().encapsulate_derand(&[7; 64]);
        g.bench_function(format!("x-wing-decapsulate/{}", backend.name()), |b| {
            b.iter(|| secret.decapsulate(black_box(&ct)))
        });
    }

    let (keys, nodes, destination, delays) = sphinx_route();
    for size in [1024usize, 8 * 1024, 32 * 1024] {
        let packet = SphinxPacketBuilder::new()
            .with_payload_size(size)
            .build_packet(b"query", &nodes, &destination, &delays)
            .unwrap()
            .to_bytes();
        g.bench_function(format!("sphinx-packet/relay/payload-{size}"), |b| {
            b.iter_batched(
                || SphinxPacket::from_bytes(&packet).unwrap(),
                |p| p.process(black_box(&keys[0])).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, build, process);
criterion_main!(benches);
