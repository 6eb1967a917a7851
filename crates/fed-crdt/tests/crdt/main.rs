//! Property and scenario tests for `fed-crdt`: merge laws, convergence,
//! delta sync, codecs, reconciliation and the clock.
//!
//! Case counts: `FED_PROPTEST_CASES` (default 256).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod clock;
mod codec;
mod convergence;
mod laws;
mod reconcile;
mod scenarios;
mod support;
