//! Onion routing for private federation queries: a KEM-based Sphinx packet format
//! with X-Wing (X25519 + ML-KEM-768) per hop, as sans-IO packet processing.
//!
//! A sender wraps a query in one layer per hop of a path of relays ending at the
//! destination. A relay learns its previous and next hop, and little more: the
//! packet's size class, the epoch number of the next hop's onion key (both in the
//! clear on every link), whether the sender asked for a reply (it keeps reply
//! state if so), and when the packet passed; not its position on the path, the
//! path's length, the sender (unless its previous hop is the sender and cannot be
//! forwarding for another) or the payload (`docs/protocol/onion.md` §8). Packets
//! have one fixed size per [`SizeClass`] at every hop. A relay's output is
//! re-encrypted throughout: it shares with the input only the 4-byte prefix
//! (version, kind, class) and, when the next hop's epoch number equals this hop's,
//! that 8-byte number. A packet modified anywhere is dropped by the next honest
//! hop; a replayed packet is dropped. The destination's answer travels back along
//! the same path, gaining one layer per relay, and only the original sender can
//! open it.
//!
//! What it holds:
//!
//! - **Onion keys** ([`OnionKey`], [`OnionKeyCertificate`]): an X-Wing key per node
//!   per epoch, in a certificate signed by the node's identity, with a validity
//!   window; a relay holds its current and previous epoch's keys.
//! - **Packets** ([`build_packet`], [`Packet`]): a header of [`MAX_HOPS`] slots (per
//!   hop: MAC, epoch, X-Wing ciphertext, routing information), shifted and padded
//!   Sphinx-style so that every hop sees the same layout; a body re-encrypted at
//!   every hop and authenticated by every hop's MAC, with AES-256-GCM end to end
//!   inside it.
//! - **The relay** ([`Relay`]): `process(packet, from, now)` forwards, delivers or
//!   drops with a [`DropReason`]; a replay cache per key epoch and reply state,
//!   both bounded; an epoch floor, given to [`Relay::new`], so that no epoch is
//!   installed twice, across restarts too.
//! - **Replies** ([`ReplyHandle`], [`ReplyPacket`], [`PendingReply`]), and
//!   **path selection** ([`select_path`]).
//!
//! What it does not do: network IO, clocks (`now_ms`, Unix milliseconds, is a
//! parameter) or ambient randomness (an RNG is a parameter). It does no mixing,
//! delays, batching or cover traffic, so it offers **no defence against a global
//! passive observer** or against an adversary watching both ends of a path, who can
//! correlate packets by timing and volume. Replies use relay state along the path
//! the request took; single-use reply blocks (stateless replies) are not
//! implemented. The byte layout, key schedule and claims are in
//! `docs/protocol/onion.md`.
//!
//! # Example
//!
//! A query over three relays to a destination, and its reply:
//!
//! ```
//! use std::collections::BTreeMap;
//!
//! use fed_crypto::Identity;
//! use fed_onion::{BuildOptions, KeyEpoch, Message, OnionKey, Processed, Relay, RelayConfig};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//!
//! let now = 1_700_000_000_000; // Unix milliseconds, always passed in
//! let epoch = KeyEpoch { epoch: 1, not_before_ms: now, not_after_ms: now + 3_600_000 };
//!
//! // Four nodes, each running a relay with a signed onion key; the directory holds
//! // their certificates. The last node will be the destination.
//! let (mut relays, mut directory) = (BTreeMap::new(), Vec::new());
//! for _ in 0..4 {
//!     let identity = Identity::generate(&mut rng, false);
//!     let key = OnionKey::generate(&identity, epoch, true, &mut rng)?;
//!     directory.push(key.certificate().clone());
//!     let mut relay = Relay::new(identity.node_id(), RelayConfig::default(), None)?;
//!     relay.install_key(key)?;
//!     relays.insert(identity.node_id(), relay);
//! }
//! let sender = Identity::generate(&mut rng, false).node_id();
//!
//! // Three random relays, then the destination.
//! let route = fed_onion::select_path(&directory, sender, &directory[3], 3, now, &mut rng)?;
//! let query = b"nearest patterns to q?";
//! let built = fed_onion::build_packet(&route, query, &BuildOptions::default(), now, &mut rng)?;
//! let pending = built.reply.expect("a reply was requested");
//!
//! // Each node processes what it receives and passes the result on.
//! let (mut from, mut at, mut message) = (sender, built.first_hop, Message::from(built.packet));
//! let reply = loop {
//!     let relay = relays.get_mut(&at).expect("a node of the route");
//!     let (to, next) = match relay.process(message, from, now) {
//!         Processed::Forward { next_hop, packet } => (next_hop, Message::from(packet)),
//!         Processed::Deliver(delivery) => {
//!             assert_eq!(delivery.payload, query);
//!             let handle = delivery.reply.expect("the sender asked for a reply");
//!             let (to, reply) = handle.seal(b"p17, p3, p42", None)?;
//!             (to, Message::from(reply))
//!         }
//!         Processed::Reply { previous_hop, packet } if previous_hop == sender => break packet,
//!         Processed::Reply { previous_hop, packet } => (previous_hop, Message::from(packet)),
//!         Processed::Drop(reason) => panic!("dropped: {reason}"),
//!     };
//!     (from, at, message) = (at, to, next);
//! };
//! // Opening consumes the pending reply; a failure would hand it back with the error.
//! let answer = pending.open(&reply).map_err(|(_pending, error)| error)?;
//! assert_eq!(answer, b"p17, p3, p42");
//! # Ok::<(), fed_onion::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod build;
mod cert;
mod crypt;
mod error;
mod format;
pub mod labels;
mod packet;
mod path;
mod relay;

pub use build::{BuildOptions, BuiltPacket, PendingReply, build_packet};
pub use cert::{KeyEpoch, MAX_CERTIFICATE_LEN, OnionKey, OnionKeyCertificate};
pub use error::{Error, Result};
pub use format::{
    DEFAULT_RELAYS, EPOCH_LEN, FORMAT_VERSION, HEADER_LEN, MAC_LEN, MAX_HOPS, MAX_RELAYS,
    PAYLOAD_OVERHEAD, PREFIX_LEN, REPLY_ID_LEN, ROUTING_LEN, ReplyId, SLOT_LEN, SizeClass,
};
pub use packet::{MAX_PACKET_LEN, Message, Packet, ReplyPacket};
pub use path::select_path;
pub use relay::{
    Delivery, DropReason, MAX_CLOCK_SKEW_MS, MAX_REPLAY_CAPACITY, MAX_REPLY_STATES,
    MAX_REPLY_TTL_MS, Processed, Relay, RelayConfig, ReplyHandle,
};
