//! Checkpoints, watermarks and garbage collection (pbft.md §6); catching up by
//! fetching committed batches, and state transfer (§8).

use std::{collections::BTreeMap, sync::Arc};

use super::{ClientRecord, Event, Replica, ReplicaSnapshot, Transfer, encode_arc, state_digest};
use crate::{
    app::Application,
    error::{Error, Result},
    membership::ReplicaIndex,
    message::{
        ClientId, Committed, Digest, Fetch, Message, RequestId, StateRequest, StateResponse,
        batch_digest, decode_batch,
    },
    proof::CheckpointCert,
    storage::Persist,
    wire::{self, Signature},
};

impl<A: Application> Replica<A> {
    /// The replicated client records, in client order (the snapshot's order).
    pub(super) fn records(&self) -> Vec<(ClientId, ClientRecord)> {
        let mut records: Vec<(ClientId, ClientRecord)> = self
            .clients
            .iter()
            .filter_map(|(c, e)| e.record.clone().map(|r| (*c, r)))
            .collect();
        records.sort_unstable_by_key(|(c, _)| *c);
        records
    }

    pub(super) fn snapshot(&self) -> Result<Arc<[u8]>> {
        let snap = ReplicaSnapshot {
            app: self.app.snapshot(),
            clients: self.records(),
        };
        let bytes = wire::encode(&snap);
        if bytes.len() > self.config.max_snapshot_len {
            return Err(Error::TooLarge {
                what: "snapshot",
                len: bytes.len(),
                max: self.config.max_snapshot_len,
            });
        }
        Ok(bytes.into())
    }

    pub(super) fn install_snapshot(&mut self, seq: u64, snapshot: &[u8]) -> Result<()> {
        let snap: ReplicaSnapshot = wire::decode(snapshot, "snapshot")?;
        if snap.clients.len() > self.config.max_clients {
            return Err(Error::InvalidBatch("snapshot holds too many clients"));
        }
        self.app
            .restore(&snap.app)
            .map_err(|e| Error::Application(e.to_string()))?;
        self.clients.retain(|_, e| {
            e.record = None;
            e.key.is_some()
        });
        for (c, record) in snap.clients {
            self.clients.entry(c).or_default().record = Some(record);
        }
        self.recorded = self.clients.values().filter(|e| e.record.is_some()).count();
        self.last_executed = seq;
        let done: Vec<RequestId> = self
            .pending
            .keys()
            .filter(|(c, t)| {
                self.clients
                    .get(c)
                    .and_then(|e| e.record.as_ref())
                    .is_some_and(|r| r.timestamp >= *t)
            })
            .copied()
            .collect();
        for id in done {
            self.forget_pending(&id);
        }
        Ok(())
    }

    pub(super) fn take_checkpoint(&mut self, seq: u64, now: u64) -> Result<()> {
        let snapshot = self.snapshot()?;
        let state = state_digest(seq, &snapshot);
        self.persists.push_back(Persist::Checkpoint {
            seq,
            state,
            snapshot: snapshot.clone(),
        });
        self.own_checkpoints.insert(seq, (state, snapshot));
        if seq == self.stable.seq {
            self.serve_deferred_state(now)?;
        }
        let c = crate::message::Checkpoint::new(&self.identity, &self.m, seq, state, self.me)?;
        let payload = encode_arc(&Message::Checkpoint(c.clone()))?;
        self.own_checkpoint_msg = Some(payload.clone());
        self.broadcast(&payload);
        if seq > self.stable.seq && seq <= self.high() {
            self.checkpoint_votes
                .entry(seq)
                .or_default()
                .insert(self.me, (state, c.signature));
            self.check_stable(seq, now)?;
        }
        Ok(())
    }

