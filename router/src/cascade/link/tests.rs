//! Unit tests of the link-control machine alone: inputs and `now` in, outputs out.
//! (Several machines together: `tests/cascade_sim.rs`.)

use super::*;
use kaskade_protocol::cascade::frame::Msg;

fn me(id: &str, region: &str) -> NodeIdentity {
    NodeIdentity {
        node_id: id.into(),
        region: region.into(),
    }
}

fn machine(id: &str, peers: &[&str], now: Instant) -> LinkControl {
    LinkControl::new(
        me(id, &format!("eu-{id}")),
        peers.iter().map(|p| NodeId::from(*p)),
        LinkConfig::default(),
        now,
    )
}

fn drain(m: &mut LinkControl) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn frames(out: &[Output]) -> Vec<&Msg> {
    out.iter()
        .filter_map(|o| match o {
            Output::Frame { msg, .. } => Some(msg),
            _ => None,
        })
        .collect()
}

fn connect(m: &mut LinkControl, now: Instant, peer: &str, dialed: bool) -> ConnId {
    match m.handle_connected(now, &me(peer, &format!("eu-{peer}")), dialed) {
        Admission::Accept(c) => c,
        r => panic!("{r:?}"),
    }
}

#[test]
fn the_smaller_node_id_dials_at_once_the_larger_after_a_wait() {
    let t0 = Instant::now();
    let mut ams = machine("ams", &["fra"], t0);
    assert_eq!(ams.poll_timeout(), Some(t0));
    ams.handle_timeout(t0);
    assert_eq!(drain(&mut ams), vec![Output::Dial("fra".into())]);
    assert_eq!(ams.poll_timeout(), None, "one dial at a time");

    let mut fra = machine("fra", &["ams"], t0);
    let wait = LinkConfig::default().larger_id_wait;
    assert_eq!(fra.poll_timeout(), Some(t0 + wait));
    fra.handle_timeout(t0 + wait - Duration::from_millis(1));
    assert!(drain(&mut fra).is_empty());
    // ams dialled it meanwhile: no dial at all.
    connect(&mut fra, t0 + Duration::from_millis(30), "ams", false);
    drain(&mut fra);
    fra.handle_timeout(t0 + wait);
    assert!(!drain(&mut fra).contains(&Output::Dial("ams".into())));
}

#[test]
fn failed_dials_back_off_up_to_five_seconds() {
    let t0 = Instant::now();
    let mut m = machine("ams", &["fra"], t0);
    let mut t = t0;
    let mut waits = Vec::new();
    for _ in 0..7 {
        let due = m.poll_timeout().unwrap();
        waits.push((due - t).as_millis());
        t = due;
        m.handle_timeout(t);
        assert_eq!(drain(&mut m), vec![Output::Dial("fra".into())]);
        m.handle_dial_failed(t, &"fra".into());
    }
    assert_eq!(waits, [0, 250, 500, 1000, 2000, 4000, 5000]);
}

#[test]
fn of_two_connections_both_routers_keep_the_one_the_smaller_id_dialled() {
    let t0 = Instant::now();
    let mut ams = machine("ams", &["fra"], t0);
    let mut fra = machine("fra", &["ams"], t0);
    // ams's dial lands first on both.
    let mine = connect(&mut ams, t0, "fra", true);
    connect(&mut fra, t0, "ams", false);
    // Then fra's own dial completes: both refuse it.
    assert_eq!(
        ams.handle_connected(t0, &me("fra", "eu-fra"), false),
        Admission::Refuse(CloseCode::Duplicate)
    );
    assert_eq!(
        fra.handle_connected(t0, &me("ams", "eu-ams"), true),
        Admission::Refuse(CloseCode::Duplicate)
    );
    assert_eq!(ams.links()[0].conn, Some(mine));
    // The other way round: fra's dial came first and is replaced by ams's.
    let mut fra = machine("fra", &["ams"], t0);
    let first = connect(&mut fra, t0, "ams", true);
    drain(&mut fra);
    let second = connect(&mut fra, t0, "ams", false);
    let out = drain(&mut fra);
    assert!(out.contains(&Output::Close {
        peer: "ams".into(),
        conn: first,
        code: CloseCode::Duplicate
    }));
    assert_eq!(fra.links()[0].conn, Some(second));
    assert_eq!(
        fra.links()[0].reconnects,
        0,
        "a duplicate replaced is no reconnect"
    );
}

