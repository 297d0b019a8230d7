//! One client connection, from welcome to goodbye, over any byte stream
//! (plain TCP or TLS: the session is generic over `S`).
//!
//! A single task runs one `select!` loop ([`run_loop`]) over: bytes to read,
//! the client's bounded outgoing queue, the pause timer that completes an
//! unterminated line ([`PARTIAL_LINE_PAUSE`], only for clients that never
//! sent `\n`), the idle timer, the kick token (set by a sender that found
//! this client's queue full) and server shutdown. Answers and queued lines
//! are gathered into one output buffer and written with one `write_all`, so
//! a burst costs one system call. [`Conn`] holds the connection's buffers
//! and does each step: flush, read and handle lines, pause, goodbye.
//!
//! Memory per idle connection is kept small on purpose: the read buffer
//! gets its first bytes of capacity from the first read and grows by
//! [`READ_CHUNK`] only while data flows, the output buffer is allocated only
//! when there is something to write, and both are released after a burst
//! leaves them large.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proto::chat::{
    check_text, idle_notice_text, looks_like_http, looks_like_tls, ChatCodec, ClientLine,
    DecodedLine, ServerLine, SHUTDOWN_NOTICE, TLS_ON_PLAIN_ERROR, TOO_SLOW_ERROR,
    WRONG_PROTOCOL_ERROR,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Duration, Instant};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::commands::{apply, Member};
use crate::shared::Shared;
use crate::PARTIAL_LINE_PAUSE;

/// Bytes reserved for each socket read.
const READ_CHUNK: usize = 512;

/// Stop gathering queued lines into one write past this many bytes.
const WRITE_BATCH: usize = 64 * 1024;

/// Buffers larger than this are released once empty, so a past burst does
/// not stay resident on an idle connection.
const KEEP_CAPACITY: usize = 8 * 1024;

/// How long the goodbye line (shutdown, idle, too slow) may take to write.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a session ended (logged, and decides the goodbye line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent `q` or `/quit`.
    Quit,
    /// The client closed its side.
    Eof,
    /// Reading or writing failed (reset, broken pipe…).
    Io,
    /// The client's outgoing queue overflowed.
    Slow,
    /// The client sent nothing for the idle timeout.
    Idle,
    /// The server is shutting down.
    Shutdown,
    /// The first bytes were HTTP or TLS, not chat lines.
    WrongProtocol,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::Eof => "closed by peer",
            End::Io => "i/o error",
            End::Slow => "too slow (outgoing queue full)",
            End::Idle => "idle timeout",
            End::Shutdown => "server shutdown",
            End::WrongProtocol => "wrong protocol (HTTP or TLS)",
        }
    }
}

/// Token bucket: `rate` lines per second, bursts of up to `rate` lines.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> Option<Self> {
        (rate > 0).then(|| RateLimit {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: Instant::now(),
        })
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-connection state that line handling touches.
struct Session {
    shared: Arc<Shared>,
    member: Member,
    rate: Option<RateLimit>,
    /// True until the first line is handled: only a first line can reveal a
    /// browser or `curl` (HTTP) on the chat port.
    first_line: bool,
}

/// What one handled line asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    /// Close after writing the answers gathered so far.
    Close(End),
}

impl Session {
    /// Handles one decoded line, appending its answer to `out`. It waits
    /// only on a cluster node's commands that ask Redis.
    async fn handle(&mut self, line: DecodedLine, out: &mut BytesMut) -> Next {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                self.first_line = false;
                ServerLine::Error(&e.to_string()).encode(out);
                return Next::Continue;
            }
        };
        if std::mem::take(&mut self.first_line) && looks_like_http(&line) {
            ServerLine::Error(WRONG_PROTOCOL_ERROR).encode(out);
            return Next::Close(End::WrongProtocol);
        }
        // Nothing that could act on another member's terminal is relayed:
        // the whole line is refused, so no byte of it reaches anyone.
        if let Err(e) = check_text(&line) {
            ServerLine::Error(&e.to_string()).encode(out);
            return Next::Continue;
        }
        match ClientLine::parse(&line) {
            Ok(ClientLine::Empty) => {}
            Ok(ClientLine::Quit) => return Next::Close(End::Quit),
            Ok(_) | Err(_) if !self.rate.as_mut().map_or(true, RateLimit::allow) => {
                let msg = format!(
                    "rate limit: at most {} lines per second, line dropped",
                    self.shared.config.rate
                );
                ServerLine::Error(&msg).encode(out);
            }
            Ok(parsed) => apply(parsed, &mut self.member, &self.shared, out).await,
            Err(e) => ServerLine::Error(&e.to_string()).encode(out),
        }
        Next::Continue
    }
}

