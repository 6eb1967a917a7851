//! Byzantine commits: fed-pbft among the federation's voting members, carried
//! sealed in the mesh's sessions on `/exo-fed/pbft/2` (docs/protocol/mesh.md §9).
//!
//! - **Replicas.** A node listed in the genesis runs a [`Replica`] whose
//!   application is the [`Ledger`]: a hash chain of every executed update. The
//!   replica's messages go to the other replicas' peers; its writes leave as
//!   [`Action::Persist`](super::Action::Persist) *before* the sends that depend on them, so a host that
//!   carries actions out in order stores each vote before anyone can see it.
//! - **Clients.** Every node (voting or not) submits through a few PBFT
//!   [`Client`]s, its *slots*, each with one request outstanding. Slot `s` of
//!   node `N` is the client `hash(PBFT_CLIENT_ID, [N, be16(s)])`; the MAC key it
//!   shares with replica `R` is exported from the session `N` initiated with
//!   `R` (`Session::export(PBFT_CLIENT_KEY, be16(s))`), so both ends derive it
//!   and nobody else can. A renewed session re-keys both ends.
//! - **Proofs.** After `f + 1` matching replies the client needs the batch that
//!   holds its request and the batch's commit proof. At a voting member its own
//!   replica has them once it executes the batch; a member that does not vote
//!   gets them pushed by the replica `seq mod n`. Either waits 100 ms for that,
//!   then asks the replicas one at a time. Pushed and fetched proofs are
//!   checked against the membership (the own replica's proof is not checked
//!   again), and the user gets a [`CommitReceipt`] anyone can check offline
//!   against the genesis.
//!
//! What executing an update does beyond the ledger (storing a pattern in the
//! substrate) is the host's: it gets every executed batch as
//! [`MeshEvent::Committed`], in sequence order.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use fed_crypto::{NodeId, hash};
use fed_pbft::{
    Application, Client, ClientEvent, ClientId, ClientKey, CommitProof, Config as PbftConfig,
    DurableState, Event as PbftEvent, Membership, Message, Outcome, Persist, Replica, ReplicaIndex,
    decode_batch,
};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use serde::{Deserialize, Serialize};

use super::{
    CommandId, Completion, Core, InboundId,
    epoch::Epoch,
    labels,
    peers::{Failure, Purpose},
};
use crate::{
    error::{Error, Result},
    substrate::StateUpdate,
    types::MeshEvent,
    wire::{self, Kind, Protocol},
};

/// Client slots a node may use, each a PBFT client with one request
/// outstanding. A replica registers the keys of all of them when a node's
/// session is established (it cannot know how many the node uses, and its
/// backups must authenticate the requests a pre-prepare carries), so it is a
/// protocol constant (mesh.md §9).
pub const MAX_CLIENT_SLOTS: u16 = 256;

/// Most commits waiting for a free client slot.
const MAX_QUEUED_COMMITS: usize = 4096;
/// Most revocations a ledger holds (tokens and members together): beyond it a
/// revocation is refused, so that the snapshot stays bounded.
pub const MAX_REVOCATIONS: usize = 65_536;

/// Executed batches kept to answer proof requests.
const PROOF_CACHE_BATCHES: usize = 1024;
/// Bytes of executed batches kept to answer proof requests.
const PROOF_CACHE_BYTES: usize = 64 << 20;
/// Room left in a session message for the envelope and the channel's framing.
pub(super) const ENVELOPE_SLACK: usize = 64 * 1024;

/// How long a client waits for one replica's proof before asking the next.
pub(super) const PROOF_RETRY_MS: u64 = 500;
/// How long a client waits for the pushed proof of its batch, after its
/// replies, before it asks a replica (mesh.md §9). Without the wait, every
/// commit whose replies beat the push asked for the proof and got the whole
/// batch back: under load, most of them, one batch per commit.
pub(super) const PUSH_WAIT_MS: u64 = 100;

/// The consensus a node takes part in: from the genesis, plus its own settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConsensusConfig {
    /// The federation (the genesis's).
    pub federation: fed_handshake::FederationId,
    /// The genesis hash (the membership's context).
    pub genesis_hash: [u8; 32],
    /// The voting members, bound to the genesis hash.
    pub membership: Arc<Membership>,
    /// fed-pbft's parameters (the genesis's, this node's timeouts).
    pub pbft: PbftConfig,
    /// Where each replica listens, in replica order (from the genesis).
    pub addresses: Vec<Vec<Multiaddr>>,
    /// Client slots of this node: commits it can have ordered at once
    /// (1 to [`MAX_CLIENT_SLOTS`]).
    pub client_slots: u16,
    /// How long `byzantine_commit` waits before failing with a timeout.
    pub commit_timeout_ms: u64,
    /// The replica's durable state, read from the store at start.
    pub recovered: Option<Arc<DurableState>>,
    /// The links of the configuration epochs after the genesis, read from the
    /// store at start (checked again by the core).
    pub epochs: Vec<CertifiedState>,
    /// Whether the host persists the replica's writes ([`Action::Persist`](super::Action::Persist)
    /// and [`Action::EnterEpoch`](super::Action::EnterEpoch)). A node without
    /// storage that becomes a voting member at an epoch change runs no replica
    /// unless `volatile_replica` is set.
    pub durable: bool,
    /// Lets a voting member run without a data directory. Such a replica
    /// forgets its votes when it stops and may then contradict them, which
    /// breaks the fault bound; for tests and experiments only. Default false:
    /// a voting member without a store does not start.
    pub volatile_replica: bool,
    /// Test hook: this replica signs PREPAREs and COMMITs for digests other than
    /// the batches' and answers proof requests with a forged signature (a
    /// Byzantine voter). Never set it in production.
    #[doc(hidden)]
    pub byzantine_votes: bool,
}

impl ConsensusConfig {
    /// The consensus of `genesis` with fed-pbft's default timeouts, 16 client
    /// slots and a 30 s commit timeout.
    #[cfg(feature = "genesis")]
    pub fn from_genesis(genesis: &crate::genesis::Genesis) -> Result<Self> {
        let membership = genesis
            .membership()
            .map_err(|e| Error::Config(format!("genesis membership: {e}")))?;
        let mut pbft = genesis
            .pbft_config()
            .map_err(|e| Error::Config(format!("genesis consensus parameters: {e}")))?;
        pbft.validate(&membership)
            .map_err(|e| Error::Config(format!("genesis consensus parameters: {e}")))?;
        pbft.max_clients = pbft.max_clients.max(64 * 1024);
        Ok(Self {
            federation: genesis.federation,
            genesis_hash: genesis.hash(),
            membership: Arc::new(membership),
            pbft,
            addresses: genesis
                .members
                .iter()
                .map(|m| m.addresses.clone())
                .collect(),
            client_slots: 16,
            commit_timeout_ms: 30_000,
            recovered: None,
            epochs: Vec::new(),
            durable: false,
            volatile_replica: false,
            byzantine_votes: false,
        })
    }
}

impl std::fmt::Debug for ConsensusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsensusConfig")
            .field("genesis_hash", &crate::types::hex32(&self.genesis_hash))
            .field("replicas", &self.membership.len())
            .field("client_slots", &self.client_slots)
            .field("commit_timeout_ms", &self.commit_timeout_ms)
            .field("recovered", &self.recovered.is_some())
            .finish_non_exhaustive()
    }
}

/// Most addresses a voting member may list in the ledger.
pub const MAX_VOTER_ADDRESSES: usize = 8;
/// Longest address (its binary multiaddr encoding) of a voting member in the
/// ledger, as the genesis bounds them.
pub const MAX_VOTER_ADDRESS_LEN: usize = 256;
/// Most pending membership changes one voting member approves at once: a
/// further approval withdraws its oldest (so no member fills the ledger's
/// proposals, and none is locked out by its own stale ones).
pub const MAX_PROPOSALS_PER_VOTER: usize = 4;

/// A voting member as the ledger holds it: its public identity (crypto.md §3
/// encoding) and the addresses it listens on (binary multiaddrs), as the
/// [`Operation::AddVoter`] that added it gave them. The genesis's voters have
/// none here: their addresses are the genesis's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Voter {
    /// The public identity's encoding.
    #[serde(with = "serde_bytes")]
    pub identity: Vec<u8>,
    /// Its listen addresses, each a binary multiaddr (at most
    /// [`MAX_VOTER_ADDRESSES`], each at most [`MAX_VOTER_ADDRESS_LEN`] bytes).
    pub addresses: Vec<serde_bytes::ByteBuf>,
}

impl Voter {
    /// A voter from its identity and addresses.
    pub fn new(identity: &fed_crypto::PublicIdentity, addresses: &[Multiaddr]) -> Self {
        Self {
            identity: identity.as_bytes().to_vec(),
            addresses: addresses
                .iter()
                .map(|a| serde_bytes::ByteBuf::from(a.to_vec()))
                .collect(),
        }
    }

    /// Its identity, if it decodes and its addresses are within the bounds
    /// (their contents are not checked: the rule must not depend on which
    /// multiaddr protocols a build knows).
    fn check(&self) -> Option<fed_crypto::PublicIdentity> {
        if self.addresses.len() > MAX_VOTER_ADDRESSES
            || self
                .addresses
                .iter()
                .any(|a| a.len() > MAX_VOTER_ADDRESS_LEN)
        {
            return None;
        }
        fed_crypto::PublicIdentity::from_bytes(&self.identity).ok()
    }

    /// Its node id, if its identity decodes.
    fn node(&self) -> Option<[u8; 32]> {
        fed_crypto::PublicIdentity::from_bytes(&self.identity)
            .ok()
            .map(|i| i.node_id().0)
    }

    /// The addresses this build can parse (the others left out).
    pub fn multiaddrs(&self) -> Vec<Multiaddr> {
        self.addresses
            .iter()
            .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
            .collect()
    }
}

/// The identities of `voters` if they form a valid membership (fed-pbft's
/// rules: 1 to 64 members, no Ed25519 key twice) and every voter is well
/// formed.
fn voter_identities(voters: &[Voter]) -> Option<Vec<fed_crypto::PublicIdentity>> {
    let ids: Vec<_> = voters.iter().map(Voter::check).collect::<Option<_>>()?;
    Membership::new(ids.clone()).ok()?;
    Some(ids)
}

/// fed-pbft's quorum for `n` replicas: `⌈(n + f + 1) / 2⌉`, `f = ⌊(n − 1) / 3⌋`.
fn quorum(n: usize) -> usize {
    let f = n.saturating_sub(1) / 3;
    (n + f + 1).div_ceil(2)
}

/// A change of the voting members, as proposed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Add this voter.
    Add(Voter),
    /// Remove the voter with this node id.
    Remove([u8; 32]),
}

/// A membership change proposed in this epoch, with the voting members (node
/// ids, increasing) that proposed it; it takes effect once they are a quorum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The change.
    pub change: Change,
    /// Who proposed it.
    pub approvals: Vec<[u8; 32]>,
}

/// The replicated application: a hash chain over every executed operation,
/// the revocations committed so far, and the configuration: the epoch, its
/// voting members, the membership changes proposed, and the next epoch's
/// voters once a change has a quorum.
///
/// `head' = hash(COMMIT_LEDGER, [head, be64(index), client, operation])` for the
/// operation with 0-based `index`; a replica's snapshot is `be64(count) ‖ head ‖
/// postcard(LedgerState)` (mesh.md §9), so two replicas that executed different
/// sequences have different checkpoint digests. Results: `[0] ‖ be64(index)`
/// for a chained operation; `[1]` for bytes that are not exactly one
/// [`Operation`]; `[2]` for an operation the rules refuse; `[3]` for anything
/// in a batch after the epoch's end (the submitter submits it again in the
/// next epoch); `[4]` for a [`Operation::Tick`]. Only `[0]` changes the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Operations executed.
    pub count: u64,
    /// The chain's head (all zeros before the first operation).
    pub head: [u8; 32],
    /// Token ids revoked by committed operations.
    pub revoked_tokens: std::collections::BTreeSet<[u8; 32]>,
    /// Members (node ids) revoked by committed operations.
    pub revoked_members: std::collections::BTreeSet<[u8; 32]>,
    /// The configuration epoch (0: the genesis's).
    pub epoch: u64,
    /// This epoch's voting members, in replica order.
    pub voters: Vec<Voter>,
    /// Membership changes proposed in this epoch without a quorum yet, in the
    /// order first proposed.
    pub proposals: Vec<Proposal>,
    /// The next epoch's voting members, once a change has a quorum.
    pub next: Option<Vec<Voter>>,
    /// The last sequence number of this epoch: the first checkpoint at or
    /// after the batch in which a change reached its quorum.
    pub end: Option<u64>,
    /// The checkpoint interval (configuration, not replicated state).
    interval: u64,
    /// Most voters the next epoch may have (configuration: the largest
    /// membership fed-pbft's parameters allow; 0 means 64).
    max_voters: usize,
    /// The sequence number of the batch executing.
    seq: u64,
    /// This epoch's voting members' slots, and whose they are: who may
    /// revoke and propose changes.
    voter_clients: HashMap<ClientId, [u8; 32]>,
    /// The node ids of this epoch's and the next's voting members: who may not
    /// be revoked (removing a voter is a membership change).
    voter_nodes: std::collections::HashSet<[u8; 32]>,
}

/// The ledger's replicated state after `count ‖ head` (mesh.md §9).
#[derive(Serialize, Deserialize)]
struct LedgerState {
    tokens: Vec<[u8; 32]>,
    members: Vec<[u8; 32]>,
    epoch: u64,
    voters: Vec<Voter>,
    proposals: Vec<Proposal>,
    next: Option<Vec<Voter>>,
    end: Option<u64>,
}

impl Ledger {
    /// The genesis's ledger: epoch 0, its members voting (without addresses:
    /// theirs are the genesis's). `checkpoint_interval` and `max_voters` are
    /// from fed-pbft's parameters (an epoch ends at a checkpoint; a next
    /// membership larger than `max_voters` would not run, 0 means 64).
    pub fn genesis(membership: &Membership, checkpoint_interval: u64, max_voters: usize) -> Self {
        let voters = membership
            .members()
            .iter()
            .map(|m| Voter::new(m, &[]))
            .collect();
        let mut ledger = Self {
            voters,
            interval: checkpoint_interval,
            max_voters,
            ..Self::default()
        };
        ledger.derive();
        ledger
    }

