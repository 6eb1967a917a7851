//! Replicated state: the directory of members and the application's shared
//! map, kept eventually consistent by fed-crdt delta anti-entropy.
//!
//! Every value is signed by its writer together with its key and stamp: a
//! directory record by the member it describes, a shared-map value by the node
//! that wrote it. A node checks every entry of a chunk before it merges the
//! chunk, and cuts off a peer that sends a forged one. Because entries cannot
//! be forged, chunks are merged on fed-crdt's trusted path (the sender's
//! frontier is adopted, so deltas stay small); what a lying peer can still do
//! is claim a frontier ahead of what it sent, making this node skip writes in
//! later deltas, which the periodic full sync repairs. Chunks that claim a
//! garbage-collection horizon or collected floors are refused: the mesh never
//! collects tombstones (deletions are signed values), so no honest peer sends
//! them.

use std::collections::{BTreeMap, HashMap};

use fed_crdt::{Codec, Hlc, Limits as CrdtLimits, LwwMap, MapDelta, SyncRequest};
use fed_crypto::{HybridSignature, NodeId, PublicIdentity};
use fed_handshake::{AdmissionPolicy, AdmissionProof, FederationId};
use fed_onion::OnionKeyCertificate;
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use super::{Core, InboundId, labels, peer_id_of_identity, peers::Purpose};
use crate::{
    error::{Error, Result},
    types::{CutOffReason, MeshEvent},
    wire::{
        self, Kind, MAX_ADDR_LEN, MAX_RECORD_ADDRS, MapName, MemberRecord, Protocol, Refusal,
        SharedValue, SyncChunk, SyncPull,
    },
};

/// Sync state with one peer.
#[derive(Default)]
pub(crate) struct SyncPeer {
    in_progress: [bool; 2],
    /// A notifying pull is owed once the one in progress ends (coalesced).
    notify_owed: [bool; 2],
    last_triggered: u64,
}

fn slot(map: MapName) -> usize {
    match map {
        MapName::Directory => 0,
        MapName::Shared => 1,
    }
}

/// Most origins a sync frontier may name on this protocol: the writers of one
/// map a federation may have.
pub(crate) const MAX_ORIGINS: usize = 4096;

/// A member as the directory describes it (validated, admitted).
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) identity: PublicIdentity,
    pub(crate) peer: PeerId,
    pub(crate) addrs: Vec<Multiaddr>,
    pub(crate) onion: Option<OnionKeyCertificate>,
    stamp: Hlc,
}

/// A record checked on arrival.
struct Fresh {
    key: [u8; 32],
    member: Member,
    proof: AdmissionProof,
}

fn fresh(
    federation: &FederationId,
    key: &[u8; 32],
    stamp: Hlc,
    record: &MemberRecord,
) -> std::result::Result<Fresh, &'static str> {
    let member = check_record(federation, key, stamp, record)?;
    let proof = wire::decode::<AdmissionProof>(&record.admission, "admission proof")
        .unwrap_or(AdmissionProof::None);
    Ok(Fresh {
        key: *key,
        member,
        proof,
    })
}

/// The directory: member records by node id, and the parsed view of the
/// members this node admits.
#[derive(Default)]
pub(crate) struct Directory {
    map: LwwMap<[u8; 32], MemberRecord>,
    members: BTreeMap<NodeId, Member>,
    /// Every valid record's identity (admitted or not), to verify signatures.
    identities: HashMap<NodeId, PublicIdentity>,
    by_peer: HashMap<PeerId, NodeId>,
}

/// The record digest a member signs.
fn record_message(
    federation: &FederationId,
    key: &[u8; 32],
    stamp: Hlc,
    r: &MemberRecord,
) -> Vec<u8> {
    wire::encode(&(
        federation.0,
        key,
        stamp.physical_ms(),
        stamp.logical(),
        stamp.node().as_bytes(),
        &r.identity,
        &r.addrs,
        &r.onion,
        r.capabilities,
        &r.admission,
    ))
}

/// The write digest a shared-map writer signs.
fn write_message(
    federation: &FederationId,
    key: &[u8],
    stamp: Hlc,
    value: Option<&[u8]>,
) -> Vec<u8> {
    // Byte strings as postcard `bytes` (a length, then the bytes).
    let key = serde_bytes::Bytes::new(key);
    let value = value.map(serde_bytes::Bytes::new);
    wire::encode(&(
        federation.0,
        key,
        stamp.physical_ms(),
        stamp.logical(),
        stamp.node().as_bytes(),
        value,
    ))
}

