//! Every parser of network input, fed arbitrary bytes: an error is fine, a panic is not.
//! (The same parsers are cargo-fuzz targets in fuzz/.)

use proptest::prelude::*;
use strata_upgrader::multistream::{decode_body, decode_length, MAX_MESSAGE_LEN};
use strata_upgrader::security::noise::payload::decode_and_verify;
use strata_upgrader::security::plaintext::decode_exchange;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn multistream_decoding_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
        if let Ok(Some((len, prefix))) = decode_length(&data) {
            prop_assert!(len <= MAX_MESSAGE_LEN);
            if let Some(body) = data.get(prefix..prefix + len) {
                let _ = decode_body(body, false);
                let _ = decode_body(body, true);
            }
        }
    }

    #[test]
    fn certificate_check_never_panics(data in proptest::collection::vec(any::<u8>(), 0..700)) {
        prop_assert!(strata_core::tls::verify_certificate(&data).is_err());
    }

    #[test]
    fn noise_payload_check_never_panics(
        key in proptest::collection::vec(any::<u8>(), 32),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        prop_assert!(decode_and_verify(&payload, &key).is_err());
    }

    #[test]
    fn plaintext_exchange_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_exchange(&data);
    }
}
