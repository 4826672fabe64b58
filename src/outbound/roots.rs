//! The trusted roots: the bundled web roots, the operating system's store (unless
//! `tls.system_roots = false`) and `tls.ca_file`, with how many each source gave (for
//! `check`), and the same certificates as PEM for the Redis client.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::CertificateDer;

use crate::config::OutboundTls;

/// The roots of one configuration.
pub(super) struct Roots {
    /// What rustls verifies servers against.
    pub(super) store: Arc<rustls::RootCertStore>,
    /// Every certificate the store took, in the order added, kept only for `rediss://`
    /// (the Redis client takes PEM; a few hundred KiB nobody else needs).
    pub(super) certs: Option<Vec<CertificateDer<'static>>>,
    /// How many each source gave.
    pub(super) counts: Counts,
}

/// How many roots each source gave.
pub(super) struct Counts {
    /// The bundled web roots (Mozilla's list).
    pub(super) bundled: usize,
    /// The operating system's store; `None` when `tls.system_roots = false`.
    pub(super) system: Option<usize>,
    /// Each `tls.ca_file` and its certificates.
    pub(super) ca_files: Vec<(PathBuf, usize)>,
}

impl Roots {
    /// Gathers the roots `tls` asks for. The operating system's store is read here (a
    /// problem reading it is logged, and what could be read is used); the `ca_file`
    /// certificates were checked when the config was loaded. `keep_certs`: also keep the
    /// certificates themselves (for `rediss://`).
    pub(super) fn load(tls: &OutboundTls, keep_certs: bool) -> Roots {
        let mut roots = Roots {
            store: Arc::new(rustls::RootCertStore::empty()),
            certs: keep_certs.then(Vec::new),
            counts: Counts { bundled: 0, system: None, ca_files: Vec::new() },
        };
        let mut store = rustls::RootCertStore::empty();
        roots.counts.bundled = roots.add(&mut store, webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        if tls.system_roots {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the operating system's trusted roots (tls.system_roots)");
            }
            roots.counts.system = Some(roots.add(&mut store, found.certs));
        }
        for file in &tls.ca_files {
            let n = roots.add(&mut store, file.certs.iter().cloned());
            roots.counts.ca_files.push((file.path.clone(), n));
        }
        roots.store = Arc::new(store);
        roots
    }

    /// Adds each certificate rustls takes as a root; how many it took.
    fn add(
        &mut self,
        store: &mut rustls::RootCertStore,
        certs: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> usize {
        let mut n = 0;
        for cert in certs {
            let copy = self.certs.is_some().then(|| cert.clone());
            if store.add(cert).is_ok() {
                if let (Some(kept), Some(copy)) = (self.certs.as_mut(), copy) {
                    kept.push(copy);
                }
                n += 1;
            }
        }
        n
    }
}

/// Certificates as PEM text (what the Redis client takes).
pub(super) fn pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn every_source_is_counted_and_system_roots_can_be_turned_off() {
        let ca = rcgen::generate_simple_self_signed(vec!["corp-root".to_string()]).unwrap();
        let tls = OutboundTls {
            ca_files: vec![crate::config::CaFile { path: "corp.pem".into(), certs: vec![ca.cert.der().clone()] }],
            system_roots: false,
            client_cert: None,
        };
        let roots = Roots::load(&tls, true);
        assert!(roots.counts.bundled > 100, "Mozilla's list: {}", roots.counts.bundled);
        assert_eq!(roots.counts.system, None);
        assert_eq!(roots.counts.ca_files, vec![(PathBuf::from("corp.pem"), 1)]);
        assert_eq!(roots.store.len(), roots.counts.bundled + 1);
        assert_eq!(roots.certs.as_ref().map(Vec::len), Some(roots.store.len()));
        // Without `rediss://` nobody needs the certificates themselves: the same trust.
        let lean = Roots::load(&tls, false);
        assert!(lean.certs.is_none());
        assert_eq!(lean.store.len(), roots.store.len());
    }

    #[test]
    fn pem_text_reads_back_as_the_same_certificates() {
        let a = rcgen::generate_simple_self_signed(vec!["a".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".to_string()]).unwrap();
        let certs = vec![a.cert.der().clone(), b.cert.der().clone()];
        let text = pem(&certs);
        let back: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(text.as_bytes()).collect::<Result<_, _>>().unwrap();
        assert_eq!(back, certs);
        assert!(text.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
    }
}
