//! Supervised services: long-lived work that runs beside the host, restarts or fails
//! loudly per an explicit policy, and stops with the host.
//!
//! Each service runs in a task the host tracks; its future is made by a factory, which
//! gets a [`ServiceContext`] (a cancellation token that is a child of the host's, and the
//! host). A panic is caught and is a failure like an error. What a failure does depends
//! on the [`ServicePolicy`]:
//!
//! * `Required`: the host shuts down, and [`HostEvent::ServiceFailed`] says why;
//! * `Restart`: the service is made anew after a backoff that doubles from `initial` up
//!   to `max`, and starts from `initial` again once a run has lasted `reset_after`; each
//!   restart is counted and reported ([`HostEvent::ServiceRestarted`]);
//! * `BestEffort`: the failure is logged and reported, and the service stays down.
//!
//! A service that returns `Ok` is finished (not restarted); one that returns anything
//! while the host shuts down is stopped, never failed. A service must end soon after its
//! token is cancelled: past the shutdown's deadline its future is dropped.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::HostError;
use crate::events::HostEvent;
use crate::host::Host;

/// What a service's failure (an error or a panic) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServicePolicy {
    /// The host cannot work without it: a failure shuts the host down.
    Required,
    /// Restart after a backoff: `initial`, doubling up to `max`, back to `initial` once a
    /// run has lasted `reset_after`. Until the host shuts down.
    Restart {
        /// The first backoff.
        initial: Duration,
        /// The longest backoff.
        max: Duration,
        /// A run this long resets the backoff.
        reset_after: Duration,
    },
    /// Log the failure; do not restart.
    BestEffort,
}

impl ServicePolicy {
    /// `Restart` with a backoff from 100 ms up to 30 s, reset after a minute of health.
    pub fn restart() -> Self {
        ServicePolicy::Restart {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Where a service is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// Running now.
    Running,
    /// Failed and waiting out its backoff before the next start.
    Restarting,
    /// Returned `Ok`: done, not restarted.
    Finished,
    /// Failed, and its policy does not restart it; the text says why.
    Failed(String),
    /// Stopped with the host.
    Stopped,
}

/// One service, as [`Host::services`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its name.
    pub name: String,
    /// Its policy.
    pub policy: ServicePolicy,
    /// Where it is.
    pub state: ServiceState,
    /// How many times it was restarted.
    pub restarts: u64,
}

/// What a service fails with.
pub type ServiceError = Box<dyn std::error::Error + Send + Sync>;

/// What a service's factory is given.
#[derive(Clone)]
pub struct ServiceContext {
    /// Cancelled when the host shuts down (a child of the host's token): the service
    /// should return soon after.
    pub cancel: CancellationToken,
    /// The host.
    pub host: Host,
    /// The service's name.
    pub name: String,
}

impl ServiceContext {
    /// Opens a stream to `peer` (see [`Host::new_stream`]) charged to this service's
    /// resource scope, as go-libp2p's `SetService`: its count and what it buffers are
    /// the service's, within the service's limits.
    pub async fn new_stream(
        &self,
        peer: strata_core::PeerId,
        protocols: &[&str],
    ) -> Result<strata_core::Stream, HostError> {
        let mut stream = self.host.new_stream(peer, protocols).await?;
        if let Err(source) = stream.scope().set_service(&self.name) {
            stream.reset();
            return Err(HostError::Resource {
                peer,
                protocol: stream.protocol().unwrap_or_default().to_owned(),
                source,
            });
        }
        Ok(stream)
    }

