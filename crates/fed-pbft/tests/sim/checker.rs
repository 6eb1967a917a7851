//! The invariant checker.
//!
//! - **Agreement**: correct replicas execute the same batch at every sequence
//!   number; no two valid commit proofs for one sequence number name different
//!   batches (proofs are collected from executions, from every COMMIT sent on the
//!   network and from every COMMITTED delivered); no correct replica prepares two
//!   batches for one (view, seq), a restart between them included; nor, in a
//!   later view, another batch than one that committed at that sequence number
//!   (the view-change safety lemma: once a batch commits, every later NEW-VIEW
//!   carries it); and correct replicas hold the same whole replicated state
//!   (application and client table) after every sequence number they both
//!   reached, and sign the same checkpoint digests.
//! - **Validity**: only submitted requests execute, each at one sequence number.
//! - **No data lost**: every request a client saw complete is in the client table
//!   of every up-to-date correct replica, with the outcome the client accepted.
//! - **Liveness** and **convergence** where the scenario asks for them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use fed_pbft::{
    ClientId, CommitProof, Digest, Executed, Membership, Outcome, RequestId, Signature, labels,
};

#[derive(Debug, Default)]
pub(crate) struct Checker {
    /// seq → (digest, first correct replica that executed it).
    global: BTreeMap<u64, (Digest, u16)>,
    /// Per replica: request → the sequence number it executed at.
    at: Vec<HashMap<RequestId, u64>>,
    submitted: HashSet<RequestId>,
    /// COMMIT signatures seen on the network: (view, seq, digest) → signer → signature.
    commits: HashMap<(u64, u64, Digest), BTreeMap<u16, Signature>>,
    /// Valid commit proofs: seq → digest → lowest view of a proof.
    proven: BTreeMap<u64, BTreeMap<Digest, u64>>,
    proven_keys: HashSet<(u64, u64, Digest)>,
    /// PREPAREs sent by correct replicas: (seq, view, digest, replica).
    prepares: BTreeSet<(u64, u64, Digest, u16)>,
    /// PRE-PREPAREs sent by correct primaries: (view, seq) → digest.
    pre_prepares: BTreeMap<(u64, u64), Digest>,
    /// Whole replicated state digest per sequence number, and who reported it first.
    states: BTreeMap<u64, (Digest, u16)>,
    /// Per client: the latest completed request (timestamp, outcome).
    completed: BTreeMap<ClientId, (u64, Outcome)>,
    pub(crate) violations: Vec<String>,
    pub(crate) executed_batches: u64,
}

/// `hash(STATE, [be64(seq), snapshot])` (pbft.md §6).
pub(crate) fn state_digest(seq: u64, snapshot: &[u8]) -> Digest {
    fed_crypto::hash(labels::STATE, &[&seq.to_be_bytes(), snapshot])
}

