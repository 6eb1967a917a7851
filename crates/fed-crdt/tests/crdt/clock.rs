//! The hybrid logical clock: monotonic, ahead of what it observed, and
//! rejecting stamps from too far in the future.

use fed_crdt::{Error, Hlc, HlcClock, Limits, LwwMap};
use proptest::{collection::vec, prelude::*};

use crate::support::{config, node};

#[derive(Debug, Clone)]
enum Event {
    Tick(u64),
    Observe(Hlc, u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0u64..1_000).prop_map(Event::Tick),
        ((0u64..1_200, any::<u32>(), 0u64..4), 0u64..1_000)
            .prop_map(|((p, l, n), now)| Event::Observe(Hlc::new(p, l, node(n)), now)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stamps_strictly_increase_and_pass_what_was_observed(events in vec(event(), 1..60)) {
        let mut clock = HlcClock::new(node(9), 100);
        let mut last: Option<Hlc> = None;
        for e in events {
            let stamp = match e {
                Event::Tick(now) => {
                    let s = clock.tick(now);
                    prop_assert!(s.physical_ms() >= now);
                    s
                }
                Event::Observe(remote, now) => {
                    let before = clock.clone();
                    match clock.observe(&remote, now) {
                        Ok(s) => {
                            prop_assert!(s > remote);
                            prop_assert!(s.physical_ms() >= now);
                            s
                        }
                        Err(err) => {
                            prop_assert!(remote.physical_ms() > now + 100);
                            prop_assert_eq!(
                                err,
                                Error::ClockSkew {
                                    remote_ms: remote.physical_ms(),
                                    local_ms: now,
                                    max_skew_ms: 100
                                }
                            );
                            prop_assert_eq!(&clock, &before);
                            continue;
                        }
                    }
                }
            };
            prop_assert_eq!(stamp.node(), node(9));
            if let Some(prev) = last {
                prop_assert!(stamp > prev);
            }
            last = Some(stamp);
        }
    }

    #[test]
    fn a_future_skewed_stamp_is_rejected_on_every_ingest_path(
        now in 0u64..1_000_000,
        skew in 0u64..10_000,
        ahead in 1u64..1_000_000,
        key in any::<u8>(),
    ) {
        let mut local = HlcClock::new(node(1), skew);
        let mut map: LwwMap<u8, u8> = LwwMap::new();
        map.insert(0, 0, &mut local, now).unwrap();
        let (map_before, clock_before) = (map.clone(), local.clone());

        // A peer whose clock is `skew + ahead` ms in the future.
        let mut future = HlcClock::new(node(2), u64::MAX);
        let mut remote: LwwMap<u8, u8> = LwwMap::new();
        remote.insert(key, 1, &mut future, now + skew + ahead).unwrap();

        let delta = remote.delta_for(&map.sync_request(), &Limits::default()).unwrap();
        let err = map.ingest_delta(delta, &mut local, now).unwrap_err();
        let is_skew = matches!(err, Error::ClockSkew { .. });
        prop_assert!(is_skew);
        let err = map.ingest_state(remote.clone(), &mut local, now).unwrap_err();
        let is_skew = matches!(err, Error::ClockSkew { .. });
        prop_assert!(is_skew);
        prop_assert_eq!(&map, &map_before);
        prop_assert_eq!(&local, &clock_before);

        // Exactly at the bound it is accepted.
        let mut ok_clock = HlcClock::new(node(3), u64::MAX);
        let mut ok_remote: LwwMap<u8, u8> = LwwMap::new();
        ok_remote.insert(key, 1, &mut ok_clock, now + skew).unwrap();
        prop_assert!(map.ingest_state(ok_remote, &mut local, now).is_ok());
        prop_assert!(local.last().physical_ms() >= now + skew);
    }
}
