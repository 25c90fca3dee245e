//! Graceful drain: SIGTERM or `RouterService.Drain` stop new rooms and
//! sessions, health turns to not serving, existing sessions go on until they
//! close or `shutdown.grace_period` has passed; then the router exits.
//!
//! [`DrainClock`] decides (sans-IO: `now` and the session count in, the next
//! step out); [`Lifecycle`] is the shared handle the signal handler, the
//! gRPC service and the HTTP endpoints use; [`Lifecycle::run_drain`] is the
//! thin driver.

use crate::control::Control;
use crate::media::CloseReason;
use crate::metrics::Metrics;
use kaskade_protocol::v1 as pb;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often the driver looks at the session count while draining.
const POLL: Duration = Duration::from_millis(100);

/// What the drain driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not draining.
    Serve,
    /// Sessions are still open: look again by this time at the latest.
    WaitUntil(Instant),
    /// The grace period is over: close the remaining sessions.
    CloseSessions,
    /// Done: exit.
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Serving,
    Draining { deadline: Instant },
    Closing,
    Done,
}

/// The drain decision, on the caller's clock.
#[derive(Debug, Clone)]
pub struct DrainClock {
    grace: Duration,
    state: State,
}

impl DrainClock {
    /// A router that serves, and will drain for at most `grace`.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            state: State::Serving,
        }
    }

    /// Starts draining at `now`; returns the deadline. Idempotent: a second
    /// call returns the first deadline.
    pub fn start(&mut self, now: Instant) -> Instant {
        match self.state {
            State::Serving => {
                let deadline = now + self.grace;
                self.state = State::Draining { deadline };
                deadline
            }
            State::Draining { deadline } => deadline,
            State::Closing | State::Done => now,
        }
    }

    /// Whether draining has started.
    pub fn draining(&self) -> bool {
        self.state != State::Serving
    }

    /// The next step, given the time and how many sessions are open.
    pub fn poll(&mut self, now: Instant, sessions: usize) -> Step {
        match self.state {
            State::Serving => Step::Serve,
            State::Draining { .. } | State::Closing if sessions == 0 => {
                self.state = State::Done;
                Step::Exit
            }
            State::Draining { deadline } if now >= deadline => {
                self.state = State::Closing;
                Step::CloseSessions
            }
            State::Draining { deadline } => Step::WaitUntil(deadline),
            // Sessions that survived being closed (a worker that stopped
            // answering) do not hold the exit up.
            State::Closing | State::Done => {
                self.state = State::Done;
                Step::Exit
            }
        }
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The router's life: serving, then draining. Shared by the signal handler,
/// `RouterService`, gRPC health and `/readyz`.
pub struct Lifecycle {
    clock: Mutex<DrainClock>,
    deadline_unix_ms: Mutex<u64>,
    plane: Arc<Control>,
    metrics: Metrics,
    health: tonic_health::server::HealthReporter,
    draining: watch::Sender<bool>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Lifecycle {
    /// A serving router that will drain for at most `grace`.
    pub fn new(
        grace: Duration,
        plane: Arc<Control>,
        metrics: Metrics,
        health: tonic_health::server::HealthReporter,
    ) -> Self {
        Self {
            clock: Mutex::new(DrainClock::new(grace)),
            deadline_unix_ms: Mutex::new(0),
            plane,
            metrics,
            health,
            draining: watch::channel(false).0,
        }
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, DrainClock> {
        // The clock is plain data; a panic elsewhere leaves it valid.
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the router drains (then `/readyz` and health say so).
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Starts draining (idempotent); returns the open sessions and the
    /// deadline in ms since the Unix epoch.
    pub async fn start_drain(&self) -> pb::DrainResponse {
        let first = !self.clock().draining();
        let now = Instant::now();
        let deadline = self.clock().start(now);
        let deadline_ms = {
            let mut d = self
                .deadline_unix_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if first {
                *d = unix_ms(SystemTime::now() + deadline.saturating_duration_since(now));
            }
            *d
        };
        if first {
            self.plane.start_draining(deadline_ms);
            self.metrics.ops.draining.set(1);
            // Not serving: for the control services and for the server as a whole.
            use kaskade_protocol::v1::room_service_server::RoomServiceServer;
            use kaskade_protocol::v1::session_service_server::SessionServiceServer;
            type R = RoomServiceServer<crate::control::Api>;
            type S = SessionServiceServer<crate::control::Api>;
            self.health.set_not_serving::<R>().await;
            self.health.set_not_serving::<S>().await;
            self.health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            tracing::info!(
                sessions = self.plane.session_count(),
                grace_period = %humantime::format_duration(deadline.saturating_duration_since(now)),
                "draining: no new rooms or sessions; open sessions go on until they close or the grace period ends"
            );
            self.draining.send_replace(true);
        }
        pb::DrainResponse {
            sessions: u32::try_from(self.plane.session_count()).unwrap_or(u32::MAX),
            deadline_unix_ms: deadline_ms,
        }
    }

    /// Waits until draining has started and ended: every session closed, or
    /// the grace period over and the rest closed. Then watchers' streams end.
    pub async fn run_drain(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
        loop {
            let now = Instant::now();
            let step = self.clock().poll(now, self.plane.session_count());
            match step {
                Step::Serve => {}
                Step::WaitUntil(deadline) => {
                    tokio::time::sleep(POLL.min(deadline.saturating_duration_since(now))).await;
                }
                Step::CloseSessions => {
                    tracing::info!(
                        sessions = self.plane.session_count(),
                        "grace period over: closing the remaining sessions"
                    );
                    self.plane.close_all_sessions(CloseReason::Drained).await;
                }
                Step::Exit => break,
            }
        }
        self.plane.close_rooms();
    }
}

/// `kaskade.v1.RouterService`.
#[derive(Debug, Clone)]
pub struct RouterApi {
    lifecycle: Arc<Lifecycle>,
}

impl RouterApi {
    /// The service over `lifecycle`.
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }
}

#[tonic::async_trait]
impl pb::router_service_server::RouterService for RouterApi {
    async fn drain(
        &self,
        _req: tonic::Request<pb::DrainRequest>,
    ) -> Result<tonic::Response<pb::DrainResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.lifecycle.start_drain().await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_until_started() {
        let t0 = Instant::now();
        let mut c = DrainClock::new(Duration::from_secs(30));
        assert_eq!(c.poll(t0, 5), Step::Serve);
        assert!(!c.draining());
    }

    #[test]
    fn exits_as_soon_as_the_last_session_leaves() {
        let t0 = Instant::now();
        let mut c = DrainClock::new(Duration::from_secs(30));
        let deadline = c.start(t0);
        assert_eq!(deadline, t0 + Duration::from_secs(30));
        assert_eq!(c.start(t0 + Duration::from_secs(5)), deadline, "idempotent");
        assert_eq!(
            c.poll(t0 + Duration::from_secs(1), 2),
            Step::WaitUntil(deadline)
        );
        assert_eq!(c.poll(t0 + Duration::from_secs(2), 0), Step::Exit);
    }

    #[test]
    fn closes_what_is_left_when_the_grace_period_ends_then_exits() {
        let t0 = Instant::now();
        let mut c = DrainClock::new(Duration::from_secs(2));
        c.start(t0);
        assert_eq!(c.poll(t0 + Duration::from_secs(2), 3), Step::CloseSessions);
        assert_eq!(
            c.poll(t0 + Duration::from_secs(3), 1),
            Step::Exit,
            "stragglers do not hold it up"
        );
    }

    #[test]
    fn an_empty_router_exits_at_once() {
        let t0 = Instant::now();
        let mut c = DrainClock::new(Duration::from_secs(300));
        c.start(t0);
        assert_eq!(c.poll(t0, 0), Step::Exit);
    }
}
