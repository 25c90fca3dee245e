//! The control API of the real binary: API keys, TLS and mutual TLS with a
//! stock tonic client, SIGHUP reload, safe defaults, connection limits and
//! running out of file descriptors (cascade certificates and room tokens:
//! tests/certs_and_tokens.rs).

mod common;

use common::process::{command, start};

use kaskade_protocol::v1 as pb;
use pb::room_service_client::RoomServiceClient;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const SECRET: &str = "s3cret-0123456789abcdef";

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn create_room(ch: Channel, id: &str, secret: Option<&str>) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(pb::CreateRoomRequest {
        room_id: id.into(),
        max_sessions: 0,
        allowed_regions: vec![],
    });
    if let Some(s) = secret {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {s}").parse().unwrap());
    }
    RoomServiceClient::new(ch)
        .create_room(req)
        .await
        .map(|_| ())
}

async fn health(ch: Channel) -> Result<i32, tonic::Status> {
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    h.check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status)
}

#[test]
fn api_keys_gate_every_service_but_health() {
    let rt = rt();
    let r = start(command(
        &[],
        &[("KASKADE_API_KEYS", &format!("backend:{SECRET}"))],
    ));
    rt.block_on(async {
        let ch = Endpoint::from_shared(format!("http://{}", r.control))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let e = create_room(ch.clone(), "a", None).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert_eq!(e.message(), "missing or invalid API key", "no hint");
        let e = create_room(ch.clone(), "a", Some("wrong-0123456789abcdef"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        create_room(ch.clone(), "a", Some(SECRET)).await.unwrap();
        // A handler's error is counted.
        let e = create_room(ch.clone(), "a", Some(SECRET))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
        // A message the server cannot decode is refused before any handler
        // runs, and counted too. (`BEARER`: the scheme's case does not matter.)
        #[derive(Clone, PartialEq, prost::Message)]
        struct NotARoomRequest {
            #[prost(uint64, tag = "1")]
            room_id: u64,
        }
        let mut g = tonic::client::Grpc::new(ch.clone());
        g.ready().await.unwrap();
        let mut req = tonic::Request::new(NotARoomRequest { room_id: 7 });
        req.metadata_mut()
            .insert("authorization", format!("BEARER {SECRET}").parse().unwrap());
        let path = http::uri::PathAndQuery::from_static("/kaskade.v1.RoomService/CreateRoom");
        let codec = tonic_prost::ProstCodec::<NotARoomRequest, pb::CreateRoomResponse>::default();
        let e = g.unary(req, path, codec).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal, "{e}");
        assert!(health(ch).await.is_ok(), "health needs no key");
    });
    let text = scrape(r.metrics);
    assert_eq!(
        metric(&text, "kaskade_auth_refusals_total{reason=\"missing\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "kaskade_auth_refusals_total{reason=\"unknown\"}"),
        1.0
    );
    for (series, n) in [
        ("{code=\"AlreadyExists\",method=\"CreateRoom\"}", 1.0),
        ("{code=\"Internal\",method=\"CreateRoom\"}", 1.0),
    ] {
        let series = format!("kaskade_api_errors_total{series}");
        assert_eq!(metric(&text, &series), n, "{series}: {text}");
    }
    assert!(text.contains("kaskade_build_info{"), "{text}");
    assert!(text.contains("process_resident_memory_bytes"));
}

#[test]
fn control_api_off_loopback_needs_keys_or_an_explicit_opt_out() {
    let out = command(&["--control-listen", "0.0.0.0:0"], &[])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KASKADE_API_KEYS"), "{err}");
    drop(start(command(
        &["--control-listen", "0.0.0.0:0", "--insecure-no-auth"],
        &[],
    )));
    drop(start(command(
        &["--control-listen", "0.0.0.0:0"],
        &[("KASKADE_API_KEYS", &format!("backend:{SECRET}"))],
    )));
}

struct Pki {
    ca: String,
    cert: String,
    key: String,
}

/// A CA and one certificate it signs (server: localhost; or a client).
fn pki(client: bool) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names = if client {
        vec!["backend".to_string()]
    } else {
        vec!["localhost".to_string()]
    };
    let leaf = CertificateParams::new(names).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

async fn tls_channel(addr: SocketAddr, ca: &str, client: Option<&Pki>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert, &c.key));
    }
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    // A handshake refused by the server shows on the first call.
    health(ch.clone()).await.map_err(|e| e.to_string())?;
    Ok(ch)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn tls_and_mutual_tls_with_a_stock_client_and_sighup_reload() {
    let dir = tempfile::tempdir().unwrap();
    let server = pki(false);
    let client = pki(true);
    let cert = write(dir.path(), "server.pem", &server.cert);
    let key = write(dir.path(), "server.key", &server.key);
    let client_ca = write(dir.path(), "client-ca.pem", &client.ca);
    let r = start(command(
        &[
            "--control-tls-cert",
            &cert,
            "--control-tls-key",
            &key,
            "--control-tls-client-ca",
            &client_ca,
        ],
        &[],
    ));
    let rt = rt();
    rt.block_on(async {
        let ch = tls_channel(r.control, &server.ca, Some(&client))
            .await
            .unwrap();
        create_room(ch.clone(), "before", None).await.unwrap();
        assert!(
            tls_channel(r.control, &server.ca, None).await.is_err(),
            "mTLS: no client certificate, no call"
        );
        let stranger = pki(true);
        assert!(tls_channel(r.control, &server.ca, Some(&stranger))
            .await
            .is_err());
        let plain = Endpoint::from_shared(format!("http://{}", r.control)).unwrap();
        let plain_ok = match plain.connect().await {
            Ok(ch) => health(ch).await.is_ok(),
            Err(_) => false,
        };
        assert!(!plain_ok, "no plaintext on a TLS listener");

        // New certificate from another CA, then SIGHUP.
        let renewed = pki(false);
        std::fs::write(&cert, &renewed.cert).unwrap();
        std::fs::write(&key, &renewed.key).unwrap();
        let ok = Command::new("kill")
            .args(["-HUP", &r.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let end = Instant::now() + Duration::from_secs(10);
        let fresh = loop {
            if let Ok(ch) = tls_channel(r.control, &renewed.ca, Some(&client)).await {
                break ch;
            }
            assert!(
                Instant::now() < end,
                "the renewed certificate is never served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        create_room(fresh, "after", None).await.unwrap();
        // The connection made before the reload is still up, rooms kept.
        create_room(ch.clone(), "still", None).await.unwrap();
        let rooms = RoomServiceClient::new(ch)
            .list_rooms(pb::ListRoomsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .rooms;
        assert_eq!(rooms.len(), 3);
        assert!(
            tls_channel(r.control, &server.ca, Some(&client))
                .await
                .is_err(),
            "old certificate gone"
        );
    });
}

#[test]
fn connection_limit_and_idle_timeout_close_connections_and_count_them() {
    let r = start(command(
        &[
            "--control-max-connections",
            "4",
            "--control-idle-timeout",
            "1s",
        ],
        &[],
    ));
    let mut conns: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(r.control).unwrap())
        .collect();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(r.metrics);
        let limit = metric(
            &text,
            "kaskade_control_accept_errors_total{reason=\"limit\"}",
        );
        if limit >= 6.0 {
            assert!(
                metric(&text, "kaskade_control_connections") <= 4.0,
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < end, "refusals never counted: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The silent ones are closed by the idle timeout: the server ends them.
    let first = &mut conns[0];
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server speaks first (HTTP/2 settings), then closes it.
    let mut buf = Vec::new();
    assert!(
        first.read_to_end(&mut buf).is_ok(),
        "closed by the server, not timed out"
    );
    let end = Instant::now() + Duration::from_secs(20);
    while metric(
        &scrape(r.metrics),
        "kaskade_control_accept_errors_total{reason=\"idle\"}",
    ) < 1.0
    {
        assert!(Instant::now() < end, "idle cut not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn running_out_of_descriptors_backs_off_and_recovers() {
    let mut cmd = command(&[], &[]);
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's limit.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let r = start(cmd);
    // More connections than the router has descriptors for, held open.
    let conns: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(r.control).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    drop(conns);
    // Once they are gone the router answers again.
    let rt = rt();
    let end = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Ok(mut s) = TcpStream::connect(r.metrics) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && out.contains("kaskade_control") {
                break out;
            }
        }
        assert!(Instant::now() < end, "metrics never answered again");
        std::thread::sleep(Duration::from_millis(100));
    };
    let fd = metric(
        &text,
        "kaskade_control_accept_errors_total{reason=\"fd_limit\"}",
    );
    assert!(fd >= 1.0, "out-of-descriptor accepts are counted: {text}");
    // Backing off (50 ms doubling to 1 s), not spinning: a handful per second.
    assert!(fd < 200.0, "accept path busy-looped: {fd} failures");
    rt.block_on(async {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = Endpoint::from_shared(format!("http://{}", r.control))
                .unwrap()
                .connect()
                .await
            {
                if health(ch).await.is_ok() {
                    break;
                }
            }
            assert!(Instant::now() < end, "health never answered again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
