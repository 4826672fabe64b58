//! Who may use the proxy. Any request it accepts becomes an authenticated GoTo call, so
//! loopback is the default, remote peers need an explicit CIDR, and once keys are
//! configured every client (loopback included) must send one in
//! `x-goto-auth-proxy-key`, compared in constant time.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use subtle::ConstantTimeEq;

use crate::config::{InboundSettings, TlsFiles};
use crate::error::{ErrorCode, ProxyError};

/// Decides whether a request from `peer` with these headers (the inbound key among them) may proceed.
pub fn admit(inbound: &InboundSettings, peer: IpAddr, headers: &HeaderMap) -> Result<(), ProxyError> {
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

/// Why the inbound TLS files could not be used.
#[derive(Debug, thiserror::Error)]
#[error("inbound TLS: {0}")]
pub struct TlsError(String);

/// Decides whether `peer` may connect at all: loopback always; a remote peer when it
/// is in `allow_cidrs`, or, with no CIDRs listed, when keys guard every request.
pub fn admit_address(inbound: &InboundSettings, peer: IpAddr) -> Result<(), ProxyError> {
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
        .map_err(|e| TlsError(format!("{}: {e}", files.cert.display())))?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError(format!("{}: {e}", files.key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(e.to_string()))?;
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
