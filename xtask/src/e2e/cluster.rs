//! The chat cluster (issue 13): three `chat-srv` joined through a real
//! `redis-server`, each on a free loopback port, with clients spread over them.
//!
//! [`redis_server`] finds redis-server or installs Debian's package through
//! [`crate::install::tool`]; `cargo xtask ci` calls it before its first step, so a
//! machine without Redis stops with one line saying what to install instead of
//! failing later inside the test step (the cluster tests in
//! `crates/chat-srv/src/cluster/tests.rs` need it on `PATH` too).
//!
//! [`checks`] adds these rows to the e2e table: a room line crossing nodes in
//! order, `/msg` and `/who` across nodes, a nickname race on two nodes (one
//! winner), kill -9 of a node (its members' nicknames free within 15 s), and a Redis
//! restart (split and whole notices, local delivery meanwhile, cross-node delivery
//! again within 10 s), then SIGTERM of the survivors. Logs: `target/e2e/cluster-*.log`.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};

use super::{stop, Report, CHAT_TIMEOUT};
use crate::clients::{ChatClient, WELCOME};
use crate::service::{Bins, Service};

/// What the cluster checks need redis-server for, as the install message says it.
const PURPOSE: &str = "the chat cluster tests (chat-srv --redis)";

/// The contract: a killed node's members are gone and their nicknames free within this.
const REAP_DEADLINE: Duration = Duration::from_secs(15);

/// The contract: after Redis comes back, cross-node delivery resumes within this.
const HEAL_DEADLINE: Duration = Duration::from_secs(10);

/// The notices of chat-srv's cluster module, as members see them.
const SPLIT: &str = "* chat is split: messages reach only this server";
const WHOLE: &str = "* chat is whole again";

/// Nodes in the e2e cluster.
const NODES: usize = 3;

/// The path of redis-server, installed first when missing and possible.
pub fn redis_server() -> Result<PathBuf> {
    crate::install::tool("redis-server", "redis-server", PURPOSE).map_err(|e| anyhow!(e))
}

/// Runs the cluster checks, each a row of `report`.
pub(super) fn checks(bins: &Bins, work: &Path, report: &mut Report) {
    let mut run = None;
    report.check("cluster: redis-server + 3 chat-srv nodes", || {
        let started = Cluster::start(bins, work)?;
        let detail = started.describe();
        run = Some(started);
        Ok(detail)
    });
    let Some(mut c) = run else {
        return;
    };
    report.check("cluster: room lines cross nodes in order", || {
        c.cross_node()
    });
    report.check("cluster: /msg to a member on another node", || c.private());
    report.check("cluster: /who lists the room on all nodes", || c.who());
    report.check("cluster: nick race on two nodes, one winner", || {
        c.nick_race()
    });
    report.check("cluster: kill -9 of a node, nick free <15 s", || {
        c.kill_node()
    });
    report.check("cluster: redis restart, split/whole, <10 s", || {
        c.redis_restart()
    });
    report.check("cluster: nodes exit 0 within 2 s of SIGTERM", || {
        c.stop_nodes()
    });
}

/// The running cluster and the members the checks share.
struct Cluster {
    redis_bin: PathBuf,
    redis_addr: SocketAddr,
    redis: Option<Service>,
    nodes: Vec<Option<Service>>,
    addrs: Vec<SocketAddr>,
    /// `ann` and `amy` on node 0, `ben` on node 1, `cid` on node 2, all in `lab`.
    ann: ChatClient,
    amy: ChatClient,
    ben: ChatClient,
    cid: ChatClient,
}

