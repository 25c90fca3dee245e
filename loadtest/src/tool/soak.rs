//! Figures of long and multi-router runs: whether memory, CPU per packet and
//! latency stayed flat over the measured window (or over a churn run's
//! cycles), and per-router figures of a cascade.

use super::cascade::RouterFigures;
use super::measure::cpu_us_per_packet;
use super::report::{MediaFigures, Sample};
use super::sampler::{cpu_delta, Snapshot};
use super::scenario::Scenario;
use super::trend::{trend, Trend};

/// Tolerance for memory: within ±5 % of its median over the span.
pub(crate) const RSS_TOLERANCE: f64 = 0.05;
/// Tolerance for CPU per packet (a shared 2-core machine is noisy).
pub(crate) const CPU_TOLERANCE: f64 = 0.15;
/// Tolerance for latency percentiles per second.
pub(crate) const LATENCY_TOLERANCE: f64 = 0.25;

/// The trends of a run's measured samples: against time, or against cycles
/// done in a churn run.
pub(crate) fn trends(scn: &Scenario, series: &[Sample]) -> Vec<Trend> {
    let measured: Vec<&Sample> = series.iter().filter(|s| s.phase == "measure").collect();
    let pts = |x: &dyn Fn(&Sample) -> f64, y: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        measured
            .iter()
            .filter_map(|s| Some((x(s), y(s)?)))
            .collect()
    };
    let mut out = vec![];
    if scn.cycles > 0 {
        let x = |s: &Sample| s.cycles as f64;
        out.extend(trend(
            "router RSS MiB by cycles",
            &pts(&x, &|s| s.router_rss_mb),
            RSS_TOLERANCE,
        ));
        out.extend(trend(
            "router open fds by cycles",
            &pts(&x, &|s| s.router_fds.map(|f| f as f64)),
            RSS_TOLERANCE,
        ));
        return out;
    }
    let x = |s: &Sample| s.t;
    let lat = |f: fn(&Sample) -> f64| move |s: &Sample| (s.latency.count > 0).then(|| f(s));
    out.extend(trend(
        "router RSS MiB",
        &pts(&x, &|s| s.router_rss_mb),
        RSS_TOLERANCE,
    ));
    out.extend(trend(
        "router CPU µs per forwarded packet",
        &pts(&x, &|s| s.router_us_per_forwarded),
        CPU_TOLERANCE,
    ));
    out.extend(trend(
        "latency p50 ms",
        &pts(&x, &lat(|s| s.latency.p50_ms)),
        LATENCY_TOLERANCE,
    ));
    out.extend(trend(
        "latency p99 ms",
        &pts(&x, &lat(|s| s.latency.p99_ms)),
        LATENCY_TOLERANCE,
    ));
    out
}

