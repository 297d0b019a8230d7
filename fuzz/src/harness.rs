//! The fuzz checks for the `proto` codecs, shared by the libFuzzer targets and
//! the stable corpus replay test (`crates/proto/tests/fuzz_corpus.rs`).
//!
//! Every check drives the real decoders the servers use, fed the way a socket
//! feeds them: the input's first bytes choose how the stream is cut into reads
//! (and, for the chat and legacy forms, where the sender pauses), so the
//! fuzzer explores split and glued frames as well as their content. A check
//! fails by panicking, which is how libFuzzer and `cargo test` both notice.
//!
//! Input layout shared by all checks:
//!
//! ```text
//! byte 0        a per-check parameter (line limit, decoder direction, ...)
//! byte 1        n = number of read descriptors (n % 16)
//! bytes 2..2+n  one descriptor per read: low 7 bits = read length,
//!               high bit = the sender pauses after this read
//! rest          the byte stream; what the descriptors do not cover is one last read
//! ```
//!
//! This file depends only on `proto`, `bytes` and `tokio-util`, which `proto`
//! itself depends on, so its integration test can include it by path.

use bytes::{Buf, BytesMut};
use proto::chat::{self, ChatCodec, ClientLine, DecodedLine, LineError, ServerLine};
use proto::upload::{
    self, ClientCodec, ClientMessage, Form, ServerCodec, ServerMessage, UploadError,
    MAX_LEGACY_DIGITS, MAX_MESSAGE_LEN, MAX_NAME_LEN, MAX_REASON_LEN, MAX_TOKEN_LEN,
};
use tokio_util::codec::Decoder;

/// One read of the simulated socket.
struct Read<'a> {
    bytes: &'a [u8],
    /// The sender goes quiet after this read (the session's pause timer fires).
    pause: bool,
}

/// Splits a fuzz input into its parameter byte and the reads of the stream.
fn reads(data: &[u8]) -> (u8, Vec<Read<'_>>) {
    let param = data.first().copied().unwrap_or(0);
    let n = usize::from(data.get(1).copied().unwrap_or(0) % 16);
    let descriptors = data.get(2..).unwrap_or(&[]);
    let n = n.min(descriptors.len());
    let (descriptors, mut stream) = descriptors.split_at(n);
    let mut out = Vec::with_capacity(n + 1);
    for &d in descriptors {
        let len = usize::from(d & 0x7f).min(stream.len());
        let (bytes, rest) = stream.split_at(len);
        out.push(Read {
            bytes,
            pause: d & 0x80 != 0,
        });
        stream = rest;
    }
    out.push(Read {
        bytes: stream,
        pause: false,
    });
    (param, out)
}

// ---------------------------------------------------------------- chat line

/// Chat line decoder: no panic, lines within the limit, memory bounded by the
/// limit, and the same lines as a simple reference model whatever the reads.
///
/// Byte 0 picks the line limit: below 128 it is `byte % 48` (small limits
/// reach the over-long paths quickly), otherwise the default
/// [`chat::MAX_LINE_LEN`].
pub fn chat_line(data: &[u8]) {
    let (param, reads) = reads(data);
    let max_len = if param < 128 {
        usize::from(param % 48)
    } else {
        chat::MAX_LINE_LEN
    };
    let mut codec = ChatCodec::new(max_len);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for read in &reads {
        buf.extend_from_slice(read.bytes);
        drain_lines(&mut codec, &mut buf, &mut got);
        if read.pause {
            if let Some(line) = codec.take_partial(&mut buf) {
                got.push(line);
            }
            assert!(buf.is_empty(), "take_partial left {} bytes", buf.len());
        }
    }
    // End of stream, as `FramedRead` ends it.
    while let Some(line) = codec
        .decode_eof(&mut buf)
        .expect("the chat decoder has no stream errors")
    {
        got.push(line);
    }
    let want = chat_reference(max_len, &reads);
    assert_eq!(got, want, "codec and reference disagree (limit {max_len})");
    for line in got.iter().flatten() {
        check_line_meaning(line);
    }
}

