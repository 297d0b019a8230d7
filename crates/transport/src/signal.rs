//! The shutdown signal both servers map to their `run(.., shutdown)` future.

use std::future::Future;

/// Installs SIGINT (Ctrl-C) and SIGTERM handlers now, so a failure shows at
/// start, and returns a future that resolves on the first of them.
#[cfg(unix)]
pub fn shutdown() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
