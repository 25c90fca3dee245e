//! The demo signalling: what an integrator's backend does, inside the
//! daemon, for the demo app only. `POST /demo/api/{Method}` takes the
//! request of a `SessionService` call as JSON (protobuf JSON mapping) and
//! answers its response the same way, through the same control plane as
//! gRPC; `CreateSession` creates its room when needed. `GET
//! /demo/events?room=NAME` streams the room's events (server-sent events,
//! one JSON event per message). No second way of doing a thing.
//!
//! Who may call: without API keys, anyone on loopback (the listener is
//! loopback only then, like the gRPC API on its default address). With API
//! keys, every request needs `Authorization: Bearer <room token>` for the
//! room it acts on (the request's `roomId`, or the room of its
//! `sessionId`) granting both publish and subscribe; the token's `sub`,
//! when set, is the participant id. Refusals are counted in
//! `kaskade_whip_refusals_total{endpoint="demo"}`.

use super::json::{self, Participants};
use super::resource::{self, Refusal};
use super::{error, query, Web};
use crate::auth::token::{self, Claims, Grant, TokenError};
use crate::control::events::{watch_stream, EventFilter};
use crate::control::ApiError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kaskade_protocol::v1 as pb;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_stream::StreamExt;

/// Largest request body: an SDP at the API's limit, in JSON.
pub const MAX_BODY: usize = crate::control::limits::MAX_SDP_BYTES + 16 * 1024;

/// The gRPC-like code of an error, as the JSON error body names it.
fn code_name(e: &ApiError) -> &'static str {
    match e {
        ApiError::InvalidArgument(_) => "INVALID_ARGUMENT",
        ApiError::NotFound(_) => "NOT_FOUND",
        ApiError::AlreadyExists(_) => "ALREADY_EXISTS",
        ApiError::FailedPrecondition(_) => "FAILED_PRECONDITION",
        ApiError::PermissionDenied(_) => "PERMISSION_DENIED",
        ApiError::ResourceExhausted(_) => "RESOURCE_EXHAUSTED",
        ApiError::Unavailable(_) => "UNAVAILABLE",
        ApiError::Internal(_) => "INTERNAL",
    }
}

