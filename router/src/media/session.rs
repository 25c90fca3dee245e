//! One participant's peer connection on a worker: the str0m `Rtc`, what it
//! publishes, and its outgoing (subscribed) streams.

use super::command::MediaError;
use super::outstream::OutStream;
use super::types::TrackInfo;
use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid, Rid, Rids};
use str0m::rtp::Ssrc;
use str0m::{Event, Input, Output, Rtc};

/// How long a session may take to connect after creation.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long ICE may stay disconnected before the session is closed.
pub const DISCONNECT_GRACE: Duration = Duration::from_secs(10);

/// Immediate `Input::Timeout(now)` rounds one drain may feed.
const MAX_TIMEOUT_ROUNDS: usize = 8;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Where to.
    pub dst: SocketAddr,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A track this session publishes.
#[derive(Debug, Clone)]
pub struct PubTrack {
    /// Router-assigned id.
    pub id: TrackId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Simulcast rids (empty without simulcast).
    pub rids: Vec<Rid>,
}

/// A media line that started carrying media from the browser.
pub type NewLine = (Mid, MediaKind, Vec<Rid>);

/// A router offer waiting for the browser's answer.
pub struct Pending {
    /// str0m's half of the negotiation.
    pub offer: SdpPendingOffer,
}

/// One participant.
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Its room.
    pub room: RoomId,
    /// Its participant.
    pub participant: ParticipantId,
    /// The WebRTC stack.
    pub rtc: Rtc,
    /// Local ICE ufrag (routes the first STUN packet here).
    pub ufrag: String,
    /// Remote addresses seen for this session.
    pub addrs: Vec<SocketAddr>,
    /// When the session was created.
    pub created: Instant,
    /// ICE + DTLS up at least once.
    pub connected: bool,
    /// Since when ICE is disconnected.
    pub disconnected_since: Option<Instant>,
    /// The router's unanswered offer.
    pub pending: Option<Pending>,
    /// Published tracks by media line.
    pub published: HashMap<Mid, PubTrack>,
    /// Incoming SSRC → (track, layer), resolved once per SSRC.
    pub ssrc_map: HashMap<Ssrc, (TrackId, u8)>,
    /// Outgoing streams by track.
    pub outs: HashMap<TrackId, OutStream>,
    /// Outgoing media line → track.
    pub out_mids: HashMap<Mid, TrackId>,
    /// str0m's next timeout.
    pub next_timeout: Instant,
    /// The latest egress bandwidth estimate (bits per second), if any.
    pub estimate: Option<u64>,
    /// Packets were written since the last drain.
    pub dirty: bool,
}

impl Session {
    /// Wraps a freshly built `Rtc`.
    pub fn new(
        id: SessionId,
        room: RoomId,
        participant: ParticipantId,
        rtc: Rtc,
        ufrag: String,
        now: Instant,
    ) -> Self {
        Self {
            id,
            room,
            participant,
            rtc,
            ufrag,
            addrs: Vec::new(),
            created: now,
            connected: false,
            disconnected_since: None,
            pending: None,
            published: HashMap::new(),
            ssrc_map: HashMap::new(),
            outs: HashMap::new(),
            out_mids: HashMap::new(),
            next_timeout: now,
            // str0m starts from this estimate; its first report follows.
            estimate: Some(super::rtc::INITIAL_ESTIMATE_KBPS * 1000),
            dirty: false,
        }
    }

    /// When the worker must call in next (str0m's timeout or our own ICE deadlines).
    pub fn deadline(&self) -> Instant {
        let mut t = self.next_timeout;
        if !self.connected {
            t = t.min(self.created + CONNECT_TIMEOUT);
        }
        if let Some(since) = self.disconnected_since {
            t = t.min(since + DISCONNECT_GRACE);
        }
        t
    }

    /// Whether our own ICE deadlines say the session is dead.
    pub fn timed_out(&self, now: Instant) -> bool {
        (!self.connected && now >= self.created + CONNECT_TIMEOUT)
            || self
                .disconnected_since
                .is_some_and(|s| now >= s + DISCONNECT_GRACE)
            || !self.rtc.is_alive()
    }

