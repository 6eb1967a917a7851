//! The node's logic as a sans-IO state machine, in the manner of quinn-proto.
//!
//! [`Core`] holds everything a node knows and decides: its peers and their
//! sessions (handshakes both ways, tokens, rate limits, strikes), the queries it
//! runs or serves (fan-out, deduplication, hop limits, deadlines, signed
//! answers, reconciliation), onion relaying, the replicated directory and shared
//! map with their anti-entropy schedule. It never touches a socket, a clock or
//! the OS's randomness: inputs arrive through `handle_*` methods and
//! [`command`](Core::command) with the time `now` (Unix milliseconds), its RNG is
//! seeded at construction, and outputs are polled:
//!
//! 1. feed inputs: [`handle_connected`](Core::handle_connected),
//!    [`handle_request`](Core::handle_request), [`handle_response`](Core::handle_response),
//!    [`handle_timeout`](Core::handle_timeout), [`command`](Core::command), …;
//! 2. drain [`poll_action`](Core::poll_action) until it returns `None` and carry
//!    each [`Action`] out (send a request, answer one, dial, search the substrate,
//!    complete a command, publish an event);
//! 3. arm a timer for [`poll_timeout`](Core::poll_timeout) and call
//!    `handle_timeout` when it fires.
//!
//! The libp2p driver (`crate::driver`) does exactly this over a `Swarm` on tokio;
//! the test simulator does it for hundreds of cores under one virtual clock.

pub mod commit;
#[cfg(test)]
mod defences;
pub mod epoch;
mod limits;
mod onion;
mod peers;
mod query;
mod sync;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use fed_crdt::{HlcClock, ReplicaId};
use fed_crypto::{Identity, NodeId, PublicIdentity};
use fed_handshake::{AdmissionPolicy, AdmissionProof, Capabilities, FederationId, FederationToken};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

pub use self::limits::{Limits, Timing};
use self::{
    onion::OnionState,
    peers::Peer,
    query::Queries,
    sync::{Directory, SharedMap},
};
use crate::{
    error::{Error, Result},
    substrate::{PatternQuery, ScoredPattern, SubstrateError},
    types::{FederationScope, MeshEvent, PeerAddress, PeerInfo, QueryOptions, QueryOutcome, Stats},
    wire::Protocol,
};

/// Context labels of the mesh's hashes and signatures (docs/protocol/mesh.md).
pub mod labels {
    /// Prefix of every mesh label.
    pub const PREFIX: &str = "exo-federation v1 mesh ";
    /// The channel binding handed to the handshake (prefix of the binding bytes).
    pub const CHANNEL_BINDING: &str = "exo-federation v1 mesh channel binding";
    /// Digest of a query's parameters.
    pub const QUERY_DIGEST: &str = "exo-federation v1 mesh query digest";
    /// Signature of a node's answer to a query.
    pub const QUERY_RESPONSE: &str = "exo-federation v1 mesh query response";
    /// A node's internal key of a query (never on the wire).
    pub const QUERY_KEY: &str = "exo-federation v1 mesh query key";
    /// Signature of a member's directory record.
    pub const MEMBER_RECORD: &str = "exo-federation v1 mesh member record";
    /// Signature of a write to the shared map.
    pub const SHARED_WRITE: &str = "exo-federation v1 mesh shared write";
    /// Checksum of a record in the node's store (docs/protocol/store.md).
    pub const STORE_RECORD: &str = "exo-federation v1 mesh store record";
    /// Hash of an audit log entry (docs/protocol/store.md §4).
    pub const AUDIT_ENTRY: &str = "exo-federation v1 mesh audit entry";
    /// Signature of the audit log's head.
    pub const AUDIT_HEAD: &str = "exo-federation v1 mesh audit head";
    /// Hash of a federation's genesis (docs/protocol/genesis.md).
    pub const GENESIS: &str = "exo-federation v1 mesh genesis";
    /// A node's PBFT client ids (one per slot).
    pub const PBFT_CLIENT_ID: &str = "exo-federation v1 mesh pbft client id";
    /// The PBFT client keys exported from a session.
    pub const PBFT_CLIENT_KEY: &str = "exo-federation v1 mesh pbft client key";
    /// The ledger's hash chain of executed updates.
    pub const COMMIT_LEDGER: &str = "exo-federation v1 mesh commit ledger";
    /// The context of a configuration epoch's membership (mesh.md §9).
    pub const EPOCH_CONTEXT: &str = "exo-federation v1 mesh epoch context";
    /// Names a refused epoch link in a node's memory (never on the wire).
    pub const REFUSED_LINK: &str = "exo-federation v1 mesh refused link";
    /// Every label above.
    pub const ALL: &[&str] = &[
        CHANNEL_BINDING,
        QUERY_DIGEST,
        QUERY_RESPONSE,
        QUERY_KEY,
        MEMBER_RECORD,
        SHARED_WRITE,
        STORE_RECORD,
        AUDIT_ENTRY,
        AUDIT_HEAD,
        GENESIS,
        PBFT_CLIENT_ID,
        PBFT_CLIENT_KEY,
        COMMIT_LEDGER,
        EPOCH_CONTEXT,
        REFUSED_LINK,
    ];
}

