//! The worker's timer queue on the virtual clock: a session's timeout is
//! served at its time, and a turn touches no session whose time has not
//! come, however busy the worker is.

mod common;

use common::Sim;
use std::net::SocketAddr;
use std::time::Duration;

/// 12 connected data-channel clients on one worker, otherwise idle.
fn idle_room() -> Sim {
    let mut sim = Sim::new(1, 41);
    sim.create_room("r");
    let clients: Vec<usize> = (0..12)
        .map(|i| {
            let c = sim.add_client(|c| c);
            sim.clients[c].client.add_data_channel("k");
            sim.join("r", c, &format!("c{i}"));
            c
        })
        .collect();
    sim.connect(&clients);
    sim.run_for(Duration::from_secs(1));
    sim
}

#[test]
fn a_session_timeout_fires_at_its_time_and_touches_no_other() {
    let mut sim = idle_room();
    for _ in 0..20 {
        let core = &mut sim.workers[0].core;
        let deadlines = core.session_deadlines();
        let first = deadlines[0];
        let due = deadlines.iter().filter(|d| **d <= first).count() as u64;
        let before = core.session_timeouts();
        // Just before: nobody is touched.
        core.handle_timeout(first - Duration::from_micros(1));
        assert_eq!(core.session_timeouts(), before, "none is due yet");
        // At its time: exactly the sessions due then.
        core.handle_timeout(first);
        assert_eq!(core.session_timeouts() - before, due);
        sim.now = first;
        sim.pump();
        sim.run_for(Duration::from_millis(7));
    }
}

#[test]
fn a_busy_worker_touches_no_idle_session_more_often() {
    let mut sim = idle_room();
    let t0 = sim.workers[0].core.session_timeouts();
    sim.run_for(Duration::from_secs(2));
    let idle = sim.workers[0].core.session_timeouts() - t0;
    // The same stretch with the worker turned every 0.5 ms by a stranger's
    // datagrams (4000 turns): the sessions are served as often as before.
    let stranger: SocketAddr = "127.0.9.9:9999".parse().unwrap();
    let t1 = sim.workers[0].core.session_timeouts();
    let end = sim.now + Duration::from_secs(2);
    while sim.now < end {
        let now = sim.now;
        let core = &mut sim.workers[0].core;
        core.handle_datagram(now, stranger, &[0x80; 40]);
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
        }
        sim.run_for(Duration::from_micros(500));
    }
    let busy = sim.workers[0].core.session_timeouts() - t1;
    assert!(idle > 0, "idle sessions have timers too");
    assert!(
        busy <= idle * 3 / 2 + 12,
        "4000 extra turns touched idle sessions: {busy} rounds, {idle} when idle"
    );
}
