//! The encrypted channel under normal use and under attack.

use fed_crypto::{
    ChannelConfig, Error, FRAME_HEADER_LEN, FRAME_OVERHEAD, Mode, Role, SecureChannel,
};

fn pair(config: ChannelConfig) -> (SecureChannel, SecureChannel) {
    let ss = [0x11u8; 32];
    let th = [0x22u8; 32];
    (
        SecureChannel::new(&ss, &th, Role::Initiator, config.clone()).unwrap(),
        SecureChannel::new(&ss, &th, Role::Responder, config).unwrap(),
    )
}

fn datagram() -> ChannelConfig {
    ChannelConfig::default().with_mode(Mode::Datagram)
}

#[test]
fn round_trip_both_directions() {
    let (mut a, mut b) = pair(ChannelConfig::default());
    for i in 0..100u32 {
        let msg = i.to_be_bytes().repeat(i as usize);
        let frame = a.seal(&msg).unwrap();
        assert_eq!(frame.len(), msg.len() + FRAME_OVERHEAD);
        assert_eq!(b.open(&frame).unwrap(), msg);
        let reply = b.seal(&msg).unwrap();
        assert_eq!(a.open(&reply).unwrap(), msg);
    }
}

#[test]
fn open_in_place_and_seal_into_agree_with_the_allocating_forms() {
    let (mut a, mut b) = pair(ChannelConfig::default());
    let mut out = Vec::new();
    a.seal_into(b"first", &mut out).unwrap();
    let first_len = out.len();
    a.seal_into(b"second", &mut out).unwrap();
    let (f1, f2) = out.split_at_mut(first_len);
    assert_eq!(b.open_in_place(f1).unwrap(), b"first");
    assert_eq!(b.open_in_place(f2).unwrap(), b"second");
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let (mut a, _) = pair(ChannelConfig::default());
    let frame = a.seal(b"transfer 100 credits to node 7").unwrap();
    for i in 0..frame.len() {
        for bit in [0x01u8, 0x80] {
            let (_, mut b) = pair(ChannelConfig::default());
            let mut bad = frame.clone();
            bad[i] ^= bit;
            assert!(b.open(&bad).is_err(), "flip {bit:#x} at byte {i} accepted");
        }
    }
}

#[test]
fn truncated_and_extended_frames_are_rejected() {
    let (mut a, mut b) = pair(datagram());
    let frame = a.seal(b"payload").unwrap();
    for len in 0..frame.len() {
        assert!(b.open(&frame[..len]).is_err(), "truncated to {len}");
    }
    let mut long = frame.clone();
    long.push(0);
    assert!(matches!(b.open(&long), Err(Error::MalformedFrame(_))));
    assert_eq!(b.open(&frame).unwrap(), b"payload");
}

#[test]
fn wrong_direction_and_wrong_key_fail() {
    let (mut a, mut b) = pair(ChannelConfig::default());
    let frame = a.seal(b"to responder").unwrap();
    // Reflected back at the sender: it receives with the other direction's key.
    assert!(matches!(a.open(&frame), Err(Error::Decrypt)));
    // A channel from a different transcript cannot open it.
    let mut stranger = SecureChannel::new(
        &[0x11; 32],
        &[0x23; 32],
        Role::Responder,
        ChannelConfig::default(),
    )
    .unwrap();
    assert!(matches!(stranger.open(&frame), Err(Error::Decrypt)));
    // Nor one with a different shared secret.
    let mut stranger = SecureChannel::new(
        &[0x12; 32],
        &[0x22; 32],
        Role::Responder,
        ChannelConfig::default(),
    )
    .unwrap();
    assert!(matches!(stranger.open(&frame), Err(Error::Decrypt)));
    assert_eq!(b.open(&frame).unwrap(), b"to responder");
}

#[test]
fn stream_rejects_replay_reorder_and_drop_and_then_stays_closed() {
    let (mut a, mut b) = pair(ChannelConfig::default());
    let f0 = a.seal(b"0").unwrap();
    let f1 = a.seal(b"1").unwrap();
    let f2 = a.seal(b"2").unwrap();
    assert_eq!(b.open(&f0).unwrap(), b"0");
    // Replay.
    assert!(matches!(
        b.open(&f0),
        Err(Error::UnexpectedSequence {
            expected_seq: 1,
            seq: 0,
            ..
        })
    ));
    assert!(matches!(b.open(&f1), Err(Error::ChannelPoisoned)));

    // Reorder (a frame skipped).
    let (mut a, mut b) = pair(ChannelConfig::default());
    let _f0 = a.seal(b"0").unwrap();
    let f1 = a.seal(b"1").unwrap();
    assert!(matches!(
        b.open(&f1),
        Err(Error::UnexpectedSequence {
            expected_seq: 0,
            seq: 1,
            ..
        })
    ));
    let _ = f2;
}

#[test]
fn stream_tamper_poisons_the_receiver() {
    let (mut a, mut b) = pair(ChannelConfig::default());
    let mut f0 = a.seal(b"0").unwrap();
    let f1 = a.seal(b"1").unwrap();
    let last = f0.len() - 1;
    f0[last] ^= 1;
    assert!(matches!(b.open(&f0), Err(Error::Decrypt)));
    assert!(matches!(b.open(&f1), Err(Error::ChannelPoisoned)));
}

