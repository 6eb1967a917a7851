//! The core's defences, each shown by an invariant it protects: what the server
//! refuses whatever a client sends, that honest load is never punished, that a
//! policy admits in both directions, that answers and CRDT chunks from a lying
//! peer change nothing, and that unfinished handshakes cannot lock members out.
//!
//! The tests drive cores through an in-memory network and, where a peer must
//! misbehave, reach into the node under test's peer (its session channels and
//! identity) to send what an honest node never would.

use std::collections::{HashMap, VecDeque};

use fed_crdt::{Codec, HlcClock, LwwMap};
use fed_handshake::{Allowlist, Capability, CapabilitySet, Open};
use rand_chacha::rand_core::SeedableRng;

use super::*;
use crate::{
    substrate::{MemorySubstrate, Pattern, PatternId},
    types::{CutOffReason, PeerStatus},
    wire::{self, Kind, QueryResponse, Refusal, SharedValue, SignedHits, SyncChunk, WireHit},
};

const FED: FederationId = FederationId([0xde; 32]);
const T0: u64 = 1_800_000_000_000;

fn identity(seed: u8) -> Arc<Identity> {
    Arc::new(Identity::from_seeds(&[seed; 32], None))
}

fn config(seed: u8) -> CoreConfig {
    CoreConfig::new(identity(seed), FED, Arc::new(Open))
}

/// A message on its way, or an answer a test holds back to tamper with.
enum Msg {
    Request {
        to: usize,
        from: usize,
        protocol: Protocol,
        out: OutboundId,
        bytes: Vec<u8>,
    },
    Response {
        to: usize,
        out: OutboundId,
        bytes: Vec<u8>,
    },
}

/// Cores joined by an in-memory network: messages are carried in order until
/// the network is quiet.
struct Net {
    cores: Vec<Core>,
    substrates: Vec<MemorySubstrate>,
    now: u64,
    queue: VecDeque<Msg>,
    owed: HashMap<(usize, InboundId), (usize, OutboundId, Protocol)>,
    next_inbound: u64,
    next_command: u64,
    completions: HashMap<CommandId, Completion>,
    events: Vec<(usize, MeshEvent)>,
    /// Answers from this node on this protocol are handed to `intercept`
    /// instead of delivered.
    tap: Option<(usize, Protocol)>,
    tapped: Vec<(usize, OutboundId, Vec<u8>)>,
    /// Requests from these nodes to this one wait in `held` until
    /// [`release`](Self::release): a slow link.
    hold: Option<(Vec<usize>, usize)>,
    held: Vec<Msg>,
    /// The actions of this core, in order, are noted in `watched`.
    watch: Option<usize>,
    watched: Vec<Watched>,
    /// Every core's own writes (`Action::Store`), in order.
    stored: Vec<(usize, StateWrite)>,
}

/// An action of the watched core.
#[derive(Debug, PartialEq, Eq)]
enum Watched {
    /// A replica write: whether it holds a `Prepared` record, a `Committed`
    /// record, and only `Committed` records.
    Persist {
        prepared: bool,
        committed: bool,
        only_committed: bool,
    },
    /// A message on the consensus protocol, to this core.
    Send { to: usize },
    /// A command of this core's finished.
    Complete,
    /// A batch's event (`MeshEvent::Committed`: audit, substrate).
    Committed,
}

impl Net {
    fn new(configs: Vec<CoreConfig>) -> Self {
        let cores: Vec<Core> = configs
            .into_iter()
            .enumerate()
            .map(|(i, c)| Core::new(c, [i as u8 + 1; 32], T0).unwrap())
            .collect();
        let substrates = cores.iter().map(|_| MemorySubstrate::new()).collect();
        let mut net = Self {
            cores,
            substrates,
            now: T0,
            queue: VecDeque::new(),
            owed: HashMap::new(),
            next_inbound: 1,
            next_command: 1,
            completions: HashMap::new(),
            events: Vec::new(),
            tap: None,
            tapped: Vec::new(),
            hold: None,
            held: Vec::new(),
            watch: None,
            watched: Vec::new(),
            stored: Vec::new(),
        };
        for i in 0..net.cores.len() {
            net.cores[i].handle_timeout(T0);
        }
        net.run();
        net
    }

    fn peer(&self, i: usize) -> PeerId {
        self.cores[i].peer_id()
    }

    fn index(&self, peer: &PeerId) -> Option<usize> {
        self.cores.iter().position(|c| c.peer_id() == *peer)
    }

    fn connect(&mut self, a: usize, b: usize) {
        let (pa, pb) = (self.peer(a), self.peer(b));
        self.cores[a].handle_connected(pb, None, self.now);
        self.cores[b].handle_connected(pa, None, self.now);
        self.run();
    }

