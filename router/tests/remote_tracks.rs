//! Tracks published on another router (announced over a link) in the
//! simulation: what the router asks the link for, and in which order.

mod common;

use common::Sim;
use kaskade_protocol::v1 as pb;
use kaskade_router::control::RemoteTrack;
use kaskade_router::media::WorkerEvent;
use std::time::Duration;
use str0m::media::MediaKind;

/// A subscriber's first keyframe request for a remote track goes out after
/// a demand that includes the requested layer. The origin relays only
/// demanded layers: a keyframe it sent before the demand arrived would be
/// lost, and the subscriber would wait for its retry (~350 ms). Demand alone
/// would only follow at the next 100 ms tick.
#[test]
fn a_remote_keyframe_request_follows_a_demand_for_its_layer() {
    let mut sim = Sim::new(2, 21);
    sim.create_room("r");
    let info = sim
        .control
        .add_remote_track(RemoteTrack {
            room: kaskade_protocol::RoomId::parse("r").unwrap(),
            path: vec!["fra".into()],
            origin_track_id: "TR0000000000000001".into(),
            participant: "alice".into(),
            kind: MediaKind::Video,
            rids: vec!["l".into(), "m".into(), "h".into()],
        })
        .expect("room exists");
    sim.pump();
    let sub = sim.add_client(|c| c);
    sim.clients[sub].client.add_data_channel("k");
    sim.join("r", sub, "bob");
    sim.connect(&[sub]);
    sim.events.clear();
    let track = pb::Track {
        track_id: info.id.to_string(),
        ..Default::default()
    };
    sim.subscribe(sub, &[track]);
    sim.run_for(Duration::from_millis(50));

    let mut demanded = 0u32;
    let mut requests = 0;
    for ev in &sim.events {
        match ev {
            WorkerEvent::RemoteDemand { track, mask } if *track == info.id => demanded = *mask,
            WorkerEvent::RemoteKeyframe { track, layer } if *track == info.id => {
                requests += 1;
                assert!(
                    demanded & (1 << layer) != 0,
                    "keyframe request for layer {layer} before a demand for it (demand {demanded:#b})"
                );
            }
            _ => {}
        }
    }
    assert!(
        requests >= 1,
        "the subscriber's keyframe was asked for over the link"
    );
}
