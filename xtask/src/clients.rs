//! Plain `std::net` clients for `e2e` and `demo`: chat lines, the original chat client's
//! lock-step exchange, and the original upload client's legacy form.
//!
//! Every read has a deadline, so a server that stays silent fails a check instead of
//! hanging the run. Lines are read from our own buffer (not `BufRead::read_line`) so a
//! timeout never loses half a line, and so "read once" can be done exactly the way the
//! original client does it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

// The wire facts xtask needs. They live in `proto`; xtask keeps copies only to stay
// free of proto's async dependencies, and the test below holds them equal to proto's.

/// The tutorial's chat port (`proto::chat::DEFAULT_PORT`).
pub const CHAT_PORT: u16 = 8888;

/// The tutorial's upload port (`proto::upload::DEFAULT_PORT`).
pub const UP_PORT: u16 = 9998;

/// The first line `chat-srv` sends every client (`proto::chat::WELCOME`).
pub const WELCOME: &str = "欢迎来到简单的聊天室..";

/// The suffix `chat-srv` appends to each message it answers (`proto::chat::REPLY_SUFFIX`).
pub const REPLY_SUFFIX: &str = ",你好";

/// What `up-srv` answers to the legacy size line (`proto::upload::LEGACY_REPLY`).
pub const LEGACY_REPLY: &str = "1001";

/// The original client reads at most this many bytes per `recv`.
const ORIGINAL_RECV: usize = 1024;

/// One TCP connection to `chat-srv`, reading newline-terminated lines with deadlines.
pub struct ChatClient {
    stream: TcpStream,
    /// Bytes received but not yet returned as a line.
    pending: Vec<u8>,
    /// Every complete line received so far, for failure details.
    pub seen: Vec<String>,
}

impl ChatClient {
    /// Connects to `addr`, giving up after `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<ChatClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to chat-srv at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(ChatClient {
            stream,
            pending: Vec::new(),
            seen: Vec::new(),
        })
    }

    /// Sends `text` followed by a newline.
    pub fn send_line(&mut self, text: &str) -> Result<()> {
        self.send_raw(format!("{text}\n").as_bytes())
    }

    /// Sends bytes exactly as given (no newline added), like the original client.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .context("sending to chat-srv")?;
        Ok(())
    }

    /// One `read` with a deadline, appended to the pending bytes; `Ok(0)` is end of stream.
    fn fill(&mut self, deadline: Instant) -> Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out");
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.pending.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("timed out")
            }
            Err(err) => Err(err).context("reading from chat-srv"),
        }
    }

    /// The next line (without `\n` or `\r\n`), waiting at most `timeout`.
    pub fn read_line(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&raw)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                self.seen.push(line.clone());
                return Ok(line);
            }
            match self.fill(deadline) {
                Ok(0) => bail!(
                    "connection closed before a full line (received so far: {:?})",
                    self.seen
                ),
                Ok(_) => {}
                Err(err) => bail!(
                    "{err:#} after {timeout:?} waiting for a line (received so far: {:?}, partial {:?})",
                    self.seen,
                    String::from_utf8_lossy(&self.pending)
                ),
            }
        }
    }

    /// Reads lines until one satisfies `wanted`, skipping others (join notices and the
    /// like); fails after `timeout` listing what arrived instead.
    pub fn read_line_where(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .read_line(left)
                .with_context(|| format!("waiting for {what}"))?;
            if wanted(&line) {
                return Ok(line);
            }
        }
    }

    /// Exactly what the original client does: one `recv` of up to 1024 bytes.
    pub fn read_once(&mut self, timeout: Duration) -> Result<String> {
        if self.pending.is_empty() {
            let n = self
                .fill(Instant::now() + timeout)
                .with_context(|| format!("one read within {timeout:?}"))?;
            if n == 0 {
                bail!("connection closed instead of a reply");
            }
        }
        let take = self.pending.len().min(ORIGINAL_RECV);
        let raw: Vec<u8> = self.pending.drain(..take).collect();
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    /// Waits until the server closes the connection, ignoring any last lines.
    pub fn expect_closed(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(0) => return Ok(()),
                Ok(_) => self.pending.clear(),
                // A reset after `q` still means the server closed the connection.
                Err(err)
                    if err
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == ErrorKind::ConnectionReset) =>
                {
                    return Ok(())
                }
                Err(err) => return Err(err.context("waiting for the server to close")),
            }
        }
    }
}

/// Uploads `data` the way the original client does: the size as decimal text, one read
/// for the reply (returned), then the bytes, then close.
pub fn legacy_upload(addr: SocketAddr, data: &[u8], timeout: Duration) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to up-srv at {addr}"))?;
    stream
        .write_all(data.len().to_string().as_bytes())
        .context("sending the size")?;
    stream.set_read_timeout(Some(timeout))?;
    let mut reply = [0u8; ORIGINAL_RECV];
    let n = stream
        .read(&mut reply)
        .with_context(|| format!("waiting {timeout:?} for the reply to the size"))?;
    let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
    if n == 0 {
        bail!("up-srv closed the connection instead of answering the size");
    }
    stream.write_all(data).context("sending the file bytes")?;
    // The original client just closes; shutting down the write side first tells the
    // server "that was everything" without racing a reset.
    let _ = stream.shutdown(Shutdown::Write);
    Ok(reply)
}

#[cfg(test)]
mod wire_facts {
    use super::*;

    /// xtask's copies of the wire facts are proto's, so they cannot drift apart.
    #[test]
    fn copies_equal_proto() {
        assert_eq!(CHAT_PORT, proto::chat::DEFAULT_PORT);
        assert_eq!(UP_PORT, proto::upload::DEFAULT_PORT);
        assert_eq!(WELCOME, proto::chat::WELCOME);
        assert_eq!(REPLY_SUFFIX, proto::chat::REPLY_SUFFIX);
        assert_eq!(LEGACY_REPLY.as_bytes(), proto::upload::LEGACY_REPLY);
    }
}
