//! Certificates for tests of this crate and of the programs that use it: a
//! CA and a leaf for `127.0.0.1` and `localhost` signed by it, written as
//! PEM files. Not for production use (no key protection, fixed names).

use std::path::{Path, PathBuf};

/// PEM files of a test CA (`ca.pem`) and of a leaf it signed (`leaf.pem`,
/// `leaf.key`), in a dir the caller owns.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate, for `--tls-ca`.
    pub ca: PathBuf,
    /// The leaf certificate, for `--tls-cert`.
    pub cert: PathBuf,
    /// The leaf's PKCS#8 key, for `--tls-key`.
    pub key: PathBuf,
}

impl TestPki {
    /// Makes a fresh CA and leaf in `dir` (which must exist).
    pub fn new(dir: &Path) -> Result<TestPki, rcgen::Error> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // rcgen's default subject is shared by every certificate it makes,
        // which would make any self-signed one look issued by this CA.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sockchat test CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
                .signed_by(&leaf_key, &ca, &ca_key)?;
        let pki = TestPki {
            ca: dir.join("ca.pem"),
            cert: dir.join("leaf.pem"),
            key: dir.join("leaf.key"),
        };
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|e| rcgen::Error::PemError(e.to_string()))
        };
        write(&pki.ca, ca.pem())?;
        write(&pki.cert, leaf.pem())?;
        write(&pki.key, leaf_key.serialize_pem())?;
        Ok(pki)
    }

    /// The leaf as a server identity.
    pub fn identity(&self) -> Result<crate::Identity, crate::TlsError> {
        crate::Identity::from_pem_files(&self.cert, &self.key)
    }
}
