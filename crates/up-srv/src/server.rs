//! Accept loop, shared limits and graceful shutdown.
//!
//! The accept loop is the shared one of the `transport` crate: plain and TLS
//! ports, one task per connection tracked by a `TaskTracker`, accept errors
//! backed off (never fatal), and `--max-connections` with a refusal frame
//! for the excess. A `CancellationToken` tells sessions to stop at their
//! next read point, which leaves in-flight uploads as resumable partials.
//! Concurrent uploads are capped by a semaphore that sessions try (never
//! wait) to acquire, so the excess is refused with a code.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use proto::upload::{RefusalCode, ServerMessage};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::storage::Storage;
use crate::{session, Config, ServerError};

/// Default `--max-connections`: connections held at once; beyond this, new
/// connections are sent a refusal and closed, so idle sockets cannot
/// exhaust file descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long shutdown waits for sessions to stop before returning anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

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
        let mut active = transport::lock(&self.active);
        if !active.insert(key.clone()) {
            return None;
        }
        Some(ActiveGuard { shared: self, key })
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        transport::lock(&self.shared.active).remove(&self.key);
        self.shared.released.notify_waiters();
    }
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// A refusal frame, in the clear framing a plain client reads.
fn refusal(code: RefusalCode, reason: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    // Encoding a refusal cannot fail: long reasons are truncated.
    let _ = ServerMessage::Refuse {
        code,
        reason: reason.to_owned(),
    }
    .encode_into(&mut out);
    out.to_vec()
}

/// What the upload server tells clients on the wrong kind of port.
pub fn hints() -> transport::Hints {
    transport::Hints {
        program: "up-srv",
        carries: "files and the upload token",
        tls_client_on_plain_port: refusal(
            RefusalCode::BadMessage,
            "this port is plain; TLS is on the port the server serves with --tls-port",
        ),
        plain_client_on_tls_port: refusal(
            RefusalCode::BadMessage,
            "this port speaks TLS: connect with up-cli --tls",
        ),
    }
}

pub(crate) async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let port = transport::Port::plain(listener, hints().tls_client_on_plain_port);
    serve(vec![port], config, shutdown).await
}

pub(crate) async fn serve(
    ports: Vec<transport::Port>,
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
    for port in &ports {
        let addr = port.local_addr().map_err(ServerError::LocalAddr)?;
        if !is_loopback(&addr) && config.token.is_none() {
            warn!("listening on non-loopback address {addr} without a token: anyone who can reach it may upload (set --token, --token-file or UP_TOKEN)");
        }
        let with = if port.is_tls() { "with TLS " } else { "" };
        info!(
            "listening {with}on {addr}, storing into {}",
            config.dir.display()
        );
    }
    if !config.fsync {
        warn!("--no-fsync: stored files may be lost or torn by a crash or power loss");
    }

    let shared = Arc::new(Shared {
        uploads: Arc::new(Semaphore::new(config.max_uploads)),
        config,
        storage,
        active: Mutex::new(HashSet::new()),
        cancel: CancellationToken::new(),
        released: Notify::new(),
    });
    let max = shared.config.max_connections;
    let gate = transport::Gate::new(
        max,
        refusal(
            RefusalCode::TooManyUploads,
            &format!("server full ({max} connections), try again later"),
        ),
    );
    let tracker = TaskTracker::new();
    let session_shared = shared.clone();
    let handler = move |stream: transport::Stream| {
        let shared = session_shared.clone();
        async move {
            let _ = stream.set_nodelay(true);
            let peer = stream.peer();
            session::run(stream, peer, &shared).await;
        }
    };
    tokio::select! {
        () = transport::serve(ports, gate, tracker.clone(), shared.cancel.clone(), handler) => {}
        () = shutdown => {}
    }
    info!("shutting down; in-flight uploads are kept as resumable partials");
    shared.cancel.cancel();
    transport::drain(&tracker, SHUTDOWN_GRACE).await;
    Ok(())
}
