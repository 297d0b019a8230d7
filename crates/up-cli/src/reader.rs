//! Reads and hashes a file on one blocking thread into a small pool of
//! recycled buffers while the async sender writes earlier buffers to the
//! socket.
//!
//! Each buffer makes one hop (reader thread to sender) and is sent from the
//! buffer it was read into. Reading and hashing chunk k+1 overlap the socket
//! write of chunk k, and memory stays at `POOL_BUFFERS * BUFFER_SIZE`
//! whatever the file size.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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
    reader: JoinHandle<Result<[u8; 32], String>>,
}

impl BodyReader {
    /// Gives a sent buffer back to the reader.
    pub fn recycle(&self, buf: Vec<u8>) {
        // The pool is exactly POOL_BUFFERS large, so this never finds it full.
        let _ = self.free.try_send(buf);
    }

    /// Waits for the reader; the digest of the whole file.
    pub async fn finish(self) -> Result<[u8; 32], String> {
        drop(self.chunks);
        match self.reader.await {
            Ok(r) => r,
            Err(e) => Err(format!("reader failed: {e}")),
        }
    }
}

/// Hashes the first `len` bytes of `path`; returns the open file positioned
/// after them and the hash state, so a resume continues without re-reading.
pub fn hash_prefix(path: &Path, len: u64) -> Result<(File, Sha256), String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = file.read(&mut buf[..want]).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("file is shorter than when the upload started".into());
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok((file, hasher))
}

/// Starts reading `expected` bytes of `file` from `offset` on a blocking
/// thread that also continues `hasher` (which must cover bytes `0..offset`),
/// so reading and hashing overlap sending.
pub fn spawn(mut file: File, mut hasher: Sha256, offset: u64, expected: u64) -> BodyReader {
    let (chunk_tx, chunks) = mpsc::channel::<Chunk>(POOL_BUFFERS);
    let (free, mut free_rx) = mpsc::channel::<Vec<u8>>(POOL_BUFFERS);
    let reader = tokio::task::spawn_blocking(move || {
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| e.to_string())?;
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
                    None => return Err("upload stopped".into()),
                },
            };
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let mut filled = 0;
            while filled < want {
                match file.read(&mut buf[filled..want]) {
                    Ok(0) => return Err("file shrank while being uploaded".into()),
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            left -= filled as u64;
            hasher.update(&buf[..filled]);
            if chunk_tx.blocking_send(Chunk { buf, len: filled }).is_err() {
                return Err("upload stopped".into());
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
