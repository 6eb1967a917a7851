//! The versioned envelope, decoding limits and the low-level field codec.
//!
//! Every message is `MAGIC (4) | version (1) | kind (1) | body length (u32
//! little-endian, 4) | body`, where the body is a sequence of postcard
//! fields written and read one at a time so that every length is checked
//! against [`Limits`] before anything is allocated.

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    error::{Error, Result},
    frontier::Frontier,
    hlc::Hlc,
};

/// The four bytes every fed-crdt message starts with.
pub const MAGIC: [u8; 4] = *b"FCRD";

/// The wire format version this build writes and accepts.
pub const WIRE_VERSION: u8 = 1;

/// Length of the envelope header: magic, version, kind, body length.
pub const HEADER_LEN: usize = 10;

/// Most elements a decoder reserves room for before reading them: a count
/// within its limit still costs memory only as its elements arrive, so
/// decoded memory stays proportional to the message size whatever the
/// limits.
pub(crate) const MAX_PREALLOC: usize = 1_024;

/// The kind byte of a message, the sixth byte of the envelope.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    /// `0x01`: an [`LwwRegister`](crate::LwwRegister) (its full state, which is also its delta).
    RegisterState,
    /// `0x02`: a whole [`LwwMap`](crate::LwwMap) (for persistence or a small map's full state).
    MapState,
    /// `0x03`: a [`SyncRequest`](crate::SyncRequest): "send me what I am missing".
    SyncRequest,
    /// `0x04`: a [`MapDelta`](crate::MapDelta): one bounded chunk of a delta or snapshot.
    MapDelta,
    /// `0x05`: a [`QueryResponse`](crate::QueryResponse) from one peer.
    QueryResponse,
    /// `0x10`: a `crdts` [`GSet`](crate::GSet).
    GSet,
    /// `0x11`: a `crdts` [`Orswot`](crate::Orswot).
    Orswot,
    /// `0x12`: a `crdts` [`GCounter`](crate::GCounter).
    GCounter,
    /// `0x13`: a `crdts` [`PNCounter`](crate::PNCounter).
    PNCounter,
    /// `0x14`: a `crdts` [`VClock`](crate::VClock).
    VClock,
}

impl MessageKind {
    /// Every assigned kind, in byte order.
    pub const ALL: [MessageKind; 10] = [
        MessageKind::RegisterState,
        MessageKind::MapState,
        MessageKind::SyncRequest,
        MessageKind::MapDelta,
        MessageKind::QueryResponse,
        MessageKind::GSet,
        MessageKind::Orswot,
        MessageKind::GCounter,
        MessageKind::PNCounter,
        MessageKind::VClock,
    ];

    /// The byte written in the envelope.
    pub const fn to_byte(self) -> u8 {
        match self {
            MessageKind::RegisterState => 0x01,
            MessageKind::MapState => 0x02,
            MessageKind::SyncRequest => 0x03,
            MessageKind::MapDelta => 0x04,
            MessageKind::QueryResponse => 0x05,
            MessageKind::GSet => 0x10,
            MessageKind::Orswot => 0x11,
            MessageKind::GCounter => 0x12,
            MessageKind::PNCounter => 0x13,
            MessageKind::VClock => 0x14,
        }
    }

    /// The kind for an envelope byte, if assigned.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.to_byte() == byte)
    }
}

/// Bounds applied by every decoder (and by encoders, so a peer never sends
/// what the other side would reject when both use the same limits).
///
/// The defaults suit live sync between peers; a node persisting a large map
/// with [`LwwMap::encode`](crate::Codec::encode) passes larger limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Maximum size of a whole message, header included. Checked before any
    /// decoding. Default 1 MiB.
    pub max_message_bytes: usize,
    /// Maximum entries in one map state or delta chunk, elements in a set,
    /// or members in an `Orswot`. Default 16 384.
    pub max_entries: usize,
    /// Maximum origins in one frontier or vector clock. Default 1 024.
    pub max_origins: usize,
    /// Maximum hits in one query response. Default 1 024.
    pub max_hits: usize,
}

