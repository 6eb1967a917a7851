//! Proof: a replayed packet is dropped; a packet for an expired epoch or for the
//! wrong relay key is dropped. Also key rotation, bounds of the replay cache, and
//! nodes that do not relay.

use fed_crypto::Identity;
use fed_onion::{BuildOptions, DropReason, Error, OnionKey, Processed, Relay, RelayConfig};

use crate::{End, NOW, Net, epoch, rng};

fn is_drop(p: &Processed, reason: DropReason) -> bool {
    matches!(p, Processed::Drop(r) if *r == reason)
}

#[test]
fn replayed_packets_are_dropped_at_every_hop() {
    let mut net = Net::new(4, 30);
    let built = net.build(&[0, 1, 2, 3], b"once", BuildOptions::default());
    let journey = net.drive(built, None, |_, _| {});
    assert_eq!(journey.payload(), b"once");
    // Replay what each hop received, from the same previous hop.
    let mut from = net.sender;
    for hop in &journey.hops {
        let p = net.step(hop.node, from, &hop.input);
        assert!(is_drop(&p, DropReason::Replay), "{p:?}");
        from = hop.node;
    }
    // A replay from another neighbour is a replay all the same.
    let p = net.step(journey.hops[1].node, net.ids[3], &journey.hops[1].input);
    assert!(is_drop(&p, DropReason::Replay));
}

#[test]
fn expired_and_not_yet_valid_epochs_are_dropped() {
    let config = RelayConfig::default().with_clock_skew_ms(1_000);
    let mut net = Net::with(2, 31, config, |_| true);
    let relay = net.ids[0];
    let sender = net.sender;
    let expiry = epoch(1).not_after_ms;
    let start = epoch(1).not_before_ms;
    let mut packet = || net_build(&mut net);
    let a = packet();
    let b = packet();
    let c = packet();
    // Within the skew allowance after expiry: still accepted.
    let p = net.relay(relay).process_bytes(&a, sender, expiry + 999);
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
    let p = net.relay(relay).process_bytes(&b, sender, expiry + 1_000);
    assert!(is_drop(&p, DropReason::KeyExpired), "{p:?}");
    let p = net.relay(relay).process_bytes(&c, sender, start - 1_001);
    assert!(is_drop(&p, DropReason::KeyNotYetValid), "{p:?}");
    // The timeout erases the expired key and its replay cache.
    assert_eq!(net.relay(relay).poll_timeout(), Some(expiry + 1_000));
    net.relay(relay).handle_timeout(expiry + 1_000);
    assert!(net.relay(relay).epochs().is_empty());
    let p = net.relay(relay).process_bytes(&c, sender, expiry + 1_000);
    assert!(is_drop(&p, DropReason::UnknownEpoch));
}

fn net_build(net: &mut Net) -> Vec<u8> {
    net.build(&[0, 1], b"x", BuildOptions::default())
        .packet
        .into_bytes()
}

#[test]
fn a_packet_for_another_relays_key_is_dropped() {
    let mut net = Net::new(3, 32);
    // Built for relay 0 (same epoch number as relay 1's key), sent to relay 1.
    let bytes = net_build(&mut net);
    let p = net.step(net.ids[1], net.sender, &bytes);
    assert!(is_drop(&p, DropReason::BadMac), "{p:?}");
    // And a sender cannot build with a key for an epoch the relay does not hold.
    let other = Identity::generate(&mut net.rng, false);
    let key = OnionKey::generate(&other, epoch(9), true, &mut net.rng).unwrap();
    let mut route = net.route(&[1]);
    route.insert(0, key.certificate().clone());
    let built =
        fed_onion::build_packet(&route, b"x", &BuildOptions::default(), NOW, &mut net.rng).unwrap();
    let p = net.step(net.ids[0], net.sender, built.packet.as_bytes());
    assert!(is_drop(&p, DropReason::UnknownEpoch), "{p:?}");
}

