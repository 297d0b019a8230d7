//! The two servers' shared scaffolding and the TLS listener and connector.
//!
//! `chat-srv` and `up-srv` bind, accept, cap connections, refuse the excess,
//! stop on a signal and log the same way; their clients connect the same way.
//! That code lives here once so the servers cannot drift apart. What is
//! particular to a protocol (the refusal bytes, the hint shown to a client
//! that speaks plain text to a TLS port) is passed in by the caller, since
//! those are wire facts that live in `proto`.
//!
//! # Layout
//! - [`listen`]: [`bind`] with `SO_REUSEADDR`, a 4096 backlog and an error
//!   that names the address and the flag to change.
//! - [`accept`]: the accept loop ([`serve`]): backoff on accept errors, the
//!   connection cap and its refusal ([`Gate`]), TLS handshakes off the loop,
//!   plain/TLS mismatch detection, and [`drain`] for shutdown.
//! - [`stream`]: [`Stream`], one type for plain and TLS connections, so
//!   session code is the same for both.
//! - [`tls`]: server identities (PEM files or a self-signed certificate kept
//!   in a state dir), the client [`Connector`] (system roots, a CA file or a
//!   pinned fingerprint) and [`Fingerprint`].
//! - [`flags`]: the TLS flags of the servers ([`ServerTls`], which opens
//!   their ports) and of the clients ([`ClientTls`]).
//! - [`signal`]: the SIGINT/SIGTERM shutdown future.
//! - [`secret`]: token files and a constant-time token comparison.
//! - [`init_tracing`]: the servers' log set-up.
//! - [`testing`]: a CA and a leaf certificate for the tests of every crate.
//!
//! # Lock poisoning
//! The servers guard plain maps and sets with `std::sync::Mutex` in short
//! sections that hold no `.await` and run no code that peer input can make
//! panic. A poisoned lock therefore means a bug in one session, and the data
//! is still consistent enough to serve the others: [`lock`] recovers the
//! guard instead of spreading the panic to every connection.

pub mod accept;
pub mod flags;
pub mod listen;
pub mod secret;
pub mod signal;
pub mod stream;
pub mod testing;
pub mod tls;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use accept::{drain, serve, Gate, Port};
pub use flags::{ClientTls, Hints, ServerTls, SetupError};
pub use listen::{bind, BindError, LISTEN_BACKLOG};
pub use stream::Stream;
pub use tls::{Connector, Fingerprint, Identity, TlsError, Trust};

/// Locks `mutex`, recovering the guard if a panicking thread poisoned it
/// (see "Lock poisoning" above for why that is sound here).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sets up logging to stderr for a server binary: `RUST_LOG` filters
/// (default `info`), colours only on a terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
}
