//! WHEP's subscribe in the answer through the real control plane and
//! worker cores, with str0m clients, on the virtual clock: which publisher
//! a viewer gets, and its media across workers with no second offer.

mod common;

use common::Sim;
use kaskade_protocol::v1 as pb;
use kaskade_protocol::TrackId;
use kaskade_router::control::ApiError;
use std::time::Duration;
use str0m::media::MediaKind;

fn video_packets(sim: &Sim, c: usize) -> u64 {
    sim.clients[c]
        .client
        .received()
        .iter()
        .filter(|r| r.kind == Some(MediaKind::Video))
        .map(|r| r.packets)
        .sum()
}

/// A viewer's receive-only lines carry the chosen publisher's tracks
/// from the answer on, across workers, with no second offer; the other
/// publisher's tracks do not reach it.
#[test]
fn the_answer_subscribes_a_viewer_to_one_publisher() {
    let mut sim = Sim::new(3, 7);
    sim.create_room("r");
    let control = sim.control.clone();
    assert!(matches!(
        control.viewer_tracks("r", None),
        Err(ApiError::FailedPrecondition(_))
    ));
    assert!(matches!(
        control.viewer_tracks("nope", None),
        Err(ApiError::NotFound(_))
    ));
    let mut publishers = Vec::new();
    for name in ["bob", "alice"] {
        let c = sim.add_client(|c| c);
        sim.clients[c].client.add_audio();
        sim.clients[c].client.add_video(&["l", "m", "h"]);
        sim.join("r", c, name);
        publishers.push(c);
    }
    // By default the first participant in id order: alice.
    let chosen = control.viewer_tracks("r", None).unwrap();
    assert_eq!(chosen.publisher.as_str(), "alice");
    assert_eq!(chosen.tracks.len(), 2);
    let bob = control.viewer_tracks("r", Some("bob")).unwrap();
    assert!(bob.tracks.iter().all(|t| !chosen.tracks.contains(t)));
    assert!(matches!(
        control.viewer_tracks("r", Some("carol")),
        Err(ApiError::NotFound(_))
    ));

    let v = sim.add_client(|c| c);
    sim.clients[v].client.add_receiver(MediaKind::Audio);
    sim.clients[v].client.add_receiver(MediaKind::Video);
    let offer = sim.clients[v].client.create_offer().unwrap();
    let (resp, subs) = sim
        .api(control.create_session_with(
            pb::CreateSessionRequest {
                room_id: "r".into(),
                participant_id: "viewer".into(),
                sdp_offer: offer,
                metadata: String::new(),
            },
            &chosen.tracks,
        ))
        .unwrap();
    assert!(resp.tracks.is_empty(), "a viewer publishes nothing");
    assert_eq!(subs.len(), 2, "{subs:?}");
    let ids: Vec<TrackId> = subs
        .iter()
        .map(|s| TrackId::parse(&s.track_id).unwrap())
        .collect();
    assert!(ids.iter().all(|t| chosen.tracks.contains(t)));
    sim.clients[v]
        .client
        .accept_answer(&resp.sdp_answer)
        .unwrap();
    let state = control.get_session(&resp.session_id).unwrap();
    assert_eq!(state.subscriptions.len(), 2);
    assert_ne!(
        state.session.unwrap().worker,
        control
            .get_session(sim.clients[publishers[1]].session.as_ref().unwrap())
            .unwrap()
            .session
            .unwrap()
            .worker,
        "viewer and publisher on different workers (the bus carries it)"
    );
    sim.connect(&[publishers[0], publishers[1], v]);
    let got = sim.run_until(Duration::from_secs(10), |s| video_packets(s, v) > 100);
    assert!(got, "the viewer receives video: {}", video_packets(&sim, v));
    let video = sim.clients[v]
        .client
        .received()
        .iter()
        .find(|r| r.kind == Some(MediaKind::Video))
        .unwrap();
    assert_eq!(video.first_packet_keyframe, Some(true));
    let audio = sim.clients[v]
        .client
        .received()
        .iter()
        .filter(|r| r.kind == Some(MediaKind::Audio))
        .map(|r| r.packets)
        .sum::<u64>();
    assert!(audio > 0);
    // Only alice's media: every probe's source is one client.
    let sources: std::collections::BTreeSet<u32> = video
        .log
        .iter()
        .filter_map(|p| p.probe.as_ref())
        .map(|p| kaskade_loadtest::media::split_source_tag(p.source_tag).0)
        .collect();
    assert_eq!(sources.len(), 1, "{sources:?}");
}

/// A viewer that never connects is sent nothing: its streams wait for the
/// connection (str0m would otherwise queue their packets until then).
#[test]
fn a_viewer_that_never_connects_is_sent_nothing() {
    let mut sim = Sim::new(2, 9);
    sim.create_room("r");
    let p = sim.add_client(|c| c);
    sim.clients[p].client.add_audio();
    sim.clients[p].client.add_video(&[]);
    sim.join("r", p, "pub");
    sim.connect(&[p]);
    // Not part of the simulation: nothing it sends reaches the router.
    let cfg = kaskade_loadtest::ClientConfig::new("127.0.9.9:5000".parse().unwrap(), sim.t0);
    let mut stray = kaskade_loadtest::Client::new(cfg, sim.now).unwrap();
    stray.add_receiver(MediaKind::Audio);
    stray.add_receiver(MediaKind::Video);
    let offer = stray.create_offer().unwrap();
    let control = sim.control.clone();
    let tracks = control.viewer_tracks("r", None).unwrap().tracks;
    let (_, subs) = sim
        .api(control.create_session_with(
            pb::CreateSessionRequest {
                room_id: "r".into(),
                participant_id: "stray".into(),
                sdp_offer: offer,
                metadata: String::new(),
            },
            &tracks,
        ))
        .unwrap();
    assert_eq!(subs.len(), 2);
    sim.run_for(Duration::from_secs(3));
    assert!(sim.metric("kaskade_rtp_packets_received_total") > 100.0);
    assert_eq!(sim.metric("kaskade_rtp_packets_forwarded_total"), 0.0);
}

/// Without `publisher=`, a viewer gets a publisher that has connected
/// before one that never did (whose session sends nothing, for example an
/// encoder whose handshake failed, until the join timeout ends it), even
/// when the dead one comes first in id order.
#[test]
fn a_viewer_gets_a_connected_publisher_before_one_that_never_connected() {
    let mut sim = Sim::new(1, 8);
    sim.create_room("r");
    let control = sim.control.clone();
    let mut c = Vec::new();
    for name in ["a-dead", "b-live"] {
        let i = sim.add_client(|c| c);
        sim.clients[i].client.add_audio();
        sim.clients[i].client.add_video(&["l", "m", "h"]);
        sim.join("r", i, name);
        c.push(i);
    }
    // Nobody connected yet: the first in id order, as before.
    assert_eq!(
        control.viewer_tracks("r", None).unwrap().publisher.as_str(),
        "a-dead"
    );
    // a-dead's packets never arrive: only b-live connects.
    let dead = common::client_addr(c[0]);
    sim.net
        .set_from(dead, kaskade_loadtest::Link::default().loss(1.0));
    sim.connect(&[c[1]]);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        control.viewer_tracks("r", None).unwrap().publisher.as_str(),
        "b-live"
    );
    // Named, the dead one is still there to ask for.
    assert_eq!(
        control
            .viewer_tracks("r", Some("a-dead"))
            .unwrap()
            .publisher
            .as_str(),
        "a-dead"
    );
}
