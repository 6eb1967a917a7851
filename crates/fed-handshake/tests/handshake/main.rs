//! fed-handshake's integration suite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod admission;
mod canonical;
mod flows;
mod props;
mod tokens;

use std::sync::Arc;

use fed_crypto::Identity;
use fed_handshake::{
    CapabilitySet, Error, Event, FederationId, Initiator, InitiatorConfig, Open, Responder,
    ResponderConfig, ResponderTrust, Session, Suite, TokenCheck,
};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

pub(crate) const NOW: u64 = 1_700_000_000_000;
pub(crate) const FED: FederationId = FederationId([0x42; 32]);
pub(crate) const BINDING: &[u8] = b"/p2p/alice /p2p/bob";

pub(crate) fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("FED_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Two identities and default configurations for `suite`.
pub(crate) struct Setup {
    pub(crate) alice: Arc<Identity>,
    pub(crate) bob: Arc<Identity>,
    pub(crate) ic: InitiatorConfig,
    pub(crate) rc: ResponderConfig,
}

pub(crate) fn setup(suite: Suite, seed: u64) -> Setup {
    let mut g = rng(seed);
    let pq = suite == Suite::PqAuth;
    let alice = Arc::new(Identity::generate(&mut g, pq));
    let bob = Arc::new(Identity::generate(&mut g, pq));
    let mut ic = InitiatorConfig::new(
        alice.clone(),
        FED,
        ResponderTrust::Only(vec![bob.node_id()]),
    );
    ic.suites = vec![suite];
    ic.capabilities.set = CapabilitySet::all();
    let mut rc = ResponderConfig::new(bob.clone(), FED, Arc::new(Open));
    rc.suites = vec![suite];
    rc.capabilities.set = CapabilitySet::all();
    Setup { alice, bob, ic, rc }
}

impl Setup {
    /// A check of a token Bob issued to Alice, presented by Alice at `now`.
    pub(crate) fn check(&self, now: u64) -> TokenCheck<'_> {
        TokenCheck::new(self.bob.public(), FED, self.alice.node_id(), now)
    }

    pub(crate) fn start(&self, seed: u64) -> (Initiator, Responder) {
        let mut g = rng(seed);
        (
            Initiator::new(Arc::new(self.ic.clone()), BINDING, NOW, &mut g).unwrap(),
            Responder::new(Arc::new(self.rc.clone()), BINDING, NOW, &mut g).unwrap(),
        )
    }
}

/// The four messages of one handshake, in order, with the machines after it.
pub(crate) struct Recorded {
    pub(crate) msgs: Vec<Vec<u8>>,
    pub(crate) i: Initiator,
    pub(crate) r: Responder,
}

/// Runs a handshake to completion, recording every message.
pub(crate) fn record(i: Initiator, r: Responder) -> Recorded {
    let (mut i, mut r) = (i, r);
    let m1 = i.poll_transmit().unwrap();
    r.handle_input(&m1, NOW).unwrap();
    let m2 = r.poll_transmit().unwrap();
    i.handle_input(&m2, NOW).unwrap();
    let m3 = i.poll_transmit().unwrap();
    r.handle_input(&m3, NOW).unwrap();
    let m4 = r.poll_transmit().unwrap();
    i.handle_input(&m4, NOW).unwrap();
    Recorded {
        msgs: vec![m1, m2, m3, m4],
        i,
        r,
    }
}

pub(crate) fn established_i(i: &mut Initiator) -> Box<Session> {
    match i.poll_event() {
        Some(Event::Established(s)) => s,
        other => panic!("initiator did not establish: {other:?}"),
    }
}

pub(crate) fn established_r(r: &mut Responder) -> Box<Session> {
    match r.poll_event() {
        Some(Event::Established(s)) => s,
        other => panic!("responder did not establish: {other:?}"),
    }
}

/// Delivers messages both ways until quiet; returns the first error on either side.
pub(crate) fn drive(i: &mut Initiator, r: &mut Responder) -> Result<(), Error> {
    loop {
        let mut moved = false;
        while let Some(m) = i.poll_transmit() {
            r.handle_input(&m, NOW)?;
            moved = true;
        }
        while let Some(m) = r.poll_transmit() {
            i.handle_input(&m, NOW)?;
            moved = true;
        }
        if !moved {
            return Ok(());
        }
    }
}
