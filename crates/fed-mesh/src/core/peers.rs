//! Peers: connections, the federation handshake in both directions, sessions and
//! their tokens, sealing, request dispatch, rate limits, strikes and bans.
//!
//! Every connected pair runs two handshakes, one each way: each node joins
//! through the other. A request from A to B is sealed in the session A initiated
//! (A's outbound, B's inbound session), and B authorises it against the token B
//! issued in that session. So each side applies its own admission policy and
//! capability ceiling to the other.

use std::{collections::VecDeque, sync::Arc};

use fed_crypto::{Mode, NodeId, PublicIdentity};
use fed_handshake::{
    AdmissionPolicy, AdmissionProof, Capability, CapabilitySet, Event as HsEvent, FederationId,
    FederationToken, Initiator, InitiatorConfig, Responder, ResponderConfig, ResponderTrust,
    Session,
};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use super::{
    Action, CommandId, Completion, Core, InboundId, InboundProblem, OutboundId, SendFailure,
    channel_binding, ed25519_key_of, limits::TokenBucket, onion, query, sync,
};
use crate::{
    error::Error,
    types::{CutOffReason, Direction, MeshEvent, PeerAddress, PeerInfo},
    wire::{
        self, Kind, MapName, Protocol, RawResponse, Refusal, SESSION_ID_LEN, parse_response,
        plain_refusal, split_sealed_request,
    },
};

/// A session this node initiated: it seals its requests to the peer in it, and
/// paces them to the token it holds (rate, requests outstanding), so that an
/// honest node is never refused for going too fast.
pub(crate) struct OutSession {
    pub(crate) session: Box<Session>,
    pub(crate) id: [u8; SESSION_ID_LEN],
    renew_at: Option<u64>,
    bucket: TokenBucket,
    in_flight: u32,
}

/// A session the peer initiated: its requests arrive in it, authorised by the
/// token this node issued.
pub(crate) struct InSession {
    pub(crate) session: Box<Session>,
    pub(crate) id: [u8; SESSION_ID_LEN],
    bucket: TokenBucket,
    in_flight: u32,
}

struct Handshaking {
    machine: Initiator,
    finishing: bool,
    /// Which attempt this is, so that an answer to an earlier one is ignored.
    attempt: u64,
}

/// How long a peer's strikes are remembered without a new one.
const STRIKE_MEMORY_MS: u64 = 60_000;
/// Times a waiting join's handshake is started again after a transport failure.
const MAX_JOIN_RETRIES: u8 = 2;
/// How long before a peer this node's policy refused is asked again.
const NOT_ADMITTED_BACKOFF_MS: u64 = 10 * 60_000;

/// Why a request was sent, so its answer (or failure) reaches the right place.
pub(crate) enum Purpose {
    Hello(u64),
    Finish(u64),
    Query(query::ChildKey),
    Onion(onion::OnionPurpose),
    Sync(MapName),
    /// A PBFT message (answered by an empty acknowledgement).
    Pbft,
    /// A proof request of client slot `.0` for its request with timestamp `.1`.
    Proof(u16, u64),
}

pub(crate) struct Pending {
    pub(crate) peer: PeerId,
    session: Option<[u8; SESSION_ID_LEN]>,
    pub(crate) purpose: Purpose,
}

pub(crate) struct InboundCtx {
    peer: PeerId,
    session: [u8; SESSION_ID_LEN],
    /// Whether the request counts against the session's requests outstanding.
    counted: bool,
}

/// A message waiting for a session with its peer.
struct Queued {
    protocol: Protocol,
    plaintext: Vec<u8>,
    purpose: Purpose,
    expires: u64,
}

/// How a request failed, as its purpose sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    Timeout,
    Unreachable,
    Refused(Refusal),
    Malformed,
}

pub(crate) struct Peer {
    pub(crate) peer: PeerId,
    pub(crate) node: Option<NodeId>,
    pub(crate) identity: Option<PublicIdentity>,
    connected: bool,
    addrs: Vec<Multiaddr>,
    /// The node id this peer must prove (a join target or bootstrap peer).
    expected: Option<NodeId>,
    bootstrap: bool,
    initiator: Option<Handshaking>,
    /// The peer's handshake towards this node, and when it started.
    responder: Option<(Box<Responder>, u64)>,
    out: Option<OutSession>,
    out_prev: Option<OutSession>,
    inb: Option<InSession>,
    inb_prev: Option<InSession>,
    strikes: u32,
    last_strike: u64,
    joiners: Vec<CommandId>,
    queued: VecDeque<Queued>,
    /// No new dial before this time.
    dial_after: u64,
    /// No new outbound handshake before this time (after a failure).
    handshake_after: u64,
    /// Handshakes restarted for a waiting join after a transport failure.
    join_retries: u8,
    pub(crate) sync: sync::SyncPeer,
}

