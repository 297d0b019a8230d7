//! One chat across several `chat-srv` processes, through Redis
//! (`chat-srv --redis URL --cluster-name NAME`).
//!
//! Each node keeps serving its own members from memory exactly as a single
//! server does; this module adds what the other nodes need to know:
//!
//! - **Delivery.** A room line is delivered to the node's own members at once
//!   by the caller, and [`Cluster::room_line`] publishes it on the cluster's
//!   bus channel, where every other node hands it to its members of that room
//!   through [`Local::room_line`]. `/msg` to a member elsewhere goes to that
//!   node's own channel. One writer task sends everything a node publishes,
//!   in order, on one connection, numbered per node (see [`wire`]), so one
//!   sender's lines arrive in the order sent.
//! - **Shared state.** Nicknames (claimed atomically, case-folded keys),
//!   room membership for `/who` and `/rooms`, and each room's history as a
//!   capped stream, all changed by the Lua scripts in [`scripts`].
//! - **Liveness.** Every node renews a heartbeat key that expires; every node
//!   also reaps nodes whose key expired (kill -9): their members leave their
//!   rooms with a `left` notice and their nicknames become free.
//! - **Faults.** When Redis goes away the node says once to its members
//!   `* chat is split: messages reach only this server`, keeps delivering
//!   locally, drops (and counts) what it would have published, reconnects
//!   with backoff, registers its members again and says
//!   `* chat is whole again`.
//!
//! The caller (the session and command code) talks to the cluster through a
//! cheap, cloneable [`Cluster`] handle; the cluster reaches the node's own
//! members through the [`Local`] trait the caller implements. Nothing here
//! runs unless `--redis` is given.
//!
//! # Layout
//! - [`keys`]: the names of the keys and channels.
//! - [`wire`]: the bus message format and the per-sender order check.
//! - [`scripts`]: the Lua scripts for atomic changes.
//! - `bridge`: [`Local`] for the server's registry, and what the commands
//!   call.
//! - `link`: the connection task: connect, subscribe, write, read,
//!   heartbeat, reap, split and heal.

mod bridge;
pub mod keys;
mod link;
pub mod scripts;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use bridge::{member_info, Bridge};
pub use keys::{new_node_id, validate_cluster_name};
pub use wire::LineKind;

use scripts::ScriptId;

/// Cluster name used when `--cluster-name` is not given.
pub const DEFAULT_CLUSTER_NAME: &str = "chat";

/// Operations waiting for the Redis writer, beyond which new ones are
/// dropped (and counted) instead of queued.
pub const DEFAULT_BUS_QUEUE: usize = 16_384;

/// How often a node renews its heartbeat and looks for dead nodes.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a heartbeat lives: a node silent this long is dead. With the
/// reap every [`DEFAULT_HEARTBEAT`], a killed node's members are gone within
/// `DEFAULT_HEARTBEAT_TTL + DEFAULT_HEARTBEAT` (10 s).
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(8);

/// How long a query (`/who`, a nickname claim…) may wait for Redis before
/// the caller gets [`ClusterError::Timeout`].
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The notice sent to every member when this node loses Redis.
pub const SPLIT_NOTICE: &str = "chat is split: messages reach only this server";

/// The notice sent to every member when this node has Redis again.
pub const WHOLE_NOTICE: &str = "chat is whole again";

/// Where the cluster lives and how much it may buffer.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Redis URL, for example `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Nodes with the same Redis and name form one chat.
    pub name: String,
    /// Lines of history kept per room in Redis; `0` keeps none.
    pub history: usize,
    /// See [`DEFAULT_BUS_QUEUE`].
    pub queue: usize,
    /// See [`DEFAULT_HEARTBEAT`].
    pub heartbeat: Duration,
    /// See [`DEFAULT_HEARTBEAT_TTL`]; keep it several heartbeats long.
    pub heartbeat_ttl: Duration,
}

impl ClusterConfig {
    /// A configuration with the documented defaults.
    pub fn new(url: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            url: url.into(),
            name: DEFAULT_CLUSTER_NAME.to_owned(),
            history: 100,
            queue: DEFAULT_BUS_QUEUE,
            heartbeat: DEFAULT_HEARTBEAT,
            heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
        }
    }
}

/// One of this node's members, as Redis knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's id on this node.
    pub peer: u64,
    /// Nickname as displayed.
    pub nick: String,
    /// Nickname as compared (case-folded): the key of its claim.
    pub nick_key: String,
    /// Room as displayed.
    pub room: String,
    /// Room as compared (case-folded).
    pub room_key: String,
}

