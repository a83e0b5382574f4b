//! What the fuzz targets share: a current-thread runtime, built once per fuzzing process,
//! to drive the async parsers over in-memory pipes.

use std::future::Future;
use std::time::Duration;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
}

/// Runs `f` to completion on the shared runtime. Its clock is paused and advances only
/// when every task waits, so deadlines inside the code under test pass at once instead of
/// slowing the fuzzer down.
pub fn block_on<F: Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

/// Two yamux connections over an in-memory pipe: (dialer, listener).
pub fn yamux_pair() -> (
    std::sync::Arc<dyn strata_upgrader::MuxedConn>,
    std::sync::Arc<dyn strata_upgrader::MuxedConn>,
) {
    use std::sync::Arc;
    use strata_core::{ConnScope, Direction, PeerId};
    use strata_upgrader::{StreamMuxer, Yamux};
    let (x, y) = tokio::io::duplex(1 << 16);
    let conn = |io, direction| {
        Yamux::default().new_conn(
            Box::new(io),
            direction,
            PeerId::random(),
            Arc::new(ConnScope::unlimited()),
        )
    };
    (conn(x, Direction::Outbound), conn(y, Direction::Inbound))
}

/// A bound on one input's run, far beyond what any input should take.
pub const RUN_LIMIT: Duration = Duration::from_secs(600);
