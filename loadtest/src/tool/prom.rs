//! The router's Prometheus text exposition: scraped over HTTP and parsed into
//! samples (name, labels, value).
//!
//! A parser of our own, not a crate: the one maintained text-format parser on
//! crates.io (`prometheus-parse`) brings `regex`, `chrono` and `itertools` for
//! what is one line format here; the `prometheus` crate in the graph only encodes.

use super::http::HttpApi;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// Metric name (with `_total`, `_bucket`, ... as written).
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The value (`NaN`, `+Inf` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Exposition {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses the text format; lines that do not parse are skipped.
    pub(crate) fn parse(text: &str) -> Exposition {
        Exposition {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Sum of the samples of `name` whose labels include every pair of `with`.
    pub(crate) fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|s| s.value).sum()
    }

    /// The samples of `name` whose labels include every pair of `with`.
    pub(crate) fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = parse_labels(r, &mut labels)?;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `key="value",...}` (escapes `\\`, `\"`, `\n`); returns what follows `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(String, String)>) -> Option<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(r) = s.strip_prefix('}') {
            return Some(r);
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let body = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut chars = body.char_indices();
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        };
        out.push((key, value));
        s = body[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// Fetches and parses `GET /metrics`.
pub(crate) async fn scrape(api: &HttpApi) -> Result<Exposition, String> {
    Ok(Exposition::parse(&api.get_text("/metrics").await?))
}

/// The router's `kaskade_build_info{version,commit}`, when it exports it.
pub(crate) fn build_info(e: &Exposition) -> Option<(String, String)> {
    let s = e.matching("kaskade_build_info", &[]).next()?;
    Some((
        s.label("version").unwrap_or("").to_string(),
        s.label("commit").unwrap_or("").to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP kaskade_rtp_packets_forwarded_total RTP packets written.\n\
        # TYPE kaskade_rtp_packets_forwarded_total counter\n\
        kaskade_rtp_packets_forwarded_total{kind=\"audio\"} 10\n\
        kaskade_rtp_packets_forwarded_total{kind=\"video\"} 32\n\
        kaskade_rtp_packets_forwarded_total_extra 1000\n\
        kaskade_sessions 3\n\
        kaskade_build_info{version=\"0.1.0\",commit=\"abc1234\"} 1\n\
        kaskade_cascade_link_up{peer=\"ams\"} 1 1700000000000\n\
        weird{a=\"x\\\"y,}z\", b = \"n\\nl\",} +Inf\n\
        process_resident_memory_bytes 1.2e7\n\
        garbage line\n";

    #[test]
    fn sums_by_exact_name_and_labels() {
        let e = Exposition::parse(TEXT);
        let name = "kaskade_rtp_packets_forwarded_total";
        assert_eq!(e.sum(name, &[]), 42.0);
        assert_eq!(e.sum(name, &[("kind", "video")]), 32.0);
        assert_eq!(e.sum(name, &[("kind", "data")]), 0.0);
        assert_eq!(e.sum("kaskade_sessions", &[]), 3.0);
        assert_eq!(e.sum("kaskade_missing", &[]), 0.0);
        assert_eq!(e.sum("process_resident_memory_bytes", &[]), 1.2e7);
        assert_eq!(e.sum("kaskade_session", &[]), 0.0, "names match exactly");
    }

    #[test]
    fn labels_with_escapes_and_timestamps() {
        let e = Exposition::parse(TEXT);
        let w = e.matching("weird", &[]).next().unwrap();
        assert_eq!(w.label("a"), Some("x\"y,}z"));
        assert_eq!(w.label("b"), Some("n\nl"));
        assert_eq!(w.value, f64::INFINITY);
        let up = e.matching("kaskade_cascade_link_up", &[("peer", "ams")]);
        assert_eq!(up.map(|s| s.value).collect::<Vec<_>>(), vec![1.0]);
        assert!(e.matching("garbage", &[]).next().is_none());
    }

    #[test]
    fn build_info_when_exported() {
        let e = Exposition::parse(TEXT);
        assert_eq!(
            build_info(&e),
            Some(("0.1.0".to_string(), "abc1234".to_string()))
        );
        assert_eq!(build_info(&Exposition::parse("kaskade_sessions 1\n")), None);
    }
}
