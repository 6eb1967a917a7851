//! What a running node shows of itself: the state `fedmesh status` prints, the
//! status page at `/` and `/status` serve, and the Prometheus registry
//! `/metrics` encodes.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Instant,
};

use fed_mesh::{
    FederatedMesh, MeshEvent, genesis::Genesis, prometheus_client::registry::Registry,
    store::AuditEvent,
};
use serde::{Deserialize, Serialize};

/// Committed batches the node remembers for its status.
const RECENT_COMMITS: usize = 20;
/// Audit log entries shown.
const AUDIT_TAIL: usize = 20;

/// The node's state, as `fedmesh status --json` prints it and `/status` serves.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) node_id: String,
    pub(crate) peer_id: String,
    /// Listen addresses with `/p2p/<peer id>`, each followed by `#<node id>`:
    /// what `--bootstrap` takes.
    pub(crate) addresses: Vec<String>,
    /// Members with a federation session.
    pub(crate) peers: usize,
    pub(crate) patterns: usize,
    pub(crate) consensus: Option<ConsensusJson>,
    /// The federation id (hex).
    #[serde(default)]
    pub(crate) federation: Option<String>,
    /// The genesis file's hash (hex), with a genesis.
    #[serde(default)]
    pub(crate) genesis_hash: Option<String>,
    /// Every member this node knows: the genesis's voters and its peers.
    #[serde(default)]
    pub(crate) members: Vec<MemberJson>,
    /// The last committed batches this node saw, newest last.
    #[serde(default)]
    pub(crate) commits: Vec<CommitJson>,
    /// The audit log's last entries, oldest first.
    #[serde(default)]
    pub(crate) audit_tail: Vec<AuditJson>,
    /// Seconds since the node started.
    #[serde(default)]
    pub(crate) uptime_s: u64,
    /// The metrics and status page address, if the node serves one.
    #[serde(default)]
    pub(crate) http: Option<String>,
    /// The replicated maps' state.
    #[serde(default)]
    pub(crate) sync: Option<SyncJson>,
}

/// Where the replicated maps stand.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SyncJson {
    /// Keys of the shared map with a value.
    pub(crate) shared_entries: u64,
    /// Members in the directory this node admits (itself included).
    pub(crate) directory_members: u64,
    /// Anti-entropy chunks applied and refused since the node started.
    pub(crate) chunks_applied: u64,
    pub(crate) chunks_rejected: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ConsensusJson {
    pub(crate) replica: Option<u16>,
    /// The configuration epoch (0: the genesis's voters).
    #[serde(default)]
    pub(crate) epoch: u64,
    pub(crate) view: u64,
    /// The primary's replica index in this view (`view mod n`).
    #[serde(default)]
    pub(crate) primary: Option<u16>,
    /// The primary's node id.
    #[serde(default)]
    pub(crate) primary_node: Option<String>,
    pub(crate) last_executed: u64,
    pub(crate) stable_checkpoint: u64,
    pub(crate) ledger_count: u64,
    pub(crate) ledger_head: String,
}

/// A member as this node sees it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MemberJson {
    /// Its node id (hex), once known.
    pub(crate) node_id: Option<String>,
    /// Its libp2p peer id, once connected.
    pub(crate) peer_id: Option<String>,
    /// Its replica index, for a voting member of the genesis.
    pub(crate) replica: Option<u16>,
    /// This node itself.
    pub(crate) local: bool,
    /// A connection is open (always true for this node).
    pub(crate) connected: bool,
    /// A federation session is up (a token one way or the other).
    pub(crate) session: bool,
    /// The genesis's addresses for it.
    pub(crate) addresses: Vec<String>,
}

/// A committed batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CommitJson {
    pub(crate) seq: u64,
    pub(crate) view: u64,
    /// The batch digest its proof signs (hex).
    pub(crate) digest: String,
    pub(crate) updates: usize,
    pub(crate) revocations: usize,
    pub(crate) ledger_count: u64,
    /// When this node saw it (Unix milliseconds).
    pub(crate) time_ms: u64,
}

/// An audit log entry.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AuditJson {
    pub(crate) index: u64,
    pub(crate) time_ms: u64,
    pub(crate) event: String,
}

