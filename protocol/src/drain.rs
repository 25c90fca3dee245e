//! str0m's drive-loop contract, written once for the kaskade router's
//! sessions and the load tester's clients (feature `str0m`).
//!
//! After every mutation of an `Rtc` (an input, a written packet, an SDP
//! change) its outputs are drained with `poll_output` until it names its
//! next timeout. str0m often answers a mutation with a timeout of `now`:
//! the output then comes from an `Input::Timeout(now)`, so [`drain`] feeds
//! that at once, a bounded number of times (a stack that keeps asking for
//! "now" must not spin its caller).
//!
//! ```no_run
//! # use std::time::Instant;
//! # fn f(rtc: &mut str0m::Rtc, now: Instant) -> Result<(), str0m::RtcError> {
//! let mut sent = Vec::new();
//! let next = kaskade_protocol::drain::drain(rtc, now, 8, |out| match out {
//!     kaskade_protocol::drain::Drained::Transmit(t) => sent.push((t.destination, Vec::from(t.contents))),
//!     kaskade_protocol::drain::Drained::Event(_e) => {}
//! })?;
//! # let _ = next; Ok(()) }
//! ```

use std::time::Instant;
use str0m::net::Transmit;
use str0m::{Event, Input, Output, Rtc, RtcError};

/// What a drain hands out, in str0m's order.
#[derive(Debug)]
// Handed to the caller's closure at once, never stored: boxing the event
// would allocate once per received packet.
#[allow(clippy::large_enum_variant)]
pub enum Drained {
    /// A datagram to send.
    Transmit(Transmit),
    /// Something happened.
    Event(Event),
}

/// Drains `rtc` until its next timeout lies after `now` (or `max_rounds`
/// `Input::Timeout(now)` rounds were fed), handing every transmit and
/// event to `out`. Returns str0m's next timeout. On an error the drain
/// stops; what was handed out stays handed out.
pub fn drain(
    rtc: &mut Rtc,
    now: Instant,
    max_rounds: usize,
    mut out: impl FnMut(Drained),
) -> Result<Instant, RtcError> {
    let mut rounds = 0;
    loop {
        match rtc.poll_output()? {
            Output::Timeout(t) => {
                if t <= now && rounds < max_rounds {
                    rounds += 1;
                    rtc.handle_input(Input::Timeout(now))?;
                    continue;
                }
                return Ok(t);
            }
            Output::Transmit(t) => out(Drained::Transmit(t)),
            Output::Event(e) => out(Drained::Event(e)),
        }
    }
}

/// Feeds `Input::Timeout(now)`, then [`drain`]s. For a session that was
/// just written to: str0m releases a written packet only from a timeout
/// round (its pacer learns of the queue there), and a drain that started
/// with `poll_output` would first walk str0m's whole tree only to hear
/// "timeout now".
pub fn drain_after_timeout(
    rtc: &mut Rtc,
    now: Instant,
    max_rounds: usize,
    out: impl FnMut(Drained),
) -> Result<Instant, RtcError> {
    rtc.handle_input(Input::Timeout(now))?;
    drain(rtc, now, max_rounds, out)
}
