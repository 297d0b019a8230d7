//! Chat over TLS (issue 12): in-process servers on 127.0.0.1:0 with
//! certificates made by rcgen, clients verified by CA file or by pin, the
//! plain/TLS mismatch hints, and the executable's `--tls-port`,
//! `--no-plain` and kept self-signed certificate.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use transport::{Connector, Identity, Stream, TlsError, Trust};

const WAIT: Duration = Duration::from_secs(10);

/// A TLS and a plain port served by one in-process chat server.
struct Server {
    plain: SocketAddr,
    tls: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), chat_srv::ServerError>>,
}

async fn start(identity: &Identity) -> Server {
    start_with(identity, chat_srv::Config::default()).await
}

async fn start_with(identity: &Identity, config: chat_srv::Config) -> Server {
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
    let handle = tokio::spawn(chat_srv::serve(ports, config, async move {
        let _ = stopped.await;
    }));
    Server {
        plain: plain_addr,
        tls: tls_addr,
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

async fn connect(addr: SocketAddr, trust: &Trust) -> Result<Stream, TlsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    Connector::new(trust)?
        .connect(tcp, "127.0.0.1", addr.port())
        .await
}

async fn line(reader: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> Option<String> {
    let mut buf = String::new();
    let n = tokio::time::timeout(WAIT, reader.read_line(&mut buf))
        .await
        .expect("line in time")
        .ok()?;
    (n > 0).then(|| buf.trim_end_matches('\n').to_owned())
}

async fn chat_exchange(stream: Stream) {
    let mut stream = tokio::io::BufReader::new(stream);
    assert_eq!(line(&mut stream).await.unwrap(), proto::chat::WELCOME);
    stream.get_mut().write_all(b"hello\n").await.unwrap();
    assert_eq!(line(&mut stream).await.unwrap(), "hello,你好");
}

/// A CA and a leaf for 127.0.0.1 signed by it, in `dir`.
fn ca_and_leaf(dir: &Path) -> Identity {
    transport::testing::TestPki::new(dir)
        .unwrap()
        .identity()
        .unwrap()
}

#[tokio::test]
async fn chat_over_tls_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&ca_and_leaf(dir.path())).await;
    let stream = connect(server.tls, &Trust::Ca(dir.path().join("ca.pem")))
        .await
        .unwrap();
    chat_exchange(stream).await;
    server.shut_down().await;
}

#[tokio::test]
async fn chat_over_tls_with_pin_and_shutdown_notice_arrives_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::self_signed(dir.path()).unwrap();
    let server = start(&identity).await;
    let stream = connect(server.tls, &Trust::Pin(identity.fingerprint()))
        .await
        .unwrap();
    let mut stream = tokio::io::BufReader::new(stream);
    assert_eq!(line(&mut stream).await.unwrap(), proto::chat::WELCOME);
    server.shut_down().await;
    let goodbye = line(&mut stream).await.unwrap();
    assert!(goodbye.contains("shutting down"), "{goodbye}");
}

#[tokio::test]
async fn three_thousand_replies_over_tls_arrive_complete_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::self_signed(dir.path()).unwrap();
    let config = chat_srv::Config {
        rate: 0,
        queue: 100_000,
        ..chat_srv::Config::default()
    };
    let server = start_with(&identity, config).await;
    let stream = connect(server.tls, &Trust::Pin(identity.fingerprint()))
        .await
        .unwrap();
    let (r, mut w) = tokio::io::split(stream);
    let mut r = tokio::io::BufReader::new(r);
    assert_eq!(line(&mut r).await.unwrap(), proto::chat::WELCOME);
    // Sent from another task while this one reads, so both directions are
    // busy at once; every reply must arrive, whole and in order.
    const N: usize = 3000;
    let padding = "x".repeat(200);
    let writer = tokio::spawn(async move {
        for i in 0..N {
            w.write_all(format!("{i} {padding}\n").as_bytes())
                .await
                .unwrap();
        }
        w.flush().await.unwrap();
        w
    });
    for i in 0..N {
        let got = line(&mut r).await.expect("a reply");
        assert!(got.starts_with(&format!("{i} ")), "reply {i}: {got}");
    }
    drop(writer.await.unwrap());
    server.shut_down().await;
}

