//! One run: start the target, ramp the clients up, warm up, measure, collect, report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::media::MediaKind;
use tokio::task::JoinSet;

use super::driver::{ClientResult, Driver, Interval, Window, MAX_LAYERS};
use super::measure::{
    bps, cpu_us_per_packet, percentiles_of, ratio, udp_socket_drops, Percentiles,
};
use super::procfs::{cpu_time, own_cpu_time, thread_cpu_times};
use super::progress::Progress;
use super::prom;
use super::report::{
    CpuFigures, Failure, JoinFigures, Loss, MediaFigures, RunReport, Sample, ThreadCpu,
};
use super::scenario::Scenario;
use super::session::{JoinRecord, Joins, Publisher, Role};
use super::target::{Started, Target, TargetSpec};

/// Options of a run that are not the scenario.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Driver threads.
    pub threads: usize,
    /// Where logs go.
    pub out_dir: PathBuf,
    /// Print the live progress line.
    pub progress: bool,
}

/// Runs the scenario once against a target.
pub async fn run_once(
    scn: &Scenario,
    spec: &TargetSpec,
    opts: &RunOpts,
    repeat: u32,
) -> Result<RunReport, String> {
    let label = spec.label();
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let tag = format!("{}-{repeat}", started_unix_ms % 1_000_000_000);
    let file_tag = format!(
        "{}-{repeat}",
        label.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let started = Started::start(spec, &opts.out_dir, &file_tag, &tag).await?;
    let epoch = Instant::now();
    let driver =
        Driver::start(opts.threads, epoch, scn.seed).map_err(|e| format!("driver threads: {e}"))?;
    let joins = Arc::new(Joins::new(driver, scn.clone(), epoch));

    let phase = Arc::new(Mutex::new("ramp"));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_loop(
        joins.clone(),
        started.pid,
        phase.clone(),
        stop.clone(),
        Progress::new(opts.progress, &label, scn),
    ));

    ramp(&started.target, &joins).await;
    set_phase(&phase, "warmup");
    tokio::time::sleep(scn.warmup.0).await;

    // The measured window.
    set_phase(&phase, "measure");
    let before = Snapshot::take(started.pid, started.metrics);
    joins.driver.measure(true);
    let t0 = Instant::now();
    tokio::time::sleep(scn.duration.0).await;
    joins.driver.measure(false);
    let window_secs = t0.elapsed().as_secs_f64();
    let after = Snapshot::take(started.pid, started.metrics);
    let end = Instant::now();
    set_phase(&phase, "end");

    let window = joins.driver.window().await;
    let send_drops = joins.driver.interval().await.send_drops;
    let socket_drops = std::fs::read_to_string("/proc/net/udp")
        .map(|t| udp_socket_drops(&t, &joins.ports()))
        .unwrap_or(0);
    let clients = joins.driver.collect(end).await;
    stop.store(true, Ordering::Relaxed);
    let series = sampler.await.unwrap_or_default();
    started.target.cleanup(scn.rooms).await;
    let records = joins.records();
    let notes = joins.notes();
    let threads = opts.threads;
    let router_pid = started.pid;
    drop(started);
    if let Ok(j) = Arc::try_unwrap(joins) {
        j.driver.stop();
    }

    let joins_fig = join_figures(&records, &clients);
    let mut media = media_figures(scn, &clients, &window, window_secs);
    media.generator_socket_drops = socket_drops;
    let mut cpu = cpu_figures(&before, &after, &window, window_secs, threads);
    cpu.router_pid = router_pid;
    cpu.generator_send_drops = send_drops;
    Ok(RunReport {
        target: label,
        repeat,
        scenario: scn.clone(),
        started_unix_ms,
        joins: joins_fig,
        media,
        cpu,
        series,
        notes,
    })
}

fn set_phase(p: &Mutex<&'static str>, v: &'static str) {
    if let Ok(mut g) = p.lock() {
        *g = v;
    }
}

