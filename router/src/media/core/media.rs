//! The packet walk through a worker: a publisher's packet in (or one
//! ingested from a link), its hand-out to the other workers and links, its
//! writes to this worker's subscribers, and keyframe requests back to the
//! publisher.

use super::keyframes::Verdict;
use super::sessions::SessionKey;
use super::{guarded, WorkerCore};
use crate::media::bus::BusMsg;
use crate::media::command::WorkerEvent;
use crate::media::layer::Layer;
use crate::media::outstream::Forwarded;
use crate::media::types::{MediaPacket, WorkerId};
use kaskade_protocol::TrackId;
use std::sync::Arc;
use std::time::Instant;
use str0m::format::Codec;
use str0m::media::MediaKind;
use str0m::rtp::RtpPacket;

/// H.264 NAL unit type of a sequence parameter set.
const H264_NALU_SPS: u8 = 7;

impl WorkerCore {
    /// An RTP packet from a publishing session, decrypted by str0m.
    pub(super) fn on_rtp(&mut self, now: Instant, key: SessionKey, p: RtpPacket) {
        self.stats.rtp_received.inc();
        let Some(sess) = self.sessions.get_mut(key) else {
            return;
        };
        let Some((track, layer)) = sess.resolve_ssrc(p.header.ssrc) else {
            return;
        };
        let Some(params) = sess.payload_params(p.header.payload_type) else {
            return;
        };
        let Some(kind) = self.fanout.published(track).map(|t| t.kind) else {
            return;
        };
        let codec = params.spec().codec;
        let vp8 = if codec == Codec::Vp8 {
            crate::media::vp8::parse(&p.payload)
                .zip(str0m::rtp::Vp8Descriptor::parse(&p.payload).ok())
        } else {
            None
        };
        let keyframe = match codec {
            Codec::Vp8 => str0m::format::detect_vp8_keyframe(&p.payload),
            // Chrome sends SPS/PPS (STAP-A) just before the IDR: a keyframe
            // starts there, or the decoder lacks its parameter sets.
            Codec::H264 => {
                str0m::format::detect_h264_nalu(&p.payload, H264_NALU_SPS)
                    || str0m::format::detect_h264_keyframe(&p.payload)
            }
            Codec::Vp9 => str0m::format::detect_vp9_keyframe(&p.payload),
            Codec::Av1 => str0m::format::detect_av1_keyframe(&p.payload),
            _ => false,
        };
        let resolution = vp8.as_ref().and_then(|(i, _)| i.resolution);
        self.exchange
            .on_packet(now, track, layer, p.payload.len(), resolution);
        if let Some(level) = p.header.ext_vals.audio_level {
            self.speakers.on_packet(now, track, level);
        }
        let pkt = Arc::new(MediaPacket {
            track,
            kind,
            layer: layer.get(),
            params,
            seq: *p.seq_no,
            rtp_time: p.header.timestamp,
            marker: p.header.marker,
            keyframe,
            resync: false,
            audio_level: p.header.ext_vals.audio_level,
            voice_activity: p.header.ext_vals.voice_activity,
            arrival: p.timestamp,
            vp8,
            payload: p.payload,
        });
        self.fan_out(pkt);
    }

    /// A packet of a remote track, from its link, for this home worker to
    /// fan out as if its publisher were local.
    pub(super) fn ingest(&mut self, now: Instant, pkt: Arc<MediaPacket>) {
        if self
            .fanout
            .published(pkt.track)
            .is_none_or(|p| p.session.is_some())
        {
            return;
        }
        self.exchange
            .on_packet(now, pkt.track, pkt.layer(), pkt.payload.len(), None);
        if let Some(level) = pkt.audio_level {
            // Relayed audio counts for active speakers like local audio.
            self.speakers.on_packet(now, pkt.track, level);
        }
        self.fan_out(pkt);
        self.flush(now);
    }

    /// Sends a published packet to every worker and link that needs its
    /// layer; this worker's own subscribers get it in the next flush.
    fn fan_out(&mut self, pkt: Arc<MediaPacket>) {
        let layer = pkt.layer();
        if pkt.keyframe {
            self.keyframes.on_keyframe(pkt.track, layer);
        }
        let out = &mut self.out;
        if self
            .fanout
            .dispatch(&pkt, layer, &mut out.bus, &mut out.links)
        {
            // Written in `flush`, after the driver handed the bus batches
            // over: the other workers start on their subscribers meanwhile.
            self.local_pending.push(pkt);
        }
    }

