//! One run: start the target, ramp the clients up, warm up, measure, collect, report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::media::MediaKind;
use tokio::task::JoinSet;

use super::churn::{churn, churn_figures};
use super::driver::{ClientResult, Driver, Window, MAX_LAYERS};
use super::kaskade::Kaskade;
use super::limits::{room_refusal, Needs};
use super::measure::{
    bps, cpu_us_per_packet, percentiles_of, ratio, udp_socket_drops, Percentiles,
};
use super::progress::Progress;
use super::report::{CpuFigures, Failure, JoinFigures, Loss, MediaFigures, RunReport, ThreadCpu};
use super::sampler::{cpu_delta, SampleLoop, Snapshot};
use super::scenario::Scenario;
use super::session::{JoinRecord, Joins, Publisher, Role};
use super::soak::{router_figures, trends};
use super::target::{Started, Target, TargetSpec};

/// Options of a run that are not the scenario.
#[derive(Debug, Clone)]
pub(crate) struct RunOpts {
    /// Driver threads.
    pub threads: usize,
    /// Where logs go.
    pub out_dir: PathBuf,
    /// Print the live progress line.
    pub progress: bool,
}

/// Runs the scenario once against a target.
pub(crate) async fn run_once(
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
    let started = Started::start(spec, scn, &opts.out_dir, &file_tag, &tag).await?;
    let epoch = Instant::now();
    let driver =
        Driver::start(opts.threads, epoch, scn.seed).map_err(|e| format!("driver threads: {e}"))?;
    let joins = Arc::new(Joins::new(driver, scn.clone(), epoch));
    for n in &started.notes {
        joins.note(n.clone());
    }
    let links: Vec<Kaskade> = match &started.target {
        Target::Cascade(c) => c.routers.clone(),
        _ => vec![],
    };

    let phase = Arc::new(Mutex::new("ramp"));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(
        SampleLoop {
            joins: joins.clone(),
            routers: started.routers.clone(),
            phase: phase.clone(),
            stop: stop.clone(),
            progress: Progress::new(opts.progress, &label, scn),
        }
        .run(),
    );

    let pubs = ramp(&started.target, &joins).await;
    set_phase(&phase, "warmup");
    tokio::time::sleep(scn.warmup.0).await;

    // The measured window (a churn run: the cycles).
    set_phase(&phase, "measure");
    let before = Snapshot::take(&started.routers, true, &links).await;
    joins.driver.measure(true);
    let t0 = Instant::now();
    let cycles = if scn.cycles > 0 {
        match &started.target {
            Target::Kaskade(k, tag) => Some(churn(k, tag, &joins, &pubs).await),
            _ => return Err("join/leave cycles run against kaskade only".into()),
        }
    } else {
        tokio::time::sleep(scn.duration.0).await;
        None
    };
    joins.driver.measure(false);
    let window_secs = t0.elapsed().as_secs_f64();
    let after = Snapshot::take(&started.routers, true, &links).await;
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
    let target_info = started.info.clone();
    let router_names: Vec<String> = started.routers.iter().map(|r| r.name.clone()).collect();
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
    let routers = if scn.cascade.is_active() {
        router_figures(&router_names, &before, &after, &media, window_secs)
    } else {
        vec![]
    };
    let churn = cycles.map(|c| churn_figures(&c, &before, &after, &series, window_secs));
    let trends = trends(scn, &series);
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
        target_info,
        trends,
        routers,
        churn,
    })
}

fn set_phase(p: &Mutex<&'static str>, v: &'static str) {
    if let Ok(mut g) = p.lock() {
        *g = v;
    }
}

/// Starts every join at the scenario's rate: publishers, then meeting subscriptions,
/// then subscribers (none in a churn run: its cycles add them). Returns when all
/// are done (or failed), with each room's publishers.
async fn ramp(target: &Target, joins: &Arc<Joins>) -> Vec<Vec<Publisher>> {
    let scn = joins.scenario.clone();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / scn.ramp_up));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Rooms first: their session limits tell, before any join, which joins
    // the router will refuse.
    let need = Needs::of(&scn).sessions_per_room;
    for r in 0..scn.rooms {
        match target.create_room(r, scn.publishers).await {
            Ok(limits) => {
                for (room, max) in limits {
                    if let Some(w) = room_refusal(&room, u64::from(max), need) {
                        joins.note(w);
                    }
                }
            }
            Err(e) => joins.note(format!("room {r}: {e}")),
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
    let subscribers = if scn.cycles > 0 { 0 } else { scn.subscribers };
    for (r, pubs) in rooms.iter().enumerate() {
        for s in 0..subscribers {
            tick.tick().await;
            let (t, j, pubs) = (target.clone(), joins.clone(), pubs.clone());
            set.spawn(async move {
                let _ = t.subscriber(&j, r as u32, s, &pubs).await;
            });
        }
    }
    while set.join_next().await.is_some() {}
    rooms
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

/// Receiver groups of a scenario: one per router of a cascade, else one.
fn groups(scn: &Scenario) -> usize {
    1 + scn.cascade.edge_routers as usize
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
        latency_video_by_group: window
            .latency_video_by_group
            .iter()
            .take(groups(scn))
            .map(Percentiles::of)
            .collect(),
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
    let router = cpu_delta(before.cpu(), after.cpu());
    let own = cpu_delta(before.own_cpu, after.own_cpu);
    let forwarded = match (before.forwarded(), after.forwarded()) {
        (Some(a), Some(b)) => Some((b - a).max(0.0) as u64),
        _ => None,
    };
    let pct = |d: Option<Duration>| d.map(|d| d.as_secs_f64() / window_secs.max(1e-3) * 100.0);
    // Per thread of the router, by name (threads that started during the
    // window count from zero); the busiest first.
    let mut by_thread: Vec<ThreadCpu> = Vec::new();
    let (before_threads, after_threads) = (before.threads(), after.threads());
    for (name, t) in &after_threads {
        let t0 = before_threads
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
        router_tcp_connections: after.tcp_active().map(|v| v.max(0.0) as u64),
        generator_cpu_secs: own.map(|d| d.as_secs_f64()),
        generator_cpu_pct: pct(own),
        generator_us_per_received: own.and_then(|d| cpu_us_per_packet(d, window.packets)),
        generator_threads: threads,
        generator_lag: Percentiles::of(&window.lag),
        generator_send_drops: 0,
    }
}