/// Names an outbound request the core asked the host to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboundId(pub u64);

/// Names an inbound request; chosen by the host, echoed in [`Action::Respond`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InboundId(pub u64);

/// Names a substrate search the core asked the host to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SearchId(pub u64);

/// Names a command; chosen by the host, echoed in [`Action::Complete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(pub u64);

/// Why an outbound request failed in the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// No answer within the transport's request timeout.
    Timeout,
    /// The connection closed, or could not be opened.
    ConnectionClosed,
    /// The peer does not speak the protocol.
    UnsupportedProtocol,
    /// A stream error, or a response over the size limit.
    Io(String),
}

/// A problem with an inbound stream that the host's codec detected before the
/// core saw a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundProblem {
    /// The frame's length prefix exceeds the protocol's limit.
    Oversized,
    /// The stream broke the framing (truncated, garbage).
    Malformed,
}

/// What the core asks its host to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action {
    /// Send `payload` as a request on `protocol` to `peer`, and report the answer
    /// with [`Core::handle_response`] or [`Core::handle_send_failed`] under `id`.
    Send {
        /// The peer.
        peer: PeerId,
        /// The protocol.
        protocol: Protocol,
        /// The request's name.
        id: OutboundId,
        /// The bytes to frame and send.
        payload: Vec<u8>,
    },
    /// Answer the inbound request `id`.
    Respond {
        /// The request.
        id: InboundId,
        /// The bytes to frame and send.
        payload: Vec<u8>,
    },
    /// Connect to `peer` at one of `addrs` (any known address if empty).
    Dial {
        /// The peer.
        peer: PeerId,
        /// Addresses to try.
        addrs: Vec<Multiaddr>,
    },
    /// Close every connection to `peer` and refuse new ones until [`Action::Unban`].
    Ban {
        /// The peer.
        peer: PeerId,
    },
    /// Accept connections from `peer` again.
    Unban {
        /// The peer.
        peer: PeerId,
    },
    /// Search the substrate and report with [`Core::handle_search_done`].
    Search {
        /// The search's name.
        id: SearchId,
        /// The query.
        query: PatternQuery,
    },
    /// A command finished.
    Complete {
        /// The command.
        command: CommandId,
        /// Its result.
        completion: Completion,
    },
    /// Publish an event to subscribers.
    Event(MeshEvent),
    /// Write the replica's durable state, synced, *before* carrying out any
    /// action that follows (the messages that depend on it). A host without
    /// storage loses the replica's votes at a crash.
    Persist(Vec<fed_pbft::Persist>),
    /// Write the node's own durable state, synced, before carrying out any
    /// action that follows (a `put` completes, and peers hear of it, only once
    /// it is on disk). Only with [`CoreConfig::state`] set.
    Store(Vec<StateWrite>),
    /// A configuration epoch began (mesh.md §9): store `link` (postcard of a
    /// [`CertifiedState`](commit::CertifiedState)) as the link to `epoch`, and
    /// drop the replica state of the epoch before, in one synced write, before
    /// carrying out any action that follows (the new replica's writes and
    /// messages).
    EnterEpoch {
        /// The new epoch's number.
        epoch: u64,
        /// Its link, encoded.
        link: Vec<u8>,
    },
}

