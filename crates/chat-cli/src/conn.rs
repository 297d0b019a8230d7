//! One connection to a chat server, over any byte stream (plain TCP or TLS):
//! lines in through [`ChatCodec`]'s decoder, lines out through its encoder,
//! and the time of the last line sent (for `--keepalive`).
//!
//! The modes (`script`, `interactive`) drive a [`Conn`]; `lib.rs` makes the
//! stream and reads the welcome.

use futures_util::{SinkExt as _, StreamExt as _};
use proto::chat::ChatCodec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::ClientError;

/// Server lines longer than this are skipped; generous, since the server's
/// own lines (lists, long messages with a nickname) may exceed its input limit.
const MAX_SERVER_LINE: usize = 1 << 20;

/// A connection to a chat server.
pub(crate) struct Conn<S> {
    lines: FramedRead<ReadHalf<S>, ChatCodec>,
    sink: FramedWrite<WriteHalf<S>, ChatCodec>,
    /// When a line was last sent; the keep-alive is due a while after it.
    pub last_sent: Instant,
}

impl<S: AsyncRead + AsyncWrite> Conn<S> {
    /// Frames `stream` in both directions.
    pub fn new(stream: S) -> Self {
        let (r, w) = tokio::io::split(stream);
        Conn {
            lines: FramedRead::new(r, ChatCodec::new(MAX_SERVER_LINE)),
            sink: FramedWrite::new(w, ChatCodec::new(MAX_SERVER_LINE)),
            last_sent: Instant::now(),
        }
    }

    /// Sends one line (the codec's encoder adds the `\n`).
    pub async fn send(&mut self, line: &str) -> Result<(), ClientError> {
        self.last_sent = Instant::now();
        self.sink.send(line).await.map_err(|_| ClientError::Closed)
    }

    /// The next server line (`None` at end of stream); undecodable lines are
    /// reported on stderr and skipped.
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            match self.lines.next().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Io {
                        context: "reading from the server",
                        source: std::io::Error::other(e),
                    })
                }
                Some(Ok(Ok(line))) => return Ok(Some(line)),
                Some(Ok(Err(e))) => eprintln!("chat-cli: skipped a server line: {e}"),
            }
        }
    }

    /// Closes the sending side; the server then closes too.
    pub async fn shutdown(&mut self) {
        let _ = self.sink.get_mut().shutdown().await;
    }
}
