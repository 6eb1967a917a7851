//! The sans-IO PBFT replica.
//!
//! This module holds the [`Replica`] struct, its construction and recovery, its
//! getters, the `handle_*` inputs that dispatch to the protocol's phases, the
//! `poll_*` outputs and the timers. Each phase implements its part of `Replica` in
//! a submodule, following docs/protocol/pbft.md: [`normal`] (§4), [`checkpoint`]
//! (§6 and §8) and [`view_change`] (§7).

mod checkpoint;
mod normal;
mod view_change;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

use fed_crypto::Identity;
use serde::{Deserialize, Serialize};

use crate::{
    app::Application,
    client::{BoundKey, ClientKey},
    config::Config,
    error::{Error, Result},
    labels,
    membership::{Membership, ReplicaIndex},
    message::{
        ClientId, Commit, Digest, Fetch, Message, NULL_BATCH, Outcome, PrePrepare, Prepare, Reply,
        Request, RequestId, SigCache, ViewChange, batch_digest,
    },
    proof::{CheckpointCert, CommitProof, PreparedCert},
    storage::{DurableState, Persist},
    wire::{self, Signature},
};

/// A message to send: `payload` to replica `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination replica.
    pub to: ReplicaIndex,
    /// The encoded message (shared between the copies of a broadcast).
    pub payload: Arc<[u8]>,
}

/// A batch the replica executed, with its commit proof.
///
/// This is what a host archives (pbft.md §10): `proof` and `batch` together let
/// anyone holding the membership check, offline and at any later time, that this
/// batch is the one every correct replica executed at `seq`
/// ([`CommitProof::verify_batch`]). The replica keeps them only until the next
/// stable checkpoint ([`Replica::commit_proof`]); so does [`DurableState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// Sequence number.
    pub seq: u64,
    /// View of its commit proof.
    pub view: u64,
    /// Batch digest.
    pub digest: Digest,
    /// The requests executed, in order (retransmissions and refused requests left out).
    pub requests: Vec<RequestId>,
    /// The commit proof: a quorum of COMMIT signatures.
    pub proof: CommitProof,
    /// The encoded batch, as ordered and hashed: `proof.digest` is its digest.
    pub batch: Arc<[u8]>,
}

/// What a replica reports through [`Replica::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A batch was executed (in sequence order, each sequence number once per
    /// replica state; a restarted replica re-executes from its last checkpoint).
    Executed(Executed),
    /// A reply for a client; send [`Reply::to_bytes`] to it.
    Reply(Reply),
    /// A new view was installed.
    ViewChanged {
        /// The view.
        view: u64,
        /// Its primary.
        primary: ReplicaIndex,
    },
    /// A checkpoint became stable; the log below it was discarded.
    StableCheckpoint {
        /// Sequence number.
        seq: u64,
        /// State digest.
        state: Digest,
    },
    /// The replica was behind and installed a certified state from a peer.
    StateTransferred {
        /// Sequence number of the installed state.
        seq: u64,
        /// Its digest.
        state: Digest,
    },
}

/// The replicated per-client record: latest executed timestamp and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    timestamp: u64,
    outcome: Outcome,
}

/// What a replica knows of one client: the key they share (local configuration,
/// from [`Replica::add_client`]) and the client's replicated record. One table for
/// both, so that executing a request and answering it takes one lookup.
#[derive(Debug, Default)]
struct ClientEntry {
    key: Option<BoundKey>,
    record: Option<ClientRecord>,
}

/// The state a checkpoint certifies and a state transfer moves.
#[derive(Serialize, Deserialize)]
struct ReplicaSnapshot {
    #[serde(with = "wire::bytes")]
    app: Vec<u8>,
    clients: Vec<(ClientId, ClientRecord)>,
}

/// `hash(STATE, [be64(seq), snapshot])`.
pub(crate) fn state_digest(seq: u64, snapshot: &[u8]) -> Digest {
    fed_crypto::hash(labels::STATE, &[&seq.to_be_bytes(), snapshot])
}

/// A replicated state a checkpoint certificate vouches for, taken apart
/// ([`certified_state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertifiedState {
    /// The application's snapshot ([`Application::snapshot`]).
    pub app: Vec<u8>,
    /// The replicated client table: each client's latest executed timestamp
    /// and its outcome, in the snapshot's order.
    pub clients: Vec<(ClientId, u64, Outcome)>,
}

