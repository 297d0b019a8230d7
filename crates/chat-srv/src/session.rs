//! One client connection, from welcome to goodbye.
//!
//! The stream is generic (plain TCP or TLS, see `transport::Stream`).
//! A single task runs one `select!` loop over: a socket read, the client's
//! bounded outgoing queue, the pause timer that completes an unterminated
//! line ([`PARTIAL_LINE_PAUSE`]), the idle timer, the kick token (set by a
//! sender that found this client's queue full) and server shutdown. Answers
//! and queued lines are gathered into one output buffer and written with one
//! `write_all`, so a burst costs one system call.
//!
//! Memory per idle connection is kept small on purpose: the read buffer
//! starts at [`READ_CHUNK`], the
//! output buffer only when there is something to write, and both are
//! released after a burst leaves them large.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use proto::chat::{ChatCodec, ClientLine, DecodedLine, ServerLine};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::commands::{apply, Member};
use crate::server::Shared;
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
}

impl Session {
    /// Handles one decoded line; returns `true` when the client quits.
    fn handle(&mut self, line: DecodedLine, out: &mut BytesMut) -> bool {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                ServerLine::Error(&e.to_string()).encode(out);
                return false;
            }
        };
        match ClientLine::parse(&line) {
            Ok(ClientLine::Empty) => false,
            Ok(ClientLine::Quit) => true,
            Ok(_) | Err(_) if !self.rate.as_mut().map_or(true, RateLimit::allow) => {
                let msg = format!(
                    "rate limit: at most {} lines per second, line dropped",
                    self.shared.config.rate
                );
                ServerLine::Error(&msg).encode(out);
                false
            }
            Ok(parsed) => {
                apply(parsed, &mut self.member, &self.shared, out);
                false
            }
            Err(e) => {
                ServerLine::Error(&e.to_string()).encode(out);
                false
            }
        }
    }
}

/// Serves one connection (plain or TLS) until it ends; never returns an
/// error, since a failing client concerns nobody else.
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
        crate::commands::notify_join(&members, me.id, &me.nick);
        // `members` is dropped here: a snapshot kept for the whole session
        // would force every later join to copy the room's member list.
        (me, room)
    };
    let mut session = Session {
        rate: RateLimit::new(shared.config.rate),
        member: Member { peer: me, room },
        shared,
    };
    let end = run_loop(stream, rx, kick, &mut session).await;
    let Session { shared, member, .. } = session;
    let remaining = shared.registry.leave(&member.peer, &member.room);
    if end != End::Shutdown {
        crate::commands::notify_leave(&remaining, &member.peer.nick);
    }
    info!(%peer, nick = %member.peer.nick, reason = end.as_str(), "disconnected");
}

