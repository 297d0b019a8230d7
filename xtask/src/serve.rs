//! `cargo xtask serve`: `chat-srv` and `up-srv` in the foreground until Ctrl-C.
//!
//! Both servers log to this terminal, each line behind `[chat-srv] ` or `[up-srv] `. SIGINT and SIGTERM are blocked in xtask and taken
//! with `sigwait` (safe, no handler), then forwarded to both children as SIGTERM so each
//! shuts down gracefully; a server that stops on its own ends the task with an error and
//! stops the other. The signals are blocked only after both children are spawned,
//! because a child inherits the blocked mask and would never see its own SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};

use crate::service::{self, Bins, Service};

/// Options of `cargo xtask serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address both servers bind to.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// Port for chat-srv.
    #[arg(long, default_value_t = crate::clients::CHAT_PORT)]
    pub chat_port: u16,
    /// Port for up-srv.
    #[arg(long, default_value_t = crate::clients::UP_PORT)]
    pub up_port: u16,
    /// Upload directory for up-srv [default: uploads/ at the workspace root].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// How long each server gets to exit after the forwarded SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs both servers until Ctrl-C (or SIGTERM), then stops them.
pub fn run(args: ServeArgs) -> Result<()> {
    let bins = Bins::new(&service::build_release()?)?;
    let chat_addr = SocketAddr::new(args.bind, args.chat_port);
    let up_addr = SocketAddr::new(args.bind, args.up_port);
    service::ensure_port_free(chat_addr, "--chat-port")?;
    service::ensure_port_free(up_addr, "--up-port")?;
    let dir = args
        .dir
        .unwrap_or_else(|| service::project_root().join("uploads"));

    let mut chat = Command::new(&bins.chat_srv);
    chat.args([
        "-b",
        &args.bind.to_string(),
        "-p",
        &args.chat_port.to_string(),
    ]);
    let chat = Service::start_prefixed("chat-srv", chat, chat_addr)?;
    let mut up = Command::new(&bins.up_srv);
    up.args([
        "-b",
        &args.bind.to_string(),
        "-p",
        &args.up_port.to_string(),
    ]);
    up.arg("-d").arg(&dir);
    let up = Service::start_prefixed("up-srv", up, up_addr)?;

    println!("chat-srv listening on {chat_addr} (pid {})", chat.pid());
    println!(
        "up-srv   listening on {up_addr} (pid {}), storing into {}",
        up.pid(),
        dir.display()
    );
    println!(
        "try:  {} --host {} -p {}",
        bins.chat_cli.display(),
        chat_addr.ip(),
        chat_addr.port()
    );
    println!(
        "      {} --host {} -p {} FILE...",
        bins.up_cli.display(),
        up_addr.ip(),
        up_addr.port()
    );
    println!("Ctrl-C stops both servers");

    // Blocked only now: a child inherits the signal mask of the thread that spawns it,
    // and the servers must keep receiving SIGINT/SIGTERM themselves.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    // A child exit raises SIGCHLD; while blocked it stays pending, so `wait` sees it.
    signals.add(Signal::SIGCHLD);
    signals
        .thread_block()
        .context("blocking SIGINT/SIGTERM/SIGCHLD")?;

    let mut services = [chat, up];
    let exited = loop {
        // Checked before every wait: a child that exited before the block raised a
        // SIGCHLD nobody saw.
        if let Some(exited) = exited_on_its_own(&mut services)? {
            break Some(exited);
        }
        match signals.wait().context("waiting for a signal")? {
            Signal::SIGCHLD => continue,
            signal => {
                println!("\n{signal}: stopping both servers");
                break None;
            }
        }
    };

    // `terminate` returns at once with the status of a child that already exited.
    let mut failures: Vec<String> = exited.into_iter().collect();
    for service in services {
        let name = service.name().to_owned();
        match service.terminate(STOP_TIMEOUT) {
            Ok(status) if status.success() => println!("{name} stopped"),
            Ok(status) => {
                let failure = format!("{name} exited with {status}");
                if !failures
                    .iter()
                    .any(|f| f.starts_with(&format!("{name} exited")))
                {
                    failures.push(failure);
                }
            }
            Err(err) => failures.push(format!("{err:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// Describes the first service that has exited, if any.
fn exited_on_its_own(services: &mut [Service]) -> Result<Option<String>> {
    for service in services {
        if let Some(status) = service.try_status()? {
            return Ok(Some(format!(
                "{} exited on its own with {status}",
                service.name()
            )));
        }
    }
    Ok(None)
}
