//! Streams a stored file to a `get` client: one blocking thread reads into
//! a small pool of recycled buffers while the session writes earlier ones to
//! the socket, so memory per download is bounded whatever the file size.
//!
//! Nothing is hashed here: the client checks what arrives against the
//! digest recorded when the file was stored, so bit rot on the server is
//! caught at the receiving end.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Size of one read buffer.
pub const BUFFER_SIZE: usize = 512 * 1024;

/// Buffers in flight per download.
pub const POOL_BUFFERS: usize = 4;

/// Why a download stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SendFileError {
    /// The server is shutting down.
    #[error("server shutting down")]
    Cancelled,
    /// The client read nothing for the idle timeout.
    #[error("client stopped reading")]
    Stalled,
    /// Reading the stored file failed (or it shrank).
    #[error("reading the stored file: {0}")]
    Read(io::Error),
    /// Writing to the client failed.
    #[error("writing to the client: {0}")]
    Write(io::Error),
}

/// Sends bytes `offset..offset + len` of `file` to `stream`.
pub async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut file: File,
    offset: u64,
    len: u64,
    cancel: &CancellationToken,
    idle: Duration,
) -> Result<(), SendFileError> {
    let (chunk_tx, mut chunks) = mpsc::channel::<io::Result<(Vec<u8>, usize)>>(POOL_BUFFERS);
    let (free_tx, mut free_rx) = mpsc::channel::<Vec<u8>>(POOL_BUFFERS);
    let reader = tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            let _ = chunk_tx.blocking_send(Err(e));
            return;
        }
        let mut allocated = 0;
        let mut left = len;
        while left > 0 {
            let mut buf = match free_rx.try_recv() {
                Ok(b) => b,
                Err(_) if allocated < POOL_BUFFERS => {
                    allocated += 1;
                    vec![0u8; BUFFER_SIZE]
                }
                Err(_) => match free_rx.blocking_recv() {
                    Some(b) => b,
                    None => return,
                },
            };
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let item = match file.read(&mut buf[..want]) {
                Ok(0) => Err(io::Error::other("the file shrank while being sent")),
                Ok(n) => {
                    left -= n as u64;
                    Ok((buf, n))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if chunk_tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let mut sent = 0u64;
    let result = loop {
        if sent == len {
            break Ok(());
        }
        let Some(item) = chunks.recv().await else {
            break Err(SendFileError::Read(io::Error::other("reader stopped")));
        };
        let (buf, n) = match item {
            Ok(v) => v,
            Err(e) => break Err(SendFileError::Read(e)),
        };
        tokio::select! {
            _ = cancel.cancelled() => break Err(SendFileError::Cancelled),
            r = tokio::time::timeout(idle, stream.write_all(&buf[..n])) => match r {
                Err(_) => break Err(SendFileError::Stalled),
                Ok(Err(e)) => break Err(SendFileError::Write(e)),
                Ok(Ok(())) => {}
            },
        }
        sent += n as u64;
        // The pool is exactly POOL_BUFFERS large, so this never finds it full.
        let _ = free_tx.try_send(buf);
    };
    drop(chunks);
    drop(free_tx);
    let _ = reader.await;
    if result.is_ok() {
        let _ = stream.flush().await;
    }
    result
}