impl Cluster {
    fn start(bins: &Bins, work: &Path) -> Result<Cluster> {
        let redis_bin = redis_server()?;
        let redis_addr = free_addr()?;
        let redis = start_redis(&redis_bin, redis_addr)?;
        let url = format!("redis://{redis_addr}/0");
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..NODES {
            let addr = free_addr()?;
            let mut cmd = Command::new(&bins.chat_srv);
            cmd.args(["-b", "127.0.0.1", "-p", &addr.port().to_string()])
                .args(["--redis", &url, "--cluster-name", "e2e"]);
            let log = work.join(format!("cluster-{i}.log"));
            nodes.push(Some(start_logged(
                &format!("chat-srv node {i}"),
                cmd,
                addr,
                &log,
            )?));
            addrs.push(addr);
        }
        Ok(Cluster {
            ann: member(addrs[0], "ann")?,
            amy: member(addrs[0], "amy")?,
            ben: member(addrs[1], "ben")?,
            cid: member(addrs[2], "cid")?,
            redis_bin,
            redis_addr,
            redis: Some(redis),
            nodes,
            addrs,
        })
    }

    fn describe(&self) -> String {
        let ports: Vec<String> = self.addrs.iter().map(|a| a.port().to_string()).collect();
        format!(
            "redis on {}, nodes on ports {}",
            self.redis_addr,
            ports.join(", ")
        )
    }

    fn cross_node(&mut self) -> Result<String> {
        const LINES: usize = 20;
        for i in 0..LINES {
            self.ann.send_line(&format!("line {i}"))?;
        }
        for (name, member) in [("ben", &mut self.ben), ("cid", &mut self.cid)] {
            for i in 0..LINES {
                let want = format!("ann: line {i}");
                let got =
                    member.read_line_where(&want, CHAT_TIMEOUT, |l| l.starts_with("ann: line "))?;
                ensure!(got == want, "{name} got {got:?} where {want:?} was due");
            }
        }
        Ok(format!(
            "{LINES} lines from node 0 reached nodes 1 and 2 in order"
        ))
    }

    fn private(&mut self) -> Result<String> {
        let answer = ask(&mut self.ben, "/msg ann psst")?;
        ensure!(
            answer == "+ sent to ann",
            "ben's /msg was answered {answer:?}"
        );
        self.ann
            .read_line_where("ben's private line", CHAT_TIMEOUT, |l| {
                l == "[pm] ben: psst"
            })?;
        Ok("node 1 → node 0: [pm] ben: psst".into())
    }

    fn who(&mut self) -> Result<String> {
        let want = "+ 4 in lab: amy, ann, ben, cid";
        for (name, member) in [("ann", &mut self.ann), ("cid", &mut self.cid)] {
            let answer = ask(member, "/who")?;
            ensure!(
                answer == want,
                "{name}'s /who: {answer:?}, expected {want:?}"
            );
        }
        Ok(want.into())
    }

    fn nick_race(&mut self) -> Result<String> {
        const ROUNDS: usize = 5;
        for round in 0..ROUNDS {
            let mut x = guest(self.addrs[0])?;
            let mut y = guest(self.addrs[1])?;
            // Both claims are on the wire before either answer is read.
            x.send_line(&format!("/nick racer{round}"))?;
            y.send_line(&format!("/nick RACER{round}"))?;
            let answers = [answer(&mut x)?, answer(&mut y)?];
            let won = answers.iter().filter(|a| a.starts_with("+ ")).count();
            ensure!(
                won == 1,
                "round {round}: answers {answers:?}, expected one winner"
            );
        }
        Ok(format!("{ROUNDS} rounds, one winner each (case-blind)"))
    }

