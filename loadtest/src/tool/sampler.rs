//! Router and generator counters: a snapshot at one moment (CPU, threads,
//! memory, descriptors, forwarded packets, cascade link counters), and the
//! per-second sampler behind the progress line and the report's time series.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cascade::LinkTotals;
use super::driver::Interval;
use super::kaskade::Kaskade;
use super::measure::{bps, ratio, Percentiles};
use super::procfs::{cpu_time, open_fds, own_cpu_time, rss_bytes, thread_cpu_times};
use super::progress::Progress;
use super::prom;
use super::report::Sample;
use super::session::Joins;
use super::target::RouterRef;

/// One router's counters at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouterSnap {
    /// CPU time of the process.
    pub cpu: Option<Duration>,
    /// CPU time per thread, with the thread's name.
    pub threads: Vec<(String, Duration)>,
    /// `kaskade_rtp_packets_forwarded_total`.
    pub forwarded: Option<f64>,
    /// `kaskade_tcp_connections{state="active"}`: ICE-TCP connections open.
    pub tcp_active: Option<f64>,
    /// Resident memory, bytes.
    pub rss: Option<u64>,
    /// Open file descriptors.
    pub fds: Option<u64>,
    /// Cascade link counters (`ListLinks`).
    pub links: Option<LinkTotals>,
}

/// Every router's and the generator's counters at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// When.
    pub at: Instant,
    /// Per router, in the target's order.
    pub routers: Vec<RouterSnap>,
    /// The load generator's CPU time.
    pub own_cpu: Option<Duration>,
}

fn sum_opt<T: std::iter::Sum<T>>(v: impl Iterator<Item = Option<T>>) -> Option<T> {
    v.collect::<Option<Vec<T>>>()
        .filter(|v| !v.is_empty())
        .map(|v| v.into_iter().sum())
}

impl Snapshot {
    /// Reads the counters of `routers`; `threads` also per thread, `links`
    /// (one control client per router) the cascade links.
    pub(crate) async fn take(routers: &[RouterRef], threads: bool, links: &[Kaskade]) -> Snapshot {
        let mut out = Vec::with_capacity(routers.len());
        for (i, r) in routers.iter().enumerate() {
            let exposition = match &r.metrics {
                Some(m) => prom::scrape(m).await.ok(),
                None => None,
            };
            let forwarded = exposition
                .as_ref()
                .map(|e| e.sum("kaskade_rtp_packets_forwarded_total", &[]));
            let tcp_active = exposition
                .as_ref()
                .map(|e| e.sum("kaskade_tcp_connections", &[("state", "active")]));
            let links = match links.get(i) {
                Some(k) => k.links().await.ok().map(|l| LinkTotals::of(&l)),
                None => None,
            };
            out.push(RouterSnap {
                cpu: r.pid.and_then(cpu_time),
                threads: match (threads, r.pid) {
                    (true, Some(p)) => thread_cpu_times(p),
                    _ => vec![],
                },
                forwarded,
                tcp_active,
                rss: r.pid.and_then(rss_bytes),
                fds: r.pid.and_then(open_fds),
                links,
            });
        }
        Snapshot {
            at: Instant::now(),
            routers: out,
            own_cpu: own_cpu_time(),
        }
    }

    /// CPU time of all routers.
    pub(crate) fn cpu(&self) -> Option<Duration> {
        sum_opt(self.routers.iter().map(|r| r.cpu))
    }

    /// Forwarded packets of all routers.
    pub(crate) fn forwarded(&self) -> Option<f64> {
        sum_opt(self.routers.iter().map(|r| r.forwarded))
    }

    /// ICE-TCP connections open on all routers.
    pub(crate) fn tcp_active(&self) -> Option<f64> {
        sum_opt(self.routers.iter().map(|r| r.tcp_active))
    }

    /// Resident memory of all routers, bytes.
    pub(crate) fn rss(&self) -> Option<u64> {
        sum_opt(self.routers.iter().map(|r| r.rss))
    }

    /// Open descriptors of all routers.
    pub(crate) fn fds(&self) -> Option<u64> {
        sum_opt(self.routers.iter().map(|r| r.fds))
    }

    /// CPU time per thread name over all routers.
    pub(crate) fn threads(&self) -> Vec<(String, Duration)> {
        self.routers
            .iter()
            .flat_map(|r| r.threads.iter().cloned())
            .collect()
    }
}

/// `b − a` of two optional counters.
pub(crate) fn cpu_delta(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    Some(b?.saturating_sub(a?))
}

/// What the sampler needs.
pub(crate) struct SampleLoop {
    /// The run's join state.
    pub joins: Arc<Joins>,
    /// The target's routers.
    pub routers: Vec<RouterRef>,
    /// The run's phase.
    pub phase: Arc<Mutex<&'static str>>,
    /// Set when the run ends.
    pub stop: Arc<AtomicBool>,
    /// The live line.
    pub progress: Progress,
}

impl SampleLoop {
    /// Samples once a second until `stop`; returns the series.
    pub(crate) async fn run(mut self) -> Vec<Sample> {
        let start = Instant::now();
        let mut series = vec![];
        let mut last = Snapshot::take(&self.routers, false, &[]).await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        while !self.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let iv: Interval = self.joins.driver.interval().await;
            let now = Snapshot::take(&self.routers, false, &[]).await;
            let sample = sample(&self.joins, &self.phase, start, &last, &now, &iv);
            self.progress.line(&sample);
            series.push(sample);
            last = now;
        }
        self.progress.done();
        series
    }
}

fn sample(
    joins: &Joins,
    phase: &Mutex<&'static str>,
    start: Instant,
    last: &Snapshot,
    now: &Snapshot,
    iv: &Interval,
) -> Sample {
    let dt = (now.at - last.at).as_secs_f64().max(1e-3);
    let pct = |a, b| cpu_delta(a, b).map(|d| d.as_secs_f64() / dt * 100.0);
    let failed = joins.records().iter().filter(|r| r.error.is_some()).count() as u64;
    let router_cpu = cpu_delta(last.cpu(), now.cpu());
    let forwarded = match (last.forwarded(), now.forwarded()) {
        (Some(a), Some(b)) if b > a => Some(b - a),
        _ => None,
    };
    Sample {
        t: (now.at - start).as_secs_f64(),
        phase: phase.lock().map(|p| p.to_string()).unwrap_or_default(),
        connected: iv.connected,
        failed,
        rx_bps_audio: bps(iv.audio_bytes, dt),
        rx_bps_layers: iv.video_bytes.iter().map(|b| bps(*b, dt)).collect(),
        rx_pps: iv.packets as f64 / dt,
        loss_pct: ratio(iv.lost_total, iv.expected_total) * 100.0,
        latency: Percentiles::of(&iv.latency),
        router_cpu_pct: pct(last.cpu(), now.cpu()),
        generator_cpu_pct: pct(last.own_cpu, now.own_cpu),
        generator_lag_max_ms: iv.lag_max_us as f64 / 1000.0,
        router_rss_mb: now.rss().map(|b| b as f64 / (1024.0 * 1024.0)),
        router_fds: now.fds(),
        router_us_per_forwarded: router_cpu
            .zip(forwarded)
            .map(|(c, f)| c.as_secs_f64() * 1e6 / f),
        cycles: joins.cycles_done(),
    }
}
