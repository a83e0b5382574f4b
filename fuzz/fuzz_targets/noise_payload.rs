#![no_main]
use libfuzzer_sys::fuzz_target;
use strata_upgrader::security::noise::payload::decode_and_verify;

fuzz_target!(|data: &[u8]| {
    // The remote static key is the first 32 bytes, the payload the rest.
    if data.len() >= 32 {
        let _ = decode_and_verify(&data[32..], &data[..32]);
    }
});
