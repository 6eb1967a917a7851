//! The BLAKE3 context labels of `fed-onion`.
//!
//! Every label starts with `"exo-federation v1 onion "`, which keeps them apart from
//! the labels of every other crate of the project (`fed-crypto`'s are
//! `"exo-federation v1 <purpose>"` without a crate name, the handshake's start with
//! `"exo-federation v1 handshake "`). `docs/protocol/onion.md` lists where each one
//! is used; the unit tests check that they are distinct.

/// The prefix every label of this crate starts with.
pub const PREFIX: &str = "exo-federation v1 onion ";

/// Per-hop key of the header keystream, from the X-Wing shared secret.
pub const HEADER_STREAM: &str = "exo-federation v1 onion header stream";
/// Per-hop key of the header MAC, `k_mac`, from the X-Wing shared secret. The MAC
/// itself is a raw keyed BLAKE3 hash under `k_mac`, with no label of its own.
pub const HEADER_MAC: &str = "exo-federation v1 onion header mac";
/// Per-hop key of the forward body keystream.
pub const BODY_STREAM: &str = "exo-federation v1 onion body stream";
/// End-to-end AES-256-GCM key of the forward payload (used by the destination).
pub const PAYLOAD_KEY: &str = "exo-federation v1 onion payload key";
/// Replay tag of a packet at a hop.
pub const REPLAY_TAG: &str = "exo-federation v1 onion replay tag";
/// Reply id under which a hop files its reply state.
pub const REPLY_ID: &str = "exo-federation v1 onion reply id";
/// Per-hop key of the reply keystream (the layer a relay adds to a reply).
pub const REPLY_STREAM: &str = "exo-federation v1 onion reply stream";
/// End-to-end AES-256-GCM key of the reply payload (sealed by the destination).
pub const REPLY_PAYLOAD_KEY: &str = "exo-federation v1 onion reply payload key";
/// Signature label of an onion key certificate.
pub const KEY_CERTIFICATE: &str = "exo-federation v1 onion key certificate";

/// Every label above (without [`PREFIX`]).
pub const ALL: &[&str] = &[
    HEADER_STREAM,
    HEADER_MAC,
    BODY_STREAM,
    PAYLOAD_KEY,
    REPLAY_TAG,
    REPLY_ID,
    REPLY_STREAM,
    REPLY_PAYLOAD_KEY,
    KEY_CERTIFICATE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_prefixed_and_apart_from_fed_crypto() {
        fed_crypto::labels::check(ALL, PREFIX).unwrap();
    }
}
