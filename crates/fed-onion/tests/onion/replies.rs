//! Proof: replies travel back along the path for every route length; no relay can
//! read them; relay state stays within its bounds under a flood; reply state is
//! single-use, expires, and answers only to the node the packet went to.

use fed_onion::{
    BuildOptions, DropReason, Error, MAX_HOPS, Processed, RelayConfig, ReplyPacket, SizeClass,
};

use crate::{End, NOW, Net};

#[test]
fn round_trip_for_every_route_length() {
    let mut net = Net::new(MAX_HOPS, 40);
    for n in 1..=MAX_HOPS {
        let idx: Vec<usize> = (0..n).rev().collect();
        let mut built = net.build(
            &idx,
            format!("query over {n} hops").as_bytes(),
            BuildOptions::default(),
        );
        let pending = built.reply.take().unwrap();
        assert_eq!(pending.first_hop(), net.ids[n - 1]);
        assert_eq!(pending.destination(), net.ids[0]);
        let answer = format!("answer over {n} hops");
        let journey = net.drive(built, Some(answer.as_bytes()), |_, _| {});
        assert_eq!(journey.payload(), format!("query over {n} hops").as_bytes());
        let reply = journey.reply();
        assert_eq!(reply.reply_id(), pending.reply_id());
        assert_eq!(pending.open(reply).unwrap(), answer.as_bytes());
        // Every relay's reply state was used up.
        for id in &net.ids {
            assert_eq!(net.nodes[id].relay.reply_states(), 0);
        }
    }
}

#[test]
fn relays_cannot_read_the_reply() {
    let mut net = Net::new(4, 41);
    let mut built = net.build(&[0, 1, 2, 3], b"q", BuildOptions::default());
    let pending = built.reply.take().unwrap();
    let secret = b"THE-SECRET-ANSWER-THE-SECRET-ANSWER";
    let journey = net.drive(built, Some(secret), |_, _| {});
    // No reply packet on any link contains the answer, or any 8 bytes of it.
    for hop in &journey.hops[3..] {
        for packet in [Some(&hop.input), hop.output.as_ref()]
            .into_iter()
            .flatten()
        {
            for w in secret.windows(8) {
                assert!(
                    !packet.windows(8).any(|p| p == w),
                    "plaintext visible on a link"
                );
            }
        }
    }
    assert_eq!(pending.open(journey.reply()).unwrap(), secret);
    // Another sender's keys (a relay's view at best) do not open it.
    let mut other = net.build(&[0, 1, 2, 3], b"q", BuildOptions::default());
    let other_pending = other.reply.take().unwrap();
    let Err((other_pending, Error::UnexpectedReply)) = other_pending.open(journey.reply()) else {
        panic!("another sender's keys opened the reply")
    };
    // Even with the reply id forced to match, the keys are wrong.
    let mut bytes = journey.reply().as_bytes().to_vec();
    bytes[4..20].copy_from_slice(&other_pending.reply_id().0);
    let relabelled = ReplyPacket::from_bytes(&bytes).unwrap();
    assert!(matches!(
        other_pending.open(&relabelled),
        Err((_, Error::ReplyAuthentication))
    ));
}

#[test]
fn reply_state_is_single_use_and_source_checked() {
    let mut net = Net::new(3, 42);
    let mut built = net.build(&[0, 1, 2], b"q", BuildOptions::default());
    let pending = built.reply.take().unwrap();
    // Forward by hand to the destination.
    let (a, b, c) = (net.ids[0], net.ids[1], net.ids[2]);
    let Processed::Forward { packet, .. } = net.step(a, net.sender, built.packet.as_bytes()) else {
        panic!()
    };
    let Processed::Forward { packet, .. } = net.step(b, a, packet.as_bytes()) else {
        panic!()
    };
    let Processed::Deliver(d) = net.step(c, b, packet.as_bytes()) else {
        panic!()
    };
    let (to, reply) = d.reply.unwrap().seal(b"r", None).unwrap();
    assert_eq!(to, b);
    // From the wrong node: dropped, state kept.
    let p = net.step(b, a, reply.as_bytes());
    assert!(matches!(
        p,
        Processed::Drop(DropReason::UnexpectedReplySource)
    ));
    assert_eq!(net.relay(b).reply_states(), 1);
    // From the right node: passed on, state used up; a replay finds nothing.
    let Processed::Reply {
        previous_hop,
        packet,
    } = net.step(b, c, reply.as_bytes())
    else {
        panic!()
    };
    assert_eq!(previous_hop, a);
    let p = net.step(b, c, reply.as_bytes());
    assert!(matches!(p, Processed::Drop(DropReason::UnknownReply)));
    let Processed::Reply {
        previous_hop,
        packet,
    } = net.step(a, b, packet.as_bytes())
    else {
        panic!()
    };
    assert_eq!(previous_hop, net.sender);
    assert_eq!(pending.open(&packet).unwrap(), b"r");
}

