//! The binary upload protocol from the client side: one connection carries
//! many files; each is offered, skipped when the server already holds the
//! same content, resumed when it holds a matching prefix, streamed and
//! verified. See `docs/PROTOCOL.md` ("Upload").
//!
//! ```text
//! MAGIC Hello{4} -> Welcome | Refuse(unsupported version: retried with 3, 2, then 1)
//! per file: Offer -> [Present{sha256} -> Skip | Proceed ->] Accept{offset, prefix sha256} | Refuse ;
//!           Start{offset} ; body ; Finish{sha256} -> Stored | Refuse
//! small files (version 4): Check* ; Put ; body ; Finish ; Put ... without waiting (see pipeline)
//! ```
//!
//! One file is four steps, one function each: [`offer`] (with the
//! already-stored comparison), [`resume_point`] (check the server's prefix
//! against ours), [`send_body`] and [`finish`]. The connection runs over
//! any [`Stream`], so a TLS connector can hand in its own.

use std::fs::File;
use std::time::Duration;

use bytes::BytesMut;
use proto::digest::{Algorithm, Hasher};
use proto::size::Readable;
use proto::upload::{
    ClientCodec, ClientMessage, RefusalCode, ServerMessage, HASH_VERSION, MAGIC, MIN_VERSION,
    VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::pipeline;
use crate::reader::{self, BodyReader};
use crate::throttle::Throttle;
use crate::{ClientError, FileJob, Options, Outcome, Reporter, Target, REPLY_TIMEOUT};

/// How long to look for the server's reason after a write fails.
const REASON_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the reason of a reply that does not decode.
const BAD_REPLY: &str = "bad reply";

/// Most characters of a non-up-srv peer's first bytes shown in the error.
const SHOWN_PEER_BYTES: usize = 60;

/// What a client connection can run over: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects to the server (with TLS when `opts.tls` is set, verifying the
/// server before anything is sent), mapping failures to a line that names
/// the address.
pub async fn connect(opts: &Options) -> Result<transport::Stream, ClientError> {
    let addr = opts.server.clone();
    let connecting = TcpStream::connect((addr.host.as_str(), addr.port));
    let stream = match tokio::time::timeout(REPLY_TIMEOUT, connecting).await {
        Err(_) => {
            return Err(ClientError::Connect {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            })
        }
        Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    match &opts.tls {
        Some(connector) => Ok(connector.connect(stream, &addr.host, addr.port).await?),
        None => {
            let peer = stream
                .peer_addr()
                .map_err(|source| ClientError::Connect { addr, source })?;
            Ok(transport::Stream::plain(stream, peer))
        }
    }
}

/// One open connection after a successful hello.
pub struct Connection {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    addr: Target,
    version: u16,
    /// A token was sent to a server that checks none.
    token_unused: bool,
    /// Digest the server verifies this connection's uploads with.
    algorithm: Algorithm,
}

/// The notice for a token sent to a server that does not check tokens.
pub const TOKEN_UNUSED: &str =
    "note: this server does not check tokens; --token (or UP_TOKEN) was not needed";

impl Connection {
    /// Connects and says hello with the newest version; a server that only
    /// speaks version 1 (an older up-srv) is greeted again with version 1,
    /// which uploads as before but has no `ls`, `get` or already-stored check.
    pub async fn open(opts: &Options) -> Result<Connection, ClientError> {
        let stream = connect(opts).await?;
        let mut reply = Self::hello(Box::new(stream), opts, VERSION).await?;
        // An older server refuses versions it does not know: step down one
        // version at a time (3 -> 2 -> 1), a bounded number of reconnects.
        let mut version = VERSION;
        while let Err((RefusalCode::UnsupportedVersion, _)) = &reply {
            if version <= MIN_VERSION {
                break;
            }
            version -= 1;
            let stream = connect(opts).await?;
            reply = Self::hello(Box::new(stream), opts, version).await?;
        }
        match reply {
            Ok(conn) => Ok(conn),
            Err((_, reason)) => Err(ClientError::Refused(reason)),
        }
    }

    /// Asks the server to verify this connection's uploads with `algorithm`
    /// (version 3); SHA-256 needs no request and works with every server.
    pub async fn use_hash(&mut self, algorithm: Algorithm) -> Result<(), ClientError> {
        if algorithm == self.algorithm {
            return Ok(());
        }
        if self.version < HASH_VERSION {
            return Err(ClientError::Refused(format!(
                "the server at {} speaks protocol version {} and accepts only sha256; upgrade up-srv or drop --hash {algorithm}",
                self.addr, self.version
            )));
        }
        self.send(ClientMessage::Hash {
            algorithm: algorithm.name().to_string(),
        })
        .await?;
        self.algorithm = algorithm;
        Ok(())
    }

    /// Sends the magic and a hello on `stream`; the refusal, if any.
    pub async fn hello(
        stream: Box<dyn Stream>,
        opts: &Options,
        version: u16,
    ) -> Result<Result<Connection, (RefusalCode, String)>, ClientError> {
        let mut conn = Connection {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            addr: opts.server.clone(),
            version,
            token_unused: false,
            algorithm: Algorithm::Sha256,
        };
        conn.write(&MAGIC).await?;
        conn.send(ClientMessage::Hello {
            version,
            token: opts.token.clone().unwrap_or_default(),
        })
        .await?;
        match conn.recv().await {
            Ok(ServerMessage::Welcome {
                version,
                token_checked,
            }) => {
                conn.version = version;
                conn.token_unused = version >= 2 && !token_checked && opts.token.is_some();
                Ok(Ok(conn))
            }
            Ok(ServerMessage::Refuse { code, reason }) => Ok(Err((code, reason))),
            Ok(other) => Err(conn.not_up_srv(other.name())),
            Err(ClientError::Connection { reason, .. }) if reason.starts_with(BAD_REPLY) => {
                let sent = shown_bytes(&conn.buf);
                Err(conn.not_up_srv(&sent))
            }
            Err(e) => Err(e),
        }
    }

    fn not_up_srv(&self, sent: &str) -> ClientError {
        ClientError::NotUpSrv {
            addr: self.addr.clone(),
            sent: sent.to_string(),
        }
    }

    /// The protocol version agreed with the server.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The server's address.
    pub fn addr(&self) -> &Target {
        &self.addr
    }

    /// The digest this connection's uploads are verified with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The stream and the buffer of bytes read past the last message, for
    /// a caller that reads and writes at once.
    pub(crate) fn parts(&mut self) -> (&mut Box<dyn Stream>, &mut BytesMut) {
        (&mut self.stream, &mut self.buf)
    }

    pub(crate) fn broken(
        &self,
        kind: std::io::ErrorKind,
        reason: impl Into<String>,
    ) -> ClientError {
        broken(&self.addr, kind, reason)
    }

    fn io_broken(&self, e: &std::io::Error) -> ClientError {
        self.broken(e.kind(), crate::plain(e))
    }

    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        // Flushed: a TLS stream may hold the end of a message until then.
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(REPLY_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.io_broken(&e)),
            Err(_) => Err(self.broken(std::io::ErrorKind::TimedOut, "timed out writing")),
        }
    }

    pub(crate) async fn send(&mut self, msg: ClientMessage) -> Result<(), ClientError> {
        let mut out = BytesMut::with_capacity(128);
        msg.encode_into(&mut out)
            .map_err(|e| self.broken(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        self.write(&out).await
    }

    async fn recv_within(&mut self, limit: Duration) -> Result<ServerMessage, ClientError> {
        recv_from(&mut self.stream, &mut self.buf, &self.addr, limit).await
    }

    pub(crate) async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        self.recv_within(REPLY_TIMEOUT).await
    }

    /// Raw bytes after a frame: first what is buffered, then the socket.
    pub(crate) async fn read_raw(&mut self, out: &mut [u8]) -> Result<usize, ClientError> {
        if !self.buf.is_empty() {
            let n = self.buf.len().min(out.len());
            out[..n].copy_from_slice(&self.buf.split_to(n));
            return Ok(n);
        }
        match tokio::time::timeout(REPLY_TIMEOUT, self.stream.read(out)).await {
            Err(_) => Err(self.broken(std::io::ErrorKind::TimedOut, "timed out waiting for data")),
            Ok(Ok(0)) => Err(self.broken(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection mid-file",
            )),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(self.io_broken(&e)),
        }
    }

    /// After a failed write: the server usually said why before closing.
    async fn reason_after_failure(&mut self, fallback: ClientError) -> String {
        match self.recv_within(REASON_TIMEOUT).await {
            Ok(ServerMessage::Refuse { code, reason }) => refusal(code, &reason),
            _ => fallback.to_string(),
        }
    }
}

/// A failure of the connection to `addr`.
pub(crate) fn broken(
    addr: &Target,
    kind: std::io::ErrorKind,
    reason: impl Into<String>,
) -> ClientError {
    ClientError::Connection {
        addr: addr.clone(),
        kind,
        reason: reason.into(),
    }
}

/// Reads the next server message from `stream` through `buf` (which keeps
/// bytes past it), waiting at most `limit`.
pub(crate) async fn recv_from<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    buf: &mut BytesMut,
    addr: &Target,
    limit: Duration,
) -> Result<ServerMessage, ClientError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match ClientCodec.decode(buf) {
            Ok(Some(m)) => return Ok(m),
            Ok(None) => {}
            Err(e) => {
                let reason = format!("{BAD_REPLY}: {e}");
                return Err(broken(addr, std::io::ErrorKind::InvalidData, reason));
            }
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => {
                let reason = "timed out waiting for the server";
                return Err(broken(addr, std::io::ErrorKind::TimedOut, reason));
            }
            Ok(Ok(0)) => {
                let reason = "server closed the connection";
                return Err(broken(addr, std::io::ErrorKind::UnexpectedEof, reason));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(broken(addr, e.kind(), crate::plain(&e))),
        }
    }
}

