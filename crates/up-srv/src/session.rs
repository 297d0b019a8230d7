//! One connection: detects its form, then runs the legacy exchange or the
//! binary protocol (uploads, and with `--allow-get` listings and downloads).
//!
//! ```text
//! binary: Hello -> Welcome | Refuse(close)
//!         loop { Offer -> [Present -> Skip | Proceed ->] Refuse | Accept ; Start ; body ;
//!                         Finish -> Stored | Refuse
//!              | List -> Entry* ListEnd | Refuse
//!              | Get -> Sending ; Start ; <bytes to the client> | Refuse
//!              | Check -> (at the next commit) Present | Missing | Refuse
//!              | Put ; <size bytes> ; Finish -> (at the next commit) Stored | Present | Refuse }
//! legacy: "<digits>" [pause or CR/LF] -> "1001" ; <size bytes> ; close
//!         (with --token: -> "refused: ..." line ; close, nothing stored)
//! ```
//!
//! A file is handled in four steps, one function each: check the offer
//! ([`Conn::check_offer`], [`Conn::already_stored`]), accept it
//! ([`Conn::open_partial`], [`Conn::accept`]), receive the body
//! ([`Conn::receive`]) and verify and store it ([`Conn::store`]). How a
//! body that ended early is reported is decided once, by [`ended`], for
//! both forms. Every storage call runs through [`Shared::blocking`].
//! Version 4's puts and checks ([`put`]) are answered a batch at a time,
//! after a group commit.
//!
//! The session owns the buffer the codec decodes from, so bytes read past a
//! `Start` frame (or past the legacy size) are handed to [`body::receive`] as
//! the body's first bytes. Timers live here, not in `proto`: the idle timeout
//! on every read, the header deadline that runs from a control frame's first
//! byte to its last (so a frame cannot be dripped forever), the body's
//! minimum rate (in [`body::receive`]) and the legacy pause that completes an
//! unterminated size. The session is generic over its stream, so plain TCP
//! and TLS share it. Errors end this connection only; they are logged with
//! the peer address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt as _;
use proto::digest::{Algorithm, Hasher};
use proto::size::Readable;
use proto::upload::{
    self, name, ClientMessage, Digest, Form, RefusalCode, ServerCodec, ServerMessage, HASH_VERSION,
    LEGACY_NAME, LEGACY_REPLY, MAGIC, MIN_VERSION, PUT_VERSION, VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tracing::{debug, info, warn};

use crate::body::{self, Body, BodyEnd, Pace};
use crate::shared::Shared;
use crate::storage::{validate_name, Fetch, Listed, PartialUpload, StorageError};
use crate::store::{Outcome, Store};
use crate::{sendfile, Config};

pub mod put;

/// A legacy client that stops sending digits for this long has sent its whole
/// size (the original client sends no terminator and waits for the reply).
pub const LEGACY_PAUSE: Duration = Duration::from_millis(100);

/// At most this many bytes past a legacy size are read and dropped before closing.
const LEGACY_DRAIN_MAX: usize = 1 << 20;

/// At most this long is spent dropping bytes past a legacy size.
const LEGACY_DRAIN_TIME: Duration = Duration::from_secs(1);

/// Sent instead of `1001` when a legacy client reaches a server started with
/// `--token`: the legacy form has no token field, so it cannot be authorised.
/// Starts with [`upload::LEGACY_REFUSAL_PREFIX`].
pub const LEGACY_TOKEN_REFUSAL: &[u8] =
    b"refused: this server requires a token, which the legacy form cannot carry; drop --legacy and pass --token\n";

/// Initial capacity of the control-message buffer.
const CONTROL_BUF: usize = 16 * 1024;

/// Longest time spent trying to deliver a refusal to a peer that may not read.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Listing entries are written in batches of about this many bytes.
const LIST_BATCH: usize = 64 * 1024;

/// What a session can run over: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

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

struct Conn<S> {
    stream: S,
    peer: SocketAddr,
    buf: BytesMut,
    shared: Arc<Shared>,
    /// When the control frame being received must be complete; set at its
    /// first byte, cleared once it decodes.
    frame_deadline: Option<tokio::time::Instant>,
    /// Protocol version agreed in the hello; version 1 never sees `Present`.
    version: u16,
    /// Digest that verifies later offers (version 3 `Hash`; SHA-256 before).
    algorithm: Algorithm,
    /// Puts received and not yet answered (version 4).
    batch: put::Batch,
    /// The body of the put being received, reused from one put to the next.
    put_buf: Vec<u8>,
}

/// Serves one connection to its end; never returns an error to the accept loop.
pub async fn run<S: Stream>(stream: S, peer: SocketAddr, shared: Arc<Shared>) {
    let mut conn = Conn {
        stream,
        peer,
        buf: BytesMut::with_capacity(CONTROL_BUF),
        shared,
        frame_deadline: None,
        version: MIN_VERSION,
        algorithm: Algorithm::Sha256,
        batch: put::Batch::default(),
        put_buf: Vec::new(),
    };
    let result = match conn.detect().await {
        Ok(Form::Legacy) => conn.legacy().await,
        Ok(Form::Binary) => conn.binary().await,
        Ok(_) => Err(Stop::Failed(
            "unknown protocol (expected ASCII digits or the binary magic)".into(),
        )),
        Err(stop) => Err(stop),
    };
    let config = &conn.shared.config;
    match result {
        Ok(()) | Err(Stop::Closed) => debug!(%peer, "connection closed"),
        Err(Stop::Cancelled) => debug!(%peer, "connection stopped by shutdown"),
        Err(Stop::Idle) => {
            info!(%peer, "connection idle for {:?}, closed", config.idle_timeout)
        }
        Err(Stop::HeaderSlow) => info!(
            %peer,
            "control message not complete within {:?} of its first byte, closed",
            config.header_timeout
        ),
        Err(Stop::TooSlow(why)) => info!(%peer, "upload too slow, closed: {why}"),
        Err(Stop::Failed(why)) => warn!(%peer, "connection ended: {why}"),
    }
}

/// How a body that ended early is reported: the refusal (binary form only),
/// the reason, and whether the received data must be discarded.
struct Ended {
    refusal: Option<RefusalCode>,
    reason: String,
    discard: bool,
}

/// The one mapping from a body's end to its report; `None` when complete.
fn ended(end: &BodyEnd, config: &Config) -> Option<Ended> {
    let (refusal, reason, discard) = match end {
        BodyEnd::Complete => return None,
        BodyEnd::Disconnected => (None, "peer disconnected mid-body".to_string(), false),
        BodyEnd::Cancelled => (
            Some(RefusalCode::ShuttingDown),
            "server shutting down".to_string(),
            false,
        ),
        BodyEnd::IdleTimeout => (
            Some(RefusalCode::IdleTimeout),
            format!("no data for {:?}", config.idle_timeout),
            false,
        ),
        BodyEnd::TooSlow { received } => (
            Some(RefusalCode::BodyTooSlow),
            format!(
                "only {} in {:?}, below the server's minimum of {}/s",
                Readable(*received),
                config.min_rate_window,
                Readable(config.min_rate)
            ),
            false,
        ),
        BodyEnd::Read(e) => (None, format!("read failed mid-body: {e}"), false),
        // What reached the disk is unknown after a failed write, and keeping
        // it would hold space on a disk that may be full.
        BodyEnd::Write(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => (
            Some(RefusalCode::StorageError),
            "the server's disk is full (no space left)".to_string(),
            true,
        ),
        BodyEnd::Write(e) => (
            Some(RefusalCode::StorageError),
            format!("server storage error ({e})"),
            true,
        ),
    };
    Some(Ended {
        refusal,
        reason,
        discard,
    })
}

impl Ended {
    /// How the session stops, with the full reason for the log.
    fn stop(&self, reason: String) -> Stop {
        match self.refusal {
            Some(RefusalCode::ShuttingDown) => Stop::Cancelled,
            Some(RefusalCode::IdleTimeout) => Stop::Idle,
            Some(RefusalCode::BodyTooSlow) => Stop::TooSlow(reason),
            _ => Stop::Failed(reason),
        }
    }
}

impl<S: Stream> Conn<S> {
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

    /// Refuses one request; the connection goes on unless the code is one
    /// that closes it ([`RefusalCode::closes_connection`], the one table).
    async fn refuse_request(&mut self, code: RefusalCode, reason: String) -> Result<(), Stop> {
        self.refuse(code, reason.clone()).await;
        if code.closes_connection() {
            Err(Stop::Failed(reason))
        } else {
            Ok(())
        }
    }

    /// Logs a failure of the server's own storage and refuses with code 30
    /// (which closes); the client learns only that the server failed.
    async fn refuse_storage(&mut self, name: &str, e: &StorageError) -> Stop {
        warn!(peer = %self.peer, "{name}: {e}");
        self.refuse(
            RefusalCode::StorageError,
            format!("{name}: server storage error"),
        )
        .await;
        Stop::Failed(format!("{name}: {e}"))
    }

    /// Refuses an out-of-order message and closes.
    async fn unexpected(&mut self, expected: &str, got: &ClientMessage) -> Stop {
        let reason = format!("expected {expected}, got {}", got.name());
        self.refuse(RefusalCode::BadMessage, reason.clone()).await;
        Stop::Failed(reason)
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

    /// Like [`Conn::read_message`], but a close here is a failure: `what`
    /// says where the peer left.
    async fn read_within_request(&mut self, what: &str) -> Result<ClientMessage, Stop> {
        match self.read_message().await {
            Err(Stop::Closed) => Err(Stop::Failed(format!("peer left {what}"))),
            other => other,
        }
    }

    async fn binary(&mut self) -> Result<(), Stop> {
        bytes::Buf::advance(&mut self.buf, MAGIC.len());
        self.hello().await?;
        let served = self.requests().await;
        // Puts that arrived whole are verified: store them (and answer, if
        // the client still listens) however the connection ends.
        let committed = self.commit().await;
        served.and(committed)
    }

    /// Serves requests until the client closes. Puts are answered at the
    /// next commit: when no more input is waiting, or before any other request.
    async fn requests(&mut self) -> Result<(), Stop> {
        loop {
            if !self.batch.is_empty() && !self.input_waiting().await {
                self.commit().await?;
            }
            let msg = self.read_message().await?;
            if !matches!(msg, ClientMessage::Put { .. } | ClientMessage::Check { .. }) {
                self.commit().await?;
            }
            match msg {
                ClientMessage::Put { name, size } if self.version >= PUT_VERSION => {
                    self.put(name::nfc(&name), size).await?
                }
                ClientMessage::Check { name, size } if self.version >= PUT_VERSION => {
                    self.check(name::nfc(&name), size).await?
                }
                ClientMessage::Offer { name, size } => self.file(name::nfc(&name), size).await?,
                ClientMessage::List { prefix } if self.version >= 2 => self.list(prefix).await?,
                ClientMessage::Get { name } if self.version >= 2 => {
                    self.get(name::nfc(&name)).await?
                }
                ClientMessage::Hash { algorithm } if self.version >= HASH_VERSION => {
                    match Algorithm::from_name(&algorithm) {
                        // The object store checks and records SHA-256 (x-amz-checksum-sha256).
                        Some(a) if a != Algorithm::Sha256 && self.shared.config.store.is_some() => {
                            let reason = format!(
                                "this server keeps files in an object store, which verifies SHA-256 only; upload without --hash {algorithm}"
                            );
                            self.refuse(RefusalCode::BadMessage, reason.clone()).await;
                            return Err(Stop::Failed(reason));
                        }
                        Some(a) => self.algorithm = a,
                        None => {
                            let reason = format!(
                                "unknown digest algorithm {algorithm:?} (this server accepts sha256 and blake3)"
                            );
                            self.refuse(RefusalCode::BadMessage, reason.clone()).await;
                            return Err(Stop::Failed(reason));
                        }
                    }
                }
                other => return Err(self.unexpected("an offer", &other).await),
            }
        }
    }

    async fn hello(&mut self) -> Result<(), Stop> {
        let (version, token) = match self.read_message().await? {
            ClientMessage::Hello { version, token } => (version, token),
            other => return Err(self.unexpected("hello", &other).await),
        };
        if !(MIN_VERSION..=VERSION).contains(&version) {
            let reason = format!(
                "protocol version {version} is not supported (this server speaks {MIN_VERSION} to {VERSION}; use a matching up-cli)"
            );
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
        // Puts are stored by group commit into the upload dir; with an
        // object store the client offers every file (version 3).
        let version = if self.shared.config.store.is_some() {
            version.min(PUT_VERSION - 1)
        } else {
            version
        };
        self.version = version;
        let token_checked = self.shared.config.token.is_some();
        self.send(ServerMessage::Welcome {
            version,
            token_checked,
        })
        .await
    }

    /// One offered file: check, accept, receive, verify and store. Refusals
    /// that leave the stream in sync return `Ok` so the next request can follow.
    async fn file(&mut self, name: String, size: u64) -> Result<(), Stop> {
        if let Some((code, reason)) = self.check_offer(&name, size) {
            return self.refuse_request(code, reason).await;
        }
        if self.version >= 2 && self.already_stored(&name, size).await? {
            return Ok(());
        }
        let shared = self.shared.clone();
        let Ok(_slot) = shared.uploads.clone().try_acquire_owned() else {
            let reason = format!(
                "the server already runs {} uploads; retry later",
                shared.config.max_uploads
            );
            return self
                .refuse_request(RefusalCode::TooManyUploads, reason)
                .await;
        };
        let Some(_active) = shared.claim_wait(&name, size).await else {
            let reason = format!(
                "{name} ({}) is being uploaded by another connection",
                Readable(size)
            );
            return self.refuse_request(RefusalCode::Busy, reason).await;
        };
        let Some((partial, hasher)) = self.open_partial(&name, size).await? else {
            return Ok(());
        };
        let (partial, hasher, start) = self.accept(&name, partial, hasher).await?;
        let (partial, body) = self.receive(&name, size, partial, hasher, start).await?;
        self.store(&name, partial, body, start).await
    }

    /// The checks that need no storage: the name policy and `--max-size`.
    fn check_offer(&self, name: &str, size: u64) -> Option<(RefusalCode, String)> {
        if let Err(e) = validate_name(name) {
            return Some((RefusalCode::BadName, format!("{}: {e}", shown(name))));
        }
        let max = self.shared.config.max_size;
        if size > max {
            let reason = format!(
                "{name}: {} exceeds the server limit of {}",
                Readable(size),
                Readable(max)
            );
            return Some((RefusalCode::TooLarge, reason));
        }
        None
    }

    /// Version 2: when `name` is stored with this size, tells the client its
    /// digest and lets it skip. `Ok(true)` when the client skipped.
    async fn already_stored(&mut self, name: &str, size: u64) -> Result<bool, Stop> {
        let n = name.to_string();
        let algorithm = self.algorithm;
        let found = match self.shared.config.store.clone() {
            // The store records SHA-256 only (a connection on BLAKE3 is refused
            // with --store), so there is nothing to compare other digests with.
            Some(_) if algorithm != Algorithm::Sha256 => Ok(None),
            Some(store) => match store.stored(name).await {
                Ok(record) => Ok(record.filter(|r| r.size == size).map(|r| r.sha256)),
                Err(e) => Err(e.to_string()),
            },
            None => self
                .shared
                .blocking(move |s| s.storage.stored_digest_with(&n, size, algorithm))
                .await
                .map_err(|e| e.to_string()),
        };
        let digest = match found {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(false),
            Err(e) => {
                warn!(peer = %self.peer, "{name}: {e} (cannot check for a stored copy)");
                return Ok(false);
            }
        };
        self.send(ServerMessage::Present { sha256: digest }).await?;
        match self.read_within_request("after the present").await? {
            ClientMessage::Skip => {
                info!(peer = %self.peer, "{name}: already stored with the same digest, skipped");
                Ok(true)
            }
            ClientMessage::Proceed => Ok(false),
            other => Err(self.unexpected("skip or proceed", &other).await),
        }
    }

    /// Checks the free space, then opens (or finds) the partial and hashes
    /// its prefix. `Ok(None)` after a refusal that keeps the connection.
    async fn open_partial(
        &mut self,
        name: &str,
        size: u64,
    ) -> Result<Option<(PartialUpload, Hasher)>, Stop> {
        let n = name.to_string();
        let algorithm = self.algorithm;
        let opened = self
            .shared
            .blocking(move |s| {
                // Check the space before creating anything: a refused offer
                // must not leave even the bookkeeping of a partial behind.
                let missing = size - s.storage.held(&n, size);
                match s.storage.free_space() {
                    Ok(free) if free < missing => return Ok(Err((missing, free))),
                    Ok(_) => {}
                    Err(e) => warn!("{e} (skipping the free-space check)"),
                }
                let mut partial = s.storage.open_partial(&n, size)?;
                let hasher = partial.hash_prefix(algorithm)?;
                Ok(Ok((partial, hasher)))
            })
            .await;
        match opened {
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err((missing, free))) => {
                let reason = format!(
                    "{name}: needs {}, the server has {} free",
                    Readable(missing),
                    Readable(free)
                );
                self.refuse_request(RefusalCode::NoSpace, reason).await?;
                Ok(None)
            }
            Err(e) => Err(self.refuse_storage(name, &e).await),
        }
    }

    /// Sends the accept and reads the start; restarts the partial when the
    /// client's prefix differs. Returns the offset the body starts at.
    async fn accept(
        &mut self,
        name: &str,
        partial: PartialUpload,
        hasher: Hasher,
    ) -> Result<(PartialUpload, Hasher, u64), Stop> {
        let offset = partial.len();
        let start = match self.confirm_start(name, offset, &hasher).await {
            Ok(start) => start,
            Err(stop) => {
                self.drop_if_empty(partial).await;
                return Err(stop);
            }
        };
        if start == offset {
            if start > 0 {
                info!(peer = %self.peer, "{name}: resuming at {start} bytes");
            }
            return Ok((partial, hasher, start));
        }
        debug!(peer = %self.peer, "{name}: client restarts from 0 (prefix differs)");
        let restarted = self
            .shared
            .blocking(move |_| {
                let mut partial = partial;
                partial.restart()?;
                Ok(partial)
            })
            .await;
        match restarted {
            Ok(partial) => Ok((partial, Hasher::new(self.algorithm), 0)),
            Err(e) => Err(self.refuse_storage(name, &e).await),
        }
    }

    async fn confirm_start(
        &mut self,
        name: &str,
        offset: u64,
        hasher: &Hasher,
    ) -> Result<u64, Stop> {
        let prefix_sha256: Digest = hasher.clone().finalize().into();
        self.send(ServerMessage::Accept {
            offset,
            prefix_sha256,
        })
        .await?;
        match self.read_within_request("after the accept").await? {
            ClientMessage::Start { offset: s } if s == offset || s == 0 => Ok(s),
            ClientMessage::Start { offset: s } => {
                let reason =
                    format!("{name}: start offset {s} is neither 0 nor the accepted {offset}");
                self.refuse(RefusalCode::BadOffset, reason.clone()).await;
                Err(Stop::Failed(reason))
            }
            other => Err(self.unexpected("start", &other).await),
        }
    }

    /// Receives the body into the partial. An early end is reported through
    /// [`ended`]; the partial is kept for a resume unless it must be discarded.
    async fn receive(
        &mut self,
        name: &str,
        size: u64,
        partial: PartialUpload,
        hasher: Hasher,
        start: u64,
    ) -> Result<(PartialUpload, Body), Stop> {
        let handle = self
            .shared
            .blocking(move |_| {
                let mut partial = partial;
                let file = partial.append_handle()?;
                Ok((partial, file))
            })
            .await;
        let (mut partial, file) = match handle {
            Ok(v) => v,
            Err(e) => return Err(self.refuse_storage(name, &e).await),
        };
        let received = body::receive(
            &mut self.stream,
            &mut self.buf,
            size - start,
            file,
            hasher,
            &self.shared.cancel,
            Pace::of(&self.shared.config),
        )
        .await;
        partial.add_len(received.written);
        let Some(end) = ended(&received.end, &self.shared.config) else {
            return Ok((partial, received));
        };
        let tail = if end.discard {
            "upload discarded".to_string()
        } else {
            format!(
                "{} of {} kept for resume",
                Readable(partial.len()),
                Readable(size)
            )
        };
        let reason = format!("{name}: {}; {tail}", end.reason);
        if let Some(code) = end.refusal {
            self.refuse(code, reason.clone()).await;
        }
        if end.discard {
            self.discard_quietly(partial).await;
        } else {
            self.drop_if_empty(partial).await;
        }
        Err(end.stop(reason))
    }

    /// Reads the client's digest, compares it with what arrived and, when
    /// they agree, stores the file under its final name.
    async fn store(
        &mut self,
        name: &str,
        partial: PartialUpload,
        body: Body,
        start: u64,
    ) -> Result<(), Stop> {
        let began = Instant::now();
        let claimed = match self.read_within_request("before the digest").await {
            Ok(ClientMessage::Finish { sha256 }) => sha256,
            Ok(other) => return Err(self.unexpected("finish", &other).await),
            Err(stop) => return Err(stop),
        };
        let actual: Digest = body.hasher.finalize().into();
        if actual != claimed {
            warn!(peer = %self.peer, "{name}: digest mismatch, data discarded");
            self.discard_quietly(partial).await;
            let reason = format!(
                "{name}: received data hashes to {}, the client sent {}; nothing was stored",
                upload::hex(&actual),
                upload::hex(&claimed)
            );
            return self
                .refuse_request(RefusalCode::DigestMismatch, reason)
                .await;
        }
        let size = partial.len();
        let Some(stored) = self.keep(name, partial, actual).await? else {
            return Ok(());
        };
        log_stored(
            self.peer,
            &stored,
            size - start,
            began.elapsed(),
            (self.algorithm, &actual),
            start,
        );
        self.send(ServerMessage::Stored {
            name: stored,
            sha256: actual,
        })
        .await
    }

    /// Stores a verified partial under `name` (or `name (n).ext`): renamed into
    /// the upload dir, or put into the object store with `--store`. `Ok(None)`
    /// after a refusal that keeps the connection.
    async fn keep(
        &mut self,
        name: &str,
        partial: PartialUpload,
        digest: Digest,
    ) -> Result<Option<String>, Stop> {
        if let Some(store) = self.shared.config.store.clone() {
            return self.put_into_store(&store, name, partial, digest).await;
        }
        let n = name.to_string();
        let algorithm = self.algorithm;
        match self
            .shared
            .blocking(move |s| s.storage.finish_with(partial, &n, &digest, algorithm))
            .await
        {
            Ok(stored) => Ok(Some(stored)),
            Err(e) => Err(self.refuse_storage(name, &e).await),
        }
    }

    /// `--store`: puts the partial into the object store and removes it once
    /// the store holds the verified bytes. While the store is unavailable the
    /// partial stays, complete, so the client's rerun finishes the put.
    async fn put_into_store(
        &mut self,
        store: &Store,
        name: &str,
        mut partial: PartialUpload,
        digest: Digest,
    ) -> Result<Option<String>, Stop> {
        let size = partial.len();
        let file = match partial.append_handle() {
            Ok(file) => file,
            Err(e) => return Err(self.refuse_storage(name, &e).await),
        };
        let overwrite = self.shared.config.overwrite;
        match store.put_file(file, name, digest, size, overwrite).await {
            Ok(put) => {
                if put.outcome == Outcome::AlreadyStored {
                    info!(peer = %self.peer, "{name}: the same bytes are already in the store as {}", put.name);
                }
                self.discard_quietly(partial).await;
                Ok(Some(put.name))
            }
            Err(e) if e.is_unavailable() => {
                warn!(peer = %self.peer, "{name}: {e} (partial kept)");
                let reason = format!(
                    "{name}: the server's object store is unavailable; the data is kept on the server, run the same upload again to finish it"
                );
                self.refuse_request(RefusalCode::StoreUnavailable, reason)
                    .await?;
                Ok(None)
            }
            Err(e) => {
                warn!(peer = %self.peer, "{name}: {e}");
                self.refuse(
                    RefusalCode::StorageError,
                    format!("{name}: server storage error"),
                )
                .await;
                Err(Stop::Failed(format!("{name}: {e}")))
            }
        }
    }

    /// Refuses `ls`/`get` on a server started without `--allow-get`.
    async fn refuse_unless_allowed(&mut self) -> Result<bool, Stop> {
        if self.shared.config.allow_get {
            return Ok(true);
        }
        let reason = "this server does not serve ls or get (start up-srv with --allow-get)";
        self.refuse_request(RefusalCode::NotAllowed, reason.to_string())
            .await?;
        Ok(false)
    }

    /// Answers `List`: one entry per stored file under `prefix`, then the count.
    async fn list(&mut self, prefix: String) -> Result<(), Stop> {
        if !self.refuse_unless_allowed().await? {
            return Ok(());
        }
        let listed = match self.shared.config.store.clone() {
            Some(store) => match store.list(&prefix).await {
                Ok(l) => l.into_iter().map(Listed::from).collect(),
                Err(e) => {
                    warn!(peer = %self.peer, "listing: {e}");
                    self.refuse(RefusalCode::StorageError, "listing: server storage error")
                        .await;
                    return Err(Stop::Failed(format!("listing: {e}")));
                }
            },
            None => match self.shared.blocking(move |s| s.storage.list(&prefix)).await {
                Ok(l) => l,
                Err(e) => return Err(self.refuse_storage("listing", &e).await),
            },
        };
        let mut out = BytesMut::with_capacity(LIST_BATCH);
        let count = listed.len() as u64;
        for entry in listed {
            let msg = ServerMessage::Entry {
                name: entry.name,
                size: entry.size,
                mtime: entry.mtime,
                sha256: entry.sha256,
            };
            if let Err(e) = msg.encode_into(&mut out) {
                warn!(peer = %self.peer, "cannot list an entry: {e}");
            }
            if out.len() >= LIST_BATCH {
                self.write(&out).await?;
                out.clear();
            }
        }
        ServerMessage::ListEnd { count }
            .encode_into(&mut out)
            .map_err(|e| Stop::Failed(format!("cannot encode reply: {e}")))?;
        self.write(&out).await
    }

    /// Answers `Get`: the size and recorded digest, then after the client's
    /// start offset the rest of the file.
    async fn get(&mut self, name: String) -> Result<(), Stop> {
        if !self.refuse_unless_allowed().await? {
            return Ok(());
        }
        if let Err(e) = validate_name(&name) {
            let reason = format!("{}: {e}", shown(&name));
            return self.refuse_request(RefusalCode::BadName, reason).await;
        }
        if let Some(store) = self.shared.config.store.clone() {
            return self.get_from_store(&store, name).await;
        }
        let n = name.clone();
        let (file, size, sha256) = match self.shared.blocking(move |s| s.storage.fetch(&n)).await {
            Ok(Fetch::Found { file, size, sha256 }) => (file, size, sha256),
            Ok(Fetch::NotFound) => {
                let reason = format!("{name}: no such file on the server");
                return self.refuse_request(RefusalCode::NotFound, reason).await;
            }
            Ok(Fetch::Changed) => {
                warn!(peer = %self.peer, "{name}: changed since it was stored; get refused");
                let reason = format!(
                    "{name}: the stored file changed since it was stored (its size or time no longer match the recorded digest), so the server cannot vouch for it"
                );
                return self.refuse_request(RefusalCode::Changed, reason).await;
            }
            Err(e) => return Err(self.refuse_storage(&name, &e).await),
        };
        self.send(ServerMessage::Sending { size, sha256 }).await?;
        let offset = match self.read_within_request("after sending").await? {
            ClientMessage::Start { offset } if offset <= size => offset,
            ClientMessage::Start { offset } => {
                let reason = format!("{name}: start offset {offset} is past the size {size}");
                self.refuse(RefusalCode::BadOffset, reason.clone()).await;
                return Err(Stop::Failed(reason));
            }
            other => return Err(self.unexpected("start", &other).await),
        };
        let idle = self.shared.config.idle_timeout;
        let cancel = self.shared.cancel.clone();
        match sendfile::send(&mut self.stream, file, offset, size - offset, &cancel, idle).await {
            Ok(()) => {
                info!(peer = %self.peer, "sent {name}: {} from {offset}", Readable(size - offset));
                Ok(())
            }
            Err(sendfile::SendFileError::Cancelled) => Err(Stop::Cancelled),
            Err(e) => Err(Stop::Failed(format!("{name}: {e}"))),
        }
    }

    /// `get` with `--store`: the recorded size and digest, then the object
    /// from the client's offset. The store hashes the whole object as it
    /// streams; when it no longer matches its record the connection is closed
    /// (the client's own check refuses the file too).
    async fn get_from_store(&mut self, store: &Store, name: String) -> Result<(), Stop> {
        let record = match store.stored(&name).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                let reason = format!("{name}: no such file on the server");
                return self.refuse_request(RefusalCode::NotFound, reason).await;
            }
            Err(e) => {
                warn!(peer = %self.peer, "{name}: {e}");
                let reason =
                    format!("{name}: the server's object store is unavailable; retry later");
                return self
                    .refuse_request(RefusalCode::StoreUnavailable, reason)
                    .await;
            }
        };
        let size = record.size;
        self.send(ServerMessage::Sending {
            size,
            sha256: record.sha256,
        })
        .await?;
        let offset = match self.read_within_request("after sending").await? {
            ClientMessage::Start { offset } if offset <= size => offset,
            ClientMessage::Start { offset } => {
                let reason = format!("{name}: start offset {offset} is past the size {size}");
                self.refuse(RefusalCode::BadOffset, reason.clone()).await;
                return Err(Stop::Failed(reason));
            }
            other => return Err(self.unexpected("start", &other).await),
        };
        let mut download = match store.download(&name, offset).await {
            Ok(d) if d.record == record => d,
            Ok(_) => return Err(Stop::Failed(format!("{name}: replaced while being sent"))),
            Err(e) => return Err(Stop::Failed(format!("{name}: {e}"))),
        };
        let idle = self.shared.config.idle_timeout;
        loop {
            let chunk = tokio::select! {
                _ = self.shared.cancel.cancelled() => return Err(Stop::Cancelled),
                c = tokio::time::timeout(idle, download.bytes.next()) => c,
            };
            match chunk {
                Ok(Some(Ok(bytes))) => self.write(&bytes).await?,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    warn!(peer = %self.peer, "{name}: {e}; get cut short");
                    return Err(Stop::Failed(format!("{name}: {e}")));
                }
                Err(_) => return Err(Stop::Failed(format!("{name}: the store stalled"))),
            }
        }
        info!(peer = %self.peer, "sent {name} from the store: {} from {offset}", Readable(size - offset));
        Ok(())
    }

    async fn legacy(&mut self) -> Result<(), Stop> {
        let size = self.legacy_size().await?;
        if self.shared.config.token.is_some() {
            return Err(self.legacy_refuse_token(size).await);
        }
        let _slot = self.legacy_admit(size).await?;
        let partial = self
            .shared
            .blocking(|s| {
                let mut partial = s.storage.open_temp()?;
                let file = partial.append_handle()?;
                Ok((partial, file))
            })
            .await;
        let (mut partial, file) = partial.map_err(|e| Stop::Failed(e.to_string()))?;
        if let Err(stop) = self.write(LEGACY_REPLY).await {
            self.discard_quietly(partial).await;
            return Err(stop);
        }
        let began = Instant::now();
        let received = body::receive(
            &mut self.stream,
            &mut self.buf,
            size,
            file,
            Hasher::new(Algorithm::Sha256),
            &self.shared.cancel,
            Pace::of(&self.shared.config),
        )
        .await;
        partial.add_len(received.written);
        if let Some(end) = ended(&received.end, &self.shared.config) {
            // No name to resume by: an incomplete legacy upload is dropped.
            let reason = format!(
                "legacy upload: {} after {} of {}; discarded",
                end.reason,
                Readable(received.written),
                Readable(size)
            );
            self.discard_quietly(partial).await;
            return Err(end.stop(reason));
        }
        let digest: Digest = received.hasher.finalize().into();
        let stored = match self.shared.config.store.clone() {
            Some(store) => {
                let put = partial
                    .append_handle()
                    .map_err(|e| Stop::Failed(e.to_string()))?;
                let put = store
                    .put_file(put, LEGACY_NAME, digest, size, self.shared.config.overwrite)
                    .await
                    .map_err(|e| Stop::Failed(e.to_string()))?;
                self.discard_quietly(partial).await;
                put.name
            }
            None => self
                .shared
                .blocking(move |s| s.storage.finish(partial, LEGACY_NAME, &digest))
                .await
                .map_err(|e| Stop::Failed(e.to_string()))?,
        };
        log_stored(
            self.peer,
            &stored,
            size,
            began.elapsed(),
            (Algorithm::Sha256, &digest),
            0,
        );
        self.drain_extra().await;
        Ok(())
    }

    /// Reads the legacy size: digits ended by CR/LF, or by a pause.
    async fn legacy_size(&mut self) -> Result<u64, Stop> {
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
                _ = self.shared.cancel.cancelled() => return Err(Stop::Cancelled),
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
        Ok(size)
    }

    /// Under `--token`: the reason takes the place of the reply, nothing is
    /// opened or written, and the drain keeps the close from resetting it away.
    async fn legacy_refuse_token(&mut self, size: u64) -> Stop {
        let _ = tokio::time::timeout(
            REFUSAL_WRITE_TIMEOUT,
            self.stream.write_all(LEGACY_TOKEN_REFUSAL),
        )
        .await;
        // Our FIN lets the client see the end of the reason at once.
        let _ = self.stream.shutdown().await;
        self.drain_extra().await;
        Stop::Failed(format!(
            "legacy upload of {} refused: a token is required and the legacy form cannot carry one",
            Readable(size)
        ))
    }

    /// The legacy form has no refusal message: closing before the reply is
    /// the only signal the original client understands.
    async fn legacy_admit(&mut self, size: u64) -> Result<tokio::sync::OwnedSemaphorePermit, Stop> {
        let config = &self.shared.config;
        if size > config.max_size {
            return Err(Stop::Failed(format!(
                "legacy upload of {} exceeds --max-size {}",
                Readable(size),
                Readable(config.max_size)
            )));
        }
        if let Ok(free) = self.shared.blocking(|s| s.storage.free_space()).await {
            if free < size {
                return Err(Stop::Failed(format!(
                    "legacy upload of {}: only {} free",
                    Readable(size),
                    Readable(free)
                )));
            }
        }
        let config = &self.shared.config;
        self.shared
            .uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Stop::Failed(format!(
                    "legacy upload refused: {} uploads already running",
                    config.max_uploads
                ))
            })
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

    /// Removes a partial that holds no byte: there is nothing to resume, and
    /// empty bookkeeping left by every aborted offer would pile up.
    async fn drop_if_empty(&self, partial: PartialUpload) {
        if partial.is_empty() {
            self.discard_quietly(partial).await;
        }
    }

    async fn discard_quietly(&self, partial: PartialUpload) {
        if let Err(e) = self
            .shared
            .blocking(move |s| s.storage.discard(partial))
            .await
        {
            warn!(peer = %self.peer, "{e}");
        }
    }
}