/// Serves one connection until it ends; never returns an error, since a
/// failing client concerns nobody else. The stream is plain TCP or TLS
/// (`transport::Stream`); the accept loop holds the connection slot.
pub(crate) async fn serve<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    info!(%peer, "connected");
    let (tx, rx) = mpsc::channel(shared.config.queue.max(1));
    // The kick token is a child of the server's shutdown token, so one wait
    // covers both and each session waits on its own token rather than all
    // sessions contending on the shared one.
    let kick = shared.shutdown.child_token();
    let (me, room) = {
        let (me, room, members) = shared.registry.enter(tx, kick.clone());
        debug!(%peer, nick = %me.nick, "entered lobby");
        // The newcomer itself gets only the welcome: the legacy lock-step
        // client reads exactly one reply per message and must not fall out
        // of step.
        if let Some(cluster) = shared.cluster() {
            cluster.enter(&crate::cluster::member_info(&me, &room));
        }
        crate::commands::notify_join(&shared, &room, &members, me.id, &me.nick);
        // `members` is dropped here: a snapshot kept for the whole session
        // would force every later join to copy the room's member list.
        (me, room)
    };
    let session = Session {
        rate: RateLimit::new(shared.config.rate),
        member: Member {
            peer: me,
            room,
            addr: peer,
        },
        shared,
        first_line: true,
    };
    let mut conn = Conn::new(stream, session);
    let end = run_loop(&mut conn, rx, kick).await;
    conn.goodbye(end).await;
    let Session { shared, member, .. } = conn.session;
    let remaining = shared.registry.leave(&member.peer, &member.room);
    if let Some(cluster) = shared.cluster() {
        cluster.exit(member.peer.id);
    }
    let local = end != End::Shutdown;
    crate::commands::notify_leave(&shared, &member.room, &remaining, &member.peer.nick, local);
    info!(%peer, nick = %member.peer.nick, reason = end.as_str(), "disconnected");
}

/// One connection's stream, buffers and line state.
struct Conn<S> {
    stream: S,
    codec: ChatCodec,
    rbuf: BytesMut,
    out: BytesMut,
    session: Session,
    /// When the last byte arrived (pause rule and idle timeout).
    last_input: Instant,
    /// Set when shutdown or a kick interrupted a write: the stream may end
    /// mid-line, so no goodbye line is appended.
    mid_write: bool,
}

/// What a read brought.
enum Read {
    /// Bytes arrived; the connection goes on once they are handled.
    Data,
    /// The client closed its side.
    Eof,
    /// The connection ends for this reason.
    End(End),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S, session: Session) -> Self {
        let mut out = BytesMut::new();
        ServerLine::Welcome.encode(&mut out);
        Conn {
            stream,
            codec: ChatCodec::new(session.shared.config.max_line),
            rbuf: BytesMut::new(),
            out,
            session,
            last_input: Instant::now(),
            mid_write: false,
        }
    }

    /// Gathers whatever the room queued for this client into the pending write.
    fn gather(&mut self, rx: &mut mpsc::Receiver<Bytes>) {
        while self.out.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(line) => self.out.extend_from_slice(&line),
                Err(_) => break,
            }
        }
    }

    /// Writes the pending output (cancel-safe only in that a cancelled
    /// write leaves the stream mid-line; see `mid_write`).
    async fn flush(&mut self) -> std::io::Result<()> {
        self.stream.write_all(&self.out).await?;
        // A TLS stream may hold the end of a write back until flushed.
        self.stream.flush().await?;
        self.out.clear();
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    /// Reads what is there. Cancel-safe: the lines are handled by the
    /// caller after the read, so a wait inside a command (a cluster query)
    /// never runs inside the `select!` that may drop this future.
    async fn read(&mut self) -> Read {
        // An idle connection holds no read buffer: the first read allocates
        // a few bytes, and only a flowing connection grows it.
        if self.rbuf.capacity() > 0 && self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Read::Eof,
            Ok(_) => {
                self.last_input = Instant::now();
                Read::Data
            }
            Err(_) => Read::End(End::Io),
        }
    }

    async fn handle_lines(&mut self) -> Next {
        if self.session.first_line && looks_like_tls(&self.rbuf) {
            self.rbuf.clear();
            ServerLine::Error(TLS_ON_PLAIN_ERROR).encode(&mut self.out);
            return Next::Close(End::WrongProtocol);
        }
        while let Ok(Some(line)) = self.codec.decode(&mut self.rbuf) {
            if let Next::Close(end) = self.session.handle(line, &mut self.out).await {
                return Next::Close(end);
            }
        }
        if !self.codec.has_partial(&self.rbuf)
            && self.rbuf.is_empty()
            && self.rbuf.capacity() > KEEP_CAPACITY
        {
            self.rbuf = BytesMut::new();
        }
        Next::Continue
    }

    /// The client closed its side: a last unterminated line still counts.
    async fn end_of_stream(&mut self) -> End {
        while let Ok(Some(line)) = self.codec.decode_eof(&mut self.rbuf) {
            if let Next::Close(end) = self.session.handle(line, &mut self.out).await {
                return end;
            }
        }
        End::Eof
    }

    /// True when the pause rule applies now: part of a line is buffered and
    /// the client has never ended a line with `\n` (the tutorial's client).
    fn wants_pause(&self) -> bool {
        self.codec.has_partial(&self.rbuf) && !self.codec.has_seen_newline()
    }

    /// The pause elapsed: the buffered bytes are a complete line, unless
    /// they end inside a multi-byte character (the next read re-arms).
    async fn on_pause(&mut self) -> Next {
        if self.codec.partial_ends_mid_char(&self.rbuf) {
            return Next::Continue;
        }
        match self.codec.take_partial(&mut self.rbuf) {
            Some(line) => self.session.handle(line, &mut self.out).await,
            None => Next::Continue,
        }
    }

    /// Sends the last line `end` calls for after what is already gathered,
    /// and closes the sending side, within [`GOODBYE_TIMEOUT`].
    async fn goodbye(&mut self, end: End) {
        let last = match end {
            End::Shutdown => Some(ServerLine::Notice(SHUTDOWN_NOTICE).to_bytes()),
            End::Idle => {
                let secs = self
                    .session
                    .shared
                    .config
                    .idle_timeout
                    .unwrap_or_default()
                    .as_secs_f64();
                Some(ServerLine::Notice(&idle_notice_text(secs)).to_bytes())
            }
            End::Slow => Some(ServerLine::Error(TOO_SLOW_ERROR).to_bytes()),
            End::Quit | End::Eof | End::Io | End::WrongProtocol => None,
        };
        let write = match (&last, end) {
            _ if self.mid_write => false,
            (Some(line), _) => {
                self.out.extend_from_slice(line);
                true
            }
            (None, End::Quit | End::Eof | End::WrongProtocol) => !self.out.is_empty(),
            (None, _) => false,
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            if write {
                self.stream.write_all(&self.out).await?;
            }
            self.stream.shutdown().await
        })
        .await;
    }
}