    pub(super) fn on_checkpoint(
        &mut self,
        from: ReplicaIndex,
        c: crate::message::Checkpoint,
        now: u64,
    ) -> Result<()> {
        if c.replica != from {
            return Err(Error::SenderMismatch {
                claimed: c.replica,
                from,
            });
        }
        if c.seq <= self.stable.seq {
            return Ok(());
        }
        if !c.seq.is_multiple_of(self.config.checkpoint_interval) {
            return Err(Error::Malformed("checkpoint off the interval"));
        }
        if c.seq > self.high() {
            // A checkpoint beyond the window: we are behind. Keep the latest per replica.
            if self.far_checkpoints[usize::from(from)].is_some_and(|(s, _, _)| s >= c.seq) {
                return Ok(());
            }
            c.verify_signature(&self.m, &mut Some(&mut self.cache))?;
            self.far_checkpoints[usize::from(from)] = Some((c.seq, c.state, c.signature));
            // A hint that this replica is behind, once f + 1 replicas (one of them
            // correct) report checkpoints at least that far: one faulty replica's
            // claim alone would keep it fetching forever.
            let mut far: Vec<u64> = self
                .far_checkpoints
                .iter()
                .flatten()
                .map(|(s, _, _)| *s)
                .collect();
            far.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(&seen) = far.get(self.m.weak_quorum() - 1) {
                self.highest_seen = self.highest_seen.max(seen);
            }
            let votes: Vec<(ReplicaIndex, Signature)> = self
                .far_checkpoints
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Some((s, d, sig)) if *s == c.seq && *d == c.state => {
                        Some((i as ReplicaIndex, *sig))
                    }
                    _ => None,
                })
                .collect();
            if votes.len() >= self.m.quorum() {
                let cert = CheckpointCert {
                    seq: c.seq,
                    state: c.state,
                    signatures: votes,
                };
                self.adopt_stable(cert, now)?;
            }
            return Ok(());
        }
        if let Some(votes) = self.checkpoint_votes.get(&c.seq)
            && votes.contains_key(&from)
        {
            return Ok(());
        }
        c.verify_signature(&self.m, &mut Some(&mut self.cache))?;
        self.highest_seen = self.highest_seen.max(c.seq);
        self.checkpoint_votes
            .entry(c.seq)
            .or_default()
            .insert(from, (c.state, c.signature));
        self.check_stable(c.seq, now)
    }

    /// Makes `seq` stable if a quorum of verified votes agrees on one state.
    fn check_stable(&mut self, seq: u64, now: u64) -> Result<()> {
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return Ok(());
        };
        let mut by_state: BTreeMap<Digest, Vec<(ReplicaIndex, Signature)>> = BTreeMap::new();
        for (r, (d, s)) in votes {
            by_state.entry(*d).or_default().push((*r, *s));
        }
        let q = self.m.quorum();
        if let Some((state, signatures)) = by_state.into_iter().find(|(_, v)| v.len() >= q) {
            self.adopt_stable(
                CheckpointCert {
                    seq,
                    state,
                    signatures,
                },
                now,
            )?;
        }
        Ok(())
    }

    /// Moves the low watermark to a (verified) stable checkpoint and discards the
    /// log below it; starts a state transfer if the replica has not reached it.
    pub(super) fn adopt_stable(&mut self, cert: CheckpointCert, now: u64) -> Result<()> {
        if cert.seq <= self.stable.seq {
            return Ok(());
        }
        let seq = cert.seq;
        let state = cert.state;
        self.persists.push_back(Persist::Stable(cert.clone()));
        self.stable = cert;
        self.log = self.log.split_off(&(seq + 1));
        self.checkpoint_votes = self.checkpoint_votes.split_off(&(seq + 1));
        // Far-ahead votes now inside the window join the ordinary ones.
        let high = self.high();
        let mut moved = Vec::new();
        for (i, far) in self.far_checkpoints.iter_mut().enumerate() {
            match *far {
                Some((s, _, _)) if s <= seq => *far = None,
                Some((s, d, sig)) if s <= high => {
                    self.checkpoint_votes
                        .entry(s)
                        .or_default()
                        .insert(i as ReplicaIndex, (d, sig));
                    moved.push(s);
                    *far = None;
                }
                _ => {}
            }
        }
        self.next_seq = self.next_seq.max(seq + 1);
        self.highest_seen = self.highest_seen.max(seq);
        if std::mem::take(&mut self.refused_beyond) {
            self.refetch_at = Some(now.saturating_add(self.config.retransmit_ms));
        }
        self.events
            .push_back(Event::StableCheckpoint { seq, state });
        let own_matches = self
            .own_checkpoints
            .get(&seq)
            .is_some_and(|(d, _)| *d == state);
        // Behind: fetch the state. At it, but without its own checkpoint there or
        // with another digest (a fault, such as a non-deterministic application,
        // or a lost snapshot): repair, fetching the certified state to replace its own.
        let repair = self.last_executed == seq && !own_matches;
        if self.last_executed < seq || repair {
            self.own_checkpoints.retain(|s, _| *s > seq);
            self.start_transfer(self.stable.clone(), repair, now);
        } else {
            self.own_checkpoints = self.own_checkpoints.split_off(&seq);
        }
        if self
            .own_checkpoint_msg
            .as_ref()
            .is_some_and(|_| self.own_checkpoints.range(seq + 1..).next().is_none())
        {
            self.own_checkpoint_msg = None;
        }
        moved.sort_unstable();
        moved.dedup();
        for s in moved {
            self.check_stable(s, now)?;
        }
        self.serve_deferred_state(now)
    }

    pub(super) fn on_stable_cert(&mut self, cert: CheckpointCert, now: u64) -> Result<()> {
        if cert.seq <= self.stable.seq {
            return Ok(());
        }
        if !cert.seq.is_multiple_of(self.config.checkpoint_interval) {
            return Err(Error::InvalidCertificate("checkpoint off the interval"));
        }
        cert.verify_with(&self.m, &mut Some(&mut self.cache))?;
        self.adopt_stable(cert, now)
    }
}

