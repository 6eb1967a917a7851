//! The channel's frame decoder and receivers, fed arbitrary frames. The first byte
//! picks the mode and how the rest is cut into frames; a few genuine frames are
//! mixed in so that the fuzzer also reaches the paths after authentication.
#![no_main]

use fed_crypto::{ChannelConfig, FrameHeader, Mode, Role, SecureChannel};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let _ = FrameHeader::parse(rest, 1 << 20);
    let mode = if control & 1 == 0 { Mode::Stream } else { Mode::Datagram };
    let config = ChannelConfig::default()
        .with_mode(mode)
        .with_rekey_after_frames(u64::from(control >> 4) + 1)
        .with_replay_window(64);
    let (Ok(mut tx), Ok(mut rx)) = (
        SecureChannel::new(&[7; 32], &[9; 32], Role::Initiator, config.clone()),
        SecureChannel::new(&[7; 32], &[9; 32], Role::Responder, config),
    ) else {
        return;
    };
    // Cut the input into frames at a stride chosen by the control byte; interleave
    // genuine frames, some of them mutated at a position taken from the input.
    let stride = usize::from((control >> 1) & 0x07) * 8 + 18;
    for (i, chunk) in rest.chunks(stride.max(1)).enumerate() {
        let _ = rx.open(chunk);
        if let Ok(mut genuine) = tx.seal(chunk) {
            if i % 3 == 2 {
                let at = usize::from(chunk.first().copied().unwrap_or(0)) % genuine.len();
                genuine[at] ^= 0x40;
            }
            let _ = rx.open(&genuine);
        }
    }
});
