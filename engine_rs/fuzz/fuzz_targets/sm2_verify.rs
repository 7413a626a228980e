//! SM2 verification of arbitrary keys, messages and signatures (what a hostile caller
//! controls): Ok(false) or a typed error, never a panic; a signature made here verifies.
#![no_main]

use engine_rs::gm::{sm2_public_key, sm2_sign, sm2_verify};
use libfuzzer_sys::fuzz_target;

const UID: &str = "1234567812345678";

fuzz_target!(|data: &[u8]| {
    if data.len() < 97 {
        return;
    }
    let (public, rest) = data.split_at(65);
    let (sig, msg) = rest.split_at(32.min(rest.len()));
    let _ = sm2_verify(public, UID, msg, sig);
    let _ = sm2_verify(public, UID, msg, &data[..64]);
    if let Ok(pk) = sm2_public_key(&data[..32]) {
        if let Ok(good) = sm2_sign(&data[..32], UID, msg) {
            assert_eq!(sm2_verify(&pk, UID, msg, &good).ok(), Some(true));
        }
    }
});
