//! chat-cli library: connects to a chat server and runs one of three modes.
//!
//! - **one message** (`-m TEXT`): send it, print its answer, exit;
//! - **script** (stdin is not a terminal): print the welcome, then for each
//!   input line send it and print everything up to its answer, so output is
//!   deterministic; after `q` wait for the server to close;
//! - **interactive** (stdin is a terminal): a prompt, with room lines printed
//!   as they arrive while the user types.
//!
//! Server lines are framed by [`proto::chat::ChatCodec`]; which line
//! answers which message follows the rule in the "Chat" section of
//! `docs/PROTOCOL.md` (every non-empty line but `q` gets exactly one answer:
//! the reply `X,你好`, a `+ ` line or a `! ` line). `main.rs` parses the flags
//! and maps [`ClientError`] to an exit code.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use futures_util::StreamExt;
use proto::chat::{ChatCodec, ClientLine, ERROR_PREFIX, OK_PREFIX, REPLY_SUFFIX, WELCOME};
use tokio::io::AsyncWriteExt;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use transport::Stream;

/// Port chat-cli connects to unless told otherwise (chat-srv's default).
pub const DEFAULT_PORT: u16 = 8888;

/// The prompt shown in interactive mode.
pub const PROMPT: &str = "请输入您要发送的内容:";

/// Server lines longer than this are skipped; generous, since the server's
/// own lines (lists, long messages with a nickname) may exceed its input limit.
const MAX_SERVER_LINE: usize = 1 << 20;

/// How long to wait for the welcome before deciding the peer is not a chat server.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do once connected.
#[derive(Debug, Clone)]
pub struct Options {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Send this one message, print its answer and exit.
    pub message: Option<String>,
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
    #[error("{addr} did not greet like a chat server (got {got:?}; is it chat-srv?)")]
    NotChat {
        /// `host:port`.
        addr: String,
        /// What arrived instead, if anything.
        got: String,
    },
    /// The server closed the connection while the user was still chatting.
    #[error("server closed the connection")]
    Closed,
    /// The server answered the `-m` message with an error line.
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

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| ClientError::Io { context, source }
}

type Lines = FramedRead<ReadHalf<Stream>, ChatCodec>;

/// The sending half of the connection, plain or TLS.
type Writer = WriteHalf<Stream>;

/// Connects, reads the welcome and runs the mode `opts` and stdin select.
pub async fn run(opts: Options) -> Result<(), ClientError> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let tcp = TcpStream::connect((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| connect_error(&addr, &e))?;
    let _ = tcp.set_nodelay(true);
    // Nothing is written before the server is verified: `connect` returns
    // only after the handshake and the certificate check.
    let stream = match &opts.tls {
        Some(connector) => connector.connect(tcp, &opts.host, opts.port).await?,
        None => {
            let peer = tcp.peer_addr().map_err(|e| connect_error(&addr, &e))?;
            Stream::plain(tcp, peer)
        }
    };
    let (r, mut w) = tokio::io::split(stream);
    let mut lines = FramedRead::new(r, ChatCodec::new(MAX_SERVER_LINE));

    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, next_line(&mut lines)).await {
        Ok(line) => line?,
        Err(_) => None,
    };
    match welcome {
        Some(line) if line == WELCOME => {}
        Some(line) if line.starts_with(ERROR_PREFIX) => {
            let reason = line.strip_prefix(ERROR_PREFIX).unwrap_or(&line);
            return Err(ClientError::Refused(reason.to_owned()));
        }
        other => {
            return Err(ClientError::NotChat {
                addr,
                got: other.unwrap_or_else(|| "nothing".into()),
            })
        }
    }

    if let Some(message) = opts.message {
        return one_message(&message, &mut lines, &mut w).await;
    }
    let stdin = spawn_stdin_reader();
    if std::io::stdin().is_terminal() {
        interactive(lines, w, stdin).await
    } else {
        print(WELCOME)?;
        script(lines, w, stdin).await
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

/// The next server line (`None` at end of stream); undecodable lines are
/// reported on stderr and skipped.
async fn next_line(lines: &mut Lines) -> Result<Option<String>, ClientError> {
    loop {
        match lines.next().await {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(ClientError::Io {
                    context: "reading from the server",
                    source: std::io::Error::other(e),
                })
            }
            Some(Ok(Ok(line))) => return Ok(Some(line)),
            Some(Ok(Err(e))) => eprintln!("chat-cli: skipped a server line: {e}"),
        }
    }
}

/// What a sent line expects back.
enum Expect {
    /// Nothing (an empty line).
    Nothing,
    /// The server closes the connection (`q`, `/quit`).
    Close,
    /// One answer line: this reply, or a `! ` error.
    Reply(String),
    /// One answer line starting with `+ ` or `! `.
    CommandAnswer,
}

fn expect_for(line: &str) -> Expect {
    match ClientLine::parse(line) {
        Ok(ClientLine::Empty) => Expect::Nothing,
        Ok(ClientLine::Quit) => Expect::Close,
        Ok(ClientLine::Message(text)) => Expect::Reply(format!("{text}{REPLY_SUFFIX}")),
        Ok(_) | Err(_) => Expect::CommandAnswer,
    }
}

