//! Upload wire protocol: connection-form detection, the legacy size header
//! and the versioned binary control messages.
//!
//! This module is sans-IO: it turns bytes into [`ClientMessage`] /
//! [`ServerMessage`] values and back, and never touches sockets, files or
//! clocks. `up-srv` and `up-cli` own the I/O, the file body and the timers
//! (the legacy header is completed by a sender pause, which the server
//! session measures and passes in as `paused`). The normative description is
//! the "Upload" section of `docs/PROTOCOL.md`.
//!
//! # Format
//!
//! ```text
//! legacy:   <ASCII digits>[\r][\n]          server: "1001"   then <size> raw bytes
//! binary:   89 55 50 4C ("\x89UPL")          then frames and raw bodies
//! frame:    len:u32 BE | type:u8 | payload   (len counts type + payload, <= MAX_MESSAGE_LEN)
//! per file: Offer -> [Present -> Skip | Proceed ->] Accept|Refuse ; Start ;
//!           <size - offset raw bytes> ; Finish -> Stored|Refuse
//! list:     List -> Entry* ListEnd | Refuse                      (version 2)
//! get:      Get -> Sending|Refuse ; Start ; <size - offset raw bytes>   (version 2)
//! hash:     Hash{algorithm}   (no answer; digests of later offers)     (version 3)
//! check:    Check{name, size} -> Present|Missing|Refuse                (version 4)
//! put:      Put{name, size} ; <size raw bytes> ; Finish               (version 4)
//!           -> Stored|Present|Refuse, in order; the client need not wait
//! ```
//!
//! `Present` is sent only to version-2 clients; a version-1 client (an older
//! up-cli) is served exactly as before.
//!
//! A frame's declared length is checked against [`MAX_MESSAGE_LEN`] before
//! any buffer is reserved, and a frame is only parsed once it is completely
//! buffered, so split and glued frames decode the same. Bytes left in the
//! buffer after [`ClientMessage::Start`] belong to the body: the caller
//! drains them from the same buffer before reading the socket again.

pub mod name;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// First bytes of a binary-protocol connection. The first byte has its high
/// bit set, so it can be neither an ASCII digit (legacy form) nor text.
pub const MAGIC: [u8; 4] = [0x89, b'U', b'P', b'L'];

/// Protocol version spoken by this crate: 2 adds `Present`/`Skip`/`Proceed`
/// (already-stored files), `List` and `Get`; 3 adds `Hash`: a version-3
/// server accepts every [`crate::digest::Algorithm`] (SHA-256 and BLAKE3);
/// 4 adds `Put`, small files sent without waiting for an answer.
pub const VERSION: u16 = 4;

/// First version whose server accepts [`ClientMessage::Hash`] (BLAKE3).
pub const HASH_VERSION: u16 = 3;

/// First version whose server accepts [`ClientMessage::Put`].
pub const PUT_VERSION: u16 = 4;

/// Largest file a [`ClientMessage::Put`] may carry. A put's body follows
/// its frame before the server has answered, so a refused put must still be
/// read to its end: the cap bounds that waste, and the memory a server
/// spends on the body it is receiving. Larger files are offered.
pub const MAX_PUT_SIZE: u64 = 1024 * 1024;

/// Oldest protocol version a server still serves (version-1 clients upload
/// as before; they never see the version-2 messages).
pub const MIN_VERSION: u16 = 1;

/// Port `up-srv` listens on and `up-cli` connects to unless told otherwise.
pub const DEFAULT_PORT: u16 = 9998;

/// Hard cap on a control frame (type byte + payload), checked before allocating.
pub const MAX_MESSAGE_LEN: usize = 8 * 1024;

/// Hard cap on a file name in bytes (all components and separators).
pub const MAX_NAME_LEN: usize = 4096;

/// Hard cap on the shared token in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Hard cap on a refusal reason in bytes; longer reasons are truncated when encoded.
pub const MAX_REASON_LEN: usize = 1024;

/// Length of a SHA-256 digest.
pub const DIGEST_LEN: usize = 32;

/// A SHA-256 digest as carried on the wire.
pub type Digest = [u8; DIGEST_LEN];

/// The reply the server sends to a legacy client once its size is read.
pub const LEGACY_REPLY: &[u8] = b"1001";

