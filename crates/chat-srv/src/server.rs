//! The accept loop: connection limit, per-connection tasks and graceful
//! shutdown.
//!
//! [`run`] takes a bound listener (so tests bind port 0) and a shutdown
//! future. Each accepted connection becomes one task running
//! `session::serve`; a semaphore caps them, and a connection beyond the cap
//! gets a refusal line and is closed instead of waiting unseen. Accept errors
//! (such as running out of file descriptors) are logged and backed off, never
//! fatal. On shutdown a `CancellationToken` tells every session to send its
//! notice and close, and a `TaskTracker` waits for them under a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proto::chat::{server_full_text, ServerLine};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::shared::Shared;
use crate::{Config, ServerError};

/// How long sessions get to say goodbye after shutdown begins; the process
/// promise is an exit within 2 s.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Longest pause between accept attempts after repeated accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves chat clients on `listener` until `shutdown` completes, then tells
/// every client, closes the connections and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future,
) -> Result<(), ServerError> {
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    info!("listening on {addr}");
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(
        config.max_clients.min(Semaphore::MAX_PERMITS),
    ));
    let shared = Arc::new(Shared::new(config, token.clone()));

    tokio::select! {
        () = accept_loop(&listener, &shared, &limit, &tracker) => {}
        _ = shutdown => {}
    }

    info!(connections = tracker.len(), "shutting down");
    drop(listener);
    token.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = tracker.len(),
            "sessions did not finish in time, dropping them"
        );
    }
    Ok(())
}

async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    limit: &Arc<Semaphore>,
    tracker: &TaskTracker,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // The socket is fresh, so its send buffer has room: this write
            // does not block the accept loop.
            let line = ServerLine::Error(&server_full_text(shared.config.max_clients)).to_bytes();
            let _ = stream.try_write(&line);
            info!(%peer, "refused: server full");
            continue;
        };
        // Replies are written whole; Nagle's delay would only add latency.
        let _ = stream.set_nodelay(true);
        tracker.spawn(crate::session::serve(stream, peer, shared.clone(), permit));
    }
}
