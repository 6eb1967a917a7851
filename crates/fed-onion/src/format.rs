//! Sizes, size classes, and the small fixed-layout pieces of the wire format: the
//! 4-byte envelope prefix and the 64-byte routing information of a hop.
//!
//! `docs/protocol/onion.md` gives the same layouts with offsets.

use fed_crypto::{NodeId, XWING_CIPHERTEXT_LEN};

use crate::error::{Error, Result};

/// Wire format version carried in the first byte of every packet.
pub const FORMAT_VERSION: u8 = 1;

/// Most positions on a path, the destination included: 5 relays and the destination.
pub const MAX_HOPS: usize = 6;
/// Most relays on a path (the destination is not a relay).
pub const MAX_RELAYS: usize = MAX_HOPS - 1;
/// Relays chosen by [`select_path`](crate::select_path) when the caller has no preference.
pub const DEFAULT_RELAYS: usize = 3;

/// Length of the envelope prefix: version, kind, size class, reserved.
pub const PREFIX_LEN: usize = 4;
/// Length of a reply id.
pub const REPLY_ID_LEN: usize = 16;
/// Length of a header MAC.
pub const MAC_LEN: usize = 32;
/// Length of the epoch field in front of each hop's ciphertext.
pub const EPOCH_LEN: usize = 8;
/// Length of one hop's routing information.
pub const ROUTING_LEN: usize = 64;
/// Length of one hop's slot: MAC, epoch, X-Wing ciphertext and routing information.
pub const SLOT_LEN: usize = MAC_LEN + EPOCH_LEN + XWING_CIPHERTEXT_LEN + ROUTING_LEN;
/// Length of a forward packet's header: [`MAX_HOPS`] slots.
pub const HEADER_LEN: usize = MAX_HOPS * SLOT_LEN;
/// Length of the end-to-end overhead inside a body: payload length (4) and GCM tag (16).
pub const PAYLOAD_OVERHEAD: usize = 4 + 16;

/// The part of the header in front of the encrypted routing area (`beta`): MAC,
/// epoch and ciphertext.
pub(crate) const CLEAR_LEN: usize = MAC_LEN + EPOCH_LEN + XWING_CIPHERTEXT_LEN;
/// Length of the encrypted routing area: `(MAX_HOPS - 1)` slots plus one routing block.
pub(crate) const BETA_LEN: usize = HEADER_LEN - CLEAR_LEN;

// Offsets inside a forward packet. The MAC comes first so that the bytes it
// covers (everything after it, then the prefix) are one contiguous run.
pub(crate) const OFF_MAC: usize = PREFIX_LEN;
pub(crate) const OFF_EPOCH: usize = OFF_MAC + MAC_LEN;
pub(crate) const OFF_CT: usize = OFF_EPOCH + EPOCH_LEN;
pub(crate) const OFF_BETA: usize = OFF_CT + XWING_CIPHERTEXT_LEN;
pub(crate) const OFF_BODY: usize = PREFIX_LEN + HEADER_LEN;

const _: () = assert!(OFF_BETA + BETA_LEN == OFF_BODY);
const _: () = assert!(BETA_LEN == (MAX_HOPS - 1) * SLOT_LEN + ROUTING_LEN);

/// A packet size class. Every packet of a class has the same length, whatever its
/// payload and route; a payload too large for the largest class is an error
/// ([`Error::PayloadTooLarge`]), never split.
///
/// | class | body | forward packet | reply packet | largest payload |
/// |---|---|---|---|---|
/// | `Small` | 8192 | 15540 | 8212 | 8172 |
/// | `Large` | 32768 | 40116 | 32788 | 32748 |
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SizeClass {
    /// An 8 KiB body.
    Small,
    /// A 32 KiB body.
    Large,
}

impl SizeClass {
    /// Every class, smallest first.
    pub const ALL: [SizeClass; 2] = [SizeClass::Small, SizeClass::Large];

    /// The body length of the class.
    pub const fn body_len(self) -> usize {
        match self {
            SizeClass::Small => 8 * 1024,
            SizeClass::Large => 32 * 1024,
        }
    }

    /// The length of a forward packet of this class.
    pub const fn packet_len(self) -> usize {
        PREFIX_LEN + HEADER_LEN + self.body_len()
    }

    /// The length of a reply packet of this class.
    pub const fn reply_packet_len(self) -> usize {
        PREFIX_LEN + REPLY_ID_LEN + self.body_len()
    }

    /// The largest payload (forward or reply) the class carries.
    pub const fn max_payload_len(self) -> usize {
        self.body_len() - PAYLOAD_OVERHEAD
    }