/// A piece of the node's durable state (docs/protocol/store.md §6).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateWrite {
    /// An entry of a replicated map as it now stands: `entry` is the postcard
    /// encoding of its `fed_crdt::Entry` (stamp, then the value or a tombstone).
    MapEntry {
        /// Which map.
        map: crate::wire::MapName,
        /// The entry's key, as the map's codec encodes it (a directory key is
        /// the member's 32-byte node id; a shared-map key is its bytes).
        key: Vec<u8>,
        /// The entry.
        entry: Vec<u8>,
    },
    /// A revocation this node enforces (a committed one, or its own).
    Revoked(commit::Revocation),
    /// A member revocation this node enforced and no longer does: the member
    /// votes in a certified configuration epoch, so the ledger never revoked
    /// it (the node had applied a revocation the ledger refused).
    Unrevoked(commit::Revocation),
}

/// The node's durable state as stored: what a core starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// The directory's entries: (node id, postcard `Entry<MemberRecord>`).
    pub directory: Vec<(Vec<u8>, Vec<u8>)>,
    /// The shared map's entries: (key, postcard `Entry<SharedValue>`).
    pub shared: Vec<(Vec<u8>, Vec<u8>)>,
    /// The revocations this node enforces.
    pub revoked: Vec<commit::Revocation>,
}

/// A request from the node's user.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Command {
    /// Join the federation through a member: connect, handshake, get a token.
    Join(PeerAddress),
    /// Run a federated query.
    Query {
        /// The query.
        query: PatternQuery,
        /// Its reach.
        scope: FederationScope,
        /// How it runs.
        options: QueryOptions,
    },
    /// Write to the shared map.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove a key from the shared map.
    Remove {
        /// The key.
        key: Vec<u8>,
    },
    /// Read the shared map.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// List the peers.
    Peers,
    /// Commit an operation through the federation's consensus.
    Commit(commit::Operation),
}

/// The result of a [`Command`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Completion {
    /// [`Command::Join`]: the token the member issued this node.
    Joined(Result<FederationToken>),
    /// [`Command::Query`].
    Queried(Result<QueryOutcome>),
    /// [`Command::Put`] and [`Command::Remove`].
    Written(Result<()>),
    /// [`Command::Get`].
    Value(Option<Vec<u8>>),
    /// [`Command::Peers`].
    Peers(Vec<PeerInfo>),
    /// [`Command::Commit`].
    Committed(Result<Box<commit::CommitReceipt>>),
}

/// Everything a core is built from.
#[derive(Clone)]
#[non_exhaustive]
pub struct CoreConfig {
    /// The node's identity; its Ed25519 key is also its libp2p identity.
    pub identity: Arc<Identity>,
    /// The federation.
    pub federation: FederationId,
    /// Who may join through this node.
    pub admission: Arc<dyn AdmissionPolicy>,
    /// What this node presents when it joins through others (an invitation, or none).
    pub admission_proof: AdmissionProof,
    /// Capabilities this node asks for when joining and grants at most to
    /// members joining through it, with their limits.
    pub capabilities: Capabilities,
    /// Whether this node relays onion packets for others.
    pub relay: bool,
    /// Members to connect to at start.
    pub bootstrap: Vec<PeerAddress>,
    /// Bounds.
    pub limits: Limits,
    /// Intervals and lifetimes.
    pub timing: Timing,
    /// The consensus this node takes part in (from the genesis), if any.
    pub consensus: Option<commit::ConsensusConfig>,
    /// The node's durable state (the replicated maps, the revocations it
    /// enforces) as stored, if it keeps one: the core starts from it and emits
    /// [`Action::Store`] for every change. `None`: nothing is kept.
    pub state: Option<NodeState>,
}

impl CoreConfig {
    /// A configuration with default limits and timing, relaying on, no bootstrap peers.
    pub fn new(
        identity: Arc<Identity>,
        federation: FederationId,
        admission: Arc<dyn AdmissionPolicy>,
    ) -> Self {
        let capabilities = Capabilities {
            set: fed_handshake::CapabilitySet::all(),
            ..Capabilities::default()
        };
        Self {
            identity,
            federation,
            admission,
            admission_proof: AdmissionProof::None,
            capabilities,
            relay: true,
            bootstrap: Vec::new(),
            limits: Limits::default(),
            timing: Timing::default(),
            consensus: None,
            state: None,
        }
    }
}

