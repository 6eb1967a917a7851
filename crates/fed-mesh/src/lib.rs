//! The `FederatedMesh` facade: the one crate of exo-federation that does IO.
//!
//! **Status: not yet implemented.** This crate holds no code yet. It will drive the
//! sans-IO protocol crates below it over libp2p on tokio, persist state, and
//! re-export them (`fed_mesh::crypto`, `fed_mesh::crdt`, ...); see the design brief,
//! section 9. Today only its dependency edges exist, so that the crate stack is
//! fixed and checked by `cargo xtask deps`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
