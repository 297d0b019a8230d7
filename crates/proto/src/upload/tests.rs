//! Unit tests of the upload codec: round trips, every split point, limits,
//! legacy detection and arbitrary chunking.

use super::*;
use proptest::prelude::*;

fn client_samples() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Hello {
            version: VERSION,
            token: String::new(),
        },
        ClientMessage::Hello {
            version: 7,
            token: "s3cret-ü".into(),
        },
        ClientMessage::Offer {
            name: "photos/sub/b.png".into(),
            size: 5 * 1024 * 1024 * 1024 + 3,
        },
        ClientMessage::Offer {
            name: String::new(),
            size: 0,
        },
        ClientMessage::Start { offset: 0 },
        ClientMessage::Start { offset: u64::MAX },
        ClientMessage::Finish { sha256: [0xab; 32] },
        ClientMessage::Skip,
        ClientMessage::Proceed,
        ClientMessage::List {
            prefix: String::new(),
        },
        ClientMessage::List {
            prefix: "photos/".into(),
        },
        ClientMessage::Get {
            name: "photos/a b.jpg".into(),
        },
        ClientMessage::Hash {
            algorithm: "blake3".into(),
        },
        ClientMessage::Put {
            name: "photos/small.png".into(),
            size: MAX_PUT_SIZE,
        },
        ClientMessage::Check {
            name: "photos/small.png".into(),
            size: 0,
        },
    ]
}

fn server_samples() -> Vec<ServerMessage> {
    vec![
        ServerMessage::Welcome {
            version: VERSION,
            token_checked: true,
        },
        ServerMessage::Welcome {
            version: 2,
            token_checked: false,
        },
        ServerMessage::Welcome {
            version: 1,
            token_checked: false,
        },
        ServerMessage::Accept {
            offset: 4 << 20,
            prefix_sha256: [7; 32],
        },
        ServerMessage::Stored {
            name: "photo (1).jpg".into(),
            sha256: [1; 32],
        },
        ServerMessage::Missing,
        ServerMessage::Refuse {
            code: RefusalCode::BadName,
            reason: "name contains '..'".into(),
        },
        ServerMessage::Refuse {
            code: RefusalCode::Other(999),
            reason: String::new(),
        },
        ServerMessage::Present { sha256: [9; 32] },
        ServerMessage::Entry {
            name: "photos/a.jpg".into(),
            size: 39 << 20,
            mtime: 1_700_000_000,
            sha256: [3; 32],
        },
        ServerMessage::ListEnd { count: 2 },
        ServerMessage::Sending {
            size: 7,
            sha256: [4; 32],
        },
    ]
}

fn encode_client(msgs: &[ClientMessage]) -> BytesMut {
    let mut buf = BytesMut::new();
    for m in msgs {
        ClientCodec
            .encode(m.clone(), &mut buf)
            .expect("encodable sample");
    }
    buf
}

fn decode_all_server_side(stream: &[u8], chunks: &[usize]) -> Vec<ClientMessage> {
    let mut codec = ServerCodec;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut feed = |n: usize, buf: &mut BytesMut| {
        let end = (pos + n).min(stream.len());
        buf.extend_from_slice(&stream[pos..end]);
        pos = end;
    };
    for &c in chunks {
        feed(c, &mut buf);
        while let Some(m) = codec.decode(&mut buf).expect("valid stream") {
            out.push(m);
        }
    }
    feed(stream.len(), &mut buf);
    while let Some(m) = codec.decode(&mut buf).expect("valid stream") {
        out.push(m);
    }
    assert!(buf.is_empty(), "no bytes left over");
    out
}

#[test]
fn client_messages_round_trip() {
    for m in client_samples() {
        let mut buf = encode_client(std::slice::from_ref(&m));
        let got = ServerCodec.decode(&mut buf).expect("decodes");
        assert_eq!(got, Some(m));
        assert!(buf.is_empty());
    }
}

#[test]
fn server_messages_round_trip() {
    for m in server_samples() {
        let mut buf = BytesMut::new();
        ServerCodec.encode(m.clone(), &mut buf).expect("encodes");
        let got = ClientCodec.decode(&mut buf).expect("decodes");
        assert_eq!(got, Some(m));
        assert!(buf.is_empty());
    }
}

#[test]
fn every_split_point_of_a_stream_decodes_the_same() {
    let msgs = client_samples();
    let stream = encode_client(&msgs);
    for split in 0..=stream.len() {
        let got = decode_all_server_side(&stream, &[split]);
        assert_eq!(got, msgs, "split at {split}");
    }
}

