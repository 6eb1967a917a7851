//! A deterministic, seeded simulator of PBFT replicas and clients under network
//! faults, crashes (torn writes included) and Byzantine replicas, with an
//! invariant checker (`checker.rs`).
//!
//! Every scenario also checks that it exercised what it names, for every seed: the
//! Byzantine behaviour was met and refused, the crash tore a call, the transfer met
//! the lying source, the twin primary equivocated... A seed that does not is a
//! failure of the harness, reported like a violation.
//!
//! `FED_SIM_SEEDS=N` runs `N` seeds per scenario (default: a smoke amount);
//! `FED_SIM_SCENARIO=name FED_SIM_SEED=S` replays one run. A failing run prints
//! its seed and the command that replays it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod app;
mod byzantine;
mod checker;

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap},
    sync::Arc,
};

use app::ChainApp;
use byzantine::{Behaviour, ByzState, Ctx, transform};
use checker::Checker;
use fed_crypto::Identity;
use fed_pbft::{
    Client, ClientEvent, ClientId, ClientKey, Config, Digest, Event, Membership, MemoryStorage,
    Message, Persist, Replica, StateResponse, Storage,
};
use rand_chacha::{
    ChaCha8Rng,
    rand_core::{Rng, SeedableRng},
};

/// Default seeds per scenario in `cargo test` (debug builds verify Ed25519 slowly).
const SMOKE_SEEDS: u64 = 8;
/// Virtual time allowed after the last fault ends for every request to complete.
const LIVENESS_BOUND_MS: u64 = 60_000;

#[derive(Clone, Debug)]
struct Net {
    min_delay: u64,
    max_delay: u64,
    /// Per mille.
    drop: u32,
    /// Per mille.
    dup: u32,
}

impl Net {
    fn calm() -> Self {
        Self {
            min_delay: 1,
            max_delay: 10,
            drop: 0,
            dup: 0,
        }
    }

    fn lossy() -> Self {
        Self {
            min_delay: 1,
            max_delay: 40,
            drop: 100,
            dup: 100,
        }
    }
}

#[derive(Clone, Debug)]
enum Action {
    Crash(u16),
    Restart(u16),
    /// Crashes the replica at the end of its next call that asks for at least
    /// `min_writes` writes, after a random prefix of that call's writes (each write
    /// is durable on its own, so any prefix is a state a real crash can leave) and,
    /// when every write made it, after a random prefix of its transmits. It
    /// restarts `restart_after` ms later from what was written.
    TornCrash {
        replica: u16,
        min_writes: usize,
        restart_after: u64,
    },
    Partition(Vec<u8>),
    Heal,
    /// Moves a correct replica to the other side of the twin nodes (it then
    /// talks to the other copies).
    SwitchSide(u16, u8),
    /// Calm the network (end of the lossy period).
    Calm,
    ReplayRequests,
    /// Every client gets this many more requests to make.
    MoreRequests(usize),
}

/// A condition on the run's state that fires a [`Trigger`].
#[derive(Clone, Debug)]
enum Condition {
    /// Every correct, running replica executed at least this sequence number.
    AllExecuted(u64),
}

/// Actions scheduled when a condition first holds, so that a fault lands at the
/// protocol moment the scenario is about for every seed (not at a time that suits
/// some seeds only).
#[derive(Clone, Debug)]
struct Trigger {
    when: Condition,
    /// Actions at offsets (ms) from the moment the condition held.
    then: Vec<(u64, Action)>,
    /// Offset after which none of these faults is active any more.
    heal_after: u64,
}

/// What a scenario must have exercised by the end of every seed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Exercise {
    /// Some correct replica installed this view or a later one.
    ViewInstalled(u64),
    /// A twin node sent two different PRE-PREPAREs for one (view, seq).
    Equivocation,
    /// At least this many armed torn crashes happened.
    TornCrashes(u64),
    /// A Byzantine primary sent a forged NEW-VIEW that nulls a carried entry.
    ForgedNewView,
    /// A Byzantine primary re-proposed sequence numbers its NEW-VIEW fixed.
    Reproposed,
}

#[derive(Clone, Debug)]
struct Scenario {
    name: &'static str,
    n: usize,
    clients: usize,
    requests_per_client: usize,
    net: Net,
    behaviours: Vec<(u16, Behaviour)>,
    /// Twin nodes (two replicas with one identity) and the side (0 or 1) of every
    /// other node. A client's message to a twin node reaches both copies.
    twins: Vec<u16>,
    /// The behaviour of the side-1 copy of a twin node (default: honest).
    twin_behaviours: Vec<(u16, Behaviour)>,
    sides: Vec<u8>,
    actions: Vec<(u64, Action)>,
    triggers: Vec<Trigger>,
    /// Time after which no fault is active any more (liveness is due by
    /// `heal_at + LIVENESS_BOUND_MS`); a trigger's faults extend it.
    heal_at: u64,
    /// The checker must report a violation (negative control).
    expect_violation: bool,
    /// No correct replica may enter a view above this (a violation): what a
    /// fault-free run must keep.
    max_view: Option<u64>,
    check_liveness: bool,
    /// Replicas that must have completed a state transfer by the end.
    must_transfer: Vec<u16>,
    /// Run until every correct replica executed the same prefix, and check it.
    converge: bool,
    /// Errors (variant names) correct replicas must have reported at least once:
    /// proof that the Byzantine behaviour was met and refused.
    must_see: Vec<&'static str>,
    /// What else the scenario must have exercised.
    exercises: Vec<Exercise>,
}

impl Scenario {
    fn new(name: &'static str, n: usize) -> Self {
        Self {
            name,
            n,
            clients: 4,
            requests_per_client: 5,
            net: Net::calm(),
            behaviours: vec![],
            twins: vec![],
            twin_behaviours: vec![],
            sides: vec![0; n],
            actions: vec![],
            triggers: vec![],
            heal_at: 0,
            expect_violation: false,
            max_view: None,
            check_liveness: true,
            must_transfer: vec![],
            converge: false,
            must_see: vec![],
            exercises: vec![],
        }
    }
}

