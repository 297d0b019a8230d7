//! chat-cli over TLS (issue 12), driven as the real executable against an
//! in-process chat-srv serving a plain and a TLS port on 127.0.0.1:0:
//! `--tls-ca`, `--tls-pin`, the one-line refusals, and each kind of client
//! on the other kind of port.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tokio::sync::oneshot;
use transport::testing::TestPki;

const DEADLINE: Duration = Duration::from_secs(20);

struct Server {
    plain: SocketAddr,
    tls: SocketAddr,
    fingerprint: transport::Fingerprint,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), chat_srv::ServerError>>,
}

async fn start(identity: &transport::Identity) -> Server {
    let any = "127.0.0.1:0".parse().unwrap();
    let plain = transport::bind(any, "chat-srv", "--port").unwrap();
    let tls = transport::bind(any, "chat-srv", "--tls-port").unwrap();
    let (plain_addr, tls_addr) = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
    let hints = chat_srv::hints();
    let ports = vec![
        transport::Port::plain(plain, hints.tls_client_on_plain_port),
        transport::Port::tls(
            tls,
            identity.acceptor().unwrap(),
            hints.plain_client_on_tls_port,
        ),
    ];
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(chat_srv::serve(
        ports,
        chat_srv::Config::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        plain: plain_addr,
        tls: tls_addr,
        fingerprint: identity.fingerprint(),
        stop: Some(stop),
        handle,
    }
}

impl Server {
    async fn shut_down(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        tokio::time::timeout(Duration::from_secs(2), &mut self.handle)
            .await
            .expect("server stops within 2 s")
            .expect("no panic")
            .expect("run returns Ok");
    }
}

/// Runs `chat-cli -p PORT ARGS... -m hello` to its end, bounded.
async fn chat_cli(addr: SocketAddr, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-cli"));
    cmd.args(["-p", &addr.port().to_string()])
        .args(args)
        .args(["-m", "hello"])
        .stdin(Stdio::null());
    tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || cmd.output().expect("run chat-cli")),
    )
    .await
    .expect("chat-cli ends in time")
    .expect("no panic")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one error line chat-cli printed.
fn one_error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_tls_with_tls_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path()).unwrap();
    let server = start(&pki.identity().unwrap()).await;
    let out = chat_cli(server.tls, &["--tls-ca", pki.ca.to_str().unwrap()]).await;
    assert_eq!(stdout(&out), "hello,你好\n", "{out:?}");
    assert_eq!(out.status.code(), Some(0));
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_tls_with_tls_pin_in_openssl_form() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&transport::Identity::self_signed(dir.path()).unwrap()).await;
    let pin = format!("sha256 Fingerprint={}", server.fingerprint);
    let out = chat_cli(server.tls, &["--tls-pin", &pin]).await;
    assert_eq!(stdout(&out), "hello,你好\n", "{out:?}");
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_one_line_with_the_fingerprint_and_how_to_pin_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&transport::Identity::self_signed(dir.path()).unwrap()).await;
    let wrong = transport::Fingerprint::of(b"another certificate").to_string();
    let out = chat_cli(server.tls, &["--tls-pin", &wrong]).await;
    let line = one_error_line(&out);
    assert!(line.contains("does not match --tls-pin"), "{line}");
    assert!(
        line.contains(&format!("--tls-pin {}", server.fingerprint)),
        "{line}"
    );
    assert_eq!(stdout(&out), "");
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_self_signed_is_one_line_with_the_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&transport::Identity::self_signed(&dir.path().join("s")).unwrap()).await;
    let unrelated = TestPki::new(dir.path()).unwrap();
    let out = chat_cli(server.tls, &["--tls-ca", unrelated.ca.to_str().unwrap()]).await;
    let line = one_error_line(&out);
    assert!(line.starts_with("error: cannot trust 127.0.0.1:"), "{line}");
    assert!(
        line.contains(&format!("--tls-pin {}", server.fingerprint)),
        "{line}"
    );
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_client_on_tls_port_is_told_to_use_tls() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&transport::Identity::self_signed(dir.path()).unwrap()).await;
    let out = chat_cli(server.tls, &[]).await;
    let line = one_error_line(&out);
    assert!(
        line.contains("this port speaks TLS: connect with chat-cli --tls"),
        "{line}"
    );
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_on_plain_port_is_told_it_is_not_tls() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&transport::Identity::self_signed(dir.path()).unwrap()).await;
    let pin = server.fingerprint.to_string();
    let out = chat_cli(server.plain, &["--tls-pin", &pin]).await;
    let line = one_error_line(&out);
    assert!(line.contains("did not answer with TLS"), "{line}");
    server.shut_down().await;
}

#[test]
fn malformed_pin_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-cli"))
        .args(["--tls-pin", "AB:CD"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected 64 hex digits"));
}
