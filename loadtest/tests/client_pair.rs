//! Two clients connected through `SimNet` on a virtual clock: A publishes audio and
//! 3-layer VP8 simulcast (or H.264), B answers the sendonly offer and receives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kaskade_loadtest::{
    Client, ClientConfig, Link, MediaRecv, SimNet, TrackId, VideoCodec,
    BROWSER_KEYFRAME_MIN_INTERVAL,
};
use str0m::media::{MediaKind, Mid};

const RIDS: [&str; 3] = ["q", "h", "f"];

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// The two clients, the network and the virtual clock.
struct Sim {
    now: Instant,
    net: SimNet,
    clients: Vec<Client>,
}

impl Sim {
    /// Processes everything due at `now`, then advances `now` to the next event.
    fn step(&mut self) {
        let now = self.now;
        while let Some(d) = self.net.poll_deliver(now) {
            if let Some(c) = self.clients.iter_mut().find(|c| c.local_addr() == d.dst) {
                c.handle_receive(now, d.src, &d.data);
            }
        }
        for c in &mut self.clients {
            if c.next_timeout() <= now {
                c.handle_timeout(now);
            }
            while let Some(d) = c.poll_transmit() {
                self.net.send(now, d);
            }
        }
        let mut next = self.clients.iter().map(Client::next_timeout).min();
        if let Some(d) = self.net.next_delivery() {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        // Never stand still (the client already re-feeds str0m timeouts equal to `now`).
        let floor = now + Duration::from_micros(10);
        self.now = next.map_or(floor, |n| n.max(floor));
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    fn run_until(&mut self, limit: Duration, mut f: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if f(self) {
                return true;
            }
            self.step();
        }
        false
    }
}

struct Pair {
    sim: Sim,
    audio: TrackId,
    video: TrackId,
    audio_mid: Mid,
    video_mid: Mid,
}

const A: usize = 0;
const B: usize = 1;

/// A offers audio + video (`rids` simulcast), B answers, both connect.
fn connected_pair(codec: VideoCodec, rids: &[&str], seed: u64) -> Pair {
    connected_pair_with(codec, rids, seed, 0.0, None, None)
}

/// Like [`connected_pair`] with `loss` on A → B from the start, B's automatic
/// keyframe requests and A's minimum interval between keyframes on request.
fn connected_pair_with(
    codec: VideoCodec,
    rids: &[&str],
    seed: u64,
    loss: f64,
    auto_pli: Option<Duration>,
    keyframe_min: Option<Duration>,
) -> Pair {
    let t0 = Instant::now();
    let a_addr = addr("10.0.0.1:5000");
    let b_addr = addr("10.0.0.2:6000");
    let mut a = Client::new(
        ClientConfig::new(a_addr, t0)
            .seed(seed)
            .video_codec(codec)
            .packet_log(100_000)
            .keyframe_min_interval(keyframe_min),
        t0,
    )
    .expect("client a");
    let mut b = Client::new(
        ClientConfig::new(b_addr, t0)
            .seed(seed + 1)
            .video_codec(codec)
            .packet_log(100_000)
            .auto_keyframe_request(auto_pli),
        t0,
    )
    .expect("client b");

    let audio = a.add_audio();
    let video = a.add_video(rids);
    let offer = a.create_offer().expect("offer");
    if !rids.is_empty() {
        assert!(
            offer.contains(&format!("a=simulcast:send {}", rids.join(";"))),
            "offer:\n{offer}"
        );
    }
    let answer = b.accept_offer(&offer).expect("answer");
    a.accept_answer(&answer).expect("accept answer");
    let audio_mid = a.track_mid(audio).expect("audio mid");
    let video_mid = a.track_mid(video).expect("video mid");

    let mut net = SimNet::new(seed);
    let delay = Link::with_delay(Duration::from_millis(20));
    net.set_pair(a_addr, b_addr, delay.loss(loss));
    net.set_pair(b_addr, a_addr, delay);

    let mut sim = Sim {
        now: t0,
        net,
        clients: vec![a, b],
    };
    let ok = sim.run_until(Duration::from_secs(5), |s| {
        s.clients.iter().all(Client::is_connected)
    });
    assert!(ok, "not connected: {:?}", sim.clients);
    // B learnt the mids from the offer.
    let mids = sim.clients[B].receiving_mids();
    assert!(mids.contains(&(audio_mid, MediaKind::Audio)), "{mids:?}");
    assert!(mids.contains(&(video_mid, MediaKind::Video)), "{mids:?}");
    Pair {
        sim,
        audio,
        video,
        audio_mid,
        video_mid,
    }
}

fn recv(p: &Pair, mid: Mid) -> &MediaRecv {
    p.sim.clients[B].received_on(mid).expect("received on mid")
}

#[test]
fn audio_and_simulcast_arrive_intact_keyframe_first() {
    let mut p = connected_pair(VideoCodec::Vp8, &RIDS, 1);
    p.sim.run_for(Duration::from_secs(3));

    let a = &p.sim.clients[A];
    let b = &p.sim.clients[B];
    assert_eq!(a.errors(), 0, "{:?}", a.last_error());
    assert_eq!(b.errors(), 0, "{:?}", b.last_error());

    // Audio: ~150 packets in 3 s, every one probed, none lost.
    let audio = recv(&p, p.audio_mid);
    assert!(
        (140..=155).contains(&audio.packets),
        "audio packets {}",
        audio.packets
    );
    assert_eq!(audio.unprobed, 0);
    assert_eq!(audio.lost(), 0);
    assert_eq!(audio.sources.len(), 1);
    let lat = audio.latency.mean().expect("latency");
    assert!(
        lat >= Duration::from_millis(20) && lat < Duration::from_millis(30),
        "{lat:?}"
    );

    // Video: all three layers, probes intact, keyframe first, first frame complete.
    let video = recv(&p, p.video_mid);
    assert_eq!(video.streams.len(), 3, "{:?}", video.streams);
    assert_eq!(video.unprobed, 0);
    assert_eq!(video.lost(), 0, "{:?}", video.sources);
    assert_eq!(video.sources.len(), 3);
    assert_eq!(video.first_packet_keyframe, Some(true));
    assert!(video.time_to_first_frame().is_some());
    let sent = a.track_stats(p.video).expect("track stats");
    for (i, rid) in RIDS.iter().enumerate() {
        let s = video
            .stream_by_rid(rid)
            .unwrap_or_else(|| panic!("layer {rid}"));
        assert_eq!(s.first_packet_keyframe, Some(true), "layer {rid}");
        assert!(s.first_frame_at.is_some(), "layer {rid}");
        let layer = &sent.layers[i];
        assert_eq!(layer.no_stream, 0);
        // Everything sent, except what is still in flight, arrived.
        assert!(
            s.packets + 60 >= layer.packets_sent && s.packets <= layer.packets_sent,
            "layer {rid}: sent {} received {}",
            layer.packets_sent,
            s.packets
        );
        // The first logged packet of the layer is a keyframe start, with its probe.
        let first = video
            .log
            .iter()
            .find(|e| e.rid.map(|r| &*r == *rid).unwrap_or(false))
            .expect("logged");
        assert!(first.is_keyframe_start);
        assert_eq!(first.probe.map(|pr| pr.packet_index), Some(0));
    }
    // Layers are ordered by bitrate.
    let bytes: Vec<u64> = RIDS
        .iter()
        .map(|r| video.stream_by_rid(r).map_or(0, |s| s.bytes))
        .collect();
    assert!(bytes[0] < bytes[1] && bytes[1] < bytes[2], "{bytes:?}");
    // ~1.5 Mbps on the top layer (keyframes make short runs a bit heavier).
    let top_bps = bytes[2] as f64 * 8.0 / 3.0;
    assert!((1_000_000.0..2_500_000.0).contains(&top_bps), "{top_bps}");
    // Sequence numbers of each layer are contiguous.
    for rid in RIDS {
        let seqs: Vec<u64> = video
            .log
            .iter()
            .filter(|e| e.rid.map(|r| &*r == rid).unwrap_or(false))
            .map(|e| e.seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "layer {rid}");
    }
    assert_eq!(a.keyframe_requests(p.audio, None), 0);
}

#[test]
fn pli_reaches_the_publisher_layer_and_yields_a_keyframe() {
    let mut p = connected_pair(VideoCodec::Vp8, &RIDS, 3);
    p.sim.run_for(Duration::from_secs(1));
    let before = recv(&p, p.video_mid)
        .stream_by_rid("h")
        .expect("layer h")
        .keyframes;
    assert_eq!(before, 1);
    let vmid = p.video_mid;
    assert!(p.sim.clients[B].request_keyframe(vmid, Some("h".into())));
    p.sim.run_for(Duration::from_millis(300));
    let a = &p.sim.clients[A];
    assert_eq!(a.keyframe_requests(p.video, Some("h")), 1);
    assert_eq!(a.keyframe_requests(p.video, Some("q")), 0);
    assert_eq!(a.keyframe_requests(p.video, Some("f")), 0);
    let video = recv(&p, vmid);
    assert_eq!(video.stream_by_rid("h").expect("h").keyframes, 2);
    assert_eq!(video.stream_by_rid("q").expect("q").keyframes, 1);
    assert_eq!(video.keyframe_requests_sent, 1);
    let stats = a.track_stats(p.video).expect("stats");
    assert_eq!(stats.layers[1].source.requested_keyframes, 1);
}

#[test]
fn a_browser_like_publisher_ignores_keyframe_requests_closer_than_300_ms() {
    let mut p = connected_pair_with(
        VideoCodec::Vp8,
        &RIDS,
        5,
        0.0,
        None,
        Some(BROWSER_KEYFRAME_MIN_INTERVAL),
    );
    p.sim.run_for(Duration::from_secs(1));
    let vmid = p.video_mid;
    let keyframes = |p: &Pair| recv(p, vmid).stream_by_rid("h").expect("h").keyframes;
    assert_eq!(keyframes(&p), 1);
    // Two requests 100 ms apart: the second is ignored.
    for _ in 0..2 {
        assert!(p.sim.clients[B].request_keyframe(vmid, Some("h".into())));
        p.sim.run_for(Duration::from_millis(100));
    }
    p.sim.run_for(Duration::from_millis(150));
    assert_eq!(keyframes(&p), 2, "one keyframe for two requests");
    // 350 ms after the first: honoured.
    assert!(p.sim.clients[B].request_keyframe(vmid, Some("h".into())));
    p.sim.run_for(Duration::from_millis(200));
    assert_eq!(keyframes(&p), 3);
    let a = &p.sim.clients[A];
    assert_eq!(a.keyframe_requests(p.video, Some("h")), 3);
    let stats = a.track_stats(p.video).expect("stats");
    assert_eq!(stats.layers[1].keyframe_requests_ignored, 1);
    assert_eq!(stats.layers[1].source.requested_keyframes, 2);
}

#[test]
fn nack_recovers_video_under_loss() {
    let mut p = connected_pair(VideoCodec::Vp8, &RIDS, 5);
    // Media flows cleanly first: NACK needs a sequence number reference (a receiver
    // cannot ask for packets lost before the first one it sees).
    p.sim.run_for(Duration::from_millis(500));
    let a_addr = p.sim.clients[A].local_addr();
    let b_addr = p.sim.clients[B].local_addr();
    p.sim.net.set_pair(
        a_addr,
        b_addr,
        Link::with_delay(Duration::from_millis(20)).loss(0.05),
    );
    p.sim.run_for(Duration::from_secs(3));

    let link = p.sim.net.stats(a_addr, b_addr);
    let net_loss = link.lost as f64 / link.sent as f64;
    assert!((0.03..0.07).contains(&net_loss), "network loss {net_loss}");

    // Audio has no retransmissions: its loss is the network's.
    let audio = recv(&p, p.audio_mid);
    let audio_loss = audio.lost() as f64 / audio.sources[0].expected() as f64;
    assert!(audio_loss > 0.01, "audio loss {audio_loss}");

    // Video: NACK/RTX recovers most. Losses of the last ~RTT are not yet recovered.
    let video = recv(&p, p.video_mid);
    let expected: u64 = video.sources.iter().map(|s| s.expected()).sum();
    let residual = video.lost() as f64 / expected as f64;
    assert!(
        residual < net_loss / 4.0,
        "residual {residual} vs network {net_loss}"
    );
    assert!(expected > 500);
    assert_eq!(video.unprobed, 0);
    // Every layer still decodes from a keyframe.
    for rid in RIDS {
        let s = video.stream_by_rid(rid).expect("layer");
        assert!(s.first_frame_at.is_some(), "layer {rid}");
    }
    eprintln!(
        "net loss {:.2}% audio loss {:.2}% video residual {:.3}% ({} of {})",
        net_loss * 100.0,
        audio_loss * 100.0,
        residual * 100.0,
        video.lost(),
        expected
    );
}

#[test]
fn h264_single_layer_arrives_keyframe_first() {
    let mut p = connected_pair(VideoCodec::H264, &[], 7);
    p.sim.run_for(Duration::from_secs(2));
    let video = recv(&p, p.video_mid);
    assert_eq!(video.streams.len(), 1);
    assert_eq!(video.first_packet_keyframe, Some(true));
    assert!(video.first_frame_at.is_some());
    assert_eq!(video.unprobed, 0);
    assert_eq!(video.lost(), 0);
    assert!(video.packets > 100);
    let audio = recv(&p, p.audio_mid);
    assert!(audio.packets > 90);
    let _ = p.audio;
}

#[test]
fn loss_from_the_start_auto_keyframe_requests_get_every_layer_decoding() {
    let interval = Duration::from_millis(300);
    let mut p = connected_pair_with(VideoCodec::Vp8, &RIDS, 11, 0.05, Some(interval), None);
    p.sim.run_for(Duration::from_secs(3));
    let video = recv(&p, p.video_mid);
    for rid in RIDS {
        let s = video.stream_by_rid(rid).expect("layer");
        assert!(s.first_frame_at.is_some(), "layer {rid}: {s:?}");
        // A PLI was needed only if the first packet did not start a keyframe.
        if s.first_packet_keyframe == Some(false) {
            assert!(s.auto_plis > 0, "layer {rid}");
        }
    }
    let a = &p.sim.clients[A];
    let requested: u64 = RIDS
        .iter()
        .map(|r| a.keyframe_requests(p.video, Some(r)))
        .sum();
    let auto: u64 = video.streams.iter().map(|s| s.auto_plis).sum();
    assert!(requested <= auto, "requested {requested} auto {auto}");
}

#[test]
fn data_channel_opens_and_carries_messages() {
    let t0 = Instant::now();
    let a_addr = addr("10.0.0.1:5000");
    let b_addr = addr("10.0.0.2:6000");
    let mut a = Client::new(ClientConfig::new(a_addr, t0).seed(21), t0).expect("a");
    let mut b = Client::new(ClientConfig::new(b_addr, t0).seed(22), t0).expect("b");
    a.add_data_channel("signal");
    let offer = a.create_offer().expect("offer");
    assert!(a.create_offer().is_none(), "one offer at a time");
    let answer = b.accept_offer(&offer).expect("answer");
    a.accept_answer(&answer).expect("accept");
    let mut sim = Sim {
        now: t0,
        net: SimNet::new(21),
        clients: vec![a, b],
    };
    assert!(sim.run_until(Duration::from_secs(5), |s| s
        .clients
        .iter()
        .all(Client::channel_open)));
    assert!(sim.clients[A].send_data(false, b"hello"));
    sim.run_for(Duration::from_millis(50));
    let mut got = None;
    while let Some(e) = sim.clients[B].poll_event() {
        if let kaskade_loadtest::ClientEvent::ChannelData { data, .. } = e {
            got = Some(data);
        }
    }
    assert_eq!(got.as_deref(), Some(&b"hello"[..]));
}
