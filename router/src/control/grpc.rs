//! The tonic services: thin adapters from gRPC to [`Control`].

use super::error::ApiError;
use super::events::{watch_stream, EventFilter};
use super::plane::Control;
use kaskade_protocol::v1 as pb;
use pb::room_service_server::RoomService;
use pb::session_service_server::SessionService;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Implements both services over one control plane.
#[derive(Debug, Clone)]
pub struct Api {
    control: Arc<Control>,
}

impl Api {
    /// The API over `control`.
    pub fn new(control: Arc<Control>) -> Self {
        Self { control }
    }

    /// The gRPC answer of a call (errors are counted by
    /// [`super::grpc_errors::ErrorCountLayer`]).
    fn done<T>(&self, r: Result<T, ApiError>) -> Result<Response<T>, Status> {
        r.map(Response::new).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl RoomService for Api {
    async fn create_room(
        &self,
        req: Request<pb::CreateRoomRequest>,
    ) -> Result<Response<pb::CreateRoomResponse>, Status> {
        let r = req.into_inner();
        let res = self
            .control
            .create_room(&r.room_id, r.max_sessions, &r.allowed_regions)
            .map(|room| pb::CreateRoomResponse { room: Some(room) });
        self.done(res)
    }

    async fn get_room(
        &self,
        req: Request<pb::GetRoomRequest>,
    ) -> Result<Response<pb::GetRoomResponse>, Status> {
        let res = self
            .control
            .get_room(&req.into_inner().room_id)
            .map(|room| pb::GetRoomResponse { room: Some(room) });
        self.done(res)
    }

    async fn list_rooms(
        &self,
        req: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsResponse>, Status> {
        let r = req.into_inner();
        let res = self.control.list_rooms(r.page_size, &r.page_token);
        self.done(res)
    }

    async fn delete_room(
        &self,
        req: Request<pb::DeleteRoomRequest>,
    ) -> Result<Response<pb::DeleteRoomResponse>, Status> {
        let res = self
            .control
            .delete_room(&req.into_inner().room_id)
            .await
            .map(|()| pb::DeleteRoomResponse {});
        self.done(res)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SessionService for Api {
    async fn create_session(
        &self,
        req: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let res = self.control.create_session(req.into_inner()).await;
        self.done(res)
    }

    async fn renegotiate(
        &self,
        req: Request<pb::RenegotiateRequest>,
    ) -> Result<Response<pb::RenegotiateResponse>, Status> {
        let res = self.control.renegotiate(req.into_inner()).await;
        self.done(res)
    }

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::SubscribeResponse>, Status> {
        let res = self.control.subscribe(req.into_inner()).await;
        self.done(res)
    }

    async fn unsubscribe(
        &self,
        req: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let res = self.control.unsubscribe(req.into_inner()).await;
        self.done(res)
    }

    async fn set_answer(
        &self,
        req: Request<pb::SetAnswerRequest>,
    ) -> Result<Response<pb::SetAnswerResponse>, Status> {
        let res = self
            .control
            .set_answer(req.into_inner())
            .await
            .map(|()| pb::SetAnswerResponse {});
        self.done(res)
    }

    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let res = self
            .control
            .close_session(&req.into_inner().session_id)
            .await
            .map(|()| pb::CloseSessionResponse {});
        self.done(res)
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let res = self.control.get_session(&req.into_inner().session_id);
        self.done(res)
    }

    async fn update_subscription(
        &self,
        req: Request<pb::UpdateSubscriptionRequest>,
    ) -> Result<Response<pb::UpdateSubscriptionResponse>, Status> {
        let res = self.control.update_subscription(req.into_inner()).await;
        self.done(res)
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let req = req.into_inner();
        let watch =
            EventFilter::parse(&req.kinds).and_then(|f| Ok((f, self.control.watch(&req.room_id)?)));
        let (filter, watch) = match watch {
            Ok(v) => v,
            Err(e) => return self.done(Err(e)),
        };
        // A watcher that falls more than the buffer behind misses events
        // (told by an events_dropped marker; it can resync with GetRoom); it
        // is never allowed to slow the router down. The stream owns its slot
        // of limits.max_watchers.
        let slot = watch.slot;
        let stream = watch_stream(&req.room_id, watch.events, filter).map(move |ev| {
            let _ = &slot;
            Ok(ev)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