/// Checks one directory entry: written by the member it names, a well-formed
/// record, a valid signature. Returns the parsed member.
fn check_record(
    federation: &FederationId,
    key: &[u8; 32],
    stamp: Hlc,
    record: &MemberRecord,
) -> std::result::Result<Member, &'static str> {
    if stamp.node().as_bytes() != key {
        return Err("record written by another node");
    }
    let identity = PublicIdentity::from_bytes(&record.identity).map_err(|_| "bad identity")?;
    if identity.node_id().0 != *key {
        return Err("identity does not match the key");
    }
    if record.addrs.len() > MAX_RECORD_ADDRS || record.addrs.iter().any(|a| a.len() > MAX_ADDR_LEN)
    {
        return Err("too many or too long addresses");
    }
    let addrs = record
        .addrs
        .iter()
        .map(|a| Multiaddr::try_from(a.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| "bad address")?;
    let signature =
        HybridSignature::from_bytes(&record.signature).map_err(|_| "bad signature encoding")?;
    identity
        .verify(
            labels::MEMBER_RECORD,
            &record_message(federation, key, stamp, record),
            &signature,
        )
        .map_err(|_| "signature does not verify")?;
    let onion = match &record.onion {
        None => None,
        Some(bytes) => {
            let cert =
                OnionKeyCertificate::from_bytes(bytes).map_err(|_| "bad onion certificate")?;
            if cert.node_id().0 != *key {
                return Err("onion certificate of another node");
            }
            Some(cert)
        }
    };
    let peer = peer_id_of_identity(&identity).ok_or("unusable Ed25519 key")?;
    Ok(Member {
        identity,
        peer,
        addrs,
        onion,
        stamp,
    })
}

impl Directory {
    pub(crate) fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    /// The identity of any node with a valid record (admitted or not).
    pub(crate) fn identity(&self, node: &NodeId) -> Option<PublicIdentity> {
        self.identities.get(node).cloned()
    }

    /// The admission proof a node's record carries (none if it has no record).
    pub(crate) fn admission_proof(&self, node: &NodeId) -> AdmissionProof {
        self.map
            .get(&node.0)
            .and_then(|r| wire::decode::<AdmissionProof>(&r.admission, "admission proof").ok())
            .unwrap_or(AdmissionProof::None)
    }

    pub(crate) fn node_of_peer(&self, peer: &PeerId) -> Option<NodeId> {
        self.by_peer.get(peer).copied()
    }

    pub(crate) fn addrs(&self, node: &NodeId) -> Vec<Multiaddr> {
        self.members
            .get(node)
            .map(|m| m.addrs.clone())
            .unwrap_or_default()
    }

    pub(crate) fn onion_certificate(&self, node: &NodeId) -> Option<OnionKeyCertificate> {
        self.members.get(node)?.onion.clone()
    }

    /// Every admitted member's onion certificate valid at `now`.
    pub(crate) fn onion_certificates(&self, now: u64) -> Vec<OnionKeyCertificate> {
        self.members
            .values()
            .filter_map(|m| m.onion.clone())
            .filter(|c| c.is_valid_at(now))
            .collect()
    }

    /// Admitted members other than `local` with an onion key valid at `now`.
    pub(crate) fn onion_members(&self, local: &NodeId, now: u64) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(n, m)| *n != local && m.onion.as_ref().is_some_and(|c| c.is_valid_at(now)))
            .map(|(n, _)| *n)
            .collect()
    }

    /// Takes records that were checked when they arrived into the view, where
    /// the map now holds that very version: every valid record's identity, and
    /// the members this node's admission policy admits.
    fn adopt(
        &mut self,
        fresh: Vec<Fresh>,
        federation: &FederationId,
        admission: &dyn AdmissionPolicy,
        now: u64,
    ) {
        for f in fresh {
            if self.map.entry(&f.key).map(|e| e.stamp()) != Some(f.member.stamp) {
                continue;
            }
            let node = NodeId(f.key);
            self.identities.insert(node, f.member.identity.clone());
            if admission
                .admit(&f.member.identity, &f.proof, federation, now)
                .is_ok()
            {
                self.by_peer.insert(f.member.peer, node);
                self.members.insert(node, f.member);
            } else {
                self.members.remove(&node);
            }
        }
    }
}

