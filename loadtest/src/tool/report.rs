//! The figures of a run (serialised as the JSON report) and their human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::cascade::RouterFigures;
use super::measure::{Percentiles, Spread};
use super::scenario::Scenario;
use super::session::Role;
use super::target::TargetInfo;
use super::trend::Trend;

/// One per-second sample.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// ramp, warmup, measure or end.
    pub phase: String,
    /// Clients connected.
    pub connected: u64,
    /// Joins failed so far.
    pub failed: u64,
    /// Audio received by all subscribers, bits/s.
    pub rx_bps_audio: f64,
    /// Video received per source layer, bits/s.
    pub rx_bps_layers: Vec<f64>,
    /// RTP packets received per second.
    pub rx_pps: f64,
    /// Loss so far (probe gaps over expected), percent.
    pub loss_pct: f64,
    /// Latency percentiles of this second, ms.
    pub latency: Percentiles,
    /// Router CPU, percent of one core.
    pub router_cpu_pct: Option<f64>,
    /// Load generator CPU, percent of one core.
    pub generator_cpu_pct: Option<f64>,
    /// Largest generator timer lag this second, ms.
    pub generator_lag_max_ms: f64,
    /// Router resident memory (all routers of the target), MiB.
    pub router_rss_mb: Option<f64>,
    /// Router open file descriptors (all routers).
    pub router_fds: Option<u64>,
    /// Router CPU µs per forwarded packet this second.
    pub router_us_per_forwarded: Option<f64>,
    /// Join/leave cycles done so far (churn runs).
    pub cycles: u64,
}

/// A failed join.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Failure {
    /// Client id.
    pub client: u32,
    /// Role.
    pub role: Role,
    /// Room index.
    pub room: u32,
    /// Index within its role and room.
    pub index: u32,
    /// Its traffic was impaired.
    pub impaired: bool,
    /// Why.
    pub reason: String,
}

/// Joins.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct JoinFigures {
    /// Joins attempted (publishers, subscribers, meeting subscriptions).
    pub attempted: u64,
    /// Joins that failed.
    pub failed: u64,
    /// Offer created → ICE + DTLS connected.
    pub join_time: Percentiles,
    /// Media asked for → first complete keyframe, per video subscription.
    pub time_to_first_frame: Percentiles,
    /// Video subscriptions that never showed a complete frame.
    pub no_first_frame: u64,
    /// Failure reasons, counted (reason text with ids stripped).
    pub reasons: BTreeMap<String, u64>,
    /// Every failure.
    pub failures: Vec<Failure>,
    /// Clients whose traffic was impaired.
    pub impaired_clients: u64,
    /// Connected clients that were no longer connected at the end.
    pub disconnected_at_end: u64,
    /// WebRTC stack errors the clients saw (str0m), with the last one.
    pub client_errors: u64,
    /// The last client-side WebRTC error.
    pub last_client_error: Option<String>,
}

/// Loss of one kind of media.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub(crate) struct Loss {
    /// RTP packets missing at the end (after NACK/RTX repair).
    pub lost: u64,
    /// RTP packets expected.
    pub expected: u64,
    /// `lost / expected`, percent.
    pub pct: f64,
}

