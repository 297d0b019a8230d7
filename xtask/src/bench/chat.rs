//! Chat cases: round trips against redis `PING` with the same load generator,
//! fan-out to one big room beside an ngircd channel of the same size, and the
//! memory of idle connections.
//!
//! The load itself comes from the `loadgen` binary (async, one core); this file
//! starts the servers, runs `loadgen` modes, and reads the servers' memory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use super::procfs;
use super::report::{Figure, Row, Target};
use crate::service::wait_with_timeout;
use crate::service::Service;

/// Longest any single `loadgen` call may take (each mode also bounds itself).
const LOADGEN_TIMEOUT: Duration = Duration::from_secs(180);

/// Sizes and counts for the chat cases.
#[derive(Debug, Clone)]
pub struct Plan {
    /// (clients, round trips per client) for each round-trip case.
    pub round_trips: Vec<(usize, usize)>,
    /// Seconds after which a round-trip run stops early.
    pub max_secs: f64,
    /// (members, messages) of each fan-out case.
    pub fanout: Vec<(usize, usize)>,
    /// Whether to install ngircd when it is missing (else it is used only if present).
    pub install_irc: bool,
    /// Idle connections for the memory figure.
    pub idle: usize,
    /// Repetitions of every case.
    pub runs: usize,
}

/// Runs every chat case.
pub fn run(bin: &Path, plan: &Plan) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let redis = crate::install::tool("redis-server", "redis-server", "the redis baseline");
    let chat = start_chat(bin)?;
    let redis_service = match &redis {
        Ok(path) => Some(start_redis(path)?),
        Err(_) => None,
    };
    for &(clients, count) in &plan.round_trips {
        let mut chat_runs = Vec::new();
        let mut redis_runs = Vec::new();
        for run in 0..plan.runs {
            eprintln!(
                "bench: round trips N={clients}, run {}/{}",
                run + 1,
                plan.runs
            );
            chat_runs.push(round_trips(
                bin,
                &chat,
                "chat",
                clients,
                count,
                plan.max_secs,
            )?);
            if let Some(service) = &redis_service {
                redis_runs.push(round_trips(
                    bin,
                    service,
                    "redis",
                    clients,
                    count,
                    plan.max_secs,
                )?);
            }
        }
        let pick = |runs: &[RoundTrips], f: fn(&RoundTrips) -> f64, unit| {
            Figure::new(runs.iter().map(f).collect(), unit)
        };
        let total = format!("{}×{count}", clients);
        let gate = clients <= 50;
        let mut rate = Row::new(
            format!("chat round trips N={clients} ({total} msgs): throughput"),
            pick(&chat_runs, |r| r.rate, "msg/s"),
            if gate {
                Target::RatioAtLeast(1.0)
            } else {
                Target::None
            },
        );
        let mut p99 = Row::new(
            format!("chat round trips N={clients}: p99 latency"),
            pick(&chat_runs, |r| r.p99_us, "µs"),
            if gate {
                Target::RatioAtMost(1.5)
            } else {
                Target::None
            },
        );
        let mut p50 = Row::new(
            format!("chat round trips N={clients}: p50 latency"),
            pick(&chat_runs, |r| r.p50_us, "µs"),
            Target::None,
        );
        match &redis {
            Ok(_) => {
                rate = rate.against("redis PING", pick(&redis_runs, |r| r.rate, "msg/s"));
                p99 = p99.against("redis PING", pick(&redis_runs, |r| r.p99_us, "µs"));
                p50 = p50.against("redis PING", pick(&redis_runs, |r| r.p50_us, "µs"));
            }
            Err(reason) => {
                let note = format!("skipped: {reason}");
                rate = rate.note(note.clone());
                p99 = p99.note(note.clone());
                p50 = p50.note(note);
            }
        }
        rows.extend([rate, p50, p99]);
    }
    drop(redis_service);

    let irc = super::irc::start(
        &crate::service::target_dir().join("bench").join("ngircd"),
        plan.install_irc,
    );
    for &(members, messages) in &plan.fanout {
        let (mut chat_runs, mut irc_runs) = (Vec::new(), Vec::new());
        for run in 0..plan.runs {
            eprintln!(
                "bench: fan-out to {members} members, run {}/{}",
                run + 1,
                plan.runs
            );
            chat_runs.push(fanout(bin, &chat, "chat", members, messages)?);
            if let Ok(ngircd) = &irc {
                irc_runs.push(fanout(bin, ngircd, "irc", members, messages)?);
            }
        }
        let pick = |runs: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
            Figure::new(runs.iter().map(f).collect(), "ms")
        };
        let mut p50 = Row::new(
            format!("fan-out: room of {members}, {messages} msgs: p50 until all have it"),
            pick(&chat_runs, |r| r.0),
            Target::None,
        );
        let mut p99 = Row::new(
            format!("fan-out: room of {members}, {messages} msgs: p99 until all have it"),
            pick(&chat_runs, |r| r.1),
            if members >= 1000 {
                Target::RatioAtMost(1.0)
            } else {
                Target::None
            },
        );
        match &irc {
            Ok(_) => {
                let peer = format!("ngircd, channel of {members}");
                p50 = p50.against(peer.clone(), pick(&irc_runs, |r| r.0));
                p99 = p99.against(peer, pick(&irc_runs, |r| r.1));
            }
            Err(reason) => {
                p50 = p50.note(format!("ngircd skipped: {reason}"));
                p99 = p99.note(format!("ngircd skipped: {reason}"));
            }
        }
        rows.extend([p50, p99]);
    }
    drop(irc);
    drop(chat);

    rows.push(idle_connections(bin, plan)?);
    Ok(rows)
}

