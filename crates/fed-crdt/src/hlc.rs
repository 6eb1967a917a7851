//! Hybrid logical clock: stamps and the clock that issues them.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    id::ReplicaId,
};

/// Default maximum forward skew accepted from a peer: 10 seconds.
///
/// Well above what NTP-synchronised hosts drift apart, small enough that a
/// peer with a clock in the future wins concurrent writes only for seconds.
pub const DEFAULT_MAX_FORWARD_SKEW_MS: u64 = 10_000;

/// A hybrid-logical-clock stamp: physical milliseconds, a logical counter and
/// the id of the node that issued it.
///
/// Stamps are totally ordered: by `physical_ms`, then `logical`, then `node`
/// (bytewise). Because the node id is part of the stamp, two nodes never
/// issue equal stamps; equal stamps carrying different data therefore mean a
/// cloned or misbehaving node, and the LWW types report them.
///
/// Wire form (postcard): `physical_ms` as a varint (1 to 10 bytes),
/// `logical` as a varint (1 to 5 bytes), then the 32 bytes of `node`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    physical_ms: u64,
    logical: u32,
    node: ReplicaId,
}

impl Hlc {
    /// Builds a stamp from its parts. Stamps for writes should come from an
    /// [`HlcClock`]; this constructor exists for horizons, tests and
    /// decoding.
    pub const fn new(physical_ms: u64, logical: u32, node: ReplicaId) -> Self {
        Self {
            physical_ms,
            logical,
            node,
        }
    }

    /// The smallest stamp at `physical_ms`: every stamp issued at that
    /// millisecond or later compares greater or equal. Use it to turn a
    /// wall-clock time into a garbage-collection horizon.
    pub const fn floor(physical_ms: u64) -> Self {
        Self::new(physical_ms, 0, ReplicaId::ZERO)
    }

    /// Physical component, in milliseconds (by convention since the Unix epoch).
    pub const fn physical_ms(&self) -> u64 {
        self.physical_ms
    }

    /// Logical counter: orders events within one physical millisecond.
    pub const fn logical(&self) -> u32 {
        self.logical
    }

    /// The node that issued the stamp.
    pub const fn node(&self) -> ReplicaId {
        self.node
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{:?}", self.physical_ms, self.logical, self.node)
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({self})")
    }
}

/// The clock of one node: issues increasing [`Hlc`] stamps and absorbs
/// remote ones.
///
/// Time is a parameter: every call takes `now_ms`, the caller's reading of
/// its wall clock in milliseconds. The clock never reads the system time.
///
/// Rules (Kulkarni et al., "Logical Physical Clocks", 2014), with `l` and
/// `c` the last physical and logical values of this clock:
///
/// * [`tick`](Self::tick)`(now)`: `l' = max(l, now)`; `c' = c + 1` if
///   `l' == l`, else `0`.
/// * [`observe`](Self::observe)`(m, now)`: first the skew check, then
///   `l' = max(l, m.l, now)`; `c'` is `max(c, m.c) + 1` if `l' == l == m.l`,
///   `c + 1` if only `l' == l`, `m.c + 1` if only `l' == m.l`, else `0`.
/// * Skew check: a remote stamp with `m.l > now + max_forward_skew_ms` is
///   rejected with [`Error::ClockSkew`] and the clock is left unchanged.
/// * If the logical counter would overflow `u32`, the physical part moves
///   one millisecond ahead and the counter restarts at 0 (the order stays
///   strictly increasing). Both parts saturate at their maximum instead of
///   wrapping; the clock never panics.
///
/// Every stamp returned is strictly greater than every stamp this clock
/// returned or observed before, with one exception: [`tick`](Self::tick)
/// once the clock has reached `(u64::MAX, u32::MAX)` returns the same stamp
/// again. [`observe`](Self::observe) and the writes of
/// [`LwwMap`](crate::LwwMap) and [`LwwRegister`](crate::LwwRegister) return
/// [`Error::ClockSaturated`] instead. A clock only gets there by absorbing a
/// stamp at the top of the range, which the skew check refuses for any
/// realistic `now`; stamps that skip the check (the local and trusted-only
/// merge functions) must come from a source the caller trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HlcClock {
    node: ReplicaId,
    physical_ms: u64,
    logical: u32,
    max_forward_skew_ms: u64,
}

impl HlcClock {
    /// A clock for `node` that rejects remote stamps more than
    /// `max_forward_skew_ms` ahead of `now`.
    pub const fn new(node: ReplicaId, max_forward_skew_ms: u64) -> Self {
        Self {
            node,
            physical_ms: 0,
            logical: 0,
            max_forward_skew_ms,
        }
    }

