//! fed-onion's packet and certificate decoders and a relay's `process`, fed
//! arbitrary bytes. Nothing may panic; arbitrary bytes are never forwarded or
//! delivered; and a genuine packet that the input modifies is always dropped.
//!
//! The first input byte chooses the mode: raw bytes as a packet; raw bytes framed
//! as a well-formed packet of the input's choosing (so that they reach the key
//! lookup, decapsulation and MAC); or a genuine packet with the rest of the input
//! XORed in at an offset taken from the input.
#![no_main]

use std::sync::OnceLock;

use fed_crypto::{Identity, NodeId};
use fed_onion::{
    BuildOptions, KeyEpoch, Message, OnionKey, OnionKeyCertificate, Processed, Relay,
    RelayConfig, SizeClass,
};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_700_000_000_000;
const EPOCH: KeyEpoch = KeyEpoch {
    epoch: 1,
    not_before_ms: NOW - 3_600_000,
    not_after_ms: NOW + 3_600_000,
};
const RELAY_SEED: [u8; 32] = [2; 32];

/// A deterministic RNG for building the genuine packet once (not for real use).
struct HashRng(u64);

impl rand_core::TryRng for HashRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(32) {
            self.0 += 1;
            let block = fed_crypto::hash("exo-federation v1 onion fuzz rng", &[&self.0.to_le_bytes()]);
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for HashRng {}

struct Fixture {
    relay_id: NodeId,
    cert: OnionKeyCertificate,
    sender: NodeId,
    /// A genuine small-class packet for the relay, to be forwarded to the destination.
    genuine: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let relay = Identity::from_seeds(&[1; 32], None);
        let dest = Identity::from_seeds(&[3; 32], None);
        let cert = OnionKey::from_seed(&relay, &RELAY_SEED, EPOCH, true)
            .expect("fixed key")
            .certificate()
            .clone();
        let dest_cert = OnionKey::from_seed(&dest, &[4; 32], EPOCH, true)
            .expect("fixed key")
            .certificate()
            .clone();
        let built = fed_onion::build_packet(
            &[cert.clone(), dest_cert],
            b"fuzz",
            &BuildOptions::default(),
            NOW,
            &mut HashRng(0),
        )
        .expect("fixed route");
        Fixture {
            relay_id: relay.node_id(),
            cert,
            sender: Identity::from_seeds(&[5; 32], None).node_id(),
            genuine: built.packet.into_bytes(),
        }
    })
}

/// A fresh relay each run (a node that never had a key: no epoch floor), so that
/// the genuine packet is never a replay.
fn relay(f: &Fixture) -> Relay {
    let mut relay =
        Relay::new(f.relay_id, RelayConfig::default(), None).expect("default config");
    let key = OnionKey::from_parts(&RELAY_SEED, f.cert.clone()).expect("matching key");
    relay.install_key(key).expect("first key");
    relay
}

fn assert_dropped(out: &Processed) {
    assert!(matches!(out, Processed::Drop(_)), "accepted forged input: {out:?}");
}

fuzz_target!(|data: &[u8]| {
    let _ = OnionKeyCertificate::from_bytes(data);
    let decoded = Message::from_bytes(data);
    if let Ok(m) = &decoded {
        assert_eq!(m.as_bytes(), data);
    }
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    let mut relay = relay(f);
    match mode % 3 {
        0 => {
            let out = relay.process_bytes(rest, f.sender, NOW);
            assert_dropped(&out);
        }
        1 => {
            // Frame the input: kind, class and epoch from the first bytes, the rest
            // repeated to the class's length.
            let Some((&ctl, body)) = rest.split_first() else { return };
            let class = if ctl & 1 == 0 { SizeClass::Small } else { SizeClass::Large };
            let reply = ctl & 2 != 0;
            let len = if reply { class.reply_packet_len() } else { class.packet_len() };
            let mut bytes: Vec<u8> = body.iter().copied().cycle().take(len).collect();
            bytes.resize(len, 0);
            bytes[..4].copy_from_slice(&[1, if reply { 2 } else { 1 }, if ctl & 1 == 0 { 1 } else { 2 }, 0]);
            if !reply && ctl & 4 != 0 {
                bytes[36..44].copy_from_slice(&EPOCH.epoch.to_be_bytes());
            }
            let out = relay.process_bytes(&bytes, f.sender, NOW);
            assert_dropped(&out);
        }
        _ => {
            if rest.len() < 2 {
                return;
            }
            let mut bytes = f.genuine.clone();
            let at = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % bytes.len();
            for (i, b) in rest[2..].iter().enumerate() {
                if let Some(x) = bytes.get_mut(at + i) {
                    *x ^= b;
                }
            }
            let out = relay.process_bytes(&bytes, f.sender, NOW);
            if bytes == f.genuine {
                assert!(matches!(out, Processed::Forward { .. }), "genuine packet refused: {out:?}");
            } else {
                assert_dropped(&out);
            }
        }
    }
});
