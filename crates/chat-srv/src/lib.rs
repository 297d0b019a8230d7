//! Multi-room TCP chat server that stays compatible with the classic
//! socket-tutorial client (welcome line, `X,你好` replies, `q` to leave,
//! unterminated messages completed by a pause).
//!
//! The binary (`main.rs`) parses flags, binds and calls [`run`]; tests and
//! benchmarks call [`run`] in-process on a listener bound to port 0. The wire
//! format is specified in the "Chat" section of `docs/PROTOCOL.md` and framed
//! by [`proto::chat::ChatCodec`].
//!
//! # Layout
//! - `server`: the accept loop (on the shared `transport` crate: plain and
//!   TLS ports, the connection limit) and graceful shutdown.
//! - `session`: one connection: reading, the pause rule, rate and idle
//!   limits, the bounded outgoing queue.
//! - `commands`: what each client line does (`/nick`, `/join`, messages…).
//! - `room`: the shared registry of rooms and nicknames.

mod commands;
mod room;
mod server;
mod session;

use std::time::Duration;

pub use server::{hints, run, serve};

/// Port `chat-srv` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8888;

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
/// the reply, work unmodified.
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_line: proto::chat::MAX_LINE_LEN,
            max_clients: DEFAULT_MAX_CLIENTS,
            queue: DEFAULT_QUEUE,
            rate: DEFAULT_RATE,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// Errors that stop the server before it serves.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener's own address could not be read.
    #[error("cannot read the listening address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// Where `chat-srv` keeps its self-signed TLS certificate without
/// `--state-dir`: the user's data dir (`~/.local/share/chat-srv`).
pub fn default_state_dir() -> std::path::PathBuf {
    transport::flags::user_data_dir("chat-srv")
}
