//! Configuration epochs (mesh.md §9): the voting membership changes only at a
//! checkpoint, by committed [`Operation::AddVoter`](super::commit::Operation::AddVoter)
//! and [`Operation::RemoveVoter`](super::commit::Operation::RemoveVoter).
//!
//! Epoch 0 is the genesis's: its members, bound to the genesis hash. When a
//! change commits, the ledger records the next epoch's voters and the epoch's
//! last sequence number `end` (the first checkpoint at or after the change);
//! every operation in a later batch of the epoch is a no-op with result `[3]`.
//! Once a checkpoint at or above `end` is stable, its certificate and the
//! replica state it certifies are the epoch's **link**: anyone who holds the
//! epoch's membership checks it (a quorum of CHECKPOINT signatures, the state's
//! digest) and derives the next epoch from the ledger in it, whose membership
//! is bound to the context
//! `hash(EPOCH_CONTEXT, [previous membership id, be64(epoch), ledger head])`.
//! The chain of links from the genesis is therefore verifiable offline, and a
//! proof made in one epoch verifies against that epoch's membership only.

use std::sync::Arc;

use fed_crypto::hash;
use fed_pbft::{CheckpointCert, Membership, ReplicaIndex};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use super::{
    commit::{CertifiedState, Ledger},
    labels,
};
use crate::{
    error::{Error, Result},
    wire,
};

/// Most links a chain (in a receipt, a message or the store) may hold.
pub const MAX_EPOCHS: usize = 1024;
/// Refused links remembered.
const REFUSED_LINKS: usize = 64;
/// How often at most a peer that seems to be in an older epoch is sent the
/// chain, and how often a node whose epoch is over asks for it.
pub(super) const NUDGE_INTERVAL_MS: u64 = 5_000;
/// After this long a peer is sent the chain again even if it did not grow.
const NUDGE_AGAIN_MS: u64 = 30_000;
/// Peers whose last chain push is remembered.
const MAX_NUDGED: usize = 4096;
/// How long a chain push waits for a session with its peer.
const CHAIN_PUSH_EXPIRY_MS: u64 = 10_000;

/// A configuration epoch: its number, its voting membership and where its
/// voters listen, and the ledger its replicas start from.
#[derive(Clone, Debug)]
pub struct Epoch {
    /// 0 for the genesis's, then one more per link.
    pub number: u64,
    /// The voting members, bound to the epoch's context.
    pub membership: Arc<Membership>,
    /// Where each voter listens, in replica order.
    pub addresses: Vec<Vec<Multiaddr>>,
    /// The ledger at the epoch's start: its replicas' initial application state.
    pub ledger: Ledger,
    /// Each voter's libp2p peer id, in replica order (made once: decoding an
    /// Ed25519 key per message sent was a twentieth of a client's time).
    peers: Vec<Option<PeerId>>,
}

/// What checking a link gives, besides the next epoch.
#[derive(Clone, Debug)]
pub struct LinkFacts {
    /// The certified checkpoint's sequence number (in the epoch that ended).
    pub seq: u64,
    /// The replicated client table there: whose requests the epoch executed.
    pub clients: Vec<(fed_pbft::ClientId, u64, fed_pbft::Outcome)>,
}

/// The largest membership fed-pbft's `config` allows (its worst-case
/// messages and operations must fit), at most 64, judged on the genesis's
/// parameters only (checkpoint interval, window, batch and operation sizes,
/// snapshot size) with fed-pbft's defaults for the rest: the ledger refuses a
/// change beyond it, which would leave the next epoch without replicas.
pub fn max_voters(config: &fed_pbft::Config) -> usize {
    // Only the genesis's parameters count (every replica has the same); the
    // rest are fed-pbft's defaults, whatever this node set locally.
    let mut genesis = fed_pbft::Config::default();
    genesis.checkpoint_interval = config.checkpoint_interval;
    genesis.window = config.window;
    genesis.max_batch_requests = config.max_batch_requests;
    genesis.max_batch_bytes = config.max_batch_bytes;
    genesis.max_operation_len = config.max_operation_len;
    genesis.max_snapshot_len = config.max_snapshot_len;
    let config = &genesis;
    let ids: Vec<_> = (0..fed_pbft::MAX_REPLICAS)
        .map(|i| {
            let mut seed = [0x4d; 32];
            seed[0] = i as u8;
            fed_crypto::Identity::from_seeds(&seed, None)
                .public()
                .clone()
        })
        .collect();
    (1..=ids.len())
        .rev()
        .find(|&n| Membership::new(ids[..n].to_vec()).is_ok_and(|m| config.validate(&m).is_ok()))
        .unwrap_or(1)
}

