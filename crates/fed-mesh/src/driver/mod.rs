//! The IO layer: one tokio task owns the libp2p `Swarm` and the node's [`Core`],
//! and moves events between them. It holds no federation logic of its own.
//!
//! Its loop is a `select!` over swarm events, commands from the
//! [`FederatedMesh`](crate::FederatedMesh) handles, finished substrate searches
//! and the core's next timeout; after each it drains the core's actions into
//! the swarm (requests, responses, dials, bans), the substrate (searches), the
//! waiting callers and the event channel.

pub(crate) mod codec;
mod drain;
mod link;
mod stream;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, identify, kad,
    memory_connection_limits, noise, ping,
    request_response::{
        self, InboundRequestId, OutboundRequestId, ProtocolSupport, ResponseChannel,
    },
    swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle, dial_opts::DialOpts},
    tcp, tls, yamux,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use self::codec::FrameCodec;
use crate::{
    core::{
        Action, Command, CommandId, Completion, Core, InboundId, InboundProblem, OutboundId,
        SearchId, SendFailure,
    },
    error::{Error, Result},
    substrate::{ScoredPattern, Substrate, SubstrateError},
    types::{MeshEvent, Stats},
    wire::{self, Protocol},
};

/// How the driver's loop waits for the core's next deadline. A deadline
/// already due runs after a yield, not at tokio's next timer tick (up to a
/// millisecond later: an idle primary's batch, due at once, waited for it).
/// Once per deadline, so that a deadline the core does not move cannot spin
/// the loop: it then waits for the timer's tick.
#[derive(Default)]
struct CoreTimer {
    /// The deadline that last ran after a yield.
    ran_at_once: Option<u64>,
}

impl CoreTimer {
    /// How long to wait for `deadline` at `now`, and whether only to yield
    /// (`true`) instead of sleeping.
    fn wait(&self, now: u64, deadline: Option<u64>) -> (Duration, bool) {
        let wait = deadline.map_or(Duration::from_secs(3600), |t| {
            Duration::from_millis(t.saturating_sub(now))
        });
        (wait, wait.is_zero() && self.ran_at_once != deadline)
    }

    /// The wait that [`wait`](Self::wait) gave for `deadline` ended; the
    /// core's timeout runs next.
    fn fired(&mut self, deadline: Option<u64>, at_once: bool) {
        if at_once {
            self.ran_at_once = deadline;
        }
    }
}

#[cfg(test)]
mod audit_group_tests {
    use super::*;

    /// Entries within the delay of the first go in its group (counted from
    /// the first, not from the last one in); a later one starts the next;
    /// the size bound holds.
    #[tokio::test(start_paused = true)]
    async fn entries_within_the_delay_go_together() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        // Entry `i` is sent `at` ms after the start.
        let sender = tokio::spawn(async move {
            for (i, at) in [0u64, 10, 40, 70, 150, 151, 152].into_iter().enumerate() {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                tx.send(i).unwrap();
            }
            tx
        });
        let delay = Duration::from_millis(50);
        assert_eq!(
            next_audit_group(&mut rx, delay, 16).await,
            Some(vec![0, 1, 2])
        );
        assert_eq!(next_audit_group(&mut rx, delay, 16).await, Some(vec![3]));
        assert_eq!(next_audit_group(&mut rx, delay, 2).await, Some(vec![4, 5]));
        assert_eq!(next_audit_group(&mut rx, delay, 16).await, Some(vec![6]));
        drop(sender.await.unwrap());
        assert_eq!(next_audit_group(&mut rx, delay, 16).await, None);
    }

    /// A node stopping does not wait out the delay: the group ends when the
    /// channel closes, with every entry that was sent.
    #[tokio::test(start_paused = true)]
    async fn a_closed_channel_ends_the_group_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        drop(tx);
        let start = tokio::time::Instant::now();
        let group = next_audit_group(&mut rx, Duration::from_secs(10), 16).await;
        assert_eq!(group, Some(vec![1, 2]));
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the group waited out the delay"
        );
    }
}

#[cfg(test)]
mod timer_tests {
    use super::*;

    /// A core whose deadline stays due (it does not move it when its timeout
    /// runs) gets one run after a yield, then waits for the timer's ticks:
    /// the loop does not spin.
    #[test]
    fn a_deadline_that_does_not_move_runs_at_once_only_once() {
        let due = Some(1_000);
        let mut timer = CoreTimer::default();
        let mut at_once_runs = 0;
        for now in [1_000, 1_000, 1_000, 1_001, 1_002] {
            let (wait, at_once) = timer.wait(now, due);
            assert!(wait.is_zero());
            if at_once {
                at_once_runs += 1;
            }
            timer.fired(due, at_once);
        }
        assert_eq!(at_once_runs, 1);
        // A new deadline due at once runs at once again; a later one sleeps.
        assert_eq!(timer.wait(1_002, Some(1_001)), (Duration::ZERO, true));
        assert_eq!(
            timer.wait(1_002, Some(1_010)),
            (Duration::from_millis(8), false)
        );
        assert_eq!(timer.wait(1_002, None), (Duration::from_secs(3600), false));
    }
}

#[cfg(test)]
mod held_flush_tests {
    use super::*;

