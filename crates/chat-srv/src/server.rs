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

use proto::chat::ServerLine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::room::Registry;
use crate::{Config, ServerError};

/// How long sessions get to say goodbye after shutdown begins; the process
/// promise is an exit within 2 s.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// State shared by all sessions.
pub(crate) struct Shared {
    pub config: Config,
    pub registry: Registry,
    pub shutdown: CancellationToken,
}

/// What the chat server tells clients on the wrong kind of port.
pub fn hints() -> transport::Hints {
    transport::Hints {
        program: "chat-srv",
        carries: "chat lines",
        tls_client_on_plain_port: ServerLine::Error(
            "this port is plain text; TLS is on the port the server serves with --tls-port",
        )
        .to_bytes()
        .to_vec(),
        plain_client_on_tls_port: ServerLine::Error(
            "this port speaks TLS: connect with chat-cli --tls, or openssl s_client -connect HOST:PORT",
        )
        .to_bytes()
        .to_vec(),
    }
}

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
    for port in &ports {
        let addr = port.local_addr().map_err(ServerError::LocalAddr)?;
        if port.is_tls() {
            info!("listening with TLS on {addr}");
        } else {
            info!("listening on {addr}");
        }
    }
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let full = format!(
        "server full ({} clients), try again later",
        config.max_clients
    );
    let gate = transport::Gate::new(config.max_clients, ServerLine::Error(&full).to_bytes());
    let shared = Arc::new(Shared {
        config,
        registry: Registry::default(),
        shutdown: token.clone(),
    });

    let handler = move |stream: transport::Stream| {
        // Replies are written whole; Nagle's delay would only add latency.
        let _ = stream.set_nodelay(true);
        let peer = stream.peer();
        crate::session::serve(stream, peer, shared.clone())
    };
    tokio::select! {
        () = transport::serve(ports, gate, tracker.clone(), token.clone(), handler) => {}
        _ = shutdown => {}
    }

    info!(connections = tracker.len(), "shutting down");
    token.cancel();
    transport::drain(&tracker, SHUTDOWN_GRACE).await;
    Ok(())
}
