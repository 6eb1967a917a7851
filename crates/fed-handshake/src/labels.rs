//! The handshake's BLAKE3 context labels. Each starts with
//! `"exo-federation v1 handshake "`, which keeps them apart from every other crate's.

/// The running transcript hash.
pub const TRANSCRIPT: &str = "exo-federation v1 handshake transcript";
/// The handshake secret, from the X-Wing shared secret and the transcript so far.
pub const HANDSHAKE_SECRET: &str = "exo-federation v1 handshake secret";
/// AEAD key of message 2's encrypted part (responder to initiator).
pub const HANDSHAKE_KEY_R2I: &str = "exo-federation v1 handshake key responder to initiator";
/// AEAD key of message 3's encrypted part (initiator to responder).
pub const HANDSHAKE_KEY_I2R: &str = "exo-federation v1 handshake key initiator to responder";
/// MAC key of the responder's Finished tag.
pub const FINISHED_R: &str = "exo-federation v1 handshake responder finished";
/// MAC key of the initiator's Finished tag.
pub const FINISHED_I: &str = "exo-federation v1 handshake initiator finished";
/// The responder's transcript signature.
pub const SIGNATURE_R: &str = "exo-federation v1 handshake responder signature";
/// The initiator's transcript signature.
pub const SIGNATURE_I: &str = "exo-federation v1 handshake initiator signature";
/// The session secret handed to the channel.
pub const SESSION_SECRET: &str = "exo-federation v1 handshake session secret";
/// The session binding written into tokens.
pub const SESSION_BINDING: &str = "exo-federation v1 handshake session binding";
/// The exporter secret of a session ([`Session::export`](crate::Session::export)).
pub const EXPORTER_SECRET: &str = "exo-federation v1 handshake exporter secret";
/// A federation token's signature.
pub const TOKEN_SIGNATURE: &str = "exo-federation v1 handshake token";
/// A federation token's id.
pub const TOKEN_ID: &str = "exo-federation v1 handshake token id";
/// An invitation's signature.
pub const INVITATION_SIGNATURE: &str = "exo-federation v1 handshake invitation";

/// Every label above.
pub const ALL: &[&str] = &[
    TRANSCRIPT,
    HANDSHAKE_SECRET,
    HANDSHAKE_KEY_R2I,
    HANDSHAKE_KEY_I2R,
    FINISHED_R,
    FINISHED_I,
    SIGNATURE_R,
    SIGNATURE_I,
    SESSION_SECRET,
    SESSION_BINDING,
    EXPORTER_SECRET,
    TOKEN_SIGNATURE,
    TOKEN_ID,
    INVITATION_SIGNATURE,
];

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_distinct_and_prefixed() {
        fed_crypto::labels::check(super::ALL, "exo-federation v1 handshake ").unwrap();
    }
}
