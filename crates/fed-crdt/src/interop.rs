//! Bounded wire encodings for the `crdts` types this crate re-exports.
//!
//! The body is the type's own postcard (serde) encoding. Before decoding
//! it, the leading counts are checked against [`Limits`]: set elements and
//! `Orswot` members against `max_entries`, vector-clock origins against
//! `max_origins`. Everything else is bounded by `max_message_bytes`.

use core::hash::Hash;

use crdts::{GCounter, GSet, Orswot, PNCounter, VClock};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    error::{Error, Result},
    wire::{Codec, Limits, MessageKind, Reader, Writer},
};

/// Reads a sequence length at the front of `bytes` and checks it.
fn take_count(
    bytes: &[u8],
    max: usize,
    too_many: impl FnOnce(u64, usize) -> Error,
) -> Result<(usize, &[u8])> {
    let (n, rest) = postcard::take_from_bytes::<u64>(bytes).map_err(Error::Decode)?;
    match usize::try_from(n) {
        Ok(n) if n <= max => Ok((n, rest)),
        _ => Err(too_many(n, max)),
    }
}

fn too_many_origins(count: u64, max: usize) -> Error {
    Error::TooManyOrigins { count, max }
}

fn too_many_entries(count: u64, max: usize) -> Error {
    Error::TooManyEntries { count, max }
}

/// Checks a vector clock's origin count at the front of `bytes` and skips it.
fn skip_vclock<'a, A: DeserializeOwned>(bytes: &'a [u8], limits: &Limits) -> Result<&'a [u8]> {
    let (n, mut rest) = take_count(bytes, limits.max_origins, too_many_origins)?;
    for _ in 0..n {
        let (_, r) = postcard::take_from_bytes::<(A, u64)>(rest).map_err(Error::Decode)?;
        rest = r;
    }
    Ok(rest)
}

/// Encodes `value` as the body and runs the same count checks the decoder runs.
fn encode_checked<T: Serialize>(
    value: &T,
    kind: MessageKind,
    limits: &Limits,
    precheck: impl FnOnce(&[u8], &Limits) -> Result<()>,
) -> Result<Vec<u8>> {
    let mut w = Writer::new(kind);
    w.value(value)?;
    precheck(w.body(), limits)?;
    w.finish(limits)
}

fn decode_checked<T: DeserializeOwned>(
    bytes: &[u8],
    kind: MessageKind,
    limits: &Limits,
    precheck: impl FnOnce(&[u8], &Limits) -> Result<()>,
) -> Result<T> {
    let mut r = Reader::open(bytes, kind, limits)?;
    precheck(r.rest(), limits)?;
    let value = r.value()?;
    r.finish()?;
    Ok(value)
}

fn gset_check(body: &[u8], limits: &Limits) -> Result<()> {
    take_count(body, limits.max_entries, too_many_entries).map(|_| ())
}

fn vclock_check(body: &[u8], limits: &Limits) -> Result<()> {
    take_count(body, limits.max_origins, too_many_origins).map(|_| ())
}

fn pncounter_check<A: DeserializeOwned>(body: &[u8], limits: &Limits) -> Result<()> {
    let rest = skip_vclock::<A>(body, limits)?;
    take_count(rest, limits.max_origins, too_many_origins).map(|_| ())
}

fn orswot_check<A: DeserializeOwned>(body: &[u8], limits: &Limits) -> Result<()> {
    let rest = skip_vclock::<A>(body, limits)?;
    take_count(rest, limits.max_entries, too_many_entries).map(|_| ())
}

/// Body: the set's elements (count, then each), as `crdts` serializes it.
/// Elements at most [`Limits::max_entries`].
impl<T> Codec for GSet<T>
where
    T: Ord + Serialize + DeserializeOwned,
{
    const KIND: MessageKind = MessageKind::GSet;

    fn encode(&self, limits: &Limits) -> Result<Vec<u8>> {
        encode_checked(self, Self::KIND, limits, gset_check)
    }

    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        decode_checked(bytes, Self::KIND, limits, gset_check)
    }
}

/// Body: the clock's `(actor, counter)` pairs (count, then each).
/// Origins at most [`Limits::max_origins`].
impl<A> Codec for VClock<A>
where
    A: Ord + Serialize + DeserializeOwned,
{
    const KIND: MessageKind = MessageKind::VClock;

    fn encode(&self, limits: &Limits) -> Result<Vec<u8>> {
        encode_checked(self, Self::KIND, limits, vclock_check)
    }

    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        decode_checked(bytes, Self::KIND, limits, vclock_check)
    }
}

