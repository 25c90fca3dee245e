//! Admission: the shape of a request (SDP and track-id lists) and the
//! router's capacity limits, checked before anything is registered or sent
//! to a worker. Each refusal is counted (`refuse`).

use super::Control;
use crate::control::error::{parse_id, ApiError};
use crate::control::limits::{refuse, sdp_shape, Limit, MAX_SDP_BYTES, MAX_TRACKS_PER_CALL};
use crate::control::registry::Registry;
use crate::media::layer::MAX_LAYERS;
use crate::metrics::Metrics;
use kaskade_protocol::TrackId;

pub(super) fn check_sdp(m: &Metrics, field: &str, sdp: &str) -> Result<(), ApiError> {
    if sdp.is_empty() {
        return Err(ApiError::InvalidArgument(format!("{field} is empty")));
    }
    if sdp.len() > MAX_SDP_BYTES {
        return Err(refuse(
            m,
            Limit::FieldSize,
            ApiError::InvalidArgument(format!("{field} is larger than {MAX_SDP_BYTES} bytes")),
        ));
    }
    if let Some(pt) = crate::control::sdp_pt::payload_type_conflict(sdp) {
        return Err(ApiError::InvalidArgument(format!(
            "{field}: an a=rtpmap for payload type {pt} that its m= line does not list, \
             or that another a=rtpmap maps to another codec"
        )));
    }
    Ok(())
}

pub(super) fn parse_tracks(m: &Metrics, ids: &[String]) -> Result<Vec<TrackId>, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::InvalidArgument("track_ids is empty".into()));
    }
    if ids.len() > MAX_TRACKS_PER_CALL {
        return Err(refuse(
            m,
            Limit::FieldSize,
            ApiError::InvalidArgument(format!("more than {MAX_TRACKS_PER_CALL} track_ids")),
        ));
    }
    let mut out = Vec::with_capacity(ids.len());
    for s in ids {
        let t = parse_id("track_id", s, TrackId::parse)?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

impl Control {
    /// Checks an offer's shape against the per-offer limits; returns how
    /// many tracks it may publish.
    pub(super) fn check_offer(&self, sdp: &str) -> Result<usize, ApiError> {
        let shape = sdp_shape(sdp);
        let max = self.limits.max_media_lines;
        if shape.media_lines > max {
            return Err(refuse(
                &self.metrics,
                Limit::MediaLines,
                ApiError::ResourceExhausted(format!(
                    "the offer has {} media sections; at most {max} (limits.max_media_lines)",
                    shape.media_lines
                )),
            ));
        }
        let max = self.limits.max_tracks_per_session;
        if shape.sending > max {
            return Err(refuse(
                &self.metrics,
                Limit::TracksPerSession,
                ApiError::ResourceExhausted(format!(
                    "the offer sends {} audio/video tracks; at most {max} per session (limits.max_tracks_per_session)",
                    shape.sending
                )),
            ));
        }
        if shape.layers > MAX_LAYERS {
            return Err(refuse(
                &self.metrics,
                Limit::SimulcastLayers,
                ApiError::InvalidArgument(format!(
                    "a media section of the offer has {} simulcast layers; at most {MAX_LAYERS}",
                    shape.layers
                )),
            ));
        }
        Ok(shape.sending)
    }

    /// Checks that the router can take a new session (or `new_tracks` more
    /// tracks) within its total limits.
    pub(super) fn check_router_capacity(
        &self,
        reg: &Registry,
        new_tracks: usize,
    ) -> Result<(), ApiError> {
        let l = &self.limits;
        if new_tracks > 0 && reg.tracks.len() + new_tracks > l.max_tracks {
            return Err(refuse(
                &self.metrics,
                Limit::Tracks,
                ApiError::ResourceExhausted(format!(
                    "this router holds its limit of {} tracks (limits.max_tracks)",
                    l.max_tracks
                )),
            ));
        }
        Ok(())
    }

    /// Checks the limits on sessions before one is added.
    pub(super) fn check_session_capacity(&self, reg: &Registry) -> Result<(), ApiError> {
        let l = &self.limits;
        if reg.sessions.len() >= l.max_sessions {
            return Err(refuse(
                &self.metrics,
                Limit::Sessions,
                ApiError::ResourceExhausted(format!(
                    "this router holds its limit of {} sessions (limits.max_sessions)",
                    l.max_sessions
                )),
            ));
        }
        if reg.pending >= l.max_pending_sessions {
            return Err(refuse(
                &self.metrics,
                Limit::PendingSessions,
                ApiError::ResourceExhausted(format!(
                    "{} sessions are waiting to connect, this router's limit (limits.max_pending_sessions)",
                    l.max_pending_sessions
                )),
            ));
        }
        Ok(())
    }
}
