//! Certificates: commit proofs, checkpoint certificates, prepared certificates.

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    membership::{Membership, ReplicaIndex},
    message::{
        Digest, SigCache, batch_digest, checkpoint_statement, commit_statement,
        pre_prepare_statement, prepare_statement, verify_signature,
    },
    wire::{self, Signature},
};

/// Proof that a batch committed: `(view, seq, digest)` and the COMMIT signatures of
/// a quorum of distinct members.
///
/// Anyone holding the [`Membership`] verifies it offline with
/// [`CommitProof::verify`]. Signers are listed in strictly increasing replica
/// order, and [`from_bytes`](Self::from_bytes) accepts only the canonical encoding
/// (minimal varints), so a proof has one byte string and a duplicate signer is an
/// error. It holds at most [`MAX_REPLICAS`](crate::MAX_REPLICAS) signatures.
///
/// Encoding ([`CommitProof::to_bytes`]): postcard of `membership ([u8; 32]), view
/// (varint), seq (varint), digest ([u8; 32]), signatures (varint count, then per
/// signer: replica (varint u16), signature (64 bytes))`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitProof {
    /// The membership identifier the signers belong to.
    pub membership: Digest,
    /// View in which the batch committed.
    pub view: u64,
    /// Sequence number.
    pub seq: u64,
    /// Batch digest.
    pub digest: Digest,
    /// COMMIT signatures, strictly increasing by replica index.
    pub signatures: Vec<(ReplicaIndex, Signature)>,
}

/// Largest encoding [`CommitProof::from_bytes`] accepts.
pub const MAX_COMMIT_PROOF_LEN: usize = 128 + crate::membership::MAX_REPLICAS * (3 + 64);

impl CommitProof {
    /// Verifies the proof against `membership`, offline:
    ///
    /// 1. its membership identifier is `membership.id()`;
    /// 2. it has at most `n` and at least `quorum()` signatures;
    /// 3. signer indices are members and strictly increasing (no duplicates);
    /// 4. every signature verifies as that member's COMMIT over `(view, seq, digest)`.
    pub fn verify(&self, membership: &Membership) -> Result<()> {
        self.verify_with(membership, &mut None)
    }

    /// [`verify`](Self::verify), and that `batch` (the encoded batch) has the
    /// proof's digest.
    pub fn verify_batch(&self, membership: &Membership, batch: &[u8]) -> Result<()> {
        if batch_digest(batch) != self.digest {
            return Err(Error::DigestMismatch);
        }
        self.verify(membership)
    }

    pub(crate) fn verify_with(
        &self,
        m: &Membership,
        cache: &mut Option<&mut SigCache>,
    ) -> Result<()> {
        if &self.membership != m.id() {
            return Err(Error::InvalidCertificate("proof is for another membership"));
        }
        check_signers(m, &self.signatures, m.quorum(), None)?;
        for (replica, sig) in &self.signatures {
            let st = commit_statement(m, self.view, self.seq, &self.digest, *replica);
            verify_signature(m, cache, *replica, &st, sig)?;
        }
        Ok(())
    }

    /// The canonical encoding (see the type's documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes [`to_bytes`](Self::to_bytes)' output, refusing anything longer than
    /// [`MAX_COMMIT_PROOF_LEN`], trailing bytes and any other encoding of the same
    /// value ([`Error::NonCanonical`]); does not verify.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_COMMIT_PROOF_LEN {
            return Err(Error::TooLarge {
                what: "commit proof",
                len: bytes.len(),
                max: MAX_COMMIT_PROOF_LEN,
            });
        }
        wire::decode(bytes, "commit proof")
    }
}

/// Checks a signer list: at most `n`, at least `min`, members, strictly
/// increasing, and none equal to `exclude`.
fn check_signers(
    m: &Membership,
    sigs: &[(ReplicaIndex, Signature)],
    min: usize,
    exclude: Option<ReplicaIndex>,
) -> Result<()> {
    if sigs.len() > m.len() {
        return Err(Error::InvalidCertificate("more signatures than members"));
    }
    if sigs.len() < min {
        return Err(Error::InvalidCertificate("fewer signatures than a quorum"));
    }
    let mut prev: Option<ReplicaIndex> = None;
    for (replica, _) in sigs {
        if !m.contains(*replica) {
            return Err(Error::InvalidCertificate("signer is not a member"));
        }
        if Some(*replica) == exclude {
            return Err(Error::InvalidCertificate("the primary cannot prepare"));
        }
        match prev {
            Some(p) if p == *replica => {
                return Err(Error::InvalidCertificate("duplicate signer"));
            }
            Some(p) if p > *replica => {
                return Err(Error::InvalidCertificate("signers not in increasing order"));
            }
            _ => {}
        }
        prev = Some(*replica);
    }
    Ok(())
}

