//! Which worker a new session goes to: a pure function of what the control
//! plane knows (sessions per worker, the room's sessions per worker, how
//! many sources the room has, which workers are overloaded).
//!
//! # The policy
//!
//! A room's packets cost least when its sessions share a worker: a packet
//! then never crosses the fan-out bus and is handled on one thread, with
//! that thread's caches (on a 16-core machine, 5-person meetings spread over
//! 4 workers cost 1.43× what they cost on one). So:
//!
//! 1. A room stays on the worker(s) it is on while its **expected load**
//!    there fits its **share** of a worker: the worker with the most of the
//!    room's sessions that still fits takes the new one.
//! 2. A room that has outgrown its workers spreads: first to a worker that
//!    does not hold it yet (the least loaded), then — once it is on every
//!    worker — evenly (fewest of the room's sessions first). A big fan-out
//!    thus uses every core, and one packet reaches its last subscriber
//!    after a share of the subscribers, not all of them.
//! 3. A new room goes to the least loaded worker, so rooms spread evenly.
//! 4. An overloaded worker takes no new session; when every worker is
//!    overloaded, the join is refused.
//!
//! # Expected load and the share
//!
//! The load of a room on a worker is counted in **streams**: each of its
//! sessions there may receive every source of the room (a publishing
//! session, a track relayed from another router), so `sessions × sources`
//! (with at least one source: a room's first sessions are usually about to
//! publish). A fan-out of 1 → N is N streams, a meeting of n people n².
//!
//! The share, [`ROOM_SHARE_STREAMS`] = 160 streams, is a quarter of what one
//! worker carries: one saturated worker forwarded ~137 k packets/s of large
//! fan-out and ~70 k packets/s of meeting traffic (16-core Xeon,
//! docs/benchmarks.md), and a stream is ~200 packets/s at the top layer
//! (video + audio) or ~100 at the middle one, so a worker holds about 700
//! streams. It also bounds the time one packet takes to reach all of a
//! room's subscribers on one worker: at ~5 µs per write (the `hotpath`
//! bench, N = 100–170), 160 writes take about 0.8 ms. So meetings of up to
//! 12 people and fan-outs of up to 160 stay on one worker; past that they
//! spread. `cargo bench -p kaskade-bench --bench scenario` measures the
//! cost of a room on one worker against the same room spread.

use crate::media::types::WorkerId;

/// How much of a worker one room may use before it spreads, in streams
/// (see the module docs).
pub const ROOM_SHARE_STREAMS: u32 = 160;

/// How sessions are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Keep a room on few workers while it fits a share of one (the default).
    Rooms {
        /// The share, in streams.
        share: u32,
    },
    /// Every session on the least loaded worker, whatever its room (spreads
    /// every room over every worker; the test kit's default, so that tests
    /// of cross-worker paths get several workers with few sessions).
    LeastLoaded,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::Rooms {
            share: ROOM_SHARE_STREAMS,
        }
    }
}

/// What placement looks at for one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerView {
    /// Sessions on the worker, every room counted.
    pub sessions: u32,
    /// Sessions of the room being joined on the worker.
    pub room_sessions: u32,
    /// The worker is overloaded.
    pub overloaded: bool,
}

