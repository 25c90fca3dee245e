//! The control plane's operations: validates API requests against the
//! registry, sends commands to the media workers and keeps the registry and
//! the room event streams up to date.

use super::error::ApiError;
use super::hooks::CascadeHooks;
use super::registry::Registry;
use super::watch::Watchers;
use crate::media::command::Reply;
use crate::media::worker::WorkerHandle;
use crate::media::{Command, WorkerId};
use crate::metrics::Metrics;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::oneshot;

mod admit;
mod drain;
mod remote;
mod rooms;
mod sessions;
mod speakers;
mod subscriptions;
mod tracks;
mod viewer;
mod worker_events;
pub use remote::RemoteTrack;
pub use viewer::ViewerTracks;

pub use super::limits::Limits;

/// This router's identity (for residency and the cascade).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Node id.
    pub node_id: String,
    /// Region (empty: none).
    pub region: String,
}

/// The control plane.
pub struct Control {
    registry: Mutex<Registry>,
    workers: Vec<WorkerHandle>,
    metrics: Metrics,
    limits: Limits,
    identity: Identity,
    cascade: OnceLock<Arc<dyn CascadeHooks>>,
    watchers: Watchers,
    /// The demo's event streams: apart from `WatchEvents` (bounded by the
    /// HTTP listener's own stream limit), so that holders of room tokens
    /// cannot use up the slots the backend's watchers need.
    demo_watchers: Watchers,
    /// Set once the router drains: no new rooms or sessions (see `drain.rs`).
    draining: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl Control {
    /// A control plane over the given workers.
    pub fn new(
        workers: Vec<WorkerHandle>,
        metrics: Metrics,
        limits: Limits,
        identity: Identity,
    ) -> Self {
        Self {
            registry: Mutex::new(Registry::new(workers.len())),
            workers,
            metrics,
            limits,
            identity,
            cascade: OnceLock::new(),
            watchers: Watchers::default(),
            demo_watchers: Watchers::default(),
            draining: Default::default(),
        }
    }

    /// How sessions are placed on workers (`media.room_share`).
    pub fn set_placement(&self, policy: crate::media::placement::Policy) {
        self.reg().placement = policy;
    }

    /// This router's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Connects the cascade (once, at start-up).
    pub fn set_cascade(&self, hooks: Arc<dyn CascadeHooks>) {
        let _ = self.cascade.set(hooks);
    }

    pub(crate) fn hooks(&self) -> Option<&Arc<dyn CascadeHooks>> {
        self.cascade.get()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn reg(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock would be a bug in this module; the
        // registry stays structurally valid, so keep serving.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn send(&self, w: WorkerId, cmd: Command) {
        if let Some(h) = self.workers.get(w.index()) {
            let _ = h.send(cmd);
        }
    }

    async fn call<T>(
        &self,
        w: WorkerId,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let h = self
            .workers
            .get(w.index())
            .ok_or_else(|| ApiError::Unavailable("media worker missing".into()))?;
        h.send(make(tx))
            .map_err(|_| ApiError::Unavailable("media worker stopped".into()))?;
        rx.await
            .map_err(|_| ApiError::Unavailable("media worker stopped".into()))?
            .map_err(ApiError::from)
    }

    /// Stops every worker (their sessions close).
    pub fn shutdown_workers(&self) {
        for w in &self.workers {
            let _ = w.send(Command::Shutdown);
        }
    }
}
