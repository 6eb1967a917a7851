//! Byzantine behaviours: rewrites of a real replica's outgoing messages.

use std::sync::Arc;

use fed_crypto::Identity;
use fed_pbft::{
    ClientId, Commit, CommitProof, Committed, Membership, Message, NULL_BATCH, NewView,
    NewViewEntry, PrePrepare, Prepare, Request, Signature, Transmit, batch_digest,
};
use rand_chacha::{ChaCha8Rng, rand_core::Rng};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Behaviour {
    Honest,
    /// Drops everything sent to these replicas.
    Silent(Vec<u16>),
    /// Towards odd-numbered replicas, votes twice: its honest prepare or commit,
    /// and one for a random digest in the same view and sequence.
    DoubleVote,
    /// Sends forged signatures, spoofed signers and fake commit proofs beside its
    /// honest traffic.
    Forger,
    /// As primary, sends pre-prepares whose batch does not match the digest to
    /// odd-numbered replicas.
    BadBatch,
    /// As primary, also sends signed pre-prepares outside the watermarks.
    Watermarks,
    /// Replays messages it saw earlier (its own and others').
    Replayer,
    /// As a new primary, sends one forged NEW-VIEW, the same to every replica and
    /// properly signed, in which every carried (non-null) entry is replaced by the
    /// null batch: accepted, it would undo batches that committed in an earlier
    /// view. Backups must recompute the entries from the VIEW-CHANGEs and refuse it.
    BadNewView,
    /// As a new primary, sends its honest NEW-VIEW and then, with every later
    /// message, a PRE-PREPARE of the null batch for every sequence number the
    /// NEW-VIEW fixed to another batch: a replica that installed the NEW-VIEW must
    /// refuse them.
    Repropose,
    /// As primary, proposes the null batch instead of every batch it cuts, and
    /// commits to it at once (for one side of a twin: with the other side's real
    /// batches, an equivocating primary for every seed).
    NullBatches,
    /// Answers state requests with a corrupted snapshot and fetches with
    /// mismatching batches.
    BadStateSource,
}

pub(crate) struct Ctx<'a> {
    pub(crate) me: u16,
    pub(crate) identity: &'a Identity,
    pub(crate) m: &'a Membership,
    pub(crate) window: u64,
    pub(crate) recorded: &'a mut Vec<Arc<[u8]>>,
    pub(crate) state: &'a mut ByzState,
}

/// What a Byzantine replica remembers between its transmits, and what it did (for
/// the scenarios' proof that they exercised their behaviour).
#[derive(Debug, Default)]
pub(crate) struct ByzState {
    /// The forged NEW-VIEW of a view (sent to every replica alike).
    forged: Option<(u64, Arc<[u8]>)>,
    /// Forged NEW-VIEWs sent that null at least one carried entry.
    pub(crate) forged_sent: u64,
    /// Conflicting pre-prepares for the entries of the latest NEW-VIEW.
    repropose: Vec<Arc<[u8]>>,
    /// Conflicting pre-prepares sent.
    pub(crate) reproposed: u64,
}

fn rand_digest(rng: &mut ChaCha8Rng) -> [u8; 32] {
    let mut d = [0u8; 32];
    rng.fill_bytes(&mut d);
    d
}

fn enc(m: &Message) -> Arc<[u8]> {
    m.encode().unwrap().into()
}

