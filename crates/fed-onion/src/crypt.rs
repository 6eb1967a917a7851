//! The per-hop key schedule and the three primitives built on it: the BLAKE3
//! keystream, the header MAC, and the end-to-end AES-256-GCM payload envelope.

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{AeadInOut, inout::InOutBuf},
};
use fed_crypto::{DerivedKey, XWingSharedSecret, Zeroizing, ct_eq, derive_key};
use zeroize::Zeroize;

use crate::{
    error::{Error, Result},
    format::{MAC_LEN, ReplyId},
    labels,
};

/// Length of a replay tag as stored in the replay cache.
pub(crate) const REPLAY_TAG_LEN: usize = 16;

/// Everything a hop derives from its X-Wing shared secret `ss`, derived on demand.
///
/// Each key is `derive_key(LABEL, [ss])`; the replay tag and reply id are the first
/// 16 bytes of `hash(LABEL, [ss])` (`fed-crypto`'s BLAKE3 constructions). The
/// secret and every key zeroize on drop, and so does every hasher that absorbs
/// them.
pub(crate) struct HopKeys {
    ss: DerivedKey,
}

impl HopKeys {
    pub(crate) fn new(ss: &XWingSharedSecret) -> Self {
        Self {
            ss: DerivedKey::from_bytes(*ss.as_bytes()),
        }
    }

    fn key(&self, label: &str) -> DerivedKey {
        derive_key(label, &[self.ss.as_bytes()])
    }

    /// The first 16 bytes of `hash(label, [ss])`. `hash` and `derive_key` are the
    /// same construction, but only `derive_key` zeroizes the hasher that absorbed
    /// `ss`, so the bytes are taken from it.
    fn short(&self, label: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.key(label).as_bytes()[..16]);
        out
    }

    pub(crate) fn header_stream(&self) -> DerivedKey {
        self.key(labels::HEADER_STREAM)
    }

    pub(crate) fn header_mac(&self) -> DerivedKey {
        self.key(labels::HEADER_MAC)
    }

    pub(crate) fn body_stream(&self) -> DerivedKey {
        self.key(labels::BODY_STREAM)
    }

    pub(crate) fn payload(&self) -> DerivedKey {
        self.key(labels::PAYLOAD_KEY)
    }

    pub(crate) fn reply_stream(&self) -> DerivedKey {
        self.key(labels::REPLY_STREAM)
    }

    pub(crate) fn reply_payload(&self) -> DerivedKey {
        self.key(labels::REPLY_PAYLOAD_KEY)
    }

    pub(crate) fn replay_tag(&self) -> [u8; REPLAY_TAG_LEN] {
        self.short(labels::REPLAY_TAG)
    }

    pub(crate) fn reply_id(&self) -> ReplyId {
        ReplyId(self.short(labels::REPLY_ID))
    }
}

/// The keystream reader of `key`: the extended output of BLAKE3 in keyed mode over
/// the empty input. The hasher, which holds the key, is zeroized here; the reader,
/// which holds it too, must be zeroized by the caller.
fn keystream_reader(key: &DerivedKey) -> blake3::OutputReader {
    let mut hasher = blake3::Hasher::new_keyed(key.as_bytes());
    let reader = hasher.finalize_xof();
    hasher.zeroize();
    reader
}

/// Fills `out` with the first `out.len()` bytes of the keystream of `key`.
pub(crate) fn keystream(key: &DerivedKey, out: &mut [u8]) {
    let mut reader = keystream_reader(key);
    reader.fill(out);
    reader.zeroize();
}

/// XORs the keystream of `key` into `data`.
pub(crate) fn xor_keystream(key: &DerivedKey, data: &mut [u8]) {
    const CHUNK: usize = 4096;
    let mut reader = keystream_reader(key);
    let mut buf = Zeroizing::new([0u8; CHUNK]);
    for part in data.chunks_mut(CHUNK) {
        let ks = &mut buf[..part.len()];
        reader.fill(ks);
        xor_in_place(part, ks);
    }
    reader.zeroize();
}