struct Node {
    replica: Option<Replica<ChainApp>>,
    twin: Option<Replica<ChainApp>>,
    storage: MemoryStorage,
    behaviour: Behaviour,
    twin_behaviour: Behaviour,
    correct: bool,
    recorded: Vec<Arc<[u8]>>,
    byz: [ByzState; 2],
    transferred: bool,
    /// Snapshots this replica rejected because they did not match their certificate.
    bad_snapshots: u64,
    /// `PrePrepare` and `Committed` writes held back until a write that needs
    /// a sync (a store may do that, pbft.md §5): a crash keeps a random prefix
    /// of them.
    lazy: Vec<Persist>,
    /// An armed torn crash: (min_writes, restart_after).
    torn: Option<(usize, u64)>,
    /// Torn crashes that happened, and how many left a strict prefix of the writes.
    torn_crashes: u64,
    strictly_torn: u64,
    /// `Committed` writes that crashes lost (held back, pbft.md §5).
    lost_commits: u64,
    /// The sequence number whose state was last reported to the checker.
    state_reported: Option<u64>,
    /// PRE-PREPARE digests a twin node sent, per (view, seq) and side.
    twin_proposals: BTreeMap<(u64, u64), [Option<Digest>; 2]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    /// Replica index and, for twin nodes, the side.
    Replica(u16, u8),
    Client(usize),
}

struct SimClient {
    client: Client,
    remaining: usize,
    sent: Vec<Arc<[u8]>>,
}

/// A queued delivery: (time, tie-breaker, destination, sender or `u16::MAX` for a client, bytes).
type Queued = (u64, u64, Dest, u16, Arc<[u8]>);

struct Sim {
    sc: Scenario,
    seed: u64,
    rng: ChaCha8Rng,
    now: u64,
    ids: Vec<Arc<Identity>>,
    m: Arc<Membership>,
    config: Config,
    nodes: Vec<Node>,
    clients: Vec<SimClient>,
    client_index: BTreeMap<ClientId, usize>,
    client_keys: Vec<Vec<ClientKey>>,
    queue: BinaryHeap<Reverse<Queued>>,
    counter: u64,
    net: Net,
    partition: Option<Vec<u8>>,
    actions: Vec<(u64, Action)>,
    checker: Checker,
    messages: u64,
    /// Variant names of the errors correct replicas returned.
    errors: std::collections::BTreeSet<String>,
    triggers: Vec<Trigger>,
    heal_at: u64,
    views_installed: u64,
    /// The highest view a correct replica moved to, installed or not (one that
    /// starts a view change alone moves to it without installing it).
    views_entered: u64,
    equivocated: bool,
}

fn sim_config() -> Config {
    let mut c = Config::default();
    c.checkpoint_interval = 4;
    c.window = 8;
    c.max_batch_requests = 3;
    c.batch_delay_ms = 2;
    c.request_timeout_ms = 400;
    c.max_timeout_ms = 8_000;
    c.retransmit_ms = 50;
    c.max_fetch_entries = 8;
    c
}

impl Sim {
    fn new(sc: Scenario, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ids: Vec<Arc<Identity>> = (0..sc.n)
            .map(|_| Arc::new(Identity::generate(&mut rng, false)))
            .collect();
        let m =
            Arc::new(Membership::new(ids.iter().map(|i| i.public().clone()).collect()).unwrap());
        let config = sim_config();
        let mut client_keys = Vec::new();
        let mut clients = Vec::new();
        let mut client_index = BTreeMap::new();
        for c in 0..sc.clients {
            let id = ClientId(fed_crypto::hash(
                "exo-federation v1 pbft sim client",
                &[&seed.to_be_bytes(), &(c as u64).to_be_bytes()],
            ));
            let keys: Vec<ClientKey> = (0..sc.n)
                .map(|i| {
                    ClientKey::new(&fed_crypto::hash(
                        "exo-federation v1 pbft sim key",
                        &[&id.0, &(i as u64).to_be_bytes()],
                    ))
                })
                .collect();
            let client = Client::new(id, keys.clone(), m.clone(), 1, 300).unwrap();
            client_index.insert(id, c);
            client_keys.push(keys);
            clients.push(SimClient {
                client,
                remaining: sc.requests_per_client,
                sent: vec![],
            });
        }
        let mut sim = Self {
            seed,
            rng,
            now: 0,
            m,
            config,
            nodes: vec![],
            clients,
            client_index,
            client_keys,
            queue: BinaryHeap::new(),
            counter: 0,
            net: sc.net.clone(),
            partition: None,
            actions: sc.actions.clone(),
            checker: Checker::new(sc.n),
            messages: 0,
            errors: Default::default(),
            triggers: sc.triggers.clone(),
            heal_at: sc.heal_at,
            views_installed: 0,
            views_entered: 0,
            equivocated: false,
            ids,
            sc,
        };
        for i in 0..sim.sc.n as u16 {
            let behaviour = sim
                .sc
                .behaviours
                .iter()
                .find(|(j, _)| *j == i)
                .map_or(Behaviour::Honest, |(_, b)| b.clone());
            let twin_behaviour = sim
                .sc
                .twin_behaviours
                .iter()
                .find(|(j, _)| *j == i)
                .map_or(Behaviour::Honest, |(_, b)| b.clone());
            let twin = sim.sc.twins.contains(&i);
            let node = Node {
                replica: Some(sim.fresh_replica(i)),
                twin: twin.then(|| sim.fresh_replica(i)),
                storage: MemoryStorage::new(),
                correct: behaviour == Behaviour::Honest && !twin,
                behaviour,
                twin_behaviour,
                recorded: vec![],
                byz: Default::default(),
                transferred: false,
                bad_snapshots: 0,
                lazy: vec![],
                torn: None,
                torn_crashes: 0,
                strictly_torn: 0,
                lost_commits: 0,
                state_reported: None,
                twin_proposals: BTreeMap::new(),
            };
            sim.nodes.push(node);
        }
        sim.actions.sort_by_key(|(t, _)| *t);
        sim
    }

    fn fresh_replica(&self, i: u16) -> Replica<ChainApp> {
        let mut r = Replica::new(
            self.ids[usize::from(i)].clone(),
            self.m.clone(),
            self.config.clone(),
            ChainApp::default(),
            self.now,
        )
        .unwrap();
        self.register_clients(&mut r, i);
        r
    }

    fn register_clients(&self, r: &mut Replica<ChainApp>, i: u16) {
        for (c, keys) in self.client_keys.iter().enumerate() {
            r.add_client(self.clients[c].client.id(), keys[usize::from(i)].clone())
                .unwrap();
        }
    }

