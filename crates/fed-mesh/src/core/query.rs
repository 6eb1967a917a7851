//! Federated queries: fan-out with deduplication and hop limits, deadlines,
//! signed answers, and reconciliation at the origin.
//!
//! Every node that answers a query signs its own hits (Ed25519, bound to the
//! query id and a digest of the query's parameters) and forwards the signed
//! answers of the nodes below it unchanged. The origin verifies each answer
//! against the signer's identity and reconciles them with fed-crdt, attributing
//! each to its signer: a node that forwards cannot forge or alter the answers of
//! others, only drop them, and a dropped answer shows as a node that did not
//! answer.

use std::collections::{BTreeMap, HashMap, VecDeque};

use fed_crdt::{Hit, Hlc, QueryResponse as CrdtResponse, ReconcileConfig, Reconciler, ReplicaId};
use fed_crypto::{HybridSignature, NodeId};
use libp2p_identity::PeerId;
use rand_chacha::rand_core::Rng;

use super::{
    CommandId, Completion, Core, InboundId, SearchId, labels,
    onion::OnionChild,
    peers::{Failure, Purpose, shuffle},
};
use crate::{
    error::Error,
    substrate::{
        MAX_DIMENSION, MAX_METADATA_ENTRIES, MAX_METADATA_LEN, MAX_TOP_K, PatternId, PatternQuery,
        ScoredPattern, SubstrateError,
    },
    types::{
        FederatedResult, FederationScope, MeshEvent, PeerOutcome, PeerStatus, QueryOptions,
        QueryOutcome,
    },
    wire::{
        self, Kind, Protocol, QUERY_ID_LEN, QueryRequest, QueryResponse, Refusal, SignedHits,
        WireHit, WireReport,
    },
};

/// Longest query budget a node accepts from a peer.
const MAX_BUDGET_MS: u32 = 60_000;
/// Longest timeout a local query may ask for.
const MAX_TIMEOUT_MS: u64 = 60_000;

/// Names one child request of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChildKey {
    pub(crate) query: [u8; QUERY_ID_LEN],
    pub(crate) child: u32,
}

/// What a substrate search is for.
pub(crate) enum SearchFor {
    Query([u8; QUERY_ID_LEN]),
    Onion(Box<super::onion::DeliverCtx>),
}

enum Origin {
    Local {
        command: CommandId,
        options: QueryOptions,
    },
    Remote {
        node: NodeId,
        inbound: InboundId,
    },
}

enum LocalSearch {
    Pending,
    Done(Vec<WireHit>),
    Failed(SubstrateError),
}

pub(crate) struct Child {
    /// The node whose answer this child brings (for onion children, the target).
    pub(crate) node: Option<NodeId>,
    /// The peer the request went to (none for onion children).
    pub(crate) peer: Option<PeerId>,
    /// The query id the answer must be signed for.
    pub(crate) id: [u8; QUERY_ID_LEN],
    pub(crate) status: Option<PeerStatus>,
    pub(crate) onion: Option<OnionChild>,
}

struct Report {
    node: NodeId,
    status: PeerStatus,
    reported_by: NodeId,
}

struct Query {
    request: QueryRequest,
    digest: [u8; 32],
    origin: Origin,
    deadline: u64,
    local: LocalSearch,
    children: BTreeMap<u32, Child>,
    /// Checked signed answers by source (the node's own first, for remote queries).
    responses: BTreeMap<[u8; 32], SignedHits>,
    /// Their encoded size, bounded by [`MAX_HELD_ANSWER_BYTES`].
    held_bytes: usize,
    /// Answers not taken, with why (reported by the origin).
    rejected: Vec<(NodeId, String)>,
    reports: Vec<Report>,
    /// Other previous hops that sent the same query, waiting for this node's
    /// own answer (bounded by [`MAX_WAITING_DUPLICATES`]).
    duplicates: Vec<InboundId>,
    /// The peers that sent it (never forwarded back to).
    asked_by: Vec<PeerId>,
    /// When it started here (the command, or the request from a member).
    started: u64,
}

/// Duplicates of one query a node holds open until its own answer is ready.
const MAX_WAITING_DUPLICATES: usize = 16;

/// The queries a node runs or serves, and the ids it has seen.
pub(crate) struct Queries {
    /// Ordered, so that deadlines are handled in a deterministic order.
    active: BTreeMap<[u8; QUERY_ID_LEN], Query>,
    /// Query ids seen: until when, and the most hops left any copy had.
    seen: HashMap<[u8; QUERY_ID_LEN], (u64, u8)>,
    seen_order: VecDeque<([u8; QUERY_ID_LEN], u64)>,
    capacity: usize,
    searches: HashMap<SearchId, SearchFor>,
    /// This node's own answers to queries it has finished, by query key, for
    /// copies that arrive after (at most [`ANSWER_CACHE`], oldest dropped).
    answered: HashMap<[u8; QUERY_ID_LEN], SignedHits>,
    answered_order: VecDeque<[u8; QUERY_ID_LEN]>,
    /// Onion deliveries waiting for the substrate (counted with served queries).
    pub(crate) deliveries: usize,
}

impl Queries {
    pub(crate) fn new(limits: &super::Limits) -> Self {
        Self {
            active: BTreeMap::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            capacity: limits.dedup_capacity,
            searches: HashMap::new(),
            answered: HashMap::new(),
            answered_order: VecDeque::new(),
            deliveries: 0,
        }
    }

    fn remember_answer(&mut self, key: [u8; QUERY_ID_LEN], answer: SignedHits) {
        if self.answered.insert(key, answer).is_none() {
            self.answered_order.push_back(key);
        }
        while self.answered_order.len() > ANSWER_CACHE {
            if let Some(old) = self.answered_order.pop_front() {
                self.answered.remove(&old);
            }
        }
    }

