//! Every decoder of the node's store records (docs/protocol/store.md) fed
//! arbitrary bytes: the record framing, each body type, and the replica log's
//! reader (§3: the bytes as a whole log, and as the body of a well-framed head
//! and group record). Nothing may panic; whatever decodes re-encodes stably.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fed_mesh::store::fuzz_decoders(data);
});
