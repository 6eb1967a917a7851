//! The public handle: [`FederatedMesh`], its configuration and its builder.

use std::{sync::Arc, time::Duration};

use fed_crypto::{Identity, NodeId};
use fed_handshake::{
    AdmissionPolicy, AdmissionProof, Capabilities, CapabilitySet, FederationId, FederationToken,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    core::{
        Command, Completion, Core, CoreConfig, Limits, Timing,
        commit::{CommitReceipt, ConsensusConfig},
    },
    driver::{self, Driver, Request, TransportConfig},
    error::{Error, Result},
    store::{PersistentSubstrate, Store},
    substrate::{MemorySubstrate, Pattern, PatternQuery, Substrate},
    types::{FederationScope, MeshEvent, PeerAddress, PeerInfo, QueryOptions, QueryOutcome, Stats},
};

/// How far ahead of this node's clock a stored pattern's timestamp may be.
const MAX_PATTERN_SKEW_MS: u64 = 10_000;

/// Everything a node is configured with.
#[derive(Clone)]
#[non_exhaustive]
pub struct MeshConfig {
    /// The node's identity. Its Ed25519 key is also the libp2p identity, so the
    /// node's `PeerId` and `NodeId` name the same key.
    pub identity: Arc<Identity>,
    /// The federation to take part in.
    pub federation: FederationId,
    /// Addresses to listen on. Default: TCP and QUIC on 127.0.0.1, ports chosen by the OS.
    pub listen: Vec<Multiaddr>,
    /// Members to connect to at start (and to keep reconnecting to).
    pub bootstrap: Vec<PeerAddress>,
    /// Who may join through this node.
    pub admission: Arc<dyn AdmissionPolicy>,
    /// What this node presents when it joins through others (an invitation, or none).
    pub admission_proof: AdmissionProof,
    /// Capabilities this node asks for, and grants at most, with their limits.
    /// Default: all capabilities, 1 MiB messages, 100 requests per second, 64 in flight.
    pub capabilities: Capabilities,
    /// Whether this node relays onion packets for others. Default true.
    pub relay: bool,
    /// Bounds of the node's state.
    pub limits: Limits,
    /// Intervals and lifetimes.
    pub timing: Timing,
    /// The libp2p layer.
    pub transport: TransportConfig,
    /// Where the node keeps its durable state (`node.redb` and the replica
    /// log `node.rlog`, docs/protocol/store.md): its replica's votes, its
    /// patterns (unless the builder is given another substrate), its maps,
    /// revocations and audit log. Created (mode 0700) if missing. Default:
    /// none, everything in memory.
    pub data_dir: Option<std::path::PathBuf>,
    /// The federation's consensus, from its genesis ([`with_genesis`](Self::with_genesis)):
    /// with it, the node commits updates with [`FederatedMesh::byzantine_commit`],
    /// and votes if the genesis lists it. Default: none.
    pub consensus: Option<ConsensusConfig>,
}

impl MeshConfig {
    /// Takes part in the consensus of `genesis`: sets the federation id to the
    /// genesis's and the consensus from it (defaults: 16 client slots, 30 s
    /// commit timeout; fields of [`consensus`](Self::consensus) to change them).
    ///
    /// Session messages must hold a whole batch: the capabilities' message size
    /// is raised to the genesis's `max_batch_bytes` plus 256 KiB (at most 16 MiB),
    /// and the frame limit with it.
    pub fn with_genesis(mut self, genesis: &crate::genesis::Genesis) -> Result<Self> {
        self.federation = genesis.federation;
        let consensus = ConsensusConfig::from_genesis(genesis)?;
        let need = (consensus.pbft.max_batch_bytes + (256 << 10)).min(16 << 20) as u32;
        let limits = &mut self.capabilities.limits;
        limits.max_message_bytes = limits.max_message_bytes.max(need);
        self.limits.max_frame_bytes = self
            .limits
            .max_frame_bytes
            .max(limits.max_message_bytes as usize + 4096);
        self.consensus = Some(consensus);
        Ok(self)
    }

