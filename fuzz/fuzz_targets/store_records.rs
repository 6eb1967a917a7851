//! Every decoder of the node's store records (docs/protocol/store.md) fed
//! arbitrary bytes: the record framing and each body type. Nothing may panic;
//! whatever decodes re-encodes stably.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fed_mesh::store::fuzz_decoders(data);
});