/// The worker for a new session of a room with `sources` sources, or `None`
/// when every worker is overloaded. Ties go to the lowest index.
pub fn place(policy: Policy, workers: &[WorkerView], sources: u32) -> Option<WorkerId> {
    let open = || workers.iter().enumerate().filter(|(_, w)| !w.overloaded);
    let pick = |i: usize| Some(WorkerId(i as u16));
    let least_loaded = |it: &mut dyn Iterator<Item = (usize, &WorkerView)>| {
        it.min_by_key(|(i, w)| (w.sessions, *i)).map(|(i, _)| i)
    };
    let share = match policy {
        Policy::LeastLoaded => return least_loaded(&mut open()).and_then(pick),
        Policy::Rooms { share } => share,
    };
    let per_session = sources.max(1);
    // 1. Stay where the room is, while it fits.
    let fits = open()
        .filter(|(_, w)| w.room_sessions > 0)
        .filter(|(_, w)| (w.room_sessions + 1).saturating_mul(per_session) <= share)
        .max_by_key(|(i, w)| {
            (
                w.room_sessions,
                std::cmp::Reverse(w.sessions),
                std::cmp::Reverse(*i),
            )
        });
    if let Some((i, _)) = fits {
        return pick(i);
    }
    // 2./3. A worker without the room (a new room: any worker), least loaded.
    if let Some(i) = least_loaded(&mut open().filter(|(_, w)| w.room_sessions == 0)) {
        return pick(i);
    }
    // 2. On every open worker already: evenly.
    open()
        .min_by_key(|(i, w)| (w.room_sessions, w.sessions, *i))
        .and_then(|(i, _)| pick(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(sessions: u32, room_sessions: u32) -> WorkerView {
        WorkerView {
            sessions,
            room_sessions,
            overloaded: false,
        }
    }

    /// Places `n` sessions of one room with `sources` sources on `workers`
    /// otherwise empty workers; returns the room's sessions per worker.
    fn fill(policy: Policy, workers: usize, n: u32, sources: u32) -> Vec<u32> {
        let mut w = vec![view(0, 0); workers];
        for _ in 0..n {
            let i = place(policy, &w, sources).expect("a worker").index();
            w[i].sessions += 1;
            w[i].room_sessions += 1;
        }
        w.iter().map(|v| v.room_sessions).collect()
    }

    #[test]
    fn a_small_room_shares_one_worker() {
        // A 5-person meeting: 5 sources, 25 streams at most.
        assert_eq!(fill(Policy::default(), 4, 5, 5), [5, 0, 0, 0]);
        // Even when another worker is emptier.
        let w = [view(10, 3), view(0, 0)];
        assert_eq!(place(Policy::default(), &w, 4), Some(WorkerId(0)));
    }

    #[test]
    fn a_room_spreads_only_past_its_share_then_evenly() {
        // 1 → N fan-out: one source, 160 subscribers per worker fit.
        assert_eq!(fill(Policy::default(), 4, 160, 1), [160, 0, 0, 0]);
        assert_eq!(fill(Policy::default(), 4, 161, 1), [160, 1, 0, 0]);
        // Past every worker's share: evenly over all.
        assert_eq!(fill(Policy::default(), 4, 1000, 1), [250, 250, 250, 250]);
        // A 20-person meeting (400 streams) needs more than one worker:
        // 8 fit one (8 × 20 = 160).
        assert_eq!(fill(Policy::default(), 4, 20, 20), [8, 8, 4, 0]);
    }

    #[test]
    fn rooms_spread_evenly_over_workers() {
        let mut w = vec![view(0, 0); 3];
        let mut rooms = Vec::new();
        for _room in 0..6 {
            for v in w.iter_mut() {
                v.room_sessions = 0;
            }
            let mut at = None;
            for _ in 0..4 {
                let i = place(Policy::default(), &w, 4).expect("a worker").index();
                assert!(at.is_none_or(|a| a == i), "a 4-person room stays together");
                at = Some(i);
                w[i].sessions += 1;
                w[i].room_sessions += 1;
            }
            rooms.push(at.expect("placed"));
        }
        assert_eq!(rooms, [0, 1, 2, 0, 1, 2]);
        assert!(w.iter().all(|v| v.sessions == 8));
    }

    #[test]
    fn an_overloaded_worker_takes_no_new_session() {
        let mut w = [view(3, 3), view(0, 0)];
        w[0].overloaded = true;
        assert_eq!(place(Policy::default(), &w, 1), Some(WorkerId(1)));
        assert_eq!(place(Policy::LeastLoaded, &[w[0]], 1), None);
        w[1].overloaded = true;
        assert_eq!(
            place(Policy::default(), &w, 1),
            None,
            "every worker overloaded: refused"
        );
    }

    #[test]
    fn least_loaded_ignores_rooms() {
        assert_eq!(fill(Policy::LeastLoaded, 3, 5, 5), [2, 2, 1]);
        let w = [view(2, 2), view(1, 0)];
        assert_eq!(place(Policy::LeastLoaded, &w, 1), Some(WorkerId(1)));
    }
}
