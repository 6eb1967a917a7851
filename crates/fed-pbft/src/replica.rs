//! The sans-IO PBFT replica.

use std::{
    collections::{BTreeMap, HashMap, VecDeque, hash_map::Entry as HashEntry},
    sync::Arc,
};

use fed_crypto::Identity;
use serde::{Deserialize, Serialize};

use crate::{
    app::Application,
    client::{BoundKey, ClientKey, check_request},
    config::Config,
    error::{Error, Result},
    labels,
    membership::{Membership, ReplicaIndex},
    message::{
        ClientId, Commit, Committed, Digest, Fetch, Message, NULL_BATCH, NewView, NewViewEntry,
        Outcome, PrePrepare, Prepare, Reply, Request, RequestId, SigCache, StateRequest,
        StateResponse, ViewChange, batch_digest, decode_batch, pre_prepare_statement,
        verify_signature,
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

/// A batch the replica executed.
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
    request_timer: Option<u64>,
    vc_timer: Option<u64>,
    tick_at: Option<u64>,

    view_changes: Vec<Option<ViewChange>>,
    own_view_change: Option<Arc<[u8]>>,
    new_view_msg: Option<Arc<[u8]>>,

    progress_at_tick: u64,
    fetch_cursor: usize,
    transfer: Option<Transfer>,
    served_at: Vec<Option<u64>>,
    served_state_at: Vec<Option<u64>>,

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
            request_timer: None,
            vc_timer: None,
            tick_at: None,
            view_changes: vec![None; n],
            own_view_change: None,
            new_view_msg: None,
            progress_at_tick: 0,
            fetch_cursor: 0,
            transfer: None,
            served_at: vec![None; n],
            served_state_at: vec![None; n],
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
        for (seq, rec) in durable.prepared.range(low + 1..) {
            let slot = r.log.entry(*seq).or_default();
            slot.prepared = Some(rec.cert.clone());
            slot.prepared_batch = rec.batch.clone().map(|b| (rec.cert.digest, b));
        }
        for (seq, (proof, batch)) in durable.committed.range(low + 1..) {
            let slot = r.log.entry(*seq).or_default();
            slot.committed = Some(proof.clone());
            slot.persisted_commit = true;
            slot.batch = Some((proof.digest, batch.clone()));
            r.highest_seen = r.highest_seen.max(*seq);
        }
        r.next_seq = r.next_seq.max(r.stable.seq + 1);
        // Re-issue our own votes of the current view (Ed25519 is deterministic, so
        // these are the very messages sent before the crash).
        let seqs: Vec<u64> = r.log.keys().copied().collect();
        for seq in seqs {
            r.restore_votes(seq)?;
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
            r.start_transfer(r.stable.clone(), now);
        }
        if !r.active {
            r.send_view_change(now)?;
        }
        r.update_timers(now);
        Ok(r)
    }

    fn restore_votes(&mut self, seq: u64) -> Result<()> {
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
        if me != primary {
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

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
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
// Requests and batching.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    fn on_request(&mut self, r: Request, bytes: &[u8], direct: bool, now: u64) -> Result<()> {
        if r.operation.len() > self.config.max_operation_len {
            return Err(Error::TooLarge {
                what: "operation",
                len: r.operation.len(),
                max: self.config.max_operation_len,
            });
        }
        let entry = self.clients.get(&r.client);
        let key = entry
            .and_then(|e| e.key.as_ref())
            .ok_or(Error::BadRequestAuth)?;
        if r.authenticator.len() != self.m.len() || !check_request(key, self.me, &r) {
            return Err(Error::BadRequestAuth);
        }
        if let Some(rec) = entry.and_then(|e| e.record.as_ref()) {
            if r.timestamp == rec.timestamp {
                // A retransmission of the latest executed request: the cached reply.
                let reply = Reply::new(
                    key,
                    self.view,
                    r.client,
                    r.timestamp,
                    self.me,
                    rec.outcome.clone(),
                );
                self.events.push_back(Event::Reply(reply));
                return Ok(());
            }
            if r.timestamp < rec.timestamp {
                return Err(Error::StaleRequest {
                    timestamp: r.timestamp,
                    latest: rec.timestamp,
                });
            }
        }
        let id = r.id();
        let primary = self.m.primary(self.view);
        if self.pending.contains_key(&id) {
            if direct && primary != self.me {
                self.send(primary, Arc::from(bytes));
            }
            return Ok(());
        }
        if self.pending.len() >= self.config.max_pending_requests {
            return Err(Error::Full("pending request queue"));
        }
        self.arrivals += 1;
        self.pending_order.insert(self.arrivals, (id, now));
        self.pending.insert(
            id,
            Pending {
                request: r,
                order: self.arrivals,
                proposed: false,
            },
        );
        if primary == self.me && self.active {
            self.queue.push_back(id);
            self.propose(now, false)?;
        } else if direct {
            self.send(primary, Arc::from(bytes));
        }
        Ok(())
    }

    fn forget_pending(&mut self, id: &RequestId) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(p) = self.pending.remove(id) {
            self.pending_order.remove(&p.order);
        }
        if self.pending.is_empty() {
            // Whatever is still queued is stale; so is a batching deadline armed
            // for it (`propose` trusts an armed deadline).
            self.queue.clear();
            self.batch_deadline = None;
        }
    }

    /// Cuts and sends batches while the primary has room in the window: full
    /// batches at once, a partial one when `deadline_hit` (the batching delay ran out).
    fn propose(&mut self, now: u64, deadline_hit: bool) -> Result<()> {
        if !self.active || self.m.primary(self.view) != self.me {
            self.queue.clear();
            self.batch_deadline = None;
            return Ok(());
        }
        if !deadline_hit
            && self.batch_deadline.is_some()
            && self.queue.len() < self.config.max_batch_requests
        {
            // Not full even counting stale entries, and the batching delay is
            // running: nothing to cut yet. (The deadline may have been armed for a
            // request that has since gone stale; the batch is then cut early,
            // which the delay, an upper bound on waiting, allows.)
            return Ok(());
        }
        loop {
            // Stale entries (executed or already proposed) are skipped lazily: only
            // from the front here, and while cutting below, so that queueing a
            // request stays O(1).
            while let Some(id) = self.queue.front() {
                if self.pending.get(id).is_some_and(|p| !p.proposed) {
                    break;
                }
                self.queue.pop_front();
            }
            if self.queue.is_empty() {
                self.batch_deadline = None;
                return Ok(());
            }
            let full = self.queue.len() >= self.config.max_batch_requests;
            if !full && !deadline_hit {
                if self.batch_deadline.is_none() {
                    self.batch_deadline = Some(now.saturating_add(self.config.batch_delay_ms));
                }
                return Ok(());
            }
            if self.next_seq > self.stable.seq + self.config.window {
                // The window is full; the next stable checkpoint will make room.
                return Ok(());
            }
            let mut requests = Vec::new();
            let mut size = 1usize;
            let per_request = 32 + 10 + 10 + 5 + 16 * self.m.len();
            while let Some(id) = self.queue.front().copied() {
                let Some(p) = self.pending.get_mut(&id).filter(|p| !p.proposed) else {
                    self.queue.pop_front();
                    continue;
                };
                let len = per_request + p.request.operation.len();
                if requests.len() >= self.config.max_batch_requests
                    || size + len > self.config.max_batch_bytes
                {
                    break;
                }
                size += len;
                p.proposed = true;
                requests.push(p.request.clone());
                self.queue.pop_front();
            }
            if requests.is_empty() {
                return Ok(());
            }
            self.issue_pre_prepare(requests, now)?;
            if deadline_hit && self.queue.len() < self.config.max_batch_requests {
                // One partial batch per expiry; re-arm for the rest.
                if !self.queue.is_empty() {
                    self.batch_deadline = Some(now.saturating_add(self.config.batch_delay_ms));
                }
                return Ok(());
            }
        }
    }

    fn issue_pre_prepare(&mut self, requests: Vec<Request>, now: u64) -> Result<()> {
        let seq = self.next_seq;
        let view = self.view;
        let batch = wire::encode(&requests);
        let pp = PrePrepare::new(&self.identity, &self.m, view, seq, batch)?;
        let digest = pp.digest;
        let payload: Arc<[u8]> = wire::seal(wire::Kind::PrePrepare, &pp)?.into();
        let batch: Arc<[u8]> = Arc::from(pp.batch);
        self.persists.push_back(Persist::PrePrepare {
            view,
            seq,
            digest,
            signature: pp.signature,
            batch: Some(batch.clone()),
        });
        let slot = self.log.entry(seq).or_default();
        slot.enter_view(view);
        slot.pre_prepare = Some((digest, pp.signature));
        slot.batch = Some((digest, batch));
        slot.requests = Some(Arc::new(requests));
        slot.authenticated = true;
        slot.own.push(payload.clone());
        self.next_seq += 1;
        self.highest_seen = self.highest_seen.max(seq);
        self.broadcast(&payload);
        self.step(seq, now)
    }

    /// Decodes and checks a batch's structure; returns the requests and whether
    /// this replica authenticated every one with its own key.
    fn check_batch(&self, batch: &[u8]) -> Result<(Vec<Request>, bool)> {
        if batch.len() > self.config.max_batch_bytes {
            return Err(Error::TooLarge {
                what: "batch",
                len: batch.len(),
                max: self.config.max_batch_bytes,
            });
        }
        let requests = decode_batch(batch)?;
        if requests.len() > self.config.max_batch_requests {
            return Err(Error::InvalidBatch("too many requests"));
        }
        let mut authenticated = true;
        for r in &requests {
            if r.operation.len() > self.config.max_operation_len {
                return Err(Error::InvalidBatch("operation too large"));
            }
            if r.authenticator.len() != self.m.len() {
                return Err(Error::InvalidBatch("authenticator of the wrong length"));
            }
            if authenticated {
                authenticated = self
                    .clients
                    .get(&r.client)
                    .and_then(|e| e.key.as_ref())
                    .is_some_and(|k| check_request(k, self.me, r));
            }
        }
        Ok((requests, authenticated))
    }
}

