//! `[tls]` and `proxy.outbound_proxy`: what every connection the proxy opens needs.
//! The PEM files are read and checked here — certificates that rustls accepts as roots,
//! a client key that matches its certificate — so a bad file stops `check` and `run`
//! naming the key, the file and the line. PEM problems are told in fixed words: the
//! parser's own messages may quote a line of the file, and a key file is a secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;

use super::super::raw::{PathList, RawSecret, RawTls};
use super::super::{CaFile, ClientCert, OutboundTls};
use super::{resolve_secret, ConfigError, Locator};
use crate::secret::Secret;

/// `[tls]`: every `ca_file` read, its certificates usable as roots; `client_cert` and
/// `client_key` both or neither, and a pair.
pub(super) fn validate_tls(loc: &Locator<'_>, raw: RawTls) -> Result<OutboundTls, ConfigError> {
    let mut ca_files = Vec::new();
    if let Some(list) = &raw.ca_file {
        let span = list.span();
        let PathList(paths) = list.get_ref();
        for (i, path) in paths.iter().enumerate() {
            let key = if paths.len() == 1 { "tls.ca_file".to_string() } else { format!("tls.ca_file[{i}]") };
            loc.read_file(path);
            let certs = read_certs(path).map_err(|why| loc.err(&span, &key, format!("{}: {why}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for (n, cert) in certs.iter().enumerate() {
                roots.add(cert.clone()).map_err(|e| {
                    loc.err(
                        &span,
                        &key,
                        format!("{}: certificate {} is not usable as a trusted root ({e})", path.display(), n + 1),
                    )
                })?;
            }
            ca_files.push(CaFile { path: path.clone(), certs });
        }
    }
    let client_cert = match (raw.client_cert, raw.client_key) {
        (None, None) => None,
        (Some(c), None) => return Err(loc.err(&c.span(), "tls.client_key", "is required with tls.client_cert")),
        (None, Some(k)) => return Err(loc.err(&k.span(), "tls.client_cert", "is required with tls.client_key")),
        (Some(cert), Some(key)) => Some(client_cert(loc, &cert, &key)?),
    };
    Ok(OutboundTls { ca_files, system_roots: raw.system_roots.unwrap_or(true), client_cert })
}

/// `tls.client_cert` (a PEM chain) and `tls.client_key` (a secret holding a PEM private
/// key), checked to belong together.
fn client_cert(
    loc: &Locator<'_>,
    cert: &Spanned<PathBuf>,
    key: &Spanned<RawSecret>,
) -> Result<ClientCert, ConfigError> {
    let path = cert.get_ref();
    loc.read_file(path);
    let chain = read_certs(path)
        .map_err(|why| loc.err(&cert.span(), "tls.client_cert", format!("{}: {why}", path.display())))?;
    let secret = resolve_secret(loc, key, "tls.client_key")?;
    let parsed = PrivateKeyDer::from_pem_slice(secret.expose().as_bytes()).map_err(|e| {
        loc.err(
            &key.span(),
            "tls.client_key",
            format!("is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {}", pem_problem(&e)),
        )
    })?;
    // rustls checks that the key signs for the certificate's public key.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| loc.err(&key.span(), "tls.client_key", e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain.clone(), parsed)
        .map_err(|e| {
            loc.err(
                &key.span(),
                "tls.client_key",
                format!("cannot be used with tls.client_cert {}: {e}", path.display()),
            )
        })?;
    Ok(ClientCert { cert_file: path.clone(), chain, key: secret })
}

/// The certificates of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not a PEM certificate file: {}", pem_problem(&e)))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string());
    }
    Ok(certs)
}

/// A PEM parse error in fixed words: the parser's own message may quote a line of the
/// file (for a key file, a line of the secret).
fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no -----END line",
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::NoItemsFound => "it holds no such section",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "it cannot be read as PEM",
    }
}

/// `proxy.outbound_proxy`: a secret holding an `http://` proxy URL.
pub(super) fn validate_outbound_proxy(
    loc: &Locator<'_>,
    raw: Option<&Spanned<RawSecret>>,
) -> Result<Option<Secret>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let secret = resolve_secret(loc, raw, "proxy.outbound_proxy")?;
    proxy_url(secret.expose()).map_err(|why| loc.err(&raw.span(), "proxy.outbound_proxy", why))?;
    Ok(Some(secret))
}