    /// A configuration for `identity` in `federation`, admitting members by
    /// `admission`, with defaults for the rest.
    pub fn new(
        identity: Arc<Identity>,
        federation: FederationId,
        admission: Arc<dyn AdmissionPolicy>,
    ) -> Self {
        let capabilities = Capabilities {
            set: CapabilitySet::all(),
            ..Capabilities::default()
        };
        Self {
            identity,
            federation,
            listen: vec![
                "/ip4/127.0.0.1/tcp/0"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            admission,
            admission_proof: AdmissionProof::None,
            capabilities,
            relay: true,
            limits: Limits::default(),
            timing: Timing::default(),
            transport: TransportConfig::default(),
            data_dir: None,
            consensus: None,
        }
    }
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("node", &self.identity.node_id())
            .field("federation", &self.federation)
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("capabilities", &self.capabilities)
            .field("relay", &self.relay)
            .field("limits", &self.limits)
            .field("timing", &self.timing)
            .field("transport", &self.transport)
            .field("data_dir", &self.data_dir)
            .field("consensus", &self.consensus)
            .finish_non_exhaustive()
    }
}

/// Builds and starts a node: [`FederatedMesh::builder`].
#[must_use]
pub struct MeshBuilder {
    config: MeshConfig,
    substrate: Option<Arc<dyn Substrate>>,
    metrics: Option<crate::metrics::NodeMetrics>,
}

impl MeshBuilder {
    /// Registers the node's Prometheus metrics into `registry`: libp2p's
    /// (prefix `libp2p_`: connections, identify, ping, Kademlia) and the
    /// federation's (prefix `exo_fed_`: handshakes, queries and their latency,
    /// onion packets, refusals and cut-offs by reason, commits, view changes,
    /// checkpoint height). Encode the registry with
    /// [`prometheus_client::encoding::text::encode`] to serve it; values are at
    /// most a second old.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fed_mesh::{FederatedMesh, MeshConfig, crypto::Identity, handshake::{FederationId, Open}};
    /// use fed_mesh::prometheus_client::registry::Registry;
    ///
    /// let identity = Arc::new(Identity::generate(&mut rand::rng(), false));
    /// let mut registry = Registry::default();
    /// let builder = FederatedMesh::builder(MeshConfig::new(identity, FederationId([7; 32]), Arc::new(Open)))
    ///     .metrics(&mut registry);
    /// // builder.start().await? runs the node; scrape `registry` from then on.
    /// # drop(builder);
    /// ```
    pub fn metrics(mut self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.metrics = Some(crate::metrics::NodeMetrics::register(registry));
        self
    }

    /// The substrate the node searches and stores in (default: an empty
    /// [`MemorySubstrate`]).
    pub fn substrate(mut self, substrate: impl Substrate) -> Self {
        self.substrate = Some(Arc::new(substrate));
        self
    }

    /// A shared substrate.
    pub fn shared_substrate(mut self, substrate: Arc<dyn Substrate>) -> Self {
        self.substrate = Some(substrate);
        self
    }

