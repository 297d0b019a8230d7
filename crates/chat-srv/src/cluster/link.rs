//! The task that holds this node's Redis connections: it writes every
//! queued operation in order, reads the bus, renews the heartbeat, reaps
//! dead nodes, and goes through split and heal when Redis goes away.
//!
//! Two connections per node: a multiplexed one for commands (everything the
//! node sends goes through the writer here, batched into pipelines in queue
//! order) and a subscriber one whose reader task hands bus lines to
//! [`Local`]. Either failing — the subscription ending, a command failing
//! at the connection level, a heartbeat timing out — ends the link: the node
//! is *split* until [`Link::connect`] succeeds again, retried with a backoff
//! from [`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::keys::Keys;
use super::scripts::{ScriptId, Scripts};
use super::wire::{Envelope, LineKind, Order, Verdict};
use super::{
    register_args, ClusterError, Local, Op, Stats, Then, QUERY_TIMEOUT, SPLIT_NOTICE, WHOLE_NOTICE,
};

/// How long connecting (both connections, scripts, registration) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// First pause before reconnecting after Redis went away.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest pause between reconnect attempts: a restarted Redis is found
/// again within about this long.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Operations sent in one pipeline at most.
const MAX_BATCH: usize = 512;

/// Members registered per pipeline when registering again after a split.
const REGISTER_CHUNK: usize = 1000;

/// Inboxes whose sequence numbers are remembered; see [`Link::next_seq`].
const MAX_INBOXES: usize = 1024;

/// The connection task's state.
pub(crate) struct Link {
    pub client: redis::Client,
    pub url: String,
    pub keys: Keys,
    pub node: String,
    pub local: Arc<dyn Local>,
    pub whole: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
    pub ops: mpsc::Receiver<Op>,
    pub stop: CancellationToken,
    /// Number of the last line published on the bus.
    pub seq: u64,
    pub heartbeat: Duration,
    pub heartbeat_ttl: Duration,
}