/// The membership context of epoch `number` following a membership `previous`
/// whose ledger ended with `head`.
pub fn epoch_context(previous: &Membership, number: u64, head: &[u8; 32]) -> [u8; 32] {
    hash(
        labels::EPOCH_CONTEXT,
        &[previous.id(), &number.to_be_bytes(), head],
    )
}

fn peers_of(membership: &Membership) -> Vec<Option<PeerId>> {
    (0..membership.len())
        .map(|i| {
            ReplicaIndex::try_from(i)
                .ok()
                .and_then(|i| membership.member(i))
                .and_then(super::peer_id_of_identity)
        })
        .collect()
}

impl Epoch {
    /// Epoch 0: the genesis's membership (bound to the genesis hash) and
    /// addresses. `checkpoint_interval` and `max_voters` are the ledger's
    /// configuration ([`Ledger::genesis`]; both only matter to replicas).
    pub fn genesis(
        membership: Arc<Membership>,
        addresses: Vec<Vec<Multiaddr>>,
        checkpoint_interval: u64,
        max_voters: usize,
    ) -> Self {
        let ledger = Ledger::genesis(&membership, checkpoint_interval, max_voters);
        Self {
            number: 0,
            peers: peers_of(&membership),
            membership,
            addresses,
            ledger,
        }
    }

    /// The peer id of voter `index`.
    pub fn peer(&self, index: ReplicaIndex) -> Option<PeerId> {
        self.peers.get(usize::from(index)).copied().flatten()
    }

    /// Checks `link` against this epoch and returns the next epoch.
    ///
    /// The link must be a checkpoint certificate of this epoch's membership
    /// above sequence 0 with the replica state it certifies (fed-pbft's
    /// [`certified_state`](fed_pbft::certified_state)), whose ledger is in this
    /// epoch, has a membership change committed, and whose `end` is at or below
    /// the certificate's sequence number.
    pub fn follow(&self, link: &CertifiedState) -> Result<(Epoch, LinkFacts)> {
        let bad = |why: String| Error::Consensus(format!("epoch {} link: {why}", self.number + 1));
        let cert: CheckpointCert =
            wire::decode(&link.cert, "checkpoint certificate").map_err(|e| bad(e.to_string()))?;
        let state = fed_pbft::certified_state(&self.membership, &cert, &link.state)
            .map_err(|e| bad(e.to_string()))?;
        let ledger = Ledger::from_snapshot(&state.app).map_err(|e| bad(e.to_string()))?;
        if ledger.epoch != self.number {
            return Err(bad(format!("the ledger is in epoch {}", ledger.epoch)));
        }
        match ledger.end {
            Some(end) if end <= cert.seq => {}
            _ => return Err(bad("the epoch has not ended at this checkpoint".into())),
        }
        let mut next = ledger
            .next_epoch()
            .ok_or_else(|| bad("no membership change".into()))?;
        next.configure(self.ledger.interval(), self.ledger.max_voters());
        let identities = next
            .voters
            .iter()
            .map(|v| fed_crypto::PublicIdentity::from_bytes(&v.identity))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let number = self.number + 1;
        let context = epoch_context(&self.membership, number, &next.head);
        let membership = Membership::with_context(identities.clone(), context)
            .map_err(|e| bad(e.to_string()))?;
        // A voter's addresses: the ones its addition gave, else those it had
        // in this epoch (the genesis's voters keep the genesis's).
        let addresses = next
            .voters
            .iter()
            .zip(&identities)
            .map(|(v, id)| {
                let given = v.multiaddrs();
                if !given.is_empty() {
                    return given;
                }
                self.membership
                    .index_of(&id.node_id())
                    .and_then(|i| self.addresses.get(usize::from(i)).cloned())
                    .unwrap_or_default()
            })
            .collect();
        Ok((
            Epoch {
                number,
                peers: peers_of(&membership),
                membership: Arc::new(membership),
                addresses,
                ledger: next,
            },
            LinkFacts {
                seq: cert.seq,
                clients: state.clients,
            },
        ))
    }