#[test]
fn reply_state_expires() {
    let config = RelayConfig::default().with_reply_ttl_ms(5_000);
    let mut net = Net::with(2, 43, config, |_| true);
    let (a, b) = (net.ids[0], net.ids[1]);
    let built = net.build(&[0, 1], b"q", BuildOptions::default());
    let Processed::Forward { packet, .. } = net.step(a, net.sender, built.packet.as_bytes()) else {
        panic!()
    };
    let Processed::Deliver(d) = net.step(b, a, packet.as_bytes()) else {
        panic!()
    };
    let (_, reply) = d.reply.unwrap().seal(b"late", None).unwrap();
    assert_eq!(net.relay(a).poll_timeout(), Some(NOW + 5_000));
    let late = net.relay(a).process_bytes(reply.as_bytes(), b, NOW + 5_000);
    assert!(matches!(late, Processed::Drop(DropReason::ReplyExpired)));
    assert_eq!(net.relay(a).reply_states(), 0);
    // The timeout also clears states nobody replied to.
    let built = net.build(&[0, 1], b"q", BuildOptions::default());
    net.step(a, net.sender, built.packet.as_bytes());
    assert_eq!(net.relay(a).reply_states(), 1);
    net.relay(a).handle_timeout(NOW + 4_999);
    assert_eq!(net.relay(a).reply_states(), 1);
    net.relay(a).handle_timeout(NOW + 5_000);
    assert_eq!(net.relay(a).reply_states(), 0);
}

#[test]
fn relay_state_stays_bounded_under_a_flood() {
    let max = 8;
    let config = RelayConfig::default()
        .with_max_reply_states(max)
        .with_replay_capacity(1_000);
    let mut net = Net::with(2, 44, config, |_| true);
    let (a, b) = (net.ids[0], net.ids[1]);
    let mut handles = Vec::new();
    for i in 0..60 {
        let mut built = net.build(&[0, 1], b"flood", BuildOptions::default());
        let pending = built.reply.take().unwrap();
        let Processed::Forward { packet, .. } = net.step(a, net.sender, built.packet.as_bytes())
        else {
            panic!()
        };
        assert!(net.relay(a).reply_states() <= max, "after {i} packets");
        let Processed::Deliver(d) = net.step(b, a, packet.as_bytes()) else {
            panic!()
        };
        handles.push((pending, d.reply.unwrap()));
    }
    assert_eq!(net.relay(a).reply_states(), max);
    assert_eq!(net.relay(a).replay_tags(1), 60);
    // The oldest states were evicted: their replies are dropped; the newest work.
    for (i, (pending, handle)) in handles.into_iter().enumerate() {
        let (_, reply) = handle.seal(b"r", None).unwrap();
        let p = net.step(a, b, reply.as_bytes());
        if i < 60 - max {
            assert!(
                matches!(p, Processed::Drop(DropReason::UnknownReply)),
                "reply {i}"
            );
        } else {
            let Processed::Reply { packet, .. } = p else {
                panic!("reply {i}: {p:?}")
            };
            assert_eq!(pending.open(&packet).unwrap(), b"r");
        }
    }
    assert_eq!(net.relay(a).reply_states(), 0);
}

#[test]
fn no_reply_means_no_state() {
    let mut net = Net::new(3, 45);
    let opts = BuildOptions {
        class: None,
        reply: false,
    };
    let built = net.build(&[0, 1, 2], b"fire and forget", opts);
    assert!(built.reply.is_none());
    let journey = net.drive(built, Some(b"unused"), |_, _| {});
    assert!(matches!(journey.end, End::Delivered { reply: None, .. }));
    assert_eq!(journey.payload(), b"fire and forget");
    for id in &net.ids {
        assert_eq!(net.nodes[id].relay.reply_states(), 0);
    }
}

#[test]
fn reply_classes() {
    let mut net = Net::new(2, 46);
    let built = net.build(&[0, 1], b"q", BuildOptions::default());
    let Processed::Forward { packet, .. } =
        net.step(net.ids[0], net.sender, built.packet.as_bytes())
    else {
        panic!()
    };
    let Processed::Deliver(d) = net.step(net.ids[1], net.ids[0], packet.as_bytes()) else {
        panic!()
    };
    let too_big = vec![0u8; SizeClass::Small.max_payload_len() + 1];
    let handle = d.reply.unwrap();
    assert_eq!(handle.previous_hop(), net.ids[0]);
    assert!(matches!(
        handle.seal(&too_big, Some(SizeClass::Small)),
        Err(Error::PayloadTooLarge { .. })
    ));
}
