//! View change (pbft.md §7): VIEW-CHANGE, NEW-VIEW (built, re-checked, installed).

use std::{collections::BTreeMap, sync::Arc};

use super::{Event, Replica, encode_arc};
use crate::{
    app::Application,
    error::{Error, Result},
    membership::ReplicaIndex,
    message::{
        Digest, Message, NULL_BATCH, NewView, NewViewEntry, Request, ViewChange, batch_digest,
        pre_prepare_statement, verify_signature,
    },
    proof::{CheckpointCert, PreparedCert},
    storage::Persist,
};

impl<A: Application> Replica<A> {
    /// Leaves the current view for `target`: persists the decision, then sends a
    /// VIEW-CHANGE with the stable checkpoint and every prepared certificate above it.
    pub(super) fn start_view_change(&mut self, target: u64, now: u64) -> Result<()> {
        if target <= self.view {
            return Ok(());
        }
        self.attempts = self.attempts.saturating_add(1);
        self.view = target;
        self.active = false;
        self.persists.push_back(Persist::View {
            view: target,
            active: false,
        });
        self.request_timer = None;
        self.vc_timer = None;
        self.batch_deadline = None;
        self.queue.clear();
        self.new_view_msg = None;
        self.send_view_change(now)?;
        self.check_view_change_quorum(now)
    }

    pub(super) fn send_view_change(&mut self, _now: u64) -> Result<()> {
        let view = self.view;
        let prepared: Vec<PreparedCert> = self
            .log
            .range(self.stable.seq + 1..=self.high())
            .filter_map(|(_, s)| s.prepared.clone().filter(|c| c.view < view))
            .collect();
        let vc = ViewChange::new(
            &self.identity,
            &self.m,
            view,
            self.stable.clone(),
            prepared,
            self.me,
        )?;
        let payload = encode_arc(&Message::ViewChange(vc.clone()))?;
        self.view_changes[usize::from(self.me)] = Some(vc);
        self.own_view_change = Some(payload.clone());
        self.broadcast(&payload);
        Ok(())
    }

    fn check_view_change_quorum(&mut self, now: u64) -> Result<()> {
        if self.active {
            return Ok(());
        }
        // The timer runs once a quorum has left the old view (asking for this view
        // or a later one: each replica's latest VIEW-CHANGE is all that is kept).
        let leaving = self
            .view_changes
            .iter()
            .flatten()
            .filter(|vc| vc.view >= self.view)
            .count();
        if leaving >= self.m.quorum() && self.vc_timer.is_none() {
            let t = self.config.timeout(self.attempts.saturating_sub(1));
            self.vc_timer = Some(now.saturating_add(t));
        }
        let count = self
            .view_changes
            .iter()
            .flatten()
            .filter(|vc| vc.view == self.view)
            .count();
        if count >= self.m.quorum() && self.m.primary(self.view) == self.me {
            self.build_new_view(now)?;
        }
        Ok(())
    }

