//! The replica's durable state as an append-only log beside the database
//! (docs/protocol/store.md §3): a group of writes is one record, one `pwrite`
//! and one `fdatasync`, where a redb transaction with two-phase commit wrote
//! several pages and synced twice.
//!
//! The file is a sequence of 512-byte sectors. Every sector starts with a tag
//! (`"RLOG"` and the number of the record it belongs to), so that a record
//! torn by a crash (some of its sectors never reached the disk, and read as
//! zeros or lie past the end of the file) is told apart from a record that was
//! written whole and then changed: the first is dropped, with a warning, since
//! its write never returned and nothing that depends on it was sent; the second
//! is [`StoreError::Corrupted`], as is anything written after a torn record.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
};

use std::sync::Arc;

use fed_pbft::{
    CheckpointCert, CommitProof, Digest, DurableState, Persist, PrePrepareRecord, PreparedCert,
    PreparedRecord, Signature,
};
use serde::{Deserialize, Serialize};

use super::{CHECKSUM_LEN, MAX_RECORD_LEN, StoreError, checksum};

/// Bytes of a sector, the unit the log is written and checked in.
pub(super) const SECTOR: usize = 512;
/// Bytes of a sector's tag: [`SECTOR_MAGIC`] ‖ `le32(record number)`.
const TAG_LEN: usize = 8;
/// Payload bytes of a sector.
const SECTOR_BODY: usize = SECTOR - TAG_LEN;
/// The first bytes of every sector.
const SECTOR_MAGIC: &[u8; 4] = b"RLOG";
/// A record's framing before its body: `le32(len) ‖ head check (4) ‖ checksum (16)`.
const RECORD_HEAD: usize = 4 + 4 + CHECKSUM_LEN;
/// The first bytes of the head record's body.
const LOG_MAGIC: [u8; 14] = *b"exo-fed-rlog\0\0";
/// The version of the log's formats (store.md §3).
const LOG_VERSION: u8 = 1;
/// The checksums' table name (store.md §1).
const TABLE: &str = "replica_log";
/// Bytes of the ops in each record a rewrite writes (one op larger than this
/// goes in a record of its own).
const BASE_CHUNK: usize = 1 << 20;
/// Bytes of a log's salt.
const SALT_LEN: usize = 16;
/// Bytes the log may grow by past its base (the records of its last
/// rewrite) before the next stable checkpoint rewrites it
/// ([`ReplicaLog::append`]).
const COMPACT_SLACK: u64 = 8 << 20;
/// Whatever the checkpoints, the log is rewritten beyond four times its base
/// and this many bytes (a federation that stops making checkpoints
/// stable still writes views and pre-prepares of new views).
const COMPACT_LIMIT: u64 = 64 << 20;

/// Batch bytes of held-back writes ([`ReplicaLog::append`]) beyond which they
/// are written and synced at once: a bound on memory and on one record.
const HELD_LIMIT: usize = 8 << 20;

/// The batch bytes a held-back write carries.
fn batch_len(op: &Persist) -> usize {
    match op {
        Persist::PrePrepare { batch: Some(b), .. } | Persist::Committed { batch: b, .. } => b.len(),
        _ => 0,
    }
}

/// One write, as a record holds it (store.md §3): the meaning of
/// [`Persist`], the bytes borrowed from the writer or from the record read.
/// A prepared certificate or a commit proof whose batch the state already
/// holds under the same sequence number and digest (its pre-prepare's,
/// usually) is written without it, as `PreparedSame` or `CommittedSame`: a
/// batch is written once, not three times.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Op<'a> {
    View {
        view: u64,
        active: bool,
    },
    PrePrepare {
        view: u64,
        seq: u64,
        digest: Digest,
        signature: Signature,
        #[serde(borrow, with = "serde_bytes")]
        batch: Option<&'a [u8]>,
    },
    Prepared {
        cert: PreparedCert,
        #[serde(borrow, with = "serde_bytes")]
        batch: Option<&'a [u8]>,
    },
    Committed {
        proof: CommitProof,
        #[serde(borrow, with = "serde_bytes")]
        batch: &'a [u8],
    },
    Checkpoint {
        seq: u64,
        state: Digest,
        #[serde(borrow, with = "serde_bytes")]
        snapshot: &'a [u8],
    },
    Stable(CheckpointCert),
    /// `Prepared` with the batch [`same_batch`] finds.
    PreparedSame {
        cert: PreparedCert,
    },
    /// `Committed` with the batch [`same_batch`] finds.
    CommittedSame {
        proof: CommitProof,
    },
    /// [`Persist::Reserve`].
    Reserve {
        view: u64,
        upto: u64,
    },
}

/// The batch the state holds for `seq` under `digest`: the pre-prepare
/// entry's if it has that digest and a batch, else the prepared entry's on
/// the same terms, else the committed entry's if it has that digest. What a
/// `PreparedSame` or `CommittedSame` stands for, looked up in the state as it
/// is when the op is applied (store.md §3.1).
fn same_batch<'s>(
    pre_prepare: Option<&'s PrePrepareRecord>,
    prepared: Option<&'s PreparedRecord>,
    committed: Option<&'s (CommitProof, Arc<[u8]>)>,
    digest: &Digest,
) -> Option<&'s Arc<[u8]>> {
    pre_prepare
        .filter(|r| r.digest == *digest)
        .and_then(|r| r.batch.as_ref())
        .or_else(|| {
            prepared
                .filter(|r| r.cert.digest == *digest)
                .and_then(|r| r.batch.as_ref())
        })
        .or_else(|| {
            committed
                .filter(|(p, _)| p.digest == *digest)
                .map(|(_, b)| b)
        })
}

/// [`same_batch`] in `state`.
fn same_batch_in<'s>(state: &'s DurableState, seq: u64, digest: &Digest) -> Option<&'s Arc<[u8]>> {
    same_batch(
        state.pre_prepares.get(&seq),
        state.prepared.get(&seq),
        state.committed.get(&seq),
        digest,
    )
}

/// Whether `found` is `batch` (the same allocation, or the same bytes).
fn is_batch(found: Option<&Arc<[u8]>>, batch: &Arc<[u8]>) -> bool {
    found.is_some_and(|f| Arc::ptr_eq(f, batch) || **f == **batch)
}

/// The ops of a group of `writes` appended to a log holding `state`: each
/// prepared certificate and commit proof whose batch the state holds at that
/// point of the group (after the group's earlier writes) under its sequence
/// number and digest is written without it. `None` for a write this log does
/// not know.
fn group_ops<'a>(state: &DurableState, writes: &'a [Persist]) -> Option<Vec<Op<'a>>> {
    // The entries of the sequence numbers the group names, as the state has
    // them, with each write applied in turn: `apply` treats each sequence
    // number alone, but for the stable certificate's pruning, which the
    // certificate copied here keeps.
    let mut seen = DurableState {
        stable: state.stable.clone(),
        ..DurableState::default()
    };
    for w in writes {
        let seq = match w {
            Persist::Prepared { cert, .. } => cert.seq,
            Persist::Committed { proof, .. } => proof.seq,
            Persist::PrePrepare { seq, .. } => *seq,
            _ => continue,
        };
        if let Some(r) = state.pre_prepares.get(&seq) {
            seen.pre_prepares.insert(seq, r.clone());
        }
        if let Some(r) = state.prepared.get(&seq) {
            seen.prepared.insert(seq, r.clone());
        }
        if let Some(r) = state.committed.get(&seq) {
            seen.committed.insert(seq, r.clone());
        }
    }
    let mut ops = Vec::with_capacity(writes.len());
    for w in writes {
        let op = match w {
            Persist::Prepared {
                cert,
                batch: Some(batch),
            } if is_batch(same_batch_in(&seen, cert.seq, &cert.digest), batch) => {
                Op::PreparedSame { cert: cert.clone() }
            }
            Persist::Committed { proof, batch }
                if is_batch(same_batch_in(&seen, proof.seq, &proof.digest), batch) =>
            {
                Op::CommittedSame {
                    proof: proof.clone(),
                }
            }
            _ => Op::of(w)?,
        };
        ops.push(op);
        seen.apply(w);
    }
    Some(ops)
}

impl<'a> Op<'a> {
    fn of(op: &'a Persist) -> Option<Self> {
        Some(match op {
            Persist::View { view, active } => Op::View {
                view: *view,
                active: *active,
            },
            Persist::PrePrepare {
                view,
                seq,
                digest,
                signature,
                batch,
            } => Op::PrePrepare {
                view: *view,
                seq: *seq,
                digest: *digest,
                signature: *signature,
                batch: batch.as_deref(),
            },
            Persist::Prepared { cert, batch } => Op::Prepared {
                cert: cert.clone(),
                batch: batch.as_deref(),
            },
            Persist::Committed { proof, batch } => Op::Committed {
                proof: proof.clone(),
                batch,
            },
            Persist::Checkpoint {
                seq,
                state,
                snapshot,
            } => Op::Checkpoint {
                seq: *seq,
                state: *state,
                snapshot,
            },
            Persist::Stable(cert) => Op::Stable(cert.clone()),
            Persist::Reserve { view, upto } => Op::Reserve {
                view: *view,
                upto: *upto,
            },
            _ => return None,
        })
    }