impl Peer {
    fn new(peer: PeerId) -> Self {
        Self {
            peer,
            node: None,
            identity: None,
            connected: false,
            addrs: Vec::new(),
            expected: None,
            bootstrap: false,
            initiator: None,
            responder: None,
            out: None,
            out_prev: None,
            inb: None,
            inb_prev: None,
            strikes: 0,
            last_strike: 0,
            joiners: Vec::new(),
            join_retries: 0,
            queued: VecDeque::new(),
            dial_after: 0,
            handshake_after: 0,
            sync: sync::SyncPeer::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn test_out(&mut self) -> Option<&mut OutSession> {
        self.out.as_mut()
    }

    #[cfg(test)]
    pub(crate) fn test_inb(&mut self) -> Option<&mut InSession> {
        self.inb.as_mut()
    }

    /// A member: a session exists in either direction.
    pub(crate) fn is_member(&self) -> bool {
        self.out.is_some() || self.inb.is_some()
    }

    /// This node can send it requests.
    pub(crate) fn has_out_session(&self) -> bool {
        self.out.is_some()
    }

    pub(crate) fn info(&self) -> PeerInfo {
        PeerInfo {
            peer: self.peer,
            node: self.node,
            connected: self.connected,
            granted: self
                .inb
                .as_ref()
                .map(|s| s.session.token.body().capabilities),
            held: self
                .out
                .as_ref()
                .map(|s| s.session.token.body().capabilities),
        }
    }

    fn out_session(&mut self, id: &[u8; SESSION_ID_LEN]) -> Option<&mut OutSession> {
        [self.out.as_mut(), self.out_prev.as_mut()]
            .into_iter()
            .flatten()
            .find(|s| &s.id == id)
    }

    /// The current outbound session's handshake session.
    pub(crate) fn out_session_ref(&self) -> Option<&Session> {
        self.out.as_ref().map(|s| &*s.session)
    }

    /// The current inbound session's handshake session.
    pub(crate) fn in_session_ref(&self) -> Option<&Session> {
        self.inb.as_ref().map(|s| &*s.session)
    }

    fn in_session(&mut self, id: &[u8; SESSION_ID_LEN]) -> Option<&mut InSession> {
        [self.inb.as_mut(), self.inb_prev.as_mut()]
            .into_iter()
            .flatten()
            .find(|s| &s.id == id)
    }

    fn next_timeout(&self) -> Option<u64> {
        [
            self.initiator
                .as_ref()
                .and_then(|h| h.machine.poll_timeout()),
            self.responder.as_ref().and_then(|(r, _)| r.poll_timeout()),
            self.out.as_ref().and_then(|s| s.renew_at),
            self.queued.iter().map(|q| q.expires).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The node's admission policy, plus the rule that the joining node's
/// federation identity has the Ed25519 key its libp2p peer id names.
struct PeerBound {
    inner: Arc<dyn AdmissionPolicy>,
    key: Option<[u8; 32]>,
}

impl AdmissionPolicy for PeerBound {
    fn admit(
        &self,
        initiator: &PublicIdentity,
        proof: &AdmissionProof,
        federation: &FederationId,
        now: u64,
    ) -> fed_handshake::Result<CapabilitySet> {
        if self.key.as_ref() != Some(initiator.ed25519_bytes()) {
            return Err(fed_handshake::Error::NotAdmitted(
                "identity does not match the libp2p peer id",
            ));
        }
        self.inner.admit(initiator, proof, federation, now)
    }
}

/// The capability a protocol's requests need.
fn capability_for(protocol: Protocol) -> Capability {
    match protocol {
        Protocol::Handshake | Protocol::Query => Capability::Query,
        Protocol::Onion => Capability::Relay,
        Protocol::Sync => Capability::CrdtSync,
        Protocol::Pbft => Capability::Vote,
    }
}

/// The per-request token check. The token was issued (and its signature made)
/// by this node in this session, so what remains to check is its validity
/// window, revocation and the capability.
fn check_token(
    token: &FederationToken,
    capability: Capability,
    now: u64,
    revoked: &std::collections::BTreeSet<[u8; 32]>,
    revoked_members: &std::collections::BTreeSet<[u8; 32]>,
) -> Result<(), Refusal> {
    let body = token.body();
    if revoked.contains(&body.id) || revoked_members.contains(&body.subject) {
        return Err(Refusal::TokenRevoked);
    }
    if now >= body.expires_at {
        return Err(Refusal::TokenExpired);
    }
    if now < body.not_before {
        return Err(Refusal::TokenInvalid);
    }
    if !body.capabilities.allows(capability) {
        return Err(Refusal::CapabilityDenied);
    }
    Ok(())
}

fn session_id(session: &Session) -> [u8; SESSION_ID_LEN] {
    let mut id = [0u8; SESSION_ID_LEN];
    id.copy_from_slice(&session.binding[..SESSION_ID_LEN]);
    id
}

impl Core {
    // --- Connections ---

    /// A connection to `peer` is up (the first one, or another). `addr` is the
    /// remote address when this node dialled.
    pub fn handle_connected(&mut self, peer: PeerId, addr: Option<Multiaddr>, now: u64) {
        if self.bans.contains_key(&peer) {
            self.push(Action::Ban { peer });
            return;
        }
        let p = self.peers.entry(peer).or_insert_with(|| Peer::new(peer));
        p.connected = true;
        if let Some(addr) = addr
            && !p.addrs.contains(&addr)
            && p.addrs.len() < 8
        {
            p.addrs.push(addr);
        }
        if self.wants_outbound(&peer, now) {
            self.start_handshake(peer, now);
        }
    }

    /// The last connection to `peer` closed.
    pub fn handle_disconnected(&mut self, peer: PeerId, now: u64) {
        let banned = self.bans.contains_key(&peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let was_member = p.is_member();
        let node = p.node;
        p.connected = false;
        p.initiator = None;
        p.responder = None;
        p.out = None;
        p.out_prev = None;
        p.inb = None;
        p.inb_prev = None;
        p.sync = sync::SyncPeer::default();
        // A join waits: the connection may have been the loser of two that
        // crossed (each side dialling the other): dial again, twice at most,
        // before failing it.
        let retry_join = !p.joiners.is_empty() && p.join_retries < MAX_JOIN_RETRIES && !banned;
        let joiners = if retry_join {
            p.join_retries += 1;
            Vec::new()
        } else {
            p.join_retries = 0;
            std::mem::take(&mut p.joiners)
        };
        let redial = retry_join.then(|| p.addrs.clone());
        let queued = std::mem::take(&mut p.queued);
        let keep = p.bootstrap || p.expected.is_some();
        if !keep {
            self.forget_peer(peer);
        }
        if let Some(node) = node {
            self.commit_peer_gone(node);
        }
        for j in joiners {
            self.complete(j, Completion::Joined(Err(Error::Disconnected(peer))));
        }
        for q in queued {
            self.fail_purpose(peer, q.purpose, Failure::Unreachable, now);
        }
        if let Some(addrs) = redial {
            tracing::debug!(%peer, "a join's connection closed; dialling again");
            self.push(Action::Dial { peer, addrs });
        }
        if was_member {
            self.event(MeshEvent::PeerLeft { peer, node });
        }
    }

    /// Drops everything the node keeps about `peer`.
    fn forget_peer(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.remove(&peer)
            && let Some(node) = p.node
            && self.by_node.get(&node) == Some(&peer)
        {
            self.by_node.remove(&node);
        }
    }

    /// A dial to `peer` failed.
    pub fn handle_dial_failed(&mut self, peer: PeerId, reason: String, now: u64) {
        let banned = self.bans.contains_key(&peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.connected {
            return;
        }
        // A join waits: dial again at once, twice at most, before failing it
        // (the other side may have been dialling this node at the same moment
        // and refused the crossing connection).
        if !p.joiners.is_empty() && p.join_retries < MAX_JOIN_RETRIES && !banned {
            p.join_retries += 1;
            let addrs = p.addrs.clone();
            tracing::debug!(%peer, %reason, "a join's dial failed; dialling again");
            self.push(Action::Dial { peer, addrs });
            return;
        }
        p.join_retries = 0;
        let joiners = std::mem::take(&mut p.joiners);
        let queued = std::mem::take(&mut p.queued);
        p.dial_after = now.saturating_add(self.config.timing.redial_interval_ms);
        // Nothing to remember of a peer that is neither wanted nor pinned: its
        // entry would only grow the table.
        if !p.bootstrap && p.expected.is_none() && !p.is_member() {
            self.forget_peer(peer);
        }
        for j in joiners {
            self.complete(
                j,
                Completion::Joined(Err(Error::Unreachable {
                    peer,
                    reason: reason.clone(),
                })),
            );
        }
        for q in queued {
            self.fail_purpose(peer, q.purpose, Failure::Unreachable, now);
        }
    }

    /// The host learnt addresses of `peer` (Kademlia, identify, mDNS).
    pub fn handle_discovered(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: u64) {
        if peer == self.local_peer || self.bans.contains_key(&peer) {
            return;
        }
        let outbound = self.out_session_count();
        let known = self.peers.contains_key(&peer);
        if !known
            && (outbound >= self.config.limits.max_peers
                || self.peers.len() >= 4 * self.config.limits.max_peers)
        {
            return;
        }
        let p = self.peers.entry(peer).or_insert_with(|| Peer::new(peer));
        for a in addrs {
            if !p.addrs.contains(&a) && p.addrs.len() < 8 {
                p.addrs.push(a);
            }
        }
        if !p.connected && now >= p.dial_after && outbound < self.config.limits.max_peers {
            let addrs = p.addrs.clone();
            p.dial_after = now.saturating_add(self.config.timing.redial_interval_ms);
            self.push(Action::Dial { peer, addrs });
        }
    }

    /// The host's codec refused an inbound stream from `peer` before a request
    /// could be read.
    pub fn handle_inbound_problem(&mut self, peer: PeerId, problem: InboundProblem, now: u64) {
        let reason = match problem {
            InboundProblem::Oversized => CutOffReason::Oversized,
            InboundProblem::Malformed => CutOffReason::Malformed,
        };
        self.cut_off(peer, reason, now);
    }

    pub(super) fn dial_bootstrap(&mut self, now: u64) {
        for addr in self.config.bootstrap.clone() {
            let Ok(peer) = addr.peer_id() else { continue };
            if peer == self.local_peer {
                continue;
            }
            let p = self.peers.entry(peer).or_insert_with(|| Peer::new(peer));
            p.bootstrap = true;
            p.expected = Some(addr.node);
            if !p.addrs.contains(&addr.addr) {
                p.addrs.push(addr.addr.clone());
            }
            if !p.connected {
                p.dial_after = now.saturating_add(self.config.timing.redial_interval_ms);
                self.push(Action::Dial {
                    peer,
                    addrs: vec![addr.addr],
                });
            }
        }
    }

    /// Dials bootstrap peers that are down, and directory members while the node
    /// holds fewer sessions than it wants.
    pub(super) fn redial(&mut self, now: u64) {
        let mut dials = Vec::new();
        for p in self.peers.values_mut() {
            if p.bootstrap && !p.connected && now >= p.dial_after {
                p.dial_after = now.saturating_add(self.config.timing.redial_interval_ms);
                dials.push((p.peer, p.addrs.clone()));
            }
        }
        let outbound = self.out_session_count();
        let want = self
            .config
            .limits
            .max_peers
            .saturating_sub(outbound + dials.len());
        if want > 0 {
            let mut candidates: Vec<(PeerId, Vec<Multiaddr>)> = self
                .directory
                .members()
                .values()
                .filter(|m| m.peer != self.local_peer && !m.addrs.is_empty())
                .filter(|m| {
                    self.peers
                        .get(&m.peer)
                        .is_none_or(|p| !p.connected && now >= p.dial_after)
                })
                .filter(|m| !self.bans.contains_key(&m.peer))
                .map(|m| (m.peer, m.addrs.clone()))
                .collect();
            shuffle(&mut candidates, &mut self.rng);
            for (peer, addrs) in candidates.into_iter().take(want.min(4)) {
                let p = self.peers.entry(peer).or_insert_with(|| Peer::new(peer));
                p.dial_after = now.saturating_add(self.config.timing.redial_interval_ms);
                dials.push((peer, addrs));
            }
        }
        for (peer, addrs) in dials {
            self.push(Action::Dial { peer, addrs });
        }
        // Connected peers this node holds no session with (a failed handshake,
        // or a connection the peer opened): try again.
        let retry: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.connected && p.out.is_none() && p.initiator.is_none())
            .map(|p| p.peer)
            .collect();
        for peer in retry {
            if self.wants_outbound(&peer, now) {
                self.start_handshake(peer, now);
            }
        }
    }

    pub(super) fn out_session_count(&self) -> usize {
        self.peers.values().filter(|p| p.out.is_some()).count()
    }

    /// Handshakes this node runs as initiator.
    fn pending_outbound(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.initiator.is_some())
            .count()
    }

    /// Handshakes peers run towards this node.
    pub(super) fn pending_inbound(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.responder.is_some())
            .count()
    }

    fn wants_outbound(&self, peer: &PeerId, now: u64) -> bool {
        let Some(p) = self.peers.get(peer) else {
            return false;
        };
        if !p.connected || p.out.is_some() || p.initiator.is_some() {
            return false;
        }
        if !p.joiners.is_empty() {
            return true;
        }
        // Every connection carries a session each way: `max_peers` bounds how
        // many connections this node opens, not whom it answers, so a node that
        // others dialled can still be asked by them and ask them.
        now >= p.handshake_after
            && self.pending_outbound() < self.config.limits.max_pending_handshakes
    }

    // --- Joining ---

    pub(super) fn join(&mut self, command: CommandId, addr: PeerAddress, now: u64) {
        let peer = match addr.peer_id() {
            Ok(peer) => peer,
            Err(e) => return self.complete(command, Completion::Joined(Err(e))),
        };
        if peer == self.local_peer {
            return self.complete(
                command,
                Completion::Joined(Err(Error::BadAddress {
                    addr: addr.addr.to_string(),
                    reason: "that is this node".into(),
                })),
            );
        }
        if self.bans.contains_key(&peer) {
            return self.complete(
                command,
                Completion::Joined(Err(Error::Unreachable {
                    peer,
                    reason: "the peer is banned for abuse".into(),
                })),
            );
        }
        let p = self.peers.entry(peer).or_insert_with(|| Peer::new(peer));
        if let Some(out) = &p.out {
            let token = out.session.token.clone();
            let ok = p.node == Some(addr.node);
            return self.complete(
                command,
                Completion::Joined(if ok {
                    Ok(token)
                } else {
                    Err(Error::WrongIdentity {
                        peer,
                        expected: addr.node,
                    })
                }),
            );
        }
        p.expected = Some(addr.node);
        p.joiners.push(command);
        if !p.addrs.contains(&addr.addr) {
            p.addrs.push(addr.addr.clone());
        }
        if p.connected {
            if p.initiator.is_none() {
                self.start_handshake(peer, now);
            }
        } else {
            self.push(Action::Dial {
                peer,
                addrs: vec![addr.addr],
            });
        }
    }

    fn start_handshake(&mut self, peer: PeerId, now: u64) {
        let trust = {
            let Some(p) = self.peers.get(&peer) else {
                return;
            };
            let expected = p.expected.or_else(|| self.directory.node_of_peer(&peer));
            match expected {
                Some(node) => ResponderTrust::Only(vec![node]),
                None => ResponderTrust::Any,
            }
        };
        let mut config =
            InitiatorConfig::new(self.config.identity.clone(), self.config.federation, trust);
        config.capabilities = self.config.capabilities;
        config.admission = self.config.admission_proof.clone();
        config.timeout_ms = self.config.timing.handshake_timeout_ms;
        config.channel_mode = Mode::Datagram;
        let binding = channel_binding(&self.local_peer, &peer);
        let mut machine = match Initiator::new(Arc::new(config), &binding, now, &mut self.rng) {
            Ok(m) => m,
            Err(e) => {
                self.handshake_failed(peer, Direction::Outbound, e, now);
                return;
            }
        };
        let Some(hello) = machine.poll_transmit() else {
            return;
        };
        self.next_attempt += 1;
        let attempt = self.next_attempt;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.initiator = Some(Handshaking {
                machine,
                finishing: false,
                attempt,
            });
        }
        self.send_raw(
            peer,
            Protocol::Handshake,
            hello,
            None,
            Purpose::Hello(attempt),
        );
    }

    /// Whether this node's admission policy admits `identity` (with the
    /// admission proof of its directory record, if the directory has one).
    fn admits(&self, identity: &PublicIdentity, now: u64) -> bool {
        if self.revoked_members.contains(&identity.node_id().0) {
            return false;
        }
        let proof = self.directory.admission_proof(&identity.node_id());
        self.config
            .admission
            .admit(identity, &proof, &self.config.federation, now)
            .is_ok()
    }

    fn send_raw(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        payload: Vec<u8>,
        session: Option<[u8; SESSION_ID_LEN]>,
        purpose: Purpose,
    ) -> OutboundId {
        let id = self.next_outbound_id();
        self.outbound.insert(
            id,
            Pending {
                peer,
                session,
                purpose,
            },
        );
        self.stats.requests_sent += 1;
        self.push(Action::Send {
            peer,
            protocol,
            id,
            payload,
        });
        id
    }

    fn on_handshake_response(&mut self, peer: PeerId, purpose: &Purpose, bytes: &[u8], now: u64) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        // An answer to an earlier attempt, or to the other step, is stale.
        let current = p.initiator.as_ref().is_some_and(|hs| match purpose {
            Purpose::Hello(a) => hs.attempt == *a && !hs.finishing,
            Purpose::Finish(a) => hs.attempt == *a && hs.finishing,
            _ => false,
        });
        if !current {
            return;
        }
        let Some(mut hs) = p.initiator.take() else {
            return;
        };
        if let Err(e) = hs.machine.handle_input(bytes, now) {
            self.handshake_failed(peer, Direction::Outbound, e, now);
            return;
        }
        if !hs.finishing {
            let Some(finish) = hs.machine.poll_transmit() else {
                return;
            };
            hs.finishing = true;
            let attempt = hs.attempt;
            p.initiator = Some(hs);
            self.send_raw(
                peer,
                Protocol::Handshake,
                finish,
                None,
                Purpose::Finish(attempt),
            );
            return;
        }
        let Some(HsEvent::Established(session)) = hs.machine.poll_event() else {
            return;
        };
        if ed25519_key_of(&peer).as_ref() != Some(session.peer.ed25519_bytes()) {
            self.handshake_failed(
                peer,
                Direction::Outbound,
                fed_handshake::Error::UnexpectedPeer,
                now,
            );
            self.cut_off(peer, CutOffReason::IdentityMismatch, now);
            return;
        }
        let node = session.peer.node_id();
        let expected = self.peers.get(&peer).and_then(|p| p.expected);
        if expected.is_some_and(|e| e != node) {
            // Joined through a handshake that started before the caller pinned
            // the node id: the peer is not who the caller expected.
            self.handshake_failed(
                peer,
                Direction::Outbound,
                fed_handshake::Error::UnexpectedPeer,
                now,
            );
            return;
        }
        // This node's policy decides whom it takes as a member in this direction
        // too: a peer the user pinned (a join target or bootstrap node), or one
        // the policy admits. Anyone else gets no session from this node.
        if (expected != Some(node) && !self.admits(&session.peer, now))
            || self.revoked_members.contains(&node.0)
        {
            self.handshake_failed(
                peer,
                Direction::Outbound,
                fed_handshake::Error::NotAdmitted("the peer is not admitted by this node's policy"),
                now,
            );
            if let Some(p) = self.peers.get_mut(&peer) {
                p.handshake_after = now.saturating_add(NOT_ADMITTED_BACKOFF_MS);
            }
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let id = session_id(&session);
        let token = session.token.clone();
        let limits = token.body().capabilities.limits;
        let renew_at = if self.config.timing.renew_tokens {
            let expires = token.body().expires_at;
            Some(now.saturating_add(expires.saturating_sub(now) / 4 * 3))
        } else {
            None
        };
        p.identity = Some(session.peer.clone());
        p.node = Some(node);
        p.handshake_after = 0;
        let previous = p.out.take();
        let renewal = previous.is_some();
        p.out_prev = previous;
        p.join_retries = 0;
        p.out = Some(OutSession {
            session,
            id,
            renew_at,
            bucket: TokenBucket::new(limits.requests_per_second, now),
            in_flight: 0,
        });
        let joiners = std::mem::take(&mut p.joiners);
        let queued = std::mem::take(&mut p.queued);
        self.by_node.insert(node, peer);
        self.stats.handshakes_completed += 1;
        self.commit_out_session(peer, node, renewal, now);
        for j in joiners {
            self.complete(j, Completion::Joined(Ok(token.clone())));
        }
        for q in queued {
            if q.expires > now {
                self.send_sealed(peer, q.protocol, &q.plaintext, q.purpose, now);
            } else {
                self.fail_purpose(peer, q.purpose, Failure::Timeout, now);
            }
        }
        if !renewal {
            self.event(MeshEvent::PeerJoined {
                node,
                peer,
                direction: Direction::Outbound,
            });
            // A new member: bring both maps up to date with it now.
            self.sync_with(peer, now, false);
        }
    }

    fn handshake_failed(
        &mut self,
        peer: PeerId,
        direction: Direction,
        error: fed_handshake::Error,
        now: u64,
    ) {
        self.stats.handshakes_failed += 1;
        tracing::info!(%peer, ?direction, %error, "handshake failed");
        let reason = error.to_string();
        let mut joiners = Vec::new();
        let mut queued = VecDeque::new();
        let mut expected = None;
        if let Some(p) = self.peers.get_mut(&peer) {
            match direction {
                Direction::Outbound => {
                    p.initiator = None;
                    p.join_retries = 0;
                    p.handshake_after = now.saturating_add(self.config.timing.redial_interval_ms);
                    joiners = std::mem::take(&mut p.joiners);
                    queued = std::mem::take(&mut p.queued);
                    expected = p.expected;
                    // A failed renewal: the current session still works; try again.
                    if let Some(out) = &mut p.out
                        && self.config.timing.renew_tokens
                    {
                        out.renew_at = Some(p.handshake_after);
                    }
                }
                Direction::Inbound => p.responder = None,
            }
        }
        let error = Arc::new(error);
        for j in joiners {
            let e = match (&*error, expected) {
                (fed_handshake::Error::UnexpectedPeer, Some(expected)) => {
                    Error::WrongIdentity { peer, expected }
                }
                _ => Error::Handshake {
                    peer,
                    source: error.clone(),
                },
            };
            self.complete(j, Completion::Joined(Err(e)));
        }
        for q in queued {
            self.fail_purpose(peer, q.purpose, Failure::Unreachable, now);
        }
        self.event(MeshEvent::JoinFailed {
            peer,
            direction,
            reason,
        });
    }

    fn on_handshake_request(&mut self, peer: PeerId, id: InboundId, bytes: &[u8], now: u64) {
        let is_hello = bytes.len() > 5 && bytes[..4] == fed_handshake::MAGIC && bytes[5] == 1;
        let has_responder = self.peers.get(&peer).is_some_and(|p| p.responder.is_some());
        if is_hello || !has_responder {
            let has_session = self.peers.get(&peer).is_some_and(|p| p.inb.is_some());
            let inbound_sessions = self.peers.values().filter(|p| p.inb.is_some()).count();
            if !has_session && inbound_sessions >= self.config.limits.max_inbound_sessions {
                // Full: refuse without state; the initiator sees the stream close.
                self.push(Action::Respond {
                    id,
                    payload: Vec::new(),
                });
                return;
            }
            if !has_responder && self.pending_inbound() >= self.config.limits.max_pending_handshakes
            {
                // Evict the handshake that started first, rather than refuse:
                // an honest initiator answers within a round trip, so a flood of
                // hellos that are never finished cannot keep members out.
                let oldest = self
                    .peers
                    .values()
                    .filter_map(|p| p.responder.as_ref().map(|(_, t)| (*t, p.peer)))
                    .min();
                if let Some((_, evicted)) = oldest
                    && let Some(p) = self.peers.get_mut(&evicted)
                {
                    p.responder = None;
                }
            }
            let mut config = ResponderConfig::new(
                self.config.identity.clone(),
                self.config.federation,
                Arc::new(PeerBound {
                    inner: self.config.admission.clone(),
                    key: ed25519_key_of(&peer),
                }),
            );
            config.capabilities = self.config.capabilities;
            config.token_lifetime_ms = self.config.timing.token_lifetime_ms;
            config.timeout_ms = self.config.timing.handshake_timeout_ms;
            config.channel_mode = Mode::Datagram;
            let binding = channel_binding(&peer, &self.local_peer);
            match Responder::new(Arc::new(config), &binding, now, &mut self.rng) {
                Ok(r) => {
                    let p = self.peers.entry(peer).or_insert_with(|| Peer::new(peer));
                    p.responder = Some((Box::new(r), now));
                }
                Err(e) => {
                    self.push(Action::Respond {
                        id,
                        payload: Vec::new(),
                    });
                    self.handshake_failed(peer, Direction::Inbound, e, now);
                    return;
                }
            }
        }
        let Some((mut r, started)) = self.peers.get_mut(&peer).and_then(|p| p.responder.take())
        else {
            return;
        };
        let result = r.handle_input(bytes, now);
        let established = match r.poll_event() {
            Some(HsEvent::Established(session)) => Some(session),
            _ => None,
        };
        if let Some(session) = &established
            && self.revoked_members.contains(&session.peer.node_id().0)
        {
            // A revoked member gets no token: the final message (which carries
            // it) never leaves.
            self.push(Action::Respond {
                id,
                payload: Vec::new(),
            });
            self.handshake_failed(
                peer,
                Direction::Inbound,
                fed_handshake::Error::NotAdmitted("the member is revoked"),
                now,
            );
            return;
        }
        let answer = r.poll_transmit().unwrap_or_default();
        self.push(Action::Respond {
            id,
            payload: answer,
        });
        if let Err(e) = result {
            // A refusal by this node's policy is no fault of the peer's; anything
            // else (garbage, a bad signature, a replay) counts against it.
            let refused = matches!(e, fed_handshake::Error::NotAdmitted(_));
            self.handshake_failed(peer, Direction::Inbound, e, now);
            if !refused {
                self.strike(peer, now);
            }
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        match established {
            None => p.responder = Some((r, started)),
            Some(session) => {
                let node = session.peer.node_id();
                let sid = session_id(&session);
                let rate = session.token.body().capabilities.limits.requests_per_second;
                p.identity = Some(session.peer.clone());
                p.node = Some(node);
                p.inb_prev = p.inb.take();
                let renewal = p.inb_prev.is_some();
                p.inb = Some(InSession {
                    session,
                    id: sid,
                    bucket: TokenBucket::new(rate, now),
                    in_flight: 0,
                });
                self.by_node.insert(node, peer);
                self.stats.handshakes_completed += 1;
                self.commit_in_session(peer, node, renewal, now);
                if let Some(s) = self.peers.get(&peer).and_then(|p| p.inb.as_ref()) {
                    let body = s.session.token.body();
                    let (token, expires_at) = (body.id, body.expires_at);
                    self.event(MeshEvent::TokenIssued {
                        node,
                        token,
                        expires_at,
                    });
                }
                if !renewal {
                    self.event(MeshEvent::PeerJoined {
                        node,
                        peer,
                        direction: Direction::Inbound,
                    });
                }
            }
        }
    }

    // --- Requests and responses ---

    /// A request arrived from `peer` on `protocol`; answer it with
    /// [`Action::Respond`] under `id`.
    pub fn handle_request(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        id: InboundId,
        bytes: Vec<u8>,
        now: u64,
    ) {
        self.stats.requests_received += 1;
        if self.bans.contains_key(&peer) {
            return;
        }
        if protocol == Protocol::Handshake {
            self.on_handshake_request(peer, id, &bytes, now);
            return;
        }
        let Ok((sid, frame)) = split_sealed_request(&bytes) else {
            self.cut_off(peer, CutOffReason::Malformed, now);
            return;
        };
        let max_in_flight;
        let checked = {
            let Some(s) = self.peers.get_mut(&peer).and_then(|p| p.in_session(&sid)) else {
                // Honest peers land here once after this node forgot their session
                // (a restart); they handshake again. A peer that keeps sending
                // without a session is cut off by its strikes.
                self.refuse_plain(id, Refusal::NoSession);
                self.strike(peer, now);
                return;
            };
            max_in_flight = s.session.token.body().capabilities.limits.max_in_flight;
            match s.session.channel.open(frame) {
                Err(_) => None,
                Ok(plaintext) => Some((
                    plaintext,
                    check_token(
                        &s.session.token,
                        capability_for(protocol),
                        now,
                        &self.revoked,
                        &self.revoked_members,
                    ),
                )),
            }
        };
        let Some((plaintext, token_check)) = checked else {
            self.cut_off(peer, CutOffReason::Malformed, now);
            return;
        };
        self.after_open(
            peer,
            protocol,
            id,
            sid,
            &plaintext,
            token_check,
            max_in_flight,
            now,
        );
    }

    /// A request whose frame opened in session `sid`: authorisation, limits,
    /// then the protocol's handler.
    #[allow(clippy::too_many_arguments)] // the request and what opening it found
    fn after_open(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        id: InboundId,
        sid: [u8; SESSION_ID_LEN],
        plaintext: &[u8],
        token_check: Result<(), Refusal>,
        max_in_flight: u32,
        now: u64,
    ) {
        self.inbound.insert(
            id,
            InboundCtx {
                peer,
                session: sid,
                counted: false,
            },
        );
        if let Err(refusal) = token_check {
            self.refuse(id, refusal, now);
            return;
        }
        // The voting members' consensus traffic is paced by the protocol (batches,
        // windows, retransmission timers), not by the session's rate.
        let exempt = protocol == Protocol::Pbft && self.is_voter_peer(&peer);
        let limited = {
            let Some(s) = self.peers.get_mut(&peer).and_then(|p| p.in_session(&sid)) else {
                return;
            };
            if exempt {
                None
            } else if !s.bucket.take(now) {
                Some(Refusal::RateLimited)
            } else if s.in_flight >= max_in_flight {
                Some(Refusal::TooManyInFlight)
            } else {
                s.in_flight += 1;
                None
            }
        };
        if let Some(refusal) = limited {
            self.refuse(id, refusal, now);
            return;
        }
        if !exempt && let Some(ctx) = self.inbound.get_mut(&id) {
            ctx.counted = true;
        }
        match protocol {
            Protocol::Query => self.on_query_request(peer, id, plaintext, now),
            Protocol::Onion => self.on_onion_request(peer, id, plaintext, now),
            Protocol::Sync => self.on_sync_request(peer, id, plaintext, now),
            Protocol::Pbft => self.on_pbft_request(peer, id, plaintext, now),
            Protocol::Handshake => {}
        }
    }

    /// Fuzzing hook: a request from `peer` whose channel frame opened to
    /// `plaintext` in the peer's current inbound session. Everything after
    /// decryption (authorisation, limits, decoding, the handler) runs as in
    /// [`handle_request`](Self::handle_request).
    #[cfg(feature = "fuzzing")]
    pub fn handle_opened_request(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        id: InboundId,
        plaintext: &[u8],
        now: u64,
    ) {
        let Some(s) = self.peers.get(&peer).and_then(|p| p.inb.as_ref()) else {
            return;
        };
        let sid = s.id;
        let max_in_flight = s.session.token.body().capabilities.limits.max_in_flight;
        let check = check_token(
            &s.session.token,
            capability_for(protocol),
            now,
            &self.revoked,
            &self.revoked_members,
        );
        self.after_open(
            peer,
            protocol,
            id,
            sid,
            plaintext,
            check,
            max_in_flight,
            now,
        );
    }

    fn refuse_plain(&mut self, id: InboundId, refusal: Refusal) {
        *self
            .stats
            .refusals_sent
            .entry(refusal.as_str())
            .or_default() += 1;
        self.push(Action::Respond {
            id,
            payload: plain_refusal(refusal),
        });
    }

    /// Refuses an inbound request (sealed). A refusal the requester could have
    /// avoided (no capability, a bad token, a bad request) counts a strike
    /// against it; one caused by load (its rate, its requests outstanding, this
    /// node's capacity) does not: an honest node paces itself, and a flood is
    /// refused cheaply either way.
    pub(super) fn refuse(&mut self, id: InboundId, refusal: Refusal, now: u64) {
        *self
            .stats
            .refusals_sent
            .entry(refusal.as_str())
            .or_default() += 1;
        let peer = self.inbound.get(&id).map(|c| c.peer);
        self.respond_sealed(id, Kind::Refused, &wire::encode(&refusal));
        let load = matches!(
            refusal,
            Refusal::RateLimited | Refusal::TooManyInFlight | Refusal::Overloaded
        );
        if let Some(peer) = peer
            && !load
        {
            self.strike(peer, now);
        }
    }

    /// An authenticated peer sent a request that does not decode: it is cut off.
    pub(super) fn malformed_request(&mut self, id: InboundId, now: u64) {
        if let Some(peer) = self.inbound.get(&id).map(|c| c.peer) {
            self.cut_off(peer, CutOffReason::Malformed, now);
        }
        self.inbound.remove(&id);
    }

    /// Answers an inbound request, sealed in the session it came in. An answer
    /// too large for the session's channel is replaced by an `Overloaded`
    /// refusal, so the requester is never left waiting.
    pub(super) fn respond_sealed(&mut self, id: InboundId, kind: Kind, body: &[u8]) {
        let Some(ctx) = self.inbound.remove(&id) else {
            return;
        };
        let Some(s) = self
            .peers
            .get_mut(&ctx.peer)
            .and_then(|p| p.in_session(&ctx.session))
        else {
            return;
        };
        if ctx.counted {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        let sealed = s
            .session
            .channel
            .seal(&wire::envelope(kind, body))
            .or_else(|e| {
                tracing::warn!(peer = %ctx.peer, error = %e, "could not seal a response");
                let refusal = wire::envelope(Kind::Refused, &wire::encode(&Refusal::Overloaded));
                s.session.channel.seal(&refusal)
            });
        if let Ok(frame) = sealed {
            let mut payload = Vec::with_capacity(1 + frame.len());
            payload.push(wire::RESPONSE_SEALED);
            payload.extend_from_slice(&frame);
            self.push(Action::Respond { id, payload });
        }
    }

    /// The largest answer the inbound request `id` can take: its session's
    /// channel payload limit.
    pub(super) fn answer_limit(&self, id: InboundId) -> usize {
        let negotiated = self
            .inbound
            .get(&id)
            .and_then(|c| {
                let p = self.peers.get(&c.peer)?;
                [p.inb.as_ref(), p.inb_prev.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|s| s.id == c.session)
            })
            .map_or(fed_handshake::MAX_MESSAGE_LEN, |s| {
                s.session.capabilities.limits.max_message_bytes as usize
            });
        negotiated.clamp(
            fed_handshake::MAX_MESSAGE_LEN,
            fed_crypto::MAX_PAYLOAD_LIMIT,
        )
    }

    /// Whether this node holds an outbound session with `peer`.
    pub(super) fn can_send(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(Peer::has_out_session)
    }

    /// Peers this node can send requests to.
    pub(super) fn session_peers(&self) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.has_out_session())
            .map(|p| p.peer)
            .collect();
        out.sort();
        out
    }

    /// Seals `plaintext` in the outbound session with `peer` and sends it, if the
    /// token this node holds allows it: the protocol's capability, not expired,
    /// within its rate and requests outstanding. Otherwise the purpose fails at
    /// once with the refusal the peer would give (an expired token also starts
    /// a new handshake).
    pub(super) fn send_sealed(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        plaintext: &[u8],
        purpose: Purpose,
        now: u64,
    ) {
        let exempt = protocol == Protocol::Pbft && self.is_voter_peer(&self.local_peer);
        let sealed = match self.peers.get_mut(&peer).and_then(|p| p.out.as_mut()) {
            None => Err(Failure::Unreachable),
            Some(s) => {
                let body = s.session.token.body();
                let limits = body.capabilities.limits;
                if now >= body.expires_at {
                    Err(Failure::Refused(Refusal::TokenExpired))
                } else if !body.capabilities.allows(capability_for(protocol)) {
                    Err(Failure::Refused(Refusal::CapabilityDenied))
                } else if !exempt && s.in_flight >= limits.max_in_flight {
                    Err(Failure::Refused(Refusal::TooManyInFlight))
                } else if !exempt && !s.bucket.take(now) {
                    Err(Failure::Refused(Refusal::RateLimited))
                } else {
                    match s.session.channel.seal(plaintext) {
                        Err(_) => Err(Failure::Unreachable),
                        Ok(frame) => {
                            s.in_flight += 1;
                            let mut payload = Vec::with_capacity(SESSION_ID_LEN + frame.len());
                            payload.extend_from_slice(&s.id);
                            payload.extend_from_slice(&frame);
                            Ok((payload, s.id))
                        }
                    }
                }
            }
        };
        match sealed {
            Ok((payload, sid)) => {
                self.send_raw(peer, protocol, payload, Some(sid), purpose);
            }
            Err(failure) => {
                if failure == Failure::Refused(Refusal::TokenExpired) {
                    self.session_lost(peer, now);
                }
                self.fail_purpose(peer, purpose, failure, now);
            }
        }
    }

    /// A sealed request in session `sid` to `peer` is over: one less outstanding.
    fn settle(&mut self, peer: &PeerId, sid: Option<[u8; SESSION_ID_LEN]>) {
        if let Some(s) = sid.and_then(|sid| self.peers.get_mut(peer)?.out_session(&sid)) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }

    /// Sends now if a session exists, else queues the message (bounded) and sets
    /// up the session: dials the peer at `addrs` if it is not connected.
    #[allow(clippy::too_many_arguments)] // the message, where it goes, and until when
    pub(super) fn send_or_queue(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        plaintext: Vec<u8>,
        purpose: Purpose,
        addrs: Vec<Multiaddr>,
        expires: u64,
        now: u64,
    ) {
        if self.can_send(&peer) {
            self.send_sealed(peer, protocol, &plaintext, purpose, now);
            return;
        }
        if peer == self.local_peer || self.bans.contains_key(&peer) {
            self.fail_purpose(peer, purpose, Failure::Unreachable, now);
            return;
        }
        let max = self.config.limits.max_queued_per_peer;
        let p = self.peers.entry(peer).or_insert_with(|| Peer::new(peer));
        if p.queued.len() >= max {
            self.fail_purpose(peer, purpose, Failure::Unreachable, now);
            return;
        }
        p.queued.push_back(Queued {
            protocol,
            plaintext,
            purpose,
            expires,
        });
        for a in addrs {
            if !p.addrs.contains(&a) && p.addrs.len() < 8 {
                p.addrs.push(a);
            }
        }
        if p.connected {
            if p.initiator.is_none() {
                self.start_handshake(peer, now);
            }
        } else {
            let addrs = p.addrs.clone();
            self.push(Action::Dial { peer, addrs });
        }
    }

    /// The answer to an outbound request.
    pub fn handle_response(&mut self, id: OutboundId, bytes: Vec<u8>, now: u64) {
        let Some(pending) = self.outbound.remove(&id) else {
            return;
        };
        let peer = pending.peer;
        if matches!(pending.purpose, Purpose::Hello(_) | Purpose::Finish(_)) {
            self.on_handshake_response(peer, &pending.purpose, &bytes, now);
            return;
        }
        self.settle(&peer, pending.session);
        let current = self
            .peers
            .get(&peer)
            .and_then(|p| p.out.as_ref())
            .map(|s| s.id);
        let opened = match parse_response(&bytes) {
            Err(_) => Err(()),
            Ok(RawResponse::Refused(refusal)) => Ok(Err(refusal)),
            Ok(RawResponse::Sealed(frame)) => {
                let session = pending.session;
                let s = self
                    .peers
                    .get_mut(&peer)
                    .and_then(|p| session.and_then(|sid| p.out_session(&sid)));
                match s {
                    // The session ended meanwhile: the answer cannot be read.
                    None => Ok(Err(Refusal::Overloaded)),
                    Some(s) => match s.session.channel.open(frame) {
                        Ok(plaintext) => Ok(Ok(plaintext)),
                        Err(_) => Err(()),
                    },
                }
            }
        };
        let plaintext = match opened {
            Err(()) => {
                self.cut_off(peer, CutOffReason::Malformed, now);
                self.fail_purpose(peer, pending.purpose, Failure::Malformed, now);
                return;
            }
            Ok(Err(refusal)) => {
                self.refused_by_peer(peer, pending.session, current, refusal, now);
                let failure = if pending.session == current {
                    Failure::Refused(refusal)
                } else {
                    Failure::Unreachable
                };
                self.fail_purpose(peer, pending.purpose, failure, now);
                return;
            }
            Ok(Ok(plaintext)) => plaintext,
        };
        if let Ok((Kind::Refused, body)) = wire::open_envelope(&plaintext) {
            let refusal = wire::decode::<Refusal>(body, "refusal").unwrap_or(Refusal::Malformed);
            self.refused_by_peer(peer, pending.session, current, refusal, now);
            self.fail_purpose(peer, pending.purpose, Failure::Refused(refusal), now);
            return;
        }
        match pending.purpose {
            Purpose::Query(child) => self.on_query_response(peer, child, &plaintext, now),
            Purpose::Onion(o) => self.on_onion_response(peer, o, &plaintext, now),
            Purpose::Sync(map) => self.on_sync_response(peer, map, &plaintext, now),
            ref p @ (Purpose::Pbft | Purpose::Proof(..)) => {
                self.on_pbft_response(p, &plaintext, now);
            }
            Purpose::Hello(_) | Purpose::Finish(_) => {}
        }
    }

    /// The peer refused a request sealed in session `sent_in`. If that is the
    /// current session and the refusal says the session or its token is no
    /// good any more, handshake again.
    fn refused_by_peer(
        &mut self,
        peer: PeerId,
        sent_in: Option<[u8; SESSION_ID_LEN]>,
        current: Option<[u8; SESSION_ID_LEN]>,
        refusal: Refusal,
        now: u64,
    ) {
        let stale = matches!(
            refusal,
            Refusal::NoSession
                | Refusal::TokenExpired
                | Refusal::TokenRevoked
                | Refusal::TokenInvalid
        );
        if stale && sent_in.is_some() && sent_in == current {
            self.session_lost(peer, now);
        }
    }

    /// An outbound request failed in the host.
    pub fn handle_send_failed(&mut self, id: OutboundId, failure: SendFailure, now: u64) {
        let Some(pending) = self.outbound.remove(&id) else {
            return;
        };
        let peer = pending.peer;
        match pending.purpose {
            Purpose::Hello(attempt) | Purpose::Finish(attempt) => {
                let current = self
                    .peers
                    .get(&peer)
                    .and_then(|p| p.initiator.as_ref())
                    .is_some_and(|hs| hs.attempt == attempt);
                if !current {
                    return;
                }
                // The connection closed under the exchange, or its stream
                // broke (both sides dialling at once, say), while a join
                // waits: start again at once, twice at most, rather than fail
                // the join on a race.
                // (A responder that refuses a `finish` closes the stream: a
                // broken stream then is a refusal, not a race.)
                let transient = matches!(
                    (&failure, &pending.purpose),
                    (SendFailure::ConnectionClosed, _) | (SendFailure::Io(_), Purpose::Hello(_))
                );
                if transient
                    && !self.bans.contains_key(&peer)
                    && let Some(p) = self.peers.get_mut(&peer)
                    && !p.joiners.is_empty()
                    && p.join_retries < MAX_JOIN_RETRIES
                {
                    p.join_retries += 1;
                    p.initiator = None;
                    tracing::debug!(%peer, ?failure, "a join's handshake broke; starting again");
                    self.start_handshake(peer, now);
                    return;
                }
                let error = fed_handshake::Error::Malformed(match failure {
                    SendFailure::Timeout => "no answer from the peer",
                    SendFailure::ConnectionClosed => "the connection closed",
                    SendFailure::UnsupportedProtocol => {
                        "the peer does not speak the federation handshake"
                    }
                    SendFailure::Io(_) => "stream error",
                });
                self.handshake_failed(peer, Direction::Outbound, error, now);
            }
            purpose => {
                self.settle(&peer, pending.session);
                let f = match failure {
                    SendFailure::Timeout => Failure::Timeout,
                    _ => Failure::Unreachable,
                };
                self.fail_purpose(peer, purpose, f, now);
            }
        }
    }

    /// The peer no longer knows this node's session (it restarted): forget it and
    /// handshake again.
    fn session_lost(&mut self, peer: PeerId, now: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.out = None;
            p.out_prev = None;
            p.handshake_after = 0;
        }
        if self.wants_outbound(&peer, now) {
            self.start_handshake(peer, now);
        }
    }

    pub(super) fn fail_purpose(
        &mut self,
        peer: PeerId,
        purpose: Purpose,
        failure: Failure,
        now: u64,
    ) {
        match purpose {
            Purpose::Hello(_) | Purpose::Finish(_) => {}
            Purpose::Query(child) => self.on_query_child_failed(child, failure, now),
            Purpose::Onion(o) => self.on_onion_failed(peer, o, failure, now),
            Purpose::Sync(map) => self.on_sync_failed(peer, map, now),
            ref p @ (Purpose::Pbft | Purpose::Proof(..)) => self.on_pbft_failed(p, failure, now),
        }
    }

    // --- Abuse ---

    /// Counts a strike against `peer`; strikes are forgotten after
    /// [`STRIKE_MEMORY_MS`] without one, so only a peer that keeps misbehaving
    /// reaches `max_strikes` and is cut off.
    fn strike(&mut self, peer: PeerId, now: u64) {
        let max = self.config.limits.max_strikes;
        let out = self.peers.get_mut(&peer).is_some_and(|p| {
            if now.saturating_sub(p.last_strike) > STRIKE_MEMORY_MS {
                p.strikes = 0;
            }
            p.strikes += 1;
            p.last_strike = now;
            p.strikes >= max
        });
        if out {
            self.cut_off(peer, CutOffReason::Abuse, now);
        }
    }

    /// Disconnects and bans `peer`.
    pub(super) fn cut_off(&mut self, peer: PeerId, reason: CutOffReason, now: u64) {
        if self.bans.contains_key(&peer) {
            return;
        }
        tracing::warn!(%peer, reason = reason.as_str(), "cutting off peer");
        *self.stats.cut_off.entry(reason.as_str()).or_default() += 1;
        self.bans
            .insert(peer, now.saturating_add(self.config.limits.ban_ms));
        self.push(Action::Ban { peer });
        let node = self.peers.get(&peer).and_then(|p| p.node);
        self.inbound.retain(|_, c| c.peer != peer);
        self.handle_disconnected(peer, now);
        // A bootstrap or pinned peer keeps its entry (it is dialled again when
        // its ban ends); any other is forgotten.
        if self
            .peers
            .get(&peer)
            .is_some_and(|p| !p.bootstrap && p.expected.is_none())
        {
            self.forget_peer(peer);
        }
        self.event(MeshEvent::PeerCutOff { peer, node, reason });
    }

    pub(super) fn expire_bans(&mut self, now: u64) {
        let due: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            self.bans.remove(&peer);
            self.push(Action::Unban { peer });
        }
    }

    // --- Timers ---

    pub(super) fn peers_timeout(&mut self, now: u64) {
        let mut failed = Vec::new();
        let mut renew = Vec::new();
        let mut expired = Vec::new();
        for p in self.peers.values_mut() {
            if let Some(hs) = &mut p.initiator
                && let Err(e) = hs.machine.handle_timeout(now)
            {
                failed.push((p.peer, Direction::Outbound, e));
            }
            if let Some((r, _)) = &mut p.responder
                && let Err(e) = r.handle_timeout(now)
            {
                failed.push((p.peer, Direction::Inbound, e));
            }
            if let Some(s) = &mut p.out
                && s.renew_at.is_some_and(|t| t <= now)
            {
                s.renew_at = None;
                if p.connected && p.initiator.is_none() {
                    renew.push(p.peer);
                }
            }
            while p.queued.front().is_some_and(|q| q.expires <= now) {
                if let Some(q) = p.queued.pop_front() {
                    expired.push((p.peer, q.purpose));
                }
            }
        }
        for (peer, direction, e) in failed {
            self.handshake_failed(peer, direction, e, now);
        }
        for peer in renew {
            self.start_handshake(peer, now);
        }
        for (peer, purpose) in expired {
            self.fail_purpose(peer, purpose, Failure::Timeout, now);
        }
    }

    pub(super) fn peers_next_timeout(&self) -> Option<u64> {
        self.peers.values().filter_map(Peer::next_timeout).min()
    }
}

/// Fisher-Yates with the core's RNG.
pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut impl rand_chacha::rand_core::Rng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