    /// Queries from members being served, onion deliveries included.
    pub(crate) fn served_now(&self) -> usize {
        self.count(false) + self.deliveries
    }

    pub(crate) fn take_search(&mut self, id: SearchId) -> Option<SearchFor> {
        self.searches.remove(&id)
    }

    pub(crate) fn add_search(&mut self, id: SearchId, purpose: SearchFor) {
        self.searches.insert(id, purpose);
    }

    /// Records a copy of query `id` with `hops` left, remembered until `until`.
    /// Returns `None` for the first copy, else the most hops left of the
    /// copies before.
    fn mark_seen(&mut self, id: [u8; QUERY_ID_LEN], until: u64, hops: u8, now: u64) -> Option<u8> {
        while let Some(&(old, expiry)) = self.seen_order.front() {
            if expiry > now && self.seen.len() < self.capacity {
                break;
            }
            self.seen_order.pop_front();
            if self.seen.get(&old).map(|s| s.0) == Some(expiry) {
                self.seen.remove(&old);
            }
        }
        if let Some(seen) = self.seen.get_mut(&id) {
            let before = seen.1;
            seen.1 = seen.1.max(hops);
            return Some(before);
        }
        self.seen.insert(id, (until, hops));
        self.seen_order.push_back((id, until));
        None
    }

    fn count(&self, local: bool) -> usize {
        self.active
            .values()
            .filter(|q| matches!(q.origin, Origin::Local { .. }) == local)
            .count()
    }

    pub(crate) fn next_timeout(&self) -> Option<u64> {
        self.active.values().map(|q| q.deadline).min()
    }

    pub(crate) fn child_mut(&mut self, key: ChildKey) -> Option<&mut Child> {
        self.active
            .get_mut(&key.query)?
            .children
            .get_mut(&key.child)
    }

    /// Adds a checked signed answer brought by an onion child.
    pub(crate) fn add_response(&mut self, key: ChildKey, response: SignedHits) {
        if let Some(q) = self.active.get_mut(&key.query) {
            q.responses.entry(response.source).or_insert(response);
        }
    }

    /// Records an answer an onion child brought that was not taken.
    pub(crate) fn add_rejection(&mut self, key: ChildKey, node: NodeId, reason: String) {
        if let Some(q) = self.active.get_mut(&key.query) {
            q.rejected.push((node, reason));
        }
    }

    pub(crate) fn next_deadline_of(&self, query: &[u8; QUERY_ID_LEN]) -> Option<u64> {
        self.active.get(query).map(|q| q.deadline)
    }

    pub(crate) fn request(&self, query: &[u8; QUERY_ID_LEN]) -> Option<(&QueryRequest, [u8; 32])> {
        self.active.get(query).map(|q| (&q.request, q.digest))
    }
}

/// The digest of a query's parameters: what every answer's signature binds.
pub(crate) fn query_digest(request: &QueryRequest) -> [u8; 32] {
    let params = wire::encode(&(
        request.top_k,
        &request.embedding,
        &request.filter,
        request.embeddings,
    ));
    fed_crypto::hash(labels::QUERY_DIGEST, &[&params])
}

/// The message a node signs to answer query `id`.
pub(super) fn response_message(
    id: &[u8; QUERY_ID_LEN],
    digest: &[u8; 32],
    source: &[u8; 32],
    hits: &[WireHit],
) -> Vec<u8> {
    let hits = wire::encode(&hits);
    let mut msg = Vec::with_capacity(80 + hits.len());
    msg.extend_from_slice(id);
    msg.extend_from_slice(digest);
    msg.extend_from_slice(source);
    msg.extend_from_slice(&hits);
    msg
}

/// Checks a remote query's bounds.
pub(crate) fn check_request(request: &QueryRequest) -> Result<(), Refusal> {
    let bounded_filter = request.filter.len() <= MAX_METADATA_ENTRIES
        && request
            .filter
            .iter()
            .all(|(k, v)| k.len() <= MAX_METADATA_LEN && v.len() <= MAX_METADATA_LEN)
        && request.filter.windows(2).all(|w| w[0].0 < w[1].0);
    if request.embedding.is_empty()
        || request.embedding.len() > MAX_DIMENSION
        || request.embedding.iter().any(|x| !x.is_finite())
        || request.top_k == 0
        || usize::from(request.top_k) > MAX_TOP_K
        || !bounded_filter
    {
        return Err(Refusal::Malformed);
    }
    Ok(())
}

pub(crate) fn to_pattern_query(request: &QueryRequest) -> PatternQuery {
    PatternQuery {
        embedding: request.embedding.clone(),
        top_k: usize::from(request.top_k),
        filter: request.filter.iter().cloned().collect(),
    }
}

pub(crate) fn to_wire_hits(
    found: Vec<ScoredPattern>,
    embeddings: bool,
    top_k: usize,
) -> Vec<WireHit> {
    found
        .into_iter()
        .take(top_k)
        .map(|s| WireHit {
            pattern: *s.pattern.id.as_bytes(),
            score: s.score,
            timestamp_ms: s.pattern.timestamp_ms,
            metadata: s.pattern.metadata.into_iter().collect(),
            embedding: embeddings.then_some(s.pattern.embedding),
        })
        .collect()
}

fn status_code(status: &PeerStatus) -> (u8, u8) {
    match status {
        PeerStatus::Answered { hits } => (0, (*hits).min(255) as u8),
        PeerStatus::TimedOut => (1, 0),
        PeerStatus::Refused(r) => (2, r.code()),
        PeerStatus::Unreachable | PeerStatus::Rejected(_) => (3, 0),
    }
}

