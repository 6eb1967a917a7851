//! The relay: a sans-IO state machine that processes forward packets and replies.
//!
//! Methods are grouped as in the rest of the project: getters; commands
//! ([`install_key`](Relay::install_key)); inputs ([`process`](Relay::process),
//! [`process_bytes`](Relay::process_bytes), [`handle_timeout`](Relay::handle_timeout));
//! outputs ([`poll_timeout`](Relay::poll_timeout)). Processing returns its result
//! directly ([`Processed`]) rather than queueing it, so there is no transmit queue
//! to poll. `now_ms` (Unix milliseconds) is always a parameter.

use std::collections::{BTreeMap, BTreeSet};

use fed_crypto::{DerivedKey, NodeId, XWingCiphertext, Zeroizing};

use crate::{
    cert::OnionKey,
    crypt::{
        HopKeys, REPLAY_TAG_LEN, keystream, open_payload, seal_payload, verify_header_mac,
        xor_in_place, xor_keystream,
    },
    error::{Error, Result},
    format::{
        BETA_LEN, Command, OFF_BETA, OFF_BODY, OFF_CT, OFF_EPOCH, OFF_MAC, PREFIX_LEN, ROUTING_LEN,
        ReplyId, Routing, SLOT_LEN, SizeClass,
    },
    packet::{Message, Packet, ReplyPacket},
};

/// Largest replay cache per epoch a configuration may ask for.
pub const MAX_REPLAY_CAPACITY: usize = 1 << 24;
/// Largest reply-state table a configuration may ask for.
pub const MAX_REPLY_STATES: usize = 1 << 22;
/// Longest reply-state lifetime a configuration may ask for: one hour.
pub const MAX_REPLY_TTL_MS: u64 = 60 * 60 * 1000;
/// Largest clock-skew allowance a configuration may ask for: ten minutes.
pub const MAX_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

/// A relay's limits.
///
/// Memory is bounded by these numbers: at most two epochs' replay caches of
/// `replay_capacity` 16-byte tags each (about 32 bytes per tag with the tree's
/// overhead: 8 MiB per epoch at the default), and `max_reply_states` reply states
/// of about 300 bytes each, measured as resident growth (about 19 MiB at the
/// default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    replay_capacity: usize,
    max_reply_states: usize,
    reply_ttl_ms: u64,
    clock_skew_ms: u64,
}

impl Default for RelayConfig {
    /// 262,144 replay tags per epoch, 65,536 reply states kept 60 s, 60 s of clock skew.
    fn default() -> Self {
        Self {
            replay_capacity: 1 << 18,
            max_reply_states: 1 << 16,
            reply_ttl_ms: 60_000,
            clock_skew_ms: 60_000,
        }
    }
}

impl RelayConfig {
    /// Replay tags kept per onion-key epoch (1 to [`MAX_REPLAY_CAPACITY`]). When an
    /// epoch's cache is full, further packets for that epoch are dropped with
    /// [`DropReason::ReplayCacheFull`] until the key is rotated out: forgetting a
    /// tag would let that packet be replayed, so the relay refuses instead.
    pub fn with_replay_capacity(mut self, tags: usize) -> Self {
        self.replay_capacity = tags;
        self
    }

    /// Reply states kept at once (1 to [`MAX_REPLY_STATES`]). When the table is
    /// full, the state that expires first (the oldest) is evicted.
    pub fn with_max_reply_states(mut self, states: usize) -> Self {
        self.max_reply_states = states;
        self
    }

    /// How long a reply state is kept, in milliseconds (1 to [`MAX_REPLY_TTL_MS`]).
    pub fn with_reply_ttl_ms(mut self, ttl: u64) -> Self {
        self.reply_ttl_ms = ttl;
        self
    }

