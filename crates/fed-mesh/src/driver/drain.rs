//! The order in which the driver carries out the core's actions: a replica
//! write is synced before anything the core asked for after it (the messages
//! that depend on it), while writes that come together share one sync. A trait
//! stands between this rule and the swarm so that tests check it alone.

use crate::core::Action;

/// Where [`drain`] takes actions from and how it carries them out: the driver,
/// or a test's recorder.
pub(super) trait ActionSink {
    /// The core's next action, if it has one.
    fn next_action(&mut self) -> Option<Action>;
    /// Writes the replica's state and syncs it (clearing `writes`).
    fn sync(&mut self, writes: &mut Vec<fed_pbft::Persist>);
    /// Carries out an action that is not a replica write (the node's own
    /// writes and an epoch's start among them: a failure there stops it too).
    fn perform(&mut self, action: Action);
    /// Whether the node stopped (a write failed): nothing more is done.
    fn stopped(&self) -> bool;
}

/// Carries out every action the core has. The replica's writes among them go
/// in one synced transaction, before any action that came after the first of
/// them (the messages that depend on them); the node's own writes and an
/// epoch's start, synced writes of their own, end such a run. What the held
/// actions make the core do is taken after them.
pub(super) fn drain(sink: &mut impl ActionSink) {
    let mut writes: Vec<fed_pbft::Persist> = Vec::new();
    let mut held: Vec<Action> = Vec::new();
    while !sink.stopped() {
        match sink.next_action() {
            Some(Action::Persist(w)) => writes.extend(w),
            Some(barrier @ (Action::EnterEpoch { .. } | Action::Store(_))) => {
                if !sync(sink, &mut writes) {
                    return;
                }
                for action in held.drain(..) {
                    if sink.stopped() {
                        return;
                    }
                    sink.perform(action);
                }
                if !sink.stopped() {
                    sink.perform(barrier);
                }
            }
            Some(action) if writes.is_empty() => sink.perform(action),
            Some(action) => held.push(action),
            None if writes.is_empty() && held.is_empty() => break,
            None => {
                if !sync(sink, &mut writes) {
                    return;
                }
                for action in std::mem::take(&mut held) {
                    if sink.stopped() {
                        return;
                    }
                    sink.perform(action);
                }
            }
        }
    }
}