/// Starts every join at the scenario's rate: publishers, then meeting subscriptions,
/// then subscribers. Returns when all are done (or failed).
async fn ramp(target: &Target, joins: &Arc<Joins>) {
    let scn = joins.scenario.clone();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / scn.ramp_up));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for r in 0..scn.rooms {
        if let Err(e) = target.create_room(r, scn.publishers).await {
            joins.note(format!("room {r}: {e}"));
        }
    }

    let role = if scn.meeting {
        Role::Participant
    } else {
        Role::Publisher
    };
    let mut set = JoinSet::new();
    for r in 0..scn.rooms {
        for p in 0..scn.publishers {
            tick.tick().await;
            let (t, j) = (target.clone(), joins.clone());
            set.spawn(async move { (r, p, t.publish(&j, r, p, role).await) });
        }
    }
    let mut rooms: Vec<Vec<(u32, Publisher)>> = vec![vec![]; scn.rooms as usize];
    while let Some(res) = set.join_next().await {
        if let Ok((r, p, Ok(publ))) = res {
            rooms[r as usize].push((p, publ));
        }
    }
    for room in &mut rooms {
        room.sort_by_key(|(p, _)| *p);
    }
    let rooms: Vec<Vec<Publisher>> = rooms
        .into_iter()
        .map(|v| v.into_iter().map(|(_, p)| p).collect())
        .collect();

    let mut set = JoinSet::new();
    if scn.meeting {
        for (r, pubs) in rooms.iter().enumerate() {
            for (i, me) in pubs.iter().enumerate() {
                tick.tick().await;
                let others: Vec<Publisher> =
                    pubs.iter().filter(|p| p.id != me.id).cloned().collect();
                let (t, j, me) = (target.clone(), joins.clone(), me.clone());
                set.spawn(async move {
                    let _ = t.participant(&j, &me, r as u32, i as u32, &others).await;
                });
            }
        }
    }
    for (r, pubs) in rooms.iter().enumerate() {
        for s in 0..scn.subscribers {
            tick.tick().await;
            let (t, j, pubs) = (target.clone(), joins.clone(), pubs.clone());
            set.spawn(async move {
                let _ = t.subscriber(&j, r as u32, s, &pubs).await;
            });
        }
    }
    while set.join_next().await.is_some() {}
}

/// Router and generator counters at one moment.
struct Snapshot {
    at: Instant,
    router_cpu: Option<Duration>,
    router_threads: Vec<(String, Duration)>,
    forwarded: Option<f64>,
    own_cpu: Option<Duration>,
}

impl Snapshot {
    fn take(pid: Option<u32>, metrics: Option<SocketAddr>) -> Snapshot {
        let forwarded = metrics.and_then(|m| {
            prom::scrape(m)
                .ok()
                .map(|t| prom::sum(&t, "kaskade_rtp_packets_forwarded_total", ""))
        });
        Snapshot {
            at: Instant::now(),
            router_cpu: pid.and_then(cpu_time),
            router_threads: pid.map(thread_cpu_times).unwrap_or_default(),
            forwarded,
            own_cpu: own_cpu_time(),
        }
    }
}

fn cpu_delta(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    Some(b?.saturating_sub(a?))
}

async fn sample_loop(
    joins: Arc<Joins>,
    pid: Option<u32>,
    phase: Arc<Mutex<&'static str>>,
    stop: Arc<AtomicBool>,
    mut progress: Progress,
) -> Vec<Sample> {
    let start = Instant::now();
    let mut series = vec![];
    let mut last = Snapshot::take(pid, None);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let iv: Interval = joins.driver.interval().await;
        let now = Snapshot::take(pid, None);
        let dt = (now.at - last.at).as_secs_f64().max(1e-3);
        let pct = |a, b| cpu_delta(a, b).map(|d| d.as_secs_f64() / dt * 100.0);
        let failed = joins.records().iter().filter(|r| r.error.is_some()).count() as u64;
        let sample = Sample {
            t: (now.at - start).as_secs_f64(),
            phase: phase.lock().map(|p| p.to_string()).unwrap_or_default(),
            connected: iv.connected,
            failed,
            rx_bps_audio: bps(iv.audio_bytes, dt),
            rx_bps_layers: iv.video_bytes.iter().map(|b| bps(*b, dt)).collect(),
            rx_pps: iv.packets as f64 / dt,
            loss_pct: ratio(iv.lost_total, iv.expected_total) * 100.0,
            latency: Percentiles::of(&iv.latency),
            router_cpu_pct: pct(last.router_cpu, now.router_cpu),
            generator_cpu_pct: pct(last.own_cpu, now.own_cpu),
            generator_lag_max_ms: iv.lag_max_us as f64 / 1000.0,
        };
        progress.line(&sample);
        series.push(sample);
        last = now;
    }
    progress.done();
    series
}

