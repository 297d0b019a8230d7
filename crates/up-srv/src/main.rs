//! `up-srv` binary: parses arguments, binds, maps signals to shutdown and
//! calls [`up_srv::run`].
//!
//! Exit codes: 0 after a clean shutdown, 1 on a runtime error (one line naming
//! the address or path, with a hint), 2 on a usage error.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

/// Verified, resumable, atomic file-upload server.
///
/// Speaks the binary upload protocol of up-cli and the original tutorial's
/// legacy form (size as text, reply "1001", raw bytes; stored as new.jpg).
#[derive(Debug, Parser)]
#[command(
    version = cli_edge::VERSION,
    about,
    long_about = None,
    after_help = "Examples:\n  \
    up-srv                                  listen on 127.0.0.1:9998, store into ./uploads\n  \
    up-srv -d /srv/uploads --token s3cret   require a shared token (or set UP_TOKEN)\n  \
    up-srv -b ::1 -p 9000 --max-size 2G     IPv6 loopback, files up to 2 GiB\n  \
    up-srv --tls-port 9999                  TLS on 9999 as well (self-signed, fingerprint logged)\n  \
    up-srv -b 0.0.0.0 --tls-port 9999 --no-plain --token-file /etc/up-srv/token\n  \
    up-srv --allow-get                      also serve `up-cli ls` and `up-cli get`\n  \
    up-srv --store s3://bucket/up           finished files into S3 (endpoint and keys: AWS_* variables)\n  \
    RUST_LOG=debug up-srv                   verbose logs\n\n\
    Send files with `up-cli FILE...`; the original tutorial client works unmodified.\n\
    Exit codes: 0 clean shutdown (SIGINT/SIGTERM), 1 runtime error, 2 usage error."
)]
struct Args {
    /// Print the man page or a shell completion script (used by `cargo xtask man`).
    #[arg(long, hide = true, value_enum, exclusive = true)]
    generate: Option<cli_edge::Generate>,

    /// Address to listen on (a non-loopback address without --token warns at start)
    #[arg(short, long, value_name = "ADDRESS", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on
    #[arg(short, long, default_value_t = up_srv::DEFAULT_PORT)]
    port: u16,
    /// Upload directory (created if missing)
    #[arg(short, long, default_value = "./uploads")]
    dir: PathBuf,
    /// Replace existing files instead of storing "name (1).ext"
    #[arg(long)]
    overwrite: bool,
    /// Largest accepted file, refused upfront (e.g. 512M, 2G, 1T)
    #[arg(long, value_name = "SIZE", default_value = "64G", value_parser = parse_size)]
    max_size: u64,
    /// Concurrent uploads; more are refused with a "too many uploads" code
    #[arg(long, value_name = "COUNT", default_value_t = up_srv::DEFAULT_MAX_UPLOADS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_uploads: u32,
    /// Connections held at once (plain and TLS together); more get a "server full" refusal
    #[arg(long, value_name = "N", default_value_t = up_srv::server::MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Close connections that send nothing for this long (e.g. 30s, 5m); partials are kept
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Close connections that take longer than this to send one control message
    /// (hello, offer, start, finish, legacy size), however steadily they drip it
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// End uploads whose body averages less than this per second over a 30 s window
    /// (e.g. 1K; partials are kept for resume); 0 = no minimum
    #[arg(long, value_name = "SIZE", default_value = "1K", value_parser = parse_size)]
    min_rate: u64,
    /// Shared token binary clients must present; legacy-form clients, which cannot send one, are then refused
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
    /// Serve `up-cli ls` and `up-cli get` (listing and downloading stored files);
    /// off by default, and with --token the token is required for them too
    #[arg(long)]
    allow_get: bool,
    /// Put finished, verified files into S3-compatible object storage at
    /// s3://BUCKET/PREFIX instead of --dir (which then holds only partials);
    /// endpoint, region and keys come from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Skip fsync of files and directories. UNSAFE: a crash or power loss may
    /// lose or tear files already reported stored; for benchmarks only
    #[arg(long)]
    no_fsync: bool,
    /// Remove partial uploads untouched for longer than this at start (e.g. 7d, 12h)
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = up_srv::duration::parse_duration)]
    partial_max_age: Duration,
    #[command(flatten)]
    tls: transport::ServerTls,
}

