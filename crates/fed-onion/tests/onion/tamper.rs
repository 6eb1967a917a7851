//! Proof: a packet modified anywhere, header or body, at any hop, is dropped by
//! the next honest hop (never delivered altered). Each field of the layout is hit
//! at several offsets at every hop of a 4-hop route, and a strided sweep covers
//! the whole packet at every hop. Replies modified on the way back fail to open.

use fed_crypto::XWING_CIPHERTEXT_LEN;
use fed_onion::{
    BuildOptions, DropReason, EPOCH_LEN, HEADER_LEN, MAC_LEN, PREFIX_LEN, ROUTING_LEN, SLOT_LEN,
    SizeClass,
};

use crate::{End, Net};

const HOPS: usize = 4;

/// Offsets of every field of a forward packet, a few per field.
fn field_offsets(class: SizeClass) -> Vec<(&'static str, usize)> {
    let mac = PREFIX_LEN;
    let epoch = mac + MAC_LEN;
    let ct = epoch + EPOCH_LEN;
    let beta = ct + XWING_CIPHERTEXT_LEN;
    let body = PREFIX_LEN + HEADER_LEN;
    let end = class.packet_len();
    let mut v = vec![
        ("version", 0),
        ("kind", 1),
        ("class", 2),
        ("reserved", 3),
        ("mac start", mac),
        ("mac end", epoch - 1),
        ("epoch (high)", epoch),
        ("epoch (low)", ct - 1),
        ("ciphertext: ML-KEM start", ct),
        ("ciphertext: ML-KEM middle", ct + 544),
        ("ciphertext: ML-KEM end", ct + 1087),
        ("ciphertext: X25519 start", ct + 1088),
        ("ciphertext: X25519 end", beta - 1),
        ("routing: command", beta),
        ("routing: flags", beta + 1),
        ("routing: next hop", beta + 2),
        ("routing: reply id", beta + 34),
        ("routing: reserved", beta + ROUTING_LEN - 1),
        ("next mac", beta + ROUTING_LEN),
        ("next epoch", beta + ROUTING_LEN + MAC_LEN),
        ("next ciphertext", beta + SLOT_LEN - 1),
        ("header end", body - 1),
        ("body start", body),
        ("body middle", body + class.body_len() / 2),
        ("body tag", end - 16),
        ("body end", end - 1),
    ];
    for k in 2..6 {
        v.push(("slot boundary", beta + k * SLOT_LEN));
    }
    v
}

fn expect_dropped_at(net: &mut Net, class: SizeClass, hop: usize, at: usize, mask: u8) {
    let opts = BuildOptions {
        class: Some(class),
        reply: true,
    };
    let built = net.build(&[0, 1, 2, 3], b"the real query", opts);
    let journey = net.drive(built, None, |i, bytes| {
        if i == hop {
            bytes[at] ^= mask;
        }
    });
    match journey.end {
        End::Dropped(i, reason) => {
            assert_eq!(
                i, hop,
                "offset {at}: dropped at hop {i}, not at the next hop {hop}"
            );
            assert!(
                matches!(
                    reason,
                    DropReason::BadMac | DropReason::UnknownEpoch | DropReason::Malformed
                ),
                "offset {at}: unexpected reason {reason}"
            );
        }
        End::Delivered { payload, .. } => {
            panic!("offset {at} modified before hop {hop}: delivered {payload:?}")
        }
    }
}

#[test]
fn every_field_at_every_hop_is_protected() {
    let mut net = Net::new(HOPS, 20);
    for class in SizeClass::ALL {
        for (name, at) in field_offsets(class) {
            for hop in 0..HOPS {
                // A single bit and a whole byte.
                for mask in [0x01, 0xff] {
                    let _ = name;
                    expect_dropped_at(&mut net, class, hop, at, mask);
                }
            }
        }
    }
}

#[test]
fn strided_sweep_of_every_region_at_every_hop() {
    let mut net = Net::new(HOPS, 21);
    let class = SizeClass::Small;
    let stride = 149; // prime, so the sweep hits every alignment
    for hop in 0..HOPS {
        let mut at = hop * 37 % stride;
        while at < class.packet_len() {
            expect_dropped_at(&mut net, class, hop, at, 0x80);
            at += stride;
        }
    }
}

#[test]
fn truncated_or_extended_packets_are_dropped() {
    let mut net = Net::new(2, 22);
    for change in [-1isize, 1, -100] {
        let built = net.build(&[0, 1], b"q", BuildOptions::default());
        let journey = net.drive(built, None, |i, bytes| {
            if i == 1 {
                if change > 0 {
                    bytes.push(0);
                } else {
                    bytes.truncate(bytes.len() - change.unsigned_abs());
                }
            }
        });
        assert!(matches!(
            journey.end,
            End::Dropped(1, DropReason::Malformed)
        ));
    }
}

#[test]
fn modified_replies_do_not_open() {
    let mut net = Net::new(HOPS, 23);
    let reply_len = SizeClass::Small.reply_packet_len();
    // Reply hops are indices HOPS.. of the journey (relay HOPS-2 first).
    for reply_hop in HOPS..(2 * HOPS - 1) {
        for at in [
            PREFIX_LEN + 16,
            PREFIX_LEN + 16 + 1000,
            reply_len - 17,
            reply_len - 1,
        ] {
            let mut built = net.build(&[0, 1, 2, 3], b"q", BuildOptions::default());
            let pending = built.reply.take().unwrap();
            let journey = net.drive(built, Some(b"secret answer"), |i, bytes| {
                if i == reply_hop {
                    bytes[at] ^= 0x04;
                }
            });
            assert!(matches!(
                pending.open(journey.reply()),
                Err((_, fed_onion::Error::ReplyAuthentication))
            ));
        }
        // A modified reply id finds no state: dropped by that relay.
        let mut built = net.build(&[0, 1, 2, 3], b"q", BuildOptions::default());
        built.reply.take();
        let journey = net.drive(built, Some(b"a"), |i, bytes| {
            if i == reply_hop {
                bytes[PREFIX_LEN] ^= 1;
            }
        });
        assert!(matches!(
            journey.end,
            End::Dropped(i, DropReason::UnknownReply) if i == reply_hop
        ));
    }
    // And a modification of the last leg (first relay to sender) fails to open.
    let mut built = net.build(&[0, 1, 2, 3], b"q", BuildOptions::default());
    let pending = built.reply.take().unwrap();
    let journey = net.drive(built, Some(b"secret answer"), |_, _| {});
    let mut bytes = journey.reply().as_bytes().to_vec();
    bytes[reply_len / 2] ^= 0x10;
    let modified = fed_onion::ReplyPacket::from_bytes(&bytes).unwrap();
    // The failure hands the pending reply back: the genuine reply still opens.
    let Err((pending, _)) = pending.open(&modified) else {
        panic!("a modified reply opened")
    };
    assert_eq!(pending.open(journey.reply()).unwrap(), b"secret answer");
}
