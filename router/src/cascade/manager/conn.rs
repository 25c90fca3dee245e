//! Connection tasks: accepting and dialling links, and the control stream's reader and writer.
//! They report to the manager as [`Cmd`]s and decide nothing about the link protocol.

use super::metrics::Refusal;
use super::Cmd;
use crate::cascade::link::{ConnId, NodeId};
use crate::cascade::tls;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::cascade::close::CloseCode;
use kaskade_protocol::cascade::framing::{write_frame, FrameReader};
use prost::Message as _;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long an accepted connection may take to open its control stream.
const CONTROL_STREAM_WAIT: Duration = Duration::from_secs(5);

/// Closes a link connection, saying why.
pub(super) fn close(conn: &quinn::Connection, code: CloseCode) {
    conn.close(
        quinn::VarInt::from_u32(code.code()),
        code.reason().as_bytes(),
    );
}

/// Whether a connection error is a refusal, and whose.
pub(super) fn refusal(e: &quinn::ConnectionError) -> Option<Refusal> {
    use quinn::ConnectionError as E;
    let crypto = |code: u64| (0x100..0x200).contains(&code);
    match e {
        // Our TLS stack failed the handshake: the peer's certificate is not acceptable.
        E::TransportError(t) if crypto(u64::from(t.code)) => Some(Refusal::Tls),
        // The peer's TLS stack refused ours.
        E::ConnectionClosed(c) if crypto(u64::from(c.error_code)) => Some(Refusal::Peer),
        // The peer's link checks refused us after the handshake.
        E::ApplicationClosed(a) => match CloseCode::from_code(a.error_code.into_inner()) {
            Some(CloseCode::Identity | CloseCode::Hello | CloseCode::SelfLink) => {
                Some(Refusal::Peer)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Accepts links until the endpoint closes.
pub(super) async fn accept_loop(endpoint: quinn::Endpoint, cmd: mpsc::UnboundedSender<Cmd>) {
    while let Some(incoming) = endpoint.accept().await {
        let cmd = cmd.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    if let Some(reason) = refusal(&e) {
                        let _ = cmd.send(Cmd::Refused {
                            reason,
                            detail: e.to_string(),
                        });
                    }
                    return;
                }
            };
            let Ok(identity) = tls::peer_identity(&conn) else {
                close(&conn, CloseCode::Identity);
                let _ = cmd.send(Cmd::Refused {
                    reason: Refusal::Identity,
                    detail: "the certificate carries no node identity".into(),
                });
                return;
            };
            match tokio::time::timeout(CONTROL_STREAM_WAIT, conn.accept_bi()).await {
                Ok(Ok((send, recv))) => {
                    let _ = cmd.send(Cmd::Connected {
                        identity,
                        conn,
                        send,
                        recv,
                        dialed: false,
                    });
                }
                Ok(Err(e)) => {
                    if let Some(reason) = refusal(&e) {
                        let _ = cmd.send(Cmd::Refused {
                            reason,
                            detail: format!("{}: {e}", identity.node_id),
                        });
                    }
                }
                Err(_) => {
                    close(&conn, CloseCode::NoControlStream);
                    let _ = cmd.send(Cmd::Refused {
                        reason: Refusal::NoControlStream,
                        detail: identity.node_id,
                    });
                }
            }
        });
    }
}

/// Dials a peer; reports [`Cmd::Connected`] or [`Cmd::DialFailed`].
pub(super) async fn dial(
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    peer: NodeId,
    addr: String,
    cmd: mpsc::UnboundedSender<Cmd>,
) {
    let failed = |refused: Option<(Refusal, String)>| Cmd::DialFailed {
        peer: peer.clone(),
        refused,
    };
    let Some(sock) = tokio::net::lookup_host(&addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
    else {
        let _ = cmd.send(failed(None));
        return;
    };
    let connecting = match endpoint.connect_with(client, sock, &tls::server_name(peer.as_str())) {
        Ok(c) => c,
        Err(_) => {
            let _ = cmd.send(failed(None));
            return;
        }
    };
    let conn = match connecting.await {
        Ok(c) => c,
        Err(e) => {
            let _ = cmd.send(failed(refusal(&e).map(|r| (r, format!("{peer}: {e}")))));
            return;
        }
    };
    let identity = match tls::peer_identity(&conn) {
        Ok(i) if i.node_id == peer.as_str() => i,
        _ => {
            close(&conn, CloseCode::Identity);
            let why = format!("{peer}: its certificate names another node");
            let _ = cmd.send(failed(Some((Refusal::Identity, why))));
            return;
        }
    };
    match conn.open_bi().await {
        Ok((send, recv)) => {
            let _ = cmd.send(Cmd::Connected {
                identity,
                conn,
                send,
                recv,
                dialed: true,
            });
        }
        Err(e) => {
            let _ = cmd.send(failed(refusal(&e).map(|r| (r, format!("{peer}: {e}")))));
        }
    }
}

/// Writes control frames until the channel or the stream closes.
pub(super) async fn write_frames(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<cpb::Frame>,
) {
    let mut buf = Vec::new();
    while let Some(f) = rx.recv().await {
        buf.clear();
        if write_frame(&mut buf, &f.encode_to_vec()).is_err() {
            continue;
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// Reads control frames until the stream ends; then reports the connection gone (with the
/// refusal, if the peer refused it).
pub(super) async fn read_frames(
    mut recv: quinn::RecvStream,
    conn: quinn::Connection,
    peer: NodeId,
    id: ConnId,
    cmd: mpsc::UnboundedSender<Cmd>,
) {
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 16 * 1024];
    let bad = loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                reader.push(&buf[..n]);
                let mut bad = false;
                loop {
                    match reader.next_frame() {
                        Ok(Some(bytes)) => match cpb::Frame::decode(bytes) {
                            Ok(cpb::Frame { msg: Some(msg) }) => {
                                let _ = cmd.send(Cmd::Frame {
                                    peer: peer.clone(),
                                    conn: id,
                                    msg,
                                });
                            }
                            // A message of a newer version: ignored.
                            Ok(cpb::Frame { msg: None }) => {}
                            Err(_) => {
                                bad = true;
                                break;
                            }
                        },
                        Ok(None) => break,
                        Err(_) => {
                            bad = true;
                            break;
                        }
                    }
                }
                if bad {
                    break true;
                }
            }
            Ok(None) | Err(_) => break false,
        }
    };
    if bad {
        tracing::warn!(%peer, "cascade: unreadable control frame, closing the link");
        close(&conn, CloseCode::Protocol);
    }
    let refused = conn.close_reason().and_then(|e| refusal(&e));
    if conn.close_reason().is_none() {
        // The control stream ended but the connection did not: without it there is no link.
        close(&conn, CloseCode::Done);
    }
    let _ = cmd.send(Cmd::Disconnected {
        peer,
        conn: id,
        refused,
    });
}