/// Body: the counter's vector clock. Origins at most [`Limits::max_origins`].
impl<A> Codec for GCounter<A>
where
    A: Ord + Serialize + DeserializeOwned,
{
    const KIND: MessageKind = MessageKind::GCounter;

    fn encode(&self, limits: &Limits) -> Result<Vec<u8>> {
        encode_checked(self, Self::KIND, limits, vclock_check)
    }

    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        decode_checked(bytes, Self::KIND, limits, vclock_check)
    }
}

/// Body: the increment clock, then the decrement clock. Origins at most
/// [`Limits::max_origins`] in each.
impl<A> Codec for PNCounter<A>
where
    A: Ord + Serialize + DeserializeOwned,
{
    const KIND: MessageKind = MessageKind::PNCounter;

    fn encode(&self, limits: &Limits) -> Result<Vec<u8>> {
        encode_checked(self, Self::KIND, limits, pncounter_check::<A>)
    }

    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        decode_checked(bytes, Self::KIND, limits, pncounter_check::<A>)
    }
}

/// Body: the set clock, the members (count, then member and its clock
/// each), then the deferred removals (count, then clock and member set
/// each). Clock origins at most [`Limits::max_origins`], members at most
/// [`Limits::max_entries`]; the members come from a hash map, so two
/// encodings of one state may differ in order.
impl<M, A> Codec for Orswot<M, A>
where
    M: Hash + Eq + Clone + Serialize + DeserializeOwned,
    A: Ord + Hash + Clone + Serialize + DeserializeOwned,
{
    const KIND: MessageKind = MessageKind::Orswot;

    fn encode(&self, limits: &Limits) -> Result<Vec<u8>> {
        encode_checked(self, Self::KIND, limits, orswot_check::<A>)
    }

    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        decode_checked(bytes, Self::KIND, limits, orswot_check::<A>)
    }
}

#[cfg(test)]
mod tests {
    use crdts::{CmRDT, CvRDT};

    use super::*;
    use crate::id::ReplicaId;

    #[test]
    fn crdts_types_round_trip_and_respect_limits() {
        let limits = Limits::default();
        let mut g = GSet::new();
        for i in 0..100u32 {
            g.insert(i);
        }
        let bytes = g.encode(&limits).unwrap();
        assert_eq!(GSet::<u32>::decode(&bytes, &limits).unwrap(), g);
        let small = Limits {
            max_entries: 99,
            ..limits
        };
        assert_eq!(
            GSet::<u32>::decode(&bytes, &small),
            Err(Error::TooManyEntries {
                count: 100,
                max: 99
            })
        );
        assert!(matches!(
            g.encode(&small),
            Err(Error::TooManyEntries { .. })
        ));

        let (a, b) = (ReplicaId::from_u64(1), ReplicaId::from_u64(2));
        let mut o: Orswot<String, ReplicaId> = Orswot::new();
        o.apply(o.add("x".to_string(), o.read_ctx().derive_add_ctx(a)));
        o.apply(o.add("y".to_string(), o.read_ctx().derive_add_ctx(b)));
        let bytes = o.encode(&limits).unwrap();
        let back = Orswot::<String, ReplicaId>::decode(&bytes, &limits).unwrap();
        assert_eq!(back, o);
        let one_origin = Limits {
            max_origins: 1,
            ..limits
        };
        assert!(matches!(
            Orswot::<String, ReplicaId>::decode(&bytes, &one_origin),
            Err(Error::TooManyOrigins { count: 2, max: 1 })
        ));

        let mut c: PNCounter<ReplicaId> = PNCounter::new();
        c.apply(c.inc(a));
        c.apply(c.dec(b));
        c.apply(c.dec(b));
        let back = PNCounter::<ReplicaId>::decode(&c.encode(&limits).unwrap(), &limits).unwrap();
        assert_eq!(back, c);

        let mut gc: GCounter<ReplicaId> = GCounter::new();
        gc.apply(gc.inc(a));
        let mut other = GCounter::new();
        other.apply(other.inc_many(b, 5));
        gc.merge(other);
        let back = GCounter::<ReplicaId>::decode(&gc.encode(&limits).unwrap(), &limits).unwrap();
        assert_eq!(back, gc);

        let mut v: VClock<ReplicaId> = VClock::new();
        v.apply(v.inc(a));
        let back = VClock::<ReplicaId>::decode(&v.encode(&limits).unwrap(), &limits).unwrap();
        assert_eq!(back, v);
        assert!(matches!(
            GSet::<u32>::decode(&v.encode(&limits).unwrap(), &limits),
            Err(Error::WrongKind { .. })
        ));
    }
}
