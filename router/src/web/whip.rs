//! WHIP (RFC 9725): `POST /whip/{room}` publishes an SDP offer into a room
//! through the same control plane as `CreateSession`, and answers
//! `201 Created` with the SDP answer and the resource's `Location`
//! (`/whip/{room}/{session id}`); `PATCH` there takes trickle ICE, `DELETE`
//! leaves. Simulcast offers (OBS 30+, browsers) publish every layer, and
//! subscribers get the same layer selection as any other publisher's.
//!
//! The participant id is the token's `sub` when the backend set one, else
//! `whip-` and 16 random hex digits. With API keys the room must exist
//! (the backend creates it); in dev mode it is created when needed, like
//! the demo's.

use super::owner::Owner;
use super::resource::{self, Endpoint, Refusal, Resource};
use super::Web;
use crate::control::limits::sdp_shape;
use crate::control::ApiError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{RoomId, SessionId};
use std::sync::Arc;

const EP: Endpoint = Endpoint::Whip;
const ROUTE: &str = "/whip";

/// The participant id of a new WHIP or WHEP session.
pub(crate) fn participant_of(claims: Option<&crate::auth::token::Claims>, ep: Endpoint) -> String {
    claims
        .and_then(|c| c.sub.clone())
        .unwrap_or_else(|| format!("{}-{:016x}", ep.as_str(), rand::random::<u64>()))
}

/// The checks every `POST` makes before the control plane: the caller, the
/// content type, the body. Returns the claims and the offer.
pub(crate) async fn admit(
    web: &Web,
    headers: &HeaderMap,
    room: &str,
    ep: Endpoint,
    body: Body,
) -> Result<(Option<crate::auth::token::Claims>, String), Refusal> {
    let claims = resource::authorize(web, headers, room, ep)?;
    resource::check_content_type(headers, resource::SDP)?;
    let offer = resource::read_body(body, resource::MAX_SDP_BODY, web.body_deadline).await?;
    if !offer.starts_with("v=0") {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "the body is not an SDP offer (it must start with v=0)",
        ));
    }
    if web.plane.is_draining() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this router is draining; publish or play on another router",
        ));
    }
    Ok((claims, offer))
}

/// Records the new resource (pruning ended ones) and builds the `201`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn register(
    web: &Web,
    headers: &HeaderMap,
    claims: Option<&crate::auth::token::Claims>,
    ep: Endpoint,
    room: &RoomId,
    sid: SessionId,
    offer: &str,
    answer: String,
) -> Response {
    let etag = resource::new_etag();
    let plane = web.plane.clone();
    web.resources.insert(
        sid,
        Resource {
            room: room.clone(),
            endpoint: ep,
            etag: etag.clone(),
            ufrag: resource::ice_ufrag(offer),
            owner: Owner::of(claims, headers),
        },
        |s| plane.get_session(&s.to_string()).is_ok(),
    );
    resource::created(web, headers, ep, room.as_str(), sid, &etag, answer)
}

/// Ends a session whose offer had no codec in common with the router (every
/// media line rejected) and says so: it would hold a pending slot for
/// nothing until its join timeout.
pub(crate) async fn no_codec(web: &Web, session_id: &str) -> Refusal {
    let _ = web.plane.close_session(session_id).await;
    Refusal::new(
        StatusCode::BAD_REQUEST,
        "bad_sdp",
        "no audio or video line of the offer has a codec this router takes (Opus, VP8, H.264)",
    )
}

async fn publish(
    web: &Web,
    headers: &HeaderMap,
    room: &str,
    body: Body,
) -> Result<Response, Refusal> {
    let (claims, offer) = admit(web, headers, room, EP, body).await?;
    let sending = sdp_shape(&offer).sending;
    if sending == 0 {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "the offer sends no audio or video (WHIP publishes; use WHEP to play)",
        ));
    }
    let room_id = RoomId::parse(room)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "bad_request", format!("room {e}")))?;
    if web.keys.is_empty() {
        // Dev mode: the room is created when needed, as the demo does.
        match web.plane.create_room(room, 0, &[]) {
            Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
            Err(e) => return Err(Refusal::api(&e)),
        }
    }
    let resp = web
        .plane
        .create_session(pb::CreateSessionRequest {
            room_id: room.to_string(),
            participant_id: participant_of(claims.as_ref(), EP),
            sdp_offer: offer.clone(),
            metadata: String::new(),
        })
        .await
        .map_err(|e| Refusal::api(&e))?;
    if resp.tracks.is_empty() {
        return Err(no_codec(web, &resp.session_id).await);
    }
    let sid = SessionId::parse(&resp.session_id).map_err(|_| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "session id unreadable",
        )
    })?;
    Ok(register(
        web,
        headers,
        claims.as_ref(),
        EP,
        &room_id,
        sid,
        &offer,
        resp.sdp_answer,
    ))
}

/// `POST /whip/{room}`.
pub async fn post(
    State(web): State<Arc<Web>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let resp = match publish(&web, &headers, &room, body).await {
        Ok(r) => r,
        Err(r) => resource::refuse(&web, &headers, EP, &r),
    };
    web.done(ROUTE, resp)
}

/// `OPTIONS /whip/{room}`.
pub async fn options(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let resp = resource::options(&web, &headers, "POST, OPTIONS");
    web.done(ROUTE, resp)
}

/// `OPTIONS /whip/{room}/{id}`.
pub async fn options_resource(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let resp = resource::options(&web, &headers, "PATCH, DELETE, OPTIONS");
    web.done("/whip/resource", resp)
}

/// `PATCH /whip/{room}/{id}`.
pub async fn patch(
    State(web): State<Arc<Web>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    resource::patch(web, EP, path, headers, body).await
}

/// `DELETE /whip/{room}/{id}`.
pub async fn delete(
    State(web): State<Arc<Web>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    resource::delete(web, EP, path, headers).await
}
