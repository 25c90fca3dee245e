//! The HTML report: a summary table, the side-by-side comparison, and for each run
//! SVG charts of bitrate, latency percentiles and CPU over time.

use std::fmt::Write as _;

use super::report::{fmt_bps, RunReport, TargetMedians};
use super::svg::{esc, line_chart, Series, PALETTE};
use super::thresholds::Violation;

fn measured_span(r: &RunReport) -> Option<(f64, f64)> {
    let ts: Vec<f64> = r
        .series
        .iter()
        .filter(|s| s.phase == "measure")
        .map(|s| s.t)
        .collect();
    Some((ts.first()? - 1.0, *ts.last()?))
}

fn charts(r: &RunReport) -> String {
    let span = measured_span(r);
    let xs = |f: &dyn Fn(&super::report::Sample) -> f64| -> Vec<(f64, f64)> {
        r.series.iter().map(|s| (s.t, f(s))).collect()
    };
    let mut bitrate = vec![Series {
        name: "audio".into(),
        color: PALETTE[7],
        points: xs(&|s| s.rx_bps_audio / 1e6),
    }];
    let n_layers = r
        .series
        .iter()
        .map(|s| {
            s.rx_bps_layers
                .iter()
                .rposition(|b| *b > 0.0)
                .map_or(0, |i| i + 1)
        })
        .max()
        .unwrap_or(0)
        .max(if r.scenario.video {
            r.scenario.layers.len()
        } else {
            0
        });
    for i in 0..n_layers {
        let name = r
            .scenario
            .layers
            .get(i)
            .map_or(format!("layer {i}"), |rid| format!("video {rid}"));
        bitrate.push(Series {
            name,
            color: PALETTE[i % 7],
            points: xs(&|s| s.rx_bps_layers.get(i).copied().unwrap_or(0.0) / 1e6),
        });
    }
    let latency = vec![
        Series {
            name: "p50".into(),
            color: PALETTE[0],
            points: xs(&|s| nan_if_empty(s.latency.count, s.latency.p50_ms)),
        },
        Series {
            name: "p90".into(),
            color: PALETTE[1],
            points: xs(&|s| nan_if_empty(s.latency.count, s.latency.p90_ms)),
        },
        Series {
            name: "p99".into(),
            color: PALETTE[3],
            points: xs(&|s| nan_if_empty(s.latency.count, s.latency.p99_ms)),
        },
    ];
    let cpu = vec![
        Series {
            name: "router".into(),
            color: PALETTE[0],
            points: xs(&|s| s.router_cpu_pct.unwrap_or(f64::NAN)),
        },
        Series {
            name: "load generator".into(),
            color: PALETTE[1],
            points: xs(&|s| s.generator_cpu_pct.unwrap_or(f64::NAN)),
        },
    ];
    let joined = vec![
        Series {
            name: "connected clients".into(),
            color: PALETTE[2],
            points: xs(&|s| s.connected as f64),
        },
        Series {
            name: "failed joins".into(),
            color: PALETTE[3],
            points: xs(&|s| s.failed as f64),
        },
    ];
    let opt = |f: fn(&super::report::Sample) -> Option<f64>| xs(&|s| f(s).unwrap_or(f64::NAN));
    let memory = vec![
        Series {
            name: "router RSS (MiB)".into(),
            color: PALETTE[4],
            points: opt(|s| s.router_rss_mb),
        },
        Series {
            name: "router open fds".into(),
            color: PALETTE[5],
            points: opt(|s| s.router_fds.map(|f| f as f64)),
        },
    ];
    let per_packet = vec![Series {
        name: "router CPU µs per forwarded packet".into(),
        color: PALETTE[0],
        points: opt(|s| s.router_us_per_forwarded),
    }];
    let mut out = vec![
        line_chart("Received bitrate (all subscribers)", "Mbps", &bitrate, span),
        line_chart("End-to-end latency, per second", "ms", &latency, span),
        line_chart("CPU", "% of one core", &cpu, span),
        line_chart("Router CPU per forwarded packet", "µs", &per_packet, span),
        line_chart("Router memory and descriptors", "MiB / fds", &memory, span),
        line_chart("Participants", "clients", &joined, span),
    ];
    if r.churn.is_some() {
        // Memory against the cycles done: flat means no leak per join.
        let by_cycle = |f: fn(&super::report::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
            r.series
                .iter()
                .filter(|s| s.phase == "measure")
                .filter_map(|s| Some((s.cycles as f64, f(s)?)))
                .collect()
        };
        let churn = vec![
            Series {
                name: "router RSS (MiB)".into(),
                color: PALETTE[4],
                points: by_cycle(|s| s.router_rss_mb),
            },
            Series {
                name: "router open fds".into(),
                color: PALETTE[5],
                points: by_cycle(|s| s.router_fds.map(|f| f as f64)),
            },
        ];
        out.insert(
            0,
            line_chart_x(
                "Router memory by join/leave cycles",
                "cycles",
                "MiB / fds",
                &churn,
            ),
        );
    }
    out.join("\n")
}