// ---------------------------------------------------------------------------
// Normal case: pre-prepare, prepare, commit, execute.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    fn high(&self) -> u64 {
        self.stable.seq + self.config.window
    }

    fn check_normal(&mut self, view: u64, seq: u64) -> Result<()> {
        if seq > self.last_executed
            && seq
                < self
                    .high()
                    .saturating_add(self.config.window.saturating_mul(64))
        {
            // Peers are working on sequence numbers we have not executed, perhaps in
            // a view we are not in or beyond our window: a hint that we may be behind.
            // It only makes the catch-up tick ask f + 1 peers for committed batches
            // when execution stalls (answers are rate-limited per peer).
            self.highest_seen = self.highest_seen.max(seq.min(self.high()));
        }
        if view < self.view {
            return Err(Error::StaleView {
                view,
                current: self.view,
            });
        }
        if view > self.view || !self.active {
            return Err(Error::WrongView {
                view,
                current: self.view,
            });
        }
        if seq <= self.stable.seq || seq > self.high() {
            return Err(Error::OutsideWatermarks {
                seq,
                low: self.stable.seq,
                high: self.high(),
            });
        }
        Ok(())
    }

    fn on_pre_prepare(&mut self, from: ReplicaIndex, pp: PrePrepare, now: u64) -> Result<()> {
        self.check_normal(pp.view, pp.seq)?;
        let primary = self.m.primary(pp.view);
        if from != primary {
            return Err(Error::NotPrimary {
                view: pp.view,
                primary,
                from,
            });
        }
        if let Some(slot) = self.log.get(&pp.seq)
            && slot.view == pp.view
        {
            match slot.pre_prepare {
                Some((d, _)) if d == pp.digest => return Ok(()),
                Some(_) => {
                    return Err(Error::Equivocation {
                        view: pp.view,
                        seq: pp.seq,
                    });
                }
                None => {}
            }
        }
        if batch_digest(&pp.batch) != pp.digest {
            return Err(Error::DigestMismatch);
        }
        pp.verify_signature(&self.m, &mut Some(&mut self.cache))?;
        let (requests, authenticated) = self.check_batch(&pp.batch)?;
        let batch: Arc<[u8]> = Arc::from(pp.batch);
        // Persisted when this replica sends its PREPARE (`step`), not now: a
        // pre-prepare it could not authenticate must not come back from storage as
        // one it vouched for.
        let slot = self.log.entry(pp.seq).or_default();
        slot.enter_view(pp.view);
        slot.pre_prepare = Some((pp.digest, pp.signature));
        let keep_committed_batch = slot
            .committed
            .as_ref()
            .is_some_and(|c| c.digest != pp.digest && slot.batch.is_some());
        if !keep_committed_batch {
            slot.batch = Some((pp.digest, batch));
            slot.requests = Some(Arc::new(requests));
        }
        slot.authenticated = authenticated;
        self.highest_seen = self.highest_seen.max(pp.seq);
        self.step(pp.seq, now)
    }

    fn on_prepare(&mut self, from: ReplicaIndex, p: Prepare, now: u64) -> Result<()> {
        if p.replica != from {
            return Err(Error::SenderMismatch {
                claimed: p.replica,
                from,
            });
        }
        self.check_normal(p.view, p.seq)?;
        if p.replica == self.m.primary(p.view) {
            return Err(Error::Unexpected("the primary does not prepare"));
        }
        let vote = Vote {
            replica: p.replica,
            view: p.view,
            seq: p.seq,
            digest: p.digest,
        };
        self.record_vote(Phase::Prepare, vote, p.signature, now, |m, cache| {
            p.verify_signature(m, &mut Some(cache))
        })
    }

    fn on_commit(&mut self, from: ReplicaIndex, c: Commit, now: u64) -> Result<()> {
        if c.replica != from {
            return Err(Error::SenderMismatch {
                claimed: c.replica,
                from,
            });
        }
        self.check_normal(c.view, c.seq)?;
        let vote = Vote {
            replica: c.replica,
            view: c.view,
            seq: c.seq,
            digest: c.digest,
        };
        self.record_vote(Phase::Commit, vote, c.signature, now, |m, cache| {
            c.verify_signature(m, &mut Some(cache))
        })
    }

    /// Counts a PREPARE or COMMIT. A repeat of a vote already held is ignored; a
    /// different digest from the same replica for the same view and sequence is
    /// equivocation; a new vote counts only once `verify` accepted its signature.
    /// A vote that can no longer matter (its slot is already prepared in this
    /// view, for a PREPARE, or committed, for a COMMIT) is held without the
    /// signature check, which is most of a replica's Ed25519 work.
    fn record_vote(
        &mut self,
        phase: Phase,
        vote: Vote,
        signature: Signature,
        now: u64,
        verify: impl FnOnce(&Membership, &mut SigCache) -> Result<()>,
    ) -> Result<()> {
        if let Some(slot) = self.log.get(&vote.seq)
            && slot.view == vote.view
            && let Some(held) = slot.votes(phase).get(&vote.replica)
        {
            return if held.digest == vote.digest {
                Ok(())
            } else {
                Err(Error::Equivocation {
                    view: vote.view,
                    seq: vote.seq,
                })
            };
        }
        let surplus = self.log.get(&vote.seq).is_some_and(|slot| {
            slot.view == vote.view
                && match phase {
                    Phase::Prepare => slot.prepared.as_ref().is_some_and(|c| c.view == vote.view),
                    Phase::Commit => slot.committed.is_some(),
                }
        });
        if !surplus {
            verify(&self.m, &mut self.cache)?;
        }
        let slot = self.log.entry(vote.seq).or_default();
        slot.enter_view(vote.view);
        slot.votes_mut(phase).insert(
            vote.replica,
            Held {
                digest: vote.digest,
                signature,
                verified: !surplus,
            },
        );
        self.highest_seen = self.highest_seen.max(vote.seq);
        if surplus {
            return Ok(());
        }
        self.step(vote.seq, now)
    }

    /// Advances one slot of the current view as far as its votes allow.
    fn step(&mut self, seq: u64, now: u64) -> Result<()> {
        let (view, me) = (self.view, self.me);
        let primary = self.m.primary(view);
        let q = self.m.quorum();
        let weak = self.m.weak_quorum();
        let Some(slot) = self.log.get(&seq) else {
            return Ok(());
        };
        if !self.active || slot.view != view {
            return self.try_execute(now);
        }
        let Some((digest, pp_sig)) = slot.pre_prepare else {
            return Ok(());
        };
        let matching_prepares = slot
            .prepares
            .iter()
            .filter(|(r, h)| h.verified && h.digest == digest && **r != primary)
            .count();

        // 1. Prepare, once the requests are known to be authentic: checked here, or
        //    vouched for by f + 1 replicas (the primary and prepares), one of which
        //    is correct and checked them itself.
        if me != primary
            && !slot.sent_prepare
            && (slot.authenticated || 1 + matching_prepares >= weak)
        {
            self.persists.push_back(Persist::PrePrepare {
                view,
                seq,
                digest,
                signature: pp_sig,
                batch: slot.batch_for(&digest),
            });
            let p = Prepare::new(&self.identity, &self.m, view, seq, digest, me)?;
            let payload = encode_arc(&Message::Prepare(p.clone()))?;
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.prepares.insert(me, Held::own(digest, p.signature));
                slot.sent_prepare = true;
                slot.own.push(payload.clone());
            }
            self.broadcast(&payload);
            return self.step(seq, now);
        }

        // 2. Prepared: pre-prepare and q − 1 matching prepares from backups.
        let prepared_here = slot.prepared.as_ref().is_some_and(|c| c.view == view);
        if !prepared_here && matching_prepares + 1 >= q && (me == primary || slot.sent_prepare) {
            let prepares: Vec<(ReplicaIndex, Signature)> = slot
                .prepares
                .iter()
                .filter(|(r, h)| h.verified && h.digest == digest && **r != primary)
                .map(|(r, h)| (*r, h.signature))
                .collect();
            let cert = PreparedCert {
                view,
                seq,
                digest,
                primary: pp_sig,
                prepares,
            };
            let batch = slot.batch_for(&digest);
            self.persists.push_back(Persist::Prepared {
                cert: cert.clone(),
                batch: batch.clone(),
            });
            let c = Commit::new(&self.identity, &self.m, view, seq, digest, me)?;
            let payload = encode_arc(&Message::Commit(c.clone()))?;
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.prepared = Some(cert);
                slot.prepared_batch = batch.map(|b| (digest, b));
                slot.commits.insert(me, Held::own(digest, c.signature));
                slot.sent_commit = true;
                slot.own.push(payload.clone());
            }
            self.broadcast(&payload);
            return self.step(seq, now);
        }

        // 3. Committed-local: prepared and q matching commits.
        if prepared_here && slot.committed.is_none() {
            let commits: Vec<(ReplicaIndex, Signature)> = slot
                .commits
                .iter()
                .filter(|(_, h)| h.verified && h.digest == digest)
                .map(|(r, h)| (*r, h.signature))
                .collect();
            if commits.len() >= q {
                let proof = CommitProof {
                    membership: *self.m.id(),
                    view,
                    seq,
                    digest,
                    signatures: commits,
                };
                if let Some(slot) = self.log.get_mut(&seq) {
                    slot.committed = Some(proof);
                }
            }
        }
        self.try_execute(now)
    }

    /// Executes committed batches in sequence order while their batches are known.
    fn try_execute(&mut self, now: u64) -> Result<()> {
        loop {
            let seq = self.last_executed + 1;
            let Some(slot) = self.log.get_mut(&seq) else {
                return Ok(());
            };
            let Some(proof) = slot.committed.clone() else {
                return Ok(());
            };
            let Some(batch) = slot.batch_for(&proof.digest) else {
                return Ok(());
            };
            if !slot.persisted_commit {
                slot.persisted_commit = true;
                self.persists.push_back(Persist::Committed {
                    proof: proof.clone(),
                    batch: batch.clone(),
                });
            }
            let requests = match (&slot.batch, &slot.requests) {
                (Some((d, _)), Some(r)) if *d == proof.digest => r.clone(),
                // A committed batch that does not decode cannot exist while at most f
                // replicas are faulty (correct ones decoded it to prepare it); execute
                // it as empty, identically on every replica, rather than stall.
                _ => Arc::new(decode_batch(&batch).unwrap_or_default()),
            };
            self.execute_batch(seq, &proof, &requests)?;
            self.last_executed = seq;
            self.last_progress = now;
            if self.active {
                self.attempts = 0;
            }
            if seq.is_multiple_of(self.config.checkpoint_interval) {
                self.take_checkpoint(seq, now)?;
            }
        }
    }

    fn execute_batch(&mut self, seq: u64, proof: &CommitProof, requests: &[Request]) -> Result<()> {
        let mut executed = Vec::with_capacity(requests.len());
        for r in requests {
            let id = r.id();
            self.forget_pending(&id);
            let full = self.recorded >= self.config.max_clients;
            let entry = match self.clients.entry(r.client) {
                HashEntry::Occupied(e) => e.into_mut(),
                // No key here, so no reply either way.
                HashEntry::Vacant(_) if full => continue,
                HashEntry::Vacant(e) => e.insert(ClientEntry::default()),
            };
            let outcome = match &entry.record {
                Some(rec) if r.timestamp < rec.timestamp => continue,
                // Ordered twice: answer again, do not execute again.
                Some(rec) if r.timestamp == rec.timestamp => rec.outcome.clone(),
                None if full => Outcome::Refused,
                record => {
                    if record.is_none() {
                        self.recorded += 1;
                    }
                    let outcome = Outcome::Executed(self.app.execute(&r.client, &r.operation));
                    entry.record = Some(ClientRecord {
                        timestamp: r.timestamp,
                        outcome: outcome.clone(),
                    });
                    executed.push(id);
                    outcome
                }
            };
            if let Some(key) = &entry.key {
                let reply = Reply::new(key, self.view, r.client, r.timestamp, self.me, outcome);
                self.events.push_back(Event::Reply(reply));
            }
        }
        self.events.push_back(Event::Executed(Executed {
            seq,
            view: proof.view,
            digest: proof.digest,
            requests: executed,
            proof: proof.clone(),
        }));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Checkpoints, watermarks, garbage collection.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    /// The replicated client records, in client order (the snapshot's order).
    fn records(&self) -> Vec<(ClientId, ClientRecord)> {
        let mut records: Vec<(ClientId, ClientRecord)> = self
            .clients
            .iter()
            .filter_map(|(c, e)| e.record.clone().map(|r| (*c, r)))
            .collect();
        records.sort_unstable_by_key(|(c, _)| *c);
        records
    }

    fn snapshot(&self) -> Result<Arc<[u8]>> {
        let snap = ReplicaSnapshot {
            app: self.app.snapshot(),
            clients: self.records(),
        };
        let bytes = wire::encode(&snap);
        if bytes.len() > self.config.max_snapshot_len {
            return Err(Error::TooLarge {
                what: "snapshot",
                len: bytes.len(),
                max: self.config.max_snapshot_len,
            });
        }
        Ok(bytes.into())
    }

    fn install_snapshot(&mut self, seq: u64, snapshot: &[u8]) -> Result<()> {
        let snap: ReplicaSnapshot = wire::decode(snapshot, "snapshot")?;
        if snap.clients.len() > self.config.max_clients {
            return Err(Error::InvalidBatch("snapshot holds too many clients"));
        }
        self.app
            .restore(&snap.app)
            .map_err(|e| Error::Application(e.to_string()))?;
        self.clients.retain(|_, e| {
            e.record = None;
            e.key.is_some()
        });
        for (c, record) in snap.clients {
            self.clients.entry(c).or_default().record = Some(record);
        }
        self.recorded = self.clients.values().filter(|e| e.record.is_some()).count();
        self.last_executed = seq;
        let done: Vec<RequestId> = self
            .pending
            .keys()
            .filter(|(c, t)| {
                self.clients
                    .get(c)
                    .and_then(|e| e.record.as_ref())
                    .is_some_and(|r| r.timestamp >= *t)
            })
            .copied()
            .collect();
        for id in done {
            self.forget_pending(&id);
        }
        Ok(())
    }

    fn take_checkpoint(&mut self, seq: u64, now: u64) -> Result<()> {
        let snapshot = self.snapshot()?;
        let state = state_digest(seq, &snapshot);
        self.persists.push_back(Persist::Checkpoint {
            seq,
            state,
            snapshot: snapshot.clone(),
        });
        self.own_checkpoints.insert(seq, (state, snapshot));
        let c = crate::message::Checkpoint::new(&self.identity, &self.m, seq, state, self.me)?;
        let payload = encode_arc(&Message::Checkpoint(c.clone()))?;
        self.own_checkpoint_msg = Some(payload.clone());
        self.broadcast(&payload);
        if seq > self.stable.seq && seq <= self.high() {
            self.checkpoint_votes
                .entry(seq)
                .or_default()
                .insert(self.me, (state, c.signature));
            self.check_stable(seq, now)?;
        }
        Ok(())
    }

    fn on_checkpoint(
        &mut self,
        from: ReplicaIndex,
        c: crate::message::Checkpoint,
        now: u64,
    ) -> Result<()> {
        if c.replica != from {
            return Err(Error::SenderMismatch {
                claimed: c.replica,
                from,
            });
        }
        if c.seq <= self.stable.seq {
            return Ok(());
        }
        if !c.seq.is_multiple_of(self.config.checkpoint_interval) {
            return Err(Error::Malformed("checkpoint off the interval"));
        }
        if c.seq > self.high() {
            // A checkpoint beyond the window: we are behind. Keep the latest per replica.
            if self.far_checkpoints[usize::from(from)].is_some_and(|(s, _, _)| s >= c.seq) {
                return Ok(());
            }
            c.verify_signature(&self.m, &mut Some(&mut self.cache))?;
            self.far_checkpoints[usize::from(from)] = Some((c.seq, c.state, c.signature));
            // A hint that this replica is behind, once f + 1 replicas (one of them
            // correct) report checkpoints at least that far: one faulty replica's
            // claim alone would keep it fetching forever.
            let mut far: Vec<u64> = self
                .far_checkpoints
                .iter()
                .flatten()
                .map(|(s, _, _)| *s)
                .collect();
            far.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(&seen) = far.get(self.m.weak_quorum() - 1) {
                self.highest_seen = self.highest_seen.max(seen);
            }
            let votes: Vec<(ReplicaIndex, Signature)> = self
                .far_checkpoints
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Some((s, d, sig)) if *s == c.seq && *d == c.state => {
                        Some((i as ReplicaIndex, *sig))
                    }
                    _ => None,
                })
                .collect();
            if votes.len() >= self.m.quorum() {
                let cert = CheckpointCert {
                    seq: c.seq,
                    state: c.state,
                    signatures: votes,
                };
                self.adopt_stable(cert, now)?;
            }
            return Ok(());
        }
        if let Some(votes) = self.checkpoint_votes.get(&c.seq)
            && votes.contains_key(&from)
        {
            return Ok(());
        }
        c.verify_signature(&self.m, &mut Some(&mut self.cache))?;
        self.highest_seen = self.highest_seen.max(c.seq);
        self.checkpoint_votes
            .entry(c.seq)
            .or_default()
            .insert(from, (c.state, c.signature));
        self.check_stable(c.seq, now)
    }

    /// Makes `seq` stable if a quorum of verified votes agrees on one state.
    fn check_stable(&mut self, seq: u64, now: u64) -> Result<()> {
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return Ok(());
        };
        let mut by_state: BTreeMap<Digest, Vec<(ReplicaIndex, Signature)>> = BTreeMap::new();
        for (r, (d, s)) in votes {
            by_state.entry(*d).or_default().push((*r, *s));
        }
        let q = self.m.quorum();
        if let Some((state, signatures)) = by_state.into_iter().find(|(_, v)| v.len() >= q) {
            self.adopt_stable(
                CheckpointCert {
                    seq,
                    state,
                    signatures,
                },
                now,
            )?;
        }
        Ok(())
    }

    /// Moves the low watermark to a (verified) stable checkpoint and discards the
    /// log below it; starts a state transfer if the replica has not reached it.
    fn adopt_stable(&mut self, cert: CheckpointCert, now: u64) -> Result<()> {
        if cert.seq <= self.stable.seq {
            return Ok(());
        }
        let seq = cert.seq;
        let state = cert.state;
        self.persists.push_back(Persist::Stable(cert.clone()));
        self.stable = cert;
        self.log = self.log.split_off(&(seq + 1));
        self.checkpoint_votes = self.checkpoint_votes.split_off(&(seq + 1));
        // Far-ahead votes now inside the window join the ordinary ones.
        let high = self.high();
        let mut moved = Vec::new();
        for (i, far) in self.far_checkpoints.iter_mut().enumerate() {
            match *far {
                Some((s, _, _)) if s <= seq => *far = None,
                Some((s, d, sig)) if s <= high => {
                    self.checkpoint_votes
                        .entry(s)
                        .or_default()
                        .insert(i as ReplicaIndex, (d, sig));
                    moved.push(s);
                    *far = None;
                }
                _ => {}
            }
        }
        self.next_seq = self.next_seq.max(seq + 1);
        self.highest_seen = self.highest_seen.max(seq);
        self.events
            .push_back(Event::StableCheckpoint { seq, state });
        let own_matches = self
            .own_checkpoints
            .get(&seq)
            .is_some_and(|(d, _)| *d == state);
        if self.last_executed < seq || (self.last_executed == seq && !own_matches) {
            // Behind (or, impossibly for a correct replica, diverged): fetch the state.
            self.own_checkpoints.retain(|s, _| *s > seq);
            self.start_transfer(self.stable.clone(), now);
        } else {
            self.own_checkpoints = self.own_checkpoints.split_off(&seq);
        }
        if self
            .own_checkpoint_msg
            .as_ref()
            .is_some_and(|_| self.own_checkpoints.range(seq + 1..).next().is_none())
        {
            self.own_checkpoint_msg = None;
        }
        moved.sort_unstable();
        moved.dedup();
        for s in moved {
            self.check_stable(s, now)?;
        }
        Ok(())
    }

    fn on_stable_cert(&mut self, cert: CheckpointCert, now: u64) -> Result<()> {
        if cert.seq <= self.stable.seq {
            return Ok(());
        }
        if !cert.seq.is_multiple_of(self.config.checkpoint_interval) {
            return Err(Error::InvalidCertificate("checkpoint off the interval"));
        }
        cert.verify_with(&self.m, &mut Some(&mut self.cache))?;
        self.adopt_stable(cert, now)
    }
}

