//! up-srv's TLS port, connection cap and token file (issues 12 and 14): the
//! kept self-signed certificate in `.tls/` beside the uploads, the refusal a
//! plain client reads on the TLS port or beyond `--max-connections`, and
//! `--token-file`. Uploads over TLS through the
//! real client are tested in up-cli's `tests/tls.rs`.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use proto::upload::{ClientCodec, RefusalCode, ServerMessage, MAGIC};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::codec::Decoder as _;

const WAIT: Duration = Duration::from_secs(10);

struct Exe(Child);

impl Drop for Exe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts up-srv and returns it with the first stderr line containing `needle`.
fn start_until(args: &[&str], needle: &str) -> (Exe, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_up-srv"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn up-srv");
    let stderr = child.stderr.take().expect("piped");
    let exe = Exe(child);
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("log line");
        if line.contains(needle) {
            return (exe, line);
        }
    }
    panic!("up-srv exited without logging {needle:?}");
}

#[test]
fn self_signed_certificate_is_kept_in_dot_tls_beside_the_uploads_and_reused() {
    let root = tempfile::tempdir().unwrap();
    let uploads = root.path().join("uploads");
    let dir = uploads.to_str().unwrap();
    let args = ["-p", "0", "--tls-port", "0", "-d", dir];
    let (first, line) = start_until(&args, "fingerprint");
    assert!(line.contains("made now"), "{line}");
    drop(first);
    assert!(root.path().join(".tls").join("key.pem").is_file());
    assert!(
        !uploads.join(".tls").exists(),
        "the key must not sit among the uploads"
    );
    let (_second, again) = start_until(&args, "fingerprint");
    assert!(again.contains("kept in"), "{again}");
    let pin = |l: &str| l[l.rfind("--tls-pin ").unwrap()..].to_owned();
    assert_eq!(pin(&line), pin(&again));
}

/// Reads one server message from `tcp`, bounded.
async fn reply(tcp: &mut tokio::net::TcpStream) -> ServerMessage {
    let mut buf = BytesMut::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(msg) = ClientCodec.decode(&mut buf).unwrap() {
                return msg;
            }
            assert!(tcp.read_buf(&mut buf).await.unwrap() > 0, "closed early");
        }
    })
    .await
    .expect("reply in time")
}

#[tokio::test]
async fn connection_beyond_max_connections_reads_a_server_full_refusal() {
    let root = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = up_srv::Config::new(root.path().join("uploads"));
    config.max_connections = 1;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(up_srv::run(listener, config, async move {
        let _ = stopped.await;
    }));
    // The first connection holds the only slot once its hello is answered.
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    first.write_all(&MAGIC).await.unwrap();
    let mut hello = BytesMut::new();
    proto::upload::ClientMessage::Hello {
        version: proto::upload::VERSION,
        token: String::new(),
    }
    .encode_into(&mut hello)
    .unwrap();
    first.write_all(&hello).await.unwrap();
    assert!(matches!(
        reply(&mut first).await,
        ServerMessage::Welcome { .. }
    ));

    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    match reply(&mut second).await {
        ServerMessage::Refuse { code, reason } => {
            assert_eq!(code, RefusalCode::TooManyUploads);
            assert!(
                reason.starts_with("server full (1 connections)"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn plain_client_on_tls_port_reads_a_refusal_naming_tls() {
    let root = tempfile::tempdir().unwrap();
    let identity = transport::Identity::self_signed(&root.path().join("state")).unwrap();
    let listener = transport::bind("127.0.0.1:0".parse().unwrap(), "up-srv", "--tls-port").unwrap();
    let addr = listener.local_addr().unwrap();
    let port = transport::Port::tls(
        listener,
        identity.acceptor().unwrap(),
        up_srv::server::hints().plain_client_on_tls_port,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = up_srv::Config::new(root.path().join("uploads"));
    let server = tokio::spawn(up_srv::serve(vec![port], config, async move {
        let _ = stopped.await;
    }));

    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&MAGIC).await.unwrap();
    let reply = reply(&mut tcp).await;
    match reply {
        ServerMessage::Refuse { code, reason } => {
            assert_eq!(code, RefusalCode::BadMessage);
            assert!(reason.contains("up-cli --tls"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn empty_token_file_is_one_line_and_exit_1() {
    let root = tempfile::tempdir().unwrap();
    let token = root.path().join("token");
    std::fs::write(&token, "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_up-srv"))
        .args(["-p", "0", "--token-file", token.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is empty (put the token on its first line)"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}
