//! The accept loop, on the shared scaffolding of the `transport` crate:
//! connection limit with a refusal line, TLS and plain ports, graceful
//! shutdown.
//!
//! [`run`] takes one bound plain listener (so tests bind port 0); [`serve`]
//! takes the ports `main` opened (plain, TLS or both). Each accepted
//! connection becomes one task running `session::serve` on a
//! [`transport::Stream`], the same code for plain and TLS; a connection
//! beyond `--max-clients` gets a refusal line and is closed instead of
//! waiting unseen. Accept errors are backed off, never fatal. On shutdown a
//! `CancellationToken` tells every session to send its notice and close, and
//! a `TaskTracker` waits for them under a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proto::chat::{server_full_text, ServerLine, TLS_ON_PLAIN_ERROR};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::cluster::{self, Cluster};
use crate::shared::Shared;
use crate::{Config, ServerError};

/// How long sessions get to say goodbye after shutdown begins; the process
/// promise is an exit within 2 s.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// What the chat server tells clients on the wrong kind of port.
pub fn hints() -> transport::Hints {
    transport::Hints {
        program: "chat-srv",
        carries: "chat lines",
        tls_client_on_plain_port: ServerLine::Error(TLS_ON_PLAIN_ERROR).to_bytes().to_vec(),
        plain_client_on_tls_port: ServerLine::Error(
            "this port speaks TLS: connect with chat-cli --tls, or openssl s_client -connect HOST:PORT",
        )
        .to_bytes()
        .to_vec(),
    }
}

/// How long leaving the cluster may take at shutdown.
const CLUSTER_CLOSE: Duration = Duration::from_millis(400);

/// Serves chat clients on the plain `listener` until `shutdown` completes,
/// then tells every client, closes the connections and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future,
) -> Result<(), ServerError> {
    let port = transport::Port::plain(listener, hints().tls_client_on_plain_port);
    serve(vec![port], config, shutdown).await
}

/// Like [`run`], on every port in `ports` (plain and TLS), with one
/// `--max-clients` cap across them.
pub async fn serve(
    ports: Vec<transport::Port>,
    config: Config,
    shutdown: impl Future,
) -> Result<(), ServerError> {
    let addrs = ports
        .iter()
        .map(|port| {
            Ok((
                port.local_addr().map_err(ServerError::LocalAddr)?,
                port.is_tls(),
            ))
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let full = server_full_text(config.max_clients);
    let gate = transport::Gate::new(config.max_clients, ServerLine::Error(&full).to_bytes());
    let cluster_config = config.cluster.clone();
    let node = cluster_config.as_ref().map(|_| cluster::new_node_id());
    // A cluster node's guests carry a tag of the node: `guest-3fa2-17`.
    let guest_tag = node
        .as_deref()
        .map(|n| format!("{}-", n.get(..4).unwrap_or(n)))
        .unwrap_or_default();
    let shared = Arc::new(Shared::new(config, token.clone(), &guest_tag));
    // Its own token: the cluster outlives the sessions, to send their leaves.
    let cluster_stop = CancellationToken::new();
    if let (Some(cluster_config), Some(node)) = (cluster_config, node) {
        let bridge = Arc::new(cluster::Bridge::new(Arc::downgrade(&shared)));
        let cluster = Cluster::start(cluster_config, node, bridge, cluster_stop.clone()).await?;
        let _ = shared.cluster.set(cluster);
    }
    for (addr, tls) in addrs {
        if tls {
            info!("listening with TLS on {addr}");
        } else {
            info!("listening on {addr}");
        }
    }

    let session_shared = shared.clone();
    let handler = move |stream: transport::Stream| {
        // Replies are written whole; Nagle's delay would only add latency.
        let _ = stream.set_nodelay(true);
        let peer = stream.peer();
        crate::session::serve(stream, peer, session_shared.clone())
    };
    tokio::select! {
        () = transport::serve(ports, gate, tracker.clone(), token.clone(), handler) => {}
        _ = shutdown => {}
    }

    info!(connections = tracker.len(), "shutting down");
    token.cancel();
    transport::drain(&tracker, SHUTDOWN_GRACE).await;
    if let Some(cluster) = shared.cluster() {
        // Best effort within the exit promise: the others reap what is left.
        let _ = tokio::time::timeout(CLUSTER_CLOSE, cluster.close()).await;
    }
    cluster_stop.cancel();
    Ok(())
}