fn line_chart_x(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    super::svg::line_chart(title, y_label, series, None).replace("time (s)", x_label)
}

fn trend_table(r: &RunReport) -> String {
    if r.trends.is_empty() {
        return String::new();
    }
    let mut o = String::from(
        "<table><tr><th>trend</th><th>points</th><th>median</th><th>min–max</th>\
         <th>first tenth</th><th>last tenth</th><th>change</th><th>fitted over the span</th>\
         <th>verdict</th></tr>",
    );
    for t in &r.trends {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}–{:.3}</td><td>{:.3}</td>\
             <td>{:.3}</td><td>{:+.1} %</td><td>{:+.1} %</td><td class=\"{}\">{}</td></tr>",
            esc(&t.figure),
            t.points,
            t.median,
            t.min,
            t.max,
            t.first,
            t.last,
            t.change * 100.0,
            t.slope_change * 100.0,
            if t.grew { "bad" } else { "ok" },
            t.verdict()
        );
    }
    o.push_str("</table>");
    o
}

fn router_table(r: &RunReport) -> String {
    if r.routers.is_empty() {
        return String::new();
    }
    let mut o = String::from(
        "<table><tr><th>router</th><th>role</th><th>CPU %</th><th>link datagrams sent/received</th>\
         <th>NACKed/resent/lost</th><th>µs per relayed datagram</th><th>µs per forwarded pkt</th>\
         <th>subscribers' video p50/p99 ms</th><th>the hop adds p50/p99 ms</th></tr>",
    );
    for x in &r.routers {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}/{}/{}</td><td>{}</td>\
             <td>{}</td><td>{:.2}/{:.2}</td><td>{}</td></tr>",
            esc(&x.node),
            esc(&x.role),
            opt(x.cpu_pct, 1),
            x.link_datagrams_sent,
            x.link_datagrams_received,
            x.link_nacked,
            x.link_retransmitted,
            x.link_lost,
            opt(x.us_per_relayed, 2),
            opt(x.us_per_forwarded, 2),
            x.latency_video.p50_ms,
            x.latency_video.p99_ms,
            x.hop_added_p50_ms
                .zip(x.hop_added_p99_ms)
                .map_or("–".into(), |(a, b)| format!("{a:.2}/{b:.2}")),
        );
    }
    o.push_str("</table>");
    o
}

fn nan_if_empty(count: u64, v: f64) -> f64 {
    if count == 0 {
        f64::NAN
    } else {
        v
    }
}

fn opt(v: Option<f64>, d: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.d$}"))
}

