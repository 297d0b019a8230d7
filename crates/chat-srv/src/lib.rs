//! Multi-room TCP chat server that stays compatible with the classic
//! socket-tutorial client (welcome line, `X,你好` replies, `q` to leave,
//! unterminated messages completed by a pause).
//!
//! The binary (`main.rs`) parses flags, binds and calls [`run`]; tests and
//! benchmarks call [`spawn`] in-process on a listener bound to port 0. The
//! wire format is specified in the "Chat" section of `docs/PROTOCOL.md` and
//! framed by [`proto::chat::ChatCodec`].
//!
//! # Layout
//! - `server`: the accept loop (on the shared `transport` crate: plain and
//!   TLS ports, the connection limit) and graceful shutdown.
//! - `shared`: the state every session shares (limits, registry, shutdown).
//! - `session`: one connection, generic over its stream: reading, the pause
//!   rule, rate and idle limits, the bounded outgoing queue.
//! - `commands`: what each client line does (`/nick`, `/join`, messages…).
//! - `room`: the shared registry of rooms, nicknames and room history.
//! - [`cluster`]: several servers as one chat through Redis (`--redis`).

pub mod cluster;
mod commands;
mod room;
mod server;
mod session;
mod shared;

use std::net::SocketAddr;
use std::time::Duration;

pub use server::{hints, run, serve};

/// Port `chat-srv` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = proto::chat::DEFAULT_PORT;

/// Default number of chat lines each room keeps for `/history`.
pub const DEFAULT_HISTORY: usize = 100;

/// Default cap on simultaneous connections.
pub const DEFAULT_MAX_CLIENTS: usize = 16_384;

/// Default length of each client's outgoing queue, in lines.
pub const DEFAULT_QUEUE: usize = 256;

/// Default per-client rate limit, in lines per second.
pub const DEFAULT_RATE: u32 = 50;

/// Default idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long the bytes of an unterminated line may sit without a new byte
/// arriving before they count as a complete line. This is what lets the
/// legacy client, which sends bare text without a newline and then waits for
/// the reply, work unmodified. It applies only to connections that have not
/// yet sent a `\n`, and never ends a line inside a multi-byte character.
pub const PARTIAL_LINE_PAUSE: Duration = Duration::from_millis(150);

/// Join and leave notices are sent only in rooms of at most this many
/// members, so a large room is not flooded (and its members disconnected as
/// slow) by notices that grow with the square of its size.
pub const NOTICE_ROOM_LIMIT: usize = 100;

/// Server limits; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Longest accepted line in bytes, without its terminator.
    pub max_line: usize,
    /// Connections beyond this are sent a refusal line and closed.
    pub max_clients: usize,
    /// Outgoing lines queued per client before it is disconnected as slow.
    pub queue: usize,
    /// Lines per second each client may send (also the burst size);
    /// `0` turns the limit off.
    pub rate: u32,
    /// Close connections that send nothing for this long; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Chat lines kept per room for `/history`; `0` keeps none.
    pub history: usize,
    /// Join a cluster of servers through Redis; `None` (the default) is a
    /// single server that needs nothing else.
    pub cluster: Option<cluster::ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_line: proto::chat::MAX_LINE_LEN,
            max_clients: DEFAULT_MAX_CLIENTS,
            queue: DEFAULT_QUEUE,
            rate: DEFAULT_RATE,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            history: DEFAULT_HISTORY,
            cluster: None,
        }
    }
}

/// Errors that stop the server before it serves.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener's own address could not be read.
    #[error("cannot read the listening address: {0}")]
    LocalAddr(#[source] std::io::Error),
    /// The cluster could not be joined (`--redis`).
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The server task of a [`ServerHandle`] panicked or was cancelled.
    #[error("the server task failed: {0}")]
    Task(String),
}

/// A server running on a task of the current runtime (see [`spawn`]).
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

/// Starts [`run`] on `listener` on a new task and returns its handle: how
/// tests, the clients' tests and benchmarks run a real server in-process.
pub fn spawn(
    listener: tokio::net::TcpListener,
    config: Config,
) -> Result<ServerHandle, ServerError> {
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, config, async move {
        let _ = rx.await;
    }));
    Ok(ServerHandle {
        addr,
        shutdown: Some(tx),
        task,
    })
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Begins a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts the server down gracefully and waits for [`run`] to return.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.begin_shutdown();
        self.join().await
    }

    /// Waits for [`run`] to return (after [`ServerHandle::begin_shutdown`]).
    pub async fn join(self) -> Result<(), ServerError> {
        self.task
            .await
            .map_err(|e| ServerError::Task(e.to_string()))?
    }
}

/// Where `chat-srv` keeps its self-signed TLS certificate without
/// `--state-dir`: the user's data dir (`~/.local/share/chat-srv`).
pub fn default_state_dir() -> std::path::PathBuf {
    transport::flags::user_data_dir("chat-srv")
}