#[test]
fn a_peer_that_restarted_before_its_old_connection_died_counts_as_a_reconnect() {
    let t0 = Instant::now();
    let mut fra = machine("fra", &["ams"], t0);
    let first = connect(&mut fra, t0, "ams", false);
    drain(&mut fra);
    // ams restarts and dials again while fra still holds the dead
    // connection (QUIC's idle timeout has not fired yet).
    let later = t0 + Duration::from_secs(30);
    let second = connect(&mut fra, later, "ams", false);
    let out = drain(&mut fra);
    assert!(out.contains(&Output::Close {
        peer: "ams".into(),
        conn: first,
        code: CloseCode::Duplicate
    }));
    assert_eq!(fra.links()[0].conn, Some(second));
    assert_eq!(fra.links()[0].reconnects, 1);
    // The same when the restarted peer is the larger id, whose dial the
    // smaller one would refuse in a dial race.
    let mut ams = machine("ams", &["fra"], t0);
    connect(&mut ams, t0, "fra", true);
    drain(&mut ams);
    let again = connect(&mut ams, later, "fra", false);
    drain(&mut ams);
    assert_eq!(ams.links()[0].conn, Some(again));
    assert_eq!(ams.links()[0].reconnects, 1);
}

#[test]
fn a_router_that_reaches_itself_is_refused() {
    let t0 = Instant::now();
    let mut m = machine("ams", &[], t0);
    assert_eq!(
        m.handle_connected(t0, &me("ams", "eu-ams"), true),
        Admission::Refuse(CloseCode::SelfLink)
    );
}

#[test]
fn a_link_starts_with_hello_and_the_hosted_rooms_the_policy_allows() {
    let t0 = Instant::now();
    let mut m = machine("ams", &["fra"], t0);
    m.room_created(RoomId::parse("open").unwrap(), vec![]);
    m.room_created(RoomId::parse("nl").unwrap(), vec!["eu-nl-".into()]);
    m.room_created(RoomId::parse("fra").unwrap(), vec!["eu-fra".into()]);
    drain(&mut m);
    connect(&mut m, t0, "fra", true);
    let out = drain(&mut m);
    let f = frames(&out);
    assert!(matches!(f[0], Msg::Hello(h) if h.node_id == "ams" && h.version == cpb::LINK_VERSION));
    match f[1] {
        Msg::HostedRooms(h) => {
            assert!(h.reset);
            assert_eq!(h.added, ["fra", "open"], "not the room limited to eu-nl-");
        }
        m => panic!("{m:?}"),
    }
}

#[test]
fn a_hello_with_another_version_or_name_closes_the_link() {
    let t0 = Instant::now();
    for (node_id, version) in [("fra", cpb::LINK_VERSION + 1), ("par", cpb::LINK_VERSION)] {
        let mut m = machine("ams", &["fra"], t0);
        let conn = connect(&mut m, t0, "fra", true);
        drain(&mut m);
        m.handle_frame(
            t0,
            &"fra".into(),
            conn,
            Msg::Hello(cpb::Hello {
                version,
                node_id: node_id.into(),
                region: String::new(),
            }),
        );
        let out = drain(&mut m);
        assert!(out.contains(&Output::Close {
            peer: "fra".into(),
            conn,
            code: CloseCode::Hello
        }));
        assert!(out.iter().any(|o| matches!(o, Output::LinkDown { .. })));
        assert_eq!(m.links()[0].conn, None);
    }
}

#[test]
fn frames_of_a_connection_that_is_gone_are_ignored() {
    let t0 = Instant::now();
    let mut m = machine("ams", &["fra"], t0);
    let old = connect(&mut m, t0, "fra", true);
    m.handle_disconnected(t0, &"fra".into(), old);
    connect(&mut m, t0, "fra", true);
    drain(&mut m);
    m.handle_frame(
        t0,
        &"fra".into(),
        old,
        Msg::LinkRoom(cpb::LinkRoom {
            room_id: "r".into(),
            allowed_regions: vec![],
            path: vec!["fra".into()],
        }),
    );
    assert!(drain(&mut m).is_empty());
}

/// ams with room "r" linked to fra (fra asked), ready for fra's announcements.
fn linked(t0: Instant) -> (LinkControl, ConnId) {
    let mut m = machine("ams", &["fra"], t0);
    m.room_created(RoomId::parse("r").unwrap(), vec![]);
    let conn = connect(&mut m, t0, "fra", true);
    m.handle_frame(
        t0,
        &"fra".into(),
        conn,
        Msg::LinkRoom(cpb::LinkRoom {
            room_id: "r".into(),
            allowed_regions: vec![],
            path: vec!["fra".into()],
        }),
    );
    let out = drain(&mut m);
    assert!(frames(&out)
        .iter()
        .any(|f| matches!(f, Msg::LinkRoomReply(r) if r.accepted)));
    (m, conn)
}