    fn replica_mut(&mut self, i: u16, side: u8) -> Option<&mut Replica<ChainApp>> {
        let node = &mut self.nodes[usize::from(i)];
        if side == 1 {
            node.twin.as_mut()
        } else {
            node.replica.as_mut()
        }
    }

    fn is_twin(&self, i: u16) -> bool {
        self.nodes[usize::from(i)].twin.is_some()
    }

    /// Queues `bytes` from `from` (replica, side) or a client to `to`, applying
    /// partitions, twin routing, loss, duplication and delay.
    fn send(&mut self, from: Option<(u16, u8)>, to: Dest, bytes: Arc<[u8]>) {
        let mut to = to;
        if let (Some((i, side)), Dest::Replica(j, _)) = (from, to) {
            if let Some(groups) = &self.partition
                && groups[usize::from(i)] != groups[usize::from(j)]
            {
                return;
            }
            let from_twin = self.is_twin(i);
            let sender_side = if from_twin {
                side
            } else {
                self.sc.sides[usize::from(i)]
            };
            if self.is_twin(j) {
                to = Dest::Replica(j, sender_side);
            } else if from_twin && self.sc.sides[usize::from(j)] != side {
                return;
            }
        }
        if let (None, Dest::Replica(j, side)) = (from, to)
            && side == 0
            && self.is_twin(j)
        {
            // A client's message to a twin node reaches both copies.
            self.send(None, Dest::Replica(j, 1), bytes.clone());
        }
        if self.rng.next_u32() % 1000 < self.net.drop {
            return;
        }
        let copies = if self.rng.next_u32() % 1000 < self.net.dup {
            2
        } else {
            1
        };
        let from_index = from.map_or(u16::MAX, |(i, _)| i);
        for _ in 0..copies {
            let span = self.net.max_delay - self.net.min_delay + 1;
            let delay = self.net.min_delay + u64::from(self.rng.next_u32()) % span;
            self.counter += 1;
            self.messages += 1;
            self.queue.push(Reverse((
                self.now + delay,
                self.counter,
                to,
                from_index,
                bytes.clone(),
            )));
        }
    }

    /// Drains one replica instance's outputs in the documented order: every write
    /// durable, then the transmits, then the events. An armed torn crash cuts this
    /// short after a random prefix of the writes (or, all written, of the
    /// transmits) and drops the replica.
    fn drain(&mut self, i: u16, side: u8) {
        let mut writes = vec![];
        let mut transmits = vec![];
        let mut events = vec![];
        {
            let node = &mut self.nodes[usize::from(i)];
            let r = if side == 1 {
                node.twin.as_mut()
            } else {
                node.replica.as_mut()
            };
            let Some(r) = r else { return };
            while let Some(p) = r.poll_persist() {
                writes.push(p);
            }
            while let Some(t) = r.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = r.poll_event() {
                events.push(e);
            }
        }
        let torn = match self.nodes[usize::from(i)].torn {
            Some((min_writes, restart_after)) if side == 0 && writes.len() >= min_writes => {
                Some(restart_after)
            }
            _ => None,
        };
        // The writes not durable yet: the held-back ones (`PrePrepare`s and
        // `Committed`s, which need no sync), then this call's. The call's transmits may leave once
        // everything up to its last write that needs a sync is durable.
        let mut pending = if side == 0 {
            std::mem::take(&mut self.nodes[usize::from(i)].lazy)
        } else {
            vec![]
        };
        pending.extend(writes.iter().cloned());
        let must = pending
            .iter()
            .rposition(Persist::needs_sync)
            .map_or(0, |k| k + 1);
        // Those after it may stay held back (a store may, pbft.md §5).
        let mut kept = if must == 0 {
            0
        } else {
            must + (self.rng.next_u32() as usize) % (pending.len() - must + 1)
        };
        if torn.is_some() {
            kept = (self.rng.next_u32() as usize) % (pending.len() + 1);
            if kept < must {
                transmits.clear();
            } else {
                let sent = (self.rng.next_u32() as usize) % (transmits.len() + 1);
                transmits.truncate(sent);
            }
            events.clear();
        }
        if side == 0 {
            let node = &mut self.nodes[usize::from(i)];
            for p in &pending[..kept] {
                node.storage.persist(p).unwrap();
            }
            if torn.is_none() {
                node.lazy = pending.split_off(kept);
            }
            if node.correct {
                // A checkpoint's snapshot is the whole state the replica holds (or,
                // after a state transfer, installed) at that sequence number.
                for p in &pending[..kept] {
                    if let Persist::Checkpoint { seq, snapshot, .. } = p {
                        self.checker
                            .state(i, *seq, checker::state_digest(*seq, snapshot));
                    }
                }
            }
        }
        let (behaviour, correct) = {
            let node = &self.nodes[usize::from(i)];
            let b = if side == 1 {
                node.twin_behaviour.clone()
            } else {
                node.behaviour.clone()
            };
            (b, node.correct)
        };
        for t in transmits {
            let out = {
                let node = &mut self.nodes[usize::from(i)];
                let mut ctx = Ctx {
                    me: i,
                    identity: &self.ids[usize::from(i)],
                    m: &self.m,
                    window: self.config.window,
                    recorded: &mut node.recorded,
                    state: &mut node.byz[usize::from(side)],
                };
                transform(&behaviour, &mut ctx, t, &mut self.rng)
            };
            for (to, bytes) in out {
                self.observe_sent(i, side, correct, &bytes);
                self.send(Some((i, side)), Dest::Replica(to, 0), bytes);
            }
        }
        if let Some(restart_after) = torn {
            let node = &mut self.nodes[usize::from(i)];
            node.replica = None;
            node.torn = None;
            node.torn_crashes += 1;
            if kept > 0 && kept < pending.len() {
                node.strictly_torn += 1;
            }
            node.lost_commits += count_commits(&pending[kept..]);
            self.schedule(self.now + restart_after, Action::Restart(i));
            return;
        }
        for e in events {
            match e {
                Event::Executed(x) if correct => self.checker.executed(&self.m, i, &x),
                Event::Reply(reply) => {
                    if let Some(&c) = self.client_index.get(&reply.client) {
                        let bytes: Arc<[u8]> = reply.to_bytes().unwrap().into();
                        self.send(Some((i, side)), Dest::Client(c), bytes);
                    }
                }
                Event::StateTransferred { .. } => self.nodes[usize::from(i)].transferred = true,
                _ => {}
            }
        }
        if correct && side == 0 {
            self.report_state(i);
        }
    }

