//! Practical Byzantine Fault Tolerance (Castro and Liskov), as a sans-IO replica.
//!
//! What it does:
//!
//! - **Agreement** among `n` replicas of a fixed [`Membership`], tolerating
//!   `f = ⌊(n − 1) / 3⌋` Byzantine ones: the primary of view `v` is `v mod n`;
//!   requests are batched (size cap and delay), ordered by PRE-PREPARE, PREPARE and
//!   COMMIT with quorum certificates, executed in sequence order by your
//!   [`Application`], and answered with authenticated [`Reply`]s. Per-client
//!   timestamps and a reply cache make a retransmitted request execute at most once.
//! - **Quorums for every n**: `q = ⌈(n + f + 1) / 2⌉`, which is `2f + 1` when
//!   `n = 3f + 1` and larger otherwise.
//! - **Checkpoints** every `K` sequence numbers, stable at a quorum of matching
//!   signed digests; low/high watermarks and garbage collection of the log.
//! - **View change** with request timers, exponential timeouts, VIEW-CHANGE messages
//!   carrying the checkpoint proof and prepared certificates, a NEW-VIEW every
//!   backup recomputes and rejects when it does not match, null requests for gaps,
//!   and joining a higher view once `f + 1` replicas ask for it.
//! - **Catching up**: a lagging replica fetches committed batches with their
//!   proofs, or a state certified by a stable checkpoint, verified before use.
//! - **Durability**: the replica emits [`Persist`] writes before the messages
//!   that depend on them, so a [`Replica::recover`]ed replica neither forgets nor
//!   contradicts a vote.
//! - **[`CommitProof`]s**: a batch digest with a quorum of COMMIT signatures
//!   (Ed25519) that anyone holding the membership verifies offline.
//!
//! What it does not do: open sockets, read clocks, draw randomness, spawn threads or
//! store anything itself. Messages go in and out as bytes, time is a parameter
//! (milliseconds of a monotonic clock), and writes are handed to your [`Storage`].
//! Client keys (one per client and replica, for request MACs) are agreed outside
//! this crate. Membership changes are not implemented: a membership is fixed.
//!
//! The wire format and every rule are specified in `docs/protocol/pbft.md`.
//!
//! # Example
//!
//! One replica (`n = 1`, so it is its own quorum) executing a client request:
//!
//! ```
//! use std::sync::Arc;
//! use fed_crypto::Identity;
//! use fed_pbft::{Application, Client, ClientEvent, ClientId, ClientKey, Config, Event, Membership, Outcome, Replica};
//!
//! /// A counter: every operation adds its length.
//! #[derive(Default)]
//! struct Counter(u64);
//! impl Application for Counter {
//!     fn execute(&mut self, _: &ClientId, op: &[u8]) -> Vec<u8> {
//!         self.0 += op.len() as u64;
//!         self.0.to_be_bytes().to_vec()
//!     }
//!     fn snapshot(&self) -> Vec<u8> { self.0.to_be_bytes().to_vec() }
//!     fn restore(&mut self, s: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!         self.0 = u64::from_be_bytes(s.try_into()?);
//!         Ok(())
//!     }
//! }
//!
//! let identity = Arc::new(Identity::from_seeds(&[1; 32], None));
//! let membership = Arc::new(Membership::new(vec![identity.public().clone()])?);
//! let mut replica = Replica::new(identity, membership.clone(), Config::default(), Counter::default(), 0)?;
//!
//! let client_id = ClientId([7; 32]);
//! let key = ClientKey::new(&[9; 32]); // agreed between client and replica elsewhere
//! replica.add_client(client_id, key.clone())?;
//! let mut client = Client::new(client_id, vec![key], membership, 1, 500)?;
//!
//! client.submit(b"hello".to_vec(), 0)?;
//! let (_, request) = client.poll_transmit().unwrap();
//! replica.handle_request(&request, 0)?;
//! // Nothing else is in flight, so the batch is due at once (with batches in
//! // flight, it would wait up to `batch_delay_ms` for more requests).
//! let at = replica.poll_timeout().unwrap();
//! replica.handle_timeout(at)?;
//! while let Some(_write) = replica.poll_persist() { /* storage.persist(&_write)? */ }
//! while let Some(event) = replica.poll_event() {
//!     match event {
//!         Event::Executed(batch) => batch.proof.verify(replica.membership())?,
//!         Event::Reply(reply) => client.handle_reply(&reply.to_bytes()?, at)?,
//!         _ => {}
//!     }
//! }
//! assert_eq!(
//!     client.poll_event(),
//!     Some(ClientEvent::Completed { timestamp: 1, outcome: Outcome::Executed(5u64.to_be_bytes().to_vec()) })
//! );
//! # Ok::<(), fed_pbft::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app;
mod client;
mod config;
mod error;
pub mod labels;
mod membership;
mod message;
mod proof;
mod replica;
mod storage;
mod wire;

pub use app::Application;
pub use client::{Client, ClientEvent, ClientKey, ClientKeys};
pub use config::Config;
pub use error::{Error, Result};
pub use membership::{
    MAX_MEMBERSHIP_LEN, MAX_REPLICAS, MEMBERSHIP_VERSION, MEMBERSHIP_VERSION_CONTEXT, Membership,
    ReplicaIndex,
};
pub use message::Checkpoint;
pub use message::{
    ClientId, Commit, Committed, Digest, Fetch, Message, NULL_BATCH, NewView, NewViewEntry,
    Outcome, PrePrepare, Prepare, Reply, Request, RequestId, StateRequest, StateResponse, Tag,
    ViewChange, batch_digest, decode_batch,
};
pub use proof::{CheckpointCert, CommitProof, MAX_COMMIT_PROOF_LEN, PreparedCert};
pub use replica::{
    CertifiedState, Event, Executed, Replica, Transmit, certified_app_state, certified_state,
};
pub use storage::{
    DurableState, MemoryStorage, Persist, PrePrepareRecord, PreparedRecord, Storage,
};
pub use wire::{
    ENVELOPE_HEADER_LEN, MAGIC, MAX_BATCH_LEN, MAX_MESSAGE_LEN, MAX_OPERATION_LEN, MAX_RESULT_LEN,
    Signature, WIRE_VERSION, message_len,
};
