//! The `FederatedMesh` facade: the one crate of exo-federation that does IO.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod core;
#[cfg(feature = "node")]
mod driver;
mod error;
#[cfg(feature = "node")]
mod mesh;
pub mod substrate;
mod types;
pub mod wire;

#[doc(inline)]
pub use fed_crdt as crdt;
#[doc(inline)]
pub use fed_crypto as crypto;
#[doc(inline)]
pub use fed_handshake as handshake;
#[doc(inline)]
pub use fed_onion as onion;
#[doc(inline)]
pub use fed_pbft as pbft;
pub use libp2p_identity::PeerId;
pub use multiaddr::Multiaddr;

pub use crate::{
    core::{Limits, Timing},
    error::{Error, Result},
    types::*,
};
#[cfg(feature = "node")]
pub use crate::{
    driver::TransportConfig,
    mesh::{FederatedMesh, MeshBuilder, MeshConfig},
};

/// Proptest cases: `default`, or `FED_PROPTEST_CASES`.
#[cfg(test)]
pub(crate) fn test_cases(default: u32) -> u32 {
    std::env::var("FED_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
