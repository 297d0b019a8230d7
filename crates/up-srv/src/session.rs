//! One connection: detects its form, then runs the legacy exchange or the
//! binary protocol's per-file state machine.
//!
//! ```text
//! binary: Hello -> Welcome | Refuse(close)
//!         loop { Offer -> Refuse | Accept ; Start ; body ; Finish -> Stored | Refuse }
//! legacy: "<digits>" [pause or CR/LF] -> "1001" ; <size bytes> ; close
//!         (with --token: -> "refused: ..." line ; close, nothing stored)
//! ```
//!
//! The session owns the buffer the codec decodes from, so bytes read past a
//! `Start` frame (or past the legacy size) are handed to [`body::receive`] as
//! the body's first bytes. Timers live here, not in `proto`: the idle timeout
//! on every read, the header deadline that runs from a control frame's first
//! byte to its last (so a frame cannot be dripped forever), the body's
//! minimum rate (in [`body::receive`]) and the legacy pause that completes an
//! unterminated size.
//! Errors end this connection only; they are logged with the peer address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use proto::upload::{
    self, ClientMessage, Form, RefusalCode, ServerCodec, ServerMessage, LEGACY_NAME, LEGACY_REPLY,
    MAGIC, VERSION,
};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tracing::{debug, info, warn};

use crate::body::{self, BodyEnd, Pace};
use crate::server::Shared;
use crate::storage::{validate_name, PartialUpload, StorageError};

/// A legacy client that stops sending digits for this long has sent its whole
/// size (the original client sends no terminator and waits for the reply).
pub const LEGACY_PAUSE: Duration = Duration::from_millis(100);

/// At most this many bytes past a legacy size are read and dropped before closing.
const LEGACY_DRAIN_MAX: usize = 1 << 20;

/// At most this long is spent dropping bytes past a legacy size.
const LEGACY_DRAIN_TIME: Duration = Duration::from_secs(1);

/// Sent instead of `1001` when a legacy client reaches a server started with
/// `--token`: the legacy form has no token field, so it cannot be authorised.
pub const LEGACY_TOKEN_REFUSAL: &[u8] = b"refused: this server requires a token; use up-cli\n";

/// Initial capacity of the control-message buffer.
const CONTROL_BUF: usize = 16 * 1024;

/// Longest time spent trying to deliver a refusal to a peer that may not read.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a session stops early.
#[derive(Debug)]
enum Stop {
    /// The peer closed at a message boundary: a normal end.
    Closed,
    /// The server is shutting down.
    Cancelled,
    /// The peer sent nothing for the idle timeout.
    Idle,
    /// A control frame was not complete within the header timeout.
    HeaderSlow,
    /// The body arrived below the minimum rate; the reason is logged.
    TooSlow(String),
    /// Any other reason, already worth a log line.
    Failed(String),
}

struct Conn<'a, S> {
    stream: S,
    peer: SocketAddr,
    buf: BytesMut,
    shared: &'a Shared,
    /// When the control frame being received must be complete; set at its
    /// first byte, cleared once it decodes.
    frame_deadline: Option<tokio::time::Instant>,
}

