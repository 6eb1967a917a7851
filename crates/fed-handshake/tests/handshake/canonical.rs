//! Every handshake message has one accepted encoding: a message re-encoded on the
//! path (an over-long varint, which postcard's decoder would accept) is refused,
//! and the handshake does not complete with bytes its peer did not send.

use fed_handshake::{Error, Event, Suite};

use crate::*;

/// `msg` with the varint that starts at `at` padded with one `0x80 0x00`-style
/// continuation group: the same value in one more byte. The envelope's length
/// field is adjusted.
pub(crate) fn overlong_varint_at(msg: &[u8], at: usize) -> Vec<u8> {
    let mut end = at;
    while msg[end] & 0x80 != 0 {
        end += 1;
    }
    let mut out = msg[..end].to_vec();
    out.push(msg[end] | 0x80);
    out.push(0x00);
    out.extend_from_slice(&msg[end + 1..]);
    let body = (out.len() - fed_handshake::ENVELOPE_HEADER_LEN) as u32;
    out[6..10].copy_from_slice(&body.to_be_bytes());
    out
}

/// The first field of each of the three messages is a varint length (hello: the
/// suite list after the one-byte minor version; accept: the KEM ciphertext;
/// finish: the sealed part). Padded, each is refused by its receiver.
#[test]
fn re_encoded_handshake_messages_are_refused() {
    for suite in [Suite::Default, Suite::PqAuth] {
        let s = setup(suite, 31);

        // Hello.
        let (mut i, mut r) = s.start(32);
        let m1 = i.poll_transmit().unwrap();
        let bad = overlong_varint_at(&m1, 11);
        assert!(matches!(
            r.handle_input(&bad, NOW),
            Err(Error::NonCanonical(_))
        ));

        // Accept: the initiator refuses it before sending finish.
        let (mut i, mut r) = s.start(33);
        r.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
        let m2 = r.poll_transmit().unwrap();
        let bad = overlong_varint_at(&m2, 10);
        assert!(matches!(
            i.handle_input(&bad, NOW),
            Err(Error::NonCanonical(_))
        ));
        assert!(i.poll_transmit().is_none());

        // Finish: the responder refuses it and issues no token.
        let (mut i, mut r) = s.start(34);
        r.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
        i.handle_input(&r.poll_transmit().unwrap(), NOW).unwrap();
        let m3 = i.poll_transmit().unwrap();
        let bad = overlong_varint_at(&m3, 10);
        assert!(matches!(
            r.handle_input(&bad, NOW),
            Err(Error::NonCanonical(_))
        ));
        assert!(!matches!(r.poll_event(), Some(Event::Established(_))));
        // (What the responder sends now is its reject, not a token.)
        let reply = r.poll_transmit().unwrap();
        assert!(i.handle_input(&reply, NOW).is_err());
        assert!(i.poll_event().is_none());
    }
}
