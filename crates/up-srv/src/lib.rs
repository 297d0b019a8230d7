//! up-srv: a verified, resumable, atomic file-upload server.
//!
//! The caller binds the listener and passes a shutdown future to [`run`], so
//! tests run the server in-process on port 0 and `main.rs` stays thin. The
//! wire protocol lives in [`proto::upload`] and is specified in
//! `docs/PROTOCOL.md` ("Upload").
//!
//! # Layout
//! - [`server`]: accept loop, connection limit, shutdown.
//! - [`shared`]: state shared by sessions (settings, storage, upload slots).
//! - [`session`]: one connection: form detection, the legacy exchange and the
//!   binary protocol's per-file state machine, listings and downloads.
//! - [`body`]: receives a raw body while hashing and writing on a blocking thread.
//! - [`sendfile`]: streams a stored file to a `get` client.
//! - [`storage`]: partial files, fsync, no-clobber rename, digest records;
//!   no sockets.
//! - [`duration`]: parsing `30s`/`7d` durations for the flags (sizes use
//!   [`proto::size`]).
//! - [`store`]: finished files in S3-compatible object storage (`--store`).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

pub mod body;
pub mod duration;
pub mod sendfile;
pub mod server;
pub mod session;
pub mod shared;
pub mod storage;
pub mod store;

/// Port the server listens on unless told otherwise (the wire default).
pub const DEFAULT_PORT: u16 = proto::upload::DEFAULT_PORT;

/// Default `--max-size`: 64 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 64 << 30;

/// Default `--max-uploads`.
pub const DEFAULT_MAX_UPLOADS: usize = 64;

/// Default `--idle-timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default `--header-timeout`: a whole control frame (hello, offer, start,
/// finish, the legacy size) must arrive within this long of its first byte.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `--min-rate` in bytes per second (0 turns the check off).
pub const DEFAULT_MIN_RATE: u64 = 1024;

/// Window over which a body's average rate is checked against `--min-rate`:
/// long enough that a brief network stall does not end an honest upload.
pub const MIN_RATE_WINDOW: Duration = Duration::from_secs(30);

/// Default `--partial-max-age`: 7 days.
pub const DEFAULT_PARTIAL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Server settings: where files go and the limits that protect the host.
#[derive(Debug, Clone)]
pub struct Config {
    /// Upload dir; created if missing.
    pub dir: PathBuf,
    /// Replace existing files instead of storing `name (n).ext`.
    pub overwrite: bool,
    /// Largest declared size accepted; checked before any byte is written.
    pub max_size: u64,
    /// Concurrent uploads; more are refused with a code, never queued silently.
    pub max_uploads: usize,
    /// Connections held at once (plain and TLS together); more are sent a
    /// refusal frame and closed, so idle sockets cannot exhaust descriptors.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (partials kept).
    pub idle_timeout: Duration,
    /// Deadline for one control frame, from its first byte to its last; the
    /// idle timeout alone resets on every byte, so a drip would never end.
    pub header_timeout: Duration,
    /// A body receiving fewer than `min_rate * min_rate_window` bytes in any
    /// window is ended (partial kept); 0 = no minimum.
    pub min_rate: u64,
    /// Length of the `min_rate` window; [`MIN_RATE_WINDOW`] outside tests.
    pub min_rate_window: Duration,
    /// Shared token every binary client must present (from `--token`,
    /// `--token-file` or `UP_TOKEN`); `None` = open server. Compared in
    /// constant time.
    pub token: Option<String>,
    /// fsync data and directories; off only for benchmarks (a crash may lose
    /// or tear files that were reported stored).
    pub fsync: bool,
    /// Partials untouched for longer than this are removed at start.
    pub partial_max_age: Duration,
    /// Serve `ls` and `get` (off by default: the server is a drop box).
    pub allow_get: bool,
    /// Finished files go into this object store instead of `dir` (which then
    /// holds only partials); `None` = the upload dir, the default.
    pub store: Option<store::Store>,
}

impl Config {
    /// Settings with the documented defaults, storing into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Config {
            dir: dir.into(),
            overwrite: false,
            max_size: DEFAULT_MAX_SIZE,
            max_uploads: DEFAULT_MAX_UPLOADS,
            max_connections: server::MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            min_rate: DEFAULT_MIN_RATE,
            min_rate_window: MIN_RATE_WINDOW,
            token: None,
            fsync: true,
            partial_max_age: DEFAULT_PARTIAL_MAX_AGE,
            allow_get: false,
            store: None,
        }
    }
}

/// Errors that stop the server before or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The upload dir could not be prepared.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// The listener's address could not be read.
    #[error("cannot read the listening address: {0}")]
    LocalAddr(std::io::Error),
    /// The server task failed (a bug: it panicked).
    #[error("server task failed: {0}")]
    Task(String),
}

/// Serves uploads on `listener` until `shutdown` completes, then lets
/// in-flight uploads stop as resumable partials (within about 1.5 s).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    server::run(listener, config, shutdown).await
}

/// Like [`run`], on every port in `ports` (plain and TLS), with one
/// connection cap across them.
pub async fn serve(
    ports: Vec<transport::Port>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let prepared = server::prepare(config).await?;
    server::serve(ports, prepared, shutdown).await
}

/// Where `up-srv` keeps its self-signed TLS certificate without
/// `--state-dir`: a `.tls` folder beside the upload dir (not inside it, so
/// the key is never served or listed with the uploads).
pub fn default_state_dir(upload_dir: &std::path::Path) -> PathBuf {
    let parent = upload_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    parent.join(".tls")
}

/// A server running on its own task, for tests, benchmarks and the clients'
/// tests: stop it with [`Handle::stop`] (or drop it to cancel without waiting).
#[derive(Debug)]
pub struct Handle {
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    /// Cancels the server when the handle is dropped without `stop`.
    _guard: tokio_util::sync::DropGuard,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Handle {
    /// Triggers shutdown and waits for [`run`] to return.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Task(e.to_string())),
        }
    }
}

/// Runs the server on `listener` in a new task of the current runtime. The
/// upload dir is opened before this returns, so a connection made right
/// after finds it ready.
pub async fn spawn(listener: TcpListener, config: Config) -> Result<Handle, ServerError> {
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    let prepared = server::prepare(config).await?;
    let task = tokio::spawn(async move {
        let port = transport::Port::plain(listener, server::hints().tls_client_on_plain_port);
        server::serve(vec![port], prepared, async move { token.cancelled().await }).await
    });
    Ok(Handle {
        addr,
        _guard: shutdown.clone().drop_guard(),
        shutdown,
        task,
    })
}
