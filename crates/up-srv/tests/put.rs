//! Version 4's puts and checks over the wire: answers in order and only
//! once durable, refusals that keep the stream in step, a put cut short,
//! the size cap, and the object-store server that does not offer puts.

use bytes::{BufMut, BytesMut};
use proto::upload::{ClientMessage, RefusalCode, ServerMessage, MAX_PUT_SIZE, PUT_VERSION};

use crate::common::{data, sha256, start_server, within, Client};

/// One put's wire form: the frame, the bytes, the finish with `digest`.
fn put(out: &mut BytesMut, name: &str, body: &[u8], digest: [u8; 32]) {
    ClientMessage::Put {
        name: name.into(),
        size: body.len() as u64,
    }
    .encode_into(out)
    .expect("encode");
    out.put_slice(body);
    ClientMessage::Finish { sha256: digest }
        .encode_into(out)
        .expect("encode");
}

fn check(out: &mut BytesMut, name: &str, size: u64) {
    ClientMessage::Check {
        name: name.into(),
        size,
    }
    .encode_into(out)
    .expect("encode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_sent_at_once_are_answered_in_order_and_refusals_keep_the_stream_in_step() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    let a = data(100 * 1024, 1);
    let b = data(0, 2);
    let d = data(MAX_PUT_SIZE as usize, 3);
    let mut wire = BytesMut::new();
    put(&mut wire, "a.bin", &a, sha256(&a));
    put(&mut wire, "dir/b.bin", &b, sha256(&b));
    put(&mut wire, "bad.bin", &a, sha256(&b));
    put(&mut wire, "con.txt", &a, sha256(&a));
    put(&mut wire, "dir/d.bin", &d, sha256(&d));
    check(&mut wire, "a.bin", a.len() as u64);
    check(&mut wire, "a.bin", 1);
    put(&mut wire, "a.bin", &a, sha256(&a));
    c.raw(&wire).await;

    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(c.recv().await.expect("an answer per request"));
    }
    let stored = |name: &str, body: &[u8]| ServerMessage::Stored {
        name: name.into(),
        sha256: sha256(body),
    };
    assert_eq!(answers[0], stored("a.bin", &a));
    assert_eq!(answers[1], stored("dir/b.bin", &b));
    assert!(
        matches!(
            &answers[2],
            ServerMessage::Refuse {
                code: RefusalCode::DigestMismatch,
                ..
            }
        ),
        "{:?}",
        answers[2]
    );
    assert!(
        matches!(&answers[3], ServerMessage::Refuse { code: RefusalCode::BadName, reason } if reason.contains("device")),
        "{:?}",
        answers[3]
    );
    assert_eq!(answers[4], stored("dir/d.bin", &d));
    assert_eq!(answers[5], ServerMessage::Present { sha256: sha256(&a) });
    assert_eq!(answers[6], ServerMessage::Missing);
    // The same bytes under the same name again: one copy is enough.
    assert_eq!(answers[7], ServerMessage::Present { sha256: sha256(&a) });

    assert_eq!(server.stored(), ["a.bin", "dir/b.bin", "dir/d.bin"]);
    assert_eq!(server.read("dir/d.bin"), d);
    assert!(server.partials().is_empty(), "{:?}", server.partials());

    // The connection still serves offers after puts.
    let e = data(5000, 4);
    let answer = c.upload("e.bin", &e).await;
    assert_eq!(answer, stored("e.bin", &e));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_committed_behind_the_next_are_answered_first_in_order() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    // Far more than one batch in one write: full batches are committed
    // while the next arrives, and every answer still comes in order.
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let body = data(1000 + i as usize, (i % 251) as u8);
        let name = format!("d{}/f{i:03}.bin", i % 3);
        put(&mut wire, &name, &body, sha256(&body));
        expected.push(ServerMessage::Stored {
            name,
            sha256: sha256(&body),
        });
    }
    c.raw(&wire).await;
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(c.recv().await.as_ref(), Some(want), "answer {i}");
    }
    assert_eq!(server.stored().len(), 200);
    assert!(server.partials().is_empty(), "{:?}", server.partials());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_cut_short_stores_nothing_and_the_puts_before_it_are_stored() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    let a = data(70_000, 5);
    let mut wire = BytesMut::new();
    put(&mut wire, "one.bin", &a, sha256(&a));
    put(&mut wire, "two.bin", &a[..1000], sha256(&a[..1000]));
    ClientMessage::Put {
        name: "cut.bin".into(),
        size: a.len() as u64,
    }
    .encode_into(&mut wire)
    .expect("encode");
    wire.put_slice(&a[..a.len() / 2]);
    c.raw(&wire).await;
    // Half a body, then the client's side closes: the whole puts before it
    // are answered, the cut one is not.
    within(tokio::io::AsyncWriteExt::shutdown(&mut c.stream))
        .await
        .expect("shutdown");
    assert!(matches!(c.recv().await, Some(ServerMessage::Stored { .. })));
    assert!(matches!(c.recv().await, Some(ServerMessage::Stored { .. })));
    assert_eq!(c.recv().await, None);
    assert_eq!(server.stored(), ["one.bin", "two.bin"]);
    assert!(server.partials().is_empty(), "{:?}", server.partials());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_above_the_cap_is_refused_before_its_body_and_closes() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    c.send(ClientMessage::Put {
        name: "big.bin".into(),
        size: MAX_PUT_SIZE + 1,
    })
    .await;
    match c.recv().await {
        Some(ServerMessage::Refuse {
            code: RefusalCode::BadMessage,
            reason,
        }) => assert!(reason.contains("offer larger files"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(c.recv().await, None);
    assert!(server.stored().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_client_cannot_put() {
    let server = start_server().await;
    let mut c = Client::bare(server.addr).await;
    c.raw(&proto::upload::MAGIC).await;
    c.send(ClientMessage::Hello {
        version: PUT_VERSION - 1,
        token: String::new(),
    })
    .await;
    assert!(matches!(
        c.recv().await,
        Some(ServerMessage::Welcome { version: 3, .. })
    ));
    let mut wire = BytesMut::new();
    put(&mut wire, "a.bin", b"x", sha256(b"x"));
    c.raw(&wire).await;
    assert!(
        matches!(
            c.recv().await,
            Some(ServerMessage::Refuse {
                code: RefusalCode::BadMessage,
                ..
            })
        ),
        "a put is refused below version 4"
    );
    assert!(server.stored().is_empty());
    server.stop().await;
}
