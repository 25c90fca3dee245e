//! Webhooks to `https://` receivers: a whole router started in-process posts
//! its events over TLS to a real HTTPS server on loopback (rustls, a
//! certificate from a test CA). With `webhooks.ca_file` naming that CA the
//! events arrive signed; a receiver whose certificate does not chain to it
//! gets nothing, and the failures are counted.

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use kaskade_loadtest::{Client, ClientConfig};
use kaskade_protocol::v1 as pb;
use kaskade_router::config::{Resolved, WebhooksResolved};
use kaskade_router::metrics::Metrics;
use kaskade_router::server::{self, Running};
use kaskade_router::webhooks::sign;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "test-secret-of-an-api-key";

/// A CA and a server certificate for 127.0.0.1 it signed, as PEM.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// An HTTPS receiver with `pki`'s server certificate; returns its address
/// and the bodies (with their signature headers) it got.
async fn receiver(pki: &Pki) -> (SocketAddr, Arc<Mutex<Vec<(String, u64, String, String)>>>) {
    let chain = CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let g = g.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                g.lock().unwrap().push((
                    h("webhook-id"),
                    h("webhook-timestamp").parse().unwrap_or(0),
                    h("webhook-signature"),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                axum::http::StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that does not trust us fails here: nothing to serve.
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    (addr, got)
}

async fn router(hook: SocketAddr, ca_file: PathBuf) -> (Running, Metrics) {
    let mut cfg = Resolved::ephemeral(1);
    cfg.webhooks = Some(WebhooksResolved {
        urls: vec![format!("https://{hook}/hook").parse().unwrap()],
        events: Vec::new(),
        key_id: "key-1".into(),
        secret: SECRET.into(),
        queue: 100,
        timeout: Duration::from_secs(2),
        participant_data: false,
        ca_file: Some(ca_file),
    });
    let metrics = Metrics::new();
    let running = server::start(&cfg, metrics.clone()).await.unwrap();
    (running, metrics)
}

/// One participant publishing audio joins and leaves: three events.
async fn join_and_leave(running: &Running, room: &str) {
    let now = Instant::now();
    let mut c = Client::new(ClientConfig::new("127.0.0.1:9".parse().unwrap(), now), now).unwrap();
    c.add_audio();
    let resp = running
        .plane
        .create_session(pb::CreateSessionRequest {
            room_id: room.into(),
            participant_id: "alice".into(),
            sdp_offer: c.create_offer().unwrap(),
            metadata: String::new(),
        })
        .await
        .unwrap();
    running.plane.close_session(&resp.session_id).await.unwrap();
}

fn metric(m: &Metrics, name: &str) -> f64 {
    m.render()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_an_https_receiver_that_chains_to_the_ca_file() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let (addr, got) = receiver(&pki).await;
    let (running, metrics) = router(addr, ca).await;
    running.plane.create_room("room-a", 0, &[]).unwrap();
    join_and_leave(&running, "room-a").await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:#?}");
    for (id, ts, sig, body) in &got {
        assert!(
            sign::verify(SECRET.as_bytes(), id, *ts, body.as_bytes(), sig),
            "signature of {body}"
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "kaskade_webhook_deliveries_total{outcome=\"delivered\"}"
        ),
        3.0
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_certificate_does_not_chain_to_the_ca_file_gets_nothing() {
    let (trusted, served) = (pki(), pki());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &trusted.ca_pem).unwrap();
    let (addr, got) = receiver(&served).await;
    let (running, metrics) = router(addr, ca).await;
    running.plane.create_room("room-b", 0, &[]).unwrap();
    join_and_leave(&running, "room-b").await;

    // Every attempt fails the handshake; the first retries are counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &metrics,
        "kaskade_webhook_deliveries_total{outcome=\"retried\"}",
    ) < 1.0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metric(
            &metrics,
            "kaskade_webhook_deliveries_total{outcome=\"retried\"}"
        ) >= 1.0,
        "a failed TLS handshake is a failed attempt"
    );
    assert!(
        got.lock().unwrap().is_empty(),
        "nothing reached the receiver"
    );
    assert_eq!(
        metric(
            &metrics,
            "kaskade_webhook_deliveries_total{outcome=\"delivered\"}"
        ),
        0.0
    );
    running.shutdown().await;
}