fn status_of(report: &WireReport) -> Option<PeerStatus> {
    Some(match report.status {
        0 => PeerStatus::Answered {
            hits: usize::from(report.detail),
        },
        1 => PeerStatus::TimedOut,
        2 => PeerStatus::Refused(Refusal::from_code(report.detail)?),
        3 => PeerStatus::Unreachable,
        _ => return None,
    })
}

fn failure_status(failure: Failure) -> PeerStatus {
    match failure {
        Failure::Timeout => PeerStatus::TimedOut,
        Failure::Unreachable => PeerStatus::Unreachable,
        Failure::Refused(r) => PeerStatus::Refused(r),
        Failure::Malformed => PeerStatus::Rejected("malformed answer".into()),
    }
}

/// A checked wire hit as fed-crdt reconciles it.
fn to_hit(h: &WireHit) -> Hit<Payload> {
    Hit {
        pattern: PatternId::new(h.pattern),
        score: h.score,
        version: Hlc::new(h.timestamp_ms, 0, ReplicaId::ZERO),
        payload: (h.metadata.clone(), h.embedding.clone()),
    }
}

/// The payload reconciliation carries per hit: metadata and embedding.
type Payload = (Vec<(String, String)>, Option<Vec<f32>>);

/// How far a score may be from [-1, 1] or from its embedding's cosine (float
/// rounding between implementations).
const SCORE_TOLERANCE: f32 = 1e-3;
/// Bytes of signed answers one query holds at most (measured as encoded).
const MAX_HELD_ANSWER_BYTES: usize = 8 << 20;
/// Own answers remembered after a query is answered, for copies that arrive late.
const ANSWER_CACHE: usize = 1024;

/// Why an answer was not taken.
#[derive(Debug)]
pub(crate) enum AnswerProblem {
    /// It breaks a rule whoever checks it (a bad signature, too many hits): the
    /// peer that passed it on is lying, since an honest one checks first.
    Forged(String),
    /// Its signer is not a member by this node's policy (others may differ).
    NotAdmitted(String),
}

impl AnswerProblem {
    pub(crate) fn reason(self) -> String {
        match self {
            AnswerProblem::Forged(r) | AnswerProblem::NotAdmitted(r) => r,
        }
    }
}

/// A node's internal name for a query: its id and the digest of its
/// parameters, so that a copy with another query's id is another query.
pub(crate) fn query_key(id: &[u8; QUERY_ID_LEN], digest: &[u8; 32]) -> [u8; QUERY_ID_LEN] {
    let full = fed_crypto::hash(labels::QUERY_KEY, &[id, digest]);
    let mut key = [0u8; QUERY_ID_LEN];
    key.copy_from_slice(&full[..QUERY_ID_LEN]);
    key
}

impl Core {
    pub(super) fn start_query(
        &mut self,
        command: CommandId,
        query: PatternQuery,
        scope: FederationScope,
        options: QueryOptions,
        now: u64,
    ) {
        if let Err(e) = self.check_local_query(&query, scope, &options) {
            return self.complete(command, Completion::Queried(Err(e)));
        }
        if self.queries.count(true) >= self.config.limits.max_local_queries {
            return self.complete(
                command,
                Completion::Queried(Err(Error::Busy("too many queries in flight"))),
            );
        }
        self.stats.queries_started += 1;
        let mut id = [0u8; QUERY_ID_LEN];
        self.rng.fill_bytes(&mut id);
        let deadline = now.saturating_add(options.timeout_ms);
        let hops_left = match scope {
            FederationScope::Global { max_hops } => max_hops.saturating_sub(1),
            _ => 0,
        };
        let request = QueryRequest {
            id,
            hops_left,
            fanout: options.fanout,
            budget_ms: 0,
            top_k: query.top_k as u16,
            embedding: query.embedding.clone(),
            filter: query.filter.clone().into_iter().collect(),
            embeddings: options.include_embeddings,
        };
        let digest = query_digest(&request);
        let key = query_key(&id, &digest);
        self.queries.mark_seen(key, deadline, u8::MAX, now);
        let search = self.next_search_id();
        self.queries.add_search(search, SearchFor::Query(key));
        self.push(super::Action::Search {
            id: search,
            query: query.clone(),
        });
        let onion = options.onion.clone();
        let fanout = usize::from(options.fanout);
        self.queries.active.insert(
            key,
            Query {
                request,
                digest,
                origin: Origin::Local { command, options },
                deadline,
                local: LocalSearch::Pending,
                children: BTreeMap::new(),
                responses: BTreeMap::new(),
                held_bytes: 0,
                rejected: Vec::new(),
                reports: Vec::new(),
                duplicates: Vec::new(),
                asked_by: Vec::new(),
                started: now,
            },
        );
        match (scope, onion) {
            (FederationScope::Local, _) | (FederationScope::Global { max_hops: 0 }, _) => {}
            (_, Some(route)) if !route.targets.is_empty() => {
                let local = self.local_node;
                for target in route.targets.iter().filter(|t| **t != local) {
                    self.send_onion_query(key, *target, route.relays, now);
                }
            }
            (_, Some(route)) => {
                let targets: Vec<NodeId> = match scope {
                    FederationScope::Direct => self
                        .session_peers()
                        .iter()
                        .filter_map(|p| self.peers.get(p).and_then(|p| p.node))
                        .collect(),
                    _ => self.directory.onion_members(&self.local_node, now),
                };
                for target in targets {
                    self.send_onion_query(key, target, route.relays, now);
                }
            }
            (FederationScope::Direct, None) => {
                for peer in self.session_peers() {
                    self.forward(key, peer, now);
                }
            }
            (FederationScope::Global { .. }, None) => {
                let mut peers = self.session_peers();
                shuffle(&mut peers, &mut self.rng);
                for peer in peers.into_iter().take(fanout) {
                    self.forward(key, peer, now);
                }
            }
        }
        self.maybe_finish(key, now);
    }

