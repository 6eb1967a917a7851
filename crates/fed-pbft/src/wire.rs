//! The envelope around every message, and postcard helpers.
//!
//! Envelope (10 bytes, then the body):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `FEDP` |
//! | 4 | 1 | wire version, `1` |
//! | 5 | 1 | kind (see [`Kind`]) |
//! | 6 | 4 | body length, big-endian |

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// Envelope magic.
pub const MAGIC: [u8; 4] = *b"FEDP";
/// Wire-format version this implementation speaks.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of envelope header.
pub const ENVELOPE_HEADER_LEN: usize = 10;
/// The largest message of any kind, envelope included (32 MiB).
pub const MAX_MESSAGE_LEN: usize = 32 * 1024 * 1024;
/// Hard cap on one client operation (1 MiB); [`Config`](crate::Config) sets a lower limit.
pub const MAX_OPERATION_LEN: usize = 1024 * 1024;
/// Hard cap on one application result carried in a reply (1 MiB).
pub const MAX_RESULT_LEN: usize = 1024 * 1024;
/// Hard cap on the encoded bytes of one batch (8 MiB); [`Config`](crate::Config) sets a lower limit.
pub const MAX_BATCH_LEN: usize = 8 * 1024 * 1024;

/// Message kinds (the envelope's kind byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Request = 1,
    PrePrepare = 2,
    Prepare = 3,
    Commit = 4,
    Checkpoint = 5,
    ViewChange = 6,
    NewView = 7,
    Fetch = 8,
    Committed = 9,
    StableCheckpoint = 10,
    StateRequest = 11,
    StateResponse = 12,
    Reply = 13,
}

const SMALL: usize = 512;
const CERT: usize = crate::membership::MAX_REPLICAS * 72 + SMALL;

impl Kind {
    fn from_u8(b: u8) -> Result<Self> {
        Ok(match b {
            1 => Kind::Request,
            2 => Kind::PrePrepare,
            3 => Kind::Prepare,
            4 => Kind::Commit,
            5 => Kind::Checkpoint,
            6 => Kind::ViewChange,
            7 => Kind::NewView,
            8 => Kind::Fetch,
            9 => Kind::Committed,
            10 => Kind::StableCheckpoint,
            11 => Kind::StateRequest,
            12 => Kind::StateResponse,
            13 => Kind::Reply,
            _ => return Err(Error::Malformed("unknown message kind")),
        })
    }

    /// Largest body of this kind.
    pub(crate) fn max_body(self) -> usize {
        let max = MAX_MESSAGE_LEN - ENVELOPE_HEADER_LEN;
        match self {
            Kind::Request => MAX_OPERATION_LEN + CERT,
            Kind::PrePrepare => MAX_BATCH_LEN + SMALL,
            Kind::Prepare | Kind::Commit | Kind::Checkpoint => SMALL,
            Kind::Fetch | Kind::StateRequest => SMALL,
            Kind::Committed => MAX_BATCH_LEN + CERT,
            Kind::StableCheckpoint => CERT,
            Kind::Reply => MAX_RESULT_LEN + SMALL,
            Kind::ViewChange | Kind::NewView | Kind::StateResponse => max,
        }
    }
}

/// Checks the envelope header at the start of `header` and returns the whole
/// message's length, so that a stream reader knows, bounded, how much to read.
pub fn message_len(header: &[u8]) -> Result<usize> {
    let (_, len) = parse_header(header)?;
    Ok(ENVELOPE_HEADER_LEN + len)
}

fn parse_header(bytes: &[u8]) -> Result<(Kind, usize)> {
    let h = bytes
        .get(..ENVELOPE_HEADER_LEN)
        .ok_or(Error::Malformed("shorter than an envelope header"))?;
    if h[..4] != MAGIC {
        return Err(Error::Malformed("bad magic"));
    }
    if h[4] != WIRE_VERSION {
        return Err(Error::UnsupportedVersion(h[4]));
    }
    let kind = Kind::from_u8(h[5])?;
    let len = u32::from_be_bytes([h[6], h[7], h[8], h[9]]) as usize;
    if len > kind.max_body() {
        return Err(Error::TooLarge {
            what: "message",
            len: ENVELOPE_HEADER_LEN.saturating_add(len),
            max: ENVELOPE_HEADER_LEN + kind.max_body(),
        });
    }
    Ok((kind, len))
}