    /// Carries out every core's actions, then every message, until quiet.
    fn run(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.cores.len() {
                while let Some(action) = self.cores[i].poll_action() {
                    moved = true;
                    self.act(i, action);
                }
            }
            if let Some(msg) = self.queue.pop_front() {
                moved = true;
                self.deliver(msg);
            }
            if !moved {
                return;
            }
        }
        panic!("the network did not settle");
    }

    fn act(&mut self, i: usize, action: Action) {
        if self.watch == Some(i) {
            match &action {
                Action::Persist(writes) => self.watched.push(Watched::Persist {
                    prepared: writes
                        .iter()
                        .any(|w| matches!(w, fed_pbft::Persist::Prepared { .. })),
                    committed: writes
                        .iter()
                        .any(|w| matches!(w, fed_pbft::Persist::Committed { .. })),
                    only_committed: writes
                        .iter()
                        .all(|w| matches!(w, fed_pbft::Persist::Committed { .. })),
                }),
                Action::Send {
                    peer,
                    protocol: Protocol::Pbft,
                    ..
                } => {
                    if let Some(to) = self.index(peer) {
                        self.watched.push(Watched::Send { to });
                    }
                }
                Action::Complete { .. } => self.watched.push(Watched::Complete),
                Action::Event(MeshEvent::Committed(_)) => self.watched.push(Watched::Committed),
                _ => {}
            }
        }
        match action {
            Action::Send {
                peer,
                protocol,
                id,
                payload,
            } => {
                if let Some(to) = self.index(&peer) {
                    let msg = Msg::Request {
                        to,
                        from: i,
                        protocol,
                        out: id,
                        bytes: payload,
                    };
                    match &self.hold {
                        Some((from, dest)) if from.contains(&i) && *dest == to => {
                            self.held.push(msg);
                        }
                        _ => self.queue.push_back(msg),
                    }
                }
            }
            Action::Respond { id, payload } => {
                if let Some((to, out, protocol)) = self.owed.remove(&(i, id)) {
                    if self.tap == Some((i, protocol)) {
                        self.tapped.push((to, out, payload));
                    } else if payload.is_empty() {
                        let now = self.now;
                        self.cores[to].handle_send_failed(out, SendFailure::ConnectionClosed, now);
                    } else {
                        self.queue.push_back(Msg::Response {
                            to,
                            out,
                            bytes: payload,
                        });
                    }
                }
            }
            Action::Search { id, query } => {
                let result = self.substrates[i].query(&query);
                let now = self.now;
                self.cores[i].handle_search_done(id, result, now);
            }
            Action::Complete {
                command,
                completion,
            } => {
                self.completions.insert(command, completion);
            }
            Action::Event(e) => self.events.push((i, e)),
            Action::Ban { peer } => {
                if let Some(j) = self.index(&peer) {
                    let (me, now) = (self.peer(i), self.now);
                    self.cores[j].handle_disconnected(me, now);
                }
            }
            Action::Store(writes) => self.stored.extend(writes.into_iter().map(|w| (i, w))),
            Action::Dial { .. }
            | Action::Unban { .. }
            | Action::Persist(_)
            | Action::EnterEpoch { .. } => {}
        }
    }

    fn deliver(&mut self, msg: Msg) {
        let now = self.now;
        match msg {
            Msg::Request {
                to,
                from,
                protocol,
                out,
                bytes,
            } => {
                let id = InboundId(self.next_inbound);
                self.next_inbound += 1;
                self.owed.insert((to, id), (from, out, protocol));
                let peer = self.peer(from);
                self.cores[to].handle_request(peer, protocol, id, bytes, now);
            }
            Msg::Response { to, out, bytes } => self.cores[to].handle_response(out, bytes, now),
        }
    }

    /// Delivers each sender's last held request first, then the others in
    /// order (a late message overtaking earlier ones on another stream).
    fn release_last_first(&mut self) {
        let mut held = std::mem::take(&mut self.held);
        let mut senders = Vec::new();
        for m in &held {
            if let Msg::Request { from, .. } = m
                && !senders.contains(from)
            {
                senders.push(*from);
            }
        }
        for s in senders {
            if let Some(k) = held
                .iter()
                .rposition(|m| matches!(m, Msg::Request { from, .. } if *from == s))
            {
                let m = held.remove(k);
                self.queue.push_back(m);
            }
        }
        self.queue.extend(held);
        self.run();
    }

    /// Delivers the held requests, in order.
    fn release(&mut self) {
        self.queue.extend(self.held.drain(..));
        self.run();
    }

    /// Delivers the held requests, the last first (later messages overtake
    /// earlier ones, as on separate streams).
    fn release_reversed(&mut self) {
        self.queue.extend(self.held.drain(..).rev());
        self.run();
    }

    /// Breaks the connection between `a` and `b` (their sessions end).
    fn disconnect(&mut self, a: usize, b: usize) {
        let (pa, pb, now) = (self.peer(a), self.peer(b), self.now);
        self.cores[a].handle_disconnected(pb, now);
        self.cores[b].handle_disconnected(pa, now);
        self.run();
    }

    /// Lets `ms` milliseconds pass, 5 at a time: every core's timers fire and
    /// the network settles after each step.
    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + 5).min(end);
            let now = self.now;
            for i in 0..self.cores.len() {
                self.cores[i].handle_timeout(now);
            }
            self.run();
        }
    }

    /// Starts `command` at core `i`; its completion lands in `completions`.
    fn submit(&mut self, i: usize, command: Command) -> CommandId {
        let id = CommandId(self.next_command);
        self.next_command += 1;
        let now = self.now;
        self.cores[i].command(id, command, now);
        self.run();
        id
    }

    fn command(&mut self, i: usize, command: Command) -> Completion {
        let id = CommandId(self.next_command);
        self.next_command += 1;
        let now = self.now;
        self.cores[i].command(id, command, now);
        self.run();
        self.completions.remove(&id).expect("the command completed")
    }

    fn query(&mut self, i: usize, embedding: Vec<f32>) -> crate::types::QueryOutcome {
        let command = Command::Query {
            query: PatternQuery::new(embedding, 5),
            scope: crate::types::FederationScope::Direct,
            options: crate::types::QueryOptions::default(),
        };
        match self.command(i, command) {
            Completion::Queried(Ok(outcome)) => outcome,
            other => panic!("{other:?}"),
        }
    }

    /// A request from `from` to `to`, sealed in `from`'s session whatever its
    /// own checks would say; returns `to`'s raw answer.
    fn forced_request(
        &mut self,
        from: usize,
        to: usize,
        protocol: Protocol,
        plaintext: &[u8],
    ) -> Vec<u8> {
        let to_peer = self.peer(to);
        let s = self.cores[from]
            .peers
            .get_mut(&to_peer)
            .and_then(|p| p.test_out())
            .expect("a session");
        let mut bytes = s.id.to_vec();
        bytes.extend_from_slice(&s.session.channel.seal(plaintext).unwrap());
        self.raw_request(from, to, protocol, bytes)
    }

    fn raw_request(
        &mut self,
        from: usize,
        to: usize,
        protocol: Protocol,
        bytes: Vec<u8>,
    ) -> Vec<u8> {
        let id = InboundId(self.next_inbound);
        self.next_inbound += 1;
        let (peer, now) = (self.peer(from), self.now);
        self.cores[to].handle_request(peer, protocol, id, bytes, now);
        let mut answer = Vec::new();
        while let Some(action) = self.cores[to].poll_action() {
            match action {
                Action::Respond { id: r, payload } if r == id => answer = payload,
                other => self.act(to, other),
            }
        }
        answer
    }

    /// Opens an answer `from` sent `to` in the session `to` holds with it.
    fn open_answer(&mut self, to: usize, from: usize, answer: &[u8]) -> Vec<u8> {
        let from_peer = self.peer(from);
        let s = self.cores[to]
            .peers
            .get_mut(&from_peer)
            .and_then(|p| p.test_out())
            .expect("a session");
        match wire::parse_response(answer).unwrap() {
            wire::RawResponse::Sealed(frame) => s.session.channel.open(frame).unwrap(),
            wire::RawResponse::Refused(r) => panic!("refused in the clear: {r}"),
        }
    }

    /// Whether core `a` holds an outbound and an inbound session with `b`.
    fn peers_of(&self, a: usize, b: usize) -> (bool, bool) {
        self.cores[a]
            .peers
            .get(&self.peer(b))
            .map_or((false, false), |p| {
                (p.out_session_ref().is_some(), p.in_session_ref().is_some())
            })
    }

    fn cut_off(&self, by: usize, whom: usize) -> Option<CutOffReason> {
        let peer = self.peer(whom);
        self.events.iter().find_map(|(i, e)| match e {
            MeshEvent::PeerCutOff {
                peer: p, reason, ..
            } if *i == by && *p == peer => Some(*reason),
            _ => None,
        })
    }
}

fn refusal_in(net: &mut Net, to: usize, from: usize, answer: &[u8]) -> Option<Refusal> {
    let plaintext = net.open_answer(to, from, answer);
    match wire::open_envelope(&plaintext).unwrap() {
        (Kind::Refused, body) => Some(wire::decode::<Refusal>(body, "refusal").unwrap()),
        _ => None,
    }
}

fn query_request() -> Vec<u8> {
    let request = wire::QueryRequest {
        id: [9; 16],
        hops_left: 0,
        fanout: 1,
        budget_ms: 1000,
        top_k: 3,
        embedding: vec![1.0, 0.0],
        filter: Vec::new(),
        embeddings: false,
    };
    wire::envelope(Kind::QueryRequest, &wire::encode(&request))
}

