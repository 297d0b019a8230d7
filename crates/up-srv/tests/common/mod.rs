//! Shared test support: an in-process server on 127.0.0.1:0 with a temp
//! upload dir, and a minimal binary-protocol client built on `proto`.

#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use proto::digest::Algorithm;
use proto::upload::{ClientCodec, ClientMessage, Digest, ServerMessage, MAGIC, VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

/// Every test await is bounded by this, so a hang fails fast.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Awaits `fut` or fails the test after [`TEST_TIMEOUT`].
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .expect("test step timed out")
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), up_srv::ServerError>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.shutdown.cancel();
        within(self.handle)
            .await
            .expect("server task panicked")
            .expect("server returned an error");
        self._tmp
    }

    /// Final files under the upload dir (relative, sorted), partial dir excluded.
    pub fn stored(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.dir, &self.dir, &mut out);
        out.sort();
        out
    }

    /// Entries in the partial dir (the digest records' dir excluded).
    pub fn partials(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.join(up_srv::storage::PARTIAL_DIR))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != up_srv::storage::SUMS_DIR)
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).expect("stored file readable")
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).expect("list upload dir").flatten() {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .expect("below root")
            .to_string_lossy()
            .into_owned();
        if rel == up_srv::storage::PARTIAL_DIR {
            continue;
        }
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            walk(root, &path, out);
        } else {
            out.push(rel);
        }
    }
}

/// Starts a server with default settings in a fresh temp dir.
pub async fn start_server() -> TestServer {
    start_server_with(|_| {}).await
}

/// Starts a server in a fresh temp dir after letting `tweak` adjust the config.
pub async fn start_server_with(tweak: impl FnOnce(&mut up_srv::Config)) -> TestServer {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = start_server_in(tmp.path().join("uploads"), tweak).await;
    server._tmp = Some(tmp);
    server
}

/// Starts a server storing into `dir` (kept by the caller).
pub async fn start_server_in(dir: PathBuf, tweak: impl FnOnce(&mut up_srv::Config)) -> TestServer {
    let mut config = up_srv::Config::new(&dir);
    // Tests never need durability across power loss; fsync costs seconds on CI disks.
    config.fsync = false;
    tweak(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        up_srv::run(listener, config, async move { token.cancelled().await }).await
    });
    // Any answer to a hello proves the accept loop runs, so the upload dir exists.
    Client::hello(addr, "").await;
    TestServer {
        addr,
        dir,
        shutdown,
        handle,
        _tmp: None,
    }
}

pub fn sha256(data: &[u8]) -> Digest {
    proto::digest::digest(Algorithm::Sha256, data).into()
}

/// Deterministic test data of `len` bytes.
pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// A bare binary-protocol client that can misbehave on purpose.
pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    /// Connects without sending anything.
    pub async fn bare(addr: SocketAddr) -> Client {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        Client {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects and sends the magic and a hello; returns the server's answer.
    pub async fn hello(addr: SocketAddr, token: &str) -> (Client, ServerMessage) {
        let mut c = Client::bare(addr).await;
        c.raw(&MAGIC).await;
        c.send(ClientMessage::Hello {
            version: VERSION,
            token: token.into(),
        })
        .await;
        let answer = c.recv().await.expect("answer to hello");
        (c, answer)
    }

    /// Connects with no token and asserts the welcome.
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_welcomed_as(addr, VERSION).await
    }

    /// Connects with no token and asserts a welcome to `version` (a server
    /// with an object store serves the version below puts).
    pub async fn connect_welcomed_as(addr: SocketAddr, version: u16) -> Client {
        let (c, answer) = Client::hello(addr, "").await;
        assert_eq!(
            answer,
            ServerMessage::Welcome {
                version,
                token_checked: false
            }
        );
        c
    }

    pub async fn raw(&mut self, bytes: &[u8]) {
        within(self.stream.write_all(bytes)).await.expect("write");
    }

    pub async fn send(&mut self, msg: ClientMessage) {
        let mut out = BytesMut::new();
        ClientCodec.encode(msg, &mut out).expect("encode");
        self.raw(&out).await;
    }

    /// Next server message, `None` on EOF.
    pub async fn recv(&mut self) -> Option<ServerMessage> {
        loop {
            if let Some(m) = ClientCodec
                .decode(&mut self.buf)
                .expect("valid server stream")
            {
                return Some(m);
            }
            let n = within(self.stream.read_buf(&mut self.buf))
                .await
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    pub async fn offer(&mut self, name: &str, size: u64) -> ServerMessage {
        self.send(ClientMessage::Offer {
            name: name.into(),
            size,
        })
        .await;
        self.recv().await.expect("answer to offer")
    }

    /// Start at `offset`, the body from there, and a finish with `digest`.
    pub async fn body_and_finish(
        &mut self,
        data: &[u8],
        offset: u64,
        digest: Digest,
    ) -> ServerMessage {
        self.send(ClientMessage::Start { offset }).await;
        self.raw(&data[offset as usize..]).await;
        self.send(ClientMessage::Finish { sha256: digest }).await;
        self.recv().await.expect("answer to finish")
    }

    /// Bytes received but not decoded yet (raw bytes after a `Sending`).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.buf.split().to_vec()
    }

    /// A whole well-behaved upload from offset 0; returns the final answer.
    /// A `Present` is answered with `Proceed`, so the same name always
    /// stores a new copy, as a version-1 client would.
    pub async fn upload(&mut self, name: &str, data: &[u8]) -> ServerMessage {
        let mut answer = self.offer(name, data.len() as u64).await;
        if let ServerMessage::Present { .. } = answer {
            self.send(ClientMessage::Proceed).await;
            answer = self.recv().await.expect("answer to proceed");
        }
        match answer {
            ServerMessage::Accept { offset: 0, .. } => {}
            other => return other,
        }
        self.body_and_finish(data, 0, sha256(data)).await
    }
}