/// The application's shared map: signed values by key.
#[derive(Default)]
pub(crate) struct SharedMap {
    map: LwwMap<Vec<u8>, SharedValue>,
}

impl SharedMap {
    pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map
            .get(key)?
            .value
            .clone()
            .map(serde_bytes::ByteBuf::into_vec)
    }

    /// Keys with a value (removed keys not counted).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub(crate) fn frontier_len(&self) -> usize {
        self.map.frontier().len()
    }

    pub(crate) fn entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.value.clone()?.into_vec())))
            .collect()
    }
}

impl Core {
    /// The limits of sync messages in a channel whose payload limit is
    /// `payload`: chunks of at most `min(payload, 1 MiB) − 1024` bytes.
    fn sync_limits(payload: usize) -> CrdtLimits {
        let payload = payload.clamp(
            fed_handshake::MAX_MESSAGE_LEN,
            fed_crypto::MAX_PAYLOAD_LIMIT,
        );
        CrdtLimits {
            max_message_bytes: payload.min(1 << 20) - 1024,
            max_entries: 4096,
            max_origins: MAX_ORIGINS,
            ..CrdtLimits::DEFAULT
        }
    }

    /// The limits this node decodes chunks and pulls with.
    fn own_sync_limits(&self) -> CrdtLimits {
        Self::sync_limits(fed_crypto::MAX_PAYLOAD_LIMIT)
    }

    /// Writes this node's directory record (addresses, onion key) and tells peers.
    pub(super) fn publish_record(&mut self, now: u64) -> Result<()> {
        let record = MemberRecord {
            identity: self.config.identity.public().as_bytes().to_vec(),
            addrs: self
                .listen_addrs
                .iter()
                .map(|a| serde_bytes::ByteBuf::from(a.to_vec()))
                .collect(),
            onion: Some(serde_bytes::ByteBuf::from(
                self.onion.certificate.as_bytes().to_vec(),
            )),
            capabilities: self.config.capabilities.set.bits(),
            admission: wire::encode(&self.config.admission_proof),
            signature: Vec::new(),
        };
        let federation = self.config.federation;
        let identity = self.config.identity.clone();
        let mut failure = None;
        self.directory.map.write_with(
            self.local_node.0,
            |key, stamp| {
                let mut record = record;
                match identity.sign(
                    labels::MEMBER_RECORD,
                    &record_message(&federation, key, stamp, &record),
                ) {
                    Ok(sig) => record.signature = sig.to_bytes(),
                    Err(e) => failure = Some(e),
                }
                Some(record)
            },
            &mut self.clock,
            now,
        )?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        self.store_entries(MapName::Directory, vec![self.local_node.0.to_vec()]);
        // This node is a member of its own directory, whatever its policy says.
        if let Some(entry) = self.directory.map.entry(&self.local_node.0)
            && let Some(record) = entry.value()
            && let Ok(own) = fresh(&federation, &self.local_node.0, entry.stamp(), record)
        {
            self.directory
                .identities
                .insert(self.local_node, own.member.identity.clone());
            self.directory
                .by_peer
                .insert(own.member.peer, self.local_node);
            self.directory.members.insert(self.local_node, own.member);
        }
        self.start_sync_round(now, true);
        Ok(())
    }

