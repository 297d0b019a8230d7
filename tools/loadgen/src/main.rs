//! `loadgen`: the load generator that `cargo xtask bench` drives.
//!
//! It lives in its own binary because the chat cases need thousands of concurrent
//! sockets, which want an async runtime, and `xtask` is kept free of one. Each mode
//! prints one line of `key=value` pairs on stdout for `xtask bench` to parse; errors
//! go to stderr with a non-zero exit, so a broken harness fails the bench loudly.
//!
//! # Layout
//! - [`conn`]: a line-oriented TCP client and the chat handshake (welcome, join).
//! - [`rtt`]: N clients in lock-step request/reply (chat message or redis `PING`).
//! - [`fanout`]: one sender, one room of many members, time until all have a line
//!   (chat-srv, or an IRC server through [`irc`]).
//! - [`irc`]: IRC registration, join and message parsing for the fan-out peer.
//! - [`idle`]: many connections that only hold their socket, for the memory figure.
//! - [`hash`]: in-memory speed of each digest implementation in `proto::digest`.

mod conn;
mod fanout;
mod hash;
mod idle;
mod irc;
mod rtt;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Load generator for `cargo xtask bench` (loopback only, bounded in count and time).
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    /// Runtime worker threads; 1 keeps the generator on one core so the server
    /// under test gets the other one on a 2-core machine.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// N clients, each sending a line and waiting for its reply, `count` times.
    Rtt(rtt::RttArgs),
    /// One sender and one room of members: time until every member has each line.
    Fanout(fanout::FanoutArgs),
    /// Open many connections, wait for each welcome, hold them until stdin closes.
    Idle(idle::IdleArgs),
    /// Hash bytes in memory with one digest implementation and report the throughput.
    Hash(hash::HashArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(line) => {
            // A reader that went away (xtask after `ready`) is not an error.
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("loadgen: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<String> {
    let nofile = raise_nofile_limit();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    }
    .context("building the tokio runtime")?;
    runtime.block_on(async move {
        match cli.mode {
            Mode::Rtt(args) => rtt::run(args).await,
            Mode::Fanout(args) => fanout::run(args).await,
            Mode::Idle(args) => idle::run(args, nofile).await,
            Mode::Hash(args) => Ok(hash::run(&args)),
        }
    })
}

/// Raises the soft open-file limit to the hard one, since ten thousand sockets
/// exceed the usual soft default of 1024; returns the limit now in force.
fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                eprintln!("loadgen: cannot raise the open-file limit to {hard}: {err}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}
