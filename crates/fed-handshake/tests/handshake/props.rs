//! Property tests: any corruption or truncation of any message fails the receiving
//! side, never panics, and never yields a session on that side.

use fed_handshake::{Event, Suite};
use proptest::prelude::*;

use crate::*;

#[derive(Debug, Clone)]
enum Damage {
    Flip { at: prop::sample::Index, mask: u8 },
    Truncate { to: prop::sample::Index },
    Extend { byte: u8 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        any::<prop::sample::Index>().prop_map(|to| Damage::Truncate { to }),
        any::<u8>().prop_map(|byte| Damage::Extend { byte }),
    ]
}

fn apply(msg: &mut Vec<u8>, d: &Damage) {
    match d {
        Damage::Flip { at, mask } => {
            let i = at.index(msg.len());
            msg[i] ^= mask;
        }
        Damage::Truncate { to } => msg.truncate(to.index(msg.len())),
        Damage::Extend { byte } => msg.push(*byte),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]

    #[test]
    fn damaged_messages_never_complete(which in 0usize..4, d in damage(), pq in any::<bool>()) {
        let suite = if pq { Suite::PqAuth } else { Suite::Default };
        let s = setup(suite, 51);
        let (mut i, mut r) = s.start(52);
        // Deliver in order, damaging message number `which`, until a side fails.
        let mut failed_at = None;
        for n in 0..4 {
            let from_i = n % 2 == 0;
            let msg = if from_i { i.poll_transmit() } else { r.poll_transmit() };
            let Some(mut msg) = msg else { break };
            if n == which {
                apply(&mut msg, &d);
            }
            let result = if from_i { r.handle_input(&msg, NOW) } else { i.handle_input(&msg, NOW) };
            if result.is_err() {
                failed_at = Some(n);
                break;
            }
        }
        // Damage is detected where it lands, or (message 1, which nothing protects
        // yet) by the initiator on message 2.
        let expected = if which == 0 { [0, 1] } else { [which, which] };
        prop_assert!(failed_at.is_some_and(|n| expected.contains(&n)), "damage to {} detected at {:?}", which, failed_at);
        prop_assert!(!matches!(i.poll_event(), Some(Event::Established(_))), "initiator completed");
        // The responder completes only when the damage is to the token frame it sent after completing.
        let r_done = matches!(r.poll_event(), Some(Event::Established(_)));
        prop_assert_eq!(r_done, which == 3);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..3000), stage in 0usize..3) {
        let s = setup(Suite::Default, 61);
        let (mut i, mut r) = s.start(62);
        // Advance to the chosen stage, then feed garbage to whichever side is waiting.
        if stage >= 1 {
            r.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
        }
        if stage >= 2 {
            i.handle_input(&r.poll_transmit().unwrap(), NOW).unwrap();
        }
        prop_assert!(r.handle_input(&bytes, NOW).is_err());
        prop_assert!(i.handle_input(&bytes, NOW).is_err());
        let _ = fed_handshake::FederationToken::from_bytes(&bytes);
        let _ = fed_handshake::message_len(&bytes);
    }
}