    /// The ledger a replica restored from `snapshot` would hold.
    pub fn from_snapshot(
        snapshot: &[u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut ledger = Self::default();
        Application::restore(&mut ledger, snapshot)?;
        Ok(ledger)
    }

    /// The ledger the next epoch starts from: this one's chain and
    /// revocations, the next voting members, nothing proposed. `None` if no
    /// change took effect.
    pub fn next_epoch(&self) -> Option<Self> {
        let mut next = Self {
            count: self.count,
            head: self.head,
            revoked_tokens: self.revoked_tokens.clone(),
            revoked_members: self.revoked_members.clone(),
            epoch: self.epoch.checked_add(1)?,
            voters: self.next.clone()?,
            interval: self.interval,
            max_voters: self.max_voters,
            ..Self::default()
        };
        next.derive();
        Some(next)
    }

    /// The checkpoint interval the epoch's end is computed with.
    pub(crate) fn interval(&self) -> u64 {
        self.interval
    }

    /// Sets the configuration (not replicated state): the checkpoint interval
    /// and the largest next membership.
    pub(crate) fn configure(&mut self, interval: u64, max_voters: usize) {
        self.interval = interval;
        self.max_voters = max_voters;
    }

    /// The largest next membership allowed.
    pub(crate) fn max_voters(&self) -> usize {
        self.max_voters
    }

    /// Recomputes the sets derived from the voters.
    fn derive(&mut self) {
        let current: Vec<[u8; 32]> = self.voters.iter().filter_map(Voter::node).collect();
        self.voter_clients = current
            .iter()
            .flat_map(|n| (0..MAX_CLIENT_SLOTS).map(move |s| (client_id(&NodeId(*n), s), *n)))
            .collect();
        self.voter_nodes = current.into_iter().collect();
        if let Some(next) = &self.next {
            self.voter_nodes.extend(next.iter().filter_map(Voter::node));
        }
    }

    /// The voting members the next change applies to: the next epoch's if a
    /// change took effect, else this one's.
    fn upcoming(&self) -> &[Voter] {
        self.next.as_deref().unwrap_or(&self.voters)
    }

    /// The voters after `change` is applied to `upcoming()`, if they are a
    /// valid next membership: an added voter well formed, not revoked, not
    /// voting already, at most `max_voters` voters; a removed voter voting,
    /// and not the last.
    fn after(&self, change: &Change) -> Option<Vec<Voter>> {
        let mut next = self.upcoming().to_vec();
        match change {
            Change::Add(v) => {
                let identity = v.check()?;
                if self.revoked_members.contains(&identity.node_id().0) {
                    return None;
                }
                next.push(v.clone());
            }
            Change::Remove(node) => {
                let before = next.len();
                next.retain(|v| v.node().as_ref() != Some(node));
                if next.len() == before || next.is_empty() {
                    return None;
                }
            }
        }
        let max = if self.max_voters == 0 {
            fed_pbft::MAX_REPLICAS
        } else {
            self.max_voters
        };
        (next.len() <= max && voter_identities(&next).is_some()).then_some(next)
    }

    /// Whether `client` may commit `op` (before the epoch's end): updates and
    /// ticks from anyone; revocations and membership changes only from a
    /// voting member's slot. A revocation never of a voting member (this
    /// epoch's or the next's) and not beyond [`MAX_REVOCATIONS`]; a change
    /// only if it would apply now ([`after`](Self::after)).
    fn allows(&self, client: &ClientId, op: &Operation) -> bool {
        match op {
            Operation::Update(_) | Operation::Tick => true,
            _ if !self.voter_clients.contains_key(client) => false,
            Operation::RevokeToken(_) | Operation::RevokeMember(_) => {
                !matches!(op, Operation::RevokeMember(n) if self.voter_nodes.contains(n))
                    && self.revoked_tokens.len() + self.revoked_members.len() < MAX_REVOCATIONS
            }
            Operation::AddVoter(_) | Operation::RemoveVoter(_) => {
                let Some(change) = change_of(op) else {
                    return false;
                };
                self.after(&change).is_some()
            }
        }
    }

    /// Records `node`'s proposal of `change`; once a quorum of this epoch's
    /// voters proposed it, it applies to the next epoch's voters (if it still
    /// does) and the epoch gets its end.
    fn propose(&mut self, node: [u8; 32], change: Change) {
        let i = match self.proposals.iter().position(|p| p.change == change) {
            Some(i) => i,
            None => {
                self.proposals.push(Proposal {
                    change,
                    approvals: Vec::new(),
                });
                self.proposals.len() - 1
            }
        };
        let p = &mut self.proposals[i];
        let Err(at) = p.approvals.binary_search(&node) else {
            return;
        };
        p.approvals.insert(at, node);
        if p.approvals.len() >= quorum(self.voters.len()) {
            let p = self.proposals.remove(i);
            self.take(&p.change);
            return;
        }
        // Over its share, the voter's oldest other approval is withdrawn.
        let approving: Vec<usize> = (0..self.proposals.len())
            .filter(|&j| self.proposals[j].approvals.binary_search(&node).is_ok())
            .collect();
        if approving.len() > MAX_PROPOSALS_PER_VOTER
            && let Some(&oldest) = approving.iter().find(|&&j| j != i)
        {
            let q = &mut self.proposals[oldest];
            q.approvals.retain(|n| *n != node);
            if q.approvals.is_empty() {
                self.proposals.remove(oldest);
            }
        }
    }

    /// A change with its quorum: it applies to the next epoch's voters if it
    /// still does, and the epoch gets its end.
    fn take(&mut self, change: &Change) {
        if let Some(next) = self.after(change) {
            // The epoch ends at the first checkpoint at or after this batch.
            let k = self.interval.max(1);
            self.end
                .get_or_insert(self.seq.max(1).div_ceil(k).saturating_mul(k));
            self.next = Some(next);
            self.derive();
        }
    }
}

/// The change an operation proposes, if it is one.
fn change_of(op: &Operation) -> Option<Change> {
    match op {
        Operation::AddVoter(v) => Some(Change::Add(v.clone())),
        Operation::RemoveVoter(n) => Some(Change::Remove(*n)),
        _ => None,
    }
}

/// The client ids of every slot of every voting member.
pub fn voter_clients(membership: &Membership) -> std::collections::HashSet<ClientId> {
    membership
        .members()
        .iter()
        .flat_map(|m| {
            let node = m.node_id();
            (0..MAX_CLIENT_SLOTS).map(move |s| client_id(&node, s))
        })
        .collect()
}

impl Application for Ledger {
    fn begin_batch(&mut self, seq: u64) {
        self.seq = seq;
    }

    fn execute(&mut self, client: &ClientId, operation: &[u8]) -> Vec<u8> {
        if self.end.is_some_and(|end| self.seq > end) {
            return vec![3];
        }
        let Some(op) = decode_operation(operation) else {
            return vec![1];
        };
        if !self.allows(client, &op) {
            return vec![2];
        }
        match op {
            Operation::Tick => return vec![4],
            Operation::Update(_) => {}
            Operation::RevokeToken(id) => {
                self.revoked_tokens.insert(id);
            }
            Operation::RevokeMember(id) => {
                self.revoked_members.insert(id);
            }
            Operation::AddVoter(_) | Operation::RemoveVoter(_) => {
                if let (Some(change), Some(node)) =
                    (change_of(&op), self.voter_clients.get(client).copied())
                {
                    self.propose(node, change);
                }
            }
        }
        let index = self.count;
        self.head = hash(
            labels::COMMIT_LEDGER,
            &[&self.head, &index.to_be_bytes(), &client.0, operation],
        );
        self.count += 1;
        let mut out = vec![0];
        out.extend_from_slice(&index.to_be_bytes());
        out
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = self.count.to_be_bytes().to_vec();
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&wire::encode(&LedgerState {
            tokens: self.revoked_tokens.iter().copied().collect(),
            members: self.revoked_members.iter().copied().collect(),
            epoch: self.epoch,
            voters: self.voters.clone(),
            proposals: self.proposals.clone(),
            next: self.next.clone(),
            end: self.end,
        }));
        out
    }

    fn restore(
        &mut self,
        s: &[u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if s.len() < 40 {
            return Err("a ledger snapshot is at least 40 bytes".into());
        }
        let (count, rest) = s.split_at(8);
        let (head, rest) = rest.split_at(32);
        let state: LedgerState = wire::decode(rest, "ledger state")?;
        let sorted = |v: &[[u8; 32]]| v.windows(2).all(|w| w[0] < w[1]);
        if !sorted(&state.tokens) || !sorted(&state.members) {
            return Err("a ledger snapshot's revocations are not sorted".into());
        }
        if voter_identities(&state.voters).is_none()
            || state
                .next
                .as_deref()
                .is_some_and(|n| voter_identities(n).is_none())
        {
            return Err("a ledger snapshot's voting members are not a valid membership".into());
        }
        if state.next.is_some() != state.end.is_some() {
            return Err(
                "a ledger snapshot has a next membership without an end, or the reverse".into(),
            );
        }
        let voter_nodes: std::collections::BTreeSet<[u8; 32]> =
            state.voters.iter().filter_map(Voter::node).collect();
        let mut approved: HashMap<[u8; 32], usize> = HashMap::new();
        for (i, p) in state.proposals.iter().enumerate() {
            if state.proposals[..i].iter().any(|q| q.change == p.change) {
                return Err("a ledger snapshot proposes one change twice".into());
            }
            if !sorted(&p.approvals)
                || p.approvals.is_empty()
                || p.approvals.iter().any(|n| !voter_nodes.contains(n))
            {
                return Err("a ledger snapshot's proposal has approvals of no voters".into());
            }
            for n in &p.approvals {
                let count = approved.entry(*n).or_default();
                *count += 1;
                if *count > MAX_PROPOSALS_PER_VOTER {
                    return Err("a ledger snapshot's voter approves too many proposals".into());
                }
            }
        }
        self.count = u64::from_be_bytes(count.try_into()?);
        self.head.copy_from_slice(head);
        self.revoked_tokens = state.tokens.into_iter().collect();
        self.revoked_members = state.members.into_iter().collect();
        self.epoch = state.epoch;
        self.voters = state.voters;
        self.proposals = state.proposals;
        self.next = state.next;
        self.end = state.end;
        self.derive();
        Ok(())
    }
}

/// What a commit asks the federation to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    /// An update of the application's state (applied to every voting member's substrate).
    Update(StateUpdate),
    /// Refuse, on every member, requests under the token with this id.
    RevokeToken([u8; 32]),
    /// Refuse, on every member, every request and handshake of this member
    /// (by node id). Only voting members may commit it.
    RevokeMember([u8; 32]),
    /// Make this member a voting member from the next configuration epoch on
    /// (mesh.md §9). Only voting members may commit it.
    AddVoter(Voter),
    /// Remove this voting member (by node id) from the next configuration
    /// epoch on. Only voting members may commit it.
    RemoveVoter([u8; 32]),
    /// Nothing: a voting member submits it to move the sequence to the end
    /// of an epoch whose membership changed. Never chained; result `[4]`.
    Tick,
}

/// A change of the voting membership, as
/// [`FederatedMesh::commit_membership_change`](crate::FederatedMesh::commit_membership_change)
/// takes it. It takes effect at the next checkpoint, in a new configuration
/// epoch (mesh.md §9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Make a member a voting member.
    Add {
        /// Its public identity.
        identity: Box<fed_crypto::PublicIdentity>,
        /// Where it listens (at most [`MAX_VOTER_ADDRESSES`]).
        addresses: Vec<Multiaddr>,
    },
    /// Remove a voting member (by node id); it stays a member.
    Remove(NodeId),
}

impl From<MembershipChange> for Operation {
    fn from(c: MembershipChange) -> Self {
        match c {
            MembershipChange::Add {
                identity,
                addresses,
            } => Operation::AddVoter(Voter::new(&identity, &addresses)),
            MembershipChange::Remove(node) => Operation::RemoveVoter(node.0),
        }
    }
}

/// A revocation, as [`FederatedMesh::commit_revocation`](crate::FederatedMesh::commit_revocation) takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// A token, by id.
    Token([u8; 32]),
    /// A member, by node id: all its tokens, and its handshakes from now on.
    Member(NodeId),
}

impl From<Revocation> for Operation {
    fn from(r: Revocation) -> Self {
        match r {
            Revocation::Token(id) => Operation::RevokeToken(id),
            Revocation::Member(node) => Operation::RevokeMember(node.0),
        }
    }
}

/// The operation bytes: `postcard(Operation)`.
pub fn encode_operation(op: &Operation) -> Vec<u8> {
    wire::encode(op)
}

/// Decodes an operation; `None` if it is not exactly one `Operation`.
pub fn decode_operation(operation: &[u8]) -> Option<Operation> {
    wire::decode(operation, "operation").ok()
}

/// What a committed update's submitter gets: the update, where it committed,
/// and the evidence. [`verify`](Self::verify) checks it offline against the
/// federation's membership (from its genesis).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitReceipt {
    /// The PBFT client that submitted it (one of the node's slots).
    pub client: ClientId,
    /// The client's timestamp of the request.
    pub timestamp: u64,
    /// The operation.
    pub operation: Operation,
    /// Its 0-based position in the federation's ledger.
    pub index: u64,
    /// The commit proof of the batch that holds it.
    pub proof: CommitProof,
    /// The encoded batch (fed-pbft's encoding): the proof's digest is its digest.
    /// Shared by the receipts of one batch (a batch of 1 000 requests is about
    /// 200 KiB: a copy per receipt was most of a client's time under load).
    #[serde(with = "shared_bytes")]
    pub batch: Arc<[u8]>,
    /// The links from the genesis to the configuration epoch the proof was
    /// made in (empty for epoch 0): `epochs[i]` leads from epoch `i` to `i + 1`.
    pub epochs: Vec<CertifiedState>,
}

impl CommitReceipt {
    /// Checks, offline, that the update committed in the federation whose
    /// genesis membership is `membership`: every link of [`epochs`](Self::epochs)
    /// checks against the epoch before it (from the genesis), the proof
    /// verifies against the last epoch's membership (a quorum of its members'
    /// COMMIT signatures, under its id and so its genesis and chain), the batch
    /// has the proof's digest, and the batch holds the request
    /// `(client, timestamp, postcard(operation))`. An operation only voting
    /// members may commit must come from one of that epoch's voters' slots.
    pub fn verify(&self, membership: &Membership) -> Result<()> {
        let chain_len: usize = self
            .epochs
            .iter()
            .map(|l| l.cert.len() + l.state.len())
            .sum();
        if chain_len > MAX_RECEIPT_CHAIN_LEN {
            return Err(Error::Consensus(format!(
                "a receipt's chain of {chain_len} bytes exceeds {MAX_RECEIPT_CHAIN_LEN}"
            )));
        }
        let genesis = Epoch::genesis(Arc::new(membership.clone()), Vec::new(), 0, 0);
        let epoch = genesis.follow_all(&self.epochs)?;
        self.verify_in(&epoch.membership)
    }

    /// [`verify`](Self::verify) against the membership of the receipt's
    /// epoch, known to be reached by its chain (the chain is not checked).
    pub(crate) fn verify_in(&self, m: &Membership) -> Result<()> {
        let requests = checked_batch(m, &self.proof, &self.batch)?;
        self.holds(m, &requests)
    }

