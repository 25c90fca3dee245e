//! Reads the router's Prometheus text exposition over plain HTTP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Fetches `http://addr/metrics` (blocking, short timeouts).
pub fn scrape(addr: SocketAddr) -> Result<String, String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: kaskade\r\nconnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.find("\r\n\r\n") {
        Some(i) if out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200") => {
            Ok(out[i + 4..].to_string())
        }
        _ => Err(format!(
            "unexpected answer: {}",
            out.lines().next().unwrap_or("")
        )),
    }
}

/// Sum of every sample of metric `name` (all label sets) whose labels contain
/// `label` (e.g. `kind="video"`; empty: any).
pub fn sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // The exact name: followed by labels or the value.
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            if !label.is_empty() && !rest.contains(label) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_by_name_and_label() {
        let text = "# HELP kaskade_rtp_packets_forwarded_total RTP packets written.\n\
                    # TYPE kaskade_rtp_packets_forwarded_total counter\n\
                    kaskade_rtp_packets_forwarded_total{kind=\"audio\"} 10\n\
                    kaskade_rtp_packets_forwarded_total{kind=\"video\"} 32\n\
                    kaskade_rtp_packets_forwarded_total_extra 1000\n\
                    kaskade_sessions 3\n";
        assert_eq!(sum(text, "kaskade_rtp_packets_forwarded_total", ""), 42.0);
        assert_eq!(
            sum(
                text,
                "kaskade_rtp_packets_forwarded_total",
                "kind=\"video\""
            ),
            32.0
        );
        assert_eq!(sum(text, "kaskade_sessions", ""), 3.0);
        assert_eq!(sum(text, "kaskade_missing", ""), 0.0);
    }
}