/// What subscribers received in the measured window.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct MediaFigures {
    /// Length of the window, seconds.
    pub window_secs: f64,
    /// Subscriptions (track × receiver) expected.
    pub subscriptions: u64,
    /// Subscriptions that received media.
    pub subscriptions_receiving: u64,
    /// RTP packets received in the window.
    pub rx_packets: u64,
    /// Total bitrate received, bits/s (payload).
    pub rx_bps: f64,
    /// Audio bitrate received, bits/s.
    pub rx_bps_audio: f64,
    /// Video bitrate received per source layer (rid → bits/s).
    pub rx_bps_layers: BTreeMap<String, f64>,
    /// Video subscriptions by the layer they were on at the end (rid → count).
    pub layer_at_end: BTreeMap<String, u64>,
    /// Mean video bitrate per video subscription, bits/s.
    pub rx_bps_per_video_subscription: f64,
    /// Whole-run loss, all media.
    pub loss: Loss,
    /// Audio loss (no NACK for audio).
    pub loss_audio: Loss,
    /// Video loss after NACK.
    pub loss_video: Loss,
    /// End-to-end latency of audio, window.
    pub latency_audio: Percentiles,
    /// End-to-end latency of video, window.
    pub latency_video: Percentiles,
    /// Video latency per receiver group (a cascade: per router, the
    /// publishers' first), window.
    pub latency_video_by_group: Vec<Percentiles>,
    /// Freezes (video frame gaps > 500 ms), whole run after the first frame.
    pub freezes: u64,
    /// Time frozen, seconds.
    pub frozen_secs: f64,
    /// Longest frame gap, ms.
    pub longest_gap_ms: f64,
    /// Layer switches seen by subscribers.
    pub layer_switches: u64,
    /// RTP packets the publishers sent (all layers, whole run).
    pub published_packets: u64,
    /// Keyframe requests the publishers received (whole run).
    pub keyframe_requests: u64,
    /// Of those, ignored like Chrome's encoder does (within 300 ms of the
    /// last one acted on).
    pub keyframe_requests_ignored: u64,
    /// Gaps in the publishers' packet indexes as received: loss plus what the SFU
    /// chose not to forward (layer switches, temporal layers). Context, not loss.
    pub probe_gaps: u64,
    /// Datagrams the kernel dropped at the load generator's sockets (full buffers):
    /// loss caused by the generator, not the SFU.
    pub generator_socket_drops: u64,
}

/// CPU of one router thread (threads of one name summed) in the window.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct ThreadCpu {
    /// Thread name (`kaskade-media-N` for kaskade's media workers).
    pub name: String,
    /// CPU seconds in the window.
    pub cpu_secs: f64,
    /// Percent of one core.
    pub cpu_pct: f64,
}

/// CPU of the router and of the load generator in the window.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct CpuFigures {
    /// Router process id, when known.
    pub router_pid: Option<u32>,
    /// Router CPU per thread name, busiest first.
    pub router_threads: Vec<ThreadCpu>,
    /// Router CPU seconds in the window.
    pub router_cpu_secs: Option<f64>,
    /// Router CPU, percent of one core.
    pub router_cpu_pct: Option<f64>,
    /// Packets the router says it forwarded in the window (kaskade metrics).
    pub router_forwarded: Option<u64>,
    /// Router CPU µs per forwarded packet (its own counter).
    pub router_us_per_forwarded: Option<f64>,
    /// Router CPU µs per packet the subscribers received (comparable across SFUs).
    pub router_us_per_delivered: Option<f64>,
    /// ICE-TCP connections the router had open at the end of the window
    /// (kaskade metrics).
    pub router_tcp_connections: Option<u64>,
    /// Load generator CPU seconds in the window.
    pub generator_cpu_secs: Option<f64>,
    /// Load generator CPU, percent of one core.
    pub generator_cpu_pct: Option<f64>,
    /// Load generator CPU µs per received packet.
    pub generator_us_per_received: Option<f64>,
    /// Driver threads.
    pub generator_threads: usize,
    /// How late the generator served its clients' timers (ms).
    pub generator_lag: Percentiles,
    /// Datagrams the generator's sockets refused.
    pub generator_send_drops: u64,
}

/// One run against one target.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunReport {
    /// Target label, e.g. `kaskade w1`.
    pub target: String,
    /// Repetition index (0-based).
    pub repeat: u32,
    /// The scenario.
    pub scenario: Scenario,
    /// Unix time of the start, ms.
    pub started_unix_ms: u64,
    /// Joins.
    pub joins: JoinFigures,
    /// Media.
    pub media: MediaFigures,
    /// CPU.
    pub cpu: CpuFigures,
    /// Per-second samples.
    pub series: Vec<Sample>,
    /// Things a reader must know (e.g. layer selection unsupported).
    pub notes: Vec<String>,
    /// The target's build.
    pub target_info: TargetInfo,
    /// Whether router memory, CPU per packet and latency stayed flat over the
    /// measured window (churn runs: over the cycles).
    pub trends: Vec<Trend>,
    /// Per router of a cascade.
    pub routers: Vec<RouterFigures>,
    /// A join/leave soak's figures.
    pub churn: Option<ChurnFigures>,
}