    /// Starts the node on the current tokio runtime: binds the listen
    /// addresses, then runs the node in a task of its own until
    /// [`FederatedMesh::shutdown`] or until every handle is dropped.
    pub async fn start(self) -> Result<FederatedMesh> {
        let config = self.config;
        let needed = config.capabilities.limits.max_message_bytes as usize + 4096;
        if config.limits.max_frame_bytes < needed.min((16 << 20) + 4096) {
            return Err(Error::Config(format!(
                "limits.max_frame_bytes ({}) must be at least capabilities.limits.max_message_bytes + 4096 ({needed})",
                config.limits.max_frame_bytes
            )));
        }
        let store = match &config.data_dir {
            Some(dir) => Some(open_data_dir(dir, &config.identity)?),
            None => None,
        };
        let mut consensus = config.consensus.clone();
        let mut pbft_store = None;
        // The configuration epoch the node resumes in (0 without a store).
        let mut epoch = 0;
        if let Some(c) = consensus.as_mut() {
            let message = config.capabilities.limits.max_message_bytes as usize;
            if c.pbft.max_batch_bytes + (128 << 10) > message {
                return Err(Error::Config(format!(
                    "capabilities.limits.max_message_bytes ({message}) cannot carry a batch of the genesis's max_batch_bytes ({}) with its framing: raise it to at least {}",
                    c.pbft.max_batch_bytes,
                    c.pbft.max_batch_bytes + (128 << 10)
                )));
            }
            let voting = c.membership.index_of(&config.identity.node_id()).is_some();
            if voting && store.is_none() && !c.volatile_replica {
                return Err(Error::Config(
                    "a voting member needs a data directory (data_dir): a replica that forgets its votes at a restart can contradict them".into(),
                ));
            }
            if c.federation != config.federation {
                return Err(Error::Config(
                    "the consensus (genesis) is for another federation than `federation`".into(),
                ));
            }
            if let Some(store) = &store {
                let mut pbft = store.pbft();
                pbft.bind_membership(c.membership.id())?;
                // The epochs entered, and the replica state of the last one
                // (empty unless this node votes in it); checked by the core.
                c.epochs = pbft
                    .load_epochs()?
                    .iter()
                    .map(|link| {
                        crate::wire::decode(link, "epoch link").map_err(|e| {
                            Error::Store(crate::store::StoreError::Corrupted {
                                path: store.path().to_path_buf(),
                                detail: format!("an epoch link does not decode: {e}"),
                            })
                        })
                    })
                    .collect::<Result<_>>()?;
                // Links that do not check from this genesis: not a state
                // this node can resume, and not one to overwrite.
                epoch = crate::core::epoch::Epoch::genesis(c.membership.clone(), Vec::new(), 0, 0)
                    .follow_all(&c.epochs)
                    .map_err(|e| {
                        Error::Store(crate::store::StoreError::Corrupted {
                            path: store.path().to_path_buf(),
                            detail: format!(
                                "the stored configuration epochs do not check against the genesis: {e}"
                            ),
                        })
                    })?
                    .number;
                c.recovered = Some(Arc::new(pbft.load_state()?));
                c.durable = true;
                pbft_store = Some(pbft);
            }
        }
        let substrate: Arc<dyn Substrate> = match (self.substrate, &store) {
            (Some(s), _) => s,
            (None, Some(store)) => Arc::new(PersistentSubstrate::open(store)?),
            (None, None) => Arc::new(MemorySubstrate::new()),
        };
        let secret = config.identity.ed25519_secret_bytes();
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(*secret)
            .map_err(|e| Error::Config(format!("identity: {e}")))?;
        drop(secret);
        let mut swarm =
            driver::build_swarm(keypair, &config.transport, config.limits.max_frame_bytes)?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| Error::Transport(format!("listen on {addr}: {e}")))?;
        }
        let mut core_config = CoreConfig::new(
            config.identity.clone(),
            config.federation,
            config.admission.clone(),
        );
        core_config.admission_proof = config.admission_proof.clone();
        core_config.capabilities = config.capabilities;
        core_config.relay = config.relay;
        core_config.bootstrap = config.bootstrap.clone();
        core_config.limits = config.limits.clone();
        core_config.timing = config.timing.clone();
        core_config.consensus = consensus;
        if let Some(store) = &store {
            core_config.state = Some(store.state().load()?);
        }
        // The batches the recovered replica may execute again: those it
        // recorded after its last checkpoint, and those whose records a crash
        // lost (it fetches them from its peers). Those whose commits the
        // audit log holds already are not logged twice.
        let replays = core_config.consensus.as_ref().and_then(|c| {
            c.recovered
                .as_deref()
                .map(|d| (epoch, replayed_above(d), c.pbft.window))
        });
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Config(format!("no OS randomness: {e}")))?;
        let core = Core::new(core_config, seed, driver::now_ms())?;
        let node_id = core.node_id();
        let (tx, rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(1024);
        let audit = match &store {
            Some(s) => {
                let log = s.audit();
                // `Store::open` checked every record already (a damaged one
                // stops the start, naming the file); a read that fails now
                // costs duplicate entries, not the start.
                let logged = match replays {
                    None => Default::default(),
                    Some((epoch, above, window)) => log.logged_commits(epoch, above, window).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "cannot read the audit log's last commits; the batches executed again at start are logged again");
                        Default::default()
                    }),
                };
                Some((log, config.identity.clone(), logged))
            }
            None => None,
        };
        let driver = Driver::new(
            swarm,
            core,
            substrate.clone(),
            rx,
            events.clone(),
            &config.bootstrap,
            audit,
            pbft_store,
            store.as_ref().map(Store::state),
            self.metrics,
            &config.transport,
            config.limits.max_frame_bytes,
        )?;
        let peer_id = driver.local_peer();
        tokio::spawn(driver.run());
        Ok(FederatedMesh {
            inner: Arc::new(Inner {
                tx,
                peer_id,
                node_id,
                events,
                substrate,
                store,
            }),
        })
    }
}

