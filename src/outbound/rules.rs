//! Which destinations go through an outbound proxy, decided from the URL alone (no DNS),
//! as follows:
//!
//! * `proxy.outbound_proxy`, when set, carries every destination — loopback included.
//! * Otherwise `HTTPS_PROXY` (for `https://`) and `HTTP_PROXY` (for `http://`), either
//!   case, upper case first, carry every destination except loopback ones: `localhost`,
//!   127.0.0.0/8 and `::1`, decided from the URL's host.
//! * `NO_PROXY` (either case) applies in both cases: comma-separated host names (a name
//!   also covers its subdomains; a leading `.` or `*.` is the same), IP addresses, CIDRs,
//!   and `*` for everything. An entry with a port (`host.corp:8443`, `.corp:8443`,
//!   `10.0.0.1:443`, `[::1]:8080`) covers that port only: the URL's port, or 443/80
//!   by scheme.
//!
//! The environment is passed in ([`ProxyRules::new`] takes a lookup function), so the
//! rules are unit-tested without touching the process's variables.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use http::HeaderValue;

use crate::secret::Secret;

/// A forward proxy to connect through: where it is, and what to tell it.
pub(crate) struct ProxyEndpoint {
    /// Host name or IP address (without brackets), to open the TCP connection to.
    pub host: String,
    /// Its port (80 when the URL gives none).
    pub port: u16,
    /// `Basic …` of the URL's user and password (percent-decoded), marked sensitive:
    /// sent as `Proxy-Authorization`.
    pub authorization: Option<HeaderValue>,
    /// The whole URL, user info included, for clients that take a proxy URL (reqwest).
    url: Secret,
    /// `http://host:port`, or `http://***@host:port` when the URL has credentials: the
    /// only form that is printed, logged or put in an error message.
    pub shown: String,
    /// Where it came from: `proxy.outbound_proxy` or the variable's name.
    pub source: &'static str,
}

impl std::fmt::Debug for ProxyEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyEndpoint").field("shown", &self.shown).field("source", &self.source).finish()
    }
}

impl ProxyEndpoint {
    /// The endpoint of a URL that passed [`crate::config::proxy_url`].
    fn new(url: url::Url, source: &'static str) -> ProxyEndpoint {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let has_credentials = !url.username().is_empty() || url.password().is_some();
        let authorization = has_credentials.then(|| {
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            let pair = format!("{}:{}", decode(url.username()), decode(url.password().unwrap_or("")));
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            let mut value =
                HeaderValue::try_from(format!("Basic {encoded}")).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
            value.set_sensitive(true);
            value
        });
        let shown = format!(
            "http://{}{}:{port}",
            if has_credentials { "***@" } else { "" },
            url.host_str().unwrap_or_default()
        );
        ProxyEndpoint { host, port, authorization, url: Secret::new(url.as_str()), shown, source }
    }

    /// The proxy URL with its credentials, for a client library that takes one.
    pub(crate) fn url(&self) -> &Secret {
        &self.url
    }
}