    /// That the batch's decoded `requests` hold this receipt's request, and
    /// that its client may commit its operation in the epoch of `m` (the
    /// proof and batch checked already, [`checked_batch`]).
    fn holds(&self, m: &Membership, requests: &[fed_pbft::Request]) -> Result<()> {
        if !matches!(self.operation, Operation::Update(_)) {
            let voters = voter_clients(m);
            let of_voter = |n: &[u8; 32]| m.members().iter().any(|v| v.node_id().0 == *n);
            if !voters.contains(&self.client)
                || matches!(&self.operation, Operation::RevokeMember(n) if of_voter(n))
            {
                return Err(Error::Consensus(
                    "an operation that a client may not commit executes as a no-op".into(),
                ));
            }
        }
        let operation = encode_operation(&self.operation);
        if requests.iter().any(|r| {
            r.client == self.client && r.timestamp == self.timestamp && r.operation == operation
        }) {
            Ok(())
        } else {
            Err(Error::Consensus(
                "the batch does not hold the update".into(),
            ))
        }
    }

    /// The receipt's encoding: postcard (docs/protocol/mesh.md §9).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes [`to_bytes`](Self::to_bytes)' output, refusing more than
    /// [`MAX_RECEIPT_LEN`] bytes and trailing bytes; does not verify.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_RECEIPT_LEN {
            return Err(Error::Consensus(format!(
                "a commit receipt of {} bytes exceeds {MAX_RECEIPT_LEN}",
                bytes.len()
            )));
        }
        wire::decode(bytes, "commit receipt").map_err(|e| Error::Consensus(e.to_string()))
    }
}

/// Most bytes of epoch links a [`CommitReceipt`] may carry (a chain larger
/// than a session message is never sent either).
pub const MAX_RECEIPT_CHAIN_LEN: usize = 16 << 20;

/// The requests of `batch`, once `proof` verifies against `m` and `batch`
/// has its digest.
fn checked_batch(
    m: &Membership,
    proof: &CommitProof,
    batch: &[u8],
) -> Result<Vec<fed_pbft::Request>> {
    proof
        .verify_batch(m, batch)
        .map_err(|e| Error::Pbft(Arc::new(e)))?;
    decode_batch(batch).map_err(|e| Error::Pbft(Arc::new(e)))
}

/// A proof and batch checked against a membership (by its id), with the
/// batch's requests: the receipts of every slot with a request in that batch
/// are checked against it without verifying the signatures again.
type CheckedBatch = (
    [u8; 32],
    CommitProof,
    Arc<[u8]>,
    Arc<Vec<fed_pbft::Request>>,
);

/// Checked batches remembered.
const CHECKED_BATCHES: usize = 16;

/// The proofs and batches a client checked lately.
#[derive(Default)]
pub(super) struct CheckedBatches(VecDeque<CheckedBatch>, u64);

impl CheckedBatches {
    /// The requests of `batch`, if `proof` verifies against `m` and `batch`
    /// has its digest: from memory when this exact proof and batch were
    /// checked against `m` before (so a different proof, a forged one say,
    /// is always checked).
    pub(super) fn check(
        &mut self,
        m: &Membership,
        proof: &CommitProof,
        batch: &Arc<[u8]>,
    ) -> Result<Arc<Vec<fed_pbft::Request>>> {
        self.check_with(m, proof, batch, None, true)
    }

    /// [`check`](Self::check) of a batch whose `requests` the caller decoded.
    pub(super) fn check_decoded(
        &mut self,
        m: &Membership,
        proof: &CommitProof,
        batch: &Arc<[u8]>,
        requests: Vec<fed_pbft::Request>,
    ) -> Result<Arc<Vec<fed_pbft::Request>>> {
        self.check_with(m, proof, batch, Some(requests), true)
    }

    /// The requests of `batch`, whose `proof` this node's replica assembled
    /// (it verified each signature as it came, and computed the batch's
    /// digest): decoded, not verified, and remembered as checked, when the
    /// proof names `m`; checked as [`check`](Self::check) does otherwise (a
    /// proof of another membership says nothing of `m`'s quorum).
    pub(super) fn check_own(
        &mut self,
        m: &Membership,
        proof: &CommitProof,
        batch: &Arc<[u8]>,
    ) -> Result<Arc<Vec<fed_pbft::Request>>> {
        let verify = proof.membership != *m.id();
        self.check_with(m, proof, batch, None, verify)
    }

    /// From memory, or `proof` verified against `m` and `batch` (unless
    /// `verify` is false) and `batch` decoded (unless `decoded` has it), then
    /// remembered.
    fn check_with(
        &mut self,
        m: &Membership,
        proof: &CommitProof,
        batch: &Arc<[u8]>,
        decoded: Option<Vec<fed_pbft::Request>>,
        verify: bool,
    ) -> Result<Arc<Vec<fed_pbft::Request>>> {
        if let Some(requests) = self.find(m, proof, batch) {
            return Ok(requests);
        }
        let pbft = |e| Error::Pbft(Arc::new(e));
        if verify {
            self.1 += 1;
            proof.verify_batch(m, batch).map_err(pbft)?;
        }
        let requests = match decoded {
            Some(requests) => requests,
            None => decode_batch(batch).map_err(pbft)?,
        };
        Ok(self.keep(m, proof, batch, requests))
    }

    /// How many proofs were verified (not found checked already).
    #[cfg(test)]
    fn verified(&self) -> u64 {
        self.1
    }

    fn find(
        &self,
        m: &Membership,
        proof: &CommitProof,
        batch: &Arc<[u8]>,
    ) -> Option<Arc<Vec<fed_pbft::Request>>> {
        // The receipts of one batch share its bytes: the same allocation is
        // the same batch, without comparing them.
        self.0
            .iter()
            .find(|(id, p, b, _)| {
                id == m.id() && p == proof && (Arc::ptr_eq(b, batch) || **b == **batch)
            })
            .map(|(.., requests)| requests.clone())
    }

    fn keep(
        &mut self,
        m: &Membership,
        proof: &CommitProof,
        batch: &Arc<[u8]>,
        requests: Vec<fed_pbft::Request>,
    ) -> Arc<Vec<fed_pbft::Request>> {
        let requests = Arc::new(requests);
        if self.0.len() >= CHECKED_BATCHES {
            self.0.pop_front();
        }
        self.0
            .push_back((*m.id(), proof.clone(), batch.clone(), requests.clone()));
        requests
    }
}

/// Largest [`CommitReceipt`] encoding accepted.
pub const MAX_RECEIPT_LEN: usize = fed_pbft::MAX_BATCH_LEN
    + fed_pbft::MAX_COMMIT_PROOF_LEN
    + fed_pbft::MAX_OPERATION_LEN
    + MAX_RECEIPT_CHAIN_LEN
    + 1024;

/// A batch the federation committed, as subscribers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct CommittedBatch {
    /// The configuration epoch it committed in (sequence numbers start again
    /// at each).
    pub epoch: u64,
    /// Sequence number.
    pub seq: u64,
    /// The view it committed in.
    pub view: u64,
    /// Its digest (the proof's).
    pub digest: [u8; 32],
    /// The updates executed, in order: `(client, timestamp, update)`.
    pub updates: Vec<(ClientId, u64, StateUpdate)>,
    /// The revocations executed, in order.
    pub revocations: Vec<Revocation>,
    /// The ledger's count after the batch (0 on a node that does not vote).
    pub ledger_count: u64,
    /// The ledger's head after the batch.
    pub ledger_head: [u8; 32],
}

/// A proof request: the batch and proof that hold `(client, timestamp)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofRequest {
    /// The client.
    pub client: [u8; 32],
    /// Its timestamp.
    pub timestamp: u64,
}

/// The answer to a [`ProofRequest`]: the proof (fed-pbft's canonical encoding)
/// and the batch, or nothing if this replica does not (yet, or any more) hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofResponse {
    /// `(proof, batch)`, if found.
    pub found: Option<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
}

/// A replica's latest stable checkpoint and the replica state it certifies
/// (mesh.md §9): a member that does not vote checks it against the membership
/// and takes over the revocations of the ledger within.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedState {
    /// The `CheckpointCert`, postcard (pbft.md §6).
    pub cert: serde_bytes::ByteBuf,
    /// The replica state at its sequence number (pbft.md §6).
    pub state: serde_bytes::ByteBuf,
}

/// The links of every configuration epoch after the genesis, in order
/// (kind 14, mesh.md §9): each a stable checkpoint of the epoch before it at or
/// after its end, with the state it certifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochChain {
    /// The epoch the first link leads from.
    pub first: u64,
    /// Link `i` leads from epoch `first + i` to epoch `first + i + 1`.
    pub links: Vec<CertifiedState>,
}

/// A kind-13 message and the revocation count of the ledger in it.
type CertifiedMessage = (Arc<Vec<u8>>, usize);

/// A commit in a slot, from submission to its receipt.
pub(super) struct InFlight {
    pub(super) command: Option<CommandId>,
    pub(super) update: Operation,
    pub(super) timestamp: u64,
    /// The configuration epoch it was submitted in.
    pub(super) epoch: u64,
    pub(super) deadline: u64,
    /// After `f + 1` replies: the index, and the replicas asked for the proof.
    pub(super) proof: Option<ProofHunt>,
}

/// The ledger index a chained operation's result `0x00 ‖ be64(index)` names.
pub(super) fn chained_index(result: &[u8]) -> Option<u64> {
    match result {
        [0, index @ ..] => Some(u64::from_be_bytes(index.try_into().ok()?)),
        _ => None,
    }
}

impl ProofHunt {
    /// A hunt for the proof of ledger entry `index`, of slot `slot`: slots
    /// start at different replicas.
    /// The first request waits [`PUSH_WAIT_MS`] for the push.
    pub(super) fn new(index: u64, slot: usize, now: u64) -> Self {
        Self {
            index,
            asked: slot,
            next_at: now.saturating_add(PUSH_WAIT_MS),
            waiting: true,
        }
    }

    /// A hunt that asks at once: for a commit settled by an epoch's link,
    /// whose batch's push went out (or not) long before.
    pub(super) fn asking_now(index: u64, slot: usize, now: u64) -> Self {
        Self {
            next_at: now,
            waiting: false,
            ..Self::new(index, slot, now)
        }
    }
}

pub(super) struct ProofHunt {
    pub(super) index: u64,
    pub(super) asked: usize,
    pub(super) next_at: u64,
    pub(super) waiting: bool,
}

pub(super) struct Slot {
    pub(super) id: ClientId,
    pub(super) client: Client,
    pub(super) busy: Option<InFlight>,
    /// The latest timestamp submitted (a new epoch's client starts above it).
    pub(super) last_timestamp: u64,
}

pub(super) struct Queued {
    pub(super) command: Option<CommandId>,
    pub(super) update: Operation,
    pub(super) deadline: u64,
}

/// An executed batch kept for proof requests: its proof, the batch, its requests.
/// A remembered batch: its proof, its bytes, its requests, and whether this
/// node's own replica executed it (its proof assembled from COMMITs the
/// replica verified as they came, for the batch whose digest it computed).
type Remembered = (CommitProof, Arc<[u8]>, Vec<(ClientId, u64)>, bool);

/// Where a batch executed: its configuration epoch and sequence number.
type Position = (u64, u64);

/// Where each remembered request executed, by client: per client, its
/// requests' timestamps in increasing order, each with the batch's position.
/// A few thousand clients, each a short queue appended at its end, where a
/// table of every request of a thousand batches took a miss of the cache per
/// request and rehashed as it churned (a twentieth of a voter's CPU under
/// load). Of two entries with one timestamp, the later added counts.
#[derive(Default)]
pub(super) struct ProofIndex(HashMap<ClientId, VecDeque<(u64, Position)>>);

impl ProofIndex {
    /// The position of `(client, timestamp)`.
    pub(super) fn get(&self, (client, ts): &(ClientId, u64)) -> Option<&Position> {
        let q = self.0.get(client)?;
        // Most often the client's latest.
        if let Some((t, at)) = q.back()
            && t == ts
        {
            return Some(at);
        }
        let end = q.partition_point(|(t, _)| t <= ts);
        let (t, at) = q.get(end.checked_sub(1)?)?;
        (t == ts).then_some(at)
    }

    /// Whether `key` is indexed.
    #[cfg(test)]
    pub(super) fn contains_key(&self, key: &(ClientId, u64)) -> bool {
        self.get(key).is_some()
    }

    /// Indexes `(client, timestamp)` at `at` (most often after every other
    /// entry of its client: a client's requests execute in timestamp order).
    pub(super) fn insert(&mut self, (client, ts): (ClientId, u64), at: Position) {
        let q = self.0.entry(client).or_default();
        if q.back().is_none_or(|(t, _)| *t <= ts) {
            q.push_back((ts, at));
            return;
        }
        let i = q.partition_point(|(t, _)| *t <= ts);
        q.insert(i, (ts, at));
    }

    /// Drops `(client, timestamp)`'s entry at `at`, if any.
    pub(super) fn forget(&mut self, (client, ts): &(ClientId, u64), at: Position) {
        let Some(q) = self.0.get_mut(client) else {
            return;
        };
        // Batches are forgotten oldest first: most often the client's first.
        if q.front() == Some(&(*ts, at)) {
            q.pop_front();
            if q.is_empty() {
                self.0.remove(client);
            }
            return;
        }
        let from = q.partition_point(|(t, _)| t < ts);
        if let Some(i) = (from..q.len())
            .take_while(|i| q.get(*i).is_some_and(|(t, _)| t == ts))
            .find(|i| q.get(*i).is_some_and(|(_, p)| *p == at))
        {
            q.remove(i);
        }
        if q.is_empty() {
            self.0.remove(client);
        }
    }

    /// Drops every entry of `(client, timestamp)`.
    pub(super) fn remove(&mut self, (client, ts): &(ClientId, u64)) {
        let Some(q) = self.0.get_mut(client) else {
            return;
        };
        q.retain(|(t, _)| t != ts);
        if q.is_empty() {
            self.0.remove(client);
        }
    }
}

