#![no_main]
use libfuzzer_sys::fuzz_target;

// An identify stream's bytes: one or more length-prefixed protobuf frames, merged and
// validated (key, addresses, protocols) within the size and count limits.
fuzz_target!(|data: &[u8]| {
    let _ = strata_host::identify::decode_frames(data);
});
