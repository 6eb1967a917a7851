//! Normal case (pbft.md §4): client requests and batching; PRE-PREPARE, PREPARE and
//! COMMIT; in-order execution.

use std::{collections::hash_map::Entry as HashEntry, sync::Arc};

use super::{
    ClientEntry, ClientRecord, Event, Executed, Held, Pending, Phase, Replica, Vote, encode_arc,
};
use crate::{
    app::Application,
    client::check_request,
    error::{Error, Result},
    membership::{Membership, ReplicaIndex},
    message::{
        Commit, Message, Outcome, PrePrepare, Prepare, Reply, Request, RequestId, SigCache,
        batch_digest, decode_batch,
    },
    proof::{CommitProof, PreparedCert},
    storage::Persist,
    wire::{self, Signature},
};

impl<A: Application> Replica<A> {
    pub(super) fn on_request(
        &mut self,
        r: Request,
        bytes: &[u8],
        direct: bool,
        now: u64,
    ) -> Result<()> {
        if r.operation.len() > self.config.max_operation_len {
            return Err(Error::TooLarge {
                what: "operation",
                len: r.operation.len(),
                max: self.config.max_operation_len,
            });
        }
        let entry = self.clients.get(&r.client);
        let key = entry
            .and_then(|e| e.key.as_ref())
            .ok_or(Error::BadRequestAuth)?;
        if r.authenticator.len() != self.m.len() || !check_request(key, self.me, &r) {
            return Err(Error::BadRequestAuth);
        }
        if let Some(rec) = entry.and_then(|e| e.record.as_ref()) {
            if r.timestamp == rec.timestamp {
                // A retransmission of the latest executed request: the cached reply.
                let reply = Reply::new(
                    key,
                    self.view,
                    r.client,
                    r.timestamp,
                    self.me,
                    rec.outcome.clone(),
                );
                self.events.push_back(Event::Reply(reply));
                return Ok(());
            }
            if r.timestamp < rec.timestamp {
                return Err(Error::StaleRequest {
                    timestamp: r.timestamp,
                    latest: rec.timestamp,
                });
            }
        }
        let id = r.id();
        let primary = self.m.primary(self.view);
        if self.pending.contains_key(&id) {
            if direct && primary != self.me {
                self.send(primary, Arc::from(bytes));
            }
            return Ok(());
        }
        if self.pending.len() >= self.config.max_pending_requests {
            return Err(Error::Full("pending request queue"));
        }
        self.arrivals += 1;
        self.pending_order.insert(self.arrivals, (id, now));
        self.pending.insert(
            id,
            Pending {
                request: r,
                order: self.arrivals,
                proposed: false,
            },
        );
        if primary == self.me && self.active {
            self.queue.push_back(id);
            self.propose(now, false)?;
        } else if direct {
            self.send(primary, Arc::from(bytes));
        }
        Ok(())
    }

