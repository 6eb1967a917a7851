//! Values the facade and the core exchange with users: addresses, scopes, query
//! outcomes, events and counters.

use std::{collections::BTreeMap, fmt, str::FromStr};

use fed_crypto::NodeId;
use fed_handshake::Capabilities;
use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol as AddrProtocol};

use crate::{
    error::Error,
    substrate::PatternId,
    wire::{MapName, Refusal},
};

/// A member to join: where it listens, and which federation identity it must
/// prove. The address must end in `/p2p/<peer id>`, which libp2p checks when the
/// connection is secured; the handshake then checks the node id.
///
/// Written as text: `<multiaddr>#<node id in hex>`, for example
/// `/ip4/127.0.0.1/tcp/4001/p2p/12D3Koo…#9f86d081884c7d65…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    /// The address, ending in `/p2p/<peer id>`.
    pub addr: Multiaddr,
    /// The node id the peer must authenticate as.
    pub node: NodeId,
}

impl PeerAddress {
    /// A peer address; fails if `addr` does not end in `/p2p/<peer id>`.
    pub fn new(addr: Multiaddr, node: NodeId) -> Result<Self, Error> {
        peer_id_of(&addr)?;
        Ok(Self { addr, node })
    }

    /// The libp2p peer id the address names; fails if the address (a public
    /// field) was changed to one without `/p2p/<peer id>`.
    pub fn peer_id(&self) -> Result<PeerId, Error> {
        peer_id_of(&self.addr)
    }
}

/// The peer id at the end of `addr`.
pub(crate) fn peer_id_of(addr: &Multiaddr) -> Result<PeerId, Error> {
    match addr.iter().last() {
        Some(AddrProtocol::P2p(peer)) => Ok(peer),
        _ => Err(Error::BadAddress {
            addr: addr.to_string(),
            reason: "it must end in /p2p/<peer id>".into(),
        }),
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, hex32(&self.node.0))
    }
}

impl FromStr for PeerAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::BadAddress {
            addr: s.to_string(),
            reason: reason.to_string(),
        };
        let (addr, node) = s
            .split_once('#')
            .ok_or_else(|| bad("expected <multiaddr>#<node id>"))?;
        let addr: Multiaddr = addr.parse().map_err(|e| bad(&format!("{e}")))?;
        let node = parse_node_id(node).ok_or_else(|| bad("the node id must be 64 hex digits"))?;
        PeerAddress::new(addr, node)
    }
}

/// Parses a node id written as 64 hex digits.
pub fn parse_node_id(s: &str) -> Option<NodeId> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(NodeId(out))
}

/// 32 bytes as 64 lowercase hex digits.
pub fn hex32(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which members a federated query reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FederationScope {
    /// This node's substrate only.
    Local,
    /// This node and every member it holds a session with now.
    Direct,
    /// Propagated through the mesh: each node forwards to at most
    /// [`QueryOptions::fanout`] of its peers, `max_hops` times at most, and
    /// answers each query id once.
    Global {
        /// Forwarding hops (1 is the same reach as `Direct`).
        max_hops: u8,
    },
}

/// How a federated query runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryOptions {
    /// How long to wait for answers, in milliseconds. Peers that did not answer
    /// by then are reported as timed out.
    pub timeout_ms: u64,
    /// Peers each node forwards a `Global` query to, at most.
    pub fanout: u8,
    /// Whether results carry their embeddings.
    pub include_embeddings: bool,
    /// How many places of the result one source may decide at most (see
    /// fed-crdt's `ReconcileConfig::max_per_source`); `None` means `top_k`.
    pub max_per_source: Option<usize>,
    /// Route the query to each target through onion relays: relays learn
    /// neither the query nor the origin, targets learn the query but not the
    /// origin. With `Direct` the targets are the connected members, with
    /// `Global` every member in the directory with an onion key.
    pub onion: Option<OnionRouting>,
}

impl Default for QueryOptions {
    /// 2 s timeout, fan-out 8, no embeddings, no per-source cap below `top_k`,
    /// no onion routing.
    fn default() -> Self {
        Self {
            timeout_ms: 2_000,
            fanout: 8,
            include_embeddings: false,
            max_per_source: None,
            onion: None,
        }
    }
}

/// Onion routing options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnionRouting {
    /// Relays per path, 1 to 5 (3 by default).
    pub relays: u8,
    /// The members to ask; empty means every member the scope reaches.
    pub targets: Vec<NodeId>,
}

impl Default for OnionRouting {
    fn default() -> Self {
        Self {
            relays: 3,
            targets: Vec::new(),
        }
    }
}

/// One reconciled result of a federated query.
#[derive(Clone, Debug, PartialEq)]
pub struct FederatedResult {
    /// The pattern.
    pub pattern: PatternId,
    /// Cosine similarity of the winning version.
    pub score: f32,
    /// Timestamp of the winning (newest) version, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// Its embedding, if the query asked for embeddings.
    pub embedding: Option<Vec<f32>>,
    /// Every member that returned the pattern, ascending.
    pub provenance: Vec<NodeId>,
}

