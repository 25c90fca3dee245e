//! Cluster identity: a cluster CA and node certificates that carry a node id and a region.
//!
//! # Encoding of the identity
//!
//! A node certificate carries, as subject alternative names:
//!
//! - a URI `kaskade://node/<node_id>?region=<region>`: the identity we read back
//!   ([`identity_of`]). URI SANs are ignored by hostname verification, so they survive standard
//!   WebPKI verification untouched and no custom extension or OID is needed;
//! - a DNS name `<node_id>.kaskade.invalid` ([`node_dns_name`]): what a connecting router puts in
//!   the TLS server name (SNI) so that ordinary hostname verification pins the peer to the node id
//!   it meant to reach. `.invalid` is reserved (RFC 6761) and never resolves;
//! - optionally, the operator's own host names and IP addresses (informational; the cascade never
//!   verifies against them).
//!
//! [`identity_of`] requires exactly one `kaskade://node/` URI and requires the matching
//! `<node_id>.kaskade.invalid` DNS name (and no other `*.kaskade.invalid` name), so one
//! certificate can never claim two node ids. The subject common name is the node id too, for
//! humans reading the certificate; it is never used for decisions.
//!
//! Node ids and regions are 1–63 characters of `a-z`, `0-9` and `-`, not starting or ending with
//! `-` (a node id is a DNS label; regions follow the same rule for uniformity).
//!
//! Node certificates carry both the `serverAuth` and `clientAuth` extended key usages: a router
//! is a TLS server for the links it accepts and a TLS client for those it dials. Keys are ECDSA
//! P-256. [`identity_of`] does not verify signatures: call it on certificates that the TLS
//! handshake has verified against the cluster CA (see `cascade::tls`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

mod files;
pub use files::{
    read_pem_file, write_ca, write_dev_cluster, write_node, CertFiles, DevCluster, CA_CERT_FILE,
    CA_KEY_FILE,
};

/// Prefix of the URI subject alternative name that carries a node's identity.
pub const NODE_URI_PREFIX: &str = "kaskade://node/";
/// DNS suffix of the per-node name used as the TLS server name (`<node_id>.kaskade.invalid`).
pub const NODE_DNS_SUFFIX: &str = "kaskade.invalid";
/// Longest node id or region accepted (a DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Validity of a generated cluster CA (days).
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of a generated node certificate (days).
pub const NODE_VALIDITY_DAYS: i64 = 730;
/// Back-dating of `notBefore`, to tolerate clock skew between routers.
const BACKDATE: Duration = Duration::hours(1);

/// Errors of certificate generation, parsing and writing.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A node id or region does not follow the naming rules.
    #[error("invalid {what} {value:?}: use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'")]
    InvalidName {
        /// `"node id"` or `"region"`.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A `--node` specification is not `<node_id>:<region>`.
    #[error("invalid node spec {0:?}: expected <node_id>:<region>, e.g. fra:eu-de-fra")]
    InvalidNodeSpec(String),
    /// An extra host name is not a valid DNS name or IP address.
    #[error("invalid host name {0:?}")]
    InvalidHostName(String),
    /// The same node id appears twice in a cluster.
    #[error("duplicate node id {0:?}")]
    DuplicateNode(String),
    /// Certificate or key generation or PEM/DER handling failed inside rcgen.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate could not be parsed.
    #[error("cannot parse certificate: {0}")]
    Parse(String),
    /// The certificate given as CA is not a CA certificate.
    #[error("the certificate is not a CA certificate")]
    NotCa,
    /// The CA key does not belong to the CA certificate.
    #[error("the CA key does not match the CA certificate")]
    CaKeyMismatch,
    /// The certificate carries no kaskade node identity.
    #[error("the certificate carries no kaskade node identity (no {NODE_URI_PREFIX} URI)")]
    NoIdentity,
    /// The certificate's identity names are malformed or contradict each other.
    #[error("malformed kaskade node identity: {0}")]
    BadIdentity(String),
    /// The output file exists and overwriting was not requested.
    #[error("{0} exists (refusing to overwrite)")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Who a router is: its node id and its region, as carried by its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIdentity {
    /// Node id, e.g. `fra`.
    pub node_id: String,
    /// Region, e.g. `eu-de-fra`.
    pub region: String,
}

impl NodeIdentity {
    /// Builds an identity, validating both names.
    pub fn new(node_id: impl Into<String>, region: impl Into<String>) -> Result<Self, CertError> {
        let (node_id, region) = (node_id.into(), region.into());
        validate_node_id(&node_id)?;
        validate_region(&region)?;
        Ok(Self { node_id, region })
    }

    /// The URI subject alternative name carrying this identity.
    pub fn uri(&self) -> String {
        format!("{NODE_URI_PREFIX}{}?region={}", self.node_id, self.region)
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node_id, self.region)
    }
}

/// Parses `<node_id>:<region>` (the `--node fra:eu-de-fra` syntax).
impl FromStr for NodeIdentity {
    type Err = CertError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, region) = s
            .split_once(':')
            .ok_or_else(|| CertError::InvalidNodeSpec(s.to_owned()))?;
        Self::new(id, region)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a node id: 1–63 characters of `a-z0-9-`, no leading or trailing `-`.
