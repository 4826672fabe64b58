//! Who may use the proxy. Any request it accepts becomes an authenticated GoTo call, so
//! loopback is the default, remote peers need an explicit CIDR, and once keys are
//! configured every client (loopback included) must send one in
//! `x-goto-auth-proxy-key`, compared in constant time.
//!
//! A loopback listener is still reachable from every page the user's browser opens, so
//! both listeners also check who is asking ([`check_caller`]): the
//! `Host` must be one this listener serves (DNS rebinding), and a browser request must
//! come from the listener's own origin or one in `inbound.allow_origins`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::config::{InboundSettings, TlsFiles};
use crate::error::{ErrorCode, ProxyError};

/// Decides whether a request from `peer` with these headers (the inbound key among them) may proceed.
pub(crate) fn admit(inbound: &InboundSettings, peer: IpAddr, headers: &HeaderMap) -> Result<(), ProxyError> {
    admit_address(inbound, peer)?;
    if inbound.keys.is_empty() {
        return Ok(());
    }
    let given = headers.get(crate::INBOUND_KEY_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
    // Check every key so the time taken does not say which one came close.
    let matched = inbound.keys.iter().fold(0u8, |acc, k| acc | k.expose().as_bytes().ct_eq(given).unwrap_u8());
    if matched == 1 {
        Ok(())
    } else {
        Err(ProxyError::new(
            ErrorCode::UnauthorizedClient,
            format!("missing or wrong {} header", crate::INBOUND_KEY_HEADER),
        ))
    }
}

/// The accounts the request's inbound key may use: `None` when it may use any (no key
/// is limited, or its key is not). Read only on account credentials' routes.
pub(crate) fn key_accounts<'a>(inbound: &'a InboundSettings, headers: &HeaderMap) -> Option<&'a [String]> {
    if inbound.key_accounts.iter().all(Option::is_none) {
        return None;
    }
    let given = headers.get(crate::INBOUND_KEY_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
    // Every key compared, as in `admit`: the time taken does not say which one matched.
    let mut matched = None;
    for (key, accounts) in inbound.keys.iter().zip(&inbound.key_accounts) {
        if bool::from(key.expose().as_bytes().ct_eq(given)) && matched.is_none() {
            matched = Some(accounts);
        }
    }
    matched.and_then(|a| a.as_deref())
}

// ===== browsers: Host, Origin, Sec-Fetch-Site =====

/// What the browser check decided about a request that may proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Not a browser (curl, scripts, newman send neither `Origin` nor `Sec-Fetch-Site`),
    /// or a page of the listener's own origin: answered as usual.
    Plain,
    /// A page from an origin in `allow_origins`: answered with CORS headers for exactly
    /// that origin (the value it sent).
    Cors(HeaderValue),
}

/// `Sec-Fetch-Site`, which browsers send on every request they make.
const SEC_FETCH_SITE: header::HeaderName = header::HeaderName::from_static("sec-fetch-site");

/// Decides whether a request that arrived on a connection to `local` may be served:
/// its `Host` (see [`check_host`]) and, for browsers, its origin ([`check_origin`]).
/// Checked before routing and before a token is touched. The data path's version: one
/// pass over the few names a script sends instead of three hashed lookups; the first
/// value of each name counts, as `HeaderMap::get` would take it.
pub(crate) fn check_caller(
    inbound: &InboundSettings,
    local: SocketAddr,
    headers: &HeaderMap,
) -> Result<Caller, ProxyError> {
    let (mut host, mut origin, mut site) = (None, None, None);
    for (name, value) in headers {
        if name == header::HOST {
            host.get_or_insert(value);
        } else if name == header::ORIGIN {
            origin.get_or_insert(value);
        } else if name == SEC_FETCH_SITE {
            site.get_or_insert(value);
        }
    }
    host_rule(inbound, local, host)?;
    origin_rule(inbound, local, origin, site)
}

/// The `Host` rule: the listener's own address, a loopback address or `localhost` (any
/// port), or a name in `inbound.hosts` (`["*"]`: any). A request without `Host` (HTTP/1.0
/// tools) passes: browsers always send one. This is what defeats DNS rebinding.
pub(crate) fn check_host(inbound: &InboundSettings, local: SocketAddr, headers: &HeaderMap) -> Result<(), ProxyError> {
    host_rule(inbound, local, headers.get(header::HOST))
}

