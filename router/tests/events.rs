//! Router-wide events and active speakers, through the real control plane
//! and worker cores, str0m clients sending audio with scripted levels, on
//! the virtual clock.

mod common;

use common::Sim;
use kaskade_protocol::v1 as pb;
use kaskade_router::control::events::{kind_name, watch_stream, EventFilter};
use pb::event::Kind;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;

/// Room "r" with a silent audio publisher per name, connected; returns
/// each one's client and track.
fn speakers_room(sim: &mut Sim, names: &[&str]) -> Vec<(usize, kaskade_loadtest::TrackId)> {
    sim.create_room("r");
    let mut out = Vec::new();
    for name in names {
        let c = sim.add_client(|c| c);
        let t = sim.clients[c].client.add_audio();
        // Silence until the script says otherwise.
        sim.clients[c].client.set_audio_level(t, Some(-127));
        sim.join("r", c, name);
        out.push((c, t));
    }
    let cs: Vec<usize> = out.iter().map(|p| p.0).collect();
    sim.connect(&cs);
    out
}

/// Everything the receiver holds now.
fn drain(rx: &mut broadcast::Receiver<pb::Event>) -> Vec<pb::Event> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push(ev);
    }
    out
}

/// Runs `d` of virtual time, letting the control plane send the speaker
/// events its rate limit held back (the server does this on a timer).
fn run(sim: &mut Sim, d: Duration) {
    let end = sim.now + d;
    while sim.now < end {
        sim.run_for(Duration::from_millis(20));
        sim.control.poll_speakers(sim.now);
    }
}

/// (virtual ms since `t0`, participants in order) of each
/// active_speakers_changed.
fn speaker_lists(evs: &[pb::Event], t0_ms: u64) -> Vec<(u64, Vec<String>)> {
    evs.iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::ActiveSpeakersChanged(a)) => Some((
                e.at_unix_ms.saturating_sub(t0_ms),
                a.speakers
                    .iter()
                    .map(|s| s.participant_id.clone())
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn active_speakers_follow_scripted_levels_with_hysteresis() {
    let mut sim = Sim::new(2, 7);
    let parts = speakers_room(&mut sim, &["alice", "bob", "carol"]);
    let mut events = sim.control.watch("r").unwrap().events;
    run(&mut sim, Duration::from_secs(1));
    let quiet = drain(&mut events);
    assert!(
        speaker_lists(&quiet, 0).is_empty(),
        "nobody speaks yet: {quiet:?}"
    );

    // The events carry wall-clock times; the script's steps are told
    // apart by the order of the lists instead.
    let say = |sim: &mut Sim, who: usize, level: i8| {
        let (c, t) = parts[who];
        sim.clients[c].client.set_audio_level(t, Some(level));
    };
    // Alice talks.
    say(&mut sim, 0, -30);
    run(&mut sim, Duration::from_secs(1));
    // Bob talks at about her level: listed after her, never ahead.
    say(&mut sim, 1, -28);
    run(&mut sim, Duration::from_secs(2));
    // Carol is much louder: first.
    say(&mut sim, 2, -10);
    run(&mut sim, Duration::from_secs(1));
    // Alice stops (after the hangover she is gone from the list).
    say(&mut sim, 0, -127);
    run(&mut sim, Duration::from_secs(2));
    // Everybody stops.
    say(&mut sim, 1, -127);
    say(&mut sim, 2, -127);
    run(&mut sim, Duration::from_secs(2));

    let evs = drain(&mut events);
    let lists: Vec<Vec<String>> = speaker_lists(&evs, 0).into_iter().map(|(_, l)| l).collect();
    let want: Vec<Vec<&str>> = vec![
        vec!["alice"],
        vec!["alice", "bob"],
        vec!["carol", "alice", "bob"],
        vec!["carol", "bob"],
    ];
    assert_eq!(lists[..4], want, "{lists:?}");
    // Bob and Carol stop together; their workers may tell a tick apart.
    let rest = &lists[4..];
    assert_eq!(rest.last(), Some(&vec![]), "{lists:?}");
    assert!(
        rest.len() == 1 || (rest.len() == 2 && rest[0].len() == 1),
        "{lists:?}"
    );
    let levels: Vec<u32> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::ActiveSpeakersChanged(a)) => a.speakers.first().map(|s| s.level),
            _ => None,
        })
        .collect();
    assert_eq!(levels[0], 97, "alice at -30 dBov");
    assert_eq!(levels[2], 117, "carol at -10 dBov");
}