async fn run_loop<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut rx: mpsc::Receiver<bytes::Bytes>,
    kick: CancellationToken,
    session: &mut Session,
) -> End {
    let shutdown = session.shared.shutdown.clone();
    // Registered once for the whole session: re-creating the wait on every
    // loop turn costs a lock and an unlink each time.
    let stop = kick.cancelled();
    tokio::pin!(stop);
    let stop_reason = || {
        if shutdown.is_cancelled() {
            End::Shutdown
        } else {
            End::Slow
        }
    };
    let idle_timeout = session.shared.config.idle_timeout;
    let mut codec = ChatCodec::new(session.shared.config.max_line);
    let mut rbuf = BytesMut::new();
    let mut out = BytesMut::new();
    ServerLine::Welcome.encode(&mut out);

    let mut last_input = Instant::now();
    let pause = sleep_until(last_input);
    tokio::pin!(pause);
    let mut pause_armed = false;
    let idle = sleep_until(last_input + idle_timeout.unwrap_or(Duration::ZERO));
    tokio::pin!(idle);

    let end = loop {
        // Gather whatever the room queued for this client into the same write.
        while out.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(line) => out.extend_from_slice(&line),
                Err(_) => break,
            }
        }
        if !out.is_empty() {
            let written = tokio::select! {
                biased;
                () = &mut stop => return goodbye(stream, None, stop_reason()).await,
                // Flushed: a TLS stream may hold the end of a write until then.
                res = async {
                    stream.write_all(&out).await?;
                    stream.flush().await
                } => res,
            };
            if written.is_err() {
                break End::Io;
            }
            out.clear();
            if out.capacity() > KEEP_CAPACITY {
                out = BytesMut::new();
            }
        }

        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
            rbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            () = &mut stop => break stop_reason(),
            read = stream.read_buf(&mut rbuf) => {
                match read {
                    Ok(0) => {
                        // End of stream: a last unterminated line still counts.
                        let mut quit = false;
                        while let Ok(Some(line)) = decode_eof(&mut codec, &mut rbuf) {
                            if session.handle(line, &mut out) {
                                quit = true;
                                break;
                            }
                        }
                        let _ = stream.write_all(&out).await;
                        break if quit { End::Quit } else { End::Eof };
                    }
                    Ok(_) => {
                        last_input = Instant::now();
                        let mut quit = false;
                        while let Ok(Some(line)) = tokio_util::codec::Decoder::decode(&mut codec, &mut rbuf) {
                            if session.handle(line, &mut out) {
                                quit = true;
                                break;
                            }
                        }
                        if quit {
                            break End::Quit;
                        }
                        if codec.has_partial(&rbuf) {
                            if !pause_armed {
                                pause.as_mut().reset(last_input + PARTIAL_LINE_PAUSE);
                                pause_armed = true;
                            }
                        } else {
                            pause_armed = false;
                            if rbuf.is_empty() && rbuf.capacity() > KEEP_CAPACITY {
                                rbuf = BytesMut::new();
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break End::Io,
                }
            }
            line = rx.recv() => match line {
                Some(line) => out.extend_from_slice(&line),
                // The registry holds the sender until this session leaves.
                None => break End::Slow,
            },
            () = &mut pause, if pause_armed => {
                // The timer is armed once and moved forward lazily, so a
                // stream of reads does not touch the timer wheel each time.
                let due = last_input + PARTIAL_LINE_PAUSE;
                if Instant::now() < due {
                    pause.as_mut().reset(due);
                } else {
                    pause_armed = false;
                    if let Some(line) = codec.take_partial(&mut rbuf) {
                        if session.handle(line, &mut out) {
                            break End::Quit;
                        }
                    }
                }
            }
            () = &mut idle, if idle_timeout.is_some() => {
                let due = last_input + idle_timeout.unwrap_or_default();
                if Instant::now() < due {
                    idle.as_mut().reset(due);
                } else {
                    break End::Idle;
                }
            }
        }
    };
    let last = match end {
        End::Shutdown => Some(ServerLine::Notice("server is shutting down, goodbye").to_bytes()),
        End::Idle => {
            let secs = idle_timeout.unwrap_or_default().as_secs_f64();
            Some(
                ServerLine::Notice(&format!("idle for {secs} s, closing the connection"))
                    .to_bytes(),
            )
        }
        End::Slow => {
            Some(ServerLine::Error("too slow: outgoing queue full, disconnecting").to_bytes())
        }
        End::Quit | End::Eof | End::Io => None,
    };
    match last {
        Some(line) => {
            // Lines already gathered go first, so the goodbye is the last line.
            out.extend_from_slice(&line);
            goodbye(stream, Some(out), end).await
        }
        None => {
            if end == End::Quit && !out.is_empty() {
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, stream.write_all(&out)).await;
            }
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, stream.shutdown()).await;
            end
        }
    }
}

fn decode_eof(
    codec: &mut ChatCodec,
    buf: &mut BytesMut,
) -> Result<Option<DecodedLine>, proto::chat::ChatCodecError> {
    tokio_util::codec::Decoder::decode_eof(codec, buf)
}

/// Writes the final lines (if the stream is not mid-write) and closes the
/// sending side, within [`GOODBYE_TIMEOUT`].
async fn goodbye<S: AsyncWrite + Unpin>(mut stream: S, out: Option<BytesMut>, end: End) -> End {
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        if let Some(out) = out {
            stream.write_all(&out).await?;
        }
        stream.shutdown().await
    })
    .await;
    end
}
