//! Receives one raw upload body: socket reads overlap hashing and writing.
//!
//! The session task reads the socket into a small pool of recycled buffers
//! and hands each filled buffer through bounded channels to two blocking
//! threads, one hashing and one appending to the partial file. So memory per
//! upload is `POOL_BUFFERS * BUFFER_SIZE` whatever the file size, and the next
//! read proceeds while the previous buffer is hashed and written. Bytes the
//! session already buffered past the `Start` frame are the body's first bytes.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Size of one body buffer; large reads keep syscalls per GiB low.
pub const BUFFER_SIZE: usize = 512 * 1024;

/// Buffers per upload: one being filled, the rest queued or being written.
pub const POOL_BUFFERS: usize = 4;

/// How the body reception ended.
#[derive(Debug)]
pub enum BodyEnd {
    /// All expected bytes arrived and were written.
    Complete,
    /// The peer closed the connection early.
    Disconnected,
    /// The server is shutting down.
    Cancelled,
    /// No byte arrived within the idle timeout.
    IdleTimeout,
    /// Reading the socket failed.
    Read(io::Error),
    /// Writing the partial file failed.
    Write(io::Error),
}

/// The outcome of [`receive`]: bytes written, the hash state and why it ended.
#[derive(Debug)]
pub struct Body {
    /// Bytes appended to the file (all received bytes, even on early end).
    pub written: u64,
    /// Hash state covering the prefix and the written bytes.
    pub hasher: Sha256,
    /// Why reception ended.
    pub end: BodyEnd,
}

/// A filled buffer shared by the hasher and the writer; whichever finishes
/// with it last returns the allocation to the pool.
struct Chunk {
    buf: Arc<Vec<u8>>,
    len: usize,
}

fn recycle(buf: Arc<Vec<u8>>, free: &mpsc::Sender<Vec<u8>>) {
    if let Some(v) = Arc::into_inner(buf) {
        // The pool is exactly POOL_BUFFERS large, so this never finds it full.
        let _ = free.try_send(v);
    }
}

/// Receives exactly `expected` bytes (fewer on an early end): first from
/// `pending` (bytes already read past the header), then from `stream`.
/// Never reads past `expected`, so bytes after the body stay in the socket.
///
/// Hashing and writing run on two blocking threads fed with the same
/// buffers, so neither waits for the other and the socket read overlaps both.
pub async fn receive(
    stream: &mut TcpStream,
    pending: &mut BytesMut,
    expected: u64,
    mut file: File,
    mut hasher: Sha256,
    cancel: &CancellationToken,
    idle: Duration,
) -> Body {
    let (write_tx, mut write_rx) = mpsc::channel::<Chunk>(POOL_BUFFERS);
    let (hash_tx, mut hash_rx) = mpsc::channel::<Chunk>(POOL_BUFFERS);
    let (free_tx, mut free_rx) = mpsc::channel::<Vec<u8>>(POOL_BUFFERS);
    let free_for_writer = free_tx.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut written = 0u64;
        let mut result = Ok(());
        while let Some(chunk) = write_rx.blocking_recv() {
            if result.is_ok() {
                match file.write_all(&chunk.buf[..chunk.len]) {
                    Ok(()) => written += chunk.len as u64,
                    Err(e) => result = Err(e),
                }
            }
            recycle(chunk.buf, &free_for_writer);
        }
        (written, result)
    });
    let hashing = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = hash_rx.blocking_recv() {
            hasher.update(&chunk.buf[..chunk.len]);
            recycle(chunk.buf, &free_tx);
        }
        hasher
    });

    let mut remaining = expected;
    let mut allocated = 0usize;
    let mut end = BodyEnd::Complete;
    while remaining > 0 {
        let mut buf = match free_rx.try_recv() {
            Ok(b) => b,
            Err(_) if allocated < POOL_BUFFERS => {
                allocated += 1;
                vec![0u8; BUFFER_SIZE]
            }
            Err(_) => match free_rx.recv().await {
                Some(b) => b,
                // Both workers stopped early: the writer's error is reported below.
                None => break,
            },
        };
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let mut filled = pending.len().min(want);
        buf[..filled].copy_from_slice(&pending[..filled]);
        pending.advance(filled);
        let mut stop = None;
        while filled < want {
            tokio::select! {
                _ = cancel.cancelled() => {
                    stop = Some(BodyEnd::Cancelled);
                    break;
                }
                r = tokio::time::timeout(idle, stream.read(&mut buf[filled..want])) => match r {
                    Err(_) => { stop = Some(BodyEnd::IdleTimeout); break; }
                    Ok(Ok(0)) => { stop = Some(BodyEnd::Disconnected); break; }
                    Ok(Ok(n)) => filled += n,
                    Ok(Err(e)) => { stop = Some(BodyEnd::Read(e)); break; }
                },
            }
        }
        remaining -= filled as u64;
        if filled > 0 {
            let shared = Arc::new(buf);
            let to_hash = Chunk {
                buf: shared.clone(),
                len: filled,
            };
            let to_write = Chunk {
                buf: shared,
                len: filled,
            };
            if hash_tx.send(to_hash).await.is_err() || write_tx.send(to_write).await.is_err() {
                break;
            }
        }
        if let Some(s) = stop {
            end = s;
            break;
        }
    }
    drop(write_tx);
    drop(hash_tx);
    let hasher = hashing.await.unwrap_or_default();
    match writer.await {
        Ok((written, Ok(()))) => Body {
            written,
            hasher,
            end,
        },
        Ok((written, Err(e))) => Body {
            written,
            hasher,
            end: BodyEnd::Write(e),
        },
        Err(join) => Body {
            written: 0,
            hasher,
            end: BodyEnd::Write(io::Error::other(format!("writer task failed: {join}"))),
        },
    }
}
