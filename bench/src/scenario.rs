//! Whole simulated rooms (the load tester's shapes, on the virtual clock):
//! what the router spends per forwarded packet with everything it does for
//! a room — the publishers' media, the subscribers' RTCP and TWCC feedback,
//! str0m's timers, bandwidth estimation, layer selection, the bus between
//! workers — not only the write path the `hotpath` bench isolates.
//!
//! The clients are the load tester's str0m clients configured as the tool
//! configures them (publishers with audio and three VP8 simulcast layers,
//! answering keyframe requests like Chrome; subscribers asking for a
//! keyframe until the first one arrives). The router is the test kit's
//! `Sim`: the real control plane and worker cores on one thread. Router code
//! is marked through `Sim::router_mark`: its thread CPU time is summed, and
//! under callgrind only it is collected, so the figure leaves out the
//! simulated browsers and network. The kernel's send path is not in it (the
//! simulation has no sockets).

use crate::measure::{callgrind, thread_cpu};
use kaskade_loadtest::BROWSER_KEYFRAME_MIN_INTERVAL;
use kaskade_protocol::v1 as pb;
use kaskade_router::media::placement::Policy;
use kaskade_router::testkit::{Sim, SimOptions};
use std::cell::Cell;
use std::time::Duration;

/// A room shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Label in the output.
    pub name: &'static str,
    /// Worker cores.
    pub workers: usize,
    /// Rooms.
    pub rooms: usize,
    /// Publishers per room (audio + three VP8 layers each).
    pub publishers: usize,
    /// Receive-only subscribers per room (data-channel bootstrap).
    pub subscribers: usize,
    /// Publishers also receive every other publisher of their room.
    pub meeting: bool,
    /// The spatial layer subscribers ask for (0 low .. 2 high).
    pub layer: u32,
    /// How the router places sessions (the production default: rooms kept
    /// together while they fit a share of a worker).
    pub placement: Policy,
    /// Every worker on one UDP port (`media.single_port`): datagrams reach
    /// the worker their source hashes to and are handed over from there.
    pub single_port: bool,
}

impl Shape {
    /// 1 publisher → `n` subscribers on the top layer (S1's shape; 6 is the
    /// issue's small fan-out).
    pub fn fan_out(n: usize, workers: usize) -> Self {
        Self {
            name: "fan-out",
            workers,
            rooms: 1,
            publishers: 1,
            subscribers: n,
            meeting: false,
            layer: 2,
            placement: Policy::default(),
            single_port: false,
        }
    }

    /// `rooms` meetings of `size` participants, each receiving the others
    /// on the middle layer (S2's shape).
    pub fn meetings(rooms: usize, size: usize, workers: usize) -> Self {
        Self {
            name: "meetings",
            workers,
            rooms,
            publishers: size,
            subscribers: 0,
            meeting: true,
            layer: 1,
            placement: Policy::default(),
            single_port: false,
        }
    }
}

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static ENTERED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    static SPENT: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    static CALLGRIND: Cell<bool> = const { Cell::new(false) };
}

/// `Sim::router_mark` for the measured windows: sums the router's thread
/// CPU time; under callgrind, toggles collection at the outermost marks.
fn mark(enter: bool) {
    let depth = DEPTH.with(|d| {
        let v = if enter { d.get() + 1 } else { d.get() - 1 };
        d.set(v);
        v
    });
    let edge = (enter && depth == 1) || (!enter && depth == 0);
    if !edge || !MEASURING.with(Cell::get) {
        return;
    }
    if CALLGRIND.with(Cell::get) {
        callgrind::toggle_collect();
        return;
    }
    let now = thread_cpu();
    if enter {
        ENTERED.with(|e| e.set(now));
    } else {
        let spent = now - ENTERED.with(Cell::get);
        SPENT.with(|s| s.set(s.get() + spent));
    }
}

/// A built and warmed-up scenario.
pub struct Scenario {
    /// The simulation.
    pub sim: Sim,
    /// Its shape.
    pub shape: Shape,
}

/// What one measured window cost.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// RTP packets the router forwarded (its own counter).
    pub forwarded: u64,
    /// Router thread CPU time (zero under callgrind).
    pub cpu: Duration,
    /// Datagrams handed from the worker that read them to the one that
    /// hosts their session (single port).
    pub handovers: u64,
}

