//! Property tests: random routes, payloads and classes round-trip with replies;
//! random modifications are dropped at the next hop; decoders and relays fed
//! arbitrary bytes never panic and never accept them.

use std::sync::{Mutex, OnceLock};

use fed_onion::{
    BuildOptions, DropReason, MAX_HOPS, Message, OnionKeyCertificate, Processed, ReplyPacket,
    SizeClass,
};
use proptest::prelude::*;

use crate::{End, NOW, Net};

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(crate::cases(default))
    }
}

/// One federation shared by the property tests, so that key generation is paid once.
fn net() -> &'static Mutex<Net> {
    static NET: OnceLock<Mutex<Net>> = OnceLock::new();
    NET.get_or_init(|| Mutex::new(Net::new(MAX_HOPS + 1, 70)))
}

/// A route: `len` distinct node indices drawn by a permutation.
fn route() -> impl Strategy<Value = Vec<usize>> {
    (
        1..=MAX_HOPS,
        Just((0..=MAX_HOPS).collect::<Vec<usize>>()).prop_shuffle(),
    )
        .prop_map(|(len, perm)| perm[..len].to_vec())
}

fn class() -> impl Strategy<Value = Option<SizeClass>> {
    prop_oneof![
        4 => Just(None),
        1 => Just(Some(SizeClass::Small)),
        1 => Just(Some(SizeClass::Large)),
    ]
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn random_routes_and_payloads_round_trip(
        idx in route(),
        payload in prop::collection::vec(any::<u8>(), 0..3000),
        answer in prop::collection::vec(any::<u8>(), 0..3000),
        class in class(),
        reply in any::<bool>(),
    ) {
        let mut net = net().lock().unwrap_or_else(|e| e.into_inner());
        let mut built = net.build(&idx, &payload, BuildOptions { class, reply });
        let expected = class.unwrap_or(SizeClass::Small);
        prop_assert_eq!(built.packet.class(), expected);
        let pending = built.reply.take();
        prop_assert_eq!(pending.is_some(), reply);
        let journey = net.drive(built, Some(&answer), |_, _| {});
        prop_assert_eq!(journey.payload(), payload.as_slice());
        for hop in &journey.hops[..idx.len()] {
            prop_assert_eq!(hop.input.len(), expected.packet_len());
        }
        match (pending, &journey.end) {
            (Some(p), End::Delivered { reply: Some(r), .. }) => {
                prop_assert_eq!(p.open(r).unwrap(), answer);
            }
            (None, End::Delivered { reply: None, .. }) => {}
            _ => prop_assert!(false, "reply expectation not met"),
        }
    }

    #[test]
    fn random_modifications_are_dropped_at_the_next_hop(
        idx in route(),
        hop in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let mut net = net().lock().unwrap_or_else(|e| e.into_inner());
        let built = net.build(&idx, b"payload", BuildOptions::default());
        let hop = hop.index(idx.len());
        let len = SizeClass::Small.packet_len();
        let at = at.index(len);
        let journey = net.drive(built, None, |i, bytes| {
            if i == hop {
                bytes[at] ^= mask;
            }
        });
        match journey.end {
            End::Dropped(i, reason) => {
                prop_assert_eq!(i, hop);
                prop_assert!(matches!(
                    reason,
                    DropReason::BadMac | DropReason::UnknownEpoch | DropReason::Malformed
                ));
            }
            End::Delivered { .. } => prop_assert!(false, "modified packet delivered"),
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Message::from_bytes(&bytes);
        let _ = ReplyPacket::from_bytes(&bytes);
        let _ = OnionKeyCertificate::from_bytes(&bytes);
        let mut net = net().lock().unwrap_or_else(|e| e.into_inner());
        let (at, from) = (net.ids[0], net.sender);
        let p = net.relay(at).process_bytes(&bytes, from, NOW);
        prop_assert!(matches!(p, Processed::Drop(DropReason::Malformed)));
    }

    #[test]
    fn certificate_decoder_survives_mutations(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let net = net().lock().unwrap_or_else(|e| e.into_inner());
        let good = net.cert(0).as_bytes().to_vec();
        let mut bad = good.clone();
        for (i, v) in &flips {
            bad[i.index(good.len())] = *v;
        }
        if bad != good {
            prop_assert!(OnionKeyCertificate::from_bytes(&bad).is_err());
        }
        let _ = OnionKeyCertificate::from_bytes(&good[..cut.index(good.len())]);
    }
}

proptest! {
    #![proptest_config(config(16))]

    #[test]
    fn well_framed_garbage_is_dropped(
        fill in any::<[u8; 32]>(),
        class in prop_oneof![Just(SizeClass::Small), Just(SizeClass::Large)],
        reply in any::<bool>(),
        epoch in prop_oneof![Just(1u64), any::<u64>()],
    ) {
        // Random bytes in a valid envelope reach the cryptographic checks.
        let len = if reply { class.reply_packet_len() } else { class.packet_len() };
        let mut bytes: Vec<u8> = (0..len).map(|i| fill[i % 32] ^ (i as u8).wrapping_mul(151)).collect();
        bytes[..4].copy_from_slice(&[1, if reply { 2 } else { 1 }, if class == SizeClass::Small { 1 } else { 2 }, 0]);
        if !reply {
            bytes[36..44].copy_from_slice(&epoch.to_be_bytes());
        }
        let mut net = net().lock().unwrap_or_else(|e| e.into_inner());
        let (at, from) = (net.ids[1], net.sender);
        let p = net.relay(at).process_bytes(&bytes, from, NOW);
        let expected = if reply {
            DropReason::UnknownReply
        } else if epoch == 1 {
            DropReason::BadMac
        } else {
            DropReason::UnknownEpoch
        };
        prop_assert!(matches!(p, Processed::Drop(r) if r == expected), "{:?}", p);
    }
}
