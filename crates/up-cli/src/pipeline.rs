//! Small files without round trips (protocol version 4's `Put`): the next
//! files are read and hashed while earlier ones are written, and answers
//! are read as they come, so many small files cost about what their bytes
//! cost.
//!
//! ```text
//! checks: Check{name, size} x CHECK_CHUNK -> Present{digest} | Missing   (one round trip a chunk)
//! reader thread --(READ_AHEAD files: Put frame, bytes, Finish frame)--> writer --> server
//!                      the writer keeps at most WINDOW files unanswered
//! answers (Stored | Present | Refuse, in order) --> verdict reader --> outcomes
//! ```
//!
//! First the run asks which names the server already holds with the same
//! size (pipelined checks); a file whose digest matches is "already stored"
//! and not sent, so a rerun moves no file bytes. The server answers each
//! put once the file is durable (it commits a
//! batch at a time), so a file is reported stored exactly as with an offer.
//! A put is whole or nothing: a run cut short stores none of the files in
//! flight, and rerunning finds the ones already stored ("already stored").
//! Files above [`MAX_PUT_SIZE`] are offered one at a time instead (resumable).

use std::cell::RefCell;
use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proto::digest::{self, Algorithm};
use proto::upload::{ClientMessage, ServerMessage, MAX_PUT_SIZE, PUT_VERSION};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::client::{recv_from, refusal, Connection};
use crate::throttle::Throttle;
use crate::{ClientError, FileJob, Options, Outcome, Reporter, REPLY_TIMEOUT};

/// Files sent and not yet answered, at most. Enough to cover the server's
/// commit of one batch while the next one arrives.
pub const WINDOW: usize = 128;

/// Files read and hashed ahead of the writer, at most ([`MAX_PUT_SIZE`]
/// bytes each, so memory stays bounded).
pub const READ_AHEAD: usize = 8;

/// Checks sent before their answers are read.
pub const CHECK_CHUNK: usize = 128;

/// Whether `job` goes as a put on `conn`.
pub fn fits(conn: &Connection, job: &FileJob) -> bool {
    conn.version() >= PUT_VERSION && job.size <= MAX_PUT_SIZE
}

/// What the reading thread made of one file.
enum Next {
    /// Send it.
    Put(Prepared),
    /// The server holds the same bytes under its name: nothing to send.
    Same([u8; 32]),
}

/// One file ready to go: its whole wire form.
struct Prepared {
    /// `Put` frame, the file's bytes, `Finish` frame.
    wire: Bytes,
    /// Where the file's bytes start and end in `wire`.
    body: std::ops::Range<usize>,
    /// The digest sent in `Finish`.
    digest: [u8; 32],
    /// The server holds other bytes under this name (stored as a new copy).
    differs: bool,
}

/// A file as the verdict reader learns of it, in order.
enum Sent {
    /// Written (or being written); the permit frees a window slot once answered.
    Put {
        index: usize,
        digest: [u8; 32],
        _slot: OwnedSemaphorePermit,
    },
    /// Decided here, nothing sent: unreadable, or already stored.
    Done { index: usize, outcome: Outcome },
}

/// What [`put_all`] did: one outcome per file, in order, for the first
/// `outcomes.len()` jobs; the rest were not attempted.
pub struct PutRun {
    /// Outcomes of the attempted files.
    pub outcomes: Vec<Outcome>,
    /// The connection can carry the next request.
    pub keep_connection: bool,
    /// `--abort-after` stopped the run.
    pub aborted: Option<ClientError>,
    /// The connection failed before any file moved (the caller reopens it).
    pub lost: Option<ClientError>,
}