pub fn validate_node_id(node_id: &str) -> Result<(), CertError> {
    if valid_name(node_id) {
        Ok(())
    } else {
        Err(CertError::InvalidName {
            what: "node id",
            value: node_id.to_owned(),
        })
    }
}

/// Checks a region: same rules as a node id.
pub fn validate_region(region: &str) -> Result<(), CertError> {
    if valid_name(region) {
        Ok(())
    } else {
        Err(CertError::InvalidName {
            what: "region",
            value: region.to_owned(),
        })
    }
}

/// The DNS name a node's certificate carries and that peers use as TLS server name:
/// `<node_id>.kaskade.invalid`.
pub fn node_dns_name(node_id: &str) -> String {
    format!("{node_id}.{NODE_DNS_SUFFIX}")
}

fn validity(days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - BACKDATE, now + Duration::days(days))
}

/// Generates a self-signed cluster CA. Returns `(cert_pem, key_pem)`.
///
/// `name` becomes the subject common name (e.g. `kaskade dev cluster`). The CA may sign node
/// certificates only (path length 0).
pub fn generate_ca(name: &str) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "kaskade");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity(CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Generates a node certificate signed by the cluster CA. Returns `(cert_pem, key_pem)`.
///
/// The certificate carries the identity as described in the module docs; `extra_names` (host
/// names or IP addresses of the router) are added as DNS / IP subject alternative names.
pub fn generate_node(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    node_id: &str,
    region: &str,
    extra_names: &[String],
) -> Result<(String, String), CertError> {
    let identity = NodeIdentity::new(node_id, region)?;
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    check_ca(ca_cert_pem, &ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;

    let mut sans = vec![
        SanType::URI(identity.uri().try_into()?),
        SanType::DnsName(node_dns_name(node_id).try_into()?),
    ];
    for name in extra_names {
        sans.push(extra_san(name)?);
    }

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_id);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "kaskade");
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity(NODE_VALIDITY_DAYS);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn extra_san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && !name.ends_with(NODE_DNS_SUFFIX)
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(CertError::InvalidHostName(name.to_owned()));
    }
    Ok(SanType::DnsName(name.to_ascii_lowercase().try_into()?))
}

/// Checks that `ca_cert_pem` is a CA certificate whose public key is `ca_key`'s.
fn check_ca(ca_cert_pem: &str, ca_key: &KeyPair) -> Result<(), CertError> {
    let der = pem_to_der(ca_cert_pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::Parse(e.to_string()))?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| CertError::Parse(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(CertError::NotCa);
    }
    if cert.public_key().subject_public_key.data.as_ref() != ca_key.public_key_raw() {
        return Err(CertError::CaKeyMismatch);
    }
    Ok(())
}

/// Decodes the first `CERTIFICATE` block of a PEM text.
pub fn pem_to_der(cert_pem: &str) -> Result<Vec<u8>, CertError> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| CertError::Parse(format!("PEM: {e}")))
}

/// Reads the node identity of a (DER) certificate. Does not verify the certificate: call it
/// on certificates verified by the TLS handshake.
pub fn identity_of(cert_der: &[u8]) -> Result<NodeIdentity, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(e.to_string()))?
        .ok_or(CertError::NoIdentity)?;

    let mut identity: Option<NodeIdentity> = None;
    let mut node_dns: Vec<&str> = Vec::new();
    let dns_suffix = format!(".{NODE_DNS_SUFFIX}");
    for name in &sans.value.general_names {
        match name {
            GeneralName::URI(uri) => {
                let Some(rest) = uri.strip_prefix(NODE_URI_PREFIX) else {
                    continue;
                };
                if identity.is_some() {
                    return Err(CertError::BadIdentity("more than one node URI".into()));
                }
                let (id, region) = rest
                    .split_once("?region=")
                    .ok_or_else(|| CertError::BadIdentity(format!("no region in {uri:?}")))?;
                identity = Some(
                    NodeIdentity::new(id, region)
                        .map_err(|e| CertError::BadIdentity(e.to_string()))?,
                );
            }
            GeneralName::DNSName(dns) if dns.to_ascii_lowercase().ends_with(&dns_suffix) => {
                node_dns.push(dns);
            }
            _ => {}
        }
    }
    let identity = identity.ok_or(CertError::NoIdentity)?;
    let expected = node_dns_name(&identity.node_id);
    if node_dns.is_empty() || node_dns.iter().any(|d| !d.eq_ignore_ascii_case(&expected)) {
        return Err(CertError::BadIdentity(format!(
            "the DNS names {node_dns:?} do not match {expected:?}"
        )));
    }
    Ok(identity)
}

