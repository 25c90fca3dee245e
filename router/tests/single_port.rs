//! One UDP port for every worker (`media.single_port`), on the virtual
//! clock: the simulated network gives each datagram to the worker its
//! source hashes to (as `SO_REUSEPORT` does), whatever worker hosts its
//! session; the workers hand datagrams over to each other on the bus.

mod common;

use common::checks::{mid_of, track};
use common::{single_port_worker, Sim, SimOptions};
use kaskade_protocol::v1 as pb;
use std::time::Duration;

fn sim(workers: usize, seed: u64) -> Sim {
    Sim::with_options(
        workers,
        seed,
        SimOptions {
            single_port: true,
            ..Default::default()
        },
    )
}

#[test]
fn sessions_on_every_worker_receive_media_through_one_port() {
    let workers = 3;
    let mut sim = sim(workers, 5);
    assert!(
        sim.workers.iter().all(|w| w.addr == sim.workers[0].addr),
        "one address for every worker"
    );
    sim.create_room("r");
    let publ = sim.add_client(|c| c);
    sim.clients[publ].client.add_audio();
    sim.clients[publ].client.add_video(&[]);
    let tracks = sim.join("r", publ, "pub");
    let subs: Vec<usize> = (0..5).map(|_| sim.add_client(|c| c)).collect();
    for (i, s) in subs.iter().enumerate() {
        sim.clients[*s].client.add_data_channel("kaskade");
        sim.join("r", *s, &format!("sub{i}"));
    }
    let everyone: Vec<usize> = std::iter::once(publ).chain(subs.clone()).collect();
    // Where each session is, and where the network delivers its datagrams.
    let mut misdirected = 0;
    for c in &everyone {
        let sid = sim.clients[*c].session.clone().unwrap();
        let worker = sim
            .control
            .get_session(&sid)
            .unwrap()
            .session
            .unwrap()
            .worker as usize;
        let lands = single_port_worker(sim.clients[*c].client.local_addr(), workers);
        misdirected += usize::from(worker != lands);
    }
    assert!(
        misdirected >= 2,
        "the test needs sessions whose datagrams reach another worker ({misdirected})"
    );
    assert!(
        sim.workers.iter().all(|w| w.core.session_count() > 0),
        "sessions on every worker"
    );
    sim.connect(&everyone);
    let audio = track(&tracks, pb::TrackKind::Audio);
    let video = track(&tracks, pb::TrackKind::Video);
    let mids: Vec<_> = subs
        .iter()
        .map(|s| {
            let subscribed = sim.subscribe(*s, &tracks);
            (mid_of(&subscribed, &audio), mid_of(&subscribed, &video))
        })
        .collect();
    sim.run_for(Duration::from_secs(3));

    for (s, (amid, vmid)) in subs.iter().zip(mids) {
        let c = &sim.clients[*s].client;
        for (mid, what) in [(amid, "audio"), (vmid, "video")] {
            let r = c
                .received_on(mid)
                .unwrap_or_else(|| panic!("sub {s}: no {what}"));
            assert!(r.packets > 50, "sub {s}: {} {what} packets", r.packets);
            assert_eq!(r.lost(), 0, "sub {s}: {what} lost");
        }
    }
    eprintln!(
        "{misdirected} of {} sessions misdirected; {} datagrams handed over",
        everyone.len(),
        sim.metric("kaskade_single_port_handovers_total")
    );
    assert!(
        sim.metric("kaskade_single_port_handovers_total") > 100.0,
        "datagrams of misdirected sessions were handed over"
    );
    assert_eq!(sim.metric("kaskade_datagrams_dropped_total"), 0.0);
    assert_eq!(sim.metric("kaskade_bus_dropped_total"), 0.0);
}

