//! The genesis parser (docs/protocol/genesis.md) fed arbitrary text. Nothing may
//! panic; a genesis that parses writes TOML that parses to the same genesis, with
//! the same hash.
#![no_main]

use fed_mesh::genesis::Genesis;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(g) = Genesis::parse(text, "fuzz") {
        let again = Genesis::parse(&g.to_toml(), "again").expect("written TOML parses");
        assert_eq!(again, g);
        assert_eq!(again.hash(), g.hash());
    }
});
