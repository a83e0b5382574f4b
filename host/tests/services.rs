//! Supervised services: restart with backoff and count it, shut the host down when a
//! required one fails, leave a best-effort one down, and stop every one with the host,
//! leaving no task behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata_host::{Host, HostBuilder, HostEvent, ServicePolicy, ServiceState};
use tokio::time::timeout;

mod common;

const LIMIT: Duration = Duration::from_secs(20);

async fn host() -> Host {
    HostBuilder::new()
        .no_tcp()
        .no_quic()
        .memory()
        .build()
        .await
        .unwrap()
        .0
}

fn state_of(host: &Host, name: &str) -> Option<(ServiceState, u64)> {
    host.services()
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| (s.state, s.restarts))
}

async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<HostEvent>,
    pick: impl Fn(&HostEvent) -> bool,
) -> HostEvent {
    timeout(LIMIT, async {
        loop {
            match events.recv().await {
                Ok(e) if pick(&e) => return e,
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .expect("the event came")
}

#[tokio::test]
async fn a_restart_service_that_panics_is_restarted_with_backoff_and_counted() {
    let host = host().await;
    let mut events = host.events();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let policy = ServicePolicy::Restart {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(80),
        reset_after: Duration::from_secs(60),
    };
    host.spawn_service("flaky", policy, move |ctx| {
        let counter = counter.clone();
        async move {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= 4 {
                panic!("run {n} falls over");
            }
            // The fifth run stays up until the host stops.
            ctx.cancel.cancelled().await;
            Ok(())
        }
    })
    .unwrap();
    let mut backoffs = Vec::new();
    for expected in 1..=4u64 {
        match next_event(&mut events, |e| {
            matches!(e, HostEvent::ServiceRestarted { .. })
        })
        .await
        {
            HostEvent::ServiceRestarted {
                name,
                restarts,
                error,
                backoff,
            } => {
                assert_eq!(name, "flaky");
                assert_eq!(restarts, expected);
                assert!(error.contains("falls over"), "{error}");
                backoffs.push(backoff);
            }
            _ => unreachable!(),
        }
    }
    // Doubling from 20 ms, capped at 80 ms.
    assert_eq!(
        backoffs,
        [20, 40, 80, 80].map(Duration::from_millis).to_vec()
    );
    timeout(LIMIT, async {
        while runs.load(Ordering::SeqCst) < 5 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let (state, restarts) = state_of(&host, "flaky").unwrap();
    assert_eq!(restarts, 4);
    assert_eq!(state, ServiceState::Running);
    host.close().await;
    assert_eq!(state_of(&host, "flaky").unwrap().0, ServiceState::Stopped);
}

#[tokio::test]
async fn a_required_service_that_fails_shuts_the_host_down() {
    let host = host().await;
    let mut events = host.events();
    host.spawn_service("vital", ServicePolicy::Required, |_ctx| async {
        Err::<(), _>("the disk is gone".into())
    })
    .unwrap();
    match next_event(&mut events, |e| {
        matches!(e, HostEvent::ServiceFailed { .. })
    })
    .await
    {
        HostEvent::ServiceFailed { name, error } => {
            assert_eq!(name, "vital");
            assert_eq!(error, "the disk is gone");
        }
        _ => unreachable!(),
    }
    // The host closes by itself.
    timeout(LIMIT, async {
        while !host.network().is_closed() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert!(host
        .spawn_service("late", ServicePolicy::BestEffort, |_| async { Ok(()) })
        .is_err());
    assert!(matches!(
        state_of(&host, "vital").unwrap().0,
        ServiceState::Failed(_)
    ));
    host.close().await;
}

#[tokio::test]
async fn a_best_effort_service_that_fails_stays_down_and_the_host_goes_on() {
    let host = host().await;
    let mut events = host.events();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    host.spawn_service("optional", ServicePolicy::BestEffort, move |_ctx| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("not today".into()) }
    })
    .unwrap();
    next_event(
        &mut events,
        |e| matches!(e, HostEvent::ServiceFailed { name, .. } if name == "optional"),
    )
    .await;
    assert_eq!(
        state_of(&host, "optional").unwrap().0,
        ServiceState::Failed("not today".into())
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(!host.network().is_closed());
    // A finished service is no failure either.
    host.spawn_service("one-shot", ServicePolicy::Required, |_ctx| async { Ok(()) })
        .unwrap();
    timeout(LIMIT, async {
        while state_of(&host, "one-shot").unwrap().0 != ServiceState::Finished {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert!(!host.network().is_closed());
    host.close().await;
}

#[test]
fn shutdown_stops_every_service_and_its_restarts_and_leaves_no_task() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tasks_before = rt.metrics().num_alive_tasks();
    rt.block_on(async {
        let host = host().await;
        // A restarting service mid-backoff, a healthy one, and one that ignores its
        // cancellation (dropped at the deadline).
        host.spawn_service(
            "restarting",
            ServicePolicy::Restart {
                initial: Duration::from_secs(30),
                max: Duration::from_secs(30),
                reset_after: Duration::from_secs(60),
            },
            |_ctx| async { Err::<(), _>("again".into()) },
        )
        .unwrap();
        host.spawn_service("healthy", ServicePolicy::restart(), |ctx| async move {
            ctx.cancel.cancelled().await;
            Ok(())
        })
        .unwrap();
        host.spawn_service("stubborn", ServicePolicy::BestEffort, |_ctx| async {
            std::future::pending::<()>().await;
            Ok(())
        })
        .unwrap();
        timeout(LIMIT, async {
            while state_of(&host, "restarting").unwrap().0 != ServiceState::Restarting {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        let names: Vec<String> = host.services().into_iter().map(|s| s.name).collect();
        // The host's own background work is supervised too.
        for own in ["identify push", "peerstore cleanup"] {
            assert!(names.contains(&own.to_string()), "{names:?}");
        }
        let start = std::time::Instant::now();
        host.shutdown(Duration::from_millis(500)).await;
        assert!(start.elapsed() < Duration::from_millis(600));
        for s in host.services() {
            assert_eq!(s.state, ServiceState::Stopped, "{}", s.name);
        }
    });
    common::assert_tasks_back_to(&rt, tasks_before);
}

#[test]
fn the_close_a_failed_required_service_starts_is_waited_for_by_any_other_close() {
    // The host closes itself from a task of its own when a required service fails. A
    // close the application calls meanwhile returns only once that one has ended too:
    // nothing the host started is left running.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tasks_before = rt.metrics().num_alive_tasks();
    rt.block_on(async {
        let host = host().await;
        let mut events = host.events();
        host.spawn_service("vital", ServicePolicy::Required, |_ctx| async {
            Err::<(), _>("gone".into())
        })
        .unwrap();
        next_event(&mut events, |e| {
            matches!(e, HostEvent::ServiceFailed { .. })
        })
        .await;
        host.close().await;
        // No settling: the self-close has ended by now, not merely been asked to.
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            tasks_before,
            "a close returned while the host's own close still ran"
        );
    });
}
