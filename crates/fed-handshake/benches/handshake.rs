//! Full handshakes, both sides, per suite. Run with `cargo xtask bench handshake`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use fed_crypto::Identity;
use fed_handshake::{
    Event, FederationId, Initiator, InitiatorConfig, Responder, ResponderConfig, Suite,
};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

const NOW: u64 = 1_700_000_000_000;

/// Runs one complete handshake in memory; returns the bytes each message took.
fn handshake(
    ic: &Arc<InitiatorConfig>,
    rc: &Arc<ResponderConfig>,
    rng: &mut ChaCha20Rng,
) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut i = Initiator::new(ic.clone(), b"binding", NOW, rng).unwrap();
    let mut r = Responder::new(rc.clone(), b"binding", NOW, rng).unwrap();
    loop {
        let mut moved = false;
        while let Some(m) = i.poll_transmit() {
            sizes.push(m.len());
            r.handle_input(&m, NOW).unwrap();
            moved = true;
        }
        while let Some(m) = r.poll_transmit() {
            sizes.push(m.len());
            i.handle_input(&m, NOW).unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(matches!(i.poll_event(), Some(Event::Established(_))));
    assert!(matches!(r.poll_event(), Some(Event::Established(_))));
    sizes
}

fn configs(suite: Suite) -> (Arc<InitiatorConfig>, Arc<ResponderConfig>) {
    let pq = suite == Suite::PqAuth;
    let a = Arc::new(Identity::from_seeds(&[1; 32], pq.then_some(&[2; 32])));
    let b = Arc::new(Identity::from_seeds(&[3; 32], pq.then_some(&[4; 32])));
    let fed = FederationId([9; 32]);
    let mut ic = InitiatorConfig::new(a, fed);
    ic.suites = vec![suite];
    let mut rc = ResponderConfig::new(b, fed);
    rc.suites = vec![suite];
    (Arc::new(ic), Arc::new(rc))
}

fn full_handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for suite in [Suite::Default, Suite::PqAuth] {
        let (ic, rc) = configs(suite);
        let sizes = handshake(&ic, &rc, &mut rng);
        println!(
            "handshake/{}: bytes per message (hello, accept, finish, token frame) = {sizes:?}",
            suite.name()
        );
        g.bench_function(format!("fed-handshake/{}", suite.name()), |b| {
            b.iter(|| black_box(handshake(&ic, &rc, &mut rng)))
        });
    }
    g.finish();
}

criterion_group!(benches, full_handshake);
criterion_main!(benches);
