//! The cascade target: the publishers' router and `edge_routers` more, started
//! here with certificates from `kaskade cert dev-cluster`, linked per room with
//! `LinkRoom` (a link the routers made themselves counts), each link optionally
//! through a [`LinkProxy`] that impairs it. Subscribers join the router the
//! scenario gives them and subscribe to the room's relayed tracks there.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kaskade_protocol::v1 as pb;
use serde::Serialize;
use tokio::sync::Mutex;

use super::impair::link_of;
use super::kaskade::{room_id, Kaskade};
use super::linkproxy::LinkProxy;
use super::router::RouterProcess;
use super::scenario::ImpairSpec;
use super::session::{Joins, PubTrack, Publisher};

/// Node id of router `i` (0: the publishers').
pub(crate) fn node_id(i: usize) -> String {
    format!("lt{i}")
}

fn free_udp_port() -> Result<u16, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.port())
}

/// The routers of a cascade and the proxies between them; stopped when dropped.
pub(crate) struct CascadeProcesses {
    /// The routers, the publishers' first.
    pub routers: Vec<RouterProcess>,
    /// Link proxies (none without link impairment), kept running.
    _proxies: Vec<LinkProxy>,
}

/// Writes a development cluster's certificates with the router binary.
fn dev_cluster(bin: &Path, dir: &Path, n: usize) -> Result<(), String> {
    let mut cmd = Command::new(bin);
    cmd.args(["cert", "dev-cluster", "--force", "--out"])
        .arg(dir);
    for i in 0..n {
        cmd.arg("--node").arg(format!("{}:lt-{i}", node_id(i)));
    }
    let out = cmd
        .output()
        .map_err(|e| format!("{} cert dev-cluster: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} cert dev-cluster: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl CascadeProcesses {
    /// Starts `1 + edges` routers in a star around router 0 (each edge peers
    /// with router 0), links impaired by `link` when it is active.
    pub(crate) fn start(
        bin: &Path,
        workers: u32,
        edges: u32,
        link: &ImpairSpec,
        log_dir: &Path,
        file_tag: &str,
        env: &[(&str, String)],
    ) -> Result<CascadeProcesses, String> {
        let n = edges as usize + 1;
        let certs: PathBuf = log_dir.join(format!("{file_tag}-certs"));
        dev_cluster(bin, &certs, n)?;
        let ports = (0..n)
            .map(|_| free_udp_port())
            .collect::<Result<Vec<_>, _>>()?;
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut proxies = vec![];
        // How router `from` reaches router `to`: directly or through a proxy.
        let mut via = |from: usize, to: usize| -> Result<SocketAddr, String> {
            if !link.is_active() {
                return Ok(at(ports[to]));
            }
            let l = link_of(&ImpairSpec {
                rate: super::units::Rate(0),
                ..link.clone()
            });
            let p = LinkProxy::start(at(ports[to]), l, (from * 16 + to) as u64 + 1)
                .map_err(|e| format!("link proxy: {e}"))?;
            let a = p.addr;
            proxies.push(p);
            Ok(a)
        };
        let mut peers: Vec<Vec<(usize, SocketAddr)>> = vec![vec![]; n];
        for e in 1..n {
            peers[0].push((e, via(0, e)?));
            peers[e].push((0, via(e, 0)?));
        }
        let mut routers = vec![];
        for (i, port) in ports.iter().enumerate() {
            let id = node_id(i);
            let mut args: Vec<String> = vec![
                "--node-id".into(),
                id.clone(),
                "--region".into(),
                format!("lt-{i}"),
                "--cascade-listen".into(),
                at(*port).to_string(),
                "--cascade-ca".into(),
                certs.join("ca.pem").display().to_string(),
                "--cascade-cert".into(),
                certs.join(format!("{id}.pem")).display().to_string(),
                "--cascade-key".into(),
                certs.join(format!("{id}.key")).display().to_string(),
            ];
            for (p, addr) in &peers[i] {
                args.push("--peer".into());
                args.push(format!("{}={addr}", node_id(*p)));
            }
            let log = log_dir.join(format!("{file_tag}-{id}.log"));
            routers.push(RouterProcess::start(bin, workers, &log, &args, env)?);
        }
        Ok(CascadeProcesses {
            routers,
            _proxies: proxies,
        })
    }
}

/// The control side of a cascade.
#[derive(Debug)]
pub(crate) struct CascadeTarget {
    /// One control client per router, the publishers' first.
    pub routers: Vec<Kaskade>,
    /// The run's room-id tag.
    pub tag: String,
    /// Relayed tracks per (router, room), once all have arrived.
    relayed: Mutex<HashMap<(usize, u32), Vec<PubTrack>>>,
}

impl CascadeTarget {
    /// Connects to every router.
    pub(crate) async fn connect(
        controls: &[SocketAddr],
        tag: &str,
    ) -> Result<CascadeTarget, String> {
        let mut routers = vec![];
        for c in controls {
            routers.push(Kaskade::connect(*c).await?);
        }
        Ok(CascadeTarget {
            routers,
            tag: tag.into(),
            relayed: Mutex::new(HashMap::new()),
        })
    }

    /// Creates room `r` on the publishers' router and links it to every other
    /// router; returns the room's session limit on each router.
    pub(crate) async fn create_room(&self, r: u32) -> Result<Vec<u32>, String> {
        let room = room_id(&self.tag, r);
        let mut limits = vec![self.routers[0].create_room(&room).await?];
        for (i, k) in self.routers.iter().enumerate().skip(1) {
            self.routers[0].link_room(&room, &node_id(i)).await?;
            // The peer creates its side of the room when the link comes up.
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                match k.get_room(&room).await {
                    Ok(rm) => {
                        limits.push(rm.max_sessions);
                        break;
                    }
                    Err(e) if Instant::now() > end => {
                        return Err(format!("room {room} never appeared on {}: {e}", node_id(i)))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        Ok(limits)
    }

    /// The tracks of `pubs` as router `k` relays them (waits until all are there).
    pub(crate) async fn tracks_on(
        &self,
        joins: &Arc<Joins>,
        k: usize,
        r: u32,
        pubs: &[Publisher],
    ) -> Result<Vec<PubTrack>, String> {
        let local: Vec<PubTrack> = pubs.iter().flat_map(|p| p.tracks.clone()).collect();
        if k == 0 {
            return Ok(local);
        }
        let mut cache = self.relayed.lock().await;
        if let Some(t) = cache.get(&(k, r)) {
            return Ok(t.clone());
        }
        let room = room_id(&self.tag, r);
        let end = Instant::now() + joins.scenario.join_timeout.0;
        let tracks = loop {
            let rm = self.routers[k].get_room(&room).await?;
            let remote: Vec<PubTrack> = rm
                .tracks
                .iter()
                .filter(|t| !t.origin_node_id.is_empty())
                .map(|t| PubTrack {
                    track_id: t.track_id.clone(),
                    video: t.kind == pb::TrackKind::Video as i32,
                })
                .collect();
            if remote.len() >= local.len() {
                break remote;
            }
            if Instant::now() > end {
                return Err(format!(
                    "{} relays {} of the {} published tracks after {:?}",
                    node_id(k),
                    remote.len(),
                    local.len(),
                    joins.scenario.join_timeout.0
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        cache.insert((k, r), tracks.clone());
        Ok(tracks)
    }

    /// Deletes the run's rooms on every router (best effort).
    pub(crate) async fn cleanup(&self, rooms: u32) {
        for k in &self.routers {
            for r in 0..rooms {
                k.delete_room(&room_id(&self.tag, r)).await;
            }
        }
    }
}

/// What one router of a cascade did in the measured window.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct RouterFigures {
    /// Node id.
    pub node: String,
    /// Role: `origin` (the publishers') or `edge`.
    pub role: String,
    /// CPU seconds in the window.
    pub cpu_secs: Option<f64>,
    /// Percent of one core.
    pub cpu_pct: Option<f64>,
    /// RTP packets it wrote to its own subscribers (kaskade_rtp_packets_forwarded_total).
    pub forwarded: Option<u64>,
    /// Relayed datagrams it sent over its links (`ListLinks`).
    pub link_datagrams_sent: u64,
    /// Relayed datagrams it received over its links.
    pub link_datagrams_received: u64,
    /// Link bytes sent and received.
    pub link_bytes_sent: u64,
    /// Link bytes received.
    pub link_bytes_received: u64,
    /// Relayed packets the far side asked again, and resent.
    pub link_nacked: u64,
    /// Resent.
    pub link_retransmitted: u64,
    /// Relayed packets never received even after asking again.
    pub link_lost: u64,
    /// Tracks sent and received over its links at the end.
    pub link_tracks_sent: u32,
    /// Tracks received.
    pub link_tracks_received: u32,
    /// CPU µs per relayed datagram it sent or received (origin: sent, edge: received).
    pub us_per_relayed: Option<f64>,
    /// CPU µs per packet written to its subscribers.
    pub us_per_forwarded: Option<f64>,
    /// Video latency of its subscribers (publisher → subscriber), ms.
    pub latency_video: super::measure::Percentiles,
    /// What the hop to this router adds to video latency: its subscribers'
    /// p50 (and p99) minus those on the publishers' router, ms (edges only).
    pub hop_added_p50_ms: Option<f64>,
    /// The same at p99.
    pub hop_added_p99_ms: Option<f64>,
}

/// Link counters of a router summed over its links.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LinkTotals {
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// NACKed.
    pub nacked: u64,
    /// Retransmitted.
    pub retransmitted: u64,
    /// Lost.
    pub lost: u64,
    /// Tracks sent.
    pub tracks_sent: u32,
    /// Tracks received.
    pub tracks_received: u32,
}

impl LinkTotals {
    /// The sum over `links`.
    pub(crate) fn of(links: &[pb::Link]) -> LinkTotals {
        links.iter().fold(LinkTotals::default(), |mut t, l| {
            t.datagrams_sent += l.datagrams_sent;
            t.datagrams_received += l.datagrams_received;
            t.bytes_sent += l.bytes_sent;
            t.bytes_received += l.bytes_received;
            t.nacked += l.nacked;
            t.retransmitted += l.retransmitted;
            t.lost += l.lost;
            t.tracks_sent += l.tracks_sent;
            t.tracks_received += l.tracks_received;
            t
        })
    }

    /// The counters' increase from `before` (track counts: the later ones).
    pub(crate) fn since(&self, before: &LinkTotals) -> LinkTotals {
        LinkTotals {
            datagrams_sent: self.datagrams_sent.saturating_sub(before.datagrams_sent),
            datagrams_received: self
                .datagrams_received
                .saturating_sub(before.datagrams_received),
            bytes_sent: self.bytes_sent.saturating_sub(before.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(before.bytes_received),
            nacked: self.nacked.saturating_sub(before.nacked),
            retransmitted: self.retransmitted.saturating_sub(before.retransmitted),
            lost: self.lost.saturating_sub(before.lost),
            tracks_sent: self.tracks_sent,
            tracks_received: self.tracks_received,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_counters_add_up_and_difference() {
        let l = |sent: u64, recv: u64| pb::Link {
            datagrams_sent: sent,
            datagrams_received: recv,
            nacked: 2,
            tracks_sent: 3,
            ..Default::default()
        };
        let before = LinkTotals::of(&[l(10, 1), l(20, 2)]);
        assert_eq!((before.datagrams_sent, before.nacked), (30, 4));
        let after = LinkTotals::of(&[l(110, 5), l(220, 2)]);
        let d = after.since(&before);
        assert_eq!(
            (d.datagrams_sent, d.datagrams_received, d.nacked),
            (300, 4, 0)
        );
        assert_eq!(d.tracks_sent, 6);
        assert_eq!(node_id(2), "lt2");
    }
}
