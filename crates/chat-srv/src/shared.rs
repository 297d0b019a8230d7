//! State shared by every session of one server: its limits, the registry of
//! rooms and nicknames, and the shutdown token.
//!
//! It lives apart from the accept loop (`server`) so the layers point one
//! way: `server` creates it and starts sessions, `session` and `commands`
//! read it, and none of them imports `server`.

use tokio_util::sync::CancellationToken;

use crate::room::Registry;
use crate::Config;

/// State shared by all sessions.
pub(crate) struct Shared {
    /// The limits in force.
    pub config: Config,
    /// Rooms, nicknames and room history.
    pub registry: Registry,
    /// Cancelled when the server shuts down; each session's kick token is a
    /// child of it.
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Fresh state for a server with `config`.
    pub fn new(config: Config, shutdown: CancellationToken) -> Self {
        Shared {
            registry: crate::room::Registry::new(config.history),
            config,
            shutdown,
        }
    }
}