    pub(super) fn forget_pending(&mut self, id: &RequestId) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(p) = self.pending.remove(id) {
            self.pending_order.remove(&p.order);
        }
        if self.pending.is_empty() {
            // Whatever is still queued is stale; so is a batching deadline armed
            // for it (`propose` trusts an armed deadline).
            self.queue.clear();
            self.batch_deadline = None;
        }
    }

    /// Cuts and sends batches while the primary has room in the window: full
    /// batches at once, a partial one when `deadline_hit` (the batching delay ran out).
    pub(super) fn propose(&mut self, now: u64, deadline_hit: bool) -> Result<()> {
        if !self.active || self.m.primary(self.view) != self.me {
            self.queue.clear();
            self.batch_deadline = None;
            return Ok(());
        }
        if !deadline_hit
            && self.batch_deadline.is_some()
            && self.queue.len() < self.config.max_batch_requests
        {
            // Not full even counting stale entries, and the batching delay is
            // running: nothing to cut yet. (The deadline may have been armed for a
            // request that has since gone stale; the batch is then cut early,
            // which the delay, an upper bound on waiting, allows.)
            return Ok(());
        }
        loop {
            // Stale entries (executed or already proposed) are skipped lazily: only
            // from the front here, and while cutting below, so that queueing a
            // request stays O(1).
            while let Some(id) = self.queue.front() {
                if self.pending.get(id).is_some_and(|p| !p.proposed) {
                    break;
                }
                self.queue.pop_front();
            }
            if self.queue.is_empty() {
                self.batch_deadline = None;
                return Ok(());
            }
            let full = self.queue.len() >= self.config.max_batch_requests;
            if !full && !deadline_hit {
                if self.batch_deadline.is_none() {
                    // With nothing of its own still to execute, the primary has
                    // nothing to batch behind: the batch is due at once, that is
                    // at the host's next timeout check, after the input being
                    // handled (a group of requests goes out as one batch). Not
                    // with the window full: that expiry could not cut, and an
                    // immediate deadline re-armed at the same time would spin.
                    let idle =
                        self.next_seq <= self.last_executed + 1 && self.next_seq <= self.high();
                    let delay = if idle { 0 } else { self.config.batch_delay_ms };
                    self.batch_deadline = Some(now.saturating_add(delay));
                }
                return Ok(());
            }
            if self.next_seq > self.stable.seq + self.config.window {
                // The window is full; the next stable checkpoint will make room.
                return Ok(());
            }
            let mut requests = Vec::new();
            let mut size = 1usize;
            let per_request = 32 + 10 + 10 + 5 + 16 * self.m.len();
            while let Some(id) = self.queue.front().copied() {
                let Some(p) = self.pending.get_mut(&id).filter(|p| !p.proposed) else {
                    self.queue.pop_front();
                    continue;
                };
                let len = per_request + p.request.operation.len();
                if requests.len() >= self.config.max_batch_requests
                    || size + len > self.config.max_batch_bytes
                {
                    break;
                }
                size += len;
                p.proposed = true;
                requests.push(p.request.clone());
                self.queue.pop_front();
            }
            if requests.is_empty() {
                return Ok(());
            }
            self.issue_pre_prepare(requests, now)?;
            if deadline_hit && self.queue.len() < self.config.max_batch_requests {
                // One partial batch per expiry; re-arm for the rest.
                if !self.queue.is_empty() {
                    self.batch_deadline = Some(now.saturating_add(self.config.batch_delay_ms));
                }
                return Ok(());
            }
        }
    }

    /// Asks for a `Reserve` covering `(view, seq)` unless one does: the
    /// `PrePrepare` write that follows may then stay unsynced while its
    /// PRE-PREPARE or PREPARE leaves. One synced write per `window` sequence
    /// numbers, and one with the first of them in each view.
    fn reserve(&mut self, view: u64, seq: u64) {
        if self.reserved.0 != view || seq > self.reserved.1 {
            let upto = seq.saturating_add(self.config.window);
            self.persists.push_back(Persist::Reserve { view, upto });
            self.reserved = (view, upto);
        }
    }

    /// Whether this replica, restarted in `view`, may have sent a PRE-PREPARE
    /// or PREPARE for `seq` that it lost: then it sends none (pbft.md §5).
    pub(super) fn is_silent(&self, view: u64, seq: u64) -> bool {
        self.silent.0 == view && seq <= self.silent.1
    }

    fn issue_pre_prepare(&mut self, requests: Vec<Request>, now: u64) -> Result<()> {
        let seq = self.next_seq;
        let view = self.view;
        let batch = wire::encode(&requests);
        let pp = PrePrepare::new(&self.identity, &self.m, view, seq, batch)?;
        let digest = pp.digest;
        let payload: Arc<[u8]> = wire::seal(wire::Kind::PrePrepare, &pp)?.into();
        let batch: Arc<[u8]> = Arc::from(pp.batch);
        self.reserve(view, seq);
        self.persists.push_back(Persist::PrePrepare {
            view,
            seq,
            digest,
            signature: pp.signature,
            batch: Some(batch.clone()),
        });
        let slot = self.log.entry(seq).or_default();
        slot.enter_view(view);
        slot.pre_prepare = Some((digest, pp.signature));
        slot.batch = Some((digest, batch));
        slot.requests = Some(Arc::new(requests));
        slot.authenticated = true;
        slot.own.push(payload.clone());
        self.next_seq += 1;
        self.highest_seen = self.highest_seen.max(seq);
        self.broadcast(&payload);
        self.step(seq, now)
    }

    /// Decodes and checks a batch's structure; returns the requests and whether
    /// this replica authenticated every one with its own key.
    fn check_batch(&self, batch: &[u8]) -> Result<(Vec<Request>, bool)> {
        if batch.len() > self.config.max_batch_bytes {
            return Err(Error::TooLarge {
                what: "batch",
                len: batch.len(),
                max: self.config.max_batch_bytes,
            });
        }
        let requests = decode_batch(batch)?;
        if requests.len() > self.config.max_batch_requests {
            return Err(Error::InvalidBatch("too many requests"));
        }
        let mut authenticated = true;
        for r in &requests {
            if r.operation.len() > self.config.max_operation_len {
                return Err(Error::InvalidBatch("operation too large"));
            }
            if r.authenticator.len() != self.m.len() {
                return Err(Error::InvalidBatch("authenticator of the wrong length"));
            }
            if authenticated {
                authenticated = self
                    .clients
                    .get(&r.client)
                    .and_then(|e| e.key.as_ref())
                    .is_some_and(|k| check_request(k, self.me, r));
            }
        }
        Ok((requests, authenticated))
    }
}

