//! The certificate files of `kaskade cert`: the cluster CA and node certificates
//! written atomically (key mode 0600, certificate 0644), never silently overwritten.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::{
    generate_ca, generate_node, validate_node_id, validate_region, CertError, NodeIdentity,
};

/// File names used by the file-writing helpers.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA private key.
pub const CA_KEY_FILE: &str = "ca.key";

/// Paths of a written certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate (PEM, mode 0644).
    pub cert: PathBuf,
    /// The private key (PEM PKCS#8, mode 0600).
    pub key: PathBuf,
}

/// What [`write_dev_cluster`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCluster {
    /// `ca.pem` / `ca.key`.
    pub ca: CertFiles,
    /// `<node>.pem` / `<node>.key`, in the order given.
    pub nodes: Vec<(NodeIdentity, CertFiles)>,
}

/// Reads a file to a string.
pub fn read_pem_file(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path` atomically (temporary file + rename) with `mode`.
fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), CertError> {
    if !force && path.exists() {
        return Err(CertError::Exists(path.to_owned()));
    }
    let io_err = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err)?;
    file.write_all(contents.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err)
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn write_pair(
    dir: &Path,
    stem: &str,
    cert_pem: &str,
    key_pem: &str,
    force: bool,
) -> Result<CertFiles, CertError> {
    let files = CertFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    };
    if !force {
        for path in [&files.cert, &files.key] {
            if path.exists() {
                return Err(CertError::Exists(path.clone()));
            }
        }
    }
    write_file(&files.key, key_pem, 0o600, force)?;
    write_file(&files.cert, cert_pem, 0o644, force)?;
    Ok(files)
}

/// `ca` names the CA's files: no node may use it with the file helpers.
fn check_not_reserved(node_id: &str) -> Result<(), CertError> {
    if node_id == "ca" {
        return Err(CertError::InvalidName {
            what: "node id",
            value: "ca (reserved for the CA files)".into(),
        });
    }
    Ok(())
}

/// `kaskade cert ca --out DIR [--name NAME] [--force]`: writes `DIR/ca.pem` and `DIR/ca.key`.
pub fn write_ca(dir: &Path, name: &str, force: bool) -> Result<CertFiles, CertError> {
    create_dir(dir)?;
    let (cert, key) = generate_ca(name)?;
    write_pair(dir, "ca", &cert, &key, force)
}

/// `kaskade cert node --ca CA.pem --ca-key CA.key --id ID --region R [--san NAME]... --out DIR
/// [--force]`: writes `DIR/<id>.pem` and `DIR/<id>.key`.
pub fn write_node(
    ca_cert: &Path,
    ca_key: &Path,
    identity: &NodeIdentity,
    extra_names: &[String],
    dir: &Path,
    force: bool,
) -> Result<CertFiles, CertError> {
    check_not_reserved(&identity.node_id)?;
    let ca_cert_pem = read_pem_file(ca_cert)?;
    let ca_key_pem = read_pem_file(ca_key)?;
    let (cert, key) = generate_node(
        &ca_cert_pem,
        &ca_key_pem,
        &identity.node_id,
        &identity.region,
        extra_names,
    )?;
    create_dir(dir)?;
    write_pair(dir, &identity.node_id, &cert, &key, force)
}

/// `kaskade cert dev-cluster --out DIR --node fra:eu-de-fra --node ams:eu-nl-ams ... [--force]`:
/// a fresh CA (`ca.pem`, `ca.key`) and one certificate per node (`<id>.pem`, `<id>.key`).
/// Nothing is written if a name is invalid or duplicated, or (without `force`) if a file exists.
pub fn write_dev_cluster(
    dir: &Path,
    nodes: &[NodeIdentity],
    force: bool,
) -> Result<DevCluster, CertError> {
    let mut seen = std::collections::BTreeSet::new();
    for node in nodes {
        validate_node_id(&node.node_id)?;
        validate_region(&node.region)?;
        check_not_reserved(&node.node_id)?;
        if !seen.insert(node.node_id.as_str()) {
            return Err(CertError::DuplicateNode(node.node_id.clone()));
        }
    }
    if !force {
        let stems = std::iter::once("ca").chain(nodes.iter().map(|n| n.node_id.as_str()));
        for stem in stems {
            for ext in ["pem", "key"] {
                let path = dir.join(format!("{stem}.{ext}"));
                if path.exists() {
                    return Err(CertError::Exists(path));
                }
            }
        }
    }
    create_dir(dir)?;
    let (ca_cert, ca_key) = generate_ca("kaskade dev cluster")?;
    let mut written = Vec::with_capacity(nodes.len());
    for node in nodes {
        let (cert, key) = generate_node(&ca_cert, &ca_key, &node.node_id, &node.region, &[])?;
        written.push((
            node.clone(),
            write_pair(dir, &node.node_id, &cert, &key, force)?,
        ));
    }
    let ca = write_pair(dir, "ca", &ca_cert, &ca_key, force)?;
    Ok(DevCluster { ca, nodes: written })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cascade::cert::identity_of_pem;

    #[test]
    fn files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<NodeIdentity> = ["fra:eu-de-fra", "ams:eu-nl-ams"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let cluster = write_dev_cluster(dir.path(), &nodes, false).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cluster.ca.key), 0o600);
        assert_eq!(mode(&cluster.ca.cert), 0o644);
        for (node, files) in &cluster.nodes {
            assert_eq!(mode(&files.key), 0o600);
            assert_eq!(files.cert, dir.path().join(format!("{}.pem", node.node_id)));
            let pem = read_pem_file(&files.cert).unwrap();
            assert_eq!(&identity_of_pem(&pem).unwrap(), node);
        }
        // No silent overwrite.
        assert!(matches!(
            write_dev_cluster(dir.path(), &nodes, false),
            Err(CertError::Exists(_))
        ));
        assert!(matches!(
            write_ca(dir.path(), "x", false),
            Err(CertError::Exists(_))
        ));
        // A further node signed by the existing CA.
        let par: NodeIdentity = "par:eu-fr-par".parse().unwrap();
        let files = write_node(
            &cluster.ca.cert,
            &cluster.ca.key,
            &par,
            &["localhost".into()],
            dir.path(),
            false,
        )
        .unwrap();
        assert_eq!(
            identity_of_pem(&read_pem_file(&files.cert).unwrap()).unwrap(),
            par
        );
        // Duplicates and the reserved name are refused before anything is written.
        let other = tempfile::tempdir().unwrap();
        let dup = vec![nodes[0].clone(), nodes[0].clone()];
        assert!(matches!(
            write_dev_cluster(other.path(), &dup, false),
            Err(CertError::DuplicateNode(_))
        ));
        let ca_node = vec![NodeIdentity::new("ca", "eu").unwrap()];
        assert!(write_dev_cluster(other.path(), &ca_node, false).is_err());
        assert_eq!(fs::read_dir(other.path()).unwrap().count(), 0);
        // Forced overwrite works and keeps key permissions.
        let again = write_dev_cluster(dir.path(), &nodes, true).unwrap();
        assert_eq!(mode(&again.ca.key), 0o600);
    }
}
