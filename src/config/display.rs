//! What of a configuration may be printed: URLs without user info or query, the
//! redacting `Debug`s of [`CredentialConfig`] and [`RouteConfig`], and the summary
//! `check` prints (every secret `[redacted]`).

use std::fmt;

use super::{
    CaFile, ClientAuth, ClientCert, Config, CredentialConfig, GrantKind, InboundSettings, NotifyTarget, RouteConfig,
    StateSettings,
};

/// A configured URL as it may be printed or logged: scheme, host, port and path. User
/// info and query string are where URLs carry passwords and `client_secret=`
/// parameters, so they are never shown; their place is marked
/// `[redacted]` (`https://[redacted]@host/token?[redacted]`) so a reader still sees that
/// the URL has them. A fragment is marked the same way.
pub(crate) fn display_url(url: &url::Url) -> String {
    let mut out = String::with_capacity(url.as_str().len());
    out.push_str(url.scheme());
    match url.host_str() {
        Some(host) => {
            out.push_str("://");
            if !url.username().is_empty() || url.password().is_some() {
                out.push_str("[redacted]@");
            }
            out.push_str(host);
            if let Some(port) = url.port() {
                out.push(':');
                out.push_str(&port.to_string());
            }
            out.push_str(url.path());
        }
        // No host: the rest (`mailto:…`, `data:…`) is opaque and may be anything.
        None => out.push_str(":[redacted]"),
    }
    if url.query().is_some() {
        out.push_str("?[redacted]");
    }
    if url.fragment().is_some() {
        out.push_str("#[redacted]");
    }
    out
}

/// [`display_url`] for a URL kept as text (credential endpoints); text that does not
/// parse as a URL is not shown at all, since nothing can be said about what it holds.
pub(crate) fn display_url_str(url: &str) -> String {
    url::Url::parse(url).map(|u| display_url(&u)).unwrap_or_else(|_| "[not a URL]".to_string())
}

impl fmt::Debug for CredentialConfig {
    /// Secrets print as `[redacted]` through [`Secret`](super::Secret); URLs through [`display_url`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialConfig")
            .field("name", &self.name)
            .field("grant", &self.grant)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("redirect_uri", &self.redirect_uri.as_deref().map(display_url_str))
            .field("refresh_token", &self.refresh_token)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("pat", &self.pat)
            .field("token", &self.token)
            .field("token_url", &display_url_str(&self.token_url))
            .field("authorize_url", &display_url_str(&self.authorize_url))
            .field("keys_url", &display_url_str(&self.keys_url))
            .field("scope", &self.scope)
            .field("refresh_before", &self.refresh_before)
            .field("client_auth", &self.client_auth)
            .field("authorize_params", &self.authorize_params.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

impl fmt::Debug for RouteConfig {
    /// The upstream through [`display_url`], like every printed URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteConfig")
            .field("prefix", &self.prefix)
            .field("upstream", &display_url(&self.upstream))
            .field("credential", &self.credential)
            .field("strip_prefix", &self.strip_prefix)
            .field("methods", &self.methods)
            .field("rate_limit", &self.rate_limit)
            .field("retry_429", &self.retry_429)
            .finish()
    }
}

impl fmt::Debug for CaFile {
    /// The file and how many certificates it held, not their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile").field("path", &self.path).field("certs", &self.certs.len()).finish()
    }
}

impl fmt::Debug for ClientCert {
    /// The certificate file and chain length; the key `[redacted]` through [`Secret`](super::Secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("cert_file", &self.cert_file)
            .field("chain", &self.chain.len())
            .field("key", &self.key)
            .finish()
    }
}

