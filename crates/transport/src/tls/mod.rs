//! TLS for both servers and both clients: rustls through tokio-rustls, with
//! the ring provider only (the workspace's one crypto crate).
//!
//! - [`server`]: the server's [`Identity`] from `--tls-cert`/`--tls-key` PEM
//!   files, or a self-signed certificate made once and kept in a state dir;
//!   [`Identity::acceptor`] turns it into a `TlsAcceptor`.
//! - [`client`]: the [`Connector`] that verifies the server by [`Trust`]: the
//!   system's roots, a CA file, or a pinned SHA-256 fingerprint.
//! - [`fingerprint`]: [`Fingerprint`], printed and parsed the way
//!   `openssl x509 -noout -fingerprint -sha256` shows it.

pub mod client;
pub mod fingerprint;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;

pub use client::{Connector, Trust};
pub use fingerprint::Fingerprint;
pub use server::Identity;

/// The ring crypto provider, the only one the workspace builds.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS set-up and handshake failures, each one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot use {what} {}: {reason}", path.display())]
    Pem {
        /// "certificate", "private key" or "CA file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The state dir or a file in it could not be written.
    #[error("cannot keep the self-signed certificate in {}: {reason} (choose another --state-dir)", path.display())]
    State {
        /// The file or dir.
        path: PathBuf,
        /// Why, lower-case.
        reason: String,
    },
    /// rustls refused the certificate, key or settings.
    #[error("tls set-up failed: {0}")]
    Config(String),
    /// `--tls-pin` is not a SHA-256 fingerprint.
    #[error("bad --tls-pin {given:?}: expected 64 hex digits, colons allowed (as `openssl x509 -noout -fingerprint -sha256` prints)")]
    BadPin {
        /// What was given.
        given: String,
    },
    /// No trusted roots could be loaded from the system.
    #[error("no system root certificates found (install ca-certificates, or pass --tls-ca FILE or --tls-pin FINGERPRINT)")]
    NoSystemRoots,
    /// The server's certificate is not trusted; nothing was sent.
    #[error("cannot trust {addr}: {reason}; its certificate's SHA-256 fingerprint is {fingerprint}; if that is your server's (it prints it at start), connect with --tls-pin {fingerprint}")]
    Untrusted {
        /// host:port dialled.
        addr: String,
        /// What verification found.
        reason: String,
        /// The certificate presented.
        fingerprint: Fingerprint,
    },
    /// The server's certificate is not the pinned one; nothing was sent.
    #[error("{addr} presented a certificate that does not match --tls-pin: its SHA-256 fingerprint is {fingerprint}; if the server's certificate was changed on purpose, connect with --tls-pin {fingerprint}")]
    PinMismatch {
        /// host:port dialled.
        addr: String,
        /// The certificate presented.
        fingerprint: Fingerprint,
    },
    /// The peer did not answer with TLS.
    #[error("{addr} did not answer with TLS: it looks like a plain port (drop --tls, or use the port the server serves with --tls-port)")]
    NotTls {
        /// host:port dialled.
        addr: String,
    },
    /// The handshake did not finish in time.
    #[error("TLS handshake with {addr} timed out after {secs} s (is that a TLS port?)")]
    Timeout {
        /// host:port dialled.
        addr: String,
        /// The limit.
        secs: u64,
    },
    /// Any other handshake failure.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake {
        /// host:port dialled.
        addr: String,
        /// Why.
        reason: String,
    },
}
