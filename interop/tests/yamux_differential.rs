//! Strata's yamux against the `yamux` crate, on the same frames: random valid scripts
//! of stream opens, data, window updates, pings and FINs (see
//! `strata_interop::yamux_diff`). Both implementations must deliver every stream's bytes
//! and answer every ping exactly as the script says.

use proptest::prelude::*;
use strata_interop::yamux_diff::{differential, Op, Script};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Open),
        2 => (0u16..8192, any::<u8>()).prop_map(|(len, seed)| Op::OpenWithData { len, seed }),
        6 => (any::<u8>(), 0u16..16384, any::<u8>())
            .prop_map(|(stream, len, seed)| Op::Data { stream, len, seed }),
        1 => (any::<u8>(), any::<u16>()).prop_map(|(stream, delta)| Op::WindowUpdate { stream, delta }),
        1 => any::<u32>().prop_map(|opaque| Op::Ping { opaque }),
        2 => any::<u8>().prop_map(|stream| Op::Fin { stream }),
    ]
}

fn run(script: &Script) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(differential(script))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn both_implementations_deliver_what_the_script_sent(ops in prop::collection::vec(op(), 1..120)) {
        let script = Script::new(&ops);
        prop_assert_eq!(run(&script), Ok(()));
    }
}

/// A script that fills many streams to the edge of their initial window, interleaved:
/// the most data a remote may send without a window update.
#[test]
fn streams_filled_to_the_initial_window_match() {
    let mut ops = vec![Op::Ping { opaque: 7 }];
    for _ in 0..8 {
        ops.push(Op::Open);
    }
    for round in 0..40u8 {
        for stream in 0..8 {
            ops.push(Op::Data {
                stream,
                len: 8000,
                seed: round,
            });
        }
    }
    ops.push(Op::Ping { opaque: u32::MAX });
    let script = Script::new(&ops);
    assert_eq!(script.streams(), 8);
    assert!(script.expected.streams.iter().all(|s| s.len() > 250_000));
    assert_eq!(run(&script), Ok(()));
}

/// The comparison itself can fail: a script whose model is altered is caught.
#[test]
fn a_wrong_model_is_caught() {
    let mut script = Script::new(&[
        Op::OpenWithData { len: 100, seed: 1 },
        Op::Ping { opaque: 3 },
    ]);
    script.expected.streams[0][50] ^= 1;
    assert!(run(&script).is_err());
}

/// A burst of pings larger than the answers Strata queues at once: every one answered,
/// in order (the fuzz target found Strata dropping the ninth).
#[test]
fn a_burst_of_pings_is_answered_in_full() {
    let mut ops = vec![Op::OpenWithData { len: 10, seed: 2 }];
    ops.extend((0..40).map(|opaque| Op::Ping { opaque }));
    let script = Script::new(&ops);
    assert_eq!(script.expected.ping_acks.len(), 40);
    assert_eq!(run(&script), Ok(()));
}
