//! Sending: the media sources of active tracks, writing what is due, the
//! per-layer send state and the data channel.

use std::time::Instant;

use rand::Rng;
use str0m::media::{MediaKind, Mid, Rid};
use str0m::rtp::{ExtensionValues, RtpWrite};

use super::Client;
use crate::media::{source_tag, H264Source, MediaSource, OpusSource, Vp8Source};
use crate::publish::{LayerSender, LayerStats, Source, TrackStats};
use crate::{TrackId, TrackState, VideoCodec};

impl Client {
    /// Makes every packet of audio `track` carry `level` (-dBov, 0 loudest,
    /// -127 silence) in its audio-level extension, as a scripted speaker;
    /// `None` goes back to the source's own slow random walk.
    pub fn set_audio_level(&mut self, track: TrackId, level: Option<i8>) {
        if let Some(t) = self.tracks.get_mut(track.0) {
            t.level_override = level;
        }
    }

    /// Creates the media sources of active tracks that have none yet (first due `now`).
    pub(super) fn start_senders(&mut self, now: Instant) {
        let epoch = self.config.epoch;
        for (ti, t) in self.tracks.iter_mut().enumerate() {
            if t.state != TrackState::Active || !t.senders.is_empty() {
                continue;
            }
            let n = if t.kind == MediaKind::Audio {
                1
            } else {
                t.layers.len()
            };
            for li in 0..n {
                let tag = source_tag(self.config.client_tag, ti as u8, li as u8);
                let seed = self.rng.random();
                let source = match (t.kind, self.config.video_codec) {
                    (MediaKind::Audio, _) => Source::Opus(OpusSource::new(tag, seed, epoch, now)),
                    (_, VideoCodec::Vp8) => {
                        Source::Vp8(Vp8Source::new(tag, seed, t.layers[li], epoch, now))
                    }
                    (_, VideoCodec::H264) => {
                        Source::H264(H264Source::new(tag, seed, t.layers[li], epoch, now))
                    }
                };
                let mut source = source;
                // Requests that came before the source existed: the first frame is a
                // keyframe anyway.
                if t.keyframe_requests[li] > 0 {
                    source.request_keyframe();
                }
                t.senders.push(LayerSender {
                    source,
                    seq: u64::from(self.rng.random_range(0..30_000u32)),
                    ssrc: None,
                    packets_sent: 0,
                    keyframe_honoured: None,
                    keyframe_requests_ignored: 0,
                    bytes_sent: 0,
                    no_stream: 0,
                    paused: false,
                });
            }
        }
    }

    /// Writes every media packet due by `now` (no-op until connected).
    pub fn tick(&mut self, now: Instant) {
        // Time never goes backwards for str0m.
        let now = self.now.max(now);
        self.now = now;
        if !self.connected || self.closed {
            return;
        }
        self.start_senders(now);
        for ti in 0..self.tracks.len() {
            let Some(mid) = self.tracks[ti].mid else {
                continue;
            };
            let Some(pt) = self.tracks[ti].pt else {
                continue;
            };
            let video = self.tracks[ti].kind == MediaKind::Video;
            let level_override = self.tracks[ti].level_override;
            for li in 0..self.tracks[ti].senders.len() {
                let rid = self.tracks[ti].rid_of(li);
                loop {
                    let sender = &mut self.tracks[ti].senders[li];
                    let Some(pkt) = sender.source.poll(now) else {
                        break;
                    };
                    if sender.paused {
                        continue;
                    }
                    let mut api = self.rtc.direct_api();
                    let stream = match sender.ssrc {
                        Some(ssrc) => api.stream_tx(&ssrc),
                        // With rid None, str0m matches any rid of the mid: only use that
                        // lookup without simulcast.
                        None => api.stream_tx_by_mid(mid, rid),
                    };
                    let Some(stream) = stream else {
                        sender.no_stream += 1;
                        continue;
                    };
                    sender.ssrc = Some(stream.ssrc());
                    let audio_level = pkt.audio_level.map(|l| level_override.unwrap_or(l));
                    let exts = ExtensionValues {
                        audio_level,
                        voice_activity: audio_level.map(|_| true),
                        ..Default::default()
                    };
                    let len = pkt.payload.len() as u64;
                    stream.write_rtp(
                        RtpWrite::new(pt, sender.seq.into(), pkt.rtp_time, pkt.due, pkt.payload)
                            .marker(pkt.marker)
                            .nackable(video)
                            .ext_vals(exts),
                    );
                    sender.seq += 1;
                    sender.packets_sent += 1;
                    sender.bytes_sent += len;
                    self.drain(now);
                }
            }
        }
    }

    /// The mid of a local track, once offered.
    pub fn track_mid(&self, track: TrackId) -> Option<Mid> {
        self.tracks.get(track.0)?.mid
    }

    /// Counters of a local track.
    pub fn track_stats(&self, track: TrackId) -> Option<TrackStats> {
        let t = self.tracks.get(track.0)?;
        let layers = (0..t.keyframe_requests.len())
            .map(|li| {
                let s = t.senders.get(li);
                LayerStats {
                    rid: t.rid_of(li),
                    ssrc: s.and_then(|s| s.ssrc),
                    packets_sent: s.map_or(0, |s| s.packets_sent),
                    bytes_sent: s.map_or(0, |s| s.bytes_sent),
                    no_stream: s.map_or(0, |s| s.no_stream),
                    keyframe_requests_ignored: s.map_or(0, |s| s.keyframe_requests_ignored),
                    keyframe_requests: t.keyframe_requests[li],
                    source: s.map(|s| s.source.stats()).unwrap_or_default(),
                }
            })
            .collect();
        Some(TrackStats {
            kind: t.kind,
            mid: t.mid,
            state: t.state,
            layers,
        })
    }

    /// Stops or resumes sending one layer of a video track (`rid` as offered;
    /// any rid for a track without simulcast), as a browser does when its
    /// uplink is short. A resumed layer starts with a keyframe. Returns
    /// whether the layer exists (and the client is sending).
    pub fn set_layer_paused(&mut self, track: TrackId, rid: Option<&str>, paused: bool) -> bool {
        let Some(t) = self.tracks.get_mut(track.0) else {
            return false;
        };
        let layer = t.layer_of(rid.map(Rid::from));
        let Some(sender) = t.senders.get_mut(layer) else {
            return false;
        };
        if sender.paused && !paused {
            sender.source.request_keyframe();
        }
        sender.paused = paused;
        true
    }

    /// Keyframe requests received for a local track's layer (`rid` `None`: layer 0).
    pub fn keyframe_requests(&self, track: TrackId, rid: Option<&str>) -> u64 {
        let Some(t) = self.tracks.get(track.0) else {
            return 0;
        };
        let layer = t.layer_of(rid.map(Rid::from));
        t.keyframe_requests.get(layer).copied().unwrap_or(0)
    }

    /// Sends a message on the data channel. False if it is not open or its buffer is full.
    pub fn send_data(&mut self, binary: bool, data: &[u8]) -> bool {
        let Some(id) = self.channel.filter(|_| self.channel_open) else {
            return false;
        };
        let res = match self.rtc.channel(id) {
            Some(mut ch) => ch.write(binary, data),
            None => Ok(false),
        };
        let now = self.now;
        self.drain(now);
        match res {
            Ok(ok) => ok,
            Err(e) => {
                self.record_error(e);
                false
            }
        }
    }
}
