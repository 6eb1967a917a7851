//! The protocol document, executed: a hop written from `docs/protocol/onion.md`
//! alone (offsets, label strings, MAC coverage, keystreams, shift, AEAD) must
//! produce exactly what `Relay` produces, at every hop of every route length, and
//! the reply construction must match section 6.

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{AeadInOut, inout::InOutBuf},
};
use fed_crypto::{
    Identity, NodeId, XWingCiphertext, XWingSecretKey, XWingSharedSecret, derive_key, hash,
};
use fed_onion::{
    BuildOptions, MAX_HOPS, Message, OnionKey, Processed, Relay, RelayConfig, SizeClass,
};

use crate::{NOW, epoch, rng};

fn key(ss: &XWingSharedSecret, label: &str) -> [u8; 32] {
    *derive_key(label, &[ss.as_bytes()]).as_bytes()
}

fn stream(k: &[u8; 32], n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new_keyed(k).finalize_xof().fill(&mut out);
    out
}

/// AES-256-GCM, nonce 0^12, empty associated data: ciphertext ‖ tag.
fn gcm_seal(k: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    let tag = Aes256Gcm::new(k.into())
        .encrypt_inout_detached(&[0u8; 12].into(), &[], InOutBuf::from(&mut buf[..]))
        .unwrap();
    buf.extend_from_slice(&tag);
    buf
}

