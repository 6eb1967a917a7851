//! The federation joining protocol, as sans-IO state machines.
//!
//! **Status: not yet implemented.** This crate holds no code yet: its place in the
//! stack and its dependency on `fed-crypto` are fixed, and the protocol it will
//! implement (three messages, 1.5 round trips: an X-Wing key exchange, mutual
//! authentication by signatures over the transcript, capability negotiation and a
//! signed `FederationToken`) is described in the design brief, section 5.
//!
//! What it will not do: open sockets, read clocks or draw ambient randomness. Time
//! (`now`) and an RNG are parameters; `fed-mesh` drives it over libp2p.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