/// The session's event loop; returns why it ended (the goodbye is sent by
/// the caller).
async fn run_loop<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    mut rx: mpsc::Receiver<Bytes>,
    kick: CancellationToken,
) -> End {
    let shutdown = conn.session.shared.shutdown.clone();
    let stop_reason = || {
        if shutdown.is_cancelled() {
            End::Shutdown
        } else {
            End::Slow
        }
    };
    // Registered once for the whole session: re-creating the wait on every
    // loop turn costs a lock and an unlink each time.
    let stop = kick.cancelled();
    tokio::pin!(stop);
    let idle_timeout = conn.session.shared.config.idle_timeout;
    // Both timers are armed once and moved forward lazily, so a stream of
    // reads does not touch the timer wheel each time.
    let pause = sleep_until(conn.last_input);
    tokio::pin!(pause);
    let mut pause_armed = false;
    let idle = sleep_until(conn.last_input + idle_timeout.unwrap_or(Duration::ZERO));
    tokio::pin!(idle);

    loop {
        conn.gather(&mut rx);
        if !conn.out.is_empty() {
            // The write is polled first: it nearly always completes at once,
            // and checking the token (two locks) is needed only while a write
            // waits on a full socket, the case a kick or shutdown must cut.
            tokio::select! {
                biased;
                res = conn.flush() => if res.is_err() {
                    return End::Io;
                },
                () = &mut stop => {
                    conn.mid_write = true;
                    return stop_reason();
                }
            }
        }
        tokio::select! {
            biased;
            () = &mut stop => return stop_reason(),
            read = conn.read() => match read {
                Read::End(end) => return end,
                Read::Eof => return conn.end_of_stream().await,
                Read::Data => {
                    if let Next::Close(end) = conn.handle_lines().await {
                        return end;
                    }
                    if !conn.wants_pause() {
                        pause_armed = false;
                    } else if !pause_armed {
                        pause.as_mut().reset(conn.last_input + PARTIAL_LINE_PAUSE);
                        pause_armed = true;
                    }
                }
            },
            line = rx.recv() => match line {
                Some(line) => conn.out.extend_from_slice(&line),
                // The registry holds the sender until this session leaves.
                None => return End::Slow,
            },
            () = &mut pause, if pause_armed => {
                let due = conn.last_input + PARTIAL_LINE_PAUSE;
                if Instant::now() < due {
                    pause.as_mut().reset(due);
                } else {
                    pause_armed = false;
                    if let Next::Close(end) = conn.on_pause().await {
                        return end;
                    }
                }
            }
            () = &mut idle, if idle_timeout.is_some() => {
                let due = conn.last_input + idle_timeout.unwrap_or_default();
                if Instant::now() < due {
                    idle.as_mut().reset(due);
                } else {
                    return End::Idle;
                }
            }
        }
    }
}