impl std::fmt::Debug for CoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreConfig")
            .field("node", &self.identity.node_id())
            .field("federation", &self.federation)
            .field("capabilities", &self.capabilities)
            .field("relay", &self.relay)
            .field("bootstrap", &self.bootstrap)
            .field("limits", &self.limits)
            .field("timing", &self.timing)
            .field("consensus", &self.consensus)
            .finish_non_exhaustive()
    }
}

/// The node's sans-IO state machine. See the [module docs](self).
pub struct Core {
    config: CoreConfig,
    local_peer: PeerId,
    local_node: NodeId,
    rng: ChaCha20Rng,
    clock: HlcClock,
    /// Peers by id; ordered, so that every walk over them is deterministic.
    peers: BTreeMap<PeerId, Peer>,
    /// Node id to peer id, for authenticated peers and directory members.
    by_node: HashMap<NodeId, PeerId>,
    /// What each outbound request is for.
    outbound: HashMap<OutboundId, peers::Pending>,
    /// The peer and session of each inbound request not yet answered.
    inbound: HashMap<InboundId, peers::InboundCtx>,
    next_outbound: u64,
    next_search: u64,
    next_attempt: u64,
    queries: Queries,
    onion: OnionState,
    directory: Directory,
    shared: SharedMap,
    /// Banned peers and when each ban ends.
    bans: BTreeMap<PeerId, u64>,
    /// Revoked token ids (fed by committed revocations).
    revoked: std::collections::BTreeSet<[u8; 32]>,
    /// Revoked members (node ids), fed by committed revocations.
    revoked_members: std::collections::BTreeSet<[u8; 32]>,
    listen_addrs: Vec<Multiaddr>,
    next_sync_at: u64,
    next_redial_at: u64,
    sync_round: u64,
    started: bool,
    actions: VecDeque<Action>,
    stats: Stats,
    /// The consensus, with a genesis.
    commit: Option<commit::CommitState>,
}

impl Core {
    /// A core for `config`, drawing randomness from `seed` (the host seeds it from
    /// the OS; the simulator from its seed).
    pub fn new(config: CoreConfig, seed: [u8; 32], now: u64) -> Result<Self> {
        config.limits.validate()?;
        config.timing.validate()?;
        let local_node = config.identity.node_id();
        let local_peer = peer_id_of_identity(config.identity.public())
            .ok_or_else(|| Error::Config("the identity's Ed25519 key is not usable".into()))?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let onion = OnionState::new(&config, now, &mut rng)?;
        let clock = HlcClock::with_default_skew(ReplicaId::new(local_node.0));
        let commit = match &config.consensus {
            None => None,
            Some(c) => Some(commit::CommitState::new(
                c.clone(),
                &config.identity,
                &mut rng,
                now,
            )?),
        };
        let mut core = Self {
            local_peer,
            local_node,
            rng,
            clock,
            peers: BTreeMap::new(),
            by_node: HashMap::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            next_outbound: 1,
            next_search: 1,
            next_attempt: 0,
            queries: Queries::new(&config.limits),
            onion,
            directory: Directory::default(),
            shared: SharedMap::default(),
            bans: BTreeMap::new(),
            revoked: Default::default(),
            revoked_members: Default::default(),
            listen_addrs: Vec::new(),
            next_sync_at: now,
            next_redial_at: now,
            sync_round: 0,
            started: false,
            actions: VecDeque::new(),
            stats: Stats::default(),
            commit,
            config,
        };
        if let Some(state) = core.config.state.take() {
            core.restore(state, now)?;
            core.config.state = Some(NodeState::default());
        }
        core.publish_record(now)?;
        // A replica recovered from disk enforces the revocations of its ledger
        // from the start; one that stopped after its epoch ended, but before
        // it entered the next, enters it now.
        core.sync_revocations(now);
        core.check_epoch_end(now);
        Ok(core)
    }