/// Starts the line a server sends instead of [`LEGACY_REPLY`] when it cannot
/// take a legacy upload (for example under `--token`); the reason follows,
/// then `\n`. The original tutorial client treats any reply as "go ahead",
/// but it then meets a closed connection; `up-cli --legacy` shows the reason.
pub const LEGACY_REFUSAL_PREFIX: &[u8] = b"refused: ";

/// The legacy form has no name on the wire; files are stored under this one.
pub const LEGACY_NAME: &str = "new.jpg";

/// Most digits a legacy size may have (`u64::MAX` has 20).
pub const MAX_LEGACY_DIGITS: usize = 20;

/// Length of the frame length prefix.
const LEN_PREFIX: usize = 4;

/// Errors of the upload codec. Any of them means the stream is unusable and
/// the connection should be closed after an optional refusal.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A frame declared a length above [`MAX_MESSAGE_LEN`].
    #[error("control message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLong {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame declared a length of zero (no type byte).
    #[error("empty control message")]
    EmptyMessage,
    /// The type byte is not one this side expects.
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    /// The payload does not match the layout of its type.
    #[error("malformed {message} message: {reason}")]
    Malformed {
        /// Message name.
        message: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A text field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Field name.
        field: &'static str,
    },
    /// A field is too long to encode.
    #[error("{field} of {len} bytes exceeds the limit of {max} bytes")]
    FieldTooLong {
        /// Field name.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The legacy size has more than [`MAX_LEGACY_DIGITS`] digits or overflows u64.
    #[error("legacy size is too large")]
    LegacySizeTooLarge,
    /// The legacy size is followed by something other than CR/LF.
    #[error(
        "unexpected byte 0x{0:02x} after the legacy size (expected digits, then optional CR LF)"
    )]
    LegacyUnexpectedByte(u8),
    /// The legacy header holds no digit.
    #[error("legacy header holds no size")]
    LegacyEmpty,
    /// The underlying transport failed (needed by the codec traits).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// How a connection starts, decided from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// The original protocol: the size as decimal ASCII text.
    Legacy,
    /// The binary protocol: [`MAGIC`] matched; the caller skips `MAGIC.len()` bytes.
    Binary,
    /// Neither; the connection should be closed.
    Unknown,
}

/// Decides the connection form from the first buffered bytes.
pub fn detect(buf: &[u8]) -> Form {
    match buf.first() {
        None => Form::NeedMore,
        Some(b) if b.is_ascii_digit() => Form::Legacy,
        Some(_) => {
            let n = buf.len().min(MAGIC.len());
            if buf[..n] != MAGIC[..n] {
                Form::Unknown
            } else if n < MAGIC.len() {
                Form::NeedMore
            } else {
                Form::Binary
            }
        }
    }
}

/// Parses the legacy size header at the start of `buf`.
///
/// Returns `Ok(Some((size, consumed)))` when the header is complete: digits
/// ended by a non-digit (an optional CR and an optional LF are consumed),
/// or, when `paused` is true (the session saw the sender go quiet), at the
/// end of the buffered digits. `Ok(None)` means more bytes are needed.
pub fn parse_legacy_size(buf: &[u8], paused: bool) -> Result<Option<(u64, usize)>, UploadError> {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > MAX_LEGACY_DIGITS {
        return Err(UploadError::LegacySizeTooLarge);
    }
    let rest = &buf[digits..];
    let consumed = match rest {
        [] if paused => digits,
        [] => return Ok(None),
        [b'\r'] if paused => digits + 1,
        [b'\r'] => return Ok(None),
        [b'\r', b'\n', ..] => digits + 2,
        [b'\n', ..] => digits + 1,
        [other, ..] => return Err(UploadError::LegacyUnexpectedByte(*other)),
    };
    if digits == 0 {
        return Err(UploadError::LegacyEmpty);
    }
    let mut size: u64 = 0;
    for d in &buf[..digits] {
        size = size
            .checked_mul(10)
            .and_then(|s| s.checked_add(u64::from(d - b'0')))
            .ok_or(UploadError::LegacySizeTooLarge)?;
    }
    Ok(Some((size, consumed)))
}

