//! API keys on the gRPC control API: a tower layer in front of every
//! service but `grpc.health.v1.Health` (probes stay open). A call without
//! `authorization: Bearer <secret>` of a known key gets UNAUTHENTICATED,
//! with no hint as to which keys exist; refusals are counted by reason.

use super::KeySet;
use prometheus::IntCounter;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Calls to this path prefix need no key.
const OPEN_PREFIX: &str = "/grpc.health.v1.Health/";

/// The id of the key a call was made with (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId(pub String);

#[derive(Clone)]
struct Refusals {
    missing: IntCounter,
    malformed: IntCounter,
    unknown: IntCounter,
}

/// Checks API keys (none configured: everything passes).
#[derive(Clone)]
pub struct AuthLayer {
    keys: Arc<KeySet>,
    refusals: Refusals,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("keys", &self.keys)
            .finish()
    }
}

impl AuthLayer {
    /// The layer for `keys`, counting refusals in `metrics`.
    pub fn new(keys: Arc<KeySet>, metrics: &crate::metrics::Metrics) -> Self {
        let r = &metrics.ops.auth_refusals;
        Self {
            keys,
            refusals: Refusals {
                missing: r.with_label_values(&["missing"]),
                malformed: r.with_label_values(&["malformed"]),
                unknown: r.with_label_values(&["unknown"]),
            },
        }
    }

    /// The key id for these request headers, or the refusal to count.
    fn check(&self, headers: &http::HeaderMap) -> Result<String, &IntCounter> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(&self.refusals.missing);
        };
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        let v = value.as_bytes();
        let secret = v
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .and_then(|_| v.get(7..))
            .map(<[u8]>::trim_ascii)
            .ok_or(&self.refusals.malformed)?;
        self.keys
            .authenticate(secret)
            .map(str::to_string)
            .ok_or(&self.refusals.unknown)
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the gRPC routes.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S> std::fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.layer.fmt(f)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if self.layer.keys.is_empty() || req.uri().path().starts_with(OPEN_PREFIX) {
            return Box::pin(self.inner.call(req));
        }
        match self.layer.check(req.headers()) {
            Ok(id) => {
                tracing::debug!(key = %id, method = req.uri().path(), "authenticated call");
                req.extensions_mut().insert(KeyId(id));
                Box::pin(self.inner.call(req))
            }
            Err(counter) => {
                counter.inc();
                let status = tonic::Status::unauthenticated("missing or invalid API key");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
