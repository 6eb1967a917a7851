//! Complete handshakes, and replay, reflection, binding, version and timeout failures.

use std::sync::Arc;

use fed_handshake::{Capability, Error, Initiator, RejectReason, Responder, Suite};

use crate::*;

#[test]
fn both_suites_complete_and_agree() {
    for suite in [Suite::Default, Suite::PqAuth] {
        let s = setup(suite, 1);
        let (i, r) = s.start(2);
        let mut rec = record(i, r);
        let mut ci = established_i(&mut rec.i);
        let mut cr = established_r(&mut rec.r);
        assert_eq!(ci.peer, *s.bob.public());
        assert_eq!(cr.peer, *s.alice.public());
        assert_eq!((ci.suite, cr.suite), (suite, suite));
        assert_eq!(ci.binding, cr.binding);
        assert_eq!(ci.capabilities, cr.capabilities);
        assert_eq!(ci.token, cr.token);
        ci.token
            .verify_for_session(&s.check(NOW), &ci.binding)
            .unwrap();
        assert_eq!(ci.token.body().post_quantum, suite == Suite::PqAuth);
        // The keys agree in both directions, over many frames.
        for n in 0..50u32 {
            let f = ci.channel.seal(&n.to_be_bytes()).unwrap();
            assert_eq!(cr.channel.open(&f).unwrap(), n.to_be_bytes());
            let g = cr.channel.seal(&n.to_le_bytes()).unwrap();
            assert_eq!(ci.channel.open(&g).unwrap(), n.to_le_bytes());
        }
        assert!(!rec.i.is_handshaking() && !rec.r.is_handshaking());
        assert_eq!(rec.i.poll_timeout(), None);
    }
}

#[test]
fn sessions_are_fresh_each_time() {
    let s = setup(Suite::Default, 1);
    let a = record(s.start(2).0, s.start(2).1);
    let mut b = {
        let (i, _) = s.start(3);
        let (_, r) = s.start(4);
        record(i, r)
    };
    let mut a = a;
    let sa = established_i(&mut a.i);
    let sb = established_i(&mut b.i);
    assert_ne!(sa.binding, sb.binding);
    assert_ne!(sa.token.body().id, sb.token.body().id);
}

#[test]
fn capabilities_are_negotiated_by_intersection_and_minimum() {
    let mut s = setup(Suite::Default, 1);
    s.ic.capabilities.set = [Capability::Query, Capability::Relay, Capability::Vote]
        .into_iter()
        .collect();
    s.ic.capabilities.limits.requests_per_second = 10;
    s.rc.capabilities.set = [Capability::Query, Capability::Vote, Capability::Admin]
        .into_iter()
        .collect();
    s.rc.capabilities.limits.max_in_flight = 3;
    let (i, r) = s.start(2);
    let mut rec = record(i, r);
    let caps = established_i(&mut rec.i).capabilities;
    assert!(caps.allows(Capability::Query) && caps.allows(Capability::Vote));
    assert!(!caps.allows(Capability::Relay) && !caps.allows(Capability::Admin));
    assert_eq!(caps.limits.requests_per_second, 10);
    assert_eq!(caps.limits.max_in_flight, 3);
}

#[test]
fn replayed_message_1_and_3_fail_in_a_new_session() {
    let s = setup(Suite::Default, 1);
    let (i, r) = s.start(2);
    let old = record(i, r);
    // A fresh responder answers a replayed message 1 (it cannot tell), but the old
    // message 3 does not open under the new session's keys.
    let (_, mut r2) = s.start(3);
    r2.handle_input(&old.msgs[0], NOW).unwrap();
    let _ = r2.poll_transmit().unwrap();
    assert!(matches!(
        r2.handle_input(&old.msgs[2], NOW),
        Err(Error::Decrypt)
    ));
    assert!(r2.poll_event().is_none());
    // Message 3 replayed to a responder in a genuinely new session fails the same way.
    let (mut i3, mut r3) = s.start(4);
    r3.handle_input(&i3.poll_transmit().unwrap(), NOW).unwrap();
    i3.handle_input(&r3.poll_transmit().unwrap(), NOW).unwrap();
    assert!(matches!(
        r3.handle_input(&old.msgs[2], NOW),
        Err(Error::Decrypt)
    ));
    // The old token frame does not open on a new initiator either.
    let (mut i4, mut r4) = s.start(5);
    r4.handle_input(&i4.poll_transmit().unwrap(), NOW).unwrap();
    i4.handle_input(&r4.poll_transmit().unwrap(), NOW).unwrap();
    assert!(i4.handle_input(&old.msgs[3], NOW).is_err());
}

