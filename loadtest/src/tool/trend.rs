//! Whether a figure stays flat over a long run (soak tests): the median of its
//! first and last tenth compared, and the least-squares slope over the whole
//! span, both relative to the figure's median. Pure.

use serde::Serialize;

/// The trend of one figure over a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Trend {
    /// What was measured, with its unit.
    pub figure: String,
    /// Points used.
    pub points: usize,
    /// Median over the whole span.
    pub median: f64,
    /// Smallest and largest point.
    pub min: f64,
    /// Largest point.
    pub max: f64,
    /// Median of the first tenth of the span.
    pub first: f64,
    /// Median of the last tenth.
    pub last: f64,
    /// `last − first`, relative to `median` (0.05 = grew by 5 % of the median).
    pub change: f64,
    /// Least-squares slope, per unit of x (per second, per cycle).
    pub slope: f64,
    /// The slope over the whole span, relative to `median`.
    pub slope_change: f64,
    /// Both `change` and `slope_change` within `tolerance`.
    pub flat: bool,
    /// `change` or `slope_change` above `+tolerance`: the figure crept up. Every
    /// figure a soak watches (memory, descriptors, CPU per packet, latency) is
    /// better lower, so only this fails; one that fell is reported as such.
    pub grew: bool,
    /// The tolerance used.
    pub tolerance: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The trend of `points` (x, y); non-finite y values are left out. `None` with
/// fewer than 10 points or a zero median.
pub(crate) fn trend(figure: &str, points: &[(f64, f64)], tolerance: f64) -> Option<Trend> {
    let p: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let n = p.len();
    if n < 10 {
        return None;
    }
    let tenth = (n / 10).max(1);
    let mut all: Vec<f64> = p.iter().map(|q| q.1).collect();
    let med = median(&mut all);
    if med == 0.0 {
        return None;
    }
    let first = median(&mut p[..tenth].iter().map(|q| q.1).collect::<Vec<_>>());
    let last = median(&mut p[n - tenth..].iter().map(|q| q.1).collect::<Vec<_>>());
    let mx = p.iter().map(|q| q.0).sum::<f64>() / n as f64;
    let my = p.iter().map(|q| q.1).sum::<f64>() / n as f64;
    let sxx: f64 = p.iter().map(|q| (q.0 - mx).powi(2)).sum();
    let sxy: f64 = p.iter().map(|q| (q.0 - mx) * (q.1 - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let span = p[n - 1].0 - p[0].0;
    let change = (last - first) / med;
    let slope_change = slope * span / med;
    Some(Trend {
        figure: figure.into(),
        points: n,
        median: med,
        min: all[0],
        max: all[n - 1],
        first,
        last,
        change,
        slope,
        slope_change,
        flat: change.abs() <= tolerance && slope_change.abs() <= tolerance,
        grew: change > tolerance || slope_change > tolerance,
        tolerance,
    })
}

impl Trend {
    /// One line for the summary.
    pub(crate) fn line(&self) -> String {
        format!(
            "{}: median {:.3} [{:.3}–{:.3}], first tenth {:.3} → last tenth {:.3} ({:+.1} %), \
             fitted {:+.1} % over the span: {}",
            self.figure,
            self.median,
            self.min,
            self.max,
            self.first,
            self.last,
            self.change * 100.0,
            self.slope_change * 100.0,
            self.verdict()
        )
    }

    /// "flat", "fell" (beyond the tolerance, downward only) or "GREW".
    pub(crate) fn verdict(&self) -> String {
        let tol = self.tolerance * 100.0;
        if self.flat {
            format!("flat (within ±{tol:.0} %)")
        } else if self.grew {
            format!("GREW (beyond +{tol:.0} %)")
        } else {
            format!("fell (beyond −{tol:.0} %), no growth")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_noisy_level_series_is_flat() {
        // A level of 100 with ±5 noise that repeats: no drift.
        let pts: Vec<(f64, f64)> = (0..600)
            .map(|i| (i as f64, 100.0 + [-5.0, 3.0, 0.0, 5.0, -3.0][i % 5]))
            .collect();
        let t = trend("rss MB", &pts, 0.05).unwrap();
        assert!(t.flat, "{t:?}");
        assert_eq!(t.median, 100.0);
        assert_eq!((t.min, t.max), (95.0, 105.0));
        assert!(t.slope.abs() < 1e-3, "{}", t.slope);
    }

    #[test]
    fn a_leak_is_not_flat() {
        // 100 MB growing by 0.05 MB per second for 600 s: +30 %.
        let pts: Vec<(f64, f64)> = (0..600)
            .map(|i| (i as f64, 100.0 + 0.05 * i as f64))
            .collect();
        let t = trend("rss MB", &pts, 0.05).unwrap();
        assert!(!t.flat, "{t:?}");
        assert!((t.slope - 0.05).abs() < 1e-9);
        assert!(t.change > 0.2 && t.slope_change > 0.2, "{t:?}");
        assert!(t.grew);
        assert!(t.line().contains("GREW"), "{}", t.line());
    }

    #[test]
    fn a_fall_is_not_growth() {
        // CPU per packet falling from 15 to 11 over the run: not flat, not grown.
        let pts: Vec<(f64, f64)> = (0..600)
            .map(|i| (i as f64, 15.0 - 4.0 * i as f64 / 600.0))
            .collect();
        let t = trend("us/pkt", &pts, 0.15).unwrap();
        assert!(!t.flat && !t.grew, "{t:?}");
        assert!(t.line().contains("fell"), "{}", t.line());
    }

    #[test]
    fn a_single_spike_does_not_break_flatness_but_gaps_are_skipped() {
        let mut pts: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, 10.0)).collect();
        pts[50].1 = 500.0;
        pts[60].1 = f64::NAN;
        let t = trend("p99 ms", &pts, 0.1).unwrap();
        assert_eq!(t.points, 99);
        assert_eq!((t.first, t.last, t.median), (10.0, 10.0, 10.0));
        assert!(t.change == 0.0);
        assert_eq!(t.max, 500.0);
        assert!(trend("x", &pts[..5], 0.1).is_none());
        assert!(trend("zero", &[(0.0, 0.0); 20], 0.1).is_none());
    }
}