impl fmt::Display for Config {
    /// The resolved configuration with every secret redacted, as `check` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.proxy;
        writeln!(f, "config: {}", self.source)?;
        writeln!(f, "proxy: listen {} admin {}", p.listen, p.admin_listen)?;
        writeln!(
            f,
            "  connect_timeout {} request_timeout {} body_idle_timeout {} token_wait {} max_request_body {}",
            humantime::format_duration(p.connect_timeout),
            humantime::format_duration(p.request_timeout),
            humantime::format_duration(p.body_idle_timeout),
            humantime::format_duration(p.token_wait),
            bytesize::ByteSize(p.max_request_body).to_string_as(true),
        )?;
        match &self.state {
            StateSettings::File { path } => writeln!(f, "state: file {}", path.display())?,
            StateSettings::Redis { target, prefix } => {
                let urls = if target.urls().len() == 1 { "url" } else { "urls" };
                writeln!(f, "state: redis {} [redacted {urls}] prefix {prefix}", target.mode())?
            }
        }
        let kids = self.state_key_ids();
        match kids.split_first() {
            None => writeln!(f, "  encryption: off (token records stored in plaintext)")?,
            Some((first, rest)) => {
                let rest: String = rest.iter().map(|k| format!(", {k}")).collect();
                writeln!(f, "  encryption: {} key(s), key ids: {first} (seals){rest}", kids.len())?;
            }
        }
        write_inbound(f, &self.inbound)?;
        writeln!(f, "credentials:")?;
        for c in self.credentials.values() {
            write_credential(f, c)?;
        }
        writeln!(f, "routes (longest prefix wins):")?;
        let mut routes: Vec<&RouteConfig> = self.routes.iter().collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        for r in routes {
            write_route(f, r)?;
        }
        writeln!(f, "access_log: {}", if p.access_log { "on" } else { "off" })?;
        writeln!(f, "watch_files: {}", if p.watch_files { "on" } else { "off" })?;
        for n in &self.notify {
            let events: Vec<&str> = n.events.iter().map(|e| e.as_str()).collect();
            let to = match &n.target {
                NotifyTarget::Webhook(_) => "webhook [redacted url]".to_string(),
                NotifyTarget::Command(argv) => format!("command {}", argv.first().map(String::as_str).unwrap_or("")),
            };
            writeln!(f, "notify: {to} events {} after_failures {}", events.join(","), n.after_failures)?;
        }
        Ok(())
    }
}

/// The `inbound:` line, and `hosts` and `allow_origins` when set; keys only counted.
fn write_inbound(f: &mut fmt::Formatter<'_>, i: &InboundSettings) -> fmt::Result {
    writeln!(
        f,
        "inbound: {}{}{}{}",
        if i.allow_remote { "remote allowed" } else { "loopback only" },
        if i.keys.is_empty() { String::new() } else { format!(", {} key(s) [redacted]", i.keys.len()) },
        if i.allow_cidrs.is_empty() {
            String::new()
        } else {
            format!(", cidrs {}", i.allow_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","))
        },
        if i.tls.is_some() { ", TLS" } else { "" },
    )?;
    if i.hosts.iter().any(|h| h == "*") {
        writeln!(f, "  hosts: * (any Host is served)")?;
    } else if !i.hosts.is_empty() {
        writeln!(f, "  hosts: {} (besides loopback and localhost)", i.hosts.join(", "))?;
    }
    if !i.allow_origins.is_empty() {
        writeln!(f, "  allow_origins: {}", i.allow_origins.join(", "))?;
    }
    Ok(())
}

/// One credential: its grant, its secrets as `[redacted]`, its endpoints.
fn write_credential(f: &mut fmt::Formatter<'_>, c: &CredentialConfig) -> fmt::Result {
    writeln!(f, "  {} ({})", c.name, c.grant)?;
    if let Some(id) = &c.client_id {
        writeln!(f, "    client_id: {id}")?;
    }
    let secrets = [
        ("client_secret", &c.client_secret),
        ("refresh_token", &c.refresh_token),
        ("username", &c.username),
        ("password", &c.password),
        ("pat", &c.pat),
        ("token", &c.token),
    ];
    for (k, v) in secrets {
        if let Some(v) = v {
            writeln!(f, "    {k}: {v}")?;
        }
    }
    if c.grant != GrantKind::Static {
        writeln!(f, "    token_url: {}", display_url_str(&c.token_url))?;
        if c.grant == GrantKind::AuthorizationCode {
            writeln!(f, "    authorize_url: {}", display_url_str(&c.authorize_url))?;
        }
        writeln!(f, "    keys_url: {}", display_url_str(&c.keys_url))?;
        writeln!(f, "    refresh_before: {}", humantime::format_duration(c.refresh_before))?;
        if c.client_auth != ClientAuth::default() {
            writeln!(f, "    client_auth: {}", c.client_auth.as_str())?;
        }
        if !c.authorize_params.is_empty() {
            // Names only: the values end up in a URL's query, which is never printed.
            let names: Vec<&str> = c.authorize_params.iter().map(|(k, _)| k.as_str()).collect();
            writeln!(f, "    authorize_params: {}", names.join(", "))?;
        }
        if c.accounts {
            let default = c.default_account.as_deref().map_or(String::from("none"), super::names::quoted);
            writeln!(f, "    accounts: many (default account: {default}; token_rate: {}/s)", c.token_rate)?;
        }
    }
    if let Some(r) = &c.redirect_uri {
        writeln!(f, "    redirect_uri: {}", display_url_str(r))?;
    }
    Ok(())
}