/// The node's part in the consensus.
pub(crate) struct CommitState {
    pub(super) config: ConsensusConfig,
    /// Revocations in the last certified state pushed to every member that
    /// does not vote.
    pub(super) pushed_revocations: usize,
    /// The kind-13 message of a stable checkpoint (by its sequence number),
    /// with its ledger's revocation count; `None` if it has none or is too
    /// large.
    pub(super) certified: Option<(u64, Option<CertifiedMessage>)>,
    /// The sequence number of the last certified state taken (a member that
    /// does not vote).
    pub(super) certified_taken: u64,
    pub(super) replica: Option<Replica<Ledger>>,
    /// Every configuration epoch so far, from the genesis's (never empty).
    pub(super) epochs: Vec<Arc<Epoch>>,
    /// The links between them: `chain[i]` leads from epoch `i` to `i + 1`.
    pub(super) chain: Vec<CertifiedState>,
    /// A reply said this epoch is over (`[3]`): commits wait for the next.
    pub(super) epoch_over: bool,
    /// Links refused, by the hash of their bytes: a peer replaying one costs a
    /// decode, not its checks.
    pub(super) refused_links: VecDeque<[u8; 32]>,
    /// When each peer was last sent the whole chain, and its length then.
    pub(super) nudged: HashMap<PeerId, (u64, usize)>,
    /// While the epoch is over, when this node next asks for the chain.
    pub(super) ask_chain_at: u64,
    /// The whole chain's kind-14 message, by the chain's length.
    pub(super) chain_cache: Option<(usize, Arc<Vec<u8>>)>,
    /// Proofs and batches checked lately (for receipts).
    checked: CheckedBatches,
    /// Commits to submit again in the next epoch.
    pub(super) deferred: Vec<Queued>,
    pub(super) slots: Vec<Slot>,
    /// Each slot's index, by its client id (a reply names its client).
    pub(super) slot_index: HashMap<ClientId, usize>,
    pub(super) queue: VecDeque<Queued>,
    /// The node and slot of each client a replica knows, for its replies.
    pub(super) clients: HashMap<ClientId, NodeId>,
    /// Executed batches for proof requests: (epoch, seq) → (proof, batch, its requests).
    pub(super) recent: BTreeMap<Position, Remembered>,
    pub(super) recent_bytes: usize,
    pub(super) by_request: ProofIndex,
    pub(crate) committed: u64,
    /// PBFT messages produced by one input, coalesced per peer: one envelope each.
    pub(super) outbox: BTreeMap<PeerId, (Vec<Multiaddr>, Vec<Vec<u8>>)>,
    /// Inputs are being fed in a group; [`Core::drain_replica`] runs once after.
    pub(super) defer_drain: bool,
    /// Commands are being fed in a group ([`Core::commands`]): the slots'
    /// messages leave once, after the group, one envelope per replica.
    pub(super) defer_flush: bool,
}

/// `hash(PBFT_CLIENT_ID, [node, be16(slot)])`.
pub fn client_id(node: &NodeId, slot: u16) -> ClientId {
    ClientId(hash(
        labels::PBFT_CLIENT_ID,
        &[&node.0, &slot.to_be_bytes()],
    ))
}

impl CommitState {
    pub(crate) fn new(
        config: ConsensusConfig,
        identity: &Arc<fed_crypto::Identity>,
        rng: &mut impl rand_chacha::rand_core::Rng,
        now: u64,
    ) -> Result<Self> {
        if config.client_slots == 0 || config.client_slots > MAX_CLIENT_SLOTS {
            return Err(Error::Config(format!(
                "consensus.client_slots is {}; it must be 1 to {MAX_CLIENT_SLOTS}",
                config.client_slots
            )));
        }
        let genesis = Epoch::genesis(
            config.membership.clone(),
            config.addresses.clone(),
            config.pbft.checkpoint_interval,
            super::epoch::max_voters(&config.pbft),
        );
        let mut epochs = vec![Arc::new(genesis)];
        for link in &config.epochs {
            let next = epochs[epochs.len() - 1].follow(link)?.0;
            epochs.push(Arc::new(next));
        }
        let chain = config.epochs.clone();
        let epoch = epochs[epochs.len() - 1].clone();
        let node = identity.node_id();
        let replica = match epoch.membership.index_of(&node) {
            None => None,
            Some(_) => new_replica(&config, identity, &epoch, config.recovered.as_deref(), now)?,
        };
        let mut state = Self {
            pushed_revocations: 0,
            certified: None,
            certified_taken: 0,
            replica,
            epochs,
            chain,
            epoch_over: false,
            refused_links: VecDeque::new(),
            nudged: HashMap::new(),
            ask_chain_at: 0,
            chain_cache: None,
            checked: CheckedBatches::default(),
            deferred: Vec::new(),
            slots: Vec::new(),
            slot_index: HashMap::new(),
            queue: VecDeque::new(),
            clients: HashMap::new(),
            recent: BTreeMap::new(),
            recent_bytes: 0,
            by_request: ProofIndex::default(),
            committed: 0,
            outbox: BTreeMap::new(),
            defer_drain: false,
            defer_flush: false,
            config,
        };
        // Timestamps start at the wall clock, so that a restarted node's
        // new requests are newer than those it sent before.
        state.new_clients(&node, rng, now)?;
        Ok(state)
    }

    /// The current configuration epoch.
    pub(super) fn cur(&self) -> &Epoch {
        &self.epochs[self.epochs.len() - 1]
    }

    /// The epoch numbered `number`, if known.
    pub(super) fn epoch(&self, number: u64) -> Option<&Arc<Epoch>> {
        self.epochs.get(usize::try_from(number).ok()?)
    }

    /// (Re)creates every slot's client for the current epoch (keeping what
    /// the slots have in flight), each starting above the timestamps it used,
    /// and registers their keys with this node's own replica. Until a session
    /// with a replica exists, a slot's key for it is random: that replica
    /// refuses the slot's requests, the others do not.
    pub(super) fn new_clients(
        &mut self,
        node: &NodeId,
        rng: &mut impl rand_chacha::rand_core::Rng,
        now: u64,
    ) -> Result<()> {
        let pbft_err = |e: fed_pbft::Error| Error::Pbft(Arc::new(e));
        let m = self.cur().membership.clone();
        let retransmit = self.config.pbft.retransmit_ms.max(1) * 5;
        for s in 0..self.config.client_slots {
            let keys = (0..m.len())
                .map(|_| {
                    let mut k = [0u8; 32];
                    rng.fill_bytes(&mut k);
                    ClientKey::new(&k)
                })
                .collect();
            let id = client_id(node, s);
            let i = usize::from(s);
            let first = self
                .slots
                .get(i)
                .map_or(now, |slot| now.max(slot.last_timestamp + 1))
                .max(1);
            let client = Client::new(id, keys, m.clone(), first, retransmit).map_err(pbft_err)?;
            match self.slots.get_mut(i) {
                Some(slot) => slot.client = client,
                None => {
                    self.slot_index.insert(id, self.slots.len());
                    self.slots.push(Slot {
                        id,
                        client,
                        busy: None,
                        last_timestamp: 0,
                    });
                }
            }
        }
        // This node's own replica shares a fresh random key with each slot.
        if let Some(r) = self.replica.as_mut() {
            let me = r.index();
            for slot in &mut self.slots {
                let mut k = [0u8; 32];
                rng.fill_bytes(&mut k);
                let key = ClientKey::new(&k);
                k.fill(0);
                slot.client.set_key(me, &key).map_err(pbft_err)?;
                r.add_client(slot.id, key).map_err(pbft_err)?;
                self.clients.insert(slot.id, *node);
            }
        }
        Ok(())
    }

    pub(crate) fn next_timeout(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: Option<u64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.replica.as_ref().and_then(Replica::poll_timeout));
        for s in &self.slots {
            consider(s.client.poll_timeout());
            if let Some(f) = &s.busy {
                consider(Some(f.deadline));
                if let Some(h) = &f.proof {
                    consider(Some(h.next_at));
                }
            }
        }
        consider(self.queue.iter().map(|q| q.deadline).min());
        consider(self.deferred.iter().map(|q| q.deadline).min());
        if self.epoch_over {
            consider(Some(self.ask_chain_at));
        }
        next
    }

    /// Keeps an executed (`own`: by this node's replica) or pushed and
    /// verified batch for proof requests. A sequence number already held is
    /// kept as it is.
    fn remember(
        &mut self,
        seq: Position,
        proof: CommitProof,
        batch: Arc<[u8]>,
        requests: &[(ClientId, u64)],
        own: bool,
    ) {
        if self.recent.contains_key(&seq) {
            return;
        }
        self.recent_bytes += batch.len();
        for r in requests {
            self.by_request.insert(*r, seq);
        }
        self.recent
            .insert(seq, (proof, batch, requests.to_vec(), own));
        while self.recent.len() > PROOF_CACHE_BATCHES || self.recent_bytes > PROOF_CACHE_BYTES {
            let Some((old, (_, batch, requests, _))) = self.recent.pop_first() else {
                break;
            };
            self.recent_bytes -= batch.len();
            for r in requests {
                self.by_request.forget(&r, old);
            }
        }
    }
}

/// The replica of `epoch` for this node: recovered from `recovered` (the
/// store's, which holds the current epoch's votes) or new, from the ledger
/// the epoch starts with. `None` for a node without storage (unless
/// `volatile_replica`), which then takes part as a member that does not vote.
pub(super) fn new_replica(
    config: &ConsensusConfig,
    identity: &Arc<fed_crypto::Identity>,
    epoch: &Epoch,
    recovered: Option<&DurableState>,
    now: u64,
) -> Result<Option<Replica<Ledger>>> {
    let pbft_err = |e: fed_pbft::Error| Error::Pbft(Arc::new(e));
    if epoch.number > 0 && !config.durable && !config.volatile_replica {
        tracing::error!(
            epoch = epoch.number,
            "this node became a voting member but has no data directory: it runs no replica"
        );
        return Ok(None);
    }
    let m = epoch.membership.clone();
    let replica = match recovered {
        Some(state) => Replica::recover(
            identity.clone(),
            m,
            config.pbft.clone(),
            epoch.ledger.clone(),
            state.clone(),
            now,
        ),
        None => Replica::new(
            identity.clone(),
            m,
            config.pbft.clone(),
            epoch.ledger.clone(),
            now,
        ),
    }
    .map_err(pbft_err)?;
    Ok(Some(replica))
}

/// A PBFT message's kind byte (fed-pbft envelope: magic 4, version 1, kind 1).
fn pbft_kind(bytes: &[u8]) -> Option<u8> {
    bytes.get(5).copied()
}
const PBFT_REQUEST: u8 = 1;
const PBFT_REPLY: u8 = 13;

impl Core {
    /// Whether `peer` (or this node) is a voting member of the consensus.
    pub(super) fn is_voter_peer(&self, peer: &PeerId) -> bool {
        let Some(c) = self.commit.as_ref() else {
            return false;
        };
        if *peer == self.local_peer {
            return c.replica.is_some();
        }
        self.peers
            .get(peer)
            .and_then(|p| p.node)
            .is_some_and(|n| c.cur().membership.index_of(&n).is_some())
    }

    /// The replica's view, last executed sequence number and ledger, if this
    /// node is a voting member.
    pub fn consensus_status(&self) -> Option<crate::types::ConsensusStatus> {
        let c = self.commit.as_ref()?;
        let replica = c.replica.as_ref();
        Some(crate::types::ConsensusStatus {
            replica: replica.map(Replica::index),
            view: replica.map_or_else(
                || c.slots.first().map_or(0, |s| s.client.view()),
                Replica::view,
            ),
            last_executed: replica.map_or(0, Replica::last_executed),
            stable_checkpoint: replica.map_or(0, |r| r.stable_checkpoint().seq),
            ledger_count: replica.map_or(0, |r| r.app().count),
            ledger_head: replica.map_or([0; 32], |r| r.app().head),
            committed_here: c.committed,
            epoch: c.cur().number,
            voters: c
                .cur()
                .membership
                .members()
                .iter()
                .map(|m| m.node_id())
                .collect(),
        })
    }

    /// [`Command::Commit`](super::Command::Commit).
    pub(super) fn start_commit(&mut self, id: CommandId, update: Operation, now: u64) {
        let Some(c) = self.commit.as_mut() else {
            self.complete(
                id,
                Completion::Committed(Err(Error::Consensus(
                    "this node has no genesis: it takes part in no consensus".into(),
                ))),
            );
            return;
        };
        let op_len = encode_operation(&update).len();
        let max = c.config.pbft.max_operation_len;
        let refusal = if op_len > max {
            Some(Error::Consensus(format!(
                "the update is {op_len} bytes; the federation's max_operation_len is {max}"
            )))
        } else if c.queue.len() >= MAX_QUEUED_COMMITS {
            Some(Error::Busy("commit queue"))
        } else {
            None
        };
        if let Some(e) = refusal {
            self.complete(id, Completion::Committed(Err(e)));
            return;
        }
        let deadline = now.saturating_add(c.config.commit_timeout_ms);
        c.queue.push_back(Queued {
            command: Some(id),
            update,
            deadline,
        });
        self.pump_commits(now);
    }

