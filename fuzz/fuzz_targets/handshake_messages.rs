//! Every handshake decoder and both state machines fed arbitrary bytes: the
//! responder at its first and second step, the initiator at its first and second
//! step, and the token decoder. Nothing may panic; nothing arbitrary may complete.
//! Decoding is canonical: a token that decodes encodes back to exactly its input.
#![no_main]

use std::sync::{Arc, OnceLock};

use fed_crypto::Identity;
use fed_handshake::{
    Event, FederationId, FederationToken, Initiator, InitiatorConfig, Open, Responder,
    ResponderConfig,
    ResponderTrust, message_len,
};
use libfuzzer_sys::fuzz_target;
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

const NOW: u64 = 1_700_000_000_000;

struct Fixture {
    ic: Arc<InitiatorConfig>,
    rc: Arc<ResponderConfig>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let fed = FederationId([1; 32]);
        let a = Arc::new(Identity::from_seeds(&[1; 32], None));
        let b = Arc::new(Identity::from_seeds(&[2; 32], None));
        Fixture {
            ic: Arc::new(InitiatorConfig::new(a, fed, ResponderTrust::Any)),
            rc: Arc::new(ResponderConfig::new(b, fed, Arc::new(Open))),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let _ = message_len(data);
    if let Ok(token) = FederationToken::from_bytes(data) {
        let again = token.to_bytes().expect("a decoded token encodes");
        assert_eq!(again, data, "a token decoded from non-canonical bytes");
    }
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let mut i = Initiator::new(f.ic.clone(), b"fuzz", NOW, &mut rng).expect("initiator");
    let mut r = Responder::new(f.rc.clone(), b"fuzz", NOW, &mut rng).expect("responder");
    // Step 1 on both sides.
    assert!(r.handle_input(data, NOW).is_err() || r.poll_transmit().is_some());
    let _ = i.handle_input(data, NOW);
    // Step 2: a genuine first exchange, then the arbitrary bytes.
    let mut i = Initiator::new(f.ic.clone(), b"fuzz", NOW, &mut rng).expect("initiator");
    let mut r = Responder::new(f.rc.clone(), b"fuzz", NOW, &mut rng).expect("responder");
    let m1 = i.poll_transmit().expect("hello");
    if r.handle_input(&m1, NOW).is_ok() {
        let m2 = r.poll_transmit().expect("accept");
        let _ = r.handle_input(data, NOW);
        assert!(!matches!(r.poll_event(), Some(Event::Established(_))), "arbitrary finish accepted");
        if i.handle_input(&m2, NOW).is_ok() {
            let _ = i.handle_input(data, NOW);
            assert!(!matches!(i.poll_event(), Some(Event::Established(_))), "arbitrary token accepted");
        }
    }
});