#[test]
fn byte_by_byte_decoding_yields_nothing_until_complete() {
    let m = ClientMessage::Offer {
        name: "a.txt".into(),
        size: 3,
    };
    let stream = encode_client(std::slice::from_ref(&m));
    let mut buf = BytesMut::new();
    for (i, b) in stream.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = ServerCodec.decode(&mut buf).expect("valid prefix");
        if i + 1 < stream.len() {
            assert_eq!(got, None, "complete too early at byte {i}");
        } else {
            assert_eq!(got, Some(m.clone()));
        }
    }
}

#[test]
fn body_bytes_glued_after_start_stay_in_the_buffer() {
    let mut buf = encode_client(&[ClientMessage::Start { offset: 2 }]);
    buf.extend_from_slice(b"BODY");
    let got = ServerCodec.decode(&mut buf).expect("decodes");
    assert_eq!(got, Some(ClientMessage::Start { offset: 2 }));
    assert_eq!(&buf[..], b"BODY");
}

#[test]
fn truncated_frames_need_more_and_consume_nothing() {
    let stream = encode_client(&client_samples()[2..3]);
    for cut in 0..stream.len() {
        let mut buf = BytesMut::from(&stream[..cut]);
        assert_eq!(ServerCodec.decode(&mut buf).expect("prefix is valid"), None);
        assert_eq!(buf.len(), cut, "cut {cut} consumed bytes");
    }
}

#[test]
fn oversized_frame_is_refused_before_allocating() {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::MAX);
    buf.put_u8(T_OFFER);
    let cap_before = buf.capacity();
    let err = ServerCodec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, UploadError::MessageTooLong { len, .. } if len == u32::MAX as usize));
    assert!(buf.capacity() <= cap_before.max(64), "no reservation made");

    let mut buf = BytesMut::new();
    buf.put_u32((MAX_MESSAGE_LEN + 1) as u32);
    assert!(matches!(
        ServerCodec.decode(&mut buf),
        Err(UploadError::MessageTooLong { .. })
    ));
}

#[test]
fn empty_and_unknown_frames_are_errors() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert!(matches!(
        ServerCodec.decode(&mut buf),
        Err(UploadError::EmptyMessage)
    ));
    let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0x7f][..]);
    assert!(matches!(
        ServerCodec.decode(&mut buf),
        Err(UploadError::UnknownType(0x7f))
    ));
    // A server message sent to the server is unknown there.
    let mut buf = BytesMut::new();
    ServerCodec
        .encode(
            ServerMessage::Welcome {
                version: 1,
                token_checked: false,
            },
            &mut buf,
        )
        .expect("encodes");
    assert!(matches!(
        ServerCodec.decode(&mut buf),
        Err(UploadError::UnknownType(T_WELCOME))
    ));
}

#[test]
fn malformed_payloads_are_errors() {
    // Offer with a name length pointing past the payload.
    let mut buf = BytesMut::new();
    buf.put_u32(1 + 8 + 2 + 1);
    buf.put_u8(T_OFFER);
    buf.put_u64(5);
    buf.put_u16(10);
    buf.put_u8(b'a');
    assert!(matches!(
        ServerCodec.decode(&mut buf),
        Err(UploadError::Malformed { .. })
    ));
    // Start with trailing bytes.
    let mut buf = BytesMut::new();
    buf.put_u32(1 + 8 + 1);
    buf.put_u8(T_START);
    buf.put_u64(5);
    buf.put_u8(0);
    assert!(matches!(
        ServerCodec.decode(&mut buf),
        Err(UploadError::Malformed { .. })
    ));
    // Offer with a name that is not UTF-8.
    let mut buf = BytesMut::new();
    buf.put_u32(1 + 8 + 2 + 2);
    buf.put_u8(T_OFFER);
    buf.put_u64(5);
    buf.put_u16(2);
    buf.put_slice(&[0xff, 0xfe]);
    assert!(matches!(
        ServerCodec.decode(&mut buf),
        Err(UploadError::InvalidUtf8 { field: "name" })
    ));
}

