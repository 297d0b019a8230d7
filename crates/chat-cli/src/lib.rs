//! chat-cli library: connects to a chat server and runs one of three modes.
//!
//! - **one message** (`-m TEXT`): send it, print its answer, exit;
//! - **script** (stdin is not a terminal): print the welcome, then for each
//!   input line send it and print everything up to its answer, so output is
//!   deterministic; after `q` wait for the server to close;
//! - **interactive** (stdin is a terminal): a line editor (rustyline) with
//!   history and Tab completion when stdout is a terminal too; room lines are
//!   printed above the line being typed.
//!
//! Server lines are framed by [`proto::chat::ChatCodec`] in both directions;
//! which line answers which message follows the rule in the "Chat" section
//! of `docs/PROTOCOL.md` (every non-empty line but `q` gets exactly one
//! answer: the reply `X,你好`, a `+ ` line or a `! ` line). `main.rs` parses
//! the flags and maps [`ClientError`] to an exit code.
//!
//! # Layout
//! - `conn`: one connection over any stream, lines in and out.
//! - `modes`: the three modes, keep-alive and what ends a session.
//! - `editor`: the rustyline thread, its history file and completion.
//! - `display`: escaping, timestamps, colour, the prompt's language.
//! - `state`: nickname, room and room members learned from server lines.

mod conn;
mod display;
mod editor;
mod modes;
mod state;

use std::io::IsTerminal;
use std::time::Duration;

use proto::chat::{ERROR_PREFIX, WELCOME};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use display::{escape_controls, prompt_for_locale, Style, PROMPT, PROMPT_ZH};
pub use editor::history_path;

use conn::Conn;
use modes::{Ended, Screen};
use state::State;

/// Port chat-cli connects to unless told otherwise (chat-srv's default).
pub const DEFAULT_PORT: u16 = proto::chat::DEFAULT_PORT;

/// Default `--keepalive`: an empty line after this long without sending.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);

/// How long to wait for the welcome. A chat server greets at once; an
/// up-srv, or another service that waits for its client to speak first,
/// sends nothing, which this turns into a clear error quickly.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(3);

/// First and longest wait between `--reconnect` attempts.
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// What to do once connected.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Send this one message, print its answer and exit.
    pub message: Option<String>,
    /// Take this nickname right after the welcome.
    pub nick: Option<String>,
    /// Join this room right after the welcome.
    pub room: Option<String>,
    /// Send an empty line after this long without sending; `None` = never.
    pub keepalive: Option<Duration>,
    /// Reconnect after a lost connection, restoring nickname and room.
    pub reconnect: bool,
    /// How lines are shown.
    pub style: Style,
    /// Connect with TLS, verified by this connector; `None` = plain TCP.
    pub tls: Option<transport::Connector>,
}

/// Why the client stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {reason}{hint}")]
    Connect {
        /// `host:port` as given.
        addr: String,
        /// The operating system's reason.
        reason: String,
        /// What to try.
        hint: &'static str,
    },
    /// The TLS handshake or the server's verification failed; nothing was sent.
    #[error(transparent)]
    Tls(#[from] transport::TlsError),
    /// The server refused the session (for example because it is full).
    #[error("server refused the connection: {0}")]
    Refused(String),
    /// The first line was not the chat welcome.
    #[error("{addr} did not greet like a chat server (got {got}; is it chat-srv? check --port)")]
    NotChat {
        /// `host:port`.
        addr: String,
        /// What arrived instead, described.
        got: String,
    },
    /// The server closed the connection while the user was still chatting.
    #[error("server closed the connection")]
    Closed,
    /// The server answered the `-m` message (or `--nick`/`--room`) with an error line.
    #[error("server refused the message: {0}")]
    Answer(String),
    /// Reading from or writing to the server or the terminal failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// True when the error is only a closed stdout (`chat-cli | head`), which
    /// the binary treats as success.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ClientError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| ClientError::Io { context, source }
}

/// A line from the user (stdin or the editor).
pub(crate) enum Input {
    Line(String),
    /// End of input (Ctrl-D, Ctrl-C, end of a script).
    Eof,
    Failed(std::io::Error),
}

