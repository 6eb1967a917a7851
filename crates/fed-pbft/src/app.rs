//! The replicated state machine.

use crate::message::ClientId;

/// The deterministic state machine a [`Replica`](crate::Replica) replicates.
///
/// Every correct replica calls [`execute`](Self::execute) with the same operations
/// in the same order, so the implementation must be deterministic: no clocks, no
/// randomness, no iteration over hash maps with random seeds.
pub trait Application {
    /// Applies one operation of `client` and returns its result (sent back in replies).
    fn execute(&mut self, client: &ClientId, operation: &[u8]) -> Vec<u8>;

    /// Called before the operations of the batch with sequence number `seq` are
    /// executed (also for a batch whose requests all turn out to be
    /// retransmissions, and again for batches a recovering replica executes
    /// again). An application whose rules depend on the position in the
    /// sequence (fed-mesh ends a configuration epoch at a checkpoint) reads it
    /// here; it must be as deterministic as `execute`. Does nothing by default.
    fn begin_batch(&mut self, seq: u64) {
        let _ = seq;
    }

    /// A canonical, deterministic encoding of the whole state: equal states must
    /// give equal bytes. Checkpoint digests hash it, and state transfer moves it.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with the one `snapshot` encodes (from
    /// [`snapshot`](Self::snapshot) on some replica).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}