impl Checker {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            at: vec![HashMap::new(); n],
            ..Self::default()
        }
    }

    pub(crate) fn submitted(&mut self, id: RequestId) {
        self.submitted.insert(id);
    }

    pub(crate) fn violation(&mut self, what: String) {
        if self.violations.len() < 20 && !self.violations.contains(&what) {
            self.violations.push(what);
        }
    }

    /// An `Executed` event of a correct replica.
    pub(crate) fn executed(&mut self, m: &Membership, replica: u16, e: &Executed) {
        self.executed_batches += 1;
        if let Err(err) = e.proof.verify_batch(m, &e.batch) {
            self.violation(format!(
                "replica {replica}: commit proof of seq {} does not verify with its batch: {err}",
                e.seq
            ));
        } else {
            self.proven(&e.proof);
        }
        if e.proof.seq != e.seq || e.proof.digest != e.digest {
            self.violation(format!(
                "replica {replica}: proof names another batch than seq {}",
                e.seq
            ));
        }
        match self.global.get(&e.seq) {
            Some((d, first)) if *d != e.digest => {
                let first = *first;
                self.violation(format!(
                    "agreement: replicas {first} and {replica} executed different batches at seq {}",
                    e.seq
                ));
            }
            Some(_) => {}
            None => {
                self.global.insert(e.seq, (e.digest, replica));
            }
        }
        for id in &e.requests {
            if !self.submitted.contains(id) {
                self.violation(format!(
                    "validity: replica {replica} executed an unsubmitted request {id:?}"
                ));
            }
            let prev = self.at[usize::from(replica)].insert(*id, e.seq);
            if let Some(prev) = prev
                && prev != e.seq
            {
                self.violation(format!(
                    "validity: replica {replica} executed {id:?} at seq {prev} and again at seq {}",
                    e.seq
                ));
            }
        }
    }

    fn proven(&mut self, p: &CommitProof) {
        let key = (p.view, p.seq, p.digest);
        if !self.proven_keys.insert(key) {
            return;
        }
        let views = self.proven.entry(p.seq).or_default();
        let v = views.entry(p.digest).or_insert(p.view);
        *v = (*v).min(p.view);
    }

    /// A COMMIT sent by `sender` (any replica, correct or not). Once a quorum of
    /// signers is held for one (view, seq, digest), the proof they make is checked
    /// like any proof; signatures of faulty senders that do not verify are left out.
    pub(crate) fn commit_sent(
        &mut self,
        m: &Membership,
        correct: &[bool],
        sender: u16,
        c: &fed_pbft::Commit,
    ) {
        if c.replica != sender {
            return;
        }
        let key = (c.view, c.seq, c.digest);
        if self.proven_keys.contains(&key) {
            return;
        }
        let sigs = self.commits.entry(key).or_default();
        if sigs.contains_key(&sender) {
            return;
        }
        sigs.insert(sender, c.signature);
        if sigs.len() < m.quorum() {
            return;
        }
        let good: Vec<(u16, Signature)> = sigs
            .iter()
            .filter(|(r, _)| correct[usize::from(**r)])
            .map(|(r, s)| (*r, *s))
            .collect();
        let faulty: Vec<(u16, Signature)> = sigs
            .iter()
            .filter(|(r, _)| !correct[usize::from(**r)])
            .map(|(r, s)| (*r, *s))
            .collect();
        // Every subset of the faulty senders' signatures (at most a few).
        for mask in (0u32..1 << faulty.len()).rev() {
            let mut signatures = good.clone();
            signatures.extend(
                faulty
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, s)| *s),
            );
            if signatures.len() < m.quorum() {
                continue;
            }
            signatures.sort_by_key(|(r, _)| *r);
            signatures.truncate(m.len());
            let proof = CommitProof {
                membership: *m.id(),
                view: c.view,
                seq: c.seq,
                digest: c.digest,
                signatures,
            };
            if proof.verify(m).is_ok() {
                self.proven(&proof);
                self.commits.remove(&key);
                return;
            }
        }
    }

    /// A COMMITTED message (a proof and its batch) delivered to anyone.
    pub(crate) fn committed_seen(&mut self, m: &Membership, p: &CommitProof, batch: &[u8]) {
        if self.proven_keys.contains(&(p.view, p.seq, p.digest)) {
            return;
        }
        if p.verify_batch(m, batch).is_ok() {
            self.proven(p);
        }
    }

    /// A PRE-PREPARE sent by a correct replica (a primary): one digest per
    /// (view, seq), restarts included.
    pub(crate) fn pre_prepare_sent(&mut self, replica: u16, view: u64, seq: u64, digest: Digest) {
        if let Some(other) = self.pre_prepares.insert((view, seq), digest)
            && other != digest
        {
            self.violation(format!(
                "agreement: correct primary {replica} pre-prepared two batches at seq {seq} in view {view}"
            ));
        }
    }

    /// A PREPARE sent by a correct replica.
    pub(crate) fn prepare_sent(&mut self, replica: u16, p: &fed_pbft::Prepare) {
        self.prepares.insert((p.seq, p.view, p.digest, replica));
    }

    /// The whole replicated state of a correct replica after `seq` (from its
    /// snapshot, or from a CHECKPOINT it signed).
    pub(crate) fn state(&mut self, replica: u16, seq: u64, digest: Digest) {
        match self.states.get(&seq) {
            Some((d, first)) if *d != digest => {
                let first = *first;
                self.violation(format!(
                    "agreement: replicas {first} and {replica} hold different replicated states \
                     (application and client table) after seq {seq}"
                ));
            }
            Some(_) => {}
            None => {
                self.states.insert(seq, (digest, replica));
            }
        }
    }

    /// A client accepted `outcome` for its request `timestamp`.
    pub(crate) fn completed(&mut self, client: ClientId, timestamp: u64, outcome: Outcome) {
        let e = self
            .completed
            .entry(client)
            .or_insert((0, Outcome::Refused));
        if timestamp >= e.0 {
            *e = (timestamp, outcome);
        }
    }

    /// Checks the final client table of an up-to-date correct replica: every
    /// completed request is there (or a later one of the same client), with the
    /// outcome the client accepted.
    pub(crate) fn client_table(&mut self, replica: u16, snapshot: &[u8]) {
        type Snap = (Vec<u8>, Vec<(ClientId, (u64, Outcome))>);
        let Ok((_, clients)) = postcard::from_bytes::<Snap>(snapshot) else {
            self.violation(format!("replica {replica}: snapshot does not decode"));
            return;
        };
        let table: BTreeMap<ClientId, (u64, Outcome)> = clients.into_iter().collect();
        for (client, (ts, outcome)) in self.completed.clone() {
            match table.get(&client) {
                Some((t, _)) if *t > ts => {}
                Some((t, o)) if *t == ts && *o == outcome => {}
                other => self.violation(format!(
                    "data lost: replica {replica} holds {other:?} for client {client:?}, which \
                     completed request {ts} with {outcome:?}"
                )),
            }
        }
    }

    /// End-of-run checks over everything collected.
    pub(crate) fn finish(&mut self) {
        let mut found = Vec::new();
        for (seq, digests) in &self.proven {
            if digests.len() > 1 {
                found.push(format!(
                    "agreement: {} valid commit proofs name different batches at seq {seq}",
                    digests.len()
                ));
            }
        }
        // A correct replica signs one PREPARE per (view, seq), restarts
        // included: what makes a prepared certificate unique in its view.
        let mut signed: BTreeMap<(u64, u64, u16), Digest> = BTreeMap::new();
        for (seq, view, digest, replica) in &self.prepares {
            if let Some(other) = signed.insert((*seq, *view, *replica), *digest)
                && other != *digest
            {
                found.push(format!(
                    "agreement: correct replica {replica} prepared two batches at seq {seq} \
                     in view {view}"
                ));
            }
        }
        for (seq, view, digest, replica) in &self.prepares {
            let Some(proofs) = self.proven.get(seq) else {
                continue;
            };
            for (d, v) in proofs {
                if d != digest && v < view {
                    found.push(format!(
                        "agreement: correct replica {replica} prepared another batch at seq {seq} \
                         in view {view} than the one committed there in view {v}"
                    ));
                }
            }
        }
        for f in found {
            self.violation(f);
        }
    }

    /// Compares the final whole states of correct replicas that executed the same
    /// prefix.
    pub(crate) fn final_states(&mut self, states: &[(u16, u64, Vec<u8>)]) {
        let mut by_seq: BTreeMap<u64, (u16, &Vec<u8>)> = BTreeMap::new();
        for (r, seq, snap) in states {
            match by_seq.get(seq) {
                Some((first, s)) if *s != snap => {
                    let first = *first;
                    self.violation(format!(
                        "agreement: replicas {first} and {r} hold different states after seq {seq}"
                    ));
                }
                Some(_) => {}
                None => {
                    by_seq.insert(*seq, (*r, snap));
                }
            }
        }
    }

    pub(crate) fn liveness(&mut self, outstanding: usize, now: u64) {
        if outstanding > 0 {
            self.violation(format!(
                "liveness: {outstanding} requests still outstanding at t = {now} ms"
            ));
        }
    }
}