    /// A signed write to the shared map (`None` deletes), then tells peers.
    pub(super) fn shared_write(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        now: u64,
    ) -> Result<()> {
        if key.is_empty() || key.len() > self.config.limits.max_key_len {
            return Err(Error::SharedMap(format!(
                "keys must be 1 to {} bytes",
                self.config.limits.max_key_len
            )));
        }
        if value
            .as_ref()
            .is_some_and(|v| v.len() > self.config.limits.max_value_len)
        {
            return Err(Error::SharedMap(format!(
                "values must be at most {} bytes",
                self.config.limits.max_value_len
            )));
        }
        if self.shared.map.entry(&key).is_none()
            && self.shared.map.entry_count() >= self.config.limits.max_map_entries
        {
            return Err(Error::SharedMap("the map is full".into()));
        }
        let federation = self.config.federation;
        let identity = self.config.identity.clone();
        let mut failure = None;
        let stored_key = key.clone();
        self.shared.map.write_with(
            key,
            |key, stamp| {
                let message = write_message(&federation, key, stamp, value.as_deref());
                let signature = match identity.sign_ed25519(labels::SHARED_WRITE, &message) {
                    Ok(sig) => sig.to_bytes(),
                    Err(e) => {
                        failure = Some(e);
                        Vec::new()
                    }
                };
                Some(SharedValue {
                    value: value.map(serde_bytes::ByteBuf::from),
                    signature,
                })
            },
            &mut self.clock,
            now,
        )?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        // On disk before the write completes and before peers hear of it.
        self.store_entries(MapName::Shared, vec![stored_key]);
        self.start_sync_round(now, true);
        Ok(())
    }

    /// The entries of `map` under `keys` as they now stand, for the store.
    fn store_entries(&mut self, map: MapName, keys: Vec<Vec<u8>>) {
        if !self.keeps_state() {
            return;
        }
        let writes = keys
            .into_iter()
            .filter_map(|key| {
                let entry = match map {
                    MapName::Directory => {
                        let k: [u8; 32] = key.as_slice().try_into().ok()?;
                        wire::encode(self.directory.map.entry(&k)?)
                    }
                    MapName::Shared => wire::encode(self.shared.map.entry(&key)?),
                };
                Some(super::StateWrite::MapEntry { map, key, entry })
            })
            .collect();
        self.store_state(writes);
    }

