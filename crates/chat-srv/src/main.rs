//! `chat-srv` binary: parses arguments, binds, maps SIGINT/SIGTERM to the
//! shutdown future and calls [`chat_srv::run`].
//!
//! Exit codes: 0 after a clean shutdown, 1 on a runtime error (such as an
//! address that cannot be bound), 2 on a usage error (from clap).

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::TypedValueParser as _;
use clap::Parser;

/// Multi-room TCP chat server (newline-delimited UTF-8; works with nc, telnet
/// and the classic tutorial client).
#[derive(Debug, Parser)]
#[command(
    version = cli_edge::VERSION,
    after_help = "Examples:\n  \
    chat-srv                          listen on 127.0.0.1:8888\n  \
    chat-srv -b ::1 -p 9000           listen on IPv6 loopback, port 9000\n  \
    chat-srv -b 0.0.0.0 --rate 0      all interfaces, no rate limit\n  \
    chat-srv --tls-port 8889          TLS on 8889 as well (self-signed, fingerprint logged)\n  \
    chat-srv -b 0.0.0.0 --tls-port 8889 --no-plain   TLS only, all interfaces\n  \
    RUST_LOG=debug chat-srv           verbose logs\n  \
    chat-srv -p 8881 --redis redis://127.0.0.1:6379/0   one node of a cluster (docs/SCALING.md)\n\n\
    Then connect with `chat-cli`, `nc 127.0.0.1 8888` or `telnet 127.0.0.1 8888`;\n\
    over TLS with `chat-cli -p 8889 --tls-pin FINGERPRINT` or `openssl s_client -connect 127.0.0.1:8889`.\n\
    Exit codes: 0 clean shutdown (SIGINT/SIGTERM), 1 runtime error, 2 usage error."
)]
struct Args {
    /// Print the man page or a shell completion script (used by `cargo xtask man`).
    #[arg(long, hide = true, value_enum, exclusive = true)]
    generate: Option<cli_edge::Generate>,

    /// Address to listen on (IPv4 or IPv6).
    #[arg(short, long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on.
    #[arg(short, long, default_value_t = chat_srv::DEFAULT_PORT)]
    port: u16,
    /// Longest accepted line in bytes; longer lines get an error line and are discarded.
    #[arg(long, value_name = "BYTES", default_value_t = proto::chat::MAX_LINE_LEN,
          value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    max_line: usize,
    /// Most simultaneous clients; others get a refusal line.
    #[arg(long, value_name = "N", default_value_t = chat_srv::DEFAULT_MAX_CLIENTS,
          value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    max_clients: usize,
    /// Outgoing lines queued per client before it is disconnected as too slow.
    #[arg(long, value_name = "N", default_value_t = chat_srv::DEFAULT_QUEUE,
          value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    queue: usize,
    /// Lines per second each client may send (also the burst size); 0 turns the limit off.
    #[arg(long, value_name = "MSGS_PER_SEC", default_value_t = chat_srv::DEFAULT_RATE)]
    rate: u32,
    /// Close connections silent for this many seconds; 0 turns it off.
    #[arg(long, value_name = "SECS", default_value_t = chat_srv::DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_timeout: u64,
    /// Chat lines each room keeps for `/history` (while the room exists); 0 turns history off.
    #[arg(long, value_name = "N", default_value_t = chat_srv::DEFAULT_HISTORY)]
    history: usize,
    /// Join the other chat-srv nodes using this Redis (for example
    /// redis://127.0.0.1:6379/0) to form one chat; without it this server is the whole chat.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Name of the chat within that Redis: nodes with the same Redis and name are one chat.
    #[arg(long, value_name = "NAME", default_value = chat_srv::cluster::DEFAULT_CLUSTER_NAME,
          requires = "redis")]
    cluster_name: String,
    /// Worker threads; 0 picks half the CPU cores (at least one), leaving the rest
    /// to the kernel's network work, which is most of a chat server's cost.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    tls: transport::ServerTls,
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
            ExitCode::FAILURE
        }
    }
}

fn serve(args: Args) -> anyhow::Result<()> {
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        n => n,
    };
    // One thread gets the single-threaded scheduler: its run queue is FIFO, so
    // with a thousand busy clients none waits behind the others' turns (the
    // multi-threaded scheduler's overflow queue, visited once every few dozen
    // tasks, let some wait a hundred times longer than the median).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve_on_runtime(args))
}

async fn serve_on_runtime(args: Args) -> anyhow::Result<()> {
    // Each client is one file descriptor.
    transport::listen::raise_fd_limit(args.max_clients as u64, "--max-clients");
    let ports = args.tls.open_ports(
        args.bind,
        args.port,
        chat_srv::default_state_dir,
        &chat_srv::hints(),
    )?;
    let config = chat_srv::Config {
        max_line: args.max_line,
        max_clients: args.max_clients,
        queue: args.queue,
        rate: args.rate,
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        history: args.history,
        cluster: args.redis.map(|url| chat_srv::cluster::ClusterConfig {
            name: args.cluster_name,
            history: args.history,
            ..chat_srv::cluster::ClusterConfig::new(url)
        }),
    };
    let signals =
        transport::signal::shutdown().context("installing the SIGINT/SIGTERM handlers")?;
    chat_srv::serve(ports, config, signals).await?;
    Ok(())
}
