//! State shared by every session of one server: the settings, the upload
//! dir, the upload slots and the set of (name, size) uploads in progress.
//!
//! It lives apart from the accept loop (`server.rs`) so that layers point one
//! way: `server` creates it and spawns sessions, `session` only uses it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::storage::{Storage, StorageError};
use crate::Config;

/// How long an offer waits for the same (name, size) held by another
/// connection. A client that re-runs right after an interruption usually
/// races the server noticing the old connection's end; a short wait turns
/// that race into a resume instead of a spurious "busy".
pub const BUSY_WAIT: Duration = Duration::from_secs(2);

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
pub struct ActiveGuard {
    shared: Arc<Shared>,
    key: (String, u64),
}

impl Shared {
    /// Shared state over an opened upload dir.
    pub fn new(config: Config, storage: Storage) -> Self {
        Shared {
            uploads: Arc::new(Semaphore::new(config.max_uploads)),
            config,
            storage,
            active: Mutex::new(HashSet::new()),
            cancel: CancellationToken::new(),
            released: Notify::new(),
        }
    }

    /// Like [`Shared::claim`], but waits up to [`BUSY_WAIT`] for the holder to finish.
    pub async fn claim_wait(self: &Arc<Self>, name: &str, size: u64) -> Option<ActiveGuard> {
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
    pub fn claim(self: &Arc<Self>, name: &str, size: u64) -> Option<ActiveGuard> {
        let key = (name.to_string(), size);
        // A poisoned lock only means a panic elsewhere mid-insert; the set
        // itself is still a valid set.
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if !active.insert(key.clone()) {
            return None;
        }
        Some(ActiveGuard {
            shared: self.clone(),
            key,
        })
    }

    /// Runs a blocking storage call on the blocking pool, never on the
    /// async threads (a prefix re-hash can read up to `--max-size`).
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Shared) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let shared = self.clone();
        match tokio::task::spawn_blocking(move || f(&shared)).await {
            Ok(r) => r,
            Err(e) => Err(StorageError::Io {
                action: "run a storage task on",
                path: ".".into(),
                cause: std::io::Error::other(e.to_string()),
            }),
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Ok(mut active) = self.shared.active.lock() {
            active.remove(&self.key);
        }
        self.shared.released.notify_waiters();
    }
}
