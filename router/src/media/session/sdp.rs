//! Offer/answer of a session: the browser's offers, the router's offers
//! for subscriptions, and the browser's answers to those.

use super::Session;
use crate::media::command::MediaError;
use crate::media::layer::MAX_LAYERS;
use crate::media::outstream::OutStream;
use crate::media::types::TrackInfo;
use kaskade_protocol::TrackId;
use std::sync::Arc;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid, Rid, Rids};

/// A media line that started carrying media from the browser.
pub type NewLine = (Mid, MediaKind, Vec<Rid>);

/// A router offer waiting for the browser's answer.
pub(super) struct Pending {
    /// str0m's half of the negotiation.
    pub offer: SdpPendingOffer,
    /// The mids of the offer's m-lines, in order: an answer lists the same.
    mids: Vec<Mid>,
}

impl Pending {
    fn new(offer: &SdpOffer, pending: SdpPendingOffer) -> Self {
        // The router's own offer: every m-line has its mid.
        let mids = offer.media_lines.iter().map(|m| m.mid()).collect();
        Self {
            offer: pending,
            mids,
        }
    }

    /// Checks an answer for what str0m would refuse only after consuming
    /// the pending offer (or, for a missing fingerprint, after closing the
    /// connection), so that a refused answer leaves the offer pending and a
    /// corrected one can follow.
    fn check(&self, answer: &SdpAnswer) -> Result<(), &'static str> {
        if answer.session.ice_lite() {
            return Err("the answer is ICE-lite like the router (is it the router's own offer?)");
        }
        if answer
            .media_lines
            .iter()
            .any(|m| m.check_consistent().is_some())
        {
            return Err("an m-line of the answer is inconsistent (a missing or repeated a=mid?)");
        }
        let mids = answer.media_lines.iter().map(|m| m.mid());
        if !mids.eq(self.mids.iter().copied()) {
            return Err("the answer's m-lines are not the offer's (same mids in the same order)");
        }
        let creds = answer.session.ice_creds().is_some()
            || answer.media_lines.iter().any(|m| m.ice_creds().is_some());
        if !creds {
            return Err("the answer has no a=ice-ufrag and a=ice-pwd");
        }
        let fingerprint = answer.session.fingerprint().is_some()
            || answer.media_lines.iter().any(|m| m.fingerprint().is_some());
        if !fingerprint {
            return Err("the answer has no a=fingerprint");
        }
        Ok(())
    }
}

/// A short reason for an SDP that str0m refused, without str0m's parser
/// positions: those are heap addresses (`PointerOffset(0x7f…)`), which
/// would reveal the process's memory layout. A parse error is located by
/// its line in `sdp` instead.
pub fn sdp_error(sdp: &str, e: &dyn std::fmt::Display) -> MediaError {
    let text = e.to_string();
    let reason = match text.find("PointerOffset(0x") {
        Some(at) => {
            let hex: String = text[at + "PointerOffset(0x".len()..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            let base = sdp.as_ptr() as usize;
            let line = usize::from_str_radix(&hex, 16)
                .ok()
                .and_then(|addr| addr.checked_sub(base))
                .filter(|off| *off <= sdp.len())
                .map(|off| {
                    sdp.as_bytes()[..off]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1
                });
            match line {
                Some(l) => format!("does not parse (line {l})"),
                None => "does not parse".to_string(),
            }
        }
        // str0m's other reasons are short fixed texts, some naming a mid.
        None => text.chars().take(160).collect(),
    };
    MediaError::BadSdp(reason)
}

impl Session {
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
        let parsed = SdpOffer::from_sdp_string(offer).map_err(|e| sdp_error(offer, &e))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(parsed)
            .map_err(|e| sdp_error(offer, &e))?;
        // The payload types are the browser's from now on.
        self.audio_pts = super::audio_pts(&self.rtc);
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
                // The control plane refuses offers with more layers; an
                // answer is cut to the same bound.
                let rids = match m.rids_rx() {
                    Rids::Specific(r) => r.iter().take(MAX_LAYERS).copied().collect(),
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
        self.pending = Some(Pending::new(&offer, pending));
        let mut out = Vec::with_capacity(mids.len());
        for (t, mid) in mids {
            let (seq, ts) = stream_start();
            self.outs.insert(t.id, OutStream::new(&t, mid, seq, ts));
            self.out_mids.insert(mid, t.id);
            out.push((t.id, mid));
        }
        Ok((offer.to_sdp_string(), out))
    }

    /// Sends `tracks` on the media lines of the accepted offer that the
    /// browser only receives on (WHEP: subscribe in the answer), in offer
    /// order, each on the first free line of its kind. The answer that
    /// negotiates them is already made, so the streams become active as
    /// soon as the session connects ([`Session::activate_awaiting`]); not
    /// before, or str0m would queue their packets until then (a viewer that
    /// never connects would hold up to [`super::CONNECT_TIMEOUT`] of media).
    /// Returns the tracks placed; a track with no free line of its kind is
    /// left out.
    pub fn attach_in_answer(
        &mut self,
        offered: &[Mid],
        tracks: &[Arc<TrackInfo>],
        stream_start: impl FnMut() -> (u16, u32),
    ) -> Vec<(TrackId, Mid)> {
        let mut stream_start = stream_start;
        let mut free: Vec<(Mid, MediaKind)> = offered
            .iter()
            .filter_map(|mid| {
                let m = self.rtc.media(*mid)?;
                let send_only = m.direction() == Direction::SendOnly && !m.disabled();
                (send_only && !self.out_mids.contains_key(mid)).then(|| (*mid, m.kind()))
            })
            .collect();
        let mut out = Vec::new();
        for t in tracks {
            if self.outs.contains_key(&t.id) {
                continue;
            }
            let Some(at) = free.iter().position(|(_, k)| *k == t.kind) else {
                continue;
            };
            let (mid, _) = free.remove(at);
            let (seq, ts) = stream_start();
            self.outs.insert(t.id, OutStream::new(t, mid, seq, ts));
            self.out_mids.insert(mid, t.id);
            self.awaiting_connect.push(t.id);
            out.push((t.id, mid));
        }
        out
    }

    /// Activates the streams attached in the answer, once connected; true
    /// if there were any.
    pub fn activate_awaiting(&mut self) -> bool {
        let mut any = false;
        for t in std::mem::take(&mut self.awaiting_connect) {
            if let Some(o) = self.outs.get_mut(&t) {
                o.active = true;
                any = true;
            }
        }
        any
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
        self.pending = Some(Pending::new(&offer, pending));
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
        let checked = SdpAnswer::from_sdp_string(answer)
            .map_err(|e| sdp_error(answer, &e))
            .and_then(|a| match pending.check(&a) {
                Ok(()) => Ok(a),
                Err(reason) => Err(MediaError::BadSdp(reason.to_string())),
            });
        let parsed = match checked {
            Ok(a) => a,
            Err(e) => {
                // Keep the offer pending so a corrected answer can follow.
                self.pending = Some(pending);
                return Err(e);
            }
        };
        // What str0m refuses past these checks consumes the offer (str0m
        // takes it by value): the new streams then stay inactive.
        self.rtc
            .sdp_api()
            .accept_answer(pending.offer, parsed)
            .map_err(|e| sdp_error(answer, &e))?;
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