/// Why the server refused something. Carried as a u16 on the wire; unknown
/// values decode to [`RefusalCode::Other`] so newer servers stay readable.
/// Each code's value, label and whether the server closes the connection
/// after it are one row of a single table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// 1: the stream is malformed; the server closes the connection.
    BadMessage,
    /// 2: the client's protocol version is not supported.
    UnsupportedVersion,
    /// 3: missing or wrong token.
    Unauthorized,
    /// 10: the name is not a safe relative name.
    BadName,
    /// 11: the declared size exceeds the server's `--max-size`.
    TooLarge,
    /// 12: not enough free disk space for the declared size.
    NoSpace,
    /// 13: the same (name, size) is being uploaded by another connection.
    Busy,
    /// 14: the server runs its maximum number of concurrent uploads.
    TooManyUploads,
    /// 20: the received data does not match the client's SHA-256; nothing was kept.
    DigestMismatch,
    /// 21: the client confirmed an offset other than 0 or the offered one.
    BadOffset,
    /// 30: the server failed to store or read the data.
    StorageError,
    /// 31: the server is shutting down; the partial data is kept for a resume.
    ShuttingDown,
    /// 32: the connection was idle for too long.
    IdleTimeout,
    /// 33: a control message took longer than the server's header timeout.
    HeaderTooSlow,
    /// 34: the body arrived below the server's minimum rate; the partial is kept.
    BodyTooSlow,
    /// 40: `ls`/`get` asked of a server started without `--allow-get`.
    NotAllowed,
    /// 41: `get` named no stored file.
    NotFound,
    /// 42: the stored file changed since its digest was recorded, so the
    /// server cannot vouch for it.
    Changed,
    /// 35: the object store behind the server is unreachable or refusing; the
    /// data is kept on the server, so running the same upload again finishes it.
    StoreUnavailable,
    /// Any other code.
    Other(u16),
}

/// One row per known code: (code, wire value, label, closes the connection).
const REFUSALS: [(RefusalCode, u16, &str, bool); 19] = [
    (RefusalCode::BadMessage, 1, "bad message", true),
    (
        RefusalCode::UnsupportedVersion,
        2,
        "unsupported version",
        true,
    ),
    (RefusalCode::Unauthorized, 3, "unauthorized", true),
    (RefusalCode::BadName, 10, "bad name", false),
    (RefusalCode::TooLarge, 11, "too large", false),
    (RefusalCode::NoSpace, 12, "no space", false),
    (RefusalCode::Busy, 13, "busy", false),
    (RefusalCode::TooManyUploads, 14, "too many uploads", false),
    (RefusalCode::DigestMismatch, 20, "digest mismatch", false),
    (RefusalCode::BadOffset, 21, "bad offset", true),
    (RefusalCode::StorageError, 30, "storage error", true),
    (RefusalCode::ShuttingDown, 31, "shutting down", true),
    (RefusalCode::IdleTimeout, 32, "idle timeout", true),
    (RefusalCode::HeaderTooSlow, 33, "header too slow", true),
    (RefusalCode::BodyTooSlow, 34, "too slow", true),
    (
        RefusalCode::StoreUnavailable,
        35,
        "store unavailable",
        false,
    ),
    (RefusalCode::NotAllowed, 40, "not allowed", false),
    (RefusalCode::NotFound, 41, "not found", false),
    (RefusalCode::Changed, 42, "changed on the server", false),
];

impl RefusalCode {
    fn row(self) -> Option<&'static (RefusalCode, u16, &'static str, bool)> {
        REFUSALS.iter().find(|row| row.0 == self)
    }

    /// The code's wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Other(c) => c,
            known => known.row().map_or(0, |row| row.1),
        }
    }

    /// The code for a wire value.
    pub fn from_u16(v: u16) -> Self {
        REFUSALS
            .iter()
            .find(|row| row.1 == v)
            .map_or(Self::Other(v), |row| row.0)
    }

    /// A short lower-case label for logs and client messages.
    pub fn label(self) -> &'static str {
        self.row().map_or("refused", |row| row.2)
    }

    /// True when the server closes the connection after this refusal (the
    /// stream is out of sync or the server is going away); otherwise the
    /// next offer may follow on the same connection. Unknown codes count as
    /// closing, the safe reading.
    pub fn closes_connection(self) -> bool {
        match self.row() {
            Some(row) => row.3,
            None => true,
        }
    }
}

