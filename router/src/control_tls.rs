//! TLS for the control API and the HTTP listener: rustls on the aws-lc-rs
//! provider (built with `builder_with_provider`, nothing process-wide), a
//! certificate chain and key from PEM files, and (control API only) an
//! optional client CA that turns on mutual TLS.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// The files of `control.tls_*` or `http.tls_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The config section the files come from (`control`, `http`), for errors.
    pub section: &'static str,
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
                section: "control",
                cert: c.tls_cert.clone().into(),
                key: c.tls_key.clone().into(),
                client_ca: (!c.tls_client_ca.is_empty()).then(|| c.tls_client_ca.clone().into()),
            })),
        }
    }

    /// The files named by `http.tls_cert` and `http.tls_key`, if TLS is on.
    pub fn from_http_config(
        c: &crate::config::HttpConfig,
    ) -> Result<Option<Self>, (&'static str, String)> {
        match (c.tls_cert.is_empty(), c.tls_key.is_empty()) {
            (true, true) => Ok(None),
            (false, true) => Err(("http.tls_key", "is required with http.tls_cert".into())),
            (true, false) => Err(("http.tls_cert", "is required with http.tls_key".into())),
            (false, false) => Ok(Some(TlsFiles {
                section: "http",
                cert: c.tls_cert.clone().into(),
                key: c.tls_key.clone().into(),
                client_ca: None,
            })),
        }
    }

    /// Reads the files into a server configuration: HTTP/2 only for the
    /// control API, HTTP/1.1 for the HTTP listener.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let sec = self.section;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = CertificateDer::pem_slice_iter(&read(&format!("{sec}.tls_cert"), &self.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{sec}.tls_cert {}: {e}", self.cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "{sec}.tls_cert {}: no CERTIFICATE block",
                self.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&format!("{sec}.tls_key"), &self.key)?)
            .map_err(|e| format!("{sec}.tls_key {}: {e}", self.key.display()))?;
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
            .map_err(|e| format!("{sec}.tls_cert/{sec}.tls_key: {e}"))?;
        // The HTTP listener speaks HTTP/1.1 only: its checks read `Host`,
        // which HTTP/2 replaces with `:authority`.
        cfg.alpn_protocols = if sec == "control" {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Arc::new(cfg))
    }
}

/// The TLS configuration in use; [`TlsState::reload`] swaps it for new
/// connections (SIGHUP).
pub struct TlsState {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("files", &self.files)
            .finish()
    }
}

impl TlsState {
    /// Loads the files once.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let cfg = files.load()?;
        Ok(Self {
            files,
            current: RwLock::new(cfg),
        })
    }

    /// Reads the files again; on error the previous configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let cfg = self.files.load()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = cfg;
        Ok(())
    }

    /// An acceptor with the configuration in use.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }
}