    /// Reports a correct replica's whole replicated state to the checker when it
    /// reached a sequence number it has not reported yet.
    fn report_state(&mut self, i: u16) {
        let node = &mut self.nodes[usize::from(i)];
        let Some(r) = node.replica.as_ref() else {
            return;
        };
        if r.is_view_active() {
            self.views_installed = self.views_installed.max(r.view());
        }
        self.views_entered = self.views_entered.max(r.view());
        let seq = r.last_executed();
        if node.state_reported == Some(seq) {
            return;
        }
        node.state_reported = Some(seq);
        let snapshot = r.state_snapshot().unwrap();
        self.checker
            .state(i, seq, checker::state_digest(seq, &snapshot));
    }

    /// What the checker and the exercise accounting learn from a message as it
    /// leaves replica `i`.
    fn observe_sent(&mut self, i: u16, side: u8, correct: bool, bytes: &[u8]) {
        let kind = bytes.get(5).copied();
        if !matches!(kind, Some(2..=5 | 7)) {
            return;
        }
        match Message::decode(bytes) {
            Ok(Message::Commit(c)) => {
                let correct: Vec<bool> = self.nodes.iter().map(|n| n.correct).collect();
                self.checker.commit_sent(&self.m, &correct, i, &c);
            }
            Ok(Message::Prepare(p)) if correct && p.replica == i => {
                self.checker.prepare_sent(i, &p);
            }
            Ok(Message::Checkpoint(c)) if correct && c.replica == i => {
                self.checker.state(i, c.seq, c.state);
            }
            Ok(Message::PrePrepare(pp)) if correct && self.m.primary(pp.view) == i => {
                self.checker.pre_prepare_sent(i, pp.view, pp.seq, pp.digest);
            }
            // A NEW-VIEW's entries are its primary's pre-prepares too.
            Ok(Message::NewView(nv)) if correct && self.m.primary(nv.view) == i => {
                for e in &nv.pre_prepares {
                    self.checker.pre_prepare_sent(i, nv.view, e.seq, e.digest);
                }
            }
            Ok(Message::PrePrepare(pp)) if self.is_twin(i) => {
                let node = &mut self.nodes[usize::from(i)];
                let sent = node.twin_proposals.entry((pp.view, pp.seq)).or_default();
                sent[usize::from(side)] = Some(pp.digest);
                if let [Some(a), Some(b)] = sent
                    && a != b
                {
                    self.equivocated = true;
                }
            }
            _ => {}
        }
    }

    fn schedule(&mut self, at: u64, action: Action) {
        let pos = self.actions.partition_point(|(t, _)| *t <= at);
        self.actions.insert(pos, (at, action));
    }

    fn drain_client(&mut self, c: usize) {
        let mut out = vec![];
        let mut done = vec![];
        {
            let sc = &mut self.clients[c];
            while let Some(t) = sc.client.poll_transmit() {
                out.push(t);
            }
            while let Some(ClientEvent::Completed { timestamp, outcome }) = sc.client.poll_event() {
                done.push((timestamp, outcome));
            }
        }
        let id = self.clients[c].client.id();
        for (timestamp, outcome) in done {
            self.checker.completed(id, timestamp, outcome);
        }
        for (to, bytes) in out {
            if self.clients[c].sent.len() < 64 {
                self.clients[c].sent.push(bytes.clone());
            }
            self.send(None, Dest::Replica(to, 0), bytes);
        }
    }

    fn feed_clients(&mut self) {
        for c in 0..self.clients.len() {
            let sc = &mut self.clients[c];
            if !sc.client.is_busy() && sc.remaining > 0 {
                sc.remaining -= 1;
                let op = format!("client {c} op {}", sc.remaining).into_bytes();
                let ts = sc.client.submit(op, self.now).unwrap();
                let id = sc.client.id();
                self.checker.submitted((id, ts));
                self.drain_client(c);
            }
        }
    }

    fn outstanding(&self) -> usize {
        self.clients
            .iter()
            .map(|c| c.remaining + usize::from(c.client.is_busy()))
            .sum()
    }