    /// Moves queued commits into free slots.
    pub(super) fn pump_commits(&mut self, now: u64) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        let epoch = c.cur().number;
        while !c.queue.is_empty() && !c.epoch_over {
            let Some(slot) = c.slots.iter_mut().find(|s| s.busy.is_none()) else {
                break;
            };
            let Some(q) = c.queue.pop_front() else {
                break;
            };
            match slot.client.submit(encode_operation(&q.update), now) {
                Ok(timestamp) => {
                    slot.last_timestamp = timestamp;
                    slot.busy = Some(InFlight {
                        command: q.command,
                        update: q.update,
                        timestamp,
                        epoch,
                        deadline: q.deadline,
                        proof: None,
                    });
                }
                Err(e) => {
                    if let Some(command) = q.command {
                        self.actions.push_back(super::Action::Complete {
                            command,
                            completion: Completion::Committed(Err(Error::Pbft(Arc::new(e)))),
                        });
                    }
                }
            }
        }
        if self.commit.as_ref().is_some_and(|c| c.defer_flush) {
            return;
        }
        self.flush_clients(now);
        self.flush_outbox(now);
    }

    /// Sends what the slots' clients want sent.
    fn flush_clients(&mut self, now: u64) {
        let mut out = Vec::new();
        if let Some(c) = self.commit.as_mut() {
            for s in &mut c.slots {
                while let Some(t) = s.client.poll_transmit() {
                    out.push(t);
                }
            }
        }
        for (to, bytes) in out {
            self.pbft_send(to, &bytes, now);
        }
        self.client_events(now);
    }

    /// Sends a PBFT message to replica `to` (delivered here if it is this node).
    fn pbft_send(&mut self, to: ReplicaIndex, bytes: &[u8], now: u64) {
        let Some(c) = self.commit.as_ref() else {
            return;
        };
        let local = c.replica.as_ref().is_some_and(|r| r.index() == to);
        if local {
            self.pbft_deliver(None, bytes, now);
            return;
        }
        let Some(peer) = c.cur().peer(to) else {
            return;
        };
        let addrs = c
            .cur()
            .addresses
            .get(usize::from(to))
            .cloned()
            .unwrap_or_default();
        self.enqueue(peer, addrs, bytes);
    }

    /// Adds a message for `peer` to the outbox.
    fn enqueue(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, bytes: &[u8]) {
        if let Some(c) = self.commit.as_mut() {
            let entry = c.outbox.entry(peer).or_insert_with(|| (addrs, Vec::new()));
            entry.1.push(bytes.to_vec());
        }
    }

    /// Sends the outbox: one sealed envelope per peer, its messages in order.
    fn flush_outbox(&mut self, now: u64) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        if c.outbox.is_empty() {
            return;
        }
        let expires = now.saturating_add(c.config.pbft.request_timeout_ms.max(1000));
        let outbox = std::mem::take(&mut c.outbox);
        // One envelope per peer, split where it would outgrow the session's
        // messages (a message alone larger than that goes alone, and fails to seal).
        let limit = (self.config.capabilities.limits.max_message_bytes as usize)
            .saturating_sub(ENVELOPE_SLACK);
        for (peer, (addrs, messages)) in outbox {
            let mut groups: Vec<Vec<serde_bytes::ByteBuf>> = vec![Vec::new()];
            let mut size = 0usize;
            for m in messages {
                let len = m.len() + 10;
                if size + len > limit && groups.last().is_some_and(|g| !g.is_empty()) {
                    groups.push(Vec::new());
                    size = 0;
                }
                size += len;
                if let Some(g) = groups.last_mut() {
                    g.push(serde_bytes::ByteBuf::from(m));
                }
            }
            for body in groups {
                self.send_or_queue(
                    peer,
                    Protocol::Pbft,
                    wire::envelope(Kind::Pbft, &wire::encode(&body)),
                    Purpose::Pbft,
                    addrs.clone(),
                    expires,
                    now,
                );
            }
        }
    }

    /// Sends a reply to the node of its client.
    fn pbft_reply(&mut self, reply: &fed_pbft::Reply, now: u64) {
        let Ok(bytes) = reply.to_bytes() else {
            return;
        };
        let Some(c) = self.commit.as_ref() else {
            return;
        };
        if c.slots.iter().any(|s| s.id == reply.client) {
            self.pbft_deliver(None, &bytes, now);
            return;
        }
        self.pbft_reply_remote(reply);
    }

    /// Whether `reply` is for another node's client (not one of this node's
    /// slots).
    fn pbft_reply_is_remote(&self, reply: &fed_pbft::Reply) -> bool {
        self.commit
            .as_ref()
            .is_some_and(|c| !c.slots.iter().any(|s| s.id == reply.client))
    }

    /// Queues a reply for the node of its client, unless that is this node.
    fn pbft_reply_remote(&mut self, reply: &fed_pbft::Reply) {
        if !self.pbft_reply_is_remote(reply) {
            return;
        }
        let Ok(bytes) = reply.to_bytes() else {
            return;
        };
        let Some(node) = self
            .commit
            .as_ref()
            .and_then(|c| c.clients.get(&reply.client).copied())
        else {
            return;
        };
        let Some(peer) = self.peer_of(&node) else {
            return;
        };
        self.enqueue(peer, Vec::new(), &bytes);
    }

    /// A PBFT message from `from` (a peer, or this node itself when `None`).
    fn pbft_deliver(&mut self, from: Option<PeerId>, bytes: &[u8], now: u64) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        match pbft_kind(bytes) {
            Some(PBFT_REPLY) => {
                let Ok(Message::Reply(reply)) = Message::decode(bytes) else {
                    self.stats.pbft_rejected += 1;
                    return;
                };
                let Some(&i) = c.slot_index.get(&reply.client) else {
                    return;
                };
                if let Some(s) = c.slots.get_mut(i)
                    && s.client.handle_reply(bytes, now).is_err()
                {
                    self.stats.pbft_rejected += 1;
                }
                // Only this slot's client can have a new event.
                self.slot_events(i..i + 1, now);
            }
            Some(PBFT_REQUEST) => {
                let Some(r) = c.replica.as_mut() else {
                    // Sent to a voter this node no longer is?
                    if let Some(peer) = from {
                        self.nudge_epoch(peer, false, now);
                    }
                    return;
                };
                if let Err(e) = r.handle_request(bytes, now) {
                    tracing::debug!(error = %e, "pbft request refused");
                    self.stats.pbft_rejected += 1;
                    // Perhaps a client of an epoch that ended.
                    if let Some(peer) = from
                        && of_another_membership(&e)
                    {
                        self.nudge_epoch(peer, false, now);
                    }
                }
                self.drain_replica(now);
            }
            Some(_) => {
                let Some(r) = c.replica.as_mut() else {
                    if let Some(peer) = from {
                        self.nudge_epoch(peer, false, now);
                    }
                    return;
                };
                // Replica-to-replica messages: only from the replica's own peer.
                let m = r.membership();
                let sender = from.and_then(|p| {
                    let node = self.peers.get(&p)?.node?;
                    m.index_of(&node)
                });
                let Some(index) = sender else {
                    self.stats.pbft_rejected += 1;
                    // Perhaps a replica of an epoch that ended.
                    if let Some(peer) = from {
                        self.nudge_epoch(peer, false, now);
                    }
                    return;
                };
                if let Err(e) = r.handle_message(index, bytes, now) {
                    tracing::debug!(error = %e, from = index, "pbft message refused");
                    self.stats.pbft_rejected += 1;
                    if let Some(peer) = from
                        && of_another_membership(&e)
                    {
                        self.nudge_epoch(peer, false, now);
                    }
                }
                self.drain_replica(now);
            }
            None => self.stats.pbft_rejected += 1,
        }
    }

    /// Carries out what the replica produced: writes first, then messages, then events.
    fn drain_replica(&mut self, now: u64) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        if c.defer_drain {
            return;
        }
        let Some(r) = c.replica.as_mut() else {
            return;
        };
        let mut writes: Vec<Persist> = Vec::new();
        while let Some(w) = r.poll_persist() {
            writes.push(w);
        }
        let mut transmits = Vec::new();
        while let Some(t) = r.poll_transmit() {
            transmits.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = r.poll_event() {
            events.push(e);
        }
        if c.config.byzantine_votes {
            let identity = self.config.identity.clone();
            let m = c.cur().membership.clone();
            for t in &mut transmits {
                if let Some(bytes) = forge_vote(&identity, &m, &t.payload) {
                    t.payload = bytes.into();
                }
            }
        }
        // When this call's writes are only `Committed` records, kept for
        // recovery and sent after nothing (pbft.md §5; the votes behind the
        // batch were synced before they left), the replies, the proof push
        // and this node's own receipts go before the writes: they need not
        // wait for a store that syncs them. The batch's event (audit,
        // substrate, subscribers) and its revocations follow the writes
        // (the node's store holds such writes back, so those wait for no
        // sync either: store.md §3.1). Anything else written holds them all
        // back.
        let early = !writes.is_empty()
            && writes
                .iter()
                .all(|w| matches!(w, Persist::Committed { .. }));
        if early {
            for e in &events {
                match e {
                    PbftEvent::Reply(reply) => self.pbft_reply(reply, now),
                    PbftEvent::Executed(x) => {
                        let to = self.push_targets(x);
                        self.push_proof(x, to, now);
                        self.remember_executed(x);
                        self.finish_waiting(x, now);
                    }
                    _ => {}
                }
            }
            self.flush_outbox(now);
        }
        if !writes.is_empty() {
            self.push(super::Action::Persist(writes));
        }
        for t in transmits {
            self.pbft_send(t.to, &t.payload, now);
        }
        // Every event of this replica is handled before the node may enter
        // the next epoch (and replace the replica).
        let mut stable = false;
        for e in events {
            match e {
                PbftEvent::Reply(_) if early => {}
                PbftEvent::Reply(reply) => self.pbft_reply(&reply, now),
                PbftEvent::Executed(x) => self.on_executed(x, early, now),
                PbftEvent::ViewChanged { view, .. } => {
                    self.event(MeshEvent::ViewChanged { view });
                }
                PbftEvent::StableCheckpoint { .. } | PbftEvent::StateTransferred { .. } => {
                    self.on_stable_checkpoint(now);
                    stable = true;
                }
                _ => {}
            }
        }
        self.sync_revocations(now);
        if stable {
            self.check_epoch_end(now);
        }
        self.tick_epoch(now);
    }

    /// While this replica's epoch has an end it has not reached, and this node
    /// has no request waiting to be ordered, it submits a tick: a no-op that
    /// makes the primary order one more batch, so that the epoch reaches its
    /// end without other traffic.
    fn tick_epoch(&mut self, now: u64) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        let Some(r) = c.replica.as_ref() else {
            return;
        };
        if c.epoch_over || r.app().end.is_none_or(|end| r.last_executed() >= end) {
            return;
        }
        let ordering = c
            .slots
            .iter()
            .any(|s| s.busy.as_ref().is_some_and(|f| f.proof.is_none()));
        if ordering || !c.queue.is_empty() {
            return;
        }
        c.queue.push_back(Queued {
            command: None,
            update: Operation::Tick,
            deadline: now.saturating_add(c.config.commit_timeout_ms),
        });
        self.pump_commits(now);
    }

    /// The nodes this replica pushes `x`'s proof and batch to: when it is
    /// replica `seq mod n`, every node with a request in the batch that does
    /// not vote in this epoch, so that clients need not ask (they still do if
    /// it does not come, or does not verify). A voter's client gets the
    /// proof from its own replica when it executes the batch.
    pub(super) fn push_targets(&self, x: &fed_pbft::Executed) -> Vec<NodeId> {
        let Some(c) = self.commit.as_ref() else {
            return Vec::new();
        };
        let n = c.cur().membership.len() as u64;
        let me = c.replica.as_ref().map(Replica::index);
        if me != Some((x.seq % n) as ReplicaIndex) {
            return Vec::new();
        }
        // A voter's own replica executes the batch and gives its client the
        // proof: pushed only to the members that do not vote.
        let voters = &c.cur().membership;
        let mut nodes: Vec<NodeId> = x
            .requests
            .iter()
            .filter_map(|(client, _)| c.clients.get(client).copied())
            .filter(|node| *node != self.local_node && voters.index_of(node).is_none())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Sends `x`'s proof and batch to `nodes`.
    fn push_proof(&mut self, x: &fed_pbft::Executed, nodes: Vec<NodeId>, now: u64) {
        if nodes.is_empty() {
            return;
        }
        let push = proof_push(x);
        for node in nodes {
            if let Some(peer) = self.peer_of(&node) {
                self.send_or_queue(
                    peer,
                    Protocol::Pbft,
                    push.clone(),
                    Purpose::Pbft,
                    Vec::new(),
                    now.saturating_add(PROOF_RETRY_MS),
                    now,
                );
            }
        }
    }

    /// Remembers an executed batch's proof for the requests in it (this
    /// node's clients and others' proof requests find it there).
    fn remember_executed(&mut self, x: &fed_pbft::Executed) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        let epoch = c.cur().number;
        c.remember(
            (epoch, x.seq),
            x.proof.clone(),
            x.batch.clone(),
            &x.requests,
            true,
        );
        c.committed += 1;
    }

    /// This node's own commits in `x` whose replies came first: their proof
    /// is here now (nobody pushes it to a voter, nor to the node that pushes
    /// it).
    fn finish_waiting(&mut self, x: &fed_pbft::Executed, now: u64) {
        let position = (self.commit.as_ref().map_or(0, |c| c.cur().number), x.seq);
        let waiting: Vec<usize> = self.commit.as_ref().map_or_else(Vec::new, |c| {
            c.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.busy.as_ref().is_some_and(|f| {
                        f.proof.is_some()
                            && c.by_request.get(&(s.id, f.timestamp)) == Some(&position)
                    })
                })
                .map(|(i, _)| i)
                .collect()
        });
        for i in waiting {
            self.hunt_proof(i, now);
        }
    }

    /// A batch this replica executed: remembered, pushed, its clients
    /// finished (all three already done when `early`: the call wrote only
    /// `Committed` records), its revocations applied and its event emitted.
    fn on_executed(&mut self, x: fed_pbft::Executed, early: bool, now: u64) {
        let push_to = self.push_targets(&x);
        if !early {
            self.remember_executed(&x);
        }
        let Some(c) = self.commit.as_ref() else {
            return;
        };
        let ledger = c.replica.as_ref().map(Replica::app);
        let (updates, revocations) = batch_effects(&x, ledger);
        let (ledger_count, ledger_head) = c
            .replica
            .as_ref()
            .map_or((0, [0; 32]), |r| (r.app().count, r.app().head));
        if !revocations.is_empty() {
            // Every replica tells the members that do not vote (they execute
            // nothing), so that f silent replicas cannot keep it from them.
            let voters: Vec<PeerId> = self
                .session_peers()
                .into_iter()
                .filter(|p| !self.is_voter_peer(p))
                .collect();
            for peer in voters {
                if !push_to.iter().any(|n| self.peer_of(n) == Some(peer)) {
                    self.send_or_queue(
                        peer,
                        Protocol::Pbft,
                        proof_push(&x),
                        Purpose::Pbft,
                        Vec::new(),
                        now.saturating_add(PROOF_RETRY_MS),
                        now,
                    );
                }
            }
            for r in &revocations {
                self.apply_revocation(*r, now);
            }
        }
        if !early {
            self.push_proof(&x, push_to, now);
        }
        let epoch = self.commit.as_ref().map_or(0, |c| c.cur().number);
        self.event(MeshEvent::Committed(Arc::new(CommittedBatch {
            epoch,
            seq: x.seq,
            view: x.view,
            digest: x.digest,
            updates,
            revocations,
            ledger_count,
            ledger_head,
        })));
        if !early {
            self.finish_waiting(&x, now);
        }
    }

    /// A committed revocation takes effect here: requests under the token, or
    /// of the member, are refused from now on, and the member's handshakes.
    fn apply_revocation(&mut self, r: Revocation, now: u64) {
        let new = match r {
            Revocation::Token(id) => self.revoked.insert(id),
            Revocation::Member(node) => self.revoked_members.insert(node.0),
        };
        if new {
            self.store_state(vec![super::StateWrite::Revoked(r)]);
            self.event(MeshEvent::Revoked(r));
            // A revoked member's connections close too: nothing it sends or
            // answers counts any more.
            if let Revocation::Member(node) = r
                && let Some(peer) = self.peer_of(&node)
            {
                self.cut_off(peer, crate::types::CutOffReason::Revoked, now);
            }
        }
    }

    /// After a state transfer the ledger may hold revocations this node never
    /// executed: take them over.
    pub(super) fn sync_revocations(&mut self, now: u64) {
        let Some(ledger) = self
            .commit
            .as_ref()
            .and_then(|c| c.replica.as_ref())
            .map(Replica::app)
        else {
            return;
        };
        if ledger.revoked_tokens.is_subset(&self.revoked)
            && ledger.revoked_members.is_subset(&self.revoked_members)
        {
            return;
        }
        let ledger = ledger.clone();
        self.apply_ledger_revocations(&ledger, now);
    }

    /// A replica pushed a proof: keep it for this node's requests in its batch
    /// (checked when used), and finish the commits waiting for it.
    fn on_proof_push(&mut self, proof: &[u8], batch: Vec<u8>, now: u64) {
        let Ok(proof) = CommitProof::from_bytes(proof) else {
            self.stats.pbft_rejected += 1;
            return;
        };
        let local = self.local_node;
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        // The epoch whose membership the proof names.
        let Some(epoch) = c
            .epochs
            .iter()
            .rev()
            .find(|e| e.membership.id() == &proof.membership)
            .cloned()
        else {
            self.stats.pbft_rejected += 1;
            return;
        };
        let Ok(requests) = decode_batch(&batch) else {
            self.stats.pbft_rejected += 1;
            return;
        };
        // Revocations a voting member committed: checked against the
        // membership before this node applies them.
        let revocations: Vec<Revocation> = requests
            .iter()
            .filter_map(|r| {
                let op = decode_operation(&r.operation)?;
                if !epoch.ledger.allows(&r.client, &op) {
                    return None;
                }
                revocation_of(&op)
            })
            .collect();
        let ours: Vec<(ClientId, u64)> = requests
            .iter()
            .filter(|r| c.slot_index.contains_key(&r.client))
            .map(|r| r.id())
            .collect();
        let apply = !revocations.is_empty() && c.replica.is_none();
        if !apply && ours.is_empty() {
            return;
        }
        // Checked before anything is kept or applied: a quorum of the
        // membership signed this batch. Kept as checked, so that the receipts
        // of this node's requests in it are not checked a second time.
        let batch: Arc<[u8]> = batch.into();
        let Ok(requests) = c
            .checked
            .check_decoded(&epoch.membership, &proof, &batch, requests)
        else {
            self.stats.pbft_rejected += 1;
            return;
        };
        if apply {
            for r in revocations {
                self.apply_revocation(r, now);
            }
        }
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        if ours.is_empty() {
            return;
        }
        let mut waiting: Vec<usize> = ours
            .iter()
            .filter_map(|(client, timestamp)| {
                let i = *c.slot_index.get(client)?;
                let f = c.slots.get(i)?.busy.as_ref()?;
                (f.proof.is_some() && f.timestamp == *timestamp).then_some(i)
            })
            .collect();
        waiting.sort_unstable();
        waiting.dedup();
        // A voter of the proof's epoch keeps every request of the batch, not
        // only its own: pushed to before its own replica executes the batch
        // (pushers send voters nothing, but a node of an earlier release
        // did), it answers others' proof requests from this entry (its own
        // `remember` then finds it there). A member that does not vote is not
        // asked for proofs: it indexes its own requests only, not every
        // request of every batch pushed to it.
        let index = if epoch.membership.index_of(&local).is_some() {
            requests.iter().map(|r| r.id()).collect()
        } else {
            ours
        };
        c.remember((epoch.number, proof.seq), proof, batch, &index, false);
        for i in waiting {
            self.hunt_proof(i, now);
        }
    }

    /// Completions of the slots' clients: ask for proofs.
    fn client_events(&mut self, now: u64) {
        let n = self.commit.as_ref().map_or(0, |c| c.slots.len());
        self.slot_events(0..n, now);
    }

    /// [`client_events`](Self::client_events) of the slots in `range`.
    fn slot_events(&mut self, range: std::ops::Range<usize>, now: u64) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        let mut hunts = Vec::new();
        for (i, s) in c
            .slots
            .iter_mut()
            .enumerate()
            .skip(range.start)
            .take(range.len())
        {
            while let Some(ClientEvent::Completed { timestamp, outcome }) = s.client.poll_event() {
                let Some(f) = s.busy.as_mut() else {
                    continue;
                };
                if f.timestamp != timestamp {
                    continue;
                }
                match outcome {
                    Outcome::Executed(result) if result.as_slice() == [3] => {
                        // The epoch ended before it: again in the next one
                        // (where nothing is submitted until then); a tick
                        // is done.
                        if f.command.is_some() {
                            c.deferred.push(Queued {
                                command: f.command,
                                update: f.update.clone(),
                                deadline: f.deadline,
                            });
                        }
                        s.busy = None;
                        if !c.epoch_over {
                            c.epoch_over = true;
                            c.ask_chain_at = now.saturating_add(super::epoch::NUDGE_INTERVAL_MS);
                        }
                    }
                    Outcome::Executed(result) if chained_index(&result).is_some() => {
                        // Slots start at different replicas, spreading the load
                        // (and meeting a lying one early if there is one).
                        f.proof = chained_index(&result).map(|index| ProofHunt::new(index, i, now));
                        hunts.push(i);
                    }
                    other => {
                        let command = f.command;
                        s.busy = None;
                        let why = match other {
                            Outcome::Refused => "the replicas' client table is full".to_string(),
                            _ => "the replicas did not accept the update".to_string(),
                        };
                        if let Some(command) = command {
                            self.actions.push_back(super::Action::Complete {
                                command,
                                completion: Completion::Committed(Err(Error::Consensus(why))),
                            });
                        }
                    }
                }
            }
        }
        for i in hunts {
            self.hunt_proof(i, now);
        }
    }

    /// Looks for slot `i`'s proof: here if this replica has it, else at the next replica.
    pub(super) fn hunt_proof(&mut self, i: usize, now: u64) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        // The proof is made by the replicas of the epoch the request executed in.
        let Some(epoch) = c
            .slots
            .get(i)
            .and_then(|s| s.busy.as_ref())
            .and_then(|f| c.epoch(f.epoch))
            .cloned()
        else {
            return;
        };
        let n = epoch.membership.len();
        let Some(s) = c.slots.get_mut(i) else {
            return;
        };
        let Some(f) = s.busy.as_mut() else {
            return;
        };
        let Some(h) = f.proof.as_mut() else {
            return;
        };
        let key = (s.id, f.timestamp);
        if let Some(seq) = c.by_request.get(&key)
            && let Some((proof, batch, _, own)) = c.recent.get(seq)
        {
            let (proof, batch, own) = (proof.clone(), batch.clone(), *own);
            if self.finish_commit(i, proof, batch, own) {
                return;
            }
            // A pushed proof that does not verify: forget it, ask the replicas.
            if let Some(c) = self.commit.as_mut() {
                c.by_request.remove(&key);
            }
            return self.hunt_proof(i, now);
        }
        if h.waiting && now < h.next_at {
            return;
        }
        // This node itself is not asked (a proof it holds was found above).
        let me = epoch.membership.index_of(&self.local_node);
        let mut target = None;
        for _ in 0..n {
            let r = (h.asked % n) as ReplicaIndex;
            h.asked += 1;
            if Some(r) != me {
                target = Some(r);
                break;
            }
        }
        let Some(r) = target else {
            // A one-replica federation: this replica will execute it.
            h.waiting = true;
            h.next_at = now.saturating_add(PROOF_RETRY_MS);
            return;
        };
        h.waiting = true;
        h.next_at = now.saturating_add(PROOF_RETRY_MS);
        let request = ProofRequest {
            client: key.0.0,
            timestamp: key.1,
        };
        let Some(peer) = epoch.peer(r) else {
            return;
        };
        let addrs = epoch
            .addresses
            .get(usize::from(r))
            .cloned()
            .unwrap_or_default();
        self.stats.proofs_requested += 1;
        self.send_or_queue(
            peer,
            Protocol::Pbft,
            wire::envelope(Kind::ProofRequest, &wire::encode(&request)),
            Purpose::Proof(i as u16, key.1),
            addrs,
            now.saturating_add(PROOF_RETRY_MS),
            now,
        );
    }

    /// Slot `i` has its proof: check it, then answer the command.
    /// Whether the proof verified (and the command was answered). `own`: the
    /// proof is this node's replica's, for the membership it names; its
    /// signatures are not verified again (its batch is still searched for the
    /// request).
    fn finish_commit(&mut self, i: usize, proof: CommitProof, batch: Arc<[u8]>, own: bool) -> bool {
        let Some(c) = self.commit.as_mut() else {
            return false;
        };
        let Some(epoch) = c
            .slots
            .get(i)
            .and_then(|s| s.busy.as_ref())
            .and_then(|f| c.epoch(f.epoch))
            .cloned()
        else {
            return false;
        };
        let Some(s) = c.slots.get(i) else {
            return false;
        };
        let Some(f) = s.busy.as_ref() else {
            return false;
        };
        let Some(h) = f.proof.as_ref() else {
            return false;
        };
        let receipt = CommitReceipt {
            client: s.id,
            timestamp: f.timestamp,
            operation: f.update.clone(),
            index: h.index,
            proof,
            batch,
            epochs: c
                .chain
                .get(..usize::try_from(f.epoch).unwrap_or(usize::MAX))
                .map(<[CertifiedState]>::to_vec)
                .unwrap_or_default(),
        };
        let command = f.command;
        // Checked against its epoch's membership, which this node reached
        // through the chain it checked link by link; a proof and batch
        // checked for another slot's receipt are not checked again.
        let m = &epoch.membership;
        let requests = if own {
            c.checked.check_own(m, &receipt.proof, &receipt.batch)
        } else {
            c.checked.check(m, &receipt.proof, &receipt.batch)
        };
        if let Err(e) = requests.and_then(|r| receipt.holds(m, &r)) {
            // A lying or confused replica: ask the next one.
            tracing::warn!(error = %e, "a replica answered with a proof that does not verify");
            self.stats.pbft_rejected += 1;
            return false;
        }
        if let Some(s) = c.slots.get_mut(i) {
            s.busy = None;
        }
        if let Some(command) = command {
            self.actions.push_back(super::Action::Complete {
                command,
                completion: Completion::Committed(Ok(Box::new(receipt))),
            });
        }
        true
    }

    /// Time passed for the consensus.
    pub(super) fn commit_timeout(&mut self, now: u64) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        if let Some(r) = c.replica.as_mut()
            && r.poll_timeout().is_some_and(|t| t <= now)
        {
            if let Err(e) = r.handle_timeout(now) {
                tracing::debug!(error = %e, "pbft timeout");
            }
            self.drain_replica(now);
        }
        self.ask_for_chain(now);
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        let mut failed = Vec::new();
        let mut hunts = Vec::new();
        for (i, s) in c.slots.iter_mut().enumerate() {
            if s.client.poll_timeout().is_some_and(|t| t <= now) {
                s.client.handle_timeout(now);
            }
            if let Some(f) = &s.busy {
                if f.deadline <= now {
                    failed.push(f.command);
                    s.busy = None;
                    s.client.abandon();
                } else if f.proof.as_ref().is_some_and(|h| h.next_at <= now) {
                    hunts.push(i);
                }
            }
        }
        while c.queue.front().is_some_and(|q| q.deadline <= now) {
            if let Some(q) = c.queue.pop_front() {
                failed.push(q.command);
            }
        }
        // Commits waiting for the next epoch time out too.
        c.deferred.retain(|q| {
            let expired = q.deadline <= now;
            if expired {
                failed.push(q.command);
            }
            !expired
        });
        for command in failed.into_iter().flatten() {
            self.complete(command, Completion::Committed(Err(Error::Timeout)));
        }
        for i in hunts {
            if let Some(h) = self
                .commit
                .as_mut()
                .and_then(|c| c.slots.get_mut(i))
                .and_then(|s| s.busy.as_mut())
                .and_then(|f| f.proof.as_mut())
            {
                h.waiting = false;
            }
            self.hunt_proof(i, now);
        }
        self.pump_commits(now);
        self.flush_outbox(now);
    }

    /// An outbound session with `node` (at `peer`) was established or renewed:
    /// re-key every slot for that replica; a new session hears of the
    /// configuration epochs after the genesis (kind 14).
    pub(super) fn commit_out_session(
        &mut self,
        peer: PeerId,
        node: NodeId,
        renewal: bool,
        now: u64,
    ) {
        if !renewal {
            self.push_epoch_chain(peer, now);
        }
        self.rekey_slots(peer, node);
    }

    /// Re-keys every slot for `node`'s replica from the session this node
    /// initiated with it (at `peer`).
    pub(super) fn rekey_slots(&mut self, peer: PeerId, node: NodeId) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        let Some(index) = c.cur().membership.index_of(&node) else {
            return;
        };
        let Some(session) = self.peers.get(&peer).and_then(|p| p.out_session_ref()) else {
            return;
        };
        for (s, slot) in c.slots.iter_mut().enumerate() {
            let key = session.export(labels::PBFT_CLIENT_KEY, &(s as u16).to_be_bytes());
            let _ = slot.client.set_key(index, &ClientKey::new(key.as_bytes()));
        }
    }

    /// An inbound session from `node` (at `peer`) was established or renewed:
    /// this replica learns (again) the keys of its client slots.
    pub(super) fn commit_in_session(
        &mut self,
        peer: PeerId,
        node: NodeId,
        renewal: bool,
        now: u64,
    ) {
        if !renewal {
            // The chain first: a certified state of a later epoch checks
            // only once the member has followed it.
            self.push_epoch_chain(peer, now);
            self.push_certified_state(peer, node, now);
        }
        self.register_client_keys(peer, node);
    }

    /// This replica learns the keys of `node`'s client slots from the session
    /// `node` initiated (at `peer`).
    pub(super) fn register_client_keys(&mut self, peer: PeerId, node: NodeId) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        let Some(r) = c.replica.as_mut() else {
            return;
        };
        let Some(session) = self.peers.get(&peer).and_then(|p| p.in_session_ref()) else {
            return;
        };
        for s in 0..MAX_CLIENT_SLOTS {
            let key = session.export(labels::PBFT_CLIENT_KEY, &s.to_be_bytes());
            let id = client_id(&node, s);
            if let Err(e) = r.add_client(id, ClientKey::new(key.as_bytes())) {
                tracing::warn!(error = %e, "no room for a client's key");
                break;
            }
            c.clients.insert(id, node);
        }
    }

    /// The replica's stable checkpoint and certified state as a kind-13
    /// message, with the number of revocations of the ledger there; `None`
    /// without a certified state, without revocations in it, or when the
    /// message would not fit a session message (warned once per checkpoint).
    /// Built once per stable checkpoint and cached.
    fn certified_state_message(&mut self) -> Option<CertifiedMessage> {
        let limit = (self.config.capabilities.limits.max_message_bytes as usize)
            .saturating_sub(ENVELOPE_SLACK);
        let c = self.commit.as_mut()?;
        let (cert, state) = c.replica.as_ref()?.stable_state()?;
        if let Some((seq, cached)) = &c.certified
            && *seq == cert.seq
        {
            return cached.clone();
        }
        let seq = cert.seq;
        let built = (|| {
            let app = fed_pbft::certified_app_state(&c.cur().membership, cert, &state).ok()?;
            let mut ledger = Ledger::default();
            fed_pbft::Application::restore(&mut ledger, &app).ok()?;
            let count = ledger.revoked_tokens.len() + ledger.revoked_members.len();
            if count == 0 {
                return None;
            }
            let body = wire::encode(&CertifiedState {
                cert: serde_bytes::ByteBuf::from(wire::encode(cert)),
                state: serde_bytes::ByteBuf::from(state.to_vec()),
            });
            let message = wire::envelope(Kind::CertifiedState, &body);
            if message.len() > limit {
                tracing::warn!(
                    seq,
                    len = message.len(),
                    limit,
                    "the certified state does not fit a session message: members that do not vote will not get it"
                );
                return None;
            }
            Some((Arc::new(message), count))
        })();
        c.certified = Some((seq, built.clone()));
        built
    }

    /// Sends `message` (kind 13) to `peer`, queued until this node's session
    /// with it is up.
    fn send_certified_state(&mut self, peer: PeerId, message: &[u8], now: u64) {
        self.send_or_queue(
            peer,
            Protocol::Pbft,
            message.to_vec(),
            Purpose::Pbft,
            Vec::new(),
            now.saturating_add(PROOF_RETRY_MS),
            now,
        );
    }

    /// When a session with a member that does not vote starts (not at a
    /// renewal), a replica tells it its stable checkpoint and the state it
    /// certifies, if the ledger there holds revocations: a member that was
    /// away when a revocation committed learns it (it executes nothing
    /// itself).
    fn push_certified_state(&mut self, peer: PeerId, node: NodeId, now: u64) {
        let voter = self
            .commit
            .as_ref()
            .is_none_or(|c| c.cur().membership.index_of(&node).is_some());
        if voter {
            return;
        }
        if let Some((message, _)) = self.certified_state_message() {
            self.send_certified_state(peer, &message, now);
        }
    }

    /// A checkpoint became stable (or was installed by a state transfer): if
    /// its ledger holds more revocations than the last state pushed, every
    /// member that does not vote gets it.
    fn on_stable_checkpoint(&mut self, now: u64) {
        let Some((message, count)) = self.certified_state_message() else {
            return;
        };
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        if count <= c.pushed_revocations {
            return;
        }
        c.pushed_revocations = count;
        let others: Vec<PeerId> = self
            .session_peers()
            .into_iter()
            .filter(|p| !self.is_voter_peer(p))
            .collect();
        for peer in others {
            self.send_certified_state(peer, &message, now);
        }
    }

    /// A replica's certified state, at a member that does not vote: checked
    /// against the membership (a quorum's checkpoint signatures over the
    /// state's digest), then the ledger's revocations within are enforced.
    fn on_certified_state(
        &mut self,
        body: &[u8],
        now: u64,
    ) -> std::result::Result<(), &'static str> {
        let Some(c) = self.commit.as_ref() else {
            return Err("no consensus");
        };
        if c.replica.is_some() {
            // A replica has its own ledger.
            return Ok(());
        }
        let pushed: CertifiedState =
            wire::decode(body, "certified state").map_err(|_| "malformed")?;
        let cert: fed_pbft::CheckpointCert = wire::decode(&pushed.cert, "checkpoint certificate")
            .map_err(|_| "malformed certificate")?;
        // Revocations only grow: a state at or below one already taken adds
        // nothing, and is not checked again (a voter replaying one in a loop
        // costs a decode, not signatures and hashes).
        if cert.seq <= c.certified_taken {
            return Ok(());
        }
        let app = fed_pbft::certified_app_state(&c.cur().membership, &cert, &pushed.state)
            .map_err(|_| "does not verify")?;
        let mut ledger = Ledger::default();
        fed_pbft::Application::restore(&mut ledger, &app).map_err(|_| "not a ledger")?;
        if let Some(c) = self.commit.as_mut() {
            c.certified_taken = cert.seq;
        }
        self.apply_ledger_revocations(&ledger, now);
        Ok(())
    }

    /// Enforces every revocation of `ledger` (those already enforced change
    /// nothing).
    pub(super) fn apply_ledger_revocations(&mut self, ledger: &Ledger, now: u64) {
        let tokens: Vec<[u8; 32]> = ledger.revoked_tokens.iter().copied().collect();
        let members: Vec<[u8; 32]> = ledger.revoked_members.iter().copied().collect();
        for t in tokens {
            self.apply_revocation(Revocation::Token(t), now);
        }
        for m in members {
            self.apply_revocation(Revocation::Member(NodeId(m)), now);
        }
    }

    /// Every session with `node` ended: its slots' keys leave the replica's
    /// table (its replicated client records stay), so that nodes that come
    /// and go do not fill it. They are registered again at its next session.
    pub(super) fn commit_peer_gone(&mut self, node: NodeId) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        let Some(r) = c.replica.as_mut() else {
            return;
        };
        for s in 0..MAX_CLIENT_SLOTS {
            let id = client_id(&node, s);
            r.remove_client(&id);
            c.clients.remove(&id);
        }
    }

    /// A request on `/exo-fed/pbft/2`.
    pub(super) fn on_pbft_request(
        &mut self,
        peer: PeerId,
        id: InboundId,
        plaintext: &[u8],
        now: u64,
    ) {
        let Ok((kind, body)) = wire::open_envelope(plaintext) else {
            self.malformed_request(id, now);
            return;
        };
        match kind {
            Kind::Pbft => {
                let Ok(messages) = wire::decode::<Vec<serde_bytes::ByteBuf>>(body, "pbft messages")
                else {
                    self.malformed_request(id, now);
                    return;
                };
                self.respond_sealed(id, Kind::PbftAck, &[]);
                // One drain for the whole envelope: its writes in one group
                // (one fsync), its messages in one envelope per peer.
                if let Some(c) = self.commit.as_mut() {
                    c.defer_drain = true;
                }
                for m in &messages {
                    self.pbft_deliver(Some(peer), m, now);
                }
                if let Some(c) = self.commit.as_mut() {
                    c.defer_drain = false;
                }
                self.drain_replica(now);
                self.flush_outbox(now);
            }
            Kind::EpochChain => {
                self.respond_sealed(id, Kind::PbftAck, &[]);
                if let Err(e) = self.on_epoch_chain(peer, body, now) {
                    tracing::warn!(%peer, error = %e, "an epoch chain refused");
                    self.stats.pbft_rejected += 1;
                }
            }
            Kind::CertifiedState => {
                self.respond_sealed(id, Kind::PbftAck, &[]);
                if self.is_voter_peer(&peer)
                    && let Err(reason) = self.on_certified_state(body, now)
                {
                    tracing::warn!(%peer, reason, "a certified state refused");
                    self.stats.pbft_rejected += 1;
                }
            }
            Kind::ProofPush => {
                let Ok(push) = wire::decode::<ProofResponse>(body, "proof push") else {
                    self.malformed_request(id, now);
                    return;
                };
                self.respond_sealed(id, Kind::PbftAck, &[]);
                if self.is_voter_peer(&peer)
                    && let Some((proof, batch)) = push.found
                {
                    self.on_proof_push(&proof, batch.into_vec(), now);
                }
            }
            Kind::ProofRequest => {
                let Ok(request) = wire::decode::<ProofRequest>(body, "proof request") else {
                    self.malformed_request(id, now);
                    return;
                };
                let found = self.commit.as_ref().and_then(|c| {
                    let seq = c
                        .by_request
                        .get(&(ClientId(request.client), request.timestamp))?;
                    let (proof, batch, ..) = c.recent.get(seq)?;
                    let mut proof = proof.clone();
                    if c.config.byzantine_votes
                        && let Some((_, sig)) = proof.signatures.first_mut()
                    {
                        // The Byzantine hook lies about proofs too.
                        sig.0[0] ^= 1;
                    }
                    Some((
                        serde_bytes::ByteBuf::from(proof.to_bytes()),
                        serde_bytes::ByteBuf::from(batch.to_vec()),
                    ))
                });
                let response = ProofResponse { found };
                self.respond_sealed(id, Kind::ProofResponse, &wire::encode(&response));
            }
            _ => self.malformed_request(id, now),
        }
    }

    /// The answer to a message on `/exo-fed/pbft/2`.
    pub(super) fn on_pbft_response(&mut self, purpose: &Purpose, plaintext: &[u8], now: u64) {
        let Purpose::Proof(slot, timestamp) = *purpose else {
            return;
        };
        let response =
            wire::decode_body::<ProofResponse>(plaintext, Kind::ProofResponse, "proof response");
        let i = usize::from(slot);
        let current = self
            .commit
            .as_ref()
            .and_then(|c| c.slots.get(i))
            .and_then(|s| s.busy.as_ref())
            .is_some_and(|f| f.timestamp == timestamp && f.proof.is_some());
        if !current {
            return;
        }
        if let Ok(ProofResponse {
            found: Some((proof, batch)),
        }) = response
        {
            // Taken as a push is: checked, remembered, and every slot of
            // this node waiting for that batch finished with it, not only
            // this one (the requests of a voter whose replica lags would
            // otherwise fetch the batch once each).
            self.on_proof_push(&proof, batch.into_vec(), now);
            let finished = self
                .commit
                .as_ref()
                .and_then(|c| c.slots.get(i))
                .and_then(|s| s.busy.as_ref())
                .is_none_or(|f| f.timestamp != timestamp);
            if finished {
                return;
            }
        }
        // Not found, or it did not verify: the next replica, at once.
        self.retry_proof(i, now);
    }

    /// A proof request failed: ask the next replica.
    pub(super) fn on_pbft_failed(&mut self, purpose: &Purpose, _failure: Failure, now: u64) {
        if let Purpose::Proof(slot, _) = *purpose {
            self.retry_proof(usize::from(slot), now);
        }
    }

    fn retry_proof(&mut self, i: usize, now: u64) {
        if let Some(h) = self
            .commit
            .as_mut()
            .and_then(|c| c.slots.get_mut(i))
            .and_then(|s| s.busy.as_mut())
            .and_then(|f| f.proof.as_mut())
        {
            h.waiting = false;
            h.next_at = now;
        } else {
            return;
        }
        self.hunt_proof(i, now);
    }
}