#[test]
fn speaker_events_come_at_most_every_300_ms() {
    let mut sim = Sim::new(1, 9);
    let parts = speakers_room(&mut sim, &["a", "b"]);
    let mut events = sim.control.watch("r").unwrap().events;
    // Two speakers taking turns every 250 ms: faster than the events may come.
    let start = sim.now;
    let mut emitted_at = Vec::new();
    for i in 0..24 {
        let (loud, quiet) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        let (c, t) = parts[loud];
        sim.clients[c].client.set_audio_level(t, Some(-5));
        let (c, t) = parts[quiet];
        sim.clients[c].client.set_audio_level(t, Some(-60));
        let step_end = sim.now + Duration::from_millis(250);
        while sim.now < step_end {
            sim.run_for(Duration::from_millis(10));
            sim.control.poll_speakers(sim.now);
            for ev in drain(&mut events) {
                if matches!(ev.kind, Some(Kind::ActiveSpeakersChanged(_))) {
                    emitted_at.push(sim.now - start);
                }
            }
        }
    }
    assert!(emitted_at.len() >= 2, "{emitted_at:?}");
    for w in emitted_at.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(290),
            "events {:?} and {:?} too close: {emitted_at:?}",
            w[0],
            w[1]
        );
    }
}

#[tokio::test]
async fn router_wide_watchers_see_every_room_through_their_filter() {
    let mut sim = Sim::new(2, 3);
    let all = sim.control.watch("").expect("router-wide").events;
    let filter = EventFilter::parse(&["session_connected", "session_closed"]).unwrap();
    let only_sessions = sim.control.watch("").expect("router-wide").events;
    sim.create_room("a");
    sim.create_room("b");
    let mut cs = Vec::new();
    for (room, who) in [("a", "ann"), ("b", "ben")] {
        let c = sim.add_client(|c| c);
        sim.clients[c].client.add_audio();
        sim.join(room, c, who);
        cs.push(c);
    }
    sim.connect(&cs);
    for c in &cs {
        let sid = sim.clients[*c].session.clone().unwrap();
        let control = sim.control.clone();
        sim.api(control.close_session(&sid)).unwrap();
    }
    // Dropping the control plane's senders ends the streams.
    drop(sim);

    let got: Vec<pb::Event> = watch_stream("", all, EventFilter::ALL).collect().await;
    let seen: Vec<(String, &str)> = got
        .iter()
        .map(|e| (e.room_id.clone(), kind_name(e.kind.as_ref().unwrap())))
        .collect();
    assert_eq!(seen[0], (String::new(), "watching"));
    for room in ["a", "b"] {
        for kind in ["track_published", "session_connected", "session_closed"] {
            assert!(
                seen.contains(&(room.to_string(), kind)),
                "{room} {kind} missing from {seen:?}"
            );
        }
    }
    let filtered: Vec<pb::Event> = watch_stream("", only_sessions, filter).collect().await;
    let kinds: Vec<&str> = filtered
        .iter()
        .map(|e| kind_name(e.kind.as_ref().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            "watching",
            "session_connected",
            "session_connected",
            "session_closed",
            "session_closed"
        ]
    );
    // Who joined: the participant id comes with the event.
    let Some(Kind::SessionConnected(c)) = &filtered[1].kind else {
        unreachable!()
    };
    assert!(["ann", "ben"].contains(&c.participant_id.as_str()));
}