    /// A memory span charged to this service (and the system): for what the service
    /// holds that belongs to no one stream, a store or a cache that peers fill. Reserve
    /// from it before such memory grows.
    pub fn memory(&self) -> strata_core::ScopeMemory {
        self.host
            .resource_manager()
            .open_span(&strata_core::SpanOwner::service(self.name.clone()))
    }
}

type Factory =
    Arc<dyn Fn(ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> + Send + Sync>;

/// The host's registry of services.
#[derive(Default)]
pub(crate) struct Services {
    list: Mutex<Vec<ServiceInfo>>,
}

impl Services {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ServiceInfo>> {
        // Plain records, each edit made whole: a panic elsewhere cannot leave them torn.
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut ServiceInfo)) {
        if let Some(info) = self.lock().iter_mut().find(|s| s.name == name) {
            f(info);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<ServiceInfo> {
        self.lock().clone()
    }
}

/// The text of a panic's payload.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl Host {
    /// Runs a supervised service named `name` under `policy`: `factory` makes its future
    /// (again after each restart). Fails if the host is shutting down or a service of
    /// that name exists. See the [module](crate::services) for what each policy does.
    pub fn spawn_service<F, Fut>(
        &self,
        name: impl Into<String>,
        policy: ServicePolicy,
        factory: F,
    ) -> Result<(), HostError>
    where
        F: Fn(ServiceContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        let name = name.into();
        if self.0.cancel.is_cancelled() {
            return Err(HostError::Swarm(strata_swarm::SwarmError::Closed));
        }
        {
            let mut list = self.0.services.lock();
            if list.iter().any(|s| s.name == name) {
                return Err(HostError::ServiceExists(name));
            }
            list.push(ServiceInfo {
                name: name.clone(),
                policy,
                state: ServiceState::Running,
                restarts: 0,
            });
        }
        let factory: Factory = Arc::new(move |ctx| factory(ctx).boxed());
        let host = self.clone();
        self.0
            .tasks
            .spawn(async move { host.supervise(name, policy, factory).await });
        Ok(())
    }

    /// Every service with its name, policy, state and restart count.
    pub fn services(&self) -> Vec<ServiceInfo> {
        self.0.services.snapshot()
    }

    async fn supervise(self, name: String, policy: ServicePolicy, factory: Factory) {
        let services = &self.0.services;
        let mut backoff = match policy {
            ServicePolicy::Restart { initial, .. } => initial,
            _ => Duration::ZERO,
        };
        loop {
            if self.0.cancel.is_cancelled() {
                services.update(&name, |s| s.state = ServiceState::Stopped);
                return;
            }
            services.update(&name, |s| s.state = ServiceState::Running);
            let ctx = ServiceContext {
                cancel: self.0.cancel.child_token(),
                host: self.clone(),
                name: name.clone(),
            };
            let started = Instant::now();
            // The factory itself may panic, as may the future it makes.
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| factory(ctx)));
            let outcome = match run {
                Err(payload) => Err(panic_text(payload)),
                Ok(fut) => {
                    let fut = AssertUnwindSafe(fut).catch_unwind();
                    tokio::select! {
                        r = fut => match r {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(payload) => Err(panic_text(payload)),
                        },
                        // Past the shutdown's deadline, a service that has not ended is
                        // dropped.
                        _ = self.0.force.cancelled() => Ok(()),
                    }
                }
            };
            if self.0.cancel.is_cancelled() {
                services.update(&name, |s| s.state = ServiceState::Stopped);
                return;
            }
            let error = match outcome {
                Ok(()) => {
                    services.update(&name, |s| s.state = ServiceState::Finished);
                    return;
                }
                Err(e) => e,
            };
            match policy {
                ServicePolicy::Required => {
                    tracing::error!(service = %name, "required service failed: {error}; shutting the host down");
                    services.update(&name, |s| s.state = ServiceState::Failed(error.clone()));
                    let _ = self.0.events.send(HostEvent::ServiceFailed {
                        name: name.clone(),
                        error,
                    });
                    // The close waits for this very task: it runs on a task of its own,
                    // which every other close waits for in turn.
                    self.close_from_closer();
                    return;
                }
                ServicePolicy::BestEffort => {
                    tracing::warn!(service = %name, "service failed: {error}; it stays down");
                    services.update(&name, |s| s.state = ServiceState::Failed(error.clone()));
                    let _ = self.0.events.send(HostEvent::ServiceFailed {
                        name: name.clone(),
                        error,
                    });
                    return;
                }
                ServicePolicy::Restart {
                    initial,
                    max,
                    reset_after,
                } => {
                    if started.elapsed() >= reset_after {
                        backoff = initial;
                    }
                    let mut restarts = 0;
                    services.update(&name, |s| {
                        s.restarts += 1;
                        restarts = s.restarts;
                        s.state = ServiceState::Restarting;
                    });
                    tracing::warn!(service = %name, "service failed: {error}; restart {restarts} in {backoff:?}");
                    let _ = self.0.events.send(HostEvent::ServiceRestarted {
                        name: name.clone(),
                        restarts,
                        error,
                        backoff,
                    });
                    tokio::select! {
                        _ = self.0.cancel.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    }
}
