//! The operations metrics: process (CPU, memory, fds), build info, drain,
//! API-key refusals and the three TCP listeners. Registered in the one
//! registry of [`Metrics`](crate::metrics::Metrics).

use crate::listener::ListenerMetrics;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The commit this binary was built from (`KASKADE_BUILD_COMMIT` or git at
/// build time; "unknown" without either).
pub const BUILD_COMMIT: &str = env!("KASKADE_BUILD_COMMIT");

/// Operations metrics.
#[derive(Clone)]
pub struct OpsMetrics {
    /// 1 while the router drains.
    pub draining: IntGauge,
    /// Control API calls refused for want of a valid API key, by reason.
    pub auth_refusals: IntCounterVec,
    /// Open control API connections.
    pub control_connections: IntGauge,
    /// Control connections not accepted or cut, by reason.
    pub control_accept_errors: IntCounterVec,
    /// Open HTTP listener connections.
    pub http_connections: IntGauge,
    /// HTTP listener connections not accepted or cut, by reason.
    pub http_accept_errors: IntCounterVec,
    /// Open metrics listener connections.
    pub metrics_connections: IntGauge,
    /// Metrics listener connections not accepted or cut, by reason.
    pub metrics_accept_errors: IntCounterVec,
}

impl OpsMetrics {
    /// The control API listener's connections.
    pub fn control_listener(&self) -> ListenerMetrics {
        ListenerMetrics {
            connections: self.control_connections.clone(),
            errors: self.control_accept_errors.clone(),
        }
    }

    /// The HTTP listener's connections.
    pub fn http_listener(&self) -> ListenerMetrics {
        ListenerMetrics {
            connections: self.http_connections.clone(),
            errors: self.http_accept_errors.clone(),
        }
    }

    /// The metrics listener's connections.
    pub fn metrics_listener(&self) -> ListenerMetrics {
        ListenerMetrics {
            connections: self.metrics_connections.clone(),
            errors: self.metrics_accept_errors.clone(),
        }
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| unreachable!("metric registered once: {e}"));
    c
}

impl OpsMetrics {
    /// Creates and registers them (and the process collector) in `r`.
    pub fn new(r: &Registry) -> Self {
        let static_def =
            |e: prometheus::Error| -> ! { unreachable!("static metric definition: {e}") };
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .unwrap_or_else(|e| unreachable!("process collector registered once: {e}"));
        let info = register(
            r,
            IntGaugeVec::new(
                Opts::new("kaskade_build_info", "The running build (always 1)."),
                &["version", "commit"],
            )
            .unwrap_or_else(|e| static_def(e)),
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), BUILD_COMMIT])
            .set(1);
        Self {
            draining: register(
                r,
                IntGauge::new("kaskade_draining", "1 while the router drains.")
                    .unwrap_or_else(|e| static_def(e)),
            ),
            auth_refusals: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "kaskade_auth_refusals_total",
                        "Control API calls refused UNAUTHENTICATED (missing, malformed or unknown key).",
                    ),
                    &["reason"],
                )
                .unwrap_or_else(|e| static_def(e)),
            ),
            control_connections: register(
                r,
                IntGauge::new("kaskade_control_connections", "Open control API connections.")
                    .unwrap_or_else(|e| static_def(e)),
            ),
            control_accept_errors: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "kaskade_control_accept_errors_total",
                        "Control connections not accepted or cut: fd_limit (out of file descriptors), limit (control.max_connections), tls (handshake failed), idle (control.idle_timeout), other.",
                    ),
                    &["reason"],
                )
                .unwrap_or_else(|e| static_def(e)),
            ),
            http_connections: register(
                r,
                IntGauge::new("kaskade_http_connections", "Open HTTP listener connections.")
                    .unwrap_or_else(|e| static_def(e)),
            ),
            http_accept_errors: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "kaskade_http_accept_errors_total",
                        "HTTP listener connections not accepted or cut: fd_limit (out of file descriptors), limit (http.max_connections), tls (handshake failed or timed out), idle (http.idle_timeout), slow (a request head not complete within http.idle_timeout), other.",
                    ),
                    &["reason"],
                )
                .unwrap_or_else(|e| static_def(e)),
            ),
            metrics_connections: register(
                r,
                IntGauge::new("kaskade_metrics_connections", "Open metrics listener connections.")
                    .unwrap_or_else(|e| static_def(e)),
            ),
            metrics_accept_errors: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "kaskade_metrics_accept_errors_total",
                        "Metrics listener connections not accepted or cut: fd_limit (out of file descriptors), limit (metrics.max_connections), idle (metrics.idle_timeout), slow (a request head not complete within metrics.idle_timeout), other.",
                    ),
                    &["reason"],
                )
                .unwrap_or_else(|e| static_def(e)),
            ),
        }
    }
}
