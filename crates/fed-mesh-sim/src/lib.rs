//! The node simulator of exo-federation, as a crate of its own so that its
//! release build needs only `fed-mesh`'s sans-IO core. The simulator is the
//! test `tests/sim`: `cargo test --release -p fed-mesh-sim --test sim`, or
//! `cargo xtask sim mesh`.