    /// The smallest class that carries `len` payload bytes.
    pub fn for_payload(len: usize) -> Result<SizeClass> {
        SizeClass::ALL
            .into_iter()
            .find(|c| len <= c.max_payload_len())
            .ok_or(Error::PayloadTooLarge {
                len,
                max: SizeClass::Large.max_payload_len(),
            })
    }

    /// The class's code on the wire.
    pub(crate) const fn code(self) -> u8 {
        match self {
            SizeClass::Small => 1,
            SizeClass::Large => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Result<SizeClass> {
        match code {
            1 => Ok(SizeClass::Small),
            2 => Ok(SizeClass::Large),
            other => Err(Error::Unsupported {
                what: "size class",
                value: u64::from(other),
            }),
        }
    }

    /// Picks `class` if given and the payload fits it, else the smallest that fits.
    pub(crate) fn choose(class: Option<SizeClass>, len: usize) -> Result<SizeClass> {
        match class {
            Some(c) if len <= c.max_payload_len() => Ok(c),
            Some(c) => Err(Error::PayloadTooLarge {
                len,
                max: c.max_payload_len(),
            }),
            None => SizeClass::for_payload(len),
        }
    }
}

/// The kind byte of the envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Forward = 1,
    Reply = 2,
}

impl Kind {
    pub(crate) fn from_code(code: u8) -> Result<Kind> {
        match code {
            1 => Ok(Kind::Forward),
            2 => Ok(Kind::Reply),
            other => Err(Error::Unsupported {
                what: "packet kind",
                value: u64::from(other),
            }),
        }
    }
}

pub(crate) fn prefix(kind: Kind, class: SizeClass) -> [u8; PREFIX_LEN] {
    [FORMAT_VERSION, kind as u8, class.code(), 0]
}

/// Checks the prefix of `bytes` (at least [`PREFIX_LEN`] long) and returns its kind and class.
pub(crate) fn parse_prefix(bytes: &[u8]) -> Result<(Kind, SizeClass)> {
    let Some(p) = bytes.get(..PREFIX_LEN) else {
        return Err(Error::InvalidLength {
            what: "packet prefix",
            expected: PREFIX_LEN,
            actual: bytes.len(),
        });
    };
    if p[0] != FORMAT_VERSION {
        return Err(Error::Unsupported {
            what: "packet version",
            value: u64::from(p[0]),
        });
    }
    let kind = Kind::from_code(p[1])?;
    let class = SizeClass::from_code(p[2])?;
    if p[3] != 0 {
        return Err(Error::Malformed("packet prefix: reserved byte is not zero"));
    }
    Ok((kind, class))
}

/// Identifies the relay state a reply is routed by. Sixteen pseudorandom bytes,
/// different on every link of a path.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyId(pub [u8; REPLY_ID_LEN]);

impl std::fmt::Debug for ReplyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyId(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// What a hop is told to do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Forward to the next hop.
    Forward(NodeId),
    /// This hop is the destination.
    Deliver,
}

const CMD_FORWARD: u8 = 1;
const CMD_DELIVER: u8 = 2;
const FLAG_REPLY: u8 = 0x01;

/// One hop's routing information (64 bytes on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Routing {
    pub(crate) command: Command,
    /// Whether the sender wants a reply (relays keep reply state, the destination
    /// gets a reply handle).
    pub(crate) reply: bool,
    /// The reply id to label replies with when sending them to the previous hop.
    pub(crate) prev_reply_id: ReplyId,
}

impl Routing {
    pub(crate) fn encode(&self) -> [u8; ROUTING_LEN] {
        let mut out = [0u8; ROUTING_LEN];
        match self.command {
            Command::Forward(next) => {
                out[0] = CMD_FORWARD;
                out[2..34].copy_from_slice(next.as_bytes());
            }
            Command::Deliver => out[0] = CMD_DELIVER,
        }
        if self.reply {
            out[1] = FLAG_REPLY;
            out[34..50].copy_from_slice(&self.prev_reply_id.0);
        }
        out
    }

