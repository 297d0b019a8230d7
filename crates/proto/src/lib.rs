//! Sans-IO wire protocol shared by the chat and upload tools.
//!
//! This crate knows bytes, never sockets, files or clocks: codecs turn byte
//! buffers into typed messages and back, and the servers and clients own the
//! I/O. The normative description of both protocols is `docs/PROTOCOL.md`.
//!
//! # Layout
//! - [`chat`]: the newline-delimited chat line codec and its limits.
//! - [`digest`]: SHA-256 on the fastest backend for the CPU (chosen at run time)
//!   and BLAKE3, behind one `Hasher`; the digest names used on the wire.
//! - [`size`]: the one size grammar (`512K`, `10G`) and readable sizes.
//! - [`upload`]: the versioned binary upload header, control messages and
//!   legacy-form detection.
#![deny(missing_docs)]

pub mod chat;
pub mod digest;
pub mod size;
pub mod upload;