#[tokio::test]
async fn wrong_pin_and_untrusted_certificate_are_one_line_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::self_signed(&dir.path().join("state")).unwrap();
    let server = start(&identity).await;
    let fp = identity.fingerprint();

    let wrong = transport::Fingerprint::of(b"not this one");
    let err = connect(server.tls, &Trust::Pin(wrong)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("does not match --tls-pin"), "{text}");
    assert!(text.contains(&format!("--tls-pin {fp}")), "{text}");
    assert!(!text.contains('\n'));

    // The self-signed certificate is not signed by this unrelated CA.
    ca_and_leaf(dir.path());
    let err = connect(server.tls, &Trust::Ca(dir.path().join("ca.pem")))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("cannot trust 127.0.0.1:"), "{text}");
    assert!(text.contains(&format!("--tls-pin {fp}")), "{text}");
    server.shut_down().await;
}

#[tokio::test]
async fn plain_client_on_tls_port_reads_a_hint_line_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&Identity::self_signed(dir.path()).unwrap()).await;
    let tcp = TcpStream::connect(server.tls).await.unwrap();
    let mut reader = tokio::io::BufReader::new(tcp);
    let hint = line(&mut reader).await.unwrap();
    assert!(hint.starts_with("! this port speaks TLS"), "{hint}");
    assert_eq!(line(&mut reader).await, None, "then the server closes");
    server.shut_down().await;
}

#[tokio::test]
async fn tls_client_on_plain_port_is_told_it_is_not_tls() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::self_signed(dir.path()).unwrap();
    let server = start(&identity).await;
    let err = connect(server.plain, &Trust::Pin(identity.fingerprint()))
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::NotTls { .. }), "{err}");
    // The plain port still serves plain clients.
    let tcp = TcpStream::connect(server.plain).await.unwrap();
    chat_exchange(transport::Stream::plain(tcp, server.plain)).await;
    server.shut_down().await;
}

/// The executable, with stderr read line by line.
struct Exe {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStderr>>,
}

impl Exe {
    fn start(args: &[&str]) -> Exe {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-srv"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chat-srv");
        let stderr = child.stderr.take().expect("piped stderr");
        Exe {
            child,
            lines: BufReader::new(stderr).lines(),
        }
    }

    /// Reads log lines until one contains `needle`; returns it. The server
    /// logs these at start, so end of output before it is a failure.
    fn until(&mut self, needle: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.expect("utf-8 log line");
            if line.contains(needle) {
                return line;
            }
        }
        panic!("chat-srv exited without logging {needle:?}");
    }

    /// The address in the "listening with TLS on ADDR" line.
    fn listening_tls(&mut self) -> SocketAddr {
        let line = self.until("listening with TLS on ");
        let at = line.find("listening with TLS on ").expect("listening line")
            + "listening with TLS on ".len();
        line[at..].trim().parse().unwrap()
    }
}

impl Drop for Exe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fingerprint_in(line: &str) -> transport::Fingerprint {
    let at = line.find("--tls-pin ").expect("pin in line") + "--tls-pin ".len();
    line[at..].trim_end_matches(')').trim().parse().unwrap()
}

#[test]
fn self_signed_certificate_is_made_once_kept_private_and_reused() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap();
    let args = ["-p", "0", "--tls-port", "0", "--state-dir", dir];
    let first = {
        let mut exe = Exe::start(&args);
        let line = exe.until("certificate SHA-256 fingerprint");
        assert!(line.contains("made now"), "{line}");
        fingerprint_in(&line)
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let key = state.path().join("key.pem");
        assert_eq!(
            std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let mut exe = Exe::start(&args);
    let line = exe.until("certificate SHA-256 fingerprint");
    assert!(line.contains("kept in"), "{line}");
    assert_eq!(fingerprint_in(&line), first);
}

#[tokio::test]
async fn no_plain_serves_tls_only() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap();
    // Held for the whole test: had the server tried to listen on the plain
    // port, it would have exited with "address already in use".
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = taken.local_addr().unwrap().port().to_string();
    let mut exe = Exe::start(&[
        "-p",
        &plain_port,
        "--tls-port",
        "0",
        "--no-plain",
        "--state-dir",
        dir,
    ]);
    let fp = fingerprint_in(&exe.until("certificate SHA-256 fingerprint"));
    let tls = exe.listening_tls();
    let stream = connect(tls, &Trust::Pin(fp)).await.unwrap();
    chat_exchange(stream).await;
    assert!(
        exe.child.try_wait().unwrap().is_none(),
        "server still running"
    );
}

#[test]
fn no_plain_without_tls_port_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-srv"))
        .arg("--no-plain")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-port"));
}