    fn next_time(&self) -> Option<u64> {
        let mut t: Option<u64> = None;
        let mut consider = |x: Option<u64>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.queue.peek().map(|Reverse((t, ..))| *t));
        consider(self.actions.first().map(|(t, _)| *t));
        for node in &self.nodes {
            consider(node.replica.as_ref().and_then(Replica::poll_timeout));
            consider(node.twin.as_ref().and_then(Replica::poll_timeout));
        }
        for c in &self.clients {
            consider(c.client.poll_timeout());
        }
        t
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Crash(i) => {
                let lazy = std::mem::take(&mut self.nodes[usize::from(i)].lazy);
                let kept = (self.rng.next_u32() as usize) % (lazy.len() + 1);
                let node = &mut self.nodes[usize::from(i)];
                for p in &lazy[..kept] {
                    node.storage.persist(p).unwrap();
                }
                node.lost_commits += count_commits(&lazy[kept..]);
                node.replica = None;
            }
            Action::TornCrash {
                replica,
                min_writes,
                restart_after,
            } => self.nodes[usize::from(replica)].torn = Some((min_writes, restart_after)),
            Action::Restart(i) => {
                let durable = self.nodes[usize::from(i)].storage.load().unwrap();
                let mut r = Replica::recover(
                    self.ids[usize::from(i)].clone(),
                    self.m.clone(),
                    self.config.clone(),
                    ChainApp::default(),
                    durable,
                    self.now,
                )
                .unwrap();
                self.register_clients(&mut r, i);
                let node = &mut self.nodes[usize::from(i)];
                node.replica = Some(r);
                node.state_reported = None;
                self.drain(i, 0);
            }
            Action::Partition(groups) => self.partition = Some(groups),
            Action::Heal => self.partition = None,
            Action::SwitchSide(i, side) => self.sc.sides[usize::from(i)] = side,
            Action::Calm => self.net = Net::calm(),
            Action::MoreRequests(k) => {
                for c in &mut self.clients {
                    c.remaining += k;
                }
            }
            Action::ReplayRequests => {
                for c in 0..self.clients.len() {
                    let old = self.clients[c].sent.clone();
                    for bytes in old.into_iter().take(8) {
                        for j in 0..self.sc.n as u16 {
                            self.send(None, Dest::Replica(j, 0), bytes.clone());
                        }
                    }
                }
            }
        }
    }

    /// Schedules the actions of every trigger whose condition now holds.
    fn fire_triggers(&mut self) {
        let mut i = 0;
        while i < self.triggers.len() {
            let holds = match self.triggers[i].when {
                Condition::AllExecuted(seq) => self
                    .nodes
                    .iter()
                    .filter(|n| n.correct)
                    .filter_map(|n| n.replica.as_ref())
                    .all(|r| r.last_executed() >= seq),
            };
            if !holds {
                i += 1;
                continue;
            }
            let t = self.triggers.remove(i);
            self.heal_at = self.heal_at.max(self.now + t.heal_after);
            for (offset, action) in t.then {
                self.schedule(self.now + offset, action);
            }
        }
    }

    /// What the checker and the Byzantine replicas learn from a message as it is
    /// delivered to replica `j`.
    fn observe_delivered(&mut self, j: u16, from: u16, bytes: &[u8]) {
        match bytes.get(5) {
            Some(9) => {
                if let Ok(Message::Committed(c)) = Message::decode(bytes) {
                    self.checker.committed_seen(&self.m, &c.proof, &c.batch);
                }
            }
            Some(11) if self.nodes[usize::from(j)].behaviour == Behaviour::BadStateSource => {
                // A lying source answers every state request at once, with the
                // newest valid certificate there is (one its peers signed) and a
                // snapshot that does not match it: every transfer that asks it
                // meets the lie first.
                let Ok(Message::StateRequest(req)) = Message::decode(bytes) else {
                    return;
                };
                let cert = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.replica.as_ref())
                    .map(|r| r.stable_checkpoint().clone())
                    .filter(|c| c.seq >= req.seq && c.seq > 0)
                    .max_by_key(|c| c.seq);
                let Some(cert) = cert else { return };
                let mut snapshot = self.nodes[usize::from(j)]
                    .replica
                    .as_ref()
                    .and_then(|r| r.state_snapshot().ok())
                    .map(|s| s.to_vec())
                    .unwrap_or_default();
                match snapshot.last_mut() {
                    Some(b) => *b ^= 1,
                    None => snapshot.push(1),
                }
                let lie = Message::StateResponse(StateResponse { cert, snapshot });
                let bytes: Arc<[u8]> = lie.encode().unwrap().into();
                self.send(Some((j, 0)), Dest::Replica(from, 0), bytes);
            }
            _ => {}
        }
    }

    fn run(&mut self) {
        self.feed_clients();
        loop {
            self.fire_triggers();
            let deadline = self.heal_at + LIVENESS_BOUND_MS;
            if self.outstanding() == 0
                && self.actions.is_empty()
                && self.triggers.is_empty()
                && self.converged()
            {
                break;
            }
            let Some(t) = self.next_time() else { break };
            if t > deadline {
                self.now = deadline;
                break;
            }
            self.now = self.now.max(t);
            while self.actions.first().is_some_and(|(t, _)| *t <= self.now) {
                let (_, a) = self.actions.remove(0);
                self.act(a);
            }
            while self
                .queue
                .peek()
                .is_some_and(|Reverse((t, ..))| *t <= self.now)
            {
                let Reverse((_, _, to, from, bytes)) = self.queue.pop().unwrap();
                match to {
                    Dest::Replica(j, side) => {
                        self.observe_delivered(j, from, &bytes);
                        let now = self.now;
                        let node = &mut self.nodes[usize::from(j)];
                        if node.behaviour == Behaviour::Replayer && node.recorded.len() < 400 {
                            node.recorded.push(bytes.clone());
                        }
                        if let Some(r) = self.replica_mut(j, side) {
                            let result = if from == u16::MAX {
                                r.handle_request(&bytes, now)
                            } else {
                                r.handle_message(from, &bytes, now)
                            };
                            if matches!(result, Err(fed_pbft::Error::BadSnapshot)) {
                                self.nodes[usize::from(j)].bad_snapshots += 1;
                            }
                            if let Err(e) = result
                                && self.nodes[usize::from(j)].correct
                            {
                                let name = format!("{e:?}");
                                let name = name
                                    .split(|c: char| !c.is_alphanumeric())
                                    .next()
                                    .unwrap_or("");
                                self.errors.insert(name.to_string());
                            }
                            self.drain(j, side);
                        }
                    }
                    Dest::Client(c) => {
                        let _ = self.clients[c].client.handle_reply(&bytes, self.now);
                        self.drain_client(c);
                    }
                }
            }
            for i in 0..self.nodes.len() as u16 {
                for side in 0..2u8 {
                    let now = self.now;
                    let due = self
                        .replica_mut(i, side)
                        .and_then(|r| r.poll_timeout())
                        .is_some_and(|t| t <= now);
                    if due {
                        if let Some(r) = self.replica_mut(i, side) {
                            r.handle_timeout(now).unwrap();
                        }
                        self.drain(i, side);
                    }
                }
            }
            for c in 0..self.clients.len() {
                if self.clients[c]
                    .client
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
                {
                    self.clients[c].client.handle_timeout(self.now);
                    self.drain_client(c);
                }
            }
            self.feed_clients();
        }
    }

    /// Whether every correct, running replica executed the same prefix (always
    /// true for scenarios that do not ask for convergence).
    fn converged(&self) -> bool {
        if !self.sc.converge {
            return true;
        }
        let done: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.correct)
            .filter_map(|n| n.replica.as_ref().map(Replica::last_executed))
            .collect();
        done.iter().all(|d| Some(d) == done.first())
    }

    fn check(&mut self) {
        if !self.converged() {
            let done: Vec<(usize, u64)> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.correct)
                .filter_map(|(i, n)| n.replica.as_ref().map(|r| (i, r.last_executed())))
                .collect();
            self.checker
                .violations
                .push(format!("correct replicas did not converge: {done:?}"));
        }
        if let Some(max) = self.sc.max_view
            && self.views_entered > max
        {
            self.checker.violations.push(format!(
                "a correct replica moved to view {} in a run without faults",
                self.views_entered
            ));
        }
        if self.sc.check_liveness {
            let outstanding = self.outstanding();
            self.checker.liveness(outstanding, self.now);
        }
        let states: Vec<(u16, u64, Vec<u8>)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.correct)
            .filter_map(|(i, n)| n.replica.as_ref().map(|r| (i as u16, r)))
            .map(|(i, r)| (i, r.last_executed(), r.state_snapshot().unwrap().to_vec()))
            .collect();
        self.checker.final_states(&states);
        if self.sc.check_liveness {
            // Every completed request is in the client table of every up-to-date
            // correct replica, with the outcome the client accepted.
            let newest = states.iter().map(|(_, s, _)| *s).max().unwrap_or(0);
            for (i, seq, snapshot) in &states {
                if *seq == newest {
                    self.checker.client_table(*i, snapshot);
                }
            }
        }
        self.checker.finish();
    }

    /// What the scenario failed to exercise in this run (a fault of the harness,
    /// not of the replicas).
    fn unexercised(&self) -> Vec<String> {
        let mut out = vec![];
        for want in &self.sc.must_see {
            if !self.errors.contains(*want) {
                out.push(format!(
                    "no correct replica ever reported {want} (seen: {:?})",
                    self.errors
                ));
            }
        }
        for &i in &self.sc.must_transfer {
            if !self.nodes[usize::from(i)].transferred {
                out.push(format!("replica {i} never completed a state transfer"));
            }
            if self.nodes[usize::from(i)].bad_snapshots == 0 {
                out.push(format!(
                    "replica {i} never met (and rejected) the Byzantine snapshot"
                ));
            }
        }
        if !self.triggers.is_empty() {
            out.push(format!(
                "{} trigger(s) never fired: {:?}",
                self.triggers.len(),
                self.triggers.iter().map(|t| &t.when).collect::<Vec<_>>()
            ));
        }
        for e in &self.sc.exercises {
            let done = match e {
                Exercise::ViewInstalled(v) => self.views_installed >= *v,
                Exercise::Equivocation => self.equivocated,
                Exercise::TornCrashes(k) => {
                    self.nodes.iter().map(|n| n.torn_crashes).sum::<u64>() >= *k
                }
                Exercise::ForgedNewView => self
                    .nodes
                    .iter()
                    .any(|n| n.byz.iter().any(|b| b.forged_sent > 0)),
                Exercise::Reproposed => self
                    .nodes
                    .iter()
                    .any(|n| n.byz.iter().any(|b| b.reproposed > 0)),
            };
            if !done {
                out.push(format!("not exercised: {e:?}"));
            }
        }
        out
    }
}