fn announce(num: u32, path: &[&str]) -> Msg {
    Msg::TrackAnnounce(cpb::TrackAnnounce {
        room_id: "r".into(),
        link_track: num,
        kind: 2,
        rids: vec!["l".into(), "h".into()],
        path: path.iter().map(|s| s.to_string()).collect(),
        participant_id: "alice".into(),
        origin_track_id: format!("TR{num:016x}"),
    })
}

#[test]
fn an_announced_track_is_published_routed_and_asked_for_on_demand() {
    let t0 = Instant::now();
    let (mut m, conn) = linked(t0);
    m.handle_frame(t0, &"fra".into(), conn, announce(1, &["fra"]));
    let out = drain(&mut m);
    let Some(Output::AddRemoteTrack(t)) =
        out.iter().find(|o| matches!(o, Output::AddRemoteTrack(_)))
    else {
        panic!("{out:?}")
    };
    let id = t.local_id();
    assert!(out.contains(&Output::RxRoute {
        link: LinkId(0),
        conn,
        num: 1,
        route: Some((id, MediaKind::Video)),
    }));
    m.remote_demand(id, 0b10);
    m.remote_keyframe(id, 1);
    let out = drain(&mut m);
    assert!(
        matches!(frames(&out)[..], [Msg::Subscribe(s), Msg::KeyframeRequest(k)]
        if s.layer_mask == 0b10 && s.link_track == 1 && k.layer == 1)
    );
    // Withdrawn: gone here too.
    m.handle_frame(
        t0,
        &"fra".into(),
        conn,
        Msg::TrackWithdraw(cpb::TrackWithdraw { link_track: 1 }),
    );
    assert!(drain(&mut m).contains(&Output::RemoveRemoteTrack(id)));
}

#[test]
fn bad_announcements_are_ignored_and_counted() {
    let t0 = Instant::now();
    let (mut m, conn) = linked(t0);
    let long: Vec<String> = (0..=MAX_PATH).map(|i| format!("n{i}")).collect();
    let bad = [
        announce(1, &[]),
        announce(2, &["par"]),         // does not end with the sender
        announce(3, &["Fra!", "fra"]), // not a node id
        announce(
            4,
            &long
                .iter()
                .map(String::as_str)
                .chain(["fra"])
                .collect::<Vec<_>>(),
        ),
        Msg::TrackAnnounce(cpb::TrackAnnounce {
            kind: 9,
            ..match announce(5, &["fra"]) {
                Msg::TrackAnnounce(a) => a,
                _ => unreachable!(),
            }
        }),
        Msg::TrackAnnounce(cpb::TrackAnnounce {
            room_id: "other".into(),
            ..match announce(6, &["fra"]) {
                Msg::TrackAnnounce(a) => a,
                _ => unreachable!(),
            }
        }),
        Msg::Subscribe(cpb::Subscribe {
            link_track: 77,
            layer_mask: 1,
        }),
        Msg::KeyframeRequest(cpb::KeyframeRequest {
            link_track: 77,
            layer: 0,
        }),
        Msg::Nack(cpb::Nack {
            link_track: 77,
            layer: 0,
            seqs: vec![1],
        }),
        Msg::TrackWithdraw(cpb::TrackWithdraw { link_track: 77 }),
    ];
    let n = bad.len() as u64;
    for f in bad {
        m.handle_frame(t0, &"fra".into(), conn, f);
    }
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.links()[0].ignored, n);
    // A track that crossed this router already is not taken back.
    m.handle_frame(t0, &"fra".into(), conn, announce(8, &["ams", "fra"]));
    assert!(drain(&mut m).is_empty());
}

