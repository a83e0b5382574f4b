#![no_main]
use libfuzzer_sys::fuzz_target;
use strata_upgrader::multistream::{decode_body, decode_length};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((len, prefix))) = decode_length(data) {
        if let Some(body) = data.get(prefix..prefix + len) {
            let _ = decode_body(body, false);
            let _ = decode_body(body, true);
        }
    }
});