/// Messages from the client to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// First message after [`MAGIC`]: protocol version and token (empty = none).
    Hello {
        /// Client protocol version.
        version: u16,
        /// Shared token; empty when the client has none.
        token: String,
    },
    /// Proposes one file: its relative name and its total size.
    Offer {
        /// Relative name, `/`-separated, UTF-8.
        name: String,
        /// Total size of the file in bytes.
        size: u64,
    },
    /// Confirms the offset the body starts at (the accepted one, or 0 to
    /// restart); exactly `size - offset` raw bytes follow.
    Start {
        /// Offset of the first body byte.
        offset: u64,
    },
    /// Follows the body: the SHA-256 of the whole file.
    Finish {
        /// Digest of the whole file, prefix included.
        sha256: Digest,
    },
    /// After [`ServerMessage::Present`]: the local file has the same digest,
    /// so nothing is sent or stored; the next offer may follow.
    Skip,
    /// After [`ServerMessage::Present`]: the content differs; the server
    /// goes on as for a new file (answers with accept or refuse).
    Proceed,
    /// Asks for the stored files whose names start with `prefix`.
    List {
        /// Name prefix; empty for every file.
        prefix: String,
    },
    /// Asks for one stored file; a `Start` with the resume offset follows
    /// the server's [`ServerMessage::Sending`].
    Get {
        /// Stored name, as `List` shows it.
        name: String,
    },
    /// Version 3: every later offer on this connection is verified with
    /// `algorithm` (`sha256` or `blake3`): the prefix digest of `Accept`,
    /// `Present`, `Finish` and `Stored` are then in that algorithm. No answer;
    /// an unknown name is refused as a bad message.
    Hash {
        /// Wire name of the algorithm ([`crate::digest::Algorithm::name`]).
        algorithm: String,
    },
    /// Version 4: a whole small file (at most [`MAX_PUT_SIZE`] bytes) sent
    /// without waiting: exactly `size` raw bytes follow, then
    /// [`ClientMessage::Finish`]. The client may send more puts before the
    /// answers come; the server answers each, in order, with `Stored`,
    /// `Present` (the name already holds these bytes: nothing stored) or
    /// `Refuse`, and only once the file is durable.
    Put {
        /// Relative name, `/`-separated, UTF-8.
        name: String,
        /// Size of the file in bytes, at most [`MAX_PUT_SIZE`].
        size: u64,
    },
    /// Version 4: asks whether `name` is stored with this size, without
    /// starting an upload; answered with `Present` (and the digest) or
    /// `Missing`. Many checks may be sent before the answers come, so a
    /// rerun learns what it can skip in one round trip per window.
    Check {
        /// Relative name, `/`-separated, UTF-8.
        name: String,
        /// Size of the file in bytes.
        size: u64,
    },
}

/// Messages from the server to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// Answer to a valid hello.
    Welcome {
        /// Protocol version of the session (the client's).
        version: u16,
        /// Version 2: whether this server checks tokens, so a client that
        /// sent one to an open server can say it was not needed. Not on the
        /// wire for version 1 (decodes as false).
        token_checked: bool,
    },
    /// Answer to an offer: where to resume and the digest of the stored prefix.
    Accept {
        /// Bytes already held for this (name, size); 0 for a new upload.
        offset: u64,
        /// SHA-256 of those `offset` bytes (the empty-input digest for 0).
        prefix_sha256: Digest,
    },
    /// The file is verified and stored.
    Stored {
        /// Name relative to the upload dir (may carry a ` (n)` suffix).
        name: String,
        /// SHA-256 of the stored file.
        sha256: Digest,
    },
    /// Answer to an offer (version 2 only): a file of that name and size is
    /// already stored, with this digest; the client answers skip or proceed.
    Present {
        /// Recorded SHA-256 of the stored file.
        sha256: Digest,
    },
    /// One stored file, in answer to `List`.
    Entry {
        /// Name relative to the upload dir.
        name: String,
        /// Size in bytes.
        size: u64,
        /// Modification time, seconds since the Unix epoch.
        mtime: u64,
        /// Recorded SHA-256.
        sha256: Digest,
    },
    /// Ends a listing.
    ListEnd {
        /// Entries sent.
        count: u64,
    },
    /// Answer to `Get`: the stored file's size and recorded digest. After the
    /// client's `Start{offset}`, `size - offset` raw bytes follow.
    Sending {
        /// Size in bytes.
        size: u64,
        /// Recorded SHA-256 of the whole file.
        sha256: Digest,
    },
    /// Answer to `Check` (version 4): no file of that name and size is stored.
    Missing,
    /// A refusal with a code and a human reason.
    Refuse {
        /// Machine-readable code.
        code: RefusalCode,
        /// Human-readable reason, one line.
        reason: String,
    },
}