// ---------------------------------------------------------------------------
// View change.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    /// Leaves the current view for `target`: persists the decision, then sends a
    /// VIEW-CHANGE with the stable checkpoint and every prepared certificate above it.
    fn start_view_change(&mut self, target: u64, now: u64) -> Result<()> {
        if target <= self.view {
            return Ok(());
        }
        self.attempts = self.attempts.saturating_add(1);
        self.view = target;
        self.active = false;
        self.persists.push_back(Persist::View {
            view: target,
            active: false,
        });
        self.request_timer = None;
        self.vc_timer = None;
        self.batch_deadline = None;
        self.queue.clear();
        self.new_view_msg = None;
        self.send_view_change(now)?;
        self.check_view_change_quorum(now)
    }

    fn send_view_change(&mut self, _now: u64) -> Result<()> {
        let view = self.view;
        let prepared: Vec<PreparedCert> = self
            .log
            .range(self.stable.seq + 1..=self.high())
            .filter_map(|(_, s)| s.prepared.clone().filter(|c| c.view < view))
            .collect();
        let vc = ViewChange::new(
            &self.identity,
            &self.m,
            view,
            self.stable.clone(),
            prepared,
            self.me,
        )?;
        let payload = encode_arc(&Message::ViewChange(vc.clone()))?;
        self.view_changes[usize::from(self.me)] = Some(vc);
        self.own_view_change = Some(payload.clone());
        self.broadcast(&payload);
        Ok(())
    }

    fn check_view_change_quorum(&mut self, now: u64) -> Result<()> {
        if self.active {
            return Ok(());
        }
        // The timer runs once a quorum has left the old view (asking for this view
        // or a later one: each replica's latest VIEW-CHANGE is all that is kept).
        let leaving = self
            .view_changes
            .iter()
            .flatten()
            .filter(|vc| vc.view >= self.view)
            .count();
        if leaving >= self.m.quorum() && self.vc_timer.is_none() {
            let t = self.config.timeout(self.attempts.saturating_sub(1));
            self.vc_timer = Some(now.saturating_add(t));
        }
        let count = self
            .view_changes
            .iter()
            .flatten()
            .filter(|vc| vc.view == self.view)
            .count();
        if count >= self.m.quorum() && self.m.primary(self.view) == self.me {
            self.build_new_view(now)?;
        }
        Ok(())
    }

    fn on_view_change(&mut self, from: ReplicaIndex, vc: ViewChange, now: u64) -> Result<()> {
        if vc.replica != from {
            return Err(Error::SenderMismatch {
                claimed: vc.replica,
                from,
            });
        }
        if vc.view < self.view || (vc.view == self.view && self.active) {
            // The sender is still trying to reach a view we installed: help it.
            if vc.view == self.view && self.m.primary(self.view) == self.me {
                if let Some(nv) = self.new_view_msg.clone()
                    && self.rate_ok(from, now)
                {
                    self.send(from, nv);
                }
                return Ok(());
            }
            return Err(Error::StaleView {
                view: vc.view,
                current: self.view,
            });
        }
        if self.view_changes[usize::from(from)]
            .as_ref()
            .is_some_and(|old| old.view >= vc.view)
        {
            return Ok(());
        }
        if !vc
            .checkpoint
            .seq
            .is_multiple_of(self.config.checkpoint_interval)
        {
            return Err(Error::InvalidViewChange("checkpoint off the interval"));
        }
        vc.verify(&self.m, self.config.window, &mut Some(&mut self.cache))?;
        self.view_changes[usize::from(from)] = Some(vc);
        // Join a higher view once f + 1 other replicas ask for one.
        let mut higher: Vec<u64> = self
            .view_changes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != usize::from(self.me))
            .filter_map(|(_, v)| v.as_ref().map(|v| v.view))
            .filter(|v| *v > self.view)
            .collect();
        if higher.len() >= self.m.weak_quorum() {
            higher.sort_unstable();
            self.start_view_change(higher[0], now)?;
        }
        self.check_view_change_quorum(now)
    }

    fn build_new_view(&mut self, now: u64) -> Result<()> {
        let view = self.view;
        let q = self.m.quorum();
        let me = usize::from(self.me);
        let mut chosen: Vec<ViewChange> = Vec::with_capacity(q);
        if let Some(own) = self.view_changes[me].clone().filter(|v| v.view == view) {
            chosen.push(own);
        } else {
            return Ok(());
        }
        for (i, vc) in self.view_changes.iter().enumerate() {
            if chosen.len() >= q {
                break;
            }
            if let Some(vc) = vc.as_ref().filter(|v| v.view == view && i != me) {
                chosen.push(vc.clone());
            }
        }
        if chosen.len() < q {
            return Ok(());
        }
        chosen.sort_by_key(|v| v.replica);
        let (cert, entries) = compute_new_view(&chosen);
        let mut signed = Vec::with_capacity(entries.len());
        for (seq, digest) in entries {
            signed.push(NewViewEntry::new(
                &self.identity,
                &self.m,
                view,
                seq,
                digest,
            )?);
        }
        let nv = NewView::new(&self.identity, &self.m, view, chosen, signed)?;
        let payload = encode_arc(&Message::NewView(nv.clone()))?;
        self.install_new_view(&nv, cert, now)?;
        self.new_view_msg = Some(payload.clone());
        self.broadcast(&payload);
        Ok(())
    }

    fn on_new_view(&mut self, from: ReplicaIndex, nv: NewView, now: u64) -> Result<()> {
        let primary = self.m.primary(nv.view);
        if from != primary {
            return Err(Error::NotPrimary {
                view: nv.view,
                primary,
                from,
            });
        }
        if nv.view < self.view || (nv.view == self.view && self.active) {
            return Err(Error::StaleView {
                view: nv.view,
                current: self.view,
            });
        }
        let st = nv.statement(&self.m);
        verify_signature(
            &self.m,
            &mut Some(&mut self.cache),
            primary,
            &st,
            &nv.signature,
        )?;
        match self.validate_new_view(&nv) {
            Ok(cert) => self.install_new_view(&nv, cert, now),
            Err(e) => {
                // A NEW-VIEW signed by the primary of the view this replica is
                // changing to that does not match its own VIEW-CHANGE messages: that
                // primary is faulty, so move on. An invalid NEW-VIEW for a higher
                // view proves nothing about the views between, and following it
                // would let one faulty replica push this one to any view.
                if nv.view == self.view && !self.active {
                    self.start_view_change(nv.view.saturating_add(1), now)?;
                }
                Err(e)
            }
        }
    }

    /// Checks a NEW-VIEW's VIEW-CHANGE set and recomputes its pre-prepares.
    fn validate_new_view(&mut self, nv: &NewView) -> Result<CheckpointCert> {
        let q = self.m.quorum();
        if nv.view_changes.len() < q || nv.view_changes.len() > self.m.len() {
            return Err(Error::InvalidViewChange("not a quorum of view changes"));
        }
        let mut prev: Option<ReplicaIndex> = None;
        for vc in &nv.view_changes {
            if prev.is_some_and(|p| p >= vc.replica) {
                return Err(Error::InvalidViewChange(
                    "view changes not in increasing order",
                ));
            }
            prev = Some(vc.replica);
            if vc.view != nv.view {
                return Err(Error::InvalidViewChange("view change for another view"));
            }
            if vc.checkpoint.seq % self.config.checkpoint_interval != 0 {
                return Err(Error::InvalidViewChange("checkpoint off the interval"));
            }
            vc.verify(&self.m, self.config.window, &mut Some(&mut self.cache))?;
        }
        let (cert, entries) = compute_new_view(&nv.view_changes);
        if entries.len() != nv.pre_prepares.len()
            || entries
                .iter()
                .zip(&nv.pre_prepares)
                .any(|((s, d), e)| *s != e.seq || *d != e.digest)
        {
            return Err(Error::InvalidViewChange(
                "pre-prepares differ from the recomputation",
            ));
        }
        let primary = self.m.primary(nv.view);
        for e in &nv.pre_prepares {
            let st = pre_prepare_statement(&self.m, nv.view, e.seq, &e.digest);
            verify_signature(
                &self.m,
                &mut Some(&mut self.cache),
                primary,
                &st,
                &e.signature,
            )?;
        }
        Ok(cert)
    }

    fn install_new_view(&mut self, nv: &NewView, cert: CheckpointCert, now: u64) -> Result<()> {
        let view = nv.view;
        self.persists
            .push_back(Persist::View { view, active: true });
        if cert.seq > self.stable.seq {
            self.adopt_stable(cert, now)?;
        }
        let null = batch_digest(NULL_BATCH);
        let mut max_s = self.stable.seq;
        for e in &nv.pre_prepares {
            if e.seq <= self.stable.seq || e.seq > self.high() {
                continue;
            }
            max_s = max_s.max(e.seq);
            let slot = self.log.entry(e.seq).or_default();
            if e.digest == null && slot.batch_for(&null).is_some() {
                slot.batch = Some((null, Arc::from(NULL_BATCH)));
                slot.requests = Some(Arc::new(Vec::new()));
            }
            let batch = slot.batch_for(&e.digest);
            slot.enter_view(view);
            slot.pre_prepare = Some((e.digest, e.signature));
            // Vouched for: either a prepared certificate (a quorum accepted it) or null.
            slot.authenticated = true;
            self.persists.push_back(Persist::PrePrepare {
                view,
                seq: e.seq,
                digest: e.digest,
                signature: e.signature,
                batch,
            });
        }
        for (_, slot) in self.log.range_mut(max_s + 1..) {
            slot.enter_view(view);
        }
        self.view = view;
        self.active = true;
        self.view_entered = now;
        self.last_progress = now;
        self.vc_timer = None;
        self.own_view_change = None;
        self.highest_seen = self.highest_seen.max(max_s);
        for vc in &mut self.view_changes {
            if vc.as_ref().is_some_and(|v| v.view <= view) {
                *vc = None;
            }
        }
        let primary = self.m.primary(view);
        self.next_seq = max_s + 1;
        for p in self.pending.values_mut() {
            p.proposed = false;
        }
        self.queue.clear();
        self.events.push_back(Event::ViewChanged { view, primary });
        let seqs: Vec<u64> = nv
            .pre_prepares
            .iter()
            .map(|e| e.seq)
            .filter(|s| *s > self.stable.seq)
            .collect();
        for seq in seqs {
            self.step(seq, now)?;
        }
        if primary == self.me {
            self.queue = self.pending_order.values().map(|(id, _)| *id).collect();
            self.propose(now, false)?;
        } else {
            let requests: Vec<Request> = self
                .pending_order
                .values()
                .filter_map(|(id, _)| self.pending.get(id).map(|p| p.request.clone()))
                .collect();
            for r in requests {
                let payload = encode_arc(&Message::Request(r))?;
                self.send(primary, payload);
            }
        }
        Ok(())
    }
}

