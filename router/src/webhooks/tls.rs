//! TLS for `https://` webhook receivers: rustls on the aws-lc-rs provider
//! (nothing process-wide), HTTP/1.1 only (ALPN set by the connector), verifying the receiver's
//! certificate against `webhooks.ca_file` when it is set, else against the
//! system's roots (`/etc/ssl/certs` and the like, read once at start).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;

/// The client configuration for https receivers. Errors name the key and
/// the file; they are found before any port is bound.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match ca_file {
        Some(p) => roots_from_file(p)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // No ALPN here: the connector sets http/1.1 itself (and refuses a preset list).
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn roots_from_file(p: &Path) -> Result<RootCertStore, String> {
    let pem = std::fs::read(p)
        .map_err(|e| format!("cannot read webhooks.ca_file {}: {e}", p.display()))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| format!("webhooks.ca_file {}: {e}", p.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("webhooks.ca_file {}: {e}", p.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "webhooks.ca_file {}: no CERTIFICATE block",
            p.display()
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // Unparsable entries in the system store are skipped, as browsers do.
    let _ = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(
            "https:// webhooks: no CA certificates found on this system (install \
             ca-certificates, or set webhooks.ca_file)"
                .into(),
        );
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = client_config(Some(&p)).unwrap_err();
        assert!(e.contains("webhooks.ca_file"), "{e}");
        let e = client_config(Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(e.contains("cannot read webhooks.ca_file"), "{e}");
    }
}
