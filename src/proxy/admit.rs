//! Admission and routing: everything decided about a request before anything is
//! awaited.

use std::borrow::Cow;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;

use super::bad_request;
use super::respond::Noted;
use super::table::{Route, Snapshot};
use crate::config::ProxySettings;
use crate::error::{ErrorCode, ProxyError};
use crate::inbound;
use crate::limit::{InFlight, InFlightGuard};
use crate::route;
use crate::server::ConnInfo;
use crate::upstream::Affinity;

/// What admission and routing decided about a request.
pub(super) enum Admitted<'s> {
    /// Refused, with its route when it had one (for its metrics).
    Refused(Option<&'s Route>, ProxyError),
    /// Answered here, never forwarded: a browser's CORS preflight.
    Answered(Response<Full<Bytes>>),
    /// To forward: its route, the path when normalising changed it, and its place
    /// among the requests in flight (`max_concurrent_requests`), held until it is answered.
    Routed { route: &'s Route, path: Option<String>, slot: InFlightGuard<'s> },
}

/// Admission, then routing (`request_filter`, `upstream_peer`), all decided before
/// anything is awaited: a place among the requests in flight, the client's address and
/// key, who is asking (a browser's preflight answered here), the request target and its
/// route.
pub(super) fn admit<'s>(
    in_flight: &'s InFlight,
    snap: &'s Snapshot,
    parts: &http::request::Parts,
    conn: &ConnInfo<Affinity>,
    noted: &mut Noted,
) -> Admitted<'s> {
    let Some(slot) = in_flight.enter() else {
        return Admitted::Refused(None, overloaded(&snap.settings));
    };
    let caller = match admit_caller(snap, parts, conn) {
        Ok(caller) => caller,
        Err(e) => return Admitted::Refused(None, e),
    };
    if let Some(answer) = inbound::preflight::<Full<Bytes>>(&caller, &parts.method, &parts.headers) {
        return Admitted::Answered(answer);
    }
    if let inbound::Caller::Cors(origin) = caller {
        noted.cors = Some(origin);
    }
    match route_request(snap, parts) {
        Err((route, e)) => Admitted::Refused(route, e),
        Ok((route, path)) => {
            noted.normalized(&path);
            Admitted::Routed { route, path, slot }
        }
    }
}

/// Admission: the client's address and key, then who is asking (`Host`, and for a
/// browser its origin): before routing and before a token is touched.
fn admit_caller(
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
fn route_request<'s>(
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
type Refused<'s> = (Option<&'s Route>, ProxyError);

fn overloaded(settings: &ProxySettings) -> ProxyError {
    ProxyError::new(
        ErrorCode::Overloaded,
        format!("{} requests are in flight (max_concurrent_requests); retry shortly", settings.max_concurrent_requests),
    )
}