/// The first bytes a peer sent, quoted and escaped for one line.
fn shown_bytes(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    let cut: String = escaped.chars().take(SHOWN_PEER_BYTES).collect();
    if cut.len() < escaped.len() {
        format!("\"{cut}...\"")
    } else {
        format!("\"{cut}\"")
    }
}

/// A refusal as one line: `refused (too large): ...`.
pub fn refusal(code: RefusalCode, reason: &str) -> String {
    format!("refused ({}): {reason}", code.label())
}

/// How one file ended, and whether the connection can carry the next one.
struct FileResult {
    outcome: Outcome,
    keep_connection: bool,
}

fn failed(job: &FileJob, reason: impl std::fmt::Display, keep_connection: bool) -> FileResult {
    FileResult {
        outcome: Outcome::Failed(format!("{}: {reason}", job.name)),
        keep_connection,
    }
}

/// A refused file: whether the connection goes on is the code's to say.
fn refused(job: &FileJob, code: RefusalCode, reason: &str) -> FileResult {
    failed(job, refusal(code, reason), !code.closes_connection())
}

/// A local failure mid-exchange: the server waits for bytes that will not
/// come, so the connection is dropped.
fn local_failure(error: ClientError) -> FileResult {
    FileResult {
        outcome: Outcome::Failed(error.to_string()),
        keep_connection: false,
    }
}