fn gcm_open(k: &[u8; 32], sealed: &[u8]) -> Vec<u8> {
    let (ct, tag) = sealed.split_at(sealed.len() - 16);
    let mut buf = ct.to_vec();
    Aes256Gcm::new(k.into())
        .decrypt_inout_detached(
            &[0u8; 12].into(),
            &[],
            InOutBuf::from(&mut buf[..]),
            &tag.try_into().unwrap(),
        )
        .unwrap();
    buf
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

enum SpecOutcome {
    Forward {
        next: NodeId,
        packet: Vec<u8>,
        prev_rid: [u8; 16],
        rid: [u8; 16],
    },
    Deliver {
        payload: Vec<u8>,
        prev_rid: [u8; 16],
        k_rp: [u8; 32],
    },
}

/// Section 4, "What a hop does", steps 3 to 8, for a valid packet.
fn spec_hop(sk: &XWingSecretKey, p: &[u8]) -> SpecOutcome {
    let c = p.len() - 4 - 7344;
    let ss = sk.decapsulate(&XWingCiphertext::from_bytes(&p[44..1164]).unwrap());
    let covered = [&p[36..], &p[0..4]].concat();
    let mac = blake3::keyed_hash(&key(&ss, "exo-federation v1 onion header mac"), &covered);
    assert_eq!(mac.as_bytes(), &p[4..36], "MAC as specified");
    let s = stream(
        &key(&ss, "exo-federation v1 onion header stream"),
        6184 + 1224,
    );
    let b = xor(&p[1164..7348], &s[..6184]);
    let routing = &b[..64];
    let body = xor(
        &p[7348..],
        &stream(&key(&ss, "exo-federation v1 onion body stream"), c),
    );
    assert_eq!(routing[1], 1, "reply flag");
    assert!(routing[50..].iter().all(|&x| x == 0));
    let prev_rid: [u8; 16] = routing[34..50].try_into().unwrap();
    match routing[0] {
        1 => {
            let packet = [&p[0..4], &b[64..], &s[6184..], &body].concat();
            let rid: [u8; 16] = hash("exo-federation v1 onion reply id", &[ss.as_bytes()])[..16]
                .try_into()
                .unwrap();
            SpecOutcome::Forward {
                next: NodeId(routing[2..34].try_into().unwrap()),
                packet,
                prev_rid,
                rid,
            }
        }
        2 => {
            assert!(routing[2..34].iter().all(|&x| x == 0));
            let k_pl = key(&ss, "exo-federation v1 onion payload key");
            let plain = gcm_open(&k_pl, &body);
            let len = u32::from_be_bytes(plain[..4].try_into().unwrap()) as usize;
            assert!(plain[4 + len..].iter().all(|&x| x == 0), "zero padding");
            SpecOutcome::Deliver {
                payload: plain[4..4 + len].to_vec(),
                prev_rid,
                k_rp: key(&ss, "exo-federation v1 onion reply payload key"),
            }
        }
        other => panic!("command {other}"),
    }
}

#[test]
fn relays_process_packets_exactly_as_the_document_says() {
    let seeds: Vec<[u8; 32]> = (0..MAX_HOPS as u8).map(|i| [i + 10; 32]).collect();
    let identities: Vec<Identity> = (0..MAX_HOPS as u8)
        .map(|i| Identity::from_seeds(&[i + 50; 32], None))
        .collect();
    let keys: Vec<OnionKey> = identities
        .iter()
        .zip(&seeds)
        .map(|(id, seed)| OnionKey::from_seed(id, seed, epoch(1), true).unwrap())
        .collect();
    let certs: Vec<_> = keys.iter().map(|k| k.certificate().clone()).collect();
    let sender = NodeId([0xee; 32]);
    let mut rng = rng(90);

    for class in SizeClass::ALL {
        for n in 1..=MAX_HOPS {
            // Fresh relays for every packet, so that replay caches stay out of the way.
            let mut relays: Vec<Relay> = (0..MAX_HOPS)
                .map(|i| {
                    let id = identities[i].node_id();
                    let mut r = Relay::new(id, RelayConfig::default(), None).unwrap();
                    let key = OnionKey::from_parts(&seeds[i], certs[i].clone()).unwrap();
                    r.install_key(key).unwrap();
                    r
                })
                .collect();
            let payload = format!("{n} hops, {class:?}");
            let opts = BuildOptions {
                class: Some(class),
                reply: true,
            };
            let mut built =
                fed_onion::build_packet(&certs[..n], payload.as_bytes(), &opts, NOW, &mut rng)
                    .unwrap();
            let mut pending = built.reply.take();
            let mut bytes = built.packet.into_bytes();
            let mut from = sender;
            let mut expected_prev_rid = pending.as_ref().unwrap().reply_id().0;
            let mut layers = Vec::new();
            for i in 0..n {
                let sk = XWingSecretKey::from_seed(&seeds[i]);
                let spec = spec_hop(&sk, &bytes);
                let ours = relays[i].process(Message::from_bytes(&bytes).unwrap(), from, NOW);
                match (spec, ours) {
                    (
                        SpecOutcome::Forward {
                            next,
                            packet,
                            prev_rid,
                            rid,
                        },
                        Processed::Forward {
                            next_hop,
                            packet: ours,
                        },
                    ) => {
                        assert_eq!(next, next_hop);
                        assert_eq!(
                            packet,
                            ours.as_bytes(),
                            "hop {i} of {n}: output differs from the document"
                        );
                        assert_eq!(prev_rid, expected_prev_rid);
                        expected_prev_rid = rid;
                        let ss =
                            sk.decapsulate(&XWingCiphertext::from_bytes(&bytes[44..1164]).unwrap());
                        layers.push(key(&ss, "exo-federation v1 onion reply stream"));
                        bytes = packet;
                    }
                    (
                        SpecOutcome::Deliver {
                            payload: p,
                            prev_rid,
                            k_rp,
                        },
                        Processed::Deliver(d),
                    ) => {
                        assert_eq!(i, n - 1);
                        assert_eq!(p, payload.as_bytes());
                        assert_eq!(d.payload, payload.as_bytes());
                        assert_eq!(prev_rid, expected_prev_rid);
                        // Section 6: the destination's reply, then each relay's layer.
                        let (to, reply) = d.reply.unwrap().seal(b"spec reply", None).unwrap();
                        assert_eq!(to, from);
                        let r = reply.as_bytes();
                        assert_eq!(&r[..4], &[1, 2, 1, 0]);
                        assert_eq!(&r[4..20], &prev_rid);
                        let mut plain = vec![0u8; 8192 - 16];
                        plain[..4].copy_from_slice(&10u32.to_be_bytes());
                        plain[4..14].copy_from_slice(b"spec reply");
                        let sealed = gcm_seal(&k_rp, &plain);
                        assert_eq!(&r[20..], &sealed[..]);
                        // Relays n-2 .. 0 add their layers; the sender opens.
                        let mut reply_bytes = r.to_vec();
                        for j in (0..n - 1).rev() {
                            let prev = if j == 0 {
                                sender
                            } else {
                                identities[j - 1].node_id()
                            };
                            let next = identities[j + 1].node_id();
                            let out = relays[j].process(
                                Message::from_bytes(&reply_bytes).unwrap(),
                                next,
                                NOW,
                            );
                            let Processed::Reply {
                                previous_hop,
                                packet,
                            } = out
                            else {
                                panic!("{out:?}")
                            };
                            assert_eq!(previous_hop, prev);
                            let body = xor(&reply_bytes[20..], &stream(&layers[j], 8192));
                            assert_eq!(
                                &packet.as_bytes()[20..],
                                &body[..],
                                "reply layer of hop {j}"
                            );
                            reply_bytes = packet.into_bytes();
                        }
                        let reply = fed_onion::ReplyPacket::from_bytes(&reply_bytes).unwrap();
                        let pending = pending.take().expect("one delivery per packet");
                        assert_eq!(pending.open(&reply).unwrap(), b"spec reply");
                    }
                    (_, other) => panic!("hop {i} of {n}: document and relay disagree: {other:?}"),
                }
                from = identities[i].node_id();
            }
        }
    }
}