/// What a replica with `behaviour` actually sends instead of `t`.
pub(crate) fn transform(
    behaviour: &Behaviour,
    ctx: &mut Ctx<'_>,
    t: Transmit,
    rng: &mut ChaCha8Rng,
) -> Vec<(u16, Arc<[u8]>)> {
    let to = t.to;
    let honest = vec![(to, t.payload.clone())];
    let Ok(msg) = Message::decode(&t.payload) else {
        return honest;
    };
    match behaviour {
        Behaviour::Honest => honest,
        Behaviour::Silent(peers) => {
            if peers.contains(&to) {
                vec![]
            } else {
                honest
            }
        }
        Behaviour::DoubleVote => {
            if to.is_multiple_of(2) {
                return honest;
            }
            let d = rand_digest(rng);
            let mut out = honest;
            match msg {
                Message::Prepare(p) => {
                    let p2 =
                        Prepare::new(ctx.identity, ctx.m, p.view, p.seq, d, p.replica).unwrap();
                    out.push((to, enc(&Message::Prepare(p2))));
                }
                Message::Commit(c) => {
                    let c2 = Commit::new(ctx.identity, ctx.m, c.view, c.seq, d, c.replica).unwrap();
                    out.push((to, enc(&Message::Commit(c2))));
                }
                _ => {}
            }
            out
        }
        Behaviour::Forger => {
            let mut out = honest;
            let n = ctx.m.len() as u16;
            match msg {
                Message::Prepare(mut p) => {
                    // Claim to be another replica (a spoofed sender).
                    let mut spoofed = p.clone();
                    spoofed.replica = (p.replica + 1) % n;
                    out.push((to, enc(&Message::Prepare(spoofed))));
                    // A corrupted signature over another digest.
                    p.digest = rand_digest(rng);
                    p.signature.0[5] ^= 0x40;
                    out.push((to, enc(&Message::Prepare(p))));
                }
                Message::Commit(c) => {
                    let mut forged = c.clone();
                    forged.digest = rand_digest(rng);
                    out.push((to, enc(&Message::Commit(forged))));
                    // A fake commit proof for the next sequence number: the forger's
                    // own signature repeated, and signatures of others it invents.
                    let batch = NULL_BATCH.to_vec();
                    let digest = batch_digest(&batch);
                    let own = Commit::new(ctx.identity, ctx.m, c.view, c.seq + 1, digest, ctx.me)
                        .unwrap();
                    let mut signatures: Vec<(u16, Signature)> = (0..ctx.m.quorum() as u16)
                        .map(|i| (i, Signature([i as u8; 64])))
                        .collect();
                    if let Some(s) = signatures.iter_mut().find(|(i, _)| *i == ctx.me) {
                        s.1 = own.signature;
                    }
                    let proof = CommitProof {
                        membership: *ctx.m.id(),
                        view: c.view,
                        seq: c.seq + 1,
                        digest,
                        signatures,
                    };
                    out.push((to, enc(&Message::Committed(Committed { proof, batch }))));
                }
                Message::Checkpoint(mut k) => {
                    k.state = rand_digest(rng);
                    out.push((to, enc(&Message::Checkpoint(k))));
                }
                _ => {}
            }
            out
        }
        Behaviour::BadBatch => match msg {
            Message::PrePrepare(mut pp) if to % 2 == 1 => {
                // Same digest and signature, another batch: a fake request.
                let fake = Request {
                    client: ClientId([0xee; 32]),
                    timestamp: 1,
                    operation: b"forged".to_vec(),
                    authenticator: vec![[0; 16]; ctx.m.len()],
                };
                let forged: Vec<u8> = {
                    let mut v = vec![1u8];
                    let body = Message::Request(fake).encode().unwrap();
                    v.extend_from_slice(&body[10..]);
                    v
                };
                pp.batch = forged;
                vec![(to, enc(&Message::PrePrepare(pp)))]
            }
            _ => honest,
        },
        Behaviour::Watermarks => {
            let mut out = honest;
            if let Message::PrePrepare(pp) = msg {
                for seq in [0, pp.seq + 3 * ctx.window, u64::MAX] {
                    let bad = PrePrepare::new(ctx.identity, ctx.m, pp.view, seq, pp.batch.clone())
                        .unwrap();
                    out.push((to, enc(&Message::PrePrepare(bad))));
                }
            }
            out
        }
        Behaviour::Replayer => {
            let mut out = honest;
            if ctx.recorded.len() < 400 {
                ctx.recorded.push(t.payload.clone());
            }
            if !ctx.recorded.is_empty() && rng.next_u32().is_multiple_of(3) {
                let i = (rng.next_u32() as usize) % ctx.recorded.len();
                out.push((to, ctx.recorded[i].clone()));
            }
            out
        }
        Behaviour::BadNewView => match msg {
            Message::NewView(nv) => {
                let forged = match &ctx.state.forged {
                    Some((view, bytes)) if *view == nv.view => Some(bytes.clone()),
                    _ => {
                        let null = batch_digest(NULL_BATCH);
                        let carried = nv.pre_prepares.iter().any(|e| e.digest != null);
                        let bytes = carried.then(|| {
                            let entries = nv
                                .pre_prepares
                                .iter()
                                .map(|e| {
                                    NewViewEntry::new(ctx.identity, ctx.m, nv.view, e.seq, null)
                                        .unwrap()
                                })
                                .collect();
                            let bad = NewView::new(
                                ctx.identity,
                                ctx.m,
                                nv.view,
                                nv.view_changes.clone(),
                                entries,
                            )
                            .unwrap();
                            enc(&Message::NewView(bad))
                        });
                        if let Some(b) = &bytes {
                            ctx.state.forged = Some((nv.view, b.clone()));
                        }
                        bytes
                    }
                };
                match forged {
                    Some(bytes) => {
                        ctx.state.forged_sent += 1;
                        vec![(to, bytes)]
                    }
                    None => honest,
                }
            }
            _ => honest,
        },
        Behaviour::Repropose => {
            let mut out = honest;
            if let Message::NewView(nv) = &msg {
                let null = batch_digest(NULL_BATCH);
                ctx.state.repropose = nv
                    .pre_prepares
                    .iter()
                    .filter(|e| e.digest != null)
                    .map(|e| {
                        let pp = PrePrepare::new(
                            ctx.identity,
                            ctx.m,
                            nv.view,
                            e.seq,
                            NULL_BATCH.to_vec(),
                        )
                        .unwrap();
                        enc(&Message::PrePrepare(pp))
                    })
                    .collect();
            }
            if !ctx.state.repropose.is_empty() {
                ctx.state.reproposed += ctx.state.repropose.len() as u64;
                out.extend(ctx.state.repropose.iter().map(|b| (to, b.clone())));
            }
            out
        }
        Behaviour::NullBatches => match msg {
            Message::PrePrepare(pp) => {
                let null =
                    PrePrepare::new(ctx.identity, ctx.m, pp.view, pp.seq, NULL_BATCH.to_vec())
                        .unwrap();
                let commit =
                    Commit::new(ctx.identity, ctx.m, pp.view, pp.seq, null.digest, ctx.me).unwrap();
                vec![
                    (to, enc(&Message::PrePrepare(null))),
                    (to, enc(&Message::Commit(commit))),
                ]
            }
            _ => honest,
        },
        Behaviour::BadStateSource => match msg {
            Message::StateResponse(mut r) => {
                if let Some(b) = r.snapshot.last_mut() {
                    *b ^= 1;
                } else {
                    r.snapshot.push(1);
                }
                vec![(to, enc(&Message::StateResponse(r)))]
            }
            Message::Committed(mut c) => {
                c.batch = NULL_BATCH.to_vec();
                c.batch.push(0);
                vec![(to, enc(&Message::Committed(c)))]
            }
            _ => honest,
        },
    }
}