/// Per-router figures of a cascade over the measured window (router 0: the
/// publishers').
pub(crate) fn router_figures(
    names: &[String],
    before: &Snapshot,
    after: &Snapshot,
    media: &MediaFigures,
    secs: f64,
) -> Vec<RouterFigures> {
    let base = media.latency_video_by_group.first().copied();
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (b, a) = (&before.routers[i], &after.routers[i]);
            let cpu = cpu_delta(b.cpu, a.cpu);
            let forwarded = match (b.forwarded, a.forwarded) {
                (Some(x), Some(y)) => Some((y - x).max(0.0) as u64),
                _ => None,
            };
            let links = match (b.links, a.links) {
                (Some(x), Some(y)) => y.since(&x),
                _ => Default::default(),
            };
            let origin = i == 0;
            let relayed = if origin {
                links.datagrams_sent
            } else {
                links.datagrams_received
            };
            let lat = media
                .latency_video_by_group
                .get(i)
                .copied()
                .unwrap_or_default();
            let added = |f: fn(&super::measure::Percentiles) -> f64| {
                base.filter(|b| !origin && b.count > 0 && lat.count > 0)
                    .map(|b| f(&lat) - f(&b))
            };
            RouterFigures {
                hop_added_p50_ms: added(|p| p.p50_ms),
                hop_added_p99_ms: added(|p| p.p99_ms),
                node: name.clone(),
                role: if origin { "origin" } else { "edge" }.into(),
                cpu_secs: cpu.map(|c| c.as_secs_f64()),
                cpu_pct: cpu.map(|c| c.as_secs_f64() / secs.max(1e-3) * 100.0),
                forwarded,
                link_datagrams_sent: links.datagrams_sent,
                link_datagrams_received: links.datagrams_received,
                link_bytes_sent: links.bytes_sent,
                link_bytes_received: links.bytes_received,
                link_nacked: links.nacked,
                link_retransmitted: links.retransmitted,
                link_lost: links.lost,
                link_tracks_sent: links.tracks_sent,
                link_tracks_received: links.tracks_received,
                us_per_relayed: cpu.and_then(|c| cpu_us_per_packet(c, relayed)),
                us_per_forwarded: cpu
                    .zip(forwarded)
                    .and_then(|(c, f)| cpu_us_per_packet(c, f)),
                latency_video: lat,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::measure::Percentiles;

    fn sample(t: f64, phase: &str, rss: f64, cycles: u64) -> Sample {
        Sample {
            t,
            phase: phase.into(),
            router_rss_mb: Some(rss),
            router_fds: Some(40),
            router_us_per_forwarded: Some(12.0 + (t as u64 % 3) as f64),
            latency: Percentiles {
                count: 100,
                p50_ms: 3.0,
                p99_ms: 20.0,
                ..Default::default()
            },
            cycles,
            ..Default::default()
        }
    }

    #[test]
    fn a_steady_run_is_flat_and_the_ramp_is_left_out() {
        let mut series: Vec<Sample> = (0..10)
            .map(|i| sample(i as f64, "ramp", 5.0 + i as f64, 0))
            .collect();
        series.extend((10..200).map(|i| sample(i as f64, "measure", 30.0, 0)));
        let t = trends(&Scenario::default(), &series);
        let names: Vec<&str> = t.iter().map(|t| t.figure.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "router RSS MiB",
                "router CPU µs per forwarded packet",
                "latency p50 ms",
                "latency p99 ms"
            ]
        );
        assert!(t.iter().all(|t| t.flat), "{t:?}");
        assert_eq!(t[0].points, 190);
    }

    #[test]
    fn per_router_cost_and_the_latency_a_hop_adds() {
        use crate::tool::cascade::LinkTotals;
        use crate::tool::sampler::RouterSnap;
        use std::time::{Duration, Instant};
        let snap = |cpu_ms: u64, sent: u64, recv: u64, fwd: f64| RouterSnap {
            cpu: Some(Duration::from_millis(cpu_ms)),
            forwarded: Some(fwd),
            links: Some(LinkTotals {
                datagrams_sent: sent,
                datagrams_received: recv,
                ..Default::default()
            }),
            ..Default::default()
        };
        let before = Snapshot {
            at: Instant::now(),
            routers: vec![snap(1000, 0, 0, 0.0), snap(500, 0, 0, 0.0)],
            own_cpu: None,
        };
        let after = Snapshot {
            at: Instant::now(),
            routers: vec![
                snap(1200, 10_000, 0, 5_000.0),
                snap(800, 0, 9_900, 20_000.0),
            ],
            own_cpu: None,
        };
        let p = |p50: f64, p99: f64| Percentiles {
            count: 1000,
            p50_ms: p50,
            p99_ms: p99,
            ..Default::default()
        };
        let media = MediaFigures {
            latency_video_by_group: vec![p(2.0, 10.0), p(25.0, 60.0)],
            ..Default::default()
        };
        let names = vec!["lt0".to_string(), "lt1".to_string()];
        let r = router_figures(&names, &before, &after, &media, 10.0);
        assert_eq!((r[0].role.as_str(), r[1].role.as_str()), ("origin", "edge"));
        // Origin: 200 ms over 10,000 relayed datagrams sent; edge: 300 ms over
        // 9,900 received and 20,000 written to its subscribers.
        assert_eq!(r[0].us_per_relayed, Some(20.0));
        assert!((r[1].us_per_relayed.unwrap() - 300_000.0 / 9_900.0).abs() < 1e-9);
        assert_eq!(r[1].us_per_forwarded, Some(15.0));
        assert_eq!(r[0].hop_added_p50_ms, None);
        assert_eq!(
            (r[1].hop_added_p50_ms, r[1].hop_added_p99_ms),
            (Some(23.0), Some(50.0))
        );
        assert_eq!(r[1].cpu_pct, Some(3.0));
    }

    #[test]
    fn a_churn_run_trends_memory_by_cycles() {
        let scn = Scenario::preset("churn").unwrap();
        // 1 MiB more every 1000 cycles from 20 MiB: +50 % over 10,000 cycles.
        let series: Vec<Sample> = (0..100)
            .map(|i| sample(i as f64, "measure", 20.0 + i as f64 * 0.1, i * 100))
            .collect();
        let t = trends(&scn, &series);
        assert_eq!(t[0].figure, "router RSS MiB by cycles");
        assert!(!t[0].flat && t[0].grew, "{:?}", t[0]);
        assert!(
            (t[0].slope - 0.001).abs() < 1e-9,
            "MiB per cycle {}",
            t[0].slope
        );
        assert_eq!(t[1].figure, "router open fds by cycles");
        assert!(t[1].flat);
    }
}
