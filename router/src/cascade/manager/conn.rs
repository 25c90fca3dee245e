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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Most control frames one connection may have waiting for its stream. A
/// working link queues a handful (the writer keeps up; NACKs and demand are
/// small); a peer that stops reading stalls the writer, and past this the
/// connection is closed ([`CloseCode::Stalled`]) instead of the queue
/// growing. The link is dialled again and resynchronised.
pub(super) const MAX_QUEUED_FRAMES: usize = 4096;

/// The frames waiting for one connection's writer: a count shared by the
/// senders and the writer task, bounded by [`MAX_QUEUED_FRAMES`].
#[derive(Debug, Clone, Default)]
pub(super) struct FrameQueue(Arc<AtomicUsize>);

impl FrameQueue {
    /// Takes a place for one more frame; false when the queue is full.
    fn take(&self) -> bool {
        if self.0.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_FRAMES {
            self.give();
            return false;
        }
        true
    }

    /// Gives a place back: the frame was written, or not queued after all.
    fn give(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where one connection's control frames go: a queue to its writer task
/// ([`write_frames`]), bounded by [`MAX_QUEUED_FRAMES`].
#[derive(Debug, Clone)]
pub struct FrameTx {
    tx: mpsc::UnboundedSender<cpb::Frame>,
    queued: FrameQueue,
    conn: quinn::Connection,
}

impl FrameTx {
    /// A queue for `conn`'s control stream, and the writer's end of it.
    pub(super) fn new(
        conn: quinn::Connection,
    ) -> (Self, mpsc::UnboundedReceiver<cpb::Frame>, FrameQueue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = FrameQueue::default();
        let me = Self {
            tx,
            queued: queued.clone(),
            conn,
        };
        (me, rx, queued)
    }

    /// Queues a frame; false if it was not (the writer is gone, or the
    /// queue was full and the connection is now closed).
    pub fn send(&self, msg: cpb::frame::Msg) -> bool {
        if !self.queued.take() {
            if self.conn.close_reason().is_none() {
                tracing::warn!("a cascade peer stopped reading its control stream; link closed");
                close(&self.conn, CloseCode::Stalled);
            }
            return false;
        }
        if self.tx.send(cpb::Frame { msg: Some(msg) }).is_err() {
            self.queued.give();
            return false;
        }
        true
    }
}

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
    queued: FrameQueue,
) {
    let mut buf = Vec::new();
    while let Some(f) = rx.recv().await {
        queued.give();
        buf.clear();
        let body = f.encode_to_vec();
        if write_frame(&mut buf, &body).is_err() {
            // Frames are ours and bounded by the link machine; one over the
            // limit is a bug, not the peer's doing: say so, keep the link.
            tracing::warn!(
                bytes = body.len(),
                "a control frame over the size limit was not sent"
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_queue_holds_at_most_its_bound_and_frees_what_is_written() {
        let q = FrameQueue::default();
        for _ in 0..MAX_QUEUED_FRAMES {
            assert!(q.take());
        }
        assert!(!q.take(), "full: the sender closes the connection");
        assert!(!q.take(), "and stays full while the writer is stalled");
        q.give();
        assert!(q.take(), "a written frame frees its place");
        assert!(!q.take());
    }
}
