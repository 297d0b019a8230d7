//! Idle connections: open many, wait for each welcome line, then hold them.
//!
//! Once every connection has its welcome, one line `ready conns=N nofile=L` goes to
//! stdout; `xtask bench` then measures the server's memory and closes our stdin,
//! which ends the hold. Every connection keeps reading (and discarding) so the
//! server never has to queue notices for it.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::{mpsc, Semaphore};

use crate::conn::LineConn;

/// How many connects may be in flight at once; the server's listen backlog is finite.
const CONNECT_CONCURRENCY: usize = 256;

/// Time allowed for every connection to get its welcome.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Options of `loadgen idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Server address (loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Longest hold after `ready` if stdin never closes.
    #[arg(long, default_value_t = 120)]
    hold_secs: u64,
}

/// Opens the connections, reports `ready`, holds until stdin closes.
pub async fn run(args: IdleArgs, nofile: u64) -> Result<String> {
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<()>>(1024);
    let connects = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for _ in 0..args.conns {
        let (ready_tx, connects, addr) = (ready_tx.clone(), Arc::clone(&connects), args.addr);
        tokio::spawn(async move {
            let setup = async {
                let _permit = connects.acquire().await.context("connect gate closed")?;
                // A small read buffer: ten thousand of them live in this process.
                let mut conn = LineConn::connect(addr, 256).await?;
                conn.expect_welcome().await?;
                Ok(conn)
            };
            match setup.await {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(())).await;
                    drop(ready_tx);
                    conn.drain().await;
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err)).await;
                }
            }
        });
    }
    drop(ready_tx);
    let all_ready = async {
        for opened in 0..args.conns {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(err)) => {
                    return Err(err.context(format!(
                        "connection {} of {} failed (open-file limit here: {nofile})",
                        opened + 1,
                        args.conns
                    )))
                }
                None => bail!("connections ended before their welcome"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(SETUP_TIMEOUT, all_ready)
        .await
        .with_context(|| {
            format!(
                "{} connections not welcomed within {SETUP_TIMEOUT:?}",
                args.conns
            )
        })??;

    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready conns={} nofile={nofile}", args.conns).context("writing ready")?;
    stdout.flush().context("flushing ready")?;
    // Stdin is read on a blocking thread: the runtime keeps serving the drains.
    let hold = tokio::task::spawn_blocking(|| {
        let mut byte = [0u8; 1];
        let _ = std::io::stdin().read(&mut byte);
    });
    let _ = tokio::time::timeout(Duration::from_secs(args.hold_secs), hold).await;
    Ok(format!("released conns={}", args.conns))
}
