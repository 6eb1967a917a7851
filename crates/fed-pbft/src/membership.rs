//! The configured replica set and its quorum arithmetic.

use fed_crypto::{NodeId, PUBLIC_IDENTITY_MAX_LEN, PublicIdentity};

use crate::{
    error::{Error, Result},
    labels,
};

/// A replica's position in the [`Membership`] (0-based, in configuration order).
pub type ReplicaIndex = u16;

/// Most replicas a membership may hold.
///
/// Bounds every per-replica table (votes, view changes, rate limits) and keeps the
/// worst-case VIEW-CHANGE and NEW-VIEW messages below
/// [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) for sensible windows (see
/// [`Config::validate`](crate::Config::validate)).
pub const MAX_REPLICAS: usize = 64;

/// Version byte of [`Membership::to_bytes`] for a membership without a context.
pub const MEMBERSHIP_VERSION: u8 = 1;
/// Version byte of [`Membership::to_bytes`] for a membership bound to a context
/// ([`Membership::with_context`]).
pub const MEMBERSHIP_VERSION_CONTEXT: u8 = 2;

/// Largest membership encoding: `3 + 32 + MAX_REPLICAS × (2 + 1986)` = 127 267 bytes.
pub const MAX_MEMBERSHIP_LEN: usize = 3 + 32 + MAX_REPLICAS * (2 + PUBLIC_IDENTITY_MAX_LEN);

/// The ordered set of replicas of one configuration epoch.
///
/// `n` replicas tolerate `f = ⌊(n − 1) / 3⌋` Byzantine ones. Certificates need a
/// quorum of `q = ⌈(n + f + 1) / 2⌉` distinct replicas: the smallest size such that
/// any two quorums share at least `f + 1` replicas (so at least one correct one),
/// while `q ≤ n − f` keeps the system live with `f` silent replicas. For
/// `n = 3f + 1` this is the familiar `2f + 1`; for other `n` it is larger (for
/// example `n = 5` needs 4, `n = 6` needs 4, `n = 8` needs 6).
///
/// The primary of view `v` is replica `v mod n`. The membership's identifier is
/// `hash(MEMBERSHIP, [be16(n), identity_0, …, identity_{n−1}])` over the canonical
/// public-identity encodings, with a 32-byte context appended as one more part
/// when there is one ([`with_context`](Self::with_context)); every signed
/// statement commits to it.
///
/// A valid membership has `1 ≤ n ≤ MAX_REPLICAS` members, no two with the same
/// Ed25519 public key (replica signatures are Ed25519 only: two members sharing
/// one would let one key holder sign as two replicas). Two members with the same
/// Ed25519 key and different ML-DSA keys are therefore one node twice.
///
/// Encoding ([`to_bytes`](Self::to_bytes), docs/protocol/pbft.md §1):
/// `version (1) = 1 ‖ be16(n) ‖ n × (be16(len) ‖ public identity (len))`, or with a
/// context `version (1) = 2 ‖ context (32) ‖ be16(n) ‖ …`; every
/// field has a fixed width, so a membership has exactly one encoding.
#[derive(Clone, Debug)]
pub struct Membership {
    members: Vec<PublicIdentity>,
    context: Option<[u8; 32]>,
    id: [u8; 32],
    f: usize,
    quorum: usize,
}

impl Membership {
    /// Builds a membership from the replicas' public identities, in index order.
    ///
    /// Fails if it is empty, has more than [`MAX_REPLICAS`] members, or lists one
    /// node twice: two members with the same Ed25519 public key (whatever their
    /// ML-DSA keys), which also covers two equal identities.
    pub fn new(members: Vec<PublicIdentity>) -> Result<Self> {
        Self::build(members, None)
    }

    /// A membership bound to `context`, 32 bytes that name the configuration it
    /// belongs to (fed-mesh passes the federation's genesis hash, or the hash of
    /// the configuration epoch). The context is hashed into the
    /// [`id`](Self::id), so every signature, proof and certificate of this
    /// membership commits to it: a proof made under one context never verifies
    /// under another, even with the same members. Same rules as [`new`](Self::new).
    pub fn with_context(members: Vec<PublicIdentity>, context: [u8; 32]) -> Result<Self> {
        Self::build(members, Some(context))
    }