    /// The write this op stands for, applied to `state` next; `None` for a
    /// `PreparedSame` or `CommittedSame` whose batch `state` does not hold.
    fn to_persist(&self, state: &DurableState) -> Option<Persist> {
        Some(match self {
            Op::View { view, active } => Persist::View {
                view: *view,
                active: *active,
            },
            Op::PrePrepare {
                view,
                seq,
                digest,
                signature,
                batch,
            } => Persist::PrePrepare {
                view: *view,
                seq: *seq,
                digest: *digest,
                signature: *signature,
                batch: batch.map(Into::into),
            },
            Op::Prepared { cert, batch } => Persist::Prepared {
                cert: cert.clone(),
                batch: batch.map(Into::into),
            },
            Op::Committed { proof, batch } => Persist::Committed {
                proof: proof.clone(),
                batch: (*batch).into(),
            },
            Op::Checkpoint {
                seq,
                state,
                snapshot,
            } => Persist::Checkpoint {
                seq: *seq,
                state: *state,
                snapshot: (*snapshot).into(),
            },
            Op::Stable(cert) => Persist::Stable(cert.clone()),
            Op::Reserve { view, upto } => Persist::Reserve {
                view: *view,
                upto: *upto,
            },
            Op::PreparedSame { cert } => Persist::Prepared {
                batch: Some(same_batch_in(state, cert.seq, &cert.digest)?.clone()),
                cert: cert.clone(),
            },
            Op::CommittedSame { proof } => Persist::Committed {
                batch: same_batch_in(state, proof.seq, &proof.digest)?.clone(),
                proof: proof.clone(),
            },
        })
    }
}

/// The first record: whose log it is, its configuration epoch, its salt, how
/// many records hold the state it starts from (this one and the `base - 1`
/// after it), and the first of the writes that rebuild that state from the
/// empty state.
#[derive(Serialize, Deserialize)]
struct Head<'a> {
    magic: [u8; 14],
    version: u8,
    node: [u8; 32],
    epoch: u64,
    salt: [u8; SALT_LEN],
    base: u32,
    #[serde(borrow)]
    ops: Vec<Op<'a>>,
}

/// The writes that rebuild `state` from [`DurableState::default`], in an order
/// that [`DurableState::apply`] keeps whole: the stable certificate before the
/// entries above it. (A rewrite writes them through [`group_ops`], so a
/// certificate or proof whose batch is held by then is written without it.)
fn rebuild_writes(state: &DurableState) -> Vec<Persist> {
    let mut writes = vec![Persist::View {
        view: state.view,
        active: state.active,
    }];
    if state.reserved != (0, 0) {
        writes.push(Persist::Reserve {
            view: state.reserved.0,
            upto: state.reserved.1,
        });
    }
    writes.extend(state.stable.iter().map(|c| Persist::Stable(c.clone())));
    writes.extend(
        state
            .checkpoints
            .iter()
            .map(|(seq, (digest, snapshot))| Persist::Checkpoint {
                seq: *seq,
                state: *digest,
                snapshot: snapshot.clone(),
            }),
    );
    writes.extend(
        state
            .pre_prepares
            .iter()
            .map(|(seq, r)| Persist::PrePrepare {
                view: r.view,
                seq: *seq,
                digest: r.digest,
                signature: r.signature,
                batch: r.batch.clone(),
            }),
    );
    writes.extend(state.prepared.values().map(|r| Persist::Prepared {
        cert: r.cert.clone(),
        batch: r.batch.clone(),
    }));
    writes.extend(
        state
            .committed
            .values()
            .map(|(proof, batch)| Persist::Committed {
                proof: proof.clone(),
                batch: batch.clone(),
            }),
    );
    writes
}

/// `state` as a rewrite gives it back: what [`rebuild_writes`] writes, applied
/// to the empty state (the same state for any state a replica wrote).
pub(super) fn normalized(state: &DurableState) -> DurableState {
    let mut out = DurableState::default();
    for w in rebuild_writes(state) {
        out.apply(&w);
    }
    out
}

/// `le32(len) ‖ le32(n)`'s check: the first 4 bytes of the record checksum
/// of the two, so that an edited length is corruption, not a torn record.
fn head_check(salt: &[u8; SALT_LEN], n: u32, len: u32) -> [u8; 4] {
    let mut key = [0u8; SALT_LEN + 8];
    key[..SALT_LEN].copy_from_slice(salt);
    key[SALT_LEN..SALT_LEN + 4].copy_from_slice(&n.to_le_bytes());
    key[SALT_LEN + 4..].copy_from_slice(&len.to_le_bytes());
    let c = checksum(TABLE, b"head", &key);
    [c[0], c[1], c[2], c[3]]
}

/// The checksum's key of record `n`: `salt ‖ be32(n)`.
fn record_key(salt: &[u8; SALT_LEN], n: u32) -> [u8; SALT_LEN + 4] {
    let mut key = [0u8; SALT_LEN + 4];
    key[..SALT_LEN].copy_from_slice(salt);
    key[SALT_LEN..].copy_from_slice(&n.to_be_bytes());
    key
}

/// The salt of record 1, which is read before the log's salt is known (and
/// is always written to a file of its own and synced before it is renamed
/// into place, so no other log's sectors can show through it).
const HEAD_SALT: [u8; SALT_LEN] = [0; SALT_LEN];

/// Record `n` of `body` in the log salted `salt`: whole sectors, each tagged,
/// the body after its framing, zeros after it to the end of the last sector.
fn frame(salt: &[u8; SALT_LEN], n: u32, body: &[u8]) -> Vec<u8> {
    // Callers refuse bodies over MAX_RECORD_LEN, far below u32::MAX.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut payload = Vec::with_capacity(RECORD_HEAD + body.len());
    payload.extend_from_slice(&len.to_le_bytes());
    payload.extend_from_slice(&head_check(salt, n, len));
    payload.extend_from_slice(&checksum(TABLE, &record_key(salt, n), body));
    payload.extend_from_slice(body);
    let sectors = payload.len().div_ceil(SECTOR_BODY);
    let mut out = vec![0u8; sectors * SECTOR];
    for (i, chunk) in payload.chunks(SECTOR_BODY).enumerate() {
        let s = &mut out[i * SECTOR..(i + 1) * SECTOR];
        s[..4].copy_from_slice(SECTOR_MAGIC);
        s[4..TAG_LEN].copy_from_slice(&n.to_le_bytes());
        s[TAG_LEN..TAG_LEN + chunk.len()].copy_from_slice(chunk);
    }
    out
}

/// Where a log's bytes come from: the file, or a slice (tests, fuzzing).
pub(super) trait Source {
    /// The bytes in all.
    fn len(&self) -> u64;
    /// Fills `buf` from `offset`; `offset + buf.len()` is within [`len`](Self::len).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl Source for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let at = usize::try_from(offset).map_err(std::io::Error::other)?;
        buf.copy_from_slice(&self[at..at + buf.len()]);
        Ok(())
    }
}

struct FileSource<'a> {
    file: &'a File,
    len: u64,
}

impl Source for FileSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let mut f = self.file;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}

/// Why a scan stopped short of a valid log.
#[derive(Debug)]
pub(super) enum ScanError {
    /// The bytes are not a log this build may recover from (the detail says
    /// where and why).
    Corrupt(String),
    /// The file could not be read.
    Io(std::io::Error),
}

/// What a scan found.
#[derive(Debug)]
pub(super) struct Scanned {
    /// The node the log belongs to.
    pub(super) node: [u8; 32],
    /// Its configuration epoch.
    pub(super) epoch: u64,
    /// The state its records give.
    pub(super) state: DurableState,
    /// Its salt.
    pub(super) salt: [u8; SALT_LEN],
    /// Where its last whole record ends; a torn record after it is dropped.
    pub(super) end: u64,
    /// The number of the next record.
    pub(super) next: u32,
    /// Bytes of its base: the records its last rewrite wrote.
    pub(super) base_len: u64,
    /// Whether a torn record follows `end`.
    pub(super) torn: bool,
}

/// A postcard body with no bytes left over, borrowing from `body`.
fn decode_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes(body) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}

/// The little-endian `u32` of the first 4 bytes of `b` (which has them).
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A sector's tag: `None` if the sector was never written (all zero).
fn tag(sector: &[u8]) -> Option<(&[u8], u32)> {
    if sector[..TAG_LEN].iter().all(|b| *b == 0) {
        return None;
    }
    let n = le32(&sector[4..TAG_LEN]);
    Some((&sector[..4], n))
}

/// One record read whole (its body and its bytes in the file), or where it
/// tore.
enum Read {
    Whole(Vec<u8>, u64),
    Torn,
}