    pub(super) fn on_view_change(
        &mut self,
        from: ReplicaIndex,
        vc: ViewChange,
        now: u64,
    ) -> Result<()> {
        if vc.replica != from {
            return Err(Error::SenderMismatch {
                claimed: vc.replica,
                from,
            });
        }
        if vc.view < self.view || (vc.view == self.view && self.active) {
            // The sender is still trying to reach a view we installed: help it.
            if vc.view == self.view && self.m.primary(self.view) == self.me {
                if let Some(nv) = self.new_view_msg.clone()
                    && self.rate_ok(from, now)
                {
                    self.send(from, nv);
                }
                return Ok(());
            }
            return Err(Error::StaleView {
                view: vc.view,
                current: self.view,
            });
        }
        if self.view_changes[usize::from(from)]
            .as_ref()
            .is_some_and(|old| old.view >= vc.view)
        {
            return Ok(());
        }
        if !vc
            .checkpoint
            .seq
            .is_multiple_of(self.config.checkpoint_interval)
        {
            return Err(Error::InvalidViewChange("checkpoint off the interval"));
        }
        vc.verify(&self.m, self.config.window, &mut Some(&mut self.cache))?;
        self.view_changes[usize::from(from)] = Some(vc);
        // Join a higher view once f + 1 other replicas ask for one.
        let mut higher: Vec<u64> = self
            .view_changes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != usize::from(self.me))
            .filter_map(|(_, v)| v.as_ref().map(|v| v.view))
            .filter(|v| *v > self.view)
            .collect();
        if higher.len() >= self.m.weak_quorum() {
            higher.sort_unstable();
            self.start_view_change(higher[0], now)?;
        }
        self.check_view_change_quorum(now)
    }

    fn build_new_view(&mut self, now: u64) -> Result<()> {
        let view = self.view;
        let q = self.m.quorum();
        let me = usize::from(self.me);
        let mut chosen: Vec<ViewChange> = Vec::with_capacity(q);
        if let Some(own) = self.view_changes[me].clone().filter(|v| v.view == view) {
            chosen.push(own);
        } else {
            return Ok(());
        }
        for (i, vc) in self.view_changes.iter().enumerate() {
            if chosen.len() >= q {
                break;
            }
            if let Some(vc) = vc.as_ref().filter(|v| v.view == view && i != me) {
                chosen.push(vc.clone());
            }
        }
        if chosen.len() < q {
            return Ok(());
        }
        chosen.sort_by_key(|v| v.replica);
        let (cert, entries) = compute_new_view(&chosen);
        let mut signed = Vec::with_capacity(entries.len());
        for (seq, digest) in entries {
            signed.push(NewViewEntry::new(
                &self.identity,
                &self.m,
                view,
                seq,
                digest,
            )?);
        }
        let nv = NewView::new(&self.identity, &self.m, view, chosen, signed)?;
        let payload = encode_arc(&Message::NewView(nv.clone()))?;
        self.install_new_view(&nv, cert, now)?;
        self.new_view_msg = Some(payload.clone());
        self.broadcast(&payload);
        Ok(())
    }

    pub(super) fn on_new_view(&mut self, from: ReplicaIndex, nv: NewView, now: u64) -> Result<()> {
        let primary = self.m.primary(nv.view);
        if from != primary {
            return Err(Error::NotPrimary {
                view: nv.view,
                primary,
                from,
            });
        }
        if nv.view < self.view || (nv.view == self.view && self.active) {
            return Err(Error::StaleView {
                view: nv.view,
                current: self.view,
            });
        }
        let st = nv.statement(&self.m);
        verify_signature(
            &self.m,
            &mut Some(&mut self.cache),
            primary,
            &st,
            &nv.signature,
        )?;
        match self.validate_new_view(&nv) {
            Ok(cert) => self.install_new_view(&nv, cert, now),
            Err(e) => {
                // A NEW-VIEW signed by the primary of the view this replica is
                // changing to that does not match its own VIEW-CHANGE messages: that
                // primary is faulty, so move on. An invalid NEW-VIEW for a higher
                // view proves nothing about the views between, and following it
                // would let one faulty replica push this one to any view.
                if nv.view == self.view && !self.active {
                    self.start_view_change(nv.view.saturating_add(1), now)?;
                }
                Err(e)
            }
        }
    }

    /// Checks a NEW-VIEW's VIEW-CHANGE set and recomputes its pre-prepares.
    fn validate_new_view(&mut self, nv: &NewView) -> Result<CheckpointCert> {
        let q = self.m.quorum();
        if nv.view_changes.len() < q || nv.view_changes.len() > self.m.len() {
            return Err(Error::InvalidViewChange("not a quorum of view changes"));
        }
        let mut prev: Option<ReplicaIndex> = None;
        for vc in &nv.view_changes {
            if prev.is_some_and(|p| p >= vc.replica) {
                return Err(Error::InvalidViewChange(
                    "view changes not in increasing order",
                ));
            }
            prev = Some(vc.replica);
            if vc.view != nv.view {
                return Err(Error::InvalidViewChange("view change for another view"));
            }
            if vc.checkpoint.seq % self.config.checkpoint_interval != 0 {
                return Err(Error::InvalidViewChange("checkpoint off the interval"));
            }
            vc.verify(&self.m, self.config.window, &mut Some(&mut self.cache))?;
        }
        let (cert, entries) = compute_new_view(&nv.view_changes);
        if entries.len() != nv.pre_prepares.len()
            || entries
                .iter()
                .zip(&nv.pre_prepares)
                .any(|((s, d), e)| *s != e.seq || *d != e.digest)
        {
            return Err(Error::InvalidViewChange(
                "pre-prepares differ from the recomputation",
            ));
        }
        let primary = self.m.primary(nv.view);
        for e in &nv.pre_prepares {
            let st = pre_prepare_statement(&self.m, nv.view, e.seq, &e.digest);
            verify_signature(
                &self.m,
                &mut Some(&mut self.cache),
                primary,
                &st,
                &e.signature,
            )?;
        }
        Ok(cert)
    }

    fn install_new_view(&mut self, nv: &NewView, cert: CheckpointCert, now: u64) -> Result<()> {
        let view = nv.view;
        // Writes are durable one by one, so a crash may leave any prefix of this
        // call's writes: the stable certificate and every entry's PRE-PREPARE go
        // first, and only then the view as installed. A prefix without the view
        // write recovers a replica still changing to `view`, which asks for the
        // NEW-VIEW again; one with it recovers every entry too, so no prefix lets
        // the replica accept another batch for a sequence number fixed here.
        if cert.seq > self.stable.seq {
            self.adopt_stable(cert, now)?;
        }
        let null = batch_digest(NULL_BATCH);
        let mut max_s = self.stable.seq;
        for e in &nv.pre_prepares {
            if e.seq <= self.stable.seq || e.seq > self.high() {
                continue;
            }
            max_s = max_s.max(e.seq);
            let slot = self.log.entry(e.seq).or_default();
            if e.digest == null && slot.batch_for(&null).is_some() {
                slot.batch = Some((null, Arc::from(NULL_BATCH)));
                slot.requests = Some(Arc::new(Vec::new()));
            }
            let batch = slot.batch_for(&e.digest);
            slot.enter_view(view);
            slot.pre_prepare = Some((e.digest, e.signature));
            // Vouched for: either a prepared certificate (a quorum accepted it) or null.
            slot.authenticated = true;
            self.persists.push_back(Persist::PrePrepare {
                view,
                seq: e.seq,
                digest: e.digest,
                signature: e.signature,
                batch,
            });
        }
        self.persists
            .push_back(Persist::View { view, active: true });
        for (_, slot) in self.log.range_mut(max_s + 1..) {
            slot.enter_view(view);
        }
        self.view = view;
        self.active = true;
        self.view_entered = now;
        self.last_progress = now;
        self.vc_timer = None;
        self.own_view_change = None;
        self.highest_seen = self.highest_seen.max(max_s);
        for vc in &mut self.view_changes {
            if vc.as_ref().is_some_and(|v| v.view <= view) {
                *vc = None;
            }
        }
        let primary = self.m.primary(view);
        self.next_seq = max_s + 1;
        for p in self.pending.values_mut() {
            p.proposed = false;
        }
        self.queue.clear();
        self.events.push_back(Event::ViewChanged { view, primary });
        let seqs: Vec<u64> = nv
            .pre_prepares
            .iter()
            .map(|e| e.seq)
            .filter(|s| *s > self.stable.seq)
            .collect();
        for seq in seqs {
            self.step(seq, now)?;
        }
        if primary == self.me {
            self.queue = self.pending_order.values().map(|(id, _)| *id).collect();
            self.propose(now, false)?;
        } else {
            let requests: Vec<Request> = self
                .pending_order
                .values()
                .filter_map(|(id, _)| self.pending.get(id).map(|p| p.request.clone()))
                .collect();
            for r in requests {
                let payload = encode_arc(&Message::Request(r))?;
                self.send(primary, payload);
            }
        }
        Ok(())
    }
}