    /// How far outside its certificate's window an onion key is still accepted, in
    /// milliseconds (0 to [`MAX_CLOCK_SKEW_MS`]), to absorb clock differences
    /// between senders and relays.
    pub fn with_clock_skew_ms(mut self, skew: u64) -> Self {
        self.clock_skew_ms = skew;
        self
    }

    /// Replay tags kept per epoch.
    pub fn replay_capacity(&self) -> usize {
        self.replay_capacity
    }

    /// Reply states kept at once.
    pub fn max_reply_states(&self) -> usize {
        self.max_reply_states
    }

    /// Reply-state lifetime, milliseconds.
    pub fn reply_ttl_ms(&self) -> u64 {
        self.reply_ttl_ms
    }

    /// Clock-skew allowance, milliseconds.
    pub fn clock_skew_ms(&self) -> u64 {
        self.clock_skew_ms
    }

    fn validate(&self) -> Result<()> {
        if !(1..=MAX_REPLAY_CAPACITY).contains(&self.replay_capacity) {
            return Err(Error::InvalidConfig("replay capacity outside 1..=2^24"));
        }
        if !(1..=MAX_REPLY_STATES).contains(&self.max_reply_states) {
            return Err(Error::InvalidConfig("reply states outside 1..=2^22"));
        }
        if !(1..=MAX_REPLY_TTL_MS).contains(&self.reply_ttl_ms) {
            return Err(Error::InvalidConfig("reply TTL outside 1 ms..=1 h"));
        }
        if self.clock_skew_ms > MAX_CLOCK_SKEW_MS {
            return Err(Error::InvalidConfig("clock skew above 10 min"));
        }
        Ok(())
    }
}

/// Why a relay dropped a packet. Meant for metrics: every reason is the sender's
/// or a peer's doing, never a fault of the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The bytes did not decode as a packet ([`Relay::process_bytes`] only).
    Malformed,
    /// The packet names an onion-key epoch this relay does not hold (never held,
    /// rotated out, or from another relay's numbering).
    UnknownEpoch,
    /// The epoch's key has expired at `now`.
    KeyExpired,
    /// The epoch's key is not valid yet at `now`.
    KeyNotYetValid,
    /// The header MAC did not verify: the packet was modified (header or body), or
    /// built for another relay's key.
    BadMac,
    /// The packet's replay tag was seen before in this epoch.
    Replay,
    /// The epoch's replay cache is full; the relay refuses new packets for it.
    ReplayCacheFull,
    /// The routing information authenticated but is not valid (a sender bug or a
    /// hostile sender).
    BadRouting,
    /// The packet asks this node to forward, but its onion key certificate does not
    /// offer relaying.
    NotARelay,
    /// At the destination, the end-to-end payload did not authenticate.
    PayloadAuthentication,
    /// A reply names a reply id this relay holds no state for (never had it,
    /// evicted, or already used).
    UnknownReply,
    /// A reply arrived after its reply state expired.
    ReplyExpired,
    /// A reply came from another node than the one the packet was forwarded to.
    UnexpectedReplySource,
}

