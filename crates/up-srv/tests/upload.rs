//! Binary-protocol integration tests: the server runs in-process on port 0
//! with a temp upload dir and a bare client drives the wire.

use std::time::Duration;

use crate::common::{
    data, sha256, start_server, start_server_in, start_server_with, within, Client,
};
use proto::upload::{ClientMessage, RefusalCode, ServerMessage, MAGIC};
use tokio::io::AsyncReadExt;

fn expect_stored(answer: ServerMessage) -> (String, [u8; 32]) {
    match answer {
        ServerMessage::Stored { name, sha256 } => (name, sha256),
        other => panic!("expected stored, got {other:?}"),
    }
}

fn expect_refused(answer: ServerMessage, code: RefusalCode) -> String {
    match answer {
        ServerMessage::Refuse { code: c, reason } if c == code => reason,
        other => panic!("expected refusal {code:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sizes_are_stored_with_the_same_sha256() {
    let server = start_server().await;
    for (i, len) in [0usize, 1, 1023, 1024, 1025, 10 << 20]
        .into_iter()
        .enumerate()
    {
        let body = data(len, i as u8);
        let name = format!("f{len}.bin");
        let mut c = Client::connect(server.addr).await;
        let (stored, digest) = expect_stored(c.upload(&name, &body).await);
        assert_eq!(stored, name);
        assert_eq!(digest, sha256(&body));
        assert_eq!(sha256(&server.read(&name)), sha256(&body), "{name}");
    }
    assert_eq!(server.stored().len(), 6);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_files_on_one_connection() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    for name in ["a.txt", "dir/b.txt", "dir/sub/c.txt"] {
        let body = data(3000, name.len() as u8);
        let (stored, _) = expect_stored(c.upload(name, &body).await);
        assert_eq!(stored, name);
        assert_eq!(server.read(name), body);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_trailer_digest_stores_nothing_and_connection_survives() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    let body = data(100_000, 3);
    assert!(matches!(
        c.offer("x.bin", body.len() as u64).await,
        ServerMessage::Accept { offset: 0, .. }
    ));
    let reason = expect_refused(
        c.body_and_finish(&body, 0, [0u8; 32]).await,
        RefusalCode::DigestMismatch,
    );
    assert!(reason.contains("nothing was stored"), "{reason}");
    assert!(server.stored().is_empty());
    assert!(
        server.partials().is_empty(),
        "no partial kept: {:?}",
        server.partials()
    );
    // The same connection can still upload.
    expect_stored(c.upload("y.bin", &body).await);
    assert_eq!(server.stored(), vec!["y.bin"]);
    server.stop().await;
}

/// Offers until the server has released the previous connection's claim.
async fn offer_when_free(
    server: &crate::common::TestServer,
    name: &str,
    size: u64,
) -> (Client, ServerMessage) {
    within(async {
        loop {
            let mut c = Client::connect(server.addr).await;
            match c.offer(name, size).await {
                ServerMessage::Refuse {
                    code: RefusalCode::Busy,
                    ..
                } => tokio::time::sleep(Duration::from_millis(10)).await,
                answer => return (c, answer),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_transfer_keeps_nothing_final_and_resume_sends_only_the_rest() {
    let server = start_server().await;
    let body = data(3 << 20, 9);
    let half = body.len() / 2;
    {
        let mut c = Client::connect(server.addr).await;
        assert!(matches!(
            c.offer("big.bin", body.len() as u64).await,
            ServerMessage::Accept { offset: 0, .. }
        ));
        c.send(ClientMessage::Start { offset: 0 }).await;
        c.raw(&body[..half]).await;
        // Dropping the client closes the connection mid-body.
    }
    let (mut c, answer) = offer_when_free(&server, "big.bin", body.len() as u64).await;
    assert!(server.stored().is_empty(), "nothing under a final name");
    match answer {
        ServerMessage::Accept {
            offset,
            prefix_sha256,
        } => {
            assert_eq!(offset, half as u64, "server kept exactly what was sent");
            assert_eq!(prefix_sha256, sha256(&body[..half]));
        }
        other => panic!("expected accept, got {other:?}"),
    }
    // Send only the missing part; the digest still covers the whole file.
    let (stored, digest) =
        expect_stored(c.body_and_finish(&body, half as u64, sha256(&body)).await);
    assert_eq!(stored, "big.bin");
    assert_eq!(digest, sha256(&body));
    assert_eq!(server.read("big.bin"), body);
    assert!(server.partials().is_empty(), "{:?}", server.partials());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_may_restart_from_zero_when_the_prefix_differs() {
    let server = start_server().await;
    let old = data(10_000, 1);
    let new = data(10_000, 2);
    {
        let mut c = Client::connect(server.addr).await;
        c.offer("r.bin", 10_000).await;
        c.send(ClientMessage::Start { offset: 0 }).await;
        c.raw(&old[..4000]).await;
    }
    let (mut c, answer) = offer_when_free(&server, "r.bin", 10_000).await;
    let ServerMessage::Accept {
        offset,
        prefix_sha256,
    } = answer
    else {
        panic!("expected accept, got {answer:?}");
    };
    assert_eq!(offset, 4000);
    assert_ne!(
        prefix_sha256,
        sha256(&new[..4000]),
        "client sees a different prefix"
    );
    expect_stored(c.body_and_finish(&new, 0, sha256(&new)).await);
    assert_eq!(server.read("r.bin"), new);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_refused_with_a_reason() {
    let server = start_server().await;
    let long_component = "a".repeat(256);
    let long_total = format!("{}/x", ["dir"; 300].join("/"));
    let deep = format!("{}x", "d/".repeat(40));
    let table: Vec<(&str, &str)> = vec![
        ("", "empty name"),
        ("..", "'..'"),
        ("../escape", "'..'"),
        ("a/../../b", "'..'"),
        ("./a", "'.'"),
        ("a/./b", "'.'"),
        ("/etc/passwd", "absolute"),
        ("//server/share", "absolute"),
        ("a\\b", "is not accepted in names"),
        ("..\\..\\win", "is not accepted in names"),
        ("nul\0byte", "control character U+0000"),
        ("line\nbreak", "control character U+000A"),
        ("tab\there", "control character U+0009"),
        ("esc\u{1b}[31m", "control character U+001B"),
        ("del\u{7f}", "control character U+007F"),
        (
            "\u{202e}evil\u{202d}gpj.exe",
            "bidirectional control U+202E",
        ),
        ("c1\u{85}next", "control character U+0085"),
        ("a:b", "is not accepted in names"),
        ("what?.txt", "is not accepted in names"),
        ("dots.", "ends with a dot or a space"),
        ("a//b", "empty path component"),
        ("dir/", "empty path component"),
        (&long_component, "limit 255"),
        (&long_total, "limit 1024"),
        (&deep, "nests more than"),
        ("CON", "reserved device name"),
        ("prn.txt", "reserved device name"),
        ("dir/aux.tar.gz", "reserved device name"),
        ("COM1", "reserved device name"),
        ("lpt9.log", "reserved device name"),
        (".partial", "reserved for partial uploads"),
        (".partial/x.data", "reserved for partial uploads"),
        (".partial-evil", "reserved for partial uploads"),
    ];
    assert!(table.len() >= 20);
    let mut c = Client::connect(server.addr).await;
    for (name, why) in &table {
        let reason = expect_refused(c.offer(name, 1).await, RefusalCode::BadName);
        assert!(
            reason.contains(why),
            "{name:?}: reason {reason:?} lacks {why:?}"
        );
    }
    assert!(server.stored().is_empty());
    // The connection survived every refusal.
    expect_stored(c.upload("fine.txt", b"ok").await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_inside_the_upload_dir_are_not_followed() {
    let server = start_server().await;
    let outside = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(outside.path(), server.dir.join("link")).expect("symlink");
    let mut c = Client::connect(server.addr).await;
    expect_refused(
        c.upload("link/evil.txt", b"x").await,
        RefusalCode::StorageError,
    );
    assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_uploads() {
    let server = start_server().await;
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let body = data(200_000 + usize::from(i) * 1000, i);
            let mut c = Client::connect(addr).await;
            let (name, digest) = expect_stored(c.upload(&format!("c{i}.bin"), &body).await);
            assert_eq!(digest, sha256(&body));
            (name, body)
        }));
    }
    for t in tasks {
        let (name, body) = within(t).await.expect("upload task");
        assert_eq!(server.read(&name), body);
    }
    assert_eq!(server.stored().len(), 20);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_right_wrong_and_missing() {
    let server = start_server_with(|c| c.token = Some("s3cret".into())).await;
    let (_c, answer) = Client::hello(server.addr, "").await;
    let reason = expect_refused(answer, RefusalCode::Unauthorized);
    assert!(reason.contains("requires a token"), "{reason}");

    let (mut c, answer) = Client::hello(server.addr, "wrong").await;
    expect_refused(answer, RefusalCode::Unauthorized);
    // After the refusal the server closes; an offer gets nothing written.
    c.send(ClientMessage::Offer {
        name: "x".into(),
        size: 1,
    })
    .await;
    assert_eq!(c.recv().await, None);
    assert!(server.stored().is_empty());
    assert!(server.partials().is_empty());

    let (mut c, answer) = Client::hello(server.addr, "s3cret").await;
    assert!(matches!(answer, ServerMessage::Welcome { .. }));
    expect_stored(c.upload("ok.txt", b"fine").await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_names_get_a_suffix_unless_overwrite() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    let mut names = Vec::new();
    for i in 0..3u8 {
        names.push(expect_stored(c.upload("photo.jpg", &[i; 10]).await).0);
    }
    assert_eq!(names, ["photo.jpg", "photo (1).jpg", "photo (2).jpg"]);
    assert_eq!(server.read("photo (2).jpg"), [2u8; 10]);
    let tmp = server.stop().await.expect("owned temp dir");

    let server = start_server_in(tmp.path().join("uploads"), |c| c.overwrite = true).await;
    let mut c = Client::connect(server.addr).await;
    assert_eq!(
        expect_stored(c.upload("photo.jpg", b"new").await).0,
        "photo.jpg"
    );
    assert_eq!(server.read("photo.jpg"), b"new");
    assert_eq!(server.stored().len(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_size_is_refused_from_the_declared_size() {
    let server = start_server_with(|c| c.max_size = 1000).await;
    let mut c = Client::connect(server.addr).await;
    let reason = expect_refused(c.offer("big", 1001).await, RefusalCode::TooLarge);
    assert!(reason.contains("1000"), "{reason}");
    assert!(server.partials().is_empty(), "nothing written");
    expect_stored(c.upload("small", &[1; 1000]).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_space_is_checked_upfront() {
    let server = start_server_with(|c| c.max_size = u64::MAX).await;
    let mut c = Client::connect(server.addr).await;
    // Larger than any disk.
    let reason = expect_refused(c.offer("huge", u64::MAX / 2).await, RefusalCode::NoSpace);
    assert!(reason.contains("free"), "{reason}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_upload_twice_at_once_is_busy_and_limits_refuse() {
    let server = start_server_with(|c| c.max_uploads = 2).await;
    let mut a = Client::connect(server.addr).await;
    assert!(matches!(
        a.offer("same", 10).await,
        ServerMessage::Accept { .. }
    ));
    let mut b = Client::connect(server.addr).await;
    expect_refused(b.offer("same", 10).await, RefusalCode::Busy);
    assert!(matches!(
        b.offer("other", 10).await,
        ServerMessage::Accept { .. }
    ));
    let mut c = Client::connect(server.addr).await;
    let reason = expect_refused(c.offer("third", 10).await, RefusalCode::TooManyUploads);
    assert!(reason.contains('2'), "{reason}");
    expect_stored(a.body_and_finish(&[7; 10], 0, sha256(&[7; 10])).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_control_message_is_refused_and_closed() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    c.raw(&u32::MAX.to_be_bytes()).await;
    expect_refused(c.recv().await.expect("refusal"), RefusalCode::BadMessage);
    assert_eq!(c.recv().await, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_first_bytes_are_closed() {
    let server = start_server().await;
    let mut s = within(tokio::net::TcpStream::connect(server.addr))
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    within(s.read_to_end(&mut out)).await.expect("read");
    assert!(out.is_empty());
    // A wrong version is refused with its code.
    let mut c = Client::bare(server.addr).await;
    c.raw(&MAGIC).await;
    c.send(ClientMessage::Hello {
        version: 99,
        token: String::new(),
    })
    .await;
    let answer = c.recv().await.expect("answer");
    expect_refused(answer, RefusalCode::UnsupportedVersion);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_in_flight_upload_resumable() {
    let server = start_server().await;
    let body = data(1 << 20, 5);
    let mut c = Client::connect(server.addr).await;
    assert!(matches!(
        c.offer("inflight.bin", body.len() as u64).await,
        ServerMessage::Accept { .. }
    ));
    c.send(ClientMessage::Start { offset: 0 }).await;
    c.raw(&body[..1000]).await;
    let dir = server.dir.clone();
    let started = std::time::Instant::now();
    let tmp = server.stop().await.expect("temp dir");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped within 2 s"
    );
    let answer = c.recv().await;
    assert!(
        matches!(
            answer,
            None | Some(ServerMessage::Refuse {
                code: RefusalCode::ShuttingDown,
                ..
            })
        ),
        "{answer:?}"
    );

    let server = start_server_in(dir, |_| {}).await;
    assert!(server.stored().is_empty());
    let mut c = Client::connect(server.addr).await;
    let ServerMessage::Accept {
        offset,
        prefix_sha256,
    } = c.offer("inflight.bin", body.len() as u64).await
    else {
        panic!("expected accept");
    };
    assert!(offset <= 1000);
    assert_eq!(prefix_sha256, sha256(&body[..offset as usize]));
    expect_stored(c.body_and_finish(&body, offset, sha256(&body)).await);
    assert_eq!(server.read("inflight.bin"), body);
    server.stop().await;
    drop(tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upload_is_closed_with_a_refusal_and_kept_for_resume() {
    let server = start_server_with(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut c = Client::connect(server.addr).await;
    assert!(matches!(
        c.offer("slow.bin", 100).await,
        ServerMessage::Accept { .. }
    ));
    c.send(ClientMessage::Start { offset: 0 }).await;
    c.raw(&[1u8; 40]).await;
    // Sending nothing more: the server gives up after the idle timeout.
    let reason = expect_refused(c.recv().await.expect("refusal"), RefusalCode::IdleTimeout);
    assert!(reason.contains("40 B of 100 B kept"), "{reason}");
    assert_eq!(c.recv().await, None, "closed after the refusal");
    let (_c, answer) = offer_when_free(&server, "slow.bin", 100).await;
    assert!(
        matches!(answer, ServerMessage::Accept { offset: 40, .. }),
        "{answer:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_offer_leaves_no_partial_bookkeeping() {
    let server = start_server().await;
    {
        let mut c = Client::connect(server.addr).await;
        assert!(matches!(
            c.offer("never.bin", 10).await,
            ServerMessage::Accept { .. }
        ));
    }
    // The accept created the partial; the session removes it, empty, once
    // it sees the close.
    within(async {
        while !server.partials().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(server.stored().is_empty());
    server.stop().await;
}

/// Connects, asks for BLAKE3 and offers `name`, retrying while the server
/// still holds the previous connection's upload (busy).
async fn blake3_offer(
    server: &crate::common::TestServer,
    name: &str,
    size: u64,
) -> (Client, ServerMessage) {
    within(async {
        loop {
            let mut c = Client::connect(server.addr).await;
            c.send(ClientMessage::Hash {
                algorithm: "blake3".into(),
            })
            .await;
            match c.offer(name, size).await {
                ServerMessage::Refuse {
                    code: RefusalCode::Busy,
                    ..
                } => tokio::time::sleep(Duration::from_millis(10)).await,
                answer => return (c, answer),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_11_blake3_uploads_verify_resume_and_are_found_again() {
    use proto::digest::{digest, Algorithm};
    let b3 = |d: &[u8]| -> [u8; 32] { digest(Algorithm::Blake3, d).into() };
    let server = start_server().await;
    let body = data(300_000, 5);
    let half = body.len() / 2;
    {
        let (mut c, answer) = blake3_offer(&server, "b.bin", body.len() as u64).await;
        assert!(matches!(answer, ServerMessage::Accept { offset: 0, .. }));
        c.send(ClientMessage::Start { offset: 0 }).await;
        c.raw(&body[..half]).await;
    }
    let (mut c, answer) = blake3_offer(&server, "b.bin", body.len() as u64).await;
    match answer {
        ServerMessage::Accept {
            offset,
            prefix_sha256,
        } => {
            assert_eq!(offset, half as u64);
            assert_eq!(prefix_sha256, b3(&body[..half]), "prefix digest is BLAKE3");
        }
        other => panic!("expected accept, got {other:?}"),
    }
    // A SHA-256 digest is a mismatch once BLAKE3 was asked for.
    let answer = c.body_and_finish(&body, half as u64, sha256(&body)).await;
    expect_refused(answer, RefusalCode::DigestMismatch);
    assert!(server.stored().is_empty());

    let (mut c, answer) = blake3_offer(&server, "b.bin", body.len() as u64).await;
    assert!(matches!(answer, ServerMessage::Accept { offset: 0, .. }));
    let (stored, d) = expect_stored(c.body_and_finish(&body, 0, b3(&body)).await);
    assert_eq!((stored.as_str(), d), ("b.bin", b3(&body)));
    assert_eq!(server.read("b.bin"), body);

    // The same name and size again: Present carries the recorded BLAKE3 digest.
    let (_c, answer) = blake3_offer(&server, "b.bin", body.len() as u64).await;
    assert_eq!(answer, ServerMessage::Present { sha256: b3(&body) });
    // A SHA-256 session sees the SHA-256 digest of the same file.
    let mut c = Client::connect(server.addr).await;
    assert_eq!(
        c.offer("b.bin", body.len() as u64).await,
        ServerMessage::Present {
            sha256: sha256(&body)
        }
    );

    // An unknown algorithm is one clear refusal, then the connection closes.
    let mut c = Client::connect(server.addr).await;
    c.send(ClientMessage::Hash {
        algorithm: "md5".into(),
    })
    .await;
    let reason = expect_refused(c.recv().await.expect("refusal"), RefusalCode::BadMessage);
    assert!(reason.contains("accepts sha256 and blake3"), "{reason}");
    assert_eq!(c.recv().await, None);
    server.stop().await;
}
