//! Subscriptions: `Subscribe`, `Unsubscribe`, `SetAnswer`,
//! `UpdateSubscription`, and recording what a worker subscribed.

use super::admit::{check_sdp, parse_tracks};
use super::Control;
use crate::control::error::{parse_id, ApiError};
use crate::control::limits::{refuse, Limit};
use crate::control::registry::{Registry, SubState};
use crate::media::command::SubscriptionUpdate;
use crate::media::{Command, TrackInfo, WorkerId};
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{SessionId, TrackId};
use std::sync::Arc;

impl Control {
    /// Records the subscriptions a worker made for session `sid` (on
    /// `worker`) and has the publishers' workers send it their packets.
    pub(super) fn record_subscriptions(
        &self,
        reg: &mut Registry,
        sid: SessionId,
        worker: WorkerId,
        infos: &[Arc<TrackInfo>],
        mids: &[(TrackId, str0m::media::Mid)],
    ) -> Vec<pb::Subscription> {
        let mut subs = Vec::new();
        for (t, mid) in mids {
            let Some(info) = infos.iter().find(|i| i.id == *t) else {
                continue;
            };
            let gone = !reg.tracks.contains_key(t);
            if let Some(s) = reg.sessions.get_mut(&sid) {
                s.subs.insert(
                    *t,
                    SubState {
                        mid: *mid,
                        publisher_worker: info.worker,
                        gone,
                    },
                );
            }
            if !gone {
                self.send(info.worker, Command::AddDestination { track: *t, worker });
            }
            subs.push(pb::Subscription {
                track_id: t.to_string(),
                mid: mid.to_string(),
            });
        }
        subs
    }

    /// `Subscribe`
    pub async fn subscribe(
        &self,
        req: pb::SubscribeRequest,
    ) -> Result<pb::SubscribeResponse, ApiError> {
        let ids = parse_tracks(&self.metrics, &req.track_ids)?;
        let (sid, worker, infos) = {
            let reg = self.reg();
            let (sid, worker) = Self::session_of(&reg, &req.session_id)?;
            let s = &reg.sessions[&sid];
            let max = self.limits.max_subscriptions_per_session;
            if s.subs.len() + ids.len() > max {
                return Err(refuse(
                    &self.metrics,
                    Limit::SubscriptionsPerSession,
                    ApiError::ResourceExhausted(format!(
                        "session {sid} would receive more than {max} tracks (limits.max_subscriptions_per_session)"
                    )),
                ));
            }
            let mut infos = Vec::with_capacity(ids.len());
            for t in &ids {
                let info = reg
                    .tracks
                    .get(t)
                    .filter(|i| i.room == s.room)
                    .ok_or_else(|| {
                        ApiError::NotFound(format!("track {t} not found in room {}", s.room))
                    })?;
                if info.session == sid {
                    return Err(ApiError::InvalidArgument(format!(
                        "track {t} is published by this session itself"
                    )));
                }
                if s.subs.contains_key(t) {
                    return Err(ApiError::AlreadyExists(format!(
                        "session {sid} is already subscribed to track {t}"
                    )));
                }
                infos.push(info.clone());
            }
            (sid, worker, infos)
        };
        let ok = self
            .call(worker, |reply| Command::Subscribe {
                session: sid,
                tracks: infos.clone(),
                reply,
            })
            .await?;
        let mut reg = self.reg();
        let subs = self.record_subscriptions(&mut reg, sid, worker, &infos, &ok.mids);
        Ok(pb::SubscribeResponse {
            sdp_offer: ok.offer,
            subscriptions: subs,
        })
    }