fn host_rule(inbound: &InboundSettings, local: SocketAddr, host: Option<&HeaderValue>) -> Result<(), ProxyError> {
    let Some(host) = host else {
        return Ok(());
    };
    if host_is_served(inbound, local, host.as_bytes()) {
        return Ok(());
    }
    Err(ProxyError::new(
        ErrorCode::Forbidden,
        format!(
            "this listener does not serve Host {:?}: use 127.0.0.1 or localhost, or list the name in [inbound] hosts if it is yours",
            crate::error::printable(&String::from_utf8_lossy(host.as_bytes()), 100)
        ),
    ))
}

/// The browser rule: an `Origin` in `allow_origins` is served (with CORS); otherwise a
/// `Sec-Fetch-Site` of `cross-site`/`same-site`, or an `Origin` other than the
/// listener's own, is refused.
pub(crate) fn check_origin(
    inbound: &InboundSettings,
    local: SocketAddr,
    headers: &HeaderMap,
) -> Result<Caller, ProxyError> {
    origin_rule(inbound, local, headers.get(header::ORIGIN), headers.get(SEC_FETCH_SITE))
}

fn origin_rule(
    inbound: &InboundSettings,
    local: SocketAddr,
    origin: Option<&HeaderValue>,
    site: Option<&HeaderValue>,
) -> Result<Caller, ProxyError> {
    if let Some(o) = origin {
        if inbound.allow_origins.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(o.as_bytes())) {
            return Ok(Caller::Cors(o.clone()));
        }
    }
    if let Some(site) = site {
        let site = site.as_bytes();
        if site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site") {
            return Err(refused_origin("a page of another site"));
        }
    }
    match origin {
        Some(o) if !is_own_origin(inbound, local, o.as_bytes()) => Err(refused_origin("a page of another origin")),
        _ => Ok(Caller::Plain),
    }
}

fn refused_origin(what: &str) -> ProxyError {
    ProxyError::new(
        ErrorCode::Forbidden,
        format!("refused: this request was made by {what} in a browser; list its origin in [inbound] allow_origins to allow it"),
    )
}

/// Whether the `Host` value (`name[:port]`, `[v6][:port]`) names this listener.
fn host_is_served(inbound: &InboundSettings, local: SocketAddr, host: &[u8]) -> bool {
    let Some((name, _port)) = split_host_port(host) else {
        return false;
    };
    name_is_served(inbound, local, name)
}

fn name_is_served(inbound: &InboundSettings, local: SocketAddr, name: &[u8]) -> bool {
    // What nearly every script sends, decided without parsing an address.
    if name == b"127.0.0.1" || name.eq_ignore_ascii_case(b"localhost") {
        return true;
    }
    let literal = name.strip_prefix(b"[").and_then(|n| n.strip_suffix(b"]")).unwrap_or(name);
    if let Some(ip) = std::str::from_utf8(literal).ok().and_then(|s| s.parse::<IpAddr>().ok()) {
        let ip = ip.to_canonical();
        if ip.is_loopback() || ip == local.ip().to_canonical() {
            return true;
        }
    }
    inbound.hosts.iter().any(|h| h == "*" || h.as_bytes().eq_ignore_ascii_case(name))
}