/// Serde of a shared byte string as bytes (postcard: a length, then the bytes,
/// as `serde_bytes` writes a `Vec<u8>`).
mod shared_bytes {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &Arc<[u8]>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[u8]>, D::Error> {
        serde_bytes::ByteBuf::deserialize(d).map(|b| Arc::from(b.into_vec()))
    }
}

/// What an executed batch did, as `ledger` (the replica's, after it) shows:
/// its updates, in order, and the revocations the ledger took. A batch after
/// the epoch's end did nothing (every operation answered `0x03`, submitted
/// again in the next epoch).
pub(crate) fn batch_effects(
    x: &fed_pbft::Executed,
    ledger: Option<&Ledger>,
) -> (Vec<(ClientId, u64, StateUpdate)>, Vec<Revocation>) {
    let mut updates = Vec::with_capacity(x.requests.len());
    let mut revocations = Vec::new();
    if ledger.and_then(|l| l.end).is_some_and(|end| x.seq > end) {
        return (updates, revocations);
    }
    let requests = decode_batch(&x.batch).unwrap_or_default();
    // Found by id, not by a scan per request; the first request with an id
    // is the one that counts, as for the replica.
    let mut by_id = std::collections::HashMap::with_capacity(requests.len());
    for r in &requests {
        by_id.entry(r.id()).or_insert(r);
    }
    for id in &x.requests {
        let Some(r) = by_id.get(id) else {
            continue;
        };
        match decode_operation(&r.operation) {
            Some(Operation::Update(u)) => updates.push((r.client, r.timestamp, u)),
            Some(op) => {
                // As the ledger decided: its revoked sets hold the ones it took.
                if let (Some(rv), Some(ledger)) = (revocation_of(&op), ledger) {
                    let taken = match rv {
                        Revocation::Token(t) => ledger.revoked_tokens.contains(&t),
                        Revocation::Member(m) => ledger.revoked_members.contains(&m.0),
                    };
                    if taken {
                        revocations.push(rv);
                    }
                }
            }
            None => {}
        }
    }
    (updates, revocations)
}

