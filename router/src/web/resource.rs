//! What WHIP (`whip.rs`) and WHEP (`whep.rs`) share: who may call
//! (room-scoped tokens, or loopback dev mode), CORS for browsers, the
//! table of live resources (one per session they created), the refusals
//! and their metric, and the resource's `PATCH`, `DELETE` and `OPTIONS`.
//!
//! Dev mode: a router with no API keys (`KASKADE_API_KEYS` unset, the
//! embedded defaults) serves WHIP and WHEP without tokens to loopback host
//! names only, like the demo; CORS is then granted to loopback origins
//! only, so a web page elsewhere cannot publish into a developer's router.
//! With API keys, every request needs `Authorization: Bearer <token>` for
//! the path's room with the endpoint's grant, and CORS is granted to any
//! origin (the token is no ambient credential a page could borrow).

use super::owner::Owner;
use super::{error, loopback_host, Web};
use crate::auth::token::{self, Claims, Grant, TokenError};
use crate::control::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use kaskade_protocol::{RoomId, SessionId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Largest SDP body (an offer at the API's limit).
pub const MAX_SDP_BODY: usize = crate::control::limits::MAX_SDP_BYTES;
/// Largest trickle ICE fragment.
pub const MAX_PATCH_BODY: usize = 16 * 1024;

/// `application/sdp`.
pub const SDP: &str = "application/sdp";
/// `application/trickle-ice-sdpfrag`.
pub const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// WHIP (publish) or WHEP (play).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// RFC 9725: ingest.
    Whip,
    /// draft-ietf-wish-whep: egress.
    Whep,
}

impl Endpoint {
    /// `whip` or `whep` (the path's first segment and the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Whip => "whip",
            Endpoint::Whep => "whep",
        }
    }

    /// The grant its token must carry.
    pub fn grant(self) -> Grant {
        match self {
            Endpoint::Whip => Grant::Publish,
            Endpoint::Whep => Grant::Subscribe,
        }
    }

    fn resource_route(self) -> &'static str {
        match self {
            Endpoint::Whip => "/whip/resource",
            Endpoint::Whep => "/whep/resource",
        }
    }
}

/// A refused request: status, short reason, and the metric's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status.
    pub status: StatusCode,
    /// `reason` of `kaskade_whip_refusals_total`.
    pub label: &'static str,
    /// Said to the client.
    pub reason: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(status: StatusCode, label: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            label,
            reason: reason.into(),
        }
    }

    /// The refusal of a control plane error.
    pub fn api(e: &ApiError) -> Self {
        let (status, label) = match e {
            ApiError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::AlreadyExists(_) | ApiError::FailedPrecondition(_) => {
                (StatusCode::CONFLICT, "conflict")
            }
            ApiError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::ResourceExhausted(_) => (StatusCode::SERVICE_UNAVAILABLE, "limit"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, label, e.to_string())
    }
}

/// The body of a request, refused past `max` bytes or when it has not
/// arrived within `deadline` ([`super::body_deadline`]).
pub async fn read_bytes(body: Body, max: usize, deadline: Duration) -> Result<Bytes, Refusal> {
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {max} bytes"),
        )),
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the body did not arrive within {deadline:?}"),
        )),
    }
}

/// The body of a request, refused past `max` bytes, after `deadline`, or
/// when not UTF-8.
pub async fn read_body(body: Body, max: usize, deadline: Duration) -> Result<String, Refusal> {
    let bytes = read_bytes(body, max, deadline).await?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "bad_sdp", "the body is not UTF-8"))
}

/// Refuses a body that is not of content type `want`.
pub fn check_content_type(headers: &HeaderMap, want: &str) -> Result<(), Refusal> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want));
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            format!("the body must be {want}"),
        ))
    }
}

/// Checks who calls: a token for `room` with `ep`'s grant, or (no API
/// keys) a loopback host name. Returns the token's claims, if any.
pub fn authorize(
    web: &Web,
    headers: &HeaderMap,
    room: &str,
    ep: Endpoint,
) -> Result<Option<Claims>, Refusal> {
    if web.keys.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !loopback_host(host) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "host",
                "this router has no API keys: WHIP and WHEP are served to loopback host names only",
            ));
        }
        return Ok(None);
    }
    let tok = bearer(headers)?;
    let not_granted = match ep {
        Endpoint::Whip => "the token does not grant publish",
        Endpoint::Whep => "the token does not grant subscribe",
    };
    token::verify(&web.keys, tok, room, ep.grant(), SystemTime::now())
        .map(Some)
        .map_err(|e| token_refusal(e, not_granted))
}

