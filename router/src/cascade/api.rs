//! `kaskade.v1.CascadeService` over gRPC.

use super::manager::CascadeHandle;
use crate::control::error::parse_id;
use crate::control::ApiError;
use kaskade_protocol::v1 as pb;
use kaskade_protocol::RoomId;
use pb::cascade_service_server::CascadeService;
use tonic::{Request, Response, Status};

/// The cascade API; without cascading configured every call is
/// `FAILED_PRECONDITION`.
#[derive(Debug, Clone)]
pub struct CascadeApi {
    handle: Option<CascadeHandle>,
}

impl CascadeApi {
    /// The API over a running cascade, if any.
    pub fn new(handle: Option<CascadeHandle>) -> Self {
        Self { handle }
    }

    fn handle(&self) -> Result<&CascadeHandle, ApiError> {
        self.handle.as_ref().ok_or_else(|| {
            ApiError::FailedPrecondition(
                "cascading is off: set cascade.listen and its certificates".into(),
            )
        })
    }

    /// The gRPC answer of a call (errors are counted by
    /// [`crate::control::grpc_errors::ErrorCountLayer`]).
    fn done<T>(&self, r: Result<T, ApiError>) -> Result<Response<T>, Status> {
        r.map(Response::new).map_err(Status::from)
    }
}

fn peer_id(s: &str) -> Result<String, ApiError> {
    if crate::config::valid_name(s) {
        Ok(s.to_string())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "peer_node_id {s:?} is not a node id"
        )))
    }
}

#[tonic::async_trait]
impl CascadeService for CascadeApi {
    async fn link_room(
        &self,
        req: Request<pb::LinkRoomRequest>,
    ) -> Result<Response<pb::LinkRoomResponse>, Status> {
        let r = req.into_inner();
        let res = async {
            let room = parse_id("room_id", &r.room_id, RoomId::parse)?;
            let peer = peer_id(&r.peer_node_id)?;
            let peer = self.handle()?.link_room(room, peer).await?;
            Ok(pb::LinkRoomResponse { peer: Some(peer) })
        }
        .await;
        self.done(res)
    }

    async fn unlink_room(
        &self,
        req: Request<pb::UnlinkRoomRequest>,
    ) -> Result<Response<pb::UnlinkRoomResponse>, Status> {
        let r = req.into_inner();
        let res = async {
            let room = parse_id("room_id", &r.room_id, RoomId::parse)?;
            let peer = peer_id(&r.peer_node_id)?;
            self.handle()?.unlink_room(room, peer).await?;
            Ok(pb::UnlinkRoomResponse {})
        }
        .await;
        self.done(res)
    }

    async fn list_links(
        &self,
        _req: Request<pb::ListLinksRequest>,
    ) -> Result<Response<pb::ListLinksResponse>, Status> {
        let res = async {
            Ok(pb::ListLinksResponse {
                links: self.handle()?.list_links().await,
            })
        }
        .await;
        self.done(res)
    }
}