    /// Writes a packet to every subscriber of its track on this worker.
    pub(super) fn deliver_local(&mut self, now: Instant, pkt: &MediaPacket) {
        let mut failed = Vec::new();
        let mut switched = Vec::new();
        let mut need_kf = false;
        for key in self.fanout.subscribers(pkt.track) {
            let Some(sess) = self.sessions.get_mut(*key) else {
                continue;
            };
            if pkt.resync && pkt.kind == MediaKind::Video {
                // Relayed packets of this layer before this one are lost for good: a stream
                // forwarded it resumes at a keyframe (and asks for one just below).
                if let Some(o) = sess
                    .out_mut(pkt.track)
                    .filter(|o| o.current == Some(pkt.layer()))
                {
                    o.resync();
                    self.stats.relay_resync.inc();
                }
            }
            let Some((res, switches)) = guarded(|| sess.forward(pkt, now)) else {
                failed.push(*key);
                continue;
            };
            if let Some(list) = switches {
                switched.push((sess.id(), list));
            }
            match res {
                Forwarded::Sent => {
                    if pkt.kind == MediaKind::Video {
                        self.stats.fwd_video.inc();
                    } else {
                        self.stats.fwd_audio.inc();
                    }
                    // Drained (after a timeout round) in `flush`.
                    if sess.mark_dirty() {
                        self.dirty.push(*key);
                    }
                }
                Forwarded::NeedKeyframe => need_kf = true,
                Forwarded::Skipped | Forwarded::Waiting => {}
            }
        }
        for (sid, list) in switched {
            self.report_switches(sid, pkt.track, list);
        }
        for key in failed {
            self.fail_session(key);
        }
        if need_kf {
            self.stats.kf_join.inc();
            // The publisher's worker as the subscription recorded it (for a
            // remote track: its home worker); ids carry no worker.
            if let Some(w) = self.fanout.publisher_of(pkt.track) {
                self.route_keyframe_request(now, w, pkt.track, pkt.layer());
            }
        }
    }

    /// Sends a keyframe request to the worker of the track's publisher.
    pub(super) fn route_keyframe_request(
        &mut self,
        now: Instant,
        worker: WorkerId,
        track: TrackId,
        layer: Layer,
    ) {
        if worker == self.id {
            self.request_publisher_keyframe(now, track, layer);
        } else if let Some(b) = self.out.bus.get_mut(worker.index()) {
            b.push(BusMsg::KeyframeRequest { track, layer });
        }
    }

    /// Asks the publisher of a track published here for a keyframe of
    /// `layer`, through the throttle.
    pub(super) fn request_publisher_keyframe(
        &mut self,
        now: Instant,
        track: TrackId,
        layer: Layer,
    ) {
        match self.keyframes.request(now, track, layer) {
            Verdict::Unknown => return,
            Verdict::Coalesced => {
                self.stats.kf_coalesced.inc();
                return;
            }
            Verdict::Held => {
                self.stats.kf_throttled.inc();
                return;
            }
            Verdict::Send => self.stats.kf_sent.inc(),
        }
        let Some(p) = self.fanout.published(track) else {
            return;
        };
        let Some(key) = p.session else {
            // A remote track: the origin router is asked over the link. The
            // request implies the layer is wanted: say so first, or the
            // origin answers with a keyframe it does not relay yet (the
            // demand would only follow at the next tick).
            if let Some(mask) = self.exchange.want_remote(track, layer) {
                self.out.events.push(WorkerEvent::RemoteDemand {
                    track,
                    mask: mask.bits(),
                });
            }
            self.out.events.push(WorkerEvent::RemoteKeyframe {
                track,
                layer: layer.get(),
            });
            return;
        };
        let (mid, rid) = (p.mid, p.rids.get(layer.index()).copied());
        if self.with_key(key, |s| s.request_keyframe(mid, rid)).is_ok() {
            self.drain_session(now, key);
        }
    }

    /// Sends the held keyframe requests whose interval is over.
    pub(super) fn send_pending_keyframe_requests(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.keyframes.take_due(now, &mut due);
        for (track, layer) in due {
            // Still within the interval: held again, with its due time.
            self.request_publisher_keyframe(now, track, layer);
        }
    }

    /// A track stops being published here.
    pub(super) fn unpublish(&mut self, track: TrackId) {
        self.fanout.unpublish(track);
        self.keyframes.remove(track);
        self.exchange.unpublish(track);
    }
}
