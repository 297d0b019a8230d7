//! Protocol version 4's `Put`: small files sent one after another without
//! waiting for answers, stored by group commit.
//!
//! ```text
//! C: Put{name, size} <size raw bytes> Finish{digest}   Put ... Finish   Put ...
//! S:                        (commit: fsync all, rename all, fsync dirs)  Stored|Present|Refuse ...
//! ```
//!
//! A put is received whole into one reused buffer (at most
//! [`MAX_PUT_SIZE`]), verified, and written to a temp file in the partial
//! dir; its answer waits in the [`Batch`]. The batch is committed
//! ([`Storage::commit`](crate::storage::Storage::commit): every file's data
//! fsynced together, renames, one fsync per directory) when the client has
//! nothing more on the way, or before any other request; then every answer
//! is sent, in order, in one write. A batch that fills up
//! ([`MAX_BATCH_FILES`]) while more input waits is committed behind: its
//! fsyncs run on the blocking pool while the next batch arrives, and its
//! answers go out before that batch's. So nothing is reported stored before
//! it is durable, and a client that keeps a window of puts in flight pays one
//! commit per batch instead of two round trips and three fsyncs per file.
//!
//! A put is not resumable: one cut short stores nothing (the rerun sends
//! it again, and the files the batch already holds are then "already
//! stored"). A refused put's body is still read, since it is on its way.

use std::time::Instant;

use bytes::BytesMut;
use proto::digest;
use proto::size::Readable;
use proto::upload::{ClientMessage, Digest, RefusalCode, ServerMessage, MAX_PUT_SIZE};
use tokio::io::AsyncReadExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{ended, log_stored, shown, Conn, Stop, Stream};
use crate::body::{self, Pace};
use crate::storage::{Committed, Staged, StorageError};

/// Most puts committed together. A client's window larger than this still
/// works: the batch is committed when full.
pub const MAX_BATCH_FILES: usize = 64;

/// A put's answer, as far as it is known before the commit.
enum Verdict {
    /// Decided without storing anything: a refusal, or `Present`.
    Ready(ServerMessage),
    /// Verified data in the batch's `staged`, at this index.
    Staged {
        /// Bytes of the file, for the log line.
        size: u64,
        /// When its put arrived, for the log line.
        began: Instant,
    },
}

/// Puts and checks received and not yet answered.
#[derive(Default)]
pub(super) struct Batch {
    verdicts: Vec<Verdict>,
    staged: Vec<Staged>,
    /// The previous batch, being committed behind this one.
    behind: Option<Committing>,
    /// One `--max-uploads` slot, held while this connection has puts to store.
    slot: Option<OwnedSemaphorePermit>,
}

impl Batch {
    /// Nothing waits for an answer.
    pub(super) fn is_empty(&self) -> bool {
        self.verdicts.is_empty() && self.behind.is_none()
    }
}

/// A batch whose files are being stored; its answers wait for that.
struct Committing {
    began: Instant,
    verdicts: Vec<Verdict>,
    /// Name and digest of each staged file, in order.
    names: Vec<String>,
    digests: Vec<Digest>,
    /// The commit on the blocking pool; `None` when nothing was staged.
    task: Option<JoinHandle<Vec<Committed>>>,
}

/// What [`Conn::stage`] decided for one verified put.
enum Staging {
    Verdict(Verdict),
    Staged(Staged, Verdict),
}

impl<S: Stream> Conn<S> {
    /// One put: its body and digest are read, then it is refused, found
    /// already stored, or staged for the next commit.
    pub(super) async fn put(&mut self, name: String, size: u64) -> Result<(), Stop> {
        let began = Instant::now();
        let Some(len) = usize::try_from(size).ok().filter(|_| size <= MAX_PUT_SIZE) else {
            let reason = format!(
                "{}: a put carries at most {}, not {}; offer larger files",
                shown(&name),
                Readable(MAX_PUT_SIZE),
                Readable(size)
            );
            self.refuse(RefusalCode::BadMessage, reason.clone()).await;
            return Err(Stop::Failed(reason));
        };
        let mut body = std::mem::take(&mut self.put_buf);
        let end = body::receive_small(
            &mut self.stream,
            &mut self.buf,
            len,
            &mut body,
            &self.shared.cancel,
            Pace::of(&self.shared.config),
        )
        .await;
        if let Some(end) = ended(&end, &self.shared.config) {
            let reason = format!("{}: {}; nothing kept", shown(&name), end.reason);
            if let Some(code) = end.refusal {
                self.refuse(code, reason.clone()).await;
            }
            return Err(end.stop(reason));
        }
        let claimed = match self.read_within_request("before the digest").await? {
            ClientMessage::Finish { sha256 } => sha256,
            other => return Err(self.unexpected("finish", &other).await),
        };
        let verdict = self.stage(name, body, claimed, began).await?;
        self.batch.verdicts.push(verdict);
        if self.batch.verdicts.len() >= MAX_BATCH_FILES {
            self.commit_behind().await?;
        }
        Ok(())
    }