/// A stable checkpoint: a quorum of CHECKPOINT signatures over `(seq, state)`.
///
/// The checkpoint at sequence 0 (the initial state) is stable by definition and is
/// written with no signatures. At most [`MAX_REPLICAS`](crate::MAX_REPLICAS) signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCert {
    /// Sequence number of the checkpoint.
    pub seq: u64,
    /// State digest.
    pub state: Digest,
    /// CHECKPOINT signatures, strictly increasing by replica index.
    pub signatures: Vec<(ReplicaIndex, Signature)>,
}

impl CheckpointCert {
    /// The initial checkpoint (sequence 0) of a replica whose initial state digest is `state`.
    pub fn genesis(state: Digest) -> Self {
        Self {
            seq: 0,
            state,
            signatures: Vec::new(),
        }
    }

    /// Verifies the certificate: the genesis form, or a quorum of valid signatures.
    pub fn verify(&self, membership: &Membership) -> Result<()> {
        self.verify_with(membership, &mut None)
    }

    pub(crate) fn verify_with(
        &self,
        m: &Membership,
        cache: &mut Option<&mut SigCache>,
    ) -> Result<()> {
        if self.seq == 0 {
            return if self.signatures.is_empty() {
                Ok(())
            } else {
                Err(Error::InvalidCertificate(
                    "genesis checkpoint carries signatures",
                ))
            };
        }
        check_signers(m, &self.signatures, m.quorum(), None)?;
        for (replica, sig) in &self.signatures {
            let st = checkpoint_statement(m, self.seq, &self.state, *replica);
            verify_signature(m, cache, *replica, &st, sig)?;
        }
        Ok(())
    }
}

/// A prepared certificate: the primary's PRE-PREPARE signature over `(view, seq,
/// digest)` and the PREPARE signatures of `quorum − 1` distinct backups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCert {
    /// View.
    pub view: u64,
    /// Sequence number.
    pub seq: u64,
    /// Batch digest.
    pub digest: Digest,
    /// The primary's PRE-PREPARE signature.
    pub primary: Signature,
    /// PREPARE signatures of backups (never the primary), strictly increasing.
    pub prepares: Vec<(ReplicaIndex, Signature)>,
}

impl PreparedCert {
    /// Verifies the certificate against `membership`.
    pub fn verify(&self, membership: &Membership) -> Result<()> {
        self.verify_with(membership, &mut None)
    }

