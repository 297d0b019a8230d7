//! Round trips: N clients, each sending a line and waiting for its reply.
//!
//! All clients connect and finish their handshake first; a start signal then
//! releases them together, so connection setup never counts in the figures. Chat
//! clients each sit in a room of their own, so each message has exactly one reply
//! (`X,你好`); redis clients send the inline command `PING` and expect `+PONG`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::conn::{percentile, LineConn, REPLY_SUFFIX};

/// How many connects may be in flight at once; keeps the listen backlog from overflowing.
const CONNECT_CONCURRENCY: usize = 128;

/// Lines other than the reply (late room notices) tolerated while waiting for it.
const MAX_SKIPPED_LINES: usize = 1000;

/// Time allowed for all clients to connect and finish their handshake.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Which server speaks at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// chat-srv: `X\n` answered by `X,你好\n`.
    Chat,
    /// redis-server: `PING\r\n` answered by `+PONG\r\n`.
    Redis,
}

/// Options of `loadgen rtt`.
#[derive(Debug, clap::Args)]
pub struct RttArgs {
    /// Server address (loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// Connect the clients round-robin to these servers instead of `--addr` (the
    /// nodes of a chat cluster).
    #[arg(long, value_delimiter = ',')]
    client_addrs: Vec<SocketAddr>,
    /// Protocol of the server.
    #[arg(long, value_enum)]
    mode: Protocol,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Round trips per client.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Each client stops early once this many seconds have passed since the start.
    #[arg(long, default_value_t = 10.0)]
    max_secs: f64,
}

/// Runs the clients and returns `clients= msgs= secs= rate= p50_us= p99_us= max_us=`.
pub async fn run(args: RttArgs) -> Result<String> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<()>>(args.clients);
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let connects = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let max = Duration::from_secs_f64(args.max_secs);
    let mut tasks = Vec::with_capacity(args.clients);
    for id in 0..args.clients {
        let ready_tx = ready_tx.clone();
        let mut go_rx = go_rx.clone();
        let connects = Arc::clone(&connects);
        let addr = args
            .client_addrs
            .get(id % args.client_addrs.len().max(1))
            .copied()
            .unwrap_or(args.addr);
        let (mode, count) = (args.mode, args.count);
        tasks.push(tokio::spawn(async move {
            let setup = async {
                let _permit = connects.acquire().await.context("connect gate closed")?;
                let mut conn = LineConn::connect(addr, 4096).await?;
                handshake(&mut conn, mode, id).await?;
                Ok(conn)
            };
            let mut conn = match setup.await {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(())).await;
                    conn
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err)).await;
                    return Ok(Vec::new());
                }
            };
            drop(ready_tx);
            let start = loop {
                if let Some(start) = *go_rx.borrow_and_update() {
                    break start;
                }
                go_rx.changed().await.context("start signal lost")?;
            };
            round_trips(&mut conn, mode, id, count, start + max).await
        }));
    }
    drop(ready_tx);
    crate::conn::all_ready(&mut ready_rx, args.clients, "clients", SETUP_TIMEOUT).await?;

    let start = Instant::now();
    go_tx.send_replace(Some(start));
    // Each client stops at `max`; the margin covers one last slow round trip.
    let finish = async {
        let mut samples = Vec::with_capacity(args.clients * args.count);
        for task in tasks {
            samples.extend(task.await.context("a client task panicked")??);
        }
        Ok::<_, anyhow::Error>(samples)
    };
    let mut samples = tokio::time::timeout(max + Duration::from_secs(30), finish)
        .await
        .context("clients did not finish in time")??;
    let secs = start.elapsed().as_secs_f64();
    samples.sort_unstable();
    Ok(format!(
        "clients={} msgs={} secs={secs:.4} rate={:.1} p50_us={} p99_us={} max_us={}",
        args.clients,
        samples.len(),
        samples.len() as f64 / secs,
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or(0),
    ))
}

/// Brings one client to the state where a message has exactly one reply.
async fn handshake(conn: &mut LineConn, mode: Protocol, id: usize) -> Result<()> {
    match mode {
        Protocol::Chat => {
            conn.expect_welcome().await?;
            conn.join(&format!("rtt-{id}"), &format!("probe-{id}"))
                .await
        }
        // One PING first, so the connection is fully set up on both ends.
        Protocol::Redis => round_trip_redis(conn).await,
    }
}

/// Runs up to `count` round trips before `deadline`; returns each one's latency in µs.
async fn round_trips(
    conn: &mut LineConn,
    mode: Protocol,
    id: usize,
    count: usize,
    deadline: Instant,
) -> Result<Vec<u32>> {
    let mut samples = Vec::with_capacity(count);
    let mut message = String::with_capacity(64);
    let mut expected = String::with_capacity(64);
    for seq in 0..count {
        let begin = Instant::now();
        if begin >= deadline {
            break;
        }
        match mode {
            Protocol::Chat => {
                use std::fmt::Write as _;
                message.clear();
                expected.clear();
                let _ = writeln!(message, "m{id}.{seq}");
                let _ = write!(expected, "m{id}.{seq}{REPLY_SUFFIX}");
                conn.send(message.as_bytes()).await?;
                read_reply(conn, id, &expected).await?;
            }
            Protocol::Redis => round_trip_redis(conn).await?,
        }
        let micros = begin.elapsed().as_micros();
        samples.push(u32::try_from(micros).unwrap_or(u32::MAX));
    }
    Ok(samples)
}

/// Reads until the reply `expected`. Room notices queued before the client moved
/// to its own room may still arrive after the join was acknowledged, so other
/// lines are skipped (a bounded number); a reply to another message is an error.
async fn read_reply(conn: &mut LineConn, id: usize, expected: &str) -> Result<()> {
    for _ in 0..MAX_SKIPPED_LINES {
        let line = conn.read_line().await?;
        if line == expected.as_bytes() {
            return Ok(());
        }
        if line.ends_with(REPLY_SUFFIX.as_bytes()) {
            bail!(
                "client {id}: expected {expected:?}, got {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
    bail!("client {id}: no reply {expected:?} among {MAX_SKIPPED_LINES} lines")
}

async fn round_trip_redis(conn: &mut LineConn) -> Result<()> {
    conn.send(b"PING\r\n").await?;
    let reply = conn.read_line().await?;
    if reply != b"+PONG" {
        bail!("expected +PONG, got {:?}", String::from_utf8_lossy(reply));
    }
    Ok(())
}
