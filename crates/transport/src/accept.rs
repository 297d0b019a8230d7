//! The accept loop both servers run: one task per connection, a connection
//! cap with a refusal instead of silent waiting, backoff on accept errors,
//! TLS handshakes off the loop, and plain/TLS mismatch detection.
//!
//! [`serve`] runs until its future is dropped (the caller `select!`s it
//! against its shutdown future), then [`drain`] waits for the sessions under
//! a deadline. An accept error (such as running out of file descriptors) is
//! logged and retried after a pause that doubles from 10 ms up to 1 s; it
//! never ends the server.
//!
//! On a TLS port the first byte decides: a TLS handshake record goes on to
//! the handshake; anything else, or silence for [`SILENT_CLIENT_WAIT`] (a
//! plain chat client waits for the welcome line), gets the caller's hint in
//! clear and is closed. On a plain port, a ClientHello gets the caller's hint
//! and the session sees a read error (see [`Stream`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::stream::looks_like_tls;
use crate::Stream;

/// First pause after a failed accept; it doubles on each failure in a row.
pub const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Longest pause between accept attempts after repeated accept errors.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How long a TLS port waits for a client's first byte before taking it for
/// a plain client waiting to be greeted. TLS clients send their ClientHello
/// at once, so this only delays the hint to plain ones.
pub const SILENT_CLIENT_WAIT: Duration = Duration::from_secs(1);

/// Longest a server-side TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Over-cap connections on a TLS port need a handshake before they can read
/// their refusal; at most this many such refusals run at once, and beyond
/// them excess connections are closed without one.
pub const MAX_TLS_REFUSALS: usize = 64;

/// Longest a refusal or hint (write, then reading the client's leftovers) may take.
const HINT_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes read and dropped from a plain client on a TLS port after its hint.
const MAX_HINT_DRAIN: usize = 64 * 1024;

/// One listening socket and what it speaks.
pub struct Port {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    /// Written in clear to a client that speaks the other protocol.
    mismatch_hint: Arc<[u8]>,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Port {
    /// A plain port; a TLS client dialling it is sent `tls_client_hint`.
    pub fn plain(listener: TcpListener, tls_client_hint: impl Into<Vec<u8>>) -> Port {
        Port {
            listener,
            tls: None,
            mismatch_hint: tls_client_hint.into().into(),
        }
    }

    /// A TLS port; a plain client dialling it is sent `plain_client_hint`.
    pub fn tls(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        plain_client_hint: impl Into<Vec<u8>>,
    ) -> Port {
        Port {
            listener,
            tls: Some(acceptor),
            mismatch_hint: plain_client_hint.into().into(),
        }
    }

    /// The address the port listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether this port speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// The connection cap shared by all ports of a server, and what a
/// connection beyond it is told.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    refusal: Arc<[u8]>,
    tls_refusals: Arc<Semaphore>,
}

impl Gate {
    /// At most `max` connections at once; the next one is sent `refusal`
    /// (the protocol's "server full" bytes) and closed.
    pub fn new(max: usize, refusal: impl Into<Vec<u8>>) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            refusal: refusal.into().into(),
            tls_refusals: Arc::new(Semaphore::new(MAX_TLS_REFUSALS)),
        }
    }

    /// Connections that can still be admitted.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// Accepts on every port until this future is dropped, running `handler`
/// on each admitted connection in a task of `tracker`. `cancel` ends pending
/// handshakes at shutdown (sessions watch their own token).
pub async fn serve<H, F>(
    ports: Vec<Port>,
    gate: Gate,
    tracker: TaskTracker,
    cancel: CancellationToken,
    handler: H,
) where
    H: Fn(Stream) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    // Dropping the set (when the caller's select! picks shutdown) aborts
    // the loops and so closes the listeners.
    let mut loops = JoinSet::new();
    for port in ports {
        let port = Arc::new(port);
        loops.spawn(accept_loop(
            port,
            gate.clone(),
            tracker.clone(),
            cancel.clone(),
            handler.clone(),
        ));
    }
    while loops.join_next().await.is_some() {}
}

