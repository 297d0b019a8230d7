//! The chat-srv integration tests, as one test binary (ripgrep's
//! `autotests = false` pattern): each module is one area, and `common` holds
//! the shared harness (an in-process server from [`chat_srv::spawn`] and a
//! line client with bounded waits).
//!
//! - `server`: the protocol as a client sees it (welcome, replies, commands,
//!   names, history, the pause rule, limits, shutdown).
//! - `hostile`: slowloris, garbage floods, forged lines, load with churn.
//! - `binary`: the real `chat-srv` executable (`--help`, exit codes, SIGTERM).
//! - `tls`: chat over TLS (`--tls-port`, pins, CA files, wrong-port hints).

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod binary;
mod common;
mod hostile;
mod server;
mod tls;
