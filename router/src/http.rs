//! The metrics listener (`metrics.listen`), served by axum: `/metrics`
//! (Prometheus text), `/healthz` (the process is alive and its runtime
//! answers) and `/readyz` (it accepts new rooms and sessions; 503 while it
//! drains).

use crate::drain::Lifecycle;
use crate::listener::Incoming;
use crate::metrics::Metrics;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

const TEXT: &str = "text/plain; charset=utf-8";

/// The routes of the metrics listener.
pub fn routes(metrics: Metrics, lifecycle: Arc<Lifecycle>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        m.render(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(|| async { ([(header::CONTENT_TYPE, TEXT)], "ok\n") }),
        )
        .route(
            "/readyz",
            get(move || {
                let draining = lifecycle.is_draining();
                async move {
                    if draining {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [(header::CONTENT_TYPE, TEXT)],
                            "draining: this router accepts no new sessions\n",
                        )
                            .into_response()
                    } else {
                        ([(header::CONTENT_TYPE, TEXT)], "ready\n").into_response()
                    }
                }
            }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, TEXT)],
                "not found: try /metrics, /healthz or /readyz\n",
            )
        })
}

/// Serves `routes` on the listener's connections until `stop` resolves
/// (with a deadline for each request head: [`crate::listener::serve_http`]).
pub async fn serve(
    listener: Incoming,
    routes: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    crate::listener::serve_http("metrics", listener, routes, stop).await;
}