async fn accept_loop<H, F>(
    port: Arc<Port>,
    gate: Gate,
    tracker: TaskTracker,
    cancel: CancellationToken,
    handler: H,
) where
    H: Fn(Stream) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        let (tcp, peer) = match port.listener.accept().await {
            Ok(accepted) => {
                backoff = MIN_ACCEPT_BACKOFF;
                accepted
            }
            Err(e) => {
                warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let Ok(permit) = gate.permits.clone().try_acquire_owned() else {
            refuse(tcp, peer, &port, &gate, &tracker, &cancel);
            continue;
        };
        let (port, cancel, handler) = (port.clone(), cancel.clone(), handler.clone());
        tracker.spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            if let Some(stream) = open(tcp, peer, &port, &cancel).await {
                handler(stream).await;
            }
        });
    }
}

/// Sends the gate's refusal and closes. On a plain port the fresh socket's
/// send buffer takes it at once; on a TLS port it needs a handshake first,
/// in a task bounded by [`MAX_TLS_REFUSALS`].
fn refuse(
    tcp: TcpStream,
    peer: SocketAddr,
    port: &Arc<Port>,
    gate: &Gate,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    info!(%peer, "refused: server full");
    if !port.is_tls() {
        let _ = tcp.try_write(&gate.refusal);
        return;
    }
    let Ok(slot) = gate.tls_refusals.clone().try_acquire_owned() else {
        return;
    };
    let (port, refusal, cancel) = (port.clone(), gate.refusal.clone(), cancel.clone());
    tracker.spawn(async move {
        let _slot = slot;
        if let Some(mut stream) = open(tcp, peer, &port, &cancel).await {
            let _ = tokio::time::timeout(HINT_TIMEOUT, async {
                stream.write_all(&refusal).await?;
                stream.shutdown().await
            })
            .await;
        }
    });
}

/// Turns an accepted socket into a [`Stream`]: at once for a plain port,
/// after the mismatch check and handshake for a TLS one. `None` when the
/// connection ends there (logged).
async fn open(
    tcp: TcpStream,
    peer: SocketAddr,
    port: &Port,
    cancel: &CancellationToken,
) -> Option<Stream> {
    let Some(acceptor) = &port.tls else {
        return Some(Stream::plain_watched(tcp, peer, port.mismatch_hint.clone()));
    };
    tokio::select! {
        () = cancel.cancelled() => None,
        stream = handshake(tcp, peer, acceptor, &port.mismatch_hint) => stream,
    }
}

async fn handshake(
    mut tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    hint: &[u8],
) -> Option<Stream> {
    let mut first = [0u8; 2];
    match tokio::time::timeout(SILENT_CLIENT_WAIT, tcp.peek(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) => return None,
        Ok(Ok(n)) if looks_like_tls(&first[..n]) => {}
        Ok(Ok(_)) | Err(_) => {
            info!(%peer, "a plain client dialled the TLS port; sent the hint and closed");
            let _ = tokio::time::timeout(HINT_TIMEOUT, async {
                tcp.write_all(hint).await?;
                tcp.shutdown().await?;
                // Read what the client still sends until it closes: closing
                // with unread input would reset the connection, and the
                // client would see "broken pipe" instead of the hint.
                let mut sink = [0u8; 4096];
                let mut left = MAX_HINT_DRAIN;
                while left > 0 {
                    match tcp.read(&mut sink).await? {
                        0 => break,
                        n => left = left.saturating_sub(n),
                    }
                }
                std::io::Result::Ok(())
            })
            .await;
            return None;
        }
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(Stream::tls(TlsStream::Server(tls), peer)),
        Ok(Err(e)) => {
            info!(%peer, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            info!(%peer, "TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}

/// Stops admitting tasks to `tracker` and waits up to `grace` for those
/// running; returns whether they all finished.
pub async fn drain(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            remaining = tracker.len(),
            "sessions did not finish within {grace:?}, dropping them"
        );
        return false;
    }
    true
}