/// `name[:port]` → (name, port); `[v6]:port` keeps its brackets in the name. `None` for
/// what is not a host at all.
fn split_host_port(host: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let (name, port) = if host.first() == Some(&b'[') {
        let end = host.iter().position(|b| *b == b']')?;
        let (name, rest) = host.split_at(end + 1);
        match rest {
            [] => (name, None),
            [b':', port @ ..] => (name, Some(port)),
            _ => return None,
        }
    } else {
        match host.iter().position(|b| *b == b':') {
            Some(i) => (&host[..i], Some(&host[i + 1..])),
            None => (host, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(std::str::from_utf8(p).ok()?.parse::<u16>().ok()?),
    };
    (!name.is_empty()).then_some((name, port))
}

/// Whether `Origin` is the listener's own: `http`/`https`, a served host, its port.
fn is_own_origin(inbound: &InboundSettings, local: SocketAddr, origin: &[u8]) -> bool {
    let (rest, default_port) = if let Some(r) = strip_prefix_ignore_case(origin, b"http://") {
        (r, 80)
    } else if let Some(r) = strip_prefix_ignore_case(origin, b"https://") {
        (r, 443)
    } else {
        return false; // `null`, file:, extensions…
    };
    match split_host_port(rest) {
        Some((name, port)) => port.unwrap_or(default_port) == local.port() && name_is_served(inbound, local, name),
        None => false,
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &s[prefix.len()..])
}

/// The answer to a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) from
/// an allowed origin: the proxy answers it itself, since it is the proxy the browser
/// asks. `None` when the request is not a preflight.
pub(crate) fn preflight<B: Default>(caller: &Caller, method: &Method, headers: &HeaderMap) -> Option<Response<B>> {
    let Caller::Cors(origin) = caller else { return None };
    if method != Method::OPTIONS {
        return None;
    }
    let wanted = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, wanted.clone());
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    add_cors(h, origin);
    Some(res)
}

/// Marks an answer to an allowed origin as readable by it (and only it).
pub(crate) fn add_cors(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// Why the inbound TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key file could not be read as PEM.
    #[error("inbound TLS: {}: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What reading it as PEM said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate and key.
    #[error("inbound TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Decides whether `peer` may connect at all: loopback always; a remote peer when it
/// is in `allow_cidrs`, or, with no CIDRs listed, when keys guard every request.
pub(crate) fn admit_address(inbound: &InboundSettings, peer: IpAddr) -> Result<(), ProxyError> {
    let peer = peer.to_canonical();
    if peer.is_loopback() || inbound.allow_cidrs.iter().any(|n| n.contains(&peer)) {
        return Ok(());
    }
    if inbound.allow_remote && inbound.allow_cidrs.is_empty() && !inbound.keys.is_empty() {
        return Ok(());
    }
    Err(ProxyError::new(
        ErrorCode::UnauthorizedClient,
        format!("{peer} is not an allowed client address (see [inbound] allow_cidrs)"),
    ))
}

/// A TLS acceptor from PEM files (rustls, ring), offering HTTP/1.1.
pub fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::File { path: files.cert.clone(), source })?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|source| TlsError::File { path: files.key.clone(), source })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn none() -> HeaderMap {
        HeaderMap::new()
    }

    fn key(k: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(crate::INBOUND_KEY_HEADER, HeaderValue::from_static(k));
        h
    }

    #[test]
    fn loopback_only_by_default() {
        let i = InboundSettings::default();
        assert!(admit(&i, ip("127.0.0.1"), &none()).is_ok());
        assert!(admit(&i, ip("::1"), &none()).is_ok());
        assert!(admit(&i, ip("10.1.2.3"), &none()).is_err());
    }

    #[test]
    fn cidrs_admit_remote_peers_including_mapped_v6() {
        let i = InboundSettings {
            allow_remote: true,
            allow_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        assert!(admit(&i, ip("10.1.2.3"), &none()).is_ok());
        assert!(admit(&i, ip("::ffff:10.1.2.3"), &none()).is_ok());
        assert!(admit(&i, ip("192.168.0.1"), &none()).is_err());
    }

    const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn forbidden(r: Result<Caller, ProxyError>) -> bool {
        matches!(r, Err(e) if e.code == ErrorCode::Forbidden)
    }

    /// The data path's one-pass `check_caller` decides as the admin listener's
    /// `check_host` + `check_origin` (hashed lookups) do, duplicates included: the first
    /// value of a name counts.
    #[test]
    fn one_pass_check_decides_as_the_lookups_do() {
        let i = InboundSettings { allow_origins: vec!["https://app.example".into()], ..Default::default() };
        let cases: &[&[(&'static str, &'static str)]] = &[
            &[],
            &[("host", "127.0.0.1:8080"), ("user-agent", "curl/8")],
            &[("host", "attacker.example"), ("host", "127.0.0.1:8080")],
            &[("host", "127.0.0.1:8080"), ("host", "attacker.example")],
            &[("host", "localhost:8080"), ("origin", "http://localhost:8080")],
            &[("host", "localhost:8080"), ("origin", "https://evil.example")],
            &[("host", "localhost:8080"), ("origin", "https://app.example"), ("origin", "https://evil.example")],
            &[("host", "localhost:8080"), ("sec-fetch-site", "cross-site")],
            &[("host", "localhost:8080"), ("sec-fetch-site", "same-origin"), ("sec-fetch-site", "cross-site")],
            &[("origin", "https://app.example"), ("sec-fetch-site", "cross-site"), ("host", "127.0.0.1")],
        ];
        for case in cases {
            let h = headers(case);
            let lookups = check_host(&i, LOCAL, &h).and_then(|()| check_origin(&i, LOCAL, &h));
            let one_pass = check_caller(&i, LOCAL, &h);
            assert_eq!(one_pass.as_ref().map_err(|e| e.code), lookups.as_ref().map_err(|e| e.code), "{case:?}");
        }
    }

    #[test]
    fn host_rule_serves_loopback_names_and_listed_hosts_only() {
        let i = InboundSettings::default();
        for ok in ["127.0.0.1:8080", "127.0.0.1", "localhost:1", "LOCALHOST", "[::1]:8080", "127.9.9.9:80"] {
            assert!(check_caller(&i, LOCAL, &headers(&[("host", ok)])).is_ok(), "{ok}");
        }
        assert!(check_caller(&i, LOCAL, &HeaderMap::new()).is_ok(), "no Host: HTTP/1.0 tools");
        for bad in [
            "attacker.example:8080",
            "attacker.example",
            "127.0.0.1.nip.io",
            "localhost.evil",
            "[::1]x",
            ":80",
            "10.0.0.1",
        ] {
            assert!(forbidden(check_caller(&i, LOCAL, &headers(&[("host", bad)]))), "{bad}");
        }
        // The listener's own (non-loopback) address is served.
        let remote: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        assert!(check_caller(&i, remote, &headers(&[("host", "10.0.0.1:8080")])).is_ok());
        let listed = InboundSettings { hosts: vec!["proxy.internal".into()], ..Default::default() };
        assert!(check_caller(&listed, LOCAL, &headers(&[("host", "Proxy.Internal:8080")])).is_ok());
        let any = InboundSettings { hosts: vec!["*".into()], ..Default::default() };
        assert!(check_caller(&any, LOCAL, &headers(&[("host", "attacker.example")])).is_ok());
    }

    #[test]
    fn browsers_from_elsewhere_are_refused_and_own_origin_served() {
        let i = InboundSettings::default();
        let host = ("host", "127.0.0.1:8080");
        assert!(forbidden(check_caller(&i, LOCAL, &headers(&[host, ("sec-fetch-site", "cross-site")]))));
        assert!(forbidden(check_caller(&i, LOCAL, &headers(&[host, ("sec-fetch-site", "same-site")]))));
        assert!(forbidden(check_caller(&i, LOCAL, &headers(&[host, ("origin", "https://evil.example")]))));
        assert!(forbidden(check_caller(&i, LOCAL, &headers(&[host, ("origin", "null")]))));
        assert!(forbidden(check_caller(&i, LOCAL, &headers(&[host, ("origin", "http://127.0.0.1:9999")]))));
        let own = headers(&[host, ("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "same-origin")]);
        assert_eq!(check_caller(&i, LOCAL, &own).unwrap(), Caller::Plain);
        let own = headers(&[host, ("origin", "http://localhost:8080"), ("sec-fetch-site", "none")]);
        assert_eq!(check_caller(&i, LOCAL, &own).unwrap(), Caller::Plain);
        let postman = InboundSettings { allow_origins: vec!["https://web.postman.co".into()], ..Default::default() };
        let h = headers(&[host, ("origin", "https://web.postman.co"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(
            check_caller(&postman, LOCAL, &h).unwrap(),
            Caller::Cors(HeaderValue::from_static("https://web.postman.co"))
        );
    }

    #[test]
    fn preflight_answered_for_allowed_origins_only() {
        let origin = Caller::Cors(HeaderValue::from_static("https://web.postman.co"));
        let h =
            headers(&[("access-control-request-method", "POST"), ("access-control-request-headers", "content-type")]);
        let res: Response<String> = preflight(&origin, &Method::OPTIONS, &h).unwrap();
        assert_eq!(res.status(), 204);
        assert_eq!(res.headers()["access-control-allow-origin"], "https://web.postman.co");
        assert_eq!(res.headers()["access-control-allow-methods"], "POST");
        assert!(preflight::<String>(&Caller::Plain, &Method::OPTIONS, &h).is_none());
        assert!(preflight::<String>(&origin, &Method::GET, &h).is_none());
        assert!(preflight::<String>(&origin, &Method::OPTIONS, &HeaderMap::new()).is_none());
    }

    #[test]
    fn keys_required_for_everyone_once_set() {
        let i = InboundSettings {
            allow_remote: true,
            keys: vec![Secret::new("k1"), Secret::new("k2")],
            ..Default::default()
        };
        assert!(admit(&i, ip("127.0.0.1"), &none()).is_err());
        assert!(admit(&i, ip("127.0.0.1"), &key("k2")).is_ok());
        assert!(admit(&i, ip("10.9.9.9"), &key("k1")).is_ok());
        assert!(admit(&i, ip("10.9.9.9"), &key("k3")).is_err());
        let e = admit(&i, ip("127.0.0.1"), &key("k")).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnauthorizedClient);
        assert!(!e.message.contains("k1"));
    }
}
