//! Full handshakes, both sides, per suite, beside a rustls TLS 1.3 in-memory handshake
//! with X25519MLKEM768 (aws-lc-rs provider) measured in the same run, with server-only
//! and with mutual certificate authentication. Run with `cargo xtask bench handshake`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use fed_crypto::Identity;
use fed_handshake::{
    Event, FederationId, Initiator, InitiatorConfig, Open, Responder, ResponderConfig,
    ResponderTrust, Suite,
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
    let mut ic = InitiatorConfig::new(a, fed, ResponderTrust::Any);
    ic.suites = vec![suite];
    let mut rc = ResponderConfig::new(b, fed, Arc::new(Open));
    rc.suites = vec![suite];
    (Arc::new(ic), Arc::new(rc))
}

fn full_handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // Every ML-KEM backend of the build (`--features fed-crypto/fast-kem` adds
    // libcrux): the handshake's X-Wing keys are made with the current one.
    for &backend in fed_crypto::KemBackend::ALL {
        backend.set_default();
        for suite in [Suite::Default, Suite::PqAuth] {
            let (ic, rc) = configs(suite);
            let sizes = handshake(&ic, &rc, &mut rng);
            println!(
                "handshake/{}: bytes per message (hello, accept, finish, token frame) = {sizes:?}",
                suite.name()
            );
            g.bench_function(
                format!("fed-handshake/{}/{}", suite.name(), backend.name()),
                |b| b.iter(|| black_box(handshake(&ic, &rc, &mut rng))),
            );
        }
    }
    fed_crypto::KemBackend::BUILD_DEFAULT.set_default();
    g.finish();
}

mod tls {
    use std::sync::Arc;

    use rustls::{
        ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
        client::Resumption,
        crypto::aws_lc_rs,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
        server::WebPkiClientVerifier,
        version::TLS13,
    };

    pub(crate) struct Tls {
        pub(crate) client: Arc<ClientConfig>,
        pub(crate) server: Arc<ServerConfig>,
    }

    fn ed25519_cert(name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    pub(crate) fn configs(mutual: bool) -> Tls {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let (server_cert, server_key) = ed25519_cert("server.example");
        let (client_cert, client_key) = ed25519_cert("client.example");
        let mut server_roots = RootCertStore::empty();
        server_roots.add(server_cert.clone()).unwrap();
        let mut client_roots = RootCertStore::empty();
        client_roots.add(client_cert.clone()).unwrap();

        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&TLS13])
            .unwrap()
            .with_root_certificates(server_roots);
        let mut client = if mutual {
            builder
                .with_client_auth_cert(vec![client_cert], client_key)
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        client.resumption = Resumption::disabled();

        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&TLS13])
            .unwrap();
        let builder = if mutual {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut server = builder
            .with_single_cert(vec![server_cert], server_key)
            .unwrap();
        server.send_tls13_tickets = 0;
        Tls {
            client: Arc::new(client),
            server: Arc::new(server),
        }
    }

    fn pump(from: &mut dyn FnMut(&mut Vec<u8>) -> usize, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        from(buf) > 0
    }

    /// One full in-memory handshake; returns the negotiated key-exchange group.
    pub(crate) fn handshake(tls: &Tls) -> String {
        let name = ServerName::try_from("server.example").unwrap();
        let mut c = ClientConnection::new(tls.client.clone(), name).unwrap();
        let mut s = ServerConnection::new(tls.server.clone()).unwrap();
        let mut buf = Vec::with_capacity(8192);
        while c.is_handshaking() || s.is_handshaking() {
            if pump(&mut |b| c.write_tls(b).unwrap(), &mut buf) {
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    s.read_tls(&mut rd).unwrap();
                }
                s.process_new_packets().unwrap();
            }
            if pump(&mut |b| s.write_tls(b).unwrap(), &mut buf) {
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    c.read_tls(&mut rd).unwrap();
                }
                c.process_new_packets().unwrap();
            }
        }
        format!("{:?}", c.negotiated_key_exchange_group().unwrap().name())
    }
}

fn rustls_handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    for (name, mutual) in [("server-auth", false), ("mutual-auth", true)] {
        let tls = tls::configs(mutual);
        let group = tls::handshake(&tls);
        assert_eq!(
            group, "X25519MLKEM768",
            "the comparison must use the hybrid group"
        );
        g.bench_function(format!("rustls-tls13-x25519mlkem768/{name}"), |b| {
            b.iter(|| black_box(tls::handshake(&tls)))
        });
    }
    g.finish();
}

criterion_group!(benches, full_handshake, rustls_handshake);
criterion_main!(benches);
