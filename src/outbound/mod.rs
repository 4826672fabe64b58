//! Everything the proxy needs to open connections inside a corporate network, built once
//! per configuration load (and again on a reload that changes it), used by every
//! outbound connection: the data path's upstreams, the token and keys endpoints (and
//! any later HTTP client, through [`Outbound::client_builder`]), and `rediss://`.
//!
//! * TLS: one rustls `ClientConfig` trusting the bundled web roots,
//!   the operating system's store (unless `tls.system_roots = false`) and every
//!   certificate of `tls.ca_file`, presenting `tls.client_cert` when set.
//! * The outbound proxy ([`Outbound::proxy_for`]): `proxy.outbound_proxy` or the
//!   environment's `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, by the rules in `rules.rs`.
//!
//! `roots.rs` gathers the roots; `rules.rs` decides which destinations take the proxy.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

use crate::config::{Config, OutboundTls};

mod roots;
mod rules;

pub(crate) use rules::{BadProxyVar, ProxyEndpoint, ProxyRules};

/// Why the outbound settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// `HTTPS_PROXY`, `HTTP_PROXY` (either case) holds no usable proxy URL.
    #[error(transparent)]
    ProxyVar(#[from] BadProxyVar),
    /// rustls refused the TLS settings, e.g. the client certificate and key (the config
    /// checks them first, so this is not expected).
    #[error("outbound TLS ([tls]): {0}")]
    Tls(#[source] rustls::Error),
    /// `[tls] client_key` holds no PEM private key (the key's text is not repeated).
    #[error("outbound TLS ([tls]): the key is not a PEM private key")]
    ClientKey,
    /// The HTTP client for token endpoints could not be built.
    #[error("outbound HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The outbound TLS configuration and proxy rules of one configuration.
pub(crate) struct Outbound {
    /// Roots and client certificate, no ALPN: each user sets its own on a copy.
    tls: Arc<rustls::ClientConfig>,
    /// The same, offering HTTP/2 and HTTP/1.1 (ALPN), for upstreams.
    upstream_tls: Arc<rustls::ClientConfig>,
    /// The certificates behind the roots, for `rediss://` (whose client takes PEM).
    roots: roots::Roots,
    /// `[tls]` as configured: the client certificate for `rediss://` and `check`.
    settings: OutboundTls,
    /// Which destinations go through which proxy.
    proxy: Arc<ProxyRules>,
}

impl Outbound {
    /// The outbound settings of `config` in this process's environment (the proxy
    /// variables are read here; `rules.rs` is tested with an injected one).
    pub(crate) fn from_config(config: &Config) -> Result<Outbound, OutboundError> {
        let env = |name: &str| std::env::var(name).ok();
        let proxy = Arc::new(ProxyRules::new(config.proxy.outbound_proxy.as_ref(), env)?);
        let roots = roots::Roots::load(&config.tls, config.state.is_rediss());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(OutboundError::Tls)?
            .with_root_certificates(roots.store.clone());
        let tls = match &config.tls.client_cert {
            None => builder.with_no_client_auth(),
            Some(auth) => {
                let key = PrivateKeyDer::from_pem_slice(auth.key.expose().as_bytes())
                    .map_err(|_| OutboundError::ClientKey)?;
                builder.with_client_auth_cert(auth.chain.clone(), key).map_err(OutboundError::Tls)?
            }
        };
        let mut upstream_tls = tls.clone();
        upstream_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Outbound {
            tls: Arc::new(tls),
            upstream_tls: Arc::new(upstream_tls),
            roots,
            settings: config.tls.clone(),
            proxy,
        })
    }

    /// The outbound TLS configuration offering HTTP/2 and HTTP/1.1 by ALPN: the upstream
    /// connector's.
    pub(crate) fn upstream_tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.upstream_tls
    }

    /// The proxy to reach `url` through, or `None` to connect directly.
    pub(crate) fn proxy_for(&self, url: &url::Url) -> Option<&Arc<ProxyEndpoint>> {
        self.proxy.proxy_for(url)
    }

    /// A reqwest client builder with this TLS configuration (HTTP/1.1), this proxy
    /// decision (the environment's own handling in reqwest is off: it would send loopback
    /// destinations through `HTTPS_PROXY`), `connect_timeout`, no redirects followed (a
    /// request carrying a secret must not follow one) and the proxy's `User-Agent`. For
    /// every HTTP client the proxy makes: token and keys endpoints, notification webhooks.
    pub(crate) fn client_builder(&self, connect_timeout: Duration) -> reqwest::ClientBuilder {
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("goto-auth-proxy/", env!("CARGO_PKG_VERSION")));
        if self.proxy.is_empty() {
            return builder;
        }
        let rules = self.proxy.clone();
        builder.proxy(reqwest::Proxy::custom(move |url| {
            rules.proxy_for(url).and_then(|p| url::Url::parse(p.url().expose()).ok())
        }))
    }

    /// The client for token and keys endpoints: [`Outbound::client_builder`] with a 30 s
    /// bound on every call.
    pub(crate) fn token_client(&self, connect_timeout: Duration) -> Result<reqwest::Client, OutboundError> {
        self.client_builder(connect_timeout).timeout(Duration::from_secs(30)).build().map_err(OutboundError::Client)
    }

    /// The roots and client certificate for the `rediss://` connection, in the PEM form
    /// the Redis client takes: the same trust as every other connection. `None` unless
    /// the config's store is `rediss://`.
    pub(crate) fn redis_tls(&self) -> Option<redis::TlsCertificates> {
        let certs = self.roots.certs.as_ref()?;
        Some(redis::TlsCertificates {
            client_tls: self.settings.client_cert.as_ref().map(|a| redis::ClientTlsConfig {
                client_cert: roots::pem(&a.chain).into_bytes(),
                client_key: a.key.expose().as_bytes().to_vec(),
            }),
            root_cert: Some(roots::pem(certs).into_bytes()),
        })
    }
}

impl fmt::Display for Outbound {
    /// What `check` prints: how many roots each source gave, the client certificate, the
    /// proxy (credentials as `***`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.roots.counts;
        let system = match c.system {
            Some(n) => format!("system {n}"),
            None => "system off (tls.system_roots = false)".to_string(),
        };
        let files: Vec<String> = c.ca_files.iter().map(|(p, n)| format!("{} {n}", p.display())).collect();
        let files = if files.is_empty() { "ca_file none".to_string() } else { format!("ca_file {}", files.join(", ")) };
        writeln!(f, "outbound TLS roots: bundled {}, {system}, {files}", c.bundled)?;
        match &self.settings.client_cert {
            Some(a) => writeln!(f, "  client certificate: {} (key [redacted])", a.cert_file.display())?,
            None => writeln!(f, "  client certificate: none")?,
        }
        for line in self.proxy.describe() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}