    /// Checks a received put and writes it to a temp file; gives the body
    /// buffer back for the next put.
    async fn stage(
        &mut self,
        name: String,
        body: Vec<u8>,
        claimed: Digest,
        began: Instant,
    ) -> Result<Verdict, Stop> {
        let size = body.len() as u64;
        if let Some((code, reason)) = self.check_offer(&name, size) {
            self.put_buf = body;
            return Ok(Verdict::Ready(ServerMessage::Refuse { code, reason }));
        }
        if self.batch.slot.is_none() {
            match self.shared.uploads.clone().try_acquire_owned() {
                Ok(slot) => self.batch.slot = Some(slot),
                Err(_) => {
                    self.put_buf = body;
                    let reason = format!(
                        "the server already runs {} uploads; retry later",
                        self.shared.config.max_uploads
                    );
                    return Ok(Verdict::Ready(refusal(RefusalCode::TooManyUploads, reason)));
                }
            }
        }
        // The same name and bytes earlier in this batch: one copy is enough.
        let twin = self
            .batch
            .staged
            .iter()
            .any(|s| s.name == name && s.digest == claimed && s.partial.len() == size);
        let algorithm = self.algorithm;
        let staged = self
            .shared
            .blocking(move |s| {
                let actual: Digest = digest::digest(algorithm, &body).into();
                if actual != claimed {
                    let reason = format!(
                        "{name}: received data hashes to {}, the client sent {}; nothing was stored",
                        proto::upload::hex(&actual),
                        proto::upload::hex(&claimed)
                    );
                    let refused = refusal(RefusalCode::DigestMismatch, reason);
                    return Ok((body, Staging::Verdict(Verdict::Ready(refused))));
                }
                let present = ServerMessage::Present { sha256: actual };
                if twin || s.storage.stored_digest_with(&name, size, algorithm)? == Some(actual) {
                    info!("{name}: already stored with the same digest, skipped");
                    return Ok((body, Staging::Verdict(Verdict::Ready(present))));
                }
                if s.storage.free_space().is_ok_and(|free| free < size) {
                    let reason = format!("{name}: needs {}, the server has less free", Readable(size));
                    let refused = refusal(RefusalCode::NoSpace, reason);
                    return Ok((body, Staging::Verdict(Verdict::Ready(refused))));
                }
                let mut partial = s.storage.open_temp()?;
                if let Err(e) = partial.write_all(&body) {
                    let _ = s.storage.discard(partial);
                    return Err(e);
                }
                let staged = Staged {
                    partial,
                    name,
                    digest: actual,
                    algorithm,
                };
                Ok((body, Staging::Staged(staged, Verdict::Staged { size, began })))
            })
            .await;
        match staged {
            Ok((body, staging)) => {
                self.put_buf = body;
                Ok(match staging {
                    Staging::Verdict(v) => v,
                    Staging::Staged(staged, v) => {
                        self.batch.staged.push(staged);
                        v
                    }
                })
            }
            Err(e) => {
                // The earlier puts are verified: store them before closing.
                self.commit().await?;
                Err(self.refuse_storage("a put", &e).await)
            }
        }
    }

    /// One check: whether `name` is stored with `size`, answered at the
    /// next commit, in order with the puts around it.
    pub(super) async fn check(&mut self, name: String, size: u64) -> Result<(), Stop> {
        // A put of that name earlier on this connection counts, committed or not.
        let staged = self
            .batch
            .staged
            .iter()
            .rev()
            .find(|s| s.name == name && s.partial.len() == size)
            .map(|s| s.digest);
        let answer = match (self.check_offer(&name, size), staged) {
            (Some((code, reason)), _) => refusal(code, reason),
            (None, Some(sha256)) => ServerMessage::Present { sha256 },
            (None, None) => {
                let algorithm = self.algorithm;
                let n = name.clone();
                let found = self
                    .shared
                    .blocking(move |s| s.storage.stored_digest_with(&n, size, algorithm))
                    .await;
                match found {
                    Ok(Some(sha256)) => ServerMessage::Present { sha256 },
                    Ok(None) => ServerMessage::Missing,
                    Err(e) => {
                        warn!(peer = %self.peer, "{name}: {e} (cannot check for a stored copy)");
                        ServerMessage::Missing
                    }
                }
            }
        };
        self.batch.verdicts.push(Verdict::Ready(answer));
        if self.batch.verdicts.len() >= MAX_BATCH_FILES {
            self.commit_behind().await?;
        }
        Ok(())
    }