/// What a join/leave soak did.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct ChurnFigures {
    /// Cycles done (join, subscribe, leave).
    pub cycles: u64,
    /// Cycles that failed somewhere.
    pub failed: u64,
    /// Cycles per second.
    pub cycles_per_sec: f64,
    /// Join, subscribe and leave, per cycle, ms.
    pub cycle_time: Percentiles,
    /// Router RSS and open descriptors before the first cycle and after the last.
    pub rss_mb_before: Option<f64>,
    /// After the last cycle.
    pub rss_mb_after: Option<f64>,
    /// Before the first cycle.
    pub fds_before: Option<u64>,
    /// After the last cycle (its sessions closed).
    pub fds_after: Option<u64>,
    /// Most descriptors seen during the cycles.
    pub fds_max: Option<u64>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// Formats bits per second.
pub(crate) fn fmt_bps(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.2} Mbps", bps / 1e6)
    } else {
        format!("{:.0} kbps", bps / 1e3)
    }
}

impl RunReport {
    /// The human summary.
    pub(crate) fn summary(&self) -> String {
        let mut o = String::new();
        let j = &self.joins;
        let m = &self.media;
        let c = &self.cpu;
        let _ = writeln!(o, "== {} — {} ==", self.target, self.scenario.name);
        let _ = writeln!(o, "scenario   {}", self.scenario.shape());
        let _ = writeln!(
            o,
            "joins      {} attempted, {} failed; join p50 {:.0} ms p99 {:.0} ms; first frame p50 {:.0} ms p99 {:.0} ms{}",
            j.attempted,
            j.failed,
            j.join_time.p50_ms,
            j.join_time.p99_ms,
            j.time_to_first_frame.p50_ms,
            j.time_to_first_frame.p99_ms,
            if j.no_first_frame > 0 {
                format!(" ({} video subscriptions without a frame)", j.no_first_frame)
            } else {
                String::new()
            }
        );
        if j.impaired_clients > 0 || j.disconnected_at_end > 0 || j.client_errors > 0 {
            let _ = writeln!(
                o,
                "clients    {} impaired; {} disconnected before the end; {} WebRTC errors{}",
                j.impaired_clients,
                j.disconnected_at_end,
                j.client_errors,
                j.last_client_error
                    .as_ref()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            );
        }
        for (reason, n) in &j.reasons {
            let _ = writeln!(o, "  failure  {n} × {reason}");
        }
        let _ = writeln!(
            o,
            "keyframes  {} requests reached the publishers, {} ignored as under 300 ms apart",
            m.keyframe_requests, m.keyframe_requests_ignored
        );
        let layers: Vec<String> = m
            .rx_bps_layers
            .iter()
            .map(|(rid, bps)| format!("{rid} {}", fmt_bps(*bps)))
            .collect();
        let _ = writeln!(
            o,
            "received   {}/{} subscriptions; {} total (audio {}, video {}); {:.1} kbps per video subscription",
            m.subscriptions_receiving,
            m.subscriptions,
            fmt_bps(m.rx_bps),
            fmt_bps(m.rx_bps_audio),
            if layers.is_empty() { "–".into() } else { layers.join(", ") },
            m.rx_bps_per_video_subscription / 1e3
        );
        let at_end: Vec<String> = m
            .layer_at_end
            .iter()
            .map(|(rid, n)| format!("{rid}: {n}"))
            .collect();
        if !at_end.is_empty() {
            let _ = writeln!(
                o,
                "layers     at the end {}; {} switches",
                at_end.join(", "),
                m.layer_switches
            );
        }
        let _ = writeln!(
            o,
            "loss       {:.3}% (audio {:.3}%, video after NACK {:.3}%)",
            m.loss.pct, m.loss_audio.pct, m.loss_video.pct
        );
        if m.generator_socket_drops > 0 {
            let _ = writeln!(
                o,
                "           {} datagrams dropped by full load-generator socket buffers",
                m.generator_socket_drops
            );
        }
        let _ = writeln!(
            o,
            "latency    audio p50 {:.2} p99 {:.2} max {:.1} ms; video p50 {:.2} p99 {:.2} max {:.1} ms",
            m.latency_audio.p50_ms,
            m.latency_audio.p99_ms,
            m.latency_audio.max_ms,
            m.latency_video.p50_ms,
            m.latency_video.p99_ms,
            m.latency_video.max_ms
        );
        let _ = writeln!(
            o,
            "freezes    {} ({:.1} s frozen, longest gap {:.0} ms)",
            m.freezes, m.frozen_secs, m.longest_gap_ms
        );
        let _ = writeln!(
            o,
            "router     CPU {}% of a core; {} µs per forwarded packet ({} forwarded); {} µs per delivered packet",
            opt(c.router_cpu_pct, 1),
            opt(c.router_us_per_forwarded, 2),
            c.router_forwarded.map_or("–".into(), |v| v.to_string()),
            opt(c.router_us_per_delivered, 2),
        );
        if let Some(n) = c.router_tcp_connections.filter(|n| *n > 0) {
            let _ = writeln!(o, "tcp        {n} ICE-TCP connections open at the end");
        }
        if !c.router_threads.is_empty() {
            let list: Vec<String> = c
                .router_threads
                .iter()
                .take(4)
                .map(|t| format!("{} {:.1}%", t.name, t.cpu_pct))
                .collect();
            let _ = writeln!(o, "threads    {} (of a core)", list.join(", "));
        }
        let _ = writeln!(
            o,
            "generator  CPU {}% of a core on {} threads; {} µs per received packet; timer lag p99 {:.2} ms max {:.1} ms; {} sends refused",
            opt(c.generator_cpu_pct, 1),
            c.generator_threads,
            opt(c.generator_us_per_received, 2),
            c.generator_lag.p99_ms,
            c.generator_lag.max_ms,
            c.generator_send_drops
        );
        for r in &self.routers {
            let _ = writeln!(
                o,
                "router {}  {} CPU {}%; link sent {} / received {} datagrams ({} NACKed, {} resent, {} lost); {} µs per relayed datagram, {} µs per forwarded packet; video p50 {:.2} p99 {:.2} ms{}",
                r.node,
                r.role,
                opt(r.cpu_pct, 1),
                r.link_datagrams_sent,
                r.link_datagrams_received,
                r.link_nacked,
                r.link_retransmitted,
                r.link_lost,
                opt(r.us_per_relayed, 2),
                opt(r.us_per_forwarded, 2),
                r.latency_video.p50_ms,
                r.latency_video.p99_ms,
                r.hop_added_p50_ms
                    .zip(r.hop_added_p99_ms)
                    .map_or(String::new(), |(a, b)| format!(
                        "; the hop adds p50 {a:.2} ms, p99 {b:.2} ms"
                    )),
            );
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(
                o,
                "churn      {} cycles ({} failed), {:.1} per s; cycle p50 {:.0} ms p99 {:.0} ms; router RSS {} → {} MiB; fds {} → {} (max {})",
                c.cycles,
                c.failed,
                c.cycles_per_sec,
                c.cycle_time.p50_ms,
                c.cycle_time.p99_ms,
                opt(c.rss_mb_before, 1),
                opt(c.rss_mb_after, 1),
                c.fds_before.map_or("–".into(), |v| v.to_string()),
                c.fds_after.map_or("–".into(), |v| v.to_string()),
                c.fds_max.map_or("–".into(), |v| v.to_string()),
            );
        }
        for t in &self.trends {
            let _ = writeln!(o, "trend      {}", t.line());
        }
        for n in &self.notes {
            let _ = writeln!(o, "note       {n}");
        }
        o
    }
}

