//! Version 2 of the protocol: already-stored files are skipped, version-1
//! clients are served as before, and with `--allow-get` files are listed
//! and fetched with their recorded digests.

use bytes::BytesMut;
use proto::upload::{ClientCodec, ClientMessage, RefusalCode, ServerMessage, MAGIC};
use tokio::io::AsyncReadExt;
use tokio_util::codec::Encoder;

use crate::common::{data, sha256, start_server, start_server_with, within, Client};

/// Reads exactly `len` raw bytes after what the client already buffered.
async fn raw_bytes(c: &mut Client, len: usize) -> Vec<u8> {
    let mut out = c.take_buffered();
    out.truncate(len);
    while out.len() < len {
        let mut chunk = vec![0u8; len - out.len()];
        let n = within(c.stream.read(&mut chunk)).await.expect("read");
        assert!(n > 0, "server closed after {} of {len} bytes", out.len());
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

#[tokio::test]
async fn same_file_offered_again_is_present_and_skipping_stores_nothing() {
    let server = start_server().await;
    let body = data(5000, 1);
    let mut c = Client::connect(server.addr).await;
    assert!(matches!(
        c.upload("a.bin", &body).await,
        ServerMessage::Stored { .. }
    ));
    let answer = c.offer("a.bin", body.len() as u64).await;
    assert_eq!(
        answer,
        ServerMessage::Present {
            sha256: sha256(&body)
        }
    );
    c.send(ClientMessage::Skip).await;
    // The connection carries on: another file follows at once.
    assert!(matches!(
        c.upload("b.bin", b"bee").await,
        ServerMessage::Stored { .. }
    ));
    assert_eq!(server.stored(), ["a.bin", "b.bin"]);
    assert!(server.partials().is_empty(), "no partial left by the skip");
}

#[tokio::test]
async fn different_content_under_a_taken_name_proceeds_to_a_copy() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    c.upload("a.bin", b"one").await;
    assert!(matches!(
        c.offer("a.bin", 3).await,
        ServerMessage::Present { .. }
    ));
    c.send(ClientMessage::Proceed).await;
    assert!(matches!(
        c.recv().await,
        Some(ServerMessage::Accept { offset: 0, .. })
    ));
    let stored = c.body_and_finish(b"two", 0, sha256(b"two")).await;
    assert!(
        matches!(stored, ServerMessage::Stored { ref name, .. } if name == "a (1).bin"),
        "{stored:?}"
    );
}

#[tokio::test]
async fn version_1_clients_never_see_present() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    c.upload("a.bin", b"one").await;
    let mut old = Client::bare(server.addr).await;
    old.raw(&MAGIC).await;
    old.send(ClientMessage::Hello {
        version: 1,
        token: String::new(),
    })
    .await;
    assert_eq!(
        old.recv().await,
        Some(ServerMessage::Welcome {
            version: 1,
            token_checked: false
        })
    );
    let stored = old.upload("a.bin", b"one").await;
    assert!(
        matches!(stored, ServerMessage::Stored { ref name, .. } if name == "a (1).bin"),
        "{stored:?}"
    );
}

#[tokio::test]
async fn ls_and_get_are_refused_without_allow_get() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    c.send(ClientMessage::List {
        prefix: String::new(),
    })
    .await;
    let answer = c.recv().await;
    assert!(
        matches!(answer, Some(ServerMessage::Refuse { code: RefusalCode::NotAllowed, ref reason }) if reason.contains("--allow-get")),
        "{answer:?}"
    );
    c.send(ClientMessage::Get { name: "x".into() }).await;
    assert!(matches!(
        c.recv().await,
        Some(ServerMessage::Refuse {
            code: RefusalCode::NotAllowed,
            ..
        })
    ));
}

#[tokio::test]
async fn list_and_get_return_the_recorded_digests_and_bytes() {
    let server = start_server_with(|c| c.allow_get = true).await;
    let a = data(700_000, 3);
    let mut c = Client::connect(server.addr).await;
    c.upload("photos/a.jpg", &a).await;
    c.upload("notes.txt", b"hi").await;
    c.send(ClientMessage::List {
        prefix: String::new(),
    })
    .await;
    let mut names = Vec::new();
    loop {
        match c.recv().await.expect("listing") {
            ServerMessage::Entry {
                name,
                size,
                sha256: d,
                ..
            } => names.push((name, size, d)),
            ServerMessage::ListEnd { count } => {
                assert_eq!(count, 2);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        names,
        [
            ("notes.txt".to_string(), 2, sha256(b"hi")),
            ("photos/a.jpg".to_string(), a.len() as u64, sha256(&a)),
        ]
    );
    c.send(ClientMessage::List {
        prefix: "photos/".into(),
    })
    .await;
    assert!(matches!(c.recv().await, Some(ServerMessage::Entry { .. })));
    assert_eq!(c.recv().await, Some(ServerMessage::ListEnd { count: 1 }));

    // A resumed get: the rest from offset 1000, then the connection goes on.
    c.send(ClientMessage::Get {
        name: "photos/a.jpg".into(),
    })
    .await;
    assert_eq!(
        c.recv().await,
        Some(ServerMessage::Sending {
            size: a.len() as u64,
            sha256: sha256(&a)
        })
    );
    c.send(ClientMessage::Start { offset: 1000 }).await;
    assert_eq!(raw_bytes(&mut c, a.len() - 1000).await, &a[1000..]);
    c.send(ClientMessage::Get {
        name: "missing".into(),
    })
    .await;
    assert!(matches!(
        c.recv().await,
        Some(ServerMessage::Refuse {
            code: RefusalCode::NotFound,
            ..
        })
    ));
}

#[tokio::test]
async fn get_of_a_file_changed_behind_the_servers_back_is_refused() {
    let server = start_server_with(|c| c.allow_get = true).await;
    let mut c = Client::connect(server.addr).await;
    c.upload("a.txt", b"alpha").await;
    let path = server.dir.join("a.txt");
    std::fs::write(&path, b"ALPHA").expect("edit");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .expect("touch");
    c.send(ClientMessage::Get {
        name: "a.txt".into(),
    })
    .await;
    let answer = c.recv().await;
    assert!(
        matches!(answer, Some(ServerMessage::Refuse { code: RefusalCode::Changed, ref reason }) if reason.contains("changed")),
        "{answer:?}"
    );
    // A rerun of the upload sees the new bytes (re-hashed), not the stale record.
    assert_eq!(
        c.offer("a.txt", 5).await,
        ServerMessage::Present {
            sha256: sha256(b"ALPHA")
        }
    );
    let mut out = BytesMut::new();
    ClientCodec
        .encode(ClientMessage::Skip, &mut out)
        .expect("encode");
    c.raw(&out).await;
}

#[tokio::test]
async fn digest_records_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("uploads");
    let server = crate::common::start_server_in(dir.clone(), |_| {}).await;
    let mut c = Client::connect(server.addr).await;
    c.upload("kept.bin", b"kept across restarts").await;
    drop(c);
    server.stop().await;
    let server = crate::common::start_server_in(dir, |_| {}).await;
    let mut c = Client::connect(server.addr).await;
    assert_eq!(
        c.offer("kept.bin", 20).await,
        ServerMessage::Present {
            sha256: sha256(b"kept across restarts")
        }
    );
    server.stop().await;
}