fn api_error(e: &ApiError) -> Response {
    let status = match e {
        ApiError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::AlreadyExists(_) | ApiError::FailedPrecondition(_) => StatusCode::CONFLICT,
        ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        ApiError::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = json!({ "code": code_name(e), "message": e.to_string() });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Req {
    room_id: String,
    participant_id: String,
    session_id: String,
    sdp_offer: String,
    sdp_answer: String,
    metadata: String,
    track_ids: Vec<String>,
    track_id: String,
    max_spatial_layer: Option<u32>,
    max_width: Option<u32>,
    max_height: Option<u32>,
    max_temporal_layer: Option<u32>,
    paused: Option<bool>,
    priority: Option<u32>,
}

/// What a token must grant for the demo.
const NOT_GRANTED: &str = "the token must grant both publish and subscribe";

/// Checks who calls (see the module's doc): nothing without API keys, else
/// a token for `room` granting publish and subscribe. Returns its claims.
fn authorize(web: &Web, headers: &HeaderMap, room: &str) -> Result<Option<Claims>, Refusal> {
    if web.keys.is_empty() {
        return Ok(None);
    }
    let checked = resource::bearer(headers).and_then(|tok| {
        let c = token::verify(&web.keys, tok, room, Grant::Publish, SystemTime::now())
            .map_err(|e| resource::token_refusal(e, NOT_GRANTED))?;
        if !c.subscribe {
            return Err(resource::token_refusal(TokenError::NotGranted, NOT_GRANTED));
        }
        Ok(c)
    });
    checked.map(Some)
}

/// A refused request: counted, and said in plain text.
fn refuse(web: &Web, r: &Refusal) -> Response {
    web.metrics
        .whip_refusals
        .with_label_values(&["demo", r.label])
        .inc();
    tracing::debug!(endpoint = "demo", reason = r.label, "request refused");
    let mut resp = error(r.status, &r.reason);
    if r.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// What a call acts on: its `roomId`, or its session's room and
/// participant.
enum Target {
    /// A room (`CreateSession`, `GetRoom`).
    Room(String),
    /// A live session: its room and its participant.
    Session(String, String),
    /// A session id that names no live session.
    Unknown,
}

fn target(web: &Web, method: &str, r: &Req) -> Target {
    match method {
        "CreateSession" | "GetRoom" => Target::Room(r.room_id.clone()),
        _ => match web.plane.get_session(&r.session_id) {
            Ok(s) => Target::Session(
                s.room_id,
                s.session.map(|i| i.participant_id).unwrap_or_default(),
            ),
            Err(_) => Target::Unknown,
        },
    }
}

/// Checks that the caller may act on `target`: a token for its room and,
/// for a session, one naming its participant when the token names one
/// (a token without `sub` acts for the whole room). Returns the claims.
fn authorize_target(
    web: &Web,
    headers: &HeaderMap,
    target: &Target,
) -> Result<Option<Claims>, Refusal> {
    let (room, participant) = match target {
        Target::Room(room) => (room.as_str(), None),
        Target::Session(room, p) => (room.as_str(), Some(p)),
        // Nothing to act on: the call says so (with API keys the caller
        // showed a token before its body was read; session ids are not
        // guessable).
        Target::Unknown => return Ok(None),
    };
    let claims = authorize(web, headers, room)?;
    let sub = claims.as_ref().and_then(|c| c.sub.as_ref());
    if let (Some(sub), Some(p)) = (sub, participant) {
        if sub != p {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "wrong_participant",
                "the token is for another participant of the room",
            ));
        }
    }
    Ok(claims)
}

/// The room exists afterwards (created with the router's defaults).
fn ensure_room(web: &Web, room: &str) -> Result<(), ApiError> {
    match web.plane.create_room(room, 0, &[]) {
        Ok(_) | Err(ApiError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn call(web: &Web, method: &str, r: Req) -> Result<Value, ApiError> {
    let p = &web.plane;
    let tracks = |t: &[pb::Track]| t.iter().map(json::track).collect::<Vec<_>>();
    Ok(match method {
        "CreateSession" => {
            ensure_room(web, &r.room_id)?;
            let resp = p
                .create_session(pb::CreateSessionRequest {
                    room_id: r.room_id,
                    participant_id: r.participant_id,
                    sdp_offer: r.sdp_offer,
                    metadata: r.metadata,
                })
                .await?;
            json!({
                "sessionId": resp.session_id,
                "sdpAnswer": resp.sdp_answer,
                "tracks": tracks(&resp.tracks),
            })
        }
        "Renegotiate" => {
            let resp = p
                .renegotiate(pb::RenegotiateRequest {
                    session_id: r.session_id,
                    sdp_offer: r.sdp_offer,
                })
                .await?;
            json!({
                "sdpAnswer": resp.sdp_answer,
                "addedTracks": tracks(&resp.added_tracks),
                "removedTrackIds": resp.removed_track_ids,
            })
        }
        "Subscribe" => {
            let resp = p
                .subscribe(pb::SubscribeRequest {
                    session_id: r.session_id,
                    track_ids: r.track_ids,
                })
                .await?;
            json!({
                "sdpOffer": resp.sdp_offer,
                "subscriptions": resp.subscriptions.iter()
                    .map(|s| json!({ "trackId": s.track_id, "mid": s.mid }))
                    .collect::<Vec<_>>(),
            })
        }
        "Unsubscribe" => {
            let resp = p
                .unsubscribe(pb::UnsubscribeRequest {
                    session_id: r.session_id,
                    track_ids: r.track_ids,
                })
                .await?;
            json!({ "sdpOffer": resp.sdp_offer })
        }
        "SetAnswer" => {
            p.set_answer(pb::SetAnswerRequest {
                session_id: r.session_id,
                sdp_answer: r.sdp_answer,
            })
            .await?;
            json!({})
        }
        "UpdateSubscription" => {
            let resp = p
                .update_subscription(pb::UpdateSubscriptionRequest {
                    session_id: r.session_id,
                    track_id: r.track_id,
                    max_spatial_layer: r.max_spatial_layer,
                    max_width: r.max_width,
                    max_height: r.max_height,
                    max_temporal_layer: r.max_temporal_layer,
                    paused: r.paused,
                    priority: r.priority,
                })
                .await?;
            json!({ "subscription": resp.subscription.as_ref().map(json::subscription_state) })
        }
        "CloseSession" => {
            p.close_session(&r.session_id).await?;
            json!({})
        }
        "GetRoom" => json!({ "room": json::room(&p.get_room(&r.room_id)?) }),
        other => {
            return Err(ApiError::NotFound(format!(
                "no demo method {}: CreateSession, Renegotiate, Subscribe, Unsubscribe, \
                 SetAnswer, UpdateSubscription, CloseSession, GetRoom",
                crate::control::limits::echo(other)
            )))
        }
    })
}

/// `POST /demo/api/{Method}`.
pub async fn api(
    State(web): State<Arc<Web>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const ROUTE: &str = "/demo/api";
    if let Err(r) = web.check_origin(&headers) {
        return web.done(ROUTE, r.into_response());
    }
    if !web.keys.is_empty() {
        // No token, no reading of the body.
        if let Err(r) = resource::bearer(&headers) {
            return web.done(ROUTE, refuse(&web, &r));
        }
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        let r = Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "the body must be application/json",
        );
        return web.done(ROUTE, refuse(&web, &r));
    }
    let bytes = match resource::read_bytes(body, MAX_BODY, web.body_deadline).await {
        Ok(b) => b,
        Err(r) => return web.done(ROUTE, refuse(&web, &r)),
    };
    let mut req: Req = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            let r = Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid JSON: {e}"),
            );
            return web.done(ROUTE, refuse(&web, &r));
        }
    };
    let claims = match authorize_target(&web, &headers, &target(&web, &method, &req)) {
        Ok(c) => c,
        Err(r) => return web.done(ROUTE, refuse(&web, &r)),
    };
    if let Some(sub) = claims.and_then(|c| c.sub) {
        // The backend chose the participant id.
        req.participant_id = sub;
    }
    let resp = match call(&web, &method, req).await {
        Ok(v) => ok(v),
        Err(e) => {
            tracing::debug!(method = %method, code = code_name(&e), "demo api error");
            api_error(&e)
        }
    };
    web.done(ROUTE, resp)
}

