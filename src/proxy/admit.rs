//! Admission and routing: everything decided about a request before anything is
//! awaited.

use std::borrow::Cow;

use http::Method;

use super::bad_request;
use super::table::{Route, Snapshot};
use crate::config::ProxySettings;
use crate::error::{ErrorCode, ProxyError};
use crate::inbound;
use crate::route;
use crate::server::ConnInfo;
use crate::upstream::Affinity;

/// Admission: the client's address and key, then who is asking (`Host`, and for a
/// browser its origin): before routing and before a token is touched.
pub(super) fn admit_caller(
    snap: &Snapshot,
    parts: &http::request::Parts,
    conn: &ConnInfo<Affinity>,
) -> Result<inbound::Caller, ProxyError> {
    inbound::admit(&snap.inbound, conn.peer.ip(), &parts.headers)?;
    inbound::check_caller(&snap.inbound, conn.local, &parts.headers)
}

/// Request-target checks, routing and the route's method list: all that is decided
/// before anything is awaited. The route and, when normalising changed it, the path; an
/// error names the route when there is one (for its metrics).
pub(super) fn route_request<'s>(
    snap: &'s Snapshot,
    parts: &http::request::Parts,
) -> Result<(&'s Route, Option<String>), Refused<'s>> {
    if parts.method == Method::CONNECT {
        return Err((None, bad_request("CONNECT is refused: this proxy only forwards to its configured upstreams")));
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        return Err((
            None,
            bad_request("absolute-form request targets are refused: send the path only, e.g. `GET /admin/rest/v1/me`"),
        ));
    }
    let path = route::normalize_path(parts.uri.path()).map_err(|e| (None, bad_request(e.to_string())))?;
    let Some(route) = snap.router.find(&path) else {
        return Err((None, ProxyError::new(ErrorCode::NoRoute, format!("no route matches {path}"))));
    };
    if let Some(methods) = &route.methods {
        if !methods.contains(&parts.method) {
            let allowed: Vec<&str> = methods.iter().map(Method::as_str).collect();
            let message =
                format!("{} is not allowed on {} (allowed: {})", parts.method, route.prefix, allowed.join(", "));
            return Err((Some(route), ProxyError::new(ErrorCode::MethodNotAllowed, message)));
        }
    }
    // The normalised path borrows nothing from the request when it is unchanged.
    let path = match path {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) => Some(p),
    };
    Ok((route, path))
}

/// A request refused before forwarding, with its route when it had one (for metrics).
pub(super) type Refused<'s> = (Option<&'s Route>, ProxyError);

pub(super) fn overloaded(settings: &ProxySettings) -> ProxyError {
    ProxyError::new(
        ErrorCode::Overloaded,
        format!("{} requests are in flight (max_concurrent_requests); retry shortly", settings.max_concurrent_requests),
    )
}