const T_HELLO: u8 = 0x01;
const T_OFFER: u8 = 0x02;
const T_START: u8 = 0x03;
const T_FINISH: u8 = 0x04;
const T_SKIP: u8 = 0x05;
const T_PROCEED: u8 = 0x06;
const T_LIST: u8 = 0x07;
const T_GET: u8 = 0x08;
const T_HASH: u8 = 0x09;
const T_PUT: u8 = 0x0a;
const T_CHECK: u8 = 0x0b;
const T_WELCOME: u8 = 0x81;
const T_ACCEPT: u8 = 0x82;
const T_STORED: u8 = 0x83;
const T_REFUSE: u8 = 0x84;
const T_PRESENT: u8 = 0x85;
const T_ENTRY: u8 = 0x86;
const T_LIST_END: u8 = 0x87;
const T_SENDING: u8 = 0x88;
const T_MISSING: u8 = 0x89;

/// Welcome flag (version 2): the server requires a token.
const WELCOME_TOKEN_CHECKED: u8 = 0x01;

/// Splits one complete frame off `src`, checking its length before reserving.
fn decode_frame(src: &mut BytesMut) -> Result<Option<(u8, Bytes)>, UploadError> {
    let Some(prefix) = src.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len == 0 {
        return Err(UploadError::EmptyMessage);
    }
    if len > MAX_MESSAGE_LEN {
        return Err(UploadError::MessageTooLong {
            len,
            max: MAX_MESSAGE_LEN,
        });
    }
    if src.len() < LEN_PREFIX + len {
        src.reserve(LEN_PREFIX + len - src.len());
        return Ok(None);
    }
    src.advance(LEN_PREFIX);
    let mut frame = src.split_to(len).freeze();
    let ty = frame.get_u8();
    Ok(Some((ty, frame)))
}

/// Reads fields from a payload, failing with the message name on a short read.
struct Fields {
    message: &'static str,
    buf: Bytes,
}

impl Fields {
    fn new(message: &'static str, buf: Bytes) -> Self {
        Fields { message, buf }
    }
    fn short(&self) -> UploadError {
        UploadError::Malformed {
            message: self.message,
            reason: "payload too short",
        }
    }
    fn u16(&mut self) -> Result<u16, UploadError> {
        if self.buf.remaining() < 2 {
            return Err(self.short());
        }
        Ok(self.buf.get_u16())
    }
    fn u64(&mut self) -> Result<u64, UploadError> {
        if self.buf.remaining() < 8 {
            return Err(self.short());
        }
        Ok(self.buf.get_u64())
    }
    fn digest(&mut self) -> Result<Digest, UploadError> {
        if self.buf.remaining() < DIGEST_LEN {
            return Err(self.short());
        }
        let mut d = [0u8; DIGEST_LEN];
        self.buf.copy_to_slice(&mut d);
        Ok(d)
    }
    fn string(&mut self, field: &'static str) -> Result<String, UploadError> {
        let len = usize::from(self.u16()?);
        if self.buf.remaining() < len {
            return Err(self.short());
        }
        let raw = self.buf.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| UploadError::InvalidUtf8 { field })
    }
    fn end(self) -> Result<(), UploadError> {
        if self.buf.has_remaining() {
            return Err(UploadError::Malformed {
                message: self.message,
                reason: "trailing bytes after the payload",
            });
        }
        Ok(())
    }
}

fn put_string(
    dst: &mut BytesMut,
    field: &'static str,
    s: &str,
    max: usize,
) -> Result<(), UploadError> {
    if s.len() > max {
        return Err(UploadError::FieldTooLong {
            field,
            len: s.len(),
            max,
        });
    }
    // `max` is below u16::MAX for every field, so the cast cannot truncate.
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
    Ok(())
}