/// Checks a certified replicated state, as a node that does not replicate it
/// receives one: `cert` is a stable checkpoint above sequence 0 signed by a
/// quorum of `membership`, and `snapshot` (the replica state, pbft.md §6) hashes
/// to its state digest and decodes. Returns the application's snapshot within it.
///
/// The initial checkpoint is refused: it is stable by definition, without
/// signatures, so it would vouch for any bytes.
pub fn certified_app_state(
    membership: &Membership,
    cert: &CheckpointCert,
    snapshot: &[u8],
) -> Result<Vec<u8>> {
    certified_state(membership, cert, snapshot).map(|s| s.app)
}

/// [`certified_app_state`], with the replicated client table too: who had
/// which request executed by the certified sequence number, and with what
/// outcome (a client that outlives a configuration reads there whether its
/// outstanding request executed).
pub fn certified_state(
    membership: &Membership,
    cert: &CheckpointCert,
    snapshot: &[u8],
) -> Result<CertifiedState> {
    if cert.seq == 0 {
        return Err(Error::InvalidCertificate(
            "the initial checkpoint certifies no state",
        ));
    }
    cert.verify(membership)?;
    if state_digest(cert.seq, snapshot) != cert.state {
        return Err(Error::InvalidCertificate(
            "the state does not hash to the certificate's digest",
        ));
    }
    let snap: ReplicaSnapshot = wire::decode(snapshot, "snapshot")?;
    Ok(CertifiedState {
        app: snap.app,
        clients: snap
            .clients
            .into_iter()
            .map(|(id, r)| (id, r.timestamp, r.outcome))
            .collect(),
    })
}

/// Which vote table of a [`Slot`] a PREPARE or COMMIT goes to.
#[derive(Clone, Copy)]
enum Phase {
    Prepare,
    Commit,
}

/// The signed fields of a PREPARE or COMMIT.
struct Vote {
    replica: ReplicaIndex,
    view: u64,
    seq: u64,
    digest: Digest,
}

/// A PREPARE or COMMIT held in a slot.
#[derive(Debug, Clone, Copy)]
struct Held {
    digest: Digest,
    signature: Signature,
    /// Whether the signature was checked. Only checked votes count towards a
    /// quorum or enter a certificate; a vote that arrives once its phase is
    /// complete in its view is kept unchecked, for the repeat and equivocation
    /// rules only.
    verified: bool,
}

impl Held {
    fn own(digest: Digest, signature: Signature) -> Self {
        Self {
            digest,
            signature,
            verified: true,
        }
    }
}

/// One sequence number's protocol state.
#[derive(Debug, Default)]
struct Slot {
    /// View of `pre_prepare` and of the votes below.
    view: u64,
    pre_prepare: Option<(Digest, Signature)>,
    batch: Option<(Digest, Arc<[u8]>)>,
    requests: Option<Arc<Vec<Request>>>,
    authenticated: bool,
    prepares: BTreeMap<ReplicaIndex, Held>,
    commits: BTreeMap<ReplicaIndex, Held>,
    sent_prepare: bool,
    sent_commit: bool,
    /// Highest-view prepared certificate (may be of an older view).
    prepared: Option<PreparedCert>,
    /// The batch of `prepared`, when held. Kept when a later view's pre-prepare or
    /// a null entry replaces `batch`: a later NEW-VIEW may select this certificate,
    /// and then this copy may be the only one left to execute or serve.
    prepared_batch: Option<(Digest, Arc<[u8]>)>,
    committed: Option<CommitProof>,
    persisted_commit: bool,
    /// Own messages of `view` for this slot, for retransmission.
    own: Vec<Arc<[u8]>>,
}

impl Slot {
    fn votes(&self, phase: Phase) -> &BTreeMap<ReplicaIndex, Held> {
        match phase {
            Phase::Prepare => &self.prepares,
            Phase::Commit => &self.commits,
        }
    }

    fn votes_mut(&mut self, phase: Phase) -> &mut BTreeMap<ReplicaIndex, Held> {
        match phase {
            Phase::Prepare => &mut self.prepares,
            Phase::Commit => &mut self.commits,
        }
    }

    /// Forgets the votes of older views (keeps the batch, certificates and proof).
    fn enter_view(&mut self, view: u64) {
        if self.view != view {
            self.view = view;
            self.pre_prepare = None;
            self.authenticated = false;
            self.prepares.clear();
            self.commits.clear();
            self.sent_prepare = false;
            self.sent_commit = false;
            self.own.clear();
        }
    }

