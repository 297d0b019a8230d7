//! Reads and hashes a file on one blocking thread into a small pool of
//! recycled buffers while the async sender writes earlier buffers to the
//! socket.
//!
//! Each buffer makes one hop (reader thread to sender) and is sent from the
//! buffer it was read into. Reading and hashing chunk k+1 overlap the socket
//! write of chunk k, and memory stays at `POOL_BUFFERS * BUFFER_SIZE`
//! whatever the file size.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{ClientError, Reporter};

/// Size of one read buffer.
pub const BUFFER_SIZE: usize = 1024 * 1024;

/// Buffers in flight per file.
pub const POOL_BUFFERS: usize = 4;

/// A filled, already hashed buffer; `len` bytes are valid.
#[derive(Debug)]
pub struct Chunk {
    /// The buffer (return it through [`BodyReader::recycle`]).
    pub buf: Vec<u8>,
    /// Valid bytes.
    pub len: usize,
}

/// The reading side of one body.
#[derive(Debug)]
pub struct BodyReader {
    /// Filled buffers, in file order.
    pub chunks: mpsc::Receiver<Chunk>,
    free: mpsc::Sender<Vec<u8>>,
    reader: JoinHandle<io::Result<[u8; 32]>>,
}

impl BodyReader {
    /// Gives a sent buffer back to the reader.
    pub fn recycle(&self, buf: Vec<u8>) {
        // The pool is exactly POOL_BUFFERS large, so this never finds it full.
        let _ = self.free.try_send(buf);
    }

    /// Waits for the reader; the digest of the whole file.
    pub async fn finish(self) -> io::Result<[u8; 32]> {
        drop(self.chunks);
        match self.reader.await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(format!("reader failed: {e}"))),
        }
    }
}

/// Bytes hashed per blocking call while verifying a prefix, so the
/// `verifying` bar moves and the hash still runs off the async threads.
pub const VERIFY_STEP: u64 = 8 * 1024 * 1024;

/// Hashes the first `len` bytes of `path`, reporting progress; returns the
/// open file positioned after them and the hash state, so a resume
/// continues without re-reading.
pub async fn hash_prefix(
    path: &Path,
    len: u64,
    reporter: &mut dyn Reporter,
) -> Result<(File, Sha256), ClientError> {
    let owned = path.to_path_buf();
    let mut state = blocking(move || File::open(&owned).map(|f| (f, Sha256::new())))
        .await
        .map_err(|e| ClientError::read(path, e))?;
    let mut left = len;
    while left > 0 {
        let step = left.min(VERIFY_STEP);
        let (mut file, mut hasher) = state;
        state = blocking(move || {
            hash_some(&mut file, &mut hasher, step)?;
            Ok((file, hasher))
        })
        .await
        .map_err(|e| ClientError::read(path, e))?;
        left -= step;
        reporter.advanced(step);
    }
    Ok(state)
}

/// Reads and hashes exactly `len` bytes of `file`.
fn hash_some(file: &mut File, hasher: &mut Sha256, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than when the upload started",
            ));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
}

/// Starts reading `expected` bytes of `file` from `offset` on a blocking
/// thread that also continues `hasher` (which must cover bytes `0..offset`),
/// so reading and hashing overlap sending.
pub fn spawn(mut file: File, mut hasher: Sha256, offset: u64, expected: u64) -> BodyReader {
    let (chunk_tx, chunks) = mpsc::channel::<Chunk>(POOL_BUFFERS);
    let (free, mut free_rx) = mpsc::channel::<Vec<u8>>(POOL_BUFFERS);
    let reader = tokio::task::spawn_blocking(move || {
        file.seek(SeekFrom::Start(offset))?;
        let mut allocated = 0;
        let mut left = expected;
        while left > 0 {
            let mut buf = match free_rx.try_recv() {
                Ok(b) => b,
                Err(_) if allocated < POOL_BUFFERS => {
                    allocated += 1;
                    vec![0u8; BUFFER_SIZE]
                }
                Err(_) => match free_rx.blocking_recv() {
                    Some(b) => b,
                    // The sender gave up (connection lost); stop quietly.
                    None => return Err(io::Error::other("upload stopped")),
                },
            };
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let mut filled = 0;
            while filled < want {
                match file.read(&mut buf[filled..want]) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file shrank while being uploaded",
                        ))
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            left -= filled as u64;
            hasher.update(&buf[..filled]);
            if chunk_tx.blocking_send(Chunk { buf, len: filled }).is_err() {
                return Err(io::Error::other("upload stopped"));
            }
        }
        Ok(hasher.finalize().into())
    });
    BodyReader {
        chunks,
        free,
        reader,
    }
}