    /// Held writes are due `HELD_FLUSH_DELAY` after the log started holding
    /// them: more held writes do not put that off; a new holding spell (the
    /// log wrote the earlier ones with a synced write meanwhile) starts its
    /// own delay; nothing held, nothing due.
    #[test]
    fn held_writes_are_due_a_delay_after_the_first() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut h = HeldFlush::default();
        assert_eq!(h.due(), None);
        h.update(None, t0);
        assert_eq!(h.due(), None);
        h.update(Some(1), t0);
        assert_eq!(h.due(), Some(t0 + HELD_FLUSH_DELAY));
        h.update(Some(1), t0 + ms(5));
        assert_eq!(h.due(), Some(t0 + HELD_FLUSH_DELAY), "not put off");
        h.update(Some(2), t0 + ms(7));
        assert_eq!(h.due(), Some(t0 + ms(7) + HELD_FLUSH_DELAY), "a new spell");
        h.update(None, t0 + ms(8));
        assert_eq!(h.due(), None);
        h.update(Some(2), t0 + ms(9));
        assert_eq!(h.due(), Some(t0 + ms(9) + HELD_FLUSH_DELAY));
    }
}

impl drain::ActionSink for Driver {
    fn next_action(&mut self) -> Option<Action> {
        self.core.poll_action()
    }

    fn sync(&mut self, writes: &mut Vec<fed_pbft::Persist>) {
        self.persist(writes);
    }

    fn perform(&mut self, action: Action) {
        self.carry_out(action);
    }

    fn stopped(&self) -> bool {
        self.failed
    }
}

/// Wall-clock time in Unix milliseconds: the `now` the core runs on.
#[allow(clippy::disallowed_methods)] // the IO layer is where time enters
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(feature = "mdns")]
type Mdns = libp2p::mdns::tokio::Behaviour;
#[cfg(not(feature = "mdns"))]
type Mdns = libp2p::swarm::dummy::Behaviour;

/// Every libp2p behaviour the node runs.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    memory: memory_connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<Mdns>,
    handshake: request_response::Behaviour<FrameCodec>,
    query: request_response::Behaviour<FrameCodec>,
    onion: request_response::Behaviour<FrameCodec>,
    sync: request_response::Behaviour<FrameCodec>,
    /// The long-lived streams of the consensus protocol (`/exo-fed/pbft/2`).
    streams: link::Behaviour,
}

/// Transport settings of the libp2p layer.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Close a connection after this long without streams. Default 1 h: members
    /// keep their connections; ping checks they are alive.
    pub idle_timeout: Duration,
    /// Connections at most, in and out. Default 512.
    pub max_connections: u32,
    /// Connections per peer at most. Default 2.
    pub max_connections_per_peer: u32,
    /// Refuse new connections above this share of the system's memory. Default 0.9.
    pub max_memory_fraction: f64,
    /// Discover peers on the local network by mDNS (needs the `mdns` feature;
    /// mDNS skips loopback, so a local federation needs bootstrap peers).
    pub mdns: bool,
    /// How long a request on a federation protocol may stay unanswered before
    /// the transport gives up on it. Default 60 s (the core's own deadlines are
    /// shorter).
    pub request_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(3600),
            max_connections: 512,
            max_connections_per_peer: 2,
            max_memory_fraction: 0.9,
            mdns: false,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Streams of one protocol open at once on one connection, in and out.
const MAX_STREAMS_PER_CONNECTION: usize = 64;
/// Substrate searches running at once.
const MAX_SEARCHES: usize = 64;
/// Most commands handled as one group (their commits leave together).
const MAX_COMMAND_GROUP: usize = 256;
/// Most frames from the long-lived streams handled before one drain.
const MAX_FRAME_GROUP: usize = 64;
/// Most audit entries appended in one transaction.
const MAX_AUDIT_GROUP: usize = 1024;
/// How long the replica's held-back writes (`PrePrepare`s and `Committed`s,
/// which need no sync, pbft.md §5) may wait for the next synced write before
/// the driver writes them on their own: a node that goes idle has them on
/// disk this long after, not at its next request.
const HELD_FLUSH_DELAY: Duration = Duration::from_millis(10);

/// When the replica log's held-back writes are due to be written on their
/// own: [`HELD_FLUSH_DELAY`] after the log started holding them, whatever
/// was held since (a loaded node's next synced write takes them long before).
#[derive(Debug, Default)]
struct HeldFlush {
    /// The log's number for its held writes ([`crate::store::PbftStore::holds_writes`])
    /// and when the driver first saw it.
    since: Option<(u64, tokio::time::Instant)>,
}

impl HeldFlush {
    /// After a drain: `holds` is the log's number for its held writes, if any.
    fn update(&mut self, holds: Option<u64>, now: tokio::time::Instant) {
        self.since = match (holds, self.since) {
            (None, _) => None,
            (Some(n), Some((since, at))) if n == since => Some((since, at)),
            (Some(n), _) => Some((n, now)),
        };
    }

    /// When to write them, if anything is held.
    fn due(&self) -> Option<tokio::time::Instant> {
        self.since.map(|(_, at)| at + HELD_FLUSH_DELAY)
    }
}
/// The audit log, the key that signs its head, and the batches the recovered
/// replica may execute again whose commits the log holds already.
pub(crate) type AuditParts = (
    crate::store::AuditLog,
    Arc<fed_crypto::Identity>,
    std::collections::HashSet<(u64, [u8; 32])>,
);