/// Decodes every complete line, checking the per-line and memory invariants.
fn drain_lines(codec: &mut ChatCodec, buf: &mut BytesMut, got: &mut Vec<DecodedLine>) {
    while let Some(line) = codec
        .decode(buf)
        .expect("the chat decoder has no stream errors")
    {
        if let Ok(text) = &line {
            assert!(
                text.len() <= codec.max_len(),
                "line of {} bytes passed the limit {}",
                text.len(),
                codec.max_len()
            );
            assert!(!text.contains('\n'), "decoded line holds a newline");
        }
        got.push(line);
    }
    // Whatever the peer sends, an unterminated line is held only while it can
    // still fit (the limit plus one byte for the `\r` of a CRLF).
    assert!(
        buf.len() <= codec.max_len() + 1,
        "{} bytes buffered with a limit of {}",
        buf.len(),
        codec.max_len()
    );
}

/// The chat framing rule written the obvious way (unbounded, per byte): a
/// line ends at `\n` or at a pause or at the end of stream, loses one
/// trailing `\r`, and is then checked for length and UTF-8.
fn chat_reference(max_len: usize, reads: &[Read<'_>]) -> Vec<DecodedLine> {
    let finish = |raw: &[u8]| -> DecodedLine {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.len() > max_len {
            return Err(LineError::TooLong { limit: max_len });
        }
        std::str::from_utf8(line)
            .map(str::to_owned)
            .map_err(|_| LineError::InvalidUtf8)
    };
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for read in reads {
        for &b in read.bytes {
            if b == b'\n' {
                out.push(finish(&cur));
                cur.clear();
            } else {
                cur.push(b);
            }
        }
        if read.pause && !cur.is_empty() {
            out.push(finish(&cur));
            cur.clear();
        }
    }
    if !cur.is_empty() {
        out.push(finish(&cur));
    }
    out
}

/// What the server does with a decoded line must not panic either, and the
/// reply it sends must decode back to the same text.
fn check_line_meaning(line: &str) {
    match ClientLine::parse(line) {
        Ok(ClientLine::Nick(nick)) => {
            if let Ok(nfc) = chat::validate_nick(nick) {
                assert!(nfc.chars().count() <= chat::MAX_NAME_CHARS);
                assert!(chat::check_text(&nfc).is_ok());
            }
        }
        Ok(ClientLine::Join(room)) => {
            if let Ok(folded) = chat::validate_room(room) {
                assert!(chat::check_text(&folded).is_ok());
                assert_eq!(chat::name_key(&folded), folded);
            }
        }
        Ok(ClientLine::Message(text)) => {
            assert!(line.ends_with(text), "message is not the line's tail");
            let mut wire = BytesMut::new();
            ServerLine::Reply(text).encode(&mut wire);
            let mut codec = ChatCodec::new(text.len() + chat::REPLY_SUFFIX.len());
            let back = codec
                .decode(&mut wire)
                .expect("the chat decoder has no stream errors");
            assert_eq!(back, Some(Ok(format!("{text}{}", chat::REPLY_SUFFIX))));
        }
        Ok(ClientLine::Msg { to, text }) => {
            assert!(!to.is_empty() && !text.is_empty());
        }
        Ok(_) | Err(_) => {}
    }
}

// ------------------------------------------------------------ upload frames

/// What a decoding run produced, compared between the chunked and the
/// one-read runs.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A decoded control message (as its `Debug` text, so both directions fit).
    Message(String),
    /// A raw body of this many bytes followed a `Start` (short at end of stream).
    Body(u64),
    /// The decoder refused the stream (as its `Display` text).
    Error(String),
}

/// Upload control-message decoders: no panic, a partial frame never holds
/// more than one maximal frame, a message re-encodes to the bytes it came
/// from, and the reads do not change the outcome.
///
/// Byte 0, bit 0 picks the direction: 0 = `ServerCodec` reading a client
/// (with the raw body after each `Start`, taken from the same buffer first as
/// `up-srv` does), 1 = `ClientCodec` reading a server.
pub fn upload_frames(data: &[u8]) {
    let (param, chunked) = reads(data);
    let client_side = param & 1 == 1;
    let whole: Vec<u8> = chunked
        .iter()
        .flat_map(|r| r.bytes.iter().copied())
        .collect();
    let one = [Read {
        bytes: &whole,
        pause: false,
    }];
    let (a, b) = if client_side {
        (
            run_frames(ClientCodec, &chunked, reencode_server),
            run_frames(ClientCodec, &one, reencode_server),
        )
    } else {
        (
            run_frames(ServerCodec, &chunked, reencode_client),
            run_frames(ServerCodec, &one, reencode_client),
        )
    };
    assert_eq!(a, b, "the reads changed the decoded messages");
}

