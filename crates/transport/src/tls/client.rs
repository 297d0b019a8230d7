//! The client side: a [`Connector`] that verifies the server by [`Trust`]
//! and returns a [`Stream`] only once verification has passed, so no
//! application byte is ever sent to an unverified server.
//!
//! System roots come from `rustls-native-certs`, the operating system's own
//! trust store: it follows the distribution's updates and the CAs an
//! administrator added (a company CA, say) without rebuilding, where
//! `webpki-roots` would freeze a copy of Mozilla's list into the binary.
//!
//! A failed verification is one line with the certificate's fingerprint and
//! the `--tls-pin` that would accept it: the self-signed case is the common
//! one, and the user checks that fingerprint against the server's start-up
//! line instead of turning verification off.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{provider, Fingerprint, TlsError};
use crate::Stream;

/// How long a client waits for the TLS handshake to finish.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server certificates a client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Those that chain to the operating system's root certificates and name the host.
    System,
    /// Those that chain to a certificate in this PEM file (`--tls-ca`) and name the host.
    Ca(std::path::PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint (`--tls-pin`),
    /// whatever its issuer, names or dates.
    Pin(Fingerprint),
}

/// Opens TLS connections verified by one [`Trust`].
#[derive(Clone)]
pub struct Connector {
    connector: TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl Connector {
    /// Loads the roots `trust` names (or nothing, for a pin).
    pub fn new(trust: &Trust) -> Result<Connector, TlsError> {
        let provider = provider();
        let algorithms = provider.signature_verification_algorithms;
        let check = match trust {
            Trust::Pin(pin) => Check::Pin(*pin),
            Trust::System => Check::Roots(webpki(system_roots()?, &provider)?),
            Trust::Ca(path) => {
                let mut roots = RootCertStore::empty();
                for cert in super::server::read_certs(path, "CA file")? {
                    roots.add(cert).map_err(|e| TlsError::Pem {
                        what: "CA file",
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                Check::Roots(webpki(roots, &provider)?)
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier { check, algorithms }))
            .with_no_client_auth();
        Ok(Connector {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Performs the handshake on `tcp`, verifying the server as `host`
    /// (`port` only names it in errors).
    pub async fn connect(&self, tcp: TcpStream, host: &str, port: u16) -> Result<Stream, TlsError> {
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let peer = tcp.peer_addr().map_err(|e| TlsError::Handshake {
            addr: addr.clone(),
            reason: crate::listen::lower_reason(&e),
        })?;
        let name = server_name(host);
        let handshake = self.connector.connect(name, tcp);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Err(_) => Err(TlsError::Timeout {
                addr,
                secs: HANDSHAKE_TIMEOUT.as_secs(),
            }),
            Ok(Ok(tls)) => Ok(Stream::tls(tls.into(), peer)),
            Ok(Err(e)) => Err(handshake_error(addr, &e)),
        }
    }
}

/// The name to verify: an IP address or a DNS name as given. A name that is
/// neither cannot match any certificate, which only matters without a pin.
fn server_name(host: &str) -> ServerName<'static> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).unwrap_or(ServerName::IpAddress(
        // 0.0.0.0 is in no certificate, so an unusable name can only pass with a pin.
        rustls::pki_types::IpAddr::from(std::net::IpAddr::from([0, 0, 0, 0])),
    ))
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Maps a failed handshake to the one-line error the user sees.
fn handshake_error(addr: String, e: &std::io::Error) -> TlsError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) => {
            if let Some(refusal) = other.0.downcast_ref::<Refusal>() {
                return match refusal {
                    Refusal::Pin(fingerprint) => TlsError::PinMismatch {
                        addr,
                        fingerprint: *fingerprint,
                    },
                    Refusal::Untrusted(fingerprint, reason) => TlsError::Untrusted {
                        addr,
                        reason: reason.clone(),
                        fingerprint: *fingerprint,
                    },
                };
            }
        }
        Some(rustls::Error::InvalidMessage(_)) => return TlsError::NotTls { addr },
        _ => {}
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        // A plain server that reads our ClientHello as garbage and hangs up.
        return TlsError::NotTls { addr };
    }
    TlsError::Handshake {
        addr,
        reason: match rustls_error {
            Some(r) => r.to_string(),
            None => crate::listen::lower_reason(e),
        },
    }
}

/// Why the verifier refused a certificate; carried through rustls inside
/// `CertificateError::Other` so the caller can print the fingerprint.
#[derive(Debug)]
enum Refusal {
    Pin(Fingerprint),
    Untrusted(Fingerprint, String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Pin(fp) => write!(f, "certificate {fp} is not the pinned one"),
            Refusal::Untrusted(fp, reason) => write!(f, "certificate {fp}: {reason}"),
        }
    }
}

impl std::error::Error for Refusal {}

fn refuse(refusal: Refusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        refusal,
    ))))
}

#[derive(Debug)]
enum Check {
    Roots(Arc<WebPkiServerVerifier>),
    Pin(Fingerprint),
}

/// Verifies by roots or by pin; either way the handshake signatures are
/// checked against the presented certificate's key, so a pin cannot be
/// satisfied by someone who merely copied the certificate.
#[derive(Debug)]
struct Verifier {
    check: Check,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        match &self.check {
            Check::Pin(pin) if *pin == presented => Ok(ServerCertVerified::assertion()),
            Check::Pin(_) => Err(refuse(Refusal::Pin(presented))),
            Check::Roots(webpki) => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| refuse(Refusal::Untrusted(presented, reason(&e)))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A short lower-case reason for a verification failure.
fn reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "its issuer is not trusted".into(),
            CertificateError::BadSignature => "its signature is invalid".into(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "it has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "it is not valid yet".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "it is not valid for that host name".into()
            }
            CertificateError::Revoked => "it was revoked".into(),
            other => format!("{other:?}").to_lowercase(),
        },
        other => other.to_string(),
    }
}