// ---------------------------------------------------------------------------
// Catching up: fetching committed batches, state transfer, retransmission.
// ---------------------------------------------------------------------------

impl<A: Application> Replica<A> {
    pub(super) fn rate_ok(&mut self, from: ReplicaIndex, now: u64) -> bool {
        Self::rate_check(&mut self.served_at, self.config.retransmit_ms, from, now)
    }

    /// At most one answer per peer per `period` (fetches and state requests are
    /// limited separately).
    fn rate_check(table: &mut [Option<u64>], period: u64, from: ReplicaIndex, now: u64) -> bool {
        let Some(slot) = table.get_mut(usize::from(from)) else {
            return false;
        };
        if slot.is_some_and(|t| now < t.saturating_add(period)) {
            return false;
        }
        *slot = Some(now);
        true
    }

    pub(super) fn on_fetch(&mut self, from: ReplicaIndex, f: Fetch, now: u64) -> Result<()> {
        if !self.rate_ok(from, now) {
            return Ok(());
        }
        // The stable certificate first, whatever was asked: an asker whose own
        // stable checkpoint lags (a restarted replica whose last votes were lost)
        // moves its window with it before the batches arrive.
        if self.stable.seq > 0 {
            let payload = encode_arc(&Message::StableCheckpoint(self.stable.clone()))?;
            self.send(from, payload);
        }
        let seq = f.seq.max(self.stable.seq + 1);
        let mut out = Vec::new();
        for (_, slot) in self.log.range(seq..) {
            if out.len() >= self.config.max_fetch_entries {
                break;
            }
            if let Some(proof) = &slot.committed
                && let Some(batch) = slot.batch_for(&proof.digest)
            {
                out.push(Message::Committed(Committed {
                    proof: proof.clone(),
                    batch: batch.to_vec(),
                }));
            }
        }
        for m in out {
            let payload = encode_arc(&m)?;
            self.send(from, payload);
        }
        Ok(())
    }