/// What a decoded message means for the raw body framing.
enum BodyHint {
    /// Nothing.
    None,
    /// An `Offer`: the file's total size.
    Size(u64),
    /// A `Start`: `size - offset` raw bytes follow.
    Offset(u64),
    /// A `Put`: this many raw bytes follow.
    Whole(u64),
}

/// Re-encodes a client message when its fields are within the encoder's
/// limits (the decoder is looser: it only bounds the whole frame).
fn reencode_client(msg: &ClientMessage) -> (Option<BytesMut>, BodyHint) {
    let (fits, hint) = match msg {
        ClientMessage::Hello { token, .. } => (token.len() <= MAX_TOKEN_LEN, BodyHint::None),
        ClientMessage::Offer { name, size } => (name.len() <= MAX_NAME_LEN, BodyHint::Size(*size)),
        ClientMessage::Start { offset } => (true, BodyHint::Offset(*offset)),
        ClientMessage::Finish { .. } | ClientMessage::Skip | ClientMessage::Proceed => {
            (true, BodyHint::None)
        }
        ClientMessage::List { prefix } => (prefix.len() <= MAX_NAME_LEN, BodyHint::None),
        // The bytes after a get's start flow from the server: none follow here.
        ClientMessage::Get { name } => (name.len() <= MAX_NAME_LEN, BodyHint::Size(0)),
        ClientMessage::Hash { algorithm } => (algorithm.len() <= MAX_NAME_LEN, BodyHint::None),
        // A put's whole body follows its frame at once.
        ClientMessage::Put { name, size } => (name.len() <= MAX_NAME_LEN, BodyHint::Whole(*size)),
        ClientMessage::Check { name, .. } => (name.len() <= MAX_NAME_LEN, BodyHint::None),
    };
    (fits.then(|| encode(|out| msg.encode_into(out))), hint)
}

/// Re-encodes a server message when its fields are within the encoder's limits.
fn reencode_server(msg: &ServerMessage) -> (Option<BytesMut>, BodyHint) {
    let fits = match msg {
        ServerMessage::Stored { name, .. } | ServerMessage::Entry { name, .. } => {
            name.len() <= MAX_NAME_LEN
        }
        ServerMessage::Refuse { reason, .. } => reason.len() <= MAX_REASON_LEN,
        ServerMessage::Welcome { .. }
        | ServerMessage::Accept { .. }
        | ServerMessage::Present { .. }
        | ServerMessage::ListEnd { .. }
        | ServerMessage::Sending { .. }
        | ServerMessage::Missing => true,
    };
    (
        fits.then(|| encode(|out| msg.encode_into(out))),
        BodyHint::None,
    )
}

fn encode(f: impl FnOnce(&mut BytesMut) -> Result<(), UploadError>) -> BytesMut {
    let mut out = BytesMut::new();
    f(&mut out).expect("fields within the limits encode");
    out
}

/// Feeds `reads` to `codec` the way a session does and records what came out.
///
/// `reencode` returns the canonical encoding of a message (`None` when the
/// message is beyond the encoder's field limits) and its body hint.
fn run_frames<C, M>(
    mut codec: C,
    reads: &[Read<'_>],
    reencode: fn(&M) -> (Option<BytesMut>, BodyHint),
) -> Vec<Event>
where
    C: Decoder<Item = M, Error = UploadError>,
    M: std::fmt::Debug,
{
    let mut events = Vec::new();
    let mut buf = BytesMut::new();
    let mut offered: u64 = 0;
    let mut body_left: u64 = 0;
    let mut body_len: u64 = 0;
    for read in reads {
        buf.extend_from_slice(read.bytes);
        loop {
            if body_left > 0 {
                let take = body_left.min(buf.len() as u64);
                buf.advance(usize::try_from(take).expect("bounded by the buffer length"));
                body_left -= take;
                body_len += take;
                if body_left > 0 {
                    break;
                }
                events.push(Event::Body(body_len));
                body_len = 0;
            }
            let before = buf.clone();
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => {
                    let consumed = &before[..before.len() - buf.len()];
                    let (canonical, hint) = reencode(&msg);
                    if let Some(canonical) = canonical {
                        assert_eq!(
                            &canonical[..],
                            consumed,
                            "{msg:?} does not re-encode to its frame"
                        );
                    }
                    events.push(Event::Message(format!("{msg:?}")));
                    match hint {
                        BodyHint::Size(size) => offered = size,
                        BodyHint::Offset(offset) => {
                            body_left = offered.saturating_sub(offset);
                            if body_left == 0 {
                                events.push(Event::Body(0));
                            }
                        }
                        BodyHint::Whole(size) => {
                            body_left = size;
                            if body_left == 0 {
                                events.push(Event::Body(0));
                            }
                        }
                        BodyHint::None => {}
                    }
                }
                Ok(None) => {
                    // A frame still incomplete never needs more than one
                    // maximal frame of buffer, whatever its prefix declared.
                    assert!(
                        buf.len() < 4 + MAX_MESSAGE_LEN,
                        "{} bytes buffered for one frame",
                        buf.len()
                    );
                    assert!(
                        buf.capacity() <= 4 * (4 + MAX_MESSAGE_LEN) + read.bytes.len() * 2,
                        "buffer capacity {} for a partial frame",
                        buf.capacity()
                    );
                    break;
                }
                Err(e) => {
                    events.push(Event::Error(e.to_string()));
                    return events;
                }
            }
        }
    }
    if body_left > 0 || body_len > 0 {
        events.push(Event::Body(body_len));
    }
    events
}

