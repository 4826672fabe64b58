//! `[inbound]`: who may send requests. A listener beyond loopback needs an explicit
//! opt-in with keys or CIDRs; `hosts` and `allow_origins` are stored in the form the
//! `Host` and `Origin` headers carry them, so the data path compares bytes.

use toml::Spanned;

use super::super::raw::RawInbound;
use super::super::{InboundSettings, ProxySettings, TlsFiles};
use super::{resolve_secret, ConfigError, Locator};

/// `[inbound]`, checked against the listen addresses of `[proxy]`.
pub(super) fn validate_inbound(
    loc: &Locator<'_>,
    raw: RawInbound,
    proxy: &ProxySettings,
) -> Result<InboundSettings, ConfigError> {
    let allow_remote = raw.allow_remote.as_ref().is_some_and(|a| *a.get_ref());
    let mut keys = Vec::with_capacity(raw.keys.len());
    let mut key_accounts = Vec::with_capacity(raw.keys.len());
    for (i, k) in raw.keys.into_iter().enumerate() {
        let span = k.span();
        let entry = k.into_inner();
        keys.push(resolve_secret(loc, &toml::Spanned::new(span.clone(), entry.key), &format!("inbound.keys[{i}]"))?);
        if let Some(names) = &entry.accounts {
            if let Some(bad) = names.iter().find(|n| !crate::config::is_valid_name(n)) {
                let why = format!(
                    "{} is not an account name: 1-64 ASCII letters, digits, '_', '-' and '.'",
                    crate::config::quoted(bad)
                );
                return Err(loc.err(&span, format!("inbound.keys[{i}].accounts"), why));
            }
        }
        key_accounts.push(entry.accounts);
    }
    let mut allow_cidrs = Vec::new();
    for (i, c) in raw.allow_cidrs.iter().enumerate() {
        let net = c
            .get_ref()
            .parse::<ipnet::IpNet>()
            .or_else(|_| c.get_ref().parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                loc.err(
                    &c.span(),
                    format!("inbound.allow_cidrs[{i}]"),
                    "is not an address or CIDR such as \"10.0.0.0/8\"",
                )
            })?;
        allow_cidrs.push(net);
    }
    let tls = validate_tls(loc, raw.tls_cert, raw.tls_key)?;
    if allow_remote && keys.is_empty() && allow_cidrs.is_empty() {
        let span = raw.allow_remote.as_ref().map(Spanned::span).unwrap_or(0..0);
        return Err(loc.err(&span, "inbound.allow_remote", "needs `keys` or `allow_cidrs` (or both): otherwise anyone who can reach the proxy could call GoTo with your token"));
    }
    for (what, addr) in [("proxy.listen", proxy.listen), ("proxy.admin_listen", proxy.admin_listen)] {
        if !addr.ip().is_loopback() && !allow_remote {
            let why = format!("\"{addr}\" is not a loopback address: anyone who can reach it could call GoTo with your token; set [inbound] allow_remote = true with keys and/or allow_cidrs to allow it");
            return Err(loc.err_key(what, &(0..0), why));
        }
    }
    let hosts = validate_hosts(loc, &raw.hosts)?;
    let allow_origins = validate_origins(loc, &raw.allow_origins)?;
    Ok(InboundSettings { allow_remote, keys, key_accounts, allow_cidrs, tls, hosts, allow_origins })
}

/// `tls_cert` and `tls_key`: both or neither, each a readable file.
fn validate_tls(
    loc: &Locator<'_>,
    cert: Option<Spanned<std::path::PathBuf>>,
    key: Option<Spanned<std::path::PathBuf>>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            for (k, f) in [("inbound.tls_cert", &cert), ("inbound.tls_key", &key)] {
                if !f.get_ref().is_file() {
                    return Err(loc.err(&f.span(), k, "is not a readable file"));
                }
            }
            super::warn_if_others_read(loc, &key.span(), "inbound.tls_key", key.get_ref());
            Ok(Some(TlsFiles { cert: cert.into_inner(), key: key.into_inner() }))
        }
        (Some(c), None) => Err(loc.err(&c.span(), "inbound.tls_key", "is required with tls_cert")),
        (None, Some(k)) => Err(loc.err(&k.span(), "inbound.tls_cert", "is required with tls_key")),
    }
}