    // --- Getters ---

    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.local_peer
    }

    /// This node's federation node id.
    pub fn node_id(&self) -> NodeId {
        self.local_node
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Members with an established session in either direction.
    pub fn peer_count(&self) -> usize {
        self.peers.values().filter(|p| p.is_member()).count()
    }

    /// The peers as the node sees them now.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self.peers.values().map(Peer::info).collect();
        out.sort_by_key(|p| p.peer);
        out
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.shared_entries = self.shared.len() as u64;
        s.directory_members = self.directory.members().len() as u64;
        s
    }

    /// A value of the shared map.
    pub fn shared_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shared.get(key)
    }

    /// Every live key and value of the shared map, in key order.
    pub fn shared_entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.shared.entries()
    }

    /// The members the directory lists (validated records this node admits), by node id.
    pub fn members(&self) -> Vec<NodeId> {
        self.directory.members().keys().copied().collect()
    }

    /// Whether the core has work for [`poll_action`](Self::poll_action).
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    // --- Inputs ---

    /// The host is listening on `addrs` (all current listen addresses); they go
    /// into this node's directory record.
    pub fn handle_listen_addrs(&mut self, addrs: Vec<Multiaddr>, now: u64) {
        let mut addrs = addrs;
        addrs.sort();
        addrs.dedup();
        addrs.truncate(crate::wire::MAX_RECORD_ADDRS);
        if addrs != self.listen_addrs {
            self.listen_addrs = addrs;
            if let Err(e) = self.publish_record(now) {
                tracing::warn!(error = %e, "could not publish the directory record");
            }
        }
    }

    /// A substrate search finished.
    pub fn handle_search_done(
        &mut self,
        id: SearchId,
        result: std::result::Result<Vec<ScoredPattern>, SubstrateError>,
        now: u64,
    ) {
        if let Some(purpose) = self.queries.take_search(id) {
            match purpose {
                query::SearchFor::Query(qid) => self.on_local_results(qid, result, now),
                query::SearchFor::Onion(ctx) => self.on_onion_results(*ctx, result, now),
            }
        }
    }

    /// Time passed: runs whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        if !self.started {
            self.started = true;
            self.dial_bootstrap(now);
        }
        self.expire_bans(now);
        self.peers_timeout(now);
        self.queries_timeout(now);
        self.onion_timeout(now);
        self.commit_timeout(now);
        if now >= self.next_sync_at {
            self.next_sync_at = now.saturating_add(self.config.timing.sync_interval_ms);
            self.sync_round += 1;
            self.start_sync_round(now, false);
        }
        if now >= self.next_redial_at {
            self.next_redial_at = now.saturating_add(self.config.timing.redial_interval_ms);
            self.redial(now);
        }
    }

    /// A command from the node's user; its result comes as [`Action::Complete`].
    pub fn command(&mut self, id: CommandId, command: Command, now: u64) {
        match command {
            Command::Join(addr) => self.join(id, addr, now),
            Command::Query {
                query,
                scope,
                options,
            } => self.start_query(id, query, scope, options, now),
            Command::Put { key, value } => {
                let result = self.shared_write(key, Some(value), now);
                self.complete(id, Completion::Written(result));
            }
            Command::Remove { key } => {
                let result = self.shared_write(key, None, now);
                self.complete(id, Completion::Written(result));
            }
            Command::Get { key } => {
                let value = self.shared.get(&key);
                self.complete(id, Completion::Value(value));
            }
            Command::Peers => {
                let peers = self.peers();
                self.complete(id, Completion::Peers(peers));
            }
            Command::Commit(op) => self.start_commit(id, op, now),
        }
    }

    /// Several commands at once, in order, as [`command`](Self::command) each:
    /// the commits among them leave together (one envelope per replica, not
    /// one per commit).
    pub fn commands(&mut self, commands: Vec<(CommandId, Command)>, now: u64) {
        if let Some(c) = self.commit.as_mut() {
            c.defer_flush = true;
        }
        for (id, command) in commands {
            self.command(id, command, now);
        }
        if let Some(c) = self.commit.as_mut() {
            c.defer_flush = false;
        }
        self.pump_commits(now);
    }

    /// Marks a token id revoked: requests under it are refused from now on.
    pub fn revoke_token(&mut self, token_id: [u8; 32]) {
        if self.revoked.insert(token_id) {
            let r = commit::Revocation::Token(token_id);
            self.store_state(vec![StateWrite::Revoked(r)]);
            self.event(MeshEvent::Revoked(r));
        }
    }

    /// Whether the node keeps durable state.
    fn keeps_state(&self) -> bool {
        self.config.state.is_some()
    }

    /// Asks the host to write `writes` durably (if the node keeps state).
    pub(crate) fn store_state(&mut self, writes: Vec<StateWrite>) {
        if self.keeps_state() && !writes.is_empty() {
            self.push(Action::Store(writes));
        }
    }

    // --- Outputs ---

    /// The next action for the host.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        if !self.started {
            return Some(0);
        }
        let mut next = self.next_sync_at.min(self.next_redial_at);
        let mut consider = |t: Option<u64>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        consider(self.bans.values().min().copied());
        consider(self.peers_next_timeout());
        consider(self.queries.next_timeout());
        consider(self.onion.next_timeout());
        consider(
            self.commit
                .as_ref()
                .and_then(commit::CommitState::next_timeout),
        );
        Some(next)
    }

    // --- Helpers shared by the submodules ---

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    fn event(&mut self, event: MeshEvent) {
        match &event {
            MeshEvent::Committed(batch) => {
                self.stats.committed_batches += 1;
                self.stats.committed_updates += batch.updates.len() as u64;
            }
            MeshEvent::ViewChanged { .. } => self.stats.view_changes += 1,
            _ => {}
        }
        self.push(Action::Event(event));
    }

    fn complete(&mut self, command: CommandId, completion: Completion) {
        self.push(Action::Complete {
            command,
            completion,
        });
    }

    fn next_outbound_id(&mut self) -> OutboundId {
        let id = OutboundId(self.next_outbound);
        self.next_outbound += 1;
        id
    }

    fn next_search_id(&mut self) -> SearchId {
        let id = SearchId(self.next_search);
        self.next_search += 1;
        id
    }

    /// The public identity of a node, from the sessions, the directory or itself.
    fn identity_of(&self, node: &NodeId) -> Option<PublicIdentity> {
        if *node == self.local_node {
            return Some(self.config.identity.public().clone());
        }
        if let Some(peer) = self.by_node.get(node)
            && let Some(identity) = self.peers.get(peer).and_then(|p| p.identity.clone())
        {
            return Some(identity);
        }
        self.directory
            .members()
            .get(node)
            .map(|m| m.identity.clone())
    }

    /// The peer id of a node, from the sessions or the directory.
    fn peer_of(&self, node: &NodeId) -> Option<PeerId> {
        self.by_node.get(node).copied().or_else(|| {
            self.directory
                .identity(node)
                .and_then(|i| peer_id_of_identity(&i))
        })
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("peer", &self.local_peer)
            .field("node", &self.local_node)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// The libp2p peer id of an identity's Ed25519 key.
pub fn peer_id_of_identity(identity: &PublicIdentity) -> Option<PeerId> {
    let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(identity.ed25519_bytes()).ok()?;
    Some(libp2p_identity::PublicKey::from(key).to_peer_id())
}

/// The Ed25519 key a peer id names, if it names one inline (every libp2p
/// Ed25519 peer id does: an identity multihash, code 0, of the protobuf-encoded
/// public key).
pub fn ed25519_key_of(peer: &PeerId) -> Option<[u8; 32]> {
    let bytes = peer.to_bytes();
    let (&code, rest) = bytes.split_first()?;
    let (&len, key) = rest.split_first()?;
    if code != 0 || usize::from(len) != key.len() {
        return None;
    }
    let key = libp2p_identity::PublicKey::try_decode_protobuf(key).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

/// The channel binding of a session: the mesh label, then the initiator's and
/// the responder's peer ids, each with a 2-byte big-endian length.
pub fn channel_binding(initiator: &PeerId, responder: &PeerId) -> Vec<u8> {
    let mut out = labels::CHANNEL_BINDING.as_bytes().to_vec();
    for peer in [initiator, responder] {
        let bytes = peer.to_bytes();
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_prefixed() {
        fed_crypto::labels::check(labels::ALL, labels::PREFIX).unwrap();
    }

    #[test]
    fn peer_ids_and_identities_name_the_same_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for pq in [false, true] {
            let id = Identity::generate(&mut rng, pq);
            let peer = peer_id_of_identity(id.public()).unwrap();
            assert_eq!(ed25519_key_of(&peer), Some(*id.public().ed25519_bytes()));
            let keypair =
                libp2p_identity::Keypair::ed25519_from_bytes(*id.ed25519_secret_bytes()).unwrap();
            assert_eq!(keypair.public().to_peer_id(), peer);
        }
        // A SHA-256 peer id (an RSA key's) names no key inline.
        let mut sha = vec![0x12, 0x20];
        sha.extend_from_slice(&[7; 32]);
        assert_eq!(ed25519_key_of(&PeerId::from_bytes(&sha).unwrap()), None);
    }
}