/// An outbound proxy URL as the proxy uses it: `http://[user:password@]host[:port]`
/// (port 80 when absent), nothing after the authority. Shared with the environment's
/// `HTTPS_PROXY`/`HTTP_PROXY`, which the outbound module checks by the same rule. The
/// error never quotes the URL (it may hold a password).
pub(crate) fn proxy_url(text: &str) -> Result<url::Url, &'static str> {
    let url = url::Url::parse(text).map_err(|_| "is not a URL such as \"http://proxy.example:3128\"")?;
    if url.scheme() != "http" {
        return Err("must be an http:// URL (the proxy is spoken to in plain HTTP; CONNECT carries TLS through it)");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name the proxy's host, as in \"http://proxy.example:3128\"");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("must be the proxy's address only: no path, query or fragment");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::super::super::fixtures::{err, GOOD};
    use super::super::super::Config;
    use super::proxy_url;

    fn with_tls(tls: &str) -> String {
        GOOD.replace("[credentials.g2a]", &format!("[tls]\n{tls}\n\n[credentials.g2a]"))
    }

    fn ca() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertifiedKey { cert: params.self_signed(&key).unwrap(), signing_key: key }
    }

    #[test]
    fn ca_files_are_read_whole_and_compared_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (ca(), ca());
        let one = dir.path().join("one.pem");
        std::fs::write(&one, format!("{}{}", a.cert.pem(), b.cert.pem())).unwrap();
        let c = Config::parse("t.toml", &with_tls(&format!("ca_file = {:?}", one.display().to_string()))).unwrap();
        assert_eq!(c.tls.ca_files.len(), 1);
        assert_eq!(c.tls.ca_files[0].certs.len(), 2, "every certificate of the file");
        assert!(c.tls.system_roots);
        let two = dir.path().join("two.pem");
        std::fs::write(&two, a.cert.pem()).unwrap();
        let text = with_tls(&format!(
            "ca_file = [{:?}, {:?}]\nsystem_roots = false",
            one.display().to_string(),
            two.display().to_string()
        ));
        let c2 = Config::parse("t.toml", &text).unwrap();
        assert_eq!(c2.tls.ca_files.iter().map(|f| f.certs.len()).collect::<Vec<_>>(), vec![2, 1]);
        assert!(!c2.tls.system_roots);
        // The same name with other contents is another configuration (a reload sees it).
        std::fs::write(&one, b.cert.pem()).unwrap();
        let c3 = Config::parse("t.toml", &with_tls(&format!("ca_file = {:?}", one.display().to_string()))).unwrap();
        assert_ne!(c.tls, c3.tls);
    }

    #[test]
    fn a_bad_ca_file_names_the_key_the_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n").unwrap();
        let good = dir.path().join("good.pem");
        std::fs::write(&good, ca().cert.pem()).unwrap();
        let text = with_tls(&format!("ca_file = [{:?}, {:?}]", good.display().to_string(), bad.display().to_string()));
        let e = err(&text);
        let line = text.lines().position(|l| l.starts_with("ca_file")).unwrap() + 1;
        assert!(e.starts_with(&format!("t.toml:{line}: tls.ca_file[1]: {}", bad.display())), "{e}");
        assert!(e.contains("not a PEM certificate file") && !e.contains("not base64 at all"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "just some text\n").unwrap();
        let e = err(&with_tls(&format!("ca_file = {:?}", empty.display().to_string())));
        assert!(e.contains("tls.ca_file: ") && e.contains("holds no PEM certificate"), "{e}");
        let e = err(&with_tls("ca_file = \"/nonexistent/corp-root.pem\""));
        assert!(e.contains("tls.ca_file: /nonexistent/corp-root.pem: cannot read the file"), "{e}");
        let e = err(&with_tls("ca_file = 5"));
        assert!(e.contains("tls.ca_file") && e.contains("a file path or a list of file paths"), "{e}");
    }

    #[test]
    fn the_client_key_must_be_a_pem_key_matching_the_certificate_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let id = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
        let cert = dir.path().join("client.pem");
        std::fs::write(&cert, id.cert.pem()).unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, id.signing_key.serialize_pem()).unwrap();
        let pair = |key_path: &std::path::Path| {
            with_tls(&format!(
                "client_cert = {:?}\nclient_key = {{ file = {:?} }}",
                cert.display().to_string(),
                key_path.display().to_string()
            ))
        };
        let c = Config::parse("t.toml", &pair(&key)).unwrap();
        let auth = c.tls.client_cert.as_ref().unwrap();
        assert_eq!(auth.chain.len(), 1);
        let pem = id.signing_key.serialize_pem();
        assert!(!format!("{c:?}").contains(pem.lines().nth(1).unwrap()), "Debug never shows the key");

        let other = dir.path().join("other.key");
        std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let e = err(&pair(&other));
        assert!(e.contains("tls.client_key: cannot be used with tls.client_cert"), "{e}");

        let garbled = dir.path().join("garbled.key");
        std::fs::write(&garbled, "-----BEGIN PRIVATE KEY-----\nSECRETSECRET!!\n-----END PRIVATE KEY-----\n").unwrap();
        let e = err(&pair(&garbled));
        assert!(e.contains("tls.client_key: is not a PEM private key") && !e.contains("SECRETSECRET"), "{e}");

        let e = err(&with_tls(&format!("client_cert = {:?}", cert.display().to_string())));
        assert!(e.contains("tls.client_key: is required with tls.client_cert"), "{e}");
    }

    #[test]
    fn outbound_proxy_is_an_http_url_and_never_echoed() {
        let with = |v: &str| GOOD.replace("[proxy]\n", &format!("[proxy]\noutbound_proxy = \"{v}\"\n"));
        let c = Config::parse("t.toml", &with("http://alice:pa55@proxy.corp:3128")).unwrap();
        assert_eq!(c.proxy.outbound_proxy.as_ref().unwrap().expose(), "http://alice:pa55@proxy.corp:3128");
        assert!(!format!("{c:?}").contains("pa55") && !c.to_string().contains("pa55"));
        for bad in ["https://alice:pa55@proxy.corp:3128", "proxy.corp:3128", "http://alice:pa55@proxy.corp:3128/x"] {
            let e = err(&with(bad));
            assert!(e.contains("proxy.outbound_proxy: ") && !e.contains("pa55") && !e.contains("corp"), "{e}");
        }
        assert_eq!(proxy_url("http://p:3128").unwrap().port(), Some(3128));
        assert!(proxy_url("socks5://p:1080").is_err());
    }
}
