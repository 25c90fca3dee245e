//! Nothing a peer sends breaks the router: garbage datagrams are dropped and
//! counted, and the sessions around them carry on.

mod common;

use common::{worker_addr, Pair, Sim};
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::Duration;

#[test]
fn garbage_datagrams_are_dropped_counted_and_harmless() {
    let (mut sim, p) = Sim::pair(2, 11, |c| {
        c.add_audio();
    });
    let Pair {
        publ, sub, subs, ..
    } = p;
    sim.run_for(Duration::from_millis(500));
    let mid: str0m::media::Mid = subs[0].mid.as_str().into();
    let before = sim.clients[sub].client.received_on(mid).unwrap().packets;

    let mut rng = rand::rngs::SmallRng::seed_from_u64(99);
    let stranger: SocketAddr = "127.0.9.9:9999".parse().unwrap();
    let publisher_addr = common::client_addr(publ);
    for i in 0..5000 {
        let len = rng.random_range(0..1500);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Shape some as STUN, DTLS, RTP and RTCP so deeper parsers see them too.
        match i % 5 {
            0 if len > 20 => {
                buf[0] = 0;
                buf[1] = 1;
                buf[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            }
            1 if len > 13 => buf[0] = 22,
            2 if len > 12 => buf[0] = 0x80,
            3 if len > 8 => {
                buf[0] = 0x80;
                buf[1] = 200;
            }
            _ => {}
        }
        // From an unknown address and from the publisher's own address.
        let src = if i % 2 == 0 { stranger } else { publisher_addr };
        let now = sim.now;
        for w in 0..2 {
            sim.workers[w].core.handle_datagram(now, src, &buf);
        }
    }
    sim.pump();
    sim.run_for(Duration::from_millis(1000));
    let after = sim.clients[sub].client.received_on(mid).unwrap().packets;
    assert!(
        after > before + 40,
        "media still flows ({before} -> {after})"
    );
    assert!(sim.connected(publ) && sim.connected(sub));
    let dropped = sim.metric("kaskade_datagrams_dropped_total");
    assert!(dropped >= 2500.0, "garbage counted: {dropped}");
    assert_eq!(sim.metric("kaskade_session_failures_total"), 0.0);
    let _ = worker_addr(0);
}

#[test]
fn a_str0m_panic_closes_only_that_session() {
    let mut sim = Sim::new(1, 12);
    sim.create_room("r");
    let mut events = sim.control.watch("r").unwrap().events;
    let publ = sim.add_client(|c| c);
    sim.clients[publ].client.add_audio();
    let tracks = sim.join("r", publ, "pub");
    let subs: Vec<usize> = (0..2).map(|_| sim.add_client(|c| c)).collect();
    for (i, s) in subs.iter().enumerate() {
        sim.clients[*s].client.add_data_channel("k");
        sim.join("r", *s, &format!("s{i}"));
    }
    sim.connect(&[publ, subs[0], subs[1]]);
    let mut mids = Vec::new();
    for s in &subs {
        let m = sim.subscribe(*s, &tracks);
        mids.push(str0m::media::Mid::from(m[0].mid.as_str()));
    }
    sim.run_for(Duration::from_millis(300));

    // str0m panics on misuse of its own API (here: the frame writer in RTP
    // mode), which stands in for a bug inside the stack.
    let victim = sim.clients[subs[0]].session.clone().unwrap();
    let sid = kaskade_protocol::SessionId::parse(&victim).unwrap();
    let mid = mids[0];
    let r = sim.workers[0].core.with_session(sid, |s| {
        let _ = s.rtc.writer(mid);
    });
    assert!(r.is_err(), "the panic was contained and reported");
    sim.pump();
    assert_eq!(sim.metric("kaskade_session_failures_total"), 1.0);
    let before = sim.clients[subs[1]]
        .client
        .received_on(mids[1])
        .unwrap()
        .packets;
    sim.run_for(Duration::from_millis(500));
    let after = sim.clients[subs[1]]
        .client
        .received_on(mids[1])
        .unwrap()
        .packets;
    assert!(
        after >= before + 20,
        "the other subscriber still receives ({before} -> {after})"
    );
    assert_eq!(sim.workers[0].core.session_count(), 2);
    assert!(
        sim.control.get_session(&victim).is_err(),
        "registry forgot it"
    );
    let mut closed = false;
    while let Ok(e) = events.try_recv() {
        if let Some(kaskade_protocol::v1::event::Kind::SessionClosed(c)) = e.kind {
            closed |= c.session_id == victim && c.reason == "internal error";
        }
    }
    assert!(closed, "watchers were told");
}

/// A STUN message cut short counts as `malformed`, whoever sends it (not
/// as `unknown_source`, which is for well-formed packets from strangers).
#[test]
fn truncated_stun_counts_as_malformed() {
    let mut sim = Sim::new(1, 13);
    sim.pump();
    let malformed = "kaskade_datagrams_dropped_total{reason=\"malformed\"}";
    let unknown = "kaskade_datagrams_dropped_total{reason=\"unknown_source\"}";
    let (m0, u0) = (sim.metric(malformed), sim.metric(unknown));
    let stranger: SocketAddr = "127.0.9.9:9999".parse().unwrap();
    // A binding request announcing 8 bytes of attributes it does not carry,
    // and the same cut inside its header.
    let mut stun = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7u8; 12]);
    let now = sim.now;
    sim.workers[0].core.handle_datagram(now, stranger, &stun);
    sim.workers[0]
        .core
        .handle_datagram(now, stranger, &stun[..10]);
    // A well-formed packet that is not STUN from a stranger stays unknown.
    sim.workers[0]
        .core
        .handle_datagram(now, stranger, &[0x80; 40]);
    sim.pump();
    assert_eq!(sim.metric(malformed) - m0, 2.0);
    assert_eq!(sim.metric(unknown) - u0, 1.0);
}