    fn build(members: Vec<PublicIdentity>, context: Option<[u8; 32]>) -> Result<Self> {
        let n = members.len();
        if n == 0 {
            return Err(Error::InvalidMembership("no replicas"));
        }
        if n > MAX_REPLICAS {
            return Err(Error::InvalidMembership("more than MAX_REPLICAS replicas"));
        }
        let mut keys: Vec<&[u8; 32]> = members.iter().map(PublicIdentity::ed25519_bytes).collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() != n {
            return Err(Error::InvalidMembership(
                "a replica is listed twice (two members share an Ed25519 key)",
            ));
        }
        let count = (n as u16).to_be_bytes();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(n + 2);
        parts.push(&count);
        parts.extend(members.iter().map(PublicIdentity::as_bytes));
        if let Some(context) = &context {
            parts.push(context);
        }
        let id = fed_crypto::hash(labels::MEMBERSHIP, &parts);
        let f = max_faulty(n);
        Ok(Self {
            members,
            context,
            id,
            f,
            quorum: quorum_size(n),
        })
    }

    /// The canonical encoding (pbft.md §1): `version (1) = 1 ‖ be16(n) ‖ n ×
    /// (be16(len) ‖ public identity (len bytes))`, members in index order. At most
    /// [`MAX_MEMBERSHIP_LEN`] bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = 3
            + 32
            + self
                .members
                .iter()
                .map(|m| 2 + m.as_bytes().len())
                .sum::<usize>();
        let mut out = Vec::with_capacity(len);
        match &self.context {
            None => out.push(MEMBERSHIP_VERSION),
            Some(context) => {
                out.push(MEMBERSHIP_VERSION_CONTEXT);
                out.extend_from_slice(context);
            }
        }
        out.extend_from_slice(&(self.members.len() as u16).to_be_bytes());
        for m in &self.members {
            let id = m.as_bytes();
            out.extend_from_slice(&(id.len() as u16).to_be_bytes());
            out.extend_from_slice(id);
        }
        out
    }

    /// Decodes [`to_bytes`](Self::to_bytes)' output and checks the membership's
    /// rules ([`Membership::new`]). Refuses, before reading further, input longer
    /// than [`MAX_MEMBERSHIP_LEN`]; then another version, `n` outside
    /// `1..=MAX_REPLICAS`, an identity length other than 34 or 1986, an identity
    /// that does not decode (crypto.md §3), missing or trailing bytes. What it
    /// accepts re-encodes to the same bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_MEMBERSHIP_LEN {
            return Err(Error::TooLarge {
                what: "membership",
                len: bytes.len(),
                max: MAX_MEMBERSHIP_LEN,
            });
        }
        let malformed = || Error::Malformed("membership");
        let (&version, rest) = bytes.split_first().ok_or_else(malformed)?;
        let (context, rest) = match version {
            MEMBERSHIP_VERSION => (None, rest),
            MEMBERSHIP_VERSION_CONTEXT => {
                let (context, rest) = rest.split_first_chunk::<32>().ok_or_else(malformed)?;
                (Some(*context), rest)
            }
            _ => return Err(Error::UnsupportedVersion(version)),
        };
        let (count, mut rest) = rest.split_first_chunk::<2>().ok_or_else(malformed)?;
        let n = usize::from(u16::from_be_bytes(*count));
        if n == 0 || n > MAX_REPLICAS {
            return Err(Error::InvalidMembership(
                "the number of replicas is not in 1..=MAX_REPLICAS",
            ));
        }
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            let (len, tail) = rest.split_first_chunk::<2>().ok_or_else(malformed)?;
            let len = usize::from(u16::from_be_bytes(*len));
            if len != 2 + fed_crypto::ED25519_PUBLIC_KEY_LEN && len != PUBLIC_IDENTITY_MAX_LEN {
                return Err(Error::Malformed("membership: identity length"));
            }
            if tail.len() < len {
                return Err(malformed());
            }
            let (id, tail) = tail.split_at(len);
            members.push(PublicIdentity::from_bytes(id)?);
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(Error::Malformed("membership: trailing bytes"));
        }
        Self::build(members, context)
    }

    /// The membership identifier (see the type's documentation).
    pub fn id(&self) -> &[u8; 32] {
        &self.id
    }

    /// The context this membership is bound to, if any ([`with_context`](Self::with_context)).
    pub fn context(&self) -> Option<&[u8; 32]> {
        self.context.as_ref()
    }

    /// Number of replicas `n`.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a membership has at least one replica.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Largest number of Byzantine replicas tolerated, `⌊(n − 1) / 3⌋`.
    pub fn f(&self) -> usize {
        self.f
    }

    /// Size of a quorum certificate, `⌈(n + f + 1) / 2⌉`.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Size of a weak certificate, `f + 1`: enough to contain one correct replica.
    pub fn weak_quorum(&self) -> usize {
        self.f + 1
    }

    /// The primary of `view`.
    pub fn primary(&self, view: u64) -> ReplicaIndex {
        (view % self.members.len() as u64) as ReplicaIndex
    }

    /// The public identity of replica `index`.
    pub fn member(&self, index: ReplicaIndex) -> Option<&PublicIdentity> {
        self.members.get(usize::from(index))
    }

    /// The index of the replica with node id `node`.
    pub fn index_of(&self, node: &NodeId) -> Option<ReplicaIndex> {
        self.members
            .iter()
            .position(|m| m.node_id() == *node)
            .map(|i| i as ReplicaIndex)
    }

    /// All members in index order.
    pub fn members(&self) -> &[PublicIdentity] {
        &self.members
    }

    /// Whether `index` names a member.
    pub fn contains(&self, index: ReplicaIndex) -> bool {
        usize::from(index) < self.members.len()
    }
}

