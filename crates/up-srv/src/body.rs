//! Receives one raw upload body: socket reads overlap hashing and writing.
//!
//! The session task reads the socket into a small pool of recycled buffers
//! and hands each filled buffer to a blocking thread that hashes it and
//! passes it on to a writer thread, which appends it to the partial file and
//! returns it to the pool. The socket read of chunk k+2, the hashing of
//! chunk k+1 and the write of chunk k all overlap. Memory per upload
//! is `POOL_BUFFERS * BUFFER_SIZE` whatever the file size. Bytes the session
//! already buffered past the `Start` frame are the body's first bytes.
//!
//! A third thread flushes the file every [`SYNC_EVERY`] bytes while the body
//! still arrives and then drops the flushed pages from the page cache
//! (write-behind): the disk writes in parallel with the transfer, the final
//! fsync finds little left to do, and a large upload neither fills the page
//! cache with dirty data nor evicts other files for data nobody reads back.
//! The writer never waits for it, so with `--no-fsync` (no final fsync) the
//! upload still never waits for the disk; measured, write-behind also lowers
//! the server's CPU time per GiB (clean pages are recycled instead of new
//! ones allocated).

use std::fs::File;
use std::io::{self, Seek, Write};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use proto::digest::{Algorithm, Hasher};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Size of one body buffer, and of the blocks the body is written in; large
/// buffers keep syscalls and thread hand-offs per GiB low.
pub const BUFFER_SIZE: usize = 512 * 1024;

/// Buffers per upload: one being filled, the rest queued or being written.
/// Enough to ride out a pause of the writer (a page-cache stall) without
/// stopping the socket reads.
pub const POOL_BUFFERS: usize = 8;

/// The file is flushed in the background every this many bytes.
pub const SYNC_EVERY: u64 = 16 * 1024 * 1024;

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
    /// Fewer than the minimum rate's bytes arrived in one window.
    TooSlow {
        /// Bytes received in the window that fell short.
        received: u64,
    },
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
    pub hasher: Hasher,
    /// Why reception ended.
    pub end: BodyEnd,
}

/// How slow a body may be. The idle timeout resets on every byte, so on its
/// own a client dripping a byte every few seconds would hold an upload slot
/// forever: at least `min_rate * window` bytes must also arrive in every
/// `window`.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Longest wait for any byte.
    pub idle: Duration,
    /// Required average rate in bytes per second; 0 disables the check.
    pub min_rate: u64,
    /// Length of each rate window.
    pub window: Duration,
}

impl Pace {
    /// The pace the server's configuration asks of every body.
    pub fn of(config: &crate::Config) -> Pace {
        Pace {
            idle: config.idle_timeout,
            min_rate: config.min_rate,
            window: config.min_rate_window,
        }
    }

    /// Bytes a window must hold, or `None` when the check is off.
    fn floor(self) -> Option<u64> {
        if self.min_rate == 0 || self.window.is_zero() {
            return None;
        }
        let need = u128::from(self.min_rate) * self.window.as_millis() / 1000;
        Some(u64::try_from(need).unwrap_or(u64::MAX))
    }
}

/// A filled buffer; `len` bytes are valid.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

/// What the hashing and writing thread hands back.
struct Worker {
    written: u64,
    hasher: Hasher,
    result: io::Result<()>,
}

