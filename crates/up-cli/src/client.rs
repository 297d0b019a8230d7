//! The binary upload protocol from the client side: one connection carries
//! many files; each is offered, resumed when the server holds a matching
//! prefix, streamed and verified. See `docs/PROTOCOL.md` ("Upload").
//!
//! ```text
//! MAGIC Hello -> Welcome
//! per file: Offer -> Accept{offset, prefix sha256} | Refuse ; Start{offset} ; body ; Finish{sha256} -> Stored | Refuse
//! ```

use std::time::Duration;

use bytes::BytesMut;
use proto::upload::{ClientCodec, ClientMessage, RefusalCode, ServerMessage, MAGIC, VERSION};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;
use transport::Stream;

use crate::reader::{self, BodyReader};
use crate::throttle::Throttle;
use crate::{ClientError, FileJob, Options, Outcome, Reporter, REPLY_TIMEOUT};

/// How long to look for the server's reason after a write fails.
const REASON_TIMEOUT: Duration = Duration::from_secs(2);

/// One open connection after a successful hello.
pub struct Connection {
    stream: Stream,
    buf: BytesMut,
    addr: String,
}

/// Connects to `host:port` (with TLS when `opts.tls` is set, verifying the
/// server before anything is sent), mapping failures to a line that names
/// the address.
pub async fn connect(opts: &Options) -> Result<Stream, ClientError> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| ClientError::Connect {
            addr: addr.clone(),
            source: std::io::ErrorKind::TimedOut.into(),
        })?
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    match &opts.tls {
        Some(connector) => Ok(connector.connect(stream, &opts.host, opts.port).await?),
        None => {
            let peer = stream
                .peer_addr()
                .map_err(|source| ClientError::Connect { addr, source })?;
            Ok(Stream::plain(stream, peer))
        }
    }
}

impl Connection {
    /// Connects, sends the magic and the hello, and waits for the welcome.
    pub async fn open(opts: &Options) -> Result<Connection, ClientError> {
        let stream = connect(opts).await?;
        let mut conn = Connection {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            addr: format!("{}:{}", opts.host, opts.port),
        };
        conn.write(&MAGIC).await?;
        conn.send(ClientMessage::Hello {
            version: VERSION,
            token: opts.token.clone().unwrap_or_default(),
        })
        .await?;
        match conn.recv().await? {
            ServerMessage::Welcome { .. } => Ok(conn),
            ServerMessage::Refuse { code, reason } => {
                Err(ClientError::Refused(format!("{}: {reason}", code.label())))
            }
            other => Err(conn.broken(format!("unexpected reply to hello: {other:?}"))),
        }
    }

    fn broken(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Connection {
            addr: self.addr.clone(),
            reason: reason.into(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        // Flushed: a TLS stream may hold the end of a message until then.
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(REPLY_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.broken(e.to_string())),
            Err(_) => Err(self.broken("timed out writing")),
        }
    }

    async fn send(&mut self, msg: ClientMessage) -> Result<(), ClientError> {
        let mut out = BytesMut::with_capacity(128);
        msg.encode_into(&mut out)
            .map_err(|e| self.broken(e.to_string()))?;
        self.write(&out).await
    }

    async fn recv_within(&mut self, limit: Duration) -> Result<ServerMessage, ClientError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match ClientCodec.decode(&mut self.buf) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => return Err(self.broken(format!("bad reply: {e}"))),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(self.broken("timed out waiting for the server")),
                Ok(Ok(0)) => return Err(self.broken("server closed the connection")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.broken(e.to_string())),
            }
        }
    }

    async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        self.recv_within(REPLY_TIMEOUT).await
    }

    /// After a failed write: the server usually said why before closing.
    async fn reason_after_failure(&mut self, fallback: ClientError) -> String {
        match self.recv_within(REASON_TIMEOUT).await {
            Ok(ServerMessage::Refuse { code, reason }) => {
                format!("refused ({}): {reason}", code.label())
            }
            _ => fallback.to_string(),
        }
    }
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

/// A failure reading the local file mid-upload: the server waits for body
/// bytes that will not come, so the connection is dropped.
fn local_failure(job: &FileJob, reason: String) -> FileResult {
    let error = ClientError::Local {
        path: job.path.display().to_string(),
        reason,
    };
    failed(job, error, false)
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

/// Uploads `jobs` in order over as few connections as possible (a broken
/// connection is reopened for the next file), reporting each outcome.
pub async fn upload_all(opts: &Options, jobs: &[FileJob], reporter: &mut dyn Reporter) -> Report {
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut conn: Option<Connection> = None;
    let mut throttle = Throttle::new(opts.limit_rate);
    let mut sent_total = 0u64;
    for job in jobs {
        let c = match conn.take() {
            Some(c) => conn.insert(c),
            None => match Connection::open(opts).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    return Report {
                        outcomes,
                        fatal: Some(e),
                    }
                }
            },
        };
        let result = match upload_one(c, opts, job, reporter, &mut throttle, &mut sent_total).await
        {
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
        reporter.finished(job, &result.outcome);
        outcomes.push(result.outcome);
    }
    Report {
        outcomes,
        fatal: None,
    }
}