/// Syncs `writes` if there are any; whether the node goes on.
fn sync(sink: &mut impl ActionSink, writes: &mut Vec<fed_pbft::Persist>) -> bool {
    if !writes.is_empty() && !sink.stopped() {
        sink.sync(writes);
        writes.clear();
    }
    !sink.stopped()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use libp2p::PeerId;
    use proptest::prelude::*;

    use super::*;
    use crate::{core::OutboundId, wire::Protocol};

    /// A step of a scripted core: each action carries a number that names it.
    #[derive(Clone, Debug)]
    enum Step {
        /// A replica write.
        Write,
        /// A message (it depends on every write before it).
        Send,
        /// One of the node's own writes (a barrier).
        Store,
        /// An epoch's start (a barrier).
        Epoch,
    }

    fn action(step: &Step, n: u64) -> Action {
        match step {
            Step::Write => Action::Persist(vec![fed_pbft::Persist::View {
                view: n,
                active: true,
            }]),
            Step::Send => Action::Send {
                peer: PeerId::random(),
                protocol: Protocol::Pbft,
                id: OutboundId(n),
                payload: Vec::new(),
            },
            Step::Store => Action::Store(Vec::new()),
            Step::Epoch => Action::EnterEpoch {
                epoch: n,
                link: Vec::new(),
            },
        }
    }

    /// What an action is named by: a write's view, a message's id, an epoch.
    fn name(action: &Action) -> Option<u64> {
        match action {
            Action::Persist(w) => match w.first() {
                Some(fed_pbft::Persist::View { view, .. }) => Some(*view),
                _ => None,
            },
            Action::Send { id, .. } => Some(id.0),
            Action::EnterEpoch { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }

    /// A scripted core: its actions, and those that carrying out an action
    /// makes it produce next. It checks, as each action is carried out, that
    /// every write taken before that action is synced.
    struct Recorder {
        queue: VecDeque<Action>,
        then: HashMap<u64, Vec<Action>>,
        /// Writes taken so far, and those synced.
        taken: usize,
        synced: usize,
        /// For each action taken (not a write), the writes taken before it.
        before: HashMap<u64, usize>,
        /// Barriers without a name, in the order taken.
        stores: VecDeque<usize>,
        /// Actions taken that are not writes.
        others: usize,
        /// The actions carried out, in order; the syncs.
        performed: Vec<Option<u64>>,
        syncs: usize,
        violations: Vec<String>,
        /// The sync, or the action carried out (counting from 1), that fails.
        fail_at_sync: Option<usize>,
        fail_at_perform: Option<usize>,
        stopped: bool,
    }

    impl ActionSink for Recorder {
        fn next_action(&mut self) -> Option<Action> {
            let a = self.queue.pop_front()?;
            if !matches!(a, Action::Persist(_)) {
                self.others += 1;
            }
            match (&a, name(&a)) {
                (Action::Persist(w), _) => self.taken += w.len(),
                (Action::Store(_), _) => self.stores.push_back(self.taken),
                (_, Some(n)) => {
                    self.before.insert(n, self.taken);
                }
                _ => {}
            }
            Some(a)
        }

        fn sync(&mut self, writes: &mut Vec<fed_pbft::Persist>) {
            assert!(!writes.is_empty(), "an empty sync");
            self.syncs += 1;
            if self.fail_at_sync == Some(self.syncs) {
                self.stopped = true;
                return;
            }
            self.synced += writes.len();
        }

        fn perform(&mut self, action: Action) {
            assert!(!self.stopped, "an action after the node stopped");
            let needed = match (&action, name(&action)) {
                (Action::Persist(_), _) => panic!("a write carried out as an action"),
                (Action::Store(_), _) => self.stores.pop_front().unwrap_or(0),
                (_, Some(n)) => self.before.get(&n).copied().unwrap_or(0),
                _ => 0,
            };
            let n = name(&action);
            if self.synced < needed {
                self.violations.push(format!(
                    "{n:?} carried out with {} of the {needed} writes before it synced",
                    self.synced
                ));
            }
            self.performed.push(n);
            if self.fail_at_perform == Some(self.performed.len()) {
                self.stopped = true;
            }
            if let Some(n) = n
                && let Some(next) = self.then.remove(&n)
            {
                self.queue.extend(next);
            }
        }

        fn stopped(&self) -> bool {
            self.stopped
        }
    }

    fn steps() -> impl Strategy<Value = Vec<(Step, Vec<Step>)>> {
        let step = prop_oneof![
            4 => Just(Step::Write),
            4 => Just(Step::Send),
            1 => Just(Step::Store),
            1 => Just(Step::Epoch),
        ];
        prop::collection::vec((step.clone(), prop::collection::vec(step, 0..4)), 0..24)
    }

    /// Builds the recorder for a script: the follow-ups of a message or an
    /// epoch's start are what carrying it out makes the core do next (those
    /// of a write or a store are left out).
    fn recorder(
        script: &[(Step, Vec<Step>)],
        fail_at_sync: Option<usize>,
        fail_at_perform: Option<usize>,
    ) -> (Recorder, Vec<u64>) {
        let mut next = 1u64;
        let mut fresh = |step: &Step| {
            let a = action(step, next);
            next += 1;
            a
        };
        let mut queue = VecDeque::new();
        let mut then = HashMap::new();
        let mut order = Vec::new();
        for (step, follow) in script {
            let a = fresh(step);
            let named = matches!(step, Step::Send | Step::Epoch);
            if named && let Some(n) = name(&a) {
                order.push(n);
                let f: Vec<Action> = follow.iter().map(&mut fresh).collect();
                then.insert(n, f);
            }
            queue.push_back(a);
        }
        (
            Recorder {
                queue,
                then,
                taken: 0,
                synced: 0,
                before: HashMap::new(),
                stores: VecDeque::new(),
                others: 0,
                performed: Vec::new(),
                syncs: 0,
                violations: Vec::new(),
                fail_at_sync,
                fail_at_perform,
                stopped: false,
            },
            order,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_cases(256)))]

        /// Whatever the core asks for, in whatever order: no action is carried
        /// out before every write taken before it is synced, every write is
        /// synced, every action is carried out, and the top-level messages
        /// and epochs keep their order.
        #[test]
        fn no_action_overtakes_an_earlier_write(script in steps()) {
            let (mut r, order) = recorder(&script, None, None);
            drain(&mut r);
            prop_assert!(r.violations.is_empty(), "{:?}", r.violations);
            prop_assert_eq!(r.synced, r.taken, "writes left unsynced");
            prop_assert!(r.queue.is_empty() && r.then.is_empty(), "actions left");
            prop_assert_eq!(r.performed.len(), r.others, "actions dropped");
            prop_assert!(r.stores.is_empty(), "a store dropped");
            let performed: Vec<u64> = r.performed.iter().flatten().copied().collect();
            let top: Vec<u64> = performed.iter().copied().filter(|n| order.contains(n)).collect();
            prop_assert_eq!(top, order);
        }

        /// A failed sync stops the node: nothing that came after the failed
        /// writes is carried out.
        #[test]
        fn nothing_follows_a_failed_sync(script in steps()) {
            let (mut r, _) = recorder(&script, Some(1), None);
            drain(&mut r);
            prop_assert!(r.violations.is_empty(), "{:?}", r.violations);
            prop_assert_eq!(r.synced, 0);
        }

        /// An action whose carrying out stops the node (the node's own
        /// write or an epoch's start, failing) is the last: `perform` is
        /// never called again (the recorder panics if it is).
        #[test]
        fn nothing_follows_a_failed_action(script in steps(), k in 1usize..6) {
            let (mut r, _) = recorder(&script, None, Some(k));
            drain(&mut r);
            prop_assert!(r.violations.is_empty(), "{:?}", r.violations);
            prop_assert!(r.performed.len() <= k);
        }
    }

    /// The case the early replies rest on (mesh.md, Durability): a reply the
    /// core puts before its own `Committed` write still waits for an earlier
    /// input's write that is not yet synced.
    #[test]
    fn a_reply_waits_for_an_earlier_inputs_write() {
        let (mut r, _) = recorder(
            &[
                (Step::Write, Vec::new()),
                (Step::Send, Vec::new()),
                (Step::Write, Vec::new()),
            ],
            None,
            None,
        );
        drain(&mut r);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.performed, vec![Some(2)]);
        assert_eq!(r.syncs, 1, "the two writes share one sync");
    }
}
