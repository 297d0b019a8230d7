//! `up-cli` binary: parses arguments, collects the files and calls
//! [`up_cli::client::upload_all`] (or [`up_cli::legacy::upload`]).
//!
//! stdout carries exactly one `<sha256>  <stored name>` line per stored file;
//! everything else goes to stderr. Exit codes: 0 every file stored and
//! verified, 1 any failure (one line each), 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use up_cli::progress::Console;
use up_cli::{Options, Reporter};

/// Upload files to up-srv with SHA-256 verification, resume and progress bars.
///
/// Prints one "<sha256>  <name>" line per stored file (names relative to the
/// server's upload dir), so `cd uploads && up-cli ... | sha256sum -c` checks them.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  \
    up-cli photo.jpg notes.pdf             upload two files to 127.0.0.1:9998\n  \
    up-cli -r holiday/                     a directory, keeping relative paths\n  \
    up-cli --host ::1 -p 9000 big.iso      another server (IPv6 loopback)\n  \
    up-cli --limit-rate 1M big.iso         throttle to 1 MiB/s; rerun to resume if cut\n  \
    up-cli --legacy photo.jpg              the original tutorial's protocol\n  \
    up-cli -p 9999 --tls-pin AB:CD:... a.jpg   TLS, accepting only the certificate up-srv logged\n  \
    up-cli --token-file ~/.up-token a.jpg  token from a file, not the process list\n  \
    cd uploads && up-cli ../a.jpg | sha256sum -c   check the stored copy (same host)\n\n\
    Exit codes: 0 every file stored and verified, 1 any failure, 2 usage error."
)]
struct Args {
    /// Files (and with -r directories) to upload
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Server host
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Server port
    #[arg(short, long, default_value_t = up_cli::DEFAULT_PORT)]
    port: u16,
    /// Upload directories recursively, keeping their relative paths
    #[arg(short, long)]
    recursive: bool,
    /// No progress, notices or summary; errors still print
    #[arg(short, long)]
    quiet: bool,
    /// Shared token required by the server
    #[arg(
        long,
        env = "UP_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Read the token from the first line of this file, so it stays out of the process list
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Use the original protocol (size as text, wait for a reply, bytes, close); one file,
    /// no name, no verification, nothing on stdout
    #[arg(long)]
    legacy: bool,
    /// Limit the upload rate to this many bytes per second (suffixes K, M, G); the server
    /// may end uploads slower than its --min-rate (1 KiB/s by default; resume by rerunning)
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = parse_rate)]
    limit_rate: Option<u64>,
    /// Testing aid: send this many body bytes, then drop the connection and exit 1
    #[arg(long, hide = true, value_name = "BYTES")]
    abort_after: Option<u64>,
    #[command(flatten)]
    tls: transport::ClientTls,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid rate '{s}' (e.g. 500K)"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(format!("unknown rate suffix in '{s}' (use K, M or G)")),
    };
    match n.checked_mul(1 << shift) {
        Some(0) | None => Err(format!("rate '{s}' must be between 1 byte/s and 2^64")),
        Some(v) => Ok(v),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.legacy && args.paths.len() != 1 {
        eprintln!("up-cli: error: --legacy uploads exactly one file (the original protocol carries no name)");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("up-cli: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let ok = runtime.block_on(run(args));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn run(args: Args) -> bool {
    let (jobs, errors) = up_cli::jobs::collect(&args.paths, args.recursive);
    let total: u64 = jobs.iter().map(|j| j.size).sum();
    let mut console = Console::new(args.quiet, total);
    for e in &errors {
        console.error(e);
    }
    let token = match &args.token_file {
        Some(path) => match transport::secret::read_token_file(path) {
            Ok(token) => Some(token),
            Err(e) => {
                console.error(&e.to_string());
                return false;
            }
        },
        None => args.token.filter(|t| !t.is_empty()),
    };
    let tls = match args.tls.connector() {
        Ok(tls) => tls,
        Err(e) => {
            console.error(&e.to_string());
            return false;
        }
    };
    let opts = Options {
        host: args.host,
        port: args.port,
        tls,
        token,
        limit_rate: args.limit_rate,
        abort_after: args.abort_after,
    };
    if jobs.is_empty() {
        if errors.is_empty() {
            console.error("nothing to upload");
        }
        return false;
    }
    if args.legacy {
        let job = &jobs[0];
        match up_cli::legacy::upload(&opts, job, &mut console).await {
            Ok(digest) => {
                // No summary: nothing was verified, and "0 files" would mislead.
                console.notice(&format!(
                    "sent {} ({} bytes, sha256 {}) with the legacy protocol; the server does not confirm the stored name or digest",
                    job.name,
                    job.size,
                    proto::upload::hex(&digest)
                ));
                console.summary_quiet();
                return console.failed == 0;
            }
            Err(e) => {
                console.error(&format!("{}: {e}", job.name));
                console.summary();
                return false;
            }
        }
    }
    let report = up_cli::client::upload_all(&opts, &jobs, &mut console).await;
    if let Some(e) = report.fatal {
        console.error(&format!("{e}"));
        let skipped = jobs.len() - report.outcomes.len();
        if skipped > 0 {
            console.notice(&format!("{skipped} file(s) not stored"));
        }
    }
    console.summary();
    console.failed == 0
}
