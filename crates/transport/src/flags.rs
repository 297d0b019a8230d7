//! The TLS flags both servers and both clients share, as clap argument
//! groups to `#[command(flatten)]`, and what they turn into: the server's
//! [`Port`]s ([`ServerTls::open_ports`]) and the client's optional
//! [`Connector`] ([`ClientTls::connector`]).
//!
//! Keeping the flags here keeps their names, help texts and rules the same
//! in all four programs.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use tracing::{info, warn};

use crate::tls::server::Origin;
use crate::{bind, BindError, Connector, Fingerprint, Identity, Port, TlsError, Trust};

/// Server flags: `--tls-port`, `--tls-cert`, `--tls-key`, `--state-dir`, `--no-plain`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTls {
    /// Also listen with TLS on this port (same --bind address). Without
    /// --tls-cert, a self-signed certificate is made once, kept in --state-dir
    /// and reused; its SHA-256 fingerprint is logged at start for clients' --tls-pin
    #[arg(long, value_name = "PORT")]
    pub tls_port: Option<u16>,
    /// Certificate chain for the TLS port (PEM, leaf first)
    #[arg(long, value_name = "PEM", requires = "tls_key", requires = "tls_port")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM, PKCS#8; RSA or ECDSA)
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where the self-signed certificate and its key (mode 0600) are kept
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve TLS only: do not open the plain port
    #[arg(long, requires = "tls_port")]
    pub no_plain: bool,
}

/// What a server says to clients on the wrong kind of port, and how it is named.
#[derive(Debug, Clone)]
pub struct Hints {
    /// Program name for bind hints (`chat-srv`).
    pub program: &'static str,
    /// What travels in clear on a plain port, for the exposure warning
    /// ("chat lines", "files and the upload token").
    pub carries: &'static str,
    /// Written to a TLS client that dials the plain port.
    pub tls_client_on_plain_port: Vec<u8>,
    /// Written to a plain client that dials the TLS port.
    pub plain_client_on_tls_port: Vec<u8>,
}

/// A server's listening set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A port could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The TLS identity could not be loaded or made.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl ServerTls {
    /// Binds the plain port (unless `--no-plain`) and the TLS port (if
    /// `--tls-port`), loading or making the certificate, and logs what
    /// clients need: the TLS address and the fingerprint to pin, or a
    /// warning when a plain port is reachable from other hosts.
    /// `default_state_dir` is used without `--state-dir`.
    pub fn open_ports(
        &self,
        ip: IpAddr,
        port: u16,
        default_state_dir: impl FnOnce() -> PathBuf,
        hints: &Hints,
    ) -> Result<Vec<Port>, SetupError> {
        let mut ports = Vec::new();
        if let Some(tls_port) = self.tls_port {
            let identity = match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Identity::from_pem_files(cert, key)?,
                _ => Identity::self_signed(
                    &self.state_dir.clone().unwrap_or_else(default_state_dir),
                )?,
            };
            let acceptor = identity.acceptor()?;
            let listener = bind(SocketAddr::new(ip, tls_port), hints.program, "--tls-port")?;
            announce(&listener, &identity);
            ports.push(Port::tls(
                listener,
                acceptor,
                hints.plain_client_on_tls_port.clone(),
            ));
        }
        if !self.no_plain {
            let listener = bind(SocketAddr::new(ip, port), hints.program, "--port")?;
            if !ip.is_loopback() {
                warn!(
                    "plain port {ip}:{port} is reachable from other hosts: {} travel in clear \
                     (serve TLS with --tls-port, and close this port with --no-plain)",
                    hints.carries
                );
            }
            ports.push(Port::plain(
                listener,
                hints.tls_client_on_plain_port.clone(),
            ));
        }
        Ok(ports)
    }
}

fn announce(listener: &tokio::net::TcpListener, identity: &Identity) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let origin = match &identity.origin {
        Origin::Files => "from --tls-cert".to_owned(),
        Origin::Created(dir) => format!("self-signed, made now in {}", dir.display()),
        Origin::Reused(dir) => format!("self-signed, kept in {}", dir.display()),
    };
    info!(
        "TLS on {addr} ({origin}); certificate SHA-256 fingerprint {fp} (clients: --tls-pin {fp})",
        fp = identity.fingerprint()
    );
}

/// Client flags: `--tls`, `--tls-ca`, `--tls-pin`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTls {
    /// Connect with TLS, verifying the server against the system's root certificates
    #[arg(long, global = true)]
    pub tls: bool,
    /// Trust this CA or certificate (PEM) instead of the system's roots; implies --tls
    #[arg(long, global = true, value_name = "PEM", conflicts_with = "tls_pin")]
    pub tls_ca: Option<PathBuf>,
    /// Accept exactly the server certificate with this SHA-256 fingerprint (hex;
    /// colons and case ignored, as `openssl x509 -noout -fingerprint -sha256`
    /// prints it); implies --tls
    #[arg(long, global = true, value_name = "FINGERPRINT", value_parser = parse_pin)]
    pub tls_pin: Option<Fingerprint>,
}

fn parse_pin(text: &str) -> Result<Fingerprint, String> {
    text.parse().map_err(|e: TlsError| e.to_string())
}

impl ClientTls {
    /// How to verify the server, or `None` for a plain connection.
    pub fn trust(&self) -> Option<Trust> {
        if let Some(pin) = self.tls_pin {
            Some(Trust::Pin(pin))
        } else if let Some(ca) = &self.tls_ca {
            Some(Trust::Ca(ca.clone()))
        } else {
            self.tls.then_some(Trust::System)
        }
    }

    /// The connector for these flags, or `None` for a plain connection.
    pub fn connector(&self) -> Result<Option<Connector>, TlsError> {
        self.trust().map(|t| Connector::new(&t)).transpose()
    }
}

/// `$XDG_DATA_HOME/<app>`, else `~/.local/share/<app>`, else `./.<app>`:
/// the user's data dir, where `chat-srv` keeps its self-signed certificate.
pub fn user_data_dir(app: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".local").join("share"))
        });
    match base {
        Some(base) => base.join(app),
        None => PathBuf::from(format!(".{app}")),
    }
}
