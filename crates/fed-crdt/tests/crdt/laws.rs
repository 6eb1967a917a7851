//! Merge is commutative, associative and idempotent, including when stamps
//! are equal; conflicts are reported whichever side merges.

use fed_crdt::{Conflict, CvRDT};
use proptest::prelude::*;

use crate::support::{config, map, register};

fn conflict_keys(mut c: Vec<Conflict<u8>>) -> Vec<Conflict<u8>> {
    c.sort_by_key(|c| c.key);
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn map_merge_is_commutative(a in map(), b in map()) {
        let mut ab = a.clone();
        let out_ab = ab.merge(b.clone());
        let mut ba = b.clone();
        let out_ba = ba.merge(a.clone());
        prop_assert_eq!(&ab, &ba);
        prop_assert_eq!(conflict_keys(out_ab.conflicts), conflict_keys(out_ba.conflicts));
    }

    #[test]
    fn map_merge_is_associative(a in map(), b in map(), c in map()) {
        let mut left = a.clone();
        left.merge(b.clone());
        left.merge(c.clone());
        let mut bc = b;
        bc.merge(c);
        let mut right = a;
        right.merge(bc);
        prop_assert_eq!(left, right);
    }

    #[test]
    fn map_merge_is_idempotent(a in map(), b in map()) {
        let mut aa = a.clone();
        let out = aa.merge(a.clone());
        prop_assert_eq!(&aa, &a);
        prop_assert!(out.is_noop());
        // And merging the same state twice changes nothing the second time.
        let mut ab = a;
        ab.merge(b.clone());
        let once = ab.clone();
        prop_assert_eq!(ab.merge(b).changed, 0);
        prop_assert_eq!(ab, once);
    }

    #[test]
    fn map_validate_merge_agrees_with_reported_conflicts(a in map(), b in map()) {
        let invalid = a.validate_merge(&b).is_err();
        let mut ab = a;
        let out = ab.merge(b);
        prop_assert_eq!(invalid, !out.conflicts.is_empty());
    }

    #[test]
    fn register_merge_laws(a in register(), b in register(), c in register()) {
        let mut ab = a.clone();
        let out_ab = ab.merge(b.clone());
        let mut ba = b.clone();
        let out_ba = ba.merge(a.clone());
        prop_assert_eq!(&ab, &ba);
        prop_assert_eq!(out_ab.conflicts.len(), out_ba.conflicts.len());
        prop_assert_eq!(
            !out_ab.conflicts.is_empty(),
            a.stamp() == b.stamp() && a.value() != b.value()
        );

        let mut left = ab.clone();
        left.merge(c.clone());
        let mut bc = b.clone();
        bc.merge(c);
        let mut right = a.clone();
        right.merge(bc);
        prop_assert_eq!(left, right);

        let mut aa = a.clone();
        prop_assert!(aa.merge(a.clone()).is_noop());
        prop_assert_eq!(aa, a);
    }
}