/// A member found by nickname, on any node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePeer {
    /// The node the member is connected to.
    pub node: String,
    /// The member's id on that node.
    pub peer: u64,
    /// Nickname as displayed.
    pub nick: String,
}

/// One line of a room's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When it was said, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The line as it was delivered, without its newline.
    pub line: String,
}

/// The outcome of a nickname claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The nickname is now this member's.
    Won,
    /// Someone (on any node) holds it.
    Taken,
}

/// What the cluster needs from the node's own members. Implemented by the
/// server's registry; every method is called from the cluster's task and
/// must not block (queue with `try_send`, as local delivery does).
pub trait Local: Send + Sync + 'static {
    /// Hands a line from another node to this node's members of `room_key`.
    fn room_line(&self, room_key: &str, kind: LineKind, line: &Bytes);
    /// Hands a private line to member `peer`; false when it is gone.
    fn peer_line(&self, peer: u64, line: &Bytes) -> bool;
    /// Tells every member `* text` (the split and whole notices).
    fn notice_all(&self, text: &str);
    /// This node's members now, to register again after Redis came back.
    fn members(&self) -> Vec<MemberInfo>;
    /// While the chat was split, someone elsewhere took `peer`'s nickname;
    /// the server should give the member another one.
    fn nick_lost(&self, peer: u64);
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL could not be parsed.
    #[error("invalid --redis url {url}: expected redis://HOST:PORT/DB")]
    Url {
        /// The URL given.
        url: String,
    },
    /// The cluster name is not usable in keys.
    #[error("invalid --cluster-name: {0}")]
    Name(String),
    /// Redis could not be reached at start.
    #[error("cannot reach redis at {url}: {reason} (is redis-server running? check --redis)")]
    Connect {
        /// The URL given.
        url: String,
        /// What failed.
        reason: String,
    },
    /// Redis is unreachable now; the node serves only its own members.
    #[error("chat is split: this server cannot reach the others")]
    Split,
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error or something unexpected.
    #[error("redis: {0}")]
    Redis(String),
}

/// Counters since start (for logs, tests and the benchmark).
#[derive(Debug, Default)]
pub struct Stats {
    /// Lines and changes dropped because Redis was away or the queue full.
    pub dropped: AtomicU64,
    /// Lines from other nodes that never arrived (gaps in their numbering).
    pub lost: AtomicU64,
    /// Lines received from other nodes and handed to [`Local`].
    pub received: AtomicU64,
    /// Times this node lost Redis.
    pub splits: AtomicU64,
}

/// A handle on this node's membership in the cluster; clones share it.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    whole: Arc<AtomicBool>,
    ops: mpsc::Sender<Op>,
    stats: Arc<Stats>,
    task: Mutex<Option<JoinHandle<()>>>,
    stop: CancellationToken,
    history: usize,
    keys: keys::Keys,
}

/// One thing for the writer to do, in order with everything else this
/// node sends.
pub(crate) enum Op {
    /// Publish a line on the bus (room lines) or a node's inbox.
    Publish {
        inbox: Option<String>,
        kind: LineKind,
        target: String,
        line: Bytes,
    },
    /// Run a script with these arguments after the prefix and node id.
    Script {
        id: ScriptId,
        args: Vec<String>,
        then: Then,
    },
    /// Run one plain command.
    Cmd { cmd: redis::Cmd, then: Then },
    /// Deregister this node and end the task.
    Close(oneshot::Sender<()>),
}

/// What to do with an operation's answer.
pub(crate) enum Then {
    Ignore,
    Reply(oneshot::Sender<Result<Value, ClusterError>>),
    /// A registration: 0 means the nickname was lost to someone else.
    Registered(u64),
}