/// A running node's observable state.
pub(crate) struct Observer {
    mesh: FederatedMesh,
    genesis: Option<Genesis>,
    registry: Registry,
    commits: Mutex<VecDeque<CommitJson>>,
    started: Instant,
    http: Option<std::net::SocketAddr>,
}

impl Observer {
    /// Starts recording `mesh`'s committed batches.
    pub(crate) fn start(
        mesh: FederatedMesh,
        genesis: Option<Genesis>,
        registry: Registry,
        http: Option<std::net::SocketAddr>,
    ) -> Arc<Self> {
        let observer = Arc::new(Self {
            mesh,
            genesis,
            registry,
            http,
            commits: Mutex::new(VecDeque::with_capacity(RECENT_COMMITS)),
            started: Instant::now(),
        });
        let mut events = observer.mesh.events();
        let weak = Arc::downgrade(&observer);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(MeshEvent::Committed(batch)) => {
                        let Some(o) = weak.upgrade() else { break };
                        let mut commits = o.commits.lock().unwrap_or_else(|e| e.into_inner());
                        if commits.len() == RECENT_COMMITS {
                            commits.pop_front();
                        }
                        commits.push_back(CommitJson {
                            seq: batch.seq,
                            view: batch.view,
                            digest: hex::encode(batch.digest),
                            updates: batch.updates.len(),
                            revocations: batch.revocations.len(),
                            ledger_count: batch.ledger_count,
                            time_ms: crate::control::now_ms(),
                        });
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        observer
    }

    pub(crate) fn mesh(&self) -> &FederatedMesh {
        &self.mesh
    }

    /// The metrics in Prometheus's text format.
    pub(crate) fn metrics_text(&self) -> String {
        let mut out = String::new();
        if fed_mesh::prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The node's state now.
    pub(crate) async fn status(&self) -> Result<Status, String> {
        let mesh = &self.mesh;
        let e = |e: fed_mesh::Error| e.to_string();
        let node = hex::encode(mesh.node_id().0);
        let addresses = mesh
            .listen_addrs()
            .await
            .map_err(e)?
            .into_iter()
            .map(|a| format!("{a}/p2p/{}#{node}", mesh.peer_id()))
            .collect();
        let genesis_voters: Vec<(String, Vec<String>)> = self
            .genesis
            .iter()
            .flat_map(|g| &g.members)
            .map(|m| {
                (
                    hex::encode(m.identity.node_id().0),
                    m.addresses.iter().map(ToString::to_string).collect(),
                )
            })
            .collect();
        let consensus_status = mesh.consensus_status().await.map_err(e)?;
        // The current epoch's voters (the genesis's until the membership
        // changes), with the genesis's addresses where it lists them.
        let voters: Vec<(String, Vec<String>)> = match &consensus_status {
            Some(c) => c
                .voters
                .iter()
                .map(|n| {
                    let id = hex::encode(n.0);
                    let addrs = genesis_voters
                        .iter()
                        .find(|(g, _)| *g == id)
                        .map(|(_, a)| a.clone())
                        .unwrap_or_default();
                    (id, addrs)
                })
                .collect(),
            None => genesis_voters,
        };
        let consensus = consensus_status.map(|c| {
            let primary = (!voters.is_empty()).then(|| (c.view % voters.len() as u64) as u16);
            ConsensusJson {
                replica: c.replica,
                epoch: c.epoch,
                view: c.view,
                primary,
                primary_node: primary.map(|p| voters[usize::from(p)].0.clone()),
                last_executed: c.last_executed,
                stable_checkpoint: c.stable_checkpoint,
                ledger_count: c.ledger_count,
                ledger_head: hex::encode(c.ledger_head),
            }
        });
        // Members by node id: the genesis's voters first, in replica order,
        // then the peers this node has met.
        let mut members: BTreeMap<String, MemberJson> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for (i, (id, addrs)) in voters.iter().enumerate() {
            order.push(id.clone());
            members.insert(
                id.clone(),
                MemberJson {
                    node_id: Some(id.clone()),
                    peer_id: None,
                    replica: Some(i as u16),
                    local: *id == node,
                    connected: *id == node,
                    session: false,
                    addresses: addrs.clone(),
                },
            );
        }
        if !members.contains_key(&node) {
            order.push(node.clone());
            members.insert(
                node.clone(),
                MemberJson {
                    node_id: Some(node.clone()),
                    peer_id: None,
                    replica: None,
                    local: true,
                    connected: true,
                    session: false,
                    addresses: Vec::new(),
                },
            );
        }
        if let Some(me) = members.get_mut(&node) {
            me.peer_id = Some(mesh.peer_id().to_string());
        }
        let mut unnamed = Vec::new();
        for p in mesh.peers().await.map_err(e)? {
            let session = p.granted.is_some() || p.held.is_some();
            match p.node.map(|n| hex::encode(n.0)) {
                Some(id) => {
                    let m = members.entry(id.clone()).or_insert_with(|| {
                        order.push(id.clone());
                        MemberJson {
                            node_id: Some(id.clone()),
                            peer_id: None,
                            replica: None,
                            local: false,
                            connected: false,
                            session: false,
                            addresses: Vec::new(),
                        }
                    });
                    m.peer_id = Some(p.peer.to_string());
                    m.connected |= p.connected;
                    m.session |= session;
                }
                None => unnamed.push(MemberJson {
                    node_id: None,
                    peer_id: Some(p.peer.to_string()),
                    replica: None,
                    local: false,
                    connected: p.connected,
                    session,
                    addresses: Vec::new(),
                }),
            }
        }
        let mut members: Vec<MemberJson> =
            order.iter().filter_map(|id| members.remove(id)).collect();
        members.extend(unnamed);
        let audit_tail = match mesh.store() {
            Some(store) => store
                .audit()
                .tail(AUDIT_TAIL)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(index, entry)| AuditJson {
                    index,
                    time_ms: entry.time_ms,
                    event: describe(&entry.event),
                })
                .collect(),
            None => Vec::new(),
        };
        let stats = mesh.stats().await.map_err(e)?;
        let sync = SyncJson {
            shared_entries: stats.shared_entries,
            directory_members: stats.directory_members,
            chunks_applied: stats.sync_chunks,
            chunks_rejected: stats.sync_rejected,
        };
        let commits = self
            .commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        Ok(Status {
            node_id: node,
            peer_id: mesh.peer_id().to_string(),
            addresses,
            peers: mesh.peer_count().await.map_err(e)?,
            patterns: mesh.substrate().len().await,
            consensus,
            federation: self.genesis.as_ref().map(|g| hex::encode(g.federation.0)),
            genesis_hash: self.genesis.as_ref().map(|g| hex::encode(g.hash())),
            members,
            commits,
            audit_tail,
            uptime_s: self.started.elapsed().as_secs(),
            http: self.http.map(|a| a.to_string()),
            sync: Some(sync),
        })
    }
}

/// An audit event in a line of text.
fn describe(event: &AuditEvent) -> String {
    let short = |id: &[u8; 32]| hex::encode(&id[..8]);
    match event {
        AuditEvent::Joined { peer } => format!("joined: {}", short(peer)),
        AuditEvent::TokenIssued { peer, expires_at } => {
            format!("token issued to {} (expires {expires_at})", short(peer))
        }
        AuditEvent::Revoked { peer } => format!("revoked: {}", short(peer)),
        AuditEvent::Committed { seq, digest } => {
            format!("committed: sequence {seq}, digest {}", short(digest))
        }
        AuditEvent::EpochCommitted { epoch, seq, digest } => format!(
            "committed: epoch {epoch}, sequence {seq}, digest {}",
            short(digest)
        ),
        AuditEvent::ViewChanged { view } => format!("view changed to {view}"),
        AuditEvent::MembershipChanged { membership } => {
            format!("membership changed: {}", short(membership))
        }
        AuditEvent::CutOff { peer, reason } => format!("cut off {}: {reason}", short(peer)),
        AuditEvent::TokenRevoked { token } => format!("token revoked: {}", short(token)),
        other => format!("{other:?}"),
    }
}
