#![no_main]
//! Strata's yamux against the `yamux` crate on the same frames: the input becomes a
//! valid script of stream opens, data, window updates, pings and FINs
//! (`strata_interop::yamux_diff::Script::from_bytes`), which both implementations must
//! deliver exactly as sent.

use libfuzzer_sys::fuzz_target;
use strata_interop::yamux_diff::{differential, Script};

fuzz_target!(|data: &[u8]| {
    let script = Script::from_bytes(data);
    if let Err(e) = strata_fuzz::block_on(differential(&script)) {
        panic!("{e}");
    }
});
