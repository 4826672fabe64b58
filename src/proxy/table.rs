//! Routes compiled at config load: everything a request needs of its route (target,
//! `Host`, credential, limits, metric handles) resolved once, so nothing is looked up or
//! formatted per request.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, Method};

use super::pace::RoutePace;
use crate::config::{Config, InboundSettings, ProxySettings, RouteConfig};
use crate::limit::RateLimiter;
use crate::metrics::{Metrics, RequestCounters};
use crate::outbound::Outbound;
use crate::route::Router;
use crate::token::accounts::AccountSet;
use crate::token::TokenHandle;
use crate::upstream::Target;

/// A route compiled at config load: everything per request is precomputed.
pub(crate) struct Route {
    /// The prefix, also the metrics label.
    pub prefix: String,
    /// Where requests go, with its connections.
    pub(super) target: Arc<Target>,
    /// Upstream base path without a trailing slash (usually empty).
    pub(super) base_path: String,
    /// `Host` sent upstream.
    pub(super) host: HeaderValue,
    /// Token to inject; `None` passes the request through untouched.
    pub credential: Option<RouteCredential>,
    pub(super) strip_prefix: bool,
    pub(super) methods: Option<Vec<Method>>,
    pub(super) duration: prometheus::Histogram,
    pub(super) requests: RequestCounters,
    /// Its `rate_limit` and the pause after an upstream 429.
    pub(super) pace: RoutePace,
    /// `upstream_errors{kind="aborted"}`: the upstream broke off a response body.
    pub(super) aborted: prometheus::IntCounter,
    /// `upstream_errors{kind="body_idle"}`: a body broken off after `body_idle_timeout`.
    pub(super) body_idle: prometheus::IntCounter,
    /// `proxy.body_idle_timeout`.
    pub(super) body_idle_timeout: std::time::Duration,
}

/// Whose token a route injects: one credential's, or the account each request chooses.
#[derive(Clone)]
pub(crate) enum RouteCredential {
    /// A credential with one token.
    One(TokenHandle),
    /// An account credential: the request chooses the account.
    Accounts(Arc<AccountSet>),
}

impl RouteCredential {
    /// The credential's name (logs, the access line).
    pub(crate) fn name(&self) -> &str {
        match self {
            RouteCredential::One(h) => h.name(),
            RouteCredential::Accounts(a) => a.name(),
        }
    }
}

impl Route {
    fn compile(
        cfg: &RouteConfig,
        credentials: &HashMap<String, RouteCredential>,
        metrics: &Metrics,
        outbound: &Outbound,
        connect_timeout: std::time::Duration,
        body_idle_timeout: std::time::Duration,
    ) -> Route {
        let u = &cfg.upstream;
        let via = outbound.proxy_for(u).cloned();
        let target = Arc::new(Target::new(u, outbound.upstream_tls().clone(), via, connect_timeout));
        Route {
            prefix: cfg.prefix.clone(),
            host: HeaderValue::from_str(target.authority().as_str()).unwrap_or(HeaderValue::from_static("invalid")),
            target,
            base_path: u.path().trim_end_matches('/').to_string(),
            credential: cfg.credential.as_ref().and_then(|c| credentials.get(c).cloned()),
            strip_prefix: cfg.strip_prefix,
            methods: cfg.methods.clone(),
            duration: metrics.request_duration.with_label_values(&[&cfg.prefix]),
            requests: RequestCounters::new(&metrics.requests_total, &cfg.prefix),
            pace: RoutePace {
                local: cfg.rate_limit.map_or_else(RateLimiter::unlimited, RateLimiter::new),
                limited: cfg.rate_limit.is_some(),
                retry_429: cfg.retry_429,
                queue: metrics.rate_limit_queue.with_label_values(&[&cfg.prefix]),
                wait: metrics.rate_limit_wait.with_label_values(&[&cfg.prefix]),
                throttled: metrics.upstream_throttled.with_label_values(&[&cfg.prefix]),
                local_fallback: metrics.rate_limit_local.with_label_values(&[&cfg.prefix]),
                polled: Default::default(),
            },
            aborted: metrics.upstream_errors.with_label_values(&[&cfg.prefix, "aborted"]),
            body_idle: metrics.upstream_errors.with_label_values(&[&cfg.prefix, "body_idle"]),
            body_idle_timeout,
        }
    }

    /// The upstream URL the route forwards to (for messages).
    pub(crate) fn upstream(&self) -> String {
        format!("{}{}", self.target.label, self.base_path)
    }
}

impl Drop for Route {
    /// A route goes when its table was replaced (a reload) and the last request on it has
    /// finished: client connections that outlive it then let go of its upstream connections.
    fn drop(&mut self) {
        self.target.retire();
    }
}

/// What a reload swaps: routes and the data-path settings.
pub(crate) struct Snapshot {
    /// Longest-prefix table.
    pub router: Router<Route>,
    /// Timeouts and limits.
    pub settings: ProxySettings,
    /// Who may send requests.
    pub inbound: InboundSettings,
}

impl Snapshot {
    /// Compiles the config's routes against the running credentials; upstreams are
    /// reached with `outbound`'s TLS configuration and proxy.
    pub(crate) fn compile(
        config: &Config,
        credentials: &HashMap<String, RouteCredential>,
        metrics: &Metrics,
        outbound: &Outbound,
    ) -> Snapshot {
        let router = Router::new(config.routes.iter().map(|r| {
            (
                r.prefix.clone(),
                Route::compile(
                    r,
                    credentials,
                    metrics,
                    outbound,
                    config.proxy.connect_timeout,
                    config.proxy.body_idle_timeout,
                ),
            )
        }));
        Snapshot { router, settings: config.proxy.clone(), inbound: config.inbound.clone() }
    }
}