fn normalise_reason(r: &str) -> String {
    // Ids and addresses make every reason unique: keep the shape.
    r.split_whitespace()
        .map(|w| {
            if w.chars().any(|c| c.is_ascii_digit()) && w.len() > 6 {
                "…"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn join_figures(records: &[JoinRecord], clients: &[ClientResult]) -> JoinFigures {
    let mut f = JoinFigures {
        attempted: records.len() as u64,
        ..Default::default()
    };
    let mut join_times = vec![];
    let mut impaired = std::collections::HashSet::new();
    for r in records {
        if r.impaired {
            impaired.insert(r.id);
        }
        if let Some(e) = &r.error {
            f.failed += 1;
            *f.reasons.entry(normalise_reason(e)).or_default() += 1;
            f.failures.push(Failure {
                client: r.id,
                role: r.role,
                room: r.room,
                index: r.index,
                impaired: r.impaired,
                reason: e.clone(),
            });
        }
        // Records of a subscription on an existing connection have no `connected`.
        if let Some(c) = r.connected {
            join_times.push(c.saturating_duration_since(r.started));
        }
    }
    f.join_time = percentiles_of(&join_times);
    let mut ttff = vec![];
    for c in clients {
        let Some(asked) = c.media_requested_at else {
            continue;
        };
        for t in c.tracks.iter().filter(|t| t.kind == Some(MediaKind::Video)) {
            match t.first_frame_at {
                Some(ff) => ttff.push(ff.saturating_duration_since(asked)),
                None => f.no_first_frame += 1,
            }
        }
    }
    f.time_to_first_frame = percentiles_of(&ttff);
    f.impaired_clients = impaired.len() as u64;
    for c in clients {
        if records
            .iter()
            .any(|r| r.id == c.id && r.connected.is_some())
            && !c.connected_at_end
        {
            f.disconnected_at_end += 1;
        }
        f.client_errors += c.errors;
        if c.last_error.is_some() {
            f.last_client_error.clone_from(&c.last_error);
        }
    }
    f
}

fn rid_name(layers: &[String], i: usize) -> String {
    layers.get(i).cloned().unwrap_or_else(|| format!("L{i}"))
}

fn media_figures(
    scn: &Scenario,
    clients: &[ClientResult],
    window: &Window,
    window_secs: f64,
) -> MediaFigures {
    let mut m = MediaFigures {
        window_secs,
        subscriptions: u64::from(scn.subscriptions()),
        rx_packets: window.packets,
        rx_bps_audio: bps(window.audio_bytes, window_secs),
        latency_audio: Percentiles::of(&window.latency_audio),
        latency_video: Percentiles::of(&window.latency_video),
        ..Default::default()
    };
    let video_bytes: u64 = window.video_bytes.iter().sum();
    m.rx_bps = bps(window.audio_bytes + video_bytes, window_secs);
    let layers = if scn.video {
        scn.layers.clone()
    } else {
        vec![]
    };
    for (i, b) in window.video_bytes.iter().enumerate().take(MAX_LAYERS) {
        if *b > 0 || i < layers.len() {
            m.rx_bps_layers
                .insert(rid_name(&layers, i), bps(*b, window_secs));
        }
    }
    let mut video_subs = 0u64;
    let mut longest = Duration::ZERO;
    let mut frozen = Duration::ZERO;
    let mut at_end: BTreeMap<String, u64> = BTreeMap::new();
    m.published_packets = clients.iter().map(|c| c.sent_packets).sum();
    m.keyframe_requests = clients.iter().map(|c| c.keyframe_requests.0).sum();
    m.keyframe_requests_ignored = clients.iter().map(|c| c.keyframe_requests.1).sum();
    for t in clients.iter().flat_map(|c| &c.tracks) {
        if t.packets > 0 {
            m.subscriptions_receiving += 1;
        }
        let loss = if t.kind == Some(MediaKind::Video) {
            video_subs += 1;
            m.freezes += t.rx.freeze.freezes;
            frozen += t.rx.freeze.frozen;
            longest = longest.max(t.rx.freeze.longest_gap);
            m.layer_switches += t.rx.layer.switches;
            if let Some(l) = t.rx.layer.current {
                *at_end.entry(rid_name(&layers, usize::from(l))).or_default() += 1;
            }
            &mut m.loss_video
        } else {
            &mut m.loss_audio
        };
        loss.lost += t.rx.seq.lost();
        loss.expected += t.rx.seq.expected();
        m.probe_gaps += t.probe_gaps;
    }
    for l in [&mut m.loss_audio, &mut m.loss_video] {
        l.pct = ratio(l.lost, l.expected) * 100.0;
    }
    m.loss = Loss {
        lost: m.loss_audio.lost + m.loss_video.lost,
        expected: m.loss_audio.expected + m.loss_video.expected,
        pct: 0.0,
    };
    m.loss.pct = ratio(m.loss.lost, m.loss.expected) * 100.0;
    m.frozen_secs = frozen.as_secs_f64();
    m.longest_gap_ms = longest.as_secs_f64() * 1000.0;
    m.layer_at_end = at_end;
    if video_subs > 0 {
        m.rx_bps_per_video_subscription = bps(video_bytes, window_secs) / video_subs as f64;
    }
    m
}

fn cpu_figures(
    before: &Snapshot,
    after: &Snapshot,
    window: &Window,
    window_secs: f64,
    threads: usize,
) -> CpuFigures {
    let router = cpu_delta(before.router_cpu, after.router_cpu);
    let own = cpu_delta(before.own_cpu, after.own_cpu);
    let forwarded = match (before.forwarded, after.forwarded) {
        (Some(a), Some(b)) => Some((b - a).max(0.0) as u64),
        _ => None,
    };
    let pct = |d: Option<Duration>| d.map(|d| d.as_secs_f64() / window_secs.max(1e-3) * 100.0);
    // Per thread of the router, by name (threads that started during the
    // window count from zero); the busiest first.
    let mut by_thread: Vec<ThreadCpu> = Vec::new();
    for (name, t) in &after.router_threads {
        let t0 = before
            .router_threads
            .iter()
            .find(|(n, _)| n == name)
            .map_or(Duration::ZERO, |(_, d)| *d);
        let secs = t.saturating_sub(t0).as_secs_f64();
        match by_thread.iter_mut().find(|x| &x.name == name) {
            Some(x) => x.cpu_secs += secs,
            None => by_thread.push(ThreadCpu {
                name: name.clone(),
                cpu_secs: secs,
                cpu_pct: 0.0,
            }),
        }
    }
    for t in &mut by_thread {
        t.cpu_pct = t.cpu_secs / window_secs.max(1e-3) * 100.0;
    }
    by_thread.sort_by(|a, b| b.cpu_secs.total_cmp(&a.cpu_secs));
    by_thread.retain(|t| t.cpu_secs > 0.0);
    CpuFigures {
        router_pid: None,
        router_threads: by_thread,
        router_cpu_secs: router.map(|d| d.as_secs_f64()),
        router_cpu_pct: pct(router),
        router_forwarded: forwarded,
        router_us_per_forwarded: router
            .zip(forwarded)
            .and_then(|(d, f)| cpu_us_per_packet(d, f)),
        router_us_per_delivered: router.and_then(|d| cpu_us_per_packet(d, window.packets)),
        generator_cpu_secs: own.map(|d| d.as_secs_f64()),
        generator_cpu_pct: pct(own),
        generator_us_per_received: own.and_then(|d| cpu_us_per_packet(d, window.packets)),
        generator_threads: threads,
        generator_lag: Percentiles::of(&window.lag),
        generator_send_drops: 0,
    }
}
