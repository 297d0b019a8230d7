//! `cargo xtask bench`: benchmarks on loopback, each figure beside a baseline
//! measured in the same run, written as a markdown table.
//!
//! Builds the release binaries, runs the upload cases (against a raw TCP copy, the
//! hashing tools, and rsync, scp and curl-to-dufs as peers) and the chat cases
//! (against redis `PING` and an ngircd channel through the same load generator),
//! and prints the table; a full run of every group also writes it to
//! `docs/BENCHMARKS.md`, `--quick` to `target/bench/BENCHMARKS-quick.md` so CI
//! leaves the work tree clean, and `--only` to `target/bench/BENCHMARKS-only.md`. Targets are judged and printed, never asserted; a
//! harness failure (a server that does not start, a wrong digest) is an error.
//!
//! # Layout
//! - [`upload`]: the upload cases, the raw-copy baseline and the hashing ceilings.
//! - [`peers`]: rsync, scp and curl-to-dufs, each with its own loopback server.
//! - [`irc`]: ngircd, the chat fan-out peer, configured in a temporary directory.
//! - [`chat`]: round trips, fan-out and idle connections through `loadgen`.
//! - [`report`]: medians, targets and the markdown table.
//! - [`cluster`]: the same chat cases across three `chat-srv --redis` nodes.
//! - [`procfs`]: process memory and CPU time from `/proc`, machine facts.

mod chat;
mod cluster;
mod irc;
mod peers;
mod procfs;
mod report;
mod s3;
mod upload;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::service::{build_release, project_root, target_dir};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Run a short smoke version of every case (under a minute); writes
    /// target/bench/BENCHMARKS-quick.md instead of docs/BENCHMARKS.md.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of every case [default: 5, or 3 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: Option<u32>,
    /// Run only these groups (writes target/bench/BENCHMARKS-only.md, not docs/).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Group>,
    /// Keep the generated test files in target/bench/data for the next run.
    #[arg(long)]
    pub keep_files: bool,
}

/// A group of benchmark cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// Upload throughput, memory and hashing ceilings.
    Upload,
    /// Chat round trips, fan-out and idle connections.
    Chat,
}