/// What became of one member during a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerStatus {
    /// It answered with this many hits (a signed answer that verified).
    Answered {
        /// Hits in its answer.
        hits: usize,
    },
    /// It did not answer in time.
    TimedOut,
    /// It refused the query.
    Refused(Refusal),
    /// It could not be reached (connection closed, dial failed, onion path dropped).
    Unreachable,
    /// Its answer was rejected: a bad signature, an unknown signer, or hits
    /// that break the query's rules.
    Rejected(String),
}

/// One member's part in a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerOutcome {
    /// The member.
    pub node: NodeId,
    /// What became of it.
    pub status: PeerStatus,
    /// Who says so: `None` when this node observed it, else the member that
    /// forwarded the query and reported it (its word only, not verified).
    pub reported_by: Option<NodeId>,
}

/// The outcome of a federated query.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryOutcome {
    /// The reconciled top-k: score descending, then pattern id ascending.
    pub results: Vec<FederatedResult>,
    /// Every member the query reached or tried to reach, by node id.
    pub peers: Vec<PeerOutcome>,
    /// Whether every member contacted answered.
    pub complete: bool,
    /// Distinct patterns seen before the top-k cut.
    pub candidates: usize,
    /// Patterns whose newest version arrived with different contents.
    pub conflicts: Vec<PatternId>,
}

impl QueryOutcome {
    /// The outcome for `node`, if it took part.
    pub fn peer(&self, node: &NodeId) -> Option<&PeerOutcome> {
        self.peers.iter().find(|p| &p.node == node)
    }
}

/// Which way a session was set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// This node joined through the peer (it initiated; it holds the peer's token).
    Outbound,
    /// The peer joined through this node (this node issued its token).
    Inbound,
}

/// Why a peer was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CutOffReason {
    /// It sent a frame over the size limit.
    Oversized,
    /// It sent a frame that does not decode or authenticate.
    Malformed,
    /// It kept sending requests it is not authorised for, or too fast.
    Abuse,
    /// It authenticated as another identity than its libp2p peer id.
    IdentityMismatch,
    /// The federation committed its revocation.
    Revoked,
}

impl CutOffReason {
    /// A short stable name, for metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            CutOffReason::Oversized => "oversized",
            CutOffReason::Malformed => "malformed",
            CutOffReason::Abuse => "abuse",
            CutOffReason::IdentityMismatch => "identity_mismatch",
            CutOffReason::Revoked => "revoked",
        }
    }
}

/// Something that happened in the mesh, for subscribers.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum MeshEvent {
    /// The federation entered a new configuration epoch: its voting members
    /// changed (mesh.md §9).
    EpochChanged {
        /// The epoch's number.
        epoch: u64,
        /// The new membership's id.
        membership: [u8; 32],
        /// The voting members, in replica order.
        voters: Vec<NodeId>,
    },
    /// A session with a member was established.
    PeerJoined {
        /// The member.
        node: NodeId,
        /// Its libp2p peer id.
        peer: PeerId,
        /// Who initiated.
        direction: Direction,
    },
    /// The last connection to a member closed.
    PeerLeft {
        /// Its libp2p peer id.
        peer: PeerId,
        /// Its node id, if it had authenticated.
        node: Option<NodeId>,
    },
    /// A handshake failed or was refused, on either side.
    JoinFailed {
        /// The peer.
        peer: PeerId,
        /// Who initiated.
        direction: Direction,
        /// Why, as text.
        reason: String,
    },
    /// This node answered a query from a member.
    QueryServed {
        /// The member that asked (the previous hop).
        from: NodeId,
        /// Hits in the local answer.
        hits: usize,
    },
    /// A sync series with a member completed and changed local state.
    SyncDone {
        /// The member.
        node: NodeId,
        /// The map.
        map: MapName,
        /// Entries added or replaced.
        changed: usize,
    },
    /// A peer was disconnected and banned for a while.
    PeerCutOff {
        /// Its libp2p peer id.
        peer: PeerId,
        /// Its node id, if it had authenticated.
        node: Option<NodeId>,
        /// Why.
        reason: CutOffReason,
    },
    /// The federation committed a batch and this replica executed it (in
    /// sequence order; a replica restarted from disk executes again from its
    /// last stable checkpoint).
    Committed(std::sync::Arc<crate::core::commit::CommittedBatch>),
    /// A revocation took effect on this node: a committed one, or (a token)
    /// this node's own [`revoke_token`](crate::FederatedMesh::revoke_token).
    Revoked(crate::core::commit::Revocation),
    /// This node issued a token to a member (at each handshake it answers,
    /// renewals included).
    TokenIssued {
        /// The member.
        node: NodeId,
        /// The token's id.
        token: [u8; 32],
        /// When it expires (Unix milliseconds).
        expires_at: u64,
    },
    /// This replica moved to a new view (a new primary).
    ViewChanged {
        /// The view.
        view: u64,
    },
}

