//! The configured replica set and its quorum arithmetic.

use fed_crypto::{NodeId, PublicIdentity};

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
/// public-identity encodings; every signed statement commits to it.
#[derive(Clone, Debug)]
pub struct Membership {
    members: Vec<PublicIdentity>,
    id: [u8; 32],
    f: usize,
    quorum: usize,
}

impl Membership {
    /// Builds a membership from the replicas' public identities, in index order.
    ///
    /// Fails if it is empty, has more than [`MAX_REPLICAS`] members, or lists one
    /// node twice.
    pub fn new(members: Vec<PublicIdentity>) -> Result<Self> {
        let n = members.len();
        if n == 0 {
            return Err(Error::InvalidMembership("no replicas"));
        }
        if n > MAX_REPLICAS {
            return Err(Error::InvalidMembership("more than MAX_REPLICAS replicas"));
        }
        let mut ids: Vec<NodeId> = members.iter().map(PublicIdentity::node_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != n {
            return Err(Error::InvalidMembership("a replica is listed twice"));
        }
        let count = (n as u16).to_be_bytes();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(n + 1);
        parts.push(&count);
        parts.extend(members.iter().map(PublicIdentity::as_bytes));
        let id = fed_crypto::hash(labels::MEMBERSHIP, &parts);
        let f = max_faulty(n);
        Ok(Self {
            members,
            id,
            f,
            quorum: quorum_size(n),
        })
    }

    /// The membership identifier (see the type's documentation).
    pub fn id(&self) -> &[u8; 32] {
        &self.id
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
}
