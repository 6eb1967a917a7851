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

    /// A canonical, deterministic encoding of the whole state: equal states must
    /// give equal bytes. Checkpoint digests hash it, and state transfer moves it.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with the one `snapshot` encodes (from
    /// [`snapshot`](Self::snapshot) on some replica).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}
