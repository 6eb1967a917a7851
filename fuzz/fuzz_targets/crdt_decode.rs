//! Every `fed-crdt` decoder, fed arbitrary bytes. Whatever decodes must
//! encode again under the same limits and decode to an equal value, and is
//! then pushed through the operations a replica performs on network input
//! (merge, delta application with the skew check, delta production,
//! reconciliation), none of which may panic.
#![no_main]

use fed_crdt::{
    Codec, GCounter, GSet, HlcClock, Limits, LwwMap, LwwRegister, MapDelta, Orswot, PNCounter,
    QueryResponse, ReconcileConfig, ReplicaId, SyncRequest, VClock, peek_kind, reconcile,
};
use libfuzzer_sys::fuzz_target;

/// Decodes `data` as `T`; on success checks the re-encoding round trip.
fn decode<T: Codec + PartialEq + core::fmt::Debug>(data: &[u8], limits: &Limits) -> Option<T> {
    let value = T::decode(data, limits).ok()?;
    let again = match value.encode(limits) {
        Ok(bytes) => bytes,
        Err(e) => panic!("decoded value does not re-encode: {e}"),
    };
    match T::decode(&again, limits) {
        Ok(back) => assert_eq!(back, value, "round trip changed the value"),
        Err(e) => panic!("re-encoded value does not decode: {e}"),
    }
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    // Time far enough ahead that the skew check accepts most stamps, so the
    // merge paths are reached; small inputs still hit the rejection path.
    let now = u64::from(data.first().copied().unwrap_or(0)) << 40;
    let mut clock = HlcClock::new(ReplicaId::from_u64(1), 10_000);
    let _ = peek_kind(data, &limits);

    if let Some(register) = decode::<LwwRegister<Vec<u8>>>(data, &limits) {
        let mut local = LwwRegister::new(Vec::new(), clock.tick(now));
        let _ = local.ingest(register.clone(), &mut clock, now);
        let _ = local.delta_for(&register.frontier());
    }

    if let Some(state) = decode::<LwwMap<String, Vec<u8>>>(data, &limits) {
        let mut local: LwwMap<String, Vec<u8>> = LwwMap::new();
        let _ = local.insert("k".into(), vec![1], &mut clock, now);
        let _ = local.ingest_state(state.clone(), &mut clock, now);
        // The trusted full-state merge also removes and collects below the
        // state's horizon.
        let mut trusting = local.clone();
        let _ = trusting.ingest_trusted_state(state.clone(), &mut clock, now);
        let _ = state.delta_for(&local.sync_request(), &limits);
        let mut collected = state;
        if let Some(stamp) = collected.frontier().max() {
            collected.collect_garbage(stamp);
        }
        let _ = collected.delta_for(&local.full_sync_request(), &limits);
    }
    let _ = decode::<LwwMap<u64, u64>>(data, &limits);

    if let Some(request) = decode::<SyncRequest<String>>(data, &limits) {
        let mut local: LwwMap<String, Vec<u8>> = LwwMap::new();
        for (i, key) in ["a", "m", "z"].into_iter().enumerate() {
            let _ = local.insert(key.into(), vec![i as u8], &mut clock, now);
        }
        let _ = local.remove("m".into(), &mut clock, now);
        let _ = local.delta_for(&request, &limits);
        // With a horizon, a continuation that echoes another one (tag 2, or
        // none) restarts the series.
        local.collect_garbage(clock.tick(now));
        if let Ok(chunk) = local.delta_for(&request, &limits)
            && request.echo().is_some()
            && chunk.is_snapshot()
            && request.echo_horizon() != local.horizon()
        {
            assert!(chunk.after().is_none(), "a stale series was continued");
        }
    }

    if let Some(delta) = decode::<MapDelta<String, Vec<u8>>>(data, &limits) {
        let mut local: LwwMap<String, Vec<u8>> = LwwMap::new();
        let _ = local.insert("a".into(), vec![0], &mut clock, now);
        let _ = local.remove("b".into(), &mut clock, now);
        let mut pure = local.clone();
        let _ = pure.apply_delta(delta.clone());
        if let Ok(applied) = local.ingest_delta(delta, &mut clock, now) {
            if let Some(next) = applied.next {
                let _ = next.encode(&limits);
            }
        }
    }
    let _ = decode::<MapDelta<u64, u64>>(data, &limits);

    if let Some(response) = decode::<QueryResponse<Vec<u8>>>(data, &limits) {
        let _ = reconcile(
            vec![(response.source, response.clone()), (response.source, response)],
            &ReconcileConfig::default(),
            now,
        );
    }

    let _ = decode::<GSet<Vec<u8>>>(data, &limits);
    let _ = decode::<VClock<ReplicaId>>(data, &limits);
    let _ = decode::<GCounter<ReplicaId>>(data, &limits);
    let _ = decode::<PNCounter<ReplicaId>>(data, &limits);
    // Orswot members live in hash maps: compare decoded values, not bytes.
    let _ = decode::<Orswot<Vec<u8>, ReplicaId>>(data, &limits);
});
