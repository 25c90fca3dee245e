//! Checks on what a simulated subscriber received, shared by the tests.

use kaskade_loadtest::MediaRecv;
use kaskade_protocol::v1 as pb;

/// The subscriber's media line of `track`.
pub(crate) fn mid_of(subs: &[pb::Subscription], track: &pb::Track) -> str0m::media::Mid {
    let s = subs
        .iter()
        .find(|s| s.track_id == track.track_id)
        .expect("subscription for track");
    s.mid.as_str().into()
}

/// What simulated client `c`, subscribed as `subs`, received of `track`.
pub(crate) fn received<'a>(
    sim: &'a kaskade_router::testkit::Sim,
    c: usize,
    subs: &[pb::Subscription],
    track: &pb::Track,
) -> &'a MediaRecv {
    sim.clients[c]
        .client
        .received_on(mid_of(subs, track))
        .expect("media on the subscribed line")
}

/// When simulated client `c` completed its first frame of `video`,
/// subscribed as `subs`.
pub(crate) fn first_frame_at(
    sim: &kaskade_router::testkit::Sim,
    c: usize,
    subs: &[pb::Subscription],
    video: &pb::Track,
) -> std::time::Instant {
    received(sim, c, subs, video)
        .first_frame_at
        .expect("a first frame")
}

/// The track of `kind` among `tracks`.
pub(crate) fn track(tracks: &[pb::Track], kind: pb::TrackKind) -> pb::Track {
    tracks
        .iter()
        .find(|t| t.kind == kind as i32)
        .cloned()
        .expect("track of kind")
}

/// The layer (0 low .. 2 high) a received packet came from, via its probe.
pub(crate) fn layer(p: &kaskade_loadtest::RecvPacket) -> u8 {
    kaskade_loadtest::media::split_source_tag(p.probe.as_ref().expect("probe").source_tag).2
}

/// Every layer change in the subscriber's stream starts on a keyframe, and
/// the stream stays one continuous stream: one SSRC, no sequence gap across
/// a switch, timestamps never backwards, and for VP8 (a stream whose first
/// packet has a VP8 descriptor) picture ids continuous. The log is taken in
/// sequence order (retransmissions arrive late). Returns the number of
/// switches.
pub(crate) fn assert_clean_switches(r: &MediaRecv) -> usize {
    let mut log: Vec<&kaskade_loadtest::RecvPacket> = r.log.iter().collect();
    log.sort_by_key(|p| p.seq);
    log.dedup_by_key(|p| p.seq);
    let vp8 = log.first().is_some_and(|p| p.vp8.is_some());
    let mut switches = 0;
    for w in log.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(a.ssrc, b.ssrc, "one SSRC");
        assert!(
            (b.rtp_timestamp.wrapping_sub(a.rtp_timestamp) as i32) >= 0,
            "timestamps never go backwards ({} -> {})",
            a.rtp_timestamp,
            b.rtp_timestamp
        );
        if layer(a) != layer(b) {
            switches += 1;
            assert!(
                b.is_keyframe_start,
                "switch {}→{} starts on a keyframe",
                layer(a),
                layer(b)
            );
            assert_eq!(b.seq, a.seq + 1, "no sequence gap across a switch");
            if !vp8 {
                continue;
            }
            let (pa, pb) = (
                a.vp8.unwrap().picture_id.unwrap(),
                b.vp8.unwrap().picture_id.unwrap(),
            );
            assert_eq!(
                (pa + 1) % 32768,
                pb,
                "picture id continues across the switch"
            );
        } else if vp8 && b.seq == a.seq + 1 {
            let (da, db) = (a.vp8.unwrap(), b.vp8.unwrap());
            let (pa, pb) = (da.picture_id.unwrap(), db.picture_id.unwrap());
            if db.start && db.partition == 0 {
                assert_eq!((pa + 1) % 32768, pb, "picture ids continuous");
            } else {
                assert_eq!(pa, pb, "one picture id per frame");
            }
        }
    }
    switches
}