fn parse_size(s: &str) -> Result<u64, String> {
    proto::size::parse_size(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = up_srv::duration::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("duration '{s}' must be more than 0"));
    }
    Ok(d)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(what) = args.generate {
        return cli_edge::emit(what, <Args as clap::CommandFactory>::command());
    }
    transport::init_tracing();
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(args: Args) -> anyhow::Result<()> {
    // A misspelt SOCKCHAT_SHA256 is an error, not silently the default.
    proto::digest::Sha256Backend::from_env()?;
    // A connection is one descriptor; an upload a few more (its file, the
    // flusher's), a batch of puts one per waiting file.
    let per_upload = up_srv::session::put::MAX_BATCH_FILES as u64 + 4;
    let needed = u64::from(args.max_connections) + u64::from(args.max_uploads) * per_upload;
    transport::listen::raise_fd_limit(needed, "--max-connections with --max-uploads");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let token = match &args.token_file {
        Some(path) => Some(transport::secret::read_token_file(path)?),
        None => args.token.filter(|t| !t.is_empty()),
    };
    let config = up_srv::Config {
        dir: args.dir,
        overwrite: args.overwrite,
        max_size: args.max_size,
        max_uploads: args.max_uploads as usize,
        max_connections: args.max_connections as usize,
        idle_timeout: args.idle_timeout,
        header_timeout: args.header_timeout,
        min_rate: args.min_rate,
        min_rate_window: up_srv::MIN_RATE_WINDOW,
        token,
        fsync: !args.no_fsync,
        partial_max_age: args.partial_max_age,
        allow_get: args.allow_get,
        store: None,
    };
    let (ip, port, tls) = (args.bind, args.port, args.tls);
    let store_url = args.store;
    let result = runtime.block_on(async move {
        let mut config = config;
        if let Some(url) = store_url {
            let store = up_srv::store::Store::connect(&url, Default::default()).await?;
            tracing::info!(
                "storing finished files in {url} ({:?})",
                store.verification()
            );
            config.store = Some(store);
        }
        let ports = tls.open_ports(
            ip,
            port,
            || up_srv::default_state_dir(&config.dir),
            &up_srv::server::hints(),
        )?;
        let signals =
            transport::signal::shutdown().context("installing the SIGINT/SIGTERM handlers")?;
        up_srv::serve(ports, config, signals).await?;
        anyhow::Ok(())
    });
    // Blocking writer threads stop on their own once sessions end; do not
    // let a stuck disk hold the process past the shutdown promise.
    runtime.shutdown_timeout(Duration::from_millis(300));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_match_the_library_defaults() {
        let args = Args::parse_from(["up-srv"]);
        assert_eq!(args.max_size, up_srv::DEFAULT_MAX_SIZE);
        assert_eq!(args.idle_timeout, up_srv::DEFAULT_IDLE_TIMEOUT);
        assert_eq!(args.header_timeout, up_srv::DEFAULT_HEADER_TIMEOUT);
        assert_eq!(args.min_rate, up_srv::DEFAULT_MIN_RATE);
        assert_eq!(args.partial_max_age, up_srv::DEFAULT_PARTIAL_MAX_AGE);
        let args = Args::parse_from(["up-srv", "--idle-timeout", "30s", "--partial-max-age", "2"]);
        assert_eq!(args.idle_timeout, Duration::from_secs(30));
        assert_eq!(args.partial_max_age, Duration::from_secs(2));
        assert!(Args::try_parse_from(["up-srv", "--idle-timeout", "0s"]).is_err());
    }
}