    fn batch_for(&self, digest: &Digest) -> Option<Arc<[u8]>> {
        match (&self.batch, &self.prepared_batch) {
            (Some((d, b)), _) | (_, Some((d, b))) if d == digest => Some(b.clone()),
            _ if *digest == batch_digest(NULL_BATCH) => Some(Arc::from(NULL_BATCH)),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Pending {
    request: Request,
    order: u64,
    /// Put in a batch by this replica as primary of the current view.
    proposed: bool,
}

#[derive(Debug)]
struct Transfer {
    target: CheckpointCert,
    /// A repair: the replica executed up to `target` but holds another state (its
    /// own checkpoint there is missing or differs). It executes nothing until the
    /// certified state replaces its own.
    repair: bool,
    cursor: usize,
    bad: u64,
    deadline: u64,
}

/// A PBFT replica: a pure state machine, driven by `handle_*` calls and drained
/// through `poll_*` calls.
///
/// # Driving it
///
/// Feed it messages from other replicas ([`handle_message`](Self::handle_message)),
/// client requests ([`handle_request`](Self::handle_request)) and timeouts
/// ([`handle_timeout`](Self::handle_timeout)), each with the current time. After
/// every call, drain the outputs **in this order**:
///
/// 1. [`poll_persist`](Self::poll_persist) until `None`, and make every write
///    durable ([`Storage::persist`](crate::Storage::persist));
/// 2. [`poll_transmit`](Self::poll_transmit) until `None`, sending each message;
/// 3. [`poll_event`](Self::poll_event) until `None` (executed batches, replies to
///    forward to clients, view changes, checkpoints);
/// 4. [`poll_timeout`](Self::poll_timeout): call `handle_timeout` at that time.
///
/// Writes come before the messages that depend on them, so sending a transmit only
/// after every earlier write is durable is what makes a restarted replica
/// ([`recover`](Self::recover)) unable to forget or contradict its votes.
///
/// # Bounds
///
/// - Log: at most `window` slots (sequence numbers in `(low, low + window]`), each
///   with at most one batch (`max_batch_bytes`) and `2n` votes.
/// - Checkpoint votes: `window / K` sequence numbers × `n`, plus one far-ahead
///   checkpoint per replica; own snapshots: `window / K + 1`.
/// - Requests waiting: `max_pending_requests`; client keys and the replicated
///   client table: `max_clients` each.
/// - View change: the latest VIEW-CHANGE of each replica (`n`).
/// - Signature cache: `signature_cache` entries.
/// - Output queues hold what one call produced when drained after every call: at
///   most about `window × n` transmits (a NEW-VIEW's prepares), `window` writes,
///   and `window × (max_batch_requests + 1)` events. Transmits beyond
///   `(window + max_fetch_entries + 8) × n` are dropped (the peers recover them
///   by retransmission); writes and events are never dropped.
/// - Answers to fetches and state requests: at most one per peer per
///   `retransmit_ms`, `max_fetch_entries` batches each.
pub struct Replica<A: Application> {
    identity: Arc<Identity>,
    me: ReplicaIndex,
    m: Arc<Membership>,
    config: Config,
    app: A,

    view: u64,
    active: bool,
    attempts: u32,
    view_entered: u64,

    stable: CheckpointCert,
    log: BTreeMap<u64, Slot>,
    last_executed: u64,
    next_seq: u64,
    highest_seen: u64,
    /// The latest `Reserve` asked for, `(view, upto)`: PRE-PREPAREs and PREPAREs
    /// in `view` up to `upto` may leave before their `PrePrepare` is durable.
    reserved: (u64, u64),
    /// The reservation this replica recovered, `(view, upto)`: in `view` it may
    /// have sent, for a sequence number up to `upto`, a PRE-PREPARE or PREPARE
    /// whose write it lost, so it sends none there (pbft.md §5).
    silent: (u64, u64),

    own_checkpoints: BTreeMap<u64, (Digest, Arc<[u8]>)>,
    checkpoint_votes: BTreeMap<u64, BTreeMap<ReplicaIndex, (Digest, Signature)>>,
    far_checkpoints: Vec<Option<(u64, Digest, Signature)>>,
    own_checkpoint_msg: Option<Arc<[u8]>>,

    /// Keys and records; an entry has at least one of them.
    clients: HashMap<ClientId, ClientEntry>,
    /// Entries with a key, at most `max_clients`.
    keyed: usize,
    /// Entries with a record, at most `max_clients`.
    recorded: usize,
    pending: HashMap<RequestId, Pending>,
    /// Pending requests by arrival order: the request and when it arrived.
    pending_order: BTreeMap<u64, (RequestId, u64)>,
    arrivals: u64,
    queue: VecDeque<RequestId>,
    batch_deadline: Option<u64>,

    last_progress: u64,
    /// Since when a pre-prepared batch of this view has been waiting to
    /// execute (None: none waits, or no view is installed). The waiting timer counts from the later of
    /// this and `last_progress`: after an idle spell, from the new batch.
    waiting_since: Option<u64>,
    request_timer: Option<u64>,
    vc_timer: Option<u64>,
    tick_at: Option<u64>,

    view_changes: Vec<Option<ViewChange>>,
    own_view_change: Option<Arc<[u8]>>,
    new_view_msg: Option<Arc<[u8]>>,

    progress_at_tick: u64,
    /// Fetch what follows at the first tick from then: set a full `retransmit_ms`
    /// after a state transfer completed, or after the window moved past
    /// messages it had refused as beyond it (peers do not send those again, and
    /// the delay lets peers that answered an earlier fetch answer again).
    refetch_at: Option<u64>,
    /// Normal-case messages or committed batches were refused as beyond the
    /// window since it last moved.
    refused_beyond: bool,
    fetch_cursor: usize,
    transfer: Option<Transfer>,
    served_at: Vec<Option<u64>>,
    served_state_at: Vec<Option<u64>>,
    /// A state request per peer that this replica could not answer yet (the
    /// checkpoint is not stable here, or its state is not here): the sequence
    /// number asked and when. Answered when it can be, forgotten after
    /// `request_timeout_ms`; never persisted.
    deferred_state: Vec<Option<(u64, u64)>>,

    cache: SigCache,
    persists: VecDeque<Persist>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    dropped_transmits: u64,
}

impl<A: Application> std::fmt::Debug for Replica<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("index", &self.me)
            .field("view", &self.view)
            .field("active", &self.active)
            .field("stable", &self.stable.seq)
            .field("last_executed", &self.last_executed)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Construction and getters.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    /// A fresh replica in view 0 with `app` in its initial state (every replica
    /// must start from the same initial state).
    pub fn new(
        identity: Arc<Identity>,
        membership: Arc<Membership>,
        config: Config,
        app: A,
        now: u64,
    ) -> Result<Self> {
        config.validate(&membership)?;
        let me = membership
            .index_of(&identity.node_id())
            .ok_or(Error::InvalidMembership("this identity is not a member"))?;
        let n = membership.len();
        let cache = SigCache::new(config.signature_cache);
        let mut r = Self {
            identity,
            me,
            m: membership,
            config,
            app,
            view: 0,
            active: true,
            attempts: 0,
            view_entered: now,
            stable: CheckpointCert::genesis([0; 32]),
            log: BTreeMap::new(),
            last_executed: 0,
            next_seq: 1,
            highest_seen: 0,
            reserved: (0, 0),
            silent: (0, 0),
            own_checkpoints: BTreeMap::new(),
            checkpoint_votes: BTreeMap::new(),
            far_checkpoints: vec![None; n],
            own_checkpoint_msg: None,
            keyed: 0,
            recorded: 0,
            clients: HashMap::new(),
            pending: HashMap::new(),
            pending_order: BTreeMap::new(),
            arrivals: 0,
            queue: VecDeque::new(),
            batch_deadline: None,
            last_progress: now,
            waiting_since: None,
            request_timer: None,
            vc_timer: None,
            tick_at: None,
            view_changes: vec![None; n],
            own_view_change: None,
            new_view_msg: None,
            progress_at_tick: 0,
            refetch_at: None,
            refused_beyond: false,
            fetch_cursor: 0,
            transfer: None,
            served_at: vec![None; n],
            served_state_at: vec![None; n],
            deferred_state: vec![None; n],
            cache,
            persists: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            dropped_transmits: 0,
        };
        let snapshot = r.snapshot()?;
        let state = state_digest(0, &snapshot);
        r.stable = CheckpointCert::genesis(state);
        r.own_checkpoints.insert(0, (state, snapshot));
        Ok(r)
    }

    /// Rebuilds a replica after a crash from what it persisted. `app` must be in
    /// the initial state; it is restored from the latest persisted own checkpoint,
    /// and committed batches after it are executed again (their events and
    /// replies are emitted again).
    pub fn recover(
        identity: Arc<Identity>,
        membership: Arc<Membership>,
        config: Config,
        app: A,
        durable: DurableState,
        now: u64,
    ) -> Result<Self> {
        let mut r = Self::new(identity, membership, config, app, now)?;
        r.view = durable.view;
        r.active = durable.active;
        if let Some(cert) = durable.stable {
            r.stable = cert;
        }
        if let Some((&seq, (state, snapshot))) = durable.checkpoints.iter().next_back()
            && seq > 0
        {
            r.install_snapshot(seq, snapshot)?;
            r.own_checkpoints.insert(seq, (*state, snapshot.clone()));
        }
        for (seq, (state, snapshot)) in &durable.checkpoints {
            if *seq >= r.stable.seq {
                r.own_checkpoints.insert(*seq, (*state, snapshot.clone()));
            }
        }
        r.own_checkpoints
            .retain(|s, _| *s >= r.stable.seq.min(r.last_executed));
        let low = r.stable.seq;
        let primary = r.m.primary(r.view);
        for (seq, rec) in durable.pre_prepares.range(low + 1..) {
            let slot = r.log.entry(*seq).or_default();
            slot.enter_view(rec.view);
            slot.pre_prepare = Some((rec.digest, rec.signature));
            slot.authenticated = true;
            if let Some(b) = &rec.batch {
                slot.batch = Some((rec.digest, b.clone()));
            }
            r.highest_seen = r.highest_seen.max(*seq);
            if rec.view == r.view && primary == r.me {
                r.next_seq = r.next_seq.max(seq + 1);
            }
        }
        // Slots prepared in this view without a pre-prepare of it: a silent
        // replica's (it prepares on the other backups' PREPAREs and writes no
        // `PrePrepare`). The certificate holds the pre-prepare; the replica
        // re-sends its COMMIT, never a PREPARE it did not send.
        let mut unprepared = BTreeSet::new();
        for (seq, rec) in durable.prepared.range(low + 1..) {
            // A quorum prepared it: a replica that lost its `Committed`
            // record (§5) keeps asking for it while it is not executed.
            r.highest_seen = r.highest_seen.max(*seq);
            let slot = r.log.entry(*seq).or_default();
            slot.prepared = Some(rec.cert.clone());
            slot.prepared_batch = rec.batch.clone().map(|b| (rec.cert.digest, b));
            if rec.cert.view == r.view && (slot.view != r.view || slot.pre_prepare.is_none()) {
                slot.enter_view(r.view);
                slot.pre_prepare = Some((rec.cert.digest, rec.cert.primary));
                slot.authenticated = true;
                if let Some(b) = &rec.batch {
                    slot.batch = Some((rec.cert.digest, b.clone()));
                }
                unprepared.insert(*seq);
            }
        }
        for (seq, (proof, batch)) in durable.committed.range(low + 1..) {
            let slot = r.log.entry(*seq).or_default();
            slot.committed = Some(proof.clone());
            slot.persisted_commit = true;
            slot.batch = Some((proof.digest, batch.clone()));
            r.highest_seen = r.highest_seen.max(*seq);
        }
        r.next_seq = r.next_seq.max(r.stable.seq + 1);
        r.reserved = durable.reserved;
        if durable.reserved.0 == r.view && durable.reserved.1 > 0 {
            r.silent = durable.reserved;
            // As primary it may have issued pre-prepares up to there that it
            // lost: it issues none of its own below them in this view (the
            // backups' request timers change the view if that stalls it).
            if primary == r.me {
                r.next_seq = r.next_seq.max(durable.reserved.1.saturating_add(1));
            }
        }
        // Re-issue our own votes of the current view (Ed25519 is deterministic, so
        // these are the very messages sent before the crash).
        let seqs: Vec<u64> = r.log.keys().copied().collect();
        for seq in seqs {
            r.restore_votes(seq, !unprepared.contains(&seq))?;
        }
        r.try_execute(now)?;
        // A restarted replica is probably behind: ask f + 1 peers straight away.
        let fetch = encode_arc(&Message::Fetch(Fetch {
            seq: r.last_executed + 1,
        }))?;
        let me = r.me;
        let peers: Vec<ReplicaIndex> = (0..r.m.len() as ReplicaIndex)
            .filter(|j| *j != me)
            .take(r.m.weak_quorum())
            .collect();
        for j in peers {
            r.send(j, fetch.clone());
        }
        if r.last_executed < r.stable.seq {
            r.start_transfer(r.stable.clone(), false, now);
        }
        if !r.active {
            r.send_view_change(now)?;
        }
        r.update_timers(now);
        Ok(r)
    }

    /// Re-issues this replica's votes of the current view for `seq`: its
    /// PRE-PREPARE (as primary) or PREPARE (unless `prepare` is false: it
    /// sent none), and its COMMIT if it prepared.
    fn restore_votes(&mut self, seq: u64, prepare: bool) -> Result<()> {
        let (view, me, primary) = (self.view, self.me, self.m.primary(self.view));
        let Some(slot) = self.log.get(&seq) else {
            return Ok(());
        };
        if slot.view != view || !self.active {
            return Ok(());
        }
        let Some((digest, pp_sig)) = slot.pre_prepare else {
            return Ok(());
        };
        let prepared_here = slot.prepared.as_ref().is_some_and(|c| c.view == view);
        if me == primary
            && let Some(batch) = slot.batch_for(&digest)
        {
            // The primary's own PRE-PREPARE, rebuilt from what it persisted (the
            // same bytes), so that backups that missed it get it again.
            let pp = PrePrepare {
                view,
                seq,
                digest,
                signature: pp_sig,
                batch: batch.to_vec(),
            };
            let bytes: Arc<[u8]> = wire::seal(wire::Kind::PrePrepare, &pp)?.into();
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.own.push(bytes);
            }
        }
        if me != primary && prepare {
            let p = Prepare::new(&self.identity, &self.m, view, seq, digest, me)?;
            let bytes = encode_arc(&Message::Prepare(p.clone()))?;
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.prepares.insert(me, Held::own(digest, p.signature));
                slot.sent_prepare = true;
                slot.own.push(bytes);
            }
        }
        if prepared_here {
            let c = Commit::new(&self.identity, &self.m, view, seq, digest, me)?;
            let bytes = encode_arc(&Message::Commit(c.clone()))?;
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.commits.insert(me, Held::own(digest, c.signature));
                slot.sent_commit = true;
                slot.own.push(bytes);
            }
        }
        Ok(())
    }

    /// This replica's index in the membership.
    pub fn index(&self) -> ReplicaIndex {
        self.me
    }

    /// The membership.
    pub fn membership(&self) -> &Arc<Membership> {
        &self.m
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current view (or, while a view change is under way, the view asked for).
    pub fn view(&self) -> u64 {
        self.view
    }

    /// Whether the current view is installed (false during a view change).
    pub fn is_view_active(&self) -> bool {
        self.active
    }

    /// Whether this replica is the primary of the current view.
    pub fn is_primary(&self) -> bool {
        self.m.primary(self.view) == self.me
    }

    /// Highest sequence number executed.
    pub fn last_executed(&self) -> u64 {
        self.last_executed
    }

    /// The latest stable checkpoint (the low watermark).
    pub fn stable_checkpoint(&self) -> &CheckpointCert {
        &self.stable
    }

    /// The latest stable checkpoint with the replica state it certifies (the
    /// bytes its state digest covers), while the replica holds them: for
    /// nodes that do not replicate the state ([`certified_app_state`] checks
    /// it). `None` at the initial checkpoint, or after a restart until the
    /// next checkpoint is taken.
    pub fn stable_state(&self) -> Option<(&CheckpointCert, Arc<[u8]>)> {
        if self.stable.seq == 0 {
            return None;
        }
        let (state, snapshot) = self.own_checkpoints.get(&self.stable.seq)?;
        (*state == self.stable.state).then(|| (&self.stable, snapshot.clone()))
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The whole replicated state after [`last_executed`](Self::last_executed): the
    /// application's snapshot and the client table (timestamps and cached
    /// outcomes), encoded as checkpoints hash it (pbft.md §6). Correct replicas
    /// that executed the same sequence number return the same bytes.
    ///
    /// Fails with [`Error::TooLarge`] beyond `max_snapshot_len`.
    pub fn state_snapshot(&self) -> Result<Arc<[u8]>> {
        self.snapshot()
    }

    /// The commit proof of sequence number `seq` and its batch, while the replica
    /// still holds them: committed, with the batch known, and above the stable
    /// checkpoint (the log is discarded below it). Archive them from
    /// [`Event::Executed`] to keep them longer (pbft.md §10).
    pub fn commit_proof(&self, seq: u64) -> Option<(&CommitProof, Arc<[u8]>)> {
        let slot = self.log.get(&seq)?;
        let proof = slot.committed.as_ref()?;
        Some((proof, slot.batch_for(&proof.digest)?))
    }

    /// Number of requests waiting to be ordered or executed.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Transmits dropped because the output queue was full.
    pub fn dropped_transmits(&self) -> u64 {
        self.dropped_transmits
    }

    /// Registers the key this replica shares with `client`. Fails with
    /// [`Error::Full`] beyond `max_clients` keys.
    pub fn add_client(&mut self, client: ClientId, key: ClientKey) -> Result<()> {
        let known = self.clients.get(&client).is_some_and(|e| e.key.is_some());
        if !known && self.keyed >= self.config.max_clients {
            return Err(Error::Full("client key table"));
        }
        let bound = key.bind(&self.m, self.me, &client);
        if self
            .clients
            .entry(client)
            .or_default()
            .key
            .replace(bound)
            .is_none()
        {
            self.keyed += 1;
        }
        Ok(())
    }

    /// Forgets the key of `client` (its replicated record stays).
    pub fn remove_client(&mut self, client: &ClientId) {
        if let Some(e) = self.clients.get_mut(client) {
            if e.key.take().is_some() {
                self.keyed -= 1;
            }
            if e.record.is_none() {
                self.clients.remove(client);
            }
        }
    }
}

fn encode_arc(msg: &Message) -> Result<Arc<[u8]>> {
    Ok(msg.encode()?.into())
}

// ---------------------------------------------------------------------------
// Inputs.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    /// Handles a request from a client (its encoded bytes).
    pub fn handle_request(&mut self, bytes: &[u8], now: u64) -> Result<()> {
        let result = match Message::decode(bytes)? {
            Message::Request(r) => self.on_request(r, bytes, true, now),
            _ => Err(Error::Unexpected("handle_request takes only requests")),
        };
        self.update_timers(now);
        result
    }

    /// Handles a message from replica `from` (the sender as authenticated by the
    /// transport). Errors say why the message was dropped; none is fatal.
    pub fn handle_message(&mut self, from: ReplicaIndex, bytes: &[u8], now: u64) -> Result<()> {
        if !self.m.contains(from) {
            return Err(Error::NotMember(from));
        }
        if from == self.me {
            return Err(Error::Unexpected("message from ourselves"));
        }
        let msg = Message::decode(bytes)?;
        let result = match msg {
            Message::Request(r) => self.on_request(r, bytes, false, now),
            Message::PrePrepare(p) => self.on_pre_prepare(from, p, now),
            Message::Prepare(p) => self.on_prepare(from, p, now),
            Message::Commit(c) => self.on_commit(from, c, now),
            Message::Checkpoint(c) => self.on_checkpoint(from, c, now),
            Message::ViewChange(vc) => self.on_view_change(from, vc, now),
            Message::NewView(nv) => self.on_new_view(from, nv, now),
            Message::Fetch(f) => self.on_fetch(from, f, now),
            Message::Committed(c) => self.on_committed(c, now),
            Message::StableCheckpoint(cert) => self.on_stable_cert(cert, now),
            Message::StateRequest(r) => self.on_state_request(from, r, now),
            Message::StateResponse(r) => self.on_state_response(from, r, now),
            Message::Reply(_) => Err(Error::Unexpected("replicas do not take replies")),
        };
        self.update_timers(now);
        result
    }

    /// Handles every timer due at `now`: batching delay, request and view-change
    /// timers, retransmission, catch-up and state-transfer retries.
    pub fn handle_timeout(&mut self, now: u64) -> Result<()> {
        if self.batch_deadline.is_some_and(|d| now >= d) {
            self.batch_deadline = None;
            self.propose(now, true)?;
        }
        if self.active && self.request_timer.is_some_and(|d| now >= d) {
            self.request_timer = None;
            self.start_view_change(self.view.saturating_add(1), now)?;
        }
        if !self.active && self.vc_timer.is_some_and(|d| now >= d) {
            self.vc_timer = None;
            self.start_view_change(self.view.saturating_add(1), now)?;
        }
        if self.tick_at.is_some_and(|d| now >= d) {
            self.tick_at = None;
            self.tick(now)?;
        }
        self.update_timers(now);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Outputs.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    /// Next write that must be durable before any later transmit is sent.
    pub fn poll_persist(&mut self) -> Option<Persist> {
        self.persists.pop_front()
    }

    /// Next message to send. Send only after draining [`poll_persist`](Self::poll_persist).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.batch_deadline,
            self.request_timer.filter(|_| self.active),
            self.vc_timer.filter(|_| !self.active),
            self.tick_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn transmit_cap(&self) -> usize {
        let w = usize::try_from(self.config.window).unwrap_or(usize::MAX);
        (w + self.config.max_fetch_entries + 8).saturating_mul(self.m.len())
    }

    fn send(&mut self, to: ReplicaIndex, payload: Arc<[u8]>) {
        if to == self.me {
            return;
        }
        if self.transmits.len() >= self.transmit_cap() {
            self.dropped_transmits += 1;
            return;
        }
        self.transmits.push_back(Transmit { to, payload });
    }

    fn broadcast(&mut self, payload: &Arc<[u8]>) {
        for i in 0..self.m.len() as ReplicaIndex {
            self.send(i, payload.clone());
        }
    }
}

// ---------------------------------------------------------------------------
// Timers: retransmission and catch-up ticks, request and view-change timers.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    /// Periodic work while something is outstanding: retransmit our own messages
    /// to the replicas that have not moved past them, ask for committed batches if
    /// execution is stuck, retry a state transfer.
    fn tick(&mut self, now: u64) -> Result<()> {
        let n = self.m.len() as ReplicaIndex;
        let mut resend: Vec<(ReplicaIndex, Arc<[u8]>)> = Vec::new();
        if self.active {
            for (_, slot) in self.log.range(self.last_executed + 1..) {
                if slot.view != self.view || slot.committed.is_some() {
                    continue;
                }
                for j in 0..n {
                    if j != self.me && !slot.commits.contains_key(&j) {
                        resend.extend(slot.own.iter().map(|p| (j, p.clone())));
                    }
                }
            }
        } else if let Some(vc) = self.own_view_change.clone() {
            for j in 0..n {
                resend.push((j, vc.clone()));
            }
        }
        if let Some(c) = self.own_checkpoint_msg.clone() {
            for j in 0..n {
                resend.push((j, c.clone()));
            }
        }
        for (j, p) in resend {
            self.send(j, p);
        }
        let fetch_due = self.refetch_at.is_some_and(|t| now >= t);
        if self.transfer.as_ref().is_some_and(|t| now >= t.deadline) {
            self.request_state(now);
        } else if self.transfer.is_none()
            && (fetch_due
                || (self.highest_seen > self.last_executed
                    && self.last_executed == self.progress_at_tick))
        {
            // Stalled while later sequence numbers are known, or restored a
            // transferred state or moved the window past refused messages (the
            // others got at least that far, and what arrived beyond the old window
            // was dropped): ask f + 1 peers for committed batches.
            if fetch_due {
                self.refetch_at = None;
            }
            let payload = encode_arc(&Message::Fetch(Fetch {
                seq: self.last_executed + 1,
            }))?;
            let peers = usize::from(n);
            let mut sent = 0;
            let mut k = 0;
            while sent < self.m.weak_quorum() && k < peers {
                let j = (self.fetch_cursor + k) % peers;
                k += 1;
                if j != usize::from(self.me) {
                    self.send(j as ReplicaIndex, payload.clone());
                    sent += 1;
                }
            }
            self.fetch_cursor = (self.fetch_cursor + k) % peers.max(1);
        }
        self.progress_at_tick = self.last_executed;
        // State requests kept while this replica answered their asker lately.
        self.serve_deferred_state(now)
    }

    /// Proposes full batches if there is room, then re-arms the timers.
    fn update_timers(&mut self, now: u64) {
        if !self.active {
            self.waiting_since = None;
        }
        if self.active && self.m.primary(self.view) == self.me && !self.queue.is_empty() {
            // Errors here can only come from signing; the next input retries.
            let _ = self.propose(now, false);
        }
        if self.active {
            let timeout = self.config.timeout(self.attempts);
            let mut deadline: Option<u64> = None;
            // The oldest pending request sets the timer; requests whose client has
            // since executed a later one are stale, and dropped here.
            while let Some(&(id, arrived)) = self.pending_order.values().next() {
                let stale = self
                    .clients
                    .get(&id.0)
                    .and_then(|e| e.record.as_ref())
                    .is_some_and(|r| r.timestamp >= id.1);
                if !stale {
                    deadline = Some(arrived.max(self.view_entered).saturating_add(timeout));
                    break;
                }
                self.forget_pending(&id);
            }
            let waiting = self
                .log
                .range(self.last_executed + 1..)
                .any(|(_, s)| s.view == self.view && s.pre_prepare.is_some());
            if waiting {
                let since = *self.waiting_since.get_or_insert(now);
                let d = self
                    .last_progress
                    .max(self.view_entered)
                    .max(since)
                    .saturating_add(timeout);
                deadline = Some(deadline.map_or(d, |x| x.min(d)));
            } else {
                self.waiting_since = None;
            }
            self.request_timer = deadline;
        }
        let needs_tick = !self.active
            || self.transfer.is_some()
            || self.refetch_at.is_some()
            || self.own_checkpoint_msg.is_some()
            || self.highest_seen > self.last_executed
            || self.deferred_state.iter().any(Option::is_some);
        if !needs_tick {
            self.tick_at = None;
        } else if self.tick_at.is_none() {
            self.tick_at = Some(now.saturating_add(self.config.retransmit_ms));
        }
    }
}

#[cfg(test)]
mod tests;