/// Serves one connection (plain or TLS) to its end; never returns an error
/// to the accept loop.
pub async fn run<S>(stream: S, peer: SocketAddr, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut conn = Conn {
        stream,
        peer,
        buf: BytesMut::with_capacity(CONTROL_BUF),
        shared,
        frame_deadline: None,
    };
    let result = match conn.detect().await {
        Ok(Form::Legacy) => conn.legacy().await,
        Ok(Form::Binary) => conn.binary().await,
        Ok(_) => Err(Stop::Failed(
            "unknown protocol (expected ASCII digits or the binary magic)".into(),
        )),
        Err(stop) => Err(stop),
    };
    match result {
        Ok(()) | Err(Stop::Closed) => debug!(%peer, "connection closed"),
        Err(Stop::Cancelled) => debug!(%peer, "connection stopped by shutdown"),
        Err(Stop::Idle) => {
            info!(%peer, "connection idle for {:?}, closed", shared.config.idle_timeout)
        }
        Err(Stop::HeaderSlow) => info!(
            %peer,
            "control message not complete within {:?} of its first byte, closed",
            shared.config.header_timeout
        ),
        Err(Stop::TooSlow(why)) => info!(%peer, "upload too slow, closed: {why}"),
        Err(Stop::Failed(why)) => warn!(%peer, "connection ended: {why}"),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<'_, S> {
    /// Starts the header deadline if a control frame has begun arriving.
    fn mark_frame_start(&mut self) {
        if self.frame_deadline.is_none() && !self.buf.is_empty() {
            self.frame_deadline =
                Some(tokio::time::Instant::now() + self.shared.config.header_timeout);
        }
    }

    /// Completes at the header deadline; never while no frame is under way.
    async fn frame_overdue(deadline: Option<tokio::time::Instant>) {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Reads more bytes into the buffer; `Ok(false)` on EOF.
    async fn fill(&mut self) -> Result<bool, Stop> {
        let idle = self.shared.config.idle_timeout;
        let deadline = self.frame_deadline;
        let result = tokio::select! {
            _ = self.shared.cancel.cancelled() => Err(Stop::Cancelled),
            () = Self::frame_overdue(deadline) => Err(Stop::HeaderSlow),
            r = tokio::time::timeout(idle, self.stream.read_buf(&mut self.buf)) => match r {
                Err(_) => Err(Stop::Idle),
                Ok(Ok(0)) => Ok(false),
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e)) => Err(Stop::Failed(format!("read failed: {e}"))),
            },
        };
        self.mark_frame_start();
        result
    }

    async fn detect(&mut self) -> Result<Form, Stop> {
        loop {
            match upload::detect(&self.buf) {
                Form::NeedMore => {
                    if !self.fill().await? {
                        return Err(Stop::Closed);
                    }
                }
                form => return Ok(form),
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        // Flushed: a TLS stream may hold the end of a message until then.
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.shared.config.idle_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Stop::Failed(format!("write failed: {e}"))),
            Err(_) => Err(Stop::Idle),
        }
    }

    async fn send(&mut self, msg: ServerMessage) -> Result<(), Stop> {
        let mut out = BytesMut::with_capacity(256);
        msg.encode_into(&mut out)
            .map_err(|e| Stop::Failed(format!("cannot encode reply: {e}")))?;
        self.write(&out).await
    }

    /// Sends a refusal; the connection may be going away, so this is best effort.
    async fn refuse(&mut self, code: RefusalCode, reason: impl Into<String>) {
        let reason = reason.into();
        debug!(peer = %self.peer, "refusing: {} ({reason})", code.label());
        let mut out = BytesMut::with_capacity(256);
        if (ServerMessage::Refuse { code, reason })
            .encode_into(&mut out)
            .is_ok()
        {
            let write = async {
                self.stream.write_all(&out).await?;
                self.stream.flush().await
            };
            let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
        }
    }

    /// Logs a failure of the server's own storage and refuses the current
    /// file with code 30; the client learns only that the server failed.
    async fn refuse_storage(&mut self, name: &str, e: &(dyn std::fmt::Display + Sync)) {
        warn!(peer = %self.peer, "{name}: {e}");
        self.refuse(
            RefusalCode::StorageError,
            format!("{name}: server storage error"),
        )
        .await;
    }

    /// Reads the next client message; `Err(Stop::Closed)` at a clean EOF.
    async fn read_message(&mut self) -> Result<ClientMessage, Stop> {
        loop {
            self.mark_frame_start();
            match ServerCodec.decode(&mut self.buf) {
                Ok(Some(msg)) => {
                    self.frame_deadline = None;
                    return Ok(msg);
                }
                Ok(None) => {}
                Err(e) => {
                    self.refuse(RefusalCode::BadMessage, e.to_string()).await;
                    return Err(Stop::Failed(format!("bad message: {e}")));
                }
            }
            let more = match self.fill().await {
                Err(Stop::HeaderSlow) => {
                    let took = self.shared.config.header_timeout;
                    self.refuse(
                        RefusalCode::HeaderTooSlow,
                        format!("message not complete within {took:?} of its first byte"),
                    )
                    .await;
                    return Err(Stop::HeaderSlow);
                }
                other => other?,
            };
            if !more {
                if self.buf.is_empty() {
                    return Err(Stop::Closed);
                }
                return Err(Stop::Failed("connection closed inside a message".into()));
            }
        }
    }

    async fn binary(&mut self) -> Result<(), Stop> {
        bytes::Buf::advance(&mut self.buf, MAGIC.len());
        match self.read_message().await? {
            ClientMessage::Hello { version, token } => {
                if version != VERSION {
                    let reason = format!("protocol version {version} is not supported (this server speaks {VERSION}; upgrade up-cli)");
                    self.refuse(RefusalCode::UnsupportedVersion, reason.clone())
                        .await;
                    return Err(Stop::Failed(reason));
                }
                if let Some(expected) = &self.shared.config.token {
                    if !token_matches(expected, &token) {
                        let reason = if token.is_empty() {
                            "this server requires a token (pass --token or set UP_TOKEN)"
                        } else {
                            "wrong token"
                        };
                        self.refuse(RefusalCode::Unauthorized, reason).await;
                        return Err(Stop::Failed(format!("refused: {reason}")));
                    }
                }
            }
            other => {
                let reason = format!("expected hello, got {}", message_name(&other));
                self.refuse(RefusalCode::BadMessage, reason.clone()).await;
                return Err(Stop::Failed(reason));
            }
        }
        self.send(ServerMessage::Welcome { version: VERSION })
            .await?;
        loop {
            match self.read_message().await? {
                ClientMessage::Offer { name, size } => self.file(name, size).await?,
                other => {
                    let reason = format!("expected an offer, got {}", message_name(&other));
                    self.refuse(RefusalCode::BadMessage, reason.clone()).await;
                    return Err(Stop::Failed(reason));
                }
            }
        }
    }

    /// One offered file: checks, accept, body, verification, storage.
    /// Refusals that leave the stream in sync return `Ok` so the next offer can follow.
    async fn file(&mut self, name: String, size: u64) -> Result<(), Stop> {
        let shared = self.shared;
        let config = &shared.config;
        if let Err(e) = validate_name(&name) {
            self.refuse(RefusalCode::BadName, format!("{}: {e}", shown(&name)))
                .await;
            return Ok(());
        }
        if size > config.max_size {
            self.refuse(
                RefusalCode::TooLarge,
                format!(
                    "{name}: {size} bytes exceeds the server limit of {} bytes",
                    config.max_size
                ),
            )
            .await;
            return Ok(());
        }
        let Ok(_slot) = shared.uploads.clone().try_acquire_owned() else {
            self.refuse(
                RefusalCode::TooManyUploads,
                format!(
                    "the server already runs {} uploads; retry later",
                    config.max_uploads
                ),
            )
            .await;
            return Ok(());
        };
        let Some(_active) = shared.claim_wait(&name, size).await else {
            self.refuse(
                RefusalCode::Busy,
                format!("{name} ({size} bytes) is being uploaded by another connection"),
            )
            .await;
            return Ok(());
        };
        // Check the space before creating anything: a refused offer must
        // not leave even the bookkeeping of a partial behind.
        let missing = size - shared.storage.held(&name, size);
        match shared.storage.free_space() {
            Ok(free) if free < missing => {
                self.refuse(
                    RefusalCode::NoSpace,
                    format!("{name}: needs {missing} bytes, the server has {free} free"),
                )
                .await;
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => warn!(peer = %self.peer, "{e} (skipping the free-space check)"),
        }
        let opened = blocking(|| {
            let mut partial = shared.storage.open_partial(&name, size)?;
            let hasher = partial.hash_prefix()?;
            Ok((partial, hasher))
        })
        .await;
        let (mut partial, mut hasher) = match opened {
            Ok(v) => v,
            Err(e) => {
                self.refuse_storage(&name, &e).await;
                return Ok(());
            }
        };
        let offset = partial.len();
        let prefix_sha256: [u8; 32] = hasher.clone().finalize().into();
        self.send(ServerMessage::Accept {
            offset,
            prefix_sha256,
        })
        .await?;

        let start = match self.read_message().await {
            Ok(ClientMessage::Start { offset }) => Ok(offset),
            Ok(other) => {
                let reason = format!("expected start, got {}", message_name(&other));
                self.refuse(RefusalCode::BadMessage, reason.clone()).await;
                Err(Stop::Failed(reason))
            }
            Err(Stop::Closed) => Err(Stop::Failed(format!("{name}: peer left after the accept"))),
            Err(e) => Err(e),
        };
        let start = match start {
            Ok(s) if s == offset || s == 0 => s,
            Ok(s) => {
                let reason =
                    format!("{name}: start offset {s} is neither 0 nor the accepted {offset}");
                self.refuse(RefusalCode::BadOffset, reason.clone()).await;
                drop_if_empty(shared, partial).await;
                return Err(Stop::Failed(reason));
            }
            Err(stop) => {
                drop_if_empty(shared, partial).await;
                return Err(stop);
            }
        };
        if start != offset {
            if let Err(e) = blocking(|| partial.restart()).await {
                self.refuse_storage(&name, &e).await;
                return Err(Stop::Failed(e.to_string()));
            }
            hasher = Sha256::new();
            debug!(peer = %self.peer, "{name}: client restarts from 0 (prefix differs)");
        } else if start > 0 {
            info!(peer = %self.peer, "{name}: resuming at {start} of {size} bytes");
        }

        let began = Instant::now();
        let expected = size - start;
        let file = match partial.append_handle() {
            Ok(f) => f,
            Err(e) => {
                self.refuse_storage(&name, &e).await;
                return Err(Stop::Failed(e.to_string()));
            }
        };
        let received = body::receive(
            &mut self.stream,
            &mut self.buf,
            expected,
            file,
            hasher,
            &shared.cancel,
            Pace::of(config),
        )
        .await;
        partial.add_len(received.written);
        let kept = format!("{name}: {} of {size} bytes kept for resume", partial.len());
        let stop = match received.end {
            BodyEnd::Complete => None,
            BodyEnd::Disconnected => {
                Some(Stop::Failed(format!("peer disconnected mid-body; {kept}")))
            }
            BodyEnd::Cancelled => {
                self.refuse(
                    RefusalCode::ShuttingDown,
                    format!("server shutting down; {kept}"),
                )
                .await;
                Some(Stop::Cancelled)
            }
            BodyEnd::IdleTimeout => {
                self.refuse(
                    RefusalCode::IdleTimeout,
                    format!("no data for {:?}; {kept}", config.idle_timeout),
                )
                .await;
                Some(Stop::Idle)
            }
            BodyEnd::TooSlow { received } => {
                let reason = format!(
                    "only {received} bytes in {:?}, below the server's minimum of {} bytes/s; {kept}",
                    config.min_rate_window, config.min_rate
                );
                self.refuse(RefusalCode::BodyTooSlow, reason.clone()).await;
                Some(Stop::TooSlow(reason))
            }
            BodyEnd::Read(e) => Some(Stop::Failed(format!("read failed mid-body: {e}; {kept}"))),
            BodyEnd::Write(e) => {
                // What reached the disk is unknown after a failed write, and
                // keeping it would hold space on a disk that may be full.
                discard_quietly(shared, partial).await;
                let reason = if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) {
                    format!("{name}: the server's disk is full (no space left); upload discarded")
                } else {
                    format!("{name}: server storage error ({e}); upload discarded")
                };
                warn!(peer = %self.peer, "writing {name}: {e}");
                self.refuse(RefusalCode::StorageError, reason.clone()).await;
                return Err(Stop::Failed(reason));
            }
        };
        if let Some(stop) = stop {
            drop_if_empty(shared, partial).await;
            return Err(stop);
        }

        let claimed = match self.read_message().await {
            Ok(ClientMessage::Finish { sha256 }) => sha256,
            Ok(other) => {
                let reason = format!("expected finish, got {}", message_name(&other));
                self.refuse(RefusalCode::BadMessage, reason.clone()).await;
                return Err(Stop::Failed(reason));
            }
            Err(Stop::Closed) => {
                return Err(Stop::Failed(format!("peer left before the digest; {kept}")))
            }
            Err(e) => return Err(e),
        };
        let actual: [u8; 32] = received.hasher.finalize().into();
        if actual != claimed {
            let discard = blocking(|| shared.storage.discard(partial)).await;
            if let Err(e) = discard {
                warn!(peer = %self.peer, "{e}");
            }
            warn!(peer = %self.peer, "{name}: digest mismatch, data discarded");
            self.refuse(
                RefusalCode::DigestMismatch,
                format!(
                    "{name}: received data hashes to {}, the client sent {}; nothing was stored",
                    upload::hex(&actual),
                    upload::hex(&claimed)
                ),
            )
            .await;
            return Ok(());
        }
        let stored = match blocking(|| shared.storage.finish(partial, &name)).await {
            Ok(stored) => stored,
            Err(e) => {
                warn!(peer = %self.peer, "{e}");
                self.refuse(
                    RefusalCode::StorageError,
                    format!("{name}: server storage error: {e}"),
                )
                .await;
                return Ok(());
            }
        };
        log_stored(
            self.peer,
            &stored,
            expected,
            began.elapsed(),
            &actual,
            start,
        );
        self.send(ServerMessage::Stored {
            name: stored,
            sha256: actual,
        })
        .await
    }

    async fn legacy(&mut self) -> Result<(), Stop> {
        let shared = self.shared;
        let config = &shared.config;
        let (size, consumed) = loop {
            match upload::parse_legacy_size(&self.buf, false) {
                Ok(Some(v)) => break v,
                Ok(None) => {}
                Err(e) => return Err(Stop::Failed(format!("legacy header: {e}"))),
            }
            // No refusal message exists in the legacy form: past the
            // deadline the connection is simply closed.
            let deadline = self.frame_deadline;
            let more = tokio::select! {
                _ = shared.cancel.cancelled() => return Err(Stop::Cancelled),
                () = Self::frame_overdue(deadline) => return Err(Stop::HeaderSlow),
                r = tokio::time::timeout(LEGACY_PAUSE, self.stream.read_buf(&mut self.buf)) => r,
            };
            match more {
                // The sender paused: the digits so far are the whole size.
                Err(_) => match upload::parse_legacy_size(&self.buf, true) {
                    Ok(Some(v)) => break v,
                    Ok(None) => {}
                    Err(e) => return Err(Stop::Failed(format!("legacy header: {e}"))),
                },
                Ok(Ok(0)) => {
                    return Err(Stop::Failed("legacy client closed before the data".into()))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Stop::Failed(format!("read failed: {e}"))),
            }
        };
        bytes::Buf::advance(&mut self.buf, consumed);
        self.frame_deadline = None;
        if config.token.is_some() {
            // Nothing is opened or written: the reason takes the place of the
            // reply, and the drain keeps the close from resetting it away.
            let _ = tokio::time::timeout(
                REFUSAL_WRITE_TIMEOUT,
                self.stream.write_all(LEGACY_TOKEN_REFUSAL),
            )
            .await;
            // Our FIN lets the client see the end of the reason at once.
            let _ = self.stream.shutdown().await;
            self.drain_extra().await;
            return Err(Stop::Failed(format!(
                "legacy upload of {size} bytes refused: a token is required and the legacy form cannot carry one"
            )));
        }
        // The legacy form has no refusal message: closing before the reply is
        // the only signal the original client understands.
        if size > config.max_size {
            return Err(Stop::Failed(format!(
                "legacy upload of {size} bytes exceeds --max-size {}",
                config.max_size
            )));
        }
        if let Ok(free) = shared.storage.free_space() {
            if free < size {
                return Err(Stop::Failed(format!(
                    "legacy upload of {size} bytes: only {free} bytes free"
                )));
            }
        }
        let Ok(_slot) = shared.uploads.clone().try_acquire_owned() else {
            return Err(Stop::Failed(format!(
                "legacy upload refused: {} uploads already running",
                config.max_uploads
            )));
        };
        let mut partial = blocking(|| shared.storage.open_temp())
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        if let Err(stop) = self.write(LEGACY_REPLY).await {
            discard_quietly(shared, partial).await;
            return Err(stop);
        }
        let began = Instant::now();
        let file = match partial.append_handle() {
            Ok(f) => f,
            Err(e) => {
                discard_quietly(shared, partial).await;
                return Err(Stop::Failed(e.to_string()));
            }
        };
        let received = body::receive(
            &mut self.stream,
            &mut self.buf,
            size,
            file,
            Sha256::new(),
            &shared.cancel,
            Pace::of(config),
        )
        .await;
        partial.add_len(received.written);
        let stop = match received.end {
            BodyEnd::Complete => None,
            BodyEnd::Disconnected => Some(Stop::Failed(format!(
                "legacy client disconnected after {} of {size} bytes; discarded",
                received.written
            ))),
            BodyEnd::Cancelled => Some(Stop::Cancelled),
            BodyEnd::IdleTimeout => Some(Stop::Idle),
            BodyEnd::TooSlow { received } => Some(Stop::TooSlow(format!(
                "legacy client sent {received} bytes in {:?}, below {} bytes/s; discarded",
                config.min_rate_window, config.min_rate
            ))),
            BodyEnd::Read(e) => Some(Stop::Failed(format!("read failed: {e}"))),
            BodyEnd::Write(e) => Some(Stop::Failed(format!("write failed: {e}"))),
        };
        if let Some(stop) = stop {
            // No name to resume by: an incomplete legacy upload is dropped.
            discard_quietly(shared, partial).await;
            return Err(stop);
        }
        let digest: [u8; 32] = received.hasher.finalize().into();
        let stored = blocking(|| shared.storage.finish(partial, LEGACY_NAME))
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        log_stored(self.peer, &stored, size, began.elapsed(), &digest, 0);
        self.drain_extra().await;
        Ok(())
    }

    /// Discards bytes a legacy client sent past its declared size (bounded in
    /// bytes and time), so closing does not reset the connection under it.
    async fn drain_extra(&mut self) {
        let mut left = LEGACY_DRAIN_MAX;
        let mut scratch = [0u8; 8192];
        let deadline = tokio::time::sleep(LEGACY_DRAIN_TIME);
        tokio::pin!(deadline);
        while left > 0 {
            tokio::select! {
                _ = &mut deadline => break,
                r = self.stream.read(&mut scratch) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                },
            }
        }
    }
}