#[test]
fn the_server_refuses_what_the_token_does_not_allow_whatever_the_client_sends() {
    let mut b = config(2);
    b.capabilities.set = CapabilitySet::EMPTY.with(Capability::CrdtSync);
    let mut net = Net::new(vec![config(1), b]);
    net.connect(0, 1);
    // A's token from B grants sync only: a query, sealed anyway, is refused.
    let answer = net.forced_request(0, 1, Protocol::Query, &query_request());
    assert_eq!(
        refusal_in(&mut net, 0, 1, &answer),
        Some(Refusal::CapabilityDenied)
    );
    assert_eq!(net.cores[1].stats().queries_served, 0);

    // With the capability, an expired token and then a revoked one are refused.
    let mut net = Net::new(vec![config(1), config(2)]);
    net.connect(0, 1);
    let b = net.peer(1);
    let token = net.cores[0]
        .peers
        .get_mut(&b)
        .unwrap()
        .test_out()
        .unwrap()
        .session
        .token
        .clone();
    net.now = token.body().expires_at;
    let answer = net.forced_request(0, 1, Protocol::Query, &query_request());
    assert_eq!(
        refusal_in(&mut net, 0, 1, &answer),
        Some(Refusal::TokenExpired)
    );
    net.now = T0 + 1;
    net.cores[1].revoke_token(token.body().id);
    let answer = net.forced_request(0, 1, Protocol::Query, &query_request());
    assert_eq!(
        refusal_in(&mut net, 0, 1, &answer),
        Some(Refusal::TokenRevoked)
    );
    assert_eq!(net.cores[1].stats().queries_served, 0);
}

#[test]
fn requests_over_the_rate_are_refused_but_never_get_the_peer_cut_off() {
    let mut net = Net::new(vec![config(1), config(2)]);
    net.connect(0, 1);
    // The default rate is 100 per second with a second's burst; send 400 at once.
    let mut refused = 0;
    for _ in 0..400 {
        let answer = net.forced_request(0, 1, Protocol::Query, &query_request());
        if let Some(r) = refusal_in(&mut net, 0, 1, &answer) {
            assert!(
                matches!(r, Refusal::RateLimited | Refusal::TooManyInFlight),
                "{r}"
            );
            refused += 1;
        }
    }
    assert!(refused >= 290, "{refused} refused");
    assert_eq!(net.cut_off(1, 0), None);
    assert_eq!(net.cores[1].peer_count(), 1);
    // A second later the peer is served again.
    net.now += 1_000;
    let answer = net.forced_request(0, 1, Protocol::Query, &query_request());
    assert_eq!(refusal_in(&mut net, 0, 1, &answer), None);
}

#[test]
fn an_honest_node_paces_itself_to_the_token_it_holds() {
    let mut net = Net::new(vec![config(1), config(2)]);
    net.connect(0, 1);
    for _ in 0..300 {
        net.query(0, vec![1.0, 0.0]);
    }
    for n in 0..60u8 {
        net.command(
            0,
            Command::Put {
                key: vec![n],
                value: vec![n],
            },
        );
    }
    assert_eq!(net.cores[1].stats().refusals_sent.get("rate_limited"), None);
    assert_eq!(net.cut_off(1, 0), None);
}

#[test]
fn a_peer_sending_without_a_session_is_cut_off_after_max_strikes_and_strikes_fade() {
    let mut net = Net::new(vec![config(1), config(2)]);
    net.connect(0, 1);
    let max = net.cores[1].config.limits.max_strikes;
    let junk = || {
        let mut b = vec![0xaa; 8];
        b.extend_from_slice(&[0x55; 48]);
        b
    };
    // Spaced out, strikes are forgotten: never cut off.
    for _ in 0..3 * max {
        net.now += STRIKE_GAP_MS;
        let answer = net.raw_request(0, 1, Protocol::Sync, junk());
        assert_eq!(
            wire::parse_response(&answer),
            Ok(wire::RawResponse::Refused(Refusal::NoSession))
        );
    }
    assert_eq!(net.cut_off(1, 0), None);
    // In a row: cut off at exactly the limit.
    net.now += STRIKE_GAP_MS;
    for n in 1..=max {
        assert_eq!(net.cut_off(1, 0), None, "cut off after {} strikes", n - 1);
        net.raw_request(0, 1, Protocol::Sync, junk());
    }
    assert_eq!(net.cut_off(1, 0), Some(CutOffReason::Abuse));
}

/// More than [`STRIKE_MEMORY_MS`] between strikes.
const STRIKE_GAP_MS: u64 = 61_000;

#[test]
fn a_node_takes_no_session_with_a_peer_its_policy_does_not_admit() {
    // B admits C only. A, an outsider, connects: neither direction gives A a
    // session with B, so B neither asks A anything nor takes anything from it.
    let c_node = identity(3).node_id();
    let mut b = config(2);
    b.admission = Arc::new(Allowlist::new([c_node]));
    let mut net = Net::new(vec![config(1), b, config(3)]);
    net.substrates[0]
        .insert(Pattern {
            id: PatternId::from_u64(1),
            embedding: vec![1.0, 0.0],
            metadata: Default::default(),
            timestamp_ms: T0,
        })
        .unwrap();
    net.connect(0, 1);
    net.connect(2, 1);
    assert_eq!(net.cores[1].peer_count(), 1, "{:?}", net.cores[1].peers());
    let outcome = net.query(1, vec![1.0, 0.0]);
    assert!(outcome.results.is_empty(), "{outcome:?}");
    assert!(outcome.peer(&identity(1).node_id()).is_none());
    // A writes; its write never reaches B.
    net.command(
        0,
        Command::Put {
            key: b"k".to_vec(),
            value: b"from the outsider".to_vec(),
        },
    );
    net.now += 3_000;
    for i in 0..3 {
        net.cores[i].handle_timeout(net.now);
    }
    net.run();
    assert_eq!(net.cores[1].shared_get(b"k"), None);
}

