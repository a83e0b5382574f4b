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

/// A mutation of a valid input: flip, overwrite, insert or delete bytes at positions the
/// test picks, or truncate. Random bytes rarely get past a parser's first length check;
/// a valid input mutated reaches the deep checks (signatures, nested lengths, fields).
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1..16usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(input: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = input.to_vec();
    for m in mutations {
        if out.is_empty() {
            break;
        }
        let at = |i: usize, len: usize| i % len;
        match m {
            Mutation::Flip(i, b) => {
                let i = at(*i, out.len());
                out[i] ^= b;
            }
            Mutation::Set(i, b) => {
                let i = at(*i, out.len());
                out[i] = *b;
            }
            Mutation::Insert(i, bytes) => {
                let i = at(*i, out.len() + 1);
                out.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = at(*i, out.len());
                let end = (i + n).min(out.len());
                out.drain(i..end);
            }
            Mutation::Truncate(i) => {
                let len = at(*i, out.len());
                out.truncate(len);
            }
        }
    }
    out
}

fn valid_certificate() -> (Vec<u8>, strata_core::PublicKey) {
    let key = strata_core::identity::keypair_from_seed(7);
    let cert = strata_core::tls::Libp2pCertificate::generate(&key).unwrap();
    (cert.certificate().as_ref().to_vec(), key.public())
}

fn valid_noise_payload() -> (Vec<u8>, Vec<u8>, strata_core::PublicKey) {
    use strata_upgrader::security::noise::payload::{encode_payload, sign_static_key};
    let key = strata_core::identity::keypair_from_seed(8);
    let static_public = [0x42u8; 32];
    let sig = sign_static_key(&key, &static_public).unwrap();
    let payload = encode_payload(
        &key.public().encode_protobuf(),
        &sig,
        &["/yamux/1.0.0".to_string()],
    );
    (payload, static_public.to_vec(), key.public())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// A mutated certificate is refused, or (when the mutation left it meaning the same)
    /// still proves the same key: never a panic, never another identity.
    #[test]
    fn a_mutated_certificate_never_proves_another_key(
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let (cert, key) = valid_certificate();
        prop_assert_eq!(strata_core::tls::verify_certificate(&cert).unwrap(), key.clone());
        let mutated = apply(&cert, &mutations);
        if let Ok(proved) = strata_core::tls::verify_certificate(&mutated) {
            prop_assert_eq!(proved, key);
        }
    }

    /// A mutated Noise payload is refused, or still proves the same identity for the same
    /// static key (the muxer list is not signed and may change).
    #[test]
    fn a_mutated_noise_payload_never_proves_another_identity(
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let (payload, static_key, key) = valid_noise_payload();
        prop_assert!(decode_and_verify(&payload, &static_key).is_ok());
        let mutated = apply(&payload, &mutations);
        if let Ok(remote) = decode_and_verify(&mutated, &static_key) {
            prop_assert_eq!(remote.public_key, key);
        }
    }

    /// A mutated multistream message decodes or is refused, within the length limit.
    #[test]
    fn a_mutated_multistream_message_stays_within_its_limits(
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut msg = Vec::new();
        strata_upgrader::multistream::encode(
            &strata_upgrader::multistream::Message::Protocol("/yamux/1.0.0".into()),
            &mut msg,
        );
        let mutated = apply(&msg, &mutations);
        if let Ok(Some((len, prefix))) = decode_length(&mutated) {
            prop_assert!(len <= MAX_MESSAGE_LEN);
            if let Some(body) = mutated.get(prefix..prefix + len) {
                let _ = decode_body(body, false);
            }
        }
    }
}
