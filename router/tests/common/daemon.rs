//! Starts real `kaskade` processes for tests and talks to them.

use kaskade_loadtest::{drive_until, UdpClient};
use kaskade_protocol::v1 as pb;
use pb::cascade_service_client::CascadeServiceClient;
use pb::room_service_client::RoomServiceClient;
use pb::session_service_client::SessionServiceClient;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A running `kaskade serve`.
pub(crate) struct Daemon {
    pub child: Child,
    pub control: SocketAddr,
    pub metrics: SocketAddr,
    pub media: Vec<SocketAddr>,
    pub cascade: Option<SocketAddr>,
    /// The HTTP listener (demo app, kaskade.js).
    pub http: Option<SocketAddr>,
    /// The ICE-TCP listener.
    pub tcp: Option<SocketAddr>,
    pub rooms: RoomServiceClient<Channel>,
    pub sessions: SessionServiceClient<Channel>,
    pub links: CascadeServiceClient<Channel>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[start..];
    let end = rest.find([',', '}', ']'])?;
    Some(rest[..end].trim_matches('"'))
}

/// A UDP port that was free a moment ago (for configs that need ports up front).
pub(crate) fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// Starts `kaskade serve` on free loopback ports with extra `args`.
    pub(crate) fn start(rt: &tokio::runtime::Runtime, args: &[String]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kaskade"))
            .args([
                "serve",
                "--control-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--media-port-start",
                "0",
                "--workers",
                "2",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .env_remove("KASKADE_CONTROL_LISTEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kaskade");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let json = line
            .strip_prefix("KASKADE_READY ")
            .unwrap_or_else(|| panic!("no ready line, got {line:?}"))
            .to_string();
        let media_list = &json[json.find("\"media\":[").unwrap() + 9..];
        let media_list = &media_list[..media_list.find(']').unwrap()];
        let control: SocketAddr = field(&json, "control").unwrap().parse().unwrap();
        let url = format!("http://{control}");
        let (rooms, sessions, links) = rt.block_on(async {
            (
                RoomServiceClient::connect(url.clone()).await.unwrap(),
                SessionServiceClient::connect(url.clone()).await.unwrap(),
                CascadeServiceClient::connect(url).await.unwrap(),
            )
        });
        Daemon {
            control,
            metrics: field(&json, "metrics").unwrap().parse().unwrap(),
            media: media_list
                .split(',')
                .map(|s| s.trim_matches('"').parse().unwrap())
                .collect(),
            cascade: field(&json, "cascade").and_then(|c| c.parse().ok()),
            http: field(&json, "http").and_then(|c| c.parse().ok()),
            tcp: field(&json, "tcp").and_then(|c| c.parse().ok()),
            rooms,
            sessions,
            links,
            child,
        }
    }

    /// Creates a room.
    pub(crate) fn create_room(
        &mut self,
        rt: &tokio::runtime::Runtime,
        room: &str,
        allowed: &[&str],
    ) -> Result<pb::Room, tonic::Status> {
        rt.block_on(self.rooms.create_room(pb::CreateRoomRequest {
            room_id: room.into(),
            max_sessions: 0,
            allowed_regions: allowed.iter().map(|s| s.to_string()).collect(),
        }))
        .map(|r| r.into_inner().room.unwrap())
    }

    /// Joins `client`'s queued offer as `participant`; returns the tracks it publishes.
    pub(crate) fn join(
        &mut self,
        rt: &tokio::runtime::Runtime,
        room: &str,
        participant: &str,
        client: &mut UdpClient,
    ) -> (String, Vec<pb::Track>) {
        let offer = client.client.create_offer().unwrap();
        let r = rt
            .block_on(self.sessions.create_session(pb::CreateSessionRequest {
                room_id: room.into(),
                participant_id: participant.into(),
                sdp_offer: offer,
                metadata: String::new(),
            }))
            .unwrap()
            .into_inner();
        client.client.accept_answer(&r.sdp_answer).unwrap();
        (r.session_id, r.tracks)
    }

    /// Subscribes `session` (driven by `client`) to tracks; returns the mids.
    pub(crate) fn subscribe(
        &mut self,
        rt: &tokio::runtime::Runtime,
        session: &str,
        client: &mut UdpClient,
        tracks: &[String],
    ) -> Vec<pb::Subscription> {
        let r = rt
            .block_on(self.sessions.subscribe(pb::SubscribeRequest {
                session_id: session.into(),
                track_ids: tracks.to_vec(),
            }))
            .unwrap()
            .into_inner();
        let answer = client.client.accept_offer(&r.sdp_offer).unwrap();
        rt.block_on(self.sessions.set_answer(pb::SetAnswerRequest {
            session_id: session.into(),
            sdp_answer: answer,
        }))
        .unwrap();
        r.subscriptions
    }

    pub(crate) fn room(&mut self, rt: &tokio::runtime::Runtime, room: &str) -> pb::Room {
        rt.block_on(self.rooms.get_room(pb::GetRoomRequest {
            room_id: room.into(),
        }))
        .unwrap()
        .into_inner()
        .room
        .unwrap()
    }

    pub(crate) fn links(&mut self, rt: &tokio::runtime::Runtime) -> Vec<pb::Link> {
        rt.block_on(self.links.list_links(pb::ListLinksRequest {}))
            .unwrap()
            .into_inner()
            .links
    }
}

/// The text of a metrics endpoint.
pub(crate) fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The sum of the series of `text` that start with `name` (a metric, or
/// one series of it with its labels).
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A str0m client on loopback.
pub(crate) fn client(seed: u64, t0: Instant) -> UdpClient {
    UdpClient::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), t0, |c| {
        c.seed(seed).packet_log(100_000).auto_keyframe_request(None)
    })
    .unwrap()
}

/// Drives clients for `d` (wall clock).
pub(crate) fn drive(clients: &mut [&mut UdpClient], d: Duration) {
    drive_until(clients, d, |_| false);
}