fn is_answer(expect: &Expect, line: &str) -> bool {
    match expect {
        Expect::Reply(reply) => line == reply || line.starts_with(ERROR_PREFIX),
        Expect::CommandAnswer => line.starts_with(OK_PREFIX) || line.starts_with(ERROR_PREFIX),
        Expect::Nothing | Expect::Close => false,
    }
}

async fn send(w: &mut Writer, line: &str) -> Result<(), ClientError> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    // Flushed: a TLS stream may hold the end of a line until then.
    w.write_all(&bytes).await.map_err(|_| ClientError::Closed)?;
    w.flush().await.map_err(|_| ClientError::Closed)
}

/// Prints one line to stdout (errors include a closed pipe, which the binary
/// treats as success).
fn print(line: &str) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(io("writing to stdout"))
}

async fn one_message(message: &str, lines: &mut Lines, w: &mut Writer) -> Result<(), ClientError> {
    let message = message.trim_end_matches(['\r', '\n']);
    let expect = expect_for(message);
    send(w, message).await?;
    if matches!(expect, Expect::Nothing) {
        return Ok(());
    }
    while let Some(line) = next_line(lines).await? {
        // Room traffic that arrives before the answer is not ours to print.
        if is_answer(&expect, &line) {
            if let Some(error) = line.strip_prefix(ERROR_PREFIX) {
                return Err(ClientError::Answer(error.to_owned()));
            }
            return print(&line);
        }
    }
    match expect {
        Expect::Close => Ok(()),
        _ => Err(ClientError::Closed),
    }
}

/// Input from stdin, read on a plain thread: a blocking read of the terminal
/// must not keep the async runtime from shutting down when the server leaves.
type Stdin = mpsc::Receiver<std::io::Result<String>>;

fn spawn_stdin_reader() -> Stdin {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = Vec::new();
            let line = match stdin.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                    Ok(String::from_utf8_lossy(&buf).into_owned())
                }
                Err(e) => Err(e),
            };
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                break;
            }
        }
    });
    rx
}

async fn script(mut lines: Lines, mut w: Writer, mut stdin: Stdin) -> Result<(), ClientError> {
    loop {
        // While waiting for input, still print what the room sends and
        // notice a server that goes away.
        let input = tokio::select! {
            input = stdin.recv() => input,
            line = next_line(&mut lines) => match line? {
                Some(line) => {
                    print(&line)?;
                    continue;
                }
                None => return Err(ClientError::Closed),
            },
        };
        let Some(input) = input else { break };
        let input = input.map_err(io("reading stdin"))?;
        let expect = expect_for(&input);
        send(&mut w, &input).await?;
        match expect {
            Expect::Nothing => continue,
            Expect::Close => return drain_until_close(&mut lines).await,
            _ => {}
        }
        loop {
            let Some(line) = next_line(&mut lines).await? else {
                return Err(ClientError::Closed);
            };
            print(&line)?;
            if is_answer(&expect, &line) {
                break;
            }
        }
    }
    // End of input without `q`: close our side; the server then closes too.
    let _ = w.shutdown().await;
    drain_until_close(&mut lines).await
}

/// Prints what the server still sends until it closes.
async fn drain_until_close(lines: &mut Lines) -> Result<(), ClientError> {
    while let Some(line) = next_line(lines).await? {
        print(&line)?;
    }
    Ok(())
}

async fn interactive(mut lines: Lines, mut w: Writer, mut stdin: Stdin) -> Result<(), ClientError> {
    let fancy = std::io::stdout().is_terminal();
    let show = |line: &str| -> Result<(), ClientError> {
        let mut out = std::io::stdout().lock();
        let res = if fancy {
            // Clear the prompt line, print the room line, redraw the prompt;
            // text already typed stays in the terminal's input buffer.
            write!(out, "\r\x1b[2K{line}\n{PROMPT}")
        } else {
            write!(out, "{line}\n{PROMPT}")
        };
        res.and_then(|()| out.flush())
            .map_err(io("writing to stdout"))
    };
    show(WELCOME)?;
    let mut quitting = false;
    loop {
        tokio::select! {
            line = next_line(&mut lines) => match line? {
                Some(line) => show(&line)?,
                None if quitting => {
                    print("")?;
                    return Ok(());
                }
                None => {
                    print("")?;
                    return Err(ClientError::Closed);
                }
            },
            input = stdin.recv(), if !quitting => match input {
                Some(input) => {
                    let input = input.map_err(io("reading stdin"))?;
                    if matches!(expect_for(&input), Expect::Close) {
                        quitting = true;
                    }
                    send(&mut w, &input).await?;
                    if !quitting {
                        show_prompt()?;
                    }
                }
                None => {
                    // Ctrl-D: leave like `q`.
                    quitting = true;
                    send(&mut w, "q").await?;
                }
            },
        }
    }
}

fn show_prompt() -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    write!(out, "{PROMPT}")
        .and_then(|()| out.flush())
        .map_err(io("writing to stdout"))
}