#[test]
fn garbage_on_the_shared_port_is_dropped_where_it_lands_and_never_handed_over() {
    let mut sim = sim(2, 9);
    sim.create_room("r");
    let publ = sim.add_client(|c| c);
    sim.clients[publ].client.add_audio();
    sim.join("r", publ, "pub");
    sim.connect(&[publ]);
    let port = sim.workers[0].addr;
    let handed = sim.metric("kaskade_single_port_handovers_total");
    // From sources nobody knows: RTP, DTLS, and a STUN binding request
    // whose username names no worker of the router.
    for i in 0..200u16 {
        let src = std::net::SocketAddr::from(([203, 0, 113, 9], 1000 + i));
        let data = match i % 3 {
            0 => vec![0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
            1 => vec![22, 254, 253, 0, 0],
            _ => vec![
                0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ],
        };
        sim.net.send(
            sim.now,
            kaskade_loadtest::Datagram {
                src,
                dst: port,
                data,
            },
        );
    }
    sim.run_for(Duration::from_millis(500));
    assert_eq!(sim.metric("kaskade_datagrams_dropped_total"), 200.0);
    assert_eq!(
        sim.metric("kaskade_single_port_handovers_total"),
        handed,
        "nothing unknown crosses the bus"
    );
    assert!(sim.connected(publ));
}

/// The same through the kernel: the `kaskade` binary with two workers on
/// one real UDP port (`SO_REUSEPORT`), eight str0m clients on loopback
/// spread over both workers. The kernel, not the test, decides which worker
/// reads whose datagrams; every subscriber must receive audio and video.
#[test]
fn the_binary_serves_every_worker_from_one_udp_port() {
    use common::daemon::{client, drive, metric, scrape, Daemon};
    use kaskade_loadtest::drive_until;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let args: Vec<String> = [
        "--media-single-port",
        "true",
        "--media-room-share",
        "0",
        "--shutdown-grace-period",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut d = Daemon::start(&rt, &args);
    assert_eq!(d.media.len(), 2);
    assert_eq!(d.media[0], d.media[1], "one port: {:?}", d.media);
    d.create_room(&rt, "one", &[]).unwrap();
    let t0 = std::time::Instant::now();
    let mut publ = client(1, t0);
    publ.client.add_audio();
    publ.client.add_video(&[]);
    let (_, tracks) = d.join(&rt, "one", "pub", &mut publ);
    let ids: Vec<String> = tracks.iter().map(|t| t.track_id.clone()).collect();
    let mut subs: Vec<_> = (0..7).map(|i| client(10 + i, t0)).collect();
    let mut sessions = Vec::new();
    for (i, s) in subs.iter_mut().enumerate() {
        s.client.add_data_channel("kaskade");
        sessions.push(d.join(&rt, "one", &format!("sub{i}"), s).0);
    }
    let room = d.room(&rt, "one");
    assert!(
        (0..2).all(|w| room.sessions.iter().any(|s| s.worker == w)),
        "sessions on both workers"
    );
    {
        let mut all: Vec<_> = std::iter::once(&mut publ).chain(subs.iter_mut()).collect();
        assert!(
            drive_until(&mut all, Duration::from_secs(10), |c| c
                .iter()
                .all(|c| c.client.is_connected())),
            "everyone connects through the shared port"
        );
    }
    let mut mids = Vec::new();
    for (s, id) in subs.iter_mut().zip(&sessions) {
        mids.push(d.subscribe(&rt, id, s, &ids));
    }
    let mut all: Vec<_> = std::iter::once(&mut publ).chain(subs.iter_mut()).collect();
    drive(&mut all, Duration::from_secs(3));
    for (i, (s, subscribed)) in subs.iter().zip(&mids).enumerate() {
        for m in subscribed {
            let r = s.client.received_on(m.mid.as_str().into());
            let n = r.map_or(0, |r| r.packets);
            assert!(n > 50, "subscriber {i}: {n} packets on mid {}", m.mid);
        }
    }
    let text = scrape(d.metrics);
    eprintln!(
        "datagrams handed over: {}",
        metric(&text, "kaskade_single_port_handovers_total")
    );
    assert_eq!(metric(&text, "kaskade_bus_dropped_total"), 0.0);
}
