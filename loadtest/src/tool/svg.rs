//! Hand-written SVG line charts (no plotting crate): axes with round ticks, one
//! polyline per series, a legend, and an optional shaded span (the measured window).

use std::fmt::Write as _;

/// One line of a chart.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    /// Legend text.
    pub name: String,
    /// CSS colour.
    pub color: &'static str,
    /// Points (x, y); non-finite y values break the line.
    pub points: Vec<(f64, f64)>,
}

/// Colours for series, in order.
pub(crate) const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Escapes text for XML.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round tick step for a range: 1, 2 or 5 × 10^k, about `n` ticks.
pub(crate) fn tick_step(range: f64, n: usize) -> f64 {
    if !(range.is_finite() && range > 0.0) {
        return 1.0;
    }
    let raw = range / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// A line chart. `span` shades an x range (e.g. the measured window).
pub(crate) fn line_chart(
    title: &str,
    y_label: &str,
    series: &[Series],
    span: Option<(f64, f64)>,
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 260.0;
    const L: f64 = 64.0;
    const R: f64 = 16.0;
    const T: f64 = 28.0;
    const B: f64 = 52.0;
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.1.is_finite())
    };
    let x_max = pts().map(|p| p.0).fold(0.0f64, f64::max).max(1.0);
    let x_min = pts().map(|p| p.0).fold(x_max, f64::min).min(0.0);
    let y_top = pts().map(|p| p.1).fold(0.0f64, f64::max);
    let y_step = tick_step(if y_top > 0.0 { y_top } else { 1.0 }, 5);
    let y_max = (y_top / y_step).ceil().max(1.0) * y_step;
    let sx = |x: f64| L + (x - x_min) / (x_max - x_min).max(1e-9) * (W - L - R);
    let sy = |y: f64| T + (1.0 - y / y_max) * (H - T - B);

    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        o,
        r#"<text x="{L}" y="16" font-size="13" font-weight="bold">{}</text>"#,
        esc(title)
    );
    if let Some((a, b)) = span {
        let (a, b) = (sx(a.max(x_min)), sx(b.min(x_max)));
        if b > a {
            let _ = write!(
                o,
                r##"<rect x="{a:.1}" y="{T}" width="{:.1}" height="{:.1}" fill="#2ca02c" fill-opacity="0.07"/><text x="{:.1}" y="{:.1}" fill="#2ca02c" text-anchor="end">measured</text>"##,
                b - a,
                H - T - B,
                b - 4.0,
                T + 12.0
            );
        }
    }
    // Y grid and ticks.
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let py = sy(y);
        let _ = write!(
            o,
            r##"<line x1="{L}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            py + 4.0,
            fmt_tick(y)
        );
        y += y_step;
    }
    // X ticks.
    let x_step = tick_step(x_max - x_min, 8);
    let mut x = (x_min / x_step).ceil() * x_step;
    while x <= x_max + 1e-9 {
        let px = sx(x);
        let _ = write!(
            o,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - B,
            H - B + 4.0,
            H - B + 16.0,
            fmt_tick(x)
        );
        x += x_step;
    }
    let _ = write!(
        o,
        r##"<line x1="{L}" x2="{L}" y1="{T}" y2="{:.1}" stroke="#333"/><line x1="{L}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        H - B,
        W - R,
        H - B,
        H - B
    );
    let _ = write!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text><text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (L + W - R) / 2.0,
        H - B + 30.0,
        (T + H - B) / 2.0,
        esc(y_label)
    );
    // Lines.
    for s in series {
        let mut d = String::new();
        let mut pen_down = false;
        for (x, y) in &s.points {
            if !y.is_finite() {
                pen_down = false;
                continue;
            }
            let _ = write!(
                d,
                "{}{:.1},{:.1} ",
                if pen_down { "L" } else { "M" },
                sx(*x),
                sy(*y)
            );
            pen_down = true;
        }
        if !d.is_empty() {
            let _ = write!(
                o,
                r#"<path d="{}" fill="none" stroke="{}" stroke-width="1.8"/>"#,
                d.trim_end(),
                s.color
            );
        }
    }
    // Legend.
    let mut lx = L;
    let ly = H - 8.0;
    for s in series {
        let _ = write!(
            o,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="4" fill="{}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 5.0,
            s.color,
            lx + 16.0,
            esc(&s.name)
        );
        lx += 24.0 + 6.5 * s.name.chars().count() as f64;
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(100.0, 5), 20.0);
        assert_eq!(tick_step(7.0, 5), 2.0);
        assert_eq!(tick_step(0.9, 5), 0.2);
        assert_eq!(tick_step(3_000_000.0, 5), 1_000_000.0);
        assert_eq!(tick_step(0.0, 5), 1.0);
        assert_eq!(fmt_tick(1_500_000.0), "1.5M");
        assert_eq!(fmt_tick(2000.0), "2k");
        assert_eq!(fmt_tick(0.25), "0.25");
    }

    #[test]
    fn chart_is_well_formed_svg() {
        let s = vec![
            Series {
                name: "a<b".into(),
                color: PALETTE[0],
                points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, f64::NAN), (3.0, 2.0)],
            },
            Series {
                name: "empty".into(),
                color: PALETTE[1],
                points: vec![],
            },
        ];
        let svg = line_chart("T & U", "Mbps", &s, Some((1.0, 3.0)));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("a&lt;b") && svg.contains("T &amp; U"));
        // The NaN breaks the line into two sub-paths.
        assert_eq!(svg.matches("<path").count(), 1);
        let path = &svg[svg.find("<path d=\"").unwrap()..];
        assert_eq!(
            path[..path.find("\" fill").unwrap()].matches('M').count(),
            2
        );
        assert!(svg.contains("measured"));
    }
}