/// `GET /demo/events?room=NAME[&kinds=a,b]`: the room's events as
/// server-sent events, `data:` one JSON event each (the room is created
/// when needed, so a page can watch before it joins).
pub async fn events(State(web): State<Arc<Web>>, uri: Uri, headers: HeaderMap) -> Response {
    const ROUTE: &str = "/demo/events";
    if let Err(r) = web.check_origin(&headers) {
        return web.done(ROUTE, r.into_response());
    }
    let room = query(&uri, "room").unwrap_or_default();
    let room = room.as_ref();
    if let Err(r) = authorize(&web, &headers, room) {
        return web.done(ROUTE, refuse(&web, &r));
    }
    let kinds = query(&uri, "kinds").unwrap_or_default();
    let kinds: Vec<&str> = kinds.split(',').filter(|s| !s.is_empty()).collect();
    let Ok(permit) = web.streams.clone().try_acquire_owned() else {
        return web.done(
            ROUTE,
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "{} event streams are open already",
                    super::MAX_EVENT_STREAMS
                ),
            ),
        );
    };
    let rx = EventFilter::parse(&kinds).and_then(|f| {
        if room.is_empty() {
            return Err(ApiError::InvalidArgument("room is required".into()));
        }
        ensure_room(&web, room)?;
        Ok((f, web.plane.watch_demo(room)?))
    });
    let (filter, rx) = match rx {
        Ok(v) => v,
        Err(e) => return web.done(ROUTE, api_error(&e)),
    };
    let slot = rx.slot;
    let stream = watch_stream(room, rx.events, filter).map(move |ev| {
        // The permit and the watcher slot live as long as the stream.
        let _held = (&permit, &slot);
        Ok::<_, Infallible>(
            SseEvent::default().data(json::event(&ev, Participants::Include).to_string()),
        )
    });
    let resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(web.keep_alive))
        .into_response();
    web.done(ROUTE, resp)
}
