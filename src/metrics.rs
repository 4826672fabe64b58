//! Prometheus metrics, registered in a registry passed in (no globals), so two proxies
//! can live in one test process. Names are the documented ones dashboards rely on.

use std::sync::OnceLock;

use http::{Method, StatusCode};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Every metric the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Requests answered, by route, method and status.
    pub requests_total: IntCounterVec,
    /// Time from request to response headers, by route.
    pub request_duration: HistogramVec,
    /// Upstream failures, by route and kind (connect, proxy, timeout, reset, aborted,
    /// body_too_large, protocol, body_idle); `proxy`: the outbound proxy was unreachable
    /// or refused.
    pub upstream_errors: IntCounterVec,
    /// Token endpoint outcomes, by credential and outcome.
    pub token_refreshes: IntCounterVec,
    /// When each credential's current token expires (unix seconds).
    pub token_expiry: prometheus::GaugeVec,
    /// Requests retried once after the upstream rejected the token.
    pub retries: IntCounterVec,
    /// Requests sent a second time on a new connection because the first failed them
    /// before any byte of an answer, by route and reason (`keepalive_race`,
    /// `refused_stream`, `goaway`, `closed`).
    pub upstream_retries: IntCounterVec,
    /// Requests waiting in a route's rate-limit queue now.
    pub rate_limit_queue: prometheus::IntGaugeVec,
    /// Time requests spent in a route's rate-limit queue.
    pub rate_limit_wait: HistogramVec,
    /// Config reloads, by what set them off (`signal`, `file`, `admin`) and outcome
    /// (`applied`, `refused`).
    pub reloads: IntCounterVec,
    /// Shared-store (Redis) operations that failed, by op: replicas keep serving through
    /// them, so this is where an outage shows.
    pub store_errors: IntCounterVec,
    /// `goto_auth_proxy_store_replication_timeouts_total`: saves whose `WAIT` for a
    /// Redis replica timed out (the token was used anyway).
    pub store_replication_timeouts: IntCounter,
    /// Refresh loops that ended before the proxy stopped and were started again, by
    /// credential: should stay 0; anything else is a bug worth a report.
    pub refresher_restarts: IntCounterVec,
    /// Upstream `429` answers, by route: GoTo's quota reached.
    pub upstream_throttled: IntCounterVec,
    /// Requests of a route paced by this replica alone because the shared budget
    /// (`store = "redis"`) was unreachable, by route.
    pub rate_limit_local: IntCounterVec,
    /// 1 while a credential cannot renew without a person (sign-in, password), else 0.
    pub credential_needs_login: prometheus::IntGaugeVec,
    /// `goto_auth_proxy_accounts{credential,state}`: accounts of an account credential per
    /// state (set when scraped; never an account's name).
    pub accounts: prometheus::IntGaugeVec,
    /// Notifications to a person, by event and outcome (`sent`, `failed`).
    pub notifications: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`. Long, but one statement per
    /// metric: every name, help text and label set of the metrics in one place.
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
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "goto_auth_proxy_upstream_retries_total",
                "Requests sent again on a new connection after their upstream connection failed them before any byte of an answer, by route and reason.",
            ),
            &["route", "reason"],
        )?;
        registry.register(Box::new(upstream_retries.clone()))?;
        let rate_limit_queue = prometheus::IntGaugeVec::new(
            Opts::new("goto_auth_proxy_rate_limit_queue", "Requests waiting in the route's rate-limit queue."),
            &["route"],
        )?;
        let rate_limit_wait = HistogramVec::new(
            HistogramOpts::new(
                "goto_auth_proxy_rate_limit_wait_seconds",
                "Time spent waiting for the route's rate limit.",
            )
            .buckets(vec![0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "goto_auth_proxy_config_reloads_total",
                "Configuration reloads, by trigger (signal, file, admin) and outcome (applied, refused).",
            ),
            &["trigger", "outcome"],
        )?;
        registry.register(Box::new(rate_limit_queue.clone()))?;
        registry.register(Box::new(rate_limit_wait.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
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
        let store_replication_timeouts = IntCounter::new(
            "goto_auth_proxy_store_replication_timeouts_total",
            "Token saves whose WAIT for a Redis replica timed out (the token was used anyway).",
        )?;
        registry.register(Box::new(store_replication_timeouts.clone()))?;
        let refresher_restarts = IntCounterVec::new(
            Opts::new(
                "goto_auth_proxy_refresher_restarts_total",
                "Refresh loops restarted after ending unexpectedly, by credential.",
            ),
            &["credential"],
        )?;
        registry.register(Box::new(refresher_restarts.clone()))?;
        let upstream_throttled = IntCounterVec::new(
            Opts::new("goto_auth_proxy_upstream_throttled_total", "Upstream 429 answers (quota reached), by route."),
            &["route"],
        )?;
        registry.register(Box::new(upstream_throttled.clone()))?;
        let rate_limit_local = IntCounterVec::new(
            Opts::new(
                "goto_auth_proxy_rate_limit_local_total",
                "Requests paced by this replica alone because the shared rate-limit budget (Redis) was unreachable, by route.",
            ),
            &["route"],
        )?;
        registry.register(Box::new(rate_limit_local.clone()))?;
        let credential_needs_login = prometheus::IntGaugeVec::new(
            Opts::new(
                "goto_auth_proxy_credential_needs_login",
                "1 while the credential cannot renew without a person signing in, else 0.",
            ),
            &["credential"],
        )?;
        registry.register(Box::new(credential_needs_login.clone()))?;
        let accounts = prometheus::IntGaugeVec::new(
            Opts::new("goto_auth_proxy_accounts", "Accounts of an account credential, by state."),
            &["credential", "state"],
        )?;
        registry.register(Box::new(accounts.clone()))?;
        let notifications = IntCounterVec::new(
            Opts::new("goto_auth_proxy_notifications_total", "Notifications to a person, by event and outcome."),
            &["event", "outcome"],
        )?;
        registry.register(Box::new(notifications.clone()))?;
        Ok(Metrics {
            registry,
            requests_total,
            request_duration,
            upstream_errors,
            token_refreshes,
            token_expiry,
            retries,
            upstream_retries,
            rate_limit_queue,
            rate_limit_wait,
            reloads,
            store_errors,
            store_replication_timeouts,
            refresher_restarts,
            upstream_throttled,
            rate_limit_local,
            credential_needs_login,
            accounts,
            notifications,
        })
    }

    /// Requests answered so far per route prefix (every method and status): the status
    /// page's "requests served".
    pub(crate) fn requests_by_route(&self) -> std::collections::BTreeMap<String, u64> {
        use prometheus::core::Collector as _;
        let mut out = std::collections::BTreeMap::new();
        for family in self.requests_total.collect() {
            for m in family.get_metric() {
                if let Some(route) = m.get_label().iter().find(|l| l.name() == "route") {
                    *out.entry(route.value().to_string()).or_insert(0) += m.get_counter().get_value() as u64;
                }
            }
        }
        out
    }

    /// The Prometheus text exposition of everything registered.
    pub(crate) fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_default()
    }
}

/// The standard methods, in the order [`RequestCounters`] indexes them.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// The `method` label of each slot: the standard names, then `OTHER` for the rest.
const METHOD_LABELS: [&str; METHODS.len() + 1] =
    ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "OTHER"];

/// The slot of `m` in [`METHOD_LABELS`]: its own for a standard method, else the last.
#[inline]
fn method_slot(m: &Method) -> usize {
    METHODS.iter().position(|s| s == m).unwrap_or(METHODS.len())
}

/// The `method` label for `m`: its name for the nine standard methods, `OTHER` for any
/// other, so clients cannot mint a new series per request (no label takes a value
/// from the request).
#[inline]
pub(crate) fn method_label(m: &Method) -> &'static str {
    METHOD_LABELS.get(method_slot(m)).copied().unwrap_or("OTHER")
}

/// Status codes 100..=599, one slot each.
const STATUSES: usize = 500;

/// `requests_total` handles of one route, resolved once per (method, status) and then
/// read with an atomic load: no label hashing or registry lock per request.
pub(crate) struct RequestCounters {
    vec: IntCounterVec,
    route: String,
    slots: [OnceLock<Box<[OnceLock<IntCounter>]>>; METHOD_LABELS.len()],
}

impl RequestCounters {
    /// Handles for `route`'s samples of `vec`.
    pub(crate) fn new(vec: &IntCounterVec, route: &str) -> RequestCounters {
        RequestCounters { vec: vec.clone(), route: route.to_string(), slots: Default::default() }
    }

    /// Counts one answered request; a non-standard method counts as `OTHER`.
    #[inline]
    pub(crate) fn inc(&self, method: &Method, status: StatusCode) {
        let m = method_slot(method);
        let label = METHOD_LABELS.get(m).copied().unwrap_or("OTHER");
        let s = (status.as_u16() as usize).checked_sub(100).filter(|s| *s < STATUSES);
        match (self.slots.get(m), s) {
            (Some(slot), Some(s)) => {
                let per_status = slot.get_or_init(|| (0..STATUSES).map(|_| OnceLock::new()).collect());
                if let Some(counter) = per_status.get(s) {
                    counter
                        .get_or_init(|| self.vec.with_label_values(&[self.route.as_str(), label, status.as_str()]))
                        .inc();
                }
            }
            // Statuses 600..=999 (rare, still a bounded set): looked up each time.
            _ => self.vec.with_label_values(&[self.route.as_str(), label, status.as_str()]).inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counters_land_on_the_right_labels() {
        let m = Metrics::new(Registry::new()).unwrap();
        let c = RequestCounters::new(&m.requests_total, "/G2A/");
        c.inc(&Method::GET, StatusCode::OK);
        c.inc(&Method::GET, StatusCode::OK);
        c.inc(&Method::POST, StatusCode::NOT_FOUND);
        for name in ["PROPFIND", "X-RANDOM-1", "X-RANDOM-2", "get"] {
            c.inc(&Method::from_bytes(name.as_bytes()).unwrap(), StatusCode::OK);
        }
        let text = m.render();
        assert!(
            text.contains(r#"goto_auth_proxy_requests_total{method="GET",route="/G2A/",status="200"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"goto_auth_proxy_requests_total{method="POST",route="/G2A/",status="404"} 1"#));
        assert!(
            text.contains(r#"goto_auth_proxy_requests_total{method="OTHER",route="/G2A/",status="200"} 4"#),
            "{text}"
        );
        assert!(!text.contains("PROPFIND") && !text.contains("RANDOM") && !text.contains(r#"method="get""#), "{text}");
    }

    #[test]
    fn method_labels_are_the_standard_nine_or_other() {
        for m in METHODS {
            assert_eq!(method_label(&m), m.as_str());
        }
        assert_eq!(method_label(&Method::from_bytes(b"GET").unwrap()), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"PROPFIND").unwrap()), "OTHER");
        assert_eq!(method_label(&Method::from_bytes(b"get").unwrap()), "OTHER", "methods are case-sensitive");
        let long = "X".repeat(100);
        assert_eq!(method_label(&Method::from_bytes(long.as_bytes()).unwrap()), "OTHER");
    }
}
