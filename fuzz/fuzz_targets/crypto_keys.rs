//! Every key, ciphertext, signature and key-file decoder of fed-crypto, fed arbitrary
//! bytes. None may panic; whatever decodes must re-encode to the same bytes.
#![no_main]

use fed_crypto::{HybridSignature, Identity, PublicIdentity, XWingCiphertext, XWingPublicKey, XWingSecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pk) = XWingPublicKey::from_bytes(data) {
        assert_eq!(pk.as_bytes().as_slice(), data);
    }
    if let Ok(ct) = XWingCiphertext::from_bytes(data) {
        assert_eq!(ct.as_bytes().as_slice(), data);
    }
    let _ = XWingSecretKey::from_bytes(data);
    if let Ok(id) = PublicIdentity::from_bytes(data) {
        assert_eq!(id.as_bytes(), data);
    }
    if let Ok(sig) = HybridSignature::from_bytes(data) {
        assert_eq!(sig.to_bytes(), data);
    }
    if let Ok(id) = Identity::from_key_file(data) {
        assert_eq!(id.to_key_file().as_slice(), data);
    }
    let _ = XWingSecretKey::from_key_file(data);
    let _ = PublicIdentity::from_key_file(data);
});
