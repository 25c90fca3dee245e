//! quinn glue for the link budget: a congestion controller whose window is
//! [`LinkRate::window`] of the current round trip and which ignores loss. The decision lives in
//! [`crate::cascade::relay::budget`]; this only answers quinn's calls.

use crate::cascade::relay::budget::LinkRate;
use quinn::congestion::{Controller, ControllerFactory};
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The round trip assumed before the first sample.
const INITIAL_RTT: Duration = Duration::from_millis(100);

/// Builds a [`FixedRate`] controller per connection.
#[derive(Debug, Clone, Copy)]
pub struct FixedRateFactory {
    rate: LinkRate,
}

impl FixedRateFactory {
    /// Controllers for a link of `rate`.
    pub fn new(rate: LinkRate) -> Self {
        Self { rate }
    }
}

impl ControllerFactory for FixedRateFactory {
    fn build(self: Arc<Self>, _now: Instant, _current_mtu: u16) -> Box<dyn Controller> {
        Box::new(FixedRate {
            rate: self.rate,
            window: self.rate.window(INITIAL_RTT),
        })
    }
}

/// A window that follows the link rate and the round trip, not loss.
#[derive(Debug, Clone)]
pub struct FixedRate {
    rate: LinkRate,
    window: u64,
}

impl Controller for FixedRate {
    fn on_ack(
        &mut self,
        _now: Instant,
        _sent: Instant,
        _bytes: u64,
        _app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.window = self.rate.window(rtt.get());
    }

    fn on_congestion_event(
        &mut self,
        _now: Instant,
        _sent: Instant,
        _is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
        // Random loss on a long link is not congestion; the budget bounds the rate.
    }

    fn on_mtu_update(&mut self, _new_mtu: u16) {}

    fn window(&self) -> u64 {
        self.window
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.rate.window(INITIAL_RTT)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