impl Limits {
    /// The default limits (see each field).
    pub const DEFAULT: Limits = Limits {
        max_message_bytes: 1 << 20,
        max_entries: 16_384,
        max_origins: 1_024,
        max_hits: 1_024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A type with a fed-crdt wire encoding.
///
/// `decode` accepts untrusted bytes: it checks the size first, returns a
/// typed [`Error`] for anything malformed or over a limit, allocates no more
/// than the limits allow, and never panics.
pub trait Codec: Sized {
    /// The kind byte this type is sent under.
    const KIND: MessageKind;

    /// Encodes `self` inside the envelope.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] or a `TooMany*` error if the result would
    /// break `limits`; [`Error::Encode`] if a value's `Serialize` fails.
    fn encode(&self, limits: &Limits) -> Result<Vec<u8>>;

    /// Decodes a message produced by [`encode`](Self::encode).
    ///
    /// # Errors
    ///
    /// Any envelope, limit, postcard or structural error; see [`Error`].
    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self>;
}

/// Reads and checks the envelope header and returns the message kind,
/// without decoding the body. Use it to dispatch an incoming message.
///
/// # Errors
///
/// [`Error::MessageTooLarge`], [`Error::Truncated`], [`Error::BadMagic`],
/// [`Error::UnsupportedVersion`], [`Error::UnknownKind`] or
/// [`Error::LengthMismatch`].
pub fn peek_kind(bytes: &[u8], limits: &Limits) -> Result<MessageKind> {
    let (kind, _) = open(bytes, limits)?;
    Ok(kind)
}

fn open<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(MessageKind, &'a [u8])> {
    if bytes.len() > limits.max_message_bytes {
        return Err(Error::MessageTooLarge {
            size: bytes.len(),
            max: limits.max_message_bytes,
        });
    }
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(Error::Truncated);
    };
    let [m0, m1, m2, m3, version, kind, l0, l1, l2, l3] = *header;
    if [m0, m1, m2, m3] != MAGIC {
        return Err(Error::BadMagic);
    }
    if version != WIRE_VERSION {
        return Err(Error::UnsupportedVersion { version });
    }
    let kind = MessageKind::from_byte(kind).ok_or(Error::UnknownKind { kind })?;
    let declared = u32::from_le_bytes([l0, l1, l2, l3]);
    if u64::from(declared) != body.len() as u64 {
        return Err(Error::LengthMismatch {
            declared: u64::from(declared),
            actual: body.len() as u64,
        });
    }
    Ok((kind, body))
}

/// Writes an envelope and its body fields.
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(kind: MessageKind) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&MAGIC);
        buf.push(WIRE_VERSION);
        buf.push(kind.to_byte());
        buf.extend_from_slice(&[0; 4]);
        Self { buf }
    }

    /// Appends one postcard-encoded value.
    pub(crate) fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let buf = core::mem::take(&mut self.buf);
        self.buf = postcard::to_extend(value, buf).map_err(Error::Encode)?;
        Ok(())
    }

    /// Appends a sequence length as a postcard varint.
    pub(crate) fn len(&mut self, n: usize) -> Result<()> {
        self.value(&(n as u64))
    }

    /// Appends a frontier: origin count, then each stamp in ascending node order.
    pub(crate) fn frontier(&mut self, frontier: &Frontier, limits: &Limits) -> Result<()> {
        check_count(frontier.len() as u64, limits.max_origins, |count, max| {
            Error::TooManyOrigins { count, max }
        })?;
        self.len(frontier.len())?;
        for stamp in frontier.iter() {
            self.value(&stamp)?;
        }
        Ok(())
    }

    /// The body written so far (everything after the header).
    pub(crate) fn body(&self) -> &[u8] {
        &self.buf[HEADER_LEN..]
    }

    /// Bytes written so far, header included.
    pub(crate) fn written(&self) -> usize {
        self.buf.len()
    }

    /// Patches the body length into the header and checks the size limit.
    pub(crate) fn finish(mut self, limits: &Limits) -> Result<Vec<u8>> {
        let size = self.buf.len();
        if size > limits.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size,
                max: limits.max_message_bytes,
            });
        }
        let body = u32::try_from(size - HEADER_LEN).map_err(|_| Error::MessageTooLarge {
            size,
            max: limits.max_message_bytes,
        })?;
        self.buf[6..HEADER_LEN].copy_from_slice(&body.to_le_bytes());
        Ok(self.buf)
    }
}