#[test]
fn rekey_by_frames_keeps_both_sides_in_step() {
    let config = ChannelConfig::default().with_rekey_after_frames(3);
    let (mut a, mut b) = pair(config);
    let mut frames = Vec::new();
    for i in 0..10u8 {
        frames.push(a.seal(&[i]).unwrap());
    }
    // Frames 0..3 in epoch 0, 3..6 in epoch 1, ...
    let epochs: Vec<u32> = frames
        .iter()
        .map(|f| fed_crypto::FrameHeader::parse(f, 1 << 20).unwrap().epoch)
        .collect();
    assert_eq!(epochs, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(b.open(f).unwrap(), [i as u8]);
    }
    // Different epochs use different keys: the same (seq, payload) gives different ciphertext.
    assert_ne!(frames[0][FRAME_HEADER_LEN..], frames[3][FRAME_HEADER_LEN..]);
}

#[test]
fn rekey_by_bytes_keeps_both_sides_in_step() {
    let config = ChannelConfig::default().with_rekey_after_bytes(100);
    let (mut a, mut b) = pair(config);
    for i in 0..20usize {
        let f = a.seal(&vec![i as u8; 30 + i]).unwrap();
        assert_eq!(b.open(&f).unwrap(), vec![i as u8; 30 + i]);
    }
    assert!(a.split().0.epoch().unwrap() >= 5);
}

#[test]
fn datagram_accepts_out_of_order_once() {
    let (mut a, mut b) = pair(datagram());
    let frames: Vec<_> = (0..50u8).map(|i| a.seal(&[i]).unwrap()).collect();
    // Deliver in a scrambled order, every frame twice.
    let order: Vec<usize> = (0..50).map(|i| (i * 17) % 50).collect();
    for &i in &order {
        assert_eq!(b.open(&frames[i]).unwrap(), [i as u8]);
    }
    for &i in &order {
        assert!(
            matches!(b.open(&frames[i]), Err(Error::Replay { .. })),
            "frame {i} replayed"
        );
    }
}

#[test]
fn datagram_rejects_frames_older_than_the_window() {
    let config = datagram().with_replay_window(64);
    let (mut a, mut b) = pair(config);
    let frames: Vec<_> = (0..200u32)
        .map(|i| a.seal(&i.to_be_bytes()).unwrap())
        .collect();
    assert!(b.open(&frames[199]).is_ok());
    assert!(matches!(
        b.open(&frames[100]),
        Err(Error::OutsideWindow { .. })
    ));
    assert!(b.open(&frames[136]).is_ok(), "inside the window");
    assert!(matches!(b.open(&frames[136]), Err(Error::Replay { .. })));
    // A tampered datagram is dropped without closing the channel.
    let mut bad = frames[150].clone();
    bad[FRAME_HEADER_LEN] ^= 1;
    assert!(matches!(b.open(&bad), Err(Error::Decrypt)));
    assert!(b.open(&frames[150]).is_ok());
}

#[test]
fn datagram_crosses_epochs_and_keeps_the_previous_one() {
    let config = datagram().with_rekey_after_frames(4);
    let (mut a, mut b) = pair(config);
    let frames: Vec<_> = (0..12u8).map(|i| a.seal(&[i]).unwrap()).collect();
    // Epoch 1 frame first, then a late epoch 0 frame, then epoch 2 ones.
    assert_eq!(b.open(&frames[5]).unwrap(), [5]);
    assert_eq!(b.open(&frames[1]).unwrap(), [1]);
    assert_eq!(b.open(&frames[9]).unwrap(), [9]);
    assert_eq!(b.open(&frames[6]).unwrap(), [6]);
    // Epoch 0 is now two behind: gone.
    assert!(matches!(
        b.open(&frames[2]),
        Err(Error::OutsideWindow { epoch: 0, .. })
    ));
    // Replays across the epoch switch are still caught.
    assert!(matches!(b.open(&frames[5]), Err(Error::Replay { .. })));
    // A frame whose sequence number is beyond the rekey limit cannot be genuine.
    let mut forged = frames[8].clone();
    forged[6..14].copy_from_slice(&4u64.to_be_bytes());
    assert!(matches!(b.open(&forged), Err(Error::OutsideWindow { .. })));
}

#[test]
fn mode_mismatch_and_oversize_are_typed_errors() {
    let (mut a, _) = pair(datagram());
    let (_, mut b) = pair(ChannelConfig::default());
    let f = a.seal(b"x").unwrap();
    assert!(matches!(b.open(&f), Err(Error::MalformedFrame(_))));

    let small = ChannelConfig::default().with_max_payload_len(16);
    let (mut a, mut b) = pair(small);
    assert!(matches!(
        a.seal(&[0; 17]),
        Err(Error::FrameTooLarge { len: 17, max: 16 })
    ));
    let (mut big, _) = pair(ChannelConfig::default());
    let f = big.seal(&[0; 17]).unwrap();
    assert!(matches!(
        b.open(&f),
        Err(Error::FrameTooLarge { len: 17, max: 16 })
    ));
}

#[test]
fn invalid_configurations_are_refused() {
    for config in [
        ChannelConfig::default().with_max_payload_len(0),
        ChannelConfig::default().with_max_payload_len(fed_crypto::MAX_PAYLOAD_LIMIT + 1),
        ChannelConfig::default().with_rekey_after_frames(0),
        ChannelConfig::default().with_rekey_after_frames((1 << 32) + 1),
        ChannelConfig::default().with_rekey_after_bytes(0),
        ChannelConfig::default().with_replay_window(100),
        ChannelConfig::default().with_replay_window(0),
    ] {
        assert!(matches!(
            SecureChannel::new(&[0; 32], &[0; 32], Role::Initiator, config),
            Err(Error::InvalidConfig(_))
        ));
    }
}

#[test]
fn debug_shows_no_key_material() {
    let (a, _) = pair(ChannelConfig::default());
    let shown = format!("{a:?}");
    assert!(shown.contains("epoch"));
    assert!(!shown.contains("secret"));
    assert!(!shown.contains("1111"));
}