#[test]
fn reflected_messages_are_refused() {
    let s = setup(Suite::Default, 1);
    let (mut i, mut r) = s.start(2);
    let m1 = i.poll_transmit().unwrap();
    // The initiator's own hello, reflected back at it.
    let (mut i_b, _) = s.start(2);
    assert!(matches!(
        i_b.handle_input(&m1, NOW),
        Err(Error::UnexpectedMessage(_))
    ));
    r.handle_input(&m1, NOW).unwrap();
    let m2 = r.poll_transmit().unwrap();
    // The responder's accept reflected back at it.
    assert!(matches!(
        r.handle_input(&m2, NOW),
        Err(Error::UnexpectedMessage(_))
    ));
    // A closed machine takes nothing more.
    assert!(matches!(r.handle_input(&m2, NOW), Err(Error::Closed)));
}

#[test]
fn a_relayed_handshake_fails_on_channel_binding() {
    // Mallory relays bytes between two connections: each side binds a different one.
    let s = setup(Suite::Default, 1);
    let mut g = rng(9);
    let mut i = Initiator::new(Arc::new(s.ic.clone()), b"alice<->mallory", NOW, &mut g).unwrap();
    let mut r = Responder::new(Arc::new(s.rc.clone()), b"mallory<->bob", NOW, &mut g).unwrap();
    assert!(drive(&mut i, &mut r).is_err());
    assert!(i.poll_event().is_none() && r.poll_event().is_none());
}

#[test]
fn wrong_federation_and_version_are_refused_with_a_reason() {
    let mut s = setup(Suite::Default, 1);
    s.ic.federation = fed_handshake::FederationId([1; 32]);
    let (mut i, mut r) = s.start(2);
    assert!(matches!(
        r.handle_input(&i.poll_transmit().unwrap(), NOW),
        Err(Error::WrongFederation)
    ));
    assert!(matches!(
        i.handle_input(&r.poll_transmit().unwrap(), NOW),
        Err(Error::Rejected(RejectReason::WrongFederation))
    ));

    let s = setup(Suite::Default, 1);
    let (mut i, mut r) = s.start(2);
    let mut m1 = i.poll_transmit().unwrap();
    m1[4] = 2; // major version 2
    assert!(matches!(
        r.handle_input(&m1, NOW),
        Err(Error::IncompatibleVersion { .. })
    ));
    assert!(matches!(
        i.handle_input(&r.poll_transmit().unwrap(), NOW),
        Err(Error::Rejected(RejectReason::IncompatibleVersion))
    ));
}

#[test]
fn no_common_suite_is_a_clear_error() {
    let mut s = setup(Suite::PqAuth, 1);
    s.rc.suites = vec![Suite::Default];
    s.ic.suites = vec![Suite::PqAuth];
    let (mut i, mut r) = s.start(2);
    assert!(matches!(
        r.handle_input(&i.poll_transmit().unwrap(), NOW),
        Err(Error::NoCommonSuite)
    ));
    // A classical identity cannot offer pq-auth at all.
    let c = setup(Suite::Default, 3);
    let mut ic = c.ic.clone();
    ic.suites = vec![Suite::PqAuth];
    assert!(matches!(
        Initiator::new(Arc::new(ic), BINDING, NOW, &mut rng(1)),
        Err(Error::SuiteNeedsPostQuantumKey("pq-auth"))
    ));
}

