//! Test harness shared by the chat-srv integration tests: an in-process
//! server on 127.0.0.1:0 and a line-oriented test client whose every await
//! is bounded by a timeout, so a hang fails fast instead of stalling CI.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chat_srv::{Config, ServerHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

pub const WELCOME: &str = proto::chat::WELCOME;

/// Tests that load the machine hold this shared; the test that measures
/// the process's memory holds it alone, since all tests share one process.
pub static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A server running in this process until [`TestServer::stop`].
pub struct TestServer {
    pub addr: SocketAddr,
    handle: ServerHandle,
}

/// Starts a server with the default limits.
pub async fn start_server() -> TestServer {
    start_with(Config::default()).await
}

/// Starts a server with the given limits on 127.0.0.1:0.
pub async fn start_with(config: Config) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let handle = chat_srv::spawn(listener, config).expect("spawn the server");
    TestServer {
        addr: handle.addr(),
        handle,
    }
}

impl TestServer {
    /// Triggers shutdown and waits (bounded) for `run` to return.
    pub async fn stop(mut self) {
        self.trigger_shutdown();
        self.join().await;
    }

    /// Starts shutdown without waiting for it.
    pub fn trigger_shutdown(&mut self) {
        self.handle.begin_shutdown();
    }

    /// Waits for `run` to return after [`TestServer::trigger_shutdown`].
    pub async fn join(self) {
        tokio::time::timeout(Duration::from_secs(2), self.handle.join())
            .await
            .expect("server stops within 2 s")
            .expect("run returns Ok");
    }
}

/// A newline-speaking client.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    /// Connects and checks that the first line is the welcome.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut client = Client::connect_raw(addr).await;
        assert_eq!(client.line().await, WELCOME);
        client
    }

    /// Connects without reading anything.
    pub async fn connect_raw(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (r, w) = stream.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write to server");
    }

    /// Sends one line (a `\n` is appended).
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    /// The next line, without its `\n`; panics on end of stream or timeout.
    pub async fn line(&mut self) -> String {
        self.try_line().await.expect("a line, not end of stream")
    }

    /// The next line, or `None` at end of stream.
    pub async fn try_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_until(b'\n', &mut buf))
            .await
            .expect("line in time")
            .expect("read from server");
        if n == 0 {
            return None;
        }
        assert_eq!(buf.pop(), Some(b'\n'), "server lines end with \\n");
        Some(String::from_utf8(buf).expect("server lines are UTF-8"))
    }

    /// Reads lines until one equals `want`; returns the lines skipped.
    pub async fn until(&mut self, want: &str) -> Vec<String> {
        let mut skipped = Vec::new();
        loop {
            let line = self.line().await;
            if line == want {
                return skipped;
            }
            skipped.push(line);
        }
    }

    /// Sends `line` and returns the next line (for a lone client, its answer).
    pub async fn ask(&mut self, line: &str) -> String {
        self.send(line).await;
        self.line().await
    }

    /// Asserts the server closes the connection next.
    pub async fn expect_eof(&mut self) {
        assert_eq!(self.try_line().await, None, "expected the server to close");
    }
}

impl Client {
    /// Closes the sending side, as a client does after its last message.
    pub async fn writer_shutdown(&mut self) {
        self.writer.shutdown().await.expect("shutdown write side");
    }
}
