//! TLS for the control API: rustls on the aws-lc-rs provider (built with
//! `builder_with_provider`, nothing process-wide), a certificate chain and
//! key from PEM files, and an optional client CA that turns on mutual TLS.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::path::PathBuf;
use std::sync::Arc;

/// The files of `control.tls_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Client CA (PEM): mutual TLS when set.
    pub client_ca: Option<PathBuf>,
}

fn read(what: &str, p: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()))
}

impl TlsFiles {
    /// The files named by the config, if TLS is on.
    pub fn from_config(
        c: &crate::config::ControlConfig,
    ) -> Result<Option<Self>, (&'static str, String)> {
        match (c.tls_cert.is_empty(), c.tls_key.is_empty()) {
            (true, true) if c.tls_client_ca.is_empty() => Ok(None),
            (true, true) => Err((
                "control.tls_client_ca",
                "needs control.tls_cert and control.tls_key".into(),
            )),
            (false, true) => Err((
                "control.tls_key",
                "is required with control.tls_cert".into(),
            )),
            (true, false) => Err((
                "control.tls_cert",
                "is required with control.tls_key".into(),
            )),
            (false, false) => Ok(Some(TlsFiles {
                cert: c.tls_cert.clone().into(),
                key: c.tls_key.clone().into(),
                client_ca: (!c.tls_client_ca.is_empty()).then(|| c.tls_client_ca.clone().into()),
            })),
        }
    }

    /// Reads the files into a server configuration (HTTP/2 only).
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = CertificateDer::pem_slice_iter(&read("control.tls_cert", &self.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("control.tls_cert {}: {e}", self.cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "control.tls_cert {}: no CERTIFICATE block",
                self.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&read("control.tls_key", &self.key)?)
            .map_err(|e| format!("control.tls_key {}: {e}", self.key.display()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read("control.tls_client_ca", ca)?) {
                    let c =
                        c.map_err(|e| format!("control.tls_client_ca {}: {e}", ca.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("control.tls_client_ca {}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "control.tls_client_ca {}: no CERTIFICATE block",
                        ca.display()
                    ));
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("control.tls_client_ca: {e}"))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let mut cfg = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("control.tls_cert/control.tls_key: {e}"))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}
