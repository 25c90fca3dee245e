//! Datagrams into a worker core, through the production drive loop (`media::drive`) on the
//! test kit's virtual clock: the routing of a first packet (STUN to a session's ufrag, or
//! dropped), STUN, DTLS, SRTP/RTP and RTCP, from the addresses of a connected publisher and
//! of a connected subscriber (their sessions' str0m instances take them) and from unknown
//! IPv4 and IPv6 addresses.
//!
//! The input is a script of records: one byte choosing the source (`% 4`: publisher,
//! subscriber, unknown v4, unknown v6) and, with bit 2 set, wrapping the body into a STUN
//! binding request with the publisher session's USERNAME (so it is routed to the session even
//! from an unknown address, and str0m checks it), a 16-bit little-endian length, that many
//! bytes (the last record takes what is left). Each record is one datagram to the worker; then the
//! router and its clients run on for 20 ms of virtual time.
//!
//! Checked: nothing panics (a str0m panic inside a session is caught by the worker and counted
//! as a session failure, which this target refuses too), a hostile datagram from an unknown
//! address never gets an answer larger than itself, and the worker stays within its sessions.
//!
//! The router and its clients are built once per process and rebuilt every
//! [`REBUILD_EVERY`] inputs, or when a client lost its connection (a forged datagram from
//! its address may legitimately end its DTLS session), so a crash may need the inputs before
//! it: run the crashing input alone first (`cargo fuzz run worker_datagram <artifact>`).
#![no_main]

use kaskade_loadtest::Datagram;
use kaskade_protocol::v1 as pb;
use kaskade_router::testkit::{client_addr, worker_addr, Sim};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

const REBUILD_EVERY: u32 = 5000;

struct World {
    sim: Sim,
    publ: usize,
    sub: usize,
    /// USERNAME of a binding request to the publisher's session.
    user: String,
    inputs: u32,
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fn world() -> World {
    let mut sim = Sim::new(1, 17);
    sim.create_room("r");
    let publ = sim.add_client(|c| c);
    sim.clients[publ].client.add_audio();
    sim.clients[publ].client.add_video(&[]);
    let offer = sim.clients[publ].client.create_offer().expect("an offer");
    let control = sim.control.clone();
    let resp = sim
        .api(control.create_session(pb::CreateSessionRequest {
            room_id: "r".into(),
            participant_id: "pub".into(),
            sdp_offer: offer,
            metadata: String::new(),
        }))
        .expect("create session");
    sim.clients[publ]
        .client
        .accept_answer(&resp.sdp_answer)
        .expect("client accepts answer");
    let user = resp
        .sdp_answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(|u| format!("{}:x", u.trim()))
        .expect("the answer has a ufrag");
    sim.clients[publ].session = Some(resp.session_id);
    let tracks = resp.tracks;
    let sub = sim.add_client(|c| c);
    sim.clients[sub].client.add_data_channel("k");
    sim.join("r", sub, "sub");
    sim.connect(&[publ, sub]);
    sim.subscribe(sub, &tracks);
    sim.run_for(Duration::from_millis(200));
    World {
        sim,
        publ,
        sub,
        user,
        inputs: 0,
    }
}

/// A STUN binding request to the publisher's session (its local ufrag, so the worker routes
/// it to the session even from an unknown address), with the input's transaction id and
/// attributes after USERNAME; its integrity is whatever the input says.
fn binding_request(user: &str, body: &[u8]) -> Vec<u8> {
    let (id, attrs) = body.split_at(body.len().min(12));
    let mut tid = [0u8; 12];
    tid[..id.len()].copy_from_slice(id);
    let mut user_attr = Vec::new();
    user_attr.extend_from_slice(&0x0006u16.to_be_bytes());
    user_attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
    user_attr.extend_from_slice(user.as_bytes());
    while user_attr.len() % 4 != 0 {
        user_attr.push(0);
    }
    let len = (user_attr.len() + attrs.len()).min(usize::from(u16::MAX)) as u16;
    let mut m = Vec::with_capacity(20 + usize::from(len));
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(&0x2112_a442u32.to_be_bytes());
    m.extend_from_slice(&tid);
    m.extend_from_slice(&user_attr);
    m.extend_from_slice(attrs);
    m
}

fn stranger(v6: bool) -> SocketAddr {
    if v6 {
        "[2001:db8::7]:4242".parse().expect("literal")
    } else {
        "192.0.2.7:4242".parse().expect("literal")
    }
}

fuzz_target!(|data: &[u8]| {
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        if w.as_ref().is_none_or(|w| {
            w.inputs >= REBUILD_EVERY || !w.sim.connected(w.publ) || !w.sim.connected(w.sub)
        }) {
            *w = Some(world());
        }
        let w = w.as_mut().expect("just built");
        w.inputs += 1;
        let dst = worker_addr(0);
        let mut rest = data;
        let mut from_strangers = Vec::new();
        while let Some((&sel, tail)) = rest.split_first() {
            let len = match tail {
                [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
                _ => tail.len(),
            };
            let body_all = tail.get(2..).unwrap_or(&[]);
            let body = &body_all[..len.min(body_all.len())];
            rest = &body_all[body.len()..];
            let src = match sel % 4 {
                0 => client_addr(w.publ),
                1 => client_addr(w.sub),
                s => stranger(s == 3),
            };
            // Bit 2: the body becomes a binding request to the publisher's session.
            let data = if sel & 4 != 0 {
                binding_request(&w.user, body)
            } else {
                body.to_vec()
            };
            if sel % 4 >= 2 {
                from_strangers.push((src, data.len()));
            }
            let now = w.sim.now;
            w.sim.net.send(now, Datagram { src, dst, data });
        }
        let before = [false, true].map(|v6| w.sim.net.stats_to(stranger(v6)));
        w.sim.run_for(Duration::from_millis(20));
        for (v6, before) in [false, true].into_iter().zip(before) {
            let a = stranger(v6);
            let got = w.sim.net.stats_to(a);
            let (n, bytes) = (got.sent - before.sent, got.sent_bytes - before.sent_bytes);
            let asked: Vec<usize> = from_strangers
                .iter()
                .filter(|(s, _)| *s == a)
                .map(|(_, n)| *n)
                .collect();
            // No amplification towards an address nobody validated.
            assert!(
                n <= asked.len() as u64,
                "{n} answers to {} datagrams",
                asked.len()
            );
            assert!(
                bytes <= asked.iter().sum::<usize>() as u64,
                "{bytes} bytes answered to {asked:?}"
            );
        }
        assert!(w.sim.workers[0].core.session_count() <= 2);
        assert_eq!(
            w.sim.metrics.session_failures.get(),
            0,
            "a session failed (str0m panicked?)"
        );
        // What the control plane was told is not looked at: keep memory flat.
        w.sim.events.clear();
    });
});
