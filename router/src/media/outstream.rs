//! One subscriber's outgoing stream of one track: layer switching on
//! keyframes, temporal-layer filtering, header rewriting (sequence numbers,
//! timestamps, VP8 picture ids) and the write into str0m.

use super::layer::{Layer, LayerMask};
use super::rewrite::{SeqRewriter, TsRewriter};
use super::select::{Preference, Reason, Selector};
use super::types::{MediaPacket, TrackInfo, WorkerId};
use super::vp8::Vp8Rewriter;
use kaskade_protocol::TrackId;
use std::time::{Duration, Instant};
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::Rtc;

/// How often a subscriber still waiting for a keyframe asks again.
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(350);

/// What became of a packet offered to an outgoing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Written to the subscriber.
    Sent,
    /// Not for this stream (other layer, not negotiated yet, stale, filtered).
    Skipped,
    /// Dropped while waiting for a keyframe of the target layer; ask for one.
    NeedKeyframe,
    /// Dropped while waiting for a keyframe (already asked recently).
    Waiting,
}

/// A switch of the forwarded layer, to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// Layer forwarded before.
    pub old: Option<Layer>,
    /// Layer forwarded now.
    pub new: Option<Layer>,
    /// Why.
    pub reason: Reason,
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
    /// Number of layers the publisher offered.
    pub layers: usize,
    /// The browser answered the offer that added it.
    pub active: bool,
    /// The publisher stopped publishing it.
    pub gone: bool,
    /// The subscriber's wishes.
    pub pref: Preference,
    /// Layer selection state.
    pub selector: Selector,
    /// The layer forwarded now.
    pub current: Option<Layer>,
    /// Why the target last changed (reported when the switch happens).
    pub target_reason: Reason,
    /// Last time a keyframe was asked for on this stream's behalf.
    pub last_keyframe_request: Option<Instant>,
    /// Switches not yet reported.
    pub switches: Vec<Switch>,
    /// Packets were lost upstream (shed on the bus): forward nothing until a
    /// keyframe of the target layer.
    resync: bool,
    /// Highest temporal layer forwarded now (changes at base-layer frames).
    temporal_cap: u8,
    seq: SeqRewriter,
    ts: TsRewriter,
    ts_start: u32,
    vp8: Vp8Rewriter,
    /// Publisher PT → subscriber PT, cached.
    pt_map: Option<(Pt, Pt)>,
    /// The str0m stream was told to bypass the pacer.
    unpaced: bool,
}

impl OutStream {
    /// A new (not yet negotiated) outgoing stream.
    pub fn new(track: &TrackInfo, mid: Mid, seq_start: u16, ts_start: u32) -> Self {
        let mut selector = Selector::default();
        if track.kind == MediaKind::Audio {
            selector.target = Some(Layer::BASE);
        }
        Self {
            track: track.id,
            kind: track.kind,
            mid,
            publisher_worker: track.worker,
            layers: track.rids.len().max(1),
            active: false,
            gone: false,
            pref: Preference::default(),
            selector,
            current: None,
            target_reason: Reason::Preference,
            last_keyframe_request: None,
            switches: Vec::new(),
            resync: false,
            temporal_cap: u8::MAX,
            seq: SeqRewriter::new(seq_start),
            ts: TsRewriter::new(90_000, ts_start),
            ts_start,
            vp8: Vp8Rewriter::default(),
            pt_map: None,
            unpaced: false,
        }
    }

    /// The layer wanted now.
    pub fn target(&self) -> Option<Layer> {
        self.selector.target
    }