    pub(super) fn on_committed(&mut self, c: Committed, now: u64) -> Result<()> {
        let seq = c.proof.seq;
        if seq <= self.last_executed || seq <= self.stable.seq {
            return Ok(());
        }
        if seq > self.high() {
            self.refused_beyond = true;
            return Err(Error::OutsideWatermarks {
                seq,
                low: self.stable.seq,
                high: self.high(),
            });
        }
        if let Some(slot) = self.log.get(&seq)
            && let Some(p) = &slot.committed
            && (slot.batch_for(&p.digest).is_some() || p.digest != c.proof.digest)
        {
            return Ok(());
        }
        if c.batch.len() > self.config.max_batch_bytes {
            return Err(Error::TooLarge {
                what: "batch",
                len: c.batch.len(),
                max: self.config.max_batch_bytes,
            });
        }
        if batch_digest(&c.batch) != c.proof.digest {
            return Err(Error::DigestMismatch);
        }
        c.proof.verify_with(&self.m, &mut Some(&mut self.cache))?;
        let requests = decode_batch(&c.batch).unwrap_or_default();
        let slot = self.log.entry(seq).or_default();
        slot.batch = Some((c.proof.digest, Arc::from(c.batch)));
        slot.requests = Some(Arc::new(requests));
        if slot.committed.is_none() {
            slot.committed = Some(c.proof);
        }
        self.highest_seen = self.highest_seen.max(seq);
        self.try_execute(now)
    }