// ---------------------------------------------------------------------------
// Normal case: pre-prepare, prepare, commit, execute.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    pub(super) fn high(&self) -> u64 {
        self.stable.seq + self.config.window
    }

    fn check_normal(&mut self, view: u64, seq: u64) -> Result<()> {
        if seq > self.last_executed
            && seq
                < self
                    .high()
                    .saturating_add(self.config.window.saturating_mul(64))
        {
            // Peers are working on sequence numbers we have not executed, perhaps in
            // a view we are not in or beyond our window: a hint that we may be behind.
            // It only makes the catch-up tick ask f + 1 peers for committed batches
            // when execution stalls (answers are rate-limited per peer).
            self.highest_seen = self.highest_seen.max(seq.min(self.high()));
        }
        if view < self.view {
            return Err(Error::StaleView {
                view,
                current: self.view,
            });
        }
        if view > self.view || !self.active {
            return Err(Error::WrongView {
                view,
                current: self.view,
            });
        }
        if seq <= self.stable.seq || seq > self.high() {
            if seq > self.high() {
                self.refused_beyond = true;
            }
            return Err(Error::OutsideWatermarks {
                seq,
                low: self.stable.seq,
                high: self.high(),
            });
        }
        Ok(())
    }

    pub(super) fn on_pre_prepare(
        &mut self,
        from: ReplicaIndex,
        pp: PrePrepare,
        now: u64,
    ) -> Result<()> {
        self.check_normal(pp.view, pp.seq)?;
        let primary = self.m.primary(pp.view);
        if from != primary {
            return Err(Error::NotPrimary {
                view: pp.view,
                primary,
                from,
            });
        }
        if let Some(slot) = self.log.get(&pp.seq)
            && slot.view == pp.view
        {
            match slot.pre_prepare {
                Some((d, _)) if d == pp.digest => return Ok(()),
                Some(_) => {
                    return Err(Error::Equivocation {
                        view: pp.view,
                        seq: pp.seq,
                    });
                }
                None => {}
            }
        }
        if batch_digest(&pp.batch) != pp.digest {
            return Err(Error::DigestMismatch);
        }
        pp.verify_signature(&self.m, &mut Some(&mut self.cache))?;
        let (requests, authenticated) = self.check_batch(&pp.batch)?;
        let batch: Arc<[u8]> = Arc::from(pp.batch);
        // Persisted when this replica sends its PREPARE (`step`), not now: a
        // pre-prepare it could not authenticate must not come back from storage as
        // one it vouched for.
        let slot = self.log.entry(pp.seq).or_default();
        slot.enter_view(pp.view);
        slot.pre_prepare = Some((pp.digest, pp.signature));
        let keep_committed_batch = slot
            .committed
            .as_ref()
            .is_some_and(|c| c.digest != pp.digest && slot.batch.is_some());
        if !keep_committed_batch {
            slot.batch = Some((pp.digest, batch));
            slot.requests = Some(Arc::new(requests));
        }
        slot.authenticated = authenticated;
        self.highest_seen = self.highest_seen.max(pp.seq);
        self.step(pp.seq, now)
    }

    pub(super) fn on_prepare(&mut self, from: ReplicaIndex, p: Prepare, now: u64) -> Result<()> {
        if p.replica != from {
            return Err(Error::SenderMismatch {
                claimed: p.replica,
                from,
            });
        }
        self.check_normal(p.view, p.seq)?;
        if p.replica == self.m.primary(p.view) {
            return Err(Error::Unexpected("the primary does not prepare"));
        }
        let vote = Vote {
            replica: p.replica,
            view: p.view,
            seq: p.seq,
            digest: p.digest,
        };
        self.record_vote(Phase::Prepare, vote, p.signature, now, |m, cache| {
            p.verify_signature(m, &mut Some(cache))
        })
    }

    pub(super) fn on_commit(&mut self, from: ReplicaIndex, c: Commit, now: u64) -> Result<()> {
        if c.replica != from {
            return Err(Error::SenderMismatch {
                claimed: c.replica,
                from,
            });
        }
        self.check_normal(c.view, c.seq)?;
        let vote = Vote {
            replica: c.replica,
            view: c.view,
            seq: c.seq,
            digest: c.digest,
        };
        self.record_vote(Phase::Commit, vote, c.signature, now, |m, cache| {
            c.verify_signature(m, &mut Some(cache))
        })
    }

    /// Counts a PREPARE or COMMIT. A repeat of a vote already held is ignored; a
    /// different digest from the same replica for the same view and sequence is
    /// equivocation; a new vote counts only once `verify` accepted its signature.
    /// A vote that can no longer matter (its slot is already prepared in this
    /// view, for a PREPARE, or committed, for a COMMIT) is held without the
    /// signature check, which is most of a replica's Ed25519 work.
    fn record_vote(
        &mut self,
        phase: Phase,
        vote: Vote,
        signature: Signature,
        now: u64,
        verify: impl FnOnce(&Membership, &mut SigCache) -> Result<()>,
    ) -> Result<()> {
        if let Some(slot) = self.log.get(&vote.seq)
            && slot.view == vote.view
            && let Some(held) = slot.votes(phase).get(&vote.replica)
        {
            return if held.digest == vote.digest {
                Ok(())
            } else {
                Err(Error::Equivocation {
                    view: vote.view,
                    seq: vote.seq,
                })
            };
        }
        let surplus = self.log.get(&vote.seq).is_some_and(|slot| {
            slot.view == vote.view
                && match phase {
                    Phase::Prepare => slot.prepared.as_ref().is_some_and(|c| c.view == vote.view),
                    Phase::Commit => slot.committed.is_some(),
                }
        });
        if !surplus {
            verify(&self.m, &mut self.cache)?;
        }
        let slot = self.log.entry(vote.seq).or_default();
        slot.enter_view(vote.view);
        slot.votes_mut(phase).insert(
            vote.replica,
            Held {
                digest: vote.digest,
                signature,
                verified: !surplus,
            },
        );
        self.highest_seen = self.highest_seen.max(vote.seq);
        if surplus {
            return Ok(());
        }
        self.step(vote.seq, now)
    }

    /// Advances one slot of the current view as far as its votes allow.
    pub(super) fn step(&mut self, seq: u64, now: u64) -> Result<()> {
        let (view, me) = (self.view, self.me);
        let primary = self.m.primary(view);
        let q = self.m.quorum();
        let weak = self.m.weak_quorum();
        let Some(slot) = self.log.get(&seq) else {
            return Ok(());
        };
        if !self.active || slot.view != view {
            return self.try_execute(now);
        }
        let Some((digest, pp_sig)) = slot.pre_prepare else {
            return Ok(());
        };
        let matching_prepares = slot
            .prepares
            .iter()
            .filter(|(r, h)| h.verified && h.digest == digest && **r != primary)
            .count();

        // 1. Prepare, once the requests are known to be authentic: checked here, or
        //    vouched for by f + 1 replicas (the primary and prepares), one of which
        //    is correct and checked them itself.
        let silent = self.is_silent(view, seq);
        if me != primary
            && !slot.sent_prepare
            && !silent
            && (slot.authenticated || 1 + matching_prepares >= weak)
        {
            let batch = slot.batch_for(&digest);
            self.reserve(view, seq);
            self.persists.push_back(Persist::PrePrepare {
                view,
                seq,
                digest,
                signature: pp_sig,
                batch,
            });
            let p = Prepare::new(&self.identity, &self.m, view, seq, digest, me)?;
            let payload = encode_arc(&Message::Prepare(p.clone()))?;
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.prepares.insert(me, Held::own(digest, p.signature));
                slot.sent_prepare = true;
                slot.own.push(payload.clone());
            }
            self.broadcast(&payload);
            return self.step(seq, now);
        }

        // 2. Prepared: pre-prepare and q − 1 matching prepares from backups (a
        //    silent replica's from others only: it votes COMMIT on their quorum).
        let prepared_here = slot.prepared.as_ref().is_some_and(|c| c.view == view);
        if !prepared_here
            && matching_prepares + 1 >= q
            && (me == primary || slot.sent_prepare || silent)
        {
            let prepares: Vec<(ReplicaIndex, Signature)> = slot
                .prepares
                .iter()
                .filter(|(r, h)| h.verified && h.digest == digest && **r != primary)
                .map(|(r, h)| (*r, h.signature))
                .collect();
            let cert = PreparedCert {
                view,
                seq,
                digest,
                primary: pp_sig,
                prepares,
            };
            let batch = slot.batch_for(&digest);
            self.persists.push_back(Persist::Prepared {
                cert: cert.clone(),
                batch: batch.clone(),
            });
            let c = Commit::new(&self.identity, &self.m, view, seq, digest, me)?;
            let payload = encode_arc(&Message::Commit(c.clone()))?;
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.prepared = Some(cert);
                slot.prepared_batch = batch.map(|b| (digest, b));
                slot.commits.insert(me, Held::own(digest, c.signature));
                slot.sent_commit = true;
                slot.own.push(payload.clone());
            }
            self.broadcast(&payload);
            return self.step(seq, now);
        }

        // 3. Committed-local: prepared and q matching commits.
        if prepared_here && slot.committed.is_none() {
            let commits: Vec<(ReplicaIndex, Signature)> = slot
                .commits
                .iter()
                .filter(|(_, h)| h.verified && h.digest == digest)
                .map(|(r, h)| (*r, h.signature))
                .collect();
            if commits.len() >= q {
                let proof = CommitProof {
                    membership: *self.m.id(),
                    view,
                    seq,
                    digest,
                    signatures: commits,
                };
                if let Some(slot) = self.log.get_mut(&seq) {
                    slot.committed = Some(proof);
                }
            }
        }
        self.try_execute(now)
    }

    /// Executes committed batches in sequence order while their batches are known.
    pub(super) fn try_execute(&mut self, now: u64) -> Result<()> {
        if self.transfer.as_ref().is_some_and(|t| t.repair) {
            // Its state is not the certified one: executing on it is pointless.
            return Ok(());
        }
        loop {
            let seq = self.last_executed + 1;
            let Some(slot) = self.log.get_mut(&seq) else {
                return Ok(());
            };
            let Some(proof) = slot.committed.clone() else {
                return Ok(());
            };
            let Some(batch) = slot.batch_for(&proof.digest) else {
                return Ok(());
            };
            if !slot.persisted_commit {
                slot.persisted_commit = true;
                self.persists.push_back(Persist::Committed {
                    proof: proof.clone(),
                    batch: batch.clone(),
                });
            }
            let requests = match (&slot.batch, &slot.requests) {
                (Some((d, _)), Some(r)) if *d == proof.digest => r.clone(),
                // A committed batch that does not decode cannot exist while at most f
                // replicas are faulty (correct ones decoded it to prepare it); execute
                // it as empty, identically on every replica, rather than stall.
                _ => Arc::new(decode_batch(&batch).unwrap_or_default()),
            };
            self.execute_batch(seq, &proof, batch, &requests)?;
            self.last_executed = seq;
            self.last_progress = now;
            if self.active {
                self.attempts = 0;
            }
            if seq.is_multiple_of(self.config.checkpoint_interval) {
                self.take_checkpoint(seq, now)?;
            }
        }
    }

    pub(super) fn execute_batch(
        &mut self,
        seq: u64,
        proof: &CommitProof,
        batch: Arc<[u8]>,
        requests: &[Request],
    ) -> Result<()> {
        let mut executed = Vec::with_capacity(requests.len());
        self.app.begin_batch(seq);
        for r in requests {
            let id = r.id();
            self.forget_pending(&id);
            let full = self.recorded >= self.config.max_clients;
            let entry = match self.clients.entry(r.client) {
                HashEntry::Occupied(e) => e.into_mut(),
                // No key here, so no reply either way.
                HashEntry::Vacant(_) if full => continue,
                HashEntry::Vacant(e) => e.insert(ClientEntry::default()),
            };
            let outcome = match &entry.record {
                Some(rec) if r.timestamp < rec.timestamp => continue,
                // Ordered twice: answer again, do not execute again.
                Some(rec) if r.timestamp == rec.timestamp => rec.outcome.clone(),
                None if full => Outcome::Refused,
                record => {
                    if record.is_none() {
                        self.recorded += 1;
                    }
                    let outcome = Outcome::Executed(self.app.execute(&r.client, &r.operation));
                    entry.record = Some(ClientRecord {
                        timestamp: r.timestamp,
                        outcome: outcome.clone(),
                    });
                    executed.push(id);
                    outcome
                }
            };
            if let Some(key) = &entry.key {
                let reply = Reply::new(key, self.view, r.client, r.timestamp, self.me, outcome);
                self.events.push_back(Event::Reply(reply));
            }
        }
        self.events.push_back(Event::Executed(Executed {
            seq,
            view: proof.view,
            digest: proof.digest,
            requests: executed,
            proof: proof.clone(),
            batch,
        }));
        Ok(())
    }
}
