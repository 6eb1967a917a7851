//! Forward packets, reply packets, and the decoder that tells them apart.

use crate::{
    error::{Error, Result},
    format::{
        EPOCH_LEN, Kind, OFF_EPOCH, PREFIX_LEN, REPLY_ID_LEN, ReplyId, SizeClass, parse_prefix,
        prefix,
    },
};

/// The longest message [`Message::from_bytes`] accepts: a forward packet of the
/// largest class. Longer inputs are rejected unread.
pub const MAX_PACKET_LEN: usize = SizeClass::Large.packet_len();

/// A forward onion packet: prefix, header and body, exactly
/// [`SizeClass::packet_len`] bytes.
///
/// Every packet of a class has the same length at every hop of every route.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    class: SizeClass,
    bytes: Vec<u8>,
}

impl Packet {
    /// Decodes a forward packet: checks the prefix and the exact length of its class.
    /// The cryptographic checks happen when a relay processes it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        match Message::from_bytes(bytes)? {
            Message::Forward(p) => Ok(p),
            Message::Reply(_) => Err(Error::Unsupported {
                what: "packet kind (expected a forward packet)",
                value: Kind::Reply as u64,
            }),
        }
    }

    pub(crate) fn from_parts(class: SizeClass, bytes: Vec<u8>) -> Self {
        debug_assert_eq!(bytes.len(), class.packet_len());
        Self { class, bytes }
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoding, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The packet's size class.
    pub fn class(&self) -> SizeClass {
        self.class
    }

    /// The onion key epoch of the hop this packet is addressed to (in the clear).
    pub fn epoch(&self) -> u64 {
        let mut b = [0u8; EPOCH_LEN];
        b.copy_from_slice(&self.bytes[OFF_EPOCH..OFF_EPOCH + EPOCH_LEN]);
        u64::from_be_bytes(b)
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packet")
            .field("class", &self.class)
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

/// A reply travelling back along a path: prefix, reply id and body, exactly
/// [`SizeClass::reply_packet_len`] bytes.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | prefix: version 1, kind 2, class, 0 |
/// | 4 | 16 | reply id |
/// | 20 | body length of the class | body |
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyPacket {
    class: SizeClass,
    bytes: Vec<u8>,
}

const OFF_REPLY_ID: usize = PREFIX_LEN;
const OFF_REPLY_BODY: usize = PREFIX_LEN + REPLY_ID_LEN;

impl ReplyPacket {
    /// Decodes a reply packet: checks the prefix and the exact length of its class.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        match Message::from_bytes(bytes)? {
            Message::Reply(r) => Ok(r),
            Message::Forward(_) => Err(Error::Unsupported {
                what: "packet kind (expected a reply packet)",
                value: Kind::Forward as u64,
            }),
        }
    }

    /// A reply packet with an all-zero body, to be filled in.
    pub(crate) fn new(class: SizeClass, reply_id: ReplyId) -> Self {
        let mut bytes = vec![0u8; class.reply_packet_len()];
        bytes[..PREFIX_LEN].copy_from_slice(&prefix(Kind::Reply, class));
        bytes[OFF_REPLY_ID..OFF_REPLY_BODY].copy_from_slice(&reply_id.0);
        Self { class, bytes }
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoding, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The packet's size class.
    pub fn class(&self) -> SizeClass {
        self.class
    }

    /// The reply id: which relay state (or, at the original sender, which
    /// [`PendingReply`](crate::PendingReply)) this reply belongs to.
    pub fn reply_id(&self) -> ReplyId {
        let mut id = [0u8; REPLY_ID_LEN];
        id.copy_from_slice(&self.bytes[OFF_REPLY_ID..OFF_REPLY_BODY]);
        ReplyId(id)
    }

    pub(crate) fn set_reply_id(&mut self, id: ReplyId) {
        self.bytes[OFF_REPLY_ID..OFF_REPLY_BODY].copy_from_slice(&id.0);
    }

    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[OFF_REPLY_BODY..]
    }

    pub(crate) fn body_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[OFF_REPLY_BODY..]
    }
}

impl std::fmt::Debug for ReplyPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyPacket")
            .field("class", &self.class)
            .field("reply_id", &self.reply_id())
            .finish_non_exhaustive()
    }
}

/// Anything a relay can receive: a forward packet or a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A forward packet, towards a destination.
    Forward(Packet),
    /// A reply, back towards the original sender.
    Reply(ReplyPacket),
}

impl Message {
    /// Decodes either kind of packet. Inputs longer than [`MAX_PACKET_LEN`] are
    /// rejected unread; otherwise the length must be exactly that of the kind and
    /// class named in the prefix.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_PACKET_LEN {
            return Err(Error::TooLarge {
                what: "onion packet",
                len: bytes.len(),
                max: MAX_PACKET_LEN,
            });
        }
        let (kind, class) = parse_prefix(bytes)?;
        let (what, expected) = match kind {
            Kind::Forward => ("forward packet", class.packet_len()),
            Kind::Reply => ("reply packet", class.reply_packet_len()),
        };
        if bytes.len() != expected {
            return Err(Error::InvalidLength {
                what,
                expected,
                actual: bytes.len(),
            });
        }
        let bytes = bytes.to_vec();
        Ok(match kind {
            Kind::Forward => Message::Forward(Packet { class, bytes }),
            Kind::Reply => Message::Reply(ReplyPacket { class, bytes }),
        })
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Forward(p) => p.as_bytes(),
            Message::Reply(r) => r.as_bytes(),
        }
    }
}

impl From<Packet> for Message {
    fn from(p: Packet) -> Self {
        Message::Forward(p)
    }
}

impl From<ReplyPacket> for Message {
    fn from(r: ReplyPacket) -> Self {
        Message::Reply(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_checks_prefix_and_length() {
        for class in SizeClass::ALL {
            let mut fwd = vec![0u8; class.packet_len()];
            fwd[..4].copy_from_slice(&prefix(Kind::Forward, class));
            assert!(matches!(Message::from_bytes(&fwd), Ok(Message::Forward(_))));
            assert!(Packet::from_bytes(&fwd).is_ok());
            assert!(ReplyPacket::from_bytes(&fwd).is_err());
            assert!(Message::from_bytes(&fwd[..fwd.len() - 1]).is_err());
            fwd.push(0);
            assert!(Message::from_bytes(&fwd).is_err());

            let reply = ReplyPacket::new(class, ReplyId([3; 16]));
            let decoded = ReplyPacket::from_bytes(reply.as_bytes()).unwrap();
            assert_eq!(decoded.reply_id(), ReplyId([3; 16]));
            assert_eq!(decoded.class(), class);
            assert!(Packet::from_bytes(reply.as_bytes()).is_err());
        }
        assert!(matches!(
            Message::from_bytes(&vec![1u8; MAX_PACKET_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
        assert!(Message::from_bytes(&[]).is_err());
        // A small-class prefix on a large-class length.
        let mut wrong = vec![0u8; SizeClass::Large.packet_len()];
        wrong[..4].copy_from_slice(&prefix(Kind::Forward, SizeClass::Small));
        assert!(matches!(
            Message::from_bytes(&wrong),
            Err(Error::InvalidLength { .. })
        ));
    }
}