    /// Follows every link of `chain` from this epoch; the epoch at its end.
    pub fn follow_all(&self, chain: &[CertifiedState]) -> Result<Epoch> {
        if chain.len() > MAX_EPOCHS {
            return Err(Error::Consensus(format!(
                "a chain of {} epochs exceeds {MAX_EPOCHS}",
                chain.len()
            )));
        }
        let mut epoch = self.clone();
        for link in chain {
            epoch = epoch.follow(link)?.0;
        }
        Ok(epoch)
    }
}

// ---------------------------------------------------------------------------
// The node's side: entering the next epoch.
// ---------------------------------------------------------------------------

use fed_pbft::Outcome;

use super::{
    Action, Completion, Core, StateWrite,
    commit::{
        ENVELOPE_SLACK, EpochChain, ProofHunt, Queued, Revocation, chained_index, new_replica,
    },
    peers::Purpose,
};
use crate::{
    types::MeshEvent,
    wire::{Kind, Protocol},
};

/// One link followed: the epoch it leads to, the link, what it showed.
type Step = (Epoch, CertifiedState, LinkFacts);

impl Core {
    /// The replica's stable checkpoint moved (or a state transfer installed
    /// one): if its epoch ended at or below it, the checkpoint and its state
    /// are the epoch's link, and the node enters the next epoch.
    pub(super) fn check_epoch_end(&mut self, now: u64) {
        let Some(r) = self.commit.as_ref().and_then(|c| c.replica.as_ref()) else {
            return;
        };
        let Some((cert, state)) = r.stable_state() else {
            return;
        };
        // The replica's ledger is at or after the checkpoint; its `end` is set
        // once a change took effect in this epoch.
        if r.app().end.is_none_or(|end| end > cert.seq) {
            return;
        }
        let link = CertifiedState {
            cert: serde_bytes::ByteBuf::from(wire::encode(cert)),
            state: serde_bytes::ByteBuf::from(state.to_vec()),
        };
        let Some(c) = self.commit.as_ref() else {
            return;
        };
        match c.cur().follow(&link) {
            Ok((next, facts)) => self.enter_epochs(vec![(next, link, facts)], now),
            // Our own certified state: only a fault gets here.
            Err(e) => tracing::error!(error = %e, "this replica's own epoch link does not check"),
        }
    }

    /// A kind-14 message from `peer`: links of the epochs after the genesis,
    /// from epoch `first` on. Those beyond this node's epoch are checked in
    /// order and the node enters the last one it reaches; links it has are
    /// skipped unchecked. A peer whose chain is shorter than this node's (it
    /// sent no links, or fewer) is sent this node's.
    pub(super) fn on_epoch_chain(&mut self, peer: PeerId, body: &[u8], now: u64) -> Result<()> {
        let chain: EpochChain =
            wire::decode(body, "epoch chain").map_err(|e| Error::Consensus(e.to_string()))?;
        if chain.links.len() > MAX_EPOCHS {
            return Err(Error::Consensus("an epoch chain that is too long".into()));
        }
        let Some(c) = self.commit.as_ref() else {
            return Ok(());
        };
        let have = c.chain.len() as u64;
        let theirs = chain.first.saturating_add(chain.links.len() as u64);
        let mut epoch = c.cur().clone();
        let mut steps: Vec<Step> = Vec::new();
        let mut refused = None;
        for (i, link) in chain.links.into_iter().enumerate() {
            let from = chain.first.saturating_add(i as u64);
            if from < have {
                continue;
            }
            if from > have + steps.len() as u64 {
                // Links this node cannot check yet: it gets the whole chain
                // at its next session, or when it asks.
                break;
            }
            // Remembered by the link's whole bytes: a forgery naming a
            // genuine link's checkpoint cannot get the genuine one refused.
            let key = hash(labels::REFUSED_LINK, &[&link.cert, &link.state]);
            if c.refused_links.contains(&key) {
                refused = Some(Error::Consensus("a link refused before".into()));
                break;
            }
            match epoch.follow(&link) {
                Ok((next, facts)) => {
                    epoch = next.clone();
                    steps.push((next, link, facts));
                }
                Err(e) => {
                    refused = Some(e);
                    if let Some(c) = self.commit.as_mut() {
                        if c.refused_links.len() >= REFUSED_LINKS {
                            c.refused_links.pop_front();
                        }
                        c.refused_links.push_back(key);
                    }
                    break;
                }
            }
        }
        if !steps.is_empty() {
            self.enter_epochs(steps, now);
        }
        if theirs < self.commit.as_ref().map_or(0, |c| c.chain.len() as u64) {
            self.nudge_epoch(peer, true, now);
        }
        refused.map_or(Ok(()), Err)
    }

