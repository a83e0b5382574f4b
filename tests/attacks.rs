//! Attacks that get past admission, each against a listener in a child process (this
//! binary, re-run as it), each measured by the listener's real memory: its RSS and its
//! live heap bytes (a counting allocator), beside what its resource manager reports.
//! During each, a well-behaved peer on 127.0.0.1 connects and echoes within 1 s.
//!
//! The listener's limits (see `attack::listener_limits`): 512 MiB in all, 64 MiB for
//! unauthenticated connections, per peer, per connection and per source address,
//! 128 MiB per subnet, 512 handshakes in flight. Every bound below is the cap that the
//! attack runs into, plus a stated margin for what the allocator and the runtime keep
//! (RSS does not shrink at once when memory is freed).
//!
//! One attack at a time: they share two cores. `cargo bench --bench attacks` prints the
//! same figures from a release build.

mod attack;

use std::time::Duration;

use attack::*;

/// The listener, when this binary is re-run as it (a no-op otherwise).
#[test]
fn attack_listener() {
    run_listener_if_child();
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn target() -> Target {
    Target::start(&[
        "--exact",
        "attack_listener",
        "--nocapture",
        "--test-threads",
        "1",
    ])
}

/// What the allocator and the runtime may keep beyond what an attack is allowed to make
/// us hold (freed memory returns to the OS lazily; tasks and stream states are counted
/// by number, not reserved).
const MARGIN: u64 = 24 * MIB;

fn assert_honest_in_time(cost: &Cost) {
    assert!(
        cost.honest_worst < Duration::from_secs(1),
        "{}: the honest peer took {:?}",
        cost.attack,
        cost.honest_worst
    );
}

/// Both measures of real memory, RSS and the allocator's live bytes, grew at most
/// `bound` (RSS alone misses a buffer allocated and not yet touched).
fn assert_rss_within(cost: &Cost, bound: u64) {
    assert!(
        cost.rss_growth() <= bound,
        "{}: RSS grew {:.1} MiB, bound {:.1} MiB",
        cost.attack,
        cost.rss_growth() as f64 / MIB as f64,
        bound as f64 / MIB as f64
    );
    assert!(
        cost.live_growth() <= bound,
        "{}: the heap grew {:.1} MiB, bound {:.1} MiB",
        cost.attack,
        cost.live_growth() as f64 / MIB as f64,
        bound as f64 / MIB as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_flood_from_a_peer_that_never_reads_is_pushed_back() {
    let _serial = SERIAL.lock().await;
    // 5,000,000 SYNs (60 MB) for streams past the limit of 512, never reading the resets
    // we answer with: we stop reading once 16 KiB of answers wait.
    const SYNS: u64 = 5_000_000;
    let t = target();
    let (cost, sent) = measure(
        "5,000,000 SYNs, never reading",
        &t,
        syn_flood(&t, SYNS, Duration::from_secs(4)),
    )
    .await;
    eprintln!("  SYNs taken by the listener's socket: {sent}");
    assert!(sent < SYNS, "the listener read the whole flood");
    assert_rss_within(&cost, 8 * MIB);
    assert_honest_in_time(&cost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_and_reset_at_once_cost_nothing_lasting() {
    let _serial = SERIAL.lock().await;
    let t = target();
    let (cost, sent) = measure(
        "100,000 streams opened and reset, never reading",
        &t,
        open_and_reset(&t, 100_000, Duration::from_secs(8)),
    )
    .await;
    eprintln!("  streams sent: {sent}");
    assert_rss_within(&cost, 8 * MIB);
    assert_honest_in_time(&cost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_with_32_identities_is_held_to_its_memory_cap() {
    let _serial = SERIAL.lock().await;
    // 32 connections of fresh identities from one address, 128 streams each, 256 KiB on
    // each toward a handler that never reads: 1 GiB asked for, 64 MiB allowed.
    let t = target();
    let (cost, held) = measure(
        "one address, 32 identities filling windows",
        &t,
        fill_windows(&t, &[loopback(3, 1)], 32, 128, Duration::from_secs(3)),
    )
    .await;
    let (hosts, streams) = held;
    eprintln!(
        "  streams that got their 256 KiB through: {}",
        streams.len()
    );
    assert!(
        cost.books_growth() <= 64 * MIB + 4 * MIB,
        "books grew {} bytes",
        cost.books_growth()
    );
    assert_rss_within(&cost, 64 * MIB + MARGIN);
    assert!(
        streams.len() < 32 * 128 / 2,
        "the cap let most streams through"
    );
    assert_honest_in_time(&cost);
    drop(streams);
    for h in hosts {
        h.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_message_handler_holds_back_its_sender() {
    let _serial = SERIAL.lock().await;
    // 1 MiB messages as fast as the sender may, to a handler that never returns: the
    // queue (4 MiB) fills, then the stream's window, then the sender waits.
    let t = target();
    let (cost, sent) = measure(
        "1 MiB messages to a stalled handler",
        &t,
        stalled_handler(&t, Duration::from_secs(4)),
    )
    .await;
    eprintln!("  messages the sender got queued: {sent}");
    // The queue, the largest stream window, the message being read.
    assert_rss_within(&cost, 4 * MIB + 16 * MIB + MIB + MARGIN);
    assert!(
        sent < 64,
        "the listener took {sent} MiB for a handler that reads nothing"
    );
    assert_honest_in_time(&cost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_a_peer_that_never_reads_wait_in_a_bounded_queue() {
    let _serial = SERIAL.lock().await;
    let t = target();
    let (cost, ()) = measure(
        "1 MiB messages to a peer that never reads",
        &t,
        never_reads_messages(&t, Duration::from_secs(4)),
    )
    .await;
    eprintln!(
        "  messages the listener got queued: {}",
        cost.peak.spam_sent
    );
    assert!(cost.peak.spam_sent > 0, "the listener sent nothing");
    assert!(
        cost.peak.spam_sent < 64,
        "{} MiB queued for a peer that reads nothing",
        cost.peak.spam_sent
    );
    // The queue (4 MiB), the write queue and the peer's window in flight.
    assert_rss_within(&cost, 4 * MIB + 2 * MIB + MARGIN);
    assert_honest_in_time(&cost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_quic_handshakes_hold_their_real_cost_and_are_cut() {
    let _serial = SERIAL.lock().await;
    let sources: Vec<_> = (1..=50).map(|h| loopback(4, h)).collect();
    // 500 real Initials from 50 addresses, then silence, for longer than the progress
    // deadline (5 s).
    let t = target();
    let (cost, ()) = measure(
        "500 silent QUIC handshakes from 50 addresses",
        &t,
        silent_quic_handshakes(&t, &sources, 500, Duration::from_secs(7)),
    )
    .await;
    eprintln!(
        "  handshakes held at most {}, transient memory at most {:.1} MiB",
        cost.peak.pending,
        cost.peak.transient as f64 / MIB as f64
    );
    assert!(cost.peak.pending > 0, "no handshake was held");
    // What each held handshake really cost, against what it reserves.
    let per_handshake = (cost.peak.live - cost.rest.live).max(0) as u64 / cost.peak.pending.max(1);
    eprintln!(
        "  live heap per held handshake: {} KiB",
        per_handshake / 1024
    );
    assert!(
        per_handshake <= strata::transport::QUIC_HANDSHAKE_MEMORY as u64,
        "a handshake holds {per_handshake} bytes, reserves {}",
        strata::transport::QUIC_HANDSHAKE_MEMORY
    );
    // The books: what is held, not 15 MiB windows per handshake.
    assert!(
        cost.peak.transient
            <= cost.peak.pending * strata::transport::QUIC_HANDSHAKE_MEMORY as u64 + MIB
    );
    assert_rss_within(&cost, 16 * MIB + MARGIN);
    assert_honest_in_time(&cost);
    // Past the progress deadline, none is left.
    let now = t.sample().await;
    assert_eq!(
        now.pending, 0,
        "silent handshakes outlived the progress deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_websocket_frames_are_reserved_and_cut() {
    let _serial = SERIAL.lock().await;
    // 40 addresses over 8 subnets (5 connections each): the per-subnet handshake cap
    // (64) leaves all 200 in flight at once.
    let sources: Vec<_> = (0..40u8).map(|i| loopback(40 + i / 5, 1 + i % 5)).collect();
    // Each announces a 1 MiB frame (tungstenite would allocate it whole) and trickles.
    let t = target();
    let (cost, (closed, took)) = measure(
        "200 WebSocket connections, 1 MiB frames, slowly",
        &t,
        slow_ws_frames(&t, &sources, 200, Duration::from_secs(10)),
    )
    .await;
    eprintln!("  closed by the listener: {closed} of 200, the last after {took:?}");
    assert_eq!(
        closed, 200,
        "a stalled frame outlived the progress deadline"
    );
    assert!(
        took < Duration::from_secs(7),
        "cut after {took:?}; the deadline is 5 s"
    );
    // Unauthenticated connections may hold 64 MiB in all.
    assert!(cost.peak.transient <= 64 * MIB);
    assert_rss_within(&cost, 64 * MIB + MARGIN);
    assert_honest_in_time(&cost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_inside_noise_are_evictable_and_cut_at_the_progress_deadline() {
    let _serial = SERIAL.lock().await;
    // 1,000 connections, eight per address (the cap), past the 512 handshakes allowed in
    // flight: each finished multistream-select and stalls inside Noise's first message.
    // Until a whole message has come they are idle, so newcomers (the honest peer among
    // them) evict them; at the progress deadline they are cut.
    // 125 addresses over 16 subnets: at most 64 handshakes per subnet, so the global
    // bound of 512 is what fills, and a newcomer from elsewhere needs an eviction.
    let sources: Vec<_> = (0..125u8)
        .map(|i| loopback(20 + i / 8, 1 + i % 8))
        .collect();
    let t = target();
    let (cost, (closed, took)) = measure(
        "1,000 connections stalled inside Noise",
        &t,
        stall_inside_noise(&t, &sources, 1000, Duration::from_secs(10)),
    )
    .await;
    eprintln!(
        "  closed by the listener: {closed} of 1000, the last after {took:?}; in flight at most {}, evictions {}",
        cost.peak.pending, cost.peak.evictions
    );
    assert_eq!(
        closed, 1000,
        "a stall inside Noise outlived the progress deadline"
    );
    assert!(
        cost.peak.pending >= 500,
        "the flood did not fill the handshake bound"
    );
    assert!(
        took < Duration::from_secs(7),
        "cut after {took:?}; the deadline is 5 s"
    );
    assert_rss_within(&cost, 16 * MIB + MARGIN);
    assert_honest_in_time(&cost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_fill_windows_and_leave_cannot_grow_memory_by_returning() {
    let _serial = SERIAL.lock().await;
    // 200 peers from 50 addresses of one subnet, 64 streams each with full windows toward
    // a handler that never reads; they disconnect without reading, and 200 fresh ones do
    // it again. What the handler still holds stays charged (to the subnet among others),
    // so the second round cannot add to it past the subnet's 128 MiB.
    let sources: Vec<_> = (1..=50).map(|h| loopback(8, h)).collect();
    let t = target();
    let rounds = async {
        for _round in 0..2 {
            let (hosts, streams) =
                fill_windows(&t, &sources, 200, 64, Duration::from_secs(1)).await;
            // Leave without reading: the connections close, the streams are not reset.
            for h in hosts {
                h.close().await;
            }
            drop(streams);
        }
    };
    let (cost, ()) = measure("200 peers x 64 full windows, leave, 200 more", &t, rounds).await;
    assert!(
        cost.books_growth() <= 128 * MIB + 4 * MIB,
        "books grew {} bytes",
        cost.books_growth()
    );
    assert_rss_within(&cost, 128 * MIB + MARGIN);
    assert_honest_in_time(&cost);
    // The handler still holds the bytes: they are still on the books, as in reality.
    let now = t.sample().await;
    let held = (now.live - cost.rest.live).max(0) as u64;
    let books = now.books.saturating_sub(cost.rest.books);
    eprintln!(
        "  after both rounds: live +{:.1} MiB, books +{:.1} MiB",
        held as f64 / MIB as f64,
        books as f64 / MIB as f64
    );
    assert!(
        books >= held.saturating_sub(8 * MIB),
        "held bytes fell off the books"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_push_prefixes_allocate_nothing_ahead() {
    let _serial = SERIAL.lock().await;
    // 8 connections x 128 identify push streams, each sent a 3-byte prefix announcing
    // 64 KiB and nothing more (each allocated 64 KiB before: 64 MiB).
    let t = target();
    let (cost, hosts) = measure(
        "identify push: 8 x 128 streams, 3-byte prefix",
        &t,
        identify_push_prefixes(&t, 8, 128, Duration::from_secs(2)),
    )
    .await;
    assert_rss_within(&cost, 8 * MIB);
    assert_honest_in_time(&cost);
    for h in hosts {
        h.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_agree_with_the_allocator_under_load() {
    let _serial = SERIAL.lock().await;
    // Four peers, 64 streams each, full windows toward a handler that never reads:
    // 64 MiB really held. The resource manager's total and the allocator's live bytes
    // grow alike: within 10% and 8 MiB of each other.
    let sources: Vec<_> = (1..=4).map(|h| loopback(9, h)).collect();
    let t = target();
    let rest = t.rest().await;
    let (hosts, streams) = fill_windows(&t, &sources, 4, 64, Duration::from_secs(5)).await;
    let now = t.sample().await;
    let live = (now.live - rest.live).max(0) as f64;
    let books = now.books.saturating_sub(rest.books) as f64;
    eprintln!(
        "books +{:.1} MiB, allocator +{:.1} MiB ({} streams filled)",
        books / MIB as f64,
        live / MIB as f64,
        streams.len()
    );
    assert_eq!(streams.len(), 256, "every window filled");
    let margin = 0.10 * books.max(live) + 8.0 * MIB as f64;
    assert!(
        (books - live).abs() <= margin,
        "books +{books} and allocator +{live} disagree by more than {margin}"
    );
    drop(streams);
    for h in hosts {
        h.close().await;
    }
}