// -------------------------------------------------------------- legacy form

/// Connection-form detection and the legacy size header: no panic, decisions
/// that never change as bytes arrive, sizes equal to the decimal digits,
/// and a header buffer that stays within a few bytes.
pub fn legacy_form(data: &[u8]) {
    let (_, reads) = reads(data);
    let whole: Vec<u8> = reads.iter().flat_map(|r| r.bytes.iter().copied()).collect();

    // Form detection is decided by the first bytes and then final.
    let mut decided: Option<Form> = None;
    for end in 0..=whole.len().min(64) {
        let form = upload::detect(&whole[..end]);
        match decided {
            Some(d) => assert_eq!(form, d, "form changed at {end} bytes"),
            None if form != Form::NeedMore => decided = Some(form),
            None => {}
        }
        let expected = match whole[..end].first() {
            None => Form::NeedMore,
            Some(b) if b.is_ascii_digit() => Form::Legacy,
            Some(_) if whole[..end].starts_with(&upload::MAGIC) => Form::Binary,
            Some(_) if upload::MAGIC.starts_with(&whole[..end]) => Form::NeedMore,
            Some(_) => Form::Unknown,
        };
        assert_eq!(form, expected, "detect({:?})", &whole[..end]);
    }

    // A complete header stays complete, with the same value, as bytes arrive.
    let mut first: Option<Result<(u64, usize), String>> = None;
    for end in 0..=whole.len().min(64) {
        let prefix = &whole[..end];
        let now = upload::parse_legacy_size(prefix, false);
        let paused = upload::parse_legacy_size(prefix, true);
        check_legacy_value(prefix, &now);
        check_legacy_value(prefix, &paused);
        if let Ok(Some(v)) = &now {
            assert_eq!(
                paused.as_ref().ok(),
                Some(&Some(*v)),
                "a pause changed the size"
            );
        }
        let now = match now {
            Ok(None) => None,
            Ok(Some(v)) => Some(Ok(v)),
            Err(e) => Some(Err(e.to_string())),
        };
        match (&first, now) {
            (Some(f), Some(n)) => assert_eq!(f, &n, "the header result changed at {end} bytes"),
            (Some(f), None) => panic!("{f:?} became incomplete at {end} bytes"),
            (None, n) => first = n,
        }
    }

    // The session's loop: parse after each read, and with `paused` after a
    // pause; the buffer only grows while the header is incomplete.
    let mut buf = Vec::new();
    for read in &reads {
        buf.extend_from_slice(read.bytes);
        match upload::parse_legacy_size(&buf, false) {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => assert!(
                buf.len() <= MAX_LEGACY_DIGITS + 1,
                "{} bytes held for an incomplete legacy header",
                buf.len()
            ),
        }
        if read.pause && !matches!(upload::parse_legacy_size(&buf, true), Ok(None)) {
            return;
        }
    }
}

/// A complete legacy header consumed what it may and holds the digits' value.
fn check_legacy_value(buf: &[u8], r: &Result<Option<(u64, usize)>, UploadError>) {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if let Ok(Some((size, consumed))) = r {
        assert!(*consumed <= buf.len() && *consumed >= digits && *consumed <= digits + 2);
        let text = std::str::from_utf8(&buf[..digits]).expect("ASCII digits");
        assert_eq!(text.parse::<u64>().ok(), Some(*size), "size of {text:?}");
    }
}
