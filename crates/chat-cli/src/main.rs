//! `chat-cli` binary: parses arguments and calls [`chat_cli::run`].
//!
//! Exit codes: 0 success (also when stdout is a closed pipe), 1 failure
//! (cannot connect, refused, server went away, message refused), 2 usage
//! error (from clap).

use std::process::ExitCode;

use clap::Parser;

/// Terminal client for chat-srv: interactive on a terminal, a script runner
/// when stdin is a pipe or file.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  \
    chat-cli                              chat interactively (type q to leave)\n  \
    chat-cli -m hello                     send one message, print the reply\n  \
    printf 'hi\\n/who\\nq\\n' | chat-cli     run a script: each line waits for its answer\n  \
    chat-cli --host ::1 -p 9000           another server\n  \
    chat-cli -p 8889 --tls-pin AB:CD:...  TLS, accepting only the certificate chat-srv logged\n  \
    chat-cli --host chat.example --tls    TLS, verified by the system's root certificates\n\n\
    Exit codes: 0 success, 1 failure (cannot connect, server went away, message refused), 2 usage error."
)]
struct Args {
    /// Server host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Server port.
    #[arg(short, long, default_value_t = chat_cli::DEFAULT_PORT)]
    port: u16,
    /// Send this one message (or command), print its answer and exit.
    #[arg(short, long, value_name = "TEXT")]
    message: Option<String>,
    #[command(flatten)]
    tls: transport::ClientTls,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let tls = match args.tls.connector() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = chat_cli::Options {
        host: args.host,
        port: args.port,
        message: args.message,
        tls,
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
