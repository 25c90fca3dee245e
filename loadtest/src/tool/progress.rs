//! The live progress line on stderr: an `indicatif` spinner line rewritten in
//! place on a terminal, one plain line per second otherwise (logs, CI).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report::{fmt_bps, Sample};
use super::scenario::Scenario;

/// Prints samples as they come.
#[derive(Debug)]
pub(crate) struct Progress {
    on: bool,
    /// The live line on a terminal; `None`: plain lines.
    bar: Option<ProgressBar>,
    label: String,
    clients: u32,
    layers: Vec<String>,
}

impl Progress {
    /// A progress printer (`on` false: silent).
    pub(crate) fn new(on: bool, label: &str, scn: &Scenario) -> Progress {
        let bar = (on && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            // A constant template: `with_template` only fails on a malformed one.
            if let Ok(style) = ProgressStyle::with_template("{spinner} {wide_msg}") {
                b.set_style(style);
            }
            b
        });
        Progress {
            on,
            bar,
            label: label.into(),
            clients: scn.participants(),
            layers: scn.layers.clone(),
        }
    }

    /// The text of one progress line.
    pub(crate) fn text(&self, s: &Sample) -> String {
        let video: Vec<String> = s
            .rx_bps_layers
            .iter()
            .enumerate()
            .filter(|(i, b)| **b > 0.0 || *i < self.layers.len())
            .map(|(i, b)| {
                let name = self
                    .layers
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("L{i}"));
                format!("{name} {}", fmt_bps(*b))
            })
            .collect();
        let total: f64 = s.rx_bps_audio + s.rx_bps_layers.iter().sum::<f64>();
        let cpu = |v: Option<f64>| v.map_or("–".into(), |x| format!("{x:.0}%"));
        let cycles = if s.cycles > 0 {
            format!(" | cycles {}", s.cycles)
        } else {
            String::new()
        };
        let rss = s
            .router_rss_mb
            .map_or(String::new(), |m| format!(" rss {m:.0} MiB"));
        format!(
            "[{:>4.0}s {:<7}] {}{cycles} | joined {}/{} failed {} | rx {} (audio {}; {}) | loss {:.2}% | lat p50 {:.1} p99 {:.1} ms | router {}{rss} | gen {} lag {:.1} ms",
            s.t,
            s.phase,
            self.label,
            s.connected,
            self.clients,
            s.failed,
            fmt_bps(total),
            fmt_bps(s.rx_bps_audio),
            video.join(", "),
            s.loss_pct,
            s.latency.p50_ms,
            s.latency.p99_ms,
            cpu(s.router_cpu_pct),
            cpu(s.generator_cpu_pct),
            s.generator_lag_max_ms,
        )
    }

    /// Shows one sample.
    pub(crate) fn line(&mut self, s: &Sample) {
        if !self.on {
            return;
        }
        let text = self.text(s);
        match &self.bar {
            Some(b) => {
                b.set_message(text);
                b.tick();
            }
            None => eprintln!("{text}"),
        }
    }

    /// Leaves the last line on a terminal.
    pub(crate) fn done(&mut self) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
    }
}