impl Window {
    /// Router CPU ns per forwarded packet.
    pub fn cpu_ns(&self) -> f64 {
        self.cpu.as_nanos() as f64 / self.forwarded.max(1) as f64
    }
}

impl Scenario {
    /// Builds the rooms, connects and subscribes everyone, sets the layer
    /// preference and runs `warmup` of virtual time (bandwidth estimation
    /// climbs to the asked layer).
    pub fn new(shape: Shape, seed: u64, warmup: Duration) -> Self {
        let mut sim = Sim::with_options(
            shape.workers,
            seed,
            SimOptions {
                placement: shape.placement,
                single_port: shape.single_port,
                ..Default::default()
            },
        );
        sim.router_mark = mark;
        let client = |sim: &mut Sim| {
            sim.add_client(|c| {
                c.auto_keyframe_request(Some(Duration::from_millis(500)))
                    .keyframe_min_interval(Some(BROWSER_KEYFRAME_MIN_INTERVAL))
                    .packet_log(0)
            })
        };
        let mut all = Vec::new();
        // Per room: (publishers with their tracks, subscribers).
        let mut rooms = Vec::new();
        for r in 0..shape.rooms {
            let room = format!("room{r}");
            sim.create_room(&room);
            let mut pubs = Vec::new();
            for p in 0..shape.publishers {
                let c = client(&mut sim);
                sim.clients[c].client.add_audio();
                sim.clients[c].client.add_video(&["l", "m", "h"]);
                let tracks = sim.join(&room, c, &format!("p{p}"));
                pubs.push((c, tracks));
                all.push(c);
            }
            let mut subs = Vec::new();
            for s in 0..shape.subscribers {
                let c = client(&mut sim);
                sim.clients[c].client.add_data_channel("k");
                sim.join(&room, c, &format!("s{s}"));
                subs.push(c);
                all.push(c);
            }
            rooms.push((pubs, subs));
        }
        sim.connect(&all);
        for (pubs, subs) in &rooms {
            let receivers: Vec<(usize, Vec<pb::Track>)> = pubs
                .iter()
                .filter(|_| shape.meeting)
                .map(|(c, _)| {
                    let others = pubs
                        .iter()
                        .filter(|(o, _)| o != c)
                        .flat_map(|(_, t)| t.clone())
                        .collect();
                    (*c, others)
                })
                .chain(
                    subs.iter()
                        .map(|s| (*s, pubs.iter().flat_map(|(_, t)| t.clone()).collect())),
                )
                .collect();
            for (c, tracks) in receivers {
                if tracks.is_empty() {
                    continue;
                }
                sim.subscribe(c, &tracks);
                let session = sim.clients[c].session.clone().expect("joined");
                for t in tracks
                    .iter()
                    .filter(|t| t.kind == pb::TrackKind::Video as i32)
                {
                    let control = sim.control.clone();
                    sim.api(control.update_subscription(pb::UpdateSubscriptionRequest {
                        session_id: session.clone(),
                        track_id: t.track_id.clone(),
                        max_spatial_layer: Some(shape.layer),
                        ..Default::default()
                    }))
                    .expect("update subscription");
                }
            }
        }
        sim.run_for(warmup);
        Self { sim, shape }
    }

    /// Runs `d` of virtual time with the router's work measured.
    pub fn measure(&mut self, d: Duration) -> Window {
        let before = self.forwarded();
        let handed = self.handovers();
        SPENT.with(|s| s.set(Duration::ZERO));
        CALLGRIND.with(|c| c.set(callgrind::running_on_valgrind()));
        MEASURING.with(|m| m.set(true));
        self.sim.run_for(d);
        MEASURING.with(|m| m.set(false));
        Window {
            forwarded: self.forwarded() - before,
            cpu: SPENT.with(Cell::get),
            handovers: self.handovers() - handed,
        }
    }

    /// Datagrams handed over between workers so far (single port).
    pub fn handovers(&self) -> u64 {
        self.sim.metric("kaskade_single_port_handovers_total") as u64
    }

    /// RTP packets forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.sim.metric("kaskade_rtp_packets_forwarded_total") as u64
    }

    /// Clients that have received media (a check that the scenario runs
    /// as meant).
    pub fn clients_receiving(&self) -> usize {
        self.sim
            .clients
            .iter()
            .filter(|c| c.client.received().iter().any(|r| r.packets > 0))
            .count()
    }
}