    /// `Unsubscribe`
    pub async fn unsubscribe(
        &self,
        req: pb::UnsubscribeRequest,
    ) -> Result<pb::UnsubscribeResponse, ApiError> {
        let ids = parse_tracks(&self.metrics, &req.track_ids)?;
        let (sid, worker) = {
            let reg = self.reg();
            let (sid, worker) = Self::session_of(&reg, &req.session_id)?;
            let s = &reg.sessions[&sid];
            if let Some(t) = ids.iter().find(|t| !s.subs.contains_key(t)) {
                return Err(ApiError::NotFound(format!(
                    "session {sid} is not subscribed to track {t}"
                )));
            }
            (sid, worker)
        };
        let ok = self
            .call(worker, |reply| Command::Unsubscribe {
                session: sid,
                tracks: ids.clone(),
                reply,
            })
            .await?;
        let mut reg = self.reg();
        if let Some(s) = reg.sessions.get_mut(&sid) {
            for t in &ids {
                if let Some(st) = s.subs.remove(t) {
                    if !st.gone {
                        self.send(
                            st.publisher_worker,
                            Command::RemoveDestination { track: *t, worker },
                        );
                    }
                }
            }
        }
        Ok(pb::UnsubscribeResponse {
            sdp_offer: ok.offer,
        })
    }

    /// `SetAnswer`
    pub async fn set_answer(&self, req: pb::SetAnswerRequest) -> Result<(), ApiError> {
        check_sdp(&self.metrics, "sdp_answer", &req.sdp_answer)?;
        let (sid, worker) = Self::session_of(&self.reg(), &req.session_id)?;
        self.call(worker, |reply| Command::SetAnswer {
            session: sid,
            answer: req.sdp_answer,
            reply,
        })
        .await
    }

    /// `UpdateSubscription`
    pub async fn update_subscription(
        &self,
        req: pb::UpdateSubscriptionRequest,
    ) -> Result<pb::UpdateSubscriptionResponse, ApiError> {
        let track = parse_id("track_id", &req.track_id, TrackId::parse)?;
        let small = |field: &str, v: Option<u32>, max: u32| -> Result<Option<u8>, ApiError> {
            match v {
                Some(v) if v > max => Err(ApiError::InvalidArgument(format!(
                    "{field} {v} is above {max}"
                ))),
                Some(v) => Ok(Some(v as u8)),
                None => Ok(None),
            }
        };
        let max_size = match (req.max_width, req.max_height) {
            (None, None) => None,
            (w, h) => {
                let (w, h) = (w.unwrap_or(u32::MAX), h.unwrap_or(u32::MAX));
                if w == 0 || h == 0 {
                    return Err(ApiError::InvalidArgument(
                        "max_width and max_height must be positive; use paused to stop".into(),
                    ));
                }
                Some((w, h))
            }
        };
        if req.max_spatial_layer.is_some() && max_size.is_some() {
            return Err(ApiError::InvalidArgument(
                "set max_spatial_layer or max_width/max_height, not both".into(),
            ));
        }
        if let Some(p) = req.priority {
            if !(1..=100).contains(&p) {
                return Err(ApiError::InvalidArgument(format!(
                    "priority {p} is outside 1..=100"
                )));
            }
        }
        let update = SubscriptionUpdate {
            max_spatial_layer: small("max_spatial_layer", req.max_spatial_layer, 31)?,
            max_size,
            max_temporal_layer: small("max_temporal_layer", req.max_temporal_layer, 7)?,
            paused: req.paused,
            priority: req.priority,
        };
        let (sid, worker) = {
            let reg = self.reg();
            let (sid, worker) = Self::session_of(&reg, &req.session_id)?;
            let s = &reg.sessions[&sid];
            match s.subs.get(&track) {
                None => {
                    return Err(ApiError::NotFound(format!(
                        "session {sid} is not subscribed to track {track}"
                    )))
                }
                Some(st) if st.gone => {
                    return Err(ApiError::NotFound(format!("track {track} was unpublished")))
                }
                Some(_) => {}
            }
            (sid, worker)
        };
        let view = self
            .call(worker, |reply| Command::UpdateSubscription {
                session: sid,
                track,
                update,
                reply,
            })
            .await?;
        let layer = |l: Option<u8>| l.map_or(-1, i32::from);
        Ok(pb::UpdateSubscriptionResponse {
            subscription: Some(pb::SubscriptionState {
                track_id: track.to_string(),
                mid: view.mid.to_string(),
                current_spatial_layer: layer(view.current),
                target_spatial_layer: layer(view.target),
                max_spatial_layer: u32::from(view.pref.max_layer),
                max_temporal_layer: u32::from(view.pref.max_temporal),
                paused: view.pref.paused,
                priority: view.pref.priority,
            }),
        })
    }
}
