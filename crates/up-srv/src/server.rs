//! Accept loop, connection limit and graceful shutdown; the state sessions
//! share is in `shared.rs`.
//!
//! The accept loop is the shared one of the `transport` crate: plain and TLS
//! ports, one task per connection tracked by a `TaskTracker`, accept errors
//! backed off (never fatal), and `--max-connections` with a refusal frame
//! for the excess. A `CancellationToken` tells sessions to stop at their
//! next read point, which leaves in-flight uploads as resumable partials.
//! Concurrent uploads are capped by a semaphore that sessions try (never
//! wait) to acquire, so the excess is refused with a code.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use proto::upload::{RefusalCode, ServerMessage};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::shared::Shared;
use crate::storage::Storage;
use crate::{session, Config, ServerError};

/// Default `--max-connections`: connections held at once; beyond this, new
/// connections are sent a refusal and closed, so idle sockets cannot
/// exhaust file descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long shutdown waits for sessions to stop before returning anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

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
    let shared = prepare(config).await?;
    let port = transport::Port::plain(listener, hints().tls_client_on_plain_port);
    serve(vec![port], shared, shutdown).await
}

/// Opens the upload dir and cleans its partials (on the blocking pool: the
/// scan touches every partial): everything that can fail before the first
/// connection.
pub(crate) async fn prepare(config: Config) -> Result<Arc<Shared>, ServerError> {
    match tokio::task::spawn_blocking(move || open_storage(config)).await {
        Ok(r) => r,
        Err(e) => Err(ServerError::Task(e.to_string())),
    }
}

fn open_storage(config: Config) -> Result<Arc<Shared>, ServerError> {
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

/// Accepts connections on every port until `shutdown`, then stops the sessions.
pub(crate) async fn serve(
    ports: Vec<transport::Port>,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let config = &shared.config;
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

    let max = config.max_connections;
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
        let _ = stream.set_nodelay(true);
        let peer = stream.peer();
        session::run(stream, peer, shared)
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
