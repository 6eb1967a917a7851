//! The PBFT decoders and a replica fed arbitrary bytes: `Message::decode`,
//! `message_len`, `CommitProof::from_bytes`, `Membership::from_bytes`,
//! `decode_batch`, then a backup and a primary of a four-replica membership handed
//! the input as a message from every other member and as a client request.
//! Nothing may panic; nothing arbitrary may execute. The hand-written request and
//! batch decoders must agree with postcard restricted to canonical encodings. Every
//! decoder claims a canonical form: whatever it accepts re-encodes to exactly the
//! input.
#![no_main]

use std::sync::{Arc, OnceLock};

use fed_crypto::Identity;
use fed_pbft::{
    Application, ClientId, CommitProof, Config, ENVELOPE_HEADER_LEN, Event, Membership, Message,
    Replica, Request, decode_batch, message_len,
};
use libfuzzer_sys::fuzz_target;

struct Nop;

impl Application for Nop {
    fn execute(&mut self, _: &ClientId, _: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
}

struct Fixture {
    ids: Vec<Arc<Identity>>,
    membership: Arc<Membership>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ids: Vec<Arc<Identity>> = (1..=4u8)
            .map(|i| Arc::new(Identity::from_seeds(&[i; 32], None)))
            .collect();
        let membership = Arc::new(
            Membership::new(ids.iter().map(|i| i.public().clone()).collect()).expect("membership"),
        );
        Fixture { ids, membership }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let _ = message_len(data);
    if let Ok(p) = CommitProof::from_bytes(data) {
        assert_eq!(p.to_bytes(), data, "a commit proof with another encoding");
    }
    if let Ok(m) = Membership::from_bytes(data) {
        assert_eq!(m.to_bytes(), data, "a membership with another encoding");
    }
    // The hand-written decoders against postcard, restricted to the canonical
    // encoding (the one postcard produces for the value): a batch, a request body.
    let postcard_batch = match postcard::take_from_bytes::<Vec<Request>>(data) {
        Ok((v, [])) if postcard::to_allocvec(&v).ok().as_deref() == Some(data) => Some(v),
        _ => None,
    };
    assert_eq!(decode_batch(data).ok(), postcard_batch, "batch decoders disagree");
    // A request envelope whose header is valid and whose length matches: what is
    // left to accept or refuse is the body alone.
    if data.get(5) == Some(&1) && message_len(data).ok() == Some(data.len()) {
        let body = &data[ENVELOPE_HEADER_LEN..];
        let postcard_request = match postcard::take_from_bytes::<Request>(body) {
            Ok((r, [])) if postcard::to_allocvec(&r).ok().as_deref() == Some(body) => Some(r),
            _ => None,
        };
        let fast = match Message::decode(data) {
            Ok(Message::Request(r)) => Some(r),
            _ => None,
        };
        assert_eq!(fast, postcard_request, "request decoders disagree");
    }
    if let Ok(msg) = Message::decode(data) {
        // Whatever decodes re-encodes to exactly the input.
        assert_eq!(msg.encode().expect("re-encode"), data, "a message with another encoding");
    }
    // Replica 0 is the primary of view 0, replica 1 a backup.
    for me in [0usize, 1] {
        let mut r = Replica::new(
            f.ids[me].clone(),
            f.membership.clone(),
            Config::default(),
            Nop,
            0,
        )
        .expect("replica");
        let _ = r.handle_request(data, 0);
        for from in 0..4u16 {
            let _ = r.handle_message(from, data, 1);
        }
        let _ = r.handle_timeout(10_000);
        while r.poll_persist().is_some() {}
        while r.poll_transmit().is_some() {}
        while let Some(e) = r.poll_event() {
            assert!(
                !matches!(e, Event::Executed(_)),
                "an arbitrary message executed a batch"
            );
        }
        assert_eq!(r.last_executed(), 0);
    }
});
