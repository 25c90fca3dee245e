//! One subscriber's outgoing stream of one track: keyframe gating, layer
//! choice, header rewriting and the write into str0m.

use super::rewrite::{SeqRewriter, TsRewriter};
use super::types::{MediaPacket, TrackInfo, WorkerId};
use kaskade_protocol::TrackId;
use std::time::{Duration, Instant};
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::Rtc;

/// How often a subscriber still waiting for its first keyframe asks again.
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(500);

/// What became of a packet offered to an outgoing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Written to the subscriber.
    Sent,
    /// Not for this stream (other layer, not negotiated yet, stale).
    Skipped,
    /// Dropped while waiting for a keyframe; ask the publisher for one.
    NeedKeyframe,
    /// Dropped while waiting for a keyframe (already asked recently).
    Waiting,
}

/// A subscriber's stream of one track.
#[derive(Debug)]
pub struct OutStream {
    /// The track.
    pub track: TrackId,
    /// Audio or video.
    pub kind: MediaKind,
    /// The subscriber's media line for it.
    pub mid: Mid,
    /// The worker of the publisher (where keyframe requests go).
    pub publisher_worker: WorkerId,
    /// The browser answered the offer that added it.
    pub active: bool,
    /// The publisher stopped publishing it.
    pub gone: bool,
    /// The simulcast layer forwarded.
    pub layer: u8,
    /// Waiting for a keyframe before forwarding (video).
    pub waiting_keyframe: bool,
    /// Last time a keyframe was asked for on this stream's behalf.
    pub last_keyframe_request: Option<Instant>,
    seq: SeqRewriter,
    ts: TsRewriter,
    ts_start: u32,
    /// Publisher PT → subscriber PT, cached.
    pt_map: Option<(Pt, Pt)>,
}

impl OutStream {
    /// A new (not yet negotiated) outgoing stream.
    pub fn new(track: &TrackInfo, mid: Mid, seq_start: u16, ts_start: u32) -> Self {
        Self {
            track: track.id,
            kind: track.kind,
            mid,
            publisher_worker: track.worker,
            active: false,
            gone: false,
            layer: 0,
            waiting_keyframe: track.kind == MediaKind::Video,
            last_keyframe_request: None,
            seq: SeqRewriter::new(seq_start),
            ts: TsRewriter::new(90_000, ts_start),
            ts_start,
            pt_map: None,
        }
    }

    /// Whether a keyframe request is due for this stream now.
    pub fn keyframe_request_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_keyframe_request
            .is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_RETRY);
        if due {
            self.last_keyframe_request = Some(now);
        }
        due
    }

    fn map_pt(&mut self, rtc: &Rtc, params: &PayloadParams) -> Option<Pt> {
        if let Some((from, to)) = self.pt_map {
            if from == params.pt() {
                return Some(to);
            }
        }
        let local = rtc.codec_config().match_params(*params)?.pt();
        self.pt_map = Some((params.pt(), local));
        Some(local)
    }

    /// Offers a packet of the track to this stream.
    pub fn forward(&mut self, rtc: &mut Rtc, pkt: &MediaPacket, now: Instant) -> Forwarded {
        if !self.active || pkt.layer != self.layer {
            return Forwarded::Skipped;
        }
        if !self.seq.started() || self.waiting_keyframe {
            if self.kind == MediaKind::Video && !pkt.keyframe {
                return if self.keyframe_request_due(now) {
                    Forwarded::NeedKeyframe
                } else {
                    Forwarded::Waiting
                };
            }
            if !self.seq.started() {
                // The clock rate is known only now, from the first packet's codec.
                self.ts = TsRewriter::new(pkt.params.spec().clock_rate.get(), self.ts_start);
            }
            self.seq.switch_to(pkt.seq);
            self.ts.switch_to(pkt.rtp_time, pkt.arrival);
            self.waiting_keyframe = false;
        }
        let Some(seq) = self.seq.rewrite(pkt.seq) else {
            return Forwarded::Skipped;
        };
        let Some(ts) = self.ts.rewrite(pkt.rtp_time, pkt.arrival) else {
            return Forwarded::Skipped;
        };
        let Some(pt) = self.map_pt(rtc, &pkt.params) else {
            return Forwarded::Skipped;
        };
        let mut api = rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(self.mid, None) else {
            return Forwarded::Skipped;
        };
        let ext = ExtensionValues {
            audio_level: pkt.audio_level,
            voice_activity: pkt.voice_activity,
            ..Default::default()
        };
        tx.write_rtp(
            RtpWrite::new(pt, seq.into(), ts, pkt.arrival, pkt.payload.clone())
                .marker(pkt.marker)
                .ext_vals(ext)
                .nackable(self.kind == MediaKind::Video),
        );
        Forwarded::Sent
    }
}