/// How many of `writes` are `Committed` records.
fn count_commits(writes: &[Persist]) -> u64 {
    writes
        .iter()
        .filter(|w| matches!(w, Persist::Committed { .. }))
        .count() as u64
}

/// Runs one seed of a scenario; returns the checker's violations and what the
/// run failed to exercise.
fn run_one(sc: &Scenario, seed: u64) -> (Vec<String>, Vec<String>, Sim) {
    let mut sim = Sim::new(sc.clone(), seed);
    sim.run();
    sim.check();
    let unexercised = sim.unexercised();
    (sim.checker.violations.clone(), unexercised, sim)
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("FED_SIM_SEED") {
        return vec![s.parse().expect("FED_SIM_SEED must be a number")];
    }
    let n = std::env::var("FED_SIM_SEEDS")
        .ok()
        .map_or(SMOKE_SEEDS, |s| {
            s.parse().expect("FED_SIM_SEEDS must be a number")
        });
    (1..=n).collect()
}

/// Runs every selected seed of `sc`, panicking with the replay command on failure.
fn run_scenario(sc: Scenario) {
    if let Ok(only) = std::env::var("FED_SIM_SCENARIO")
        && only != sc.name
    {
        return;
    }
    let mut failures = vec![];
    let seeds = seeds();
    for &seed in &seeds {
        let (violations, unexercised, sim) = run_one(&sc, seed);
        let failed = !unexercised.is_empty()
            || if sc.expect_violation {
                violations.is_empty()
            } else {
                !violations.is_empty()
            };
        if std::env::var("FED_SIM_VERBOSE").is_ok() {
            println!(
                "{} seed {seed} (sim seed {}): t = {} ms, {} messages, {} executed batches, {} torn crashes ({} inside the writes), {} commit records lost, violations: {violations:?}, unexercised: {unexercised:?}",
                sc.name,
                sim.seed,
                sim.now,
                sim.messages,
                sim.checker.executed_batches,
                sim.nodes.iter().map(|n| n.torn_crashes).sum::<u64>(),
                sim.nodes.iter().map(|n| n.strictly_torn).sum::<u64>(),
                sim.nodes.iter().map(|n| n.lost_commits).sum::<u64>(),
            );
        }
        if failed && std::env::var("FED_SIM_VERBOSE").is_ok() {
            for (i, node) in sim.nodes.iter().enumerate() {
                if let Some(r) = &node.replica {
                    println!(
                        "  node {i} ({:?}): {r:?}, pending {}",
                        node.behaviour,
                        r.pending_requests()
                    );
                }
            }
            for c in &sim.clients {
                println!(
                    "  client busy {} remaining {} view {}",
                    c.client.is_busy(),
                    c.remaining,
                    c.client.view()
                );
            }
        }
        if failed {
            let mut what = vec![];
            if sc.expect_violation && violations.is_empty() {
                what.push(
                    "the checker reported no violation in a run that must violate agreement"
                        .to_string(),
                );
            } else if !sc.expect_violation {
                what.extend(violations.iter().cloned());
            }
            if !unexercised.is_empty() {
                what.push(format!(
                    "the run did not exercise what the scenario names: {}",
                    unexercised.join("; ")
                ));
            }
            let what = what.join("; ");
            println!(
                "FAILED: scenario {} seed {seed}: {what}\n  replay: FED_SIM_SCENARIO={} FED_SIM_SEED={seed} cargo test -p fed-pbft --test sim -- --nocapture",
                sc.name, sc.name
            );
            failures.push(seed);
        }
    }
    println!(
        "scenario {}: {} seeds, {} failed",
        sc.name,
        seeds.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "scenario {} failed for seeds {failures:?}",
        sc.name
    );
}

// ---------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------

#[test]
fn honest() {
    let mut sc = Scenario::new("honest", 4);
    sc.max_view = Some(0);
    run_scenario(sc);
}

/// Requests come in spells with idle time between them, longer than the
/// request timeout: nothing is faulty, so nobody changes view (each batch
/// after an idle spell is timed from its own arrival).
#[test]
fn idle_spells() {
    let mut sc = Scenario::new("idle_spells", 4);
    sc.actions = vec![
        (3_000, Action::MoreRequests(3)),
        (9_000, Action::MoreRequests(3)),
    ];
    sc.max_view = Some(0);
    run_scenario(sc);
}

