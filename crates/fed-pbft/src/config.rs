//! Replica configuration.

use crate::{
    error::{Error, Result},
    membership::Membership,
    wire::{MAX_BATCH_LEN, MAX_MESSAGE_LEN, MAX_OPERATION_LEN},
};

/// Tuning and limits of a [`Replica`](crate::Replica). Every replica of a
/// membership must use the same `checkpoint_interval`, `window`,
/// `max_batch_requests`, `max_batch_bytes`, `max_operation_len`, `max_clients` and
/// `max_snapshot_len`; the timers may differ.
///
/// Times are in milliseconds of the caller's monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// `K`: a checkpoint every `K` sequence numbers. Default 64.
    pub checkpoint_interval: u64,
    /// `L`: the log window, high watermark = stable checkpoint + `L`. A multiple of
    /// `K`, at least `2K`. Bounds the log to `L` slots. Default 128.
    pub window: u64,
    /// Most requests in one batch. Default 1000.
    pub max_batch_requests: usize,
    /// Most encoded bytes in one batch (at most 8 MiB). Default 1 MiB.
    pub max_batch_bytes: usize,
    /// How long the primary waits to fill a batch before sending a partial one,
    /// while a batch it proposed is still to execute. With none, the batch is
    /// due at once: it goes out at the host's next timeout check, with every
    /// request handled until then. Default 2 ms.
    pub batch_delay_ms: u64,
    /// Largest client operation (at most 1 MiB). Default 64 KiB.
    pub max_operation_len: usize,
    /// Most requests a replica holds while they wait to be ordered or executed.
    /// Default 10 000.
    pub max_pending_requests: usize,
    /// Most clients: bounds the local key table and the replicated client table
    /// (timestamps and cached replies); a request from a new client beyond it is
    /// answered with [`Outcome::Refused`](crate::Outcome::Refused). Default 10 000.
    pub max_clients: usize,
    /// Largest replica snapshot (application snapshot and client table) a state
    /// transfer moves. Default 16 MiB.
    pub max_snapshot_len: usize,
    /// Base view-change timeout: how long a replica waits for a request it knows
    /// of to execute before asking for a new view. Doubles with every consecutive
    /// failed view change. Default 1000 ms.
    pub request_timeout_ms: u64,
    /// Cap of the doubled timeout. Default 60 000 ms.
    pub max_timeout_ms: u64,
    /// Period of retransmission and catch-up while work is outstanding. Default 100 ms.
    pub retransmit_ms: u64,
    /// Most committed batches sent in answer to one fetch. Default 16.
    pub max_fetch_entries: usize,
    /// Capacity of the cache of verified signatures. Default 16 384 entries (512 KiB).
    pub signature_cache: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            checkpoint_interval: 64,
            window: 128,
            max_batch_requests: 1000,
            max_batch_bytes: 1024 * 1024,
            batch_delay_ms: 2,
            max_operation_len: 64 * 1024,
            max_pending_requests: 10_000,
            max_clients: 10_000,
            max_snapshot_len: 16 * 1024 * 1024,
            request_timeout_ms: 1000,
            max_timeout_ms: 60_000,
            retransmit_ms: 100,
            max_fetch_entries: 16,
            signature_cache: 16_384,
        }
    }
}

/// Upper bound of one encoded prepared certificate for `q` signers.
fn prepared_cert_len(q: usize) -> usize {
    // view, seq (≤ 10 each), digest 32, primary signature 64, count ≤ 5,
    // q − 1 × (index ≤ 3 + signature 64).
    10 + 10 + 32 + 64 + 5 + q.saturating_sub(1) * 67
}

fn checkpoint_cert_len(q: usize) -> usize {
    10 + 32 + 5 + q * 67
}

impl Config {
    /// Worst-case encoded size of a VIEW-CHANGE for `membership`.
    pub fn max_view_change_len(&self, membership: &Membership) -> usize {
        let q = membership.quorum();
        let window = usize::try_from(self.window).unwrap_or(usize::MAX);
        64 + checkpoint_cert_len(q) + window.saturating_mul(prepared_cert_len(q)) + 64 + 3
    }

    /// Worst-case encoded size of a NEW-VIEW for `membership`.
    pub fn max_new_view_len(&self, membership: &Membership) -> usize {
        let window = usize::try_from(self.window).unwrap_or(usize::MAX);
        let vcs = membership
            .len()
            .saturating_mul(self.max_view_change_len(membership));
        vcs.saturating_add(window.saturating_mul(10 + 32 + 64))
            .saturating_add(128)
    }