/// O (0) asks A (1) and B (2); A's answer is replaced by what the test builds.
fn answer_tampered_by_a(
    build: impl FnOnce(&mut Net) -> QueryResponse,
) -> (Net, crate::types::QueryOutcome) {
    let mut net = Net::new(vec![config(1), config(2), config(3)]);
    for (i, id) in [(1usize, 10u64), (2, 20)] {
        net.substrates[i]
            .insert(Pattern {
                id: PatternId::from_u64(id),
                embedding: vec![1.0, i as f32 * 0.1],
                metadata: Default::default(),
                timestamp_ms: T0,
            })
            .unwrap();
    }
    net.connect(0, 1);
    net.connect(0, 2);
    net.tap = Some((1, Protocol::Query));
    let id = CommandId(999);
    let command = Command::Query {
        query: PatternQuery::new(vec![1.0, 0.0], 5),
        scope: crate::types::FederationScope::Direct,
        options: crate::types::QueryOptions::default(),
    };
    let now = net.now;
    net.cores[0].command(id, command, now);
    // Hold B's answer back too, so A's forgery arrives first.
    let mut held = Vec::new();
    for _ in 0..100 {
        for i in 0..3 {
            while let Some(a) = net.cores[i].poll_action() {
                net.act(i, a);
            }
        }
        match net.queue.pop_front() {
            Some(Msg::Response { to: 0, out, bytes }) => held.push((out, bytes)),
            Some(m) => net.deliver(m),
            None => break,
        }
    }
    let (to, out, _) = net.tapped.pop().expect("A answered");
    let forged = build(&mut net);
    let a_peer = net.peer(0);
    let s = net.cores[1]
        .peers
        .get_mut(&a_peer)
        .unwrap()
        .test_inb()
        .unwrap();
    let plaintext = wire::envelope(Kind::QueryResponse, &wire::encode(&forged));
    let mut bytes = vec![0];
    bytes.extend_from_slice(&s.session.channel.seal(&plaintext).unwrap());
    net.cores[to].handle_response(out, bytes, now);
    for (out, bytes) in held {
        net.cores[0].handle_response(out, bytes, now);
    }
    net.tap = None;
    net.run();
    match net.completions.remove(&id) {
        Some(Completion::Queried(Ok(outcome))) => (net, outcome),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_forged_answer_in_another_nodes_name_changes_nothing_and_its_sender_is_cut_off() {
    let b = identity(3);
    let (net, outcome) = answer_tampered_by_a(|_| QueryResponse {
        responses: vec![SignedHits {
            source: b.node_id().0,
            identity: b.public().as_bytes().to_vec(),
            hits: vec![WireHit {
                pattern: [7; 32],
                score: 1.0,
                timestamp_ms: T0,
                metadata: Vec::new(),
                embedding: None,
            }],
            signature: vec![0; 65],
        }],
        reports: Vec::new(),
        seen: true,
    });
    // B's real answer is there, under B's name; the forgery is not.
    let b_hits: Vec<_> = outcome
        .results
        .iter()
        .filter(|r| r.provenance == vec![b.node_id()])
        .map(|r| r.pattern)
        .collect();
    assert_eq!(b_hits, vec![PatternId::from_u64(20)], "{outcome:?}");
    assert_eq!(
        outcome.peer(&b.node_id()).unwrap().status,
        PeerStatus::Answered { hits: 1 }
    );
    assert_eq!(net.cut_off(0, 1), Some(CutOffReason::Malformed));
}

#[test]
fn the_cosine_check_catches_a_signed_lie_about_a_score() {
    let query = wire::QueryRequest {
        id: [1; 16],
        hops_left: 0,
        fanout: 1,
        budget_ms: 1000,
        top_k: 3,
        embedding: vec![1.0, 0.0],
        filter: Vec::new(),
        embeddings: true,
    };
    let digest = super::query::query_digest(&query);
    let net = Net::new(vec![config(1)]);
    let a = identity(5);
    let answer = |score: f32| {
        let hits = vec![WireHit {
            pattern: [8; 32],
            score,
            timestamp_ms: T0,
            metadata: Vec::new(),
            embedding: Some(vec![0.6, 0.8]),
        }];
        let message = super::query::response_message(&query.id, &digest, &a.node_id().0, &hits);
        SignedHits {
            source: a.node_id().0,
            identity: a.public().as_bytes().to_vec(),
            hits,
            signature: a
                .sign_ed25519(labels::QUERY_RESPONSE, &message)
                .unwrap()
                .to_bytes(),
        }
    };
    // cos((1, 0), (0.6, 0.8)) = 0.6.
    assert!(
        net.cores[0]
            .check_answer(&answer(0.6), &query.id, &query, &digest, T0)
            .is_ok()
    );
    assert!(matches!(
        net.cores[0].check_answer(&answer(0.95), &query.id, &query, &digest, T0),
        Err(super::query::AnswerProblem::Forged(_))
    ));
    // The signature binds the hits: changing one after signing fails too.
    let mut tampered = answer(0.6);
    tampered.hits[0].pattern = [9; 32];
    assert!(
        net.cores[0]
            .check_answer(&tampered, &query.id, &query, &digest, T0)
            .is_err()
    );
}

#[test]
fn a_chunk_naming_made_up_frontier_origins_is_not_applied_and_sync_goes_on() {
    let mut net = Net::new(vec![config(1), config(2)]);
    net.connect(0, 1);
    // A chunk with no entries whose frontier claims 2000 writers nobody knows.
    let mut fake: LwwMap<Vec<u8>, SharedValue> = LwwMap::new();
    for n in 0..2000u64 {
        let mut clock = HlcClock::with_default_skew(fed_crdt::ReplicaId::from_u64(n + 1));
        fake.insert(
            vec![1],
            SharedValue {
                value: None,
                signature: Vec::new(),
            },
            &mut clock,
            T0,
        )
        .unwrap();
    }
    let limits = fed_crdt::Limits {
        max_origins: 4096,
        ..fed_crdt::Limits::DEFAULT
    };
    let delta = fake.delta_for(&fake.sync_request(), &limits).unwrap();
    assert!(delta.is_empty());
    let chunk = wire::envelope(
        Kind::SyncChunk,
        &wire::encode(&SyncChunk {
            delta: delta.encode(&limits).unwrap(),
        }),
    );
    // Deliver it as B's answer to A's next pull of the shared map.
    net.tap = Some((1, Protocol::Sync));
    net.now += 3_000;
    let now = net.now;
    net.cores[0].handle_timeout(now);
    net.run();
    let a_peer = net.peer(0);
    let s = net.cores[1]
        .peers
        .get_mut(&a_peer)
        .unwrap()
        .test_inb()
        .unwrap();
    let mut bytes = vec![0];
    bytes.extend_from_slice(&s.session.channel.seal(&chunk).unwrap());
    // The round pulls the directory, then the shared map: the directory's
    // answer goes through, the shared map's is replaced.
    let tapped = std::mem::take(&mut net.tapped);
    assert_eq!(tapped.len(), 2);
    let (to, out, real) = &tapped[0];
    net.cores[*to].handle_response(*out, real.clone(), now);
    let (to, out, _) = &tapped[1];
    net.cores[*to].handle_response(*out, bytes, now);
    net.tap = None;
    net.run();
    assert!(net.cores[0].stats().sync_rejected >= 1);
    // The node's own pulls still encode and an honest write still arrives.
    net.command(
        1,
        Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
    );
    assert_eq!(net.cores[0].shared_get(b"k"), Some(b"v".to_vec()));
    assert!(net.cores[0].shared.frontier_len() < 10);
}

#[test]
fn hellos_that_are_never_finished_cannot_lock_members_out() {
    let mut net = Net::new(vec![config(1), config(2)]);
    let limit = net.cores[1].config.limits.max_pending_handshakes;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let b_peer = net.peer(1);
    // Many peers each send a hello and never finish.
    for n in 0..(limit + 20) as u8 {
        let who = Arc::new(Identity::from_seeds(&[n.wrapping_add(100); 32], None));
        let peer = peer_id_of_identity(who.public()).unwrap();
        let ic = fed_handshake::InitiatorConfig::new(who, FED, fed_handshake::ResponderTrust::Any);
        let mut initiator = fed_handshake::Initiator::new(
            Arc::new(ic),
            &channel_binding(&peer, &b_peer),
            T0,
            &mut rng,
        )
        .unwrap();
        let hello = initiator.poll_transmit().unwrap();
        let now = net.now;
        net.cores[1].handle_connected(peer, None, now);
        net.cores[1].handle_request(
            peer,
            Protocol::Handshake,
            InboundId(50_000 + u64::from(n)),
            hello,
            now,
        );
        while net.cores[1].poll_action().is_some() {}
        net.now += 1;
        assert!(
            net.cores[1].pending_inbound() <= limit,
            "unfinished handshakes beyond the bound"
        );
    }
    // An honest node still joins.
    net.connect(0, 1);
    assert_eq!(net.cores[0].peer_count(), 1);
    assert_eq!(net.cores[1].peer_count(), 1);
}

/// A node restarted with a wall clock an hour behind its stored writes still
/// stamps its next write (to a new key) above all of them: peers whose
/// frontier covers its old writes would otherwise never take the new one.
#[test]
fn a_restarted_node_writes_above_its_stored_stamps_whatever_its_clock() {
    let id = identity(1);
    let own = fed_crdt::ReplicaId::new(id.node_id().0);
    let ahead = fed_crdt::Hlc::new(T0 + 3_600_000, 7, own);
    let stored = fed_crdt::Entry::new(
        ahead,
        Some(SharedValue {
            value: Some(serde_bytes::ByteBuf::from(b"old".to_vec())),
            signature: Vec::new(),
        }),
    );
    let mut c = config(1);
    c.state = Some(NodeState {
        shared: vec![(b"old key".to_vec(), wire::encode(&stored))],
        ..NodeState::default()
    });
    let mut core = Core::new(c, [1; 32], T0).unwrap();
    assert_eq!(core.shared.get(b"old key"), Some(b"old".to_vec()));
    while core.poll_action().is_some() {}
    core.command(
        CommandId(1),
        Command::Put {
            key: b"new key".to_vec(),
            value: b"new".to_vec(),
        },
        T0,
    );
    let mut stamp = None;
    while let Some(a) = core.poll_action() {
        if let Action::Store(writes) = a {
            for w in writes {
                if let StateWrite::MapEntry { key, entry, .. } = w
                    && key == b"new key"
                {
                    let e: fed_crdt::Entry<SharedValue> = wire::decode(&entry, "entry").unwrap();
                    stamp = Some(e.stamp());
                }
            }
        }
    }
    let stamp = stamp.expect("the write is stored");
    assert!(stamp > ahead, "{stamp:?} is not above {ahead:?}");
}

/// A federation whose genesis lists the cores of `voters` (seeds) as voting
/// members, checkpointing every 4 batches; replicas in memory.
fn consensus(seed: u8, voters: &[u8]) -> CoreConfig {
    let genesis_hash = [0x6e; 32];
    let m = fed_pbft::Membership::with_context(
        voters
            .iter()
            .map(|s| identity(*s).public().clone())
            .collect(),
        genesis_hash,
    )
    .unwrap();
    let mut pbft = fed_pbft::Config::default();
    pbft.checkpoint_interval = 4;
    pbft.window = 8;
    pbft.max_clients = 65_536;
    let mut c = config(seed);
    c.consensus = Some(commit::ConsensusConfig {
        federation: FED,
        genesis_hash,
        membership: Arc::new(m),
        pbft,
        addresses: vec![Vec::new(); voters.len()],
        client_slots: 4,
        commit_timeout_ms: 600_000,
        recovered: None,
        epochs: Vec::new(),
        durable: false,
        volatile_replica: true,
        byzantine_votes: false,
    });
    c
}

/// The genesis membership core `i` was configured with.
fn genesis_membership(net: &Net, i: usize) -> Arc<fed_pbft::Membership> {
    net.cores[i]
        .commit
        .as_ref()
        .unwrap()
        .config
        .membership
        .clone()
}

/// Core 0, voting alone, adds the member of `seed` as a voter and removes it
/// again: one more configuration epoch, with the same voters.
fn new_epoch(net: &mut Net, seed: u8) {
    use commit::{Operation, Voter};
    let c = Voter::new(identity(seed).public(), &[]);
    let add = net.submit(0, Command::Commit(Operation::AddVoter(c)));
    let remove = net.submit(
        0,
        Command::Commit(Operation::RemoveVoter(identity(seed).node_id().0)),
    );
    net.advance(1_000);
    committed(net, add);
    committed(net, remove);
}

fn committed(net: &mut Net, id: CommandId) -> commit::CommitReceipt {
    match net.completions.remove(&id) {
        Some(Completion::Committed(Ok(r))) => *r,
        other => panic!("{other:?}"),
    }
}

/// A commit in flight when the epoch changes executes once: B's update
/// reaches A (the only voter) and executes, but B loses A before the replies
/// arrive. A commits a membership change, and its ticks take the epoch to its
/// end. When B meets A again it learns the new epoch from A's chain, reads in
/// the link's client table that its update executed, and fetches the proof
/// from the old epoch, instead of submitting it again.
#[test]
fn a_commit_in_flight_when_the_epoch_changes_executes_once() {
    use commit::Operation;
    let mut net = Net::new(vec![consensus(1, &[1]), consensus(2, &[1])]);
    net.connect(0, 1);
    let update = Operation::Update(crate::substrate::StateUpdate::Opaque {
        kind: "test".into(),
        bytes: vec![1],
    });
    let id = net.submit(1, Command::Commit(update));
    // B's request waits in A's batch; B and A lose each other.
    net.disconnect(0, 1);
    net.advance(20);
    // The epoch changes: the voters become [A] again, under a new membership
    // (C is added and removed again).
    new_epoch(&mut net, 3);
    let status = net.cores[0].consensus_status().unwrap();
    assert_eq!(status.epoch, 1, "A entered the next epoch");
    assert!(!net.completions.contains_key(&id), "B heard nothing yet");
    // Long after A's replies to B expired, they meet again.
    net.advance(5_000);
    net.connect(0, 1);
    net.advance(2_000);
    let receipt = committed(&mut net, id);
    // Exactly once: the update and the two changes, nothing twice.
    assert_eq!(net.cores[0].consensus_status().unwrap().ledger_count, 3);
    assert_eq!(net.cores[1].consensus_status().unwrap().epoch, 1);
    assert!(receipt.epochs.is_empty(), "it executed in epoch 0");
    receipt.verify(&genesis_membership(&net, 0)).unwrap();
}

/// A member away for two epoch changes catches up through both links at
/// once; a forged link naming the genuine link's checkpoint, sent to it first
/// by another member, is refused and does not get the genuine one refused.
#[test]
fn a_member_away_catches_up_and_a_forged_link_blocks_nothing() {
    // A votes; B does not; M, another member, is B's neighbour.
    let mut net = Net::new(vec![
        consensus(1, &[1]),
        consensus(2, &[1]),
        consensus(3, &[1]),
    ]);
    net.connect(0, 1);
    net.connect(1, 2);
    net.disconnect(0, 1);
    // Two changes while B is away: epochs 1 and 2, both with A alone.
    for seed in [7u8, 8] {
        new_epoch(&mut net, seed);
    }
    assert_eq!(net.cores[0].consensus_status().unwrap().epoch, 2);
    assert_eq!(net.cores[1].consensus_status().unwrap().epoch, 0);
    // M sends B the first link with its signatures garbled.
    let chain = net.cores[0].commit.as_ref().unwrap().chain.clone();
    let mut cert: fed_pbft::CheckpointCert =
        wire::decode(&chain[0].cert, "checkpoint certificate").unwrap();
    for (_, sig) in &mut cert.signatures {
        sig.0[0] ^= 1;
    }
    let forged = commit::EpochChain {
        first: 0,
        links: vec![commit::CertifiedState {
            cert: serde_bytes::ByteBuf::from(wire::encode(&cert)),
            state: chain[0].state.clone(),
        }],
    };
    let message = wire::envelope(Kind::EpochChain, &wire::encode(&forged));
    net.forced_request(2, 1, Protocol::Pbft, &message);
    net.run();
    assert_eq!(
        net.cores[1].consensus_status().unwrap().epoch,
        0,
        "forged link taken"
    );
    // B meets A again: A's chain at the session's start takes it to epoch 2.
    net.connect(0, 1);
    net.advance(100);
    let status = net.cores[1].consensus_status().unwrap();
    assert_eq!(status.epoch, 2, "the genuine chain was refused");
    assert_eq!(status.voters, vec![identity(1).node_id()]);
    let changes: Vec<u64> = net
        .events
        .iter()
        .filter(|(i, _)| *i == 1)
        .filter_map(|(_, e)| match e {
            MeshEvent::EpochChanged { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .collect();
    assert_eq!(changes, vec![1, 2], "B reports each change once");
}

/// A node that sends consensus input of an older epoch is sent the chain of
/// links, but at most once per 5 s, and unasked only when the chain grew or
/// 30 s passed: a peer replaying stale input cannot make a voter send its
/// whole chain (up to a session message's size) once per message.
#[test]
fn stale_consensus_input_gets_the_chain_at_a_bounded_rate() {
    // A votes alone; C is a member that does not vote.
    let mut net = Net::new(vec![consensus(1, &[1]), consensus(3, &[1])]);
    net.connect(0, 1);
    for seed in [7u8, 8] {
        new_epoch(&mut net, seed);
    }
    assert_eq!(net.cores[0].commit.as_ref().unwrap().chain.len(), 2);
    // From here, A's requests to C wait in `held`: each is a chain sent.
    net.hold = Some((vec![0], 1));
    net.now += 31_000;
    // Consensus input from a node that is not a replica of A's epoch (its
    // kind, byte 5, is a PREPARE's; A refuses it before decoding more).
    let stale = wire::envelope(
        Kind::Pbft,
        &wire::encode(&vec![serde_bytes::ByteBuf::from(vec![0, 0, 0, 0, 0, 3, 0])]),
    );
    let asked = wire::envelope(
        Kind::EpochChain,
        &wire::encode(&commit::EpochChain {
            first: 0,
            links: Vec::new(),
        }),
    );
    // Consensus messages from A to C (nothing else goes on that protocol
    // here: C commits nothing).
    let sent = |net: &mut Net, message: &[u8], after_ms: u64| {
        net.now += after_ms;
        net.held.clear();
        for _ in 0..20 {
            net.forced_request(1, 0, Protocol::Pbft, message);
        }
        net.held
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    Msg::Request {
                        protocol: Protocol::Pbft,
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(sent(&mut net, &stale, 0), 1, "the first stale input");
    assert_eq!(sent(&mut net, &stale, 4_000), 0, "again within 5 s");
    assert_eq!(
        sent(&mut net, &stale, 2_000),
        0,
        "unasked, within 30 s, the chain the same"
    );
    assert_eq!(sent(&mut net, &asked, 0), 1, "asked, 6 s after the last");
    assert_eq!(sent(&mut net, &asked, 1_000), 0, "asked again within 5 s");
    assert_eq!(
        sent(&mut net, &stale, 28_999),
        0,
        "unasked, 29.999 s after the last, the chain the same"
    );
    assert_eq!(sent(&mut net, &stale, 1), 1, "unasked, 30 s after");
    // The chain grew since the last one sent to C (as if a link came while
    // C had no session): unasked, 6 s later, it goes again.
    let len = net.cores[0].commit.as_ref().unwrap().chain.len();
    let c = net.peer(1);
    let at = net.now;
    net.cores[0]
        .commit
        .as_mut()
        .unwrap()
        .nudged
        .insert(c, (at, len - 1));
    assert_eq!(sent(&mut net, &stale, 6_000), 1, "unasked, the chain grew");
}

/// A member that does not vote may hold a revocation the ledger refused (one
/// applied from a pushed batch). When a certified epoch makes the revoked
/// member a voter, the revocation is lifted there, and the lifting stored:
/// the member can hold a session with it again, as every voter must for the
/// replicas to reach it. The revocation came while the two were connected, so
/// it also banned the member's connection for `ban_ms` (a minute): the ban
/// ends with the revocation.
#[test]
fn a_member_revoked_here_alone_is_admitted_again_once_it_votes() {
    use commit::{Operation, Voter};
    // A votes alone; C does not vote, and keeps its state; X is the member C
    // revoked by itself.
    let mut keeping = consensus(3, &[1]);
    keeping.state = Some(NodeState::default());
    let mut net = Net::new(vec![consensus(1, &[1]), keeping, consensus(7, &[1])]);
    net.connect(0, 1);
    net.connect(0, 2);
    let x = identity(7).node_id();
    let session = |net: &Net| {
        let p = net.peers_of(1, 2);
        p.0 && p.1
    };
    net.connect(1, 2);
    assert!(session(&net));
    // What applying the revocation does at C: X revoked, its connection cut.
    net.cores[1].revoked_members.insert(x.0);
    let (peer_x, now) = (net.peer(2), net.now);
    net.cores[1].cut_off(peer_x, CutOffReason::Revoked, now);
    net.run();
    net.connect(1, 2);
    assert!(!session(&net), "C took X in while it revoked it");
    net.disconnect(1, 2);
    // A makes X a voter; C, A's session peer, is sent the link.
    let add = net.submit(
        0,
        Command::Commit(Operation::AddVoter(Voter::new(identity(7).public(), &[]))),
    );
    net.advance(1_000);
    committed(&mut net, add);
    assert_eq!(net.cores[1].consensus_status().unwrap().epoch, 1);
    assert!(
        net.stored
            .iter()
            .any(|(i, w)| *i == 1 && *w == StateWrite::Unrevoked(commit::Revocation::Member(x))),
        "the lifting is not stored"
    );
    net.connect(1, 2);
    assert!(session(&net), "C refuses the new voter");
}

/// A member told by a reply that its epoch is over (`[3]`), whose copy of the
/// new link was lost, asks the voters of its epoch for the chain once
/// `ask_chain_at` comes (the reply sets it 5 s ahead; here the test does),
/// and enters the next epoch from their answer.
#[test]
fn a_member_told_its_epoch_is_over_asks_for_the_chain() {
    let mut net = Net::new(vec![consensus(1, &[1]), consensus(2, &[1])]);
    net.connect(0, 1);
    // Every request A sends B while the epoch changes is lost.
    net.hold = Some((vec![0], 1));
    new_epoch(&mut net, 3);
    assert_eq!(net.cores[0].consensus_status().unwrap().epoch, 1);
    assert!(!net.held.is_empty(), "A sent B nothing to lose");
    net.held.clear();
    net.hold = None;
    // What a reply `[3]` does at B.
    let now = net.now;
    let c = net.cores[1].commit.as_mut().unwrap();
    c.epoch_over = true;
    c.ask_chain_at = now + 5_000;
    net.advance(4_900);
    assert_eq!(
        net.cores[1].consensus_status().unwrap().epoch,
        0,
        "B learnt the epoch before it asked"
    );
    net.advance(200);
    assert_eq!(net.cores[1].consensus_status().unwrap().epoch, 1);
}

/// A client whose replies come before its batch's pushed proof waits for the
/// push instead of asking a replica for the proof, so a batch crosses the
/// network once per client node, not once per commit (asking at once made
/// nearly every commit under load fetch its whole batch). Voters 2 and 3
/// reach the client late: it completes on the replies of voters 0 and 1, and
/// the proofs of the batches that 2 or 3 push come after the replies.
#[test]
fn a_client_waits_for_the_pushed_proof_instead_of_asking_for_it() {
    let voters = [1, 2, 3, 4];
    let configs = (1..=5).map(|seed| consensus(seed, &voters)).collect();
    let mut net = Net::new(configs);
    for a in 0..5 {
        for b in a + 1..5 {
            net.connect(a, b);
        }
    }
    let m = genesis_membership(&net, 0);
    net.hold = Some((vec![2, 3], 4));
    let mut pushed_late = 0;
    for k in 0..12u8 {
        let update = commit::Operation::Update(crate::substrate::StateUpdate::Opaque {
            kind: "test".into(),
            bytes: vec![k],
        });
        let id = net.submit(4, Command::Commit(update));
        net.advance(20);
        let early = net.completions.contains_key(&id);
        net.release();
        net.advance(20);
        let receipt = committed(&mut net, id);
        receipt.verify(&m).unwrap();
        if !early && receipt.proof.seq % 4 >= 2 {
            pushed_late += 1;
        }
    }
    assert_eq!(net.cores[4].stats().proofs_requested, 0);
    assert!(pushed_late > 0, "some proofs came from a late voter's push");
}

/// A commit of the opaque update `[k, who]`.
fn update(k: u8, who: u8) -> Command {
    Command::Commit(commit::Operation::Update(
        crate::substrate::StateUpdate::Opaque {
            kind: "test".into(),
            bytes: vec![k, who],
        },
    ))
}

/// Four voters (cores 0 to 3) and `nodes - 4` members that do not vote, all
/// connected, with no checkpoint among the first 64 batches.
fn four_voters_without_checkpoints(nodes: u8) -> Net {
    let voters = [1, 2, 3, 4];
    let configs = (1..=nodes)
        .map(|seed| {
            let mut c = consensus(seed, &voters);
            if let Some(cc) = c.consensus.as_mut() {
                cc.pbft.checkpoint_interval = 64;
                cc.pbft.window = 128;
            }
            c
        })
        .collect();
    let mut net = Net::new(configs);
    let n = usize::from(nodes);
    for a in 0..n {
        for b in a + 1..n {
            net.connect(a, b);
        }
    }
    net
}

/// A voter that commits gets the proof of its own batches from its own
/// replica: when it is the batch's pusher (nobody pushes to it) and the
/// replies it needed overtake the COMMITs its replica needed, the commit
/// completes when its replica executes, not after the wait for a push that
/// never comes (`PUSH_WAIT_MS`).
#[test]
fn a_voter_committing_does_not_wait_for_a_push_of_its_own_batches() {
    // No checkpoint among these batches: a stable checkpoint overtaking the
    // COMMITs would bring voter 0 the state without executing the batch
    // (then it asks for the proof after the wait, as it must).
    let mut net = four_voters_without_checkpoints(4);
    let m = genesis_membership(&net, 0);
    let mut own = 0;
    for k in 0..12u8 {
        let update = commit::Operation::Update(crate::substrate::StateUpdate::Opaque {
            kind: "test".into(),
            bytes: vec![k],
        });
        // Everything the other voters send voter 0 arrives late, the last first.
        net.hold = Some((vec![1, 2, 3], 0));
        let id = net.submit(0, Command::Commit(update));
        net.advance(20);
        net.hold = None;
        net.release_reversed();
        net.advance(30);
        assert!(net.completions.contains_key(&id), "commit {k} waited");
        let receipt = committed(&mut net, id);
        receipt.verify(&m).unwrap();
        if receipt.proof.seq.is_multiple_of(4) {
            own += 1;
        }
    }
    assert!(own > 0, "voter 0 pushed some of the batches");
    assert_eq!(net.cores[0].stats().proofs_requested, 0);
}

/// A voter whose replica executes a batch late (the other voters' messages
/// reach it late, the last first; nobody pushes it the proof, mesh.md §9)
/// keeps the batch under every request in it once it does: another client
/// that asks it for the proof of its own request in that batch gets it.
#[test]
fn a_voter_that_executes_a_batch_late_answers_for_every_request_in_it() {
    let mut net = four_voters_without_checkpoints(5);
    let mut checked = 0;
    for k in 0..8u8 {
        // Voter 1 and the member that does not vote submit together: one batch.
        net.hold = Some((vec![0, 2, 3], 1));
        let mine = CommandId(10_000 + u64::from(k) * 2);
        let theirs = CommandId(10_001 + u64::from(k) * 2);
        let now = net.now;
        net.cores[1].command(mine, update(k, 1), now);
        net.cores[4].command(theirs, update(k, 4), now);
        net.run();
        // (When voter 1 is the batch's pusher, the member waits out the push
        // it cannot make yet and asks another voter.)
        net.advance(200);
        assert!(net.completions.contains_key(&theirs), "commit {k}");
        let receipt = committed(&mut net, theirs);
        net.hold = None;
        net.release_reversed();
        net.advance(30);
        committed(&mut net, mine);
        let ask = wire::envelope(
            Kind::ProofRequest,
            &wire::encode(&commit::ProofRequest {
                client: receipt.client.0,
                timestamp: receipt.timestamp,
            }),
        );
        let answer = net.forced_request(4, 1, Protocol::Pbft, &ask);
        let plaintext = net.open_answer(4, 1, &answer);
        let response: commit::ProofResponse =
            wire::decode_body(&plaintext, Kind::ProofResponse, "proof response").unwrap();
        let (_, batch) = response
            .found
            .unwrap_or_else(|| panic!("voter 1 has no proof for batch {}", receipt.proof.seq));
        assert_eq!(batch.as_slice(), &receipt.batch[..]);
        checked += 1;
    }
    assert_eq!(checked, 8);
}

/// A batch's pusher sends its proof to the members with a request in it that
/// do not vote, not to the voters with one: their own replicas execute the
/// batch and give their clients the proof (`a_voter_committing_does_not_wait_…`
/// shows they do not wait for a push). Under load a push was a second copy
/// of every batch to every voter.
#[test]
fn a_batch_is_pushed_only_to_the_members_that_do_not_vote() {
    let mut net = four_voters_without_checkpoints(5);
    let now = net.now;
    net.cores[1].command(CommandId(30_000), update(0, 1), now);
    net.cores[4].command(CommandId(30_001), update(0, 4), now);
    net.run();
    net.advance(200);
    let receipt = committed(&mut net, CommandId(30_001));
    committed(&mut net, CommandId(30_000));
    let (voter, member) = (net.cores[1].local_node, net.cores[4].local_node);
    // Both nodes' requests, in a batch of each sequence number, at its pusher.
    for seq in 1..=4u64 {
        let x = fed_pbft::Executed {
            seq,
            view: 0,
            digest: receipt.proof.digest,
            requests: vec![
                (commit::client_id(&voter, 0), 1),
                (commit::client_id(&member, 0), 1),
            ],
            proof: receipt.proof.clone(),
            batch: receipt.batch.clone(),
        };
        let pusher = usize::try_from(seq % 4).unwrap();
        assert_eq!(
            net.cores[pusher].push_targets(&x),
            vec![member],
            "the pusher of batch {seq}"
        );
    }
}

/// A member that does not vote keeps, of a batch pushed to it, only its own
/// requests in its proof index: it is never asked for others' proofs, and
/// indexing every request of every batch made each client node's index grow
/// by whole batches (a sixth of a client node's CPU under load, most of it
/// rehashing). Members 4 and 5 commit together, so their requests share
/// batches; each finds its own proof and keeps none of the other's requests.
#[test]
fn a_member_that_does_not_vote_indexes_only_its_own_requests_of_a_pushed_batch() {
    let mut net = four_voters_without_checkpoints(6);
    let m = genesis_membership(&net, 0);
    let mut receipts = Vec::new();
    for k in 0..8u8 {
        let (a, b) = (
            CommandId(20_000 + u64::from(k) * 2),
            CommandId(20_001 + u64::from(k) * 2),
        );
        let now = net.now;
        net.cores[4].command(a, update(k, 4), now);
        net.cores[5].command(b, update(k, 5), now);
        net.run();
        net.advance(200);
        let (ra, rb) = (committed(&mut net, a), committed(&mut net, b));
        ra.verify(&m).unwrap();
        rb.verify(&m).unwrap();
        receipts.push((ra, rb));
    }
    for (i, other) in [(4, 5), (5, 4)] {
        let c = net.cores[i].commit.as_ref().unwrap();
        // Batches that hold the other member's request too and were pushed
        // to this one (its own request indexed): where the check bites.
        let mut shared_pushed = 0;
        for (ra, rb) in &receipts {
            let (own, theirs) = if i == 4 { (ra, rb) } else { (rb, ra) };
            assert!(
                !c.by_request
                    .contains_key(&(theirs.client, theirs.timestamp)),
                "member {i} indexed a request of member {other}"
            );
            if own.proof.seq == theirs.proof.seq
                && c.by_request.contains_key(&(own.client, own.timestamp))
            {
                shared_pushed += 1;
            }
        }
        assert!(shared_pushed > 0, "member {i} was pushed a shared batch");
    }
}

/// A replica's replies (and its proof push) go before its write when that
/// write is only the batch's `Committed` record (pbft.md §5: kept for
/// recovery), and after it otherwise: when one input makes a replica accept
/// the pre-prepare, prepare and commit at once, its reply rests on the
/// PREPARE and COMMIT it is about to send, and must wait for their records to
/// be synced, as those messages do. A client that took such a reply could
/// otherwise count a vote the replica forgets in a crash.
#[test]
fn replies_overtake_a_write_only_when_it_records_commits_alone() {
    let mut net = four_voters_without_checkpoints(5);
    let update = |k: u8| {
        Command::Commit(commit::Operation::Update(
            crate::substrate::StateUpdate::Opaque {
                kind: "test".into(),
                bytes: vec![k],
            },
        ))
    };
    // Voter 1 hears everything in order: what it sends the client (member 4),
    // its reply and, for one batch in four, its proof push, leaves before the
    // write of the batch's `Committed` record, and nothing after it.
    net.watch = Some(1);
    for k in 0..4u8 {
        let id = net.submit(4, update(k));
        net.advance(200);
        committed(&mut net, id);
        let watched = std::mem::take(&mut net.watched);
        let commit_write = watched
            .iter()
            .position(|w| {
                matches!(
                    w,
                    Watched::Persist {
                        only_committed: true,
                        ..
                    }
                )
            })
            .unwrap_or_else(|| panic!("batch {k}: voter 1 recorded the commit alone: {watched:?}"));
        let to_client = |w: &Watched| *w == Watched::Send { to: 4 };
        assert!(
            watched[..commit_write].iter().any(to_client)
                && !watched[commit_write..].iter().any(to_client),
            "batch {k}: what went to the client went before the commit's write: {watched:?}"
        );
    }
    // Voter 1 hears the other voters late, the last message first: the
    // pre-prepare comes after the PREPAREs and COMMITs it needs, so one input
    // prepares, commits and executes the batch. What it sends the client waits
    // behind the write that records the `Prepared` certificate.
    for k in 4..8u8 {
        net.hold = Some((vec![0, 2, 3], 1));
        let id = net.submit(4, update(k));
        // (When voter 1 pushes the batch, the client asks another voter for
        // the proof after its wait for the push.)
        net.advance(200);
        committed(&mut net, id);
        net.watched.clear();
        net.hold = None;
        net.release_reversed();
        net.advance(20);
        let watched = std::mem::take(&mut net.watched);
        let write = watched
            .iter()
            .position(|w| {
                matches!(
                    w,
                    Watched::Persist {
                        prepared: true,
                        committed: true,
                        ..
                    }
                )
            })
            .unwrap_or_else(|| {
                panic!("batch {k}: voter 1 prepared and committed in one input: {watched:?}")
            });
        let reply = watched
            .iter()
            .position(|w| *w == Watched::Send { to: 4 })
            .unwrap_or_else(|| panic!("batch {k}: voter 1 replied: {watched:?}"));
        assert!(
            write < reply,
            "batch {k}: the reply left before the write it rests on: {watched:?}"
        );
    }
}

/// Voter 1 commits update `k` of its own client while it hears nothing from
/// the other voters, who commit without it; then it hears them, `release`
/// choosing the order. Returns what voter 1 did meanwhile.
fn own_commit_heard_late(net: &mut Net, k: u8, release: fn(&mut Net)) -> Vec<Watched> {
    net.hold = Some((vec![0, 2, 3], 1));
    let id = net.submit(
        1,
        Command::Commit(commit::Operation::Update(
            crate::substrate::StateUpdate::Opaque {
                kind: "test".into(),
                bytes: vec![k],
            },
        )),
    );
    net.advance(50);
    net.hold = None;
    net.watched.clear();
    release(net);
    net.advance(50);
    committed(net, id);
    std::mem::take(&mut net.watched)
}

/// A voter's own commit finishes from its replica's execution. When that
/// input wrote only the batch's `Committed` record, the receipt goes before
/// the write, as replies to other nodes do; the batch's event, which the
/// audit log and the substrate take, still follows it.
#[test]
fn a_voter_s_own_receipt_overtakes_a_write_that_records_commits_alone() {
    let mut net = four_voters_without_checkpoints(5);
    net.watch = Some(1);
    for k in 0..8u8 {
        // Batches 0 to 3: voter 1 hears the replies to its client first, the
        // rest in order, and executes the batch in an input that writes only
        // its `Committed` record. Batches 4 to 7: it hears everything the
        // last message first, so the input that brings the pre-prepare
        // prepares, commits and executes the batch: the receipt rests on the
        // PREPARE and COMMIT it is about to send and waits for that write.
        let alone = k < 4;
        let release = if alone {
            Net::release_last_first
        } else {
            Net::release_reversed
        };
        let watched = own_commit_heard_late(&mut net, k, release);
        let at = |want: &dyn Fn(&Watched) -> bool, what: &str| {
            watched
                .iter()
                .position(want)
                .unwrap_or_else(|| panic!("batch {k}: no {what}: {watched:?}"))
        };
        let write = at(
            &|w| match w {
                Watched::Persist {
                    only_committed,
                    prepared,
                    committed,
                } => {
                    if alone {
                        *only_committed
                    } else {
                        *prepared && *committed
                    }
                }
                _ => false,
            },
            "write of the batch's commit",
        );
        let done = at(&|w| *w == Watched::Complete, "receipt");
        let event = at(&|w| *w == Watched::Committed, "batch event");
        if alone {
            assert!(
                done < write && write < event,
                "batch {k}: receipt, write, event out of order: {watched:?}"
            );
        } else {
            assert!(
                write < done && write < event,
                "batch {k}: the receipt left before the write it rests on: {watched:?}"
            );
        }
    }
}
