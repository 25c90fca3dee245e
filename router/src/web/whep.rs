//! WHEP (draft-ietf-wish-whep): `POST /whep/{room}` plays one publisher of
//! a room. The viewer's offer has receive-only lines (an audio and a video
//! transceiver, as `pc.addTransceiver(kind, {direction: "recvonly"})`
//! makes); the answer sends the publisher's tracks on them at once
//! (subscribe in the answer: no second offer, which WHEP has no way to
//! carry). `PATCH` and `DELETE` on the resource work as for WHIP.
//!
//! Query parameters:
//! - `publisher=ID`: the participant to play; by default the first
//!   participant (in id order) that publishes anything and has connected
//!   (the first that publishes, if none has yet). 404 when the named
//!   one publishes nothing, 409 when nobody publishes yet.
//! - `layer=auto|low|mid|high`: the highest simulcast layer to receive;
//!   `auto` (the default) lets the bandwidth estimate choose, like any
//!   subscription; the others cap it (`UpdateSubscription`'s
//!   `max_spatial_layer` 0, 1, 2), and the estimate may still go lower.
//!
//! The viewer gets the publisher's tracks of the moment; tracks the
//! publisher adds later are not sent to it (WHEP has no renegotiation).

use super::resource::{self, Endpoint, Refusal};
use super::whip::{admit, no_codec, participant_of, register};
use super::{query, Web};
use crate::control::limits::sdp_shape;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{RoomId, SessionId};
use std::sync::Arc;

const EP: Endpoint = Endpoint::Whep;
const ROUTE: &str = "/whep";

/// `layer=`: the highest spatial layer, `None` for auto.
fn parse_layer(v: Option<&str>) -> Result<Option<u32>, Refusal> {
    match v.unwrap_or("auto") {
        "auto" | "" => Ok(None),
        "low" => Ok(Some(0)),
        "mid" => Ok(Some(1)),
        "high" => Ok(Some(2)),
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "layer must be auto, low, mid or high",
        )),
    }
}

async fn play(
    web: &Web,
    headers: &HeaderMap,
    room: &str,
    uri: &Uri,
    body: Body,
) -> Result<Response, Refusal> {
    let (claims, offer) = admit(web, headers, room, EP, body).await?;
    let layer = parse_layer(query(uri, "layer").as_deref())?;
    let receiving = sdp_shape(&offer).receiving;
    if receiving == 0 {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "the offer receives no audio or video (add recvonly transceivers)",
        ));
    }
    let room_id = RoomId::parse(room)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "bad_request", format!("room {e}")))?;
    let chosen = web
        .plane
        .viewer_tracks(room, query(uri, "publisher").as_deref())
        .map_err(|e| Refusal::api(&e))?;
    let (resp, subs) = web
        .plane
        .create_session_with(
            pb::CreateSessionRequest {
                room_id: room.to_string(),
                participant_id: participant_of(claims.as_ref(), EP),
                sdp_offer: offer.clone(),
                metadata: String::new(),
            },
            &chosen.tracks,
        )
        .await
        .map_err(|e| Refusal::api(&e))?;
    if sdp_shape(&resp.sdp_answer).sending == 0 {
        return Err(no_codec(web, &resp.session_id).await);
    }
    if let Some(max) = layer {
        for s in &subs {
            // Audio has no layers: its update is refused, harmlessly.
            let _ = web
                .plane
                .update_subscription(pb::UpdateSubscriptionRequest {
                    session_id: resp.session_id.clone(),
                    track_id: s.track_id.clone(),
                    max_spatial_layer: Some(max),
                    ..Default::default()
                })
                .await;
        }
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

/// `POST /whep/{room}[?publisher=ID][&layer=auto|low|mid|high]`.
pub async fn post(
    State(web): State<Arc<Web>>,
    Path(room): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let resp = match play(&web, &headers, &room, &uri, body).await {
        Ok(r) => r,
        Err(r) => resource::refuse(&web, &headers, EP, &r),
    };
    web.done(ROUTE, resp)
}

/// `OPTIONS /whep/{room}`.
pub async fn options(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let resp = resource::options(&web, &headers, "POST, OPTIONS");
    web.done(ROUTE, resp)
}

/// `OPTIONS /whep/{room}/{id}`.
pub async fn options_resource(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let resp = resource::options(&web, &headers, "PATCH, DELETE, OPTIONS");
    web.done("/whep/resource", resp)
}

/// `PATCH /whep/{room}/{id}`.
pub async fn patch(
    State(web): State<Arc<Web>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    resource::patch(web, EP, path, headers, body).await
}

/// `DELETE /whep/{room}/{id}`.
pub async fn delete(
    State(web): State<Arc<Web>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    resource::delete(web, EP, path, headers).await
}
