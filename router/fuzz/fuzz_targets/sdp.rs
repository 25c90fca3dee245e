//! The SDP path of the control plane, in process: `CreateSession` with an offer, `Subscribe`
//! (the router's offer) and `SetAnswer` with an answer, through the real control plane and a
//! real worker core on the test kit's virtual clock (no network).
//!
//! The input is an offer, a NUL byte, an answer. Each input:
//! 1. `CreateSession` with the offer; if it is accepted, `Subscribe` to a connected
//!    publisher's tracks and `SetAnswer` with the answer;
//! 2. `CreateSession` with a valid data-channel offer, `Subscribe`, `SetAnswer` with the
//!    answer (so the answer always reaches `SetAnswer` with an offer pending);
//! 3. `CloseSession` for both, then the router runs on for a moment.
//!
//! Checked: nothing panics (a str0m panic inside a session is caught by the worker and counted
//! as a session failure, which this target refuses too), every refusal carries a short
//! message without heap addresses, and the router still serves the publisher afterwards.
//!
//! The router and its publisher are built once per process and rebuilt every
//! [`REBUILD_EVERY`] inputs, so a crash may need the inputs before it: run the crashing input
//! alone first (`cargo fuzz run sdp <artifact>`), which starts from a fresh router.
#![no_main]

use kaskade_protocol::v1 as pb;
use kaskade_router::testkit::Sim;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::time::Duration;

const REBUILD_EVERY: u32 = 2000;

struct World {
    sim: Sim,
    publ: usize,
    tracks: Vec<String>,
    good_offer: String,
    inputs: u32,
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fn world() -> World {
    let mut sim = Sim::new(1, 21);
    sim.create_room("r");
    let publ = sim.add_client(|c| c);
    sim.clients[publ].client.add_audio();
    sim.clients[publ].client.add_video(&["l", "h"]);
    let tracks = sim.join("r", publ, "pub");
    sim.connect(&[publ]);
    let probe = sim.add_client(|c| c);
    sim.clients[probe].client.add_data_channel("k");
    let good_offer = sim.clients[probe].client.create_offer().expect("an offer");
    if let Ok(dir) = std::env::var("KASKADE_FUZZ_WRITE_SEEDS") {
        write_seeds(&mut sim, &dir, &good_offer, &tracks);
    }
    World {
        sim,
        publ,
        tracks: tracks.into_iter().map(|t| t.track_id).collect(),
        good_offer,
        inputs: 0,
    }
}

/// Real offers and answers (a browser-like client's) as seeds for the corpus.
fn write_seeds(sim: &mut Sim, dir: &str, offer: &str, tracks: &[pb::Track]) {
    let c = sim.add_client(|c| c);
    sim.clients[c].client.add_data_channel("k");
    sim.join("r", c, "seed");
    let session = sim.clients[c].session.clone().expect("joined");
    let control = sim.control.clone();
    let resp = sim
        .api(control.subscribe(pb::SubscribeRequest {
            session_id: session,
            track_ids: tracks.iter().map(|t| t.track_id.clone()).collect(),
        }))
        .expect("subscribe");
    let answer = sim.clients[c]
        .client
        .accept_offer(&resp.sdp_offer)
        .expect("answer");
    let av = sim.add_client(|c| c);
    sim.clients[av].client.add_audio();
    sim.clients[av].client.add_video(&[]);
    let av_offer = sim.clients[av].client.create_offer().expect("offer");
    std::fs::create_dir_all(dir).expect("seed dir");
    for (i, s) in [
        format!("{offer}\0{answer}"),
        format!("{av_offer}\0{answer}"),
        format!("{}\0{answer}", resp.sdp_offer),
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(format!("{dir}/seed-{i}"), s).expect("write seed");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (offer, answer) = text.split_once('\0').unwrap_or((&text, ""));
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        if w.as_ref()
            .is_none_or(|w| w.inputs >= REBUILD_EVERY || !w.sim.connected(w.publ))
        {
            *w = Some(world());
        }
        let w = w.as_mut().expect("just built");
        w.inputs += 1;
        let n = w.inputs;
        let fuzzed = session(w, &format!("f{n}"), offer, answer);
        let good_offer = w.good_offer.clone();
        let good = session(w, &format!("g{n}"), &good_offer, answer);
        let control = w.sim.control.clone();
        for s in [fuzzed, good].into_iter().flatten() {
            let _ = w.sim.api(control.close_session(&s));
        }
        w.sim.run_for(Duration::from_millis(5));
        assert_eq!(
            w.sim.metrics.session_failures.get(),
            0,
            "a session failed (str0m panicked?)"
        );
        // What the control plane was told is not looked at: keep memory flat.
        w.sim.events.clear();
    });
});

/// Creates a session with `offer`, subscribes it and answers; returns its id if created.
fn session(w: &mut World, participant: &str, offer: &str, answer: &str) -> Option<String> {
    let control = w.sim.control.clone();
    let created = w.sim.api(control.create_session(pb::CreateSessionRequest {
        room_id: "r".into(),
        participant_id: participant.into(),
        sdp_offer: offer.into(),
        metadata: String::new(),
    }));
    let resp = match created {
        Ok(r) => r,
        Err(e) => {
            check_message(&e.to_string());
            return None;
        }
    };
    let sid = resp.session_id;
    let sub = w.sim.api(control.subscribe(pb::SubscribeRequest {
        session_id: sid.clone(),
        track_ids: w.tracks.clone(),
    }));
    match sub {
        Ok(_) => {
            if let Err(e) = w.sim.api(control.set_answer(pb::SetAnswerRequest {
                session_id: sid.clone(),
                sdp_answer: answer.into(),
            })) {
                check_message(&e.to_string());
            }
        }
        Err(e) => check_message(&e.to_string()),
    }
    Some(sid)
}

fn check_message(m: &str) {
    assert!(m.len() <= 1024, "error message of {} bytes", m.len());
    assert!(
        !m.contains("PointerOffset"),
        "a heap address in an error message: {m}"
    );
}