/// Reads record `n` at `at` of a log salted `salt`: its first sector, then
/// the rest of its span in one read (no more than the source holds).
fn read_record(
    src: &(impl Source + ?Sized),
    salt: &[u8; SALT_LEN],
    at: u64,
    n: u32,
) -> Result<Read, ScanError> {
    let corrupt = |what: String| ScanError::Corrupt(format!("offset {at}: {what}"));
    let mut first = [0u8; SECTOR];
    let room = src.len() - at;
    if room < SECTOR as u64 {
        return Ok(Read::Torn);
    }
    src.read_exact_at(&mut first, at).map_err(ScanError::Io)?;
    match tag(&first) {
        None => return Ok(Read::Torn),
        Some((magic, m)) if magic == SECTOR_MAGIC && m == n => {}
        Some(_) => return Err(corrupt(format!("a sector that is not record {n}'s"))),
    }
    let len = le32(&first[TAG_LEN..TAG_LEN + 4]);
    if first[TAG_LEN + 4..TAG_LEN + 8] != head_check(salt, n, len) {
        return Err(corrupt(format!("record {n}'s length fails its check")));
    }
    let len = len as usize;
    if len > MAX_RECORD_LEN {
        return Err(corrupt(format!("record {n} claims {len} bytes")));
    }
    let sectors = (RECORD_HEAD + len).div_ceil(SECTOR_BODY);
    let span = (sectors * SECTOR) as u64;
    if room < span {
        // Sectors past the end: never written.
        return Ok(Read::Torn);
    }
    let mut bytes = vec![0u8; sectors * SECTOR];
    bytes[..SECTOR].copy_from_slice(&first);
    src.read_exact_at(&mut bytes[SECTOR..], at + SECTOR as u64)
        .map_err(ScanError::Io)?;
    let mut torn = false;
    for i in 1..sectors {
        let sector = &bytes[i * SECTOR..(i + 1) * SECTOR];
        match tag(sector) {
            None => torn = true,
            Some((magic, m)) if magic == SECTOR_MAGIC && m == n => {}
            Some(_) => {
                return Err(ScanError::Corrupt(format!(
                    "offset {}: a sector that is not record {n}'s",
                    at + (i * SECTOR) as u64
                )));
            }
        }
    }
    if torn {
        return Ok(Read::Torn);
    }
    // The payload, in place: each sector's body moved down over the tags.
    for i in 0..sectors {
        bytes.copy_within(i * SECTOR + TAG_LEN..(i + 1) * SECTOR, i * SECTOR_BODY);
    }
    bytes.truncate(sectors * SECTOR_BODY);
    let mut sum = [0u8; CHECKSUM_LEN];
    sum.copy_from_slice(&bytes[8..RECORD_HEAD]);
    if bytes[RECORD_HEAD + len..].iter().any(|b| *b != 0) {
        return Err(corrupt(format!("record {n} fails its checksum")));
    }
    bytes.truncate(RECORD_HEAD + len);
    bytes.drain(..RECORD_HEAD);
    if !fed_crypto::ct_eq(&sum, &checksum(TABLE, &record_key(salt, n), &bytes)) {
        return Err(corrupt(format!("record {n} fails its checksum")));
    }
    Ok(Read::Whole(bytes, span))
}

/// After a torn record at `at`: every sector from there on must be unwritten
/// or part of that record (written after it, nothing can have been synced).
fn check_after_torn(src: &(impl Source + ?Sized), at: u64, n: u32) -> Result<(), ScanError> {
    let mut sector = [0u8; SECTOR];
    let mut off = at;
    while src.len() - off >= SECTOR as u64 {
        src.read_exact_at(&mut sector, off).map_err(ScanError::Io)?;
        match tag(&sector) {
            None => {}
            Some((magic, m)) if magic == SECTOR_MAGIC && m == n => {}
            Some(_) => {
                return Err(ScanError::Corrupt(format!(
                    "offset {off}: written data after the unfinished record {n} at offset {at}"
                )));
            }
        }
        off += SECTOR as u64;
    }
    Ok(())
}

/// Reads a whole log: its head, then every record in order, each applied to
/// the state. Memory: the state and one record at a time.
pub(super) fn scan(src: &(impl Source + ?Sized)) -> Result<Scanned, ScanError> {
    let corrupt = |what: &str| ScanError::Corrupt(what.to_string());
    let (head_body, head_span) = match read_record(src, &HEAD_SALT, 0, 1)? {
        Read::Whole(body, span) => (body, span),
        // The head is written to a file of its own and renamed into place
        // after its sync: torn, it was never this log.
        Read::Torn => return Err(corrupt("the head record is incomplete")),
    };
    let head: Head<'_> =
        decode_body(&head_body).ok_or_else(|| corrupt("the head record does not decode"))?;
    if head.magic != LOG_MAGIC {
        return Err(corrupt("not a replica log"));
    }
    if head.version != LOG_VERSION {
        return Err(ScanError::Corrupt(format!(
            "replica log format version {}",
            head.version
        )));
    }
    if head.base == 0 {
        return Err(corrupt("the head record counts no base"));
    }
    let mut state = DurableState::default();
    for op in &head.ops {
        let w = op
            .to_persist(&state)
            .ok_or_else(|| corrupt("the head record names a batch the log does not hold"))?;
        state.apply(&w);
    }
    let (node, epoch, salt, base) = (head.node, head.epoch, head.salt, head.base);
    drop(head);
    let mut at = head_span;
    let mut base_len = head_span;
    let mut n = 2u32;
    loop {
        if n == u32::MAX && at != src.len() {
            return Err(corrupt("more records than a log holds"));
        }
        let read = if at == src.len() {
            Read::Torn
        } else {
            read_record(src, &salt, at, n)?
        };
        let Read::Whole(body, span) = read else {
            if n <= base {
                // The base is synced before the log is renamed into place.
                return Err(ScanError::Corrupt(format!(
                    "offset {at}: the log ends inside its base of {base} records"
                )));
            }
            let torn = at != src.len();
            if torn {
                check_after_torn(src, at, n)?;
            }
            return Ok(Scanned {
                node,
                epoch,
                salt,
                state,
                end: at,
                next: n,
                base_len,
                torn,
            });
        };
        let ops: Vec<Op<'_>> = decode_body(&body)
            .ok_or_else(|| ScanError::Corrupt(format!("record {n} does not decode")))?;
        for op in &ops {
            let w = op.to_persist(&state).ok_or_else(|| {
                ScanError::Corrupt(format!("record {n} names a batch the log does not hold"))
            })?;
            state.apply(&w);
        }
        at += span;
        if n <= base {
            base_len = at;
        }
        // Below u32::MAX, checked above.
        n += 1;
    }
}

/// The replica log of a store, open for appends.
#[derive(Debug)]
pub(super) struct ReplicaLog {
    path: PathBuf,
    file: File,
    node: [u8; 32],
    epoch: u64,
    salt: [u8; SALT_LEN],
    /// Where the next record goes.
    end: u64,
    /// Its number.
    next: u32,
    /// Bytes of the base (the records of the last rewrite).
    base_len: u64,
    /// No rewrite is tried before the log is this long (after one failed).
    retry_at: u64,
    /// What the records give: what [`ReplicaLog::state`] returns, and what a
    /// rewrite starts from.
    state: DurableState,
    /// Why the log refuses every call: a write or a rewrite failed at a point
    /// where the file and the state may disagree.
    broken: Option<String>,
    /// Writes that need no sync (`PrePrepare`s and `Committed`s,
    /// [`Persist::needs_sync`]), held back to go in the record of the next
    /// write that does, or of [`flush_held`](Self::flush_held). Not in
    /// `state`: a crash loses them, as the replica allows (pbft.md §5).
    held: Vec<Persist>,
    /// The batch bytes `held` carries.
    held_bytes: usize,
    /// How many times `held` went from empty to not ([`holds_writes`](Self::holds_writes)).
    held_since: u64,
    /// What the log did since the store was opened.
    counts: LogCounts,
}

/// What a replica log did since its store was opened, and its size now
/// (the node's metrics, OPERATING.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaLogStats {
    /// Bytes of the log file.
    pub bytes: u64,
    /// Bytes of its base (what its last rewrite wrote).
    pub base_bytes: u64,
    /// Rewrites done (a stable checkpoint's, an epoch's, a torn record's).
    pub rewrites: u64,
    /// Rewrites that failed before the new file was in place (tried again
    /// later; the log grows meanwhile).
    pub rewrite_failures: u64,
    /// Records a crash had interrupted, dropped when the store was opened.
    pub torn_dropped: u64,
    /// Whether the log refuses every call after a failure.
    pub broken: bool,
}

/// The counting part of [`ReplicaLogStats`].
#[derive(Clone, Copy, Debug, Default)]
struct LogCounts {
    rewrites: u64,
    rewrite_failures: u64,
    torn_dropped: u64,
}

/// A log written to its temporary file, synced, not yet renamed into place.
struct Written {
    file: File,
    len: u64,
    records: u32,
}

/// Why a rewrite failed: before the new log replaced the old (which is
/// whole and in use), or after (the file in place may not be the one synced).
enum RewriteFailure {
    Before(StoreError),
    After(StoreError),
}

impl ReplicaLog {
    /// The log file of the database at `db`: `<db without extension>.rlog`.
    pub(super) fn path_for(db: &Path) -> PathBuf {
        db.with_extension("rlog")
    }

    fn tmp_path(path: &Path) -> PathBuf {
        path.with_extension("rlog.tmp")
    }

    fn io_error(path: &Path, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    }

