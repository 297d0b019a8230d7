//! Chat line protocol: the newline-delimited UTF-8 codec and the line forms.
//!
//! Both `chat-srv` and `chat-cli` frame the TCP byte stream with [`ChatCodec`]
//! and give meaning to the lines with [`ClientLine`] (what a client sends) and
//! [`ServerLine`] (what a server sends). Nothing here touches a socket or a
//! clock: the rule that completes an unterminated line after a pause lives in
//! the server session, which uses [`ChatCodec::take_partial`] to collect the
//! buffered bytes. The normative description is the "Chat" section of
//! `docs/PROTOCOL.md`.
//!
//! # Format
//! ```text
//! client → server   hello\n            (CRLF accepted, `\r` stripped)
//! server → client   欢迎来到简单的聊天室..\n
//! server → client   hello,你好\n
//! ```

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default maximum length of one line in bytes, without its `\n` or `\r\n`.
pub const MAX_LINE_LEN: usize = 4096;

/// TCP port of the chat service unless told otherwise.
pub const DEFAULT_PORT: u16 = 8888;

/// The first line a server sends on every accepted connection.
pub const WELCOME: &str = "欢迎来到简单的聊天室..";

/// Appended to a client's message to form the reply sent back to it.
pub const REPLY_SUFFIX: &str = ",你好";

/// Prefix of a notice: an event in the room or on the server (`* alice joined`).
pub const NOTICE_PREFIX: &str = "* ";

/// Prefix of an error: the client's line was refused, or the connection ends.
pub const ERROR_PREFIX: &str = "! ";

/// Prefix of the success answer to a command (`+ you are now alice`).
pub const OK_PREFIX: &str = "+ ";

/// Prefix of a private message received from another client.
pub const PRIVATE_PREFIX: &str = "[pm] ";

/// Prefix of a line of room history sent in answer to `/history`.
pub const HISTORY_PREFIX: &str = "~ ";

/// The last line before a graceful server shutdown closes the connection
/// (sent as a notice).
pub const SHUTDOWN_NOTICE: &str = "server is shutting down, goodbye";

/// The last line to a client whose outgoing queue overflowed (an error).
pub const TOO_SLOW_ERROR: &str = "too slow: outgoing queue full, disconnecting";

/// The answer to a first line that speaks HTTP, or to TLS bytes, on the
/// plain chat port (an error; the connection is then closed).
pub const WRONG_PROTOCOL_ERROR: &str =
    "this is a chat server: plain text lines, try nc or chat-cli";

/// The answer to a TLS ClientHello on the plain chat port.
pub const TLS_ON_PLAIN_ERROR: &str =
    "this is a plain-text chat server, not TLS: try nc or chat-cli without TLS";

/// The refusal sent instead of the welcome when the server has
/// `max_clients` connections already; the connection is then closed.
pub fn server_full_text(max_clients: usize) -> String {
    format!("server full ({max_clients} clients), try again later")
}

/// The notice sent before an idle connection is closed.
pub fn idle_notice_text(idle_secs: f64) -> String {
    format!("idle for {idle_secs} s, closing the connection")
}

/// `1 member`, `2 members`: a count with its noun in the right number.
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    if n == 1 {
        format!("{n} {singular}")
    } else {
        format!("{n} {plural}")
    }
}

/// True when `line` (the first line of a connection) is an HTTP request
/// line such as `GET / HTTP/1.1`: a browser or `curl` reached the chat port.
pub fn looks_like_http(line: &str) -> bool {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return false;
    };
    METHODS.contains(&method) && !target.is_empty() && version.starts_with("HTTP/")
}

/// True when `bytes` (the first bytes of a connection) start like a TLS
/// record carrying a handshake (a ClientHello): content type 22, version 3.x.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x16, 0x03, ..])
}

/// The room every client starts in.
pub const LOBBY: &str = "lobby";

/// Longest accepted nickname or room name, in characters (after NFC).
pub const MAX_NAME_CHARS: usize = 32;

/// How many lines of room history `/history` sends when no count is given.
pub const DEFAULT_HISTORY_REQUEST: usize = 20;

/// Nicknames starting with this prefix are assigned by the server only.
pub const GUEST_PREFIX: &str = "guest-";