async fn upload_one(
    conn: &mut Connection,
    opts: &Options,
    job: &FileJob,
    reporter: &mut dyn Reporter,
    throttle: &mut Throttle,
    sent_total: &mut u64,
) -> Result<FileResult, ClientError> {
    if let Err(e) = conn
        .send(ClientMessage::Offer {
            name: job.name.clone(),
            size: job.size,
        })
        .await
    {
        return Ok(failed(job, e, false));
    }
    let (offset, prefix) = match conn.recv().await {
        Ok(ServerMessage::Accept {
            offset,
            prefix_sha256,
        }) => (offset, prefix_sha256),
        Ok(ServerMessage::Refuse { code, reason }) => {
            let keep = !matches!(
                code,
                RefusalCode::BadMessage
                    | RefusalCode::ShuttingDown
                    | RefusalCode::IdleTimeout
                    | RefusalCode::HeaderTooSlow
                    | RefusalCode::BodyTooSlow
            );
            return Ok(failed(
                job,
                format!("refused ({}): {reason}", code.label()),
                keep,
            ));
        }
        Ok(other) => return Ok(failed(job, format!("unexpected reply {other:?}"), false)),
        Err(e) => return Ok(failed(job, e, false)),
    };

    // Check the server's prefix against our own file before trusting it.
    let path = job.path.clone();
    let check = if offset > 0 && offset <= job.size {
        offset
    } else {
        0
    };
    let prefix_state = tokio::task::spawn_blocking(move || reader::hash_prefix(&path, check))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    let (file, hasher, start) = match prefix_state {
        Ok((file, hasher)) if check > 0 => {
            let ours: [u8; 32] = hasher.clone().finalize().into();
            if ours == prefix {
                reporter.notice(&format!("resuming {} at {}", job.name, human_bytes(offset)));
                (file, hasher, offset)
            } else {
                reporter.notice(&format!(
                    "{}: the server's partial data differs from this file; restarting from 0",
                    job.name
                ));
                (file, Sha256::new(), 0)
            }
        }
        Ok((file, hasher)) => (file, hasher, 0),
        Err(reason) => {
            // The server waits for a start we cannot honour: drop the connection.
            return Ok(local_failure(job, reason));
        }
    };
    if let Err(e) = conn.send(ClientMessage::Start { offset: start }).await {
        return Ok(failed(job, e, false));
    }
    reporter.file_started(job, start);
    let body = reader::spawn(file, hasher, start, job.size - start);
    let sent = match send_body(
        &mut conn.stream,
        body,
        throttle,
        opts.abort_after,
        sent_total,
        reporter,
    )
    .await
    {
        Ok(digest) => digest,
        Err(SendError::Abort(n)) => {
            let _ = conn.stream.shutdown().await;
            return Err(ClientError::Aborted(n));
        }
        Err(SendError::Local(reason)) => {
            return Ok(local_failure(job, reason));
        }
        Err(SendError::Write(e)) => {
            let fallback = conn.broken(e.to_string());
            let reason = conn.reason_after_failure(fallback).await;
            return Ok(failed(job, reason, false));
        }
    };
    let (digest, sent_now) = sent;
    if let Err(e) = conn.send(ClientMessage::Finish { sha256: digest }).await {
        return Ok(failed(job, e, false));
    }
    match conn.recv().await {
        Ok(ServerMessage::Stored { name, sha256 }) if sha256 == digest => Ok(FileResult {
            outcome: Outcome::Stored {
                name,
                sha256,
                sent: sent_now,
            },
            keep_connection: true,
        }),
        Ok(ServerMessage::Stored { sha256, .. }) => Ok(failed(
            job,
            format!(
                "server reports sha256 {} but the file hashes to {}",
                proto::upload::hex(&sha256),
                proto::upload::hex(&digest)
            ),
            false,
        )),
        Ok(ServerMessage::Refuse { code, reason }) => Ok(failed(
            job,
            format!("refused ({}): {reason}", code.label()),
            code == RefusalCode::DigestMismatch,
        )),
        Ok(other) => Ok(failed(job, format!("unexpected reply {other:?}"), false)),
        Err(e) => Ok(failed(job, e, false)),
    }
}

/// Why sending a body stopped.
#[derive(Debug)]
pub enum SendError {
    /// `--abort-after` reached after this many body bytes.
    Abort(u64),
    /// The local file failed (one line).
    Local(String),
    /// The socket failed.
    Write(std::io::Error),
}

/// Streams a body from `reader` to `stream`, pacing with `throttle`.
/// Returns the whole file's digest and the body bytes sent.
pub async fn send_body(
    stream: &mut Stream,
    mut body: BodyReader,
    throttle: &mut Throttle,
    abort_after: Option<u64>,
    sent_total: &mut u64,
    reporter: &mut dyn Reporter,
) -> Result<([u8; 32], u64), SendError> {
    let mut sent = 0u64;
    while let Some(chunk) = body.chunks.recv().await {
        let mut data = &chunk.buf[..chunk.len];
        while !data.is_empty() {
            let mut n = throttle.slice_len(data.len()).min(data.len());
            if let Some(limit) = abort_after {
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
        Err(reason) => Err(SendError::Local(reason)),
    }
}

/// `4.0 MiB`-style sizes for notices and the summary.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(4 << 20), "4.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
