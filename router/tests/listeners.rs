//! The HTTP and metrics listeners of the real binary have the control API's
//! protection too: a connection limit, an idle timeout that cuts silent
//! connections but keeps event streams, and counters for both; a client
//! that fills one listener leaves the others working (the control API's
//! own limits: tests/control_security.rs).

mod common;

use common::daemon::Daemon;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One request with `connection: close`; the whole answer, or the error.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes until `series` reaches `at_least` (the server counts a refusal
/// a moment after the client sees it).
fn wait_metric(metrics: SocketAddr, series: &str, at_least: f64) -> String {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let text = get(metrics, "/metrics").unwrap_or_default();
        if metric(&text, series) >= at_least {
            return text;
        }
        assert!(
            Instant::now() < end,
            "{series} never reached {at_least}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the server closed `s` within `within` (EOF or reset), rather
/// than leaving it open.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn http_listener_limits_connections_cuts_silent_ones_and_keeps_event_streams() {
    let rt = rt();
    let args: Vec<String> = ["--http-max-connections", "4", "--http-idle-timeout", "2s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let d = Daemon::start(&rt, &args);
    let http = d.http.expect("HTTP listener on");

    // An event stream: its keep-alives (every 2 s / 3) keep it open.
    let mut events = TcpStream::connect(http).unwrap();
    write!(
        events,
        "GET /demo/events?room=idle-test HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    // Three silent connections fill the limit of 4.
    let mut silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(http).unwrap()).collect();
    wait_metric(d.metrics, "kaskade_http_connections", 4.0);
    // Beyond the limit: closed as they arrive, and counted.
    let mut over: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(http).unwrap()).collect();
    for s in &mut over {
        assert!(
            closed_by_server(s, Duration::from_secs(10)),
            "a connection beyond http.max_connections stayed open"
        );
    }
    let text = wait_metric(
        d.metrics,
        "kaskade_http_accept_errors_total{reason=\"limit\"}",
        5.0,
    );
    assert!(metric(&text, "kaskade_http_connections") <= 4.0, "{text}");
    // The metrics listener answered all along; the control API too.
    let mut rooms = d.rooms.clone();
    rt.block_on(rooms.list_rooms(kaskade_protocol::v1::ListRoomsRequest::default()))
        .expect("control API answers while the HTTP listener is full");

    // The silent ones are cut after 2 s, and counted.
    for s in &mut silent {
        assert!(
            closed_by_server(s, Duration::from_secs(15)),
            "a silent connection outlived http.idle_timeout"
        );
    }
    wait_metric(
        d.metrics,
        "kaskade_http_accept_errors_total{reason=\"idle\"}",
        3.0,
    );

    // The event stream outlives the idle timeout, with keep-alives flowing.
    events
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (mut seen, mut buf) = (String::new(), [0u8; 4096]);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match events.read(&mut buf) {
            Ok(0) => panic!("event stream closed: {seen}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("event stream silent or cut ({e}): {seen}"),
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.matches("\r\n:").count() + seen.matches("\n:").count() >= 2,
        "keep-alive comments: {seen}"
    );

    // With slots free again, requests are served.
    let page = get(http, "/kaskade.js").unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
}

#[test]
fn metrics_listener_limits_connections_and_cuts_silent_ones() {
    let rt = rt();
    let args: Vec<String> = [
        "--metrics-max-connections",
        "2",
        "--metrics-idle-timeout",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let d = Daemon::start(&rt, &args);
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(d.metrics).unwrap())
        .collect();
    // While both slots are held, a third connection is closed unanswered
    // (accepted after the two: the accept queue is first in, first out).
    let refused = get(d.metrics, "/metrics");
    assert!(
        !matches!(&refused, Ok(t) if t.starts_with("HTTP/1.1 200")),
        "a connection beyond metrics.max_connections was served"
    );
    // The silent ones are cut after 1 s; then scrapes work and show both
    // counts.
    drop(silent);
    let text = wait_metric(
        d.metrics,
        "kaskade_metrics_accept_errors_total{reason=\"limit\"}",
        1.0,
    );
    assert!(text.contains("kaskade_metrics_connections"), "{text}");
    let mut idle = TcpStream::connect(d.metrics).unwrap();
    assert!(closed_by_server(&mut idle, Duration::from_secs(15)));
    wait_metric(
        d.metrics,
        "kaskade_metrics_accept_errors_total{reason=\"idle\"}",
        1.0,
    );
}

/// Sends `s` one byte of `drip` every 200 ms (a pace no idle timeout
/// catches) until the server closes it or `within` passes; whether it did.
fn dripped_until_closed(s: &mut TcpStream, drip: &[u8], within: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + within;
    let (mut buf, mut seen) = ([0u8; 1024], String::new());
    for b in drip.iter().cycle() {
        if Instant::now() > end {
            return false;
        }
        if s.write_all(&[*b]).is_err() {
            return true;
        }
        match s.read(&mut buf) {
            // An answer (a 408 for a body) is fine; then it must close.
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Ok(_) => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    unreachable!("the drip cycles forever")
}

/// Reads one response with a `content-length` body from a kept-alive `s`.
fn read_response(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("content-length");
            if got.len() >= end + 4 + len {
                return text;
            }
        }
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "closed mid-response: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_request_head_must_arrive_within_the_head_deadline_on_both_listeners() {
    let rt = rt();
    let args: Vec<String> = ["--http-idle-timeout", "2s", "--metrics-idle-timeout", "2s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let d = Daemon::start(&rt, &args);
    let http = d.http.expect("HTTP listener on");
    // Half a request head, then a byte every 200 ms, far faster than the
    // 2 s idle timeout: only a deadline for the whole head ends it (2 s).
    let drip = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for (addr, listener) in [(http, "http"), (d.metrics, "metrics")] {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n").unwrap();
        assert!(
            dripped_until_closed(&mut s, drip, Duration::from_secs(20)),
            "a {listener} connection dripping its request head stayed open"
        );
        wait_metric(
            d.metrics,
            &format!("kaskade_{listener}_accept_errors_total{{reason=\"slow\"}}"),
            1.0,
        );
    }
    // A normal client is served, and may reuse its connection within the
    // deadline.
    let mut s = TcpStream::connect(d.metrics).unwrap();
    for _ in 0..3 {
        write!(s, "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").unwrap();
        let r = read_response(&mut s);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    let page = get(http, "/kaskade.js").unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
}

#[test]
fn a_whip_body_must_arrive_within_the_body_deadline() {
    let rt = rt();
    let args: Vec<String> = ["--http-idle-timeout", "2s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let d = Daemon::start(&rt, &args);
    let http = d.http.expect("HTTP listener on");
    let mut s = TcpStream::connect(http).unwrap();
    write!(
        s,
        "POST /whip/slow-body HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         content-type: application/sdp\r\ncontent-length: 4000\r\n\r\nv=0\r\n"
    )
    .unwrap();
    // A body byte every 200 ms: the connection is never idle.
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let (mut seen, mut buf) = (String::new(), [0u8; 1024]);
    while Instant::now() < end && !seen.contains("\r\n\r\n") {
        if s.write_all(b"a").is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    assert!(
        seen.starts_with("HTTP/1.1 408"),
        "a dripped WHIP body was not refused with 408 in 20 s: {seen:?}"
    );
    assert!(closed_by_server(&mut s, Duration::from_secs(10)));
    wait_metric(
        d.metrics,
        "kaskade_whip_refusals_total{endpoint=\"whip\",reason=\"timeout\"}",
        1.0,
    );
    // A Content-Length over the limit is refused before any body is sent.
    let mut s = TcpStream::connect(http).unwrap();
    write!(
        s,
        "POST /whip/huge HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         content-type: application/sdp\r\ncontent-length: 100000000\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head:?}");
    let page = get(http, "/kaskade.js").unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
}