/// Runs the benchmarks.
pub fn run(args: BenchArgs) -> Result<()> {
    let started = Instant::now();
    let runs = args
        .runs
        .map_or(if args.quick { 3 } else { 5 }, |r| r as usize);
    let wants = |g: Group| args.only.is_empty() || args.only.contains(&g);
    let bin = build_release()?;
    let bench_dir = target_dir().join("bench");
    let work = bench_dir.join("data");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let mut sections = Vec::new();
    if wants(Group::Upload) {
        let plan = if args.quick {
            upload::Plan {
                big_bytes: 64 << 20,
                small_count: 100,
                small_bytes: 100 << 10,
                runs,
                peers: false,
            }
        } else {
            upload::Plan {
                big_bytes: 1 << 30,
                small_count: 1000,
                small_bytes: 100 << 10,
                runs,
                peers: true,
            }
        };
        let rows = upload::run(&bin, &plan, &work);
        if !args.keep_files {
            let _ = std::fs::remove_dir_all(&work);
        }
        let tables = rows?;
        sections.push(report::table("Upload", &tables.upload));
        sections.push(report::table("Upload beside other tools", &tables.peers));
        sections.push(report::table(
            "Upload into S3-compatible storage",
            &s3::run(&bin, &plan, &work)?,
        ));
    }
    if wants(Group::Chat) {
        let plan = if args.quick {
            chat::Plan {
                round_trips: vec![(1, 2000), (50, 200)],
                max_secs: 3.0,
                fanout: vec![(100, 20)],
                install_irc: false,
                idle: 1000,
                runs,
            }
        } else {
            chat::Plan {
                round_trips: vec![(1, 20_000), (50, 2000), (1000, 200)],
                max_secs: 10.0,
                fanout: vec![(100, 100), (1000, 100)],
                install_irc: true,
                idle: 10_000,
                runs,
            }
        };
        sections.push(report::table("Chat", &chat::run(&bin, &plan)?));
        sections.push(report::table(
            "Chat cluster",
            &cluster::run(&bin, &cluster::Plan::new(args.quick, runs))?,
        ));
    }

    let doc = document(&args, runs, &bin, &sections, started.elapsed().as_secs());
    println!("{doc}");
    // Only a full run of every group stands for the project in docs/.
    let out = if args.quick {
        bench_dir.join("BENCHMARKS-quick.md")
    } else if !args.only.is_empty() {
        bench_dir.join("BENCHMARKS-only.md")
    } else {
        project_root().join("docs").join("BENCHMARKS.md")
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, doc).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

/// The markdown document: how it was made, on what, and the tables.
fn document(args: &BenchArgs, runs: usize, bin: &Path, sections: &[String], secs: u64) -> String {
    let mut doc = String::from("# Benchmarks\n\n");
    let mode = if args.quick {
        "`cargo xtask bench --quick`"
    } else {
        "`cargo xtask bench`"
    };
    let _ = writeln!(
        doc,
        "Written by {mode} ({runs} runs per case, {secs} s in all) on {}, {}.\n",
        date(),
        procfs::machine()
    );
    let _ = writeln!(
        doc,
        "SHA-256 in the upload binaries: {}.\n",
        sha_ni_in(&bin.join("up-srv"))
    );
    doc.push_str(METHOD);
    doc.push('\n');
    for section in sections {
        doc.push_str(section);
        doc.push('\n');
    }
    doc
}

const METHOD: &str = "\
How to read this: each figure is the median of its runs, with the minimum and
maximum beside it; the baseline is measured in the same run on the same machine,
and the ratio compares the medians. Targets are ratios because absolute times on
a shared 2-core machine drift. Nothing here is asserted: a miss is printed.

- Upload: `up-cli -q` wall time (process start to exit, digest checked against
  `sha256sum`) to a fresh `up-srv` on loopback. Baseline: a raw TCP copy of the same
  file(s) into the same disk directory, 1 MiB buffers, read/write through user space,
  the same fsync (per file, then the directory) before the receiver acknowledges, no
  hashing. Runs alternate between baseline and product. Peak RSS: `VmHWM` of `up-srv`,
  `/usr/bin/time -f %M` of `up-cli`.
- Peers (full run only): in every round, after `up-cli`, the same file(s) go to
  an rsync daemon (`rsync --whole-file`, with and without `--fsync`, which fsyncs
  each file but not the directory), to a private `sshd` on a free loopback port
  with its own config and keys (`scp -c aes128-gcm@openssh.com`, no fsync), and to
  `dufs --allow-upload` (`curl -T`, one PUT per file on one kept-alive connection,
  no fsync). Figures are the client's wall time, process start to exit, after which
  the stored sizes are checked; the ratio is up-cli ÷ peer (below 1: up-cli is
  faster). A peer that cannot be installed is listed as skipped with the reason.
- Hashing: `loadgen hash --impl X` hashes 256 MiB in memory with each
  implementation in `proto::digest` (one thread); `openssl` with
  `OPENSSL_ia32cap=:~0x20000000` runs the code path of a CPU without SHA extensions.
- Chat: `loadgen` (one tokio thread) drives both `chat-srv --rate 0 --idle-timeout 0`
  and `redis-server` (inline `PING`, persistence off). Each chat client sits in a room
  of its own, so a message has exactly one reply; clients connect and join before the
  clock starts. Fan-out: one sender and a room of members; each message is timed from
  its send until the last member has read it, one message at a time. The same
  generator runs the same case against ngircd (a channel of the same size, speaking
  IRC; `MaxPenaltyTime = 0`, connection and join limits lifted, DNS and ident off),
  alternating run by run with chat-srv. Idle: server `VmRSS` with all connections
  welcomed and the server idle, minus its `VmRSS` empty, divided by the connections.
";

/// Whether `binary` contains SHA-NI instructions (`sha256rnds2`), and the CPU flag.
fn sha_ni_in(binary: &Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" sha_ni"));
    let code = Command::new("objdump")
        .arg("-d")
        .arg(binary)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .matches("sha256rnds2")
                .count()
        });
    let code = match code {
        Some(0) => "no SHA-NI code (sha256rnds2) in up-srv".to_owned(),
        Some(n) => format!("SHA-NI code present in up-srv ({n} sha256rnds2), chosen at run time"),
        None => "objdump not available to check for SHA-NI code".to_owned(),
    };
    let cpu = if cpu {
        "the CPU has SHA extensions (sha_ni)"
    } else {
        "the CPU has no SHA extensions (no sha_ni)"
    };
    // The backend `proto::digest` picks here, as `loadgen` (built alike) reports it.
    let picked = Command::new(binary.with_file_name("loadgen"))
        .args(["hash", "--impl", "auto", "--mib", "1"])
        .output()
        .ok()
        .and_then(|o| {
            let line = String::from_utf8_lossy(&o.stdout).into_owned();
            let name = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("impl="))?;
            Some(format!("; `proto::digest` picks `{name}` on this CPU"))
        })
        .unwrap_or_default();
    format!("{code}; {cpu}{picked}")
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "an unknown date".to_owned())
}

/// The number after `key=` in a `loadgen` result line.
fn field(line: &str, key: &str) -> Result<f64> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("no {key}= in loadgen output {line:?}"))?
        .parse()
        .with_context(|| format!("{key} in {line:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn loadgen_fields_parse_by_key() {
        let line = "clients=50 msgs=100 rate=1234.5 p50_us=10 p99_us=20";
        assert_eq!(field(line, "rate").expect("rate"), 1234.5);
        assert_eq!(field(line, "p99_us").expect("p99"), 20.0);
        assert!(field(line, "p9").is_err());
    }
}
