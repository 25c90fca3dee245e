//! Cascade links over real QUIC endpoints on loopback: mutual TLS against the cluster CA, node
//! identities read back on both sides, a media datagram (fragmented) and a control frame
//! round-trip; certificates from another CA, clients without a certificate and a wrong server
//! name are refused.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kaskade_protocol::cascade::datagram::{self as wire, MediaHeader};
use kaskade_protocol::cascade::fragment::{Fragmenter, Reassembler};
use kaskade_protocol::cascade::framing::{self, FrameReader};
use kaskade_router::cascade::cert::{self, NodeIdentity};
use kaskade_router::cascade::relay::LinkRate;
use kaskade_router::cascade::tls;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(5);

struct Pems {
    ca: String,
    cert: String,
    key: String,
}

fn pems(dir: &Path, node: &str) -> Pems {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    Pems {
        ca: read("ca.pem"),
        cert: read(&format!("{node}.pem")),
        key: read(&format!("{node}.key")),
    }
}

fn ids(specs: &[&str]) -> Vec<NodeIdentity> {
    specs.iter().map(|s| s.parse().unwrap()).collect()
}

/// A router's endpoint: accepts links and dials with its own certificate.
fn endpoint(p: &Pems) -> quinn::Endpoint {
    let (server, client) =
        tls::endpoint_configs(&p.ca, &p.cert, &p.key, LinkRate::from_mbps(100)).unwrap();
    let mut ep = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    ep
}

fn addr(ep: &quinn::Endpoint) -> SocketAddr {
    ep.local_addr().unwrap()
}

/// A client endpoint with a hand-built rustls configuration (what an intruder could build).
fn custom_client(
    trusted_ca: &str,
    cert: Option<(&str, &str)>,
) -> (quinn::Endpoint, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trusted_ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![tls::ALPN.to_vec()];
    let mut client =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(config).unwrap()));
    client.transport_config(Arc::new(tls::transport_config(LinkRate::from_mbps(100))));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    (ep, client)
}

/// The accepting side must fail the handshake.
async fn server_refuses(server: &quinn::Endpoint) -> quinn::ConnectionError {
    let incoming = timeout(T, server.accept()).await.unwrap().unwrap();
    match timeout(T, incoming).await.unwrap() {
        Ok(conn) => panic!(
            "server accepted a link from {:?}",
            tls::peer_identity(&conn)
        ),
        Err(e) => e,
    }
}

/// The dialling side must end up without a usable connection. In TLS 1.3 the client finishes
/// its handshake before the server has checked its certificate, so a refused client can see
/// the connection established and then closed by the server.
async fn client_fails(connecting: quinn::Connecting) -> quinn::ConnectionError {
    match timeout(T, connecting).await.unwrap() {
        Err(e) => e,
        Ok(conn) => {
            let e = timeout(T, conn.closed()).await.unwrap();
            assert!(
                matches!(
                    e,
                    quinn::ConnectionError::ConnectionClosed(_)
                        | quinn::ConnectionError::TransportError(_)
                ),
                "unexpected close: {e:?}"
            );
            e
        }
    }
}

/// Whether this side's own TLS stack failed the handshake (rather than hearing of the peer's
/// refusal).
fn refused_here(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::TransportError(_))
}