/// An environment variable that holds no usable proxy URL. Names the variable, never the
/// value (it may hold a password).
#[derive(Debug, thiserror::Error)]
#[error("environment variable {var}: {why}")]
pub struct BadProxyVar {
    /// The variable.
    pub var: &'static str,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The outbound proxy decision for one configuration and environment.
#[derive(Debug, Default)]
pub(crate) struct ProxyRules {
    /// `proxy.outbound_proxy`: every destination, loopback included.
    explicit: Option<Arc<ProxyEndpoint>>,
    /// `HTTPS_PROXY`: `https://` destinations that are not loopback.
    https: Option<Arc<ProxyEndpoint>>,
    /// `HTTP_PROXY`: `http://` destinations that are not loopback.
    http: Option<Arc<ProxyEndpoint>>,
    /// `NO_PROXY`: never through a proxy.
    no_proxy: NoProxy,
}

impl ProxyRules {
    /// The rules for `explicit` (`proxy.outbound_proxy`, already checked by the config)
    /// and the environment that `env` looks variables up in (`std::env::var` in `run`).
    pub(crate) fn new(
        explicit: Option<&Secret>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ProxyRules, BadProxyVar> {
        let first = |names: [&'static str; 2]| {
            names.into_iter().find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v.trim().to_string())))
        };
        let from_env = |names| -> Result<Option<Arc<ProxyEndpoint>>, BadProxyVar> {
            let Some((var, value)) = first(names) else { return Ok(None) };
            // `proxy.corp:3128` is common in the environment; it means http://.
            let value = if value.contains("://") { value } else { format!("http://{value}") };
            let url = crate::config::proxy_url(&value).map_err(|why| BadProxyVar { var, why })?;
            Ok(Some(Arc::new(ProxyEndpoint::new(url, var))))
        };
        let explicit = explicit
            .and_then(|s| crate::config::proxy_url(s.expose()).ok())
            .map(|u| Arc::new(ProxyEndpoint::new(u, "proxy.outbound_proxy")));
        Ok(ProxyRules {
            explicit,
            https: from_env(["HTTPS_PROXY", "https_proxy"])?,
            http: from_env(["HTTP_PROXY", "http_proxy"])?,
            no_proxy: first(["NO_PROXY", "no_proxy"]).map(|(_, v)| NoProxy::parse(&v)).unwrap_or_default(),
        })
    }

    /// The proxy to reach `url` through, or `None` to connect directly.
    pub(crate) fn proxy_for(&self, url: &url::Url) -> Option<&Arc<ProxyEndpoint>> {
        let host = url.host()?;
        if self.no_proxy.covers(&host, url.port_or_known_default()) {
            return None;
        }
        if let Some(p) = &self.explicit {
            return Some(p);
        }
        if is_loopback(&host) {
            return None;
        }
        match url.scheme() {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        }
    }

    /// Whether any proxy may apply at all (else clients are built without one).
    pub(crate) fn is_empty(&self) -> bool {
        self.explicit.is_none() && self.https.is_none() && self.http.is_none()
    }

    /// What `check` prints: which proxy carries what, and `NO_PROXY`; never a credential.
    pub(super) fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        match (&self.explicit, &self.https, &self.http) {
            (Some(p), ..) => out.push(format!(
                "outbound proxy: {} ({}) for every upstream, token and keys endpoint, loopback included",
                p.shown, p.source
            )),
            (None, None, None) => out.push("outbound proxy: none (direct connections)".to_string()),
            (None, https, http) => {
                for (p, which) in [(https, "https://"), (http, "http://")] {
                    if let Some(p) = p {
                        out.push(format!(
                            "outbound proxy: {} ({}) for {which} destinations except loopback",
                            p.shown, p.source
                        ));
                    }
                }
            }
        }
        if !self.no_proxy.is_empty() {
            out.push(format!("  not through the proxy (NO_PROXY): {}", self.no_proxy));
        }
        out
    }
}

/// Whether `host` is a loopback destination: `localhost`, 127.0.0.0/8 or `::1`, from the
/// URL alone, without a DNS lookup.
fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// `NO_PROXY`: destinations that never go through a proxy. An entry with a port covers
/// that port only (`None`: every port).
#[derive(Debug, Default)]
struct NoProxy {
    /// `*`: nothing goes through a proxy.
    all: bool,
    /// Host names, lowercase, without a leading `.`/`*.` or trailing `.`; each covers
    /// itself and its subdomains.
    names: Vec<(String, Option<u16>)>,
    /// Addresses (as /32 or /128) and networks.
    nets: Vec<(ipnet::IpNet, Option<u16>)>,
}

impl NoProxy {
    fn parse(list: &str) -> NoProxy {
        let mut out = NoProxy::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                out.all = true;
                continue;
            }
            // A port that is no number makes the entry cover nothing (it is left out).
            let Some((host, port)) = split_port(entry) else { continue };
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(net) = bare.parse::<ipnet::IpNet>() {
                out.nets.push((net, port));
            } else if let Ok(ip) = bare.parse::<IpAddr>() {
                out.nets.push((ipnet::IpNet::from(ip), port));
            } else {
                let name = host.trim_start_matches("*.").trim_start_matches('.').trim_end_matches('.');
                if !name.is_empty() {
                    out.names.push((name.to_ascii_lowercase(), port));
                }
            }
        }
        out
    }

    /// Whether a destination at `host` and `port` (the URL's, or its scheme's default)
    /// is reached directly.
    fn covers(&self, host: &url::Host<&str>, port: Option<u16>) -> bool {
        if self.all {
            return true;
        }
        let port_ok = |p: &Option<u16>| p.is_none() || *p == port;
        let ip = match host {
            url::Host::Domain(d) => {
                let d = d.trim_end_matches('.');
                return self.names.iter().any(|(n, p)| {
                    port_ok(p)
                        && d.len() >= n.len()
                        && d[d.len() - n.len()..].eq_ignore_ascii_case(n)
                        && (d.len() == n.len() || d.as_bytes()[d.len() - n.len() - 1] == b'.')
                });
            }
            url::Host::Ipv4(ip) => IpAddr::V4(*ip),
            url::Host::Ipv6(ip) => IpAddr::V6(*ip),
        };
        self.nets.iter().any(|(n, p)| port_ok(p) && n.contains(&ip))
    }

    fn is_empty(&self) -> bool {
        !self.all && self.names.is_empty() && self.nets.is_empty()
    }
}

