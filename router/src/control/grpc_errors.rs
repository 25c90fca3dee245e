//! Counts control API errors in `kaskade_api_errors_total{method,code}`,
//! those the handlers return and those tonic answers before a handler runs
//! (a message it cannot decode or that is too large, an unknown method):
//! a tower layer that reads the `grpc-status` of each response head. An
//! error is a trailers-only response, so its status is in the head; an
//! error a stream ends with later is in its trailers and not seen here.
//! Calls refused for their API key are counted by the auth layer in front.

use prometheus::IntCounterVec;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Every method of the API's services (and of health and reflection), the
/// values of the `method` label; any other path counts as `other`, so a
/// caller cannot add label values.
const METHODS: &[&str] = &[
    // RoomService
    "CreateRoom",
    "GetRoom",
    "ListRooms",
    "DeleteRoom",
    // SessionService
    "CreateSession",
    "Renegotiate",
    "Subscribe",
    "Unsubscribe",
    "SetAnswer",
    "UpdateSubscription",
    "CloseSession",
    "GetSession",
    "WatchEvents",
    // CascadeService
    "LinkRoom",
    "UnlinkRoom",
    "ListLinks",
    // RouterService
    "Drain",
    // grpc.health.v1.Health, grpc.reflection
    "Check",
    "Watch",
    "ServerReflectionInfo",
];

/// The `method` label of a request path (`/kaskade.v1.RoomService/GetRoom`).
fn method_label(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or("");
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("other")
}

/// Counts error responses in `kaskade_api_errors_total`.
#[derive(Clone, Debug)]
pub struct ErrorCountLayer {
    errors: IntCounterVec,
}

impl ErrorCountLayer {
    /// The layer counting in `errors` (`kaskade_api_errors_total`).
    pub fn new(errors: IntCounterVec) -> Self {
        Self { errors }
    }
}

impl<S> tower::Layer<S> for ErrorCountLayer {
    type Service = ErrorCount<S>;
    fn layer(&self, inner: S) -> ErrorCount<S> {
        ErrorCount {
            inner,
            errors: self.errors.clone(),
        }
    }
}

/// The service [`ErrorCountLayer`] wraps around the gRPC routes.
#[derive(Clone, Debug)]
pub struct ErrorCount<S> {
    inner: S,
    errors: IntCounterVec,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for ErrorCount<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let errors = self.errors.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .filter(|c| *c != 0);
            if let Some(c) = code {
                let code = format!("{:?}", tonic::Code::from_i32(c));
                errors.with_label_values(&[method, code.as_str()]).inc();
                tracing::debug!(method, code = %code, "api error");
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn every_method_of_the_protos_has_its_label() {
        let protos = [
            include_str!("../../../protocol/proto/kaskade/v1/room.proto"),
            include_str!("../../../protocol/proto/kaskade/v1/session.proto"),
            include_str!("../../../protocol/proto/kaskade/v1/cascade.proto"),
            include_str!("../../../protocol/proto/kaskade/v1/router.proto"),
        ];
        let rpcs: Vec<&str> = protos
            .iter()
            .flat_map(|p| p.lines())
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .map(str::trim)
            .collect();
        assert!(rpcs.len() >= 17, "{rpcs:?}");
        for rpc in rpcs {
            assert_eq!(method_label(&format!("/kaskade.v1.X/{rpc}")), rpc);
        }
        assert_eq!(method_label("/kaskade.v1.RoomService/MadeUp"), "other");
        assert_eq!(method_label(""), "other");
    }

    #[tokio::test]
    async fn errors_answered_before_a_handler_are_counted() {
        let errors = IntCounterVec::new(prometheus::Opts::new("e", "e"), &["method", "code"])
            .expect("a valid metric");
        // What tonic answers for a message it cannot decode, and for a success.
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let resp = if req.uri().path().ends_with("/GetRoom") {
                tonic::Status::internal("failed to decode").into_http::<()>()
            } else {
                http::Response::new(())
            };
            Ok::<_, std::convert::Infallible>(resp)
        });
        let mut svc = ErrorCountLayer::new(errors.clone()).layer(inner);
        for path in [
            "/kaskade.v1.RoomService/GetRoom",
            "/kaskade.v1.RoomService/ListRooms",
        ] {
            let req = http::Request::builder()
                .uri(path)
                .body(())
                .expect("a valid request");
            let _ = svc.ready().await.expect("ready").call(req).await;
        }
        let count = |m: &str, c: &str| errors.with_label_values(&[m, c]).get();
        assert_eq!(count("GetRoom", "Internal"), 1);
        assert_eq!(count("ListRooms", "Ok"), 0);
    }
}
