//! Room-aware placement through the real control plane: a small room's
//! sessions share a worker, rooms spread evenly, a room spreads once it
//! outgrows its share, an overloaded worker takes no one; `GetRoom` and
//! the metrics show it.

mod common;

use common::{Sim, SimOptions};
use kaskade_router::control::ApiError;
use kaskade_router::media::placement::Policy;
use std::time::Duration;
use tonic::Code;

fn sim(workers: usize, seed: u64, placement: Policy) -> Sim {
    Sim::with_options(
        workers,
        seed,
        SimOptions {
            placement,
            ..Default::default()
        },
    )
}

/// Joins a participant publishing audio and video; returns its client.
fn join_publisher(sim: &mut Sim, room: &str, name: &str) -> usize {
    let c = sim.add_client(|c| c);
    sim.clients[c].client.add_audio();
    sim.clients[c].client.add_video(&[]);
    sim.join(room, c, name);
    c
}

fn workers_of(sim: &Sim, room: &str) -> Vec<u32> {
    sim.control.get_room(room).expect("room").workers
}

#[test]
fn a_small_room_shares_one_worker_and_rooms_spread_evenly() {
    let mut sim = sim(2, 31, Policy::default());
    let mut clients = Vec::new();
    for r in 0..3 {
        let room = format!("m{r}");
        sim.create_room(&room);
        for p in 0..3 {
            clients.push(join_publisher(&mut sim, &room, &format!("p{p}")));
        }
    }
    assert_eq!(workers_of(&sim, "m0"), [0]);
    assert_eq!(
        workers_of(&sim, "m1"),
        [1],
        "the next room on the other worker"
    );
    assert_eq!(workers_of(&sim, "m2"), [0]);
    // Every placement saw its room on one worker.
    assert_eq!(sim.metric("kaskade_room_workers_bucket{le=\"1\"}"), 9.0);

    // The meeting works on its one worker: everyone receives the others.
    sim.connect(&clients);
    let tracks: Vec<_> = clients[..3]
        .iter()
        .map(|c| sim.clients[*c].tracks.clone())
        .collect();
    for (i, c) in clients[..3].iter().enumerate() {
        let others: Vec<_> = tracks
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, t)| t.clone())
            .collect();
        sim.subscribe(*c, &others);
    }
    sim.run_for(Duration::from_secs(2));
    for c in &clients[..3] {
        let got: u64 = sim.clients[*c]
            .client
            .received()
            .iter()
            .map(|r| r.packets)
            .sum();
        assert!(got > 100, "client {c} received {got} packets");
    }
    assert_eq!(
        sim.metric("kaskade_bus_queue_depth"),
        0.0,
        "nothing waits on the bus"
    );
}

#[test]
fn a_room_spreads_over_workers_only_past_its_share() {
    // A share of 4 streams: with one source, 4 sessions per worker.
    let mut sim = sim(3, 32, Policy::Rooms { share: 4 });
    sim.create_room("big");
    join_publisher(&mut sim, "big", "pub");
    for i in 0..3 {
        let c = sim.add_client(|c| c);
        sim.clients[c].client.add_data_channel("k");
        sim.join("big", c, &format!("s{i}"));
    }
    assert_eq!(workers_of(&sim, "big"), [0], "4 sessions fit one worker");
    for i in 3..12 {
        let c = sim.add_client(|c| c);
        sim.clients[c].client.add_data_channel("k");
        sim.join("big", c, &format!("s{i}"));
    }
    assert_eq!(workers_of(&sim, "big"), [0, 1, 2]);
    let room = sim.control.get_room("big").expect("room");
    let mut per_worker = [0; 3];
    for s in &room.sessions {
        per_worker[s.worker as usize] += 1;
    }
    // Filled to the share one after the other, the rest evenly.
    assert_eq!(per_worker, [5, 4, 4]);
}

#[test]
fn no_session_lands_on_an_overloaded_worker() {
    let mut sim = sim(2, 33, Policy::default());
    sim.create_room("r");
    sim.set_overloaded(0, true);
    join_publisher(&mut sim, "r", "a");
    assert_eq!(workers_of(&sim, "r"), [1], "worker 0 is overloaded");
    sim.set_overloaded(1, true);
    let c = sim.add_client(|c| c);
    sim.clients[c].client.add_audio();
    let offer = sim.clients[c].client.create_offer().unwrap();
    let control = sim.control.clone();
    let request = kaskade_protocol::v1::CreateSessionRequest {
        room_id: "r".into(),
        participant_id: "b".into(),
        sdp_offer: offer,
        metadata: String::new(),
    };
    let r = sim.api(control.create_session(request.clone()));
    let e: ApiError = r.expect_err("every worker overloaded");
    assert_eq!(e.code(), Code::ResourceExhausted);
    sim.set_overloaded(0, false);
    let ok = sim
        .api(control.create_session(request))
        .expect("a worker is free again");
    assert_eq!(ok.tracks.len(), 1);
    assert_eq!(workers_of(&sim, "r"), [0, 1]);
}