    /// Drains str0m's outputs (the drive-loop contract): transmits to `tx`,
    /// events to `events`. str0m often answers a mutation (an accepted
    /// offer, a written packet) with a timeout of `now`; the output then
    /// comes from `Input::Timeout(now)`, so that is fed at once (bounded).
    pub fn drain(
        &mut self,
        now: Instant,
        tx: &mut Vec<Datagram>,
        events: &mut Vec<Event>,
    ) -> Result<(), str0m::RtcError> {
        let mut rounds = 0;
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    if t <= now && rounds < MAX_TIMEOUT_ROUNDS {
                        rounds += 1;
                        self.rtc.handle_input(Input::Timeout(now))?;
                        continue;
                    }
                    self.next_timeout = t;
                    return Ok(());
                }
                Output::Transmit(t) => tx.push(Datagram {
                    dst: t.destination,
                    data: t.contents.into(),
                }),
                Output::Event(e) => events.push(e),
            }
        }
    }

    /// Accepts a browser offer; returns the answer SDP and the audio/video
    /// media lines of the offer (str0m reports `MediaAdded` only once DTLS
    /// is up, too late for the API's answer, so the lines are read here).
    pub fn accept_offer(&mut self, offer: &str) -> Result<(String, Vec<Mid>), MediaError> {
        let mids = media_mids(offer);
        if self.pending.is_some() {
            return Err(MediaError::OutOfOrder(
                "the router's own offer is pending: answer it with SetAnswer first",
            ));
        }
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| MediaError::BadSdp(e.to_string()))?;
        Ok((answer.to_sdp_string(), mids))
    }

    /// Compares the negotiated media lines with what is published: returns
    /// the lines that now carry media from the browser but were not
    /// published yet, and the published tracks whose line stopped.
    pub fn publication_changes(&self, mids: &[Mid]) -> (Vec<NewLine>, Vec<Mid>) {
        let mut added = Vec::new();
        for mid in mids {
            let Some(m) = self.rtc.media(*mid) else {
                continue;
            };
            if m.direction().is_receiving() && !m.disabled() && !self.published.contains_key(mid) {
                let rids = match m.rids_rx() {
                    Rids::Specific(r) => r.clone(),
                    _ => Vec::new(),
                };
                added.push((*mid, m.kind(), rids));
            }
        }
        let removed = self
            .published
            .keys()
            .filter(|mid| {
                self.rtc
                    .media(**mid)
                    .is_none_or(|m| !m.direction().is_receiving() || m.disabled())
            })
            .copied()
            .collect();
        (added, removed)
    }

    /// Adds send-only media lines for `tracks` and makes the router's offer.
    pub fn offer_subscriptions(
        &mut self,
        tracks: &[Arc<TrackInfo>],
        stream_start: impl FnMut() -> (u16, u32),
    ) -> Result<(String, Vec<(TrackId, Mid)>), MediaError> {
        if self.pending.is_some() {
            return Err(MediaError::OutOfOrder(
                "a router offer is already pending: answer it with SetAnswer first",
            ));
        }
        let mut stream_start = stream_start;
        let mut api = self.rtc.sdp_api();
        let mut mids = Vec::new();
        for t in tracks {
            if self.outs.contains_key(&t.id) {
                continue;
            }
            // The stream id groups a publisher's tracks (lip sync) without
            // revealing the integrator's participant id to other browsers.
            let mid = api.add_media(
                t.kind,
                Direction::SendOnly,
                Some(t.session.to_string()),
                Some(t.id.to_string()),
                None,
            );
            mids.push((t.clone(), mid));
        }
        let Some((offer, pending)) = api.apply() else {
            return Err(MediaError::OutOfOrder(
                "already subscribed to every track asked for",
            ));
        };
        self.pending = Some(Pending { offer: pending });
        let mut out = Vec::with_capacity(mids.len());
        for (t, mid) in mids {
            let (seq, ts) = stream_start();
            self.outs.insert(t.id, OutStream::new(&t, mid, seq, ts));
            self.out_mids.insert(mid, t.id);
            out.push((t.id, mid));
        }
        Ok((offer.to_sdp_string(), out))
    }

    /// Stops outgoing streams (their lines become inactive) and makes the router's offer.
    pub fn offer_unsubscribe(&mut self, tracks: &[TrackId]) -> Result<String, MediaError> {
        if self.pending.is_some() {
            return Err(MediaError::OutOfOrder(
                "a router offer is already pending: answer it with SetAnswer first",
            ));
        }
        let mut api = self.rtc.sdp_api();
        for t in tracks {
            if let Some(o) = self.outs.get(t) {
                api.set_direction(o.mid, Direction::Inactive);
            }
        }
        let Some((offer, pending)) = api.apply() else {
            return Err(MediaError::OutOfOrder("none of those tracks is subscribed"));
        };
        for t in tracks {
            if let Some(o) = self.outs.remove(t) {
                self.out_mids.remove(&o.mid);
            }
        }
        self.pending = Some(Pending { offer: pending });
        Ok(offer.to_sdp_string())
    }

    /// Applies the browser's answer to the pending router offer; returns the
    /// tracks whose outgoing streams just became active.
    pub fn accept_answer(&mut self, answer: &str) -> Result<Vec<TrackId>, MediaError> {
        let Some(pending) = self.pending.take() else {
            return Err(MediaError::OutOfOrder(
                "no router offer is pending: SetAnswer follows Subscribe or Unsubscribe",
            ));
        };
        let answer = match SdpAnswer::from_sdp_string(answer) {
            Ok(a) => a,
            Err(e) => {
                // Keep the offer pending so a corrected answer can follow.
                self.pending = Some(pending);
                return Err(MediaError::BadSdp(e.to_string()));
            }
        };
        self.rtc
            .sdp_api()
            .accept_answer(pending.offer, answer)
            .map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let mut activated = Vec::new();
        for (id, o) in self.outs.iter_mut() {
            if !o.active {
                o.active = true;
                activated.push(*id);
            }
        }
        Ok(activated)
    }
}

/// The `a=mid` of every audio and video section of an SDP, in order.
fn media_mids(sdp: &str) -> Vec<Mid> {
    let mut out = Vec::new();
    let mut in_media = false;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            in_media = m.starts_with("audio ") || m.starts_with("video ");
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            if in_media && !mid.is_empty() && mid.len() <= 32 {
                out.push(Mid::from(mid));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::media_mids;

    #[test]
    fn finds_media_mids_only() {
        let sdp = "v=0\r\nm=audio 9 UDP 111\r\na=mid:0\r\nm=application 9 x\r\na=mid:dc\r\nm=video 9 UDP 96\r\na=mid:v1\r\n";
        let mids: Vec<String> = media_mids(sdp).iter().map(|m| m.to_string()).collect();
        assert_eq!(mids, ["0", "v1"]);
    }
}