/// Receives exactly `expected` bytes (fewer on an early end): first from
/// `pending` (bytes already read past the header), then from `stream`.
/// Never reads past `expected`, so bytes after the body stay in the socket.
pub async fn receive<S: AsyncRead + Unpin>(
    stream: &mut S,
    pending: &mut BytesMut,
    expected: u64,
    file: File,
    hasher: Hasher,
    cancel: &CancellationToken,
    pace: Pace,
) -> Body {
    let (chunk_tx, chunk_rx) = mpsc::channel::<Chunk>(POOL_BUFFERS);
    let (free_tx, mut free_rx) = mpsc::channel::<Vec<u8>>(POOL_BUFFERS);
    let worker =
        tokio::task::spawn_blocking(move || hash_and_write(file, hasher, chunk_rx, free_tx));

    let mut remaining = expected;
    let mut allocated = 0usize;
    let mut starved = Duration::ZERO;
    let mut end = BodyEnd::Complete;
    let mut pacer = Pacer::new(pace);
    while remaining > 0 {
        let mut buf = match free_rx.try_recv() {
            Ok(b) => b,
            Err(_) if allocated < POOL_BUFFERS => {
                allocated += 1;
                vec![0u8; BUFFER_SIZE]
            }
            Err(_) => {
                let waited = Instant::now();
                match free_rx.recv().await {
                    Some(b) => {
                        // Time lost to our own disk is not the client's: the
                        // rate window pauses while we wait for a buffer.
                        let lost = waited.elapsed();
                        starved += lost;
                        pacer.pause(lost);
                        b
                    }
                    // The worker stopped early: its error is reported below.
                    None => break,
                }
            }
        };
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let mut filled = pending.len().min(want);
        buf[..filled].copy_from_slice(&pending[..filled]);
        pending.advance(filled);
        pacer.count(filled);
        let mut stop = None;
        while filled < want {
            match pacer.read(stream, &mut buf[filled..want], cancel).await {
                Ok(n) => filled += n,
                Err(e) => {
                    stop = Some(e);
                    break;
                }
            }
        }
        remaining -= filled as u64;
        if filled > 0 && chunk_tx.send(Chunk { buf, len: filled }).await.is_err() {
            break;
        }
        if let Some(s) = stop {
            end = s;
            break;
        }
    }
    drop(chunk_tx);
    // Time spent waiting for the disk side: the first thing to look at when
    // an upload is slower than the network.
    debug!("body: {expected} bytes, waited {starved:?} for a free buffer");
    match worker.await {
        Ok(Worker {
            written,
            hasher,
            result: Ok(()),
        }) => Body {
            written,
            hasher,
            end,
        },
        Ok(Worker {
            written,
            hasher,
            result: Err(e),
        }) => Body {
            written,
            hasher,
            end: BodyEnd::Write(e),
        },
        Err(join) => Body {
            written: 0,
            hasher: Hasher::new(Algorithm::Sha256),
            end: BodyEnd::Write(io::Error::other(format!("writer task failed: {join}"))),
        },
    }
}

/// Receives a small body (a put) whole into `out`, which is reused from
/// one put to the next: first from `pending`, then from `stream`, under the
/// same pace rules as [`receive`]. Never reads past `expected`.
pub async fn receive_small<S: AsyncRead + Unpin>(
    stream: &mut S,
    pending: &mut BytesMut,
    expected: usize,
    out: &mut Vec<u8>,
    cancel: &CancellationToken,
    pace: Pace,
) -> BodyEnd {
    out.clear();
    out.resize(expected, 0);
    let mut filled = pending.len().min(expected);
    out[..filled].copy_from_slice(&pending[..filled]);
    pending.advance(filled);
    let mut pacer = Pacer::new(pace);
    pacer.count(filled);
    while filled < expected {
        match pacer.read(stream, &mut out[filled..], cancel).await {
            Ok(n) => filled += n,
            Err(end) => {
                out.truncate(filled);
                return end;
            }
        }
    }
    BodyEnd::Complete
}

/// The pace rules of one body's socket reads: the idle timeout on every
/// read, the minimum rate over every window, and shutdown.
struct Pacer {
    pace: Pace,
    floor: Option<u64>,
    window_end: Instant,
    window_bytes: u64,
}

impl Pacer {
    fn new(pace: Pace) -> Pacer {
        Pacer {
            pace,
            floor: pace.floor(),
            window_end: Instant::now() + pace.window,
            window_bytes: 0,
        }
    }

