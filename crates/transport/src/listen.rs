//! Binding a listening socket the same way in both servers.
//!
//! `SO_REUSEADDR` lets a restarted server bind while old connections sit in
//! `TIME_WAIT`; a 4096 backlog absorbs connect bursts. A failure is a
//! [`BindError`] that names the address and the flag to change, for example
//! `cannot bind 127.0.0.1:8888: address already in use (another chat-srv running? try --port)`.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Accept-queue length asked of the kernel (which caps it at
/// `net.core.somaxconn`): a burst of connects larger than the default 1,024
/// would otherwise be dropped and retried by the clients' kernels a second later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {addr}: {reason}{hint}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The operating system's reason, lower-case, without "(os error N)".
    pub reason: String,
    /// What to try instead, with its leading space; may be empty.
    pub hint: String,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

impl BindError {
    /// The kind of the underlying error (`AddrInUse`, ...).
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }
}

/// Binds `addr` for `program` (named in the hint) whose port is set by
/// `port_flag` (`--port`, `--tls-port`).
pub fn bind(addr: SocketAddr, program: &str, port_flag: &str) -> Result<TcpListener, BindError> {
    listen(addr).map_err(|source| {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!(" (another {program} running? try {port_flag})")
            }
            std::io::ErrorKind::PermissionDenied => {
                format!(" (ports below 1024 need privileges; try {port_flag})")
            }
            std::io::ErrorKind::AddrNotAvailable => {
                " (not an address of this machine; try --bind 127.0.0.1)".to_owned()
            }
            _ => String::new(),
        };
        BindError {
            addr,
            reason: lower_reason(&source),
            hint,
            source,
        }
    })
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The OS error text without the "(os error N)" suffix, lower-cased first letter.
pub(crate) fn lower_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Raises the open-file soft limit to the hard one, so that `needed`
/// descriptors can be open at once, and warns when even that is below it
/// (`flag` names the setting that asks for them).
pub fn raise_fd_limit(needed: u64, flag: &str) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let now = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s);
    // A few descriptors go to the listener, stdio and the runtime.
    if now < needed + 16 {
        tracing::warn!(
            "open-file limit is {now}, below the {needed} that {flag} may need: connections \
             fail beyond it (raise it with `ulimit -n`)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_port_names_the_program_and_the_flag() {
        let first = bind("127.0.0.1:0".parse().unwrap(), "chat-srv", "--port").unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(addr, "up-srv", "--tls-port").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(
            err.to_string(),
            format!("cannot bind {addr}: address already in use (another up-srv running? try --tls-port)")
        );
    }

    #[tokio::test]
    async fn foreign_address_suggests_loopback() {
        // 192.0.2.0/24 is TEST-NET-1, never an address of this machine.
        let err = bind("192.0.2.1:0".parse().unwrap(), "chat-srv", "--port").unwrap_err();
        assert!(err.to_string().contains("try --bind 127.0.0.1"), "{err}");
    }
}