/// Writes a frame whose payload is produced by `body`, patching the length in.
fn encode_frame(
    dst: &mut BytesMut,
    ty: u8,
    body: impl FnOnce(&mut BytesMut) -> Result<(), UploadError>,
) -> Result<(), UploadError> {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(ty);
    if let Err(e) = body(dst) {
        dst.truncate(start);
        return Err(e);
    }
    let len = dst.len() - start - LEN_PREFIX;
    if len > MAX_MESSAGE_LEN {
        dst.truncate(start);
        return Err(UploadError::MessageTooLong {
            len,
            max: MAX_MESSAGE_LEN,
        });
    }
    dst[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl ClientMessage {
    fn from_frame(ty: u8, payload: Bytes) -> Result<Self, UploadError> {
        let msg = match ty {
            T_HELLO => {
                let mut f = Fields {
                    message: "hello",
                    buf: payload,
                };
                let version = f.u16()?;
                let token = f.string("token")?;
                f.end()?;
                ClientMessage::Hello { version, token }
            }
            T_OFFER => {
                let mut f = Fields {
                    message: "offer",
                    buf: payload,
                };
                let size = f.u64()?;
                let name = f.string("name")?;
                f.end()?;
                ClientMessage::Offer { name, size }
            }
            T_START => {
                let mut f = Fields {
                    message: "start",
                    buf: payload,
                };
                let offset = f.u64()?;
                f.end()?;
                ClientMessage::Start { offset }
            }
            T_FINISH => {
                let mut f = Fields {
                    message: "finish",
                    buf: payload,
                };
                let sha256 = f.digest()?;
                f.end()?;
                ClientMessage::Finish { sha256 }
            }
            T_SKIP => {
                Fields::new("skip", payload).end()?;
                ClientMessage::Skip
            }
            T_PROCEED => {
                Fields::new("proceed", payload).end()?;
                ClientMessage::Proceed
            }
            T_LIST => {
                let mut f = Fields::new("list", payload);
                let prefix = f.string("prefix")?;
                f.end()?;
                ClientMessage::List { prefix }
            }
            T_GET => {
                let mut f = Fields::new("get", payload);
                let name = f.string("name")?;
                f.end()?;
                ClientMessage::Get { name }
            }
            T_HASH => {
                let mut f = Fields::new("hash", payload);
                let algorithm = f.string("algorithm")?;
                f.end()?;
                ClientMessage::Hash { algorithm }
            }
            T_PUT => {
                let mut f = Fields::new("put", payload);
                let size = f.u64()?;
                let name = f.string("name")?;
                f.end()?;
                ClientMessage::Put { name, size }
            }
            T_CHECK => {
                let mut f = Fields::new("check", payload);
                let size = f.u64()?;
                let name = f.string("name")?;
                f.end()?;
                ClientMessage::Check { name, size }
            }
            other => return Err(UploadError::UnknownType(other)),
        };
        Ok(msg)
    }

    /// Appends this message as one frame to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), UploadError> {
        match self {
            ClientMessage::Hello { version, token } => encode_frame(dst, T_HELLO, |d| {
                d.put_u16(*version);
                put_string(d, "token", token, MAX_TOKEN_LEN)
            }),
            ClientMessage::Offer { name, size } => encode_frame(dst, T_OFFER, |d| {
                d.put_u64(*size);
                put_string(d, "name", name, MAX_NAME_LEN)
            }),
            ClientMessage::Start { offset } => encode_frame(dst, T_START, |d| {
                d.put_u64(*offset);
                Ok(())
            }),
            ClientMessage::Finish { sha256 } => encode_frame(dst, T_FINISH, |d| {
                d.put_slice(sha256);
                Ok(())
            }),
            ClientMessage::Skip => encode_frame(dst, T_SKIP, |_| Ok(())),
            ClientMessage::Proceed => encode_frame(dst, T_PROCEED, |_| Ok(())),
            ClientMessage::List { prefix } => encode_frame(dst, T_LIST, |d| {
                put_string(d, "prefix", prefix, MAX_NAME_LEN)
            }),
            ClientMessage::Get { name } => {
                encode_frame(dst, T_GET, |d| put_string(d, "name", name, MAX_NAME_LEN))
            }
            ClientMessage::Hash { algorithm } => encode_frame(dst, T_HASH, |d| {
                put_string(d, "algorithm", algorithm, MAX_NAME_LEN)
            }),
            ClientMessage::Put { name, size } => encode_frame(dst, T_PUT, |d| {
                d.put_u64(*size);
                put_string(d, "name", name, MAX_NAME_LEN)
            }),
            ClientMessage::Check { name, size } => encode_frame(dst, T_CHECK, |d| {
                d.put_u64(*size);
                put_string(d, "name", name, MAX_NAME_LEN)
            }),
        }
    }
}

impl ServerMessage {
    fn from_frame(ty: u8, payload: Bytes) -> Result<Self, UploadError> {
        let msg = match ty {
            T_WELCOME => {
                let mut f = Fields {
                    message: "welcome",
                    buf: payload,
                };
                let version = f.u16()?;
                // Version 2 adds a flags byte; version 1 has none.
                let flags = if version >= 2 {
                    if !f.buf.has_remaining() {
                        return Err(f.short());
                    }
                    f.buf.get_u8()
                } else {
                    0
                };
                if flags & !WELCOME_TOKEN_CHECKED != 0 {
                    return Err(UploadError::Malformed {
                        message: "welcome",
                        reason: "unknown flags",
                    });
                }
                f.end()?;
                ServerMessage::Welcome {
                    version,
                    token_checked: flags & WELCOME_TOKEN_CHECKED != 0,
                }
            }
            T_ACCEPT => {
                let mut f = Fields {
                    message: "accept",
                    buf: payload,
                };
                let offset = f.u64()?;
                let prefix_sha256 = f.digest()?;
                f.end()?;
                ServerMessage::Accept {
                    offset,
                    prefix_sha256,
                }
            }
            T_STORED => {
                let mut f = Fields {
                    message: "stored",
                    buf: payload,
                };
                let sha256 = f.digest()?;
                let name = f.string("name")?;
                f.end()?;
                ServerMessage::Stored { name, sha256 }
            }
            T_REFUSE => {
                let mut f = Fields {
                    message: "refuse",
                    buf: payload,
                };
                let code = RefusalCode::from_u16(f.u16()?);
                let reason = f.string("reason")?;
                f.end()?;
                ServerMessage::Refuse { code, reason }
            }
            T_PRESENT => {
                let mut f = Fields::new("present", payload);
                let sha256 = f.digest()?;
                f.end()?;
                ServerMessage::Present { sha256 }
            }
            T_ENTRY => {
                let mut f = Fields::new("entry", payload);
                let size = f.u64()?;
                let mtime = f.u64()?;
                let sha256 = f.digest()?;
                let name = f.string("name")?;
                f.end()?;
                ServerMessage::Entry {
                    name,
                    size,
                    mtime,
                    sha256,
                }
            }
            T_LIST_END => {
                let mut f = Fields::new("list end", payload);
                let count = f.u64()?;
                f.end()?;
                ServerMessage::ListEnd { count }
            }
            T_SENDING => {
                let mut f = Fields::new("sending", payload);
                let size = f.u64()?;
                let sha256 = f.digest()?;
                f.end()?;
                ServerMessage::Sending { size, sha256 }
            }
            T_MISSING => {
                Fields::new("missing", payload).end()?;
                ServerMessage::Missing
            }
            other => return Err(UploadError::UnknownType(other)),
        };
        Ok(msg)
    }

    /// Appends this message as one frame to `dst`. A reason longer than
    /// [`MAX_REASON_LEN`] is truncated rather than refused, so a refusal can
    /// always be sent.
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), UploadError> {
        match self {
            ServerMessage::Welcome {
                version,
                token_checked,
            } => encode_frame(dst, T_WELCOME, |d| {
                d.put_u16(*version);
                if *version >= 2 {
                    d.put_u8(if *token_checked {
                        WELCOME_TOKEN_CHECKED
                    } else {
                        0
                    });
                }
                Ok(())
            }),
            ServerMessage::Accept {
                offset,
                prefix_sha256,
            } => encode_frame(dst, T_ACCEPT, |d| {
                d.put_u64(*offset);
                d.put_slice(prefix_sha256);
                Ok(())
            }),
            ServerMessage::Stored { name, sha256 } => encode_frame(dst, T_STORED, |d| {
                d.put_slice(sha256);
                put_string(d, "name", name, MAX_NAME_LEN)
            }),
            ServerMessage::Present { sha256 } => encode_frame(dst, T_PRESENT, |d| {
                d.put_slice(sha256);
                Ok(())
            }),
            ServerMessage::Entry {
                name,
                size,
                mtime,
                sha256,
            } => encode_frame(dst, T_ENTRY, |d| {
                d.put_u64(*size);
                d.put_u64(*mtime);
                d.put_slice(sha256);
                put_string(d, "name", name, MAX_NAME_LEN)
            }),
            ServerMessage::ListEnd { count } => encode_frame(dst, T_LIST_END, |d| {
                d.put_u64(*count);
                Ok(())
            }),
            ServerMessage::Sending { size, sha256 } => encode_frame(dst, T_SENDING, |d| {
                d.put_u64(*size);
                d.put_slice(sha256);
                Ok(())
            }),
            ServerMessage::Missing => encode_frame(dst, T_MISSING, |_| Ok(())),
            ServerMessage::Refuse { code, reason } => encode_frame(dst, T_REFUSE, |d| {
                d.put_u16(code.to_u16());
                put_string(
                    d,
                    "reason",
                    truncate_utf8(reason, MAX_REASON_LEN),
                    MAX_REASON_LEN,
                )
            }),
        }
    }
}

