//! Prometheus metrics, registered in a registry passed in (no globals), so two proxies
//! can live in one test process. Names are SPEC's.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Every metric the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Requests answered, by route, method and status.
    pub requests_total: IntCounterVec,
    /// Time from request to response headers, by route.
    pub request_duration: HistogramVec,
    /// Upstream failures, by route and kind (connect, timeout, reset, aborted, body_too_large).
    pub upstream_errors: IntCounterVec,
    /// Token endpoint outcomes, by credential and outcome.
    pub token_refreshes: IntCounterVec,
    /// When each credential's current token expires (unix seconds).
    pub token_expiry: prometheus::GaugeVec,
    /// Requests retried once after the upstream rejected the token.
    pub retries: IntCounterVec,
    /// Shared-store (Redis) operations that failed, by op: replicas keep serving through
    /// them, so this is where an outage shows.
    pub store_errors: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: Registry) -> Result<Metrics, prometheus::Error> {
        let requests_total = IntCounterVec::new(
            Opts::new("goto_auth_proxy_requests_total", "Requests answered, by route, method and status."),
            &["route", "method", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "goto_auth_proxy_request_duration_seconds",
                "Time until the response headers were sent, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["route"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new("goto_auth_proxy_upstream_errors_total", "Upstream failures, by route and kind."),
            &["route", "kind"],
        )?;
        let token_refreshes = IntCounterVec::new(
            Opts::new("goto_auth_proxy_token_refreshes_total", "Token endpoint calls, by credential and outcome."),
            &["credential", "outcome"],
        )?;
        let token_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "goto_auth_proxy_token_expiry_timestamp_seconds",
                "Unix time at which the credential's current access token expires.",
            ),
            &["credential"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new("goto_auth_proxy_retries_total", "Requests retried after the upstream rejected the token."),
            &["route"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new("goto_auth_proxy_store_errors_total", "State store operations that failed, by operation."),
            &["op"],
        )?;
        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(token_refreshes.clone()))?;
        registry.register(Box::new(token_expiry.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        Ok(Metrics {
            registry,
            requests_total,
            request_duration,
            upstream_errors,
            token_refreshes,
            token_expiry,
            retries,
            store_errors,
        })
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_default()
    }
}