/// Splits a whole message into its kind and body, checking every length.
pub(crate) fn open(bytes: &[u8]) -> Result<(Kind, &[u8])> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(Error::TooLarge {
            what: "message",
            len: bytes.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    let (kind, len) = parse_header(bytes)?;
    if bytes.len() != ENVELOPE_HEADER_LEN + len {
        return Err(Error::Malformed(
            "length field disagrees with the message size",
        ));
    }
    Ok((kind, &bytes[ENVELOPE_HEADER_LEN..]))
}

/// Encodes `body` under `kind` in an envelope.
pub(crate) fn seal<T: Serialize>(kind: Kind, body: &T) -> Result<Vec<u8>> {
    let mut out = vec![0u8; ENVELOPE_HEADER_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = WIRE_VERSION;
    out[5] = kind as u8;
    let mut out =
        postcard::to_extend(body, out).map_err(|_| Error::Malformed("encoding failed"))?;
    let len = out.len() - ENVELOPE_HEADER_LEN;
    if len > kind.max_body() {
        return Err(Error::TooLarge {
            what: "message",
            len: out.len(),
            max: ENVELOPE_HEADER_LEN + kind.max_body(),
        });
    }
    out[6..10].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Postcard-encodes `value` (the canonical encoding used for hashing and signing).
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing our own in-memory types into a Vec cannot fail: postcard only
    // fails on a full buffer or on types it cannot represent, neither of which
    // exists here. An empty output would make every signature check fail loudly.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Postcard-decodes `bytes` as a `T`, refusing trailing bytes and any encoding
/// other than the canonical one: the value must re-encode to exactly `bytes`
/// (postcard itself accepts overlong varints, so one value has many encodings).
pub(crate) fn decode<T: DeserializeOwned + Serialize>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T> {
    let value = match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => value,
        _ => return Err(Error::Malformed(what)),
    };
    if !is_canonical(&value, bytes) {
        return Err(Error::NonCanonical(what));
    }
    Ok(value)
}

/// Whether `bytes` is exactly postcard's encoding of `value`: the encoding is
/// compared as it is produced, without allocating, and stops at the first
/// difference.
pub(crate) fn is_canonical<T: Serialize + ?Sized>(value: &T, bytes: &[u8]) -> bool {
    postcard::serialize_with_flavor(value, Compare { rest: bytes }).is_ok()
}

/// A postcard output that compares with expected bytes instead of storing.
struct Compare<'a> {
    rest: &'a [u8],
}

impl postcard::ser_flavors::Flavor for Compare<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        match self.rest.strip_prefix(data) {
            Some(rest) => {
                self.rest = rest;
                Ok(())
            }
            None => Err(postcard::Error::SerializeBufferFull),
        }
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }
}

/// Serde helpers for `Vec<u8>` fields: encoded as postcard byte strings (varint
/// length, then the bytes), decoded in one copy instead of byte by byte.
pub(crate) mod bytes {
    use serde::{Deserializer, Serializer, de};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// An Ed25519 signature (64 bytes; encoded as 64 raw bytes, no length prefix).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Signature, A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_checks() {
        let msg = seal(Kind::Fetch, &(7u64,)).unwrap();
        assert_eq!(message_len(&msg).unwrap(), msg.len());
        let (kind, body) = open(&msg).unwrap();
        assert_eq!(kind, Kind::Fetch);
        assert_eq!(decode::<(u64,)>(body, "x").unwrap(), (7,));
        // Truncation, extension, magic, version, kind, announced size.
        assert!(open(&msg[..msg.len() - 1]).is_err());
        let mut longer = msg.clone();
        longer.push(0);
        assert!(open(&longer).is_err());
        for (i, v) in [(0, b'X'), (4, 2), (5, 0), (5, 200)] {
            let mut bad = msg.clone();
            bad[i] = v;
            assert!(open(&bad).is_err(), "byte {i}");
        }
        let mut huge = msg.clone();
        huge[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(message_len(&huge), Err(Error::TooLarge { .. })));
        assert!(open(&[]).is_err());
        // Trailing bytes inside the body are refused.
        assert!(decode::<(u64,)>(&[7, 0], "x").is_err());
    }

    #[test]
    fn only_canonical_encodings_decode() {
        // 7 as a one-byte varint, and as overlong two- and ten-byte ones.
        assert_eq!(decode::<(u64,)>(&[7], "x").unwrap(), (7,));
        assert!(matches!(
            decode::<(u64,)>(&[0x87, 0x00], "x"),
            Err(Error::NonCanonical("x"))
        ));
        let mut ten = vec![0x80; 9];
        ten[0] = 0x87;
        ten.push(0);
        assert!(matches!(
            decode::<(u64,)>(&ten, "x"),
            Err(Error::NonCanonical("x"))
        ));
        // The largest u64 needs ten bytes and is canonical.
        let max = encode(&u64::MAX);
        assert_eq!(max.len(), 10);
        assert_eq!(decode::<u64>(&max, "x").unwrap(), u64::MAX);
        // A u16 (a replica index) and a length prefix, overlong.
        assert!(decode::<u16>(&[0x83, 0x00], "x").is_err());
        assert!(decode::<Vec<u8>>(&[0x81, 0x00, 9], "x").is_err());
        assert_eq!(decode::<Vec<u8>>(&[0x01, 9], "x").unwrap(), vec![9]);
    }

    #[test]
    fn signature_encodes_as_64_raw_bytes() {
        let s = Signature([9; 64]);
        let enc = encode(&s);
        assert_eq!(enc, vec![9; 64]);
        assert_eq!(decode::<Signature>(&enc, "sig").unwrap(), s);
        assert!(decode::<Signature>(&enc[..63], "sig").is_err());
    }
}