fn run_table(runs: &[RunReport]) -> String {
    let mut o = String::from(
        "<table><tr><th>target</th><th>run</th><th>joins (failed)</th><th>join p50/p99 ms</th>\
         <th>first frame p50 ms</th><th>receiving</th><th>rx total</th><th>per video sub</th>\
         <th>layers at end</th><th>loss %</th><th>video lat p50/p99 ms</th>\
         <th>audio lat p50/p99 ms</th><th>freezes</th><th>router CPU %</th>\
         <th>µs/fwd pkt</th><th>µs/delivered pkt</th><th>generator CPU %</th></tr>",
    );
    for r in runs {
        let m = &r.media;
        let layers: Vec<String> = m
            .layer_at_end
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{} ({})</td><td>{:.0}/{:.0}</td><td>{:.0}</td>\
             <td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.2}/{:.2}</td>\
             <td>{:.2}/{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.target),
            r.repeat + 1,
            r.joins.attempted,
            r.joins.failed,
            r.joins.join_time.p50_ms,
            r.joins.join_time.p99_ms,
            r.joins.time_to_first_frame.p50_ms,
            m.subscriptions_receiving,
            m.subscriptions,
            fmt_bps(m.rx_bps),
            fmt_bps(m.rx_bps_per_video_subscription),
            esc(&layers.join(" ")),
            m.loss.pct,
            m.latency_video.p50_ms,
            m.latency_video.p99_ms,
            m.latency_audio.p50_ms,
            m.latency_audio.p99_ms,
            m.freezes,
            opt(r.cpu.router_cpu_pct, 1),
            opt(r.cpu.router_us_per_forwarded, 2),
            opt(r.cpu.router_us_per_delivered, 2),
            opt(r.cpu.generator_cpu_pct, 1),
        );
    }
    o.push_str("</table>");
    o
}

fn markdown_table_to_html(md: &str) -> String {
    let mut o = String::from("<table>");
    for (i, line) in md.lines().enumerate() {
        if i == 1 {
            continue; // the |---| row
        }
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        let tag = if i == 0 { "th" } else { "td" };
        o.push_str("<tr>");
        for c in cells {
            let _ = write!(o, "<{tag}>{}</{tag}>", esc(c.trim()));
        }
        o.push_str("</tr>");
    }
    o.push_str("</table>");
    o
}

/// What the page says about the invocation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    /// The command line.
    pub command: String,
    /// When it ran (RFC 3339, UTC).
    pub date: String,
    /// The machine.
    pub machine: String,
    /// Whether any threshold was set.
    pub thresholds_set: bool,
}

/// The header: command, date, machine, and each target's version and commit.
fn header(runs: &[RunReport], meta: &Meta) -> String {
    let mut o = String::from("<table class=\"meta\">");
    let mut row = |k: &str, v: &str| {
        let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    };
    row("command", &meta.command);
    row("date", &meta.date);
    row("machine", &meta.machine);
    let mut seen: Vec<&str> = vec![];
    for r in runs {
        if seen.contains(&r.target.as_str()) {
            continue;
        }
        seen.push(&r.target);
        let i = &r.target_info;
        row(
            &format!("{}: version, commit", r.target),
            &format!(
                "{}, {} (from {})",
                i.version.as_deref().unwrap_or("unknown"),
                i.commit.as_deref().unwrap_or("unknown"),
                i.source
            ),
        );
    }
    o.push_str("</table>");
    o
}

/// The thresholds' verdict: nothing when none was set.
fn verdict(violations: &[Violation], thresholds_set: bool) -> String {
    let mut o = String::new();
    if violations.is_empty() {
        if thresholds_set {
            o.push_str("<p class=\"ok\">No threshold broken.</p>");
        }
        return o;
    }
    o.push_str("<p class=\"bad\">Thresholds broken:</p><ul>");
    for v in violations {
        let _ = write!(
            o,
            "<li class=\"bad\">{} run {}: {} — measured {}</li>",
            esc(&v.target),
            v.repeat + 1,
            esc(&v.limit),
            esc(&v.measured)
        );
    }
    o.push_str("</ul>");
    o
}

