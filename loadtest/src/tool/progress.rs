//! The live progress line on stderr (rewritten in place on a terminal, one line per
//! second otherwise).

use std::io::Write;

use super::report::{fmt_bps, Sample};
use super::scenario::Scenario;

/// Prints samples as they come.
#[derive(Debug)]
pub struct Progress {
    on: bool,
    tty: bool,
    label: String,
    clients: u32,
    layers: Vec<String>,
    printed: bool,
}

impl Progress {
    /// A progress printer (`on` false: silent).
    pub fn new(on: bool, label: &str, scn: &Scenario) -> Progress {
        // SAFETY: isatty only inspects a file descriptor number.
        let tty = unsafe { libc::isatty(2) } == 1;
        Progress {
            on,
            tty,
            label: label.into(),
            clients: scn.participants(),
            layers: scn.layers.clone(),
            printed: false,
        }
    }

    /// The text of one progress line.
    pub fn text(&self, s: &Sample) -> String {
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
        format!(
            "[{:>4.0}s {:<7}] {} | joined {}/{} failed {} | rx {} (audio {}; {}) | loss {:.2}% | lat p50 {:.1} p99 {:.1} ms | router {} | gen {} lag {:.1} ms",
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

    /// Prints one sample.
    pub fn line(&mut self, s: &Sample) {
        if !self.on {
            return;
        }
        let text = self.text(s);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{text}");
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
        self.printed = true;
    }

    /// Ends the line on a terminal.
    pub fn done(&mut self) {
        if self.on && self.tty && self.printed {
            eprintln!();
        }
    }
}