/// Medians over repeats of one target's runs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TargetMedians {
    /// Target label.
    pub target: String,
    /// Runs.
    pub runs: usize,
    /// Router CPU µs per forwarded packet (router's counter).
    pub us_per_forwarded: Option<Spread>,
    /// Router CPU µs per delivered packet.
    pub us_per_delivered: Option<Spread>,
    /// Router CPU, percent of a core.
    pub router_cpu_pct: Option<Spread>,
    /// Video latency p50, ms.
    pub latency_p50_ms: Option<Spread>,
    /// Video latency p99, ms.
    pub latency_p99_ms: Option<Spread>,
    /// Audio latency p99, ms.
    pub audio_latency_p99_ms: Option<Spread>,
    /// Loss, percent.
    pub loss_pct: Option<Spread>,
    /// Join time p50, ms.
    pub join_p50_ms: Option<Spread>,
    /// Time to first frame p50, ms.
    pub ttff_p50_ms: Option<Spread>,
    /// Received bitrate per video subscription, kbps.
    pub kbps_per_video_sub: Option<Spread>,
    /// Failed joins.
    pub join_failures: Option<Spread>,
    /// Freezes.
    pub freezes: Option<Spread>,
    /// Generator CPU, percent of a core.
    pub generator_cpu_pct: Option<Spread>,
}

