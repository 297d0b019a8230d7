//! up-cli library: uploads files to `up-srv` with SHA-256 verification and
//! resume, reporting through a [`Reporter`] so the binary decides what goes
//! to stdout (one `sha256sum` line per stored file) and what to stderr.
//!
//! # Layout
//! - [`jobs`]: turns command-line paths into files with their upload names.
//! - [`client`]: the binary protocol, one connection for many files.
//! - [`legacy`]: the original tutorial's protocol, for its Python server.
//! - [`reader`]: reads and hashes a file on a blocking thread into recycled buffers.
//! - [`throttle`]: the `--limit-rate` pacing.
//! - [`progress`]: indicatif bars and the final summary.

use std::time::Duration;

pub mod client;
pub mod jobs;
pub mod legacy;
pub mod progress;
pub mod reader;
pub mod throttle;

pub use jobs::FileJob;

/// Port of `up-srv` unless told otherwise.
pub const DEFAULT_PORT: u16 = 9998;

/// Longest wait for a server reply (hello, offer, verification of a large file).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct Options {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Shared token, if the server requires one.
    pub token: Option<String>,
    /// Body bytes per second; `None` for no limit.
    pub limit_rate: Option<u64>,
    /// Testing aid: drop the connection after this many body bytes.
    pub abort_after: Option<u64>,
    /// Connect with TLS, verified by this connector; `None` = plain TCP.
    pub tls: Option<transport::Connector>,
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and verified by the server.
    Stored {
        /// Name relative to the server's upload dir.
        name: String,
        /// SHA-256 of the file, as confirmed by the server.
        sha256: [u8; 32],
        /// Body bytes sent in this run (less than the size after a resume).
        sent: u64,
    },
    /// Not stored; the reason is one line.
    Failed(String),
}

/// Receives events while files are uploaded. Implemented by the progress
/// bars and by tests.
pub trait Reporter {
    /// A file's body is about to be sent from `offset` (non-zero on resume).
    fn file_started(&mut self, job: &FileJob, offset: u64);
    /// `bytes` more body bytes of the current file were sent.
    fn advanced(&mut self, bytes: u64);
    /// A notice for the user (resume, restart); goes to stderr.
    fn notice(&mut self, message: &str);
    /// The final outcome of a file.
    fn finished(&mut self, job: &FileJob, outcome: &Outcome);
}

/// Errors of the client library, each one line naming the thing involved.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error(
        "cannot connect to {addr}: {source} (is up-srv running there? check --host and --port)"
    )]
    Connect {
        /// host:port.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS handshake or the server's verification failed; nothing was sent.
    #[error(transparent)]
    Tls(#[from] transport::TlsError),
    /// The connection failed mid-exchange.
    #[error("connection to {addr} failed: {reason}")]
    Connection {
        /// host:port.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the connection itself (token, version).
    #[error("server refused the connection: {0}")]
    Refused(String),
    /// A local file could not be read.
    #[error("cannot read {path}: {reason}")]
    Local {
        /// The local path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// `--abort-after` stopped the upload on purpose.
    #[error("aborted after {0} body bytes (--abort-after)")]
    Aborted(u64),
}
