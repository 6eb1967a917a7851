//! A node core fed arbitrary requests from a member it holds sessions with (so
//! that the bytes reach authorisation, the decoders and the handlers of the
//! query, onion, sync and pbft protocols; both cores are voting members of a
//! two-member genesis), and arbitrary raw requests and responses on every
//! protocol. Nothing may panic; afterwards the core still has a
//! timer armed and runs its timers without panicking.
#![no_main]

use std::sync::Arc;

use fed_crypto::Identity;
use fed_handshake::{FederationId, Open};
use fed_mesh::{
    ConsensusConfig,
    core::{Action, Core, CoreConfig, InboundId, OutboundId},
    genesis::{ConsensusParameters, Genesis, GenesisMember},
    wire::Protocol,
};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000_000;

/// Two cores, connected, each holding a session with the other.
fn pair() -> (Core, Core) {
    let fed = FederationId([3; 32]);
    let genesis = Genesis {
        federation: fed,
        created_ms: 1,
        consensus: ConsensusParameters::default(),
        members: [1u8, 2]
            .iter()
            .map(|s| GenesisMember {
                identity: Identity::from_seeds(&[*s; 32], None).public().clone(),
                addresses: Vec::new(),
            })
            .collect(),
    };
    let core = |seed: u8| {
        let id = Arc::new(Identity::from_seeds(&[seed; 32], None));
        let mut config = CoreConfig::new(id, fed, Arc::new(Open));
        config.consensus = Some(ConsensusConfig::from_genesis(&genesis).expect("consensus"));
        Core::new(config, [seed; 32], NOW).expect("core")
    };
    let (mut a, mut b) = (core(1), core(2));
    let (pa, pb) = (a.peer_id(), b.peer_id());
    a.handle_timeout(NOW);
    b.handle_timeout(NOW);
    a.handle_connected(pb, None, NOW);
    b.handle_connected(pa, None, NOW);
    let mut next = 1u64;
    // Carry requests and their answers between the two until both are quiet.
    for _ in 0..64 {
        let mut moved = false;
        for forward in [true, false] {
            let (sender, receiver) = if forward {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            let actions: Vec<Action> = std::iter::from_fn(|| sender.poll_action()).collect();
            for action in actions {
                if let Action::Send {
                    protocol,
                    id,
                    payload,
                    ..
                } = action
                {
                    moved = true;
                    let inbound = InboundId(next);
                    next += 1;
                    receiver.handle_request(sender.peer_id(), protocol, inbound, payload, NOW);
                    let replies: Vec<Action> =
                        std::iter::from_fn(|| receiver.poll_action()).collect();
                    for reply in replies {
                        if let Action::Respond { id: to, payload } = reply
                            && to == inbound
                        {
                            sender.handle_response(id, payload, NOW);
                        }
                    }
                }
            }
        }
        if !moved {
            break;
        }
    }
    assert_eq!(
        (a.peer_count(), b.peer_count()),
        (1, 1),
        "the fixture's sessions"
    );
    (a, b)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (a, mut b) = pair();
    let protocol = match selector % 5 {
        0 => Protocol::Query,
        1 => Protocol::Onion,
        2 => Protocol::Sync,
        3 => Protocol::Pbft,
        _ => Protocol::Handshake,
    };
    let from = a.peer_id();
    match selector / 5 % 3 {
        // As if the bytes had arrived sealed in the member's session.
        0 => b.handle_opened_request(from, protocol, InboundId(1_000_000), body, NOW),
        // As the raw bytes of a request on the stream.
        1 => b.handle_request(from, protocol, InboundId(1_000_001), body.to_vec(), NOW),
        // As the answer to any request the core has outstanding.
        _ => {
            for id in 1..64 {
                b.handle_response(OutboundId(id), body.to_vec(), NOW);
            }
        }
    }
    while b.poll_action().is_some() {}
    assert!(b.poll_timeout().is_some());
    b.handle_timeout(NOW + 60_000);
    while b.poll_action().is_some() {}
});