#[test]
fn lossy_network() {
    let mut sc = Scenario::new("lossy_network", 4);
    sc.net = Net::lossy();
    sc.actions = vec![(4_000, Action::Calm)];
    sc.heal_at = 4_000;
    run_scenario(sc);
}

#[test]
fn five_replicas_lossy() {
    // n = 5 is not 3f + 1: the quorum is 4, not 2f + 1 = 3.
    let mut sc = Scenario::new("five_replicas_lossy", 5);
    sc.net = Net::lossy();
    sc.behaviours = vec![(4, Behaviour::Silent(vec![0, 1, 2, 3]))];
    sc.actions = vec![(3_000, Action::Calm)];
    sc.heal_at = 3_000;
    run_scenario(sc);
}

#[test]
fn silent_primary() {
    let mut sc = Scenario::new("silent_primary", 4);
    sc.behaviours = vec![(0, Behaviour::Silent(vec![1, 2, 3]))];
    sc.exercises = vec![Exercise::ViewInstalled(1)];
    run_scenario(sc);
}

#[test]
fn cascading_view_changes() {
    // n = 7, f = 2: the primaries of views 0 and 1 are silent.
    let mut sc = Scenario::new("cascading_view_changes", 7);
    sc.behaviours = vec![
        (0, Behaviour::Silent((1..7).collect())),
        (1, Behaviour::Silent(vec![0, 2, 3, 4, 5, 6])),
    ];
    sc.clients = 3;
    sc.requests_per_client = 3;
    sc.exercises = vec![Exercise::ViewInstalled(2)];
    run_scenario(sc);
}

#[test]
fn silent_to_some() {
    let mut sc = Scenario::new("silent_to_some", 4);
    sc.behaviours = vec![(2, Behaviour::Silent(vec![1, 3]))];
    sc.net = Net::lossy();
    sc.actions = vec![(2_000, Action::Calm)];
    sc.heal_at = 2_000;
    run_scenario(sc);
}

/// Twins of the primary: two copies of replica 0, each talking to its side; the
/// side-1 copy proposes the null batch where the side-0 copy proposes the clients'
/// requests, so the primary equivocates at every sequence number, for every seed.
fn twin_primary(name: &'static str, n: usize, sides: Vec<u8>) -> Scenario {
    let mut sc = Scenario::new(name, n);
    sc.twins = vec![0];
    sc.twin_behaviours = vec![(0, Behaviour::NullBatches)];
    sc.sides = sides;
    sc.exercises = vec![Exercise::Equivocation];
    sc
}

#[test]
fn equivocating_primary() {
    run_scenario(twin_primary("equivocating_primary", 4, vec![0, 0, 1, 1]));
    run_scenario(twin_primary(
        "equivocating_primary_alone",
        4,
        vec![0, 0, 0, 1],
    ));
}

// n = 5 and n = 6 are not 3f + 1 (f = 1): the quorum is 4, not 2f + 1 = 3. With
// 2f + 1, each side of the equivocating primary (itself and two or three correct
// backups) would be a quorum, and the sides would commit different batches at one
// sequence number; with 4, at most one side can.

#[test]
fn equivocating_primary_n5() {
    run_scenario(twin_primary(
        "equivocating_primary_n5",
        5,
        vec![0, 0, 0, 1, 1],
    ));
}

#[test]
fn equivocating_primary_n6() {
    run_scenario(twin_primary(
        "equivocating_primary_n6",
        6,
        vec![0, 0, 0, 1, 1, 1],
    ));
}

#[test]
fn amnesia_under_an_equivocating_primary() {
    // The primary is a twin: replicas 1 and 2 see one copy, replica 3 the other
    // (which proposes other batches for the same sequence numbers). Replica 2
    // crashes in the middle of a call (its `PrePrepare` writes need no sync, so
    // it may lose those of PREPAREs it sent) and comes back on the other side,
    // where the primary's other copy offers it other batches for the same
    // (view, seq). It must not prepare them (pbft.md §5, the reservation).
    let mut sc = twin_primary("amnesia_under_an_equivocating_primary", 4, vec![0, 0, 0, 1]);
    sc.requests_per_client = 12;
    sc.actions = vec![
        (
            40,
            Action::TornCrash {
                replica: 2,
                min_writes: 1,
                restart_after: 60,
            },
        ),
        (40, Action::SwitchSide(2, 1)),
    ];
    sc.exercises = vec![Exercise::Equivocation, Exercise::TornCrashes(1)];
    run_scenario(sc);
}

#[test]
fn double_voting_backup() {
    let mut sc = Scenario::new("double_voting_backup", 4);
    sc.behaviours = vec![(3, Behaviour::DoubleVote)];
    sc.must_see = vec!["Equivocation"];
    run_scenario(sc);
}

#[test]
fn forged_signatures() {
    let mut sc = Scenario::new("forged_signatures", 4);
    sc.behaviours = vec![(2, Behaviour::Forger)];
    sc.must_see = vec!["SenderMismatch", "BadSignature"];
    run_scenario(sc);
}

#[test]
fn digest_mismatch() {
    let mut sc = Scenario::new("digest_mismatch", 4);
    sc.behaviours = vec![(0, Behaviour::BadBatch)];
    sc.must_see = vec!["DigestMismatch"];
    run_scenario(sc);
}

#[test]
fn replayed_messages() {
    // Replica 3 replays old (and old-view) messages; clients replay old requests;
    // the primary is cut off for a while so that there are old views to replay.
    let mut sc = Scenario::new("replayed_messages", 4);
    sc.behaviours = vec![(3, Behaviour::Replayer)];
    sc.requests_per_client = 10;
    sc.actions = vec![
        (20, Action::Partition(vec![0, 1, 1, 1])),
        (3_000, Action::Heal),
        (3_500, Action::ReplayRequests),
        (6_000, Action::ReplayRequests),
    ];
    sc.heal_at = 6_000;
    sc.must_see = vec!["SenderMismatch", "StaleView", "StaleRequest"];
    sc.exercises = vec![Exercise::ViewInstalled(1)];
    run_scenario(sc);
}

#[test]
fn outside_watermarks() {
    let mut sc = Scenario::new("outside_watermarks", 4);
    sc.behaviours = vec![(0, Behaviour::Watermarks)];
    sc.must_see = vec!["OutsideWatermarks"];
    run_scenario(sc);
}