/// Whether fed-pbft refused an input as one of another membership would be
/// refused (a MAC or signature under another membership id, an authenticator
/// of another size, an index not in this one): its sender may be in an older
/// configuration epoch.
fn of_another_membership(e: &fed_pbft::Error) -> bool {
    matches!(
        e,
        fed_pbft::Error::BadRequestAuth
            | fed_pbft::Error::BadSignature(_)
            | fed_pbft::Error::NotMember(_)
            | fed_pbft::Error::Malformed(_)
    )
}

/// A kind-12 envelope with an executed batch and its proof.
fn proof_push(x: &fed_pbft::Executed) -> Vec<u8> {
    wire::envelope(
        Kind::ProofPush,
        &wire::encode(&ProofResponse {
            found: Some((
                serde_bytes::ByteBuf::from(x.proof.to_bytes()),
                serde_bytes::ByteBuf::from(x.batch.to_vec()),
            )),
        }),
    )
}

fn revocation_of(op: &Operation) -> Option<Revocation> {
    match op {
        Operation::RevokeMember(node) => Some(Revocation::Member(NodeId(*node))),
        Operation::RevokeToken(id) => Some(Revocation::Token(*id)),
        Operation::Update(_)
        | Operation::AddVoter(_)
        | Operation::RemoveVoter(_)
        | Operation::Tick => None,
    }
}