/// What [`upload_all`] did.
#[derive(Debug)]
pub struct Report {
    /// One outcome per attempted file, in order.
    pub outcomes: Vec<Outcome>,
    /// Set when the run stopped early: the server cannot be used at all
    /// (unreachable, refused hello) or `--abort-after` fired. Files after
    /// the last outcome were not attempted.
    pub fatal: Option<ClientError>,
}

/// Opens a connection and asks for `opts.hash`.
async fn open_with_hash(opts: &Options) -> Result<Connection, ClientError> {
    let mut conn = Connection::open(opts).await?;
    conn.use_hash(opts.hash).await?;
    Ok(conn)
}

/// Uploads `jobs` in order over as few connections as possible (a broken
/// connection is reopened for the next file), reporting each outcome. Runs
/// of small files go as pipelined puts ([`pipeline`]) when the server
/// speaks version 4; other files are offered one at a time.
pub async fn upload_all(opts: &Options, jobs: &[FileJob], reporter: &mut dyn Reporter) -> Report {
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut conn: Option<Connection> = None;
    let mut sent_total = 0u64;
    let mut warned = false;
    let mut next = 0;
    let mut stalls = 0;
    while let Some(job) = jobs.get(next) {
        let c = match conn.take() {
            Some(c) => conn.insert(c),
            None => match open_with_hash(opts).await {
                Ok(c) => {
                    if c.token_unused && !std::mem::replace(&mut warned, true) {
                        reporter.notice(TOKEN_UNUSED);
                    }
                    conn.insert(c)
                }
                Err(e) => {
                    return Report {
                        outcomes,
                        fatal: Some(e),
                    }
                }
            },
        };
        if pipeline::fits(c, job) {
            let run = jobs[next..]
                .iter()
                .take_while(|j| pipeline::fits(c, j))
                .count();
            let done =
                pipeline::put_all(c, opts, &jobs[next..next + run], reporter, &mut sent_total)
                    .await;
            if !done.keep_connection {
                conn = None;
            }
            if done.outcomes.is_empty() && done.aborted.is_none() {
                // Nothing moved: reopen the connection once, never loop on it.
                stalls += 1;
                if stalls > 1 {
                    let e = std::io::Error::other("the connection failed before any file moved");
                    let lost = done.lost.unwrap_or_else(|| ClientError::read(&job.path, e));
                    return Report {
                        outcomes,
                        fatal: Some(lost),
                    };
                }
                continue;
            }
            stalls = 0;
            next += done.outcomes.len();
            outcomes.extend(done.outcomes);
            if let Some(e) = done.aborted {
                return Report {
                    outcomes,
                    fatal: Some(e),
                };
            }
            continue;
        }
        let result = match upload_one(c, opts, job, reporter, &mut sent_total).await {
            Ok(r) => r,
            Err(e) => {
                return Report {
                    outcomes,
                    fatal: Some(e),
                }
            }
        };
        if !result.keep_connection {
            conn = None;
        }
        reporter.finished(job.size, &result.outcome);
        outcomes.push(result.outcome);
        next += 1;
    }
    Report {
        outcomes,
        fatal: None,
    }
}