    /// A salt unique to each log file this node writes: a hash of the node,
    /// the epoch, the previous log's salt, random bits and the process.
    fn new_salt(node: &[u8; 32], epoch: u64, previous: &[u8; SALT_LEN]) -> [u8; SALT_LEN] {
        use std::hash::{BuildHasher, Hasher};
        // std seeds its hash keys from the OS's randomness, and a new
        // `RandomState` never repeats the keys of an earlier one.
        let random = |seed: &[u8]| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write(seed);
            h.finish()
        };
        let mut input = Vec::with_capacity(32 + 8 + SALT_LEN + 16 + 4);
        input.extend_from_slice(node);
        input.extend_from_slice(&epoch.to_le_bytes());
        input.extend_from_slice(previous);
        input.extend_from_slice(&random(previous).to_le_bytes());
        input.extend_from_slice(&random(node).to_le_bytes());
        input.extend_from_slice(&std::process::id().to_le_bytes());
        checksum(TABLE, b"salt", &input)
    }

    /// Writes a log salted `salt` holding `state` to the temporary file
    /// beside `path`, synced: its head, then the rest of the state's ops in
    /// records of about [`BASE_CHUNK`] bytes.
    fn write_base(
        path: &Path,
        node: [u8; 32],
        epoch: u64,
        salt: [u8; SALT_LEN],
        state: &DurableState,
    ) -> Result<Written, StoreError> {
        let io = |e: &dyn std::fmt::Display| Self::io_error(path, e);
        let writes = rebuild_writes(state);
        let ops = group_ops(&DurableState::default(), &writes)
            .ok_or_else(|| io(&"a replica state this store cannot write"))?;
        // Records of whole ops, each about BASE_CHUNK bytes.
        let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut from, mut bytes) = (0, 0);
        for (i, op) in ops.iter().enumerate() {
            let size = postcard::experimental::serialized_size(op).map_err(|e| io(&e))?;
            if i > from && bytes + size > BASE_CHUNK {
                chunks.push(from..i);
                (from, bytes) = (i, 0);
            }
            bytes += size;
        }
        chunks.push(from..ops.len());
        let records = u32::try_from(chunks.len()).map_err(|e| io(&e))?;
        let tmp = Self::tmp_path(path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io(&e))?;
        let mut len = 0u64;
        for (i, range) in chunks.into_iter().enumerate() {
            let body = if i == 0 {
                postcard::to_allocvec(&Head {
                    magic: LOG_MAGIC,
                    version: LOG_VERSION,
                    node,
                    epoch,
                    salt,
                    base: records,
                    ops: ops[range].to_vec(),
                })
            } else {
                postcard::to_allocvec(&ops[range])
            }
            .map_err(|e| io(&e))?;
            if body.len() > MAX_RECORD_LEN {
                return Err(io(&format!(
                    "a replica state record of {} bytes exceeds the store's record limit of {MAX_RECORD_LEN}",
                    body.len()
                )));
            }
            let n = i as u32 + 1;
            let record = frame(if n == 1 { &HEAD_SALT } else { &salt }, n, &body);
            file.write_all(&record).map_err(|e| io(&e))?;
            len += record.len() as u64;
        }
        file.sync_all().map_err(|e| io(&e))?;
        Ok(Written { file, len, records })
    }

    /// Puts a written log in place of the log at `path`.
    fn install(path: &Path) -> Result<(), RewriteFailure> {
        std::fs::rename(Self::tmp_path(path), path)
            .map_err(|e| RewriteFailure::Before(Self::io_error(path, e)))?;
        sync_dir(path).map_err(|e| RewriteFailure::After(Self::io_error(path, e)))
    }

    /// Writes a new log at `path` holding `state` (a file of its own, synced,
    /// renamed into place, the directory synced): a crash leaves the old log
    /// or the new one, whole.
    pub(super) fn create(
        path: &Path,
        node: [u8; 32],
        epoch: u64,
        state: DurableState,
    ) -> Result<Self, StoreError> {
        let salt = Self::new_salt(&node, epoch, &HEAD_SALT);
        let written = Self::write_base(path, node, epoch, salt, &state)?;
        Self::install(path).map_err(|(RewriteFailure::Before(e) | RewriteFailure::After(e))| e)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: written.file,
            node,
            epoch,
            salt,
            end: written.len,
            next: written.records + 1,
            base_len: written.len,
            retry_at: 0,
            state,
            broken: None,
            held: Vec::new(),
            held_bytes: 0,
            held_since: 0,
            counts: LogCounts::default(),
        })
    }

    /// Opens the log at `path` and reads it whole. A torn last record is cut
    /// off (and said, as a warning); anything else that does not check is
    /// [`StoreError::Corrupted`], naming the file.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let corrupted = |detail: String| StoreError::Corrupted {
            path: path.to_path_buf(),
            detail,
        };
        let io = |e: std::io::Error| Self::io_error(path, e);
        // A rewrite that did not finish: the log itself is whole.
        let tmp = Self::tmp_path(path);
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        let len = file.metadata().map_err(io)?.len();
        let scanned = scan(&FileSource { file: &file, len }).map_err(|e| match e {
            ScanError::Corrupt(detail) => corrupted(format!("replica log: {detail}")),
            ScanError::Io(e) => io(e),
        })?;
        // What was read may be in the page cache only (a process killed
        // before its sync, or before a rename's directory sync): made durable
        // before anything is done with it.
        file.sync_all().map_err(io)?;
        sync_dir(path).map_err(io)?;
        let torn = scanned.torn || scanned.end != len;
        let mut log = Self {
            path: path.to_path_buf(),
            file,
            node: scanned.node,
            epoch: scanned.epoch,
            salt: scanned.salt,
            end: scanned.end,
            next: scanned.next,
            base_len: scanned.base_len,
            retry_at: 0,
            state: scanned.state,
            broken: None,
            held: Vec::new(),
            held_bytes: 0,
            held_since: 0,
            counts: LogCounts::default(),
        };
        if torn {
            log.counts.torn_dropped += 1;
            tracing::warn!(
                path = %path.display(),
                offset = scanned.end,
                "the replica log ends in a record a crash interrupted; it is dropped"
            );
            // Written over at once with a new salt, so that the dropped
            // record's sectors can never pass for a later record written
            // where they were.
            let state = log.state.clone();
            log.rewrite(log.epoch, state)
                .map_err(|(RewriteFailure::Before(e) | RewriteFailure::After(e))| e)?;
        } else if log.next == u32::MAX {
            let state = log.state.clone();
            log.rewrite(log.epoch, state)
                .map_err(|(RewriteFailure::Before(e) | RewriteFailure::After(e))| e)?;
        }
        Ok(log)
    }

    /// The node the log belongs to.
    pub(super) fn node(&self) -> &[u8; 32] {
        &self.node
    }

    /// Its configuration epoch.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(Self::io_error(
                &self.path,
                format!("the replica log is unusable after an earlier failure: {why}"),
            )),
        }
    }

    /// Marks the log unusable for `e`, and returns it.
    fn break_on(&mut self, e: StoreError) -> StoreError {
        self.broken = Some(e.to_string());
        e
    }

    /// Its size and what it did (for the node's metrics).
    pub(super) fn stats(&self) -> ReplicaLogStats {
        ReplicaLogStats {
            bytes: self.end,
            base_bytes: self.base_len,
            rewrites: self.counts.rewrites,
            rewrite_failures: self.counts.rewrite_failures,
            torn_dropped: self.counts.torn_dropped,
            broken: self.broken.is_some(),
        }
    }

    /// The state the log holds.
    pub(super) fn state(&self) -> Result<&DurableState, StoreError> {
        self.check_usable()?;
        Ok(&self.state)
    }

    /// Makes `ops` durable as one record (one write, one `fdatasync`), then
    /// applies them to the state. A write larger than a record may be is
    /// refused before anything is written; a write that fails (or whose sync
    /// does) leaves the log unusable: the file may hold part of it.
    ///
    /// Writes that need no sync ([`Persist::needs_sync`]: a group of
    /// `PrePrepare`s and `Committed`s only) are held back and go first in the
    /// record of the next write that does (in a record of their own, synced,
    /// if together they would pass the record limit, once they carry
    /// [`HELD_LIMIT`] bytes of batches, or at [`flush_held`](Self::flush_held)).
    /// So a record is still always synced before the next is written, and a
    /// crash loses at most the held writes.
    ///
    /// The log is rewritten from its state when a stable checkpoint has just
    /// pruned it (the state is then at its smallest) and the log has grown by
    /// [`COMPACT_SLACK`] since the last rewrite; and in any case beyond four
    /// times its base plus [`COMPACT_LIMIT`]. So it stays within a bounded
    /// multiple of the replica's bounded state. A rewrite that fails before
    /// the new file is in place is logged and tried again after another
    /// [`COMPACT_SLACK`]; the write itself stands.
    pub(super) fn append(&mut self, ops: &[Persist]) -> Result<(), StoreError> {
        self.check_usable()?;
        if !ops.iter().any(Persist::needs_sync) {
            if self.held.is_empty() && !ops.is_empty() {
                self.held_since += 1;
            }
            self.held.extend_from_slice(ops);
            self.held_bytes += ops.iter().map(batch_len).sum::<usize>();
            if self.held_bytes <= HELD_LIMIT {
                return Ok(());
            }
            let held = std::mem::take(&mut self.held);
            self.held_bytes = 0;
            return self.write_record(&held);
        }
        if self.held.is_empty() {
            return self.write_record(ops);
        }
        let mut group = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        let held = group.len();
        group.extend_from_slice(ops);
        match self.write_record(&group) {
            Err(e) if self.broken.is_none() => {
                // Refused before anything was written (too large together).
                tracing::debug!(error = %e, "held writes go in a record of their own");
                self.write_record(&group[..held])?;
                self.write_record(ops)
            }
            result => result,
        }
    }

    /// Whether writes are held back ([`append`](Self::append)): if so, a
    /// number that changes each time the log starts holding writes again
    /// after it held none (the caller times its [`flush_held`](Self::flush_held)
    /// from the first).
    pub(super) fn holds_writes(&self) -> Option<u64> {
        (!self.held.is_empty()).then_some(self.held_since)
    }

    /// Writes the held-back writes, if any, as one record and syncs it: the
    /// node calls it when it has been idle for a moment, and when it stops.
    pub(super) fn flush_held(&mut self) -> Result<(), StoreError> {
        self.check_usable()?;
        if self.held.is_empty() {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        self.write_record(&held)
    }

    /// Writes `ops` as one record and syncs it, then applies them ([`append`](Self::append)).
    fn write_record(&mut self, ops: &[Persist]) -> Result<(), StoreError> {
        let records = group_ops(&self.state, ops)
            .ok_or_else(|| Self::io_error(&self.path, "a PBFT write this store does not know"))?;
        let body = postcard::to_allocvec(&records).map_err(|e| Self::io_error(&self.path, e))?;
        if body.len() > MAX_RECORD_LEN {
            return Err(Self::io_error(
                &self.path,
                format!(
                    "a record of {} bytes exceeds the store's limit of {MAX_RECORD_LEN}",
                    body.len()
                ),
            ));
        }
        drop(records);
        let record = frame(&self.salt, self.next, &body);
        if let Err(e) = (&self.file)
            .seek(SeekFrom::Start(self.end))
            .and_then(|_| (&self.file).write_all(&record))
            .and_then(|()| self.file.sync_data())
        {
            // After a failed sync the kernel may hold the pages as clean:
            // cut the record off, so that no later read finds it.
            let _ = self.file.set_len(self.end);
            let e = Self::io_error(&self.path, e);
            return Err(self.break_on(e));
        }
        self.end += record.len() as u64;
        self.next += 1;
        let stable = self.state.stable.as_ref().map(|c| c.seq);
        for op in ops {
            self.state.apply(op);
        }
        let pruned = self.state.stable.as_ref().map(|c| c.seq) != stable;
        // Record numbers stop below u32::MAX (store.md §3.1).
        let full = self.next == u32::MAX;
        let due = (pruned && self.end > self.base_len + COMPACT_SLACK)
            || self.end > 4 * self.base_len + COMPACT_LIMIT
            || full;
        if due && (self.end >= self.retry_at || full) {
            match self.rewrite(self.epoch, self.state.clone()) {
                Ok(()) => {}
                Err(RewriteFailure::Before(e)) if !full => {
                    tracing::warn!(error = %e, "the replica log could not be rewritten; it is tried again later");
                    self.retry_at = self.end + COMPACT_SLACK;
                }
                Err(RewriteFailure::Before(e) | RewriteFailure::After(e)) => {
                    return Err(self.break_on(e));
                }
            }
        }
        Ok(())
    }

    /// Rewrites the log to hold `state`, in configuration epoch `epoch`. On
    /// success the log is the new file; on a failure before it was put in
    /// place, the old log is whole and still in use.
    fn rewrite(&mut self, epoch: u64, state: DurableState) -> Result<(), RewriteFailure> {
        let salt = Self::new_salt(&self.node, epoch, &self.salt);
        let written = match Self::write_base(&self.path, self.node, epoch, salt, &state) {
            Ok(w) => w,
            Err(e) => {
                self.counts.rewrite_failures += 1;
                let _ = std::fs::remove_file(Self::tmp_path(&self.path));
                return Err(RewriteFailure::Before(e));
            }
        };
        if let Err(failure) = Self::install(&self.path) {
            self.counts.rewrite_failures += 1;
            if matches!(failure, RewriteFailure::Before(_)) {
                let _ = std::fs::remove_file(Self::tmp_path(&self.path));
            }
            return Err(failure);
        }
        self.file = written.file;
        self.epoch = epoch;
        self.salt = salt;
        self.end = written.len;
        self.next = written.records + 1;
        self.base_len = written.len;
        self.retry_at = 0;
        self.state = state;
        self.counts.rewrites += 1;
        Ok(())
    }

    /// Starts configuration epoch `epoch` with an empty state. Any failure
    /// leaves the log unusable (the next open starts it over: its epoch is
    /// then behind the database's).
    pub(super) fn reset(&mut self, epoch: u64) -> Result<(), StoreError> {
        self.check_usable()?;
        self.held.clear();
        self.held_bytes = 0;
        match self.rewrite(epoch, DurableState::default()) {
            Ok(()) => Ok(()),
            Err(RewriteFailure::Before(e) | RewriteFailure::After(e)) => Err(self.break_on(e)),
        }
    }
}

