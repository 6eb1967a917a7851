//! Proof: every hop sees the same packet size, for routes of every length up to
//! the maximum, in every class; replies too.

use fed_onion::{BuildOptions, MAX_HOPS, SizeClass};

use crate::{End, Net};

#[test]
fn every_hop_sees_the_same_size_for_every_route_length() {
    let mut net = Net::new(MAX_HOPS, 1);
    for class in SizeClass::ALL {
        for n in 1..=MAX_HOPS {
            let idx: Vec<usize> = (0..n).collect();
            let opts = BuildOptions {
                class: Some(class),
                reply: true,
            };
            let built = net.build(&idx, b"query", opts);
            assert_eq!(built.packet.as_bytes().len(), class.packet_len());
            let journey = net.drive(built, Some(b"answer"), |_, _| {});
            assert_eq!(journey.payload(), b"query");
            // Forward hops: n inputs of the class's packet size.
            for hop in &journey.hops[..n] {
                assert_eq!(
                    hop.input.len(),
                    class.packet_len(),
                    "route of {n}, {class:?}"
                );
            }
            // Forward outputs have the same size as inputs.
            for hop in &journey.hops[..n - 1] {
                assert_eq!(hop.output.as_ref().unwrap().len(), class.packet_len());
            }
            // Reply packets: the destination's and every relay's, one fixed size.
            // (The reply here is small, so it travels in the small class.)
            let reply_len = SizeClass::Small.reply_packet_len();
            assert_eq!(
                journey.hops[n - 1].output.as_ref().unwrap().len(),
                reply_len
            );
            for hop in &journey.hops[n..] {
                assert_eq!(hop.input.len(), reply_len);
                assert_eq!(hop.output.as_ref().unwrap().len(), reply_len);
            }
            assert!(matches!(journey.end, End::Delivered { reply: Some(_), .. }));
            assert_eq!(journey.hops.len(), 2 * n - 1);
        }
    }
}

#[test]
fn payload_size_does_not_change_packet_size() {
    let mut net = Net::new(3, 2);
    let max = SizeClass::Small.max_payload_len();
    let lens: Vec<usize> = [0usize, 1, 100, max]
        .into_iter()
        .map(|len| {
            let built = net.build(&[0, 1, 2], &vec![7u8; len], BuildOptions::default());
            assert_eq!(built.packet.class(), SizeClass::Small);
            built.packet.as_bytes().len()
        })
        .collect();
    assert!(lens.iter().all(|&l| l == SizeClass::Small.packet_len()));
    // One byte more moves to the large class; past the large class it is an error.
    let built = net.build(&[0, 1, 2], &vec![7u8; max + 1], BuildOptions::default());
    assert_eq!(built.packet.class(), SizeClass::Large);
    let route = net.route(&[0, 1, 2]);
    let too_big = vec![0u8; SizeClass::Large.max_payload_len() + 1];
    assert!(matches!(
        fed_onion::build_packet(
            &route,
            &too_big,
            &BuildOptions::default(),
            crate::NOW,
            &mut net.rng
        ),
        Err(fed_onion::Error::PayloadTooLarge { .. })
    ));
    let small_only = BuildOptions {
        class: Some(SizeClass::Small),
        reply: false,
    };
    assert!(matches!(
        fed_onion::build_packet(
            &route,
            &vec![0u8; max + 1],
            &small_only,
            crate::NOW,
            &mut net.rng
        ),
        Err(fed_onion::Error::PayloadTooLarge { .. })
    ));
}

#[test]
fn large_payloads_round_trip_in_the_large_class() {
    let mut net = Net::new(3, 3);
    let payload: Vec<u8> = (0..SizeClass::Large.max_payload_len())
        .map(|i| (i * 31) as u8)
        .collect();
    let answer: Vec<u8> = (0..20_000).map(|i| (i * 7) as u8).collect();
    let built = net.build(&[0, 1, 2], &payload, BuildOptions::default());
    let pending = built.reply.as_ref().map(|p| p.reply_id());
    let mut built = built;
    let opener = built.reply.take().unwrap();
    let journey = net.drive(built, Some(&answer), |_, _| {});
    assert_eq!(journey.payload(), payload.as_slice());
    assert_eq!(journey.reply().class(), SizeClass::Large);
    assert_eq!(Some(journey.reply().reply_id()), pending);
    assert_eq!(opener.open(journey.reply()).unwrap(), answer);
}
