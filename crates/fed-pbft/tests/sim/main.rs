//! A deterministic, seeded simulator of PBFT replicas and clients under network
//! faults, crashes and Byzantine replicas, with an invariant checker.
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
use byzantine::{Behaviour, Ctx, transform};
use checker::Checker;
use fed_crypto::Identity;
use fed_pbft::{
    Client, ClientEvent, ClientId, ClientKey, Config, Event, Membership, MemoryStorage, Replica,
    Storage,
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
    Partition(Vec<u8>),
    Heal,
    /// Calm the network (end of the lossy period).
    Calm,
    ReplayRequests,
    /// Every client gets this many more requests to make.
    MoreRequests(usize),
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
    /// other node.
    twins: Vec<u16>,
    sides: Vec<u8>,
    actions: Vec<(u64, Action)>,
    /// Time after which no fault is active any more (liveness is due by
    /// `heal_at + LIVENESS_BOUND_MS`).
    heal_at: u64,
    /// The checker must report a violation (negative control).
    expect_violation: bool,
    check_liveness: bool,
    /// Replicas that must have completed a state transfer by the end.
    must_transfer: Vec<u16>,
    /// Run until every correct replica executed the same prefix, and check it.
    converge: bool,
    /// Errors (variant names) correct replicas must have reported at least once:
    /// proof that the Byzantine behaviour was met and refused.
    must_see: Vec<&'static str>,
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
            sides: vec![0; n],
            actions: vec![],
            heal_at: 0,
            expect_violation: false,
            check_liveness: true,
            must_transfer: vec![],
            converge: false,
            must_see: vec![],
        }
    }
}

