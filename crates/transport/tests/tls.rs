//! The transport crate end to end on loopback: TLS with CA-signed and
//! self-signed certificates made by rcgen, pins, refusals at the cap, and
//! plain/TLS mismatches in both directions.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use transport::{Connector, Fingerprint, Gate, Identity, Port, Stream, TlsError, Trust};

const GREETING: &[u8] = b"hello\n";
const FULL: &[u8] = b"full\n";
const TLS_PORT_HINT: &[u8] = b"this port speaks TLS\n";
const PLAIN_PORT_HINT: &[u8] = b"this port is plain\n";
const LIMIT: Duration = Duration::from_secs(10);

/// A CA and a leaf for 127.0.0.1 signed by it, as PEM files in a temp dir.
struct Pki {
    _dir: tempfile::TempDir,
    files: transport::testing::TestPki,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let files = transport::testing::TestPki::new(dir.path()).unwrap();
        Pki { _dir: dir, files }
    }

    fn path(&self, name: &str) -> PathBuf {
        match name {
            "ca.pem" => self.files.ca.clone(),
            other => panic!("no test file {other}"),
        }
    }

    fn identity(&self) -> Identity {
        self.files.identity().unwrap()
    }
}

/// A server on 127.0.0.1:0 ports that greets, then echoes, and counts the
/// application bytes it received.
struct TestServer {
    plain: SocketAddr,
    tls: SocketAddr,
    received: Arc<AtomicUsize>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(identity: &Identity, max: usize) -> TestServer {
    let plain = transport::bind("127.0.0.1:0".parse().unwrap(), "test", "--port").unwrap();
    let tls = transport::bind("127.0.0.1:0".parse().unwrap(), "test", "--tls-port").unwrap();
    let (plain_addr, tls_addr) = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
    let ports = vec![
        Port::plain(plain, PLAIN_PORT_HINT),
        Port::tls(tls, identity.acceptor().unwrap(), TLS_PORT_HINT),
    ];
    let received = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let counter = received.clone();
    let task = tokio::spawn(transport::serve(
        ports,
        Gate::new(max, FULL),
        TaskTracker::new(),
        cancel.clone(),
        move |stream| echo(stream, counter.clone()),
    ));
    TestServer {
        plain: plain_addr,
        tls: tls_addr,
        received,
        cancel,
        task,
    }
}

async fn echo(mut stream: Stream, received: Arc<AtomicUsize>) {
    if stream.write_all(GREETING).await.is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                received.fetch_add(n, Ordering::SeqCst);
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.task.abort();
    }
}

async fn tls_connect(addr: SocketAddr, trust: &Trust) -> Result<Stream, TlsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = Connector::new(trust)?;
    connector.connect(tcp, "127.0.0.1", addr.port()).await
}

async fn read_n(stream: &mut (impl tokio::io::AsyncRead + Unpin), n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(LIMIT, stream.read_exact(&mut buf))
        .await
        .expect("reply in time")
        .unwrap();
    buf
}

async fn read_to_end(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(LIMIT, stream.read_to_end(&mut buf))
        .await
        .expect("close in time");
    buf
}

async fn exchange(stream: &mut Stream) {
    assert_eq!(read_n(stream, GREETING.len()).await, GREETING);
    stream.write_all(b"ping\n").await.unwrap();
    assert_eq!(read_n(stream, 5).await, b"ping\n");
}

#[tokio::test]
async fn tls_with_ca_file_carries_data() {
    let pki = Pki::new();
    let server = start(&pki.identity(), 8).await;
    let mut stream = tls_connect(server.tls, &Trust::Ca(pki.path("ca.pem")))
        .await
        .unwrap();
    assert!(stream.is_tls());
    exchange(&mut stream).await;
}

#[tokio::test]
async fn tls_with_pin_carries_data_whatever_the_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::self_signed(dir.path()).unwrap();
    let server = start(&identity, 8).await;
    let pin = identity
        .fingerprint()
        .to_string()
        .to_lowercase()
        .replace(':', "");
    let trust = Trust::Pin(pin.parse().unwrap());
    let mut stream = tls_connect(server.tls, &trust).await.unwrap();
    exchange(&mut stream).await;
}

fn assert_one_line_with_pin(err: &TlsError, fingerprint: Fingerprint) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains(&format!("--tls-pin {fingerprint}")), "{text}");
}

#[tokio::test]
async fn wrong_pin_is_refused_in_one_line_and_nothing_is_sent() {
    let pki = Pki::new();
    let identity = pki.identity();
    let server = start(&identity, 8).await;
    let wrong = Fingerprint::of(b"some other certificate");
    let err = tls_connect(server.tls, &Trust::Pin(wrong))
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::PinMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("does not match --tls-pin"),
        "{err}"
    );
    assert_one_line_with_pin(&err, identity.fingerprint());
    assert_eq!(server.received.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn untrusted_self_signed_is_refused_in_one_line_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::self_signed(dir.path()).unwrap();
    let server = start(&identity, 8).await;
    let other_ca = Pki::new();
    let err = tls_connect(server.tls, &Trust::Ca(other_ca.path("ca.pem")))
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains("issuer is not trusted"), "{err}");
    assert_one_line_with_pin(&err, identity.fingerprint());
    assert_eq!(server.received.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn certificate_for_another_name_is_untrusted() {
    let pki = Pki::new();
    let server = start(&pki.identity(), 8).await;
    let tcp = TcpStream::connect(server.tls).await.unwrap();
    let connector = Connector::new(&Trust::Ca(pki.path("ca.pem"))).unwrap();
    let err = connector
        .connect(tcp, "example.com", server.tls.port())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not valid for that host name"),
        "{err}"
    );
}

