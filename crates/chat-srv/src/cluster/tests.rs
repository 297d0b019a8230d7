//! The cluster against a real `redis-server` started by each test on a free
//! loopback port (found on `PATH`; a missing one fails the test with the
//! package to install). Several [`Cluster`] nodes run in one process, each
//! with a [`Recorder`] standing in for the server's registry, and the tests
//! wait on what the recorders receive, never on fixed sleeps.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::*;

/// How long any awaited event may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A `redis-server` child on a free loopback port, killed on drop.
struct RedisServer {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> RedisServer {
        let bin = std::env::var_os("PATH")
            .and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join("redis-server"))
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| {
                panic!(
                    "redis-server not found on PATH: the cluster tests need a real Redis; \
                     install Debian's `redis-server` package (`cargo xtask ci` does it when it can)"
                )
            });
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = RedisServer {
            bin,
            port,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on port {} within {WAIT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
            && s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port.
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Room(String, LineKind, String),
    Peer(u64, String),
    Notice(String),
    NickLost(u64),
}

/// Stands in for a server's registry: records what the cluster hands it.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    members: Mutex<Vec<MemberInfo>>,
    changed: Notify,
}

impl Recorder {
    fn push(&self, e: Event) {
        self.events.lock().expect("lock").push(e);
        self.changed.notify_waiters();
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for the events so far.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Event]) -> bool) {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let changed = self.changed.notified();
                if done(&self.events()) {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "waited {WAIT:?} for {what}; got {:?}",
            self.events()
        );
    }
}

impl Local for Recorder {
    fn room_line(&self, room_key: &str, kind: LineKind, line: &Bytes) {
        let text = String::from_utf8_lossy(line).into_owned();
        self.push(Event::Room(room_key.to_owned(), kind, text));
    }
    fn peer_line(&self, peer: u64, line: &Bytes) -> bool {
        self.push(Event::Peer(
            peer,
            String::from_utf8_lossy(line).into_owned(),
        ));
        true
    }
    fn notice_all(&self, text: &str) {
        self.push(Event::Notice(text.to_owned()));
    }
    fn members(&self) -> Vec<MemberInfo> {
        self.members.lock().expect("lock").clone()
    }
    fn nick_lost(&self, peer: u64) {
        self.push(Event::NickLost(peer));
    }
}

/// One node of a test cluster.
struct Node {
    cluster: Cluster,
    local: Arc<Recorder>,
    /// Cancelling it stops the node without leaving: to Redis, a kill -9.
    kill: CancellationToken,
}

impl Node {
    async fn start(redis: &RedisServer, name: &str) -> Node {
        let mut config = ClusterConfig::new(redis.url());
        config.name = name.to_owned();
        config.history = 5;
        config.heartbeat = Duration::from_millis(100);
        config.heartbeat_ttl = Duration::from_millis(600);
        let local = Arc::new(Recorder::default());
        let kill = CancellationToken::new();
        let cluster = Cluster::start(config, new_node_id(), local.clone(), kill.clone())
            .await
            .expect("joining the test cluster");
        Node {
            cluster,
            local,
            kill,
        }
    }

    /// Registers a member here (in Redis and in the recorder's list).
    fn enter(&self, peer: u64, nick: &str, room: &str) -> MemberInfo {
        let m = MemberInfo {
            peer,
            nick: nick.to_owned(),
            nick_key: nick.to_lowercase(),
            room: room.to_owned(),
            room_key: room.to_lowercase(),
        };
        self.cluster.enter(&m);
        self.local.members.lock().expect("lock").push(m.clone());
        m
    }

    /// Returns once everything this node queued before is applied in Redis
    /// (its operations run in order, so one query behind them suffices).
    /// Another node sees a change only after this.
    async fn sync(&self) {
        self.cluster.who("").await.expect("sync query");
    }
}