/// Reads body fields of a checked envelope.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the envelope (size, magic, version, kind, length) and positions
    /// the reader at the start of the body.
    pub(crate) fn open(bytes: &'a [u8], expected: MessageKind, limits: &Limits) -> Result<Self> {
        let (kind, body) = open(bytes, limits)?;
        if kind != expected {
            return Err(Error::WrongKind {
                expected: expected.to_byte(),
                found: kind.to_byte(),
            });
        }
        Ok(Self { rest: body })
    }

    /// The unread part of the body.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Reads one postcard-encoded value.
    pub(crate) fn value<T: DeserializeOwned>(&mut self) -> Result<T> {
        let (value, rest) = postcard::take_from_bytes::<T>(self.rest).map_err(Error::Decode)?;
        self.rest = rest;
        Ok(value)
    }

    /// Reads a sequence length and checks it against `max`, mapping an
    /// excess to the error `too_many` builds.
    pub(crate) fn len(
        &mut self,
        max: usize,
        too_many: impl FnOnce(u64, usize) -> Error,
    ) -> Result<usize> {
        let n: u64 = self.value()?;
        match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(too_many(n, max)),
        }
    }

    /// Reads a frontier, enforcing the origin limit and the strictly
    /// ascending node order.
    pub(crate) fn frontier(&mut self, limits: &Limits) -> Result<Frontier> {
        let n = self.len(limits.max_origins, |count, max| Error::TooManyOrigins {
            count,
            max,
        })?;
        let mut stamps = Vec::with_capacity(n.min(MAX_PREALLOC));
        for _ in 0..n {
            let stamp: Hlc = self.value()?;
            if let Some(prev) = stamps.last().map(|s: &Hlc| s.node())
                && prev >= stamp.node()
            {
                return Err(Error::Invalid {
                    reason: "frontier origins not in strictly ascending order",
                });
            }
            stamps.push(stamp);
        }
        Ok(Frontier::from_sorted_unique(stamps))
    }

    /// Ends decoding: every body byte must have been consumed.
    pub(crate) fn finish(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                count: self.rest.len(),
            })
        }
    }
}

fn check_count(count: u64, max: usize, too_many: impl FnOnce(u64, usize) -> Error) -> Result<()> {
    if count > max as u64 {
        Err(too_many(count, max))
    } else {
        Ok(())
    }
}

/// Size in bytes of `value`'s postcard encoding, using `scratch` as the buffer.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(
    value: &T,
    scratch: &mut Vec<u8>,
) -> Result<usize> {
    scratch.clear();
    let buf = core::mem::take(scratch);
    *scratch = postcard::to_extend(value, buf).map_err(Error::Encode)?;
    Ok(scratch.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_byte() {
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::from_byte(kind.to_byte()), Some(kind));
        }
        assert_eq!(MessageKind::from_byte(0x00), None);
        assert_eq!(MessageKind::from_byte(0xff), None);
    }

    #[test]
    fn header_checks_come_in_order() {
        let limits = Limits::default();
        let mut w = Writer::new(MessageKind::SyncRequest);
        w.value(&7u8).unwrap();
        let good = w.finish(&limits).unwrap();
        assert_eq!(&good[..4], b"FCRD");
        assert_eq!(good[4], 1);
        assert_eq!(good[5], 0x03);
        assert_eq!(&good[6..10], &1u32.to_le_bytes());
        assert_eq!(peek_kind(&good, &limits).unwrap(), MessageKind::SyncRequest);

        assert_eq!(peek_kind(&good[..9], &limits), Err(Error::Truncated));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(peek_kind(&bad, &limits), Err(Error::BadMagic));
        let mut bad = good.clone();
        bad[4] = 2;
        assert_eq!(
            peek_kind(&bad, &limits),
            Err(Error::UnsupportedVersion { version: 2 })
        );
        let mut bad = good.clone();
        bad[5] = 0x7f;
        assert_eq!(
            peek_kind(&bad, &limits),
            Err(Error::UnknownKind { kind: 0x7f })
        );
        let mut bad = good.clone();
        bad.push(0);
        assert_eq!(
            peek_kind(&bad, &limits),
            Err(Error::LengthMismatch {
                declared: 1,
                actual: 2
            })
        );
        let tiny = Limits {
            max_message_bytes: 10,
            ..limits
        };
        assert_eq!(
            peek_kind(&good, &tiny),
            Err(Error::MessageTooLarge { size: 11, max: 10 })
        );
        assert!(matches!(
            Reader::open(&good, MessageKind::MapDelta, &limits),
            Err(Error::WrongKind {
                expected: 0x04,
                found: 0x03
            })
        ));
    }

    #[test]
    fn preallocation_is_capped_whatever_the_limits() {
        // Limits raised far beyond anything sane: a declared origin count
        // that passes them must not be reserved up front.
        let huge = Limits {
            max_origins: usize::MAX,
            ..Limits::default()
        };
        let mut w = Writer::new(MessageKind::SyncRequest);
        w.len(usize::MAX >> 4).unwrap();
        let bytes = w.finish(&huge).unwrap();
        let mut r = Reader::open(&bytes, MessageKind::SyncRequest, &huge).unwrap();
        assert!(matches!(r.frontier(&huge), Err(Error::Decode(_))));
    }

    #[test]
    fn declared_lengths_are_checked_before_allocation() {
        let limits = Limits::default();
        let mut w = Writer::new(MessageKind::SyncRequest);
        w.len(usize::MAX).unwrap();
        let bytes = w.finish(&limits).unwrap();
        let mut r = Reader::open(&bytes, MessageKind::SyncRequest, &limits).unwrap();
        assert!(matches!(
            r.frontier(&limits),
            Err(Error::TooManyOrigins { max: 1_024, .. })
        ));
    }
}
