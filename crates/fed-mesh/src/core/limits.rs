//! Bounds and timing of the node, and the per-peer token bucket.

use crate::error::{Error, Result};

/// The node's bounds. Every queue and table of the core is bounded by one of
/// these; the defaults suit a federation of up to a few hundred members.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Outbound sessions the node keeps (it dials directory members and
    /// discovered peers while it has fewer). Default 32.
    pub max_peers: usize,
    /// Inbound sessions the node accepts. Default 256.
    pub max_inbound_sessions: usize,
    /// Handshakes in progress at once, both directions. Default 64.
    pub max_pending_handshakes: usize,
    /// Largest request or response frame on a federation stream, in bytes,
    /// checked before the frame is read. Default 1 MiB + 4 KiB.
    pub max_frame_bytes: usize,
    /// Queries from members served at once. Default 256.
    pub max_remote_queries: usize,
    /// Queries of this node's user running at once. Default 64.
    pub max_local_queries: usize,
    /// Query ids remembered for deduplication. Default 16 384.
    pub dedup_capacity: usize,
    /// Largest fan-out a query may ask for. Default 16.
    pub max_fanout: u8,
    /// Largest `max_hops` a query may ask for. Default 8.
    pub max_hops: u8,
    /// Signed answers a node forwards in one query response (at most
    /// [`MAX_ANSWERS_PER_RESPONSE`](crate::wire::MAX_ANSWERS_PER_RESPONSE)): those
    /// with the best hits; the others are reported as answered without their
    /// hits. Default 64.
    pub max_forwarded_responses: usize,
    /// Messages queued for one peer while its session is set up. Default 32.
    pub max_queued_per_peer: usize,
    /// Refused requests (unauthorised, over the rate) a peer may send before it
    /// is cut off. Default 16.
    pub max_strikes: u32,
    /// How long a peer that was cut off stays banned, in milliseconds. Default 60 s.
    pub ban_ms: u64,
    /// Longest shared-map key, in bytes. Default 1 KiB.
    pub max_key_len: usize,
    /// Longest shared-map value, in bytes. Default 64 KiB.
    pub max_value_len: usize,
    /// Entries a directory or shared map may hold. Default 100 000.
    pub max_map_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_peers: 32,
            max_inbound_sessions: 256,
            max_pending_handshakes: 64,
            max_frame_bytes: (1 << 20) + 4096,
            max_remote_queries: 256,
            max_local_queries: 64,
            dedup_capacity: 16_384,
            max_fanout: 16,
            max_hops: 8,
            max_forwarded_responses: 64,
            max_queued_per_peer: 32,
            max_strikes: 16,
            ban_ms: 60_000,
            max_key_len: 1024,
            max_value_len: 64 * 1024,
            max_map_entries: 100_000,
        }
    }
}

impl Limits {
    pub(crate) fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::Config(format!("limits.{what}")))
            }
        };
        check(self.max_peers >= 1, "max_peers must be at least 1")?;
        check(
            self.max_pending_handshakes >= 1,
            "max_pending_handshakes must be at least 1",
        )?;
        check(
            (16 * 1024 + 64..=(16 << 20) + 4096).contains(&self.max_frame_bytes),
            "max_frame_bytes must be 16 KiB + 64 B to 16 MiB + 4 KiB",
        )?;
        check(
            self.max_remote_queries >= 1,
            "max_remote_queries must be at least 1",
        )?;
        check(
            self.max_local_queries >= 1,
            "max_local_queries must be at least 1",
        )?;
        check(
            self.dedup_capacity >= 16,
            "dedup_capacity must be at least 16",
        )?;
        check(self.max_fanout >= 1, "max_fanout must be at least 1")?;
        check(
            (1..=crate::wire::MAX_ANSWERS_PER_RESPONSE).contains(&self.max_forwarded_responses),
            "max_forwarded_responses must be 1 to 256",
        )?;
        check(self.max_strikes >= 1, "max_strikes must be at least 1")?;
        check(
            (1..=1 << 16).contains(&self.max_key_len),
            "max_key_len must be 1 to 65536",
        )?;
        check(
            (1..=1 << 20).contains(&self.max_value_len),
            "max_value_len must be 1 to 1 MiB",
        )
    }
}