/// Medians of every target's runs.
pub(crate) fn medians(runs: &[RunReport]) -> Vec<TargetMedians> {
    let mut targets: Vec<String> = vec![];
    for r in runs {
        if !targets.contains(&r.target) {
            targets.push(r.target.clone());
        }
    }
    use super::measure::spread;
    targets
        .into_iter()
        .map(|t| {
            let rs: Vec<&RunReport> = runs.iter().filter(|r| r.target == t).collect();
            let f = |g: &dyn Fn(&RunReport) -> Option<f64>| spread(rs.iter().filter_map(|r| g(r)));
            TargetMedians {
                runs: rs.len(),
                us_per_forwarded: f(&|r| r.cpu.router_us_per_forwarded),
                us_per_delivered: f(&|r| r.cpu.router_us_per_delivered),
                router_cpu_pct: f(&|r| r.cpu.router_cpu_pct),
                latency_p50_ms: f(&|r| Some(r.media.latency_video.p50_ms)),
                latency_p99_ms: f(&|r| Some(r.media.latency_video.p99_ms)),
                audio_latency_p99_ms: f(&|r| Some(r.media.latency_audio.p99_ms)),
                loss_pct: f(&|r| Some(r.media.loss.pct)),
                join_p50_ms: f(&|r| Some(r.joins.join_time.p50_ms)),
                ttff_p50_ms: f(&|r| Some(r.joins.time_to_first_frame.p50_ms)),
                kbps_per_video_sub: f(&|r| Some(r.media.rx_bps_per_video_subscription / 1e3)),
                join_failures: f(&|r| Some(r.joins.failed as f64)),
                freezes: f(&|r| Some(r.media.freezes as f64)),
                generator_cpu_pct: f(&|r| r.cpu.generator_cpu_pct),
                target: t,
            }
        })
        .collect()
}

fn cell(s: &Option<Spread>, digits: usize, spread: bool) -> String {
    match s {
        None => "–".into(),
        Some(s) if spread && s.n > 1 && (s.max - s.min).abs() > f64::EPSILON => {
            format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits)
        }
        Some(s) => format!("{:.d$}", s.median, d = digits),
    }
}

/// The side-by-side table (Markdown), medians with the spread in parentheses.
pub(crate) fn comparison_table(meds: &[TargetMedians]) -> String {
    let mut o = String::new();
    type Row<'a> = (&'a str, &'a dyn Fn(&TargetMedians) -> String);
    let rows: [Row<'_>; 12] = [
        ("runs", &|m| m.runs.to_string()),
        ("router CPU µs / forwarded pkt", &|m| {
            cell(&m.us_per_forwarded, 2, true)
        }),
        ("router CPU µs / delivered pkt", &|m| {
            cell(&m.us_per_delivered, 2, true)
        }),
        ("router CPU % of a core", &|m| {
            cell(&m.router_cpu_pct, 1, true)
        }),
        ("video latency p50 ms", &|m| {
            cell(&m.latency_p50_ms, 2, true)
        }),
        ("video latency p99 ms", &|m| {
            cell(&m.latency_p99_ms, 2, true)
        }),
        ("audio latency p99 ms", &|m| {
            cell(&m.audio_latency_p99_ms, 2, true)
        }),
        ("loss %", &|m| cell(&m.loss_pct, 3, true)),
        ("join time p50 ms", &|m| cell(&m.join_p50_ms, 0, true)),
        ("first frame p50 ms", &|m| cell(&m.ttff_p50_ms, 0, true)),
        ("kbps per video subscription", &|m| {
            cell(&m.kbps_per_video_sub, 0, true)
        }),
        ("failed joins / freezes", &|m| {
            format!(
                "{} / {}",
                cell(&m.join_failures, 0, false),
                cell(&m.freezes, 0, false)
            )
        }),
    ];
    let _ = write!(o, "| figure |");
    for m in meds {
        let _ = write!(o, " {} |", m.target);
    }
    let _ = writeln!(o);
    let _ = write!(o, "|---|");
    for _ in meds {
        let _ = write!(o, "---|");
    }
    let _ = writeln!(o);
    for (name, f) in rows {
        let _ = write!(o, "| {name} |");
        for m in meds {
            let _ = write!(o, " {} |", f(m));
        }
        let _ = writeln!(o);
    }
    o
}
