//! Onion-routed federation queries, as sans-IO packet processing.
//!
//! **Status: not yet implemented.** This crate holds no code yet: its place in the
//! stack and its dependency on `fed-crypto` are fixed, and the format it will
//! implement (a KEM-based Sphinx with X-Wing per hop: fixed-size headers and bodies,
//! per-hop MACs, replay caches per key epoch, replies along the same path) is
//! described in the design brief, section 6.
//!
//! What it will not do: open sockets, read clocks or draw ambient randomness.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
