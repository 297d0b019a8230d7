//! The original tutorial client's exact exchange against the in-process server:
//! size as decimal text, read the reply, stream the bytes, close.

use crate::common::{data, start_server, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Plays the original client: returns the reply it read and waits for the
/// server to close (which it does once the file is stored).
async fn legacy_upload(addr: std::net::SocketAddr, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut s = within(TcpStream::connect(addr)).await.expect("connect");
    within(s.write_all(header)).await.expect("write size");
    let mut reply = [0u8; 4];
    within(s.read_exact(&mut reply)).await.expect("read reply");
    within(s.write_all(body)).await.expect("write body");
    within(s.shutdown()).await.expect("close write side");
    let mut rest = Vec::new();
    within(s.read_to_end(&mut rest)).await.expect("read to end");
    assert!(rest.is_empty(), "nothing after the reply");
    reply.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_client_exact_bytes_store_new_jpg() {
    let server = start_server().await;
    let body = data(54_321, 4);
    // The original sends the digits with no terminator: the pause completes them.
    let reply = legacy_upload(server.addr, b"54321", &body).await;
    assert_eq!(reply, b"1001");
    assert_eq!(server.read("new.jpg"), body);
    // A second upload does not clobber the first.
    let reply = legacy_upload(server.addr, b"3\r\n", b"abc").await;
    assert_eq!(reply, b"1001");
    assert_eq!(server.read("new (1).jpg"), b"abc");
    assert_eq!(server.read("new.jpg"), body);
    assert!(server.partials().is_empty(), "{:?}", server.partials());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_size_split_across_writes_completes_on_pause() {
    let server = start_server().await;
    let mut s = within(TcpStream::connect(server.addr))
        .await
        .expect("connect");
    within(s.write_all(b"1")).await.expect("write");
    within(s.write_all(b"2")).await.expect("write");
    let mut reply = [0u8; 4];
    within(s.read_exact(&mut reply)).await.expect("reply");
    assert_eq!(&reply, b"1001");
    within(s.write_all(&[9u8; 12])).await.expect("body");
    let mut rest = Vec::new();
    within(s.read_to_end(&mut rest))
        .await
        .expect("closed by server");
    assert_eq!(server.read("new.jpg"), [9u8; 12]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_reading_stops_at_exactly_size_bytes() {
    let server = start_server().await;
    let reply = legacy_upload(server.addr, b"5\n", b"0123456789").await;
    assert_eq!(reply, b"1001");
    assert_eq!(server.read("new.jpg"), b"01234");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_disconnect_stores_nothing() {
    let server = start_server().await;
    let mut s = within(TcpStream::connect(server.addr))
        .await
        .expect("connect");
    within(s.write_all(b"1000\n")).await.expect("write");
    let mut reply = [0u8; 4];
    within(s.read_exact(&mut reply)).await.expect("reply");
    within(s.write_all(&[1u8; 10]))
        .await
        .expect("part of the body");
    drop(s);
    // The server drops the temp file when it sees the disconnect; poll for it.
    within(async {
        while !server.partials().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(server.stored().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_size_above_max_is_closed_without_reply() {
    let server = crate::common::start_server_with(|c| c.max_size = 10).await;
    let mut s = within(TcpStream::connect(server.addr))
        .await
        .expect("connect");
    within(s.write_all(b"11\n")).await.expect("write");
    let mut out = Vec::new();
    within(s.read_to_end(&mut out)).await.expect("closed");
    assert!(out.is_empty());
    assert!(server.stored().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_upload_is_refused_when_a_token_is_set() {
    let server = crate::common::start_server_with(|c| c.token = Some("s3cret".into())).await;
    let mut s = within(TcpStream::connect(server.addr))
        .await
        .expect("connect");
    // The original client: digits with no terminator, then it waits for the reply.
    within(s.write_all(b"5")).await.expect("write size");
    let mut reply = Vec::new();
    within(s.read_to_end(&mut reply))
        .await
        .expect("server closes after the reason");
    assert_eq!(reply, up_srv::session::LEGACY_TOKEN_REFUSAL);
    assert!(reply.starts_with(b"refused: "), "{reply:?}");
    // A client that ignores the reason and sends its body anyway stores nothing.
    let mut s = within(TcpStream::connect(server.addr))
        .await
        .expect("connect");
    within(s.write_all(b"5\n01234")).await.expect("write");
    within(s.shutdown()).await.expect("close write side");
    let mut reply = Vec::new();
    within(s.read_to_end(&mut reply)).await.expect("closed");
    assert_eq!(reply, up_srv::session::LEGACY_TOKEN_REFUSAL);
    assert!(server.stored().is_empty(), "{:?}", server.stored());
    assert!(server.partials().is_empty(), "{:?}", server.partials());
    server.stop().await;
}
