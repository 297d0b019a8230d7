//! `chat-cli` binary: parses arguments and calls [`chat_cli::run`].
//!
//! Exit codes: 0 success (also after the server's shutdown goodbye, and when
//! stdout is a closed pipe), 1 failure (cannot connect, refused, not a chat
//! server, connection lost, message refused), 2 usage error (from clap).

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Terminal client for chat-srv: a line editor on a terminal, a script
/// runner when stdin is a pipe or file.
#[derive(Debug, Parser)]
#[command(
    version = cli_edge::VERSION,
    after_help = "Interactive keys: arrows, Home/End, Ctrl/Alt-Left/Right by word, Up/Down \
    for history (kept in $XDG_DATA_HOME/chat-cli/history, else ~/.local/share/chat-cli/history), \
    Tab completes /commands and nicknames; lines that arrive while you type appear above \
    your input. q, /quit, Ctrl-D or Ctrl-C leaves.\n\n\
    The prompt is English, or the tutorial's 请输入您要发送的内容: when LANG or LC_ALL starts \
    with zh. Nicknames are coloured on a terminal unless NO_COLOR is set. Control characters \
    from the server are shown escaped (^[, <U+202E>).\n\n\
    Examples:\n  \
    chat-cli                              chat interactively (type q to leave)\n  \
    chat-cli --nick 小明 --room dev         join as 小明 in room dev\n  \
    chat-cli -m hello                     send one message, print the reply\n  \
    printf 'hi\\n/who\\nq\\n' | chat-cli     run a script: each line waits for its answer\n  \
    chat-cli --reconnect --timestamps     stay on through server restarts, show times\n  \
    chat-cli --host ::1 -p 9000           another server\n  \
    chat-cli -p 8889 --tls-pin AB:CD:...  TLS, accepting only the certificate chat-srv logged\n  \
    chat-cli --host chat.example --tls    TLS, verified by the system's root certificates\n\n\
    Exit codes: 0 success (also after the server's shutdown goodbye), 1 failure (cannot \
    connect, not a chat server, connection lost, message refused), 2 usage error."
)]
struct Args {
    /// Print the man page or a shell completion script (used by `cargo xtask man`).
    #[arg(long, hide = true, value_enum, exclusive = true)]
    generate: Option<cli_edge::Generate>,

    /// Server host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Server port.
    #[arg(short, long, default_value_t = chat_cli::DEFAULT_PORT)]
    port: u16,
    /// Send this one message (or command), print its answer and exit.
    #[arg(short, long, value_name = "TEXT")]
    message: Option<String>,
    /// Take this nickname right after connecting (sent as /nick).
    #[arg(long, value_name = "NAME")]
    nick: Option<String>,
    /// Join this room right after connecting (sent as /join).
    #[arg(long, value_name = "ROOM")]
    room: Option<String>,
    /// Send an empty line after this many seconds without sending, so an idle
    /// timeout does not close a reader; 0 turns it off.
    #[arg(long, value_name = "SECS", default_value_t = chat_cli::DEFAULT_KEEPALIVE.as_secs())]
    keepalive: u64,
    /// After a lost connection, reconnect (waiting 1 s, doubling to 30 s) and
    /// restore the nickname and room.
    #[arg(long)]
    reconnect: bool,
    /// Prefix shown lines with the local time.
    #[arg(long)]
    timestamps: bool,
    #[command(flatten)]
    tls: transport::ClientTls,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(what) = args.generate {
        return cli_edge::emit(what, <Args as clap::CommandFactory>::command());
    }
    let colour = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").map_or(true, |v| v.is_empty());
    let tls = match args.tls.connector() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = chat_cli::Options {
        tls,
        host: args.host,
        port: args.port,
        message: args.message,
        nick: args.nick,
        room: args.room,
        keepalive: (args.keepalive > 0).then(|| Duration::from_secs(args.keepalive)),
        reconnect: args.reconnect,
        style: chat_cli::Style {
            timestamps: args.timestamps,
            colour,
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(chat_cli::run(opts));
    // The stdin or editor thread may still be blocked reading the terminal;
    // it must not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