    pub(crate) fn verify_with(
        &self,
        m: &Membership,
        cache: &mut Option<&mut SigCache>,
    ) -> Result<()> {
        let primary = m.primary(self.view);
        check_signers(m, &self.prepares, m.quorum() - 1, Some(primary))?;
        let st = pre_prepare_statement(m, self.view, self.seq, &self.digest);
        verify_signature(m, cache, primary, &st, &self.primary)?;
        for (replica, sig) in &self.prepares {
            let st = prepare_statement(m, self.view, self.seq, &self.digest, *replica);
            verify_signature(m, cache, *replica, &st, sig)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use fed_crypto::Identity;

    use super::*;
    use crate::message::{Commit, sign};

    fn identities(n: usize) -> (Vec<Identity>, Membership) {
        let ids: Vec<Identity> = (0..n)
            .map(|i| Identity::from_seeds(&[i as u8 + 1; 32], None))
            .collect();
        let m = Membership::new(ids.iter().map(|i| i.public().clone()).collect()).unwrap();
        (ids, m)
    }

    fn proof(ids: &[Identity], m: &Membership, signers: &[u16], digest: Digest) -> CommitProof {
        CommitProof {
            membership: *m.id(),
            view: 2,
            seq: 17,
            digest,
            signatures: signers
                .iter()
                .map(|&i| {
                    let c = Commit::new(&ids[usize::from(i)], m, 2, 17, digest, i).unwrap();
                    (i, c.signature)
                })
                .collect(),
        }
    }

    /// Every n from 1 to 13: exactly-quorum proofs verify; one short does not;
    /// duplicates, non-members, wrong digests, another membership, foreign keys and
    /// disorder are rejected.
    #[test]
    fn commit_proof_verification_for_every_n() {
        let (all_ids, _) = identities(14);
        let outsider = &all_ids[13];
        for n in 1..=13usize {
            let ids = &all_ids[..n];
            let m = Membership::new(ids.iter().map(|i| i.public().clone()).collect()).unwrap();
            let q = m.quorum();
            let d = batch_digest(b"batch");
            let everyone: Vec<u16> = (0..n as u16).collect();
            // Every quorum-sized prefix and the full set verify.
            let p = proof(ids, &m, &everyone[..q], d);
            p.verify(&m).unwrap();
            p.verify_batch(&m, b"batch").unwrap();
            assert!(matches!(
                p.verify_batch(&m, b"other"),
                Err(Error::DigestMismatch)
            ));
            proof(ids, &m, &everyone, d).verify(&m).unwrap();
            proof(ids, &m, &everyone[n - q..], d).verify(&m).unwrap();
            // Round trip.
            assert_eq!(CommitProof::from_bytes(&p.to_bytes()).unwrap(), p);
            // Short quorum.
            let short = proof(ids, &m, &everyone[..q - 1], d);
            assert!(
                short.verify(&m).is_err(),
                "n = {n}: q - 1 signatures accepted"
            );
            // A duplicate to pad a short quorum.
            if q >= 2 {
                let mut dup = proof(ids, &m, &everyone[..q - 1], d);
                let first = dup.signatures[0];
                dup.signatures.insert(1, first);
                assert!(
                    matches!(
                        dup.verify(&m),
                        Err(Error::InvalidCertificate("duplicate signer"))
                    ),
                    "n = {n}"
                );
            }
            // A non-member index.
            let mut nonmember = proof(ids, &m, &everyone[..q], d);
            let c = Commit::new(outsider, &m, 2, 17, d, n as u16).unwrap();
            nonmember.signatures.push((n as u16, c.signature));
            assert!(nonmember.verify(&m).is_err(), "n = {n}");
            // A non-member's key under a member's index.
            let mut foreign = proof(ids, &m, &everyone[..q], d);
            let st = commit_statement(&m, 2, 17, &d, 0);
            foreign.signatures[0].1 = sign(outsider, &st).unwrap();
            assert!(foreign.verify(&m).is_err(), "n = {n}");
            // Signatures over another digest.
            let mut wrong = proof(ids, &m, &everyone[..q], batch_digest(b"other"));
            wrong.digest = d;
            assert!(wrong.verify(&m).is_err(), "n = {n}");
            // Another view or sequence.
            let mut moved = p.clone();
            moved.seq += 1;
            assert!(moved.verify(&m).is_err());
            // Another membership with the same keys in another order.
            if n >= 2 {
                let mut rev: Vec<_> = ids.iter().map(|i| i.public().clone()).collect();
                rev.reverse();
                let other = Membership::new(rev).unwrap();
                assert!(p.verify(&other).is_err());
                let mut relabelled = p.clone();
                relabelled.membership = *other.id();
                assert!(relabelled.verify(&other).is_err());
            }
            // Disorder.
            if q >= 2 {
                let mut disorder = p.clone();
                disorder.signatures.swap(0, 1);
                assert!(disorder.verify(&m).is_err());
            }
        }
    }

    #[test]
    fn the_predecessors_thresholds_are_short() {
        // The predecessor accepted 2f + 1 signatures for every n; for these n that is
        // below the quorum, and two such sets can miss each other's correct members.
        for n in [5usize, 6, 8, 9, 11, 12] {
            let (ids, m) = identities(n);
            let f = m.f();
            assert!(2 * f + 1 < m.quorum(), "n = {n}");
            let signers: Vec<u16> = (0..(2 * f + 1) as u16).collect();
            assert!(
                proof(&ids, &m, &signers, [3; 32]).verify(&m).is_err(),
                "n = {n}"
            );
        }
    }

    #[test]
    fn checkpoint_and_prepared_certificates() {
        use crate::message::{Checkpoint, PrePrepare, Prepare};
        let (ids, m) = identities(4);
        let state = [5; 32];
        let sigs: Vec<_> = (0..3u16)
            .map(|i| {
                let c = Checkpoint::new(&ids[usize::from(i)], &m, 8, state, i).unwrap();
                (i, c.signature)
            })
            .collect();
        let cert = CheckpointCert {
            seq: 8,
            state,
            signatures: sigs.clone(),
        };
        cert.verify(&m).unwrap();
        let mut short = cert.clone();
        short.signatures.pop();
        assert!(short.verify(&m).is_err());
        let mut other = cert.clone();
        other.state = [6; 32];
        assert!(other.verify(&m).is_err());
        CheckpointCert::genesis([1; 32]).verify(&m).unwrap();
        let mut fake_genesis = CheckpointCert::genesis([1; 32]);
        fake_genesis.signatures = sigs;
        assert!(fake_genesis.verify(&m).is_err());

        let pp = PrePrepare::new(&ids[1], &m, 1, 3, b"x".to_vec()).unwrap();
        let prepares: Vec<_> = [0u16, 2]
            .iter()
            .map(|&i| {
                let p = Prepare::new(&ids[usize::from(i)], &m, 1, 3, pp.digest, i).unwrap();
                (i, p.signature)
            })
            .collect();
        let pc = PreparedCert {
            view: 1,
            seq: 3,
            digest: pp.digest,
            primary: pp.signature,
            prepares: prepares.clone(),
        };
        pc.verify(&m).unwrap();
        let mut short = pc.clone();
        short.prepares.pop();
        assert!(short.verify(&m).is_err());
        // The primary's own prepare does not count.
        let mut with_primary = pc.clone();
        let p1 = Prepare::new(&ids[1], &m, 1, 3, pp.digest, 1).unwrap();
        with_primary.prepares = vec![prepares[0], (1, p1.signature)];
        assert!(with_primary.verify(&m).is_err());
    }
}