/// The whole page.
pub(crate) fn page(
    runs: &[RunReport],
    meds: &[TargetMedians],
    violations: &[Violation],
    meta: &Meta,
) -> String {
    let mut o = String::new();
    let title = runs
        .first()
        .map_or("kaskade-loadtest".into(), |r| r.scenario.name.clone());
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kaskade-loadtest: {}</title>\
         <style>body{{font-family:sans-serif;margin:24px;color:#222}}\
         table{{border-collapse:collapse;margin:8px 0 20px}}td,th{{border:1px solid #ccc;\
         padding:3px 8px;font-size:13px;text-align:right}}th{{background:#f4f4f4}}\
         td:first-child,th:first-child{{text-align:left}}.bad{{color:#b00}}.ok{{color:#070}}\
         svg{{margin:6px 12px 6px 0}}pre{{background:#f7f7f7;padding:8px}}</style></head><body>",
        esc(&title)
    );
    let _ = write!(o, "<h1>kaskade-loadtest: {}</h1>", esc(&title));
    if let Some(r) = runs.first() {
        let _ = write!(o, "<p>{}</p>", esc(&r.scenario.shape()));
    }
    o.push_str(&header(runs, meta));
    o.push_str(&verdict(violations, meta.thresholds_set));
    if meds.len() > 1 || meds.iter().any(|m| m.runs > 1) {
        o.push_str("<h2>Side by side (median, spread in parentheses)</h2>");
        o.push_str(&markdown_table_to_html(&super::report::comparison_table(
            meds,
        )));
    }
    o.push_str("<h2>Runs</h2>");
    o.push_str(&run_table(runs));
    for (i, r) in runs.iter().enumerate() {
        let first_of_target = runs[..i].iter().all(|p| p.target != r.target);
        let _ = write!(
            o,
            "<details{}><summary><b>{} — run {}</b></summary>{}{}{}<pre>{}</pre></details>",
            if first_of_target { " open" } else { "" },
            esc(&r.target),
            r.repeat + 1,
            router_table(r),
            trend_table(r),
            charts(r),
            esc(&r.summary())
        );
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::report::{CpuFigures, JoinFigures, MediaFigures};
    use crate::tool::scenario::Scenario;
    use crate::tool::target::TargetInfo;

    fn run() -> RunReport {
        RunReport {
            target: "kaskade w1".into(),
            repeat: 0,
            scenario: Scenario::default(),
            started_unix_ms: 0,
            joins: JoinFigures::default(),
            media: MediaFigures::default(),
            cpu: CpuFigures::default(),
            series: vec![],
            notes: vec![],
            target_info: TargetInfo {
                version: Some("0.1.0".into()),
                commit: Some("fd3a4b5".into()),
                source: "the router's kaskade_build_info metric".into(),
            },
            trends: vec![],
            routers: vec![],
            churn: None,
        }
    }

    fn meta(thresholds_set: bool) -> Meta {
        Meta {
            command: "kaskade-loadtest --preset s1 --max-loss 1%".into(),
            date: "2026-12-05T10:00:00Z".into(),
            machine: "2 × AMD EPYC".into(),
            thresholds_set,
        }
    }

    #[test]
    fn the_page_names_command_date_version_and_commit() {
        let p = page(&[run()], &[], &[], &meta(true));
        for want in [
            "kaskade-loadtest --preset s1 --max-loss 1%",
            "2026-12-05T10:00:00Z",
            "kaskade w1: version, commit",
            "0.1.0, fd3a4b5",
            "No threshold broken.",
        ] {
            assert!(p.contains(want), "missing {want}");
        }
    }

    #[test]
    fn no_verdict_without_thresholds() {
        let p = page(&[run()], &[], &[], &meta(false));
        assert!(!p.contains("No threshold broken"));
        let v = Violation {
            target: "kaskade w1".into(),
            repeat: 0,
            limit: "loss <= 1%".into(),
            measured: "2%".into(),
        };
        let p = page(&[run()], &[], &[v], &meta(true));
        assert!(p.contains("Thresholds broken") && !p.contains("No threshold broken"));
    }
}