/// The Byzantine test hook: a PREPARE or COMMIT re-signed for another digest.
fn forge_vote(identity: &fed_crypto::Identity, m: &Membership, bytes: &[u8]) -> Option<Vec<u8>> {
    let flip = |d: [u8; 32]| hash(labels::COMMIT_LEDGER, &[&d, b"forged"]);
    match Message::decode(bytes).ok()? {
        Message::Prepare(p) => {
            let forged =
                fed_pbft::Prepare::new(identity, m, p.view, p.seq, flip(p.digest), p.replica)
                    .ok()?;
            Message::Prepare(forged).encode().ok()
        }
        Message::Commit(c) => {
            let forged =
                fed_pbft::Commit::new(identity, m, c.view, c.seq, flip(c.digest), c.replica)
                    .ok()?;
            Message::Commit(forged).encode().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use fed_crypto::Identity;

    use super::*;

    fn membership() -> Membership {
        Membership::new(
            (1..=4u8)
                .map(|i| Identity::from_seeds(&[i; 32], None).public().clone())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn the_ledger_chains_authorised_operations_and_round_trips() {
        let m = membership();
        let voter = client_id(&m.members()[2].node_id(), 7);
        let outsider = client_id(&NodeId([9; 32]), 0);
        let mut l = Ledger::genesis(&m, 4, 0);
        let revoke = encode_operation(&Operation::RevokeMember([5; 32]));
        assert_eq!(l.execute(&outsider, &revoke), vec![2], "only voters revoke");
        assert_eq!((l.count, l.revoked_members.len()), (0, 0));
        assert_eq!(l.execute(&outsider, b"\xff garbage"), vec![1]);
        let update = encode_operation(&Operation::Update(StateUpdate::Opaque {
            kind: "k".into(),
            bytes: vec![1],
        }));
        assert_eq!(l.execute(&outsider, &update)[..1], [0]);
        assert_eq!(l.execute(&voter, &revoke)[1..], 1u64.to_be_bytes());
        let token = encode_operation(&Operation::RevokeToken([6; 32]));
        l.execute(&voter, &token);
        assert_eq!(l.count, 3);
        assert!(l.revoked_members.contains(&[5; 32]) && l.revoked_tokens.contains(&[6; 32]));
        let snap = l.snapshot();
        let mut back = Ledger::genesis(&m, 4, 0);
        back.restore(&snap).unwrap();
        assert_eq!(back, l);
        assert!(back.restore(&snap[..39]).is_err());
        assert!(back.restore(&[snap.as_slice(), &[0]].concat()).is_err());
        // Two members out of order is not a snapshot this code writes.
        let mut l2 = Ledger::genesis(&m, 4, 0);
        l2.execute(&voter, &encode_operation(&Operation::RevokeMember([7; 32])));
        let mut bad = l2.snapshot()[..40].to_vec();
        bad.extend_from_slice(&wire::encode(&LedgerState {
            tokens: vec![],
            members: vec![[7; 32], [5; 32]],
            epoch: 0,
            voters: l2.voters.clone(),
            proposals: Vec::new(),
            next: None,
            end: None,
        }));
        assert!(Ledger::genesis(&m, 4, 0).restore(&bad).is_err());
        // A voting member cannot be revoked, even by a voter.
        let voter_node = m.members()[0].node_id().0;
        let before = l.clone();
        let revoke_voter = encode_operation(&Operation::RevokeMember(voter_node));
        assert_eq!(l.execute(&voter, &revoke_voter), vec![2]);
        assert_eq!(l, before);
    }

    #[test]
    fn revocations_stop_at_the_cap() {
        let m = membership();
        let voter = client_id(&m.members()[1].node_id(), 0);
        let mut l = Ledger::genesis(&m, 4, 0);
        for i in 0..MAX_REVOCATIONS as u64 {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_be_bytes());
            l.revoked_tokens.insert(id);
        }
        let op = encode_operation(&Operation::RevokeToken([0xff; 32]));
        assert_eq!(l.execute(&voter, &op), vec![2]);
        assert_eq!(l.revoked_tokens.len(), MAX_REVOCATIONS);
    }

    fn voter(seed: u8) -> Voter {
        Voter::new(
            Identity::from_seeds(&[seed; 32], None).public(),
            &["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
        )
    }

    /// A client checks a batch's proof once for all its receipts, and never
    /// takes another proof of the same batch on that account: a forged one
    /// is refused after the genuine one was checked.
    /// The proof index against a table of every entry: whatever the order
    /// requests are added in (pushed batches arrive out of order), a request
    /// is found at the position added last for it that was not forgotten, and
    /// a client with no entry left takes no room.
    #[test]
    fn the_proof_index_finds_what_was_added_last() {
        use rand_chacha::{
            ChaCha8Rng,
            rand_core::{Rng, SeedableRng},
        };
        for seed in 0..200u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut index = ProofIndex::default();
            // Every live entry, in the order added.
            let mut model: Vec<((ClientId, u64), Position)> = Vec::new();
            for _ in 0..60 {
                let key = (
                    ClientId([(rng.next_u32() % 3) as u8; 32]),
                    u64::from(rng.next_u32() % 8),
                );
                let at = (0, u64::from(rng.next_u32() % 5));
                match rng.next_u32() % 4 {
                    0 | 1 => {
                        index.insert(key, at);
                        model.push((key, at));
                    }
                    2 => {
                        index.forget(&key, at);
                        if let Some(i) = model.iter().position(|e| *e == (key, at)) {
                            model.remove(i);
                        }
                    }
                    _ => {
                        index.remove(&key);
                        model.retain(|(k, _)| *k != key);
                    }
                }
                for c in 0..3u8 {
                    for ts in 0..8 {
                        let key = (ClientId([c; 32]), ts);
                        let want = model.iter().rev().find(|(k, _)| *k == key).map(|e| &e.1);
                        assert_eq!(index.get(&key), want, "seed {seed}: {key:?}");
                    }
                }
                let clients: std::collections::HashSet<_> =
                    model.iter().map(|((c, _), _)| *c).collect();
                assert_eq!(index.0.len(), clients.len(), "seed {seed}");
            }
        }
    }

    #[test]
    fn a_checked_proof_vouches_for_itself_only() {
        use fed_pbft::{ClientKeys, Config, Event, Message, Replica};
        let id = Arc::new(Identity::from_seeds(&[9; 32], None));
        let m = Arc::new(Membership::new(vec![id.public().clone()]).unwrap());
        let mut config = Config::default();
        config.max_batch_requests = 1;
        let mut r =
            Replica::new(id.clone(), m.clone(), config, Ledger::genesis(&m, 64, 0), 0).unwrap();
        let client = client_id(&id.node_id(), 0);
        let key = ClientKey::new(&[3; 32]);
        let keys = ClientKeys::new(&m, client, std::slice::from_ref(&key)).unwrap();
        r.add_client(client, key).unwrap();
        let op = encode_operation(&Operation::Update(StateUpdate::Opaque {
            kind: "k".into(),
            bytes: vec![1],
        }));
        r.handle_request(&Message::Request(keys.request(1, op)).encode().unwrap(), 1)
            .unwrap();
        let mut executed = None;
        while let Some(e) = r.poll_event() {
            if let Event::Executed(x) = e {
                executed = Some(x);
            }
        }
        let x = executed.unwrap();
        let mut checked = CheckedBatches::default();
        assert_eq!(checked.check(&m, &x.proof, &x.batch).unwrap().len(), 1);
        let mut forged = x.proof.clone();
        forged.signatures[0].1.0[0] ^= 1;
        assert!(
            checked.check(&m, &forged, &x.batch).is_err(),
            "a forged proof taken on the genuine one's account"
        );
        assert!(checked.check(&m, &x.proof, &x.batch).is_ok());
        assert_eq!(checked.verified(), 2, "the genuine proof checked once");
        // A pushed batch, decoded by its receiver: checked once, and its
        // receipts (another copy of its bytes) not again; a forged proof of
        // it still refused.
        let mut pushed = CheckedBatches::default();
        let copy: Arc<[u8]> = Arc::from(x.batch.to_vec());
        let requests = decode_batch(&x.batch).unwrap();
        assert!(
            pushed
                .check_decoded(&m, &forged, &copy, requests.clone())
                .is_err()
        );
        assert!(pushed.check_decoded(&m, &x.proof, &copy, requests).is_ok());
        assert_eq!(pushed.check(&m, &x.proof, &x.batch).unwrap().len(), 1);
        assert!(pushed.check(&m, &forged, &x.batch).is_err());
        assert_eq!(
            pushed.verified(),
            3,
            "the forged proof checked twice, the genuine one once"
        );
        // This node's replica's proof: decoded, not verified, and then
        // remembered as checked for its bytes alone.
        let mut own = CheckedBatches::default();
        assert_eq!(own.check_own(&m, &x.proof, &x.batch).unwrap().len(), 1);
        assert_eq!(own.check(&m, &x.proof, &copy).unwrap().len(), 1);
        assert_eq!(own.verified(), 0);
        assert!(own.check(&m, &forged, &x.batch).is_err());
        // Against another membership, the own proof is checked, and fails:
        // it says nothing of that membership's quorum.
        let other = membership();
        let mut elsewhere = CheckedBatches::default();
        assert!(elsewhere.check_own(&other, &x.proof, &x.batch).is_err());
        assert_eq!(elsewhere.verified(), 1);
    }

    /// A voter that floods proposals nobody else wants blocks no one, itself
    /// included: it holds at most its share, and the others' change passes.
    #[test]
    fn one_voter_cannot_block_the_others_proposals() {
        let m = membership();
        let slot = |i: usize| client_id(&m.members()[i].node_id(), 0);
        let add = |seed: u8| encode_operation(&Operation::AddVoter(voter(seed)));
        let mut l = Ledger::genesis(&m, 4, 0);
        l.begin_batch(1);
        for seed in 10..10 + MAX_PROPOSALS_PER_VOTER as u8 {
            assert_eq!(l.execute(&slot(0), &add(seed))[..1], [0]);
        }
        assert_eq!(l.proposals.len(), MAX_PROPOSALS_PER_VOTER);
        // Over its share, its oldest approval is withdrawn: it is never
        // locked out by its own stale proposals.
        assert_eq!(l.execute(&slot(0), &add(20))[..1], [0]);
        assert_eq!(l.proposals.len(), MAX_PROPOSALS_PER_VOTER);
        assert!(
            !l.proposals
                .iter()
                .any(|p| p.change == Change::Add(voter(10)))
        );
        for i in 1..3 {
            assert_eq!(l.execute(&slot(i), &add(20))[..1], [0]);
        }
        assert_eq!(
            l.next.as_ref().map(Vec::len),
            Some(5),
            "the others' change passed"
        );
        let mut back = Ledger::genesis(&m, 4, 0);
        back.restore(&l.snapshot()).unwrap();
        assert_eq!(back.proposals, l.proposals);
    }

    /// A membership change takes effect once a quorum of the epoch's voters
    /// (3 of 4) proposed it, not before, whoever repeats it; then it records
    /// the next epoch's voters and ends the epoch at the next checkpoint, and
    /// everything after the end is a no-op. The rules refuse what would make
    /// an invalid or oversized membership.
    #[test]
    fn membership_changes_need_a_quorum_and_end_the_epoch_at_the_next_checkpoint() {
        let m = membership();
        let slot = |i: usize, s: u16| client_id(&m.members()[i].node_id(), s);
        let outsider = client_id(&NodeId([9; 32]), 0);
        let mut l = Ledger::genesis(&m, 4, 0);
        l.begin_batch(5);
        let add = encode_operation(&Operation::AddVoter(voter(5)));
        assert_eq!(l.execute(&outsider, &add), vec![2], "only voters propose");
        // One voter, even from several slots, and then a second: no change.
        for client in [slot(1, 3), slot(1, 4), slot(2, 0)] {
            assert_eq!(l.execute(&client, &add)[..1], [0]);
            assert_eq!(
                (l.next.clone(), l.end),
                (None, None),
                "changed without a quorum"
            );
        }
        assert_eq!(l.proposals.len(), 1);
        assert_eq!(l.proposals[0].approvals.len(), 2);
        // The third voter makes the quorum, in batch 6: the epoch ends at 8.
        l.begin_batch(6);
        assert_eq!(l.execute(&slot(3, 0), &add)[..1], [0]);
        assert_eq!(l.end, Some(8), "the first checkpoint at or after batch 6");
        assert_eq!(l.next.as_ref().map(Vec::len), Some(5));
        assert!(l.proposals.is_empty());
        // The same voter again, an oversized address, the revocation of a voter
        // to be: refused, nothing changes.
        let before = l.clone();
        assert_eq!(l.execute(&slot(0, 0), &add), vec![2]);
        let mut bad_addr = voter(6);
        bad_addr.addresses = vec![serde_bytes::ByteBuf::from(vec![0; 257])];
        assert_eq!(
            l.execute(
                &slot(0, 0),
                &encode_operation(&Operation::AddVoter(bad_addr))
            ),
            vec![2]
        );
        let new_node = Identity::from_seeds(&[5; 32], None).node_id().0;
        assert_eq!(
            l.execute(
                &slot(0, 0),
                &encode_operation(&Operation::RevokeMember(new_node))
            ),
            vec![2]
        );
        assert_eq!(l, before);
        // A revoked member does not become a voter.
        let six = Identity::from_seeds(&[6; 32], None).node_id().0;
        l.execute(
            &slot(0, 0),
            &encode_operation(&Operation::RevokeMember(six)),
        );
        let revoked = Voter::new(Identity::from_seeds(&[6; 32], None).public(), &[]);
        assert_eq!(
            l.execute(
                &slot(0, 0),
                &encode_operation(&Operation::AddVoter(revoked))
            ),
            vec![2]
        );
        // A second change in the epoch applies to the next voters, same end.
        l.begin_batch(7);
        let remove = encode_operation(&Operation::RemoveVoter(m.members()[0].node_id().0));
        for i in 0..3 {
            assert_eq!(l.execute(&slot(i, 1), &remove)[..1], [0]);
        }
        assert_eq!((l.end, l.next.as_ref().map(Vec::len)), (Some(8), Some(4)));
        let not_voter = encode_operation(&Operation::RemoveVoter([7; 32]));
        assert_eq!(l.execute(&slot(1, 0), &not_voter), vec![2]);
        // A pending proposal, and the rest, survive a snapshot.
        let add7 = encode_operation(&Operation::AddVoter(voter(7)));
        l.execute(&slot(2, 2), &add7);
        let mut back = Ledger::genesis(&m, 4, 0);
        back.restore(&l.snapshot()).unwrap();
        assert_eq!(
            (&back.next, back.end, &back.proposals),
            (&l.next, l.end, &l.proposals)
        );
        // After the end, every operation is a no-op answering [3].
        l.begin_batch(9);
        let count = l.count;
        let update = encode_operation(&Operation::Update(StateUpdate::Opaque {
            kind: "k".into(),
            bytes: vec![2],
        }));
        assert_eq!(l.execute(&outsider, &update), vec![3]);
        assert_eq!(l.execute(&slot(1, 0), &add7), vec![3]);
        assert_eq!(l.count, count);
        // The next epoch: its voters, the chain and revocations carried over,
        // the unapproved proposal dropped.
        let next = l.next_epoch().unwrap();
        assert_eq!(next.epoch, 1);
        assert_eq!(next.voters, l.next.clone().unwrap());
        assert_eq!((next.count, next.head), (l.count, l.head));
        assert!(next.proposals.is_empty() && next.next.is_none() && next.end.is_none());
        // No more voters than fed-pbft's parameters allow.
        let mut capped = Ledger::genesis(&m, 4, 4);
        assert_eq!(capped.execute(&slot(0, 0), &add), vec![2]);
        // The last voter cannot be removed.
        let single = Membership::new(vec![m.members()[0].clone()]).unwrap();
        let mut alone = Ledger::genesis(&single, 4, 0);
        let remove_self = encode_operation(&Operation::RemoveVoter(m.members()[0].node_id().0));
        assert_eq!(alone.execute(&slot(0, 0), &remove_self), vec![2]);
    }
}