impl DropReason {
    /// A short stable name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownEpoch => "unknown_epoch",
            DropReason::KeyExpired => "key_expired",
            DropReason::KeyNotYetValid => "key_not_yet_valid",
            DropReason::BadMac => "bad_mac",
            DropReason::Replay => "replay",
            DropReason::ReplayCacheFull => "replay_cache_full",
            DropReason::BadRouting => "bad_routing",
            DropReason::NotARelay => "not_a_relay",
            DropReason::PayloadAuthentication => "payload_authentication",
            DropReason::UnknownReply => "unknown_reply",
            DropReason::ReplyExpired => "reply_expired",
            DropReason::UnexpectedReplySource => "unexpected_reply_source",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a relay did with a packet.
#[derive(Debug)]
pub enum Processed {
    /// Send `packet` (same class and size as the input) to `next_hop`.
    Forward {
        /// The next node on the path.
        next_hop: NodeId,
        /// The re-encrypted packet.
        packet: Packet,
    },
    /// This node is the destination.
    Deliver(Delivery),
    /// Send the reply `packet` back to `previous_hop`.
    Reply {
        /// The node the original packet came from.
        previous_hop: NodeId,
        /// The reply with this relay's layer added.
        packet: ReplyPacket,
    },
    /// The packet was dropped.
    Drop(DropReason),
}

/// A payload delivered to this node, the destination of its packet.
#[derive(Debug)]
#[non_exhaustive]
pub struct Delivery {
    /// The payload.
    pub payload: Vec<u8>,
    /// The class the packet travelled in.
    pub class: SizeClass,
    /// How to answer, if the sender asked for a reply.
    pub reply: Option<ReplyHandle>,
}

/// How the destination answers a packet: seals one reply for the original sender
/// and sends it to the previous hop. Consumed by [`seal`](Self::seal), so a reply
/// key is used once. Zeroized on drop; `Debug` shows no key.
pub struct ReplyHandle {
    previous_hop: NodeId,
    reply_id: ReplyId,
    key: DerivedKey,
}

impl ReplyHandle {
    /// The node to send the reply to.
    pub fn previous_hop(&self) -> NodeId {
        self.previous_hop
    }

    /// Seals `payload` in `class` (or the smallest class it fits if `None`) and
    /// returns the node to send it to with the reply packet. Only the original
    /// sender can open it; each relay on the way back adds a layer.
    pub fn seal(self, payload: &[u8], class: Option<SizeClass>) -> Result<(NodeId, ReplyPacket)> {
        let class = SizeClass::choose(class, payload.len())?;
        let mut packet = ReplyPacket::new(class, self.reply_id);
        seal_payload(&self.key, payload, packet.body_mut())?;
        Ok((self.previous_hop, packet))
    }
}

impl std::fmt::Debug for ReplyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyHandle")
            .field("previous_hop", &self.previous_hop)
            .field("reply_id", &self.reply_id)
            .finish_non_exhaustive()
    }
}

/// One onion-key epoch held by the relay, with its replay cache.
struct EpochSlot {
    key: OnionKey,
    /// Replay tags seen in this epoch; never more than `replay_capacity`.
    seen: BTreeSet<[u8; REPLAY_TAG_LEN]>,
}

/// What a relay remembers about a packet it forwarded, to route its reply.
struct ReplyState {
    previous_hop: NodeId,
    previous_reply_id: ReplyId,
    next_hop: NodeId,
    key: DerivedKey,
    expires_ms: u64,
    seq: u64,
}

/// Reply states by id, with an index by (expiry, insertion order) for expiry and
/// deterministic eviction.
#[derive(Default)]
struct ReplyTable {
    by_id: BTreeMap<ReplyId, ReplyState>,
    by_expiry: BTreeSet<(u64, u64, ReplyId)>,
    next_seq: u64,
}

impl ReplyTable {
    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn remove(&mut self, id: &ReplyId) -> Option<ReplyState> {
        let state = self.by_id.remove(id)?;
        self.by_expiry.remove(&(state.expires_ms, state.seq, *id));
        Some(state)
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(expires, _, id)) = self.by_expiry.first() {
            if expires > now_ms {
                break;
            }
            self.remove(&id);
        }
    }

    fn insert(&mut self, id: ReplyId, mut state: ReplyState, max: usize, now_ms: u64) {
        self.remove(&id);
        self.expire(now_ms);
        while self.by_id.len() >= max {
            let Some(&(_, _, oldest)) = self.by_expiry.first() else {
                break;
            };
            self.remove(&oldest);
        }
        state.seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.by_expiry.insert((state.expires_ms, state.seq, id));
        self.by_id.insert(id, state);
    }

    fn next_expiry(&self) -> Option<u64> {
        self.by_expiry.first().map(|&(e, _, _)| e)
    }
}

