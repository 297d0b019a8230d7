//! State shared by every session of one server: its limits, the registry of
//! rooms and nicknames, and the shutdown token.
//!
//! It lives apart from the accept loop (`server`) so the layers point one
//! way: `server` creates it and starts sessions, `session` and `commands`
//! read it, and none of them imports `server`.

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
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
    /// Set once at start when the server is a cluster node (`--redis`).
    pub cluster: OnceLock<Cluster>,
}

impl Shared {
    /// Fresh state for a server with `config`; guests are named
    /// `guest-{guest_tag}{id}`.
    pub fn new(config: Config, shutdown: CancellationToken, guest_tag: &str) -> Self {
        Shared {
            registry: Registry::with_guest_tag(config.history, guest_tag),
            config,
            shutdown,
            cluster: OnceLock::new(),
        }
    }

    /// The cluster, when this server is a node of one.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }
}