    /// A clock for `node` with [`DEFAULT_MAX_FORWARD_SKEW_MS`].
    pub const fn with_default_skew(node: ReplicaId) -> Self {
        Self::new(node, DEFAULT_MAX_FORWARD_SKEW_MS)
    }

    /// Restores a clock from a persisted last stamp, so a restarted node
    /// never issues a stamp at or below one it issued before.
    pub const fn resume(last: Hlc, max_forward_skew_ms: u64) -> Self {
        Self {
            node: last.node,
            physical_ms: last.physical_ms,
            logical: last.logical,
            max_forward_skew_ms,
        }
    }

    /// The node this clock stamps for.
    pub const fn node(&self) -> ReplicaId {
        self.node
    }

    /// The configured maximum forward skew.
    pub const fn max_forward_skew_ms(&self) -> u64 {
        self.max_forward_skew_ms
    }

    /// The clock's current value (the last stamp issued or the result of the
    /// last observation). Persist it to [`resume`](Self::resume) after a restart.
    pub const fn last(&self) -> Hlc {
        Hlc::new(self.physical_ms, self.logical, self.node)
    }

    /// Issues a stamp for a local event at wall-clock time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let l = self.physical_ms.max(now_ms);
        if l == self.physical_ms {
            self.set_incremented(l, self.logical);
        } else {
            self.physical_ms = l;
            self.logical = 0;
        }
        self.last()
    }

    /// Checks a remote stamp against the forward-skew bound without changing
    /// the clock.
    pub fn check(&self, remote: &Hlc, now_ms: u64) -> Result<()> {
        if remote.physical_ms > now_ms.saturating_add(self.max_forward_skew_ms) {
            return Err(Error::ClockSkew {
                remote_ms: remote.physical_ms,
                local_ms: now_ms,
                max_skew_ms: self.max_forward_skew_ms,
            });
        }
        Ok(())
    }

    /// Absorbs a remote stamp received at wall-clock time `now_ms` and
    /// returns the stamp of the receive event, which is greater than both
    /// `remote` and everything this clock issued before.
    ///
    /// # Errors
    ///
    /// [`Error::ClockSkew`] if `remote` is more than the maximum forward skew
    /// ahead of `now_ms`; [`Error::ClockSaturated`] if no stamp greater than
    /// both exists. The clock is then unchanged.
    pub fn observe(&mut self, remote: &Hlc, now_ms: u64) -> Result<Hlc> {
        self.check(remote, now_ms)?;
        self.issue_above(Some(*remote), now_ms)
    }

    /// Issues a stamp for a local write that must supersede `floor` (when
    /// given): the receive rule applied to `floor` without the skew check
    /// (`floor` comes from this node's own state), or a [`tick`](Self::tick).
    ///
    /// # Errors
    ///
    /// [`Error::ClockSaturated`] if the result would not be strictly greater
    /// than `floor` and than the clock's last stamp; the clock is then
    /// unchanged.
    pub(crate) fn issue_above(&mut self, floor: Option<Hlc>, now_ms: u64) -> Result<Hlc> {
        let last = self.last();
        let mut next = self.clone();
        let stamp = match &floor {
            Some(f) => next.observe_unchecked(f, now_ms),
            None => next.tick(now_ms),
        };
        let bound = floor.map_or(last, |f| f.max(last));
        if stamp <= bound {
            return Err(Error::ClockSaturated { floor: bound });
        }
        *self = next;
        Ok(stamp)
    }

    /// The receive rule without the skew check: used for stamps this node
    /// already holds in its own state (for example to make a local write
    /// supersede the current value of a key).
    pub(crate) fn observe_unchecked(&mut self, remote: &Hlc, now_ms: u64) -> Hlc {
        let (l, c, ml, mc) = (
            self.physical_ms,
            self.logical,
            remote.physical_ms,
            remote.logical,
        );
        let l2 = l.max(ml).max(now_ms);
        if l2 == l && l2 == ml {
            self.set_incremented(l2, c.max(mc));
        } else if l2 == l {
            self.set_incremented(l2, c);
        } else if l2 == ml {
            self.set_incremented(l2, mc);
        } else {
            self.physical_ms = l2;
            self.logical = 0;
        }
        self.last()
    }

    /// Sets the clock to `(physical, logical + 1)`, carrying into the
    /// physical part on counter overflow and saturating at the maximum.
    fn set_incremented(&mut self, physical: u64, logical: u32) {
        match logical.checked_add(1) {
            Some(next) => {
                self.physical_ms = physical;
                self.logical = next;
            }
            None => match physical.checked_add(1) {
                Some(p) => {
                    self.physical_ms = p;
                    self.logical = 0;
                }
                None => {
                    self.physical_ms = u64::MAX;
                    self.logical = u32::MAX;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u64) -> ReplicaId {
        ReplicaId::from_u64(n)
    }

    #[test]
    fn tick_follows_wall_clock_and_counts_within_a_millisecond() {
        let mut c = HlcClock::new(node(1), 100);
        assert_eq!(c.tick(5), Hlc::new(5, 0, node(1)));
        assert_eq!(c.tick(5), Hlc::new(5, 1, node(1)));
        // Wall clock went backwards: stay at 5 and keep counting.
        assert_eq!(c.tick(3), Hlc::new(5, 2, node(1)));
        assert_eq!(c.tick(9), Hlc::new(9, 0, node(1)));
    }

    #[test]
    fn observe_applies_each_receive_case() {
        let mut c = HlcClock::new(node(1), 100);
        c.tick(10); // (10, 0)
        // Remote ahead in physical time, within skew.
        assert_eq!(
            c.observe(&Hlc::new(20, 7, node(2)), 12).unwrap(),
            Hlc::new(20, 8, node(1))
        );
        // Same physical as local and remote: max counter + 1.
        assert_eq!(
            c.observe(&Hlc::new(20, 30, node(2)), 15).unwrap(),
            Hlc::new(20, 31, node(1))
        );
        // Remote behind: local counter + 1.
        assert_eq!(
            c.observe(&Hlc::new(3, 99, node(2)), 15).unwrap(),
            Hlc::new(20, 32, node(1))
        );
        // Wall clock ahead of both: counter resets.
        assert_eq!(
            c.observe(&Hlc::new(3, 99, node(2)), 50).unwrap(),
            Hlc::new(50, 0, node(1))
        );
    }

    #[test]
    fn future_stamp_beyond_skew_is_rejected_and_clock_unchanged() {
        let mut c = HlcClock::new(node(1), 100);
        c.tick(1_000);
        let before = c.clone();
        let err = c.observe(&Hlc::new(1_101, 0, node(2)), 1_000).unwrap_err();
        assert_eq!(
            err,
            Error::ClockSkew {
                remote_ms: 1_101,
                local_ms: 1_000,
                max_skew_ms: 100
            }
        );
        assert_eq!(c, before);
        // Exactly at the bound is accepted.
        assert!(c.observe(&Hlc::new(1_100, 0, node(2)), 1_000).is_ok());
    }

    #[test]
    fn counter_overflow_carries_into_physical_time() {
        let mut c = HlcClock::new(node(1), u64::MAX);
        let s = c.observe(&Hlc::new(7, u32::MAX, node(2)), 0).unwrap();
        assert_eq!(s, Hlc::new(8, 0, node(1)));
        assert!(s > Hlc::new(7, u32::MAX, node(2)));
    }

    #[test]
    fn saturation_is_a_typed_error_not_an_equal_stamp() {
        let mut c = HlcClock::new(node(1), u64::MAX);
        // The top stamp cannot be exceeded: refused, clock unchanged.
        let top = Hlc::new(u64::MAX, u32::MAX, node(9));
        let before = c.clone();
        assert_eq!(
            c.observe(&top, u64::MAX),
            Err(Error::ClockSaturated { floor: top })
        );
        assert_eq!(c, before);
        // One below the top is absorbed; the clock then sits at the top...
        let s = c
            .observe(&Hlc::new(u64::MAX, u32::MAX - 1, node(9)), u64::MAX)
            .unwrap();
        assert_eq!(s, Hlc::new(u64::MAX, u32::MAX, node(1)));
        // ...where a further stamp above what it issued cannot exist.
        assert_eq!(
            c.issue_above(None, u64::MAX),
            Err(Error::ClockSaturated { floor: s })
        );
        assert_eq!(
            c.observe(&Hlc::new(1, 0, node(2)), 1),
            Err(Error::ClockSaturated { floor: s })
        );
        // `tick` never panics: it stays at the top.
        assert_eq!(c.tick(u64::MAX), s);
    }

    #[test]
    fn order_is_physical_then_logical_then_node() {
        assert!(Hlc::new(1, 9, node(9)) < Hlc::new(2, 0, node(0)));
        assert!(Hlc::new(1, 1, node(9)) < Hlc::new(1, 2, node(0)));
        assert!(Hlc::new(1, 1, node(1)) < Hlc::new(1, 1, node(2)));
        assert!(Hlc::floor(5) <= Hlc::new(5, 0, node(0)));
    }
}