/// One live pair of connections.
pub(crate) struct Conn {
    cmd: MultiplexedConnection,
    scripts: Scripts,
    /// Cancelled by the reader when the subscription ends.
    lost: CancellationToken,
    reader: JoinHandle<()>,
    /// Numbers of the last line published to each node's inbox.
    inbox_seq: HashMap<String, u64>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Why [`Link::serve`] returned.
enum Ended {
    Stop,
    Lost(String),
}

impl Link {
    /// Connects, subscribes, loads the scripts, registers this node and its
    /// current members, and marks the node whole.
    pub async fn connect(&mut self) -> Result<Conn, String> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.try_connect()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
        }
    }

    async fn try_connect(&mut self) -> redis::RedisResult<Conn> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(QUERY_TIMEOUT);
        let mut cmd = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.keys.bus()).await?;
        pubsub.subscribe(self.keys.inbox(&self.node)).await?;
        for id in ScriptId::ALL {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(id.source())
                .query_async::<String>(&mut cmd)
                .await?;
        }
        let scripts = Scripts::new();

        let lost = CancellationToken::new();
        let reader = tokio::spawn(read_bus(
            pubsub,
            self.node.clone(),
            self.local.clone(),
            self.stats.clone(),
            lost.clone(),
        ));
        let mut conn = Conn {
            cmd,
            scripts,
            lost,
            reader,
            inbox_seq: HashMap::new(),
        };
        // Whole from here on, so members arriving meanwhile queue their
        // registration behind this one instead of being dropped.
        self.whole.store(true, Ordering::Release);
        if let Err(e) = self.register(&mut conn).await {
            self.whole.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(conn)
    }

    /// Replaces whatever Redis holds for this node (stale after a split)
    /// with its members now, and renews its heartbeat.
    async fn register(&mut self, conn: &mut Conn) -> redis::RedisResult<()> {
        let members = self.local.members();
        let mut first = true;
        for chunk in members.chunks(REGISTER_CHUNK).chain(
            // One round even with no members, to register the node itself.
            members.is_empty().then_some(&[][..]),
        ) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            if first {
                self.script(&mut pipe, conn, ScriptId::Close, &[]);
                self.beat_cmds(&mut pipe);
                first = false;
            }
            for m in chunk {
                self.script(&mut pipe, conn, ScriptId::Register, &register_args(m));
            }
            let answers: Vec<Value> = pipe.query_async(&mut conn.cmd).await?;
            let registered = answers.len().saturating_sub(chunk.len());
            for (m, v) in chunk.iter().zip(answers.into_iter().skip(registered)) {
                if matches!(v, Value::Int(0)) {
                    info!(nick = %m.nick, "nickname taken elsewhere while split");
                    self.local.nick_lost(m.peer);
                }
            }
        }
        Ok(())
    }

    /// Serves until stopped, splitting and healing as Redis comes and goes.
    pub async fn run(mut self, mut conn: Conn) {
        loop {
            let reason = match self.serve(&mut conn).await {
                Ended::Stop => return,
                Ended::Lost(reason) => reason,
            };
            drop(conn);
            self.whole.store(false, Ordering::Release);
            self.stats.splits.fetch_add(1, Ordering::Relaxed);
            warn!(url = %self.url, "lost redis ({reason}); serving only this node's members");
            self.local.notice_all(SPLIT_NOTICE);
            conn = match self.reconnect().await {
                Some(conn) => conn,
                None => return,
            };
            info!(url = %self.url, "redis is back; the chat is whole again");
            self.local.notice_all(WHOLE_NOTICE);
        }
    }

    async fn reconnect(&mut self) -> Option<Conn> {
        let mut backoff = MIN_BACKOFF;
        loop {
            self.fail_pending();
            tokio::select! {
                () = self.stop.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            match self.connect().await {
                Ok(conn) => return Some(conn),
                Err(e) => debug!("redis still away: {e}; retrying in {backoff:?}"),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Answers and drops what was queued before the split was noticed, so
    /// no caller waits for a connection that is gone.
    fn fail_pending(&mut self) {
        while let Ok(op) = self.ops.try_recv() {
            match op {
                Op::Script { then, .. } | Op::Cmd { then, .. } => fail(then),
                Op::Close(tx) => {
                    let _ = tx.send(());
                }
                Op::Publish { .. } => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    async fn serve(&mut self, conn: &mut Conn) -> Ended {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ended::Stop,
                () = conn.lost.cancelled() => return Ended::Lost("subscription closed".into()),
                _ = tick.tick() => {
                    if let Err(e) = self.beat(conn).await {
                        return Ended::Lost(e);
                    }
                }
                n = self.ops.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        return Ended::Stop;
                    }
                    let closing = batch.iter().any(|op| matches!(op, Op::Close(_)));
                    if let Err(e) = self.write(conn, batch.drain(..)).await {
                        return Ended::Lost(e);
                    }
                    if closing {
                        info!(node = %self.node, "left the cluster");
                        return Ended::Stop;
                    }
                }
            }
        }
    }

    /// Renews the heartbeat and reaps dead nodes, announcing their members'
    /// leaves (here directly, elsewhere through the bus).
    async fn beat(&mut self, conn: &mut Conn) -> Result<(), String> {
        let mut pipe = redis::pipe();
        self.beat_cmds(&mut pipe);
        self.script(&mut pipe, conn, ScriptId::Reap, &[]);
        let answers: (Value, i64, Vec<String>) =
            tokio::time::timeout(QUERY_TIMEOUT, pipe.query_async(&mut conn.cmd))
                .await
                .map_err(|_| format!("heartbeat not answered within {QUERY_TIMEOUT:?}"))?
                .map_err(|e| format!("heartbeat failed: {e}"))?;
        let (_, added, reaped) = answers;
        if added == 1 {
            // Another node took this one for dead (it stalled past the
            // heartbeat's life): its members are gone from Redis.
            return Err("this node was reaped as dead; registering again".into());
        }
        let mut notices = Vec::new();
        for triple in reaped.chunks_exact(3) {
            let (node, room_key, nick) = (&triple[0], &triple[1], &triple[2]);
            if room_key.is_empty() {
                warn!(%node, "node stopped heartbeating; removed its members");
                continue;
            }
            let line = proto::chat::ServerLine::Notice(&format!("{nick} left")).to_bytes();
            self.local.room_line(room_key, LineKind::Notice, &line);
            notices.push(Op::Publish {
                inbox: None,
                kind: LineKind::Notice,
                target: room_key.clone(),
                line,
            });
        }
        if notices.is_empty() {
            return Ok(());
        }
        self.write(conn, notices.into_iter()).await
    }

    fn beat_cmds(&self, pipe: &mut redis::Pipeline) {
        pipe.cmd("SET")
            .arg(format!("{}alive:{}", self.keys.prefix, self.node))
            .arg(1)
            .arg("PX")
            .arg(u64::try_from(self.heartbeat_ttl.as_millis()).unwrap_or(u64::MAX))
            .cmd("SADD")
            .arg(format!("{}nodes", self.keys.prefix))
            .arg(&self.node);
    }

    fn script(&self, pipe: &mut redis::Pipeline, conn: &Conn, id: ScriptId, args: &[String]) {
        pipe.cmd("EVALSHA")
            .arg(conn.scripts.sha(id))
            .arg(0)
            .arg(&self.keys.prefix)
            .arg(&self.node)
            .arg(args);
    }

    /// The next number for a line to `inbox` (`None`: the bus). Each
    /// destination has its own count, so a receiver's gap check sees only
    /// the lines meant for it.
    fn next_seq(&mut self, conn: &mut Conn, inbox: Option<&str>) -> u64 {
        match inbox {
            None => {
                self.seq += 1;
                self.seq
            }
            Some(node) => {
                if conn.inbox_seq.len() >= MAX_INBOXES && !conn.inbox_seq.contains_key(node) {
                    conn.inbox_seq.clear();
                }
                let seq = conn.inbox_seq.entry(node.to_owned()).or_insert(0);
                *seq += 1;
                *seq
            }
        }
    }

    /// Sends a batch as one pipeline and hands out the answers. A
    /// connection-level failure ends the link; an error answer to one
    /// command fails only that command (except a missing script, which
    /// means Redis lost its state: reconnect).
    async fn write(
        &mut self,
        conn: &mut Conn,
        batch: impl Iterator<Item = Op>,
    ) -> Result<(), String> {
        let mut pipe = redis::pipe();
        let mut thens = Vec::new();
        let mut close = None;
        for op in batch {
            match op {
                Op::Publish {
                    inbox,
                    kind,
                    target,
                    line,
                } => {
                    let seq = self.next_seq(conn, inbox.as_deref());
                    let channel = match &inbox {
                        Some(node) => self.keys.inbox(node),
                        None => self.keys.bus(),
                    };
                    let envelope = Envelope {
                        node: &self.node,
                        seq,
                        kind,
                        target: &target,
                        line: &line,
                    };
                    pipe.cmd("PUBLISH").arg(channel).arg(envelope.encode());
                    thens.push(Then::Ignore);
                }
                Op::Script { id, args, then } => {
                    self.script(&mut pipe, conn, id, &args);
                    thens.push(then);
                }
                Op::Cmd { cmd, then } => {
                    pipe.add_command(cmd);
                    thens.push(then);
                }
                Op::Close(tx) => {
                    self.script(&mut pipe, conn, ScriptId::Close, &[]);
                    thens.push(Then::Ignore);
                    close = Some(tx);
                }
            }
        }
        let expected = thens.len();
        let sent = tokio::time::timeout(
            QUERY_TIMEOUT,
            conn.cmd.req_packed_commands(&pipe, 0, expected),
        )
        .await;
        let answers = match sent {
            Ok(Ok(answers)) if answers.len() == expected => answers,
            failed => {
                thens.into_iter().for_each(fail);
                return Err(match failed {
                    Ok(Ok(answers)) => {
                        format!("redis answered {} of {expected} commands", answers.len())
                    }
                    Ok(Err(e)) => format!("writing failed: {e}"),
                    Err(_) => format!("no answer within {QUERY_TIMEOUT:?}"),
                });
            }
        };
        let mut lost_state = false;
        for (answer, then) in answers.into_iter().zip(thens) {
            let answer = match answer {
                Value::ServerError(e) => {
                    lost_state |= e.code() == "NOSCRIPT";
                    Err(ClusterError::Redis(format!(
                        "{}: {}",
                        e.code(),
                        e.details().unwrap_or("")
                    )))
                }
                v => Ok(v),
            };
            match then {
                Then::Ignore => {
                    if let Err(e) = answer {
                        warn!("redis refused a cluster update: {e}");
                    }
                }
                Then::Reply(tx) => {
                    let _ = tx.send(answer);
                }
                Then::Registered(peer) => {
                    if matches!(answer, Ok(Value::Int(0))) {
                        self.local.nick_lost(peer);
                    }
                }
            }
        }
        if let Some(tx) = close {
            let _ = tx.send(());
        }
        if lost_state {
            return Err("redis lost the cluster's scripts (restarted or flushed)".into());
        }
        Ok(())
    }
}

/// Fails an operation whose answer will never come.
fn fail(then: Then) {
    if let Then::Reply(tx) = then {
        let _ = tx.send(Err(ClusterError::Split));
    }
}

/// Hands every bus line from another node to this node's members, in each
/// sender's order; cancels `lost` when the subscription ends.
async fn read_bus(
    pubsub: redis::aio::PubSub,
    node: String,
    local: Arc<dyn Local>,
    stats: Arc<Stats>,
    lost: CancellationToken,
) {
    let mut order = Order::default();
    let mut messages = pubsub.into_on_message();
    while let Some(msg) = messages.next().await {
        let Some(env) = Envelope::decode(msg.get_payload_bytes()) else {
            debug!(
                channel = msg.get_channel_name(),
                "skipped a malformed bus message"
            );
            continue;
        };
        if env.node == node {
            continue;
        }
        let sender = match env.kind {
            LineKind::Private => format!("{}>", env.node),
            _ => env.node.to_owned(),
        };
        match order.check(&sender, env.seq) {
            Verdict::Stale => continue,
            Verdict::Deliver { lost: 0 } => {}
            Verdict::Deliver { lost } => {
                stats.lost.fetch_add(lost, Ordering::Relaxed);
                warn!(from = %env.node, lost, "lines from another node never arrived");
            }
        }
        stats.received.fetch_add(1, Ordering::Relaxed);
        let line: Bytes = env.line_bytes();
        match env.kind {
            LineKind::Private => {
                if let Ok(peer) = env.target.parse() {
                    local.peer_line(peer, &line);
                }
            }
            kind => local.room_line(env.target, kind, &line),
        }
    }
    lost.cancel();
}
