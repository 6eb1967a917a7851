//! Every encoding round-trips; every decoder survives arbitrary and
//! corrupted input with a typed error.

use fed_crdt::{
    Codec, Error, GCounter, GSet, HEADER_LEN, Hit, Hlc, Limits, LwwMap, LwwRegister, MAGIC,
    MapDelta, MessageKind, Orswot, PNCounter, PatternId, QueryResponse, ReplicaId, SyncRequest,
    VClock, WIRE_VERSION, peek_kind,
};
use proptest::{collection::vec, prelude::*};

use crate::support::{Map, config, map, node, register};

/// Feeds `bytes` to every decoder. None may panic; whatever decodes must
/// re-encode and decode to the same value.
fn decode_all(bytes: &[u8], limits: &Limits) {
    fn check<T: Codec + PartialEq + std::fmt::Debug>(bytes: &[u8], limits: &Limits) {
        if let Ok(v) = T::decode(bytes, limits) {
            let again = v.encode(limits).expect("a decoded value re-encodes");
            assert_eq!(T::decode(&again, limits).expect("and decodes"), v);
        }
    }
    let _ = peek_kind(bytes, limits);
    check::<LwwRegister<u16>>(bytes, limits);
    check::<LwwMap<u8, u16>>(bytes, limits);
    check::<LwwMap<String, Vec<u8>>>(bytes, limits);
    check::<SyncRequest<u8>>(bytes, limits);
    check::<MapDelta<u8, u16>>(bytes, limits);
    check::<QueryResponse<u8>>(bytes, limits);
    check::<GSet<u8>>(bytes, limits);
    check::<VClock<ReplicaId>>(bytes, limits);
    check::<GCounter<ReplicaId>>(bytes, limits);
    check::<PNCounter<ReplicaId>>(bytes, limits);
    // Orswot's members live in hash maps: compare decoded states only.
    if let Ok(v) = Orswot::<u8, ReplicaId>::decode(bytes, limits) {
        let again = v.encode(limits).unwrap();
        assert_eq!(Orswot::<u8, ReplicaId>::decode(&again, limits).unwrap(), v);
    }
}

/// A header for `kind` followed by `body`, with a correct length.
fn framed(kind: MessageKind, body: &[u8]) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.push(WIRE_VERSION);
    v.push(kind.to_byte());
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn some_delta(a: &Map, b: &Map, max_entries: usize) -> MapDelta<u8, u16> {
    let limits = Limits {
        max_entries,
        ..Limits::default()
    };
    a.delta_for(&b.sync_request(), &limits).unwrap()
}