/// A `NO_PROXY` entry's host and port: `host.corp:8443`, `10.0.0.1:443` and
/// `[::1]:8080` have one; `host.corp`, `[::1]` and a bare IPv6 address or network
/// (`fd00::1`, `fd00::/8`: more than one colon) have none. `None` when the port is not
/// a number.
fn split_port(entry: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((_, "")) | None => Some((entry, None)),
            Some((inner, after)) => {
                let port = after.strip_prefix(':')?.parse().ok()?;
                Some((&entry[..inner.len() + 2], Some(port)))
            }
        };
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => Some((host, Some(port.parse().ok()?))),
        _ => Some((entry, None)),
    }
}

impl std::fmt::Display for NoProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |p: &Option<u16>| p.map(|p| format!(" (port {p} only)")).unwrap_or_default();
        let mut parts: Vec<String> = Vec::new();
        if self.all {
            parts.push("* (everything)".to_string());
        }
        parts.extend(self.names.iter().map(|(n, p)| format!("{n} and its subdomains{}", on(p))));
        parts.extend(self.nets.iter().map(|(n, p)| format!("{n}{}", on(p))));
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(explicit: Option<&str>, env: &[(&str, &str)]) -> ProxyRules {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let explicit = explicit.map(Secret::new);
        ProxyRules::new(explicit.as_ref(), |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).unwrap()
    }

    fn via(r: &ProxyRules, url: &str) -> Option<String> {
        r.proxy_for(&url::Url::parse(url).unwrap()).map(|p| format!("{}:{}", p.host, p.port))
    }

    #[test]
    fn the_explicit_proxy_carries_everything_loopback_included() {
        let r = rules(Some("http://proxy.corp:3128"), &[("HTTPS_PROXY", "http://env-proxy:8080")]);
        for url in
            ["https://api.getgo.com/", "http://gateway.local:8080/", "https://127.0.0.1:8443/", "http://localhost/"]
        {
            assert_eq!(via(&r, url).as_deref(), Some("proxy.corp:3128"), "{url}");
        }
    }

    #[test]
    fn the_environment_never_applies_to_loopback() {
        let r = rules(None, &[("HTTPS_PROXY", "http://env-proxy:8080"), ("http_proxy", "plain-proxy:3128")]);
        assert_eq!(via(&r, "https://api.getgo.com/").as_deref(), Some("env-proxy:8080"));
        assert_eq!(via(&r, "http://gateway.corp/").as_deref(), Some("plain-proxy:3128"), "no scheme means http://");
        for url in [
            "https://localhost:8443/",
            "https://LOCALHOST./",
            "https://127.0.0.1/",
            "https://127.9.9.9/",
            "https://[::1]:8443/",
        ] {
            assert_eq!(via(&r, url), None, "{url}");
        }
        // A name that merely looks local is not loopback: no DNS is asked.
        assert_eq!(via(&r, "https://localhost.corp/").as_deref(), Some("env-proxy:8080"));
        // Each variable for its own scheme.
        let only_https = rules(None, &[("https_proxy", "http://p:1")]);
        assert_eq!(via(&only_https, "http://gateway.corp/"), None);
    }

    #[test]
    fn no_proxy_takes_names_suffixes_ips_cidrs_and_star_in_both_cases() {
        let no = "internal.corp, .svc.cluster.local,*.lan, 10.0.0.0/8, 192.168.1.7, [fd00::1], localhost";
        for explicit in [Some("http://proxy.corp:3128"), None] {
            let r = rules(explicit, &[("HTTPS_PROXY", "http://proxy.corp:3128"), ("no_proxy", no)]);
            for direct in [
                "https://internal.corp/",
                "https://api.INTERNAL.corp/",
                "https://redis.svc.cluster.local/",
                "https://svc.cluster.local/",
                "https://printer.lan/",
                "https://10.1.2.3/",
                "https://192.168.1.7/",
                "https://[fd00::1]/",
                "https://localhost:9/",
            ] {
                assert_eq!(via(&r, direct), None, "{direct} with explicit {explicit:?}");
            }
            for proxied in ["https://notinternal.corp/", "https://192.168.1.8/", "https://api.getgo.com/"] {
                assert_eq!(via(&r, proxied).as_deref(), Some("proxy.corp:3128"), "{proxied}");
            }
        }
        let star = rules(Some("http://proxy.corp:3128"), &[("NO_PROXY", "*")]);
        assert_eq!(via(&star, "https://api.getgo.com/"), None);
        assert_eq!(via(&star, "https://10.0.0.1/"), None, "`*` covers addresses too");
    }

    #[test]
    fn no_proxy_entries_with_a_port_cover_that_port_only() {
        let no = "host.corp:8443, .svc.corp:9443, 10.0.0.1:443, [::1]:8080, 192.168.0.0/16:8080, [fd00::/8]:443, fd01::1, plain.corp";
        for explicit in [Some("http://proxy.corp:3128"), None] {
            let r = rules(
                explicit,
                &[
                    ("HTTPS_PROXY", "http://proxy.corp:3128"),
                    ("HTTP_PROXY", "http://proxy.corp:3128"),
                    ("NO_PROXY", no),
                ],
            );
            for direct in [
                "https://host.corp:8443/",
                "https://api.host.corp:8443/",
                "https://redis.svc.corp:9443/",
                "https://10.0.0.1/",
                "https://10.0.0.1:443/",
                "http://10.0.0.1:443/",
                "http://192.168.4.5:8080/",
                "https://[fd00::7]/",
                "https://[fd01::1]:1234/",
                "https://plain.corp:1/",
            ] {
                assert_eq!(via(&r, direct), None, "{direct} with explicit {explicit:?}");
            }
            let mut proxied = vec![
                "https://host.corp/",
                "https://host.corp:8444/",
                "https://xhost.corp:8443/",
                "https://redis.svc.corp/",
                "https://10.0.0.1:8443/",
                "http://10.0.0.1/",
                "https://192.168.4.5/",
                "https://[fd00::7]:8443/",
            ];
            if explicit.is_some() {
                // Loopback goes through the explicit proxy unless NO_PROXY says otherwise.
                proxied.push("http://[::1]:8081/");
                assert_eq!(via(&r, "http://[::1]:8080/"), None);
            }
            for url in proxied {
                assert_eq!(via(&r, url).as_deref(), Some("proxy.corp:3128"), "{url} with explicit {explicit:?}");
            }
        }
        // A port that is no number covers nothing; the other entries still apply.
        let r = rules(Some("http://proxy.corp:3128"), &[("NO_PROXY", "host.corp:https, [::1]:x, ok.corp")]);
        assert_eq!(via(&r, "https://host.corp/").as_deref(), Some("proxy.corp:3128"));
        assert_eq!(via(&r, "https://ok.corp/"), None);
        let shown = rules(None, &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "host.corp:8443, [::1]:8080")]);
        let shown = shown.describe().join("\n");
        assert!(shown.contains("host.corp and its subdomains (port 8443 only), ::1/128 (port 8080 only)"), "{shown}");
    }

    #[test]
    fn credentials_become_a_sensitive_basic_header_and_are_never_shown() {
        let r = rules(Some("http://al%40ice:pa%3As5@proxy.corp:3128"), &[]);
        let p = r.proxy_for(&url::Url::parse("https://api.getgo.com/").unwrap()).unwrap();
        let h = p.authorization.as_ref().unwrap();
        assert!(h.is_sensitive());
        let expected = base64::engine::general_purpose::STANDARD.encode("al@ice:pa:s5");
        assert_eq!(h.to_str().unwrap(), format!("Basic {expected}"));
        assert_eq!(p.shown, "http://***@proxy.corp:3128");
        let described = r.describe().join("\n");
        assert!(described.contains("http://***@proxy.corp:3128 (proxy.outbound_proxy)"), "{described}");
        assert!(!described.contains("ice") && !described.contains("s5"), "{described}");
        assert!(!format!("{p:?}").contains("s5"));
        let plain = rules(Some("http://proxy.corp"), &[]);
        let p = plain.proxy_for(&url::Url::parse("https://x/").unwrap()).unwrap();
        assert_eq!((p.port, p.authorization.is_none(), p.shown.as_str()), (80, true, "http://proxy.corp:80"));
    }

    #[test]
    fn a_bad_environment_value_names_the_variable_not_the_value() {
        let env = |name: &str| (name == "HTTPS_PROXY").then(|| "socks5://user:s3cret@p:1080".to_string());
        let e = ProxyRules::new(None, env).unwrap_err().to_string();
        assert!(e.starts_with("environment variable HTTPS_PROXY: must be an http:// URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}