/// The new view's starting checkpoint and pre-prepares, from a set of VIEW-CHANGE
/// messages (Castro and Liskov's rule): start at the highest stable checkpoint
/// `min-s`; for every sequence number up to the highest prepared one `max-s`, take
/// the digest prepared in the highest view (ties: the smaller digest), or the null
/// batch if none prepared it.
pub(crate) fn compute_new_view(vcs: &[ViewChange]) -> (CheckpointCert, Vec<(u64, Digest)>) {
    let mut cert: Option<&CheckpointCert> = None;
    for vc in vcs {
        if cert.is_none_or(|c| vc.checkpoint.seq > c.seq) {
            cert = Some(&vc.checkpoint);
        }
    }
    let cert = cert
        .cloned()
        .unwrap_or_else(|| CheckpointCert::genesis([0; 32]));
    let min_s = cert.seq;
    let mut best: BTreeMap<u64, (u64, Digest)> = BTreeMap::new();
    for vc in vcs {
        for p in &vc.prepared {
            if p.seq <= min_s {
                continue;
            }
            let better = best
                .get(&p.seq)
                .is_none_or(|(v, d)| p.view > *v || (p.view == *v && p.digest < *d));
            if better {
                best.insert(p.seq, (p.view, p.digest));
            }
        }
    }
    let max_s = best.keys().next_back().copied().unwrap_or(min_s);
    let null = batch_digest(NULL_BATCH);
    let entries = (min_s + 1..=max_s)
        .map(|s| (s, best.get(&s).map_or(null, |(_, d)| *d)))
        .collect();
    (cert, entries)
}

