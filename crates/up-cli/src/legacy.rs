//! `--legacy`: the original tutorial's protocol, for its Python server (and
//! `up-srv`'s legacy form): the size as decimal text, wait for any reply,
//! stream the bytes, close. The server neither names the stored file nor
//! verifies it, so the digest reported is the local file's.

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{connect, send_body, SendError};
use crate::throttle::Throttle;
use crate::{reader, ClientError, FileJob, Options, Reporter, REPLY_TIMEOUT};

/// After the last byte, how long to wait for the server to close first.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Uploads one file the legacy way; returns the SHA-256 of the bytes sent.
pub async fn upload(
    opts: &Options,
    job: &FileJob,
    reporter: &mut dyn Reporter,
) -> Result<[u8; 32], ClientError> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let broken = |reason: String| ClientError::Connection {
        addr: addr.clone(),
        reason,
    };
    let file = std::fs::File::open(&job.path).map_err(|e| ClientError::Local {
        path: job.path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut stream = connect(opts).await?;
    stream
        .write_all(job.size.to_string().as_bytes())
        .await
        .map_err(|e| broken(e.to_string()))?;
    stream.flush().await.map_err(|e| broken(e.to_string()))?;
    // The original server answers with anything once it has the size.
    let mut reply = [0u8; 64];
    match tokio::time::timeout(REPLY_TIMEOUT, stream.read(&mut reply)).await {
        Err(_) => return Err(broken("no reply to the size".into())),
        Ok(Ok(0)) => {
            return Err(broken(
                "server closed the connection instead of replying (size too large?)".into(),
            ))
        }
        // up-srv with --token cannot authorise this form and says so with a
        // reason line instead of its reply; any other reply means go ahead.
        Ok(Ok(n)) => {
            if let Some(reason) = reply[..n].strip_prefix(b"refused: ") {
                return Err(ClientError::Refused(
                    String::from_utf8_lossy(reason).trim_end().to_string(),
                ));
            }
        }
        Ok(Err(e)) => return Err(broken(e.to_string())),
    }
    reporter.file_started(job, 0);
    let body = reader::spawn(file, Sha256::new(), 0, job.size);
    let mut throttle = Throttle::new(opts.limit_rate);
    let mut sent_total = 0;
    let (digest, _) = match send_body(
        &mut stream,
        body,
        &mut throttle,
        opts.abort_after,
        &mut sent_total,
        reporter,
    )
    .await
    {
        Ok(v) => v,
        Err(SendError::Abort(n)) => {
            let _ = stream.shutdown().await;
            return Err(ClientError::Aborted(n));
        }
        Err(SendError::Local(reason)) => {
            return Err(ClientError::Local {
                path: job.path.display().to_string(),
                reason,
            })
        }
        Err(SendError::Write(e)) => return Err(broken(e.to_string())),
    };
    stream.shutdown().await.map_err(|e| broken(e.to_string()))?;
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