    /// Starts from the stored state: the maps' entries (each directory record
    /// checked again, as it was when it arrived) and the revocations. The
    /// clock moves past every stored stamp, so that this node's next writes
    /// win over its writes before the restart even if the wall clock went
    /// back.
    pub(super) fn restore(&mut self, state: super::NodeState, now: u64) -> Result<()> {
        let corrupt = |what: &str, key: &[u8]| {
            Error::Config(format!(
                "the stored {what} {} does not decode",
                hex_short(key)
            ))
        };
        let federation = self.config.federation;
        let mut checked = Vec::new();
        // The latest stamp stored, whoever wrote it: the clock resumes past it.
        let mut latest = self.clock.last();
        for (key, bytes) in &state.directory {
            let k: [u8; 32] = key
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("directory key", key))?;
            let entry =
                wire::decode::<fed_crdt::Entry<MemberRecord>>(bytes, "stored directory entry")
                    .map_err(|_| corrupt("directory entry", key))?;
            latest = latest.max(entry.stamp());
            let Some(record) = entry.value() else {
                continue;
            };
            match fresh(&federation, &k, entry.stamp(), record) {
                Ok(f) => checked.push(f),
                Err(reason) => {
                    tracing::warn!(node = %hex_short(key), reason, "a stored directory record is no longer valid; dropped");
                    continue;
                }
            }
            self.directory
                .map
                .write_at(k, Some(record.clone()), entry.stamp());
        }
        self.directory
            .adopt(checked, &federation, self.config.admission.as_ref(), now);
        for (key, bytes) in &state.shared {
            let entry = wire::decode::<fed_crdt::Entry<SharedValue>>(bytes, "stored shared entry")
                .map_err(|_| corrupt("shared-map entry", key))?;
            latest = latest.max(entry.stamp());
            let stamp = entry.stamp();
            self.shared
                .map
                .write_at(key.clone(), entry.value().cloned(), stamp);
        }
        // Past every stored stamp even if the wall clock went back across the
        // restart (observing them would refuse those far ahead of it): this
        // node's next writes are newer than everything it held, so peers whose
        // frontier covers its old writes still take them.
        if latest > self.clock.last() {
            let own = self.clock.node();
            self.clock = fed_crdt::HlcClock::resume(
                Hlc::new(latest.physical_ms(), latest.logical(), own),
                self.clock.max_forward_skew_ms(),
            );
        }
        for r in state.revoked {
            match r {
                super::commit::Revocation::Token(id) => self.revoked.insert(id),
                super::commit::Revocation::Member(node) => self.revoked_members.insert(node.0),
            };
        }
        Ok(())
    }

    /// Pulls both maps from every peer this node holds a session with.
    /// `notify` asks each peer to pull back at once (this node has news).
    pub(super) fn start_sync_round(&mut self, now: u64, notify: bool) {
        let mut peers = self.session_peers();
        if !notify {
            // Periodic anti-entropy with a few random peers per round, as
            // gossip does; news travels at once through `notify`.
            super::peers::shuffle(&mut peers, &mut self.rng);
            peers.truncate(self.config.timing.sync_peers);
        }
        for peer in peers {
            self.sync_with(peer, now, notify);
        }
    }

    pub(super) fn sync_with(&mut self, peer: PeerId, now: u64, notify: bool) {
        let full = self
            .sync_round
            .is_multiple_of(self.config.timing.full_sync_every)
            && !notify;
        for map in [MapName::Directory, MapName::Shared] {
            let request = match map {
                MapName::Directory => {
                    let r = if full {
                        self.directory.map.full_sync_request()
                    } else {
                        self.directory.map.sync_request()
                    };
                    r.encode(&self.own_sync_limits())
                }
                MapName::Shared => {
                    let r = if full {
                        self.shared.map.full_sync_request()
                    } else {
                        self.shared.map.sync_request()
                    };
                    r.encode(&self.own_sync_limits())
                }
            };
            let Ok(request) = request else { continue };
            self.pull(peer, map, request, notify, now);
        }
    }

    fn pull(&mut self, peer: PeerId, map: MapName, request: Vec<u8>, notify: bool, now: u64) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.sync.in_progress[slot(map)] {
            // One pull per map and peer at a time; news waits for the one under way.
            if notify {
                p.sync.notify_owed[slot(map)] = true;
            }
            return;
        }
        p.sync.in_progress[slot(map)] = true;
        let pull = SyncPull {
            map,
            request,
            notify,
        };
        let plaintext = wire::envelope(Kind::SyncPull, &wire::encode(&pull));
        self.send_sealed(peer, Protocol::Sync, &plaintext, Purpose::Sync(map), now);
    }

    /// A pull of `map` from `peer` ended: send the notifying pull it held back.
    fn pull_done(&mut self, peer: PeerId, map: MapName, now: u64) {
        let owed = self.peers.get_mut(&peer).is_some_and(|p| {
            p.sync.in_progress[slot(map)] = false;
            std::mem::take(&mut p.sync.notify_owed[slot(map)])
        });
        if owed {
            let limits = self.own_sync_limits();
            let request = match map {
                MapName::Directory => self.directory.map.sync_request().encode(&limits),
                MapName::Shared => self.shared.map.sync_request().encode(&limits),
            };
            if let Ok(request) = request {
                self.pull(peer, map, request, true, now);
            }
        }
    }

    pub(super) fn on_sync_request(
        &mut self,
        peer: PeerId,
        id: InboundId,
        plaintext: &[u8],
        now: u64,
    ) {
        let Ok(pull) = wire::decode_body::<SyncPull>(plaintext, Kind::SyncPull, "sync pull") else {
            self.malformed_request(id, now);
            return;
        };
        let limits = Self::sync_limits(self.answer_limit(id));
        // A request that does not decode is the peer's fault; a chunk this node
        // cannot build (its own state over a limit) is not.
        let delta = match pull.map {
            MapName::Directory => {
                SyncRequest::<[u8; 32]>::decode(&pull.request, &limits).map(|r| {
                    self.directory
                        .map
                        .delta_for(&r, &limits)
                        .and_then(|d| d.encode(&limits))
                })
            }
            MapName::Shared => SyncRequest::<Vec<u8>>::decode(&pull.request, &limits).map(|r| {
                self.shared
                    .map
                    .delta_for(&r, &limits)
                    .and_then(|d| d.encode(&limits))
            }),
        };
        match delta {
            Ok(Ok(delta)) => {
                let body = wire::encode(&SyncChunk { delta });
                self.respond_sealed(id, Kind::SyncChunk, &body);
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "cannot answer a sync pull");
                self.refuse(id, Refusal::Overloaded, now);
                return;
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "refusing a sync pull");
                self.refuse(id, Refusal::Malformed, now);
                return;
            }
        }
        if pull.notify
            && let Some(p) = self.peers.get_mut(&peer)
            && now >= p.sync.last_triggered.saturating_add(100)
        {
            p.sync.last_triggered = now;
            if p.has_out_session() {
                self.sync_with(peer, now, false);
            }
        }
    }

    pub(super) fn on_sync_response(
        &mut self,
        peer: PeerId,
        map: MapName,
        plaintext: &[u8],
        now: u64,
    ) {
        let Ok(chunk) = wire::decode_body::<SyncChunk>(plaintext, Kind::SyncChunk, "sync chunk")
        else {
            self.cut_off(peer, CutOffReason::Malformed, now);
            return;
        };
        let limits = self.own_sync_limits();
        let result = match map {
            MapName::Directory => self.ingest_directory(&chunk.delta, &limits, now),
            MapName::Shared => self.ingest_shared(&chunk.delta, &limits, now),
        };
        match result {
            Ok((changed, next)) => {
                self.stats.sync_chunks += 1;
                if changed > 0
                    && let Some(node) = self.peers.get(&peer).and_then(|p| p.node)
                {
                    self.event(MeshEvent::SyncDone { node, map, changed });
                }
                match next {
                    // The series goes on; a notifying pull waits for its end.
                    Some(next) => {
                        if let Some(p) = self.peers.get_mut(&peer) {
                            p.sync.in_progress[slot(map)] = false;
                        }
                        self.pull(peer, map, next, false, now);
                    }
                    None => self.pull_done(peer, map, now),
                }
            }
            Err(Rejected::Forged(reason)) => {
                tracing::warn!(%peer, reason, "forged entry in a sync chunk");
                self.stats.sync_rejected += 1;
                self.cut_off(peer, CutOffReason::Malformed, now);
            }
            Err(Rejected::Unusable(reason)) => {
                tracing::info!(%peer, reason, "sync chunk not applied");
                self.stats.sync_rejected += 1;
                self.pull_done(peer, map, now);
            }
        }
    }

    pub(super) fn on_sync_failed(&mut self, peer: PeerId, map: MapName, now: u64) {
        self.pull_done(peer, map, now);
    }

    /// Whether `node` may appear as an origin of a frontier: a node with a
    /// valid directory record, or this node.
    fn known_origin(&self, node: &NodeId) -> bool {
        *node == self.local_node || self.directory.identity(node).is_some()
    }

    fn ingest_directory(
        &mut self,
        bytes: &[u8],
        limits: &CrdtLimits,
        now: u64,
    ) -> std::result::Result<(usize, Option<Vec<u8>>), Rejected> {
        let delta = MapDelta::<[u8; 32], MemberRecord>::decode(bytes, limits)
            .map_err(|_| Rejected::Forged("undecodable chunk"))?;
        check_claims(&delta)?;
        let new_keys = delta
            .entries()
            .iter()
            .filter(|(k, _)| self.directory.map.entry(k).is_none())
            .count();
        if self.directory.map.entry_count() + new_keys > self.config.limits.max_map_entries {
            return Err(Rejected::Unusable("the directory is full"));
        }
        // Every origin the chunk's frontier names must be a node with a record
        // (held, or in this chunk): made-up origins would grow the frontier until
        // no sync request fits.
        let in_chunk: std::collections::BTreeSet<[u8; 32]> =
            delta.entries().iter().map(|(k, _)| *k).collect();
        if delta.frontier().iter().any(|stamp| {
            let node = NodeId(*stamp.node().as_bytes());
            !in_chunk.contains(&node.0) && !self.known_origin(&node)
        }) {
            return Err(Rejected::Unusable("a frontier origin without a record"));
        }
        let federation = self.config.federation;
        // Check every entry this node does not hold at that stamp already, once.
        let mut checked = Vec::new();
        for (key, entry) in delta.entries() {
            let held = self.directory.map.entry(key).map(|e| e.stamp());
            if held == Some(entry.stamp()) {
                continue;
            }
            let record = entry
                .value()
                .ok_or(Rejected::Forged("directory tombstone"))?;
            checked.push(fresh(&federation, key, entry.stamp(), record).map_err(Rejected::Forged)?);
        }
        let applied = self
            .directory
            .map
            .ingest_trusted_delta(delta, &mut self.clock, now)
            .map_err(|_| Rejected::Unusable("clock skew"))?;
        let keys = checked.iter().map(|f| f.key.to_vec()).collect();
        self.store_entries(MapName::Directory, keys);
        self.directory
            .adopt(checked, &federation, self.config.admission.as_ref(), now);
        let next = match applied.next {
            Some(r) => Some(
                r.encode(limits)
                    .map_err(|_| Rejected::Unusable("continuation"))?,
            ),
            None => None,
        };
        Ok((applied.outcome.changed, next))
    }

    fn ingest_shared(
        &mut self,
        bytes: &[u8],
        limits: &CrdtLimits,
        now: u64,
    ) -> std::result::Result<(usize, Option<Vec<u8>>), Rejected> {
        let delta = MapDelta::<Vec<u8>, SharedValue>::decode(bytes, limits)
            .map_err(|_| Rejected::Forged("undecodable chunk"))?;
        check_claims(&delta)?;
        let new_keys = delta
            .entries()
            .iter()
            .filter(|(k, _)| self.shared.map.entry(k).is_none())
            .count();
        if self.shared.map.entry_count() + new_keys > self.config.limits.max_map_entries {
            return Err(Rejected::Unusable("the shared map is full"));
        }
        if delta
            .frontier()
            .iter()
            .any(|stamp| !self.known_origin(&NodeId(*stamp.node().as_bytes())))
        {
            return Err(Rejected::Unusable("a frontier origin without a record"));
        }
        let federation = self.config.federation;
        let mut arriving = Vec::new();
        for (key, entry) in delta.entries() {
            if self.shared.map.entry(key).map(|e| e.stamp()) == Some(entry.stamp()) {
                continue;
            }
            arriving.push(key.clone());
            let value = entry
                .value()
                .ok_or(Rejected::Forged("shared-map tombstone"))?;
            if key.is_empty() {
                return Err(Rejected::Forged("an empty key"));
            }
            // The limits are the federation's; a member configured with larger
            // ones is not lying, but this node does not take the entry.
            if key.len() > self.config.limits.max_key_len
                || value
                    .value
                    .as_ref()
                    .is_some_and(|v| v.len() > self.config.limits.max_value_len)
            {
                return Err(Rejected::Unusable("a key or value over this node's limits"));
            }
            let writer = NodeId(*entry.stamp().node().as_bytes());
            // A writer whose record this node has not seen yet: try again after
            // the directory has synced.
            let identity = self
                .identity_of(&writer)
                .or_else(|| self.directory.identity(&writer))
                .ok_or(Rejected::Unusable("unknown writer"))?;
            let signature = HybridSignature::from_bytes(&value.signature)
                .map_err(|_| Rejected::Forged("bad signature encoding"))?;
            if signature.has_post_quantum() {
                return Err(Rejected::Forged(
                    "a write signature with a post-quantum part",
                ));
            }
            identity
                .verify_ed25519(
                    labels::SHARED_WRITE,
                    &write_message(
                        &federation,
                        key,
                        entry.stamp(),
                        value.value.as_ref().map(|v| v.as_slice()),
                    ),
                    &signature,
                )
                .map_err(|_| Rejected::Forged("write signature does not verify"))?;
        }
        let applied = self
            .shared
            .map
            .ingest_trusted_delta(delta, &mut self.clock, now)
            .map_err(|_| Rejected::Unusable("clock skew"))?;
        self.store_entries(MapName::Shared, arriving);
        let next = match applied.next {
            Some(r) => Some(
                r.encode(limits)
                    .map_err(|_| Rejected::Unusable("continuation"))?,
            ),
            None => None,
        };
        Ok((applied.outcome.changed, next))
    }
}

/// The first bytes of a key, in hex, for messages.
fn hex_short(key: &[u8]) -> String {
    key.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

enum Rejected {
    /// The sender is lying: cut it off.
    Forged(&'static str),
    /// Not applicable now (clock skew, unknown writer, full): try later.
    Unusable(&'static str),
}

/// Refuses the claims no honest mesh peer makes: a horizon or collected floors.
fn check_claims<K, V>(delta: &MapDelta<K, V>) -> std::result::Result<(), Rejected> {
    if delta.horizon().is_some() || !delta.collected().is_empty() {
        return Err(Rejected::Forged("a garbage-collection claim"));
    }
    Ok(())
}