#[test]
fn rotation_keeps_the_previous_epoch_and_forgets_older_ones() {
    let mut net = Net::new(2, 33);
    let relay_id = net.ids[0];
    let old = net_build(&mut net);
    let old2 = net_build(&mut net);
    let mut key_rng = rng(333);
    let identity = &net.nodes[&relay_id].identity;
    let k2 = OnionKey::generate(identity, epoch(2), true, &mut key_rng).unwrap();
    let k3 = OnionKey::generate(identity, epoch(3), true, &mut key_rng).unwrap();
    let stale = OnionKey::generate(identity, epoch(3), true, &mut key_rng).unwrap();
    // Epoch 2: epoch-1 packets still work.
    let cert2 = k2.certificate().clone();
    net.relay(relay_id).install_key(k2).unwrap();
    assert_eq!(net.relay(relay_id).epochs(), vec![2, 1]);
    let p = net.step(relay_id, net.sender, &old);
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
    assert_eq!(net.relay(relay_id).replay_tags(1), 1);
    // Packets for the new epoch work.
    let route = vec![cert2, net.cert(1)];
    let built =
        fed_onion::build_packet(&route, b"y", &BuildOptions::default(), NOW, &mut net.rng).unwrap();
    let p = net.step(relay_id, net.sender, built.packet.as_bytes());
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
    // Epoch 3: epoch 1 is erased, with its replay cache.
    net.relay(relay_id).install_key(k3).unwrap();
    assert_eq!(net.relay(relay_id).epochs(), vec![3, 2]);
    assert_eq!(net.relay(relay_id).replay_tags(1), 0);
    let p = net.step(relay_id, net.sender, &old2);
    assert!(is_drop(&p, DropReason::UnknownEpoch));
    // Stale epochs and other nodes' keys are refused.
    assert!(matches!(
        net.relay(relay_id).install_key(stale),
        Err(Error::StaleEpoch {
            epoch: 3,
            current: 3
        })
    ));
    let stranger = Identity::generate(&mut net.rng, false);
    let foreign = OnionKey::generate(&stranger, epoch(4), true, &mut net.rng).unwrap();
    assert!(matches!(
        net.relay(relay_id).install_key(foreign),
        Err(Error::WrongRelay { .. })
    ));
}

#[test]
fn a_full_replay_cache_refuses_rather_than_forgets() {
    let config = RelayConfig::default().with_replay_capacity(3);
    let mut net = Net::with(2, 34, config, |_| true);
    let relay = net.ids[0];
    let packets: Vec<Vec<u8>> = (0..6).map(|_| net_build(&mut net)).collect();
    for p in &packets[..3] {
        assert!(matches!(
            net.step(relay, net.sender, p),
            Processed::Forward { .. }
        ));
    }
    for p in &packets[3..] {
        let out = net.step(relay, net.sender, p);
        assert!(is_drop(&out, DropReason::ReplayCacheFull), "{out:?}");
    }
    // Replays of accepted packets are still recognised, and the cache stays bounded.
    assert!(is_drop(
        &net.step(relay, net.sender, &packets[0]),
        DropReason::Replay
    ));
    assert_eq!(net.relay(relay).replay_tags(1), 3);
    // A rotation opens a fresh cache for the new epoch.
    let key =
        OnionKey::generate(&net.nodes[&relay].identity, epoch(2), true, &mut rng(334)).unwrap();
    let cert = key.certificate().clone();
    net.relay(relay).install_key(key).unwrap();
    let route = vec![cert, net.cert(1)];
    let built =
        fed_onion::build_packet(&route, b"z", &BuildOptions::default(), NOW, &mut net.rng).unwrap();
    assert!(matches!(
        net.step(relay, net.sender, built.packet.as_bytes()),
        Processed::Forward { .. }
    ));
}

#[test]
fn nodes_that_do_not_relay_still_receive() {
    // Node 1 does not offer relaying.
    let mut net = Net::with(3, 35, RelayConfig::default(), |i| i != 1);
    let built = net.build(&[0, 1, 2], b"x", BuildOptions::default());
    let journey = net.drive(built, None, |_, _| {});
    assert!(matches!(
        journey.end,
        End::Dropped(1, DropReason::NotARelay)
    ));
    let built = net.build(&[0, 1], b"to a non-relay", BuildOptions::default());
    let journey = net.drive(built, None, |_, _| {});
    assert_eq!(journey.payload(), b"to a non-relay");
}

#[test]
fn a_relay_without_keys_drops_everything() {
    let mut net = Net::new(2, 36);
    let bytes = net_build(&mut net);
    let id = Identity::generate(&mut net.rng, false);
    let mut empty = Relay::new(id.node_id(), RelayConfig::default()).unwrap();
    assert!(is_drop(
        &empty.process_bytes(&bytes, net.sender, NOW),
        DropReason::UnknownEpoch
    ));
    assert_eq!(empty.poll_timeout(), None);
}

#[test]
fn building_refuses_expired_certificates() {
    let mut net = Net::new(2, 37);
    let route = net.route(&[0, 1]);
    let later = epoch(1).not_after_ms;
    assert!(matches!(
        fed_onion::build_packet(&route, b"x", &BuildOptions::default(), later, &mut net.rng),
        Err(Error::CertificateNotValid { .. })
    ));
    let dup = net.route(&[0, 0]);
    assert!(matches!(
        fed_onion::build_packet(&dup, b"x", &BuildOptions::default(), NOW, &mut net.rng),
        Err(Error::DuplicateHop(_))
    ));
    assert!(matches!(
        fed_onion::build_packet(&[], b"x", &BuildOptions::default(), NOW, &mut net.rng),
        Err(Error::InvalidRouteLength { len: 0, .. })
    ));
    let mut long = Net::new(7, 38);
    let route = long.route(&[0, 1, 2, 3, 4, 5, 6]);
    assert!(matches!(
        fed_onion::build_packet(&route, b"x", &BuildOptions::default(), NOW, &mut long.rng),
        Err(Error::InvalidRouteLength { len: 7, max: 6 })
    ));
}