fn hit() -> impl Strategy<Value = Hit<Vec<u8>>> {
    (
        any::<[u8; 32]>(),
        -1e6f32..1e6,
        any::<u64>(),
        any::<u32>(),
        any::<[u8; 32]>(),
        vec(any::<u8>(), 0..20),
    )
        .prop_map(|(p, score, ms, l, n, payload)| Hit {
            pattern: PatternId::new(p),
            score,
            version: Hlc::new(ms, l, ReplicaId::new(n)),
            payload,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn maps_registers_and_deltas_round_trip(a in map(), b in map(), r in register(), max_entries in 1usize..6) {
        let limits = Limits::default();
        prop_assert_eq!(Map::decode(&a.encode(&limits).unwrap(), &limits).unwrap(), a.clone());
        prop_assert_eq!(
            LwwRegister::<u16>::decode(&r.encode(&limits).unwrap(), &limits).unwrap(),
            r
        );
        let delta = some_delta(&a, &b, max_entries);
        let bytes = delta.encode(&limits).unwrap();
        prop_assert_eq!(peek_kind(&bytes, &limits).unwrap(), MessageKind::MapDelta);
        prop_assert_eq!(MapDelta::<u8, u16>::decode(&bytes, &limits).unwrap(), delta.clone());

        let mut c = b.clone();
        let next = c.apply_delta(delta).next;
        for req in [b.sync_request(), b.full_sync_request()].into_iter().chain(next) {
            let bytes = req.encode(&limits).unwrap();
            prop_assert_eq!(SyncRequest::<u8>::decode(&bytes, &limits).unwrap(), req);
        }
    }

    #[test]
    fn query_responses_and_crdts_types_round_trip(
        source in any::<[u8; 32]>(),
        hits in vec(hit(), 0..8),
        set in proptest::collection::btree_set(any::<u8>(), 0..40),
        counts in vec((0u64..5, 1u64..100, any::<bool>()), 0..10),
    ) {
        let limits = Limits::default();
        let resp = QueryResponse { source: ReplicaId::new(source), hits };
        prop_assert_eq!(
            QueryResponse::<Vec<u8>>::decode(&resp.encode(&limits).unwrap(), &limits).unwrap(),
            resp
        );
        let mut g = GSet::new();
        for x in set {
            g.insert(x);
        }
        prop_assert_eq!(GSet::<u8>::decode(&g.encode(&limits).unwrap(), &limits).unwrap(), g);

        use fed_crdt::CmRDT;
        let mut pn: PNCounter<ReplicaId> = PNCounter::new();
        let mut vc: VClock<ReplicaId> = VClock::new();
        for (who, steps, up) in counts {
            let op = if up { pn.inc_many(node(who), steps) } else { pn.dec_many(node(who), steps) };
            pn.apply(op);
            vc.apply(vc.inc(node(who)));
        }
        prop_assert_eq!(PNCounter::decode(&pn.encode(&limits).unwrap(), &limits).unwrap(), pn);
        prop_assert_eq!(VClock::decode(&vc.encode(&limits).unwrap(), &limits).unwrap(), vc);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
        let limits = Limits::default();
        decode_all(&bytes, &limits);
    }

    #[test]
    fn arbitrary_bodies_behind_valid_headers_never_panic(
        kind in prop::sample::select(MessageKind::ALL.to_vec()),
        body in vec(any::<u8>(), 0..300),
    ) {
        decode_all(&framed(kind, &body), &Limits::default());
    }

    #[test]
    fn corrupted_and_truncated_messages_never_panic(
        a in map(),
        b in map(),
        flips in vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let limits = Limits::default();
        for bytes in [
            a.encode(&limits).unwrap(),
            some_delta(&a, &b, 3).encode(&limits).unwrap(),
            b.sync_request().encode(&limits).unwrap(),
        ] {
            let mut corrupt = bytes.clone();
            for (at, x) in &flips {
                let i = HEADER_LEN + at % (corrupt.len() - HEADER_LEN).max(1);
                if let Some(byte) = corrupt.get_mut(i) {
                    *byte ^= x | 1;
                }
            }
            decode_all(&corrupt, &limits);
            let truncated = &bytes[..cut % (bytes.len() + 1)];
            decode_all(truncated, &limits);
            if truncated.len() < bytes.len() {
                // Truncation shows as a length mismatch (or a short header).
                let framed_again = framed(MessageKind::from_byte(bytes[5]).unwrap(), &truncated[HEADER_LEN.min(truncated.len())..]);
                decode_all(&framed_again, &limits);
            }
        }
    }
}

#[test]
fn decoders_reject_structurally_invalid_bodies() {
    let limits = Limits::default();
    let stamp = Hlc::new(1, 0, node(1));
    // A map state whose keys are not strictly ascending.
    // Horizon None, no frontier origins, no collected origins, two entries.
    let mut body = vec![0, 0, 0, 2];
    for key in [5u8, 5] {
        body.push(key);
        body.extend(postcard::to_allocvec(&stamp).unwrap());
        body.extend([1, 7]); // Some(7u16)
    }
    assert_eq!(
        Map::decode(&framed(MessageKind::MapState, &body), &limits),
        Err(Error::Invalid {
            reason: "entries not in strictly ascending key order"
        })
    );
    // A frontier whose origins are out of order.
    let mut body = vec![2];
    body.extend(postcard::to_allocvec(&Hlc::new(1, 0, node(2))).unwrap());
    body.extend(postcard::to_allocvec(&Hlc::new(1, 0, node(1))).unwrap());
    body.extend([0, 0, 0]); // full: false, after: None, echo: None
    assert!(matches!(
        SyncRequest::<u8>::decode(&framed(MessageKind::SyncRequest, &body), &limits),
        Err(Error::Invalid { .. })
    ));
    // A delta whose range is inverted, and one with an entry outside its range.
    let delta = |after: u8, until: u8, key: u8| {
        let mut body = vec![0, 0, 1, after, 1, until, 0, 0, 1, key];
        body.extend(postcard::to_allocvec(&stamp).unwrap());
        body.extend([0]); // tombstone
        framed(MessageKind::MapDelta, &body)
    };
    assert!(MapDelta::<u8, u16>::decode(&delta(3, 9, 5), &limits).is_ok());
    assert!(matches!(
        MapDelta::<u8, u16>::decode(&delta(9, 3, 5), &limits),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        MapDelta::<u8, u16>::decode(&delta(3, 9, 10), &limits),
        Err(Error::Invalid { .. })
    ));
    // A trailing byte.
    let mut body = postcard::to_allocvec(&stamp).unwrap();
    body.extend([7, 0]);
    assert_eq!(
        LwwRegister::<u8>::decode(&framed(MessageKind::RegisterState, &body), &limits),
        Err(Error::TrailingBytes { count: 1 })
    );
    // A huge declared entry count is refused before any allocation.
    let body = [0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(matches!(
        Map::decode(&framed(MessageKind::MapState, &body), &limits),
        Err(Error::TooManyEntries { max: 16_384, .. })
    ));
    // Too many hits.
    let small = Limits {
        max_hits: 1,
        ..limits
    };
    let resp = QueryResponse {
        source: node(1),
        hits: vec![
            Hit {
                pattern: PatternId::from_u64(1),
                score: 1.0,
                version: stamp,
                payload: 0u8,
            },
            Hit {
                pattern: PatternId::from_u64(2),
                score: 1.0,
                version: stamp,
                payload: 0u8,
            },
        ],
    };
    assert!(matches!(
        resp.encode(&small),
        Err(Error::TooManyHits { count: 2, max: 1 })
    ));
    // A NaN score is refused on both sides.
    let mut nan = resp.clone();
    nan.hits[1].score = f32::NAN;
    assert!(matches!(nan.encode(&limits), Err(Error::Invalid { .. })));
    let mut bytes = resp.encode(&limits).unwrap();
    let at = bytes.len() - (1 + 34 + 4); // the second hit's score
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_eq!(
        QueryResponse::<u8>::decode(&bytes, &limits),
        Err(Error::Invalid {
            reason: "non-finite score"
        })
    );
    assert_eq!(
        QueryResponse::<u8>::decode(&resp.encode(&limits).unwrap(), &small),
        Err(Error::TooManyHits { count: 2, max: 1 })
    );
}

#[test]
fn encoders_refuse_what_decoders_would_refuse() {
    let mut clock = fed_crdt::HlcClock::new(node(1), 1_000);
    let mut m: LwwMap<u32, Vec<u8>> = LwwMap::new();
    for i in 0..10 {
        m.insert(i, vec![0; 100], &mut clock, 5).unwrap();
    }
    let tight = Limits {
        max_message_bytes: 500,
        ..Limits::default()
    };
    assert!(matches!(
        m.encode(&tight),
        Err(Error::MessageTooLarge { max: 500, .. })
    ));
    // Delta chunks fit the byte limit instead, and still deliver everything.
    let mut copy: LwwMap<u32, Vec<u8>> = LwwMap::new();
    let mut request = copy.sync_request();
    let mut chunks = 0;
    loop {
        chunks += 1;
        let delta = m.delta_for(&request, &tight).unwrap();
        let bytes = delta.encode(&tight).unwrap();
        assert!(bytes.len() <= 500);
        match copy
            .apply_trusted_delta(MapDelta::decode(&bytes, &tight).unwrap())
            .next
        {
            Some(next) => request = next,
            None => break,
        }
    }
    assert!(chunks >= 3);
    assert_eq!(copy, m);
    // A single entry larger than a message cannot be sent at all.
    m.insert(99, vec![0; 600], &mut clock, 6).unwrap();
    let err = m.delta_for(&copy.sync_request(), &tight).unwrap_err();
    assert!(matches!(err, Error::MessageTooLarge { .. }));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The byte-exact examples given in `docs/protocol/crdt.md`.
#[test]
fn wire_test_vectors_match_the_protocol_document() {
    let limits = Limits::default();
    let node1 = format!("{}01", "00".repeat(31));

    let reg = LwwRegister::new(7u16, Hlc::new(1_000, 2, node(1)));
    let expected = [
        "46435244", "01", "01", "24000000", // envelope: register, 36-byte body
        "e807", "02", &node1, // stamp 1000.2 by node 1
        "07",   // value 7u16
    ]
    .concat();
    assert_eq!(hex(&reg.encode(&limits).unwrap()), expected);

    let mut clock = fed_crdt::HlcClock::new(node(1), 10_000);
    let mut m: LwwMap<String, u16> = LwwMap::new();
    m.insert("a".into(), 300, &mut clock, 1_000).unwrap();
    m.remove("b".into(), &mut clock, 1_000).unwrap();
    let request = LwwMap::<String, u16>::new().sync_request();
    assert_eq!(
        hex(&request.encode(&limits).unwrap()),
        "4643524401030400000000000000"
    );
    let delta = m.delta_for(&request, &limits).unwrap();
    let expected = [
        "46435244", "01", "04", "78000000", // envelope, body of 120 bytes
        "00", "00", "00", "00", // delta mode, no horizon, no after, no until
        "01", "e80701", &node1, // frontier: one origin at 1000.1
        "00",   // no collected floors
        "02",   // two entries
        "0161", "e80700", &node1, "01ac02", // "a" at 1000.0: Some(300)
        "0162", "e80701", &node1, "00", // "b" at 1000.1: tombstone
    ]
    .concat();
    assert_eq!(hex(&delta.encode(&limits).unwrap()), expected);

    // The continuation of a snapshot series from a replica with a horizon:
    // node 1 wrote "a" and "c" at 1000 and collected at 2000; an empty
    // replica asked for a snapshot one entry at a time.
    let mut q: LwwMap<String, u16> = LwwMap::new();
    q.insert("a".into(), 1, &mut clock, 1_000).unwrap();
    q.insert("c".into(), 2, &mut clock, 1_000).unwrap();
    q.collect_garbage(Hlc::floor(2_000));
    let one = Limits {
        max_entries: 1,
        ..limits
    };
    let mut p: LwwMap<String, u16> = LwwMap::new();
    let chunk = q.delta_for(&p.full_sync_request(), &one).unwrap();
    let next = p.apply_trusted_delta(chunk).next.unwrap();
    let zero = "00".repeat(32);
    let expected = [
        "46435244", "01", "03", "4d000000", // envelope: kind 0x03, body 77 bytes
        "00", "01", "010161", // empty frontier, full, after Some("a")
        "02", "01", "e80703", &node1, // echo tag 2: Q's frontier, (1000, 3, N1)
        "d00f", "00", &zero, // and the series' horizon (2000, 0, 00..00)
    ]
    .concat();
    assert_eq!(hex(&next.encode(&limits).unwrap()), expected);
}