/// The token of `Authorization: Bearer <token>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "no_token",
            "Authorization: Bearer <room token> is required",
        ));
    };
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    auth.to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, tok)| tok.trim())
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                "Authorization must be Bearer <room token>",
            )
        })
}

/// The refusal of a token that did not verify (`not_granted`: what to say
/// when it lacks a grant).
pub(crate) fn token_refusal(e: TokenError, not_granted: &'static str) -> Refusal {
    let status = match e {
        TokenError::WrongRoom | TokenError::NotGranted => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let label = match e {
        TokenError::Expired => "expired",
        TokenError::WrongRoom => "wrong_room",
        TokenError::NotGranted => "not_granted",
        _ => "bad_token",
    };
    let reason = match e {
        TokenError::Expired => "the token has expired",
        TokenError::WrongRoom => "the token is for another room",
        TokenError::NotGranted => not_granted,
        _ => "invalid token",
    };
    Refusal::new(status, label, reason)
}

/// The `Access-Control-Allow-Origin` for a request, if CORS is granted:
/// any origin with tokens, loopback origins in dev mode.
fn allowed_origin(web: &Web, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    if !web.keys.is_empty() {
        return Some(HeaderValue::from_static("*"));
    }
    let o = origin.to_str().ok()?;
    let host = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))?;
    loopback_host(host).then(|| origin.clone())
}

/// Adds the CORS headers of a response to `headers`' request.
pub fn cors(web: &Web, headers: &HeaderMap, resp: &mut Response) {
    let Some(origin) = allowed_origin(web, headers) else {
        return;
    };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("location, etag, accept-patch, link"),
    );
    h.append(header::VARY, HeaderValue::from_static("origin"));
}

/// `OPTIONS` (a CORS preflight, or a client asking what is allowed).
pub fn options(web: &Web, headers: &HeaderMap, methods: &'static str) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(methods));
    h.insert("accept-post", HeaderValue::from_static(SDP));
    cors(web, headers, &mut resp);
    if resp
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, if-match"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    resp
}

/// Sends a refusal: counted, CORS headers added.
pub fn refuse(web: &Web, headers: &HeaderMap, ep: Endpoint, r: &Refusal) -> Response {
    web.metrics
        .whip_refusals
        .with_label_values(&[ep.as_str(), r.label])
        .inc();
    tracing::debug!(endpoint = ep.as_str(), reason = r.label, "request refused");
    let mut resp = error(r.status, &r.reason);
    if r.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    cors(web, headers, &mut resp);
    resp
}

/// A live WHIP or WHEP resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Its room.
    pub room: RoomId,
    /// Which endpoint made it.
    pub endpoint: Endpoint,
    /// Its entity tag (changes never: no ICE restart).
    pub etag: String,
    /// The client's ICE ufrag, from its offer (another one in a PATCH is
    /// an ICE restart).
    pub ufrag: Option<String>,
    /// Who may `PATCH` and `DELETE` it.
    pub owner: Owner,
}

/// The live resources: one per session WHIP or WHEP created. Entries of
/// sessions that ended without a `DELETE` are pruned as the table grows
/// (amortised), so it holds about as many as the router's session limit.
#[derive(Debug, Default)]
pub struct Resources {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<SessionId, Resource>,
    prune_at: usize,
}

/// Tables this small are never pruned.
const PRUNE_MIN: usize = 64;

impl Resources {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Plain data: a panic elsewhere leaves it valid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a resource; drops those whose session `alive` says has ended
    /// when the table has grown.
    pub fn insert(&self, sid: SessionId, r: Resource, alive: impl Fn(SessionId) -> bool) {
        let mut t = self.lock();
        if t.map.len() >= t.prune_at.max(PRUNE_MIN) {
            t.map.retain(|s, _| alive(*s));
            t.prune_at = t.map.len() * 2;
        }
        t.map.insert(sid, r);
    }

    /// The resource of a session.
    pub fn get(&self, sid: SessionId) -> Option<Resource> {
        self.lock().map.get(&sid).cloned()
    }

