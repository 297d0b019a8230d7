//! The server's TLS identity: its certificate chain and private key, from
//! PEM files or self-signed and kept in a state dir.
//!
//! The self-signed certificate is made once (rcgen, ECDSA P-256) for
//! `localhost`, `127.0.0.1`, `::1` and the host's name, and written as
//! `cert.pem` and `key.pem` (mode 0600) in the state dir; later starts reuse
//! it, so a fingerprint that clients pinned stays valid across restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::{provider, Fingerprint, TlsError};

/// File name of the kept self-signed certificate in the state dir.
pub const SELF_SIGNED_CERT: &str = "cert.pem";
/// File name of its private key (mode 0600).
pub const SELF_SIGNED_KEY: &str = "key.pem";

/// A certificate chain with its private key.
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Where it came from, for the start-up line.
    pub origin: Origin,
}

/// How an [`Identity`] was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--tls-cert` and `--tls-key`.
    Files,
    /// Self-signed, made now and kept in this dir.
    Created(PathBuf),
    /// Self-signed, made by an earlier start and read from this dir.
    Reused(PathBuf),
}

impl Identity {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8; RSA, ECDSA or Ed25519).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let chain = read_certs(cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
            what: "private key",
            path: key.to_owned(),
            reason: pem_reason(&e),
        })?;
        let identity = Identity {
            chain,
            key,
            origin: Origin::Files,
        };
        identity.check()?;
        Ok(identity)
    }

    /// The self-signed identity kept in `state_dir`, made (and the dir
    /// created, mode 0700) if it is not there yet.
    pub fn self_signed(state_dir: &Path) -> Result<Identity, TlsError> {
        let cert = state_dir.join(SELF_SIGNED_CERT);
        let key = state_dir.join(SELF_SIGNED_KEY);
        if cert.exists() && key.exists() {
            let mut identity = Identity::from_pem_files(&cert, &key)?;
            identity.origin = Origin::Reused(state_dir.to_owned());
            warn_if_key_exposed(&key);
            return Ok(identity);
        }
        let made = make_self_signed(state_dir)?;
        write_kept(state_dir, &made)?;
        let mut identity = Identity::from_pem_files(&cert, &key)?;
        identity.origin = Origin::Created(state_dir.to_owned());
        Ok(identity)
    }

    /// The leaf certificate's SHA-256 fingerprint, which clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        // `read_certs` refuses an empty chain.
        self.chain
            .first()
            .map_or_else(|| Fingerprint::of(&[]), |leaf| Fingerprint::of(leaf))
    }

    /// A TLS acceptor serving this identity (TLS 1.2 and 1.3, no client certificates).
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Proves the key matches the certificate and is of a supported kind.
    fn check(&self) -> Result<(), TlsError> {
        self.acceptor().map(drop)
    }
}

pub(crate) fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |reason: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(pem_err(
            "no \"BEGIN CERTIFICATE\" block in it (expected PEM)".into(),
        ));
    }
    Ok(certs)
}

fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => crate::listen::lower_reason(io),
        Error::NoItemsFound => {
            "no PEM block of that kind in it (expected PEM, PKCS#8 for keys)".into()
        }
        other => format!("not valid PEM ({other:?})"),
    }
}

struct Made {
    cert_pem: String,
    key_pem: String,
}

fn make_self_signed(state_dir: &Path) -> Result<Made, TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(host) = host_name() {
        names.push(host);
    }
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::State {
        path: state_dir.to_owned(),
        reason: format!("cannot make a certificate: {e}"),
    })?;
    Ok(Made {
        cert_pem: made.cert.pem(),
        key_pem: made.key_pair.serialize_pem(),
    })
}

/// The host's name, if it is a valid DNS name (so it can go in the SAN list).
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    let valid = !name.is_empty()
        && name != "localhost"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| name.to_owned())
}

/// Writes key then certificate, each through a temporary file renamed into
/// place, so a crash never leaves a half-written pair that a later start
/// would take as kept.
fn write_kept(state_dir: &Path, made: &Made) -> Result<(), TlsError> {
    let state_err = |path: &Path, e: std::io::Error| TlsError::State {
        path: path.to_owned(),
        reason: crate::listen::lower_reason(&e),
    };
    create_private_dir(state_dir).map_err(|e| state_err(state_dir, e))?;
    for (name, text) in [
        (SELF_SIGNED_KEY, &made.key_pem),
        (SELF_SIGNED_CERT, &made.cert_pem),
    ] {
        let path = state_dir.join(name);
        let tmp = state_dir.join(format!(".{name}.tmp"));
        write_private(&tmp, text.as_bytes()).map_err(|e| state_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| state_err(&path, e))?;
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn warn_if_key_exposed(key: &Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(key) {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "TLS key {} is readable by other users (chmod 600 it)",
                key.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_with_a_private_key_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = Identity::self_signed(&state).unwrap();
        assert_eq!(first.origin, Origin::Created(state.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&state.join(SELF_SIGNED_KEY)), 0o600);
            assert_eq!(mode(&state), 0o700);
        }
        let second = Identity::self_signed(&state).unwrap();
        assert_eq!(second.origin, Origin::Reused(state.clone()));
        assert_eq!(first.fingerprint(), second.fingerprint());
    }

    #[test]
    fn missing_and_non_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem at all\n").unwrap();
        let err = Identity::from_pem_files(&junk, &junk)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot use certificate"), "{err}");
        assert!(err.contains("junk.pem"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = Identity::from_pem_files(&missing, &junk)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::self_signed(&dir.path().join("a")).unwrap();
        let b = Identity::self_signed(&dir.path().join("b")).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        let err = Identity::from_pem_files(
            &dir.path().join("a").join(SELF_SIGNED_CERT),
            &dir.path().join("b").join(SELF_SIGNED_KEY),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("tls set-up failed"), "{err}");
    }
}