/// Where this node stands in the federation's consensus.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsensusStatus {
    /// This node's replica index, if it is a voting member.
    pub replica: Option<u16>,
    /// The current view (the replica's, or the latest a client of this node learnt).
    pub view: u64,
    /// The replica's last executed sequence number.
    pub last_executed: u64,
    /// The replica's last stable checkpoint.
    pub stable_checkpoint: u64,
    /// Updates in the replica's ledger.
    pub ledger_count: u64,
    /// The head of the replica's ledger (its hash chain).
    pub ledger_head: [u8; 32],
    /// Batches this replica executed since it started.
    pub committed_here: u64,
    /// The configuration epoch (0: the genesis's).
    pub epoch: u64,
    /// The epoch's voting members, in replica order.
    pub voters: Vec<NodeId>,
}

/// A member as the node sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The libp2p peer id.
    pub peer: PeerId,
    /// Its node id, once authenticated.
    pub node: Option<NodeId>,
    /// Whether a connection is open.
    pub connected: bool,
    /// Capabilities its token from this node grants it (inbound session).
    pub granted: Option<Capabilities>,
    /// Capabilities this node's token from it grants this node (outbound session).
    pub held: Option<Capabilities>,
}

/// Counters, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Handshakes completed, both directions.
    pub handshakes_completed: u64,
    /// Handshakes that failed or were refused, both directions.
    pub handshakes_failed: u64,
    /// Queries this node started.
    pub queries_started: u64,
    /// Queries from members this node searched its substrate for.
    pub queries_served: u64,
    /// Queries forwarded to peers (one per peer).
    pub queries_forwarded: u64,
    /// Query requests answered as already seen.
    pub query_duplicates: u64,
    /// Onion packets this node forwarded as a relay.
    pub onion_forwarded: u64,
    /// Onion packets delivered to this node as their destination.
    pub onion_delivered: u64,
    /// Onion replies this node passed back as a relay.
    pub onion_replies_relayed: u64,
    /// Onion packets dropped, by reason.
    pub onion_dropped: BTreeMap<&'static str, u64>,
    /// Sync chunks applied.
    pub sync_chunks: u64,
    /// Sync chunks rejected (bad signature, forged entry, bad claims).
    pub sync_rejected: u64,
    /// Refusals sent, by reason.
    pub refusals_sent: BTreeMap<&'static str, u64>,
    /// Peers cut off, by reason.
    pub cut_off: BTreeMap<&'static str, u64>,
    /// Requests received on the federation protocols.
    pub requests_received: u64,
    /// Requests sent on the federation protocols.
    pub requests_sent: u64,
    /// PBFT messages, replies and proofs refused (bad MAC, signature, sender, shape).
    pub pbft_rejected: u64,
    /// Proof requests this node sent to replicas: when a batch's pushed proof
    /// did not come in time, each retry, and commits settled by an epoch's
    /// link (a pushed proof, the usual way, needs none).
    pub proofs_requested: u64,
    /// Committed batches this replica executed (0 on a node that does not vote).
    pub committed_batches: u64,
    /// Updates in those batches.
    pub committed_updates: u64,
    /// View changes this replica went through.
    pub view_changes: u64,
    /// How long queries from members took to answer, from request to response.
    pub query_served_ms: LatencyHistogram,
    /// How long queries this node started took, from command to outcome.
    pub query_ms: LatencyHistogram,
    /// Keys of the shared map with a value, now.
    pub shared_entries: u64,
    /// Members in the directory this node admits (itself included), now.
    pub directory_members: u64,
}

/// The upper bounds, in milliseconds, of [`LatencyHistogram`]'s buckets (the
/// last bucket holds the rest).
pub const LATENCY_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 10_000];

/// A latency histogram with the fixed buckets of [`LATENCY_BOUNDS_MS`], in
/// whole milliseconds (the core's clock).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative): `buckets[i]` counts those at
    /// most `LATENCY_BOUNDS_MS[i]` and above the bound before it; the last
    /// counts those above every bound.
    pub buckets: [u64; LATENCY_BOUNDS_MS.len() + 1],
    /// Observations.
    pub count: u64,
    /// Their sum, in milliseconds.
    pub sum_ms: u64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&mut self, ms: u64) {
        let i = LATENCY_BOUNDS_MS.partition_point(|&b| b < ms);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_falls_in_the_first_bucket_whose_bound_holds_it() {
        let mut h = LatencyHistogram::default();
        for ms in [0, 1, 2, 3, 10_000, 10_001, u64::MAX] {
            h.observe(ms);
        }
        assert_eq!(h.buckets[0], 2); // 0 and 1: at most 1 ms
        assert_eq!(h.buckets[1], 1); // 2
        assert_eq!(h.buckets[2], 1); // 3: at most 5
        assert_eq!(h.buckets[LATENCY_BOUNDS_MS.len() - 1], 1); // 10 000
        assert_eq!(h.buckets[LATENCY_BOUNDS_MS.len()], 2); // above every bound
        assert_eq!(h.count, 7);
        assert_eq!(h.sum_ms, u64::MAX);
    }
}