struct Node {
    replica: Option<Replica<ChainApp>>,
    twin: Option<Replica<ChainApp>>,
    storage: MemoryStorage,
    behaviour: Behaviour,
    correct: bool,
    recorded: Vec<Arc<[u8]>>,
    transferred: bool,
    /// Snapshots this replica rejected because they did not match their certificate.
    bad_snapshots: u64,
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
            let twin = sim.sc.twins.contains(&i);
            let node = Node {
                replica: Some(sim.fresh_replica(i)),
                twin: twin.then(|| sim.fresh_replica(i)),
                storage: MemoryStorage::new(),
                correct: behaviour == Behaviour::Honest && !twin,
                behaviour,
                recorded: vec![],
                transferred: false,
                bad_snapshots: 0,
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
        if let (None, Dest::Replica(j, _)) = (from, to) {
            // A client's message to a twin node: alternate sides.
            if self.is_twin(j) {
                to = Dest::Replica(j, (self.rng.next_u32() % 2) as u8);
            }
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

    /// Drains one replica instance's outputs in the documented order.
    fn drain(&mut self, i: u16, side: u8) {
        let mut transmits = vec![];
        let mut events = vec![];
        {
            let node = &mut self.nodes[usize::from(i)];
            let (r, storage) = if side == 1 {
                (node.twin.as_mut(), &mut node.storage)
            } else {
                (node.replica.as_mut(), &mut node.storage)
            };
            let Some(r) = r else { return };
            while let Some(p) = r.poll_persist() {
                if side == 0 {
                    storage.persist(&p).unwrap();
                }
            }
            while let Some(t) = r.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = r.poll_event() {
                events.push(e);
            }
        }
        let behaviour = self.nodes[usize::from(i)].behaviour.clone();
        for t in transmits {
            let out = {
                let node = &mut self.nodes[usize::from(i)];
                let mut ctx = Ctx {
                    me: i,
                    identity: &self.ids[usize::from(i)],
                    m: &self.m,
                    window: self.config.window,
                    recorded: &mut node.recorded,
                };
                transform(&behaviour, &mut ctx, t, &mut self.rng)
            };
            for (to, bytes) in out {
                self.send(Some((i, side)), Dest::Replica(to, 0), bytes);
            }
        }
        let correct = self.nodes[usize::from(i)].correct;
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
    }

    fn drain_client(&mut self, c: usize) {
        let mut out = vec![];
        let mut done = 0;
        {
            let sc = &mut self.clients[c];
            while let Some(t) = sc.client.poll_transmit() {
                out.push(t);
            }
            while let Some(ClientEvent::Completed { .. }) = sc.client.poll_event() {
                done += 1;
            }
        }
        let _ = done;
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
            Action::Crash(i) => self.nodes[usize::from(i)].replica = None,
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
                self.nodes[usize::from(i)].replica = Some(r);
                self.drain(i, 0);
            }
            Action::Partition(groups) => self.partition = Some(groups),
            Action::Heal => self.partition = None,
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

    fn run(&mut self) {
        let deadline = self.sc.heal_at + LIVENESS_BOUND_MS;
        self.feed_clients();
        loop {
            if self.outstanding() == 0 && self.actions.is_empty() && self.converged() {
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
            .map(|(i, r)| {
                (
                    i,
                    r.last_executed(),
                    fed_pbft::Application::snapshot(r.app()),
                )
            })
            .collect();
        self.checker.final_states(&states);
        for want in self.sc.must_see.clone() {
            if !self.errors.contains(want) {
                self.checker.violations.push(format!(
                    "no correct replica ever reported {want} (seen: {:?})",
                    self.errors
                ));
            }
        }
        for &i in &self.sc.must_transfer.clone() {
            if !self.nodes[usize::from(i)].transferred {
                self.checker
                    .violations
                    .push(format!("replica {i} never completed a state transfer"));
            }
            if self.nodes[usize::from(i)].bad_snapshots == 0 {
                self.checker.violations.push(format!(
                    "replica {i} never met (and rejected) the Byzantine snapshot"
                ));
            }
        }
    }
}

/// Runs one seed of a scenario; returns the checker's violations.
fn run_one(sc: &Scenario, seed: u64) -> (Vec<String>, Sim) {
    let mut sim = Sim::new(sc.clone(), seed);
    sim.run();
    sim.check();
    (sim.checker.violations.clone(), sim)
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
        let (violations, sim) = run_one(&sc, seed);
        let failed = if sc.expect_violation {
            violations.is_empty()
        } else {
            !violations.is_empty()
        };
        if std::env::var("FED_SIM_VERBOSE").is_ok() {
            println!(
                "{} seed {seed} (sim seed {}): t = {} ms, {} messages, {} executed batches, violations: {violations:?}",
                sc.name, sim.seed, sim.now, sim.messages, sim.checker.executed_batches
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
            let what = if sc.expect_violation {
                "the checker reported no violation in a run that must violate agreement".to_string()
            } else {
                violations.join("; ")
            };
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
    run_scenario(Scenario::new("honest", 4));
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

#[test]
fn equivocating_primary() {
    // Twins: two copies of replica 0, each talking to one side.
    let mut sc = Scenario::new("equivocating_primary", 4);
    sc.twins = vec![0];
    sc.sides = vec![0, 0, 1, 1];
    run_scenario(sc.clone());
    sc.name = "equivocating_primary_alone";
    sc.sides = vec![0, 0, 0, 1];
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
    run_scenario(sc);
}

#[test]
fn outside_watermarks() {
    let mut sc = Scenario::new("outside_watermarks", 4);
    sc.behaviours = vec![(0, Behaviour::Watermarks)];
    sc.must_see = vec!["OutsideWatermarks"];
    run_scenario(sc);
}

#[test]
fn bad_new_view() {
    // The primary is cut off, so view 1 comes; its primary (replica 1) sends a
    // NEW-VIEW that does not match its VIEW-CHANGE set; backups must reject it and
    // move to view 2.
    let mut sc = Scenario::new("bad_new_view", 4);
    sc.behaviours = vec![(1, Behaviour::BadNewView)];
    sc.actions = vec![
        (100, Action::Partition(vec![0, 1, 1, 1])),
        (6_000, Action::Heal),
    ];
    sc.heal_at = 6_000;
    sc.must_see = vec!["InvalidViewChange"];
    run_scenario(sc);
}

#[test]
fn lagging_replica_byzantine_source() {
    // Replica 3 is cut off while several checkpoints become stable; when it comes
    // back it must fetch the state, and the first source it asks (replica 0) lies.
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
    let mut sc = Scenario::new("crash_restart", 4);
    sc.net = Net::lossy();
    sc.requests_per_client = 8;
    sc.actions = vec![
        (30, Action::Crash(0)),
        (1_500, Action::Restart(0)),
        (2_500, Action::Crash(2)),
        (4_000, Action::Restart(2)),
        (5_000, Action::Calm),
        (5_100, Action::MoreRequests(2)),
    ];
    sc.heal_at = 5_000;
    sc.converge = true;
    run_scenario(sc);
}

#[test]
fn negative_control_f_plus_one_byzantine() {
    // Replicas 0 (the primary) and 1 are both Byzantine twins: one copy of each
    // talks to replica 2, the other to replica 3. With f + 1 = 2 faulty replicas
    // the two sides commit different batches; the checker must say so.
    let mut sc = Scenario::new("negative_control_f_plus_one_byzantine", 4);
    sc.twins = vec![0, 1];
    sc.sides = vec![0, 0, 0, 1];
    sc.expect_violation = true;
    sc.check_liveness = false;
    run_scenario(sc);
}
