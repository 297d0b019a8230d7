//! up-cli over TLS (issue 12), driven as the real executable against an
//! in-process up-srv serving a plain and a TLS port on 127.0.0.1:0:
//! verified uploads with `--tls-ca` and `--tls-pin`, `--token-file`, the
//! one-line refusals with nothing stored, and each kind of client on the
//! other kind of port.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use transport::testing::TestPki;

const DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    plain: SocketAddr,
    tls: SocketAddr,
    dir: PathBuf,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(root: &Path, identity: transport::Identity, token: Option<&str>) -> Server {
    let dir = root.join("uploads");
    let mut config = up_srv::Config::new(&dir);
    config.fsync = false;
    config.token = token.map(str::to_owned);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let any = "127.0.0.1:0".parse().unwrap();
            let plain = transport::bind(any, "up-srv", "--port").unwrap();
            let tls = transport::bind(any, "up-srv", "--tls-port").unwrap();
            tx.send((plain.local_addr().unwrap(), tls.local_addr().unwrap()))
                .unwrap();
            let hints = up_srv::server::hints();
            let ports = vec![
                transport::Port::plain(plain, hints.tls_client_on_plain_port),
                transport::Port::tls(
                    tls,
                    identity.acceptor().unwrap(),
                    hints.plain_client_on_tls_port,
                ),
            ];
            up_srv::serve(ports, config, async move { token.cancelled().await })
                .await
                .expect("server run");
        });
    });
    let (plain, tls) = rx.recv_timeout(DEADLINE).expect("server started");
    Server {
        plain,
        tls,
        dir,
        stop,
        thread: Some(thread),
    }
}

/// Runs `up-cli -q -p PORT ARGS... FILE` to its end, bounded.
async fn up_cli(addr: SocketAddr, args: &[&str], file: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_up-cli"));
    cmd.args(["-q", "-p", &addr.port().to_string()])
        .args(args)
        .arg(file)
        .env_remove("UP_TOKEN")
        .stdin(Stdio::null());
    tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || cmd.output().expect("run up-cli")),
    )
    .await
    .expect("up-cli ends in time")
    .expect("no panic")
}

/// A file of `len` pseudo-random bytes and its SHA-256 in hex.
fn sample(dir: &Path, len: usize) -> (PathBuf, String) {
    let mut x: u32 = 0x1234_5678;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let path = dir.join("photo.jpg");
    std::fs::write(&path, &bytes).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    (path, hex)
}

fn assert_stored(out: &Output, server: &Server, hex: &str) {
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{hex}  photo.jpg\n")
    );
    let stored = std::fs::read(server.dir.join("photo.jpg")).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &stored);
    let stored_hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(stored_hex, hex);
}

/// The one error line up-cli printed; nothing was stored.
fn refused(out: &Output, server: &Server) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!server.dir.join("photo.jpg").exists(), "nothing stored");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_tls_with_tls_ca_is_stored_and_verified() {
    let root = tempfile::tempdir().unwrap();
    let pki = TestPki::new(root.path()).unwrap();
    let server = start(root.path(), pki.identity().unwrap(), None);
    let (file, hex) = sample(root.path(), 3 << 20);
    let out = up_cli(server.tls, &["--tls-ca", pki.ca.to_str().unwrap()], &file).await;
    assert_stored(&out, &server, &hex);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_tls_with_tls_pin_and_token_file() {
    let root = tempfile::tempdir().unwrap();
    let identity = transport::Identity::self_signed(&root.path().join("state")).unwrap();
    let pin = identity.fingerprint().to_string();
    let server = start(root.path(), identity, Some("s3cret"));
    let token = root.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let (file, hex) = sample(root.path(), 100_000);
    let args = ["--tls-pin", &pin, "--token-file", token.to_str().unwrap()];
    let out = up_cli(server.tls, &args, &file).await;
    assert_stored(&out, &server, &hex);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_one_line_and_nothing_is_sent() {
    let root = tempfile::tempdir().unwrap();
    let identity = transport::Identity::self_signed(&root.path().join("state")).unwrap();
    let real = identity.fingerprint();
    let server = start(root.path(), identity, None);
    let (file, _) = sample(root.path(), 1000);
    let wrong = transport::Fingerprint::of(b"not it").to_string();
    let out = up_cli(server.tls, &["--tls-pin", &wrong], &file).await;
    let line = refused(&out, &server);
    assert!(line.contains("does not match --tls-pin"), "{line}");
    assert!(line.contains(&format!("--tls-pin {real}")), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_self_signed_is_one_line_and_nothing_is_sent() {
    let root = tempfile::tempdir().unwrap();
    let identity = transport::Identity::self_signed(&root.path().join("state")).unwrap();
    let real = identity.fingerprint();
    let server = start(root.path(), identity, None);
    let unrelated = TestPki::new(root.path()).unwrap();
    let (file, _) = sample(root.path(), 1000);
    let out = up_cli(
        server.tls,
        &["--tls-ca", unrelated.ca.to_str().unwrap()],
        &file,
    )
    .await;
    let line = refused(&out, &server);
    assert!(line.contains("cannot trust 127.0.0.1:"), "{line}");
    assert!(line.contains(&format!("--tls-pin {real}")), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_client_on_tls_port_is_told_to_use_tls() {
    let root = tempfile::tempdir().unwrap();
    let identity = transport::Identity::self_signed(&root.path().join("state")).unwrap();
    let server = start(root.path(), identity, None);
    let (file, _) = sample(root.path(), 1000);
    let out = up_cli(server.tls, &[], &file).await;
    let line = refused(&out, &server);
    assert!(
        line.contains("this port speaks TLS: connect with up-cli --tls"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_on_plain_port_is_told_it_is_not_tls() {
    let root = tempfile::tempdir().unwrap();
    let identity = transport::Identity::self_signed(&root.path().join("state")).unwrap();
    let pin = identity.fingerprint().to_string();
    let server = start(root.path(), identity, None);
    let (file, _) = sample(root.path(), 1000);
    let out = up_cli(server.plain, &["--tls-pin", &pin], &file).await;
    let line = refused(&out, &server);
    assert!(line.contains("did not answer with TLS"), "{line}");
}