/// A node's onion relay: holds its onion keys (current and previous epoch), one
/// replay cache per epoch, and bounded reply state. Every node runs one, relays
/// and destinations alike: a packet addressed to this node is delivered, one
/// passing through is forwarded.
///
/// Bounds: two epochs of at most [`RelayConfig::replay_capacity`] replay tags each;
/// at most [`RelayConfig::max_reply_states`] reply states, each kept at most
/// [`RelayConfig::reply_ttl_ms`].
///
/// # Epoch floor
///
/// Replay caches live in memory only, so a key must never be installed twice: its
/// second life would start with an empty cache and accept every packet of its first
/// again. The relay remembers the highest epoch it has ever installed, its
/// [`epoch_floor`](Self::epoch_floor), and refuses any key whose epoch is not above
/// it, whether or not a key is held at the time. The floor survives key expiry but
/// not the process, so it is an argument of [`Relay::new`]: a host persists
/// [`epoch_floor`](Self::epoch_floor) durably after each
/// [`install_key`](Self::install_key), before the key processes any packet, and
/// passes the persisted value to `Relay::new` when it starts again. `None` is only
/// for a node that has never installed an onion key. A host that cannot persist the
/// floor must instead install, after a restart, only epochs newer than any it ever
/// used (for example epochs numbered by a clock that never goes back).
pub struct Relay {
    node_id: NodeId,
    config: RelayConfig,
    current: Option<EpochSlot>,
    previous: Option<EpochSlot>,
    /// The highest epoch ever installed or set as floor; keys must be above it.
    epoch_floor: Option<u64>,
    replies: ReplyTable,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("node_id", &self.node_id)
            .field("current_epoch", &self.current_epoch())
            .field(
                "previous_epoch",
                &self
                    .previous
                    .as_ref()
                    .map(|s| s.key.certificate().epoch().epoch),
            )
            .field("epoch_floor", &self.epoch_floor)
            .field("reply_states", &self.replies.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay for node `node_id` with no onion key yet: it drops every forward
    /// packet until [`install_key`](Self::install_key) is called.
    ///
    /// `epoch_floor` is the [epoch floor](Relay#epoch-floor) the host persisted
    /// from the relay's previous run ([`epoch_floor`](Self::epoch_floor) after its
    /// last [`install_key`](Self::install_key)): only keys of later epochs can be
    /// installed, so no epoch whose replay cache was lost with the process comes
    /// back. `None` is for a node that has never installed an onion key; it
    /// accepts a key of any epoch.
    pub fn new(node_id: NodeId, config: RelayConfig, epoch_floor: Option<u64>) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            node_id,
            config,
            current: None,
            previous: None,
            epoch_floor,
            replies: ReplyTable::default(),
        })
    }

    // --- Getters ---

    /// The node this relay runs for.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The epoch of the newest installed key.
    pub fn current_epoch(&self) -> Option<u64> {
        self.current
            .as_ref()
            .map(|s| s.key.certificate().epoch().epoch)
    }

    /// The epochs whose keys the relay holds (at most two), newest first.
    pub fn epochs(&self) -> Vec<u64> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .map(|s| s.key.certificate().epoch().epoch)
            .collect()
    }

    /// Replay tags held for `epoch` (0 if the epoch is not held).
    pub fn replay_tags(&self, epoch: u64) -> usize {
        self.slot(epoch).map_or(0, |s| s.seen.len())
    }

    /// Reply states held.
    pub fn reply_states(&self) -> usize {
        self.replies.len()
    }

    /// The [epoch floor](Relay#epoch-floor): the highest epoch this relay has
    /// installed, or the floor it was created with, or `None` if neither exists.
    /// Only keys of later epochs can be installed. A host persists this value after
    /// each [`install_key`](Self::install_key) and passes it to [`Relay::new`] after
    /// a restart.
    pub fn epoch_floor(&self) -> Option<u64> {
        self.epoch_floor
    }

    // --- Commands ---

    /// Installs the key of a new epoch and raises the [epoch floor](Relay#epoch-floor)
    /// to it. The current key becomes the previous one; the key before that is
    /// erased with its replay cache (its packets can no longer be processed, so their
    /// tags are no longer needed). If no current key is held (it expired), the
    /// previous key is kept.
    ///
    /// Fails with [`Error::WrongRelay`] if the key belongs to another node, and with
    /// [`Error::StaleEpoch`] if its epoch is not above the epoch floor: an epoch
    /// installed before, even one since expired or erased, is never installed again,
    /// because its replay cache is gone.
    pub fn install_key(&mut self, key: OnionKey) -> Result<()> {
        let found = key.certificate().node_id();
        if found != self.node_id {
            return Err(Error::WrongRelay {
                expected: self.node_id,
                found,
            });
        }
        let epoch = key.certificate().epoch().epoch;
        if let Some(floor) = self.epoch_floor
            && epoch <= floor
        {
            return Err(Error::StaleEpoch { epoch, floor });
        }
        self.epoch_floor = Some(epoch);
        if let Some(current) = self.current.take() {
            self.previous = Some(current);
        }
        self.current = Some(EpochSlot {
            key,
            seen: BTreeSet::new(),
        });
        Ok(())
    }

    // --- Inputs ---

    /// Decodes `bytes` and processes them as [`process`](Self::process) does; bytes
    /// that do not decode are dropped with [`DropReason::Malformed`].
    pub fn process_bytes(&mut self, bytes: &[u8], from: NodeId, now_ms: u64) -> Processed {
        match Message::from_bytes(bytes) {
            Ok(message) => self.process(message, from, now_ms),
            Err(_) => Processed::Drop(DropReason::Malformed),
        }
    }

    /// Processes a packet received from `from` (the previous hop, as authenticated
    /// by the link) at `now_ms`.
    ///
    /// A forward packet is forwarded (same size; re-encrypted throughout, so it
    /// shares with the input only the 4-byte prefix, and the 8-byte epoch when the
    /// next hop's epoch number equals this one's), delivered if this node is its
    /// destination, or dropped. A reply is passed on
    /// to the node the matching packet came from, with this relay's layer added, or
    /// dropped. Never panics on any input.
    pub fn process(&mut self, message: Message, from: NodeId, now_ms: u64) -> Processed {
        match message {
            Message::Forward(packet) => self.process_forward(packet, from, now_ms),
            Message::Reply(reply) => self.process_reply(reply, from, now_ms),
        }
    }

    /// Forgets what has expired at `now_ms`: reply states past their TTL, and onion
    /// keys past their validity plus the clock-skew allowance (with their replay
    /// caches).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.replies.expire(now_ms);
        let skew = self.config.clock_skew_ms;
        let expired = |slot: &Option<EpochSlot>| {
            slot.as_ref().is_some_and(|s| {
                now_ms
                    >= s.key
                        .certificate()
                        .epoch()
                        .not_after_ms
                        .saturating_add(skew)
            })
        };
        if expired(&self.previous) {
            self.previous = None;
        }
        if expired(&self.current) {
            self.current = None;
        }
    }

    // --- Outputs ---

    /// When [`handle_timeout`](Self::handle_timeout) next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let skew = self.config.clock_skew_ms;
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .map(|s| {
                s.key
                    .certificate()
                    .epoch()
                    .not_after_ms
                    .saturating_add(skew)
            })
            .chain(self.replies.next_expiry())
            .min()
    }

    // --- Internals ---

    fn slot(&self, epoch: u64) -> Option<&EpochSlot> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find(|s| s.key.certificate().epoch().epoch == epoch)
    }

    fn slot_mut(&mut self, epoch: u64) -> Option<&mut EpochSlot> {
        [&mut self.current, &mut self.previous]
            .into_iter()
            .flatten()
            .find(|s| s.key.certificate().epoch().epoch == epoch)
    }

    fn process_forward(&mut self, mut packet: Packet, from: NodeId, now_ms: u64) -> Processed {
        let skew = self.config.clock_skew_ms;
        let capacity = self.config.replay_capacity;
        let epoch = packet.epoch();
        let Some(slot) = self.slot_mut(epoch) else {
            return Processed::Drop(DropReason::UnknownEpoch);
        };
        let cert = slot.key.certificate();
        let validity = cert.epoch();
        let is_relay = cert.is_relay();
        if now_ms >= validity.not_after_ms.saturating_add(skew) {
            return Processed::Drop(DropReason::KeyExpired);
        }
        if now_ms.saturating_add(skew) < validity.not_before_ms {
            return Processed::Drop(DropReason::KeyNotYetValid);
        }

        let bytes = packet.bytes_mut();
        let Ok(ct) = XWingCiphertext::from_bytes(&bytes[OFF_CT..OFF_BETA]) else {
            return Processed::Drop(DropReason::Malformed);
        };
        let keys = HopKeys::new(&slot.key.secret().decapsulate(&ct));

        // The MAC covers every byte of the packet but itself: all that follows it,
        // then the prefix.
        let (front, covered) = bytes.split_at_mut(OFF_EPOCH);
        let parts: [&[u8]; 2] = [covered, &front[..PREFIX_LEN]];
        if !verify_header_mac(&keys.header_mac(), &parts, &front[OFF_MAC..]) {
            return Processed::Drop(DropReason::BadMac);
        }

        // Only authenticated packets reach the replay cache.
        let tag = keys.replay_tag();
        if slot.seen.contains(&tag) {
            return Processed::Drop(DropReason::Replay);
        }
        if slot.seen.len() >= capacity {
            return Processed::Drop(DropReason::ReplayCacheFull);
        }
        slot.seen.insert(tag);

        // Decrypt the routing area and the keystream's tail (the new padding slot).
        let (head, body) = bytes.split_at_mut(OFF_BODY);
        let mut stream = Zeroizing::new(vec![0u8; BETA_LEN + SLOT_LEN]);
        keystream(&keys.header_stream(), &mut stream);
        xor_in_place(&mut head[OFF_BETA..], &stream[..BETA_LEN]);
        let Ok(routing) = Routing::decode(&head[OFF_BETA..OFF_BETA + ROUTING_LEN]) else {
            return Processed::Drop(DropReason::BadRouting);
        };
        xor_keystream(&keys.body_stream(), body);

        match routing.command {
            Command::Forward(next_hop) => {
                if !is_relay {
                    return Processed::Drop(DropReason::NotARelay);
                }
                // Shift the header one slot to the left and append the padding.
                let tail_start = OFF_BODY - SLOT_LEN;
                head.copy_within(OFF_BETA + ROUTING_LEN.., OFF_MAC);
                head[tail_start..].copy_from_slice(&stream[BETA_LEN..]);
                if routing.reply {
                    let state = ReplyState {
                        previous_hop: from,
                        previous_reply_id: routing.prev_reply_id,
                        next_hop,
                        key: keys.reply_stream(),
                        expires_ms: now_ms.saturating_add(self.config.reply_ttl_ms),
                        seq: 0,
                    };
                    self.replies.insert(
                        keys.reply_id(),
                        state,
                        self.config.max_reply_states,
                        now_ms,
                    );
                }
                Processed::Forward { next_hop, packet }
            }
            Command::Deliver => {
                let class = packet.class();
                let body = &mut packet.bytes_mut()[OFF_BODY..];
                // Decrypts in place and zeroes the plaintext once the payload is
                // copied out: the packet buffer keeps none of it.
                let Some(payload) = open_payload(&keys.payload(), body) else {
                    return Processed::Drop(DropReason::PayloadAuthentication);
                };
                let reply = routing.reply.then(|| ReplyHandle {
                    previous_hop: from,
                    reply_id: routing.prev_reply_id,
                    key: keys.reply_payload(),
                });
                Processed::Deliver(Delivery {
                    payload,
                    class,
                    reply,
                })
            }
        }
    }

    fn process_reply(&mut self, mut reply: ReplyPacket, from: NodeId, now_ms: u64) -> Processed {
        let id = reply.reply_id();
        let Some(state) = self.replies.by_id.get(&id) else {
            return Processed::Drop(DropReason::UnknownReply);
        };
        if state.expires_ms <= now_ms {
            self.replies.remove(&id);
            return Processed::Drop(DropReason::ReplyExpired);
        }
        if state.next_hop != from {
            return Processed::Drop(DropReason::UnexpectedReplySource);
        }
        let Some(state) = self.replies.remove(&id) else {
            return Processed::Drop(DropReason::UnknownReply);
        };
        xor_keystream(&state.key, reply.body_mut());
        reply.set_reply_id(state.previous_reply_id);
        Processed::Reply {
            previous_hop: state.previous_hop,
            packet: reply,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(expires_ms: u64) -> ReplyState {
        ReplyState {
            previous_hop: NodeId([1; 32]),
            previous_reply_id: ReplyId([2; 16]),
            next_hop: NodeId([3; 32]),
            key: DerivedKey::from_bytes([4; 32]),
            expires_ms,
            seq: 0,
        }
    }

    #[test]
    fn reply_table_evicts_oldest_and_expires() {
        let mut t = ReplyTable::default();
        for i in 0..10u8 {
            t.insert(ReplyId([i; 16]), state(100 + u64::from(i)), 4, 0);
            assert!(t.len() <= 4);
        }
        // The four newest remain.
        let ids: Vec<u8> = t.by_id.keys().map(|k| k.0[0]).collect();
        assert_eq!(ids, vec![6, 7, 8, 9]);
        assert_eq!(t.next_expiry(), Some(106));
        t.expire(107);
        assert_eq!(t.len(), 2);
        assert_eq!(t.by_expiry.len(), 2);
        t.expire(1_000);
        assert_eq!(t.len(), 0);
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn reply_table_replaces_same_id() {
        let mut t = ReplyTable::default();
        t.insert(ReplyId([1; 16]), state(10), 4, 0);
        t.insert(ReplyId([1; 16]), state(20), 4, 0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.by_expiry.len(), 1);
        assert_eq!(t.next_expiry(), Some(20));
    }

    #[test]
    fn config_bounds_are_checked() {
        assert!(RelayConfig::default().validate().is_ok());
        for bad in [
            RelayConfig::default().with_replay_capacity(0),
            RelayConfig::default().with_replay_capacity(MAX_REPLAY_CAPACITY + 1),
            RelayConfig::default().with_max_reply_states(0),
            RelayConfig::default().with_max_reply_states(MAX_REPLY_STATES + 1),
            RelayConfig::default().with_reply_ttl_ms(0),
            RelayConfig::default().with_reply_ttl_ms(MAX_REPLY_TTL_MS + 1),
            RelayConfig::default().with_clock_skew_ms(MAX_CLOCK_SKEW_MS + 1),
        ] {
            assert!(Relay::new(NodeId([0; 32]), bad, None).is_err());
        }
    }

    #[test]
    fn drop_reason_names_are_distinct() {
        let all = [
            DropReason::Malformed,
            DropReason::UnknownEpoch,
            DropReason::KeyExpired,
            DropReason::KeyNotYetValid,
            DropReason::BadMac,
            DropReason::Replay,
            DropReason::ReplayCacheFull,
            DropReason::BadRouting,
            DropReason::NotARelay,
            DropReason::PayloadAuthentication,
            DropReason::UnknownReply,
            DropReason::ReplyExpired,
            DropReason::UnexpectedReplySource,
        ];
        let names: BTreeSet<&str> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), all.len());
    }
}