/// `dst ^= src` over the shorter of the two.
pub(crate) fn xor_in_place(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// The header MAC of a hop: keyed BLAKE3 under the hop's MAC key over the
/// concatenation of `parts` (no framing: the layout fixes every length).
pub(crate) fn header_mac(key: &DerivedKey, parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut hasher = blake3::Hasher::new_keyed(key.as_bytes());
    for part in parts {
        hasher.update(part);
    }
    let tag = *hasher.finalize().as_bytes();
    hasher.zeroize();
    tag
}

/// Checks a header MAC in constant time.
pub(crate) fn verify_header_mac(key: &DerivedKey, parts: &[&[u8]], tag: &[u8]) -> bool {
    ct_eq(&header_mac(key, parts), tag)
}

const TAG_LEN: usize = 16;

fn nonce() -> aes_gcm::Nonce<aes_gcm::aead::consts::U12> {
    // Every payload key seals exactly one message, so a fixed nonce never repeats
    // under one key.
    [0u8; 12].into()
}

/// Seals `payload` into `body` (the whole body of a class):
/// `AES-256-GCM(key, nonce 0, aad "", be32(len) ‖ payload ‖ zeros) ‖ tag`.
pub(crate) fn seal_payload(key: &DerivedKey, payload: &[u8], body: &mut [u8]) -> Result<()> {
    let inner = body.len().saturating_sub(TAG_LEN);
    let max = inner.saturating_sub(4);
    if payload.len() > max {
        return Err(Error::PayloadTooLarge {
            len: payload.len(),
            max,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| Error::PayloadTooLarge {
        len: payload.len(),
        max,
    })?;
    let (plain, tag_out) = body.split_at_mut(inner);
    plain.fill(0);
    plain[..4].copy_from_slice(&len.to_be_bytes());
    plain[4..4 + payload.len()].copy_from_slice(payload);
    let cipher = Aes256Gcm::new(key.as_bytes().into());
    let tag = cipher
        .encrypt_inout_detached(&nonce(), &[], InOutBuf::from(&mut *plain))
        .map_err(|_| {
            plain.zeroize();
            Error::PayloadTooLarge {
                len: payload.len(),
                max,
            }
        })?;
    tag_out.copy_from_slice(&tag);
    Ok(())
}

/// Opens a body sealed by [`seal_payload`] in place and returns the payload.
/// `None` if the body does not authenticate or its length field is out of range.
///
/// The decrypted bytes do not stay in `body`: once the payload is copied out (or
/// found malformed), the plaintext area is zeroed. A body that does not
/// authenticate is never decrypted.
pub(crate) fn open_payload(key: &DerivedKey, body: &mut [u8]) -> Option<Vec<u8>> {
    let inner = body.len().checked_sub(TAG_LEN)?;
    let (plain, tag) = body.split_at_mut(inner);
    let tag = aes_gcm::Tag::<aes_gcm::aead::consts::U16>::try_from(&tag[..]).ok()?;
    let cipher = Aes256Gcm::new(key.as_bytes().into());
    cipher
        .decrypt_inout_detached(&nonce(), &[], InOutBuf::from(&mut *plain), &tag)
        .ok()?;
    let payload = unpad(plain);
    plain.zeroize();
    payload
}

/// The payload inside a decrypted body area: `be32(len) ‖ payload ‖ zeros`.
fn unpad(plain: &[u8]) -> Option<Vec<u8>> {
    let len_bytes: [u8; 4] = plain.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    let payload = plain.get(4..4usize.checked_add(len)?)?;
    if plain[4 + len..].iter().any(|&b| b != 0) {
        return None;
    }
    Some(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DerivedKey {
        DerivedKey::from_bytes([b; 32])
    }

    #[test]
    fn keystream_is_a_prefix_stream_and_xor_inverts() {
        let mut long = vec![0u8; 10_000];
        keystream(&key(1), &mut long);
        let mut short = vec![0u8; 100];
        keystream(&key(1), &mut short);
        assert_eq!(&long[..100], &short[..]);
        let mut data = vec![0u8; 10_000];
        xor_keystream(&key(1), &mut data);
        assert_eq!(data, long, "chunked XOR matches one-shot output");
        xor_keystream(&key(1), &mut data);
        assert!(data.iter().all(|&b| b == 0));
        let mut other = vec![0u8; 100];
        keystream(&key(2), &mut other);
        assert_ne!(other, short);
    }

    #[test]
    fn header_mac_is_keyed_blake3_of_the_concatenation() {
        let k = key(9);
        let tag = header_mac(&k, &[b"ab", b"cd"]);
        assert_eq!(tag, *blake3::keyed_hash(k.as_bytes(), b"abcd").as_bytes());
        assert!(verify_header_mac(&k, &[b"abcd"], &tag));
        assert!(!verify_header_mac(&k, &[b"abce"], &tag));
        assert!(!verify_header_mac(&key(8), &[b"abcd"], &tag));
        assert!(!verify_header_mac(&k, &[b"abcd"], &tag[..31]));
    }

    #[test]
    fn payload_round_trip_and_tamper() {
        for len in [0usize, 1, 100, 8172] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut body = vec![0u8; 8192];
            seal_payload(&key(3), &payload, &mut body).unwrap();
            let mut copy = body.clone();
            assert_eq!(open_payload(&key(3), &mut copy).unwrap(), payload);
            let mut wrong = body.clone();
            assert!(open_payload(&key(4), &mut wrong).is_none());
            for at in [0usize, 3, 4, 5000, 8175, 8191] {
                let mut bad = body.clone();
                bad[at] ^= 1;
                assert!(open_payload(&key(3), &mut bad).is_none(), "byte {at}");
            }
        }
        let mut body = vec![0u8; 8192];
        assert!(matches!(
            seal_payload(&key(3), &[0u8; 8173], &mut body),
            Err(Error::PayloadTooLarge {
                len: 8173,
                max: 8172
            })
        ));
        assert!(open_payload(&key(3), &mut [0u8; 10]).is_none());
    }

    /// Seals `plain` (the whole plaintext area, length field and padding included)
    /// as [`seal_payload`] would, whatever it holds.
    fn seal_raw(k: &DerivedKey, plain: &[u8]) -> Vec<u8> {
        let mut body = plain.to_vec();
        let tag = Aes256Gcm::new(k.as_bytes().into())
            .encrypt_inout_detached(&nonce(), &[], InOutBuf::from(&mut body[..]))
            .unwrap();
        body.extend_from_slice(&tag);
        body
    }

    #[test]
    fn opening_leaves_no_plaintext_in_the_body() {
        let inner = 8192 - TAG_LEN;
        let mut body = vec![0u8; 8192];
        seal_payload(&key(3), &[0xa5; 100], &mut body).unwrap();
        let tag = body[inner..].to_vec();
        assert_eq!(open_payload(&key(3), &mut body).unwrap(), [0xa5; 100]);
        assert!(
            body[..inner].iter().all(|&b| b == 0),
            "plaintext left behind"
        );
        assert_eq!(body[inner..], tag[..]);
        // Also when the body authenticates but its length or padding is wrong.
        let mut too_long = vec![0xa5u8; inner];
        too_long[..4].copy_from_slice(&(inner as u32).to_be_bytes());
        let mut bad_padding = vec![0xa5u8; inner];
        bad_padding[..4].copy_from_slice(&100u32.to_be_bytes());
        for plain in [too_long, bad_padding] {
            let mut body = seal_raw(&key(3), &plain);
            assert!(open_payload(&key(3), &mut body).is_none());
            assert!(
                body[..inner].iter().all(|&b| b == 0),
                "plaintext left behind"
            );
        }
    }

    #[test]
    fn hop_keys_are_distinct() {
        let ss = fed_crypto::XWingSecretKey::from_seed(&[5; 32]);
        let (ct, shared) = ss.public_key().encapsulate_derand(&[6; 64]);
        assert_eq!(ss.decapsulate(&ct), shared);
        let k = HopKeys::new(&shared);
        let all = [
            *k.header_stream().as_bytes(),
            *k.header_mac().as_bytes(),
            *k.body_stream().as_bytes(),
            *k.payload().as_bytes(),
            *k.reply_stream().as_bytes(),
            *k.reply_payload().as_bytes(),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_ne!(k.replay_tag(), k.reply_id().0);
        // The derivations are fed-crypto's, with this crate's labels.
        assert_eq!(
            k.header_mac(),
            derive_key(labels::HEADER_MAC, &[shared.as_bytes()])
        );
        let hash = |label| fed_crypto::hash(label, &[shared.as_bytes()]);
        assert_eq!(k.replay_tag()[..], hash(labels::REPLAY_TAG)[..16]);
        assert_eq!(k.reply_id().0[..], hash(labels::REPLY_ID)[..16]);
    }
}