    /// Time lost waiting for our own disk does not count against the client.
    fn pause(&mut self, lost: Duration) {
        self.window_end += lost;
    }

    /// Bytes that arrived without a read (already buffered).
    fn count(&mut self, n: usize) {
        self.window_bytes += n as u64;
    }

    /// Reads once into `buf` (not empty): the bytes read, or why the body ended.
    async fn read<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut [u8],
        cancel: &CancellationToken,
    ) -> Result<usize, BodyEnd> {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Err(BodyEnd::Cancelled),
                () = tokio::time::sleep_until(self.window_end.into()), if self.floor.is_some() => {
                    if self.floor.is_some_and(|f| self.window_bytes < f) {
                        return Err(BodyEnd::TooSlow { received: self.window_bytes });
                    }
                    self.window_bytes = 0;
                    self.window_end = Instant::now() + self.pace.window;
                }
                r = tokio::time::timeout(self.pace.idle, stream.read(buf)) => return match r {
                    Err(_) => Err(BodyEnd::IdleTimeout),
                    Ok(Ok(0)) => Err(BodyEnd::Disconnected),
                    Ok(Ok(n)) => {
                        self.window_bytes += n as u64;
                        Ok(n)
                    }
                    Ok(Err(e)) => Err(BodyEnd::Read(e)),
                },
            }
        }
    }
}

/// The blocking side: this thread hashes each chunk and hands it to a
/// writer thread, which appends it and recycles the buffer, so hashing
/// chunk k+1 overlaps writing chunk k. After a write error the rest is
/// still drained (and hashed, since the hash covers every received byte) so
/// the session's sends never block.
fn hash_and_write(
    file: File,
    mut hasher: Hasher,
    mut chunks: mpsc::Receiver<Chunk>,
    free: mpsc::Sender<Vec<u8>>,
) -> Worker {
    let (to_writer, from_hasher) = std_mpsc::sync_channel::<Chunk>(POOL_BUFFERS);
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("up-srv-write".into())
            .spawn_scoped(scope, move || write_chunks(file, &from_hasher, &free));
        let mut idle = Duration::ZERO;
        loop {
            let waited = Instant::now();
            let Some(chunk) = chunks.blocking_recv() else {
                break;
            };
            idle += waited.elapsed();
            hasher.update(&chunk.buf[..chunk.len]);
            if to_writer.send(chunk).is_err() {
                break;
            }
        }
        drop(to_writer);
        debug!("body hasher: waited {idle:?} for data");
        let (written, result) = match writer.map(|w| w.join()) {
            Ok(Ok(done)) => done,
            Ok(Err(_)) => (0, Err(io::Error::other("writer thread panicked"))),
            Err(e) => (0, Err(e)),
        };
        Worker {
            written,
            hasher,
            result,
        }
    })
}