/// [`identity_of`] for a PEM certificate (e.g. a router checking its own certificate against
/// its configured node id and region at start-up).
pub fn identity_of_pem(cert_pem: &str) -> Result<NodeIdentity, CertError> {
    identity_of(&pem_to_der(cert_pem)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["fra", "eu-de-fra", "a", "0", &"a".repeat(63)] {
            assert!(validate_node_id(ok).is_ok(), "{ok}");
            assert!(validate_region(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Fra",
            "fr a",
            "fra.x",
            "fra_1",
            "é",
            "a?region=b",
            &"a".repeat(64),
        ] {
            assert!(validate_node_id(bad).is_err(), "{bad:?}");
            assert!(validate_region(bad).is_err(), "{bad:?}");
        }
        let n: NodeIdentity = "fra:eu-de-fra".parse().unwrap();
        assert_eq!(n, NodeIdentity::new("fra", "eu-de-fra").unwrap());
        assert_eq!(n.to_string(), "fra:eu-de-fra");
        assert!("fra".parse::<NodeIdentity>().is_err());
        assert!("fra:EU".parse::<NodeIdentity>().is_err());
        assert!("fra:eu:x".parse::<NodeIdentity>().is_err());
    }

    /// `NodeIdentity` works as a clap `value_parser!` type (`FromStr`, error `Send + Sync`).
    #[test]
    fn usable_as_cli_value() {
        fn clap_value<T: FromStr<Err = E> + Clone + Send + Sync + 'static, E>()
        where
            E: std::error::Error + Send + Sync + 'static,
        {
        }
        clap_value::<NodeIdentity, CertError>();
    }

    #[test]
    fn node_identity_round_trips() {
        let (ca, ca_key) = generate_ca("test").unwrap();
        let extra = vec!["router-1.example.com".to_owned(), "10.0.0.7".to_owned()];
        let (cert, _key) = generate_node(&ca, &ca_key, "fra", "eu-de-fra", &extra).unwrap();
        let id = identity_of_pem(&cert).unwrap();
        assert_eq!(id, NodeIdentity::new("fra", "eu-de-fra").unwrap());
        // The CA itself carries no identity.
        assert!(matches!(identity_of_pem(&ca), Err(CertError::NoIdentity)));
    }

    #[test]
    fn node_generation_checks_inputs() {
        let (ca, ca_key) = generate_ca("test").unwrap();
        let (_, other_key) = generate_ca("other").unwrap();
        assert!(matches!(
            generate_node(&ca, &other_key, "fra", "eu", &[]),
            Err(CertError::CaKeyMismatch)
        ));
        let (node, node_key) = generate_node(&ca, &ca_key, "fra", "eu", &[]).unwrap();
        assert!(matches!(
            generate_node(&node, &node_key, "ams", "eu", &[]),
            Err(CertError::NotCa)
        ));
        assert!(matches!(
            generate_node(&ca, &ca_key, "FRA", "eu", &[]),
            Err(CertError::InvalidName { .. })
        ));
        assert!(matches!(
            generate_node(&ca, &ca_key, "fra", "eu", &["x.kaskade.invalid".into()]),
            Err(CertError::InvalidHostName(_))
        ));
        assert!(matches!(
            generate_node(&ca, &ca_key, "fra", "eu", &["bad_name".into()]),
            Err(CertError::InvalidHostName(_))
        ));
    }

    /// A certificate whose URI and DNS names disagree is rejected.
    #[test]
    fn contradicting_names_are_rejected() {
        let key = KeyPair::generate().unwrap();
        let mk = |sans: Vec<SanType>| {
            let mut p = CertificateParams::default();
            p.subject_alt_names = sans;
            identity_of(p.self_signed(&key).unwrap().der())
        };
        let uri = |s: &str| SanType::URI(s.try_into().unwrap());
        let dns = |s: &str| SanType::DnsName(s.try_into().unwrap());
        assert!(mk(vec![
            uri("kaskade://node/fra?region=eu"),
            dns("fra.kaskade.invalid")
        ])
        .is_ok());
        assert!(matches!(
            mk(vec![uri("kaskade://node/fra?region=eu")]),
            Err(CertError::BadIdentity(_))
        ));
        assert!(matches!(
            mk(vec![
                uri("kaskade://node/fra?region=eu"),
                dns("ams.kaskade.invalid")
            ]),
            Err(CertError::BadIdentity(_))
        ));
        assert!(matches!(
            mk(vec![
                uri("kaskade://node/fra?region=eu"),
                dns("fra.kaskade.invalid"),
                dns("ams.kaskade.invalid")
            ]),
            Err(CertError::BadIdentity(_))
        ));
        assert!(matches!(
            mk(vec![
                uri("kaskade://node/fra?region=eu"),
                uri("kaskade://node/ams?region=eu"),
                dns("fra.kaskade.invalid")
            ]),
            Err(CertError::BadIdentity(_))
        ));
        assert!(matches!(
            mk(vec![uri("kaskade://node/fra"), dns("fra.kaskade.invalid")]),
            Err(CertError::BadIdentity(_))
        ));
        assert!(matches!(
            mk(vec![dns("fra.kaskade.invalid")]),
            Err(CertError::NoIdentity)
        ));
        assert!(matches!(identity_of(b"garbage"), Err(CertError::Parse(_))));
    }
}