fn log_stored(
    peer: SocketAddr,
    name: &str,
    bytes: u64,
    took: Duration,
    (algorithm, digest): (Algorithm, &Digest),
    resumed_at: u64,
) {
    let secs = took.as_secs_f64().max(1e-6);
    let rate = Readable((bytes as f64 / secs) as u64);
    let resumed = if resumed_at > 0 {
        format!(" (resumed at {resumed_at})")
    } else {
        String::new()
    };
    info!(
        "stored {name} from {peer}: {bytes} bytes{resumed} in {secs:.2} s ({rate}/s) {algorithm} {}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("abc", "ab"));
        assert!(!token_matches("abc", "abcd"));
        assert!(!token_matches("abc", ""));
    }

    #[test]
    fn legacy_refusal_uses_the_wire_prefix() {
        assert!(LEGACY_TOKEN_REFUSAL.starts_with(upload::LEGACY_REFUSAL_PREFIX));
        assert!(LEGACY_TOKEN_REFUSAL.ends_with(b"\n"));
    }

    #[test]
    fn body_ends_map_to_one_report() {
        let config = Config::new("unused");
        assert!(ended(&BodyEnd::Complete, &config).is_none());
        let slow = ended(&BodyEnd::TooSlow { received: 2048 }, &config).expect("ended");
        assert_eq!(slow.refusal, Some(RefusalCode::BodyTooSlow));
        assert!(slow.reason.contains("2.0 KiB"), "{}", slow.reason);
        let full = ended(
            &BodyEnd::Write(std::io::Error::from_raw_os_error(
                nix::errno::Errno::ENOSPC as i32,
            )),
            &config,
        )
        .expect("ended");
        assert!(full.discard && full.reason.contains("disk is full"));
        let gone = ended(&BodyEnd::Disconnected, &config).expect("ended");
        assert!(gone.refusal.is_none() && !gone.discard);
    }
}