/// The new view's starting checkpoint and pre-prepares, from a set of VIEW-CHANGE
/// messages (Castro and Liskov's rule): start at the highest stable checkpoint
/// `min-s`; for every sequence number up to the highest prepared one `max-s`, take
/// the digest prepared in the highest view (ties: the smaller digest), or the null
/// batch if none prepared it.
pub(crate) fn compute_new_view(vcs: &[ViewChange]) -> (CheckpointCert, Vec<(u64, Digest)>) {
    let mut cert: Option<&CheckpointCert> = None;
    for vc in vcs {
        if cert.is_none_or(|c| vc.checkpoint.seq > c.seq) {
            cert = Some(&vc.checkpoint);
        }
    }
    let cert = cert
        .cloned()
        .unwrap_or_else(|| CheckpointCert::genesis([0; 32]));
    let min_s = cert.seq;
    let mut best: BTreeMap<u64, (u64, Digest)> = BTreeMap::new();
    for vc in vcs {
        for p in &vc.prepared {
            if p.seq <= min_s {
                continue;
            }
            let better = best
                .get(&p.seq)
                .is_none_or(|(v, d)| p.view > *v || (p.view == *v && p.digest < *d));
            if better {
                best.insert(p.seq, (p.view, p.digest));
            }
        }
    }
    let max_s = best.keys().next_back().copied().unwrap_or(min_s);
    let null = batch_digest(NULL_BATCH);
    let entries = (min_s + 1..=max_s)
        .map(|s| (s, best.get(&s).map_or(null, |(_, d)| *d)))
        .collect();
    (cert, entries)
}
