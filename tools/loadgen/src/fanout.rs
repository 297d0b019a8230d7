//! Fan-out: one room of many members and one sender; for each message, the time
//! from the send until the last member has read it.
//!
//! Messages go one at a time: the next is sent only once every member has the
//! previous one, so each figure is one message's full delivery time.
//!
//! The same case runs against chat-srv (a room, `NICK: fan-<i>` lines) or an IRC
//! server (a channel, `PRIVMSG #fanout :fan-<i>`), so both are timed alike.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::{mpsc, Semaphore};

use crate::conn::{percentile, LineConn, REPLY_SUFFIX};
use crate::irc;

/// How many connects may be in flight at once against chat-srv (backlog 4096).
const CONNECT_CONCURRENCY: usize = 128;

/// The same against an IRC server: ngircd listens with a short backlog, and SYNs
/// beyond it are dropped and retried after 1, 2, 4, 8... seconds, which stretched
/// a 1,000-member set-up past a minute. Set-up is not timed, so going slower is free.
const IRC_CONNECT_CONCURRENCY: usize = 4;

/// Time allowed for all members to connect and join.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for one message to reach every member.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The room every member joins.
const ROOM: &str = "fanout";

/// The IRC channel every member joins.
const CHANNEL: &str = "#fanout";

/// Which server speaks at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// chat-srv: `/join fanout`, messages arrive as `NICK: text`.
    Chat,
    /// An IRC server: `JOIN #fanout`, messages arrive as `PRIVMSG #fanout :text`.
    Irc,
}

/// Options of `loadgen fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Server address (loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// Protocol of the server.
    #[arg(long, value_enum, default_value = "chat")]
    mode: Protocol,
    /// Connect the members round-robin to these servers instead of `--addr` (the
    /// nodes of a chat cluster).
    #[arg(long, value_delimiter = ',')]
    member_addrs: Vec<SocketAddr>,
    /// Members of the room besides the sender.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Messages to send, one after the other.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Stop sending once this many seconds have passed.
    #[arg(long, default_value_t = 30.0)]
    max_secs: f64,
}

/// Runs the case and returns `members= messages= p50_us= p99_us= max_us=`.
pub async fn run(args: FanoutArgs) -> Result<String> {
    if args.members == 0 || args.messages == 0 {
        bail!("--members and --messages must be at least 1");
    }
    let received: Arc<Vec<AtomicUsize>> =
        Arc::new((0..args.messages).map(|_| AtomicUsize::new(0)).collect());
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, Instant)>(args.messages);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<()>>(args.members);
    let connects = Arc::new(Semaphore::new(match args.mode {
        Protocol::Chat => CONNECT_CONCURRENCY,
        Protocol::Irc => IRC_CONNECT_CONCURRENCY,
    }));
    for id in 0..args.members {
        let (ready_tx, done_tx) = (ready_tx.clone(), done_tx.clone());
        let (received, connects) = (Arc::clone(&received), Arc::clone(&connects));
        let addr = args
            .member_addrs
            .get(id % args.member_addrs.len().max(1))
            .copied()
            .unwrap_or(args.addr);
        let (members, mode) = (args.members, args.mode);
        tokio::spawn(async move {
            let setup = async {
                let _permit = connects.acquire().await.context("connect gate closed")?;
                let mut conn = LineConn::connect(addr, 4096).await?;
                match mode {
                    Protocol::Chat => {
                        conn.expect_welcome().await?;
                        conn.join(ROOM, &format!("member-{id}")).await?;
                    }
                    Protocol::Irc => {
                        irc::register(&mut conn, &format!("m{id}")).await?;
                        irc::join(&mut conn, CHANNEL).await?;
                    }
                }
                Ok(conn)
            };
            let mut conn = match setup.await {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(())).await;
                    conn
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err)).await;
                    return;
                }
            };
            drop(ready_tx);
            // Every line is read (join notices too) so the member never lags;
            // only `fan-<i>` messages are counted.
            loop {
                let seq = match mode {
                    Protocol::Chat => match conn.read_line().await {
                        Ok(line) => message_index(line),
                        Err(_) => break,
                    },
                    Protocol::Irc => match irc::handle(&mut conn).await {
                        Ok(seq) => seq,
                        Err(_) => break,
                    },
                };
                let Some((seq, counter)) = seq.and_then(|i| Some((i, received.get(i)?))) else {
                    continue;
                };
                if counter.fetch_add(1, Ordering::AcqRel) + 1 == members {
                    let _ = done_tx.send((seq, Instant::now())).await;
                }
            }
        });
    }
    drop((ready_tx, done_tx));
    crate::conn::all_ready(&mut ready_rx, args.members, "members", SETUP_TIMEOUT).await?;

    let mut sender = LineConn::connect(args.addr, 4096).await?;
    match args.mode {
        Protocol::Chat => {
            sender.expect_welcome().await?;
            sender.join(ROOM, "sender-ready").await?;
        }
        Protocol::Irc => {
            irc::register(&mut sender, "sender").await?;
            irc::join(&mut sender, CHANNEL).await?;
        }
    }

    let deadline = Instant::now() + Duration::from_secs_f64(args.max_secs);
    let mut samples = Vec::with_capacity(args.messages);
    for seq in 0..args.messages {
        if Instant::now() >= deadline {
            break;
        }
        let begin = Instant::now();
        let line = match args.mode {
            Protocol::Chat => format!("fan-{seq}\n"),
            Protocol::Irc => format!("PRIVMSG {CHANNEL} :fan-{seq}\r\n"),
        };
        sender.send(line.as_bytes()).await?;
        let echo = format!("fan-{seq}{REPLY_SUFFIX}");
        let delivered = async {
            // chat-srv answers the sender too; read that reply so its queue stays
            // empty. An IRC server sends nothing back for a channel message.
            if args.mode == Protocol::Chat {
                while sender.read_line().await? != echo.as_bytes() {}
            }
            match done_rx.recv().await {
                Some((done, at)) if done == seq => Ok(at),
                Some((done, _)) => bail!("message {done} completed while waiting for {seq}"),
                None => bail!("every member disconnected"),
            }
        };
        let at = tokio::time::timeout(DELIVERY_TIMEOUT, delivered)
            .await
            .with_context(|| {
                format!(
                    "message {seq} reached only {} of {} members within {DELIVERY_TIMEOUT:?}",
                    received[seq].load(Ordering::Acquire),
                    args.members
                )
            })??;
        let micros = at.saturating_duration_since(begin).as_micros();
        samples.push(u32::try_from(micros).unwrap_or(u32::MAX));
    }
    samples.sort_unstable();
    Ok(format!(
        "members={} messages={} p50_us={} p99_us={} max_us={}",
        args.members,
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or(0),
    ))
}

/// The `i` of a broadcast line `NICK: fan-<i>`, if the line is one.
fn message_index(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let (_, tail) = text.rsplit_once(": fan-")?;
    tail.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::message_index;

    #[test]
    fn only_broadcast_lines_carry_an_index() {
        assert_eq!(message_index(b"guest-3: fan-17"), Some(17));
        assert_eq!(message_index(b"fan-17,\xe4\xbd\xa0\xe5\xa5\xbd"), None);
        assert_eq!(message_index(b"guest-3: member-4"), None);
        assert_eq!(message_index(b"guest-3: fan-x"), None);
    }
}
