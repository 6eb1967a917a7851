//! Every fed-mesh wire decoder fed arbitrary bytes: the sealed-message envelope
//! and each message body, the response and request splitters, the frames of a
//! long-lived stream, and the CRDT chunks of the directory and the shared map
//! with the mesh's value types.
//! Nothing may panic; a body that decodes re-encodes stably.
#![no_main]

use fed_crdt::{Codec, Limits, MapDelta, SyncRequest};
use fed_mesh::{
    CommitReceipt,
    Ledger,
    core::commit::{CertifiedState, EpochChain, ProofRequest, ProofResponse},
    wire::{
        self, Kind, MemberRecord, OnionResponse, QueryRequest, QueryResponse, Refusal,
        SharedValue, SyncChunk, SyncPull,
    },
};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A byte string, as the PBFT envelope's list holds them.
#[derive(Serialize, Deserialize)]
struct Bytes(#[serde(with = "serde_bytes")] Vec<u8>);

/// What decodes re-encodes to bytes that decode to the same encoding again
/// (compared as bytes: a NaN score is not equal to itself as a value).
fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) {
    if let Ok((value, [])) = postcard::take_from_bytes::<T>(body) {
        let again = postcard::to_allocvec(&value).expect("a decoded value encodes");
        let back: T = postcard::from_bytes(&again).expect("an encoding decodes");
        assert_eq!(postcard::to_allocvec(&back).expect("encodes"), again);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse_response(data);
    let _ = wire::split_sealed_request(data);
    if let Ok(frame) = wire::StreamFrame::decode(data) {
        let mut again = Vec::new();
        frame.encode_into(&mut again);
        assert_eq!(&again[4..], data, "a stream frame re-encodes to its bytes");
        assert_eq!(wire::StreamFrame::decode(&again[4..]), Ok(frame));
    }
    if let Ok((kind, body)) = wire::open_envelope(data) {
        match kind {
            Kind::QueryRequest => round_trip::<QueryRequest>(body),
            Kind::QueryResponse => round_trip::<QueryResponse>(body),
            Kind::OnionResponse => round_trip::<OnionResponse>(body),
            Kind::SyncPull => round_trip::<SyncPull>(body),
            Kind::SyncChunk => round_trip::<SyncChunk>(body),
            Kind::Refused => round_trip::<Refusal>(body),
            Kind::Pbft => round_trip::<Vec<Bytes>>(body),
            Kind::ProofRequest => round_trip::<ProofRequest>(body),
            Kind::ProofResponse | Kind::ProofPush => round_trip::<ProofResponse>(body),
            Kind::CertifiedState => {
                round_trip::<CertifiedState>(body);
                // Its certificate, as a member that does not vote decodes it.
                if let Ok(s) = postcard::from_bytes::<CertifiedState>(body) {
                    round_trip::<fed_mesh::pbft::CheckpointCert>(&s.cert);
                }
            }
            Kind::EpochChain => {
                round_trip::<EpochChain>(body);
                if let Ok(chain) = postcard::from_bytes::<EpochChain>(body) {
                    for link in &chain.links {
                        round_trip::<fed_mesh::pbft::CheckpointCert>(&link.cert);
                    }
                }
            }
            Kind::OnionPacket | Kind::PbftAck => {}
        }
    }
    // A commit receipt file, as `fedmesh verify-proof` reads it.
    if let Ok(r) = CommitReceipt::from_bytes(data) {
        let again = r.to_bytes();
        assert_eq!(CommitReceipt::from_bytes(&again).expect("decodes").to_bytes(), again);
    }
    // A ledger snapshot, as a link's replica state holds it: what decodes
    // encodes to a snapshot that decodes to the same ledger.
    if let Ok(ledger) = Ledger::from_snapshot(data) {
        let again = fed_mesh::pbft::Application::snapshot(&ledger);
        let back = Ledger::from_snapshot(&again).expect("a snapshot decodes");
        assert_eq!(back, ledger);
    }
    // The same bytes as each body without an envelope.
    round_trip::<QueryRequest>(data);
    round_trip::<QueryResponse>(data);
    round_trip::<MemberRecord>(data);
    round_trip::<SharedValue>(data);
    // Sync payloads as the mesh decodes them.
    let limits = Limits::DEFAULT;
    let _ = SyncRequest::<[u8; 32]>::decode(data, &limits);
    let _ = SyncRequest::<Vec<u8>>::decode(data, &limits);
    let _ = MapDelta::<[u8; 32], MemberRecord>::decode(data, &limits);
    let _ = MapDelta::<Vec<u8>, SharedValue>::decode(data, &limits);
});
