//! Practical Byzantine Fault Tolerance (Castro and Liskov), as a sans-IO replica.
//!
//! **Status: not yet implemented.** This crate holds no code yet: its place in the
//! stack and its dependency on `fed-crypto` are fixed, and the protocol it will
//! implement (pre-prepare, prepare and commit with 2f + 1 quorums, checkpoints,
//! view change, state transfer, durable state, and `CommitProof`s that anyone
//! holding the membership verifies offline) is described in the design brief,
//! section 8.
//!
//! What it will not do: open sockets, read clocks or draw ambient randomness.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