/// Where the driver sends audit entries (time and event) to their writer.
type AuditSender = mpsc::UnboundedSender<(u64, crate::store::AuditEvent)>;
/// How long the audit writer waits after an event for more to append with
/// it (one transaction, one head signature for the lot).
const AUDIT_GROUP_DELAY: Duration = Duration::from_millis(50);

/// The audit writer's next group: the first entry to arrive and those after
/// it within `delay`, at most `max`. The group ends at once when the channel
/// closes (the node stopping); `None` once it is closed and empty.
async fn next_audit_group<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    delay: Duration,
    max: usize,
) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let until = tokio::time::Instant::now() + delay;
    let mut group = vec![first];
    while group.len() < max {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(next)) => group.push(next),
            Ok(None) | Err(_) => break,
        }
    }
    Some(group)
}

fn rr(
    protocol: Protocol,
    max_request: usize,
    max_response: usize,
    timeout: Duration,
) -> request_response::Behaviour<FrameCodec> {
    request_response::Behaviour::with_codec(
        FrameCodec::new(max_request, max_response),
        [(StreamProtocol::new(protocol.name()), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(MAX_STREAMS_PER_CONNECTION),
    )
}

/// Builds the swarm: TCP with TLS (preferred; X25519MLKEM768 key exchange) or
/// Noise, Yamux; QUIC; DNS; and the behaviours above.
pub(crate) fn build_swarm(
    keypair: libp2p::identity::Keypair,
    transport: &TransportConfig,
    max_frame: usize,
) -> Result<Swarm<Behaviour>> {
    let handshake_max = fed_handshake::MAX_MESSAGE_LEN + fed_crypto::FRAME_OVERHEAD + 64;
    let onion_max = fed_onion::MAX_PACKET_LEN
        + fed_crypto::FRAME_OVERHEAD
        + wire::ENVELOPE_HEADER_LEN
        + wire::SESSION_ID_LEN
        + 64;
    let timeout = transport.request_timeout;
    let t = transport.clone();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            (tls::Config::new, noise::Config::new),
            yamux::Config::default,
        )
        .map_err(|e| Error::Transport(format!("TCP transport: {e}")))?
        .with_quic()
        .with_dns()
        .map_err(|e| Error::Transport(format!("DNS resolver: {e}")))?
        .with_behaviour(move |key| {
            let peer = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(StreamProtocol::new(wire::PROTOCOL_KAD));
            kad_config.set_query_timeout(Duration::from_secs(30));
            let mut kad =
                kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config);
            // Federation members are servers; on loopback or behind NAT no
            // external address is ever confirmed, which would leave Kademlia in
            // client mode.
            kad.set_mode(Some(kad::Mode::Server));
            #[cfg(feature = "mdns")]
            let mdns = if t.mdns {
                Some(libp2p::mdns::tokio::Behaviour::new(
                    libp2p::mdns::Config::default(),
                    peer,
                )?)
            } else {
                None
            };
            #[cfg(not(feature = "mdns"))]
            let mdns: Option<Mdns> = None;
            Ok(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(t.max_connections))
                        .with_max_established_per_peer(Some(t.max_connections_per_peer))
                        .with_max_pending_incoming(Some(64)),
                ),
                memory: memory_connection_limits::Behaviour::with_max_percentage(
                    t.max_memory_fraction,
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new(wire::IDENTIFY_PROTOCOL_VERSION.into(), key.public())
                        .with_agent_version(format!(
                            "exo-federation/{}",
                            env!("CARGO_PKG_VERSION")
                        )),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                kad,
                mdns: Toggle::from(mdns),
                handshake: rr(Protocol::Handshake, handshake_max, handshake_max, timeout),
                query: rr(Protocol::Query, max_frame, max_frame, timeout),
                onion: rr(Protocol::Onion, onion_max, onion_max, timeout),
                sync: rr(Protocol::Sync, max_frame, max_frame, timeout),
                streams: link::Behaviour::new(StreamProtocol::new(Protocol::Pbft.name())),
            })
        })
        .map_err(|e| Error::Transport(format!("behaviours: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(transport.idle_timeout))
        .build();
    Ok(swarm)
}

/// What a handle asks the driver.
pub(crate) enum Request {
    Command(Command, oneshot::Sender<Completion>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Stats(oneshot::Sender<Stats>),
    PeerCount(oneshot::Sender<usize>),
    SharedEntries(oneshot::Sender<Vec<(Vec<u8>, Vec<u8>)>>),
    Consensus(oneshot::Sender<Option<crate::types::ConsensusStatus>>),
    /// Revoke a token here; answered once the revocation is stored.
    Revoke([u8; 32], oneshot::Sender<()>),
    /// Test hook: stop processing for a while, as a hung node would.
    Pause(Duration, oneshot::Sender<()>),
    /// Test hook: a partition at the transport (block or unblock these peers).
    Partition(Vec<PeerId>, bool, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct Driver {
    swarm: Swarm<Behaviour>,
    core: Core,
    substrate: Arc<dyn Substrate>,
    requests: mpsc::Receiver<Request>,
    searches_tx: mpsc::Sender<(
        SearchId,
        std::result::Result<Vec<ScoredPattern>, SubstrateError>,
    )>,
    searches_rx: mpsc::Receiver<(
        SearchId,
        std::result::Result<Vec<ScoredPattern>, SubstrateError>,
    )>,
    events: broadcast::Sender<MeshEvent>,
    channels: HashMap<InboundId, (Protocol, ResponseChannel<Vec<u8>>)>,
    inbound_ids: HashMap<(Protocol, InboundRequestId), InboundId>,
    outbound_ids: HashMap<(Protocol, OutboundRequestId), OutboundId>,
    waiting: HashMap<CommandId, oneshot::Sender<Completion>>,
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    listen_addrs: Vec<Multiaddr>,
    search_permits: Arc<tokio::sync::Semaphore>,
    next_inbound: u64,
    next_command: u64,
    /// Events for the audit log's writer (with a data directory), in the
    /// order they happened, and the writer (awaited when the node stops).
    audit: Option<(AuditSender, tokio::task::JoinHandle<()>)>,
    /// Batches the recovered replica may execute again (recorded after its
    /// last checkpoint, or lost in a crash) whose commits the audit log holds
    /// already: skipped once each, not logged twice (the federation committed
    /// them once).
    audited_replays: std::collections::HashSet<(u64, [u8; 32])>,
    /// The replica's durable state, with a data directory.
    pbft_store: Option<crate::store::PbftStore>,
    /// When the replica log's held-back writes are due on their own.
    held: HeldFlush,
    /// Committed batches, in order, to the task that applies them to the substrate.
    apply_tx: mpsc::UnboundedSender<Arc<crate::core::commit::CommittedBatch>>,
    /// A durable write failed: the node stops rather than send what depends on it.
    failed: bool,
    /// Peers a test partitioned away (the core's bans never lift these).
    partitioned: std::collections::HashSet<PeerId>,
    /// Prometheus metrics, when the builder registered them.
    metrics: Option<crate::metrics::NodeMetrics>,
    /// The node's own durable state, with a data directory.
    state_store: Option<crate::store::StateStore>,
    /// The consensus protocol's long-lived streams.
    streams: stream::Streams,
    /// Requests on the streams that failed as they were queued (a full or
    /// closed queue), reported to the core at the next expiry tick: reported
    /// at once, a retry that fails at once again would recurse, or spin the
    /// loop, while the peers' queues stay full.
    failed_sends: Vec<(OutboundId, SendFailure)>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)] // the parts a node is made of
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        core: Core,
        substrate: Arc<dyn Substrate>,
        requests: mpsc::Receiver<Request>,
        events: broadcast::Sender<MeshEvent>,
        bootstrap: &[crate::PeerAddress],
        audit: Option<AuditParts>,
        pbft_store: Option<crate::store::PbftStore>,
        state_store: Option<crate::store::StateStore>,
        metrics: Option<crate::metrics::NodeMetrics>,
        transport: &TransportConfig,
        max_frame: usize,
    ) -> Result<Self> {
        let mut swarm = swarm;
        let incoming = swarm
            .behaviour_mut()
            .streams
            .accept()
            .ok_or_else(|| Error::Transport("the consensus streams are taken".into()))?;
        let mut first_tag = [0u8; 8];
        getrandom::fill(&mut first_tag)
            .map_err(|e| Error::Config(format!("no OS randomness: {e}")))?;
        let streams = stream::Streams::new(
            swarm.behaviour().streams.control(),
            incoming,
            max_frame,
            transport.request_timeout,
            u64::from_le_bytes(first_tag),
        );
        let (searches_tx, searches_rx) = mpsc::channel(1024);
        let (apply_tx, mut apply_rx) =
            mpsc::unbounded_channel::<Arc<crate::core::commit::CommittedBatch>>();
        // Committed updates reach the substrate one at a time, in commit order.
        let applier = substrate.clone();
        tokio::spawn(async move {
            while let Some(batch) = apply_rx.recv().await {
                for (_, _, update) in &batch.updates {
                    if let Err(e) = applier.apply(update).await {
                        tracing::warn!(seq = batch.seq, error = %e, "the substrate refused a committed update");
                    }
                }
            }
        });
        // Audit entries are appended by one task, in the order the events
        // happened, off the node's task: those that come within
        // AUDIT_GROUP_DELAY of the first go together (one transaction, one
        // signature of the head), so a node committing batches back to back
        // appends at most 20 times a second, not once a batch.
        let mut audited_replays = std::collections::HashSet::new();
        let audit = audit.map(|(log, identity, logged)| {
            audited_replays = logged;
            let (tx, mut rx) = mpsc::unbounded_channel::<(u64, crate::store::AuditEvent)>();
            let writer = tokio::spawn(async move {
                while let Some(group) =
                    next_audit_group(&mut rx, AUDIT_GROUP_DELAY, MAX_AUDIT_GROUP).await
                {
                    let (log, identity) = (log.clone(), identity.clone());
                    let appended =
                        tokio::task::spawn_blocking(move || log.append_all(&identity, group)).await;
                    match appended {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "audit log"),
                        Err(e) => tracing::error!(error = %e, "audit log writer"),
                    }
                }
            });
            (tx, writer)
        });
        let mut driver = Self {
            swarm,
            core,
            substrate,
            requests,
            searches_tx,
            searches_rx,
            events,
            channels: HashMap::new(),
            inbound_ids: HashMap::new(),
            outbound_ids: HashMap::new(),
            waiting: HashMap::new(),
            listen_waiters: Vec::new(),
            listen_addrs: Vec::new(),
            search_permits: Arc::new(tokio::sync::Semaphore::new(MAX_SEARCHES)),
            next_inbound: 1,
            next_command: 1,
            audit,
            audited_replays,
            pbft_store,
            held: HeldFlush::default(),
            apply_tx,
            failed: false,
            partitioned: Default::default(),
            metrics,
            state_store,
            streams,
            failed_sends: Vec::new(),
        };
        driver.refresh_metrics();
        for b in bootstrap {
            if let Ok(peer) = b.peer_id() {
                driver
                    .swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, b.addr.clone());
            }
        }
        Ok(driver)
    }

    /// Runs until a shutdown request or until every handle is dropped.
    pub(crate) async fn run(mut self) {
        let mut kad_bootstrap = tokio::time::interval(Duration::from_secs(300));
        let mut metrics_tick = tokio::time::interval(Duration::from_secs(1));
        let mut expiry_tick = tokio::time::interval(Duration::from_secs(1));
        expiry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut core_timer = CoreTimer::default();
        loop {
            let deadline = self.core.poll_timeout();
            let (wait, at_once) = core_timer.wait(now_ms(), deadline);
            let timer = async move {
                if at_once {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(wait).await;
                }
            };
            let flush_at = self.held.due();
            let flush = async move {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                request = self.requests.recv() => match request {
                    None => break,
                    Some(Request::Shutdown(done)) => {
                        self.fail_waiting();
                        self.close_stores().await;
                        let _ = done.send(());
                        break;
                    }
                    Some(Request::Pause(d, done)) => {
                        let _ = done.send(());
                        tokio::time::sleep(d).await;
                    }
                    Some(Request::Command(command, reply)) => {
                        // Commands that are ready together are handled as a
                        // group: their commits leave in one envelope.
                        let mut group = vec![(command, reply)];
                        let mut other = None;
                        while group.len() < MAX_COMMAND_GROUP {
                            match self.requests.try_recv() {
                                Ok(Request::Command(c, r)) => group.push((c, r)),
                                Ok(o) => {
                                    other = Some(o);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        self.on_commands(group);
                        match other {
                            None => {}
                            Some(Request::Shutdown(done)) => {
                                self.drain();
                                self.fail_waiting();
                                self.close_stores().await;
                                let _ = done.send(());
                                break;
                            }
                            Some(Request::Pause(d, done)) => {
                                self.drain();
                                let _ = done.send(());
                                tokio::time::sleep(d).await;
                            }
                            Some(o) => self.on_request(o),
                        }
                    }
                    Some(request) => self.on_request(request),
                },
                Some((id, result)) = self.searches_rx.recv() => self.core.handle_search_done(id, result, now_ms()),
                Some(event) = self.streams.events.recv() => {
                    self.on_stream_event(event, now_ms());
                    // Frames that arrived meanwhile (from other peers, while
                    // this task synced a write, say) are handled before the
                    // drain: their writes go in one synced transaction.
                    for _ in 1..MAX_FRAME_GROUP {
                        let Ok(event) = self.streams.events.try_recv() else {
                            break;
                        };
                        self.on_stream_event(event, now_ms());
                    }
                }
                _ = expiry_tick.tick() => {
                    let now = now_ms();
                    for id in self.streams.expired(now) {
                        self.core.handle_send_failed(id, SendFailure::Timeout, now);
                    }
                    for (id, failure) in std::mem::take(&mut self.failed_sends) {
                        self.core.handle_send_failed(id, failure, now);
                    }
                }
                _ = timer => {
                    core_timer.fired(deadline, at_once);
                    self.core.handle_timeout(now_ms());
                }
                _ = kad_bootstrap.tick() => {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                _ = metrics_tick.tick(), if self.metrics.is_some() => self.refresh_metrics(),
                _ = flush => self.flush_held(),
            }
            self.drain();
            if self.failed {
                self.fail_waiting();
                break;
            }
            let holds = self.pbft_store.as_ref().and_then(|p| p.holds_writes());
            self.held.update(holds, tokio::time::Instant::now());
        }
        self.close_stores().await;
    }

    /// Writes the replica's held-back writes (synced). A failure stops the
    /// node, as a failed replica write does.
    fn flush_held(&mut self) {
        self.held = HeldFlush::default();
        if self.failed {
            return;
        }
        if let Some(store) = self.pbft_store.as_mut()
            && let Err(e) = store.flush_held()
        {
            tracing::error!(error = %e, "cannot persist the replica's state; the node stops");
            self.failed = true;
        }
    }

    /// Makes the replica's held-back writes durable, then ends the audit
    /// writer: what the node stops with is on disk.
    async fn close_stores(&mut self) {
        self.flush_held();
        self.close_audit().await;
    }

    /// Ends the audit writer once it has appended every entry sent to it
    /// (it would otherwise wait out its group's delay, and a runtime that
    /// ends with the node would drop those entries).
    async fn close_audit(&mut self) {
        if let Some((tx, writer)) = self.audit.take() {
            drop(tx);
            let _ = writer.await;
        }
    }

    /// Copies the core's counters and consensus status for the metrics.
    fn refresh_metrics(&self) {
        if let Some(m) = &self.metrics {
            m.update(crate::metrics::Snapshot {
                stats: self.core.stats(),
                consensus: self.core.consensus_status(),
                connected: self.swarm.connected_peers().count(),
                members: self.core.peer_count(),
                replica_log: self.pbft_store.as_ref().and_then(|p| p.log_stats()),
            });
        }
    }

    fn fail_waiting(&mut self) {
        for (_, tx) in self.waiting.drain() {
            drop(tx);
        }
    }

    /// Commands received together, handed to the core as one group.
    fn on_commands(&mut self, group: Vec<(Command, oneshot::Sender<Completion>)>) {
        let mut commands = Vec::with_capacity(group.len());
        for (command, reply) in group {
            let id = CommandId(self.next_command);
            self.next_command += 1;
            self.waiting.insert(id, reply);
            commands.push((id, command));
        }
        self.core.commands(commands, now_ms());
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Command(command, reply) => {
                let id = CommandId(self.next_command);
                self.next_command += 1;
                self.waiting.insert(id, reply);
                self.core.command(id, command, now_ms());
            }
            Request::ListenAddrs(reply) => {
                if self.listen_addrs.is_empty() {
                    self.listen_waiters.push(reply);
                } else {
                    let _ = reply.send(self.listen_addrs.clone());
                }
            }
            Request::Stats(reply) => {
                let _ = reply.send(self.core.stats());
            }
            Request::PeerCount(reply) => {
                let _ = reply.send(self.core.peer_count());
            }
            Request::SharedEntries(reply) => {
                let _ = reply.send(self.core.shared_entries());
            }
            Request::Consensus(reply) => {
                let _ = reply.send(self.core.consensus_status());
            }
            Request::Revoke(id, done) => {
                self.core.revoke_token(id);
                self.drain();
                if !self.failed {
                    let _ = done.send(());
                }
            }
            Request::Partition(peers, block, done) => {
                for peer in peers {
                    if block {
                        self.partitioned.insert(peer);
                        self.swarm.behaviour_mut().blocked.block_peer(peer);
                    } else {
                        self.partitioned.remove(&peer);
                        self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                    }
                }
                let _ = done.send(());
            }
            Request::Pause(..) | Request::Shutdown(_) => {}
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = now_ms();
        if let Some(m) = &self.metrics {
            use libp2p::metrics::Recorder;
            m.libp2p.record(&event);
            match &event {
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.libp2p.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.libp2p.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => m.libp2p.record(e),
                _ => {}
            }
        }
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } if num_established.get() == 1 => {
                let addr = endpoint
                    .is_dialer()
                    .then(|| endpoint.get_remote_address().clone());
                self.core.handle_connected(peer_id, addr, now);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.core.handle_disconnected(peer_id, now);
                for id in self.streams.peer_gone(peer_id) {
                    self.core
                        .handle_send_failed(id, SendFailure::ConnectionClosed, now);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if !self.swarm.is_connected(&peer) => {
                self.core.handle_dial_failed(peer, error.to_string(), now);
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                }
                self.core
                    .handle_listen_addrs(self.listen_addrs.clone(), now);
                for w in self.listen_waiters.drain(..) {
                    let _ = w.send(self.listen_addrs.clone());
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.core
                    .handle_listen_addrs(self.listen_addrs.clone(), now);
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event, now),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent, now: u64) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().take(8).collect();
                for a in &addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, a.clone());
                }
                self.core.handle_discovered(peer_id, addrs, now);
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) => {
                self.core.handle_discovered(peer, addresses.into_vec(), now);
            }
            #[cfg(feature = "mdns")]
            BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.core.handle_discovered(peer, vec![addr], now);
                }
            }
            BehaviourEvent::Handshake(e) => self.on_rr(Protocol::Handshake, e, now),
            BehaviourEvent::Query(e) => self.on_rr(Protocol::Query, e, now),
            BehaviourEvent::Onion(e) => self.on_rr(Protocol::Onion, e, now),
            BehaviourEvent::Sync(e) => self.on_rr(Protocol::Sync, e, now),
            _ => {}
        }
    }

    fn on_rr(
        &mut self,
        protocol: Protocol,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
        now: u64,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => {
                    let problem = match request.as_slice() {
                        codec::OVERSIZED => Some(InboundProblem::Oversized),
                        codec::MALFORMED => Some(InboundProblem::Malformed),
                        _ => None,
                    };
                    if let Some(problem) = problem {
                        tracing::warn!(%peer, protocol = protocol.as_str(), ?problem, "bad inbound frame");
                        drop(channel);
                        self.core.handle_inbound_problem(peer, problem, now);
                        return;
                    }
                    let id = InboundId(self.next_inbound);
                    self.next_inbound += 1;
                    self.channels.insert(id, (protocol, channel));
                    self.inbound_ids.insert((protocol, request_id), id);
                    self.core.handle_request(peer, protocol, id, request, now);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(id) = self.outbound_ids.remove(&(protocol, request_id)) {
                        self.core.handle_response(id, response, now);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(id) = self.outbound_ids.remove(&(protocol, request_id)) {
                    let failure = match error {
                        request_response::OutboundFailure::Timeout => SendFailure::Timeout,
                        request_response::OutboundFailure::DialFailure
                        | request_response::OutboundFailure::ConnectionClosed => {
                            SendFailure::ConnectionClosed
                        }
                        request_response::OutboundFailure::UnsupportedProtocols => {
                            SendFailure::UnsupportedProtocol
                        }
                        request_response::OutboundFailure::Io(e) => SendFailure::Io(e.to_string()),
                    };
                    self.core.handle_send_failed(id, failure, now);
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(id) = self.inbound_ids.remove(&(protocol, request_id)) {
                    self.channels.remove(&id);
                }
                tracing::debug!(%peer, protocol = protocol.as_str(), %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.inbound_ids.remove(&(protocol, request_id));
            }
        }
    }

    /// What the long-lived streams' tasks report.
    fn on_stream_event(&mut self, event: stream::StreamEvent, now: u64) {
        use stream::StreamEvent;
        match event {
            // A frame still queued when its peer's last connection closed:
            // the core has let go of the peer (its answer would open a new
            // connection, for a session the peer may no longer hold).
            StreamEvent::Frame { peer, .. } if !self.swarm.is_connected(&peer) => {}
            StreamEvent::Frame {
                peer,
                kind,
                tag,
                payload,
            } => match kind {
                wire::StreamFrameKind::Request => {
                    let id = InboundId(self.next_inbound);
                    self.next_inbound += 1;
                    self.streams.register_inbound(id, peer, tag);
                    self.core
                        .handle_request(peer, Protocol::Pbft, id, payload, now);
                }
                wire::StreamFrameKind::Response => {
                    if let Some(id) = self.streams.answered(peer, tag) {
                        self.core.handle_response(id, payload, now);
                    }
                }
                wire::StreamFrameKind::NoAnswer => {
                    if let Some(id) = self.streams.answered(peer, tag) {
                        let failure = SendFailure::Io("closed without an answer".into());
                        self.core.handle_send_failed(id, failure, now);
                    }
                }
            },
            StreamEvent::Problem { peer, problem } => {
                tracing::warn!(%peer, protocol = Protocol::Pbft.as_str(), ?problem, "bad inbound frame");
                self.core.handle_inbound_problem(peer, problem, now);
            }
            StreamEvent::WriterFailed {
                peer,
                generation,
                failure,
            } => {
                for id in self.streams.writer_failed(peer, generation) {
                    self.core.handle_send_failed(id, failure.clone(), now);
                }
            }
            StreamEvent::AnswerTooLarge { peer, tag } => {
                if let Some(id) = self.streams.answered(peer, tag) {
                    let failure = SendFailure::Io("an answer over the frame limit".into());
                    self.core.handle_send_failed(id, failure, now);
                } else {
                    // An answer to nothing asked: an oversized frame, as a
                    // request over the limit is.
                    self.core
                        .handle_inbound_problem(peer, InboundProblem::Oversized, now);
                }
            }
            StreamEvent::WriterClosed { peer, generation } => {
                self.streams.writer_closed(peer, generation);
            }
            StreamEvent::ReaderEnded { peer, below } => {
                for id in self.streams.reader_ended(peer, below) {
                    self.core
                        .handle_send_failed(id, SendFailure::ConnectionClosed, now);
                }
            }
        }
    }

    /// The request-response behaviour of a protocol; none for a streamed one.
    fn behaviour_for(
        &mut self,
        protocol: Protocol,
    ) -> Option<&mut request_response::Behaviour<FrameCodec>> {
        let b = self.swarm.behaviour_mut();
        match protocol {
            Protocol::Handshake => Some(&mut b.handshake),
            Protocol::Query => Some(&mut b.query),
            Protocol::Onion => Some(&mut b.onion),
            Protocol::Sync => Some(&mut b.sync),
            Protocol::Pbft => None,
        }
    }

    /// Carries out every action the core has, each replica write synced
    /// before what came after it ([`drain::drain`]).
    fn drain(&mut self) {
        drain::drain(self);
    }

    /// Writes the replica's state, synced; a failure stops the node.
    ///
    /// On the driver's own thread: an append to the replica log and its
    /// `fdatasync` take a few tenths of a millisecond, less than handing this
    /// worker's tasks to another thread for it ([`blocking`]) costs in wake-ups
    /// (DECISIONS.md, "Synced appends on the driver's thread"). A group that
    /// makes a checkpoint stable may rewrite the whole log (store.md §3.3):
    /// that one is handed off.
    fn persist(&mut self, writes: &mut Vec<fed_pbft::Persist>) {
        if writes.is_empty() || self.failed {
            return;
        }
        let may_rewrite = writes
            .iter()
            .any(|w| matches!(w, fed_pbft::Persist::Stable(_)));
        if let Some(store) = self.pbft_store.as_mut()
            && let Err(e) = if may_rewrite {
                blocking(|| store.persist_all(writes))
            } else {
                store.persist_all(writes)
            }
        {
            tracing::error!(error = %e, "cannot persist the replica's state; the node stops");
            self.failed = true;
        }
        writes.clear();
    }

    /// Carries out one action (never a replica write: [`drain`](Self::drain)
    /// coalesces those).
    fn carry_out(&mut self, action: Action) {
        if self.failed {
            return;
        }
        match action {
            Action::Persist(mut writes) => self.persist(&mut writes),
            Action::EnterEpoch { epoch, link } => {
                // Synced before the new epoch's writes and messages.
                if let Some(store) = self.pbft_store.as_mut()
                    && let Err(e) = blocking(|| store.enter_epoch(epoch, &link))
                {
                    tracing::error!(error = %e, "cannot store the new configuration epoch; the node stops");
                    self.failed = true;
                }
            }
            Action::Store(writes) => {
                // Synced before the actions after it (the write's
                // completion, the messages that tell peers).
                if let Some(store) = &self.state_store
                    && let Err(e) = blocking(|| store.write(&writes))
                {
                    tracing::error!(error = %e, "cannot store the node's state; the node stops");
                    self.failed = true;
                }
            }
            Action::Send {
                peer,
                protocol,
                id,
                payload,
            } => {
                if let Some(b) = self.behaviour_for(protocol) {
                    let rid = b.send_request(&peer, payload);
                    self.outbound_ids.insert((protocol, rid), id);
                } else if let Err(failure) = self.streams.send(peer, id, &payload, now_ms()) {
                    self.failed_sends.push((id, failure));
                }
            }
            Action::Respond { id, payload } => {
                if self.streams.respond(id, &payload) {
                    // Answered on the requester's stream.
                } else if let Some((protocol, channel)) = self.channels.remove(&id) {
                    if payload.is_empty() {
                        // Dropping the channel closes the stream without an answer.
                        drop(channel);
                    } else {
                        if let Some(b) = self.behaviour_for(protocol) {
                            let _ = b.send_response(channel, payload);
                        }
                    }
                }
            }
            Action::Dial { peer, addrs } => {
                let opts = DialOpts::peer_id(peer).addresses(addrs).build();
                match self.swarm.dial(opts) {
                    // Already connected or dialling: the core hears of that
                    // connection (or of that dial failing) anyway.
                    Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
                    Err(e) => self.core.handle_dial_failed(peer, e.to_string(), now_ms()),
                }
            }
            Action::Ban { peer } => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
            Action::Unban { peer } => {
                if !self.partitioned.contains(&peer) {
                    self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                }
            }
            Action::Search { id, query } => {
                // A search is CPU work (an exact scan for the memory
                // substrate): it runs on the blocking pool, at most
                // MAX_SEARCHES at once, so it never stalls this task.
                let substrate = self.substrate.clone();
                let tx = self.searches_tx.clone();
                let permits = self.search_permits.clone();
                let runtime = tokio::runtime::Handle::current();
                tokio::spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return;
                    };
                    let result = tokio::task::spawn_blocking(move || {
                        runtime.block_on(substrate.search(&query))
                    })
                    .await
                    .unwrap_or_else(|e| Err(SubstrateError::Backend(format!("search task: {e}"))));
                    let _ = tx.send((id, result)).await;
                });
            }
            Action::Complete {
                command,
                completion,
            } => {
                if let Some(tx) = self.waiting.remove(&command) {
                    let _ = tx.send(completion);
                }
            }
            Action::Event(event) => {
                self.audit(&event);
                if let MeshEvent::Committed(batch) = &event {
                    let _ = self.apply_tx.send(batch.clone());
                }
                let _ = self.events.send(event);
            }
        }
    }

    /// Records the events the audit log keeps (joins, tokens issued,
    /// revocations, commits, view changes, membership changes, cut-offs),
    /// through the writer task, in order.
    fn audit(&mut self, event: &MeshEvent) {
        use crate::store::AuditEvent;
        let Some((audit, _)) = &self.audit else {
            return;
        };
        let entry = match event {
            MeshEvent::PeerJoined { node, .. } => AuditEvent::Joined { peer: node.0 },
            MeshEvent::PeerCutOff { node, reason, .. } => AuditEvent::CutOff {
                peer: node.map_or([0; 32], |n| n.0),
                reason: format!("{reason:?}"),
            },
            MeshEvent::Committed(batch) => {
                if self.audited_replays.remove(&(batch.seq, batch.digest)) {
                    return;
                }
                AuditEvent::EpochCommitted {
                    epoch: batch.epoch,
                    seq: batch.seq,
                    digest: batch.digest,
                }
            }
            MeshEvent::ViewChanged { view } => AuditEvent::ViewChanged { view: *view },
            MeshEvent::EpochChanged { membership, .. } => {
                // Sequence numbers start again: nothing after is a replay.
                self.audited_replays.clear();
                AuditEvent::MembershipChanged {
                    membership: *membership,
                }
            }
            MeshEvent::Revoked(crate::core::commit::Revocation::Member(node)) => {
                AuditEvent::Revoked { peer: node.0 }
            }
            MeshEvent::Revoked(crate::core::commit::Revocation::Token(token)) => {
                AuditEvent::TokenRevoked { token: *token }
            }
            MeshEvent::TokenIssued {
                node, expires_at, ..
            } => AuditEvent::TokenIssued {
                peer: node.0,
                expires_at: *expires_at,
            },
            _ => return,
        };
        let _ = audit.send((now_ms(), entry));
    }

    pub(crate) fn local_peer(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }
}

/// Runs `f`, a synced write of the database (a redb transaction: several page
/// writes and two syncs), so that the runtime's other tasks go on meanwhile:
/// on a multi-threaded runtime this worker hands its queued tasks to another
/// thread while it waits for the disk. A single-threaded runtime cannot do
/// that; there the write blocks it. (The replica log's appends, far shorter,
/// run on the driver's thread but for those that may rewrite it:
/// [`Driver::persist`].)
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