#[test]
fn link_room_answers_at_once_what_it_can() {
    let t0 = Instant::now();
    let mut m = machine("ams", &["fra"], t0);
    let r = RoomId::parse("r").unwrap();
    let reply = |m: &mut LinkControl| match drain(m).pop() {
        Some(Output::Reply { result, .. }) => result,
        o => panic!("{o:?}"),
    };
    m.link_room(t0, r.clone(), "fra".into(), RequestId(1));
    assert!(
        matches!(reply(&mut m), Err(ApiError::NotFound(_))),
        "no such room"
    );
    m.room_created(r.clone(), vec!["eu-ams".into()]);
    drain(&mut m);
    m.link_room(t0, r.clone(), "nobody".into(), RequestId(2));
    assert!(
        matches!(reply(&mut m), Err(ApiError::NotFound(_))),
        "unknown peer"
    );
    m.link_room(t0, r.clone(), "ams".into(), RequestId(3));
    assert!(matches!(reply(&mut m), Err(ApiError::InvalidArgument(_))));
    connect(&mut m, t0, "fra", true);
    drain(&mut m);
    m.link_room(t0, r, "fra".into(), RequestId(4));
    let out = drain(&mut m);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::LinkRefused {
            decided_by: Decider::Local,
            ..
        }
    )));
    assert!(matches!(
        out.last(),
        Some(Output::Reply {
            result: Err(ApiError::PermissionDenied(_)),
            ..
        })
    ));
    assert!(frames(&out).is_empty(), "nothing about the room crossed");
}

#[test]
fn a_flood_of_keyframe_requests_passes_one_per_interval() {
    let t0 = Instant::now();
    let (mut m, conn) = linked(t0);
    let track = TrackId(5);
    m.track_published(&TrackInfo {
        id: track,
        kind: MediaKind::Video,
        room: RoomId::parse("r").unwrap(),
        session: kaskade_protocol::SessionId(1),
        participant: kaskade_protocol::ParticipantId::parse("bob").unwrap(),
        worker: crate::media::WorkerId(0),
        mid: str0m::media::Mid::from("0"),
        rids: vec![],
        path: vec![],
    });
    let out = drain(&mut m);
    let num = frames(&out)
        .iter()
        .find_map(|f| match f {
            Msg::TrackAnnounce(a) => Some(a.link_track),
            _ => None,
        })
        .unwrap();
    let mut passed = 0;
    for ms in 0..1000u64 {
        m.handle_frame(
            t0 + Duration::from_millis(ms),
            &"fra".into(),
            conn,
            Msg::KeyframeRequest(cpb::KeyframeRequest {
                link_track: num,
                layer: 0,
            }),
        );
        passed += drain(&mut m)
            .iter()
            .filter(|o| matches!(o, Output::RequestKeyframe { .. }))
            .count();
    }
    assert_eq!(passed, 10, "one per 100 ms over a second");
}

use crate::control::ApiError;
use crate::media::TrackInfo;
use str0m::media::MediaKind;

#[test]
fn a_link_room_call_without_reply_is_answered_and_a_late_reply_still_links() {
    let t0 = Instant::now();
    let mut m = machine("ams", &["fra"], t0);
    let r = RoomId::parse("r").unwrap();
    m.room_created(r.clone(), vec![]);
    let conn = connect(&mut m, t0, "fra", true);
    drain(&mut m);
    m.link_room(t0, r.clone(), "fra".into(), RequestId(1));
    assert!(matches!(frames(&drain(&mut m))[..], [Msg::LinkRoom(_)]));
    let deadline = t0 + LinkConfig::default().link_timeout;
    assert_eq!(m.poll_timeout(), Some(deadline));
    m.handle_timeout(deadline);
    assert!(matches!(
        drain(&mut m)[..],
        [Output::Reply {
            req: RequestId(1),
            result: Err(ApiError::Unavailable(_))
        }]
    ));
    m.handle_frame(
        deadline,
        &"fra".into(),
        conn,
        Msg::LinkRoomReply(cpb::LinkRoomReply {
            room_id: "r".into(),
            accepted: true,
            reason: String::new(),
        }),
    );
    let out = drain(&mut m);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::LinkChanged { up: true, .. })));
    assert_eq!(m.links()[0].rooms, [r]);
}

#[test]
fn many_hosted_rooms_are_told_in_frames_of_bounded_size() {
    let t0 = Instant::now();
    let mut m = machine("ams", &["fra"], t0);
    for i in 0..5000 {
        m.room_created(RoomId::parse(&format!("room-{i:04}")).unwrap(), vec![]);
    }
    connect(&mut m, t0, "fra", true);
    let out = drain(&mut m);
    let told: Vec<&cpb::HostedRooms> = frames(&out)
        .into_iter()
        .filter_map(|f| match f {
            Msg::HostedRooms(h) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(told.len(), 3);
    assert!(told[0].reset && !told[1].reset && !told[2].reset);
    assert_eq!(told.iter().map(|h| h.added.len()).sum::<usize>(), 5000);
    for h in told {
        let bytes = prost::Message::encoded_len(h);
        assert!(
            bytes < kaskade_protocol::cascade::framing::MAX_FRAME_LEN / 2,
            "{bytes}"
        );
    }
}