/// Opens (creating it, mode 0700, if missing) the data directory's store.
fn open_data_dir(dir: &std::path::Path, identity: &Identity) -> Result<Store> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("data directory {}: {e}", dir.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::Config(format!("data directory {}: {e}", dir.display())))?;
        }
    }
    Ok(Store::open(dir.join("node.redb"), &identity.node_id())?)
}

struct Inner {
    tx: mpsc::Sender<Request>,
    peer_id: PeerId,
    node_id: NodeId,
    events: broadcast::Sender<MeshEvent>,
    substrate: Arc<dyn Substrate>,
    store: Option<Store>,
}

/// A running federation node: a cheap, cloneable handle to the task that owns
/// the network and the node's state.
///
/// ```no_run
/// # async fn example() -> fed_mesh::Result<()> {
/// use std::sync::Arc;
/// use fed_mesh::{FederatedMesh, FederationScope, MeshConfig, QueryOptions};
/// use fed_mesh::crypto::Identity;
/// use fed_mesh::handshake::{FederationId, Open};
/// use fed_mesh::substrate::{MemorySubstrate, PatternQuery};
///
/// let identity = Arc::new(Identity::generate(&mut rand::rng(), false));
/// let config = MeshConfig::new(identity, FederationId([7; 32]), Arc::new(Open));
/// let mesh = FederatedMesh::builder(config).substrate(MemorySubstrate::new()).start().await?;
/// let peer = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...#9f86...".parse()?;
/// let token = mesh.join_federation(&peer).await?;
/// let outcome = mesh
///     .federated_query(PatternQuery::new(vec![0.1, 0.7, 0.2], 10), FederationScope::Global { max_hops: 3 }, QueryOptions::default())
///     .await?;
/// for hit in &outcome.results {
///     println!("{:?} {:.3} from {:?}", hit.pattern, hit.score, hit.provenance);
/// }
/// mesh.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FederatedMesh {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FederatedMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederatedMesh")
            .field("peer_id", &self.inner.peer_id)
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

impl FederatedMesh {
    /// A builder for a node with `config`.
    pub fn builder(config: MeshConfig) -> MeshBuilder {
        MeshBuilder {
            config,
            substrate: None,
            metrics: None,
        }
    }

    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// This node's federation node id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The node's store, when it has a data directory (its audit log:
    /// `store().audit().verify(identity.public())`).
    pub fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    /// The node's substrate.
    pub fn substrate(&self) -> &Arc<dyn Substrate> {
        &self.inner.substrate
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(make(tx))
            .await
            .map_err(|_| Error::ShutDown)?;
        rx.await.map_err(|_| Error::ShutDown)
    }

    async fn command(&self, command: Command) -> Result<Completion> {
        self.ask(|tx| Request::Command(command, tx)).await
    }

