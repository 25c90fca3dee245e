//! Panics go to the log, throttled, instead of raw to stderr. A media
//! worker catches a panic of one session's WebRTC stack (that session
//! closes, the worker and the other sessions go on, and
//! `kaskade_session_failures_total` counts it). A peer that can set one off
//! could otherwise print a message (and, with `RUST_BACKTRACE`, a
//! backtrace) per request to stderr. The hook logs where the panic
//! happened at error level, at most once per [`QUIET`] with the number held
//! back since; the message, which may quote what a peer sent, and the
//! backtrace go to debug level.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two panic lines at error level.
pub const QUIET: Duration = Duration::from_secs(10);

/// Decides which panics are logged at error level: sans-IO, on `now`.
#[derive(Debug, Default)]
pub struct Throttle {
    next: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// A panic at `now`: `Some(held)` to log it, with the number held back
    /// since the last one logged; `None` to hold it back.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.held += 1;
            return None;
        }
        self.next = Some(now + QUIET);
        Some(std::mem::take(&mut self.held))
    }
}

/// Installs the hook for the process (the daemon calls it once, after the
/// log is set up).
pub fn install() {
    let throttle = Mutex::new(Throttle::default());
    std::panic::set_hook(Box::new(move |info| {
        let place = info.location().map_or_else(
            || "unknown".to_string(),
            |l| format!("{}:{}", l.file(), l.line()),
        );
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::debug!(
            at = %place,
            message = %message,
            backtrace = %std::backtrace::Backtrace::capture(),
            "panic"
        );
        // A poisoned lock only means a panic while it was held: log anyway.
        let logged = match throttle.lock() {
            Ok(mut t) => t.note(Instant::now()),
            Err(p) => p.into_inner().note(Instant::now()),
        };
        if let Some(held) = logged {
            tracing::error!(
                at = %place,
                held_back = held,
                "panic (a session's WebRTC stack panics: that session is closed; \
                 please report it with the location)"
            );
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_panic_line_per_quiet_period_with_the_count_held_back() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.note(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.note(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.note(t0 + QUIET - Duration::from_millis(1)), None);
        assert_eq!(
            t.note(t0 + QUIET),
            Some(6),
            "the next line says how many it held back"
        );
        assert_eq!(t.note(t0 + QUIET + Duration::from_secs(1)), None);
        assert_eq!(t.note(t0 + 3 * QUIET), Some(1));
    }
}