/// `f = ⌊(n − 1) / 3⌋` for `n ≥ 1`.
pub(crate) fn max_faulty(n: usize) -> usize {
    n.saturating_sub(1) / 3
}

/// `q = ⌈(n + f + 1) / 2⌉`.
pub(crate) fn quorum_size(n: usize) -> usize {
    (n + max_faulty(n) + 2) / 2
}

#[cfg(test)]
mod tests {
    use fed_crypto::Identity;

    use super::*;

    #[test]
    fn quorum_is_minimal_intersecting_and_live_for_every_n() {
        for n in 1..=64usize {
            let f = max_faulty(n);
            let q = quorum_size(n);
            assert!(n > 3 * f, "n = {n}");
            assert!(n <= 3 * f + 3, "f is the largest tolerated, n = {n}");
            // Two quorums intersect in at least f + 1 replicas.
            assert!(2 * q > n + f, "intersection, n = {n}");
            // One smaller would not.
            assert!(2 * (q - 1) < n + f + 1, "minimality, n = {n}");
            // Live with f silent replicas.
            assert!(q <= n - f, "liveness, n = {n}");
        }
        let table: [(usize, usize, usize); 13] = [
            (1, 0, 1),
            (2, 0, 2),
            (3, 0, 2),
            (4, 1, 3),
            (5, 1, 4),
            (6, 1, 4),
            (7, 2, 5),
            (8, 2, 6),
            (9, 2, 6),
            (10, 3, 7),
            (11, 3, 8),
            (12, 3, 8),
            (13, 4, 9),
        ];
        for (n, f, q) in table {
            assert_eq!((max_faulty(n), quorum_size(n)), (f, q), "n = {n}");
        }
    }

