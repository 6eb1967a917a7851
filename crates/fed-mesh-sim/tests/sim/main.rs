//! A deterministic simulator of the node core: hundreds of [`Core`]s under one
//! virtual clock, with seeded latency, message loss and partitions.
//!
//! Every run is a function of its seed. A failing assertion names the seed;
//! `FED_SIM_SEED=<seed> cargo test -p fed-mesh-sim --test sim -- <test>` replays it.
//! `FED_SIM_REPORT=1` prints the coverage and cost tables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod harness;
mod queries;

pub(crate) use harness::*;
