//! Who may act on a WHIP or WHEP resource after the `POST` that made it.
//!
//! Without API keys the loopback check is all (as for the `POST`). With
//! keys, `PATCH` and `DELETE` need a valid token for the room and endpoint
//! (checked before this) that also names the resource's participant (its
//! `sub`), or, when the creating token named none, the very token that
//! created it. A room member who learns another's session id (events and
//! `GetRoom` show them) cannot end or alter that session.

use super::resource::{bearer, Refusal};
use crate::auth::token::Claims;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{digest, SHA256};
use axum::http::{HeaderMap, StatusCode};

/// The owner of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// No API keys: whoever passes the loopback check.
    Anyone,
    /// Holders of a token naming this participant.
    Participant(String),
    /// The holder of this token (its SHA-256), which named no participant.
    Token(Vec<u8>),
}

impl Owner {
    /// The owner of a resource made with `claims` (`None`: no API keys) and
    /// the token in `headers`.
    pub fn of(claims: Option<&Claims>, headers: &HeaderMap) -> Self {
        let Some(c) = claims else {
            return Owner::Anyone;
        };
        match (&c.sub, bearer(headers)) {
            (Some(sub), _) => Owner::Participant(sub.clone()),
            (None, Ok(tok)) => Owner::Token(digest(&SHA256, tok.as_bytes()).as_ref().to_vec()),
            // Claims come from a verified bearer token, so there is one; were
            // there none, nobody but the loopback-free case could act.
            (None, Err(_)) => Owner::Token(Vec::new()),
        }
    }

    /// Whether the caller with `claims` and `headers` (already verified for
    /// the room and the endpoint) may act on the resource.
    pub fn check(&self, claims: Option<&Claims>, headers: &HeaderMap) -> Result<(), Refusal> {
        let ok = match self {
            Owner::Anyone => true,
            Owner::Participant(p) => claims.and_then(|c| c.sub.as_ref()) == Some(p),
            Owner::Token(d) => bearer(headers).is_ok_and(|tok| {
                let mine = digest(&SHA256, tok.as_bytes());
                !d.is_empty() && verify_slices_are_equal(mine.as_ref(), d).is_ok()
            }),
        };
        if ok {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "not_owner",
                "the token is not for this resource's participant (nor the token that made it)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn claims(sub: Option<&str>) -> Claims {
        Claims {
            room: "r".into(),
            publish: true,
            subscribe: false,
            iat: 0,
            exp: u64::MAX,
            sub: sub.map(String::from),
        }
    }

    fn headers(tok: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = HeaderValue::from_str(&format!("Bearer {tok}")).expect("a valid header value");
        h.insert(axum::http::header::AUTHORIZATION, v);
        h
    }

    #[test]
    fn a_resource_belongs_to_its_participant_or_to_its_token() {
        let alice = claims(Some("alice"));
        let owner = Owner::of(Some(&alice), &headers("t1"));
        assert_eq!(owner, Owner::Participant("alice".into()));
        // Another token for alice (renewed) may act; one for mallory may not.
        assert!(owner.check(Some(&alice), &headers("t2")).is_ok());
        let mallory = claims(Some("mallory"));
        let refused = owner.check(Some(&mallory), &headers("t3")).unwrap_err();
        assert_eq!(
            (refused.status, refused.label),
            (StatusCode::FORBIDDEN, "not_owner")
        );
        assert!(owner.check(Some(&claims(None)), &headers("t4")).is_err());

        // Made with a token that names nobody: only that token.
        let anon = claims(None);
        let owner = Owner::of(Some(&anon), &headers("t5"));
        assert!(owner.check(Some(&anon), &headers("t5")).is_ok());
        assert!(owner.check(Some(&anon), &headers("t6")).is_err());

        // No API keys: the loopback check was all.
        assert!(Owner::of(None, &HeaderMap::new())
            .check(None, &HeaderMap::new())
            .is_ok());
    }
}