fn line(text: &str) -> Bytes {
    Bytes::from(format!("{text}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_lines_reach_other_nodes_in_the_order_sent() {
    let redis = RedisServer::start();
    let a = Node::start(&redis, "order").await;
    let b = Node::start(&redis, "order").await;
    for i in 0..500 {
        a.cluster
            .room_line("dev", LineKind::Chat, line(&format!("alice: {i}")));
    }
    b.local.wait_for("500 lines at b", |e| e.len() >= 500).await;
    let expected: Vec<Event> = (0..500)
        .map(|i| Event::Room("dev".into(), LineKind::Chat, format!("alice: {i}\n")))
        .collect();
    assert_eq!(b.local.events(), expected);
    assert!(a.local.events().is_empty(), "a node never hears itself");
    assert_eq!(b.cluster.stats().lost.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_with_other_names_do_not_hear_each_other() {
    let redis = RedisServer::start();
    let a = Node::start(&redis, "red").await;
    let b = Node::start(&redis, "red").await;
    let c = Node::start(&redis, "blue").await;
    a.enter(1, "alice", "dev");
    a.cluster
        .room_line("dev", LineKind::Chat, line("alice: hi"));
    b.local.wait_for("the line at b", |e| !e.is_empty()).await;
    assert!(c.local.events().is_empty());
    assert_eq!(
        c.cluster.who("dev").await.expect("who"),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_lines_find_the_member_on_its_node() {
    let redis = RedisServer::start();
    let a = Node::start(&redis, "pm").await;
    let b = Node::start(&redis, "pm").await;
    a.enter(7, "Alice", "lobby");
    a.sync().await;
    let found = b.cluster.find("alice").await.expect("find");
    let to = found.expect("alice is registered");
    assert_eq!(
        (to.node.as_str(), to.peer, to.nick.as_str()),
        (a.cluster.node_id(), 7, "Alice")
    );
    b.cluster.private_line(&to, line("[pm] bob: psst"));
    a.local
        .wait_for("the private line", |e| {
            e.contains(&Event::Peer(7, "[pm] bob: psst\n".into()))
        })
        .await;
    assert_eq!(b.cluster.find("nobody").await.expect("find"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_and_rooms_are_cluster_wide() {
    let redis = RedisServer::start();
    let a = Node::start(&redis, "who").await;
    let b = Node::start(&redis, "who").await;
    a.enter(1, "alice", "Dev");
    b.enter(1, "bob", "Dev");
    b.enter(2, "carol", "lobby");
    a.sync().await;
    b.sync().await;
    assert_eq!(a.cluster.who("dev").await.expect("who"), ["alice", "bob"]);
    assert_eq!(
        a.cluster.rooms().await.expect("rooms"),
        [("Dev".to_owned(), 2), ("lobby".to_owned(), 1)]
    );
    b.cluster.switch(1, "lobby", "lobby");
    a.cluster.exit(1);
    a.sync().await;
    b.sync().await;
    assert_eq!(b.cluster.who("lobby").await.expect("who"), ["bob", "carol"]);
    assert_eq!(
        b.cluster.rooms().await.expect("rooms"),
        [("lobby".to_owned(), 2)],
        "an empty room is gone"
    );
    assert_eq!(b.cluster.find("alice").await.expect("find"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_for_one_nick_have_exactly_one_winner() {
    let redis = RedisServer::start();
    let a = Node::start(&redis, "race").await;
    let b = Node::start(&redis, "race").await;
    for peer in 1..=20 {
        a.enter(peer, &format!("guest-a{peer}"), "lobby");
        b.enter(peer, &format!("guest-b{peer}"), "lobby");
    }
    let mut claims = Vec::new();
    for peer in 1..=20u64 {
        for (node, spelling) in [(&a, "Zed"), (&b, "zED")] {
            let cluster = node.cluster.clone();
            let old = format!("guest-{}{peer}", if spelling == "Zed" { 'a' } else { 'b' });
            claims.push(tokio::spawn(async move {
                cluster.claim_nick(peer, &old, "zed", spelling).await
            }));
        }
    }
    a.sync().await;
    b.sync().await;
    let mut won = 0;
    for claim in claims {
        if claim.await.expect("task").expect("claim") == Claim::Won {
            won += 1;
        }
    }
    assert_eq!(won, 1, "one of 40 racing claims wins");
    let who = a.cluster.who("lobby").await.expect("who");
    assert_eq!(who.len(), 40);
    assert_eq!(
        who.iter().filter(|n| n.eq_ignore_ascii_case("zed")).count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_reaped_with_left_notices_and_its_nicks_freed() {
    let redis = RedisServer::start();
    let a = Node::start(&redis, "reap").await;
    let b = Node::start(&redis, "reap").await;
    let c = Node::start(&redis, "reap").await;
    a.enter(1, "alice", "dev");
    b.enter(1, "bob", "dev");
    c.enter(1, "carol", "dev");
    for n in [&a, &b, &c] {
        n.sync().await;
    }
    assert_eq!(b.cluster.who("dev").await.expect("who").len(), 3);
    let killed = Instant::now();
    a.kill.cancel();
    let left = Event::Room("dev".into(), LineKind::Notice, "* alice left\n".into());
    b.local
        .wait_for("alice's left notice at b", |e| e.contains(&left))
        .await;
    c.local
        .wait_for("alice's left notice at c", |e| e.contains(&left))
        .await;
    assert_eq!(b.cluster.who("dev").await.expect("who"), ["bob", "carol"]);
    assert_eq!(
        c.cluster
            .claim_nick(1, "carol", "alice", "alice")
            .await
            .expect("claim"),
        Claim::Won
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    let notices = |n: &Node| n.local.events().iter().filter(|e| **e == left).count();
    assert_eq!(notices(&b) + notices(&c), 2, "each survivor told once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_capped_and_the_same_from_every_node() {
    let redis = RedisServer::start();
    let a = Node::start(&redis, "hist").await;
    let b = Node::start(&redis, "hist").await;
    for i in 0..8u64 {
        a.cluster.record("dev", 1_000 + i, &format!("alice: {i}"));
    }
    let deadline = Instant::now() + WAIT;
    let got = loop {
        let got = b.cluster.history("dev", 20).await.expect("history");
        if got.last().is_some_and(|h| h.line == "alice: 7") {
            break got;
        }
        assert!(Instant::now() < deadline, "history not written: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines: Vec<&str> = got.iter().map(|h| h.line.as_str()).collect();
    assert_eq!(
        lines,
        ["alice: 3", "alice: 4", "alice: 5", "alice: 6", "alice: 7"]
    );
    assert_eq!(got[0].at_ms, 1_003);
    let two = a.cluster.history("dev", 2).await.expect("history");
    assert_eq!(
        two.iter().map(|h| h.line.as_str()).collect::<Vec<_>>(),
        ["alice: 6", "alice: 7"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_splits_then_heals_and_delivery_resumes() {
    let mut redis = RedisServer::start();
    let a = Node::start(&redis, "heal").await;
    let b = Node::start(&redis, "heal").await;
    a.enter(1, "alice", "dev");
    b.enter(1, "bob", "dev");
    b.sync().await;
    assert_eq!(a.cluster.who("dev").await.expect("who").len(), 2);

    redis.kill();
    let split = Event::Notice(SPLIT_NOTICE.into());
    a.local
        .wait_for("split notice at a", |e| e.contains(&split))
        .await;
    b.local
        .wait_for("split notice at b", |e| e.contains(&split))
        .await;
    assert!(!a.cluster.is_whole());
    // Nothing waits and nothing piles up while split.
    for _ in 0..100_000 {
        a.cluster
            .room_line("dev", LineKind::Chat, line("alice: lost"));
    }
    assert!(matches!(
        a.cluster.who("dev").await,
        Err(ClusterError::Split)
    ));

    redis.restart();
    let whole = Event::Notice(WHOLE_NOTICE.into());
    a.local
        .wait_for("whole notice at a", |e| e.contains(&whole))
        .await;
    b.local
        .wait_for("whole notice at b", |e| e.contains(&whole))
        .await;
    // The fresh Redis learnt both members again.
    assert_eq!(a.cluster.who("dev").await.expect("who"), ["alice", "bob"]);
    a.cluster
        .room_line("dev", LineKind::Chat, line("alice: back"));
    let back = Event::Room("dev".into(), LineKind::Chat, "alice: back\n".into());
    b.local
        .wait_for("a line after the heal", |e| e.contains(&back))
        .await;
    for node in [&a, &b] {
        let events = node.local.events();
        let count = |x: &Event| events.iter().filter(|e| *e == x).count();
        assert_eq!((count(&split), count(&whole)), (1, 1), "told once each");
    }
    assert!(a.cluster.stats().dropped.load(Ordering::Relaxed) >= 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_removes_the_node_and_its_members() {
    let redis = RedisServer::start();
    let a = Node::start(&redis, "close").await;
    let b = Node::start(&redis, "close").await;
    a.enter(1, "alice", "dev");
    b.enter(1, "bob", "dev");
    a.sync().await;
    assert_eq!(b.cluster.who("dev").await.expect("who").len(), 2);
    a.cluster.close().await;
    assert_eq!(b.cluster.who("dev").await.expect("who"), ["bob"]);
    assert!(matches!(
        a.cluster.who("dev").await,
        Err(ClusterError::Split)
    ));
}

#[tokio::test]
async fn start_says_what_is_wrong() {
    let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let local: Arc<dyn Local> = Arc::new(Recorder::default());
    let start = |url: String, name: &str| {
        let mut config = ClusterConfig::new(url);
        config.name = name.to_owned();
        Cluster::start(
            config,
            new_node_id(),
            local.clone(),
            CancellationToken::new(),
        )
    };
    let err = start(format!("redis://127.0.0.1:{free}/0"), "x")
        .await
        .err()
        .expect("nothing listens there");
    assert!(
        err.to_string().starts_with("cannot reach redis at"),
        "{err}"
    );
    let err = start("http://nope".into(), "x")
        .await
        .err()
        .expect("bad url");
    assert!(err.to_string().contains("invalid --redis url"), "{err}");
    let err = start("redis://127.0.0.1:1/0".into(), "a b")
        .await
        .err()
        .expect("bad name");
    assert!(err.to_string().contains("--cluster-name"), "{err}");
}

/// Real chat servers of this crate, run in-process as cluster nodes, with
/// line clients: what users of two nodes see.
mod servers {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn chat_node(redis: &RedisServer, name: &str) -> crate::ServerHandle {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind 127.0.0.1:0");
        let mut cluster = ClusterConfig::new(redis.url());
        cluster.name = name.to_owned();
        let config = crate::Config {
            rate: 0,
            cluster: Some(cluster),
            ..crate::Config::default()
        };
        crate::spawn(listener, config).expect("spawn a cluster node")
    }

    struct Client {
        lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
        write: OwnedWriteHalf,
        seen: Vec<String>,
    }

    impl Client {
        async fn connect(node: &crate::ServerHandle) -> Client {
            let stream = TcpStream::connect(node.addr()).await.expect("connect");
            let (read, write) = stream.into_split();
            let mut client = Client {
                lines: BufReader::new(read).lines(),
                write,
                seen: Vec::new(),
            };
            client.until(|l| l == proto::chat::WELCOME).await;
            client
        }

        async fn send(&mut self, line: &str) {
            self.write
                .write_all(format!("{line}\n").as_bytes())
                .await
                .expect("send");
        }

        /// Reads lines until one satisfies `wanted`; returns it.
        async fn until(&mut self, wanted: impl Fn(&str) -> bool) -> String {
            let found = tokio::time::timeout(WAIT, async {
                while let Ok(Some(line)) = self.lines.next_line().await {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return Some(line);
                    }
                }
                None
            })
            .await;
            match found {
                Ok(Some(line)) => line,
                _ => panic!("wanted line never came; saw {:?}", self.seen),
            }
        }

        /// Sends `line` and returns its one answer (`+ …` or `! …`).
        async fn ask(&mut self, line: &str) -> String {
            self.send(line).await;
            self.until(|l| l.starts_with("+ ") || l.starts_with("! "))
                .await
        }

        async fn named(node: &crate::ServerHandle, nick: &str, room: &str) -> Client {
            let mut c = Client::connect(node).await;
            assert_eq!(
                c.ask(&format!("/nick {nick}")).await,
                format!("+ you are now {nick}")
            );
            assert!(c
                .ask(&format!("/join {room}"))
                .await
                .starts_with("+ you are now in"));
            c
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_of_two_servers_share_rooms_names_and_history() {
        let redis = RedisServer::start();
        let one = chat_node(&redis, "srv").await;
        let two = chat_node(&redis, "srv").await;
        let mut alice = Client::named(&one, "Alice", "dev").await;
        let mut bob = Client::connect(&two).await;
        assert_eq!(bob.ask("/nick bob").await, "+ you are now bob");
        assert_eq!(
            bob.ask("/join DEV").await,
            "+ you are now in dev (2 members)"
        );
        alice.until(|l| l == "* bob joined").await;

        alice.send("hi from one").await;
        alice.until(|l| l == "hi from one,你好").await;
        bob.until(|l| l == "Alice: hi from one").await;
        assert_eq!(bob.ask("/who").await, "+ 2 in dev: Alice, bob");
        assert_eq!(bob.ask("/msg alice psst").await, "+ sent to Alice");
        alice.until(|l| l == "[pm] bob: psst").await;
        assert!(bob.ask("/rooms").await.contains("dev (2)"));

        let mut carol = Client::connect(&two).await;
        assert_eq!(
            carol.ask("/nick ALICE").await,
            "! nickname ALICE is taken, choose another"
        );
        carol.ask("/join dev").await;
        carol.send("/history").await;
        let line = carol.until(|l| l.starts_with("~ ")).await;
        assert!(line.ends_with("Alice: hi from one"), "{line}");
        carol.until(|l| l.starts_with("+ ")).await;

        drop(alice);
        bob.until(|l| l == "* Alice left").await;
        assert_eq!(carol.ask("/nick alice").await, "+ you are now alice");
        one.stop().await.expect("stop one");
        two.stop().await.expect("stop two");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn losing_redis_keeps_local_delivery_and_tells_members_once() {
        let mut redis = RedisServer::start();
        let one = chat_node(&redis, "split").await;
        let two = chat_node(&redis, "split").await;
        let mut ann = Client::named(&one, "ann", "lab").await;
        let mut amy = Client::named(&one, "amy", "lab").await;
        let mut bea = Client::named(&two, "bea", "lab").await;

        redis.kill();
        let split = format!("* {SPLIT_NOTICE}");
        for c in [&mut ann, &mut amy, &mut bea] {
            c.until(|l| l == split).await;
        }
        ann.send("only here").await;
        amy.until(|l| l == "ann: only here").await;
        assert_eq!(
            ann.ask("/nick anna").await,
            "! the chat is split: nickname changes wait until it is whole again"
        );
        assert_eq!(ann.ask("/who").await, "+ 2 in lab: amy, ann");

        redis.restart();
        let whole = format!("* {WHOLE_NOTICE}");
        for c in [&mut ann, &mut amy, &mut bea] {
            c.until(|l| l == whole).await;
        }
        ann.send("together").await;
        bea.until(|l| l == "ann: together").await;
        assert_eq!(bea.ask("/who").await, "+ 3 in lab: amy, ann, bea");
        for c in [&ann, &amy, &bea] {
            let count = |x: &str| c.seen.iter().filter(|l| *l == x).count();
            assert_eq!((count(&split), count(&whole)), (1, 1), "{:?}", c.seen);
        }
        one.stop().await.expect("stop one");
        two.stop().await.expect("stop two");
    }
}
