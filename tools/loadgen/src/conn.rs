//! A line-oriented TCP client and the chat handshake shared by every chat mode.
//!
//! Lines are read with a length cap so a misbehaving server cannot make the
//! generator grow without bound, and every read in the bench sits under a timeout
//! set by the caller.

use std::net::SocketAddr;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The chat server's first line to every client (see docs/PROTOCOL.md).
pub const WELCOME: &str = "欢迎来到简单的聊天室..";

/// The suffix the chat server appends to a message in its reply to the sender.
pub const REPLY_SUFFIX: &str = ",你好";

/// Longest line accepted from a server; far above anything the bench expects.
const MAX_LINE: u64 = 64 * 1024;

/// How many lines a handshake may skip (join notices and the like) before giving up.
const MAX_SKIPPED_LINES: usize = 100_000;

/// One client connection split into a buffered reader and a writer.
pub struct LineConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: Vec<u8>,
}

impl LineConn {
    /// Connects with Nagle off (request/reply traffic) and a read buffer of `capacity`.
    pub async fn connect(addr: SocketAddr, capacity: usize) -> Result<LineConn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (read, writer) = stream.into_split();
        Ok(LineConn {
            reader: BufReader::with_capacity(capacity, read),
            writer,
            line: Vec::with_capacity(128),
        })
    }

    /// Reads the next line without its `\n` or `\r\n`; end of stream is an error.
    pub async fn read_line(&mut self) -> Result<&[u8]> {
        self.line.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.line)
            .await
            .context("reading a line")?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        if self.line.last() != Some(&b'\n') {
            bail!("line longer than {MAX_LINE} bytes or cut by end of stream");
        }
        self.line.pop();
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        Ok(&self.line)
    }

    /// Writes `bytes` whole.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes).await.context("sending")
    }

    /// Reads and throws away everything until end of stream or an error, so that
    /// the server never sees this client as a slow consumer.
    pub async fn drain(mut self) {
        let mut sink = [0u8; 512];
        while let Ok(n) = self.reader.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    }

    /// Reads the welcome line and fails with the server's actual line otherwise
    /// (a refusal when `--max-clients` is reached, for instance).
    pub async fn expect_welcome(&mut self) -> Result<()> {
        let line = self.read_line().await?;
        if !line.starts_with(WELCOME.as_bytes()) {
            bail!(
                "expected the welcome line, got {:?}",
                String::from_utf8_lossy(line)
            );
        }
        Ok(())
    }

    /// Moves to `room` and waits until the server has applied the join: it sends
    /// a probe message after the command and reads until the probe's reply, which
    /// the server can only produce after handling `/join`.
    pub async fn join(&mut self, room: &str, probe: &str) -> Result<()> {
        self.send(format!("/join {room}\n{probe}\n").as_bytes())
            .await?;
        let expected = format!("{probe}{REPLY_SUFFIX}");
        for _ in 0..MAX_SKIPPED_LINES {
            if self.read_line().await? == expected.as_bytes() {
                return Ok(());
            }
        }
        bail!("no reply to the probe {probe:?} after joining {room}")
    }
}

/// The `p`-th percentile (0..=100) of sorted samples, nearest-rank.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Waits for `count` set-up reports of clients (`what` names them in errors),
/// failing on the first error, on a report channel closed early, or after `timeout`.
pub async fn all_ready(
    ready: &mut mpsc::Receiver<Result<()>>,
    count: usize,
    what: &str,
    timeout: Duration,
) -> Result<()> {
    let reports = async {
        for _ in 0..count {
            match ready.recv().await {
                Some(Ok(())) => {}
                Some(Err(err)) => {
                    return Err(err.context(format!("one of the {what} failed its setup")))
                }
                None => bail!("{what} ended before their setup finished"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, reports)
        .await
        .with_context(|| format!("{count} {what} not ready within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
