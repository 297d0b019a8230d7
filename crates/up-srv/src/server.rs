//! Accept loop, connection limit and graceful shutdown; the state sessions
//! share is in `shared.rs`.
//!
//! One task per connection, tracked by a `TaskTracker`; a `CancellationToken`
//! tells sessions to stop at their next read point, which leaves in-flight
//! uploads as resumable partials. Accept errors are logged and backed off,
//! never fatal. Concurrent uploads are capped by a semaphore that sessions
//! try (never wait) to acquire, so the excess is refused with a code.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::shared::Shared;
use crate::storage::Storage;
use crate::{session, Config, ServerError};

/// Connections held at once; beyond this, new connections are closed at once
/// so idle sockets cannot exhaust file descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long shutdown waits for sessions to stop before returning anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

pub(crate) async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let shared = prepare(config)?;
    serve(listener, shared, shutdown).await
}

/// Opens the upload dir and cleans its partials: everything that can fail
/// before the first connection.
pub(crate) fn prepare(config: Config) -> Result<Arc<Shared>, ServerError> {
    let storage = Storage::open(&config.dir, config.overwrite, config.fsync)?;
    let scan = storage.scan_partials(config.partial_max_age)?;
    if scan.removed > 0 {
        info!(
            "removed {} stale partial upload(s) from {}",
            scan.removed,
            config.dir.join(crate::storage::PARTIAL_DIR).display()
        );
    }
    for (name, size, held) in &scan.kept {
        info!("resumable partial upload kept: {name} ({held} of {size} bytes)");
    }
    Ok(Arc::new(Shared::new(config, storage)))
}

/// Accepts connections until `shutdown`, then stops the sessions.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let config = &shared.config;
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    if !is_loopback(&addr) && config.token.is_none() {
        warn!("listening on non-loopback address {addr} without a token: anyone who can reach it may upload (set --token or UP_TOKEN)");
    }
    if !config.fsync {
        warn!("--no-fsync: stored files may be lost or torn by a crash or power loss");
    }
    info!("listening on {addr}, storing into {}", config.dir.display());

    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        warn!(%peer, "refusing connection: {MAX_CONNECTIONS} connections open");
                        continue;
                    };
                    let shared = shared.clone();
                    let _ = stream.set_nodelay(true);
                    tracker.spawn(async move {
                        session::run(stream, peer, shared).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    error!("accept failed: {e} (retrying)");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    info!("shutting down; in-flight uploads are kept as resumable partials");
    shared.cancel.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("some sessions did not stop within {SHUTDOWN_GRACE:?}");
    }
    Ok(())
}