/// Intervals and lifetimes, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timing {
    /// Time a handshake may take. Default 10 s.
    pub handshake_timeout_ms: u64,
    /// Lifetime of the tokens this node issues. Default 24 h.
    pub token_lifetime_ms: u64,
    /// Whether to renew a session (a new handshake) before its token expires.
    /// Default true.
    pub renew_tokens: bool,
    /// Anti-entropy period: every interval the node pulls both maps from
    /// `sync_peers` random peers it holds a session with. Default 2 s.
    pub sync_interval_ms: u64,
    /// Peers pulled from in each anti-entropy round. Default 4. (After a local
    /// write the node tells every peer at once.)
    pub sync_peers: usize,
    /// Every this many rounds a pull asks for a full snapshot, which repairs
    /// anything a lying peer made this node skip. Default 30.
    pub full_sync_every: u64,
    /// How often the node dials directory members and discovered peers while it
    /// has fewer sessions than `max_peers`. Default 5 s.
    pub redial_interval_ms: u64,
    /// Lifetime of an onion key; a new one is made at three quarters of it.
    /// Default 1 h.
    pub onion_key_lifetime_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 10_000,
            token_lifetime_ms: 24 * 60 * 60 * 1000,
            renew_tokens: true,
            sync_interval_ms: 2_000,
            sync_peers: 4,
            full_sync_every: 30,
            redial_interval_ms: 5_000,
            onion_key_lifetime_ms: 60 * 60 * 1000,
        }
    }
}

impl Timing {
    pub(crate) fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::Config(format!("timing.{what}")))
            }
        };
        check(
            self.handshake_timeout_ms >= 100,
            "handshake_timeout_ms must be at least 100",
        )?;
        check(
            self.token_lifetime_ms >= 1_000,
            "token_lifetime_ms must be at least 1000",
        )?;
        check(
            self.sync_interval_ms >= 10,
            "sync_interval_ms must be at least 10",
        )?;
        check(
            self.full_sync_every >= 1,
            "full_sync_every must be at least 1",
        )?;
        check(
            self.redial_interval_ms >= 10,
            "redial_interval_ms must be at least 10",
        )?;
        check(
            (60_000..=24 * 60 * 60 * 1000).contains(&self.onion_key_lifetime_ms),
            "onion_key_lifetime_ms must be 1 min to 24 h",
        )
    }
}

/// A token bucket in thousandths of a request: `rate` requests per second, at
/// most `rate` (one second's worth, at least one) saved up.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    milli: u64,
    capacity: u64,
    rate: u64,
    last_ms: u64,
}

impl TokenBucket {
    pub(crate) fn new(rate_per_second: u32, now: u64) -> Self {
        let rate = u64::from(rate_per_second.max(1));
        Self {
            milli: rate * 1000,
            capacity: rate * 1000,
            rate,
            last_ms: now,
        }
    }

    /// Takes one request's worth; false if the bucket is empty. A clock that
    /// steps back refills nothing for the step, and refills from the new time
    /// on (keeping the old time would refuse everything until the clock
    /// caught up with it).
    pub(crate) fn take(&mut self, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.last_ms);
        self.last_ms = now;
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.capacity);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_rate_and_a_second_of_burst() {
        let mut b = TokenBucket::new(10, 0);
        assert_eq!((0..20).filter(|_| b.take(0)).count(), 10);
        // 100 ms refill one request at 10/s.
        assert!(b.take(100));
        assert!(!b.take(100));
        // A long pause saves up one second's worth, no more.
        assert_eq!((0..50).filter(|_| b.take(60_000)).count(), 10);
    }

    /// The node's clock is the wall clock: after it steps back, the bucket
    /// refills from the new time on instead of staying empty until the clock
    /// is back where it was.
    #[test]
    fn the_bucket_refills_after_the_clock_steps_back() {
        let mut b = TokenBucket::new(10, 600_000);
        assert_eq!((0..20).filter(|_| b.take(600_000)).count(), 10);
        // Ten minutes back: nothing for the step itself.
        assert!(!b.take(0));
        // A second later (by the new clock), a second's worth again.
        assert_eq!((0..20).filter(|_| b.take(1_000)).count(), 10);
        // Nor does a rate near the maximum overflow after a long pause.
        let mut fast = TokenBucket::new(u32::MAX, 0);
        assert!(fast.take(u64::MAX));
    }

    #[test]
    fn defaults_validate_and_bad_values_name_their_field() {
        Limits::default().validate().unwrap();
        Timing::default().validate().unwrap();
        let l = Limits {
            max_peers: 0,
            ..Limits::default()
        };
        assert!(matches!(l.validate(), Err(Error::Config(m)) if m.contains("max_peers")));
        let t = Timing {
            sync_interval_ms: 0,
            ..Timing::default()
        };
        assert!(matches!(t.validate(), Err(Error::Config(m)) if m.contains("sync_interval_ms")));
    }
}