/// `inbound.hosts`: each a host name or IP address, stored as a `Host` header carries it
/// (lowercase name, dotted IPv4, bracketed IPv6); `*` alone turns the check off.
fn validate_hosts(loc: &Locator<'_>, raw: &[Spanned<String>]) -> Result<Vec<String>, ConfigError> {
    let mut hosts: Vec<String> = Vec::new();
    for (i, h) in raw.iter().enumerate() {
        let key = format!("inbound.hosts[{i}]");
        if h.get_ref() == "*" {
            if raw.len() != 1 {
                return Err(loc.err(&h.span(), key, "\"*\" serves any Host and must be the only entry"));
            }
            return Ok(vec!["*".to_string()]);
        }
        let host = normalise_host(h.get_ref()).ok_or_else(|| {
            loc.err(
                &h.span(),
                key,
                "is not a host name or IP address such as \"proxy.internal\" (no scheme, port, path or wildcard)",
            )
        })?;
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(hosts)
}

/// `inbound.allow_origins`: each a bare browser origin, normalised, duplicates dropped.
fn validate_origins(loc: &Locator<'_>, raw: &[Spanned<String>]) -> Result<Vec<String>, ConfigError> {
    let mut allow_origins: Vec<String> = Vec::new();
    for (i, o) in raw.iter().enumerate() {
        let origin = normalise_origin(o.get_ref()).ok_or_else(|| {
            loc.err(
                &o.span(),
                format!("inbound.allow_origins[{i}]"),
                "is not a browser origin such as \"https://web.postman.co\" (http or https, a host, an optional port; no path, query or user info)",
            )
        })?;
        if !allow_origins.contains(&origin) {
            allow_origins.push(origin);
        }
    }
    Ok(allow_origins)
}

/// An `inbound.hosts` entry in the form a `Host` header carries it, or `None` when it is
/// not a bare host name (letters, digits, `-`, `_`; dot-separated labels) or IP address.
fn normalise_host(s: &str) -> Option<String> {
    use std::net::{IpAddr, Ipv6Addr};
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(|v6| format!("[{v6}]"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    // A last label of digits only would make it a malformed IPv4 address, not a name.
    let last_numeric = s.rsplit('.').next().is_some_and(|l| l.bytes().all(|c| c.is_ascii_digit()));
    (s.len() <= 253 && s.split('.').all(label_ok) && !last_numeric).then(|| s.to_ascii_lowercase())
}

/// An `inbound.allow_origins` entry as browsers send `Origin`: `scheme://host[:port]`,
/// lowercase, default port omitted; `None` for anything with more (path, query, user
/// info, fragment) or less (no host), or another scheme.
fn normalise_origin(s: &str) -> Option<String> {
    let u = url::Url::parse(s).ok()?;
    let bare = matches!(u.scheme(), "http" | "https")
        && u.host_str().is_some_and(|h| !h.contains('*'))
        && u.username().is_empty()
        && u.password().is_none()
        && u.path() == "/"
        && u.query().is_none()
        && u.fragment().is_none();
    bare.then(|| u.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::super::super::fixtures::{err, GOOD};
    use super::super::super::Config;

    #[test]
    fn a_key_may_be_limited_to_accounts_named_by_the_rule() {
        let ok = format!("{GOOD}\n[inbound]\nkeys = [\"k-0pen\", {{ key = {{ env = \"PATH\" }}, accounts = [\"alice\", \"bob\"] }}]\n");
        let cfg = Config::parse("t.toml", &ok).unwrap();
        assert_eq!(cfg.inbound.keys.len(), 2);
        assert_eq!(cfg.inbound.key_accounts, vec![None, Some(vec!["alice".to_string(), "bob".to_string()])]);
        let bad = format!("{GOOD}\n[inbound]\nkeys = [{{ key = \"k-s3cret\", accounts = [\"a b\"] }}]\n");
        let e = err(&bad);
        assert!(e.contains("inbound.keys[0].accounts") && e.contains("\"a b\" is not an account name"), "{e}");
        assert!(!e.contains("k-s3cret"), "{e}");
        let both = format!("{GOOD}\n[inbound]\nkeys = [{{ env = \"PATH\", accounts = [\"alice\"] }}]\n");
        assert!(err(&both).contains("inbound.keys"), "{}", err(&both));
    }

    #[test]
    fn remote_listen_needs_opt_in_with_keys_or_cidrs() {
        let text = GOOD.replace("127.0.0.1:18080", "0.0.0.0:18080");
        let e = err(&text);
        assert!(e.contains("proxy.listen") && e.contains("not a loopback"), "{e}");
        assert!(e.starts_with("t.toml:3:"), "{e}");
        let open = format!("{text}\n[inbound]\nallow_remote = true\n");
        assert!(err(&open).contains("needs `keys` or `allow_cidrs`"));
        let ok = format!("{text}\n[inbound]\nallow_remote = true\nkeys = [\"k-secret-1\"]\nallow_cidrs = [\"10.0.0.0/8\", \"192.168.1.7\"]\n");
        let c = Config::parse("t.toml", &ok).unwrap();
        assert_eq!(c.inbound.allow_cidrs.len(), 2);
        assert!(!c.to_string().contains("k-secret-1"));
        let bad = format!("{text}\n[inbound]\nallow_remote = true\nallow_cidrs = [\"ten\"]\n");
        assert!(err(&bad).contains("inbound.allow_cidrs[0]"));
    }

    #[cfg(unix)]
    #[test]
    fn an_inbound_tls_key_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "cert").unwrap();
        std::fs::write(&key, "k3y-s3cr3t").unwrap();
        let text = format!(
            "[inbound]\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
        let warnings = Config::parse("t.toml", &text).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let expected = format!("t.toml:3: inbound.tls_key: {} is readable by other users (mode 0604)", key.display());
        assert!(warnings[0].starts_with(&expected) && !warnings[0].contains("s3cr3t"), "{warnings:?}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::parse("t.toml", &text).unwrap().warnings.is_empty());
    }

    #[test]
    fn inbound_hosts_and_origins_are_normalised() {
        let text = "[inbound]\nhosts = [\"Proxy.Internal\", \"10.0.0.5\", \"::1\", \"[2001:DB8::1]\", \"my_service\", \"proxy.internal\"]\nallow_origins = [\"https://Web.Postman.co\", \"https://web.postman.co:443/\", \"http://localhost:3000\", \"https://app.example:8443\"]\n";
        let c = Config::parse("t.toml", text).unwrap();
        assert_eq!(c.inbound.hosts, ["proxy.internal", "10.0.0.5", "[::1]", "[2001:db8::1]", "my_service"]);
        assert_eq!(
            c.inbound.allow_origins,
            ["https://web.postman.co", "http://localhost:3000", "https://app.example:8443"]
        );
        let shown = c.to_string();
        assert!(shown.contains("  hosts: proxy.internal, 10.0.0.5, [::1], [2001:db8::1], my_service"), "{shown}");
        assert!(
            shown.contains("  allow_origins: https://web.postman.co, http://localhost:3000, https://app.example:8443"),
            "{shown}"
        );
        let any = Config::parse("t.toml", "[inbound]\nhosts = [\"*\"]\n").unwrap();
        assert_eq!(any.inbound.hosts, ["*"]);
        assert!(any.to_string().contains("hosts: * (any Host is served)"));
        let none = Config::parse("t.toml", "").unwrap();
        assert!(none.inbound.hosts.is_empty() && none.inbound.allow_origins.is_empty());
        assert!(!none.to_string().contains("hosts"));
    }

    #[test]
    fn bad_inbound_hosts_and_origins_refused_without_echo() {
        for bad in [
            "http://s3cr3t.example",
            "s3cr3t.example:8080",
            "s3cr3t.example/path",
            "*.s3cr3t.example",
            "s3cr3t..example",
            "-s3cr3t.example",
            "s3cr3t example",
            "",
            "1.2.3",
            "[s3cr3t]",
            "s3cr3t@example",
        ] {
            let e = err(&format!("[inbound]\nhosts = [\"ok.example\",\n  \"{bad}\"]\n"));
            assert!(e.starts_with("t.toml:3: inbound.hosts[1]: is not a host name or IP address"), "{bad:?}: {e}");
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        let e = err("[inbound]\nhosts = [\"a.example\", \"*\"]\n");
        assert!(e.starts_with("t.toml:2: inbound.hosts[1]: \"*\" serves any Host and must be the only entry"), "{e}");
        for bad in [
            "web.s3cr3t.co",
            "https://web.s3cr3t.co/path",
            "https://web.s3cr3t.co?x=1",
            "https://web.s3cr3t.co/#x",
            "https://user:pw@web.s3cr3t.co",
            "ftp://web.s3cr3t.co",
            "https://*.s3cr3t.co",
            "null",
            "*",
            "file:///s3cr3t",
        ] {
            let e = err(&format!("[inbound]\nallow_origins = [\"{bad}\"]\n"));
            assert!(e.starts_with("t.toml:2: inbound.allow_origins[0]: is not a browser origin"), "{bad:?}: {e}");
            assert!(!e.contains(bad), "{e}");
        }
    }
}