/// Appends each hashed chunk, starts the flusher past [`SYNC_EVERY`] bytes
/// and recycles the buffer; bytes written and the first error.
fn write_chunks(
    mut file: File,
    chunks: &std_mpsc::Receiver<Chunk>,
    free: &mpsc::Sender<Vec<u8>>,
) -> (u64, io::Result<()>) {
    let mut written = 0u64;
    let mut result = Ok(());
    // Small bodies need no flush thread: it starts after SYNC_EVERY bytes.
    let mut flusher: Option<Flusher> = None;
    let mut before_flusher = 0u64;
    while let Ok(chunk) = chunks.recv() {
        if result.is_ok() {
            match file.write_all(&chunk.buf[..chunk.len]) {
                Ok(()) => written += chunk.len as u64,
                Err(e) => result = Err(e),
            }
        }
        if let Some(f) = flusher.as_mut() {
            f.wrote(chunk.len as u64);
        } else if before_flusher < SYNC_EVERY {
            before_flusher += chunk.len as u64;
            if before_flusher >= SYNC_EVERY {
                flusher = Flusher::start(&file, before_flusher);
            }
        }
        // The pool is exactly POOL_BUFFERS large, so this never finds it full.
        let _ = free.try_send(chunk.buf);
    }
    if let Some(f) = flusher {
        // A writeback error seen by the flusher is consumed for every
        // descriptor of this open file, so the final fsync would not see it:
        // it must fail the upload here.
        if let Err(e) = f.finish() {
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    (written, result)
}

/// Flushes a file on its own thread while it is being appended to.
struct Flusher {
    /// Bytes appended since the last request; a request is sent past [`SYNC_EVERY`].
    unsynced: u64,
    /// File end to flush up to; the thread takes at most one request at a time.
    requests: std_mpsc::SyncSender<u64>,
    /// Bytes of the file written so far (its end).
    end: u64,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

impl Flusher {
    /// Starts the flushing thread on a clone of `file`'s descriptor, with
    /// `unsynced` bytes already written; `None` when it cannot be had (the
    /// final fsync still makes the data durable).
    fn start(file: &File, unsynced: u64) -> Option<Flusher> {
        let mut clone = file.try_clone().ok()?;
        let end = clone.stream_position().ok()?;
        let (requests, rx) = std_mpsc::sync_channel::<u64>(1);
        let thread = std::thread::Builder::new()
            .name("up-srv-flush".into())
            .spawn(move || {
                let mut dropped = 0u64;
                while let Ok(upto) = rx.recv() {
                    clone.sync_data()?;
                    // Flushed pages are clean: dropping them keeps the page
                    // cache for other work. The advice is only a hint.
                    let len = upto.saturating_sub(dropped);
                    if let (Ok(off), Ok(len)) = (dropped.try_into(), len.try_into()) {
                        let _ = posix_fadvise(
                            &clone,
                            off,
                            len,
                            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                        );
                    }
                    dropped = upto;
                }
                Ok(())
            })
            .ok()?;
        let mut flusher = Flusher {
            unsynced,
            requests,
            end,
            thread,
        };
        flusher.wrote(0);
        Some(flusher)
    }

    /// Stops the thread once its current flush is done; that flush's result.
    fn finish(self) -> io::Result<()> {
        drop(self.requests);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("flush thread panicked")))
    }

    fn wrote(&mut self, n: u64) {
        self.unsynced += n;
        self.end += n;
        if self.unsynced >= SYNC_EVERY {
            // A full channel means a flush is running: it will be asked again
            // after the next chunk, so the writer never waits for the disk here.
            if self.requests.try_send(self.end).is_ok() {
                self.unsynced = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_body_is_hashed_written_and_flushed_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("body");
        let file = File::create(&path).expect("create");
        // Past SYNC_EVERY, so the flush thread starts and runs at least once.
        let count = usize::try_from(SYNC_EVERY).expect("fits") / BUFFER_SIZE * 3 / 2;
        let (tx, rx) = mpsc::channel::<Chunk>(count);
        let (free_tx, mut free_rx) = mpsc::channel::<Vec<u8>>(count);
        let mut expected = Hasher::new(Algorithm::Sha256);
        for i in 0..count {
            let buf = vec![u8::try_from(i % 251).expect("small"); BUFFER_SIZE];
            expected.update(&buf);
            tx.try_send(Chunk {
                buf,
                len: BUFFER_SIZE,
            })
            .expect("room for every chunk");
        }
        drop(tx);
        let worker = hash_and_write(file, Hasher::new(Algorithm::Sha256), rx, free_tx);
        assert!(worker.result.is_ok(), "{:?}", worker.result);
        let total = (count * BUFFER_SIZE) as u64;
        assert_eq!(worker.written, total);
        assert_eq!(worker.hasher.finalize(), expected.finalize());
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), total);
        let mut recycled = 0;
        while free_rx.try_recv().is_ok() {
            recycled += 1;
        }
        assert_eq!(recycled, count, "every buffer goes back to the pool");
    }
}