#[test]
fn a_stalled_handshake_times_out() {
    let s = setup(Suite::Default, 1);
    let (mut i, mut r) = s.start(2);
    let deadline = i.poll_timeout().unwrap();
    assert_eq!(deadline, NOW + fed_handshake::DEFAULT_TIMEOUT_MS);
    i.handle_timeout(deadline - 1).unwrap();
    assert!(matches!(i.handle_timeout(deadline), Err(Error::Timeout)));
    assert!(!i.is_handshaking());
    r.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
    let _m2 = r.poll_transmit().unwrap();
    assert!(matches!(
        r.handle_timeout(r.poll_timeout().unwrap()),
        Err(Error::Timeout)
    ));
    // The responder tells the initiator why it gave up.
    let reject = r.poll_transmit().unwrap();
    let (mut i2, _) = s.start(3);
    let _ = i2.poll_transmit();
    assert!(matches!(
        i2.handle_input(&reject, NOW),
        Err(Error::Rejected(RejectReason::Timeout))
    ));
}

#[test]
fn input_after_the_deadline_is_refused_even_before_the_timer_fires() {
    let s = setup(Suite::Default, 1);
    let (mut i, mut r) = s.start(2);
    let deadline = NOW + fed_handshake::DEFAULT_TIMEOUT_MS;
    // A hello that arrives late at the responder.
    let m1 = i.poll_transmit().unwrap();
    assert!(matches!(r.handle_input(&m1, deadline), Err(Error::Timeout)));
    assert!(!r.is_handshaking());
    // An accept that arrives late at the initiator.
    let (mut i, mut r) = s.start(3);
    r.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
    let m2 = r.poll_transmit().unwrap();
    assert!(matches!(
        i.handle_input(&m2, deadline + 1),
        Err(Error::Timeout)
    ));
    assert!(!i.is_handshaking());
    assert!(i.poll_transmit().is_none());
}

#[test]
fn oversized_and_short_inputs_are_typed_errors() {
    let s = setup(Suite::Default, 1);
    let (_, mut r) = s.start(2);
    let mut huge = b"FEDH\x01\x01".to_vec();
    huge.extend_from_slice(&(1u32 << 20).to_be_bytes());
    assert!(matches!(
        fed_handshake::message_len(&huge),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        r.handle_input(&huge, NOW),
        Err(Error::TooLarge { .. })
    ));
    let (_, mut r) = s.start(2);
    assert!(matches!(
        r.handle_input(b"FED", NOW),
        Err(Error::Malformed(_))
    ));
    assert!(Initiator::new(Arc::new(s.ic.clone()), &[0; 2000], NOW, &mut rng(1)).is_err());
    let _ = Responder::new(Arc::new(s.rc.clone()), BINDING, NOW, &mut rng(1)).unwrap();
}

#[test]
fn a_datagram_profile_session_takes_frames_out_of_order_and_refuses_replays() {
    let mut s = setup(Suite::Default, 1);
    s.ic.channel_mode = fed_crypto::Mode::Datagram;
    s.rc.channel_mode = fed_crypto::Mode::Datagram;
    let (i, r) = s.start(2);
    let mut rec = record(i, r);
    let mut ci = established_i(&mut rec.i);
    let mut cr = established_r(&mut rec.r);
    let frames: Vec<Vec<u8>> = (0..8u32)
        .map(|n| ci.channel.seal(&n.to_be_bytes()).unwrap())
        .collect();
    // Requests on concurrent streams arrive in any order; each opens once.
    for n in [3usize, 0, 7, 1, 2, 6, 5, 4] {
        assert_eq!(
            cr.channel.open(&frames[n]).unwrap(),
            (n as u32).to_be_bytes()
        );
    }
    assert!(
        cr.channel.open(&frames[5]).is_err(),
        "a replayed frame opens"
    );
    let back = cr.channel.seal(b"answer").unwrap();
    assert_eq!(ci.channel.open(&back).unwrap(), b"answer");
}

#[test]
fn the_two_sides_must_use_the_same_channel_mode() {
    let mut s = setup(Suite::Default, 1);
    s.rc.channel_mode = fed_crypto::Mode::Datagram;
    let (i, r) = s.start(2);
    let mut i = i;
    let mut r = r;
    // The token frame is sealed in the responder's datagram channel; the stream-mode
    // initiator refuses it, so no session forms on either mismatch.
    assert!(drive(&mut i, &mut r).is_err());
    assert!(i.poll_event().is_none());
}
