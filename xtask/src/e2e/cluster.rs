//! The chat cluster (issue 13): several `chat-srv` joined through a real
//! `redis-server`.
//!
//! [`redis_server`] finds redis-server or installs Debian's package through
//! [`crate::install::tool`]; `cargo xtask ci` calls it before its first step,
//! so a machine without Redis stops with one line saying what to install
//! instead of failing later inside the test step (the cluster tests in
//! `crates/chat-srv/src/cluster/tests.rs` need it on `PATH`).

use std::path::PathBuf;

use anyhow::{anyhow, Result};

/// What the cluster checks need redis-server for, as the install message says it.
const PURPOSE: &str = "the chat cluster tests (chat-srv --redis)";

/// The path of redis-server, installed first when missing and possible.
pub fn redis_server() -> Result<PathBuf> {
    crate::install::tool("redis-server", "redis-server", PURPOSE).map_err(|e| anyhow!(e))
}