/// Connects, reads the welcome and runs the mode `opts` and stdin select;
/// with `--reconnect`, connects again after a lost connection.
pub async fn run(opts: Options) -> Result<(), ClientError> {
    let addr = format!("{}:{}", opts.host, opts.port);
    if let Some(message) = &opts.message {
        let mut conn = greet(connect(&opts, &addr).await?, &addr).await?;
        return modes::one_message(&mut conn, &opts, message).await;
    }
    let mut state = State::default();
    let mut screen = Screen::start(&opts, &state)?;
    let mut wait = RECONNECT_FIRST;
    let mut first = true;
    loop {
        let attempt = match connect(&opts, &addr).await {
            Ok(stream) => greet(stream, &addr).await,
            Err(e) => Err(e),
        };
        let ended = match attempt {
            Ok(mut conn) => {
                if !first {
                    screen.note(&format!("reconnected to {addr}"))?;
                    wait = RECONNECT_FIRST;
                }
                modes::session(&mut conn, &opts, &mut state, &mut screen, first).await
            }
            Err(e) if first || !opts.reconnect => return Err(e),
            Err(e) => {
                screen.note(&format!("{e:#}"))?;
                Ok(Ended::Retry)
            }
        };
        first = false;
        let why = match ended {
            Ok(Ended::Quit) => return Ok(()),
            Ok(Ended::Goodbye) if !opts.reconnect => return Ok(()),
            Ok(Ended::Goodbye) if opts.reconnect => "the server said goodbye; reconnecting",
            Ok(Ended::Retry) => "retrying",
            Ok(Ended::Lost) | Err(ClientError::Closed) if opts.reconnect => {
                "connection lost; reconnecting"
            }
            Ok(_) => return Err(ClientError::Closed),
            Err(e) => return Err(e),
        };
        screen.note(&format!("{why} in {} s", wait.as_secs()))?;
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// Opens the stream: TCP, then TLS when `opts.tls` is set. Nothing is
/// written before the server is verified: the connector returns only after
/// the handshake and the certificate check.
async fn connect(opts: &Options, addr: &str) -> Result<transport::Stream, ClientError> {
    let tcp = TcpStream::connect((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| connect_error(addr, &e))?;
    let _ = tcp.set_nodelay(true);
    match &opts.tls {
        Some(connector) => Ok(connector.connect(tcp, &opts.host, opts.port).await?),
        None => {
            let peer = tcp.peer_addr().map_err(|e| connect_error(addr, &e))?;
            Ok(transport::Stream::plain(tcp, peer))
        }
    }
}

/// Frames `stream` and checks that the server greets with the welcome.
async fn greet<S: AsyncRead + AsyncWrite>(stream: S, addr: &str) -> Result<Conn<S>, ClientError> {
    let mut conn = Conn::new(stream);
    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, conn.next_line()).await {
        Ok(line) => line?,
        Err(_) => {
            let secs = WELCOME_TIMEOUT.as_secs();
            return Err(ClientError::NotChat {
                addr: addr.to_owned(),
                got: format!(
                    "nothing within {secs} s, as an up-srv or another service that waits for its client to speak first"
                ),
            });
        }
    };
    match welcome {
        Some(line) if line == WELCOME => Ok(conn),
        Some(line) if line.starts_with(ERROR_PREFIX) => {
            let reason = line.strip_prefix(ERROR_PREFIX).unwrap_or(&line);
            Err(ClientError::Refused(escape_controls(reason).into_owned()))
        }
        other => Err(ClientError::NotChat {
            addr: addr.to_owned(),
            got: other.map_or_else(|| "the connection closed".into(), |l| format!("{l:?}")),
        }),
    }
}

fn connect_error(addr: &str, e: &std::io::Error) -> ClientError {
    use std::io::ErrorKind::*;
    let (reason, hint) = match e.kind() {
        ConnectionRefused => (
            "connection refused".to_owned(),
            " (is chat-srv running? start it with `chat-srv`)",
        ),
        TimedOut => ("timed out".to_owned(), " (check --host and the network)"),
        _ => (lower_reason(e), " (check --host and --port)"),
    };
    ClientError::Connect {
        addr: addr.to_owned(),
        reason,
        hint,
    }
}

/// The OS error text without its "(os error N)" suffix, starting lower-case.
fn lower_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Whether stdin and stdout are terminals: the editor needs both; a
/// terminal stdin alone still makes the session interactive.
pub(crate) fn terminals() -> (bool, bool) {
    (
        std::io::stdin().is_terminal(),
        std::io::stdout().is_terminal(),
    )
}
