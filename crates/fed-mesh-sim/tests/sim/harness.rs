//! The simulated network: links, latency, loss, partitions, a virtual clock.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap},
    sync::Arc,
};

use fed_mesh::{
    PeerAddress, QueryOutcome,
    core::{
        Action, Command, CommandId, Completion, Core, CoreConfig, InboundId, OutboundId, SearchId,
        SendFailure,
    },
    crypto::Identity,
    handshake::{FederationId, Open},
    substrate::{MemorySubstrate, Pattern, PatternId, PatternQuery, ScoredPattern, SubstrateError},
    wire::Protocol,
};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use rand_chacha::{
    ChaCha20Rng,
    rand_core::{Rng, SeedableRng},
};

pub(crate) const FED: FederationId = FederationId([0x51; 32]);
/// Virtual time the simulation starts at (Unix milliseconds).
pub(crate) const T0: u64 = 1_800_000_000_000;

/// The seed of a run: `FED_SIM_SEED`, or `default`.
pub(crate) fn seed_or(default: u64) -> u64 {
    std::env::var("FED_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nodes in a federation: `FED_SIM_NODES`, or 60 (a quick run under `cargo
/// test`; `cargo xtask sim mesh` runs 200 in the `sim` profile).
pub(crate) fn nodes() -> usize {
    std::env::var("FED_SIM_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

pub(crate) fn report() -> bool {
    std::env::var("FED_SIM_REPORT").is_ok()
}

/// Network conditions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Net {
    /// Probability that a request or a response is lost.
    pub(crate) loss: f64,
    pub(crate) min_latency_ms: u64,
    pub(crate) max_latency_ms: u64,
    /// When a lost request is reported as timed out.
    pub(crate) request_timeout_ms: u64,
}

impl Default for Net {
    fn default() -> Self {
        Self {
            loss: 0.0,
            min_latency_ms: 1,
            max_latency_ms: 20,
            request_timeout_ms: 5_000,
        }
    }
}

enum Ev {
    Connect {
        a: usize,
        b: usize,
    },
    /// An event for one incarnation of node `to` (dropped if it crashed since).
    For {
        to: usize,
        incarnation: u64,
        ev: Box<Ev>,
    },
    DialFailed {
        node: usize,
        peer: PeerId,
    },
    Request {
        to: usize,
        from: usize,
        protocol: Protocol,
        out: OutboundId,
        bytes: Vec<u8>,
    },
    Response {
        to: usize,
        id: OutboundId,
        bytes: Vec<u8>,
    },
    Failed {
        to: usize,
        id: OutboundId,
        failure: SendFailure,
    },
    Searched {
        node: usize,
        id: SearchId,
        result: Result<Vec<ScoredPattern>, SubstrateError>,
    },
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

pub(crate) struct Node {
    pub(crate) core: Core,
    pub(crate) substrate: MemorySubstrate,
    pub(crate) peer: PeerId,
    next_timer: Option<u64>,
    config: CoreConfig,
    pub(crate) alive: bool,
    generation: u64,
}

/// Counters over the whole network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Traffic {
    pub(crate) requests: BTreeMap<&'static str, u64>,
    pub(crate) lost: u64,
}

pub(crate) struct Sim {
    pub(crate) seed: u64,
    pub(crate) now: u64,
    pub(crate) nodes: Vec<Node>,
    rng: ChaCha20Rng,
    index: HashMap<PeerId, usize>,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    links: BTreeSet<(usize, usize)>,
    /// Responses owed: (responder, inbound id) -> (requester, its request id).
    owed: HashMap<(usize, InboundId), (usize, OutboundId)>,
    next_inbound: u64,
    next_command: u64,
    completions: HashMap<CommandId, Completion>,
    pub(crate) net: Net,
    /// Side of each node while a partition holds.
    partition: Option<Vec<u8>>,
    pub(crate) traffic: Traffic,
}

fn link(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

pub(crate) fn address(i: usize, peer: PeerId) -> Multiaddr {
    format!("/memory/{}/p2p/{peer}", i + 1).parse().unwrap()
}

impl Sim {
    /// `n` nodes; node `i > 0` bootstraps to a random earlier node; each keeps
    /// `max_peers` outbound sessions. `configure` adjusts each node's config.
    pub(crate) fn new(
        seed: u64,
        n: usize,
        max_peers: usize,
        net: Net,
        configure: impl Fn(usize, &mut CoreConfig),
    ) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let identities: Vec<Arc<Identity>> = (0..n)
            .map(|_| {
                let mut s = [0u8; 32];
                rng.fill_bytes(&mut s);
                Arc::new(Identity::from_seeds(&s, None))
            })
            .collect();
        let peers: Vec<PeerId> = identities
            .iter()
            .map(|i| fed_mesh::core::peer_id_of_identity(i.public()).unwrap())
            .collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, identity) in identities.iter().enumerate() {
            let mut config = CoreConfig::new(identity.clone(), FED, Arc::new(Open));
            config.limits.max_peers = max_peers;
            config.timing.sync_interval_ms = 3_000;
            config.timing.redial_interval_ms = 1_000;
            if i > 0 {
                let j = (rng.next_u64() % i as u64) as usize;
                config.bootstrap =
                    vec![PeerAddress::new(address(j, peers[j]), identities[j].node_id()).unwrap()];
            }
            configure(i, &mut config);
            let mut core_seed = [0u8; 32];
            rng.fill_bytes(&mut core_seed);
            let mut core = Core::new(config.clone(), core_seed, T0).unwrap();
            core.handle_listen_addrs(vec![format!("/memory/{}", i + 1).parse().unwrap()], T0);
            nodes.push(Node {
                core,
                substrate: MemorySubstrate::new(),
                peer: peers[i],
                next_timer: Some(T0),
                config,
                alive: true,
                generation: 0,
            });
        }
        let index = peers.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let mut sim = Self {
            seed,
            now: T0,
            nodes,
            rng,
            index,
            queue: BinaryHeap::new(),
            seq: 0,
            links: BTreeSet::new(),
            owed: HashMap::new(),
            next_inbound: 1,
            next_command: 1,
            completions: HashMap::new(),
            net,
            partition: None,
            traffic: Traffic::default(),
        };
        for i in 0..n {
            sim.drain(i);
        }
        sim
    }

    /// Schedules `ev` for node `to` as it is now: lost if it crashes meanwhile.
    fn schedule_for(&mut self, at: u64, to: usize, ev: Ev) {
        let incarnation = self.nodes[to].generation;
        self.schedule(
            at,
            Ev::For {
                to,
                incarnation,
                ev: Box::new(ev),
            },
        );
    }

    /// Crashes node `i`: its connections close, what it was asked is never
    /// answered, what is on its way to it is lost.
    pub(crate) fn crash(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].alive = false;
        self.nodes[i].next_timer = None;
        let linked: Vec<usize> = self
            .links
            .iter()
            .filter_map(|&(a, b)| (a == i).then_some(b).or((b == i).then_some(a)))
            .collect();
        let me = self.nodes[i].peer;
        for j in linked {
            self.links.remove(&link(i, j));
            self.nodes[j].core.handle_disconnected(me, now);
            self.touch(j);
        }
        let owed: Vec<(usize, OutboundId)> = self
            .owed
            .iter()
            .filter(|((responder, _), _)| *responder == i)
            .map(|(_, v)| *v)
            .collect();
        self.owed.retain(|(responder, _), _| *responder != i);
        for (k, out) in owed {
            self.schedule_for(
                now,
                k,
                Ev::Failed {
                    to: k,
                    id: out,
                    failure: SendFailure::ConnectionClosed,
                },
            );
        }
    }

    /// Restarts node `i` from its configuration (its identity, its bootstrap
    /// peer) with empty state, as a process restarted without a disk; its
    /// substrate keeps its patterns.
    pub(crate) fn restart(&mut self, i: usize) {
        let now = self.now;
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let mut core = Core::new(self.nodes[i].config.clone(), seed, now).unwrap();
        core.handle_listen_addrs(vec![format!("/memory/{}", i + 1).parse().unwrap()], now);
        let node = &mut self.nodes[i];
        node.core = core;
        node.generation += 1;
        node.alive = true;
        node.next_timer = Some(now);
        self.drain(i);
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn latency(&mut self) -> u64 {
        let span = self.net.max_latency_ms - self.net.min_latency_ms + 1;
        self.net.min_latency_ms + self.rng.next_u64() % span
    }

    fn lost(&mut self, a: usize, b: usize) -> bool {
        if let Some(sides) = &self.partition
            && sides[a] != sides[b]
        {
            return true;
        }
        self.net.loss > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < self.net.loss
    }

    /// Splits the network: nodes of different sides cannot reach each other.
    pub(crate) fn partition(&mut self, sides: Vec<u8>) {
        self.partition = Some(sides);
    }

    pub(crate) fn heal(&mut self) {
        self.partition = None;
    }

    /// Carries out node `i`'s actions.
    fn drain(&mut self, i: usize) {
        while let Some(action) = self.nodes[i].core.poll_action() {
            match action {
                Action::Send {
                    peer,
                    protocol,
                    id,
                    payload,
                } => {
                    *self.traffic.requests.entry(protocol.as_str()).or_default() += 1;
                    let Some(&j) = self.index.get(&peer) else {
                        continue;
                    };
                    if !self.links.contains(&link(i, j)) {
                        self.schedule_for(
                            self.now,
                            i,
                            Ev::Failed {
                                to: i,
                                id,
                                failure: SendFailure::ConnectionClosed,
                            },
                        );
                    } else if self.lost(i, j) {
                        self.traffic.lost += 1;
                        let at = self.now + self.net.request_timeout_ms;
                        self.schedule_for(
                            at,
                            i,
                            Ev::Failed {
                                to: i,
                                id,
                                failure: SendFailure::Timeout,
                            },
                        );
                    } else {
                        let at = self.now + self.latency();
                        self.schedule_for(
                            at,
                            j,
                            Ev::Request {
                                to: j,
                                from: i,
                                protocol,
                                out: id,
                                bytes: payload,
                            },
                        );
                    }
                }
                Action::Respond { id, payload } => {
                    let Some((k, out)) = self.owed.remove(&(i, id)) else {
                        continue;
                    };
                    if payload.is_empty() {
                        self.schedule_for(
                            self.now,
                            k,
                            Ev::Failed {
                                to: k,
                                id: out,
                                failure: SendFailure::Io("closed".into()),
                            },
                        );
                    } else if self.lost(i, k) {
                        self.traffic.lost += 1;
                        let at = self.now + self.net.request_timeout_ms;
                        self.schedule_for(
                            at,
                            k,
                            Ev::Failed {
                                to: k,
                                id: out,
                                failure: SendFailure::Timeout,
                            },
                        );
                    } else {
                        let at = self.now + self.latency();
                        self.schedule_for(
                            at,
                            k,
                            Ev::Response {
                                to: k,
                                id: out,
                                bytes: payload,
                            },
                        );
                    }
                }
                Action::Dial { peer, .. } => {
                    let Some(&j) = self.index.get(&peer) else {
                        continue;
                    };
                    let at = self.now + self.latency();
                    if self.links.contains(&link(i, j)) || self.lost(i, j) {
                        self.schedule_for(at, i, Ev::DialFailed { node: i, peer });
                    } else {
                        self.schedule(at, Ev::Connect { a: i, b: j });
                    }
                }
                Action::Ban { peer } => {
                    if let Some(&j) = self.index.get(&peer)
                        && self.links.remove(&link(i, j))
                    {
                        let (me, now) = (self.nodes[i].peer, self.now);
                        self.nodes[j].core.handle_disconnected(me, now);
                        self.touch(j);
                    }
                }
                Action::Search { id, query } => {
                    let result = self.nodes[i].substrate.query(&query);
                    self.schedule_for(
                        self.now + 1,
                        i,
                        Ev::Searched {
                            node: i,
                            id,
                            result,
                        },
                    );
                }
                Action::Complete {
                    command,
                    completion,
                } => {
                    self.completions.insert(command, completion);
                }
                _ => {}
            }
        }
        self.nodes[i].next_timer = self.nodes[i].core.poll_timeout();
    }

    fn touch(&mut self, i: usize) {
        self.drain(i);
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::For {
                to,
                incarnation,
                ev,
            } => {
                if self.nodes[to].alive && self.nodes[to].generation == incarnation {
                    self.deliver(*ev);
                }
            }
            Ev::Connect { a, .. } if !self.nodes[a].alive => {}
            Ev::Connect { a, b } if !self.nodes[b].alive => {
                let pb = self.nodes[b].peer;
                self.nodes[a]
                    .core
                    .handle_dial_failed(pb, "down".into(), now);
                self.touch(a);
            }
            Ev::Connect { a, b } => {
                if self.links.insert(link(a, b)) {
                    let (pa, pb) = (self.nodes[a].peer, self.nodes[b].peer);
                    self.nodes[a]
                        .core
                        .handle_connected(pb, Some(address(b, pb)), now);
                    self.nodes[b].core.handle_connected(pa, None, now);
                    self.touch(a);
                    self.touch(b);
                } else {
                    let pb = self.nodes[b].peer;
                    self.nodes[a]
                        .core
                        .handle_dial_failed(pb, "already connected".into(), now);
                    self.touch(a);
                }
            }
            Ev::DialFailed { node, peer } => {
                self.nodes[node]
                    .core
                    .handle_dial_failed(peer, "unreachable".into(), now);
                self.touch(node);
            }
            Ev::Request {
                to,
                from,
                protocol,
                out,
                bytes,
            } => {
                if !self.links.contains(&link(to, from)) {
                    self.schedule_for(
                        now,
                        from,
                        Ev::Failed {
                            to: from,
                            id: out,
                            failure: SendFailure::ConnectionClosed,
                        },
                    );
                    return;
                }
                let id = InboundId(self.next_inbound);
                self.next_inbound += 1;
                self.owed.insert((to, id), (from, out));
                let peer = self.nodes[from].peer;
                self.nodes[to]
                    .core
                    .handle_request(peer, protocol, id, bytes, now);
                self.touch(to);
            }
            Ev::Response { to, id, bytes } => {
                self.nodes[to].core.handle_response(id, bytes, now);
                self.touch(to);
            }
            Ev::Failed { to, id, failure } => {
                self.nodes[to].core.handle_send_failed(id, failure, now);
                self.touch(to);
            }
            Ev::Searched { node, id, result } => {
                self.nodes[node].core.handle_search_done(id, result, now);
                self.touch(node);
            }
        }
    }

    /// Runs events and timers until virtual time `until`.
    pub(crate) fn run_until(&mut self, until: u64) {
        loop {
            let next_event = self.queue.peek().map(|Reverse(q)| q.at);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.next_timer.map(|t| (t, i)))
                .min();
            let event_first = match (next_event, next_timer) {
                (None, None) => break,
                (Some(e), Some((t, _))) => e <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if event_first {
                let at = next_event.unwrap_or(until);
                if at > until {
                    break;
                }
                let Reverse(q) = self.queue.pop().unwrap();
                self.now = self.now.max(q.at);
                self.deliver(q.ev);
            } else {
                let (t, i) = next_timer.unwrap();
                if t > until {
                    break;
                }
                self.now = self.now.max(t);
                let now = self.now;
                self.nodes[i].core.handle_timeout(now);
                self.touch(i);
            }
        }
        self.now = self.now.max(until);
    }

    /// Issues `command` at node `i` and runs until it completes (or `max_ms` pass).
    pub(crate) fn run_command(
        &mut self,
        i: usize,
        command: Command,
        max_ms: u64,
    ) -> Option<Completion> {
        let id = CommandId(self.next_command);
        self.next_command += 1;
        let now = self.now;
        self.nodes[i].core.command(id, command, now);
        self.touch(i);
        let deadline = self.now + max_ms;
        while self.now < deadline {
            if let Some(c) = self.completions.remove(&id) {
                return Some(c);
            }
            let step = (self.now + 10).min(deadline);
            self.run_until(step);
        }
        self.completions.remove(&id)
    }

    pub(crate) fn query(
        &mut self,
        i: usize,
        query: PatternQuery,
        scope: fed_mesh::FederationScope,
        options: fed_mesh::QueryOptions,
    ) -> QueryOutcome {
        let max = options.timeout_ms + 1_000;
        match self.run_command(
            i,
            Command::Query {
                query,
                scope,
                options,
            },
            max,
        ) {
            Some(Completion::Queried(Ok(outcome))) => outcome,
            other => panic!("seed {}: query did not complete: {other:?}", self.seed),
        }
    }

    /// Stores `patterns_per_node` patterns with distinct ids on every node; returns
    /// a substrate holding all of them.
    pub(crate) fn spread(&mut self, patterns_per_node: u64, dim: usize) -> MemorySubstrate {
        let union = MemorySubstrate::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for j in 0..patterns_per_node {
                let id = i as u64 * 1_000_000 + j;
                let p = Pattern {
                    id: PatternId::from_u64(id),
                    embedding: embedding(&mut self.rng, dim),
                    metadata: BTreeMap::new(),
                    timestamp_ms: T0,
                };
                node.substrate.insert(p.clone()).unwrap();
                union.insert(p).unwrap();
            }
        }
        union
    }

    pub(crate) fn random_embedding(&mut self, dim: usize) -> Vec<f32> {
        embedding(&mut self.rng, dim)
    }

    pub(crate) fn random_node(&mut self) -> usize {
        (self.rng.next_u64() % self.nodes.len() as u64) as usize
    }

    /// Outbound sessions per node: min, mean, max.
    pub(crate) fn degree(&self) -> (usize, f64, usize) {
        let d: Vec<usize> = self
            .nodes
            .iter()
            .map(|n| n.core.peers().iter().filter(|p| p.held.is_some()).count())
            .collect();
        let sum: usize = d.iter().sum();
        (
            *d.iter().min().unwrap_or(&0),
            sum as f64 / d.len() as f64,
            *d.iter().max().unwrap_or(&0),
        )
    }
}

fn embedding(rng: &mut ChaCha20Rng, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0)
        .collect()
}