    fn kill_node(&mut self) -> Result<String> {
        let killed = Instant::now();
        // Dropping a service kills it with SIGKILL.
        drop(self.nodes[2].take());
        let mut claimer = guest(self.addrs[0])?;
        let freed = loop {
            let answer = ask(&mut claimer, "/nick cid")?;
            if answer == "+ you are now cid" {
                break killed.elapsed();
            }
            ensure!(
                killed.elapsed() < REAP_DEADLINE,
                "cid still taken {REAP_DEADLINE:?} after kill -9 of its node ({answer:?})"
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        self.ann
            .read_line_where("cid's left notice", CHAT_TIMEOUT, |l| l == "* cid left")?;
        let who = ask(&mut self.ben, "/who")?;
        ensure!(
            !who.contains("cid"),
            "cid still listed after the reap: {who:?}"
        );
        Ok(format!(
            "nick cid free {freed:.1?} after kill -9; * cid left"
        ))
    }

    fn redis_restart(&mut self) -> Result<String> {
        drop(self.redis.take());
        for (name, member) in [("ann", &mut self.ann), ("ben", &mut self.ben)] {
            member
                .read_line_where(SPLIT, HEAL_DEADLINE, |l| l == SPLIT)
                .with_context(|| format!("{name} on a split node"))?;
        }
        self.ann.send_line("while split")?;
        self.amy
            .read_line_where("a local line while split", CHAT_TIMEOUT, |l| {
                l == "ann: while split"
            })?;

        let restarted = Instant::now();
        self.redis = Some(start_redis(&self.redis_bin, self.redis_addr)?);
        for (name, member) in [("ann", &mut self.ann), ("ben", &mut self.ben)] {
            member
                .read_line_where(WHOLE, HEAL_DEADLINE, |l| l == WHOLE)
                .with_context(|| format!("{name} after redis came back"))?;
        }
        self.ann.send_line("whole again")?;
        let left = HEAL_DEADLINE.saturating_sub(restarted.elapsed());
        self.ben
            .read_line_where("a cross-node line after the restart", left, |l| {
                l == "ann: whole again"
            })?;
        let took = restarted.elapsed();
        ensure!(
            took < HEAL_DEADLINE,
            "delivery resumed only after {took:.1?}"
        );
        let splits = self.ann.seen.iter().filter(|l| *l == SPLIT).count();
        ensure!(
            splits == 1,
            "ann was told {splits} times that the chat is split"
        );
        Ok(format!(
            "split told once, local lines kept; delivery back {took:.1?} after restart"
        ))
    }

    fn stop_nodes(&mut self) -> Result<String> {
        let mut details = Vec::new();
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            details.push(stop(node)?);
        }
        Ok(details.join("; "))
    }
}

/// A client on `addr` named `nick` in room `lab`.
fn member(addr: SocketAddr, nick: &str) -> Result<ChatClient> {
    let mut client = guest(addr)?;
    let answer = ask(&mut client, &format!("/nick {nick}"))?;
    ensure!(
        answer == format!("+ you are now {nick}"),
        "/nick {nick}: {answer:?}"
    );
    let answer = ask(&mut client, "/join lab")?;
    ensure!(
        answer.starts_with("+ you are now in lab"),
        "/join lab: {answer:?}"
    );
    Ok(client)
}

/// A fresh client on `addr`, past the welcome.
fn guest(addr: SocketAddr) -> Result<ChatClient> {
    let mut client = ChatClient::connect(addr, CHAT_TIMEOUT)?;
    client.read_line_where("the welcome", CHAT_TIMEOUT, |l| l == WELCOME)?;
    Ok(client)
}

/// Sends `line` and returns its one answer.
fn ask(client: &mut ChatClient, line: &str) -> Result<String> {
    client.send_line(line)?;
    answer(client)
}

/// The next answer line (`+ …` or `! …`), skipping notices and room lines.
fn answer(client: &mut ChatClient) -> Result<String> {
    client.read_line_where("an answer", CHAT_TIMEOUT, |l| {
        l.starts_with("+ ") || l.starts_with("! ")
    })
}

fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    listener.local_addr().context("reading the bound address")
}

/// A fresh, empty redis-server on `addr` (no persistence).
fn start_redis(bin: &Path, addr: SocketAddr) -> Result<Service> {
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Service::start("redis-server", cmd, addr)
}

fn start_logged(name: &str, mut cmd: Command, addr: SocketAddr, log: &Path) -> Result<Service> {
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdout(Stdio::null()).stderr(file).env("NO_COLOR", "1");
    Service::start(name, cmd, addr).map_err(|e| {
        let text = fs::read_to_string(log).unwrap_or_default();
        anyhow!("{e:#}; its log {}:\n{}", log.display(), text.trim_end())
    })
}