/// True for a character that may never reach a terminal through the chat:
/// a C0 control other than TAB (so also a lone `\r`), DEL, a C1 control
/// (U+0080–U+009F), or a bidi embedding, override or isolate (U+202A–U+202E,
/// U+2066–U+2069). Such characters can forge lines (`\r` then a fake
/// notice), repaint the screen (escape sequences) or reorder what is shown.
pub fn is_forbidden_char(c: char) -> bool {
    matches!(c, '\0'..='\x08' | '\x0a'..='\x1f' | '\x7f' | '\u{80}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A character refused because it could act on a terminal (see
/// [`is_forbidden_char`]); the line holding it is not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line refused: it holds the control character {}, which is not relayed (send plain text)", char_name(*.0))]
pub struct ForbiddenChar(pub char);

/// `U+001B (ESC)`-style name of a character, for error lines.
fn char_name(c: char) -> String {
    let short = match c {
        '\0' => " (NUL)",
        '\x07' => " (BEL)",
        '\x08' => " (BS)",
        '\r' => " (CR)",
        '\x1b' => " (ESC)",
        '\x7f' => " (DEL)",
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => " (bidi control)",
        _ => "",
    };
    format!("U+{:04X}{short}", u32::from(c))
}

/// Checks that `text` holds nothing but text: returns the first forbidden
/// character (see [`is_forbidden_char`]) as an error.
pub fn check_text(text: &str) -> Result<(), ForbiddenChar> {
    match text.chars().find(|&c| is_forbidden_char(c)) {
        Some(c) => Err(ForbiddenChar(c)),
        None => Ok(()),
    }
}

/// A problem with one line; the stream itself stays usable.
///
/// The codec reports these as items rather than errors because a
/// `FramedRead` ends after its decoder returns `Err`, and one bad line must
/// not end a chat session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line exceeded the limit; its bytes were discarded up to its newline.
    #[error("line too long (limit is {limit} bytes), line discarded")]
    TooLong {
        /// The limit in force, in bytes.
        limit: usize,
    },
    /// The line is not valid UTF-8; it was discarded.
    #[error("line is not valid UTF-8, line discarded")]
    InvalidUtf8,
}

/// A stream-level failure of the chat codec (only I/O: framing problems are
/// per-line [`LineError`] items).
#[derive(Debug, thiserror::Error)]
pub enum ChatCodecError {
    /// Reading from or writing to the underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What [`ChatCodec`] decodes: a line, or the reason one was discarded.
pub type DecodedLine = Result<String, LineError>;

/// Newline-delimited UTF-8 codec with a maximum line length.
///
/// Decoding yields one [`DecodedLine`] per `\n`-terminated line, with a
/// trailing `\r` removed. A line longer than the limit is reported once, as
/// soon as it is known to be too long, and its remaining bytes are skipped up
/// to the next `\n` without being buffered, so memory stays bounded by the
/// limit whatever the peer sends. Encoding appends `\n` to a line.
#[derive(Debug, Clone)]
pub struct ChatCodec {
    /// Maximum line length in bytes, excluding the terminator.
    max_len: usize,
    /// Bytes of the buffer already searched for `\n`, so a line arriving in
    /// many small reads is scanned once, not once per read.
    next_index: usize,
    /// True while skipping the rest of an over-long line.
    discarding: bool,
    /// True once any `\n` has been decoded: the peer frames its lines, so
    /// the session's pause rule no longer applies to it.
    seen_newline: bool,
}

impl ChatCodec {
    /// A codec accepting lines of at most `max_len` bytes (excluding `\n`).
    pub fn new(max_len: usize) -> Self {
        ChatCodec {
            max_len,
            next_index: 0,
            discarding: false,
            seen_newline: false,
        }
    }

    /// True once the peer has ended a line with `\n`. The legacy tutorial
    /// client never does; a session applies its pause rule only until then,
    /// so a line of a newline-speaking client is never cut by a slow link.
    pub fn has_seen_newline(&self) -> bool {
        self.seen_newline
    }

    /// True when the unterminated bytes in `buf` end inside a multi-byte
    /// UTF-8 character (its first bytes arrived, the rest not yet): a pause
    /// there must not complete the line, or the character would be lost.
    pub fn partial_ends_mid_char(&self, buf: &BytesMut) -> bool {
        if self.discarding {
            return false;
        }
        // A character is at most 4 bytes: only the last 3 can be an
        // unfinished one.
        let tail = &buf[buf.len().saturating_sub(3)..];
        for (i, &b) in tail.iter().enumerate().rev() {
            let need = match b {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                0x80..=0xbf => continue,
                _ => return false,
            };
            return tail.len() - i < need;
        }
        false
    }

    /// The maximum line length in bytes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// True while the codec skips the rest of an over-long line.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// True when `buf` holds part of a line, or an over-long line is being
    /// skipped: the state in which the session's pause rule applies.
    pub fn has_partial(&self, buf: &BytesMut) -> bool {
        self.discarding || !buf.is_empty()
    }

    /// Ends the current unterminated line as if a `\n` had arrived.
    ///
    /// Returns the buffered bytes as a line (validated like any other line),
    /// or `None` when nothing was buffered. If an over-long line was being
    /// skipped, the skip ends here and `None` is returned: its error was
    /// already reported. Call [`Decoder::decode`] until it returns `None`
    /// first, so that complete lines are not merged into the partial one.
    pub fn take_partial(&mut self, buf: &mut BytesMut) -> Option<DecodedLine> {
        self.next_index = 0;
        if self.discarding {
            self.discarding = false;
            buf.clear();
            return None;
        }
        if buf.is_empty() {
            return None;
        }
        let len = buf.len();
        let line = self.finish_line(&buf[..len]);
        buf.advance(len);
        Some(line)
    }

    /// Validates the line content (terminator already removed, except `\r`).
    fn finish_line(&self, line: &[u8]) -> DecodedLine {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max_len {
            return Err(LineError::TooLong {
                limit: self.max_len,
            });
        }
        match std::str::from_utf8(line) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(LineError::InvalidUtf8),
        }
    }

    /// True when the unterminated bytes in `buf` can no longer become a line
    /// within the limit (one extra byte is allowed for a `\r` of a CRLF).
    fn cannot_fit(&self, buf: &[u8]) -> bool {
        match buf.len().checked_sub(self.max_len) {
            None | Some(0) => false,
            Some(1) => buf.last() != Some(&b'\r'),
            Some(_) => true,
        }
    }
}

impl Default for ChatCodec {
    fn default() -> Self {
        ChatCodec::new(MAX_LINE_LEN)
    }
}

impl Decoder for ChatCodec {
    type Item = DecodedLine;
    type Error = ChatCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<DecodedLine>, ChatCodecError> {
        loop {
            let start = self.next_index.min(buf.len());
            let newline = buf[start..].iter().position(|&b| b == b'\n');
            match (newline, self.discarding) {
                (Some(i), true) => {
                    self.seen_newline = true;
                    // The over-long line ends here; its error was already reported.
                    buf.advance(start + i + 1);
                    self.next_index = 0;
                    self.discarding = false;
                }
                (None, true) => {
                    buf.clear();
                    self.next_index = 0;
                    return Ok(None);
                }
                (Some(i), false) => {
                    self.seen_newline = true;
                    let end = start + i;
                    self.next_index = 0;
                    let line = self.finish_line(&buf[..end]);
                    buf.advance(end + 1);
                    return Ok(Some(line));
                }
                (None, false) => {
                    if self.cannot_fit(buf) {
                        buf.clear();
                        self.next_index = 0;
                        self.discarding = true;
                        return Ok(Some(Err(LineError::TooLong {
                            limit: self.max_len,
                        })));
                    }
                    self.next_index = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<DecodedLine>, ChatCodecError> {
        // At end of stream an unterminated last line still counts as a line.
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None => Ok(self.take_partial(buf)),
        }
    }
}

impl Encoder<&str> for ChatCodec {
    type Error = ChatCodecError;

    fn encode(&mut self, line: &str, dst: &mut BytesMut) -> Result<(), ChatCodecError> {
        dst.reserve(line.len() + 1);
        dst.put_slice(line.as_bytes());
        dst.put_u8(b'\n');
        Ok(())
    }
}

impl Encoder<ServerLine<'_>> for ChatCodec {
    type Error = ChatCodecError;

    fn encode(&mut self, line: ServerLine<'_>, dst: &mut BytesMut) -> Result<(), ChatCodecError> {
        line.encode(dst);
        Ok(())
    }
}

/// Every line form a chat server sends.
///
/// ```text
/// 欢迎来到简单的聊天室..      Welcome
/// hello,你好                  Reply("hello")
/// alice: hello                Chat { from: "alice", text: "hello" }
/// [pm] alice: hello           Private { from: "alice", text: "hello" }
/// * alice joined              Notice("alice joined")
/// + you are now alice         Ok("you are now alice")
/// ! unknown command /x        Error("unknown command /x")
/// ~ [14:03] alice: hello      History { time: "14:03", from: "alice", text: "hello" }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerLine<'a> {
    /// The first line of every session.
    Welcome,
    /// The answer to the client's own message: the message plus [`REPLY_SUFFIX`].
    Reply(&'a str),
    /// A message another member sent to the room.
    Chat {
        /// Nickname of the sender.
        from: &'a str,
        /// The message.
        text: &'a str,
    },
    /// A private message from another client.
    Private {
        /// Nickname of the sender.
        from: &'a str,
        /// The message.
        text: &'a str,
    },
    /// An event in the room or on the server.
    Notice(&'a str),
    /// The success answer to a command.
    Ok(&'a str),
    /// A refused line, or the reason the connection ends.
    Error(&'a str),
    /// One line of room history: a past [`ServerLine::Chat`] with its time.
    History {
        /// Local time on the server when it was said, `HH:MM`.
        time: &'a str,
        /// Nickname of the sender.
        from: &'a str,
        /// The message.
        text: &'a str,
    },
}

impl ServerLine<'_> {
    /// Appends the line and its `\n` to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let (a, b, c): (&str, &str, &str) = match *self {
            ServerLine::Welcome => (WELCOME, "", ""),
            ServerLine::Reply(text) => (text, REPLY_SUFFIX, ""),
            ServerLine::Chat { from, text } => (from, ": ", text),
            ServerLine::Private { from, text } => {
                dst.reserve(PRIVATE_PREFIX.len());
                dst.put_slice(PRIVATE_PREFIX.as_bytes());
                (from, ": ", text)
            }
            ServerLine::Notice(text) => (NOTICE_PREFIX, text, ""),
            ServerLine::Ok(text) => (OK_PREFIX, text, ""),
            ServerLine::Error(text) => (ERROR_PREFIX, text, ""),
            ServerLine::History { time, from, text } => {
                dst.reserve(HISTORY_PREFIX.len() + time.len() + 3);
                dst.put_slice(HISTORY_PREFIX.as_bytes());
                dst.put_u8(b'[');
                dst.put_slice(time.as_bytes());
                dst.put_slice(b"] ");
                (from, ": ", text)
            }
        };
        dst.reserve(a.len() + b.len() + c.len() + 1);
        dst.put_slice(a.as_bytes());
        dst.put_slice(b.as_bytes());
        dst.put_slice(c.as_bytes());
        dst.put_u8(b'\n');
    }

    /// The encoded line, `\n` included, as shareable bytes (one allocation;
    /// clones are reference counts, which makes fan-out to a room cheap).
    pub fn to_bytes(&self) -> bytes::Bytes {
        let mut dst = BytesMut::new();
        self.encode(&mut dst);
        dst.freeze()
    }
}

/// The meaning of one line a client sends.
///
/// ```text
/// (empty)            Empty        ignored
/// q | /quit          Quit
/// /nick NAME         Nick
/// /join ROOM         Join
/// /rooms             Rooms
/// /who               Who
/// /msg NICK TEXT     Msg
/// /history [N]       History(N)
/// /help              Help
/// //text             Message("/text")   (escape for a leading slash)
/// anything else      Message
/// ```
///
/// Command names are case-insensitive (`/NICK`, `/Join`); a line of only
/// white space is [`ClientLine::Empty`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLine<'a> {
    /// An empty line; servers ignore it.
    Empty,
    /// A message to answer and to show to the room.
    Message(&'a str),
    /// End the session.
    Quit,
    /// Change nickname (not yet validated: see [`validate_nick`]).
    Nick(&'a str),
    /// Move to a room (not yet validated: see [`validate_room`]).
    Join(&'a str),
    /// List rooms with member counts.
    Rooms,
    /// List the members of the current room.
    Who,
    /// Send a private message.
    Msg {
        /// Nickname of the recipient.
        to: &'a str,
        /// The message.
        text: &'a str,
    },
    /// List the commands.
    Help,
    /// Send the last lines of the current room ([`DEFAULT_HISTORY_REQUEST`]
    /// when no count is given).
    History(usize),
}

/// A line starting with `/` that is not a well-formed command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command name is not known.
    #[error("unknown command {0} (try /help; start a message with // to send a leading /)")]
    Unknown(String),
    /// The command lacks an argument; the payload is its usage.
    #[error("usage: {0}")]
    Usage(&'static str),
}

impl<'a> ClientLine<'a> {
    /// Parses one decoded line (terminator already removed).
    pub fn parse(line: &'a str) -> Result<ClientLine<'a>, CommandError> {
        if line.trim().is_empty() {
            return Ok(ClientLine::Empty);
        }
        if line == "q" {
            return Ok(ClientLine::Quit);
        }
        if line.starts_with("//") {
            // `//text` is the message `/text`: strip one slash.
            return Ok(ClientLine::Message(line.strip_prefix('/').unwrap_or(line)));
        }
        let Some(command) = line.strip_prefix('/') else {
            return Ok(ClientLine::Message(line));
        };
        let (name, rest) = match command.split_once(char::is_whitespace) {
            Some((name, rest)) => (name, rest.trim()),
            None => (command, ""),
        };
        let single = |usage: &'static str| {
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                Err(CommandError::Usage(usage))
            } else {
                Ok(rest)
            }
        };
        match name.to_lowercase().as_str() {
            "quit" => Ok(ClientLine::Quit),
            "history" if rest.is_empty() => Ok(ClientLine::History(DEFAULT_HISTORY_REQUEST)),
            "history" => rest
                .parse()
                .map(ClientLine::History)
                .map_err(|_| CommandError::Usage("/history [N]")),
            "nick" => single("/nick NAME").map(ClientLine::Nick),
            "join" => single("/join ROOM").map(ClientLine::Join),
            "rooms" => Ok(ClientLine::Rooms),
            "who" => Ok(ClientLine::Who),
            "help" => Ok(ClientLine::Help),
            "msg" => match rest.split_once(char::is_whitespace) {
                Some((to, text)) if !text.trim_start().is_empty() => Ok(ClientLine::Msg {
                    to,
                    text: text.trim_start(),
                }),
                _ => Err(CommandError::Usage("/msg NICK TEXT")),
            },
            _ => Err(CommandError::Unknown(format!("/{name}"))),
        }
    }
}

/// A nickname or room name that breaks the naming rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The nickname breaks the rule stated in the message.
    #[error("invalid nickname {0:?}: use 1-32 letters, digits, '-', '_' or '.'")]
    Nick(String),
    /// The nickname starts with the server-reserved [`GUEST_PREFIX`].
    #[error("nickname {0:?} is reserved: names starting with 'guest-' are assigned by the server")]
    Reserved(String),
    /// The room name breaks the rule stated in the message.
    #[error("invalid room name {0:?}: use 1-32 letters, digits, '-', '_' or '.'")]
    Room(String),
}

/// The name in NFC if it follows the naming rule: 1–[`MAX_NAME_CHARS`]
/// characters, each a Unicode letter or digit, `-`, `_` or `.`.
fn normalize_name(name: &str) -> Option<String> {
    use unicode_normalization::UnicodeNormalization as _;
    let nfc: String = name.nfc().collect();
    let chars = nfc.chars().count();
    let allowed = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.');
    ((1..=MAX_NAME_CHARS).contains(&chars) && nfc.chars().all(allowed)).then_some(nfc)
}

/// The key a name is known by: NFC, then Unicode default case folding, so
/// `Alice`, `alice` and `ALICE` are one name (`Straße` and `STRASSE` too).
pub fn name_key(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    let folded = caseless::default_case_fold_str(&name.nfc().collect::<String>());
    folded.nfc().collect()
}

/// Checks the nickname rule (1–[`MAX_NAME_CHARS`] Unicode letters, digits,
/// `-`, `_` or `.`; not starting with [`GUEST_PREFIX`] in any case) and
/// returns the nickname in NFC, the form it is shown in.
pub fn validate_nick(nick: &str) -> Result<String, NameError> {
    let nfc = normalize_name(nick).ok_or_else(|| NameError::Nick(nick.to_owned()))?;
    if name_key(&nfc).starts_with(GUEST_PREFIX) {
        return Err(NameError::Reserved(nick.to_owned()));
    }
    Ok(nfc)
}

/// Checks the room name rule (the same as for nicknames) and returns the
/// name case-folded ([`name_key`]), the form rooms are known and shown by.
pub fn validate_room(room: &str) -> Result<String, NameError> {
    let nfc = normalize_name(room).ok_or_else(|| NameError::Room(room.to_owned()))?;
    Ok(name_key(&nfc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut ChatCodec, buf: &mut BytesMut) -> Vec<DecodedLine> {
        let mut out = Vec::new();
        while let Some(line) = codec.decode(buf).expect("decode never fails on bytes") {
            out.push(line);
        }
        out
    }

    fn ok(s: &str) -> DecodedLine {
        Ok(s.to_owned())
    }

    #[test]
    fn many_lines_in_one_read() {
        let mut codec = ChatCodec::default();
        let mut buf = BytesMut::from(&b"a\nbb\n\nccc\npartial"[..]);
        let lines = decode_all(&mut codec, &mut buf);
        assert_eq!(lines, vec![ok("a"), ok("bb"), ok(""), ok("ccc")]);
        assert_eq!(&buf[..], b"partial");
    }

    #[test]
    fn every_split_point_of_a_stream_decodes_the_same() {
        let stream = "hello\r\n你好，世界\nthird line\r\n\n".as_bytes();
        let expected = vec![ok("hello"), ok("你好，世界"), ok("third line"), ok("")];
        for split in 0..=stream.len() {
            let mut codec = ChatCodec::default();
            let mut buf = BytesMut::new();
            let mut lines = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                buf.extend_from_slice(part);
                lines.extend(decode_all(&mut codec, &mut buf));
            }
            assert_eq!(lines, expected, "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn crlf_and_lone_cr() {
        let mut codec = ChatCodec::default();
        let mut buf = BytesMut::from(&b"one\r\ntwo\r\r\n\r\n"[..]);
        // Only one trailing `\r` belongs to the terminator.
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            vec![ok("one"), ok("two\r"), ok("")]
        );
    }

    #[test]
    fn line_at_the_limit_is_accepted_with_either_terminator() {
        for term in [&b"\n"[..], b"\r\n"] {
            let mut codec = ChatCodec::new(8);
            let mut buf = BytesMut::from(&b"12345678"[..]);
            assert_eq!(decode_all(&mut codec, &mut buf), vec![]);
            buf.extend_from_slice(term);
            assert_eq!(decode_all(&mut codec, &mut buf), vec![ok("12345678")]);
        }
    }

    #[test]
    fn over_long_line_is_reported_once_and_discarded_without_buffering() {
        let mut codec = ChatCodec::new(8);
        let mut buf = BytesMut::from(&b"123456789"[..]);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            vec![Err(LineError::TooLong { limit: 8 })]
        );
        assert!(buf.is_empty() && codec.is_discarding());
        // The rest of the long line is dropped as it arrives.
        for _ in 0..1000 {
            buf.extend_from_slice(b"xxxxxxxxxxxxxxxx");
            assert_eq!(decode_all(&mut codec, &mut buf), vec![]);
            assert!(buf.is_empty());
        }
        buf.extend_from_slice(b"tail\nnext\n");
        assert_eq!(decode_all(&mut codec, &mut buf), vec![ok("next")]);
        assert!(!codec.is_discarding());
    }

    #[test]
    fn over_long_line_arriving_whole_is_reported() {
        let mut codec = ChatCodec::new(4);
        let mut buf = BytesMut::from(&b"toolong\nok\n"[..]);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            vec![Err(LineError::TooLong { limit: 4 }), ok("ok")]
        );
    }

    #[test]
    fn invalid_utf8_is_an_item_and_decoding_goes_on() {
        let mut codec = ChatCodec::default();
        let mut buf = BytesMut::from(&b"good\n\xff\xfe bad\nafter\n"[..]);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            vec![ok("good"), Err(LineError::InvalidUtf8), ok("after")]
        );
    }

    #[test]
    fn utf8_split_inside_a_character_is_fine() {
        let bytes = "你好\n".as_bytes();
        let mut codec = ChatCodec::default();
        let mut buf = BytesMut::new();
        let mut lines = Vec::new();
        for b in bytes {
            buf.extend_from_slice(&[*b]);
            lines.extend(decode_all(&mut codec, &mut buf));
        }
        assert_eq!(lines, vec![ok("你好")]);
    }

    #[test]
    fn take_partial_completes_an_unterminated_line() {
        let mut codec = ChatCodec::default();
        let mut buf = BytesMut::from(&b"done\nhello"[..]);
        assert_eq!(decode_all(&mut codec, &mut buf), vec![ok("done")]);
        assert!(codec.has_partial(&buf));
        assert_eq!(codec.take_partial(&mut buf), Some(ok("hello")));
        assert!(!codec.has_partial(&buf));
        assert_eq!(codec.take_partial(&mut buf), None);
        // Decoding resumes cleanly after a taken partial.
        buf.extend_from_slice(b"x\r");
        assert_eq!(codec.take_partial(&mut buf), Some(ok("x")));
        buf.extend_from_slice(b"\xc3");
        assert_eq!(
            codec.take_partial(&mut buf),
            Some(Err(LineError::InvalidUtf8))
        );
    }

    #[test]
    fn newline_is_remembered_for_the_pause_rule() {
        let mut codec = ChatCodec::default();
        let mut buf = BytesMut::from(&b"legacy"[..]);
        assert_eq!(decode_all(&mut codec, &mut buf), vec![]);
        assert!(!codec.has_seen_newline());
        buf.extend_from_slice(b"\n");
        assert_eq!(decode_all(&mut codec, &mut buf), vec![ok("legacy")]);
        assert!(codec.has_seen_newline());
    }

    #[test]
    fn partial_ending_inside_a_character_is_detected() {
        let codec = ChatCodec::default();
        let ni = "你".as_bytes();
        let smile = "😀".as_bytes();
        let cases: [(&[u8], bool); 9] = [
            (b"", false),
            (b"abc", false),
            (&ni[..1], true),
            (&ni[..2], true),
            (ni, false),
            (&smile[..3], true),
            (smile, false),
            (b"ab\xc3", true),
            // A stray continuation byte is invalid, not unfinished.
            (b"ab\x80", false),
        ];
        for (bytes, mid) in cases {
            assert_eq!(
                codec.partial_ends_mid_char(&BytesMut::from(bytes)),
                mid,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn take_partial_ends_a_discarded_line() {
        let mut codec = ChatCodec::new(2);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(decode_all(&mut codec, &mut buf).len(), 1);
        assert!(codec.has_partial(&buf));
        assert_eq!(codec.take_partial(&mut buf), None);
        buf.extend_from_slice(b"ok\n");
        assert_eq!(decode_all(&mut codec, &mut buf), vec![ok("ok")]);
    }

    #[test]
    fn decode_eof_returns_the_unterminated_last_line() {
        let mut codec = ChatCodec::default();
        let mut buf = BytesMut::from(&b"a\nq"[..]);
        assert_eq!(codec.decode_eof(&mut buf).expect("no io"), Some(ok("a")));
        assert_eq!(codec.decode_eof(&mut buf).expect("no io"), Some(ok("q")));
        assert_eq!(codec.decode_eof(&mut buf).expect("no io"), None);
    }

    #[test]
    fn server_lines_encode_to_their_wire_forms() {
        let cases = [
            (ServerLine::Welcome, "欢迎来到简单的聊天室..\n"),
            (ServerLine::Reply("hi"), "hi,你好\n"),
            (
                ServerLine::Chat {
                    from: "bob",
                    text: "yo",
                },
                "bob: yo\n",
            ),
            (
                ServerLine::Private {
                    from: "bob",
                    text: "psst",
                },
                "[pm] bob: psst\n",
            ),
            (ServerLine::Notice("bob joined"), "* bob joined\n"),
            (ServerLine::Ok("done"), "+ done\n"),
            (ServerLine::Error("no"), "! no\n"),
            (
                ServerLine::History {
                    time: "14:03",
                    from: "alice",
                    text: "hi",
                },
                "~ [14:03] alice: hi\n",
            ),
        ];
        for (line, wire) in cases {
            let mut codec = ChatCodec::default();
            let mut dst = BytesMut::new();
            codec.encode(line, &mut dst).expect("encoding never fails");
            assert_eq!(&dst[..], wire.as_bytes());
            assert_eq!(&line.to_bytes()[..], wire.as_bytes());
        }
        let mut dst = BytesMut::new();
        ChatCodec::default()
            .encode("plain", &mut dst)
            .expect("encoding never fails");
        assert_eq!(&dst[..], b"plain\n");
    }

    #[test]
    fn client_lines_parse() {
        use ClientLine::*;
        let cases = [
            ("", Ok(Empty)),
            ("q", Ok(Quit)),
            ("/quit", Ok(Quit)),
            ("hello", Ok(Message("hello"))),
            ("q ", Ok(Message("q "))),
            ("//etc", Ok(Message("/etc"))),
            ("/nick  alice ", Ok(Nick("alice"))),
            ("/nick", Err(CommandError::Usage("/nick NAME"))),
            ("/nick a b", Err(CommandError::Usage("/nick NAME"))),
            ("/join dev", Ok(Join("dev"))),
            ("/rooms", Ok(Rooms)),
            ("/who", Ok(Who)),
            ("/help", Ok(Help)),
            (
                "/msg bob hi there",
                Ok(Msg {
                    to: "bob",
                    text: "hi there",
                }),
            ),
            ("/msg bob", Err(CommandError::Usage("/msg NICK TEXT"))),
            ("/dance", Err(CommandError::Unknown("/dance".into()))),
        ];
        for (line, expected) in cases {
            assert_eq!(ClientLine::parse(line), expected, "{line:?}");
        }
    }

    #[test]
    fn names_are_unicode_nfc_and_case_blind() {
        assert_eq!(validate_nick("alice_1-x.y").as_deref(), Ok("alice_1-x.y"));
        assert_eq!(validate_nick("小明").as_deref(), Ok("小明"));
        assert_eq!(validate_nick(&"a".repeat(32)).map(|n| n.len()), Ok(32));
        // A decomposed é (e + U+0301) is stored composed.
        assert_eq!(validate_nick("Jose\u{301}").as_deref(), Ok("José"));
        for bad in [
            "",
            "a b",
            "a:b",
            "*x",
            "a\u{1b}",
            &"a".repeat(33),
            "x\u{202e}",
        ] {
            assert!(
                matches!(validate_nick(bad), Err(NameError::Nick(_))),
                "{bad:?}"
            );
        }
        for reserved in ["guest-7", "Guest-7", "GUEST-x"] {
            assert!(matches!(
                validate_nick(reserved),
                Err(NameError::Reserved(_))
            ));
        }
        assert_eq!(name_key("Alice"), name_key("alice"));
        assert_eq!(name_key("Straße"), name_key("STRASSE"));
        assert_eq!(name_key("José"), name_key("JOSE\u{301}"));
        assert_ne!(name_key("alice"), name_key("alicе")); // Cyrillic е
        assert_eq!(validate_room("Dev_1").as_deref(), Ok("dev_1"));
        assert_eq!(validate_room("房间").as_deref(), Ok("房间"));
        assert!(validate_room("").is_err());
        assert!(validate_room("a b").is_err());
        assert!(validate_room(&"r".repeat(33)).is_err());
    }

    #[test]
    fn commands_are_case_insensitive_and_blank_lines_are_empty() {
        assert_eq!(ClientLine::parse("/NICK x"), Ok(ClientLine::Nick("x")));
        assert_eq!(ClientLine::parse("/Join dev"), Ok(ClientLine::Join("dev")));
        assert_eq!(ClientLine::parse(" \t "), Ok(ClientLine::Empty));
        assert_eq!(
            ClientLine::parse("/history"),
            Ok(ClientLine::History(DEFAULT_HISTORY_REQUEST))
        );
        assert_eq!(ClientLine::parse("/HISTORY 5"), Ok(ClientLine::History(5)));
        assert_eq!(
            ClientLine::parse("/history x"),
            Err(CommandError::Usage("/history [N]"))
        );
        // `q` stays the tutorial's exact quit word.
        assert_eq!(ClientLine::parse("Q"), Ok(ClientLine::Message("Q")));
    }

    #[test]
    fn wrong_protocols_are_recognised() {
        assert!(looks_like_http("GET / HTTP/1.1"));
        assert!(looks_like_http("POST /x HTTP/1.0"));
        assert!(!looks_like_http("GET me a coffee"));
        assert!(!looks_like_http("get / HTTP/1.1"));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02]));
        assert!(!looks_like_tls(b"hello"));
        assert_eq!(count(1, "member", "members"), "1 member");
        assert_eq!(count(2, "member", "members"), "2 members");
    }

    proptest! {
        #[test]
        fn any_chunking_decodes_the_same_lines(
            lines in prop::collection::vec("[^\n\r]{0,40}", 0..20),
            crlf in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let term = if crlf { "\r\n" } else { "\n" };
            let stream: String = lines.iter().map(|l| format!("{l}{term}")).collect();
            let bytes = stream.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.push(0);
            points.push(bytes.len());
            points.sort_unstable();
            let mut codec = ChatCodec::new(1000);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for w in points.windows(2) {
                buf.extend_from_slice(&bytes[w[0]..w[1]]);
                got.extend(decode_all(&mut codec, &mut buf));
            }
            let expected: Vec<DecodedLine> = lines.iter().map(|l| Ok(l.clone())).collect();
            prop_assert_eq!(got, expected);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn any_bytes_never_grow_the_buffer_past_the_limit(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..40),
        ) {
            let mut codec = ChatCodec::new(16);
            let mut buf = BytesMut::new();
            for chunk in chunks {
                buf.extend_from_slice(&chunk);
                while let Some(line) = codec.decode(&mut buf).expect("no io") {
                    if let Ok(line) = line {
                        prop_assert!(line.len() <= 16);
                    }
                }
                prop_assert!(buf.len() <= 17);
            }
        }
    }
}
