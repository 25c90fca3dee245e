//! The HTTP listener in public (issue 13): off loopback only with API keys
//! (a real `kaskade` process: exit 64 without), then every demo signalling,
//! WHIP and WHEP request needs a room token; over https with
//! `http.tls_cert`/`http.tls_key` (a router started in-process, a real
//! HTTPS client trusting a test CA), the certificate reloaded like the
//! control API's.

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kaskade_router::auth::token::{mint, Claims};
use kaskade_router::auth::KeySet;
use kaskade_router::config::Resolved;
use kaskade_router::metrics::Metrics;
use kaskade_router::server::{self, Running};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const KEY: &str = "backend";
const SECRET: &str = "public-http-test-secret-0123";

#[test]
fn a_non_loopback_http_listen_needs_api_keys() {
    let args = [
        "serve",
        "--control-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--media-port-start",
        "0",
        "--workers",
        "1",
        "--http-listen",
        "0.0.0.0:0",
    ];
    let bin = env!("CARGO_BIN_EXE_kaskade");
    let out = Command::new(bin)
        .args(args)
        .env_remove("KASKADE_API_KEYS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.listen"), "{err}");
    assert!(err.contains("KASKADE_API_KEYS"), "{err}");

    // With keys it starts, serves the page to any host name and wants tokens.
    let mut child = Command::new(bin)
        .args(args)
        .env("KASKADE_API_KEYS", format!("{KEY}:{SECRET}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let http = line
        .split("\"http\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no http address in {line:?}"));
    let port = http.rsplit(':').next().unwrap();
    assert!(http.starts_with("0.0.0.0:"), "{line}");
    assert!(line.contains(&format!("\"http_url\":\"http://0.0.0.0:{port}\"")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let get = |method: Method, path: &str, headers: &[(&str, &str)]| {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        rt.block_on(async { c.request(req).await.unwrap().status() })
    };
    let page = get(Method::GET, "/", &[("host", "kaskade.example.com")]);
    let signal = get(
        Method::POST,
        "/demo/api/GetRoom",
        &[("content-type", "application/json")],
    );
    let whip = get(
        Method::POST,
        "/whip/standup",
        &[("content-type", "application/sdp")],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(page, StatusCode::OK);
    assert_eq!(signal, StatusCode::UNAUTHORIZED);
    assert_eq!(whip, StatusCode::UNAUTHORIZED);
}

/// Embedders that skip `with_api_keys` get the same refusal from `start`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_router_refuses_a_public_http_listener_without_keys() {
    let mut cfg = Resolved::ephemeral(1);
    cfg.http_listen = Some("0.0.0.0:0".parse().unwrap());
    match server::start(&cfg, Metrics::new()).await {
        Err(server::StartError::Config(e)) => assert!(e.contains("http.listen"), "{e}"),
        Err(e) => panic!("not a config error: {e}"),
        Ok(r) => {
            r.shutdown().await;
            panic!("started without API keys on 0.0.0.0");
        }
    }
}

#[test]
fn bad_http_tls_files_are_refused_with_exit_64() {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kaskade"))
            .args([
                "serve",
                "--control-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "",
                "--media-port-start",
                "0",
                "--workers",
                "1",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--http-tls-cert", "/nonexistent/http.pem"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("http.tls_key"), "{err}");
    let (code, err) = run(&[
        "--http-tls-cert",
        "/nonexistent/http.pem",
        "--http-tls-key",
        "/nonexistent/http.key",
    ]);
    assert_eq!(code, Some(64));
    assert!(err.contains("http.tls_cert /nonexistent/http.pem"), "{err}");
}

/// A CA and a certificate for 127.0.0.1 it signed, written to `dir`.
fn write_pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k, ca_cert.pem())
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

fn https_client(ca_pem: &str) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(conn)
}

struct Answer {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: String,
}

async fn send(
    c: &HttpsClient,
    r: &Running,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("https://{}{path}", r.http.unwrap()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    // Event streams never end: their headers are enough.
    let body = if headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        String::new()
    } else {
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn token(room: &str, publish: bool, subscribe: bool, secret: &str) -> String {
    let mut c = Claims::new(room, SystemTime::now(), Duration::from_secs(60));
    c.publish = publish;
    c.subscribe = subscribe;
    mint(KEY, secret.as_bytes(), &c)
}

fn refusals(m: &Metrics, endpoint: &str, reason: &str) -> u64 {
    let series =
        format!("kaskade_whip_refusals_total{{endpoint=\"{endpoint}\",reason=\"{reason}\"}} ");
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(&series).map(|v| v.parse().unwrap()))
        .unwrap_or(0)
}

fn offer() -> String {
    let now = Instant::now();
    let mut c = kaskade_loadtest::Client::new(
        kaskade_loadtest::ClientConfig::new("127.0.0.1:9".parse().unwrap(), now),
        now,
    )
    .unwrap();
    c.add_audio();
    c.create_offer().unwrap()
}

/// An embedded router's config with HTTPS on loopback (certificate files
/// in `dir`) and API key `KEY`: (config, cert path, key path, CA PEM).
fn https_with_keys(dir: &Path) -> (Resolved, PathBuf, PathBuf, String) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key, ca) = write_pki(dir, "http");
    let mut cfg = Resolved::ephemeral(1);
    cfg.http_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.config.http.tls_cert = cert.display().to_string();
    cfg.config.http.tls_key = key.display().to_string();
    cfg.api_keys = KeySet::build(&[], Some(&format!("{KEY}:{SECRET}"))).unwrap();
    (cfg, cert, key, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_signalling_and_whip_over_https_need_a_room_token() {
    let dir = std::env::temp_dir().join(format!("kaskade-pubhttp-{}", std::process::id()));
    let (cfg, cert, key, ca) = https_with_keys(&dir);
    let m = Metrics::new();
    let r = server::start(&cfg, m.clone()).await.unwrap();
    let addr = r.http.unwrap();
    assert!(r
        .ready_line()
        .contains(&format!("\"http_url\":\"https://{addr}\"")));
    let c = https_client(&ca);

    let page = send(&c, &r, Method::GET, "/", &[], "").await.unwrap();
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["referrer-policy"], "no-referrer");

    let json = ("content-type", "application/json");
    let create = format!(
        r#"{{"roomId":"standup","participantId":"alice","sdpOffer":{}}}"#,
        serde_json::to_string(&offer()).unwrap()
    );
    let api = "/demo/api/CreateSession";
    let (right, forged, other_room, publish_only) = (
        format!("Bearer {}", token("standup", true, true, SECRET)),
        format!(
            "Bearer {}",
            token("standup", true, true, "not-the-secret-at-all")
        ),
        format!("Bearer {}", token("other", true, true, SECRET)),
        format!("Bearer {}", token("standup", true, false, SECRET)),
    );
    for (auth, status, reason) in [
        (None, StatusCode::UNAUTHORIZED, "no_token"),
        (Some(&forged), StatusCode::UNAUTHORIZED, "bad_token"),
        (Some(&other_room), StatusCode::FORBIDDEN, "wrong_room"),
        (Some(&publish_only), StatusCode::FORBIDDEN, "not_granted"),
    ] {
        let mut h = vec![json];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        let a = send(&c, &r, Method::POST, api, &h, &create).await.unwrap();
        assert_eq!(a.status, status, "{reason}: {}", a.body);
        assert_eq!(refusals(&m, "demo", reason), 1, "{reason}");
    }
    assert!(
        r.plane.get_room("standup").is_err(),
        "no room without a token"
    );
    // The token is the credential, whatever the page's origin (a TLS proxy
    // in front may rewrite Host).
    let origin = "https://kaskade.example.com";
    let h = [json, ("authorization", right.as_str()), ("origin", origin)];
    let a = send(&c, &r, Method::POST, api, &h, &create).await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let sid = v["sessionId"].as_str().unwrap().to_string();
    // The session's room is the one a token must be for.
    let close = format!(r#"{{"sessionId":"{sid}"}}"#);
    let h = [json, ("authorization", other_room.as_str())];
    let a = send(&c, &r, Method::POST, "/demo/api/CloseSession", &h, &close)
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(r.plane.get_session(&sid).is_ok());
    let h = [json, ("authorization", right.as_str())];
    let get = r#"{"roomId":"standup"}"#;
    let a = send(&c, &r, Method::POST, "/demo/api/GetRoom", &h, get)
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("alice"), "{}", a.body);
    let a = send(&c, &r, Method::POST, "/demo/api/CloseSession", &h, &close)
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // The event stream too (fetch with the header: EventSource cannot send one).
    let events = "/demo/events?room=standup";
    let a = send(&c, &r, Method::GET, events, &[], "").await.unwrap();
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = send(
        &c,
        &r,
        Method::GET,
        events,
        &[("authorization", &right)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK);

    // WHIP over https: no token, a forged one, the right one.
    let sdp = ("content-type", "application/sdp");
    let whip = "/whip/standup";
    let body = offer();
    let a = send(&c, &r, Method::POST, whip, &[sdp], &body)
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let h = [sdp, ("authorization", forged.as_str())];
    let a = send(&c, &r, Method::POST, whip, &h, &body).await.unwrap();
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refusals(&m, "whip", "bad_token"), 1);
    let h = [sdp, ("authorization", right.as_str())];
    let a = send(&c, &r, Method::POST, whip, &h, &body).await.unwrap();
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert!(a.body.starts_with("v=0"));

    // SIGHUP's reload: new connections get the new certificate.
    let (new_cert, new_key, new_ca) = write_pki(&dir, "http2");
    std::fs::rename(&new_cert, &cert).unwrap();
    std::fs::rename(&new_key, &key).unwrap();
    r.reload().await.unwrap();
    let fresh_old = https_client(&ca);
    assert!(send(&fresh_old, &r, Method::GET, "/", &[], "")
        .await
        .is_err());
    let fresh_new = https_client(&new_ca);
    let a = send(&fresh_new, &r, Method::GET, "/", &[], "")
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        m.render()
            .contains("kaskade_http_accept_errors_total{reason=\"tls\"} 1"),
        "the refused handshake is counted"
    );
    r.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn token_for(room: &str, sub: Option<&str>, ttl_secs: u64) -> String {
    let mut c = Claims::new(room, SystemTime::now(), Duration::from_secs(ttl_secs));
    c.publish = true;
    c.subscribe = true;
    c.sub = sub.map(String::from);
    format!("Bearer {}", mint(KEY, SECRET.as_bytes(), &c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_token_acts_only_on_its_own_participants_sessions() {
    let dir = std::env::temp_dir().join(format!("kaskade-owner-{}", std::process::id()));
    let (cfg, _, _, ca) = https_with_keys(&dir);
    let m = Metrics::new();
    let r = server::start(&cfg, m.clone()).await.unwrap();
    let c = https_client(&ca);
    let (alice, mallory) = (
        token_for("standup", Some("alice"), 60),
        token_for("standup", Some("mallory"), 60),
    );

    // The demo: mallory's token may not touch alice's session.
    let json = ("content-type", "application/json");
    let create = format!(
        r#"{{"roomId":"standup","sdpOffer":{}}}"#,
        serde_json::to_string(&offer()).unwrap()
    );
    let h = [json, ("authorization", alice.as_str())];
    let a = send(&c, &r, Method::POST, "/demo/api/CreateSession", &h, &create)
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let sid = v["sessionId"].as_str().unwrap().to_string();
    let close = format!(r#"{{"sessionId":"{sid}"}}"#);
    let renegotiate = format!(
        r#"{{"sessionId":"{sid}","sdpOffer":{}}}"#,
        serde_json::to_string(&offer()).unwrap()
    );
    let h = [json, ("authorization", mallory.as_str())];
    for (method, body) in [("CloseSession", &close), ("Renegotiate", &renegotiate)] {
        let path = format!("/demo/api/{method}");
        let a = send(&c, &r, Method::POST, &path, &h, body).await.unwrap();
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{method}: {}", a.body);
    }
    assert_eq!(refusals(&m, "demo", "wrong_participant"), 2);
    assert!(r.plane.get_session(&sid).is_ok(), "alice's session lives");
    let h = [json, ("authorization", alice.as_str())];
    let a = send(&c, &r, Method::POST, "/demo/api/CloseSession", &h, &close)
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // WHIP: a resource is its participant's, or its token's when that names
    // no participant.
    let sdp = ("content-type", "application/sdp");
    let frag = ("content-type", "application/trickle-ice-sdpfrag");
    let body = offer();
    let (anon, other_anon) = (
        token_for("standup", None, 60),
        token_for("standup", None, 61),
    );
    for (owner, intruders) in [
        (&alice, vec![&mallory, &anon]),
        (&anon, vec![&other_anon, &mallory]),
    ] {
        let h = [sdp, ("authorization", owner.as_str())];
        let a = send(&c, &r, Method::POST, "/whip/standup", &h, &body)
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let location = a.headers["location"].to_str().unwrap().to_string();
        for intruder in intruders {
            let h = [("authorization", intruder.as_str())];
            let a = send(&c, &r, Method::DELETE, &location, &h, "")
                .await
                .unwrap();
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
            let h = [frag, ("authorization", intruder.as_str())];
            let a = send(
                &c,
                &r,
                Method::PATCH,
                &location,
                &h,
                "a=end-of-candidates\r\n",
            )
            .await
            .unwrap();
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
        }
        let h = [("authorization", owner.as_str())];
        let a = send(&c, &r, Method::DELETE, &location, &h, "")
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    assert_eq!(refusals(&m, "whip", "not_owner"), 8);
    r.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