/// One route on one line: prefix, upstream, credential and its options.
fn write_route(f: &mut fmt::Formatter<'_>, r: &RouteConfig) -> fmt::Result {
    let cred = r.credential.as_deref().unwrap_or("(none: passed through untouched)");
    write!(f, "  {} -> {} credential {}", r.prefix, display_url(&r.upstream).trim_end_matches('/'), cred)?;
    if r.strip_prefix {
        write!(f, " strip_prefix")?;
    }
    if let Some(m) = &r.methods {
        let m: Vec<&str> = m.iter().map(http::Method::as_str).collect();
        write!(f, " methods {}", m.join(","))?;
    }
    if let Some(l) = r.rate_limit {
        write!(f, " rate_limit {l}/s")?;
    }
    if r.retry_429 {
        write!(f, " retry_429")?;
    }
    writeln!(f)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::GOOD;
    use super::*;

    #[test]
    fn display_url_drops_user_info_and_query() {
        let u = url::Url::parse("https://user:pa55@auth.example:8443/oauth/token?client_secret=abc#frag").unwrap();
        assert_eq!(display_url(&u), "https://[redacted]@auth.example:8443/oauth/token?[redacted]#[redacted]");
        let u = url::Url::parse("https://api.getgo.com").unwrap();
        assert_eq!(display_url(&u), "https://api.getgo.com/");
        let u = url::Url::parse("http://[::1]:80/x?").unwrap();
        assert_eq!(display_url(&u), "http://[::1]/x?[redacted]");
        assert_eq!(display_url_str("mailto:s3cr3t@example.com"), "mailto:[redacted]");
        assert_eq!(display_url_str("not a url s3cr3t"), "[not a URL]");
    }

    #[test]
    fn check_output_and_debug_hide_url_user_info_and_query() {
        let text = GOOD
            .replace(
                "client_secret = \"cs-literal-secret\"",
                "client_secret = \"cs-literal-secret\"\ntoken_url = \"https://user:pa55@host/token?client_secret=abc\"\nauthorize_url = \"https://host/authorize?k=abc\"\nkeys_url = \"https://user:pa55@host/me?abc\"\nredirect_uri = \"http://127.0.0.1:9901/callback?abc=1\"",
            )
            .replace("upstream = \"https://api.getgo.com\"\ncredential = \"goto\"", "upstream = \"https://user:pa55@api.getgo.com/base\"\ncredential = \"goto\"");
        let c = Config::parse("t.toml", &text).unwrap();
        let shown = c.to_string();
        let debug = format!("{c:?}");
        for out in [&shown, &debug] {
            assert!(!out.contains("pa55") && !out.contains("abc") && !out.contains("client_secret="), "{out}");
        }
        assert!(shown.contains("token_url: https://[redacted]@host/token?[redacted]"), "{shown}");
        assert!(shown.contains("authorize_url: https://host/authorize?[redacted]"), "{shown}");
        assert!(shown.contains("keys_url: https://[redacted]@host/me?[redacted]"), "{shown}");
        assert!(shown.contains("redirect_uri: http://127.0.0.1:9901/callback?[redacted]"), "{shown}");
        assert!(shown.contains("/ -> https://[redacted]@api.getgo.com/base credential goto"), "{shown}");
        // What runs keeps the whole URL.
        assert_eq!(c.credentials["goto"].token_url, "https://user:pa55@host/token?client_secret=abc");
    }
}