#[tokio::test]
async fn silent_plain_client_on_tls_port_gets_the_hint_not_a_hang() {
    let pki = Pki::new();
    let server = start(&pki.identity(), 8).await;
    let mut tcp = TcpStream::connect(server.tls).await.unwrap();
    assert_eq!(read_to_end(&mut tcp).await, TLS_PORT_HINT);
}

#[tokio::test]
async fn talking_plain_client_on_tls_port_gets_the_hint_at_once() {
    let pki = Pki::new();
    let server = start(&pki.identity(), 8).await;
    let mut tcp = TcpStream::connect(server.tls).await.unwrap();
    tcp.write_all(b"12345").await.unwrap();
    let got = tokio::time::timeout(transport::accept::SILENT_CLIENT_WAIT, read_to_end(&mut tcp))
        .await
        .expect("hint before the silent-client wait");
    assert_eq!(got, TLS_PORT_HINT);
}

#[tokio::test]
async fn tls_client_on_plain_port_is_told_it_is_not_tls() {
    let pki = Pki::new();
    let server = start(&pki.identity(), 8).await;
    let err = tls_connect(server.plain, &Trust::Ca(pki.path("ca.pem")))
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::NotTls { .. }), "{err}");
    assert!(err.to_string().contains("drop --tls"), "{err}");
}

#[tokio::test]
async fn client_hello_on_plain_port_gets_the_hint_and_never_reaches_the_session() {
    let pki = Pki::new();
    let server = start(&pki.identity(), 8).await;
    let mut tcp = TcpStream::connect(server.plain).await.unwrap();
    // A TLS 1.2 handshake record header, as every ClientHello starts.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0])
        .await
        .unwrap();
    let got = read_to_end(&mut tcp).await;
    assert_eq!(got, [GREETING, PLAIN_PORT_HINT].concat());
    assert_eq!(server.received.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_on_both_ports() {
    let pki = Pki::new();
    let server = start(&pki.identity(), 1).await;
    let mut first = TcpStream::connect(server.plain).await.unwrap();
    assert_eq!(read_n(&mut first, GREETING.len()).await, GREETING);

    let mut plain = TcpStream::connect(server.plain).await.unwrap();
    assert_eq!(read_to_end(&mut plain).await, FULL);

    let mut tls = tls_connect(server.tls, &Trust::Ca(pki.path("ca.pem")))
        .await
        .unwrap();
    assert_eq!(read_to_end(&mut tls).await, FULL);

    drop(first);
    // The slot frees when the first session ends; wait for that event.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let mut again = TcpStream::connect(server.plain).await.unwrap();
        let got = read_n(&mut again, GREETING.len().min(FULL.len())).await;
        if got == GREETING[..got.len()] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn dropping_serve_closes_the_ports() {
    let pki = Pki::new();
    let server = start(&pki.identity(), 8).await;
    let (plain, tls) = (server.plain, server.tls);
    drop(server);
    let deadline = tokio::time::Instant::now() + LIMIT;
    for addr in [plain, tls] {
        while TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "{addr} still open");
            tokio::task::yield_now().await;
        }
    }
}

#[test]
fn bad_ca_file_is_named() {
    let err = Connector::new(&Trust::Ca(Path::new("/nonexistent/ca.pem").into())).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot use CA file /nonexistent/ca.pem"),
        "{err}"
    );
}

/// What `openssl x509 -noout -fingerprint -sha256 -in tests/data/rsa-cert.pem` printed.
const RSA_CERT_OPENSSL_FINGERPRINT: &str = "sha256 Fingerprint=B0:96:17:D4:B5:5F:2A:8B:48:A4:F2:DA:EB:39:DE:B6:9C:F8:DD:73:95:AC:61:CD:E7:9E:8B:5A:18:69:DD:4A";

#[tokio::test]
async fn rsa_pkcs8_key_made_by_openssl_serves_tls_under_openssls_fingerprint() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let identity =
        Identity::from_pem_files(&data.join("rsa-cert.pem"), &data.join("rsa-key.pem")).unwrap();
    let openssl: Fingerprint = RSA_CERT_OPENSSL_FINGERPRINT.parse().unwrap();
    assert_eq!(identity.fingerprint(), openssl);
    let server = start(&identity, 8).await;
    let mut stream = tls_connect(server.tls, &Trust::Pin(openssl)).await.unwrap();
    exchange(&mut stream).await;
}
