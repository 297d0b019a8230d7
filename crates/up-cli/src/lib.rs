//! up-cli library: uploads files to `up-srv` with SHA-256 verification,
//! resume and already-stored detection, and lists and fetches them back,
//! reporting through a [`Reporter`] so the binary decides what goes to
//! stdout (one `sha256sum` line per file) and what to stderr.
//!
//! # Layout
//! - [`target`]: `--host`/`--port` into one address, IPv6 bracketed.
//! - [`jobs`]: turns command-line paths into files with their upload names.
//! - [`client`]: the binary protocol's connection and the upload of many files.
//! - [`download`]: `ls` and `get` (verified, resumable downloads).
//! - [`legacy`]: the original tutorial's protocol, for its Python server.
//! - [`pipeline`]: small files as puts, sent without waiting for answers.
//! - [`reader`]: reads and hashes a file on a blocking thread into recycled buffers.
//! - [`throttle`]: the `--limit-rate` token bucket.
//! - [`progress`]: indicatif bars, one line per problem and the summary.

use std::io;
use std::time::Duration;

pub mod client;
pub mod download;
pub mod jobs;
pub mod legacy;
pub mod pipeline;
pub mod progress;
pub mod reader;
pub mod target;
pub mod throttle;

pub use jobs::FileJob;
pub use target::Target;

/// Port of `up-srv` unless told otherwise (the wire default).
pub const DEFAULT_PORT: u16 = proto::upload::DEFAULT_PORT;

/// Longest wait for a server reply (hello, offer, verification of a large file).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server.
    pub server: Target,
    /// Shared token, if the server requires one.
    pub token: Option<String>,
    /// Body bytes per second; `None` for no limit.
    pub limit_rate: Option<u64>,
    /// Testing aid: drop the connection after this many body bytes.
    pub abort_after: Option<u64>,
    /// Digest uploads are verified with (`--hash`); SHA-256 by default.
    pub hash: proto::digest::Algorithm,
    /// Connect with TLS, verified by this connector; `None` = plain TCP.
    pub tls: Option<transport::Connector>,
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (or downloaded) and verified.
    Stored {
        /// Name relative to the server's upload dir.
        name: String,
        /// SHA-256 of the file, as confirmed by the server.
        sha256: [u8; 32],
        /// Body bytes sent (or received) in this run.
        sent: u64,
        /// Bytes the other side already held (a resume).
        resumed: u64,
    },
    /// The server already held the same content under that name: nothing sent.
    AlreadyStored {
        /// Name relative to the server's upload dir.
        name: String,
        /// SHA-256 of the file, the same on both ends.
        sha256: [u8; 32],
    },
    /// Not stored; the reason is one line.
    Failed(String),
}

/// Receives events while files move. Implemented by the progress bars and by tests.
pub trait Reporter {
    /// `bytes` of a local file are about to be hashed to compare them with
    /// the server's (a resume, or a file the server already holds).
    fn verifying(&mut self, name: &str, bytes: u64);
    /// A file's body is about to move from `offset` (non-zero on resume).
    fn file_started(&mut self, name: &str, size: u64, offset: u64);
    /// `bytes` more bytes were hashed, sent or received.
    fn advanced(&mut self, bytes: u64);
    /// A notice for the user (resume, restart); goes to stderr.
    fn notice(&mut self, message: &str);
    /// The final outcome of a file of `size` bytes.
    fn finished(&mut self, size: u64, outcome: &Outcome);
}

/// An io error's reason without the `(os error N)` tail.
pub fn plain(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(at) => s[..at].to_string(),
        None => s,
    }
}

/// Errors of the client library, each one line naming the thing involved.
/// Those wrapping an io error keep it, so its kind can be matched.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {} (is up-srv running there? check --host and --port)", plain(.source))]
    Connect {
        /// host:port.
        addr: Target,
        /// The cause.
        source: io::Error,
    },
    /// The peer answered with something that is not the upload protocol.
    #[error("{addr} is not an up-srv (it sent {sent})")]
    NotUpSrv {
        /// host:port.
        addr: Target,
        /// The first bytes it sent, quoted and escaped.
        sent: String,
    },
    /// The TLS handshake or the server's verification failed; nothing was sent.
    #[error(transparent)]
    Tls(#[from] transport::TlsError),
    /// The connection failed mid-exchange.
    #[error("connection to {addr} failed: {reason}")]
    Connection {
        /// host:port.
        addr: Target,
        /// The io error kind (`Other` for protocol failures).
        kind: io::ErrorKind,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the connection or the request.
    #[error("server refused: {0}")]
    Refused(String),
    /// A local file could not be read or written.
    #[error("{action} {path}: {}", plain(.source))]
    Local {
        /// What was being done (`cannot read`).
        action: &'static str,
        /// The local path.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// `--abort-after` stopped the upload on purpose.
    #[error("aborted after {0} body bytes (--abort-after)")]
    Aborted(u64),
}

impl ClientError {
    /// A local read failure of `path`.
    pub fn read(path: &std::path::Path, source: io::Error) -> Self {
        ClientError::Local {
            action: "cannot read",
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_reasons_lose_the_os_error_tail() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(plain(&e), "No such file or directory");
        let err = ClientError::read(std::path::Path::new("f"), e);
        assert_eq!(err.to_string(), "cannot read f: No such file or directory");
        assert!(
            matches!(err, ClientError::Local { ref source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
    }
}