/// One file: offer, resume point, body, finish. `Err` only for what ends
/// the whole run (`--abort-after`).
async fn upload_one(
    conn: &mut Connection,
    opts: &Options,
    job: &FileJob,
    reporter: &mut dyn Reporter,
    sent_total: &mut u64,
) -> Result<FileResult, ClientError> {
    let (offset, prefix) = match offer(conn, job, reporter).await {
        Offered::Accept { offset, prefix } => (offset, prefix),
        Offered::Done(result) => return Ok(result),
    };
    let (file, hasher, start) =
        match resume_point(job, offset, prefix, conn.algorithm, reporter).await {
            Ok(v) => v,
            Err(e) => return Ok(local_failure(e)),
        };
    if let Err(e) = conn.send(ClientMessage::Start { offset: start }).await {
        return Ok(failed(job, e, false));
    }
    reporter.file_started(&job.name, job.size, start);
    let body = reader::spawn(file, hasher, start, job.size - start);
    let pacing = Pacing {
        limit_rate: opts.limit_rate,
        abort_after: opts.abort_after,
    };
    let (digest, sent) = match send_body(&mut conn.stream, body, pacing, sent_total, reporter).await
    {
        Ok(v) => v,
        Err(SendError::Abort(n)) => {
            let _ = conn.stream.shutdown().await;
            return Err(ClientError::Aborted(n));
        }
        Err(SendError::Local(e)) => return Ok(local_failure(ClientError::read(&job.path, e))),
        Err(SendError::Write(e)) => {
            let fallback = conn.io_broken(&e);
            let reason = conn.reason_after_failure(fallback).await;
            return Ok(failed(job, reason, false));
        }
    };
    Ok(finish(conn, job, digest, sent, start).await)
}

/// The server's answer to an offer, once any already-stored comparison is done.
enum Offered {
    /// Send the body from the accepted offset (after checking the prefix).
    Accept { offset: u64, prefix: [u8; 32] },
    /// Nothing to send: skipped, refused or failed.
    Done(FileResult),
}

/// Offers the file; when the server already holds that name and size,
/// hashes the local file and skips it if the digests agree.
async fn offer(conn: &mut Connection, job: &FileJob, reporter: &mut dyn Reporter) -> Offered {
    let offer = ClientMessage::Offer {
        name: job.name.clone(),
        size: job.size,
    };
    if let Err(e) = conn.send(offer).await {
        return Offered::Done(failed(job, e, false));
    }
    let stored = match conn.recv().await {
        Ok(ServerMessage::Present { sha256 }) => sha256,
        reply => return accepted(job, reply),
    };
    reporter.verifying(&job.name, job.size);
    let ours = match reader::hash_prefix(&job.path, job.size, conn.algorithm, reporter).await {
        Ok((_, hasher)) => <[u8; 32]>::from(hasher.finalize()),
        Err(e) => return Offered::Done(local_failure(e)),
    };
    if ours == stored {
        let result = match conn.send(ClientMessage::Skip).await {
            Ok(()) => FileResult {
                outcome: Outcome::AlreadyStored {
                    name: job.name.clone(),
                    sha256: ours,
                },
                keep_connection: true,
            },
            Err(e) => failed(job, e, false),
        };
        return Offered::Done(result);
    }
    reporter.notice(&format!(
        "{}: the server holds different content under this name; storing a new copy",
        job.name
    ));
    if let Err(e) = conn.send(ClientMessage::Proceed).await {
        return Offered::Done(failed(job, e, false));
    }
    accepted(job, conn.recv().await)
}

fn accepted(job: &FileJob, reply: Result<ServerMessage, ClientError>) -> Offered {
    match reply {
        Ok(ServerMessage::Accept {
            offset,
            prefix_sha256,
        }) => Offered::Accept {
            offset,
            prefix: prefix_sha256,
        },
        Ok(ServerMessage::Refuse { code, reason }) => Offered::Done(refused(job, code, &reason)),
        Ok(other) => Offered::Done(failed(
            job,
            format!("unexpected {} reply", other.name()),
            false,
        )),
        Err(e) => Offered::Done(failed(job, e, false)),
    }
}