/// Sends `jobs` (all of which [`fits`]) as puts on `conn`.
pub async fn put_all(
    conn: &mut Connection,
    opts: &Options,
    jobs: &[FileJob],
    reporter: &mut dyn Reporter,
    sent_total: &mut u64,
) -> PutRun {
    let stored = match check_all(conn, jobs).await {
        Ok(stored) => stored,
        Err(e) => {
            return PutRun {
                outcomes: Vec::new(),
                keep_connection: false,
                aborted: None,
                lost: Some(e),
            };
        }
    };
    let (prepared_tx, prepared_rx) = mpsc::channel(READ_AHEAD);
    let reader = {
        let jobs = jobs.to_vec();
        let algorithm = conn.algorithm();
        tokio::task::spawn_blocking(move || read_ahead(&jobs, &stored, algorithm, &prepared_tx))
    };
    let window = Arc::new(Semaphore::new(WINDOW));
    let (sent_tx, sent_rx) = mpsc::channel(WINDOW + READ_AHEAD);
    let reporter = RefCell::new(reporter);
    let addr = conn.addr().clone();
    let (stream, buf) = conn.parts();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = Writer {
        jobs,
        pacing: (Throttle::new(opts.limit_rate), opts.abort_after),
        sent_total,
        window: window.clone(),
        reporter: &reporter,
    };
    let (written, answers) = tokio::join!(
        writer.run(&mut wr, prepared_rx, sent_tx),
        read_answers(&mut rd, buf, &addr, jobs, sent_rx, &window, &reporter),
    );
    drop(reader);
    PutRun {
        keep_connection: written.error.is_none() && written.aborted.is_none() && answers.usable,
        outcomes: answers.outcomes,
        aborted: written.aborted.map(ClientError::Aborted),
        lost: None,
    }
}

