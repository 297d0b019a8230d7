//! Chat cluster cases (issue 13): three `chat-srv --redis` nodes on one
//! `redis-server`, each figure beside the same case on one plain `chat-srv`
//! measured in the same run.
//!
//! - fan-out: one sender on node 0, a room of members spread round-robin over the
//!   three nodes (two thirds of them on other nodes); time from the send until the
//!   last member has the line. Target: p99 < 50 ms for 1,000 members.
//! - cross-node delivery: the same with one member, on node 1: one line's trip
//!   from a sender's node through Redis to another node's member.
//! - round trips: lock-step clients spread over the nodes (each in a room of its
//!   own, so every line is also published and dropped by the other nodes):
//!   throughput and p99 against one node.
//!
//! All load comes from `loadgen` (`--member-addrs`, `--client-addrs`).

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result};

use super::procfs;
use super::report::{Figure, Row, Target};
use crate::service::Service;

/// Sizes and counts for the cluster cases.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Members of the fan-out room and messages sent to it.
    pub fanout: (usize, usize),
    /// Messages for the one-member cross-node case.
    pub cross: usize,
    /// Lock-step clients and round trips per client.
    pub round_trips: (usize, usize),
    /// Repetitions of every case.
    pub runs: usize,
}

impl Plan {
    /// The plan for `bench` (`quick` for the smoke run).
    pub fn new(quick: bool, runs: usize) -> Plan {
        if quick {
            Plan {
                fanout: (300, 20),
                cross: 200,
                round_trips: (50, 100),
                runs,
            }
        } else {
            Plan {
                fanout: (1000, 100),
                cross: 1000,
                round_trips: (50, 1000),
                runs,
            }
        }
    }
}

/// The servers of one comparison: three cluster nodes and a lone node.
struct Servers {
    _redis: Service,
    nodes: Vec<Service>,
    single: Service,
}

impl Servers {
    fn start(bin: &Path) -> Result<Servers> {
        let redis_bin = crate::e2e::cluster::redis_server()?;
        let redis = super::chat::start_redis(&redis_bin)?;
        let url = format!("redis://{}/0", redis.addr);
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(start_chat(bin, Some(&url))?);
        }
        Ok(Servers {
            _redis: redis,
            nodes,
            single: start_chat(bin, None)?,
        })
    }

    fn node_list(&self, from: usize) -> String {
        let addrs: Vec<String> = self.nodes[from..]
            .iter()
            .map(|n| n.addr.to_string())
            .collect();
        addrs.join(",")
    }
}

/// Runs the cluster cases.
pub fn run(bin: &Path, plan: &Plan) -> Result<Vec<Row>> {
    let servers = Servers::start(bin)?;
    let mut rows = Vec::new();

    let (members, messages) = plan.fanout;
    let (cluster, single) = repeat(plan.runs, "cluster fan-out", || {
        let c = fanout(
            bin,
            &servers.nodes[0],
            &servers.node_list(0),
            members,
            messages,
        )?;
        let s = fanout(bin, &servers.single, "", members, messages)?;
        Ok((c, s))
    })?;
    let target = if members >= 1000 {
        Target::Below(50.0)
    } else {
        Target::None
    };
    rows.push(
        Row::new(
            format!("cluster fan-out: room of {members} over 3 nodes: p50 until all have it"),
            Figure::new(cluster.iter().map(|r| r.0).collect(), "ms"),
            Target::None,
        )
        .against(
            "one node",
            Figure::new(single.iter().map(|r| r.0).collect(), "ms"),
        ),
    );
    rows.push(
        Row::new(
            format!("cluster fan-out: room of {members} over 3 nodes: p99 until all have it"),
            Figure::new(cluster.iter().map(|r| r.1).collect(), "ms"),
            target,
        )
        .against(
            "one node",
            Figure::new(single.iter().map(|r| r.1).collect(), "ms"),
        ),
    );

    let (cross, local) = repeat(plan.runs, "cross-node delivery", || {
        let c = fanout(bin, &servers.nodes[0], &servers.node_list(1), 1, plan.cross)?;
        let s = fanout(bin, &servers.single, "", 1, plan.cross)?;
        Ok((c, s))
    })?;
    for (i, name) in [(0, "p50"), (1, "p99")] {
        let pick = |runs: &[(f64, f64)]| {
            let values = runs.iter().map(|r| if i == 0 { r.0 } else { r.1 });
            Figure::new(values.collect(), "ms")
        };
        rows.push(
            Row::new(
                format!("cluster: one line to a member on another node: {name}"),
                pick(&cross),
                Target::None,
            )
            .against("same node", pick(&local)),
        );
    }

    let (clients, count) = plan.round_trips;
    let (cluster, single) = repeat(plan.runs, "cluster round trips", || {
        let c = round_trips(
            bin,
            &servers.nodes[0],
            &servers.node_list(0),
            clients,
            count,
        )?;
        let s = round_trips(bin, &servers.single, "", clients, count)?;
        Ok((c, s))
    })?;
    let pick = |runs: &[(f64, f64)], first: bool, unit| {
        let values = runs.iter().map(|r| if first { r.0 } else { r.1 });
        Figure::new(values.collect(), unit)
    };
    rows.push(
        Row::new(
            format!("cluster round trips N={clients} over 3 nodes: throughput"),
            pick(&cluster, true, "msg/s"),
            Target::None,
        )
        .against("one node", pick(&single, true, "msg/s")),
    );
    rows.push(
        Row::new(
            format!("cluster round trips N={clients} over 3 nodes: p99 latency"),
            pick(&cluster, false, "µs"),
            Target::None,
        )
        .against("one node", pick(&single, false, "µs")),
    );
    Ok(rows)
}

