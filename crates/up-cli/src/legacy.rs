//! `--legacy`: the original tutorial's protocol, for its Python server (and
//! `up-srv`'s legacy form): the size as decimal text, wait for any reply,
//! stream the bytes, close. The server neither names the stored file nor
//! verifies it, so the digest reported is the local file's.

use std::time::Duration;

use proto::digest::{Algorithm, Hasher};
use proto::upload::LEGACY_REFUSAL_PREFIX;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{connect, send_body, Pacing, SendError};
use crate::{plain, reader, ClientError, FileJob, Options, Reporter, REPLY_TIMEOUT};

/// After the last byte, how long to wait for the server to close first.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Uploads one file the legacy way; returns the SHA-256 of the bytes sent.
pub async fn upload(
    opts: &Options,
    job: &FileJob,
    reporter: &mut dyn Reporter,
) -> Result<[u8; 32], ClientError> {
    let broken = |kind: std::io::ErrorKind, reason: String| ClientError::Connection {
        addr: opts.server.clone(),
        kind,
        reason,
    };
    let io_broken = |e: std::io::Error| broken(e.kind(), plain(&e));
    let file = std::fs::File::open(&job.path).map_err(|e| ClientError::read(&job.path, e))?;
    let mut stream = connect(opts).await?;
    stream
        .write_all(job.size.to_string().as_bytes())
        .await
        .map_err(io_broken)?;
    stream.flush().await.map_err(io_broken)?;
    // The original server answers with anything once it has the size.
    let mut reply = [0u8; 256];
    match tokio::time::timeout(REPLY_TIMEOUT, stream.read(&mut reply)).await {
        Err(_) => {
            return Err(broken(
                std::io::ErrorKind::TimedOut,
                "no reply to the size".into(),
            ))
        }
        Ok(Ok(0)) => {
            return Err(broken(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection instead of replying (size too large?)".into(),
            ))
        }
        // up-srv with --token cannot authorise this form and says so with a
        // reason line instead of its reply; any other reply means go ahead.
        Ok(Ok(n)) => {
            if let Some(reason) = reply[..n].strip_prefix(LEGACY_REFUSAL_PREFIX) {
                return Err(ClientError::Refused(
                    String::from_utf8_lossy(reason).trim_end().to_string(),
                ));
            }
        }
        Ok(Err(e)) => return Err(io_broken(e)),
    }
    reporter.file_started(&job.name, job.size, 0);
    let body = reader::spawn(file, Hasher::new(Algorithm::Sha256), 0, job.size);
    let pacing = Pacing {
        limit_rate: opts.limit_rate,
        abort_after: opts.abort_after,
    };
    let mut sent_total = 0;
    let (digest, _) = match send_body(&mut stream, body, pacing, &mut sent_total, reporter).await {
        Ok(v) => v,
        Err(SendError::Abort(n)) => {
            let _ = stream.shutdown().await;
            return Err(ClientError::Aborted(n));
        }
        Err(SendError::Local(e)) => return Err(ClientError::read(&job.path, e)),
        Err(SendError::Write(e)) => return Err(io_broken(e)),
    };
    stream.shutdown().await.map_err(io_broken)?;
    // Give the server the chance to finish storing before we report.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(digest)
}
