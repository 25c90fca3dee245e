//! Pass/fail limits for pipelines: a run that breaks one makes the tool exit 1.

use serde::Serialize;

use super::report::RunReport;
use super::units::{Dur, Frac};

/// The limits the user set (unset ones are not checked).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Thresholds {
    /// Largest loss after repair (all media).
    pub max_loss: Option<Frac>,
    /// Largest p99 end-to-end latency (audio and video).
    pub max_p99_latency: Option<Dur>,
    /// Most failed joins.
    pub max_join_failures: Option<u64>,
    /// Largest p99 join time.
    pub max_join_time: Option<Dur>,
    /// Most freezes.
    pub max_freezes: Option<u64>,
    /// Largest router CPU µs per delivered packet.
    pub max_cpu_per_packet_us: Option<f64>,
    /// Smallest share of subscriptions that received media.
    pub min_receiving: Option<Frac>,
}

/// A broken limit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Violation {
    /// The run's target.
    pub target: String,
    /// The run's repeat index.
    pub repeat: u32,
    /// Which limit.
    pub limit: String,
    /// What was measured.
    pub measured: String,
}

impl Thresholds {
    /// Whether no limit is set.
    pub(crate) fn is_empty(&self) -> bool {
        self.max_loss.is_none()
            && self.max_p99_latency.is_none()
            && self.max_join_failures.is_none()
            && self.max_join_time.is_none()
            && self.max_freezes.is_none()
            && self.max_cpu_per_packet_us.is_none()
            && self.min_receiving.is_none()
    }

    /// The limits a run breaks.
    pub(crate) fn check(&self, r: &RunReport) -> Vec<Violation> {
        let mut v = vec![];
        let mut fail = |limit: String, measured: String| {
            v.push(Violation {
                target: r.target.clone(),
                repeat: r.repeat,
                limit,
                measured,
            })
        };
        let m = &r.media;
        if let Some(max) = self.max_loss {
            if m.loss.pct > max.0 * 100.0 {
                fail(format!("loss <= {max}"), format!("{:.3}%", m.loss.pct));
            }
        }
        if let Some(max) = self.max_p99_latency {
            let ms = max.0.as_secs_f64() * 1000.0;
            let worst = m.latency_audio.p99_ms.max(m.latency_video.p99_ms);
            if worst > ms {
                fail(format!("p99 latency <= {max}"), format!("{worst:.2} ms"));
            }
        }
        if let Some(max) = self.max_join_failures {
            if r.joins.failed > max {
                fail(
                    format!("join failures <= {max}"),
                    r.joins.failed.to_string(),
                );
            }
        }
        if let Some(max) = self.max_join_time {
            let ms = max.0.as_secs_f64() * 1000.0;
            if r.joins.join_time.p99_ms > ms {
                fail(
                    format!("join time p99 <= {max}"),
                    format!("{:.0} ms", r.joins.join_time.p99_ms),
                );
            }
        }
        if let Some(max) = self.max_freezes {
            if m.freezes > max {
                fail(format!("freezes <= {max}"), m.freezes.to_string());
            }
        }
        if let Some(max) = self.max_cpu_per_packet_us {
            match r.cpu.router_us_per_delivered {
                Some(us) if us > max => fail(
                    format!("router CPU per delivered packet <= {max} µs"),
                    format!("{us:.2} µs"),
                ),
                None => fail(
                    format!("router CPU per delivered packet <= {max} µs"),
                    "not measured (no router pid or no packets)".into(),
                ),
                _ => {}
            }
        }
        if let Some(min) = self.min_receiving {
            let share = if m.subscriptions == 0 {
                0.0
            } else {
                m.subscriptions_receiving as f64 / m.subscriptions as f64
            };
            if share < min.0 {
                fail(
                    format!("subscriptions receiving >= {min}"),
                    format!(
                        "{}/{} ({:.1}%)",
                        m.subscriptions_receiving,
                        m.subscriptions,
                        share * 100.0
                    ),
                );
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::report::{CpuFigures, JoinFigures, MediaFigures};
    use crate::tool::scenario::Scenario;
    use std::time::Duration;

    fn report() -> RunReport {
        let mut media = MediaFigures::default();
        media.loss.pct = 0.5;
        media.latency_video.p99_ms = 150.0;
        media.latency_audio.p99_ms = 250.0;
        media.subscriptions = 10;
        media.subscriptions_receiving = 9;
        media.freezes = 2;
        RunReport {
            target: "t".into(),
            repeat: 0,
            scenario: Scenario::default(),
            started_unix_ms: 0,
            joins: JoinFigures {
                failed: 1,
                ..Default::default()
            },
            media,
            cpu: CpuFigures {
                router_us_per_delivered: Some(4.0),
                ..Default::default()
            },
            series: vec![],
            notes: vec![],
            target_info: Default::default(),
            trends: vec![],
            routers: vec![],
            churn: None,
        }
    }

    #[test]
    fn nothing_set_nothing_broken() {
        let t = Thresholds::default();
        assert!(t.is_empty());
        assert!(!Thresholds {
            max_freezes: Some(0),
            ..Default::default()
        }
        .is_empty());
        assert!(t.check(&report()).is_empty());
    }

    #[test]
    fn each_limit_is_checked() {
        let t = Thresholds {
            max_loss: Some(Frac(0.01)),
            max_p99_latency: Some(Dur(Duration::from_millis(200))),
            max_join_failures: Some(0),
            max_join_time: None,
            max_freezes: Some(2),
            max_cpu_per_packet_us: Some(5.0),
            min_receiving: Some(Frac(1.0)),
        };
        let v = t.check(&report());
        let limits: Vec<&str> = v.iter().map(|v| v.limit.as_str()).collect();
        // Loss 0.5% <= 1%, freezes 2 <= 2, CPU 4 <= 5: fine. Audio p99 250 ms, one
        // failed join and 9/10 receiving break their limits.
        assert_eq!(
            limits,
            vec![
                "p99 latency <= 200ms",
                "join failures <= 0",
                "subscriptions receiving >= 100%"
            ]
        );
        assert_eq!(v[0].measured, "250.00 ms");
    }
}