    /// Layers this stream needs from the publisher.
    pub fn demand_mask(&self) -> LayerMask {
        if !self.active || self.gone {
            return LayerMask::NONE;
        }
        LayerMask::of_opt(self.current) | LayerMask::of_opt(self.target())
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

    /// Applies a new target from the selector. Stopping takes effect at
    /// once; a new layer waits for its keyframe.
    pub fn retarget(&mut self, reason: Reason) {
        self.target_reason = reason;
        if self.target().is_none() && self.current.is_some() {
            self.switches.push(Switch {
                old: self.current,
                new: None,
                reason,
            });
            self.current = None;
        }
    }

    /// Packets of the forwarded layer were lost before reaching this
    /// worker: hold video until the next keyframe of the target layer, so
    /// the subscriber never gets a picture that references a lost one.
    pub fn resync(&mut self) {
        if self.kind == MediaKind::Video && self.current.is_some() {
            self.resync = true;
        }
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
        if !self.active || self.gone {
            return Forwarded::Skipped;
        }
        let target = self.target();
        let layer = pkt.layer();
        if self.resync {
            if target != Some(layer) {
                return Forwarded::Skipped;
            }
            if !pkt.keyframe {
                return if self.keyframe_request_due(now) {
                    Forwarded::NeedKeyframe
                } else {
                    Forwarded::Waiting
                };
            }
            self.resync = false;
            self.switch_to(pkt);
        } else if target == Some(layer) && self.current != target {
            // Switch to the target layer, on a keyframe (audio: at once).
            if self.kind == MediaKind::Video && !pkt.keyframe {
                return if self.keyframe_request_due(now) {
                    Forwarded::NeedKeyframe
                } else {
                    Forwarded::Waiting
                };
            }
            self.switch_to(pkt);
        } else if self.current != Some(layer) {
            return Forwarded::Skipped;
        }
        let vp8 = pkt.vp8.as_ref();
        if let Some((info, _)) = vp8 {
            if info.frame_start {
                // A new temporal cap applies from a base-layer frame up, or at once down.
                let want = self.pref.max_temporal;
                if want < self.temporal_cap || info.tid.unwrap_or(0) == 0 {
                    self.temporal_cap = want;
                }
            }
            if info.tid.unwrap_or(0) > self.temporal_cap {
                self.seq.drop_packet(pkt.seq);
                self.vp8.drop_picture(info);
                return Forwarded::Skipped;
            }
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
        let patch = vp8.and_then(|(info, desc)| self.vp8.patch(info, desc));
        let mut api = rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(self.mid, None) else {
            return Forwarded::Skipped;
        };
        if !self.unpaced {
            // Forwarded media arrives already paced by the publisher's
            // browser; pacing it again at 1.1 × the estimate only queues
            // every keyframe burst (p99 latency +100 ms). Pass it through,
            // like audio; padding for probing is still paced.
            tx.set_unpaced(true);
            self.unpaced = true;
        }
        let ext = ExtensionValues {
            audio_level: pkt.audio_level,
            voice_activity: pkt.voice_activity,
            ..Default::default()
        };
        let mut w = RtpWrite::new(pt, seq.into(), ts, pkt.arrival, pkt.payload.clone())
            .marker(pkt.marker)
            .ext_vals(ext)
            .nackable(self.kind == MediaKind::Video);
        if let Some(p) = patch {
            w = w.vp8_patch(p);
        }
        tx.write_rtp(w);
        Forwarded::Sent
    }

    fn switch_to(&mut self, pkt: &MediaPacket) {
        if !self.seq.started() {
            // The clock rate is known only now, from the first packet's codec.
            self.ts = TsRewriter::new(pkt.params.spec().clock_rate.get(), self.ts_start);
        }
        self.seq.switch_to(pkt.seq);
        self.ts.switch_to(pkt.rtp_time, pkt.arrival);
        if let Some((info, _)) = &pkt.vp8 {
            self.vp8.switch_to(info);
        }
        // A keyframe depends on nothing: every temporal layer may follow.
        self.temporal_cap = self.pref.max_temporal;
        let layer = pkt.layer();
        if self.kind == MediaKind::Video && self.current != Some(layer) {
            self.switches.push(Switch {
                old: self.current,
                new: Some(layer),
                reason: self.target_reason,
            });
        }
        self.current = Some(layer);
    }
}