/// Asks, in chunks of pipelined checks, which jobs the server holds under
/// their name and size: the stored digest of each, if any.
async fn check_all(
    conn: &mut Connection,
    jobs: &[FileJob],
) -> Result<Vec<Option<[u8; 32]>>, ClientError> {
    let mut stored = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(CHECK_CHUNK) {
        let mut out = BytesMut::with_capacity(chunk.len() * 64);
        for job in chunk {
            let check = ClientMessage::Check {
                name: job.name.clone(),
                size: job.size,
            };
            check
                .encode_into(&mut out)
                .map_err(|e| conn.broken(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        conn.write(&out).await?;
        for _ in chunk {
            stored.push(match conn.recv().await? {
                ServerMessage::Present { sha256 } => Some(sha256),
                // A refusal (an unsafe name) is explained by the put's own.
                ServerMessage::Missing | ServerMessage::Refuse { .. } => None,
                other => {
                    let reason = format!("unexpected {} reply to a check", other.name());
                    return Err(conn.broken(std::io::ErrorKind::InvalidData, reason));
                }
            });
        }
    }
    Ok(stored)
}

/// Reads each job whole and builds its wire form; stops when the writer
/// is gone.
fn read_ahead(
    jobs: &[FileJob],
    stored: &[Option<[u8; 32]>],
    algorithm: Algorithm,
    out: &mpsc::Sender<Result<Next, ClientError>>,
) {
    for (job, stored) in jobs.iter().zip(stored) {
        if out.blocking_send(prepare(job, *stored, algorithm)).is_err() {
            return;
        }
    }
}

/// `Put` frame, the file's bytes (exactly the size collected), `Finish`;
/// or [`Next::Same`] when they hash to `stored`.
fn prepare(
    job: &FileJob,
    stored: Option<[u8; 32]>,
    algorithm: Algorithm,
) -> Result<Next, ClientError> {
    let len = usize::try_from(job.size).map_err(|_| {
        ClientError::read(
            &job.path,
            std::io::Error::other("too large for this machine's memory"),
        )
    })?;
    let put = ClientMessage::Put {
        name: job.name.clone(),
        size: job.size,
    };
    let mut wire = BytesMut::with_capacity(len + job.name.len() + 64);
    put.encode_into(&mut wire)
        .map_err(|e| ClientError::read(&job.path, std::io::Error::other(e.to_string())))?;
    let start = wire.len();
    wire.resize(start + len, 0);
    let mut file = File::open(&job.path).map_err(|e| ClientError::read(&job.path, e))?;
    file.read_exact(&mut wire[start..]).map_err(|e| {
        ClientError::read(&job.path, changed(e, "shrank while being read; run again"))
    })?;
    let mut probe = [0u8; 1];
    if file
        .read(&mut probe)
        .map_err(|e| ClientError::read(&job.path, e))?
        > 0
    {
        let grew = std::io::Error::other("grew while being read; run again");
        return Err(ClientError::read(&job.path, grew));
    }
    let digest: [u8; 32] = digest::digest(algorithm, &wire[start..]).into();
    if stored == Some(digest) {
        return Ok(Next::Same(digest));
    }
    ClientMessage::Finish { sha256: digest }
        .encode_into(&mut wire)
        .map_err(|e| ClientError::read(&job.path, std::io::Error::other(e.to_string())))?;
    Ok(Next::Put(Prepared {
        wire: wire.freeze(),
        body: start..start + len,
        digest,
        differs: stored.is_some(),
    }))
}

fn changed(e: std::io::Error, what: &str) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        std::io::Error::other(what.to_string())
    } else {
        e
    }
}

/// The sending half of a run.
struct Writer<'a, 'r> {
    jobs: &'a [FileJob],
    /// `--limit-rate` over the whole run, and `--abort-after`.
    pacing: (Throttle, Option<u64>),
    sent_total: &'a mut u64,
    window: Arc<Semaphore>,
    reporter: &'a RefCell<&'r mut dyn Reporter>,
}

/// How the writer ended.
struct Written {
    /// The socket failed (the verdict reader reports it per file).
    error: Option<std::io::Error>,
    /// `--abort-after` fired after this many body bytes.
    aborted: Option<u64>,
}

impl Writer<'_, '_> {
    async fn run<W: AsyncWrite + Unpin>(
        mut self,
        wr: &mut W,
        mut prepared: mpsc::Receiver<Result<Next, ClientError>>,
        sent: mpsc::Sender<Sent>,
    ) -> Written {
        let mut index = 0;
        let mut end = Written {
            error: None,
            aborted: None,
        };
        while let Some(next) = prepared.recv().await {
            let job = &self.jobs[index];
            let done = match next {
                Ok(Next::Put(p)) => Err(p),
                Ok(Next::Same(sha256)) => Ok(Outcome::AlreadyStored {
                    name: job.name.clone(),
                    sha256,
                }),
                Err(error) => Ok(Outcome::Failed(error.to_string())),
            };
            let p = match done {
                Err(p) => p,
                Ok(outcome) => {
                    if sent.send(Sent::Done { index, outcome }).await.is_err() {
                        break;
                    }
                    index += 1;
                    continue;
                }
            };
            if p.differs {
                self.reporter.borrow_mut().notice(&format!(
                    "{}: the server holds different content under this name; storing a new copy",
                    job.name
                ));
            }
            // A closed window: the verdict reader saw the connection end.
            let Ok(slot) = self.window.clone().acquire_owned().await else {
                break;
            };
            let entry = Sent::Put {
                index,
                digest: p.digest,
                _slot: slot,
            };
            if sent.send(entry).await.is_err() {
                break;
            }
            index += 1;
            self.reporter
                .borrow_mut()
                .file_started(&job.name, job.size, 0);
            if let Err(stop) = self.write(wr, &p).await {
                end = stop;
                break;
            }
        }
        if end.error.is_none() {
            if let Err(e) = wr.flush().await {
                end.error = Some(e);
            }
        }
        if end.aborted.is_some() {
            let _ = wr.shutdown().await;
        }
        end
    }

    /// Writes one file's wire form, paced, reporting its body bytes.
    async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        p: &Prepared,
    ) -> Result<(), Written> {
        let mut at = 0;
        while at < p.wire.len() {
            let (throttle, abort_after) = &mut self.pacing;
            let mut n = throttle.slice_len(p.wire.len() - at);
            // Body bytes in this slice: what the rate limit and --abort-after count.
            let body_in = |from: usize, len: usize| {
                let lo = from.max(p.body.start);
                let hi = (from + len).min(p.body.end);
                hi.saturating_sub(lo)
            };
            if let Some(limit) = *abort_after {
                let left =
                    usize::try_from(limit.saturating_sub(*self.sent_total)).unwrap_or(usize::MAX);
                if body_in(at, n) > left {
                    n = (p.body.start.max(at) + left) - at;
                    let _ = self.write_slice(wr, &p.wire[at..at + n]).await;
                    *self.sent_total += body_in(at, n) as u64;
                    return Err(Written {
                        error: None,
                        aborted: Some(limit),
                    });
                }
            }
            let body = body_in(at, n);
            throttle.take(body).await;
            if let Err(e) = self.write_slice(wr, &p.wire[at..at + n]).await {
                return Err(Written {
                    error: Some(e),
                    aborted: None,
                });
            }
            at += n;
            *self.sent_total += body as u64;
            if body > 0 {
                self.reporter.borrow_mut().advanced(body as u64);
            }
        }
        Ok(())
    }

    async fn write_slice<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        match tokio::time::timeout(REPLY_TIMEOUT, wr.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// What the verdict reader found.
struct Answers {
    outcomes: Vec<Outcome>,
    /// No answer said the connection closes, and none failed to arrive.
    usable: bool,
}

/// Reads one answer per file sent, in order, and reports each outcome.
async fn read_answers<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    addr: &crate::Target,
    jobs: &[FileJob],
    mut sent: mpsc::Receiver<Sent>,
    window: &Semaphore,
    reporter: &RefCell<&mut dyn Reporter>,
) -> Answers {
    let mut outcomes = Vec::new();
    let mut lost: Option<String> = None;
    let mut usable = true;
    while let Some(entry) = sent.recv().await {
        let (index, outcome) = match entry {
            Sent::Done { index, outcome } => (index, outcome),
            Sent::Put { index, digest, .. } => {
                let job = &jobs[index];
                let outcome = match &lost {
                    Some(why) => Outcome::Failed(format!("{}: {why}", job.name)),
                    None => match recv_from(rd, buf, addr, REPLY_TIMEOUT).await {
                        Ok(answer) => {
                            let (outcome, closes) = judge(job, digest, answer);
                            if closes {
                                usable = false;
                            }
                            outcome
                        }
                        Err(e) => {
                            // Every file still unanswered shares this end.
                            window.close();
                            usable = false;
                            lost = Some(e.to_string());
                            Outcome::Failed(format!("{}: {e}", job.name))
                        }
                    },
                };
                (index, outcome)
            }
        };
        reporter.borrow_mut().finished(jobs[index].size, &outcome);
        outcomes.push(outcome);
    }
    Answers { outcomes, usable }
}

/// One answer as an outcome, and whether it closes the connection.
fn judge(job: &FileJob, digest: [u8; 32], answer: ServerMessage) -> (Outcome, bool) {
    let failed = |why: String| Outcome::Failed(format!("{}: {why}", job.name));
    match answer {
        ServerMessage::Stored { name, sha256 } if sha256 == digest => (
            Outcome::Stored {
                name,
                sha256,
                sent: job.size,
                resumed: 0,
            },
            false,
        ),
        ServerMessage::Present { sha256 } if sha256 == digest => (
            Outcome::AlreadyStored {
                name: job.name.clone(),
                sha256,
            },
            false,
        ),
        ServerMessage::Stored { sha256, .. } | ServerMessage::Present { sha256 } => (
            failed(format!(
                "server reports digest {} but the file hashes to {}",
                proto::upload::hex(&sha256),
                proto::upload::hex(&digest)
            )),
            true,
        ),
        ServerMessage::Refuse { code, reason } => {
            (failed(refusal(code, &reason)), code.closes_connection())
        }
        other => (failed(format!("unexpected {} reply", other.name())), true),
    }
}