/// Syncs the directory holding `path`, so that a rename into it is durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// The `replica_log` part of the `store_records` fuzz target: a scan of any
/// bytes returns, never panics, and keeps one record at a time.
#[cfg(feature = "fuzzing")]
pub(super) fn fuzz(data: &[u8]) {
    let _ = scan(data);
    // And the same bytes as the body of a well-framed head and group record.
    let mut log = frame(&HEAD_SALT, 1, data);
    let _ = scan(log.as_slice());
    let salt = [1; SALT_LEN];
    if let Ok(head) = postcard::to_allocvec(&Head {
        magic: LOG_MAGIC,
        version: LOG_VERSION,
        node: [0; 32],
        epoch: 0,
        salt,
        base: 1,
        ops: Vec::new(),
    }) {
        log = frame(&HEAD_SALT, 1, &head);
        log.extend_from_slice(&frame(&salt, 2, data));
        let _ = scan(log.as_slice());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const SALT: [u8; SALT_LEN] = [9; SALT_LEN];

    /// A new, empty log of node `[7; 32]` in a directory of its own.
    /// Appends `ops` and writes them at once, held back or not: one record
    /// per call, as the tests of the record format want.
    fn append_now(log: &mut ReplicaLog, ops: &[Persist]) -> Result<(), StoreError> {
        log.append(ops)?;
        log.flush_held()
    }

    fn new_log() -> (tempfile::TempDir, PathBuf, ReplicaLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.rlog");
        let log = ReplicaLog::create(&path, [7; 32], 0, DurableState::default()).unwrap();
        (dir, path, log)
    }

    fn log_of(groups: &[Vec<Persist>]) -> (Vec<u8>, DurableState, Vec<u64>) {
        salted_log_of(&SALT, groups)
    }

    fn salted_log_of(
        salt: &[u8; SALT_LEN],
        groups: &[Vec<Persist>],
    ) -> (Vec<u8>, DurableState, Vec<u64>) {
        let head = postcard::to_allocvec(&Head {
            magic: LOG_MAGIC,
            version: LOG_VERSION,
            node: [7; 32],
            epoch: 3,
            salt: *salt,
            base: 1,
            ops: Vec::new(),
        })
        .unwrap();
        let mut bytes = frame(&HEAD_SALT, 1, &head);
        let mut state = DurableState::default();
        let mut ends = vec![bytes.len() as u64];
        for (i, g) in groups.iter().enumerate() {
            let ops: Vec<Op<'_>> = g.iter().map(|p| Op::of(p).unwrap()).collect();
            bytes.extend_from_slice(&frame(
                salt,
                i as u32 + 2,
                &postcard::to_allocvec(&ops).unwrap(),
            ));
            ends.push(bytes.len() as u64);
            for p in g {
                state.apply(p);
            }
        }
        (bytes, state, ends)
    }

    fn groups() -> Vec<Vec<Persist>> {
        (0..6u64)
            .map(|i| {
                vec![
                    Persist::View {
                        view: i,
                        active: i % 2 == 0,
                    },
                    Persist::Checkpoint {
                        seq: i,
                        state: [i as u8; 32],
                        // Batches that span several sectors.
                        snapshot: Arc::from(vec![i as u8 + 1; 700 * i as usize]),
                    },
                ]
            })
            .collect()
    }

    fn state_before_last() -> DurableState {
        let g = groups();
        log_of(&g[..g.len() - 1]).1
    }

    #[test]
    fn a_log_reads_back_what_was_written() {
        let (bytes, want, ends) = log_of(&groups());
        let got = scan(bytes.as_slice()).unwrap();
        assert_eq!(got.state, want);
        assert_eq!((got.node, got.epoch), ([7; 32], 3));
        assert_eq!(got.end, *ends.last().unwrap());
        assert!(!got.torn);
    }

    /// A crash during the last record's write: the file cut anywhere in it,
    /// or any of its sectors never written. The log reads as before that
    /// record, and says it tore.
    #[test]
    fn a_torn_last_record_is_dropped() {
        let (bytes, _, ends) = log_of(&groups());
        let start = ends[ends.len() - 2] as usize;
        for cut in start..bytes.len() {
            let got = scan(&bytes[..cut]).unwrap();
            assert_eq!(got.state, state_before_last(), "cut at {cut}");
            assert_eq!(got.end, start as u64);
            assert_eq!(got.torn, cut > start, "cut at {cut}");
        }
        for sector in (start..bytes.len()).step_by(SECTOR) {
            let mut b = bytes.clone();
            b[sector..sector + SECTOR].fill(0);
            let got = scan(b.as_slice()).unwrap();
            assert_eq!(
                got.state,
                state_before_last(),
                "sector at {sector} unwritten"
            );
            assert!(got.torn);
        }
    }

    /// Every single byte changed anywhere is refused: a record written whole
    /// and changed later is corruption, never a torn record to drop.
    #[test]
    fn any_byte_changed_is_corruption() {
        let (bytes, _, _) = log_of(&groups());
        for at in 0..bytes.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[at] ^= mask;
                assert!(
                    matches!(scan(b.as_slice()), Err(ScanError::Corrupt(_))),
                    "byte {at} ^ {mask:#x} was not refused"
                );
            }
        }
    }

    /// A sector missing in a record that is followed by another: not a
    /// crash (nothing is written before the record ahead of it is synced).
    #[test]
    fn an_unwritten_sector_before_the_last_record_is_corruption() {
        let (bytes, _, ends) = log_of(&groups());
        let mut b = bytes.clone();
        let at = ends[2] as usize;
        b[at..at + SECTOR].fill(0);
        assert!(matches!(scan(b.as_slice()), Err(ScanError::Corrupt(_))));
        // Records swapped, or one removed: their numbers are out of order.
        let mut b = bytes[..ends[2] as usize].to_vec();
        b.extend_from_slice(&bytes[ends[3] as usize..]);
        assert!(matches!(scan(b.as_slice()), Err(ScanError::Corrupt(_))));
    }

    /// Writes that keep little state while the log grows: the log is
    /// rewritten from its state, so the file stays within twice the state
    /// plus the slack; a rewrite a crash interrupted leaves a file beside the
    /// log that the next open removes.
    #[test]
    fn the_log_is_rewritten_from_its_state_and_stays_bounded() {
        let (_dir, path, mut log) = new_log();
        let mut want = DurableState::default();
        let mut largest = 0;
        for i in 1..=40u64 {
            let ops = checkpoint_and_stable(i);
            log.append(&ops).unwrap();
            for op in &ops {
                want.apply(op);
            }
            largest = largest.max(std::fs::metadata(&path).unwrap().len());
        }
        assert!(
            largest <= (2 << 20) + COMPACT_SLACK + (2 << 20),
            "the log grew to {largest} bytes"
        );
        assert_eq!(log.state().unwrap(), &want);
        drop(log);
        let tmp = ReplicaLog::tmp_path(&path);
        std::fs::write(&tmp, b"a rewrite a crash interrupted").unwrap();
        let log = ReplicaLog::open(&path).unwrap();
        assert_eq!(log.state().unwrap(), &want);
        assert!(!tmp.exists());
    }

    /// The log both vectors start from: node `[7; 32]`, epoch 2, created
    /// empty with the salt 16 × `5a` (`create` with a fixed salt).
    fn vector_log() -> (tempfile::TempDir, PathBuf, ReplicaLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.rlog");
        ReplicaLog::write_base(
            &path,
            [7; 32],
            2,
            [0x5a; SALT_LEN],
            &DurableState::default(),
        )
        .unwrap();
        assert!(ReplicaLog::install(&path).is_ok());
        let log = ReplicaLog::open(&path).unwrap();
        (dir, path, log)
    }

    /// The vector of docs/protocol/store.md §3: a log of node `[7; 32]` in
    /// epoch 2, created empty, then one group. Its bytes were computed from
    /// the document alone (a Python script written from it); their BLAKE3
    /// hash is checked here.
    #[test]
    fn the_documented_vector() {
        let (_dir, path, mut log) = vector_log();
        log.append(&[
            Persist::View {
                view: 3,
                active: true,
            },
            Persist::Committed {
                proof: CommitProof {
                    membership: [1; 32],
                    view: 3,
                    seq: 300,
                    digest: [2; 32],
                    signatures: vec![(0, Signature([5; 64])), (2, Signature([6; 64]))],
                },
                batch: Arc::from(&b"exo-federation"[..]),
            },
        ])
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        if let Ok(out) = std::env::var("FED_RLOG_VECTOR") {
            std::fs::write(out, &bytes).unwrap();
        }
        assert_eq!(bytes.len(), 2 * SECTOR);
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            "3a6e01e9c3b44210f40c486d3e788b96aec8ebfffb2a28ead008ed52c96c4f48"
        );
    }

    /// The second vector of store.md §3.3: a batch written once, its
    /// prepared certificate and commit proof after it without it.
    #[test]
    fn the_documented_vector_of_a_batch_written_once() {
        let (_dir, path, mut log) = vector_log();
        let batch: Arc<[u8]> = Arc::from(&b"exo-federation"[..]);
        let cert = PreparedCert {
            view: 0,
            seq: 1,
            digest: [3; 32],
            primary: Signature([8; 64]),
            prepares: vec![(1, Signature([9; 64]))],
        };
        append_now(
            &mut log,
            &[
                Persist::PrePrepare {
                    view: 0,
                    seq: 1,
                    digest: [3; 32],
                    signature: Signature([8; 64]),
                    batch: Some(batch.clone()),
                },
                Persist::Prepared {
                    cert,
                    batch: Some(batch.clone()),
                },
            ],
        )
        .unwrap();
        append_now(
            &mut log,
            &[Persist::Committed {
                proof: CommitProof {
                    membership: [1; 32],
                    view: 0,
                    seq: 1,
                    digest: [3; 32],
                    signatures: vec![(0, Signature([5; 64])), (2, Signature([6; 64]))],
                },
                batch,
            }],
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        if let Ok(out) = std::env::var("FED_RLOG_VECTOR2") {
            std::fs::write(out, &bytes).unwrap();
        }
        assert_eq!(bytes.len(), 3 * SECTOR);
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            "4e2f6f6ad084fcc297a266f351fbc50df41428a450b4a11876b31323432ae176"
        );
    }

    /// Writes of every kind, over a few views and sequence numbers, with
    /// batches of up to 600 KiB so that a base spans several records.
    fn mixed(i: u64) -> Vec<Persist> {
        let seq = i % 7 + 1;
        let view = i / 5;
        let bytes = |n: usize| -> Arc<[u8]> { Arc::from(vec![(i % 251) as u8 + 1; n]) };
        let sig = Signature([i as u8; 64]);
        match i % 6 {
            0 => vec![Persist::PrePrepare {
                view,
                seq,
                digest: [i as u8; 32],
                signature: sig,
                batch: i.is_multiple_of(4).then(|| bytes(600 << 10)),
            }],
            1 => vec![Persist::Prepared {
                cert: PreparedCert {
                    view,
                    seq,
                    digest: [i as u8; 32],
                    primary: sig,
                    prepares: vec![(1, sig), (2, sig)],
                },
                batch: Some(bytes(300 << 10)),
            }],
            2 => vec![Persist::Committed {
                proof: CommitProof {
                    membership: [3; 32],
                    view,
                    seq,
                    digest: [i as u8; 32],
                    signatures: vec![(0, sig)],
                },
                batch: bytes(200 << 10),
            }],
            3 => vec![Persist::Checkpoint {
                seq,
                state: [i as u8; 32],
                snapshot: bytes(100),
            }],
            4 => vec![
                Persist::View {
                    view,
                    active: i.is_multiple_of(3),
                },
                Persist::Reserve {
                    view,
                    upto: seq + 8,
                },
            ],
            _ => vec![Persist::Stable(CheckpointCert {
                seq: i % 3,
                state: [i as u8; 32],
                signatures: Vec::new(),
            })],
        }
    }

    /// A group of `PrePrepare`s only is held back, and written in the record
    /// of the next group that needs a sync: one record, one sync, the batch
    /// written once. A crash before that loses it, and nothing else.
    #[test]
    fn pre_prepares_go_in_the_record_of_the_next_synced_write() {
        let (_dir, path, mut log) = new_log();
        let batch: Arc<[u8]> = Arc::from(vec![0xab; 4096]);
        let pp = |seq: u64| Persist::PrePrepare {
            view: 0,
            seq,
            digest: [seq as u8; 32],
            signature: Signature([1; 64]),
            batch: Some(batch.clone()),
        };
        let (end, next) = (log.end, log.next);
        log.append(&[pp(1)]).unwrap();
        assert_eq!((log.end, log.next), (end, next), "held back, not written");
        assert_eq!(log.state().unwrap(), &DurableState::default());
        let prepared = Persist::Prepared {
            cert: PreparedCert {
                view: 0,
                seq: 1,
                digest: [1; 32],
                primary: Signature([1; 64]),
                prepares: vec![(1, Signature([2; 64])), (2, Signature([3; 64]))],
            },
            batch: Some(batch.clone()),
        };
        log.append(std::slice::from_ref(&prepared)).unwrap();
        assert_eq!(log.next, next + 1, "one record");
        assert!(log.end - end < 2 * 4096, "the batch written once");
        let mut want = DurableState::default();
        want.apply(&pp(1));
        want.apply(&prepared);
        log.append(&[pp(2)]).unwrap();
        drop(log);
        let log = ReplicaLog::open(&path).unwrap();
        assert_eq!(
            log.state().unwrap(),
            &want,
            "the held write of seq 2 lost, no more"
        );
    }

    /// A group of `Committed` records is held back too: until the next group
    /// that needs a sync, or until [`ReplicaLog::flush_held`] writes it on
    /// its own. A crash before either loses it; `holds_writes` tells a new
    /// holding spell from the one before.
    #[test]
    fn committed_records_are_held_until_a_synced_write_or_a_flush() {
        let (_dir, path, mut log) = new_log();
        let batch: Arc<[u8]> = Arc::from(vec![0xcd; 4096]);
        let prepared = |seq: u64| Persist::Prepared {
            cert: PreparedCert {
                view: 0,
                seq,
                digest: [seq as u8; 32],
                primary: Signature([1; 64]),
                prepares: vec![(1, Signature([2; 64])), (2, Signature([3; 64]))],
            },
            batch: Some(batch.clone()),
        };
        let committed = |seq: u64| Persist::Committed {
            proof: CommitProof {
                membership: [1; 32],
                view: 0,
                seq,
                digest: [seq as u8; 32],
                signatures: vec![(0, Signature([5; 64])), (2, Signature([6; 64]))],
            },
            batch: batch.clone(),
        };
        let mut want = DurableState::default();
        for w in [prepared(1), prepared(2)] {
            log.append(std::slice::from_ref(&w)).unwrap();
            want.apply(&w);
        }
        assert_eq!(log.holds_writes(), None);
        let (end, next) = (log.end, log.next);
        log.append(&[committed(1)]).unwrap();
        let first = log.holds_writes().expect("held");
        log.append(&[committed(2)]).unwrap();
        assert_eq!(log.holds_writes(), Some(first), "the same holding spell");
        assert_eq!((log.end, log.next), (end, next), "held back, not written");
        log.flush_held().unwrap();
        assert_eq!(log.holds_writes(), None);
        assert_eq!(log.next, next + 1, "one record");
        assert!(log.end - end < 4096, "the batches not written again");
        log.flush_held().unwrap();
        assert_eq!(log.next, next + 1, "nothing to flush: no record");
        want.apply(&committed(1));
        want.apply(&committed(2));
        assert_eq!(log.state().unwrap(), &want);
        log.append(&[committed(3)]).unwrap();
        assert_ne!(log.holds_writes(), Some(first), "a new holding spell");
        drop(log);
        let log = ReplicaLog::open(&path).unwrap();
        assert_eq!(
            log.state().unwrap(),
            &want,
            "the flushed records kept, the held one of seq 3 lost"
        );
    }

    /// Held-back writes are written at once past [`HELD_LIMIT`], and in a
    /// record of their own when they would pass the record limit together
    /// with the next write; nothing is lost either way.
    #[test]
    fn held_writes_are_bounded_and_split_from_a_record_too_large_together() {
        let (_dir, path, mut log) = new_log();
        let pp = |seq: u64| Persist::PrePrepare {
            view: 0,
            seq,
            digest: [seq as u8; 32],
            signature: Signature([1; 64]),
            batch: Some(Arc::from(vec![seq as u8; 3 << 20])),
        };
        let next = log.next;
        log.append(&[pp(1)]).unwrap();
        log.append(&[pp(2)]).unwrap();
        assert_eq!(log.next, next, "6 MiB held");
        log.append(&[pp(3)]).unwrap();
        assert_eq!(log.next, next + 1, "9 MiB written at once");
        log.append(&[pp(4)]).unwrap();
        log.append(&[pp(5)]).unwrap();
        let checkpoint = Persist::Checkpoint {
            seq: 5,
            state: [5; 32],
            snapshot: Arc::from(vec![1u8; MAX_RECORD_LEN - (4 << 20)]),
        };
        // Together past the record limit: refused unless split.
        log.append(std::slice::from_ref(&checkpoint)).unwrap();
        let mut want = DurableState::default();
        for w in (1..=5).map(pp).chain([checkpoint]) {
            want.apply(&w);
        }
        drop(log);
        assert_eq!(ReplicaLog::open(&path).unwrap().state().unwrap(), &want);
    }

    /// Held-back `Committed`s count their batches towards [`HELD_LIMIT`]
    /// too (a replica that fetched batches it never prepared holds them
    /// whole): past it they are written at once.
    #[test]
    fn held_commits_are_bounded_like_pre_prepares() {
        let (_dir, path, mut log) = new_log();
        let committed = |seq: u64| Persist::Committed {
            proof: CommitProof {
                membership: [1; 32],
                view: 0,
                seq,
                digest: [seq as u8; 32],
                signatures: vec![(0, Signature([5; 64])), (2, Signature([6; 64]))],
            },
            batch: Arc::from(vec![seq as u8; 3 << 20]),
        };
        let next = log.next;
        log.append(&[committed(1)]).unwrap();
        log.append(&[committed(2)]).unwrap();
        assert_eq!(log.next, next, "6 MiB held");
        log.append(&[committed(3)]).unwrap();
        assert_eq!(log.next, next + 1, "9 MiB written at once");
        assert_eq!(log.holds_writes(), None);
        let mut want = DurableState::default();
        for w in (1..=3).map(committed) {
            want.apply(&w);
        }
        drop(log);
        assert_eq!(ReplicaLog::open(&path).unwrap().state().unwrap(), &want);
    }

    /// A rewrite after every group (so that every kind of entry goes through
    /// `rebuild_ops` and bases of several records are written and read),
    /// then a reopen: the state is the reference's.
    #[test]
    fn rewrites_keep_every_kind_of_entry() {
        let (_dir, path, mut log) = new_log();
        let mut want = DurableState::default();
        let mut widest = 1;
        let mut held = Vec::new();
        for i in 0..60 {
            let ops = mixed(i);
            log.append(&ops).unwrap();
            held.extend(ops.iter().cloned());
            if ops.iter().any(Persist::needs_sync) {
                for op in held.drain(..) {
                    want.apply(&op);
                }
            }
            assert!(log.rewrite(0, log.state.clone()).is_ok());
            widest = widest.max(log.next - 1);
            if i % 7 == 0 {
                drop(log);
                log = ReplicaLog::open(&path).unwrap();
                held.clear();
            }
            assert_eq!(log.state().unwrap(), &want, "after group {i}");
        }
        assert!(widest > 2, "a base of {widest} records");
        // A base cut short is no crash's doing: corruption.
        let bytes = std::fs::read(&path).unwrap();
        let scanned = scan(bytes.as_slice()).unwrap();
        assert!(scanned.base_len > 2 * SECTOR as u64);
        let cut = &bytes[..scanned.base_len as usize - SECTOR];
        assert!(matches!(scan(cut), Err(ScanError::Corrupt(_))));
    }

    /// A file system that shows, after a crash, sectors of an earlier log
    /// file where this log has not written yet (ext4 with `data=writeback`):
    /// records of the earlier log, though numbered as this log's next, are
    /// not read as this log's. Without the salt they pass, and the state has
    /// writes this log never made.
    #[test]
    fn records_of_an_earlier_log_file_do_not_pass_for_this_ones() {
        let g = groups();
        let (old, _, _) = salted_log_of(&[1; SALT_LEN], &g);
        let (new, want, ends) = salted_log_of(&[2; SALT_LEN], &g[..3]);
        let mut shown = new.clone();
        shown.extend_from_slice(&old[*ends.last().unwrap() as usize..]);
        match scan(shown.as_slice()) {
            Ok(got) => assert_eq!(got.state, want, "an earlier log's records were read"),
            Err(ScanError::Corrupt(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }

    /// An empty file, or a head cut short: never a log.
    #[test]
    fn a_torn_or_empty_head_is_corruption() {
        let (bytes, _, ends) = log_of(&groups());
        for cut in [0, 1, 100, ends[0] as usize - 1] {
            assert!(
                matches!(scan(&bytes[..cut]), Err(ScanError::Corrupt(_))),
                "cut at {cut}"
            );
        }
    }

    fn checkpoint_and_stable(i: u64) -> Vec<Persist> {
        vec![
            Persist::Checkpoint {
                seq: i,
                state: [i as u8; 32],
                snapshot: Arc::from(vec![i as u8; 1 << 20]),
            },
            Persist::Stable(CheckpointCert {
                seq: i,
                state: [i as u8; 32],
                signatures: Vec::new(),
            }),
        ]
    }

    /// A rewrite that cannot write its file leaves the log as it was, in
    /// use; the write that triggered it stands, and a later one rewrites.
    #[test]
    fn a_rewrite_that_fails_leaves_the_log_in_use() {
        let (_dir, path, mut log) = new_log();
        // The temporary file cannot be created.
        std::fs::create_dir(ReplicaLog::tmp_path(&path)).unwrap();
        let mut want = DurableState::default();
        for i in 1..=12u64 {
            let ops = checkpoint_and_stable(i);
            log.append(&ops).unwrap();
            for op in &ops {
                want.apply(op);
            }
        }
        assert!(log.end > COMPACT_SLACK, "no rewrite could happen");
        assert_eq!(log.state().unwrap(), &want);
        let stats = log.stats();
        assert!(
            stats.rewrite_failures >= 1 && stats.rewrites == 0,
            "{stats:?}"
        );
        drop(log);
        std::fs::remove_dir(ReplicaLog::tmp_path(&path)).unwrap();
        let mut log = ReplicaLog::open(&path).unwrap();
        assert_eq!(log.state().unwrap(), &want);
        let end = log.end;
        for i in 13..=24u64 {
            let ops = checkpoint_and_stable(i);
            log.append(&ops).unwrap();
            for op in &ops {
                want.apply(op);
            }
        }
        assert!(log.end < end, "the log was rewritten");
        assert!(log.stats().rewrites >= 1);
        drop(log);
        assert_eq!(ReplicaLog::open(&path).unwrap().state().unwrap(), &want);
    }

    /// After a failed rewrite, the next try waits for the log to grow by the
    /// slack (not every append), then happens without a reopen.
    #[test]
    fn a_failed_rewrite_is_tried_again_after_the_slack() {
        let (_dir, path, mut log) = new_log();
        std::fs::create_dir(ReplicaLog::tmp_path(&path)).unwrap();
        let mut i = 0;
        while log.retry_at == 0 {
            assert!(i < 64, "no failed rewrite was recorded");
            i += 1;
            log.append(&checkpoint_and_stable(i)).unwrap();
        }
        let retry_at = log.retry_at;
        std::fs::remove_dir(ReplicaLog::tmp_path(&path)).unwrap();
        let salt = log.salt;
        loop {
            i += 1;
            let before = log.end;
            log.append(&checkpoint_and_stable(i)).unwrap();
            if log.salt != salt {
                assert!(
                    before + (1 << 20) >= retry_at,
                    "rewritten at {before} before {retry_at}"
                );
                break;
            }
            assert!(
                log.end < retry_at + (2 << 20),
                "no rewrite after {retry_at}"
            );
        }
    }

    /// A write that fails leaves the log refusing every call; what was
    /// durable before it is what the file holds.
    #[test]
    fn a_failed_write_leaves_the_log_refusing() {
        let (_dir, path, mut log) = new_log();
        let first = checkpoint_and_stable(1);
        log.append(&first).unwrap();
        let want = log.state().unwrap().clone();
        // Writes to a handle opened for reading fail.
        log.file = File::open(&path).unwrap();
        assert!(log.append(&checkpoint_and_stable(2)).is_err());
        assert!(log.append(&checkpoint_and_stable(3)).is_err());
        assert!(log.state().is_err());
        assert!(log.reset(1).is_err());
        drop(log);
        assert_eq!(ReplicaLog::open(&path).unwrap().state().unwrap(), &want);
    }

    /// Each log file gets a salt of its own.
    #[test]
    fn every_rewrite_takes_a_new_salt() {
        let (_dir, path, mut log) = new_log();
        let mut seen = vec![log.salt];
        for _ in 0..5 {
            assert!(log.rewrite(0, DurableState::default()).is_ok());
            assert!(!seen.contains(&log.salt), "a salt used again");
            seen.push(log.salt);
        }
        let again = ReplicaLog::create(&path, [7; 32], 0, DurableState::default()).unwrap();
        assert!(!seen.contains(&again.salt));
    }

    fn pre_prepare(view: u64, seq: u64, digest: u8, batch: &Arc<[u8]>) -> Persist {
        Persist::PrePrepare {
            view,
            seq,
            digest: [digest; 32],
            signature: Signature([1; 64]),
            batch: Some(batch.clone()),
        }
    }

    fn prepared(view: u64, seq: u64, digest: u8, batch: &Arc<[u8]>) -> Persist {
        Persist::Prepared {
            cert: PreparedCert {
                view,
                seq,
                digest: [digest; 32],
                primary: Signature([1; 64]),
                prepares: vec![(1, Signature([2; 64])), (2, Signature([3; 64]))],
            },
            batch: Some(batch.clone()),
        }
    }

    fn committed(seq: u64, digest: u8, batch: &Arc<[u8]>) -> Persist {
        Persist::Committed {
            proof: CommitProof {
                membership: [3; 32],
                view: 0,
                seq,
                digest: [digest; 32],
                signatures: vec![(0, Signature([4; 64]))],
            },
            batch: batch.clone(),
        }
    }

    /// A batch's pre-prepare, prepared certificate and commit proof write it
    /// once, in appends and in a rewrite's base; the state read back holds it
    /// in all three. A different batch under the same digest is written whole.
    #[test]
    fn a_batch_is_written_once() {
        const LEN: u64 = 64 << 10;
        let (_dir, path, mut log) = new_log();
        let batch: Arc<[u8]> = Arc::from(vec![9u8; LEN as usize]);
        let mut want = DurableState::default();
        let mut grew = Vec::new();
        // The proof's batch a copy: equal bytes, another allocation.
        let copy: Arc<[u8]> = Arc::from(batch.to_vec());
        for w in [
            pre_prepare(0, 1, 1, &batch),
            prepared(0, 1, 1, &batch),
            committed(1, 1, &copy),
        ] {
            let before = log.end;
            log.append(std::slice::from_ref(&w)).unwrap();
            if matches!(w, Persist::Committed { .. }) {
                // Held back too: written on its own here.
                log.flush_held().unwrap();
            }
            want.apply(&w);
            grew.push(log.end - before);
        }
        // The pre-prepare is held back and goes in the certificate's record.
        assert_eq!(grew[0], 0, "{grew:?}");
        assert!(grew[1] > LEN && grew[1] < LEN + 2048, "{grew:?}");
        assert!(grew[2] < 2048, "{grew:?}");
        // Other bytes under the same digest: written with the write.
        let other: Arc<[u8]> = Arc::from(vec![8u8; LEN as usize]);
        let before = log.end;
        let w = committed(1, 1, &other);
        append_now(&mut log, std::slice::from_ref(&w)).unwrap();
        want.apply(&w);
        assert!(log.end - before > LEN);
        drop(log);
        let mut log = ReplicaLog::open(&path).unwrap();
        assert_eq!(log.state().unwrap(), &want);
        assert!(log.rewrite(0, want.clone()).is_ok());
        assert!(
            log.base_len < 2 * LEN + 4096,
            "base of {} bytes",
            log.base_len
        );
        drop(log);
        let log = ReplicaLog::open(&path).unwrap();
        assert_eq!(log.state().unwrap(), &want);
    }

    /// Within a group, a certificate's batch is looked up after the group's
    /// earlier writes, as a reader applies them: a pre-prepare of a later
    /// view replaces the batch the state held.
    #[test]
    fn a_group_is_read_as_it_was_written() {
        let (_dir, path, mut log) = new_log();
        let old: Arc<[u8]> = Arc::from(vec![1u8; 4096]);
        let new: Arc<[u8]> = Arc::from(vec![2u8; 4096]);
        let mut want = DurableState::default();
        let groups = [
            vec![pre_prepare(0, 5, 7, &old), pre_prepare(0, 6, 7, &old)],
            vec![pre_prepare(1, 5, 7, &new), prepared(1, 5, 7, &new)],
            // The certificate names the batch the state held before the
            // group; after its first write the state holds another.
            vec![pre_prepare(1, 6, 7, &new), prepared(1, 6, 7, &old)],
            vec![committed(6, 7, &old), committed(5, 7, &new)],
        ];
        for g in &groups {
            append_now(&mut log, g).unwrap();
            for w in g {
                want.apply(w);
            }
        }
        drop(log);
        let log = ReplicaLog::open(&path).unwrap();
        assert_eq!(log.state().unwrap(), &want);
    }

    /// A certificate or proof written without its batch that the state does
    /// not hold at that point is corruption, in the head and after it.
    #[test]
    fn a_batch_the_log_does_not_hold_is_corruption() {
        let batch: Arc<[u8]> = Arc::from(vec![5u8; 100]);
        let Persist::Prepared { cert, .. } = prepared(0, 3, 4, &batch) else {
            unreachable!()
        };
        let Persist::Committed { proof, .. } = committed(3, 4, &batch) else {
            unreachable!()
        };
        for op in [
            Op::PreparedSame { cert: cert.clone() },
            Op::CommittedSame { proof },
        ] {
            let head = |ops: Vec<Op<'static>>| {
                postcard::to_allocvec(&Head {
                    magic: LOG_MAGIC,
                    version: LOG_VERSION,
                    node: [7; 32],
                    epoch: 0,
                    salt: SALT,
                    base: 1,
                    ops,
                })
                .unwrap()
            };
            let in_head = frame(&HEAD_SALT, 1, &head(vec![op.clone()]));
            match scan(in_head.as_slice()) {
                Err(ScanError::Corrupt(why)) => assert!(why.contains("does not hold"), "{why}"),
                other => panic!("{other:?}"),
            }
            // After a pre-prepare of another digest at that number.
            let mut later = frame(&HEAD_SALT, 1, &head(Vec::new()));
            let pp = pre_prepare(0, 3, 5, &batch);
            let ops = vec![Op::of(&pp).unwrap(), op];
            later.extend_from_slice(&frame(&SALT, 2, &postcard::to_allocvec(&ops).unwrap()));
            match scan(later.as_slice()) {
                Err(ScanError::Corrupt(why)) => assert!(why.contains("record 2"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Groups that reach every branch of the batch lookup (store.md §3.1):
    /// through the prepared entry (the pre-prepare without a batch), through
    /// the committed entry, a pre-prepare of a lower view that `apply` ignores,
    /// a stable certificate that prunes a number within the group, and one
    /// that `apply` ignores. The ones written without their batch are small.
    fn lookups() -> (Vec<Vec<Persist>>, Vec<bool>) {
        let filled = |b: u8| -> Arc<[u8]> { Arc::from(vec![b; 4096]) };
        let (a, b, c) = (filled(1), filled(2), filled(3));
        let stable = |seq: u64| {
            Persist::Stable(CheckpointCert {
                seq,
                state: [seq as u8; 32],
                signatures: Vec::new(),
            })
        };
        let mut no_batch = pre_prepare(0, 1, 1, &a);
        if let Persist::PrePrepare { batch, .. } = &mut no_batch {
            *batch = None;
        }
        // Each group, and whether it is written without its batches.
        let groups = vec![
            (vec![no_batch, prepared(0, 1, 1, &a)], false),
            // Through the prepared entry.
            (vec![committed(1, 1, &a)], true),
            (vec![committed(2, 2, &b)], false),
            // Through the committed entry.
            (vec![prepared(0, 2, 2, &b)], true),
            (vec![pre_prepare(2, 3, 3, &c), prepared(2, 3, 3, &c)], false),
            // The lower view's pre-prepare is ignored: its batch is not held.
            (vec![pre_prepare(1, 3, 4, &a), committed(3, 4, &a)], false),
            // A stable certificate at 3 drops the entries of 3 first.
            (vec![stable(3), committed(3, 3, &c)], false),
            (
                vec![
                    pre_prepare(0, 5, 5, &a),
                    Persist::Reserve { view: 0, upto: 9 },
                ],
                false,
            ),
            // A certificate below the stored one is ignored: 5 stays.
            (vec![stable(2), committed(5, 5, &a)], true),
        ];
        groups.into_iter().unzip()
    }

    #[test]
    fn every_way_to_find_a_batch_is_read_as_written() {
        let (groups, same) = lookups();
        let (_dir, path, mut log) = new_log();
        let mut want = DurableState::default();
        for (i, g) in groups.iter().enumerate() {
            let before = log.end;
            append_now(&mut log, g).unwrap();
            for w in g {
                want.apply(w);
            }
            let grew = log.end - before;
            assert_eq!(grew < 4096, same[i], "group {i} grew by {grew}");
        }
        drop(log);
        let mut log = ReplicaLog::open(&path).unwrap();
        assert_eq!(log.state().unwrap(), &want);
        // The same state through a rewrite, whose head holds all of it.
        assert!(log.rewrite(0, want.clone()).is_ok());
        assert_eq!(log.next, 2, "a base of one record");
        drop(log);
        assert_eq!(ReplicaLog::open(&path).unwrap().state().unwrap(), &want);
    }

    #[test]
    fn the_rebuild_writes_give_the_state_back() {
        let mut want = log_of(&groups()).1;
        for g in lookups().0 {
            for w in &g {
                want.apply(w);
            }
        }
        let writes = rebuild_writes(&want);
        let ops = group_ops(&DurableState::default(), &writes).unwrap();
        assert!(
            ops.iter()
                .any(|op| matches!(op, Op::PreparedSame { .. } | Op::CommittedSame { .. })),
            "no batch found held"
        );
        let mut got = DurableState::default();
        for op in &ops {
            let w = op.to_persist(&got).unwrap();
            got.apply(&w);
        }
        assert_eq!(got, want);
        assert_eq!(normalized(&want), want);
    }
}