    /// Whether more client bytes are already here or on the way, without waiting.
    pub(super) async fn input_waiting(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        // A read that is not ready consumes nothing (TCP, and TLS keeps a
        // partial record in its own state), so giving up on it is safe.
        tokio::select! {
            biased;
            r = self.stream.read_buf(&mut self.buf) => matches!(r, Ok(n) if n > 0),
            () = std::future::ready(()) => false,
        }
    }

    /// Answers everything received so far: waits for a commit running
    /// behind, then stores the staged puts together and sends every waiting
    /// answer, in order, in one write. A storage failure of one file refuses
    /// that file with code 30 and closes the connection once all answers are sent.
    pub(super) async fn commit(&mut self) -> Result<(), Stop> {
        if let Some(behind) = self.batch.behind.take() {
            self.answer(behind).await?;
        }
        self.batch.slot = None;
        if self.batch.verdicts.is_empty() {
            return Ok(());
        }
        let batch = self.start_commit();
        self.answer(batch).await
    }

    /// A full batch while more input waits: its commit runs behind on the
    /// blocking pool while the next batch is received, and is answered
    /// before that one (or before anything else is answered).
    async fn commit_behind(&mut self) -> Result<(), Stop> {
        if let Some(behind) = self.batch.behind.take() {
            self.answer(behind).await?;
        }
        self.batch.behind = Some(self.start_commit());
        Ok(())
    }

    /// Takes the batch's answers and starts storing its staged files.
    fn start_commit(&mut self) -> Committing {
        let verdicts = std::mem::take(&mut self.batch.verdicts);
        let staged = std::mem::take(&mut self.batch.staged);
        let names: Vec<String> = staged.iter().map(|s| s.name.clone()).collect();
        let digests: Vec<Digest> = staged.iter().map(|s| s.digest).collect();
        let task = (!staged.is_empty()).then(|| {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || shared.storage.commit(staged))
        });
        Committing {
            began: Instant::now(),
            verdicts,
            names,
            digests,
            task,
        }
    }

    /// Waits for a commit and sends its answers in one write.
    async fn answer(&mut self, batch: Committing) -> Result<(), Stop> {
        let Committing {
            began,
            verdicts,
            names,
            digests,
            task,
        } = batch;
        let results = match task {
            None => Vec::new(),
            Some(task) => match task.await {
                Ok(results) => results,
                Err(e) => names
                    .iter()
                    .map(|name| {
                        Err(StorageError::Io {
                            action: "store",
                            path: name.clone(),
                            cause: std::io::Error::other(e.to_string()),
                        })
                    })
                    .collect(),
            },
        };
        let mut results = results.into_iter().zip(names).zip(digests);
        let count = verdicts.len();
        let mut out = BytesMut::with_capacity(count * 128);
        let mut failure = None;
        for verdict in verdicts {
            let msg = match verdict {
                Verdict::Ready(msg) => msg,
                Verdict::Staged { size, began } => match results.next() {
                    Some(((Ok(None), name), digest)) => {
                        info!(peer = %self.peer, "{name}: stored by another connection meanwhile, with the same digest");
                        ServerMessage::Present { sha256: digest }
                    }
                    Some(((Ok(Some(stored)), _), digest)) => {
                        let algorithm = self.algorithm;
                        log_stored(
                            self.peer,
                            &stored,
                            size,
                            began.elapsed(),
                            (algorithm, &digest),
                            0,
                        );
                        ServerMessage::Stored {
                            name: stored,
                            sha256: digest,
                        }
                    }
                    Some(((Err(e), name), _)) => {
                        warn!(peer = %self.peer, "{name}: {e}");
                        failure = Some(format!("{name}: {e}"));
                        refusal(
                            RefusalCode::StorageError,
                            format!("{name}: server storage error"),
                        )
                    }
                    None => refusal(RefusalCode::StorageError, "server storage error".into()),
                },
            };
            if let Err(e) = msg.encode_into(&mut out) {
                return Err(Stop::Failed(format!("cannot encode reply: {e}")));
            }
        }
        self.write(&out).await?;
        debug!(peer = %self.peer, "committed {count} answers in {:?}", began.elapsed());
        match failure {
            Some(why) => Err(Stop::Failed(why)),
            None => Ok(()),
        }
    }
}

fn refusal(code: RefusalCode, reason: String) -> ServerMessage {
    ServerMessage::Refuse { code, reason }
}