    /// Sends `peer` this node's chain because it seems to be in an older
    /// epoch (`asked`: it said so; otherwise it sent PBFT input that does not
    /// authenticate here). At most once per [`NUDGE_INTERVAL_MS`] per peer,
    /// and unasked only when the chain grew since the last one sent to it or
    /// [`NUDGE_AGAIN_MS`] passed.
    pub(super) fn nudge_epoch(&mut self, peer: PeerId, asked: bool, now: u64) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        let len = c.chain.len();
        if len == 0 {
            return;
        }
        if let Some(&(at, sent)) = c.nudged.get(&peer) {
            let soon = now < at.saturating_add(NUDGE_INTERVAL_MS);
            let same = !asked && sent == len && now < at.saturating_add(NUDGE_AGAIN_MS);
            if soon || same {
                return;
            }
        }
        if c.nudged.len() >= MAX_NUDGED && !c.nudged.contains_key(&peer) {
            c.nudged
                .retain(|_, (at, _)| now < at.saturating_add(NUDGE_AGAIN_MS));
            if c.nudged.len() >= MAX_NUDGED {
                return;
            }
        }
        c.nudged.insert(peer, (now, len));
        if let Some(message) = self.chain_message(0) {
            self.send_chain(peer, message, now);
        }
    }

    /// A client of this node was told its epoch is over and the node has not
    /// entered the next one: it asks the voters of its epoch for the chain
    /// (a kind 14 without links), every [`NUDGE_INTERVAL_MS`].
    pub(super) fn ask_for_chain(&mut self, now: u64) {
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        if !c.epoch_over || c.ask_chain_at > now {
            return;
        }
        c.ask_chain_at = now.saturating_add(NUDGE_INTERVAL_MS);
        let epoch = c.cur().clone();
        let message = wire::envelope(
            Kind::EpochChain,
            &wire::encode(&EpochChain {
                first: epoch.number,
                links: Vec::new(),
            }),
        );
        let voters: Vec<PeerId> = epoch
            .membership
            .members()
            .iter()
            .filter(|m| m.node_id() != self.local_node)
            .filter_map(|m| self.peer_of(&m.node_id()))
            .collect();
        for peer in voters {
            self.send_chain(peer, message.clone(), now);
        }
    }

    /// The links from epoch `from` on as a kind-14 message; `None` if there
    /// are none, or if they do not fit a session message (warned). The whole
    /// chain's message is built once per chain length.
    fn chain_message(&mut self, from: usize) -> Option<Vec<u8>> {
        let limit = (self.config.capabilities.limits.max_message_bytes as usize)
            .saturating_sub(ENVELOPE_SLACK);
        let c = self.commit.as_mut()?;
        let len = c.chain.len();
        if from == 0
            && let Some((cached, message)) = &c.chain_cache
            && *cached == len
        {
            return Some(message.to_vec());
        }
        let links = c.chain.get(from..).filter(|l| !l.is_empty())?;
        let message = wire::envelope(
            Kind::EpochChain,
            &wire::encode(&EpochChain {
                first: from as u64,
                links: links.to_vec(),
            }),
        );
        if message.len() > limit {
            tracing::warn!(
                len = message.len(),
                limit,
                "the epoch chain does not fit a session message: members that missed an epoch change will not learn it"
            );
            return None;
        }
        if from == 0 {
            c.chain_cache = Some((len, Arc::new(message.clone())));
        }
        Some(message)
    }

    /// Sends a kind-14 message to `peer`, queued until this node's session
    /// with it is up (for [`CHAIN_PUSH_EXPIRY_MS`]).
    fn send_chain(&mut self, peer: PeerId, message: Vec<u8>, now: u64) {
        self.send_or_queue(
            peer,
            Protocol::Pbft,
            message,
            Purpose::Pbft,
            Vec::new(),
            now.saturating_add(CHAIN_PUSH_EXPIRY_MS),
            now,
        );
    }

    /// Sends the whole chain of links (kind 14) to `peer`, if there is one.
    pub(super) fn push_epoch_chain(&mut self, peer: PeerId, now: u64) {
        if let Some(message) = self.chain_message(0) {
            if let Some(c) = self.commit.as_mut() {
                let len = c.chain.len();
                c.nudged.insert(peer, (now, len));
            }
            self.send_chain(peer, message, now);
        }
    }

    /// Enters the epochs `steps` lead to, one link after the other (each
    /// already checked): stores each link and drops the old replica's state
    /// (one synced write per link, before anything the new epoch sends);
    /// then, for the last epoch only, starts this node's replica if it votes
    /// there, rebuilds the client slots for the new membership, settles the
    /// commits in flight by the first link's client table (executed: its
    /// proof is fetched from the old epoch's replicas; not executed, or after
    /// the epoch's end: submitted again), enforces the last ledger's
    /// revocations (and lifts those of its voters it enforced from pushed
    /// batches), and tells every peer.
    fn enter_epochs(&mut self, steps: Vec<Step>, now: u64) {
        let identity = self.config.identity.clone();
        let node = self.local_node;
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        let Some(first_facts) = steps.first().map(|(_, _, f)| f.clone()) else {
            return;
        };
        let ended = c.cur().number;
        let mut changes = Vec::new();
        for (next, link, facts) in steps {
            tracing::info!(
                epoch = next.number,
                voters = next.membership.len(),
                at = facts.seq,
                "entering configuration epoch"
            );
            self.actions.push_back(Action::EnterEpoch {
                epoch: next.number,
                link: wire::encode(&link),
            });
            changes.push(MeshEvent::EpochChanged {
                epoch: next.number,
                membership: *next.membership.id(),
                voters: next
                    .membership
                    .members()
                    .iter()
                    .map(|m| m.node_id())
                    .collect(),
            });
            c.chain.push(link);
            // An ended epoch is kept for its proofs and its rule of who may
            // revoke; not its revocations (the next epoch's ledger has them).
            if let Some(last) = c.epochs.last_mut() {
                let mut old = (**last).clone();
                old.ledger.revoked_tokens.clear();
                old.ledger.revoked_members.clear();
                *last = Arc::new(old);
            }
            c.epochs.push(Arc::new(next));
        }
        let next = c.cur().clone();
        let number = next.number;
        c.epoch_over = false;
        c.certified = None;
        c.certified_taken = 0;
        c.clients.clear();
        // Ticks of the epoch that ended are done with.
        c.queue.retain(|q| q.command.is_some());
        c.replica = match next.membership.index_of(&node) {
            None => None,
            Some(_) => match new_replica(&c.config, &identity, &next, None, now) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start this node's replica in the new epoch");
                    None
                }
            },
        };
        // Commits in flight in the epoch that ended.
        let mut requeue: Vec<Queued> = std::mem::take(&mut c.deferred);
        let mut failed = Vec::new();
        let mut hunts = Vec::new();
        for (i, s) in c.slots.iter_mut().enumerate() {
            let Some(f) = s.busy.as_mut() else {
                continue;
            };
            if f.proof.is_some() && f.epoch < number {
                // Executed in its epoch: its proof comes from that epoch's replicas.
                continue;
            }
            let record = first_facts
                .clients
                .iter()
                .find(|(id, _, _)| *id == s.id)
                .filter(|(_, ts, _)| f.epoch == ended && *ts == f.timestamp);
            match record.map(|(_, _, o)| o) {
                Some(Outcome::Executed(result)) if chained_index(result).is_some() => {
                    f.proof =
                        chained_index(result).map(|index| ProofHunt::asking_now(index, i, now));
                    hunts.push(i);
                }
                Some(Outcome::Executed(result)) if result.as_slice() != [3] => {
                    failed.push(f.command);
                    s.busy = None;
                }
                Some(Outcome::Refused) => {
                    failed.push(f.command);
                    s.busy = None;
                }
                // Not executed, or after the epoch's end: in the next epoch
                // (a tick is done with).
                _ => {
                    if f.command.is_some() {
                        requeue.push(Queued {
                            command: f.command,
                            update: f.update.clone(),
                            deadline: f.deadline,
                        });
                    }
                    s.busy = None;
                }
            }
        }
        for q in requeue.into_iter().rev() {
            c.queue.push_front(q);
        }
        if let Err(e) = c.new_clients(&node, &mut self.rng, now) {
            tracing::error!(error = %e, "cannot rebuild the client slots in the new epoch");
        }
        for command in failed.into_iter().flatten() {
            self.complete(
                command,
                Completion::Committed(Err(Error::Consensus(
                    "the replicas did not accept the update".into(),
                ))),
            );
        }
        // Keys from the sessions there are: slots' keys for the new voters,
        // the new replica's keys for every member's slots.
        let peers: Vec<(PeerId, fed_crypto::NodeId, bool, bool)> = self
            .peers
            .values()
            .filter_map(|p| {
                Some((
                    p.peer,
                    p.node?,
                    p.out_session_ref().is_some(),
                    p.in_session_ref().is_some(),
                ))
            })
            .collect();
        for (peer, node, out, inb) in &peers {
            if *out {
                self.rekey_slots(*peer, *node);
            }
            if *inb {
                self.register_client_keys(*peer, *node);
            }
        }
        let voters: Vec<fed_crypto::NodeId> = next
            .membership
            .members()
            .iter()
            .map(|m| m.node_id())
            .collect();
        // The ledger is certified: its revocations hold on every member, and
        // its voters are not revoked (a member that does not vote may have
        // applied a revocation the ledger refused, from a pushed batch).
        self.apply_ledger_revocations(&next.ledger, now);
        let lifted: Vec<Revocation> = voters
            .iter()
            .filter(|n| self.revoked_members.contains(&n.0))
            .filter(|n| !next.ledger.revoked_members.contains(&n.0))
            .map(|n| Revocation::Member(*n))
            .collect();
        for r in &lifted {
            if let Revocation::Member(n) = r {
                self.revoked_members.remove(&n.0);
                // The ban the revocation put on its connection ends too.
                if let Some(peer) = next.membership.index_of(n).and_then(|i| next.peer(i))
                    && self.bans.remove(&peer).is_some()
                {
                    self.push(Action::Unban { peer });
                }
            }
        }
        if !lifted.is_empty() {
            self.store_state(lifted.into_iter().map(StateWrite::Unrevoked).collect());
        }
        for change in changes {
            self.event(change);
        }
        // Peers with a session: the new links (those in the epoch that ended
        // need only them; others ask or get the chain at their next session).
        if let Some(message) = self.chain_message(usize::try_from(ended).unwrap_or(usize::MAX)) {
            for (peer, _, out, inb) in peers {
                if out || inb {
                    self.send_chain(peer, message.clone(), now);
                }
            }
        }
        for i in hunts {
            self.hunt_proof(i, now);
        }
        self.pump_commits(now);
    }
}