/// One `loadgen fanout` run against `server` speaking `mode`: (p50, p99) in ms.
fn fanout(
    bin: &Path,
    server: &Service,
    mode: &str,
    members: usize,
    messages: usize,
) -> Result<(f64, f64)> {
    let line = loadgen(
        bin,
        &[
            "fanout",
            "--addr",
            &server.addr.to_string(),
            "--mode",
            mode,
            "--members",
            &members.to_string(),
            "--messages",
            &messages.to_string(),
        ],
    )?;
    Ok((
        super::field(&line, "p50_us")? / 1000.0,
        super::field(&line, "p99_us")? / 1000.0,
    ))
}

/// The figures of one `loadgen rtt` run.
struct RoundTrips {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

fn round_trips(
    bin: &Path,
    server: &Service,
    mode: &str,
    clients: usize,
    count: usize,
    max_secs: f64,
) -> Result<RoundTrips> {
    let line = loadgen(
        bin,
        &[
            "rtt",
            "--addr",
            &server.addr.to_string(),
            "--mode",
            mode,
            "--clients",
            &clients.to_string(),
            "--count",
            &count.to_string(),
            "--max-secs",
            &max_secs.to_string(),
        ],
    )?;
    Ok(RoundTrips {
        rate: super::field(&line, "rate")?,
        p50_us: super::field(&line, "p50_us")?,
        p99_us: super::field(&line, "p99_us")?,
    })
}

/// Memory per idle connection: fresh server, its empty RSS, then `plan.idle`
/// welcomed connections held open, RSS again once the server is idle.
fn idle_connections(bin: &Path, plan: &Plan) -> Result<Row> {
    let hard = procfs::nofile_hard_limit()?;
    // Each side needs one descriptor per connection plus a few of its own.
    let conns = plan
        .idle
        .min(usize::try_from(hard.saturating_sub(64)).unwrap_or(usize::MAX));
    let mut per_conn = Vec::new();
    for run in 0..plan.runs {
        eprintln!(
            "bench: {conns} idle connections, run {}/{}",
            run + 1,
            plan.runs
        );
        let chat = start_chat(bin)?;
        procfs::wait_until_quiet(chat.pid(), Duration::from_secs(10))?;
        let empty = procfs::status_kib(chat.pid(), "VmRSS")?;
        let mut holder = procfs::with_raised_nofile(&bin.join("loadgen"));
        holder
            .args([
                "idle",
                "--addr",
                &chat.addr.to_string(),
                "--conns",
                &conns.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = holder.spawn().context("starting loadgen idle")?;
        let stdout = child.stdout.take().context("loadgen stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready = rx.recv_timeout(LOADGEN_TIMEOUT).unwrap_or_default();
        if !ready.starts_with("ready") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("loadgen idle did not get {conns} welcomes (see its error above)");
        }
        procfs::wait_until_quiet(chat.pid(), Duration::from_secs(30))?;
        let loaded = procfs::status_kib(chat.pid(), "VmRSS")?;
        // Closing stdin releases the connections.
        drop(child.stdin.take());
        let _ = wait_with_timeout(child, Duration::from_secs(30))?;
        drop(chat);
        per_conn.push(loaded.saturating_sub(empty) as f64 / conns as f64);
    }
    let mut row = Row::new(
        format!("chat-srv RSS per idle connection ({conns} connected, above empty server)"),
        Figure::new(per_conn, "KiB"),
        Target::Below(10.0),
    );
    if conns < plan.idle {
        row = row.note(format!(
            "open-file hard limit {hard} allowed only {conns} of {}",
            plan.idle
        ));
    }
    Ok(row)
}

/// Starts `chat-srv` on a free loopback port with the limits that would distort a
/// benchmark turned off, and its open-file limit raised.
fn start_chat(bin: &Path) -> Result<Service> {
    let addr = procfs::free_addr()?;
    // The server's log goes to a file, so a failed run can be diagnosed.
    let log_path = crate::service::target_dir()
        .join("bench")
        .join("chat-srv.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = procfs::with_raised_nofile(&bin.join("chat-srv"));
    cmd.args([
        "-b",
        "127.0.0.1",
        "-p",
        &addr.port().to_string(),
        "--rate",
        "0",
        "--max-clients",
        "100000",
        "--idle-timeout",
        "0",
        // A deep queue: connection storms (join/leave notices in the lobby while a
        // thousand clients set up) must not get a benchmark client kicked as slow.
        "--queue",
        "4096",
    ])
    .stdout(Stdio::null())
    .stderr(log);
    Service::start("chat-srv", cmd, addr)
}

/// Starts redis-server on a free loopback port, persistence off (the cluster cases
/// use it too).
pub(super) fn start_redis(path: &Path) -> Result<Service> {
    let addr = procfs::free_addr()?;
    let mut cmd = procfs::with_raised_nofile(path);
    cmd.args([
        "--port",
        &addr.port().to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--maxclients",
        "12000",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    Service::start("redis-server", cmd, addr)
}

/// Runs `loadgen args..` (open-file limit raised) and returns its result line.
pub(super) fn loadgen(bin: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = procfs::with_raised_nofile(&bin.join("loadgen"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().context("starting loadgen")?;
    let out = wait_with_timeout(child, LOADGEN_TIMEOUT)
        .with_context(|| format!("loadgen {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "loadgen {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
