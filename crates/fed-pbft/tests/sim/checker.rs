//! The invariant checker: agreement, validity, proofs, liveness.

use std::collections::{BTreeMap, HashMap, HashSet};

use fed_pbft::{Digest, Executed, Membership, RequestId};

#[derive(Debug, Default)]
pub(crate) struct Checker {
    /// seq → (digest, first correct replica that executed it).
    global: BTreeMap<u64, (Digest, u16)>,
    /// Per replica: request → the sequence number it executed at.
    at: Vec<HashMap<RequestId, u64>>,
    submitted: HashSet<RequestId>,
    pub(crate) violations: Vec<String>,
    pub(crate) executed_batches: u64,
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

    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }

    /// An `Executed` event of a correct replica.
    pub(crate) fn executed(&mut self, m: &Membership, replica: u16, e: &Executed) {
        self.executed_batches += 1;
        if let Err(err) = e.proof.verify(m) {
            self.violation(format!(
                "replica {replica}: commit proof of seq {} does not verify: {err}",
                e.seq
            ));
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

    /// Compares the final application states of correct replicas that executed
    /// the same prefix.
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