#[test]
fn overlong_fields_are_refused_when_encoding() {
    let mut buf = BytesMut::new();
    let err = ClientCodec
        .encode(
            ClientMessage::Offer {
                name: "a".repeat(MAX_NAME_LEN + 1),
                size: 1,
            },
            &mut buf,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        UploadError::FieldTooLong { field: "name", .. }
    ));
    assert!(buf.is_empty(), "nothing half-written");
    // A long reason is truncated, not refused, so refusals always go out.
    ServerCodec
        .encode(
            ServerMessage::Refuse {
                code: RefusalCode::BadName,
                reason: "é".repeat(MAX_REASON_LEN),
            },
            &mut buf,
        )
        .expect("reason truncated");
    match ClientCodec.decode(&mut buf).expect("decodes") {
        Some(ServerMessage::Refuse { reason, .. }) => assert!(reason.len() <= MAX_REASON_LEN),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn refusal_codes_round_trip() {
    for v in 0..=60u16 {
        assert_eq!(RefusalCode::from_u16(v).to_u16(), v);
    }
    assert_eq!(RefusalCode::from_u16(41), RefusalCode::NotFound);
    assert_eq!(RefusalCode::Busy.label(), "busy");
    assert_eq!(RefusalCode::from_u16(33), RefusalCode::HeaderTooSlow);
    assert_eq!(RefusalCode::from_u16(34), RefusalCode::BodyTooSlow);
}

#[test]
fn refusals_that_close_the_connection_are_the_out_of_sync_ones() {
    let closing: Vec<u16> = (0..=60u16)
        .map(RefusalCode::from_u16)
        .filter(|c| !matches!(c, RefusalCode::Other(_)) && c.closes_connection())
        .map(RefusalCode::to_u16)
        .collect();
    assert_eq!(closing, [1, 2, 3, 21, 30, 31, 32, 33, 34]);
    assert!(!RefusalCode::DigestMismatch.closes_connection());
    assert!(
        RefusalCode::Other(999).closes_connection(),
        "unknown: assume closed"
    );
}

#[test]
fn detect_distinguishes_legacy_binary_and_unknown() {
    assert_eq!(detect(b""), Form::NeedMore);
    assert_eq!(detect(b"1"), Form::Legacy);
    assert_eq!(detect(b"0123"), Form::Legacy);
    assert_eq!(detect(&MAGIC[..1]), Form::NeedMore);
    assert_eq!(detect(&MAGIC[..3]), Form::NeedMore);
    assert_eq!(detect(&MAGIC), Form::Binary);
    assert_eq!(detect(&[0x89, b'U', b'P', b'L', 0, 0]), Form::Binary);
    assert_eq!(detect(&[0x89, b'X']), Form::Unknown);
    assert_eq!(detect(b"GET / HTTP/1.1"), Form::Unknown);
    assert_eq!(detect(b" 12"), Form::Unknown);
    assert!(MAGIC[0] >= 0x80, "the magic cannot start like text");
}

#[test]
fn legacy_size_parsing() {
    assert_eq!(parse_legacy_size(b"1234", false).unwrap(), None);
    assert_eq!(parse_legacy_size(b"1234", true).unwrap(), Some((1234, 4)));
    assert_eq!(
        parse_legacy_size(b"1234\n", false).unwrap(),
        Some((1234, 5))
    );
    assert_eq!(
        parse_legacy_size(b"1234\r\n", false).unwrap(),
        Some((1234, 6))
    );
    assert_eq!(parse_legacy_size(b"1234\r", false).unwrap(), None);
    assert_eq!(parse_legacy_size(b"1234\r", true).unwrap(), Some((1234, 5)));
    assert_eq!(parse_legacy_size(b"0\nxyz", false).unwrap(), Some((0, 2)));
    assert_eq!(
        parse_legacy_size(b"18446744073709551615", true).unwrap(),
        Some((u64::MAX, 20))
    );
    assert!(matches!(
        parse_legacy_size(b"18446744073709551616", true),
        Err(UploadError::LegacySizeTooLarge)
    ));
    assert!(matches!(
        parse_legacy_size(b"123456789012345678901", false),
        Err(UploadError::LegacySizeTooLarge)
    ));
    assert!(matches!(
        parse_legacy_size(b"12x", false),
        Err(UploadError::LegacyUnexpectedByte(b'x'))
    ));
    assert!(matches!(
        parse_legacy_size(b"\n", false),
        Err(UploadError::LegacyEmpty)
    ));
}

#[test]
fn hex_matches_sha256sum_spelling() {
    let mut d = [0u8; 32];
    d[0] = 0x0f;
    d[31] = 0xa0;
    let h = hex(&d);
    assert_eq!(h.len(), 64);
    assert!(h.starts_with("0f00"));
    assert!(h.ends_with("00a0"));
}

proptest! {
    #[test]
    fn any_chunking_decodes_the_same(
        names in proptest::collection::vec("[a-zA-Z0-9/ ._-]{0,40}", 1..6),
        sizes in proptest::collection::vec(any::<u64>(), 6),
        cuts in proptest::collection::vec(0usize..64, 0..40),
    ) {
        let mut msgs = vec![ClientMessage::Hello { version: VERSION, token: "t".into() }];
        for (name, size) in names.iter().zip(&sizes) {
            msgs.push(ClientMessage::Offer { name: name.clone(), size: *size });
            msgs.push(ClientMessage::Start { offset: size / 2 });
            msgs.push(ClientMessage::Finish { sha256: [(*size % 251) as u8; 32] });
        }
        let stream = encode_client(&msgs);
        let got = decode_all_server_side(&stream, &cuts);
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn legacy_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32), paused in any::<bool>()) {
        if let Ok(Some((_, consumed))) = parse_legacy_size(&bytes, paused) {
            prop_assert!(consumed <= bytes.len());
        }
    }
}