    /// Decodes routing information; the caller has already checked the MAC, so a
    /// failure here means the sender built a bad packet.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Routing> {
        let Some(b) = bytes.get(..ROUTING_LEN) else {
            return Err(Error::InvalidLength {
                what: "routing information",
                expected: ROUTING_LEN,
                actual: bytes.len(),
            });
        };
        let flags = b[1];
        if flags & !FLAG_REPLY != 0 {
            return Err(Error::Unsupported {
                what: "routing flags",
                value: u64::from(flags),
            });
        }
        if b[50..].iter().any(|&x| x != 0) {
            return Err(Error::Malformed("routing information: reserved bytes"));
        }
        let reply = flags & FLAG_REPLY != 0;
        let mut prev = [0u8; REPLY_ID_LEN];
        prev.copy_from_slice(&b[34..50]);
        if !reply && prev != [0u8; REPLY_ID_LEN] {
            return Err(Error::Malformed(
                "routing information: reply id without reply flag",
            ));
        }
        let mut next = [0u8; 32];
        next.copy_from_slice(&b[2..34]);
        let command = match b[0] {
            CMD_FORWARD => Command::Forward(NodeId(next)),
            CMD_DELIVER if next == [0u8; 32] => Command::Deliver,
            CMD_DELIVER => {
                return Err(Error::Malformed(
                    "routing information: next hop on delivery",
                ));
            }
            other => {
                return Err(Error::Unsupported {
                    what: "routing command",
                    value: u64::from(other),
                });
            }
        };
        Ok(Routing {
            command,
            reply,
            prev_reply_id: ReplyId(prev),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_as_documented() {
        assert_eq!(SLOT_LEN, 1224);
        assert_eq!(HEADER_LEN, 7344);
        assert_eq!(BETA_LEN, 6184);
        assert_eq!(SizeClass::Small.packet_len(), 15540);
        assert_eq!(SizeClass::Large.packet_len(), 40116);
        assert_eq!(SizeClass::Small.reply_packet_len(), 8212);
        assert_eq!(SizeClass::Large.reply_packet_len(), 32788);
        assert_eq!(SizeClass::Small.max_payload_len(), 8172);
        assert_eq!(SizeClass::Large.max_payload_len(), 32748);
    }

    #[test]
    fn class_choice() {
        assert_eq!(SizeClass::for_payload(0).unwrap(), SizeClass::Small);
        assert_eq!(SizeClass::for_payload(8172).unwrap(), SizeClass::Small);
        assert_eq!(SizeClass::for_payload(8173).unwrap(), SizeClass::Large);
        assert_eq!(SizeClass::for_payload(32748).unwrap(), SizeClass::Large);
        assert!(matches!(
            SizeClass::for_payload(32749),
            Err(Error::PayloadTooLarge {
                len: 32749,
                max: 32748
            })
        ));
        assert!(SizeClass::choose(Some(SizeClass::Small), 9000).is_err());
        assert_eq!(
            SizeClass::choose(Some(SizeClass::Large), 10).unwrap(),
            SizeClass::Large
        );
        for c in SizeClass::ALL {
            assert_eq!(SizeClass::from_code(c.code()).unwrap(), c);
        }
        assert!(SizeClass::from_code(0).is_err());
        assert!(SizeClass::from_code(3).is_err());
    }

    #[test]
    fn prefix_round_trip_and_rejections() {
        for kind in [Kind::Forward, Kind::Reply] {
            for class in SizeClass::ALL {
                assert_eq!(parse_prefix(&prefix(kind, class)).unwrap(), (kind, class));
            }
        }
        assert!(parse_prefix(&[1, 1, 1]).is_err());
        assert!(parse_prefix(&[2, 1, 1, 0]).is_err());
        assert!(parse_prefix(&[1, 3, 1, 0]).is_err());
        assert!(parse_prefix(&[1, 1, 9, 0]).is_err());
        assert!(parse_prefix(&[1, 1, 1, 1]).is_err());
    }

    #[test]
    fn routing_round_trip() {
        let cases = [
            Routing {
                command: Command::Forward(NodeId([7; 32])),
                reply: true,
                prev_reply_id: ReplyId([9; 16]),
            },
            Routing {
                command: Command::Forward(NodeId([7; 32])),
                reply: false,
                prev_reply_id: ReplyId([0; 16]),
            },
            Routing {
                command: Command::Deliver,
                reply: true,
                prev_reply_id: ReplyId([1; 16]),
            },
        ];
        for r in cases {
            assert_eq!(Routing::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn routing_rejects_bad_fields() {
        let good = Routing {
            command: Command::Deliver,
            reply: true,
            prev_reply_id: ReplyId([1; 16]),
        }
        .encode();
        for (at, value) in [(0, 0u8), (0, 3), (1, 2), (2, 1), (50, 1), (63, 1)] {
            let mut bad = good;
            bad[at] = value;
            assert!(Routing::decode(&bad).is_err(), "byte {at} = {value}");
        }
        let mut no_flag = good;
        no_flag[1] = 0;
        assert!(Routing::decode(&no_flag).is_err());
        assert!(Routing::decode(&good[..63]).is_err());
    }
}