impl Cluster {
    /// Connects to Redis, registers this node as `node` (see
    /// [`new_node_id`]) and starts its task. Fails if
    /// the URL or name is wrong or Redis cannot be reached now; once started,
    /// losing Redis is survived (see the module docs). The task ends on
    /// [`Cluster::close`] or when `shutdown` is cancelled.
    pub async fn start(
        config: ClusterConfig,
        node: String,
        local: Arc<dyn Local>,
        shutdown: CancellationToken,
    ) -> Result<Cluster, ClusterError> {
        validate_cluster_name(&config.name).map_err(ClusterError::Name)?;
        let client = redis::Client::open(config.url.as_str()).map_err(|_| ClusterError::Url {
            url: config.url.clone(),
        })?;
        let keys = keys::Keys::new(&config.name);
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let whole = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let stop = shutdown.child_token();
        let mut link = link::Link {
            client,
            url: config.url.clone(),
            keys: keys.clone(),
            node: node.clone(),
            local,
            whole: whole.clone(),
            stats: stats.clone(),
            ops: rx,
            stop: stop.clone(),
            seq: 0,
            heartbeat: config.heartbeat,
            heartbeat_ttl: config.heartbeat_ttl,
        };
        let first = link
            .connect()
            .await
            .map_err(|reason| ClusterError::Connect {
                url: config.url.clone(),
                reason: plain_reason(&reason),
            })?;
        tracing::info!(node = %node, cluster = %config.name, "joined the cluster");
        let task = tokio::spawn(link.run(first));
        Ok(Cluster {
            inner: Arc::new(Inner {
                node,
                whole,
                ops: tx,
                stats,
                task: Mutex::new(Some(task)),
                stop,
                history: config.history,
                keys,
            }),
        })
    }

