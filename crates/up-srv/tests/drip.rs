//! Dripping (slowloris) clients that defeat the idle timeout by sending a
//! byte every so often: a control frame must complete within
//! `--header-timeout` of its first byte, and a body must keep `--min-rate`
//! over each window. The dripping clients sleep between bytes (that is the
//! attack); the assertions wait on the server's reply or close, bounded.

use std::time::{Duration, Instant};

use crate::common::{data, sha256, start_server_with, within, Client};
use bytes::BytesMut;
use proto::upload::{ClientCodec, ClientMessage, RefusalCode, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{Decoder, Encoder};

/// Writes `bytes` one at a time, `gap` apart, until done or the server closes.
fn drip(mut wr: OwnedWriteHalf, bytes: Vec<u8>, gap: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for b in bytes {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    })
}

/// The next server message on a split stream; `None` on EOF or error.
async fn recv(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> Option<ServerMessage> {
    loop {
        if let Some(m) = ClientCodec.decode(buf).expect("valid server stream") {
            return Some(m);
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn encode(msg: ClientMessage) -> Vec<u8> {
    let mut out = BytesMut::new();
    ClientCodec.encode(msg, &mut out).expect("encode");
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_dripped_past_the_header_timeout_is_refused() {
    let server = start_server_with(|c| {
        c.idle_timeout = Duration::from_secs(60);
        c.header_timeout = Duration::from_secs(1);
    })
    .await;
    let c = Client::connect(server.addr).await;
    let (mut rd, wr) = c.stream.into_split();
    // About 60 bytes at 200 ms each would take 12 s: every gap is far below
    // the idle timeout, so only the header deadline can stop it.
    let offer = encode(ClientMessage::Offer {
        name: "a-name-long-enough-to-drip-for-many-seconds.bin".into(),
        size: 10,
    });
    assert!(offer.len() > 40);
    let began = Instant::now();
    let writer = drip(wr, offer, Duration::from_millis(200));
    let mut buf = BytesMut::new();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv(&mut rd, &mut buf))
        .await
        .expect("the server did not end the dripped offer within 5 s");
    let took = began.elapsed();
    match answer {
        Some(ServerMessage::Refuse { code, reason }) => {
            assert_eq!(code, RefusalCode::HeaderTooSlow, "{reason}");
            assert!(reason.contains("not complete"), "{reason}");
        }
        other => panic!("expected refusal 33, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "cut after {took:?}, expected about 1 s"
    );
    // The server closes after the refusal.
    let end = tokio::time::timeout(Duration::from_secs(5), recv(&mut rd, &mut buf))
        .await
        .expect("the server did not close after the refusal");
    assert_eq!(end, None);
    writer.abort();
    // Still serving.
    let mut c = Client::connect(server.addr).await;
    let body = data(1000, 3);
    assert!(matches!(
        c.upload("after-drip.bin", &body).await,
        ServerMessage::Stored { .. }
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_below_min_rate_is_cut_and_resumable() {
    let server = start_server_with(|c| {
        c.idle_timeout = Duration::from_secs(60);
        c.min_rate = 1000;
        // A short window keeps the test fast: 300 bytes per 300 ms.
        c.min_rate_window = Duration::from_millis(300);
    })
    .await;
    let body = data(10_000, 7);
    let size = body.len() as u64;
    let mut c = Client::connect(server.addr).await;
    match c.offer("slow.bin", size).await {
        ServerMessage::Accept { offset: 0, .. } => {}
        other => panic!("expected accept at 0, got {other:?}"),
    }
    c.send(ClientMessage::Start { offset: 0 }).await;
    // 100 bytes at once, then one byte every 50 ms (20 B/s): far below the
    // minimum, yet every gap is far below the idle timeout.
    c.raw(&body[..100]).await;
    let (mut rd, wr) = c.stream.into_split();
    let writer = drip(wr, body[100..400].to_vec(), Duration::from_millis(50));
    let mut buf = BytesMut::new();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv(&mut rd, &mut buf))
        .await
        .expect("the server did not end the slow body within 5 s");
    match answer {
        Some(ServerMessage::Refuse { code, reason }) => {
            assert_eq!(code, RefusalCode::BodyTooSlow, "{reason}");
            assert!(reason.contains("minimum"), "{reason}");
            assert!(reason.contains("kept for resume"), "{reason}");
        }
        other => panic!("expected refusal 34, got {other:?}"),
    }
    writer.abort();
    assert!(server.stored().is_empty(), "{:?}", server.stored());

    // The partial is offered back and the upload completes from there.
    let mut c = Client::connect(server.addr).await;
    let offset = match c.offer("slow.bin", size).await {
        ServerMessage::Accept {
            offset,
            prefix_sha256,
        } => {
            assert!((100..size).contains(&offset), "resume offset {offset}");
            assert_eq!(prefix_sha256, sha256(&body[..offset as usize]));
            offset
        }
        other => panic!("expected accept, got {other:?}"),
    };
    let answer = within(c.body_and_finish(&body, offset, sha256(&body))).await;
    assert!(
        matches!(answer, ServerMessage::Stored { ref name, .. } if name == "slow.bin"),
        "{answer:?}"
    );
    assert_eq!(server.read("slow.bin"), body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_size_dripped_past_the_header_timeout_is_closed() {
    let server = start_server_with(|c| {
        c.idle_timeout = Duration::from_secs(60);
        c.header_timeout = Duration::from_millis(300);
    })
    .await;
    let stream = within(tokio::net::TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let (mut rd, wr) = stream.into_split();
    // Digits 60 ms apart never leave the legacy pause that ends a size, so
    // the size text grows until something stops it. The deadline (300 ms,
    // about 5 digits) must come well before the digit limit (21st digit at
    // about 1.2 s) would end it for another reason; the margin absorbs a
    // loaded CI machine.
    let began = Instant::now();
    let writer = drip(wr, b"1".repeat(60), Duration::from_millis(60));
    let mut reply = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut reply))
        .await
        .expect("the server did not close the dripping legacy client within 5 s");
    let took = began.elapsed();
    // A reset is as good as a close here; what matters is no "1001".
    assert!(n.is_err() || reply.is_empty(), "got a reply: {reply:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1100),
        "closed after {took:?}, expected about 300 ms"
    );
    writer.abort();
    assert!(server.stored().is_empty(), "{:?}", server.stored());
    server.stop().await;
}
