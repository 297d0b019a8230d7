//! Accept loop, shared limits and graceful shutdown.
//!
//! One task per connection, tracked by a `TaskTracker`; a `CancellationToken`
//! tells sessions to stop at their next read point, which leaves in-flight
//! uploads as resumable partials. Accept errors are logged and backed off,
//! never fatal. Concurrent uploads are capped by a semaphore that sessions
//! try (never wait) to acquire, so the excess is refused with a code.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::storage::Storage;
use crate::{session, Config, ServerError};

/// Connections held at once; beyond this, new connections are closed at once
/// so idle sockets cannot exhaust file descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long shutdown waits for sessions to stop before returning anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// State shared by all sessions.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub config: Config,
    /// The upload dir.
    pub storage: Storage,
    /// Upload slots (`--max-uploads`).
    pub uploads: Arc<Semaphore>,
    /// Partial keys (name, size) being received, to refuse a second sender.
    pub active: Mutex<HashSet<(String, u64)>>,
    /// Cancelled when the server shuts down.
    pub cancel: CancellationToken,
    /// Signalled whenever an active entry is released.
    pub released: Notify,
}

/// Removes an active (name, size) entry when the upload ends, however it ends.
#[derive(Debug)]
pub struct ActiveGuard<'a> {
    shared: &'a Shared,
    key: (String, u64),
}

/// How long an offer waits for the same (name, size) held by another
/// connection. A client that re-runs right after an interruption usually
/// races the server noticing the old connection's end; a short wait turns
/// that race into a resume instead of a spurious "busy".
pub const BUSY_WAIT: Duration = Duration::from_secs(2);

impl Shared {
    /// Like [`Shared::claim`], but waits up to [`BUSY_WAIT`] for the holder to finish.
    pub async fn claim_wait(&self, name: &str, size: u64) -> Option<ActiveGuard<'_>> {
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(guard) = self.claim(name, size) {
                return Some(guard);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                r = tokio::time::timeout_at(deadline, notified) => if r.is_err() {
                    return None;
                },
            }
        }
    }

    /// Marks (name, size) as being received; `None` if another connection has it.
    pub fn claim(&self, name: &str, size: u64) -> Option<ActiveGuard<'_>> {
        let key = (name.to_string(), size);
        let mut active = self.active.lock().expect("active set lock poisoned");
        if !active.insert(key.clone()) {
            return None;
        }
        Some(ActiveGuard { shared: self, key })
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut active) = self.shared.active.lock() {
            active.remove(&self.key);
        }
        self.shared.released.notify_waiters();
    }
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

pub(crate) async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
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
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    if !is_loopback(&addr) && config.token.is_none() {
        warn!("listening on non-loopback address {addr} without a token: anyone who can reach it may upload (set --token or UP_TOKEN)");
    }
    if !config.fsync {
        warn!("--no-fsync: stored files may be lost or torn by a crash or power loss");
    }
    info!("listening on {addr}, storing into {}", config.dir.display());

    let shared = Arc::new(Shared {
        uploads: Arc::new(Semaphore::new(config.max_uploads)),
        config,
        storage,
        active: Mutex::new(HashSet::new()),
        cancel: CancellationToken::new(),
        released: Notify::new(),
    });
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
                    tracker.spawn(async move {
                        session::run(stream, peer, &shared).await;
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