/// A session whose peer never sends a datagram is closed by the connect
/// timeout (or earlier, when str0m's ICE gives up) and counted as a join
/// failure at the `timeout` step.
#[test]
fn a_session_nobody_connects_to_is_a_join_failure() {
    let mut sim = Sim::new(1, 14);
    sim.create_room("r");
    let mut events = sim.control.watch("r").unwrap().events;
    // A browser that makes an offer and then goes away.
    let mut gone = kaskade_loadtest::Client::new(
        kaskade_loadtest::ClientConfig::new(common::client_addr(99), sim.t0).seed(7),
        sim.now,
    )
    .unwrap();
    gone.add_audio();
    let control = sim.control.clone();
    let resp = sim
        .api(
            control.create_session(kaskade_protocol::v1::CreateSessionRequest {
                room_id: "r".into(),
                participant_id: "ghost".into(),
                sdp_offer: gone.create_offer().unwrap(),
                metadata: String::new(),
            }),
        )
        .unwrap();
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.metric("kaskade_join_failures_total"), 0.0);
    // Closed within the connect timeout (30 s).
    sim.run_for(Duration::from_secs(21));
    assert_eq!(
        sim.metric("kaskade_join_failures_total{step=\"timeout\"}"),
        1.0
    );
    assert!(sim.control.get_session(&resp.session_id).is_err());
    let mut closed = false;
    while let Ok(e) = events.try_recv() {
        if let Some(kaskade_protocol::v1::event::Kind::SessionClosed(c)) = e.kind {
            closed |= c.session_id == resp.session_id && c.reason == "ice timeout";
        }
    }
    assert!(closed, "watchers were told");
}

/// A peer whose DTLS certificate is not the one its offer's fingerprint
/// names (a tampered offer, or a stack whose certificate changed) is
/// closed as `dtls failed` and counted as a join failure at the `dtls`
/// step, not as the router's internal error.
#[test]
fn a_certificate_that_does_not_match_the_fingerprint_is_a_dtls_failure() {
    let mut sim = Sim::new(1, 15);
    sim.create_room("r");
    let mut events = sim.control.watch("r").unwrap().events;
    let c = sim.add_client(|c| c);
    sim.clients[c].client.add_audio();
    let offer = sim.clients[c].client.create_offer().unwrap();
    // Another certificate's fingerprint: every byte of this one flipped.
    let offer: String = offer
        .lines()
        .map(|l| match l.strip_prefix("a=fingerprint:sha-256 ") {
            Some(fp) => {
                let flipped: Vec<String> = fp
                    .split(':')
                    .map(|b| format!("{:02X}", !u8::from_str_radix(b, 16).unwrap()))
                    .collect();
                format!("a=fingerprint:sha-256 {}\r\n", flipped.join(":"))
            }
            None => format!("{l}\r\n"),
        })
        .collect();
    let control = sim.control.clone();
    let resp = sim
        .api(
            control.create_session(kaskade_protocol::v1::CreateSessionRequest {
                room_id: "r".into(),
                participant_id: "tampered".into(),
                sdp_offer: offer,
                metadata: String::new(),
            }),
        )
        .unwrap();
    sim.clients[c]
        .client
        .accept_answer(&resp.sdp_answer)
        .unwrap();
    let closed = sim.run_until(Duration::from_secs(10), |s| {
        s.control.get_session(&resp.session_id).is_err()
    });
    assert!(
        closed,
        "closed at the handshake, not after the join timeout"
    );
    // Worker counters reach the shared metrics on the next tick.
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        sim.metric("kaskade_join_failures_total{step=\"dtls\"}"),
        1.0
    );
    assert_eq!(sim.metric("kaskade_session_failures_total"), 0.0);
    let mut reason = String::new();
    while let Ok(e) = events.try_recv() {
        if let Some(kaskade_protocol::v1::event::Kind::SessionClosed(c)) = e.kind {
            reason = c.reason;
        }
    }
    assert_eq!(reason, "dtls failed");
}