/// Checks the server's prefix against our own file before trusting it;
/// returns the open file, the hash state and the offset to send from.
async fn resume_point(
    job: &FileJob,
    offset: u64,
    prefix: [u8; 32],
    algorithm: Algorithm,
    reporter: &mut dyn Reporter,
) -> Result<(File, Hasher, u64), ClientError> {
    let check = if offset > 0 && offset <= job.size {
        offset
    } else {
        0
    };
    if check > 0 {
        reporter.verifying(&job.name, check);
    }
    let (file, hasher) = reader::hash_prefix(&job.path, check, algorithm, reporter).await?;
    if check == 0 {
        return Ok((file, hasher, 0));
    }
    if <[u8; 32]>::from(hasher.clone().finalize()) == prefix {
        reporter.notice(&format!("resuming {} at {}", job.name, Readable(offset)));
        Ok((file, hasher, offset))
    } else {
        reporter.notice(&format!(
            "{}: the server's partial data differs from this file; restarting from 0",
            job.name
        ));
        Ok((file, Hasher::new(algorithm), 0))
    }
}

/// Sends the digest and reads the verdict.
async fn finish(
    conn: &mut Connection,
    job: &FileJob,
    digest: [u8; 32],
    sent: u64,
    start: u64,
) -> FileResult {
    if let Err(e) = conn.send(ClientMessage::Finish { sha256: digest }).await {
        return failed(job, e, false);
    }
    match conn.recv().await {
        Ok(ServerMessage::Stored { name, sha256 }) if sha256 == digest => FileResult {
            outcome: Outcome::Stored {
                name,
                sha256,
                sent,
                resumed: start,
            },
            keep_connection: true,
        },
        Ok(ServerMessage::Stored { sha256, .. }) => failed(
            job,
            format!(
                "server reports sha256 {} but the file hashes to {}",
                proto::upload::hex(&sha256),
                proto::upload::hex(&digest)
            ),
            false,
        ),
        Ok(ServerMessage::Refuse { code, reason }) => refused(job, code, &reason),
        Ok(other) => failed(job, format!("unexpected {} reply", other.name()), false),
        Err(e) => failed(job, e, false),
    }
}

/// Why sending a body stopped.
#[derive(Debug)]
pub enum SendError {
    /// `--abort-after` reached after this many body bytes.
    Abort(u64),
    /// The local file failed.
    Local(std::io::Error),
    /// The socket failed.
    Write(std::io::Error),
}

/// How a body is paced: `--limit-rate` and the `--abort-after` testing aid.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Bytes per second, if limited.
    pub limit_rate: Option<u64>,
    /// Stop after this many body bytes of the whole run.
    pub abort_after: Option<u64>,
}

/// Streams a body from `body` to `stream`; the rate limit starts at the
/// first body byte. Returns the whole file's digest and the body bytes sent.
pub async fn send_body<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    mut body: BodyReader,
    pacing: Pacing,
    sent_total: &mut u64,
    reporter: &mut dyn Reporter,
) -> Result<([u8; 32], u64), SendError> {
    let mut throttle = Throttle::new(pacing.limit_rate);
    let mut sent = 0u64;
    while let Some(chunk) = body.chunks.recv().await {
        let mut data = &chunk.buf[..chunk.len];
        while !data.is_empty() {
            let mut n = throttle.slice_len(data.len()).min(data.len());
            if let Some(limit) = pacing.abort_after {
                let left = limit.saturating_sub(*sent_total);
                n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                if n == 0 {
                    let _ = stream.flush().await;
                    return Err(SendError::Abort(limit));
                }
            }
            throttle.take(n).await;
            match tokio::time::timeout(REPLY_TIMEOUT, stream.write_all(&data[..n])).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(SendError::Write(e)),
                Err(_) => return Err(SendError::Write(std::io::ErrorKind::TimedOut.into())),
            }
            data = &data[n..];
            sent += n as u64;
            *sent_total += n as u64;
            reporter.advanced(n as u64);
        }
        body.recycle(chunk.buf);
    }
    match body.finish().await {
        Ok(digest) => Ok((digest, sent)),
        Err(e) => Err(SendError::Local(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::shown_bytes;

    #[test]
    fn a_foreign_peer_is_shown_escaped_and_cut() {
        assert_eq!(shown_bytes(b"hi\n"), "\"hi\\n\"");
        let long = shown_bytes(&[b'x'; 100]);
        assert!(long.ends_with("...\"") && long.len() < 70, "{long}");
    }
}