    /// The addresses the node listens on, waiting until at least one is bound.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        self.ask(Request::ListenAddrs).await
    }

    /// A [`PeerAddress`] others can join this node by: its first listen address
    /// with `/p2p/<peer id>`, and its node id.
    pub async fn address(&self) -> Result<PeerAddress> {
        let addr = self
            .listen_addrs()
            .await?
            .into_iter()
            .next()
            .ok_or(Error::Transport("not listening".into()))?;
        let addr = addr
            .with_p2p(self.peer_id())
            .map_err(|a| Error::BadAddress {
                addr: a.to_string(),
                reason: "has another peer id".into(),
            })?;
        PeerAddress::new(addr, self.node_id())
    }

    /// Joins the federation through the member at `addr`: connects, runs the
    /// federation handshake (which checks that the member is `addr.node`) and
    /// returns the token the member issued. The member also joins through this
    /// node on the same connection, under this node's admission policy.
    pub async fn join_federation(&self, addr: &PeerAddress) -> Result<FederationToken> {
        match self.command(Command::Join(addr.clone())).await? {
            Completion::Joined(result) => result,
            _ => Err(Error::ShutDown),
        }
    }

    /// Runs a federated query over `scope` and reconciles the answers into one
    /// top-k with provenance, reporting every member that timed out, refused or
    /// sent an answer that did not verify.
    pub async fn federated_query(
        &self,
        query: PatternQuery,
        scope: FederationScope,
        options: QueryOptions,
    ) -> Result<QueryOutcome> {
        match self
            .command(Command::Query {
                query,
                scope,
                options,
            })
            .await?
        {
            Completion::Queried(result) => result,
            _ => Err(Error::ShutDown),
        }
    }

    /// Commits `update` through the federation's consensus (fed-pbft among the
    /// genesis's voting members) and returns its [`CommitReceipt`]: where it
    /// committed, with a commit proof this node checked and anyone can check
    /// offline ([`CommitReceipt::verify`] with the genesis's membership).
    /// Every voting member executes it in the same order; subscribers see it
    /// as [`MeshEvent::Committed`], and each node applies it to its substrate.
    ///
    /// Fails with [`Error::Consensus`] without a genesis, or for an update over
    /// the federation's `max_operation_len`; with [`Error::Timeout`] when it
    /// has not committed within the commit timeout (it may still commit later).
    pub async fn byzantine_commit(
        &self,
        update: crate::substrate::StateUpdate,
    ) -> Result<CommitReceipt> {
        self.commit_operation(crate::core::commit::Operation::Update(update))
            .await
    }

    /// Commits a revocation: once it commits, every member refuses requests
    /// under the token, or every request and handshake of the member (voting
    /// members execute it; each tells the members that do not vote, with the
    /// batch's proof). Only a voting member may revoke: from another node the
    /// operation commits as a no-op and this fails with [`Error::Consensus`].
    pub async fn commit_revocation(
        &self,
        revocation: crate::core::commit::Revocation,
    ) -> Result<CommitReceipt> {
        self.commit_operation(revocation.into()).await
    }

    /// Proposes a change of the voting membership: adding a member (with the
    /// addresses the voters will dial) or removing a voting member. The
    /// proposal is committed (this returns its receipt); the change itself
    /// takes effect once a quorum of the epoch's voters proposed the same
    /// change (byte for byte: give every voter the same addresses in the same
    /// order), at the first checkpoint at or after that, where a new
    /// configuration epoch begins (mesh.md §9): from then on the new voters
    /// order commits, and proofs verify against the new membership only
    /// ([`CommitReceipt::verify`] follows the chain of epochs from the
    /// genesis). Commits submitted meanwhile wait for the new epoch and are
    /// submitted again there. Only a voting member may propose; the result
    /// must be a valid membership (no one twice, no revoked member added, not
    /// the last voter removed, no more voters than the genesis's parameters
    /// allow), else the operation commits as a no-op and this fails with
    /// [`Error::Consensus`]. A voter approves at most 4 pending changes; a
    /// fifth withdraws its oldest.
    pub async fn commit_membership_change(
        &self,
        change: crate::core::commit::MembershipChange,
    ) -> Result<CommitReceipt> {
        self.commit_operation(change.into()).await
    }

    async fn commit_operation(&self, op: crate::core::commit::Operation) -> Result<CommitReceipt> {
        match self.command(Command::Commit(op)).await? {
            Completion::Committed(r) => r.map(|b| *b),
            _ => Err(Error::ShutDown),
        }
    }

    /// Where this node stands in the consensus (its view, ledger, checkpoint),
    /// or `None` without a genesis.
    pub async fn consensus_status(&self) -> Result<Option<crate::types::ConsensusStatus>> {
        self.ask(Request::Consensus).await
    }

    /// Members with an established session in either direction.
    pub async fn peer_count(&self) -> Result<usize> {
        self.ask(Request::PeerCount).await
    }

    /// The peers as the node sees them.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        match self.command(Command::Peers).await? {
            Completion::Peers(p) => Ok(p),
            _ => Err(Error::ShutDown),
        }
    }

    /// Writes `value` under `key` in the federation's shared map (last writer wins).
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<()> {
        match self
            .command(Command::Put {
                key: key.into(),
                value: value.into(),
            })
            .await?
        {
            Completion::Written(r) => r,
            _ => Err(Error::ShutDown),
        }
    }

    /// Reads `key` from the shared map as this node holds it now.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        match self.command(Command::Get { key: key.into() }).await? {
            Completion::Value(v) => Ok(v),
            _ => Err(Error::ShutDown),
        }
    }

    /// Removes `key` from the shared map.
    pub async fn remove(&self, key: impl Into<Vec<u8>>) -> Result<()> {
        match self.command(Command::Remove { key: key.into() }).await? {
            Completion::Written(r) => r,
            _ => Err(Error::ShutDown),
        }
    }

    /// Every live entry of the shared map, in key order.
    pub async fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.ask(Request::SharedEntries).await
    }

    /// Stores a pattern in this node's substrate. Its timestamp may not be more
    /// than 10 s ahead of this node's clock (peers would reject its answers).
    pub async fn store_pattern(&self, pattern: Pattern) -> Result<bool> {
        if pattern.timestamp_ms > driver::now_ms().saturating_add(MAX_PATTERN_SKEW_MS) {
            return Err(Error::Substrate(
                crate::substrate::SubstrateError::InvalidQuery(
                    "the pattern's timestamp is more than 10 s in the future".into(),
                ),
            ));
        }
        Ok(self.inner.substrate.store(pattern).await?)
    }

    /// Subscribes to the node's events (peers joining and leaving, queries
    /// served, syncs, peers cut off). A slow subscriber loses the oldest events.
    pub fn events(&self) -> broadcast::Receiver<MeshEvent> {
        self.inner.events.subscribe()
    }

    /// The node's counters.
    pub async fn stats(&self) -> Result<Stats> {
        self.ask(Request::Stats).await
    }

    /// Refuses, from now on, requests under the token with this id (this
    /// node only; [`commit_revocation`](Self::commit_revocation) revokes it
    /// everywhere). With a data directory the revocation is on disk when this
    /// returns.
    pub async fn revoke_token(&self, token_id: [u8; 32]) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Request::Revoke(token_id, tx))
            .await
            .map_err(|_| Error::ShutDown)?;
        rx.await.map_err(|_| Error::ShutDown)
    }

    /// Stops the node: pending calls fail with [`Error::ShutDown`], connections close.
    pub async fn shutdown(&self) -> Result<()> {
        self.ask(Request::Shutdown).await
    }

    /// Test hook: a partition at the transport. The node closes its
    /// connections to `peers` and refuses new ones until
    /// [`debug_heal`](Self::debug_heal); the peers see the connections close.
    #[doc(hidden)]
    pub async fn debug_partition(&self, peers: Vec<PeerId>) -> Result<()> {
        self.ask(|tx| Request::Partition(peers, true, tx)).await
    }

    /// Test hook: lifts [`debug_partition`](Self::debug_partition) for `peers`.
    #[doc(hidden)]
    pub async fn debug_heal(&self, peers: Vec<PeerId>) -> Result<()> {
        self.ask(|tx| Request::Partition(peers, false, tx)).await
    }

    /// Test hook: the node stops processing anything for `duration`, as a hung
    /// process would (its connections stay open, nothing is answered).
    #[doc(hidden)]
    pub async fn debug_pause(&self, duration: Duration) -> Result<()> {
        self.ask(|tx| Request::Pause(duration, tx)).await
    }
}

