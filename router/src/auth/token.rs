//! Room-scoped tokens: JWTs signed HS256 with an API key's secret, `kid` =
//! the key id, so a backend can mint them with any JWT library.
//!
//! Claims: `room` (the one room the token is good for), `publish` and
//! `subscribe` (the grants), `exp` and `iat` (seconds since the Unix epoch)
//! and optionally `sub` (the participant id the client should take).
//!
//! ```text
//! header  {"alg":"HS256","typ":"JWT","kid":"backend"}
//! claims  {"room":"standup","publish":true,"subscribe":true,"iat":1767225600,"exp":1767229200}
//! ```
//!
//! Verification ([`verify`]) accepts only `alg` HS256 (no `none`, no other
//! algorithm), checks the signature in constant time, then the expiry, the
//! room and the grant.

use super::KeySet;
use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest token accepted (a hostile client sends anything).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// What a token lets its holder do in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Send media (WHIP, publishing sessions).
    Publish,
    /// Receive media (WHEP, subscriptions).
    Subscribe,
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The room.
    pub room: String,
    /// May publish.
    #[serde(default)]
    pub publish: bool,
    /// May subscribe.
    #[serde(default)]
    pub subscribe: bool,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// The participant id the client should take, if the backend chose one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default)]
    kid: String,
}

/// Why a token is refused. Say no more than "invalid token" to the client;
/// these are for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or too long.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not HS256 (`none` included).
    #[error("unsupported token algorithm")]
    Algorithm,
    /// `kid` names no key that has a secret here.
    #[error("unknown token key")]
    UnknownKey,
    /// The signature does not match (tampered, or another key's).
    #[error("bad token signature")]
    Signature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// For another room.
    #[error("token is for another room")]
    WrongRoom,
    /// The grant asked for is not in the token.
    #[error("token does not grant this")]
    NotGranted,
}

impl TokenError {
    /// A short label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::WrongRoom => "wrong_room",
            TokenError::NotGranted => "not_granted",
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Claims {
    /// Claims for `room`, issued at `now`, valid for `ttl`, with no grant yet.
    pub fn new(room: &str, now: SystemTime, ttl: Duration) -> Self {
        let iat = unix_secs(now);
        Claims {
            room: room.to_string(),
            publish: false,
            subscribe: false,
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            sub: None,
        }
    }
}

/// The token for `claims`, signed with `secret` under key id `kid`.
pub fn mint(kid: &str, secret: &[u8], claims: &Claims) -> String {
    let header = Header {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
        kid: kid.to_string(),
    };
    // Serialising these plain structs cannot fail.
    let h = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
    let c = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{h}.{c}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let sig = B64.encode(hmac::sign(&key, signing_input.as_bytes()).as_ref());
    format!("{signing_input}.{sig}")
}

/// Checks `token` for `room` and `grant` at `now` against `keys`.
pub fn verify(
    keys: &KeySet,
    token: &str,
    room: &str,
    grant: Grant,
    now: SystemTime,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let secret = keys
        .get(&header.kid)
        .and_then(|k| k.secret())
        .ok_or(TokenError::UnknownKey)?;
    let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signing_input = &token[..h.len() + 1 + c.len()];
    hmac::verify(&key, signing_input.as_bytes(), &sig).map_err(|_| TokenError::Signature)?;
    let claims: Claims = B64
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if unix_secs(now) >= claims.exp {
        return Err(TokenError::Expired);
    }
    if claims.room != room {
        return Err(TokenError::WrongRoom);
    }
    let granted = match grant {
        Grant::Publish => claims.publish,
        Grant::Subscribe => claims.subscribe,
    };
    if !granted {
        return Err(TokenError::NotGranted);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-backend";

    fn keys() -> KeySet {
        KeySet::build(
            &[],
            Some(&format!("backend:{SECRET},other:0123456789abcdef-other")),
        )
        .unwrap()
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_767_225_600)
    }

    fn claims(room: &str, publish: bool, ttl: u64) -> Claims {
        Claims {
            publish,
            subscribe: true,
            sub: Some("alice".into()),
            ..Claims::new(room, t0(), Duration::from_secs(ttl))
        }
    }

    fn token(room: &str, publish: bool, ttl: u64) -> String {
        mint("backend", SECRET.as_bytes(), &claims(room, publish, ttl))
    }

    #[test]
    fn a_fresh_token_verifies_for_its_room_and_grants() {
        let c = verify(&keys(), &token("r", true, 60), "r", Grant::Publish, t0()).unwrap();
        assert_eq!(c.room, "r");
        assert_eq!(c.sub.as_deref(), Some("alice"));
        assert_eq!(c.exp, c.iat + 60);
        verify(&keys(), &token("r", false, 60), "r", Grant::Subscribe, t0()).unwrap();
    }

    #[test]
    fn expiry_room_and_grant_are_checked() {
        let k = keys();
        let t = token("r", false, 60);
        let later = t0() + Duration::from_secs(60);
        assert_eq!(
            verify(&k, &t, "r", Grant::Subscribe, later),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&k, &t, "s", Grant::Subscribe, t0()),
            Err(TokenError::WrongRoom)
        );
        assert_eq!(
            verify(&k, &t, "r", Grant::Publish, t0()),
            Err(TokenError::NotGranted)
        );
    }

    #[test]
    fn another_keys_secret_or_an_unknown_kid_fails() {
        let k = keys();
        // Signed with another key's secret but claiming kid=backend.
        let forged = mint("backend", b"0123456789abcdef-other", &claims("r", true, 60));
        assert_eq!(
            verify(&k, &forged, "r", Grant::Publish, t0()),
            Err(TokenError::Signature)
        );
        let unknown = mint("nobody", SECRET.as_bytes(), &claims("r", true, 60));
        assert_eq!(
            verify(&k, &unknown, "r", Grant::Publish, t0()),
            Err(TokenError::UnknownKey)
        );
        // A key known only by its digest (from the file) cannot verify tokens.
        let hex: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, SECRET.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let file_only = KeySet::build(
            &[super::super::ApiKeyEntry {
                id: "backend".into(),
                sha256: hex,
            }],
            None,
        )
        .unwrap();
        let t = token("r", true, 60);
        assert_eq!(
            verify(&file_only, &t, "r", Grant::Publish, t0()),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn tampered_claims_fail_the_signature() {
        let t = token("r", false, 60);
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims: Claims = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        claims.publish = true;
        claims.room = "s".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert_eq!(
            verify(&keys(), &forged, "s", Grant::Publish, t0()),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn alg_none_and_garbage_are_refused() {
        let t = token("r", true, 60);
        let parts: Vec<&str> = t.split('.').collect();
        let none = B64.encode(br#"{"alg":"none","typ":"JWT","kid":"backend"}"#);
        for forged in [
            format!("{none}.{}.", parts[1]),
            format!("{none}.{}.{}", parts[1], parts[2]),
        ] {
            assert_eq!(
                verify(&keys(), &forged, "r", Grant::Publish, t0()),
                Err(TokenError::Algorithm)
            );
        }
        let hs512 = B64.encode(br#"{"alg":"HS512","kid":"backend"}"#);
        let forged = format!("{hs512}.{}.{}", parts[1], parts[2]);
        assert_eq!(
            verify(&keys(), &forged, "r", Grant::Publish, t0()),
            Err(TokenError::Algorithm)
        );
        for junk in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert_eq!(
                verify(&keys(), junk, "r", Grant::Publish, t0()),
                Err(TokenError::Malformed),
                "{junk:.20}"
            );
        }
    }
}