/// Removes a partial that holds no byte: there is nothing to resume, and
/// empty bookkeeping left by every aborted offer would pile up.
async fn drop_if_empty(shared: &Shared, partial: PartialUpload) {
    if partial.is_empty() {
        discard_quietly(shared, partial).await;
    }
}

async fn discard_quietly(shared: &Shared, partial: PartialUpload) {
    if let Err(e) = blocking(|| shared.storage.discard(partial)).await {
        warn!("{e}");
    }
}

/// Runs a storage call off the async threads. `block_in_place` keeps the
/// borrow of the shared state simple; it needs the multi-threaded runtime,
/// so on a current-thread runtime the call simply runs inline.
async fn blocking<T>(f: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn log_stored(
    peer: SocketAddr,
    name: &str,
    bytes: u64,
    took: Duration,
    digest: &[u8; 32],
    resumed_at: u64,
) {
    let secs = took.as_secs_f64().max(1e-6);
    let rate = bytes as f64 / secs / (1024.0 * 1024.0);
    let resumed = if resumed_at > 0 {
        format!(" (resumed at {resumed_at})")
    } else {
        String::new()
    };
    info!(
        "stored {name} from {peer}: {bytes} bytes{resumed} in {secs:.2} s ({rate:.1} MiB/s) sha256 {}",
        upload::hex(digest)
    );
}

/// A name for a refusal reason: quoted, escaped and cut, since it may be
/// hostile (control characters) or huge.
fn shown(name: &str) -> String {
    const MAX_SHOWN: usize = 80;
    let quoted = format!("{name:?}");
    if quoted.chars().count() <= MAX_SHOWN {
        return quoted;
    }
    let cut: String = quoted.chars().take(MAX_SHOWN).collect();
    format!("{cut}...")
}

/// Compares tokens without stopping at the first differing byte.
fn token_matches(expected: &str, got: &str) -> bool {
    transport::secret::tokens_match(expected, got)
}

fn message_name(msg: &ClientMessage) -> &'static str {
    match msg {
        ClientMessage::Hello { .. } => "hello",
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Start { .. } => "start",
        ClientMessage::Finish { .. } => "finish",
    }
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("abc", "ab"));
        assert!(!token_matches("abc", "abcd"));
        assert!(!token_matches("abc", ""));
    }
}
