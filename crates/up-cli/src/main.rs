//! `up-cli` binary: parses arguments, collects the files and calls
//! [`up_cli::client::upload_all`] (or [`up_cli::legacy::upload`]), or runs
//! `ls` / `get` through [`up_cli::download`].
//!
//! stdout carries exactly one `<sha256>  <name>` line per stored (or
//! downloaded, or listed) file; everything else goes to stderr. Exit codes:
//! 0 every file stored and verified, 1 any failure (one `error:` line each),
//! 2 usage error, 130 interrupted (rerun to resume).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use up_cli::download::{self, GetOptions};
use up_cli::jobs::{self, FileJob, Naming};
use up_cli::progress::Console;
use up_cli::{Options, Reporter, Target};

/// Upload files to up-srv with SHA-256 verification, resume and progress
/// bars; list and fetch them back.
///
/// Prints one "<sha256>  <name>" line per stored file (names relative to the
/// server's upload dir), so `cd uploads && up-cli ... | sha256sum -c` checks
/// them. Running the same command again stores nothing twice: interrupted
/// files resume, and files the server already holds with the same SHA-256
/// are skipped ("already stored").
#[derive(Debug, Parser)]
#[command(
    version = cli_edge::VERSION,
    about,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  \
    up-cli photo.jpg notes.pdf             upload two files to 127.0.0.1:9998\n  \
    up-cli -r holiday/ --to 2026           a directory under 2026/, keeping relative paths\n  \
    tar c dir | up-cli - --as dir.tar      standard input (not resumable)\n  \
    up-cli --host [::1]:9000 big.iso       another server (IPv6 loopback)\n  \
    up-cli --limit-rate 1M big.iso         throttle to 1 MiB/s; rerun to resume if cut\n  \
    up-cli ls | sha256sum -c               (inside the upload dir) check every stored file\n  \
    up-cli --hash blake3 big.iso | b3sum -c   (inside the upload dir) BLAKE3 instead of SHA-256\n  \
    up-cli get photos/a.jpg -o restore/    download, verified against the stored SHA-256\n  \
    up-cli --legacy photo.jpg              the original tutorial's protocol\n\n\
    Exit codes: 0 every file stored and verified, 1 any failure, 2 usage error,\n\
    130 interrupted (run the same command to resume)."
)]
struct Cli {
    /// Print the man page or a shell completion script (used by `cargo xtask man`).
    #[arg(long, hide = true, value_enum, exclusive = true)]
    generate: Option<cli_edge::Generate>,

    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    upload: UploadArgs,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Server: NAME, ADDRESS, HOST:PORT or [IPV6]:PORT
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    /// Server port [default: 9998, or the port in --host]
    #[arg(short, long, global = true)]
    port: Option<u16>,
    /// Shared token required by the server
    #[arg(
        long,
        global = true,
        env = "UP_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Read the token from the first line of this file, so it stays out of the process list
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: transport::ClientTls,
    /// No progress, notices or summary; errors still print
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct UploadArgs {
    /// Files (and with -r directories) to upload; "-" reads standard input (needs --as;
    /// not resumable: it is read to its end before sending)
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Upload directories recursively, keeping their relative paths
    #[arg(short, long)]
    recursive: bool,
    /// Store a single upload under this name (required for "-")
    #[arg(long = "as", value_name = "NAME")]
    as_name: Option<String>,
    /// Put every upload under this directory on the server
    #[arg(long = "to", value_name = "DIR")]
    to_dir: Option<String>,
    /// Limit the upload rate (e.g. 500K, 4M); holds within a second's burst, also
    /// after a resume. The server may end uploads slower than its --min-rate
    #[arg(long, value_name = "SIZE_PER_SEC", value_parser = parse_rate)]
    limit_rate: Option<u64>,
    /// Digest each upload is verified with: sha256 (printed lines for `sha256sum -c`) or
    /// blake3 (faster where the CPU lacks SHA extensions; printed lines for `b3sum -c`;
    /// needs an up-srv that speaks protocol version 3)
    #[arg(long, value_name = "ALGORITHM", default_value = "sha256", value_parser = parse_hash)]
    hash: proto::digest::Algorithm,
    /// Use the original protocol (size as text, wait for a reply, bytes, close); one file,
    /// no name, no verification, nothing on stdout
    #[arg(long)]
    legacy: bool,
    /// Testing aid: send this many body bytes, then drop the connection and exit 1
    #[arg(long, hide = true, value_name = "BYTES")]
    abort_after: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List stored files as "<sha256>  <name>", the sha256sum format (needs up-srv --allow-get)
    Ls {
        /// Also show size and modification time (UTC)
        #[arg(short = 'l')]
        long: bool,
        /// Only names starting with this
        prefix: Option<String>,
    },
    /// Download stored files, verified against the SHA-256 recorded when they were
    /// stored; an interrupted download resumes when run again (needs up-srv --allow-get)
    Get {
        /// Stored names, as `up-cli ls` shows them
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Directory to write into (names keep their directories)
        #[arg(short, long, value_name = "DIR", default_value = ".")]
        output: PathBuf,
        /// Replace local files that already exist
        #[arg(long)]
        force: bool,
    },
}

fn parse_rate(s: &str) -> Result<u64, String> {
    match proto::size::parse_size(s) {
        Ok(0) => Err(format!("rate '{s}' must be at least 1 byte per second")),
        Ok(v) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(what) = cli.generate {
        return cli_edge::emit(what, <Cli as clap::CommandFactory>::command());
    }
    // A misspelt SOCKCHAT_SHA256 is an error, not silently the default.
    if let Err(e) = proto::digest::Sha256Backend::from_env() {
        return usage(&e.to_string());
    }
    let target = match Target::parse(&cli.server.host, cli.server.port, up_cli::DEFAULT_PORT) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let token = match &cli.server.token_file {
        Some(path) => match transport::secret::read_token_file(path) {
            Ok(token) => Some(token),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        },
        None => cli.server.token.clone().filter(|t| !t.is_empty()),
    };
    let tls = match cli.server.tls.connector() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = Options {
        server: target,
        tls,
        token,
        limit_rate: cli.upload.limit_rate,
        abort_after: cli.upload.abort_after,
        hash: cli.upload.hash,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let quiet = cli.server.quiet;
    match cli.command {
        Some(Command::Ls { long, prefix }) => runtime.block_on(ls(&opts, long, prefix)),
        Some(Command::Get {
            names,
            output,
            force,
        }) => {
            let get = GetOptions {
                out_dir: output,
                force,
            };
            runtime.block_on(get_files(&opts, &names, &get, quiet))
        }
        None => upload(&runtime, &opts, &cli.upload, quiet),
    }
}

fn parse_hash(s: &str) -> Result<proto::digest::Algorithm, String> {
    s.parse()
        .map_err(|e: proto::digest::DigestError| e.to_string())
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Standard input, spooled to a temporary file so its size can be declared
/// and its digest verified like any file's.
struct Spooled {
    job: FileJob,
    _file: tempfile::NamedTempFile,
}

fn spool_stdin(naming: Naming<'_>, quiet: bool) -> Result<Spooled, String> {
    let name = naming
        .name("-")
        .map_err(|e| format!("cannot upload standard input as {e}"))?;
    if !quiet {
        eprintln!("reading standard input...");
    }
    let mut file = tempfile::NamedTempFile::new()
        .map_err(|e| format!("cannot create a temporary file: {}", up_cli::plain(&e)))?;
    let size = std::io::copy(&mut std::io::stdin().lock(), file.as_file_mut())
        .map_err(|e| format!("cannot read standard input: {}", up_cli::plain(&e)))?;
    file.as_file_mut()
        .flush()
        .map_err(|e| format!("cannot write a temporary file: {}", up_cli::plain(&e)))?;
    Ok(Spooled {
        job: FileJob {
            path: file.path().to_path_buf(),
            name,
            size,
        },
        _file: file,
    })
}

fn upload(
    runtime: &tokio::runtime::Runtime,
    opts: &Options,
    args: &UploadArgs,
    quiet: bool,
) -> ExitCode {
    let stdin = args.paths.iter().filter(|p| p.as_os_str() == "-").count();
    if args.as_name.is_some() && (args.paths.len() != 1 || args.recursive) {
        return usage("--as names a single file; use --to DIR for several");
    }
    if stdin > 0 && (args.as_name.is_none() || args.paths.len() != 1) {
        return usage("\"-\" (standard input) needs --as NAME and no other path");
    }
    if args.legacy && args.hash != proto::digest::Algorithm::Sha256 {
        return usage(
            "--legacy cannot use --hash (the original protocol verifies nothing); drop one of them",
        );
    }
    if args.legacy && (args.paths.len() != 1 || stdin > 0) {
        return usage("--legacy uploads exactly one file (the original protocol carries no name)");
    }
    let naming = Naming {
        as_name: args.as_name.as_deref(),
        to_dir: args.to_dir.as_deref(),
    };
    let mut _spooled = None;
    let found = if stdin > 0 {
        match spool_stdin(naming, quiet) {
            Ok(s) => {
                let found = jobs::Collected {
                    jobs: vec![s.job.clone()],
                    ..Default::default()
                };
                _spooled = Some(s);
                found
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        jobs::collect(&args.paths, args.recursive, naming)
    };
    let total: u64 = found.jobs.iter().map(|j| j.size).sum();
    let mut console = Console::new(quiet, found.jobs.len(), total);
    for e in &found.errors {
        console.error(e);
    }
    for s in &found.skipped {
        console.skipped(s);
    }
    if found.jobs.is_empty() {
        if found.errors.is_empty() {
            console.error("nothing to upload");
        }
        console.summary();
        return ExitCode::from(1);
    }
    let finished = runtime.block_on(async {
        let work = send(opts, &found.jobs, args.legacy, &mut console);
        tokio::select! {
            () = work => true,
            _ = tokio::signal::ctrl_c() => false,
        }
    });
    if !finished {
        let line = console.interrupted();
        eprintln!("{line}");
        return ExitCode::from(130);
    }
    exit_code(console.success())
}

async fn send(opts: &Options, jobs: &[FileJob], legacy: bool, console: &mut Console) {
    if legacy {
        let job = &jobs[0];
        match up_cli::legacy::upload(opts, job, console).await {
            Ok(digest) => {
                // No summary: nothing was verified, and "0 files" would mislead.
                console.notice(&format!(
                    "sent {} ({}, sha256 {}) with the legacy protocol; the server does not confirm the stored name or digest",
                    job.name,
                    proto::size::Readable(job.size),
                    proto::upload::hex(&digest)
                ));
                console.summary_quiet();
            }
            Err(e) => {
                console.error(&format!("{}: {e}", job.name));
                console.summary();
            }
        }
        return;
    }
    let report = up_cli::client::upload_all(opts, jobs, console).await;
    if let Some(e) = report.fatal {
        console.fatal(&e.to_string(), jobs.len() - report.outcomes.len());
    }
    console.summary();
}

async fn ls(opts: &Options, long: bool, prefix: Option<String>) -> ExitCode {
    let listed = match download::list(opts, prefix.as_deref().unwrap_or_default()).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    for f in listed {
        let hex = proto::upload::hex(&f.sha256);
        let name: String = f
            .name
            .chars()
            .flat_map(|c| -> Vec<char> {
                if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                }
            })
            .collect();
        let line = if long {
            writeln!(
                out,
                "{hex}  {:>10}  {}  {name}",
                proto::size::Readable(f.size).to_string(),
                download::utc_time(f.mtime)
            )
        } else {
            writeln!(out, "{hex}  {name}")
        };
        if line.is_err() {
            // A closed stdout (`| head`) ends the listing quietly.
            break;
        }
    }
    ExitCode::SUCCESS
}

async fn get_files(opts: &Options, names: &[String], get: &GetOptions, quiet: bool) -> ExitCode {
    let mut console = Console::new(quiet, names.len(), 0).downloading();
    let finished = {
        let work = download::get_all(opts, names, get, &mut console);
        tokio::select! {
            report = work => Some(report),
            _ = tokio::signal::ctrl_c() => None,
        }
    };
    let Some(report) = finished else {
        let line = console.interrupted();
        eprintln!("{line}");
        return ExitCode::from(130);
    };
    if let Some(e) = report.fatal {
        console.fatal(&e.to_string(), names.len() - report.outcomes.len());
    }
    console.summary();
    exit_code(console.success())
}
