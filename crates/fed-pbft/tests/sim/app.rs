//! The replicated application used by the simulator: a hash chain of operations.

use fed_pbft::{Application, ClientId};

/// State: a running hash of every executed `(client, operation)` and a count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChainApp {
    pub(crate) head: [u8; 32],
    pub(crate) count: u64,
}

impl Application for ChainApp {
    fn execute(&mut self, client: &ClientId, operation: &[u8]) -> Vec<u8> {
        self.head = fed_crypto::hash(
            "exo-federation v1 pbft sim app",
            &[&self.head, &client.0, operation],
        );
        self.count += 1;
        let mut out = self.count.to_be_bytes().to_vec();
        out.extend_from_slice(&self.head[..8]);
        out
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = self.head.to_vec();
        out.extend_from_slice(&self.count.to_be_bytes());
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if snapshot.len() != 40 {
            return Err("bad snapshot length".into());
        }
        self.head.copy_from_slice(&snapshot[..32]);
        self.count = u64::from_be_bytes(snapshot[32..].try_into()?);
        Ok(())
    }
}