    #[test]
    fn membership_rules() {
        let ids: Vec<_> = (1..=5u8)
            .map(|i| Identity::from_seeds(&[i; 32], None).public().clone())
            .collect();
        let m = Membership::new(ids.clone()).unwrap();
        assert_eq!((m.len(), m.f(), m.quorum(), m.weak_quorum()), (5, 1, 4, 2));
        assert_eq!(m.primary(7), 2);
        assert_eq!(m.index_of(&ids[3].node_id()), Some(3));
        assert!(m.contains(4) && !m.contains(5));
        assert!(Membership::new(vec![]).is_err());
        let mut dup = ids.clone();
        dup.push(ids[0].clone());
        assert!(Membership::new(dup).is_err());
        // The id depends on the order and the set.
        let mut rev = ids.clone();
        rev.reverse();
        assert_ne!(Membership::new(rev).unwrap().id(), m.id());
        assert_ne!(Membership::new(ids[..4].to_vec()).unwrap().id(), m.id());
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// pbft.md §1, vector 4 (its id computed by a script from the document).
    #[test]
    fn a_context_is_bound_into_the_id_and_the_encoding() {
        let classical = |i: u8| Identity::from_seeds(&[i; 32], None).public().clone();
        let members: Vec<_> = (1..=4).map(classical).collect();
        let plain = Membership::new(members.clone()).unwrap();
        let bound = Membership::with_context(members.clone(), [0xab; 32]).unwrap();
        assert_eq!(
            hex(bound.id()),
            "287843644b35a7d272f1e713a2415cf8cecff222043a33b3a61925eea8e0e4f2"
        );
        assert_ne!(plain.id(), bound.id());
        let other = Membership::with_context(members, [0xac; 32]).unwrap();
        assert_ne!(other.id(), bound.id());
        let bytes = bound.to_bytes();
        assert_eq!(bytes[0], MEMBERSHIP_VERSION_CONTEXT);
        assert_eq!(&bytes[1..33], &[0xab; 32]);
        assert_eq!(&bytes[33..], &plain.to_bytes()[1..]);
        let back = Membership::from_bytes(&bytes).unwrap();
        assert_eq!((back.id(), back.context()), (bound.id(), Some(&[0xab; 32])));
        assert!(Membership::from_bytes(&bytes[..32]).is_err());
        assert_eq!(plain.context(), None);
    }

    /// The vectors of pbft.md §1.
    #[test]
    fn membership_encoding_vectors() {
        let classical = |i: u8| Identity::from_seeds(&[i; 32], None).public().clone();
        let one = Membership::new(vec![classical(1)]).unwrap();
        assert_eq!(
            hex(&one.to_bytes()),
            "010001002201008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        );
        assert_eq!(
            hex(one.id()),
            "ce81843f76d82710931afef296ac2941245b7527b4d0559ad0caf9a66c6e3076"
        );
        let four = Membership::new((1..=4).map(classical).collect()).unwrap();
        assert_eq!(
            hex(&four.to_bytes()),
            concat!(
                "01000400220100",
                "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
                "00220100",
                "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394",
                "00220100",
                "ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1",
                "00220100",
                "ca93ac1705187071d67b83c7ff0efe8108e8ec4530575d7726879333dbdabe7c",
            )
        );
        assert_eq!(
            hex(four.id()),
            "dac4d006f153b551319cfe2d8d90ebc4ada78a57da91ddd3c5cf7c7c060be7d1"
        );
        let hybrid = Identity::from_seeds(&[6; 32], Some(&[7; 32]))
            .public()
            .clone();
        let mixed = Membership::new(vec![classical(5), hybrid]).unwrap();
        let bytes = mixed.to_bytes();
        assert_eq!(bytes.len(), 2027);
        assert_eq!(
            hex(&bytes[..45]),
            "010002002201006e7a1cdd29b0b78fd13af4c5598feff4ef2a97166e3ca6f2e4fbfccd80505bf107c201018a87"
        );
        assert_eq!(
            hex(blake3::hash(&bytes).as_bytes()),
            "0fcb20ac6956a408b5fa6c27c061b8c0ea10e0c9f6705022f1c24a6266f93574"
        );
        assert_eq!(
            hex(mixed.id()),
            "2608bfa11de39aab2b3fdb7c9d1c2c112fff86075865b287d5bec7f495338153"
        );
        for m in [&one, &four, &mixed] {
            let back = Membership::from_bytes(&m.to_bytes()).unwrap();
            assert_eq!((back.id(), back.members()), (m.id(), m.members()));
        }
    }

    #[test]
    fn membership_decoding_is_strict_and_bounded() {
        let classical = |i: u8| Identity::from_seeds(&[i; 32], None).public().clone();
        let good = Membership::new((1..=4).map(classical).collect())
            .unwrap()
            .to_bytes();
        // Every truncation and any trailing byte.
        for cut in 0..good.len() {
            assert!(Membership::from_bytes(&good[..cut]).is_err(), "cut {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(Membership::from_bytes(&long).is_err());
        // Version, count, identity length.
        let mut v = good.clone();
        v[0] = 3;
        assert!(matches!(
            Membership::from_bytes(&v),
            Err(Error::UnsupportedVersion(3))
        ));
        // Version 2 reads a context first: a version-1 body under it is malformed.
        v[0] = 2;
        assert!(Membership::from_bytes(&v).is_err());
        for n in [0u16, 3, 5, 65, u16::MAX] {
            let mut c = good.clone();
            c[1..3].copy_from_slice(&n.to_be_bytes());
            assert!(Membership::from_bytes(&c).is_err(), "n = {n}");
        }
        let mut l = good.clone();
        l[4] = 0x23;
        assert!(Membership::from_bytes(&l).is_err());
        // An identity that does not decode (unknown flags).
        let mut f = good.clone();
        f[6] = 4;
        assert!(Membership::from_bytes(&f).is_err());
        // Too long, refused unread.
        assert!(matches!(
            Membership::from_bytes(&vec![1; MAX_MEMBERSHIP_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
        // The largest membership fits.
        let big = Membership::new(
            (0..MAX_REPLICAS as u8)
                .map(|i| {
                    Identity::from_seeds(&[i; 32], Some(&[i; 32]))
                        .public()
                        .clone()
                })
                .collect(),
        )
        .unwrap();
        assert_eq!(big.to_bytes().len(), MAX_MEMBERSHIP_LEN - 32);
        assert!(Membership::from_bytes(&big.to_bytes()).is_ok());
        let big = Membership::with_context(big.members().to_vec(), [1; 32]).unwrap();
        assert_eq!(big.to_bytes().len(), MAX_MEMBERSHIP_LEN);
        assert!(Membership::from_bytes(&big.to_bytes()).is_ok());
    }

    /// "No node twice" is by Ed25519 key: two identities with one Ed25519 key and
    /// different (or no) ML-DSA keys have different encodings and node ids, yet one
    /// key holder would sign as two replicas, and a quorum certificate could then
    /// stand for fewer distinct signers than a quorum.
    #[test]
    fn one_ed25519_key_is_one_member() {
        use crate::{CommitProof, message::Commit};
        let x = Identity::from_seeds(&[1; 32], None);
        let x_hybrid = Identity::from_seeds(&[1; 32], Some(&[9; 32]));
        assert_ne!(x.node_id(), x_hybrid.node_id());
        let b = Identity::from_seeds(&[2; 32], None);
        let c = Identity::from_seeds(&[3; 32], None);
        let members = vec![
            x.public().clone(),
            b.public().clone(),
            c.public().clone(),
            x_hybrid.public().clone(),
        ];
        let encoded = {
            let mut out = vec![MEMBERSHIP_VERSION, 0, 4];
            for m in &members {
                out.extend_from_slice(&(m.as_bytes().len() as u16).to_be_bytes());
                out.extend_from_slice(m.as_bytes());
            }
            out
        };
        match Membership::new(members) {
            Err(e) => assert!(matches!(e, Error::InvalidMembership(_))),
            Ok(m) => {
                // Accepted: then every verified proof must still carry a quorum of
                // distinct keys. It does not: x signs as replicas 0 and 3.
                let d = [5; 32];
                let sig =
                    |id: &Identity, i: u16| (i, Commit::new(id, &m, 0, 1, d, i).unwrap().signature);
                let proof = CommitProof {
                    membership: *m.id(),
                    view: 0,
                    seq: 1,
                    digest: d,
                    signatures: vec![sig(&x, 0), sig(&b, 1), sig(&x_hybrid, 3)],
                };
                let keys: std::collections::BTreeSet<[u8; 32]> = [0usize, 1, 3]
                    .iter()
                    .map(|&i| *m.members()[i].ed25519_bytes())
                    .collect();
                assert!(
                    proof.verify(&m).is_err() || keys.len() >= m.quorum(),
                    "a commit proof with {} distinct keys verified (quorum {})",
                    keys.len(),
                    m.quorum()
                );
            }
        }
        assert!(Membership::from_bytes(&encoded).is_err());
    }
}