    /// Checks the configuration's consistency and that its worst-case messages fit
    /// in [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) for `membership`.
    pub fn validate(&self, membership: &Membership) -> Result<()> {
        let k = self.checkpoint_interval;
        if k == 0 {
            return Err(Error::InvalidConfig("checkpoint_interval must be positive"));
        }
        if self.window < 2 * k || !self.window.is_multiple_of(k) {
            return Err(Error::InvalidConfig(
                "window must be a multiple of checkpoint_interval and at least twice it",
            ));
        }
        if self.window > 1 << 16 {
            return Err(Error::InvalidConfig("window must be at most 65536"));
        }
        if self.max_batch_requests == 0 || self.max_batch_requests > 1 << 16 {
            return Err(Error::InvalidConfig(
                "max_batch_requests must be in 1..=65536",
            ));
        }
        if self.max_batch_bytes > MAX_BATCH_LEN || self.max_batch_bytes < 1024 {
            return Err(Error::InvalidConfig(
                "max_batch_bytes must be in 1 KiB..=8 MiB",
            ));
        }
        if self.max_operation_len > MAX_OPERATION_LEN
            || self.max_operation_len + 64 + 16 * membership.len() > self.max_batch_bytes
        {
            return Err(Error::InvalidConfig(
                "max_operation_len must be at most 1 MiB and fit in a batch",
            ));
        }
        if self.max_pending_requests == 0 || self.max_clients == 0 {
            return Err(Error::InvalidConfig("queues must hold at least one entry"));
        }
        if self.max_snapshot_len + 64 * 1024 > MAX_MESSAGE_LEN {
            return Err(Error::InvalidConfig(
                "max_snapshot_len must leave room in a message",
            ));
        }
        if self.request_timeout_ms == 0
            || self.retransmit_ms == 0
            || self.max_timeout_ms < self.request_timeout_ms
        {
            return Err(Error::InvalidConfig(
                "timeouts must be positive and ordered",
            ));
        }
        if self.max_fetch_entries == 0 {
            return Err(Error::InvalidConfig("max_fetch_entries must be positive"));
        }
        if self.max_new_view_len(membership) > MAX_MESSAGE_LEN {
            return Err(Error::InvalidConfig(
                "a worst-case NEW-VIEW would exceed MAX_MESSAGE_LEN: shrink the window",
            ));
        }
        Ok(())
    }

    /// The view-change timeout after `attempts` consecutive failed view changes.
    pub(crate) fn timeout(&self, attempts: u32) -> u64 {
        self.request_timeout_ms
            .saturating_mul(1u64 << attempts.min(20))
            .min(self.max_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use fed_crypto::Identity;

    use super::*;

    fn membership(n: usize) -> Membership {
        Membership::new(
            (0..n)
                .map(|i| {
                    Identity::from_seeds(&[i as u8 + 1; 32], None)
                        .public()
                        .clone()
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn defaults_are_valid_and_limits_hold() {
        let m = membership(4);
        Config::default().validate(&m).unwrap();
        let big = membership(crate::membership::MAX_REPLICAS);
        Config::default().validate(&big).unwrap();
        let bad = [
            Config {
                checkpoint_interval: 0,
                ..Config::default()
            },
            Config {
                window: 96,
                ..Config::default()
            },
            Config {
                window: 64,
                ..Config::default()
            },
            Config {
                max_batch_bytes: 100 * 1024 * 1024,
                ..Config::default()
            },
            Config {
                max_operation_len: 2 * 1024 * 1024,
                ..Config::default()
            },
            Config {
                request_timeout_ms: 0,
                ..Config::default()
            },
            Config {
                window: 1 << 16,
                checkpoint_interval: 1 << 12,
                ..Config::default()
            },
        ];
        for c in bad {
            assert!(c.validate(&big).is_err(), "{c:?}");
        }
    }

    #[test]
    fn timeouts_double_and_cap() {
        let c = Config::default();
        assert_eq!(c.timeout(0), 1000);
        assert_eq!(c.timeout(1), 2000);
        assert_eq!(c.timeout(3), 8000);
        assert_eq!(c.timeout(40), 60_000);
    }
}
