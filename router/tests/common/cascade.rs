//! Real `kaskade` processes as cascade nodes: a dev cluster's certificates,
//! the arguments that make a node, nodes in a line, and what the cascade
//! tests ask of them (link a room, wait for remote tracks, subscribe).

use super::daemon::{free_udp_port, Daemon};
use kaskade_loadtest::{drive_until, UdpClient};
use kaskade_protocol::v1 as pb;
use kaskade_router::cascade::cert::write_dev_cluster;
use kaskade_router::cascade::NodeIdentity;
use std::path::{Path, PathBuf};
use std::time::Duration;
use str0m::media::Mid;

pub(crate) fn certs(nodes: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kaskade-cascade-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let ids: Vec<NodeIdentity> = nodes.iter().map(|n| n.parse().unwrap()).collect();
    write_dev_cluster(&dir, &ids, true).unwrap();
    dir
}

pub(crate) fn node_args(
    dir: &Path,
    id: &str,
    region: &str,
    port: u16,
    peers: &[(String, String)],
) -> Vec<String> {
    let mut a = vec![
        "--node-id".into(),
        id.into(),
        "--region".into(),
        region.into(),
        "--cascade-listen".into(),
        format!("127.0.0.1:{port}"),
        "--cascade-ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--cascade-cert".into(),
        dir.join(format!("{id}.pem")).display().to_string(),
        "--cascade-key".into(),
        dir.join(format!("{id}.key")).display().to_string(),
    ];
    for (pid, addr) in peers {
        a.push("--peer".into());
        a.push(format!("{pid}={addr}"));
    }
    a
}

/// Starts a router with [`node_args`].
pub(crate) fn start_node(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    id: &str,
    region: &str,
    port: u16,
    peers: &[(String, String)],
) -> Daemon {
    Daemon::start(rt, &node_args(dir, id, region, port, peers))
}

/// The arguments of fra, ams and par in a line (fra–ams, ams–par) listening on
/// `ports`; each dials its neighbours at `to`: fra→ams, ams→fra, ams→par,
/// par→ams (the neighbour itself, or an impairment proxy in front of it).
pub(crate) fn line_args(dir: &Path, ports: [u16; 3], to: [String; 4]) -> [Vec<String>; 3] {
    let [fa, af, ap, pa] = to;
    [
        node_args(dir, "fra", "eu-de-fra", ports[0], &[("ams".into(), fa)]),
        node_args(
            dir,
            "ams",
            "eu-nl-ams",
            ports[1],
            &[("fra".into(), af), ("par".into(), ap)],
        ),
        node_args(dir, "par", "eu-fr-par", ports[2], &[("ams".into(), pa)]),
    ]
}

/// Three routers in a line, dialling each other directly.
pub(crate) fn direct_line(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
) -> ([Vec<String>; 3], [Daemon; 3]) {
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let at = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let args = line_args(dir, ports, [at(1), at(0), at(2), at(1)]);
    let daemons = [0, 1, 2].map(|i| Daemon::start(rt, &args[i]));
    (args, daemons)
}

pub(crate) fn link(
    rt: &tokio::runtime::Runtime,
    d: &mut Daemon,
    room: &str,
    peer: &str,
) -> Result<pb::RouterRef, tonic::Status> {
    rt.block_on(d.links.link_room(pb::LinkRoomRequest {
        room_id: room.into(),
        peer_node_id: peer.into(),
    }))
    .map(|r| r.into_inner().peer.unwrap())
}

/// The remote tracks of `room` on `d`, once there are `n` (or after 10 s): woken by the
/// room's events, not by polling.
pub(crate) fn wait_remote_tracks(
    rt: &tokio::runtime::Runtime,
    d: &mut Daemon,
    room: &str,
    n: usize,
) -> Vec<pb::Track> {
    let (mut rooms, mut sessions) = (d.rooms.clone(), d.sessions.clone());
    rt.block_on(async {
        let mut events = sessions
            .watch_events(pb::WatchEventsRequest {
                room_id: room.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = rooms
                .get_room(pb::GetRoomRequest {
                    room_id: room.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .room
                .unwrap();
            let remote: Vec<pb::Track> = r
                .tracks
                .into_iter()
                .filter(|t| !t.origin_node_id.is_empty())
                .collect();
            if remote.len() >= n {
                return remote;
            }
            match tokio::time::timeout_at(end, events.message()).await {
                Ok(Ok(Some(_))) => {}
                _ => return remote,
            }
        }
    })
}

/// Subscribes `session` to one track and completes the offer/answer; the
/// track's media line in the subscriber's SDP.
pub(crate) fn subscribe_one(
    rt: &tokio::runtime::Runtime,
    d: &mut Daemon,
    session: &str,
    c: &mut UdpClient,
    track: String,
) -> Mid {
    d.subscribe(rt, session, c, &[track])[0].mid.as_str().into()
}

/// Drives the clients until all are connected (panics after `limit`).
pub(crate) fn connect_all(clients: &mut [&mut UdpClient], limit: Duration) {
    assert!(
        drive_until(clients, limit, |x| x
            .iter()
            .all(|c| c.client.is_connected())),
        "clients connect"
    );
}

pub(crate) fn video_packets(c: &UdpClient, mid: Mid) -> u64 {
    c.client.received_on(mid).map_or(0, |r| r.packets)
}

/// Two routers, fra (eu-de-fra) and ams (eu-nl-ams), dialling each other
/// directly.
pub(crate) fn fra_and_ams(rt: &tokio::runtime::Runtime) -> (Daemon, Daemon) {
    let dir = certs(&["fra:eu-de-fra", "ams:eu-nl-ams"]);
    let (pa, pb_) = (free_udp_port(), free_udp_port());
    let a = start_node(
        rt,
        &dir,
        "fra",
        "eu-de-fra",
        pa,
        &[("ams".into(), format!("127.0.0.1:{pb_}"))],
    );
    let b = start_node(
        rt,
        &dir,
        "ams",
        "eu-nl-ams",
        pb_,
        &[("fra".into(), format!("127.0.0.1:{pa}"))],
    );
    (a, b)
}
