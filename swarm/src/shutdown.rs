//! Closing the swarm, bounded by a deadline in every case.
//!
//! Two phases. Graceful: listeners stop, every connection is told Go Away, open streams
//! may finish (for [`Swarm::shutdown`]), then every connection is closed, all at once.
//! Forced, when the deadline comes first: every connection is reset, every task
//! cancelled, every listener dropped. Nothing in the forced phase waits on a remote; what
//! it takes is tearing down tasks (tens of milliseconds for ten thousand streams), so it
//! starts a little before the deadline ([`teardown_reserve`]) and the call returns by the
//! deadline plus a small margin.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::notify::DisconnectReason;
use crate::swarm::Swarm;

impl Swarm {
    /// Closes the swarm now: listeners stop, every connection is closed gracefully (Go
    /// Away, then the socket) without waiting for its streams, every task it started ends.
    /// Bounded by `close_deadline` (1 s by default): what is still closing then is reset.
    /// Idempotent; concurrent callers all wait for the one close; afterwards every
    /// operation fails with [`crate::SwarmError::Closed`]. Notifiees get what is left of
    /// the deadline, at most `notifiee_close_grace`, to drain.
    pub async fn close(&self) {
        self.stop(self.0.config.close_deadline, false).await
    }

    /// Graceful shutdown within `deadline`: stops listening, refuses new connections,
    /// dials and streams, tells every connection Go Away and lets open streams finish;
    /// then closes the connections gracefully. When the deadline comes first, whatever
    /// is left is forced: connections reset, tasks cancelled. Returns by the deadline
    /// plus a small margin (what tasks take to notice a cancellation), however the peers
    /// behave; when it returns, every task the swarm started has ended and every socket
    /// it held is gone.
    pub async fn shutdown(&self, deadline: Duration) {
        self.stop(deadline, true).await
    }

    async fn stop(&self, deadline: Duration, let_streams_finish: bool) {
        let hard = Instant::now() + deadline;
        let reserve = teardown_reserve(deadline);
        let first = {
            let mut started = self
                .0
                .stop_started
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.0.stop_deadline.send_modify(|d| {
                *d = Some(match *d {
                    Some((end, r)) if end - r <= hard - reserve => (end, r),
                    _ => (hard, reserve),
                })
            });
            !std::mem::replace(&mut *started, true)
        };
        if first {
            // The stop runs on its own task, so that it completes even when the caller is
            // cancelled: a notifiee or a handler that closes the swarm is itself
            // cancelled by it. This caller waits for the task itself (so that, when it
            // returns, the task has ended too); every other caller waits on `close_done`.
            let swarm = self.clone();
            let task = tokio::spawn(async move { swarm.run_stop(let_streams_finish).await });
            let _ = task.await;
        } else {
            self.0.close_done.cancelled().await;
        }
    }

    async fn run_stop(&self, let_streams_finish: bool) {
        self.0.stopping.store(true, Ordering::Release);
        self.0.listeners_stop.cancel();
        let graceful = async {
            for conn in self.all_conns() {
                conn.capable().go_away();
            }
            if let_streams_finish {
                let mut streams = self.0.streams_total().subscribe();
                let _ = streams.wait_for(|n| *n == 0).await;
            }
            let conns = self.all_conns();
            futures::future::join_all(
                conns
                    .iter()
                    .map(|c| c.close_with(DisconnectReason::Shutdown)),
            )
            .await;
            self.0.cancel.cancel();
            self.0.tracker.close();
            self.0.tracker.wait().await;
        };
        let deadline = self.0.stop_deadline.subscribe();
        tokio::select! {
            _ = graceful => {}
            _ = sleep_until_deadline(deadline) => {
                tracing::debug!("shutdown deadline reached; forcing what is left");
                self.0.force.cancel();
                self.0.cancel.cancel();
                for conn in self.all_conns() {
                    conn.abort_with(DisconnectReason::Shutdown);
                }
                self.0.tracker.close();
                self.0.tracker.wait().await;
            }
        }
        // Every connection and listener task has reported (events are published as they
        // happen).
        let left = self
            .0
            .stop_deadline
            .borrow()
            .map_or(Duration::ZERO, |(end, _)| {
                end.saturating_duration_since(Instant::now())
            });
        self.0
            .notifier
            .close(left.min(self.0.config.notifiee_close_grace))
            .await;
        self.0.close_done.cancel();
    }
}

/// How long before the deadline the forced phase starts: a tenth of the deadline, at
/// most 50 ms. Resetting connections and cancelling tasks is quick but not free, and the
/// deadline bounds when the call returns, not when the forcing starts.
pub(crate) fn teardown_reserve(deadline: Duration) -> Duration {
    (deadline / 10).min(Duration::from_millis(50))
}

/// Sleeps until the stop deadline (less the teardown reserve), following it when a
/// later caller brings it closer.
async fn sleep_until_deadline(mut deadline: watch::Receiver<Option<(Instant, Duration)>>) {
    loop {
        let Some((end, reserve)) = *deadline.borrow_and_update() else {
            if deadline.changed().await.is_err() {
                return;
            }
            continue;
        };
        let at = end.checked_sub(reserve).unwrap_or(end);
        tokio::select! {
            _ = tokio::time::sleep_until(at) => return,
            changed = deadline.changed() => if changed.is_err() {
                tokio::time::sleep_until(at).await;
                return;
            },
        }
    }
}