    /// This node's id in the cluster (random per process).
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// True while Redis is reachable and this node's members are registered.
    pub fn is_whole(&self) -> bool {
        self.inner.whole.load(Ordering::Acquire)
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Queues `op`; while split or when the queue is full it is dropped and
    /// counted: the caller never waits and memory stays bounded.
    fn push(&self, op: Op) {
        if !self.is_whole() || self.inner.ops.try_send(op).is_err() {
            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues `op` and waits for its answer, at most [`QUERY_TIMEOUT`].
    async fn ask(&self, op: impl FnOnce(Then) -> Op) -> Result<Value, ClusterError> {
        if !self.is_whole() {
            return Err(ClusterError::Split);
        }
        let (tx, rx) = oneshot::channel();
        let answer = async {
            self.inner
                .ops
                .send(op(Then::Reply(tx)))
                .await
                .map_err(|_| ClusterError::Split)?;
            rx.await.map_err(|_| ClusterError::Split)?
        };
        tokio::time::timeout(QUERY_TIMEOUT, answer)
            .await
            .map_err(|_| ClusterError::Timeout(QUERY_TIMEOUT))?
    }

    /// Registers a new member (its nickname and room). A nickname already
    /// held elsewhere is reported through [`Local::nick_lost`]; new members
    /// normally get a guest name unique to this node.
    pub fn enter(&self, m: &MemberInfo) {
        self.push(Op::Script {
            id: ScriptId::Register,
            args: register_args(m),
            then: Then::Registered(m.peer),
        });
    }

    /// Removes a member that disconnected.
    pub fn exit(&self, peer: u64) {
        self.push(Op::Script {
            id: ScriptId::Exit,
            args: vec![peer.to_string()],
            then: Then::Ignore,
        });
    }

    /// Moves a member to another room.
    pub fn switch(&self, peer: u64, room_key: &str, room: &str) {
        self.push(Op::Script {
            id: ScriptId::Switch,
            args: vec![peer.to_string(), room_key.to_owned(), room.to_owned()],
            then: Then::Ignore,
        });
    }

    /// Claims nickname `nick` (compared as `nick_key`) for member `peer`,
    /// freeing `old_key`; exactly one of several racing claims wins.
    pub async fn claim_nick(
        &self,
        peer: u64,
        old_key: &str,
        nick_key: &str,
        nick: &str,
    ) -> Result<Claim, ClusterError> {
        let args = vec![
            peer.to_string(),
            old_key.to_owned(),
            nick_key.to_owned(),
            nick.to_owned(),
        ];
        let won: i64 = from_value(
            self.ask(|then| Op::Script {
                id: ScriptId::Claim,
                args,
                then,
            })
            .await?,
        )?;
        Ok(if won == 1 { Claim::Won } else { Claim::Taken })
    }

    /// Publishes a room line (already encoded, newline included) for the
    /// members of `room_key` on the other nodes.
    pub fn room_line(&self, room_key: &str, kind: LineKind, line: Bytes) {
        self.push(Op::Publish {
            inbox: None,
            kind,
            target: room_key.to_owned(),
            line,
        });
    }

    /// Sends a private line to a member on another node.
    pub fn private_line(&self, to: &RemotePeer, line: Bytes) {
        self.push(Op::Publish {
            inbox: Some(to.node.clone()),
            kind: LineKind::Private,
            target: to.peer.to_string(),
            line,
        });
    }

    /// Appends a line (without newline) to the room's history in Redis,
    /// keeping the newest [`ClusterConfig::history`] lines.
    pub fn record(&self, room_key: &str, at_ms: u64, line: &str) {
        if self.inner.history == 0 {
            return;
        }
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.inner.keys.history(room_key))
            .arg("MAXLEN")
            .arg(self.inner.history)
            .arg("*")
            .arg("t")
            .arg(at_ms)
            .arg("l")
            .arg(line);
        self.push(Op::Cmd {
            cmd,
            then: Then::Ignore,
        });
    }

    /// The last `n` lines of a room's history, oldest first.
    pub async fn history(
        &self,
        room_key: &str,
        n: usize,
    ) -> Result<Vec<HistoryEntry>, ClusterError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(self.inner.keys.history(room_key))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(n.max(1));
        let entries: Vec<(String, Vec<(String, String)>)> =
            from_value(self.ask(|then| Op::Cmd { cmd, then }).await?)?;
        let mut out: Vec<HistoryEntry> = entries
            .into_iter()
            .filter_map(|(_, fields)| {
                let mut at_ms = None;
                let mut line = None;
                for (k, v) in fields {
                    match k.as_str() {
                        "t" => at_ms = v.parse().ok(),
                        "l" => line = Some(v),
                        _ => {}
                    }
                }
                Some(HistoryEntry {
                    at_ms: at_ms?,
                    line: line?,
                })
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    /// The nicknames in a room across the cluster, sorted.
    pub async fn who(&self, room_key: &str) -> Result<Vec<String>, ClusterError> {
        let cmd = redis::cmd("HVALS")
            .arg(self.inner.keys.room(room_key))
            .to_owned();
        let mut nicks: Vec<String> = from_value(self.ask(|then| Op::Cmd { cmd, then }).await?)?;
        nicks.sort_unstable();
        Ok(nicks)
    }

    /// How many members a room has across the cluster.
    pub async fn room_size(&self, room_key: &str) -> Result<usize, ClusterError> {
        let cmd = redis::cmd("HLEN")
            .arg(self.inner.keys.room(room_key))
            .to_owned();
        from_value(self.ask(|then| Op::Cmd { cmd, then }).await?)
    }

    /// Every room in the cluster with its member count, sorted by name.
    pub async fn rooms(&self) -> Result<Vec<(String, usize)>, ClusterError> {
        let mut rooms: Vec<(String, usize)> = from_value(
            self.ask(|then| Op::Script {
                id: ScriptId::Rooms,
                args: Vec::new(),
                then,
            })
            .await?,
        )?;
        rooms.sort_unstable();
        Ok(rooms)
    }

    /// The member holding nickname `nick_key` anywhere in the cluster.
    pub async fn find(&self, nick_key: &str) -> Result<Option<RemotePeer>, ClusterError> {
        let cmd = redis::cmd("GET")
            .arg(self.inner.keys.nick(nick_key))
            .to_owned();
        let owner: Option<String> = from_value(self.ask(|then| Op::Cmd { cmd, then }).await?)?;
        Ok(owner.and_then(|v| {
            let mut parts = v.splitn(3, ':');
            Some(RemotePeer {
                node: parts.next()?.to_owned(),
                peer: parts.next()?.parse().ok()?,
                nick: parts.next()?.to_owned(),
            })
        }))
    }

    /// Sends what is queued, removes this node and its members from Redis
    /// and ends the task (a no-op while split: the others reap it).
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.is_whole() && self.inner.ops.send(Op::Close(tx)).await.is_ok() {
            let _ = tokio::time::timeout(QUERY_TIMEOUT, rx).await;
        }
        self.inner.stop.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(QUERY_TIMEOUT, task).await;
        }
    }
}

pub(crate) fn register_args(m: &MemberInfo) -> Vec<String> {
    vec![
        m.peer.to_string(),
        m.nick_key.clone(),
        m.nick.clone(),
        m.room_key.clone(),
        m.room.clone(),
    ]
}

/// An error text as this project prints them: no "(os error N)", lower-case start.
fn plain_reason(text: &str) -> String {
    let text = text.find(" (os error").map_or(text, |i| &text[..i]);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn from_value<T: redis::FromRedisValue>(v: Value) -> Result<T, ClusterError> {
    redis::from_owned_redis_value(v).map_err(|e| ClusterError::Redis(e.to_string()))
}

#[cfg(test)]
mod tests;
