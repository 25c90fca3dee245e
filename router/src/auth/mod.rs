//! Who may call the router.
//!
//! - **API keys** ([`KeySet`]): an id and a secret. The backend sends
//!   `authorization: Bearer <secret>` on every gRPC call ([`grpc`]). Keys come
//!   from `KASKADE_API_KEYS` (`id:secret,id:secret`: the router then knows
//!   the secret) and from `api.keys` in the file (an id and the SHA-256 of
//!   the secret, so the file holds no secret). The router keeps only
//!   digests for authentication and compares them in constant time.
//! - **Room tokens** ([`token`]): short-lived JWTs (HS256, `kid` = key id)
//!   that a backend mints for a client that is not the backend (WHIP/WHEP),
//!   for one room and some grants. Verifying one needs the key's secret, so
//!   only keys given through `KASKADE_API_KEYS` can sign tokens.

pub mod grpc;
pub mod token;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{digest, SHA256};
use serde::Deserialize;

/// The environment variable that carries `id:secret` pairs.
pub const API_KEYS_ENV: &str = "KASKADE_API_KEYS";

/// Shortest secret accepted: 16 bytes of a random secret is what a brute
/// force cannot guess.
pub const MIN_SECRET_LEN: usize = 16;

/// One `[[api.keys]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The key id (logged, never secret).
    pub id: String,
    /// The SHA-256 of the secret, 64 hex digits (`printf %s SECRET | sha256sum`).
    pub sha256: String,
}

/// A bad key definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not `id:secret`.
    #[error("entry {0} is not id:secret")]
    NotIdSecret(usize),
    /// The id is not 1-64 letters, digits, '-' or '_'.
    #[error("key id {0:?} must be 1-64 letters, digits, '-' or '_'")]
    BadId(String),
    /// The secret is too short.
    #[error("the secret of key {0:?} is shorter than {MIN_SECRET_LEN} characters")]
    ShortSecret(String),
    /// `sha256` is not 64 hex digits.
    #[error("the sha256 of key {0:?} is not 64 hex digits")]
    BadDigest(String),
    /// Two keys with one id.
    #[error("key id {0:?} is defined twice")]
    Duplicate(String),
}

/// One API key.
#[derive(Clone)]
pub struct ApiKey {
    /// Its id.
    pub id: String,
    digest: [u8; 32],
    secret: Option<Vec<u8>>,
}

impl ApiKey {
    /// The secret, if the router was given it (tokens need it).
    pub fn secret(&self) -> Option<&[u8]> {
        self.secret.as_deref()
    }
}

/// The API keys the router accepts. Its `Debug` shows ids only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<ApiKey>,
}

impl PartialEq for ApiKey {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id && self.digest == o.digest
    }
}
impl Eq for ApiKey {}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.id))
            .finish()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn sha256(secret: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, secret).as_ref());
    out
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

impl KeySet {
    /// Keys from the file's entries and from `KASKADE_API_KEYS` text.
    pub fn build(file: &[ApiKeyEntry], env: Option<&str>) -> Result<Self, KeyError> {
        let mut set = KeySet::default();
        for e in file {
            let digest = from_hex(&e.sha256).ok_or_else(|| KeyError::BadDigest(e.id.clone()))?;
            set.add(ApiKey {
                id: e.id.clone(),
                digest,
                secret: None,
            })?;
        }
        let env = env.unwrap_or("");
        for (i, pair) in env.split(',').map(str::trim).enumerate() {
            if pair.is_empty() {
                continue;
            }
            let (id, secret) = pair.split_once(':').ok_or(KeyError::NotIdSecret(i + 1))?;
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyError::ShortSecret(id.to_string()));
            }
            set.add(ApiKey {
                id: id.to_string(),
                digest: sha256(secret.as_bytes()),
                secret: Some(secret.as_bytes().to_vec()),
            })?;
        }
        Ok(set)
    }

    fn add(&mut self, k: ApiKey) -> Result<(), KeyError> {
        if !valid_id(&k.id) {
            return Err(KeyError::BadId(k.id));
        }
        if self.keys.iter().any(|o| o.id == k.id) {
            return Err(KeyError::Duplicate(k.id));
        }
        self.keys.push(k);
        Ok(())
    }

    /// Whether no key is configured (the API is then open).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether some key has its secret here (from `KASKADE_API_KEYS`), which
    /// room tokens need: keys known by digest only verify none.
    pub fn can_verify_tokens(&self) -> bool {
        self.keys.iter().any(|k| k.secret.is_some())
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&ApiKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The id of the key whose secret is `secret`. Every key is compared,
    /// in constant time, whatever matches.
    pub fn authenticate(&self, secret: &[u8]) -> Option<&str> {
        let d = sha256(secret);
        let mut found = None;
        for k in &self.keys {
            if verify_slices_are_equal(&d, &k.digest).is_ok() {
                found = Some(k.id.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "0123456789abcdef-secret";

    #[test]
    fn keys_from_env_and_file_authenticate_by_secret() {
        let hex: String = sha256(b"file-secret-0123456789")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let file = [ApiKeyEntry {
            id: "ops".into(),
            sha256: hex,
        }];
        let keys = KeySet::build(&file, Some(&format!("backend:{S}, ci:{S}x"))).unwrap();
        assert_eq!(keys.authenticate(S.as_bytes()), Some("backend"));
        assert_eq!(keys.authenticate(b"file-secret-0123456789"), Some("ops"));
        assert_eq!(keys.authenticate(b"nope"), None);
        assert!(keys.get("ops").unwrap().secret().is_none());
        assert_eq!(keys.get("backend").unwrap().secret(), Some(S.as_bytes()));
        let shown = format!("{keys:?}");
        assert!(!shown.contains(S), "Debug never shows secrets: {shown}");
    }

    #[test]
    fn bad_definitions_are_refused() {
        assert!(matches!(
            KeySet::build(&[], Some("nocolon")),
            Err(KeyError::NotIdSecret(1))
        ));
        assert!(matches!(
            KeySet::build(&[], Some("a:short")),
            Err(KeyError::ShortSecret(_))
        ));
        assert!(matches!(
            KeySet::build(&[], Some(&format!("a b:{S}"))),
            Err(KeyError::BadId(_))
        ));
        assert!(matches!(
            KeySet::build(&[], Some(&format!("a:{S},a:{S}"))),
            Err(KeyError::Duplicate(_))
        ));
        let bad = [ApiKeyEntry {
            id: "x".into(),
            sha256: "abc".into(),
        }];
        assert!(matches!(
            KeySet::build(&bad, None),
            Err(KeyError::BadDigest(_))
        ));
        assert!(KeySet::build(&[], Some(" , ")).unwrap().is_empty());
    }
}
