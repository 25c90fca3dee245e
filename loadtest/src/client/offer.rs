//! Negotiation: queuing tracks, data channels and receivers, creating the
//! offer, accepting the answer (or the router's offer), activating what was
//! accepted.

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Rid};
use str0m::media::{Simulcast, SimulcastLayer};

use super::{Client, ClientError, Queued};
use crate::media::VideoLayer;
use crate::publish::LocalTrack;
use crate::{TrackId, TrackState, VideoCodec};

impl Client {
    /// Queues a sendonly Opus track for the next offer.
    pub fn add_audio(&mut self) -> TrackId {
        self.queue_track(LocalTrack::new(MediaKind::Audio, vec![], vec![]))
    }

    /// Queues a sendonly video track for the next offer, with `a=simulcast` over `rids`
    /// (lowest first) when non-empty. Layers get [`VideoLayer::defaults`].
    pub fn add_video(&mut self, rids: &[&str]) -> TrackId {
        let layers = VideoLayer::defaults(rids.len());
        let layers = layers[layers.len().saturating_sub(rids.len().max(1))..].to_vec();
        self.add_video_layers(rids, &layers)
    }

    /// Like [`Self::add_video`] with explicit layer settings (one per rid, or one).
    pub fn add_video_layers(&mut self, rids: &[&str], layers: &[VideoLayer]) -> TrackId {
        let n = rids.len().max(1);
        let mut layers: Vec<VideoLayer> = layers.iter().copied().take(n).collect();
        while layers.len() < n {
            layers.push(layers.last().copied().unwrap_or(VideoLayer::MEDIUM));
        }
        if self.config.video_codec == VideoCodec::H264 {
            for l in &mut layers {
                l.temporal_layers = 1;
            }
        }
        let rids = rids.iter().map(|r| Rid::from(*r)).collect();
        self.queue_track(LocalTrack::new(MediaKind::Video, rids, layers))
    }

    /// Queues a data channel for the next offer.
    pub fn add_data_channel(&mut self, label: &str) {
        self.queued.push(Queued::Channel(label.to_string()));
    }

    /// Queues a receive-only media line for the next offer, as
    /// `pc.addTransceiver(kind, {direction: "recvonly"})` does: a subscriber's
    /// first offer can carry one instead of a data channel.
    pub fn add_receiver(&mut self, kind: MediaKind) {
        self.queued.push(Queued::Receiver(kind));
    }

    fn queue_track(&mut self, track: LocalTrack) -> TrackId {
        let id = TrackId(self.tracks.len());
        self.tracks.push(track);
        self.queued.push(Queued::Track(id));
        id
    }

    /// Creates an offer with everything queued, keeping the pending offer for
    /// [`Self::accept_answer`]. `None` if nothing is queued, an offer is already pending,
    /// or the changes needed no negotiation (a second data channel).
    pub fn create_offer(&mut self) -> Option<String> {
        if self.pending.is_some() || self.queued.is_empty() {
            return None;
        }
        let queued = std::mem::take(&mut self.queued);
        let stream_id = format!("kaskade-{}", self.config.client_tag);
        let mut api = self.rtc.sdp_api();
        for q in queued {
            match q {
                Queued::Track(id) => {
                    let t = &mut self.tracks[id.0];
                    let simulcast = (!t.rids.is_empty()).then(|| {
                        let mut s = Simulcast::new();
                        for rid in &t.rids {
                            s.add_send_layer(SimulcastLayer::new(rid));
                        }
                        s
                    });
                    let track_id = format!("{stream_id}-{}", id.0);
                    let mid = api.add_media(
                        t.kind,
                        Direction::SendOnly,
                        Some(stream_id.clone()),
                        Some(track_id),
                        simulcast,
                    );
                    t.mid = Some(mid);
                    t.state = TrackState::Offered;
                }
                Queued::Channel(label) => {
                    self.channel.get_or_insert(api.add_channel(label));
                }
                Queued::Receiver(kind) => {
                    api.add_media(kind, Direction::RecvOnly, None, None, None);
                }
            }
        }
        let offer = api.apply();
        let now = self.now;
        self.drain(now);
        let (offer, pending) = offer?;
        self.pending = Some(pending);
        Some(offer.to_sdp_string())
    }

    /// Applies the remote answer to the pending offer. Accepted tracks start sending
    /// once connected; rejected ones are marked [`TrackState::Rejected`].
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), ClientError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| ClientError::Sdp(e.to_string()))?;
        let pending = self.pending.take().ok_or(ClientError::NoPendingOffer)?;
        let res = self.rtc.sdp_api().accept_answer(pending, answer);
        let now = self.now;
        self.drain(now);
        if let Err(e) = res {
            for t in self
                .tracks
                .iter_mut()
                .filter(|t| t.state == TrackState::Offered)
            {
                t.state = TrackState::Rejected;
            }
            return Err(e.into());
        }
        self.activate_tracks();
        if self.connected {
            self.start_senders(now);
        }
        Ok(())
    }

    /// Answers a remote offer (e.g. a router offering subscriptions). A pending local
    /// offer is invalidated by str0m: its tracks are queued again for the next offer.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, ClientError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| ClientError::Sdp(e.to_string()))?;
        if self.pending.take().is_some() {
            for (i, t) in self.tracks.iter_mut().enumerate() {
                if t.state == TrackState::Offered {
                    t.state = TrackState::Queued;
                    t.mid = None;
                    self.queued.push(Queued::Track(TrackId(i)));
                }
            }
        }
        let res = self.rtc.sdp_api().accept_offer(offer);
        let now = self.now;
        self.drain(now);
        let answer = res?;
        Ok(answer.to_sdp_string())
    }

    fn activate_tracks(&mut self) {
        let video_codec = match self.config.video_codec {
            VideoCodec::Vp8 => Codec::Vp8,
            VideoCodec::H264 => Codec::H264,
        };
        for t in self
            .tracks
            .iter_mut()
            .filter(|t| t.state == TrackState::Offered)
        {
            let Some(mid) = t.mid else {
                t.state = TrackState::Rejected;
                continue;
            };
            let codec = if t.kind == MediaKind::Audio {
                Codec::Opus
            } else {
                video_codec
            };
            let pt = self.rtc.media(mid).and_then(|m| {
                let remote = m.remote_pts();
                self.rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|p| p.spec().codec == codec && remote.contains(&p.pt()))
                    .map(|p| p.pt())
            });
            match pt {
                Some(pt) => {
                    t.pt = Some(pt);
                    t.state = TrackState::Active;
                }
                None => t.state = TrackState::Rejected,
            }
        }
    }
}