    /// Removes a resource.
    pub fn remove(&self, sid: SessionId) -> Option<Resource> {
        self.lock().map.remove(&sid)
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The client's ICE ufrag in an SDP (session or first media level).
pub fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .map(|u| u.chars().take(256).collect())
}

/// A fresh entity tag.
pub fn new_etag() -> String {
    format!("\"{:016x}\"", rand::random::<u64>())
}

/// The resource named by a path, if it is live and of this endpoint.
fn lookup(web: &Web, ep: Endpoint, room: &str, id: &str) -> Result<(SessionId, Resource), Refusal> {
    let missing = || Refusal::new(StatusCode::NOT_FOUND, "not_found", "no such resource");
    let sid = SessionId::parse(id).map_err(|_| missing())?;
    let r = web.resources.get(sid).ok_or_else(missing)?;
    if r.endpoint != ep || r.room.as_str() != room {
        return Err(missing());
    }
    Ok((sid, r))
}

/// `DELETE` of a resource: the session ends. 200, then 404.
pub async fn delete(
    web: Arc<Web>,
    ep: Endpoint,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let claims = authorize(&web, &headers, &room, ep)?;
        let (sid, res) = lookup(&web, ep, &room, &id)?;
        res.owner.check(claims.as_ref(), &headers)?;
        web.resources.remove(sid);
        match web.plane.close_session(&sid.to_string()).await {
            Ok(()) => Ok(()),
            // It ended on its own (its client vanished) before the DELETE.
            Err(ApiError::NotFound(_)) => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "the session has ended",
            )),
            Err(e) => Err(Refusal::api(&e)),
        }
    }
    .await;
    let resp = match r {
        Ok(()) => {
            let mut resp = Response::new(Body::empty());
            cors(&web, &headers, &mut resp);
            resp
        }
        Err(r) => refuse(&web, &headers, ep, &r),
    };
    web.done(ep.resource_route(), resp)
}

/// `PATCH` of a resource: trickle ICE (204: the router is ICE-lite and
/// learns the client's addresses from its checks, so candidates need no
/// action) or an ICE restart (422: not supported; `DELETE` and `POST`
/// again).
pub async fn patch(
    web: Arc<Web>,
    ep: Endpoint,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let claims = authorize(&web, &headers, &room, ep)?;
        let (sid, res) = lookup(&web, ep, &room, &id)?;
        res.owner.check(claims.as_ref(), &headers)?;
        if web.plane.get_session(&sid.to_string()).is_err() {
            web.resources.remove(sid);
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "the session has ended",
            ));
        }
        check_content_type(&headers, SDPFRAG)?;
        let frag = read_body(body, MAX_PATCH_BODY, web.body_deadline).await?;
        let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
        let restart = || {
            Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ice_restart",
                "ICE restarts are not supported: DELETE the resource and POST a new offer",
            )
        };
        // A list (`"a", "b"`) matches when one of its tags does.
        let tags = || {
            if_match
                .into_iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
        };
        match if_match.map(str::trim) {
            Some("*") => return Err(restart()),
            Some(_) if !tags().any(|t| t == res.etag) => {
                return Err(Refusal::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition",
                    "If-Match does not match the resource's ETag",
                ))
            }
            _ => {}
        }
        let ok_line = |l: &str| {
            l.is_empty() || l.starts_with("a=") || l.starts_with("m=") || l.starts_with("c=")
        };
        if !frag.lines().map(str::trim_end).all(ok_line) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_sdp",
                "not an SDP fragment (a=, m= and c= lines only)",
            ));
        }
        if let (Some(new), Some(old)) = (ice_ufrag(&frag), &res.ufrag) {
            if new != *old {
                return Err(restart());
            }
        }
        Ok(())
    }
    .await;
    let resp = match r {
        Ok(()) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            cors(&web, &headers, &mut resp);
            resp
        }
        Err(r) => refuse(&web, &headers, ep, &r),
    };
    web.done(ep.resource_route(), resp)
}

/// The `201 Created` of a new resource.
pub fn created(
    web: &Web,
    headers: &HeaderMap,
    ep: Endpoint,
    room: &str,
    sid: SessionId,
    etag: &str,
    answer: String,
) -> Response {
    let mut resp = Response::new(Body::from(answer));
    *resp.status_mut() = StatusCode::CREATED;
    let location = format!("/{}/{room}/{sid}", ep.as_str());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    cors(web, headers, &mut resp);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_prunes_ended_sessions_as_it_grows() {
        let t = Resources::default();
        let r = |i| Resource {
            room: RoomId::parse("r").unwrap(),
            endpoint: Endpoint::Whip,
            etag: format!("{i}"),
            ufrag: None,
            owner: Owner::Anyone,
        };
        for i in 0..1000u64 {
            // Only the last 10 sessions are alive.
            t.insert(SessionId(i), r(i), |s| s.0 + 10 > i);
        }
        assert!(t.len() < 2 * PRUNE_MIN, "{}", t.len());
        assert!(t.get(SessionId(999)).is_some());
    }
}
