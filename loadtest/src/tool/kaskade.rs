//! The kaskade target: rooms, sessions and subscriptions over the gRPC control API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use kaskade_protocol::v1 as pb;
use pb::cascade_service_client::CascadeServiceClient;
use pb::room_service_client::RoomServiceClient;
use pb::session_service_client::SessionServiceClient;
use tonic::transport::Channel;

use super::driver::ClientId;
use super::scenario::Bootstrap;
use super::session::{step, JoinRecord, Joins, PubTrack, Publisher, Role};

/// Control-API clients of one router.
#[derive(Debug, Clone)]
pub(crate) struct Kaskade {
    rooms: RoomServiceClient<Channel>,
    sessions: SessionServiceClient<Channel>,
    links: CascadeServiceClient<Channel>,
}

fn status(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Room id of room index `r` in run `run`.
pub(crate) fn room_id(run: &str, r: u32) -> String {
    format!("lt-{run}-{r}")
}

impl Kaskade {
    /// Connects to the control API.
    pub(crate) async fn connect(control: SocketAddr) -> Result<Kaskade, String> {
        let channel = Channel::from_shared(format!("http://{control}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("control API {control}: {e}"))?;
        Ok(Kaskade {
            rooms: RoomServiceClient::new(channel.clone()),
            sessions: SessionServiceClient::new(channel.clone()),
            links: CascadeServiceClient::new(channel),
        })
    }

    /// Creates a room at the router's default session limit; returns that limit.
    pub(crate) async fn create_room(&self, room: &str) -> Result<u32, String> {
        let r = self
            .rooms
            .clone()
            .create_room(pb::CreateRoomRequest {
                room_id: room.into(),
                max_sessions: 0,
                allowed_regions: vec![],
            })
            .await
            .map_err(|s| format!("create_room: {}", status(s)))?;
        Ok(r.into_inner().room.map_or(0, |r| r.max_sessions))
    }

    /// The room as the router sees it.
    pub(crate) async fn get_room(&self, room: &str) -> Result<pb::Room, String> {
        self.rooms
            .clone()
            .get_room(pb::GetRoomRequest {
                room_id: room.into(),
            })
            .await
            .map_err(|s| format!("get_room: {}", status(s)))?
            .into_inner()
            .room
            .ok_or_else(|| "get_room: no room in the answer".into())
    }

    /// Links `room` with the same room on router `peer` (`LinkRoom`). A link
    /// that already exists (auto-linking) counts as done.
    pub(crate) async fn link_room(&self, room: &str, peer: &str) -> Result<(), String> {
        let r = self
            .links
            .clone()
            .link_room(pb::LinkRoomRequest {
                room_id: room.into(),
                peer_node_id: peer.into(),
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(format!("link_room {peer}: {}", status(s))),
        }
    }

    /// The router's links and their counters (`ListLinks`).
    pub(crate) async fn links(&self) -> Result<Vec<pb::Link>, String> {
        Ok(self
            .links
            .clone()
            .list_links(pb::ListLinksRequest {})
            .await
            .map_err(|s| format!("list_links: {}", status(s)))?
            .into_inner()
            .links)
    }

    /// Closes a session (a participant leaves).
    pub(crate) async fn close_session(&self, session_id: &str) -> Result<(), String> {
        self.sessions
            .clone()
            .close_session(pb::CloseSessionRequest {
                session_id: session_id.into(),
            })
            .await
            .map_err(|s| format!("close_session: {}", status(s)))?;
        Ok(())
    }

    /// Deletes a room (best effort, at the end of a run against a shared router).
    pub(crate) async fn delete_room(&self, room: &str) {
        let _ = self
            .rooms
            .clone()
            .delete_room(pb::DeleteRoomRequest {
                room_id: room.into(),
            })
            .await;
    }

    /// A publisher joins `room`: audio and/or simulcast video, offer, answer, connected.
    pub(crate) async fn publish(
        &self,
        joins: &Arc<Joins>,
        room_idx: u32,
        room: &str,
        index: u32,
        role: Role,
    ) -> Result<Publisher, String> {
        let (id, mut rec) = joins.new_publisher(role, room_idx, index).await?;
        let res = self.publish_steps(joins, id, room, index, &mut rec).await;
        if let Err(e) = &res {
            rec.error = Some(e.clone());
        }
        joins.record(rec);
        res
    }

    /// Offers what client `id` has queued, creates its session, applies the
    /// answer and waits until it is connected (timed in `rec`).
    async fn join_session(
        &self,
        joins: &Arc<Joins>,
        id: ClientId,
        room: &str,
        participant: &str,
        rec: &mut JoinRecord,
    ) -> Result<pb::CreateSessionResponse, String> {
        let limit = joins.scenario.join_timeout.0;
        let offer = joins
            .driver
            .call(id, |s| s.client.create_offer())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("create_offer: nothing to offer")?;
        rec.started = Instant::now();
        let created = step(limit, "create_session", async {
            self.sessions
                .clone()
                .create_session(pb::CreateSessionRequest {
                    room_id: room.into(),
                    participant_id: participant.into(),
                    sdp_offer: offer,
                    metadata: String::new(),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(status)
        })
        .await?;
        let answer = created.sdp_answer.clone();
        joins
            .driver
            .call(id, move |s| s.client.accept_answer(&answer))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("accept_answer: {e}"))?;
        rec.connected = Some(joins.connected(id, "connect").await?);
        Ok(created)
    }

    async fn publish_steps(
        &self,
        joins: &Arc<Joins>,
        id: ClientId,
        room: &str,
        index: u32,
        rec: &mut JoinRecord,
    ) -> Result<Publisher, String> {
        let created = self
            .join_session(joins, id, room, &format!("pub-{index}"), rec)
            .await?;
        Ok(Publisher {
            id,
            session_id: created.session_id,
            janus: None,
            tracks: created
                .tracks
                .iter()
                .map(|t| PubTrack {
                    track_id: t.track_id.clone(),
                    video: t.kind == pb::TrackKind::Video as i32,
                })
                .collect(),
        })
    }

    /// A receive-only subscriber (receiver group `group`) joins `room` and
    /// subscribes to `tracks`; returns its client (once created) and its session.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn subscriber(
        &self,
        joins: &Arc<Joins>,
        room_idx: u32,
        room: &str,
        index: u32,
        group: u8,
        participant: &str,
        tracks: &[PubTrack],
    ) -> (Option<ClientId>, Result<String, String>) {
        let bootstrap = joins.scenario.subscriber_bootstrap;
        let created = joins
            .new_client(
                Role::Subscriber,
                room_idx,
                index,
                group,
                |c| match bootstrap {
                    Bootstrap::Datachannel => c.add_data_channel("k"),
                    Bootstrap::Recvonly => c.add_receiver(str0m::media::MediaKind::Video),
                },
            )
            .await;
        let (id, mut rec) = match created {
            Ok(c) => c,
            Err(e) => return (None, Err(e)),
        };
        let res = async {
            let created = self
                .join_session(joins, id, room, participant, &mut rec)
                .await?;
            self.subscribe(joins, id, &created.session_id, tracks)
                .await?;
            rec.subscribed = Some(Instant::now());
            Ok::<String, String>(created.session_id)
        }
        .await;
        if let Err(e) = &res {
            rec.error = Some(e.clone());
        }
        joins.record(rec);
        (Some(id), res)
    }

    /// A meeting participant (already publishing) subscribes to the others' tracks.
    pub(crate) async fn participant_subscribes(
        &self,
        joins: &Arc<Joins>,
        me: &Publisher,
        room_idx: u32,
        index: u32,
        tracks: &[PubTrack],
    ) -> Result<(), String> {
        let res = self.subscribe(joins, me.id, &me.session_id, tracks).await;
        // The publisher's join was recorded already; record the subscription part as
        // a participant entry so failures show up.
        let now = Instant::now();
        joins.record(JoinRecord {
            id: me.id,
            role: Role::Participant,
            room: room_idx,
            index,
            impaired: false,
            started: now,
            connected: None,
            subscribed: res.is_ok().then_some(now),
            error: res.as_ref().err().cloned(),
        });
        res
    }

    /// Subscribe → answer the router's offer → SetAnswer → layer preference.
    async fn subscribe(
        &self,
        joins: &Arc<Joins>,
        id: ClientId,
        session_id: &str,
        tracks: &[PubTrack],
    ) -> Result<(), String> {
        let limit = joins.scenario.join_timeout.0;
        if tracks.is_empty() {
            return Err("subscribe: no published tracks in the room".into());
        }
        let asked = Instant::now();
        let sub = step(limit, "subscribe", async {
            self.sessions
                .clone()
                .subscribe(pb::SubscribeRequest {
                    session_id: session_id.into(),
                    track_ids: tracks.iter().map(|t| t.track_id.clone()).collect(),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(status)
        })
        .await?;
        joins.media_requested(id, asked).await;
        let offer = sub.sdp_offer;
        let answer = joins
            .driver
            .call(id, move |s| s.client.accept_offer(&offer))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("accept_offer: {e}"))?;
        step(limit, "set_answer", async {
            self.sessions
                .clone()
                .set_answer(pb::SetAnswerRequest {
                    session_id: session_id.into(),
                    sdp_answer: answer,
                })
                .await
                .map_err(status)
        })
        .await?;
        let layers = joins.scenario.layers.len();
        if let Some(layer) = joins.scenario.subscriber_layer.index(layers) {
            for t in tracks.iter().filter(|t| t.video) {
                self.set_layer(joins, session_id, &t.track_id, layer)
                    .await?;
            }
        }
        Ok(())
    }

    async fn set_layer(
        &self,
        joins: &Arc<Joins>,
        session_id: &str,
        track_id: &str,
        layer: u32,
    ) -> Result<(), String> {
        let r = self
            .sessions
            .clone()
            .update_subscription(pb::UpdateSubscriptionRequest {
                session_id: session_id.into(),
                track_id: track_id.into(),
                max_spatial_layer: Some(layer),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::Unimplemented
                ) =>
            {
                joins.note(format!(
                    "layer selection not supported by this router version ({}): \
                     subscribers get the router's default layer",
                    status(s)
                ));
                Ok(())
            }
            Err(s) => Err(format!("update_subscription: {}", status(s))),
        }
    }
}
