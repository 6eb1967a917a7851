//! The BLAKE3 and signature context labels of `fed-pbft`. Each starts with
//! `"exo-federation v1 pbft "`, which keeps them apart from every other crate's.

/// Identifier of a membership: hash of the ordered public identities.
pub const MEMBERSHIP: &str = "exo-federation v1 pbft membership";
/// Ed25519 signing context of every replica signature (over a statement hash below).
pub const SIGNATURE: &str = "exo-federation v1 pbft signature";
/// Statement hash of a PRE-PREPARE.
pub const PRE_PREPARE: &str = "exo-federation v1 pbft pre-prepare";
/// Statement hash of a PREPARE.
pub const PREPARE: &str = "exo-federation v1 pbft prepare";
/// Statement hash of a COMMIT (and so of every signature in a `CommitProof`).
pub const COMMIT: &str = "exo-federation v1 pbft commit";
/// Statement hash of a CHECKPOINT.
pub const CHECKPOINT: &str = "exo-federation v1 pbft checkpoint";
/// Statement hash of a VIEW-CHANGE.
pub const VIEW_CHANGE: &str = "exo-federation v1 pbft view-change";
/// Statement hash of a NEW-VIEW.
pub const NEW_VIEW: &str = "exo-federation v1 pbft new-view";
/// Digest of a batch (its encoded bytes).
pub const BATCH: &str = "exo-federation v1 pbft batch";
/// Digest of a checkpointed state (sequence number and snapshot).
pub const STATE: &str = "exo-federation v1 pbft state";
/// Derivation of a client's request MAC key for one replica.
pub const REQUEST_MAC: &str = "exo-federation v1 pbft request mac";
/// Derivation of a client's reply MAC key for one replica.
pub const REPLY_MAC: &str = "exo-federation v1 pbft reply mac";
/// Keys of the signature-verification cache (local, never on the wire).
pub const VERIFIED: &str = "exo-federation v1 pbft verified";

/// Every label above.
pub const ALL: &[&str] = &[
    MEMBERSHIP,
    SIGNATURE,
    PRE_PREPARE,
    PREPARE,
    COMMIT,
    CHECKPOINT,
    VIEW_CHANGE,
    NEW_VIEW,
    BATCH,
    STATE,
    REQUEST_MAC,
    REPLY_MAC,
    VERIFIED,
];

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_distinct_and_prefixed() {
        fed_crypto::labels::check(super::ALL, "exo-federation v1 pbft ").unwrap();
    }
}