/// The sequence number at and below which a replica recovered from `d`
/// executes nothing again: its stable checkpoint, or its newest own checkpoint
/// (whose state it installs) if higher. What it recorded above is executed
/// again as it starts; what it lost above (held-back `Committed` writes,
/// pbft.md §5) is fetched and executed again.
fn replayed_above(d: &fed_pbft::DurableState) -> u64 {
    let stable = d.stable.as_ref().map_or(0, |c| c.seq);
    let own = d.checkpoints.keys().next_back().copied().unwrap_or(0);
    stable.max(own)
}

#[cfg(test)]
mod replay_tests {
    use std::sync::Arc;

    use fed_pbft::{CheckpointCert, DurableState};

    /// Records at or below the stable checkpoint, or at or below the newest
    /// own checkpoint, are not executed again: their audit entries are not
    /// looked for (if lost, they stay lost).
    #[test]
    fn replays_start_above_both_checkpoints() {
        let mut d = DurableState::default();
        assert_eq!(super::replayed_above(&d), 0);
        d.stable = Some(CheckpointCert {
            seq: 4,
            state: [0; 32],
            signatures: Vec::new(),
        });
        assert_eq!(super::replayed_above(&d), 4);
        d.checkpoints.insert(16, ([0; 32], Arc::from(&[][..])));
        d.checkpoints.insert(8, ([0; 32], Arc::from(&[][..])));
        assert_eq!(super::replayed_above(&d), 16);
        d.stable.as_mut().unwrap().seq = 24;
        assert_eq!(super::replayed_above(&d), 24);
    }
}