/// Server-side codec: decodes [`ClientMessage`]s, encodes [`ServerMessage`]s.
///
/// Feed it the bytes after [`MAGIC`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerCodec;

impl Decoder for ServerCodec {
    type Item = ClientMessage;
    type Error = UploadError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ClientMessage>, UploadError> {
        match decode_frame(src)? {
            None => Ok(None),
            Some((ty, payload)) => ClientMessage::from_frame(ty, payload).map(Some),
        }
    }
}

impl Encoder<ServerMessage> for ServerCodec {
    type Error = UploadError;

    fn encode(&mut self, item: ServerMessage, dst: &mut BytesMut) -> Result<(), UploadError> {
        item.encode_into(dst)
    }
}

/// Client-side codec: decodes [`ServerMessage`]s, encodes [`ClientMessage`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCodec;

impl Decoder for ClientCodec {
    type Item = ServerMessage;
    type Error = UploadError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ServerMessage>, UploadError> {
        match decode_frame(src)? {
            None => Ok(None),
            Some((ty, payload)) => ServerMessage::from_frame(ty, payload).map(Some),
        }
    }
}

impl Encoder<ClientMessage> for ClientCodec {
    type Error = UploadError;

    fn encode(&mut self, item: ClientMessage, dst: &mut BytesMut) -> Result<(), UploadError> {
        item.encode_into(dst)
    }
}