/// Runs `case` `runs` times, collecting both of its figures.
fn repeat<T>(
    runs: usize,
    name: &str,
    mut case: impl FnMut() -> Result<(T, T)>,
) -> Result<(Vec<T>, Vec<T>)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for run in 0..runs {
        eprintln!("bench: {name}, run {}/{runs}", run + 1);
        let (x, y) = case()?;
        a.push(x);
        b.push(y);
    }
    Ok((a, b))
}

/// One `loadgen fanout` run: (p50, p99) in ms. `members_at` (comma-separated) is
/// where the members connect; empty means the sender's server.
fn fanout(
    bin: &Path,
    sender: &Service,
    members_at: &str,
    members: usize,
    messages: usize,
) -> Result<(f64, f64)> {
    let addr = sender.addr.to_string();
    let (members, messages) = (members.to_string(), messages.to_string());
    let mut args = vec![
        "fanout",
        "--addr",
        &addr,
        "--members",
        &members,
        "--messages",
        &messages,
    ];
    if !members_at.is_empty() {
        args.extend(["--member-addrs", members_at]);
    }
    let line = super::chat::loadgen(bin, &args)?;
    Ok((
        super::field(&line, "p50_us")? / 1000.0,
        super::field(&line, "p99_us")? / 1000.0,
    ))
}

/// One `loadgen rtt` run: (msg/s, p99 µs).
fn round_trips(
    bin: &Path,
    server: &Service,
    clients_at: &str,
    clients: usize,
    count: usize,
) -> Result<(f64, f64)> {
    let addr = server.addr.to_string();
    let (clients, count) = (clients.to_string(), count.to_string());
    let mut args = vec![
        "rtt",
        "--addr",
        &addr,
        "--mode",
        "chat",
        "--clients",
        &clients,
        "--count",
        &count,
    ];
    if !clients_at.is_empty() {
        args.extend(["--client-addrs", clients_at]);
    }
    let line = super::chat::loadgen(bin, &args)?;
    Ok((super::field(&line, "rate")?, super::field(&line, "p99_us")?))
}

/// A `chat-srv` on a free port with the benchmark's limits (as in the chat
/// cases), a node of the cluster on `redis` when given.
fn start_chat(bin: &Path, redis: Option<&str>) -> Result<Service> {
    let addr = procfs::free_addr()?;
    let log_path = crate::service::target_dir()
        .join("bench")
        .join("chat-cluster.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = procfs::with_raised_nofile(&bin.join("chat-srv"));
    cmd.args(["-b", "127.0.0.1", "-p", &addr.port().to_string()])
        .args([
            "--rate",
            "0",
            "--max-clients",
            "100000",
            "--idle-timeout",
            "0",
        ])
        .args(["--queue", "4096"]);
    if let Some(url) = redis {
        cmd.args(["--redis", url, "--cluster-name", "bench"]);
    }
    cmd.stdout(Stdio::null()).stderr(log);
    Service::start("chat-srv", cmd, addr)
}
