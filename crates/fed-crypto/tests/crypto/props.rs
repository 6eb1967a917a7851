//! Property tests: channel round trips under random configurations and delivery,
//! and every decoder fed arbitrary bytes.

use fed_crypto::{
    ChannelConfig, FrameHeader, HybridSignature, Identity, Mode, PublicIdentity, Role,
    SecureChannel, XWingCiphertext, XWingPublicKey, XWingSecretKey,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(crate::cases(64))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stream_round_trips(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..40),
        rekey_frames in 1u64..8,
        rekey_bytes in 1u64..2000,
        secret in any::<[u8; 32]>(),
    ) {
        let config = ChannelConfig::default().with_rekey_after_frames(rekey_frames).with_rekey_after_bytes(rekey_bytes);
        let mut a = SecureChannel::new(&secret, &[1; 32], Role::Initiator, config.clone()).unwrap();
        let mut b = SecureChannel::new(&secret, &[1; 32], Role::Responder, config).unwrap();
        for p in &payloads {
            let f = a.seal(p).unwrap();
            prop_assert_eq!(&b.open(&f).unwrap(), p);
            let g = b.seal(p).unwrap();
            prop_assert_eq!(&a.open(&g).unwrap(), p);
        }
    }

    #[test]
    fn datagram_delivers_each_frame_at_most_once(
        n in 1usize..60,
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..150),
        rekey_frames in 2u64..10,
    ) {
        let config = ChannelConfig::default().with_mode(Mode::Datagram).with_rekey_after_frames(rekey_frames);
        let mut a = SecureChannel::new(&[3; 32], &[4; 32], Role::Initiator, config.clone()).unwrap();
        let mut b = SecureChannel::new(&[3; 32], &[4; 32], Role::Responder, config).unwrap();
        let frames: Vec<_> = (0..n).map(|i| a.seal(&(i as u32).to_be_bytes()).unwrap()).collect();
        let mut accepted = std::collections::HashSet::new();
        for idx in order {
            let i = idx.index(n);
            if let Ok(p) = b.open(&frames[i]) {
                prop_assert_eq!(p, (i as u32).to_be_bytes().to_vec());
                prop_assert!(accepted.insert(i), "frame {} accepted twice", i);
            }
        }
    }

    #[test]
    fn frame_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = FrameHeader::parse(&bytes, 1 << 20);
        for mode in [Mode::Stream, Mode::Datagram] {
            let mut c = SecureChannel::new(&[0; 32], &[0; 32], Role::Responder, ChannelConfig::default().with_mode(mode)).unwrap();
            prop_assert!(c.open(&bytes).is_err());
        }
    }

    #[test]
    fn key_and_signature_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4000)) {
        let _ = XWingPublicKey::from_bytes(&bytes);
        let _ = XWingSecretKey::from_bytes(&bytes);
        let _ = XWingCiphertext::from_bytes(&bytes);
        let _ = PublicIdentity::from_bytes(&bytes);
        let _ = HybridSignature::from_bytes(&bytes);
        let _ = Identity::from_key_file(&bytes);
        let _ = XWingSecretKey::from_key_file(&bytes);
        let _ = PublicIdentity::from_key_file(&bytes);
    }

    #[test]
    fn encodings_round_trip(seed in any::<[u8; 32]>(), ml in proptest::option::of(any::<[u8; 32]>())) {
        let id = Identity::from_seeds(&seed, ml.as_ref());
        prop_assert_eq!(&PublicIdentity::from_bytes(id.public().as_bytes()).unwrap(), id.public());
        let back = Identity::from_key_file(&id.to_key_file()).unwrap();
        prop_assert_eq!(back.public(), id.public());
        let sig = id.sign("exo-federation v1 prop", &seed).unwrap();
        prop_assert_eq!(&HybridSignature::from_bytes(&sig.to_bytes()).unwrap(), &sig);
        let kem = XWingSecretKey::from_seed(&seed);
        let pk = XWingPublicKey::from_bytes(kem.public_key().as_bytes()).unwrap();
        prop_assert_eq!(&pk, kem.public_key());
        let (ct, ss) = pk.encapsulate_derand(&[seed, seed].concat().try_into().unwrap());
        let ct = XWingCiphertext::from_bytes(ct.as_bytes()).unwrap();
        prop_assert_eq!(kem.decapsulate(&ct), ss);
    }
}