    pub(super) fn start_transfer(&mut self, target: CheckpointCert, repair: bool, now: u64) {
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.target.seq >= target.seq)
        {
            return;
        }
        self.transfer = Some(Transfer {
            target,
            repair,
            cursor: usize::from(self.me) + 1,
            bad: 0,
            deadline: now,
        });
        self.request_state(now);
    }

    /// Asks the next untried replica for the target state.
    pub(super) fn request_state(&mut self, now: u64) {
        let n = self.m.len();
        let me = usize::from(self.me);
        let timeout = self.config.request_timeout_ms;
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if n < 2 {
            return;
        }
        let all_bad = (0..n)
            .filter(|&i| i != me)
            .all(|i| t.bad & (1u64 << i) != 0);
        if all_bad {
            t.bad = 0;
        }
        let mut source = None;
        for k in 0..n {
            let i = (t.cursor + k) % n;
            if i != me && t.bad & (1u64 << i) == 0 {
                source = Some(i);
                t.cursor = i + 1;
                break;
            }
        }
        let Some(source) = source else {
            return;
        };
        t.deadline = now.saturating_add(timeout);
        let seq = t.target.seq;
        if let Ok(payload) = encode_arc(&Message::StateRequest(StateRequest { seq })) {
            self.send(source as ReplicaIndex, payload);
        }
    }

    pub(super) fn on_state_request(
        &mut self,
        from: ReplicaIndex,
        r: StateRequest,
        now: u64,
    ) -> Result<()> {
        if self.stable.seq < r.seq {
            // Not stable here yet (the asker saw the certificate first): kept.
            self.defer_state_request(from, r.seq, now);
            return Ok(());
        }
        if self.stable.seq == 0 {
            return Ok(());
        }
        if !Self::rate_check(
            &mut self.served_state_at,
            self.config.retransmit_ms,
            from,
            now,
        ) {
            // Answered this asker less than `retransmit_ms` ago (an earlier
            // checkpoint, say): kept, and answered once that period is over,
            // not dropped (the asker would wait `request_timeout_ms` before
            // asking another peer, and its request timer could run out).
            self.defer_state_request(from, r.seq, now);
            return Ok(());
        }
        if !self.serve_state(from)? {
            // Stable here, but its state is not (yet) here: this replica is
            // behind or repairing. Kept, and answered once it has the state.
            self.served_state_at[usize::from(from)] = None;
            self.defer_state_request(from, r.seq, now);
        }
        Ok(())
    }

    /// Keeps `from`'s request for the state at `seq` (one per peer, the latest;
    /// none beyond the window) until this replica can answer it, for at most
    /// `request_timeout_ms` (the asker moves on to another peer then).
    fn defer_state_request(&mut self, from: ReplicaIndex, seq: u64, now: u64) {
        if seq <= self.high()
            && let Some(slot) = self.deferred_state.get_mut(usize::from(from))
        {
            *slot = Some((seq, now));
        }
    }

    /// Answers the kept state requests that this replica can answer now (its
    /// stable checkpoint is at or above theirs, it holds the state there, and
    /// it has not answered that asker within `retransmit_ms`); forgets those
    /// older than `request_timeout_ms`.
    pub(super) fn serve_deferred_state(&mut self, now: u64) -> Result<()> {
        let expiry = self.config.request_timeout_ms;
        let period = self.config.retransmit_ms;
        for i in 0..self.deferred_state.len() {
            let Some((seq, at)) = self.deferred_state[i] else {
                continue;
            };
            let answered_lately =
                self.served_state_at[i].is_some_and(|t| now < t.saturating_add(period));
            if now > at.saturating_add(expiry) {
                self.deferred_state[i] = None;
            } else if answered_lately {
                // Kept for a tick after the period.
            } else if seq <= self.stable.seq && self.serve_state(i as ReplicaIndex)? {
                self.deferred_state[i] = None;
                self.served_state_at[i] = Some(now);
            }
        }
        Ok(())
    }

    /// Sends `to` the stable checkpoint's certificate and snapshot, when this
    /// replica holds that snapshot; whether it did.
    fn serve_state(&mut self, to: ReplicaIndex) -> Result<bool> {
        let Some((state, snapshot)) = self.own_checkpoints.get(&self.stable.seq) else {
            return Ok(false);
        };
        if *state != self.stable.state {
            return Ok(false);
        }
        let msg = Message::StateResponse(StateResponse {
            cert: self.stable.clone(),
            snapshot: snapshot.to_vec(),
        });
        let payload = encode_arc(&msg)?;
        self.send(to, payload);
        Ok(true)
    }

    pub(super) fn on_state_response(
        &mut self,
        from: ReplicaIndex,
        r: StateResponse,
        now: u64,
    ) -> Result<()> {
        let Some(target) = self.transfer.as_ref().map(|t| t.target.clone()) else {
            return Err(Error::Unexpected("no state transfer under way"));
        };
        let seq = r.cert.seq;
        if seq < target.seq {
            return Err(Error::Unexpected("state older than the transfer's target"));
        }
        let repair = self.transfer.as_ref().is_some_and(|t| t.repair);
        if seq <= self.last_executed && !repair {
            // Caught up meanwhile by executing committed batches.
            self.transfer = None;
            return Ok(());
        }
        if r.snapshot.len() > self.config.max_snapshot_len {
            return Err(Error::TooLarge {
                what: "snapshot",
                len: r.snapshot.len(),
                max: self.config.max_snapshot_len,
            });
        }
        if r.cert != target {
            if !r.cert.seq.is_multiple_of(self.config.checkpoint_interval) {
                return Err(Error::InvalidCertificate("checkpoint off the interval"));
            }
            r.cert.verify_with(&self.m, &mut Some(&mut self.cache))?;
        }
        let state = r.cert.state;
        if state_digest(seq, &r.snapshot) != state {
            if let Some(t) = self.transfer.as_mut() {
                t.bad |= 1u64 << from;
            }
            self.request_state(now);
            return Err(Error::BadSnapshot);
        }
        let snapshot: Arc<[u8]> = Arc::from(r.snapshot);
        if let Err(e) = self.install_snapshot(seq, &snapshot) {
            if let Some(t) = self.transfer.as_mut() {
                t.bad |= 1u64 << from;
            }
            self.request_state(now);
            return Err(e);
        }
        self.transfer = None;
        self.refetch_at = Some(now.saturating_add(self.config.retransmit_ms));
        self.persists.push_back(Persist::Checkpoint {
            seq,
            state,
            snapshot: snapshot.clone(),
        });
        if repair {
            // Its own CHECKPOINT vote named another state: stop repeating it.
            self.own_checkpoint_msg = None;
        }
        self.own_checkpoints.insert(seq, (state, snapshot));
        self.adopt_stable(r.cert, now)?;
        self.log = self.log.split_off(&(seq + 1));
        self.last_progress = now;
        self.events
            .push_back(Event::StateTransferred { seq, state });
        // The state is here now: the requests kept for it are answered.
        self.serve_deferred_state(now)?;
        self.try_execute(now)
    }
}