impl ClientMessage {
    /// The message's name for error lines (`expected start, got offer`).
    pub fn name(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "hello",
            ClientMessage::Offer { .. } => "offer",
            ClientMessage::Start { .. } => "start",
            ClientMessage::Finish { .. } => "finish",
            ClientMessage::Skip => "skip",
            ClientMessage::Proceed => "proceed",
            ClientMessage::List { .. } => "list",
            ClientMessage::Get { .. } => "get",
            ClientMessage::Hash { .. } => "hash",
            ClientMessage::Put { .. } => "put",
            ClientMessage::Check { .. } => "check",
        }
    }
}

impl ServerMessage {
    /// The message's name for error lines.
    pub fn name(&self) -> &'static str {
        match self {
            ServerMessage::Welcome { .. } => "welcome",
            ServerMessage::Accept { .. } => "accept",
            ServerMessage::Stored { .. } => "stored",
            ServerMessage::Present { .. } => "present",
            ServerMessage::Entry { .. } => "entry",
            ServerMessage::ListEnd { .. } => "list end",
            ServerMessage::Sending { .. } => "sending",
            ServerMessage::Missing => "missing",
            ServerMessage::Refuse { .. } => "refuse",
        }
    }
}

/// Formats a digest (or any bytes) as lower-case hex, the `sha256sum`
/// spelling; the one hex encoder of the workspace's upload side.
pub fn hex(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(digest.len() * 2);
    for b in digest {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests;