    fn check_local_query(
        &self,
        query: &PatternQuery,
        scope: FederationScope,
        options: &QueryOptions,
    ) -> Result<(), Error> {
        query
            .validate()
            .map_err(|e| Error::InvalidQuery(e.to_string()))?;
        if options.timeout_ms == 0 || options.timeout_ms > MAX_TIMEOUT_MS {
            return Err(Error::InvalidQuery(format!(
                "timeout_ms must be 1 to {MAX_TIMEOUT_MS}"
            )));
        }
        if options.fanout == 0 || options.fanout > self.config.limits.max_fanout {
            return Err(Error::InvalidQuery(format!(
                "fanout must be 1 to {}",
                self.config.limits.max_fanout
            )));
        }
        if let FederationScope::Global { max_hops } = scope
            && max_hops > self.config.limits.max_hops
        {
            return Err(Error::InvalidQuery(format!(
                "max_hops must be at most {}",
                self.config.limits.max_hops
            )));
        }
        if let Some(route) = &options.onion
            && !(1..=fed_onion::MAX_RELAYS as u8).contains(&route.relays)
        {
            return Err(Error::InvalidQuery(format!(
                "onion relays must be 1 to {}",
                fed_onion::MAX_RELAYS
            )));
        }
        if options.max_per_source == Some(0) {
            return Err(Error::InvalidQuery(
                "max_per_source must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Sends query `id` on to `peer` as a new child.
    fn forward(&mut self, id: [u8; QUERY_ID_LEN], peer: PeerId, now: u64) {
        let node = self.peers.get(&peer).and_then(|p| p.node);
        let Some(q) = self.queries.active.get_mut(&id) else {
            return;
        };
        let mut request = q.request.clone();
        if matches!(q.origin, Origin::Remote { .. }) {
            request.hops_left = request.hops_left.saturating_sub(1);
        }
        request.budget_ms =
            (q.deadline.saturating_sub(now) * 9 / 10).min(u64::from(MAX_BUDGET_MS)) as u32;
        let child = q.children.len() as u32;
        q.children.insert(
            child,
            Child {
                node,
                peer: Some(peer),
                id,
                status: None,
                onion: None,
            },
        );
        self.stats.queries_forwarded += 1;
        let plaintext = wire::envelope(Kind::QueryRequest, &wire::encode(&request));
        self.send_sealed(
            peer,
            Protocol::Query,
            &plaintext,
            Purpose::Query(ChildKey { query: id, child }),
            now,
        );
    }

    /// Forwards query `id` again with its (raised) hop budget: to the peers it
    /// went to before, so that they extend their reach in turn, and to others
    /// up to the fan-out. Never back to a peer that sent it.
    fn extend_reach(&mut self, id: [u8; QUERY_ID_LEN], now: u64) {
        let Some(q) = self.queries.active.get(&id) else {
            return;
        };
        if q.request.hops_left == 0 {
            return;
        }
        let fanout = usize::from(q.request.fanout);
        let mut targets: Vec<PeerId> = q.children.values().filter_map(|c| c.peer).collect();
        targets.sort();
        targets.dedup();
        targets.retain(|p| !q.asked_by.contains(p));
        let mut others: Vec<PeerId> = self
            .session_peers()
            .into_iter()
            .filter(|p| !q.asked_by.contains(p) && !targets.contains(p))
            .collect();
        shuffle(&mut others, &mut self.rng);
        targets.extend(others);
        targets.truncate(fanout);
        for peer in targets {
            self.forward(id, peer, now);
        }
    }

    /// Adds a child to query `id` and returns its key (for onion children).
    pub(super) fn add_child(&mut self, id: [u8; QUERY_ID_LEN], child: Child) -> Option<ChildKey> {
        let q = self.queries.active.get_mut(&id)?;
        let n = q.children.len() as u32;
        q.children.insert(n, child);
        Some(ChildKey {
            query: id,
            child: n,
        })
    }

    pub(super) fn on_query_request(
        &mut self,
        peer: PeerId,
        id: InboundId,
        plaintext: &[u8],
        now: u64,
    ) {
        let Ok(request) = wire::decode_body::<QueryRequest>(plaintext, Kind::QueryRequest, "query")
        else {
            self.malformed_request(id, now);
            return;
        };
        if let Err(refusal) = check_request(&request) {
            self.refuse(id, refusal, now);
            return;
        }
        let Some(node) = self.peers.get(&peer).and_then(|p| p.node) else {
            self.refuse(id, Refusal::NoSession, now);
            return;
        };
        let mut request = request;
        request.fanout = request.fanout.clamp(1, self.config.limits.max_fanout);
        request.hops_left = request.hops_left.min(self.config.limits.max_hops);
        let digest = query_digest(&request);
        let key = query_key(&request.id, &digest);
        let hops = request.hops_left;
        let active = self.queries.active.contains_key(&key);
        if !active && self.queries.served_now() >= self.config.limits.max_remote_queries {
            // Before it is marked seen: a copy that comes when there is room is served.
            self.refuse(id, Refusal::Overloaded, now);
            return;
        }
        let budget = u64::from(request.budget_ms.min(MAX_BUDGET_MS));
        let deadline = now.saturating_add(budget * 9 / 10);
        let seen = self
            .queries
            .mark_seen(key, now.saturating_add(budget), hops, now);
        // A copy that may travel further than every copy before it, once this
        // node has answered those (a copy that came a longer way round arrived
        // first), is served again as a new query.
        let further = seen.is_some_and(|before| hops > before) && !active;
        if seen.is_some() && !further {
            self.on_duplicate(peer, id, key, hops, now);
            return;
        }
        self.stats.queries_served += 1;
        let search = self.next_search_id();
        self.queries.add_search(search, SearchFor::Query(key));
        self.push(super::Action::Search {
            id: search,
            query: to_pattern_query(&request),
        });
        let forward = request.hops_left > 0;
        let fanout = usize::from(request.fanout);
        self.queries.active.insert(
            key,
            Query {
                request,
                digest,
                origin: Origin::Remote { node, inbound: id },
                deadline,
                local: LocalSearch::Pending,
                children: BTreeMap::new(),
                responses: BTreeMap::new(),
                held_bytes: 0,
                rejected: Vec::new(),
                reports: Vec::new(),
                duplicates: Vec::new(),
                asked_by: vec![peer],
                started: now,
            },
        );
        if forward {
            let mut peers: Vec<PeerId> = self
                .session_peers()
                .into_iter()
                .filter(|p| *p != peer)
                .collect();
            shuffle(&mut peers, &mut self.rng);
            for next in peers.into_iter().take(fanout) {
                self.forward(key, next, now);
            }
        }
    }

    /// Another copy of a query this node has seen, from `peer`: it answers with
    /// its own signed answer (not its subtree's, which goes to the first peer),
    /// so that losing one path does not lose the answer; a copy with more hops
    /// left extends the query's reach.
    fn on_duplicate(
        &mut self,
        peer: PeerId,
        id: InboundId,
        key: [u8; QUERY_ID_LEN],
        hops: u8,
        now: u64,
    ) {
        self.stats.query_duplicates += 1;
        let local = self.local_node.0;
        if let Some(q) = self.queries.active.get_mut(&key)
            && matches!(q.origin, Origin::Remote { .. })
        {
            if !q.asked_by.contains(&peer) {
                q.asked_by.push(peer);
            }
            if hops > q.request.hops_left {
                // This copy may travel further than the one that arrived first
                // (which came a longer way round): forward it again, so that the
                // first copy's shorter reach does not cut the query's.
                q.request.hops_left = hops;
                self.extend_reach(key, now);
            }
        }
        let own = match self.queries.active.get_mut(&key) {
            Some(q) if matches!(q.origin, Origin::Remote { .. }) => {
                match (&q.local, q.responses.get(&local)) {
                    (LocalSearch::Pending, _) if q.duplicates.len() < MAX_WAITING_DUPLICATES => {
                        q.duplicates.push(id);
                        return;
                    }
                    (_, own) => own.cloned(),
                }
            }
            Some(_) => None,
            None => self.queries.answered.get(&key).cloned(),
        };
        let answer = QueryResponse {
            responses: own.into_iter().collect(),
            reports: Vec::new(),
            seen: true,
        };
        self.respond_sealed(id, Kind::QueryResponse, &wire::encode(&answer));
    }

    pub(super) fn on_local_results(
        &mut self,
        qid: [u8; QUERY_ID_LEN],
        result: Result<Vec<ScoredPattern>, SubstrateError>,
        now: u64,
    ) {
        let local_node = self.local_node;
        let Some(q) = self.queries.active.get_mut(&qid) else {
            return;
        };
        match result {
            Err(e) => q.local = LocalSearch::Failed(e),
            Ok(found) => {
                let hits = to_wire_hits(found, q.request.embeddings, usize::from(q.request.top_k));
                if let Origin::Remote { node, .. } = q.origin {
                    let message = response_message(&q.request.id, &q.digest, &local_node.0, &hits);
                    let count = hits.len();
                    match self
                        .config
                        .identity
                        .sign_ed25519(labels::QUERY_RESPONSE, &message)
                    {
                        Ok(signature) => {
                            q.responses.insert(
                                local_node.0,
                                SignedHits {
                                    source: local_node.0,
                                    identity: self.config.identity.public().as_bytes().to_vec(),
                                    hits,
                                    signature: signature.to_bytes(),
                                },
                            );
                        }
                        Err(e) => tracing::warn!(error = %e, "could not sign a query answer"),
                    }
                    q.local = LocalSearch::Done(Vec::new());
                    let waiting = std::mem::take(&mut q.duplicates);
                    let own: Vec<SignedHits> = q
                        .responses
                        .get(&local_node.0)
                        .cloned()
                        .into_iter()
                        .collect();
                    let body = wire::encode(&QueryResponse {
                        responses: own,
                        reports: Vec::new(),
                        seen: true,
                    });
                    for inbound in waiting {
                        self.respond_sealed(inbound, Kind::QueryResponse, &body);
                    }
                    self.event(MeshEvent::QueryServed {
                        from: node,
                        hits: count,
                    });
                } else {
                    q.local = LocalSearch::Done(hits);
                }
            }
        }
        self.maybe_finish(qid, now);
    }

    pub(super) fn on_query_response(
        &mut self,
        peer: PeerId,
        key: ChildKey,
        plaintext: &[u8],
        now: u64,
    ) {
        let decoded =
            wire::decode_body::<QueryResponse>(plaintext, Kind::QueryResponse, "query answer");
        let answer = match decoded {
            Ok(a)
                if a.responses.len() <= wire::MAX_ANSWERS_PER_RESPONSE
                    && a.reports.len() <= wire::MAX_REPORTS_PER_RESPONSE =>
            {
                a
            }
            _ => {
                self.cut_off(peer, crate::types::CutOffReason::Malformed, now);
                self.on_query_child_failed(key, Failure::Malformed, now);
                return;
            }
        };
        let Some(q) = self.queries.active.get(&key.query) else {
            return;
        };
        if q.children
            .get(&key.child)
            .is_none_or(|c| c.status.is_some())
        {
            return;
        }
        // Check every answer before keeping it, here as at the origin: an answer
        // that is not its signer's cannot crowd out the real one (the first
        // checked answer of each source is kept), and a peer passing one on is
        // lying (an honest peer checks first) and is cut off.
        let (request, digest) = (q.request.clone(), q.digest);
        let fresh: Vec<SignedHits> = answer
            .responses
            .into_iter()
            .filter(|r| !q.responses.contains_key(&r.source))
            .collect();
        let mut taken = Vec::new();
        let mut rejected = Vec::new();
        let mut forged = false;
        for r in fresh {
            match self.check_answer(&r, &request.id, &request, &digest, now) {
                Ok(()) => taken.push(r),
                Err(AnswerProblem::Forged(why)) => {
                    tracing::warn!(%peer, why, "a forged query answer");
                    forged = true;
                }
                Err(problem) => rejected.push((NodeId(r.source), problem.reason())),
            }
        }
        if forged {
            self.cut_off(peer, crate::types::CutOffReason::Malformed, now);
            self.on_query_child_failed(key, Failure::Malformed, now);
            return;
        }
        let Some(q) = self.queries.active.get_mut(&key.query) else {
            return;
        };
        let Some(child) = q.children.get_mut(&key.child) else {
            return;
        };
        let via = child.node;
        let own = via.and_then(|n| taken.iter().find(|r| r.source == n.0).map(|r| r.hits.len()));
        child.status = Some(match own {
            Some(hits) => PeerStatus::Answered { hits },
            // It saw the query first through another path and answered that one:
            // it stays in the outcome (its answer arrives the other way, or it
            // is reported missing).
            None if answer.seen => PeerStatus::Answered { hits: 0 },
            // It answered without an answer of its own: its search did not finish
            // in time.
            None => PeerStatus::TimedOut,
        });
        for r in taken {
            let size = wire::encode(&r).len();
            if q.held_bytes + size > MAX_HELD_ANSWER_BYTES {
                q.reports.push(Report {
                    node: NodeId(r.source),
                    status: PeerStatus::Answered { hits: r.hits.len() },
                    reported_by: via.unwrap_or(NodeId(r.source)),
                });
                continue;
            }
            q.held_bytes += size;
            q.responses.entry(r.source).or_insert(r);
        }
        q.rejected.extend(rejected);
        if let Some(via) = via {
            for r in answer.reports {
                if q.reports.len() >= wire::MAX_REPORTS_PER_RESPONSE {
                    break;
                }
                if let Some(status) = status_of(&r) {
                    q.reports.push(Report {
                        node: NodeId(r.node),
                        status,
                        reported_by: via,
                    });
                }
            }
        }
        self.maybe_finish(key.query, now);
    }

    pub(super) fn on_query_child_failed(&mut self, key: ChildKey, failure: Failure, now: u64) {
        if let Some(child) = self.queries.child_mut(key)
            && child.status.is_none()
        {
            child.status = Some(failure_status(failure));
            self.maybe_finish(key.query, now);
        }
    }

    pub(super) fn maybe_finish(&mut self, qid: [u8; QUERY_ID_LEN], now: u64) {
        let done = self.queries.active.get(&qid).is_some_and(|q| {
            !matches!(q.local, LocalSearch::Pending)
                && q.children.values().all(|c| c.status.is_some())
        });
        if done {
            self.finish_query(qid, now);
        }
    }

    pub(super) fn queries_timeout(&mut self, now: u64) {
        let due: Vec<[u8; QUERY_ID_LEN]> = self
            .queries
            .active
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for qid in due {
            if let Some(q) = self.queries.active.get_mut(&qid) {
                for c in q.children.values_mut() {
                    if c.status.is_none() {
                        c.status = Some(PeerStatus::TimedOut);
                    }
                }
            }
            self.finish_query(qid, now);
        }
    }

    fn finish_query(&mut self, qid: [u8; QUERY_ID_LEN], now: u64) {
        let Some(q) = self.queries.active.remove(&qid) else {
            return;
        };
        let took = now.saturating_sub(q.started);
        match q.origin {
            Origin::Remote { inbound, .. } => {
                self.stats.query_served_ms.observe(took);
                if let Some(own) = q.responses.get(&self.local_node.0) {
                    self.queries.remember_answer(qid, own.clone());
                }
                self.answer_remote(q, inbound)
            }
            Origin::Local {
                command,
                ref options,
            } => {
                self.stats.query_ms.observe(took);
                let options = options.clone();
                let outcome = self.reconcile_local(q, &options, now);
                self.complete(command, Completion::Queried(outcome));
            }
        }
    }

    /// Answers the previous hop: its own signed answer and the best others
    /// (bounded, within the message size), reports on the rest as answered
    /// without their hits, and reports on the children that did not answer.
    fn answer_remote(&mut self, mut q: Query, inbound: InboundId) {
        // Its own search unfinished or failed: it says so about itself.
        let own_status = match q.local {
            LocalSearch::Pending => Some(1),
            LocalSearch::Failed(_) => Some(3),
            LocalSearch::Done(_) => None,
        };
        let seen_only = wire::encode(&QueryResponse {
            seen: true,
            ..QueryResponse::default()
        });
        for waiting in std::mem::take(&mut q.duplicates) {
            self.respond_sealed(waiting, Kind::QueryResponse, &seen_only);
        }
        let mut reports: Vec<WireReport> = q
            .children
            .values()
            .filter_map(|c| {
                let node = c.node?;
                let (status, detail) = status_code(c.status.as_ref()?);
                (status != 0).then_some(WireReport {
                    node: node.0,
                    status,
                    detail,
                })
            })
            .collect();
        reports.extend(q.reports.iter().map(|r| {
            let (status, detail) = status_code(&r.status);
            WireReport {
                node: r.node.0,
                status,
                detail,
            }
        }));
        let local = self.local_node.0;
        if let Some(status) = own_status {
            reports.insert(
                0,
                WireReport {
                    node: local,
                    status,
                    detail: 0,
                },
            );
        }
        let mut responses: Vec<SignedHits> = q.responses.into_values().collect();
        let best = |r: &SignedHits| {
            r.hits
                .iter()
                .map(|h| h.score)
                .fold(f32::NEG_INFINITY, f32::max)
        };
        responses.sort_by(|a, b| {
            (b.source == local)
                .cmp(&(a.source == local))
                .then_with(|| best(b).total_cmp(&best(a)))
                .then_with(|| a.source.cmp(&b.source))
        });
        let max = self.config.limits.max_forwarded_responses;
        let left_out = |r: &SignedHits| WireReport {
            node: r.source,
            status: 0,
            detail: r.hits.len().min(255) as u8,
        };
        if responses.len() > max {
            reports.extend(responses[max..].iter().map(left_out));
            responses.truncate(max);
        }
        reports.truncate(wire::MAX_REPORTS_PER_RESPONSE);
        // Stay within the session's channel payload limit: leave out the weakest
        // answers until the message fits. (If the node's own answer alone is too
        // big, the answer becomes an `Overloaded` refusal.)
        let limit = self.answer_limit(inbound) - wire::ENVELOPE_HEADER_LEN - 64;
        let mut answer = QueryResponse {
            responses,
            reports,
            seen: false,
        };
        let mut body = wire::encode(&answer);
        while body.len() > limit && answer.responses.len() > 1 {
            if let Some(r) = answer.responses.pop()
                && answer.reports.len() < wire::MAX_REPORTS_PER_RESPONSE
            {
                answer.reports.push(left_out(&r));
            }
            body = wire::encode(&answer);
        }
        self.respond_sealed(inbound, Kind::QueryResponse, &body);
    }

    /// The identity an answer is verified against: the one this node knows for
    /// the source (a member's session or directory record), else the one the
    /// answer carries, if it hashes to the source and this node's admission
    /// policy admits it without further proof.
    fn signer(
        &self,
        answer: &SignedHits,
        now: u64,
    ) -> Result<fed_crypto::PublicIdentity, AnswerProblem> {
        let node = NodeId(answer.source);
        if let Some(identity) = self.identity_of(&node) {
            return Ok(identity);
        }
        let identity = fed_crypto::PublicIdentity::from_bytes(&answer.identity)
            .map_err(|_| AnswerProblem::Forged("malformed signer identity".into()))?;
        if identity.node_id() != node {
            return Err(AnswerProblem::Forged(
                "signer identity does not match its node id".into(),
            ));
        }
        self.config
            .admission
            .admit(
                &identity,
                &fed_handshake::AdmissionProof::None,
                &self.config.federation,
                now,
            )
            .map_err(|_| {
                AnswerProblem::NotAdmitted("signer is not a member this node admits".into())
            })?;
        Ok(identity)
    }

    /// Checks an answer to query `id`: its signer, its signature, and that its
    /// hits obey the query (at most `top_k`, finite scores in [-1, 1], the
    /// filter, bounded metadata, embeddings exactly when asked for, of the
    /// query's dimension, and each score the cosine of its embedding).
    pub(super) fn check_answer(
        &self,
        answer: &SignedHits,
        id: &[u8; QUERY_ID_LEN],
        request: &QueryRequest,
        digest: &[u8; 32],
        now: u64,
    ) -> Result<(), AnswerProblem> {
        let forged = |why: &str| AnswerProblem::Forged(why.to_string());
        if answer.hits.len() > usize::from(request.top_k) {
            return Err(forged("more hits than top_k"));
        }
        let query_norm =
            crate::substrate::memory::dot(&request.embedding, &request.embedding).sqrt();
        for h in &answer.hits {
            if !h.score.is_finite() || h.score.abs() > 1.0 + SCORE_TOLERANCE {
                return Err(forged("score outside [-1, 1]"));
            }
            let metadata_ok = h.metadata.len() <= MAX_METADATA_ENTRIES
                && h.metadata
                    .iter()
                    .all(|(k, v)| k.len() <= MAX_METADATA_LEN && v.len() <= MAX_METADATA_LEN);
            let filter_ok = request
                .filter
                .iter()
                .all(|(k, v)| h.metadata.iter().any(|(mk, mv)| mk == k && mv == v));
            if !metadata_ok || !filter_ok {
                return Err(forged("a hit does not match the filter"));
            }
            match (&h.embedding, request.embeddings) {
                (None, false) => {}
                (Some(e), true) if e.len() == request.embedding.len() => {
                    let norm = crate::substrate::memory::dot(e, e).sqrt();
                    let cosine =
                        crate::substrate::memory::dot(&request.embedding, e) / (norm * query_norm);
                    if !cosine.is_finite() || (cosine - h.score).abs() > SCORE_TOLERANCE {
                        return Err(forged("a score is not the cosine of its embedding"));
                    }
                }
                _ => {
                    return Err(forged(
                        "embedding missing, unasked for, or of the wrong dimension",
                    ));
                }
            }
        }
        let identity = self.signer(answer, now)?;
        let signature = HybridSignature::from_bytes(&answer.signature)
            .map_err(|_| forged("malformed signature"))?;
        if signature.has_post_quantum() {
            return Err(forged("an answer is signed with Ed25519 alone"));
        }
        let message = response_message(id, digest, &answer.source, &answer.hits);
        identity
            .verify_ed25519(labels::QUERY_RESPONSE, &message, &signature)
            .map_err(|_| forged("signature does not verify"))
    }

    fn reconcile_local(
        &mut self,
        q: Query,
        options: &QueryOptions,
        now: u64,
    ) -> Result<QueryOutcome, Error> {
        let top_k = usize::from(q.request.top_k);
        let config = ReconcileConfig {
            top_k,
            max_per_source: options.max_per_source.unwrap_or(top_k),
            max_hits_per_response: top_k,
            ..ReconcileConfig::default()
        };
        let mut reconciler: Reconciler<Payload> = Reconciler::new(config, now);
        let local = ReplicaId::new(self.local_node.0);
        let mut own_error = None;
        match q.local {
            LocalSearch::Done(hits) => {
                let hits = hits
                    .into_iter()
                    .map(|h| Hit {
                        pattern: PatternId::new(h.pattern),
                        score: h.score,
                        version: Hlc::new(h.timestamp_ms, 0, ReplicaId::ZERO),
                        payload: (h.metadata, h.embedding),
                    })
                    .collect();
                let _ = reconciler.add(
                    local,
                    CrdtResponse {
                        source: local,
                        hits,
                    },
                );
            }
            LocalSearch::Failed(e) => own_error = Some(e),
            LocalSearch::Pending => {}
        }
        let mut peers: BTreeMap<NodeId, PeerOutcome> = BTreeMap::new();
        // Every answer held was checked when it arrived.
        for (source, answer) in &q.responses {
            let node = NodeId(*source);
            if node == self.local_node {
                continue;
            }
            let hits: Vec<Hit<Payload>> = answer.hits.iter().map(to_hit).collect();
            let count = hits.len();
            let replica = ReplicaId::new(*source);
            let status = match reconciler.add(
                replica,
                CrdtResponse {
                    source: replica,
                    hits,
                },
            ) {
                Ok(()) => PeerStatus::Answered { hits: count },
                Err(reason) => PeerStatus::Rejected(format!("{reason:?}")),
            };
            peers.insert(
                node,
                PeerOutcome {
                    node,
                    status,
                    reported_by: None,
                },
            );
        }
        for (node, reason) in &q.rejected {
            peers.entry(*node).or_insert(PeerOutcome {
                node: *node,
                status: PeerStatus::Rejected(reason.clone()),
                reported_by: None,
            });
        }
        for c in q.children.values() {
            let (Some(node), Some(status)) = (c.node, &c.status) else {
                continue;
            };
            if matches!(status, PeerStatus::Answered { .. }) && !peers.contains_key(&node) {
                // It answered, but its own signed answer never reached this node
                // (it answered another path first, whose answer was lost).
                peers.insert(
                    node,
                    PeerOutcome {
                        node,
                        status: PeerStatus::Rejected("its signed answer did not arrive".into()),
                        reported_by: None,
                    },
                );
                continue;
            }
            peers.entry(node).or_insert(PeerOutcome {
                node,
                status: status.clone(),
                reported_by: None,
            });
        }
        for r in q.reports {
            if r.node == self.local_node {
                continue;
            }
            let reported = PeerOutcome {
                node: r.node,
                status: r.status,
                reported_by: Some(r.reported_by),
            };
            match peers.entry(r.node) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(reported);
                }
                // A node reached by several paths: one that says it answered
                // beats another that says it timed out. Verified outcomes stay.
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let held = o.get();
                    if held.reported_by.is_some()
                        && !matches!(held.status, PeerStatus::Answered { .. })
                        && matches!(reported.status, PeerStatus::Answered { .. })
                    {
                        o.insert(reported);
                    }
                }
            }
        }
        let reconciled = reconciler.finish();
        if let Some(e) = own_error
            && reconciled.hits.is_empty()
        {
            return Err(Error::Substrate(e));
        }
        let results = reconciled
            .hits
            .into_iter()
            .map(|h| FederatedResult {
                pattern: h.pattern,
                score: h.score,
                timestamp_ms: h.version.physical_ms(),
                metadata: h.payload.0.into_iter().collect(),
                embedding: h.payload.1,
                provenance: h
                    .provenance
                    .iter()
                    .map(|p| NodeId(*p.source.as_bytes()))
                    .collect(),
            })
            .collect();
        let peers: Vec<PeerOutcome> = peers.into_values().collect();
        let complete = peers
            .iter()
            .all(|p| matches!(p.status, PeerStatus::Answered { .. }));
        Ok(QueryOutcome {
            results,
            peers,
            complete,
            candidates: reconciled.candidates,
            conflicts: reconciled.conflicts,
        })
    }

    /// Signs this node's answer to query `id` (for onion deliveries).
    pub(super) fn sign_answer(
        &self,
        id: &[u8; QUERY_ID_LEN],
        digest: &[u8; 32],
        hits: Vec<WireHit>,
    ) -> Option<SignedHits> {
        let message = response_message(id, digest, &self.local_node.0, &hits);
        let signature = self
            .config
            .identity
            .sign_ed25519(labels::QUERY_RESPONSE, &message)
            .ok()?;
        Some(SignedHits {
            source: self.local_node.0,
            identity: self.config.identity.public().as_bytes().to_vec(),
            hits,
            signature: signature.to_bytes(),
        })
    }
}