#[tokio::test]
async fn linked_routers_know_each_other_and_exchange_media_and_frames() {
    let dir = tempfile::tempdir().unwrap();
    cert::write_dev_cluster(dir.path(), &ids(&["fra:eu-de-fra", "ams:eu-nl-ams"]), false).unwrap();
    let a = endpoint(&pems(dir.path(), "fra"));
    let b = endpoint(&pems(dir.path(), "ams"));
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let header = MediaHeader {
        track: 7,
        layer: 1,
        marker: true,
        keyframe: true,
        seq: 123_456,
        timestamp: 90_000,
        audio_level: None,
        voice_activity: false,
        resync: false,
    };

    // Router B: accept, check who called, echo one media packet and one control frame.
    let b_task = {
        let b = b.clone();
        tokio::spawn(async move {
            let conn = b.accept().await.unwrap().await.unwrap();
            let peer = tls::peer_identity(&conn).unwrap();
            assert_eq!(peer, NodeIdentity::new("fra", "eu-de-fra").unwrap());

            let mut reassembler = Reassembler::new();
            let packet = loop {
                let d = wire::decode(conn.read_datagram().await.unwrap()).unwrap();
                if let Some(p) = reassembler.push(Instant::now(), d) {
                    break p;
                }
            };
            let mut out = Vec::new();
            let max = conn.max_datagram_size().unwrap();
            Fragmenter::new()
                .encode(&packet.header, &packet.payload, max, &mut out)
                .unwrap();
            for d in out {
                conn.send_datagram(d).unwrap();
            }

            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut frames = FrameReader::new();
            let frame = loop {
                if let Some(f) = frames.next_frame().unwrap() {
                    break f;
                }
                let chunk = recv.read_chunk(64 * 1024, true).await.unwrap().unwrap();
                frames.push(&chunk.bytes);
            };
            let mut reply = Vec::new();
            framing::write_frame(&mut reply, &[b"echo: ", &frame[..]].concat()).unwrap();
            send.write_all(&reply).await.unwrap();
            send.finish().unwrap();
            conn.closed().await;
            peer
        })
    };

    // Router A dials B by node id.
    let conn = timeout(T, a.connect(addr(&b), &tls::server_name("ams")).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        tls::peer_identity(&conn).unwrap(),
        NodeIdentity::new("ams", "eu-nl-ams").unwrap()
    );
    assert_eq!(
        conn.handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol
            .as_deref(),
        Some(tls::ALPN)
    );

    // A media packet larger than the datagram limit goes out in fragments and comes back whole.
    let max = conn.max_datagram_size().unwrap();
    assert!(max < payload.len(), "datagram limit {max}");
    let mut out = Vec::new();
    let n = Fragmenter::new()
        .encode(&header, &payload, max, &mut out)
        .unwrap();
    assert!(n >= 2);
    for d in out {
        conn.send_datagram(d).unwrap();
    }
    let mut reassembler = Reassembler::new();
    let echoed = timeout(T, async {
        loop {
            let d = wire::decode(conn.read_datagram().await.unwrap()).unwrap();
            if let Some(p) = reassembler.push(Instant::now(), d) {
                break p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(echoed.header, header);
    assert_eq!(echoed.payload, Bytes::from(payload));

    // A control frame on a bidirectional stream, read back through partial reads.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut frame = Vec::new();
    framing::write_frame(&mut frame, b"subscribe track 7").unwrap();
    send.write_all(&frame).await.unwrap();
    let mut frames = FrameReader::new();
    let reply = timeout(T, async {
        loop {
            if let Some(f) = frames.next_frame().unwrap() {
                break f;
            }
            let chunk = recv.read_chunk(3, true).await.unwrap().unwrap();
            frames.push(&chunk.bytes);
        }
    })
    .await
    .unwrap();
    assert_eq!(&reply[..], b"echo: subscribe track 7");

    conn.close(0u32.into(), b"done");
    let peer_seen_by_b = timeout(T, b_task).await.unwrap().unwrap();
    assert_eq!(peer_seen_by_b.region, "eu-de-fra");
}

#[tokio::test]
async fn node_from_another_ca_is_refused() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    cert::write_dev_cluster(
        ours.path(),
        &ids(&["fra:eu-de-fra", "ams:eu-nl-ams"]),
        false,
    )
    .unwrap();
    // Same node id and region as a real member: only the CA differs.
    cert::write_dev_cluster(theirs.path(), &ids(&["fra:eu-de-fra"]), false).unwrap();
    let b = endpoint(&pems(ours.path(), "ams"));
    let foreign = pems(theirs.path(), "fra");

    // A foreign router with its own CA: refused by both sides.
    let x = endpoint(&foreign);
    let (server_err, client_err) = tokio::join!(
        server_refuses(&b),
        client_fails(x.connect(addr(&b), &tls::server_name("ams")).unwrap())
    );
    eprintln!("own CA -> server: {server_err}; client: {client_err}");

    // A foreign certificate from a client that trusts our CA: the server refuses it.
    let ca = pems(ours.path(), "ams").ca;
    let (x, config) = custom_client(&ca, Some((&foreign.cert, &foreign.key)));
    let (server_err, client_err) = tokio::join!(
        server_refuses(&b),
        client_fails(
            x.connect_with(config, addr(&b), &tls::server_name("ams"))
                .unwrap()
        )
    );
    eprintln!("our CA trusted, foreign cert -> server: {server_err}; client: {client_err}");
    // The server itself refused (a local TLS error), the client learnt it from the server.
    assert!(refused_here(&server_err), "{server_err:?}");
    assert!(
        server_err.to_string().contains("invalid peer certificate"),
        "{server_err}"
    );
    assert!(!refused_here(&client_err), "{client_err:?}");

    // And a real member still gets in afterwards.
    let a = endpoint(&pems(ours.path(), "fra"));
    let (accepted, dialled) =
        tokio::join!(async { b.accept().await.unwrap().await.unwrap() }, async {
            a.connect(addr(&b), &tls::server_name("ams"))
                .unwrap()
                .await
                .unwrap()
        });
    assert_eq!(tls::peer_identity(&accepted).unwrap().node_id, "fra");
    assert_eq!(tls::peer_identity(&dialled).unwrap().node_id, "ams");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    cert::write_dev_cluster(dir.path(), &ids(&["ams:eu-nl-ams"]), false).unwrap();
    let p = pems(dir.path(), "ams");
    let b = endpoint(&p);
    let (x, config) = custom_client(&p.ca, None);
    let (server_err, client_err) = tokio::join!(
        server_refuses(&b),
        client_fails(
            x.connect_with(config, addr(&b), &tls::server_name("ams"))
                .unwrap()
        )
    );
    eprintln!("no client cert -> server: {server_err}; client: {client_err}");
    assert!(refused_here(&server_err), "{server_err:?}");
    assert!(
        server_err.to_string().contains("no certificates"),
        "{server_err}"
    );
    assert!(!refused_here(&client_err), "{client_err:?}");
}

#[tokio::test]
async fn dialling_the_wrong_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    cert::write_dev_cluster(dir.path(), &ids(&["fra:eu-de-fra", "ams:eu-nl-ams"]), false).unwrap();
    let a = endpoint(&pems(dir.path(), "fra"));
    let b = endpoint(&pems(dir.path(), "ams"));
    // A expects `par` at B's address: B's certificate is valid but names `ams`.
    let (server_err, client_err) = tokio::join!(
        server_refuses(&b),
        client_fails(a.connect(addr(&b), &tls::server_name("par")).unwrap())
    );
    eprintln!("wrong name -> server: {server_err}; client: {client_err}");
    assert!(refused_here(&client_err), "{client_err:?}");
    assert!(
        client_err.to_string().contains("not valid for name"),
        "{client_err}"
    );
}

/// A router's cascade in this process: a control plane without media workers (rooms and
/// links only), the real QUIC endpoint and manager.
struct Router {
    control: Arc<kaskade_router::control::Control>,
    cascade: kaskade_router::cascade::manager::CascadeHandle,
    // Kept open: the relay task ends when the workers' side closes.
    _relay: tokio::sync::mpsc::Sender<(
        kaskade_router::media::types::LinkId,
        Arc<kaskade_router::media::MediaPacket>,
    )>,
}

fn router(dir: &Path, id: &str, region: &str, peers: &[(&str, SocketAddr)]) -> Router {
    use kaskade_router::config::{CascadeResolved, PeerAddr};
    use kaskade_router::control::{Control, Identity, Limits};
    let control = Arc::new(Control::new(
        Vec::new(),
        kaskade_router::metrics::Metrics::new(),
        Limits {
            max_rooms: 10,
            max_sessions_per_room: 10,
            ..Limits::default()
        },
        Identity {
            node_id: id.into(),
            region: region.into(),
        },
    ));
    let cfg = CascadeResolved {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{id}.pem")),
        key: dir.join(format!("{id}.key")),
        peers: peers
            .iter()
            .map(|(n, a)| PeerAddr {
                node_id: n.to_string(),
                addr: a.to_string(),
            })
            .collect(),
        auto_link: true,
        link_rate: LinkRate::from_mbps(100),
    };
    let (relay, relay_rx) = tokio::sync::mpsc::channel(16);
    let cascade = kaskade_router::cascade::manager::start(&cfg, control.clone(), relay_rx).unwrap();
    control.set_cascade(Arc::new(cascade.clone()));
    Router {
        control,
        cascade,
        _relay: relay,
    }
}

/// Polls `check` every 20 ms until it holds (panics after 10 s): real sockets, real time.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let end = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The leaf certificate a new connection to `addr` (as node `name`) is served.
async fn served_certificate(p: &Pems, addr: SocketAddr, name: &str) -> Vec<u8> {
    let ep = endpoint(p);
    let conn = timeout(T, ep.connect(addr, &tls::server_name(name)).unwrap())
        .await
        .unwrap()
        .unwrap();
    let chain = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<CertificateDer<'static>>>()
        .unwrap();
    conn.close(0u32.into(), b"done");
    chain[0].to_vec()
}

#[tokio::test]
async fn reloading_certificates_keeps_links_up_and_new_connections_get_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cert::write_dev_cluster(d, &ids(&["fra:eu-de-fra", "ams:eu-nl-ams"]), false).unwrap();
    let fra = router(d, "fra", "eu-de-fra", &[]);
    let ams = router(d, "ams", "eu-nl-ams", &[("fra", fra.cascade.local_addr)]);
    for r in [&fra, &ams] {
        r.control.create_room("r", 0, &[]).unwrap();
    }
    let linked = |r: &Router| {
        let c = r.cascade.clone();
        async move {
            let l = c.list_links().await;
            l.len() == 1 && l[0].up && l[0].rooms == ["r"]
        }
    };
    eventually("the room links itself", || linked(&fra)).await;
    eventually("on both sides", || linked(&ams)).await;
    let old = served_certificate(&pems(d, "ams"), fra.cascade.local_addr, "fra").await;

    // A new certificate for fra from the same CA, written over the old files, then reloaded.
    let p = pems(d, "fra");
    let ca_key = std::fs::read_to_string(d.join("ca.key")).unwrap();
    let (cert, key) = cert::generate_node(&p.ca, &ca_key, "fra", "eu-de-fra", &[]).unwrap();
    std::fs::write(d.join("fra.pem"), &cert).unwrap();
    std::fs::write(d.join("fra.key"), &key).unwrap();
    fra.cascade.reload_tls().await.unwrap();

    let new = served_certificate(&pems(d, "ams"), fra.cascade.local_addr, "fra").await;
    let expected = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    assert_ne!(new, old);
    assert_eq!(
        new,
        expected.to_vec(),
        "a new connection gets the new certificate"
    );
    for r in [&fra, &ams] {
        let l = r.cascade.list_links().await;
        assert!(l[0].up && l[0].reconnects == 0, "the link stayed up: {l:?}");
    }

    // A certificate for another node is refused; nothing changes.
    std::fs::copy(d.join("ams.pem"), d.join("fra.pem")).unwrap();
    std::fs::copy(d.join("ams.key"), d.join("fra.key")).unwrap();
    let e = fra.cascade.reload_tls().await.unwrap_err();
    assert!(e.to_string().contains("\"ams\""), "{e}");
    let still = served_certificate(&pems(d, "ams"), fra.cascade.local_addr, "fra").await;
    assert_eq!(still, expected.to_vec());

    // The link's metrics, labelled by the peer's node id.
    let text = || fra.control.metrics().render();
    assert!(
        text().contains("kaskade_cascade_link_up{peer=\"ams\"} 1"),
        "{}",
        text()
    );
    eventually("link bytes counted", || {
        let t = text();
        async move { t.contains("kaskade_cascade_link_bytes_total{direction=\"sent\",peer=\"ams\"}") }
    })
    .await;
    assert!(text().contains("kaskade_cascade_link_rtt_seconds{peer=\"ams\"}"));
}

#[tokio::test]
async fn a_refused_handshake_is_counted_on_both_sides() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    cert::write_dev_cluster(ours.path(), &ids(&["fra:eu-de-fra"]), false).unwrap();
    cert::write_dev_cluster(theirs.path(), &ids(&["ber:eu-de-ber"]), false).unwrap();
    let fra = router(ours.path(), "fra", "eu-de-fra", &[]);
    // ber (another CA) dials fra: ber's TLS refuses fra's certificate, fra hears of it.
    let ber = router(
        theirs.path(),
        "ber",
        "eu-de-ber",
        &[("fra", fra.cascade.local_addr)],
    );
    let refused = |r: &Router, reason: &str| {
        let line = format!("kaskade_cascade_handshakes_refused_total{{reason=\"{reason}\"}} ");
        let text = r.control.metrics().render();
        text.lines()
            .find_map(|l| l.strip_prefix(&line)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    eventually("ber counts its refusal", || {
        let n = refused(&ber, "tls");
        async move { n >= 1 }
    })
    .await;
    eventually("fra counts being refused", || {
        let n = refused(&fra, "peer");
        async move { n >= 1 }
    })
    .await;
    assert!(fra.cascade.list_links().await.is_empty(), "no link on fra");
    assert!(ber.cascade.list_links().await.iter().all(|l| !l.up));
}

#[test]
fn certificate_files_are_checked_before_anything_is_bound() {
    use kaskade_router::cascade::manager::check_files;
    use kaskade_router::config::CascadeResolved;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cert::write_dev_cluster(d, &ids(&["fra:eu-de-fra", "ams:eu-nl-ams"]), false).unwrap();
    let cfg = |node: &str| CascadeResolved {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca: d.join("ca.pem"),
        cert: d.join(format!("{node}.pem")),
        key: d.join(format!("{node}.key")),
        peers: Vec::new(),
        auto_link: true,
        link_rate: LinkRate::from_mbps(100),
    };
    check_files(&cfg("fra"), "fra", "eu-de-fra").unwrap();
    let e = check_files(&cfg("ams"), "fra", "eu-de-fra").unwrap_err();
    assert!(e.to_string().contains("\"ams\""), "{e}");
    let e = check_files(&cfg("ber"), "ber", "eu-de-ber").unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}
