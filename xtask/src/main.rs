//! Project automation in the cargo-xtask style: `cargo xtask <task>`.
//!
//! The alias lives in `.cargo/config.toml`. Each task is one file; this file only
//! parses the command line and dispatches. Dependencies stay light on purpose
//! (std threads and `std::net` are enough on loopback), so `cargo xtask` builds fast.
//!
//! Exit codes: 0 when the task succeeded, 1 when it failed (the error chain is printed
//! on one line, with a hint when there is something to do).
//!
//! # Layout
//! - [`service`]: building the release binaries and running servers as child processes.
//! - [`serve`]: `cargo xtask serve`, both servers in the foreground until Ctrl-C.
//! - [`demo`]: `cargo xtask demo`, the newcomer's guided tour.
//! - [`e2e`]: `cargo xtask e2e`, the end-to-end checks against the real binaries.
//! - [`ci`]: `cargo xtask ci`, fmt, clippy, tests, e2e and the quick benchmark.
//! - [`bench`]: `cargo xtask bench`, benchmarks against same-run baselines.
//! - [`man`]: `cargo xtask man`, man pages and shell completions under `target/dist/`.
//! - [`soak`]: `cargo xtask soak`, the hardening tests at full size (and fuzzing).
//! - [`clients`]: std `TcpStream` clients speaking the chat lines and the legacy upload.
//! - [`images`]: deterministic JPEG and PNG files for the upload checks.
//! - [`install`]: finding (or installing) the outside programs xtask drives.
//! - [`s3`]: `cargo xtask s3`, the S3-compatible server for the store tests (moto).
//! - [`verify`]: SHA-256 of files and `up-cli`'s `<sha256>  <name>` lines.
//! - `tidy` (tests only): repository rules that `cargo test --workspace` enforces.

mod bench;
mod ci;
mod clients;
mod demo;
mod e2e;
mod images;
mod install;
mod man;
mod s3;
mod serve;
mod service;
mod soak;
#[cfg(test)]
mod tidy;
mod verify;

use clap::{Parser, Subcommand};

/// Automation for the chat and upload workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the release binaries (chat-srv, chat-cli, up-srv, up-cli).
    Build,
    /// Run chat-srv and up-srv in the foreground until Ctrl-C.
    Serve(serve::ServeArgs),
    /// Build, start both servers, chat a little, upload an image, verify it, stop.
    Demo,
    /// End-to-end checks against the real binaries on 127.0.0.1:8888 and :9998.
    E2e(e2e::E2eArgs),
    /// Everything CI runs: fmt, clippy, tests, e2e, then the quick benchmark.
    Ci,
    /// Run the benchmarks and write docs/BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Write man pages and shell completions for the four tools to target/dist/.
    Man,
    /// The hardening tests at full size (2,000 chat clients for 60 s...), optionally fuzzing.
    Soak(soak::SoakArgs),
    /// Find or install the S3-compatible server the store tests use (moto) and print its path.
    S3,
}

/// Runs one task; `ci` calls this too, for the tasks it chains.
fn run_task(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Build => {
            let dir = service::build_release()?;
            println!("release binaries are in {}", dir.display());
            Ok(())
        }
        Task::Serve(args) => serve::run(args),
        Task::Demo => demo::run(),
        Task::E2e(args) => e2e::run(args),
        Task::Ci => ci::run(),
        Task::Bench(args) => bench::run(args),
        Task::Soak(args) => soak::run(args),
        Task::Man => man::run(),
        Task::S3 => s3::run(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run_task(cli.task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn e2e_ports_default_to_the_servers_defaults_and_can_be_overridden() {
        let cli = Cli::try_parse_from(["cargo xtask", "e2e"]).expect("parse");
        let Task::E2e(args) = cli.task else {
            panic!("not e2e: {:?}", cli.task)
        };
        assert_eq!(
            (args.chat_port, args.up_port),
            (crate::clients::CHAT_PORT, crate::clients::UP_PORT)
        );
        let cli = Cli::try_parse_from(["cargo xtask", "e2e", "--chat-port", "1", "--up-port", "2"])
            .expect("parse");
        let Task::E2e(args) = cli.task else {
            panic!("not e2e: {:?}", cli.task)
        };
        assert_eq!((args.chat_port, args.up_port), (1, 2));
    }
}