#[cfg(test)]
mod tests {
    use fed_crypto::Identity;
    use fed_pbft::{ClientKey, ClientKeys, Config, Event, Message, Replica};

    use super::*;
    use crate::{
        core::commit::{CommitReceipt, Operation, Voter, client_id, encode_operation},
        substrate::StateUpdate,
    };

    fn config() -> Config {
        let mut c = Config::default();
        c.max_batch_requests = 1;
        c.checkpoint_interval = 2;
        c.window = 4;
        c
    }

    /// An executed batch, and the request's timestamp.
    type Ran = (fed_pbft::Executed, u64);

    /// Runs `ops` through `replica` as `client` (one batch each); returns the
    /// executed batches, and the replies' results.
    fn run(
        replica: &mut Replica<Ledger>,
        keys: &ClientKeys,
        first_ts: u64,
        ops: &[Operation],
    ) -> (Vec<Ran>, Vec<Vec<u8>>) {
        let mut executed = Vec::new();
        let mut results = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let ts = first_ts + i as u64;
            let request = keys.request(ts, encode_operation(op));
            replica
                .handle_request(&Message::Request(request).encode().unwrap(), ts)
                .unwrap();
            while let Some(e) = replica.poll_event() {
                match e {
                    Event::Executed(x) => executed.push((x, ts)),
                    Event::Reply(r) => match r.outcome {
                        fed_pbft::Outcome::Executed(v) => results.push(v),
                        fed_pbft::Outcome::Refused => results.push(Vec::new()),
                    },
                    _ => {}
                }
            }
        }
        (executed, results)
    }

    /// The largest next membership follows the genesis's parameters, not
    /// this node's local settings.
    #[test]
    fn the_largest_membership_is_the_genesis_parameters_one() {
        let mut c = Config::default();
        assert_eq!(max_voters(&c), fed_pbft::MAX_REPLICAS);
        // Room in a batch for an operation and 10 authenticator tags only.
        c.max_batch_bytes = c.max_operation_len + 64 + 16 * 10;
        assert_eq!(max_voters(&c), 10);
        // A local setting changes nothing (this one is invalid for any n).
        c.max_fetch_entries = 0;
        assert_eq!(max_voters(&c), 10);
    }

    fn update(i: u8) -> Operation {
        Operation::Update(StateUpdate::Opaque {
            kind: "test".into(),
            bytes: vec![i],
        })
    }

    /// A federation of one voter, A, that adds B and removes itself: the
    /// checkpoint at the epoch's end is the link to epoch 1, whose only voter
    /// is B. B's proofs verify through the chain from the genesis, and
    /// against nothing else; a link that is forged, early, or checked against
    /// another membership leads nowhere.
    #[test]
    fn an_epoch_link_leads_to_the_new_membership_only() {
        let a = std::sync::Arc::new(Identity::from_seeds(&[1; 32], None));
        let b = std::sync::Arc::new(Identity::from_seeds(&[2; 32], None));
        let m0 = Arc::new(Membership::with_context(vec![a.public().clone()], [7; 32]).unwrap());
        let genesis = Epoch::genesis(m0.clone(), vec![Vec::new()], 2, 0);
        let mut ra =
            Replica::new(a.clone(), m0.clone(), config(), genesis.ledger.clone(), 0).unwrap();
        let ca = client_id(&a.node_id(), 0);
        let key = ClientKey::new(&[3; 32]);
        let ka = ClientKeys::new(&m0, ca, std::slice::from_ref(&key)).unwrap();
        ra.add_client(ca, key.clone()).unwrap();
        // Batch 1: an update; batch 2 checkpoints before any change: no link.
        let (ran0, first) = run(&mut ra, &ka, 1, &[update(1), update(2)]);
        let (cert, state) = ra.stable_state().map(|(c, s)| (c.clone(), s)).unwrap();
        let early = CertifiedState {
            cert: serde_bytes::ByteBuf::from(wire::encode(&cert)),
            state: serde_bytes::ByteBuf::from(state.to_vec()),
        };
        assert!(genesis.follow(&early).is_err(), "no change: not a link");
        // Batch 3 adds B (the epoch ends at 4), batch 4 removes A, batch 5 is
        // after the end: a no-op answering [3].
        let add = Operation::AddVoter(Voter::new(b.public(), &[]));
        let remove = Operation::RemoveVoter(a.node_id().0);
        let (ran, results) = run(&mut ra, &ka, 3, &[add, remove, update(5)]);
        // The batch after the end did nothing: no update reaches a substrate
        // (its submitter submits it again in the next epoch).
        let (after, _) = &ran[2];
        assert_eq!(after.seq, 5);
        assert!(
            crate::core::commit::batch_effects(after, Some(ra.app()))
                .0
                .is_empty()
        );
        let (before_end, _) = &ran0[0];
        assert_eq!(before_end.seq, 1);
        assert_eq!(
            crate::core::commit::batch_effects(before_end, Some(ra.app()))
                .0
                .len(),
            1
        );
        assert_eq!(results[0][0], 0);
        assert_eq!(results[1][0], 0);
        let (cert, state) = ra.stable_state().map(|(c, s)| (c.clone(), s)).unwrap();
        assert_eq!(cert.seq, 4);
        let link = CertifiedState {
            cert: serde_bytes::ByteBuf::from(wire::encode(&cert)),
            state: serde_bytes::ByteBuf::from(state.to_vec()),
        };
        let (e1, facts) = genesis.follow(&link).unwrap();
        assert_eq!(e1.number, 1);
        // Every operation answered as chained in epoch 0 (two updates, the
        // two changes) is in the ledger epoch 1 starts from: nothing
        // executed after the link is lost.
        let chained = first
            .iter()
            .chain(&results)
            .filter(|r| r.first() == Some(&0));
        assert_eq!(e1.ledger.count, chained.count() as u64);
        assert_eq!(
            results[2],
            vec![3],
            "after the epoch's end nothing executes"
        );
        assert_eq!(facts.seq, 4);
        assert_eq!(e1.membership.members(), &[b.public().clone()][..]);
        assert_ne!(e1.membership.id(), m0.id());
        assert_eq!(
            e1.membership.id(),
            Membership::with_context(
                vec![b.public().clone()],
                epoch_context(&m0, 1, &e1.ledger.head)
            )
            .unwrap()
            .id()
        );
        // The client table tells A's client that request 4 executed.
        assert!(
            facts
                .clients
                .iter()
                .any(|(id, ts, _)| *id == ca && *ts == 4)
        );

        // A forged state, another genesis's membership: refused.
        let mut forged = link.clone();
        let last = forged.state.len() - 1;
        forged.state[last] ^= 1;
        assert!(genesis.follow(&forged).is_err());
        let other = Epoch::genesis(
            Arc::new(Membership::with_context(vec![a.public().clone()], [8; 32]).unwrap()),
            vec![Vec::new()],
            2,
            0,
        );
        assert!(other.follow(&link).is_err());

        // Epoch 1: B alone, from the ledger the link gives.
        let mut rb = Replica::new(
            b.clone(),
            e1.membership.clone(),
            config(),
            e1.ledger.clone(),
            0,
        )
        .unwrap();
        let cb = client_id(&b.node_id(), 0);
        let kb = ClientKeys::new(&e1.membership, cb, std::slice::from_ref(&key)).unwrap();
        rb.add_client(cb, key).unwrap();
        let (executed, results) = run(&mut rb, &kb, 10, &[update(9)]);
        assert_eq!(results[0][0], 0);
        assert_eq!(rb.app().count, e1.ledger.count + 1, "the chain goes on");
        let (x, ts) = executed.into_iter().next().unwrap();
        let (proof, batch) = (x.proof, x.batch.clone());
        let receipt = CommitReceipt {
            client: cb,
            timestamp: ts,
            operation: update(9),
            index: e1.ledger.count,
            proof,
            batch,
            epochs: vec![link.clone()],
        };
        receipt.verify(&m0).unwrap();
        // Without the chain, or with a forged link, it does not verify: the
        // proof is of epoch 1's membership only.
        let mut bare = receipt.clone();
        bare.epochs.clear();
        assert!(bare.verify(&m0).is_err());
        let mut bad = receipt.clone();
        bad.epochs = vec![forged];
        assert!(bad.verify(&m0).is_err());
        assert!(receipt.verify(other.membership.as_ref()).is_err());
    }
}