/// Two clients, so that at most two batches are in flight when a trigger fires.
/// Once every correct replica executed sequence number 5 (above the stable
/// checkpoint at 4), the primary of view 0 is cut off: the view changes to view 1
/// with sequence number 5, committed in view 0, carried in the NEW-VIEW.
fn view_change_after_commit(name: &'static str, mut then: Vec<(u64, Action)>) -> Scenario {
    let mut sc = Scenario::new(name, 4);
    sc.clients = 2;
    sc.requests_per_client = 10;
    then.push((0, Action::Partition(vec![0, 1, 1, 1])));
    then.push((4_000, Action::Heal));
    // New requests after the heal let the cut-off replica learn how far the others
    // went, and catch up.
    then.push((4_050, Action::MoreRequests(2)));
    sc.triggers = vec![Trigger {
        when: Condition::AllExecuted(5),
        then,
        heal_after: 4_000,
    }];
    sc.converge = true;
    sc
}

#[test]
fn bad_new_view() {
    // The primary of view 1 (replica 1) sends one forged NEW-VIEW, alike to every
    // backup and properly signed, that nulls the batches committed in view 0 and
    // carried by the VIEW-CHANGEs. A backup that did not recompute the entries
    // would prepare the null batch where another committed (an agreement
    // violation); backups must refuse it and move on to view 2.
    let mut sc = view_change_after_commit("bad_new_view", vec![]);
    sc.behaviours = vec![(1, Behaviour::BadNewView)];
    sc.must_see = vec!["InvalidViewChange"];
    sc.exercises = vec![Exercise::ForgedNewView, Exercise::ViewInstalled(2)];
    run_scenario(sc);
}

#[test]
fn torn_new_view_install() {
    // The view changes to view 1 while backups 2 and 3 are armed to crash in the
    // middle of their next call that writes two records or more (installing the
    // NEW-VIEW), keeping a random prefix of its writes. The primary of view 1 then
    // keeps proposing the null batch for the sequence numbers its NEW-VIEW fixed
    // to committed batches: a restarted backup must still refuse them.
    let torn = |replica| Action::TornCrash {
        replica,
        min_writes: 2,
        restart_after: 300,
    };
    let mut sc = view_change_after_commit(
        "torn_new_view_install",
        vec![(100, torn(2)), (100, torn(3))],
    );
    sc.behaviours = vec![(1, Behaviour::Repropose)];
    sc.must_see = vec!["Equivocation"];
    sc.exercises = vec![
        Exercise::TornCrashes(2),
        Exercise::ViewInstalled(1),
        Exercise::Reproposed,
    ];
    run_scenario(sc);
}

#[test]
fn lagging_replica_byzantine_source() {
    // Replica 3 is cut off while several checkpoints become stable; when it comes
    // back it must fetch the state, and the first source it asks (replica 0) lies:
    // it answers every state request with a valid certificate and a snapshot that
    // does not match it.
    let mut sc = Scenario::new("lagging_replica_byzantine_source", 4);
    sc.behaviours = vec![(0, Behaviour::BadStateSource)];
    sc.requests_per_client = 12;
    sc.actions = vec![
        (5, Action::Partition(vec![0, 0, 0, 1])),
        (4_000, Action::Heal),
        (4_050, Action::MoreRequests(3)),
    ];
    sc.heal_at = 4_000;
    sc.must_transfer = vec![3];
    sc.converge = true;
    // The lie is met and refused: the corrupted snapshot fails its certified digest.
    sc.must_see = vec!["BadSnapshot"];
    run_scenario(sc);
}

#[test]
fn partition_heals() {
    let mut sc = Scenario::new("partition_heals", 4);
    sc.actions = vec![
        (50, Action::Partition(vec![0, 0, 1, 1])),
        (5_000, Action::Heal),
    ];
    sc.heal_at = 5_000;
    run_scenario(sc);
}

#[test]
fn crash_restart() {
    // Replica 0 crashes cleanly between two calls; replica 2 crashes in the
    // middle of a call (a torn write).
    let mut sc = Scenario::new("crash_restart", 4);
    sc.net = Net::lossy();
    sc.requests_per_client = 8;
    sc.actions = vec![
        (30, Action::Crash(0)),
        (1_500, Action::Restart(0)),
        (
            2_500,
            Action::TornCrash {
                replica: 2,
                min_writes: 1,
                restart_after: 1_500,
            },
        ),
        (5_000, Action::Calm),
        (5_100, Action::MoreRequests(2)),
    ];
    sc.heal_at = 5_000;
    sc.converge = true;
    sc.exercises = vec![Exercise::TornCrashes(1)];
    run_scenario(sc);
}

#[test]
fn torn_writes() {
    // Every 600 ms one replica in turn crashes in the middle of its next call that
    // writes, after a random prefix of that call's writes, and restarts 250 ms
    // later from that prefix; the network is lossy meanwhile.
    let mut sc = Scenario::new("torn_writes", 4);
    sc.net = Net::lossy();
    sc.requests_per_client = 12;
    sc.actions = (0..10u64)
        .map(|k| {
            (
                100 + 600 * k,
                Action::TornCrash {
                    replica: (k % 4) as u16,
                    min_writes: 1,
                    restart_after: 250,
                },
            )
        })
        .collect();
    sc.actions.push((6_000, Action::Calm));
    sc.actions.push((6_100, Action::MoreRequests(2)));
    sc.heal_at = 6_000;
    sc.converge = true;
    sc.exercises = vec![Exercise::TornCrashes(5)];
    run_scenario(sc);
}

#[test]
fn negative_control_f_plus_one_byzantine() {
    // Replicas 0 (the primary) and 1 are both Byzantine twins: one copy of each
    // talks to replica 2, the other to replica 3, and the side-1 copy of the
    // primary proposes null batches where the side-0 copy proposes the clients'
    // requests. With f + 1 = 2 faulty replicas each side is a quorum and commits
    // its own batch at every sequence number; the checker must say so.
    let mut sc = Scenario::new("negative_control_f_plus_one_byzantine", 4);
    sc.twins = vec![0, 1];
    sc.twin_behaviours = vec![(0, Behaviour::NullBatches)];
    sc.sides = vec![0, 0, 0, 1];
    sc.expect_violation = true;
    sc.check_liveness = false;
    sc.exercises = vec![Exercise::Equivocation];
    run_scenario(sc);
}
