//! Receiving: str0m events, received RTP recorded per mid, keyframe requests
//! to the remote sender, and what was received.

use std::time::Instant;

use str0m::bwe::BweKind;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::rtp::Ssrc;
use str0m::Event;

use super::{Client, ClientEvent};
use crate::media::MediaSource;
use crate::recv::{MediaRecv, RecvPacket};

impl Client {
    pub(super) fn handle_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::RtpPacket(p) => self.on_rtp(p),
            Event::Connected => {
                self.connected = true;
                self.start_senders(now);
                self.push_event(ClientEvent::Connected);
            }
            Event::IceConnectionStateChange(s) => {
                self.ice_state = s;
                self.push_event(ClientEvent::IceState(s));
            }
            Event::MediaAdded(m) => {
                let rids: Vec<Rid> = m
                    .simulcast
                    .map(|s| {
                        let layers = if m.direction.is_receiving() {
                            s.recv
                        } else {
                            s.send
                        };
                        layers.into_iter().map(|l| l.rid).collect()
                    })
                    .unwrap_or_default();
                if m.direction.is_receiving() {
                    let r = self.recv_entry(m.mid);
                    r.kind = Some(m.kind);
                    r.direction = Some(m.direction);
                    r.rids = rids.clone();
                }
                self.push_event(ClientEvent::MediaAdded {
                    mid: m.mid,
                    kind: m.kind,
                    direction: m.direction,
                    rids,
                });
            }
            Event::KeyframeRequest(r) => {
                if let Some(t) = self.tracks.iter_mut().find(|t| t.mid == Some(r.mid)) {
                    let layer = t.layer_of(r.rid);
                    if let Some(c) = t.keyframe_requests.get_mut(layer) {
                        *c += 1;
                    }
                    if let Some(s) = t.senders.get_mut(layer) {
                        let min = self.config.keyframe_min_interval;
                        let too_soon = s
                            .keyframe_honoured
                            .zip(min)
                            .is_some_and(|(t, min)| now.saturating_duration_since(t) < min);
                        if too_soon {
                            s.keyframe_requests_ignored += 1;
                        } else {
                            s.keyframe_honoured = Some(now);
                            s.source.request_keyframe();
                        }
                    }
                }
                self.push_event(ClientEvent::KeyframeRequest {
                    mid: r.mid,
                    rid: r.rid,
                    kind: r.kind,
                });
            }
            Event::ChannelOpen(id, label) => {
                if self.channel.is_none_or(|c| c == id) {
                    self.channel = Some(id);
                    self.channel_open = true;
                }
                self.push_event(ClientEvent::ChannelOpen { id, label });
            }
            Event::ChannelData(d) => self.push_event(ClientEvent::ChannelData {
                id: d.id,
                binary: d.binary,
                data: d.data,
            }),
            Event::ChannelClose(id) => {
                if self.channel == Some(id) {
                    self.channel_open = false;
                }
                self.push_event(ClientEvent::ChannelClose(id));
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.egress_estimate = Some(estimate);
                self.push_event(ClientEvent::EgressBitrate(estimate));
            }
            Event::Closed => {
                self.closed = true;
                self.push_event(ClientEvent::Closed);
            }
            other => self.push_event(ClientEvent::Other(Box::new(other))),
        }
    }

    fn recv_entry(&mut self, mid: Mid) -> &mut MediaRecv {
        let i = match self.recv.iter().position(|r| r.mid == mid) {
            Some(i) => i,
            None => {
                let mut r = MediaRecv::new(mid);
                if self.config.packet_tap {
                    r.tap = Some(vec![]);
                }
                self.recv.push(r);
                self.recv.len() - 1
            }
        };
        &mut self.recv[i]
    }

    fn on_rtp(&mut self, p: str0m::rtp::RtpPacket) {
        let ssrc = p.header.ssrc;
        let (mid, rid) = match self.ssrc_map.get(&ssrc) {
            Some(v) => *v,
            None => {
                let found = self
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()))
                    .or_else(|| p.header.ext_vals.mid.map(|m| (m, p.header.ext_vals.rid)));
                let Some(v) = found else {
                    self.bad_datagrams += 1;
                    return;
                };
                self.ssrc_map.insert(ssrc, v);
                v
            }
        };
        let pt = p.header.payload_type;
        let codec = match self.pt_codec.get(&pt) {
            Some(c) => Some(*c),
            None => {
                let c = self
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|x| x.pt() == pt)
                    .map(|x| x.spec().codec);
                if let Some(c) = c {
                    self.pt_codec.insert(pt, c);
                }
                c
            }
        };
        let epoch = self.config.epoch;
        let limit = self.config.packet_log_limit;
        let entry = RecvPacket {
            at: p.timestamp,
            seq: *p.seq_no,
            rtp_timestamp: p.header.timestamp,
            marker: p.header.marker,
            ssrc: *ssrc,
            rid,
            payload_len: p.payload.len(),
            vp8: match codec {
                Some(Codec::Vp8) => crate::media::parse_vp8_descriptor(&p.payload),
                _ => None,
            },
            is_keyframe_start: false,
            probe: None,
        };
        let auto = self.config.auto_keyframe_request;
        let r = self.recv_entry(mid);
        if r.kind.is_none() {
            r.kind = codec.map(|c| c.kind());
        }
        if r.record(epoch, limit, auto, entry, codec, &p.payload) {
            // A mutation from inside the drain loop: the loop keeps polling afterwards.
            if let Some(s) = self.rtc.direct_api().stream_rx(&ssrc) {
                s.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
    }

    /// Sends a PLI for a receiving mid: for the given layer, or for every stream of the
    /// mid when `rid` is `None`. Returns false if str0m has no such receive stream yet.
    pub fn request_keyframe(&mut self, mid: Mid, rid: Option<Rid>) -> bool {
        let ssrcs: Vec<Ssrc> = self
            .ssrc_map
            .iter()
            .filter(|(_, (m, r))| *m == mid && (rid.is_none() || *r == rid))
            .map(|(s, _)| *s)
            .collect();
        let mut sent = 0;
        {
            let mut api = self.rtc.direct_api();
            if ssrcs.is_empty() {
                if let Some(s) = api.stream_rx_by_mid(mid, rid) {
                    s.request_keyframe(KeyframeRequestKind::Pli);
                    sent += 1;
                }
            }
            for ssrc in ssrcs {
                if let Some(s) = api.stream_rx(&ssrc) {
                    s.request_keyframe(KeyframeRequestKind::Pli);
                    sent += 1;
                }
            }
        }
        let now = self.now;
        self.drain(now);
        if sent > 0 {
            self.recv_entry(mid).keyframe_requests_sent += sent;
        }
        sent > 0
    }

    /// With [`ClientConfig::packet_tap`](super::ClientConfig::packet_tap): hands over every
    /// packet received since the last call, with its mid and the mid's kind (if known).
    pub fn drain_tap(&mut self, mut f: impl FnMut(Mid, Option<MediaKind>, &RecvPacket)) {
        for r in &mut self.recv {
            let (mid, kind) = (r.mid, r.kind);
            if let Some(tap) = r.tap.as_mut() {
                for p in tap.drain(..) {
                    f(mid, kind, &p);
                }
            }
        }
    }

    /// What was received per mid.
    pub fn received(&self) -> &[MediaRecv] {
        &self.recv
    }

    /// What was received on one mid.
    pub fn received_on(&self, mid: Mid) -> Option<&MediaRecv> {
        self.recv.iter().find(|r| r.mid == mid)
    }

    /// Mids announced by `Event::MediaAdded` that this client receives on, with kind.
    pub fn receiving_mids(&self) -> Vec<(Mid, MediaKind)> {
        self.recv
            .iter()
            .filter_map(|r| Some((r.mid, r.kind?)))
            .collect()
    }
}