// ---------------------------------------------------------------------------
// Catching up: fetching committed batches, state transfer, retransmission.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    fn rate_ok(&mut self, from: ReplicaIndex, now: u64) -> bool {
        Self::rate_check(&mut self.served_at, self.config.retransmit_ms, from, now)
    }

    /// At most one answer per peer per `period` (fetches and state requests are
    /// limited separately).
    fn rate_check(table: &mut [Option<u64>], period: u64, from: ReplicaIndex, now: u64) -> bool {
        let Some(slot) = table.get_mut(usize::from(from)) else {
            return false;
        };
        if slot.is_some_and(|t| now < t.saturating_add(period)) {
            return false;
        }
        *slot = Some(now);
        true
    }

    fn on_fetch(&mut self, from: ReplicaIndex, f: Fetch, now: u64) -> Result<()> {
        if !self.rate_ok(from, now) {
            return Ok(());
        }
        let mut seq = f.seq;
        if seq <= self.stable.seq && self.stable.seq > 0 {
            let payload = encode_arc(&Message::StableCheckpoint(self.stable.clone()))?;
            self.send(from, payload);
            seq = self.stable.seq + 1;
        }
        let mut out = Vec::new();
        for (_, slot) in self.log.range(seq..) {
            if out.len() >= self.config.max_fetch_entries {
                break;
            }
            if let Some(proof) = &slot.committed
                && let Some(batch) = slot.batch_for(&proof.digest)
            {
                out.push(Message::Committed(Committed {
                    proof: proof.clone(),
                    batch: batch.to_vec(),
                }));
            }
        }
        for m in out {
            let payload = encode_arc(&m)?;
            self.send(from, payload);
        }
        Ok(())
    }

    fn on_committed(&mut self, c: Committed, now: u64) -> Result<()> {
        let seq = c.proof.seq;
        if seq <= self.last_executed || seq <= self.stable.seq {
            return Ok(());
        }
        if seq > self.high() {
            return Err(Error::OutsideWatermarks {
                seq,
                low: self.stable.seq,
                high: self.high(),
            });
        }
        if let Some(slot) = self.log.get(&seq)
            && let Some(p) = &slot.committed
            && (slot.batch_for(&p.digest).is_some() || p.digest != c.proof.digest)
        {
            return Ok(());
        }
        if c.batch.len() > self.config.max_batch_bytes {
            return Err(Error::TooLarge {
                what: "batch",
                len: c.batch.len(),
                max: self.config.max_batch_bytes,
            });
        }
        if batch_digest(&c.batch) != c.proof.digest {
            return Err(Error::DigestMismatch);
        }
        c.proof.verify_with(&self.m, &mut Some(&mut self.cache))?;
        let requests = decode_batch(&c.batch).unwrap_or_default();
        let slot = self.log.entry(seq).or_default();
        slot.batch = Some((c.proof.digest, Arc::from(c.batch)));
        slot.requests = Some(Arc::new(requests));
        if slot.committed.is_none() {
            slot.committed = Some(c.proof);
        }
        self.highest_seen = self.highest_seen.max(seq);
        self.try_execute(now)
    }

    fn start_transfer(&mut self, target: CheckpointCert, now: u64) {
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.target.seq >= target.seq)
        {
            return;
        }
        self.transfer = Some(Transfer {
            target,
            cursor: usize::from(self.me) + 1,
            bad: 0,
            deadline: now,
        });
        self.request_state(now);
    }

    /// Asks the next untried replica for the target state.
    fn request_state(&mut self, now: u64) {
        let n = self.m.len();
        let me = usize::from(self.me);
        let timeout = self.config.request_timeout_ms;
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if n < 2 {
            return;
        }
        let all_bad = (0..n)
            .filter(|&i| i != me)
            .all(|i| t.bad & (1u64 << i) != 0);
        if all_bad {
            t.bad = 0;
        }
        let mut source = None;
        for k in 0..n {
            let i = (t.cursor + k) % n;
            if i != me && t.bad & (1u64 << i) == 0 {
                source = Some(i);
                t.cursor = i + 1;
                break;
            }
        }
        let Some(source) = source else {
            return;
        };
        t.deadline = now.saturating_add(timeout);
        let seq = t.target.seq;
        if let Ok(payload) = encode_arc(&Message::StateRequest(StateRequest { seq })) {
            self.send(source as ReplicaIndex, payload);
        }
    }

    fn on_state_request(&mut self, from: ReplicaIndex, r: StateRequest, now: u64) -> Result<()> {
        if self.stable.seq == 0
            || self.stable.seq < r.seq
            || !Self::rate_check(
                &mut self.served_state_at,
                self.config.retransmit_ms,
                from,
                now,
            )
        {
            return Ok(());
        }
        let Some((state, snapshot)) = self.own_checkpoints.get(&self.stable.seq) else {
            return Ok(());
        };
        if *state != self.stable.state {
            return Ok(());
        }
        let msg = Message::StateResponse(StateResponse {
            cert: self.stable.clone(),
            snapshot: snapshot.to_vec(),
        });
        let payload = encode_arc(&msg)?;
        self.send(from, payload);
        Ok(())
    }

    fn on_state_response(&mut self, from: ReplicaIndex, r: StateResponse, now: u64) -> Result<()> {
        let Some(target) = self.transfer.as_ref().map(|t| t.target.clone()) else {
            return Err(Error::Unexpected("no state transfer under way"));
        };
        let seq = r.cert.seq;
        if seq < target.seq {
            return Err(Error::Unexpected("state older than the transfer's target"));
        }
        if seq <= self.last_executed {
            self.transfer = None;
            return Ok(());
        }
        if r.snapshot.len() > self.config.max_snapshot_len {
            return Err(Error::TooLarge {
                what: "snapshot",
                len: r.snapshot.len(),
                max: self.config.max_snapshot_len,
            });
        }
        if r.cert != target {
            if !r.cert.seq.is_multiple_of(self.config.checkpoint_interval) {
                return Err(Error::InvalidCertificate("checkpoint off the interval"));
            }
            r.cert.verify_with(&self.m, &mut Some(&mut self.cache))?;
        }
        let state = r.cert.state;
        if state_digest(seq, &r.snapshot) != state {
            if let Some(t) = self.transfer.as_mut() {
                t.bad |= 1u64 << from;
            }
            self.request_state(now);
            return Err(Error::BadSnapshot);
        }
        let snapshot: Arc<[u8]> = Arc::from(r.snapshot);
        if let Err(e) = self.install_snapshot(seq, &snapshot) {
            if let Some(t) = self.transfer.as_mut() {
                t.bad |= 1u64 << from;
            }
            self.request_state(now);
            return Err(e);
        }
        self.transfer = None;
        self.persists.push_back(Persist::Checkpoint {
            seq,
            state,
            snapshot: snapshot.clone(),
        });
        self.own_checkpoints.insert(seq, (state, snapshot));
        self.adopt_stable(r.cert, now)?;
        self.log = self.log.split_off(&(seq + 1));
        self.last_progress = now;
        self.events
            .push_back(Event::StateTransferred { seq, state });
        self.try_execute(now)
    }

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
        if self.transfer.as_ref().is_some_and(|t| now >= t.deadline) {
            self.request_state(now);
        } else if self.transfer.is_none()
            && self.highest_seen > self.last_executed
            && self.last_executed == self.progress_at_tick
        {
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
        Ok(())
    }

    /// Proposes full batches if there is room, then re-arms the timers.
    fn update_timers(&mut self, now: u64) {
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
                let d = self
                    .last_progress
                    .max(self.view_entered)
                    .saturating_add(timeout);
                deadline = Some(deadline.map_or(d, |x| x.min(d)));
            }
            self.request_timer = deadline;
        }
        let needs_tick = !self.active
            || self.transfer.is_some()
            || self.own_checkpoint_msg.is_some()
            || self.highest_seen > self.last_executed;
        if !needs_tick {
            self.tick_at = None;
        } else if self.tick_at.is_none() {
            self.tick_at = Some(now.saturating_add(self.config.retransmit_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        message::{NewView, PrePrepare, ViewChange},
        storage::{MemoryStorage, Storage},
    };

    struct Nop;
    impl Application for Nop {
        fn execute(&mut self, _: &ClientId, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(
            &mut self,
            _: &[u8],
        ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
            Ok(())
        }
    }

    fn setup() -> (Vec<Arc<Identity>>, Arc<Membership>) {
        let ids: Vec<Arc<Identity>> = (1..=4u8)
            .map(|i| Arc::new(Identity::from_seeds(&[i; 32], None)))
            .collect();
        let m =
            Arc::new(Membership::new(ids.iter().map(|i| i.public().clone()).collect()).unwrap());
        (ids, m)
    }

    /// Replica `id` recovered from `durable` at time 2.
    fn restart(id: &Arc<Identity>, m: &Arc<Membership>, durable: DurableState) -> Replica<Nop> {
        Replica::recover(id.clone(), m.clone(), Config::default(), Nop, durable, 2).unwrap()
    }

    fn foreign_batch() -> Vec<u8> {
        wire::encode(&vec![Request {
            client: ClientId([5; 32]),
            timestamp: 1,
            operation: b"x".to_vec(),
            authenticator: vec![[0; 16]; 4],
        }])
    }

    #[test]
    fn a_restarted_backup_neither_forgets_nor_equivocates() {
        let (ids, m) = setup();
        let mut storage = MemoryStorage::new();
        let mut b = Replica::new(ids[1].clone(), m.clone(), Config::default(), Nop, 0).unwrap();
        let pp = PrePrepare::new(&ids[0], &m, 0, 1, NULL_BATCH.to_vec()).unwrap();
        let bytes = Message::PrePrepare(pp.clone()).encode().unwrap();
        b.handle_message(0, &bytes, 1).unwrap();
        while let Some(p) = b.poll_persist() {
            storage.persist(&p).unwrap();
        }
        let sent: Vec<Transmit> = std::iter::from_fn(|| b.poll_transmit()).collect();
        assert_eq!(sent.len(), 3, "a prepare to each peer");
        drop(b);

        let mut r = restart(&ids[1], &m, storage.load().unwrap());
        // A conflicting pre-prepare for the same (view, seq) is refused.
        let other = PrePrepare::new(&ids[0], &m, 0, 1, foreign_batch()).unwrap();
        let err = r
            .handle_message(0, &Message::PrePrepare(other).encode().unwrap(), 3)
            .unwrap_err();
        assert!(
            matches!(err, Error::Equivocation { view: 0, seq: 1 }),
            "{err:?}"
        );
        // The retransmitted prepare is byte-for-byte the one sent before the crash.
        let resent: Vec<Transmit> = std::iter::from_fn(|| r.poll_transmit()).collect();
        let at = r.poll_timeout().unwrap();
        r.handle_timeout(at).unwrap();
        let again: Vec<Transmit> = std::iter::from_fn(|| r.poll_transmit()).collect();
        assert!(
            again
                .iter()
                .chain(&resent)
                .any(|t| t.payload == sent[0].payload),
            "the recovered replica re-sends its prepare"
        );
    }

    #[test]
    fn a_restarted_primary_retransmits_its_pre_prepare() {
        let (ids, m) = setup();
        let config = Config {
            max_batch_requests: 1,
            ..Config::default()
        };
        let client = ClientId([4; 32]);
        let keys: Vec<ClientKey> = (0..4u8).map(|i| ClientKey::new(&[i; 32])).collect();
        let request = crate::ClientKeys::new(&m, client, &keys)
            .unwrap()
            .request(1, b"op".to_vec());
        let mut storage = MemoryStorage::new();
        let mut p = Replica::new(ids[0].clone(), m.clone(), config.clone(), Nop, 0).unwrap();
        p.add_client(client, keys[0].clone()).unwrap();
        p.handle_request(&Message::Request(request).encode().unwrap(), 1)
            .unwrap();
        while let Some(w) = p.poll_persist() {
            storage.persist(&w).unwrap();
        }
        let sent = p.poll_transmit().unwrap().payload;
        assert!(matches!(Message::decode(&sent), Ok(Message::PrePrepare(_))));
        drop(p);
        // Restarted, and no backup ever got the pre-prepare: it goes out again,
        // byte for byte, at the next retransmission tick.
        let mut r = Replica::recover(
            ids[0].clone(),
            m.clone(),
            config,
            Nop,
            storage.load().unwrap(),
            2,
        )
        .unwrap();
        let mut resent = false;
        for _ in 0..3 {
            let at = r.poll_timeout().unwrap();
            r.handle_timeout(at).unwrap();
            resent |= std::iter::from_fn(|| r.poll_transmit()).any(|t| t.payload == sent);
        }
        assert!(resent, "the recovered primary re-sends its pre-prepare");
    }

    #[test]
    fn an_invalid_new_view_for_a_higher_view_moves_nobody() {
        let (ids, m) = setup();
        let mut b = Replica::new(ids[1].clone(), m.clone(), Config::default(), Nop, 0).unwrap();
        // Replica 2 is the primary of views 2, 6, ... and of u64::MAX - 1: it signs
        // NEW-VIEWs with no VIEW-CHANGE behind them.
        for view in [2, 6, u64::MAX - 1] {
            let nv = NewView::new(&ids[2], &m, view, Vec::new(), Vec::new()).unwrap();
            let bytes = Message::NewView(nv).encode().unwrap();
            assert!(matches!(
                b.handle_message(2, &bytes, 0),
                Err(Error::InvalidViewChange(_))
            ));
            assert_eq!((b.view(), b.is_view_active()), (0, true), "view {view}");
        }
        // While changing to a view, its primary's invalid NEW-VIEW moves on to the
        // next view, and the view number saturates instead of wrapping.
        b.start_view_change(u64::MAX - 1, 0).unwrap();
        let nv = NewView::new(&ids[2], &m, u64::MAX - 1, Vec::new(), Vec::new()).unwrap();
        let bytes = Message::NewView(nv).encode().unwrap();
        assert!(b.handle_message(2, &bytes, 0).is_err());
        assert_eq!(b.view(), u64::MAX);
        b.start_view_change(b.view().saturating_add(1), 0).unwrap();
        assert_eq!(b.view(), u64::MAX);
    }

    #[test]
    fn an_unauthenticated_pre_prepare_is_not_persisted_as_a_vote() {
        // A batch with a request this backup cannot authenticate: it waits for
        // f + 1 vouchers, and must not come back from storage as one it vouched for.
        let (ids, m) = setup();
        let mut storage = MemoryStorage::new();
        let mut b = Replica::new(ids[1].clone(), m.clone(), Config::default(), Nop, 0).unwrap();
        let pp = PrePrepare::new(&ids[0], &m, 0, 1, foreign_batch()).unwrap();
        b.handle_message(0, &Message::PrePrepare(pp).encode().unwrap(), 1)
            .unwrap();
        let writes: Vec<Persist> = std::iter::from_fn(|| b.poll_persist()).collect();
        assert!(
            !writes
                .iter()
                .any(|w| matches!(w, Persist::PrePrepare { .. })),
            "{writes:?}"
        );
        for w in &writes {
            storage.persist(w).unwrap();
        }
        assert!(b.poll_transmit().is_none(), "no PREPARE before vouchers");
        let mut r = restart(&ids[1], &m, storage.load().unwrap());
        let at = r.poll_timeout().unwrap_or(2);
        r.handle_timeout(at).unwrap();
        for t in std::iter::from_fn(|| r.poll_transmit()) {
            assert!(
                !matches!(Message::decode(&t.payload), Ok(Message::Prepare(_))),
                "the recovered backup prepared a batch it never authenticated"
            );
        }
    }

    #[test]
    fn a_prepared_batch_outlives_its_slot_being_reused_and_a_restart() {
        let (ids, m) = setup();
        let secret = [4u8; 32];
        let client = ClientId([4; 32]);
        let keys: Vec<ClientKey> = (0..4).map(|_| ClientKey::new(&secret)).collect();
        let request = crate::ClientKeys::new(&m, client, &keys)
            .unwrap()
            .request(1, b"op".to_vec());
        let batch = wire::encode(&vec![request]);
        let mut storage = MemoryStorage::new();
        let mut b = Replica::new(ids[1].clone(), m.clone(), Config::default(), Nop, 0).unwrap();
        b.add_client(client, keys[1].clone()).unwrap();
        let pp = PrePrepare::new(&ids[0], &m, 0, 1, batch.clone()).unwrap();
        let d = pp.digest;
        b.handle_message(0, &Message::PrePrepare(pp).encode().unwrap(), 1)
            .unwrap();
        let p2 = Prepare::new(&ids[2], &m, 0, 1, d, 2).unwrap();
        b.handle_message(2, &Message::Prepare(p2).encode().unwrap(), 1)
            .unwrap();
        assert!(b.log[&1].prepared.is_some(), "prepared");
        while let Some(w) = b.poll_persist() {
            storage.persist(&w).unwrap();
        }
        // A later view reuses the slot for another batch (or a null entry): the
        // prepared batch is still there to execute or to serve.
        let null = batch_digest(NULL_BATCH);
        b.log.get_mut(&1).unwrap().batch = Some((null, Arc::from(NULL_BATCH)));
        assert_eq!(b.log[&1].batch_for(&d).as_deref(), Some(&batch[..]));
        // And after a restart, from the prepared certificate's own record.
        let mut durable = storage.load().unwrap();
        durable.pre_prepares.clear();
        let r = restart(&ids[1], &m, durable);
        assert_eq!(r.log[&1].batch_for(&d).as_deref(), Some(&batch[..]));
    }

    #[test]
    fn one_far_ahead_checkpoint_is_no_reason_to_fetch() {
        let (ids, m) = setup();
        let mut b = Replica::new(ids[1].clone(), m.clone(), Config::default(), Nop, 0).unwrap();
        let far = 1000 * b.config.checkpoint_interval;
        let cp = |i: usize| {
            let c = crate::message::Checkpoint::new(&ids[i], &m, far, [7; 32], i as ReplicaIndex)
                .unwrap();
            Message::Checkpoint(c).encode().unwrap()
        };
        b.handle_message(2, &cp(2), 0).unwrap();
        assert_eq!(b.highest_seen, 0, "one replica's claim alone");
        b.handle_message(3, &cp(3), 0).unwrap();
        assert_eq!(b.highest_seen, far, "f + 1 replicas report it");
    }

    #[test]
    fn client_table_limits_records_and_snapshot_order() {
        let (ids, m) = setup();
        let config = Config {
            max_clients: 2,
            ..Config::default()
        };
        let client = |i: u8| ClientId([i; 32]);
        let key = |i: u8| ClientKey::new(&[i; 32]);
        let request = |i: u8, ts: u64| Request {
            client: client(i),
            timestamp: ts,
            operation: vec![i],
            authenticator: vec![[0; 16]; 4],
        };
        let proof = CommitProof {
            membership: *m.id(),
            view: 0,
            seq: 1,
            digest: [0; 32],
            signatures: Vec::new(),
        };
        let replies = |r: &mut Replica<Nop>| -> Vec<(ClientId, Outcome)> {
            std::iter::from_fn(|| r.poll_event())
                .filter_map(|e| match e {
                    Event::Reply(x) => Some((x.client, x.outcome)),
                    _ => None,
                })
                .collect()
        };
        // Keys: at most max_clients; a removed key frees its place.
        let mut a = Replica::new(ids[1].clone(), m.clone(), config.clone(), Nop, 0).unwrap();
        a.add_client(client(1), key(1)).unwrap();
        a.add_client(client(2), key(2)).unwrap();
        a.add_client(client(2), key(2)).unwrap();
        assert!(matches!(
            a.add_client(client(3), key(3)),
            Err(Error::Full(_))
        ));
        a.remove_client(&client(2));
        a.add_client(client(3), key(3)).unwrap();
        // Records: clients 1 and 2 execute (2 without a key here: no reply), and
        // then the table is full, so client 3 is refused.
        let batch = [request(2, 1), request(1, 1), request(3, 1), request(1, 1)];
        a.execute_batch(1, &proof, &batch).unwrap();
        let got = replies(&mut a);
        assert_eq!(
            got,
            vec![
                (client(1), Outcome::Executed(Vec::new())),
                (client(3), Outcome::Refused),
                (client(1), Outcome::Executed(Vec::new())),
            ]
        );
        // A record outlives its key.
        a.remove_client(&client(1));
        a.execute_batch(2, &proof, &[request(1, 2)]).unwrap();
        assert!(replies(&mut a).is_empty());
        // Another replica that learnt its keys in another order ends in the same
        // state, byte for byte (the snapshot is in client order).
        let mut b = Replica::new(ids[1].clone(), m.clone(), config.clone(), Nop, 0).unwrap();
        b.add_client(client(3), key(3)).unwrap();
        b.add_client(client(1), key(1)).unwrap();
        b.execute_batch(1, &proof, &batch).unwrap();
        b.execute_batch(2, &proof, &[request(1, 2)]).unwrap();
        assert_eq!(a.snapshot().unwrap(), b.snapshot().unwrap());
        let records: Vec<(ClientId, u64)> =
            a.records().iter().map(|(c, r)| (*c, r.timestamp)).collect();
        assert_eq!(records, vec![(client(1), 2), (client(2), 1)]);
        // Installing a snapshot replaces the records and keeps the keys.
        let mut c = Replica::new(ids[1].clone(), m.clone(), config, Nop, 0).unwrap();
        c.add_client(client(1), key(1)).unwrap();
        c.execute_batch(1, &proof, &[request(1, 5)]).unwrap();
        c.install_snapshot(2, &a.snapshot().unwrap()).unwrap();
        assert_eq!(c.snapshot().unwrap(), a.snapshot().unwrap());
        let _ = replies(&mut c);
        c.execute_batch(3, &proof, &[request(1, 3)]).unwrap();
        assert_eq!(
            replies(&mut c),
            vec![(client(1), Outcome::Executed(Vec::new()))]
        );
    }

    #[test]
    fn votes_are_checked_until_their_phase_completes() {
        let (ids, m) = setup();
        let mut b = Replica::new(ids[1].clone(), m.clone(), Config::default(), Nop, 0).unwrap();
        let enc = |msg: Message| msg.encode().unwrap();
        let pp = PrePrepare::new(&ids[0], &m, 0, 1, NULL_BATCH.to_vec()).unwrap();
        let d = pp.digest;
        b.handle_message(0, &enc(Message::PrePrepare(pp)), 0)
            .unwrap();
        let prepare = |i: usize| Prepare::new(&ids[i], &m, 0, 1, d, i as ReplicaIndex).unwrap();
        let commit = |i: usize| Commit::new(&ids[i], &m, 0, 1, d, i as ReplicaIndex).unwrap();
        let forged_prepare = |i: usize| {
            let mut p = prepare(i);
            p.signature.0[0] ^= 1;
            Message::Prepare(p)
        };
        let forged_commit = |i: usize| {
            let mut c = commit(i);
            c.signature.0[0] ^= 1;
            Message::Commit(c)
        };
        // Before the slot is prepared, every prepare is checked.
        assert!(matches!(
            b.handle_message(2, &enc(forged_prepare(2)), 0),
            Err(Error::BadSignature(2))
        ));
        b.handle_message(2, &enc(Message::Prepare(prepare(2))), 0)
            .unwrap();
        // Prepared (own prepare and replica 2's): replica 3's forged prepare can no
        // longer matter and is held unchecked.
        b.handle_message(3, &enc(forged_prepare(3)), 0).unwrap();
        // Commits are checked until the slot commits.
        assert!(matches!(
            b.handle_message(2, &enc(forged_commit(2)), 0),
            Err(Error::BadSignature(2))
        ));
        b.handle_message(0, &enc(Message::Commit(commit(0))), 0)
            .unwrap();
        assert_eq!(b.last_executed(), 0);
        b.handle_message(2, &enc(Message::Commit(commit(2))), 0)
            .unwrap();
        assert_eq!(b.last_executed(), 1);
        let proof = std::iter::from_fn(|| b.poll_event())
            .find_map(|e| match e {
                Event::Executed(x) => Some(x.proof),
                _ => None,
            })
            .unwrap();
        proof.verify(&m).unwrap();
        let signers: Vec<ReplicaIndex> = proof.signatures.iter().map(|(r, _)| *r).collect();
        assert_eq!(signers, vec![0, 1, 2]);
        // After it committed, a forged commit is held unchecked; the equivocation
        // rule still holds for what is held.
        b.handle_message(3, &enc(forged_commit(3)), 0).unwrap();
        let other = Commit::new(&ids[3], &m, 0, 1, [9; 32], 3).unwrap();
        assert!(matches!(
            b.handle_message(3, &enc(Message::Commit(other)), 0),
            Err(Error::Equivocation { view: 0, seq: 1 })
        ));
    }

    #[test]
    fn normal_case_rejections() {
        let (ids, m) = setup();
        let mut b = Replica::new(ids[1].clone(), m.clone(), Config::default(), Nop, 0).unwrap();
        let enc = |msg: Message| msg.encode().unwrap();
        // A pre-prepare from a backup.
        let pp = PrePrepare::new(&ids[2], &m, 0, 1, NULL_BATCH.to_vec()).unwrap();
        assert!(matches!(
            b.handle_message(2, &enc(Message::PrePrepare(pp)), 0),
            Err(Error::NotPrimary { .. })
        ));
        // Outside the watermarks.
        let far = PrePrepare::new(&ids[0], &m, 0, 1000, NULL_BATCH.to_vec()).unwrap();
        assert!(matches!(
            b.handle_message(0, &enc(Message::PrePrepare(far)), 0),
            Err(Error::OutsideWatermarks { .. })
        ));
        // A digest that does not match the batch.
        let mut bad = PrePrepare::new(&ids[0], &m, 0, 1, NULL_BATCH.to_vec()).unwrap();
        bad.batch = foreign_batch();
        assert!(matches!(
            b.handle_message(0, &enc(Message::PrePrepare(bad)), 0),
            Err(Error::DigestMismatch)
        ));
        // A prepare relayed by someone else (spoofed sender).
        let p = Prepare::new(&ids[2], &m, 0, 1, [1; 32], 2).unwrap();
        assert!(matches!(
            b.handle_message(3, &enc(Message::Prepare(p.clone())), 0),
            Err(Error::SenderMismatch { .. })
        ));
        // A forged signature.
        let mut forged = p.clone();
        forged.signature.0[0] ^= 1;
        assert!(matches!(
            b.handle_message(2, &enc(Message::Prepare(forged)), 0),
            Err(Error::BadSignature(2))
        ));
        // A non-member and garbage.
        assert!(matches!(
            b.handle_message(9, &enc(Message::Prepare(p)), 0),
            Err(Error::NotMember(9))
        ));
        assert!(b.handle_message(2, b"garbage", 0).is_err());
        assert_eq!(b.last_executed(), 0);
    }

    fn cert(view: u64, seq: u64, digest: u8) -> PreparedCert {
        PreparedCert {
            view,
            seq,
            digest: [digest; 32],
            primary: Signature([0; 64]),
            prepares: vec![],
        }
    }

    fn vc(replica: u16, cp: u64, prepared: Vec<PreparedCert>) -> ViewChange {
        ViewChange {
            view: 5,
            checkpoint: CheckpointCert {
                seq: cp,
                state: [cp as u8; 32],
                signatures: vec![],
            },
            prepared,
            replica,
            signature: Signature([0; 64]),
        }
    }

    #[test]
    fn new_view_takes_the_highest_view_and_fills_gaps_with_null() {
        let vcs = vec![
            vc(0, 0, vec![cert(1, 3, 1), cert(2, 5, 2)]),
            vc(1, 2, vec![cert(3, 3, 9), cert(1, 6, 4)]),
            vc(2, 2, vec![]),
        ];
        let (c, entries) = compute_new_view(&vcs);
        assert_eq!(c.seq, 2);
        let null = batch_digest(NULL_BATCH);
        assert_eq!(
            entries,
            vec![(3, [9; 32]), (4, null), (5, [2; 32]), (6, [4; 32])]
        );
        // Nothing prepared above the checkpoint: no entries.
        let (c, entries) = compute_new_view(&[vc(0, 4, vec![cert(1, 3, 1)]), vc(1, 0, vec![])]);
        assert_eq!((c.seq, entries.len()), (4, 0));
    }
}
