//! `cargo xtask demo`: the newcomer's one command.
//!
//! Builds the release binaries, starts `chat-srv` and `up-srv` (on 8888/9998, or on free
//! ports when those are busy, saying so), shows a short chat exchange line by line,
//! uploads a generated photo through `up-cli` with its progress bar on this terminal
//! (rate-limited so the bar is visible for a few seconds), checks the stored file's
//! SHA-256 against xtask's own, and stops both servers. Server logs go to
//! `target/demo/*.log` so the terminal shows only the tour.

use std::fs;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::clients::{self, ChatClient, REPLY_SUFFIX};
use crate::images::{self, ImageSpec};
use crate::service::{self, Bins};
use crate::verify;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TIMEOUT: Duration = Duration::from_secs(5);
/// The demo photo: about 10 MiB of baseline JPEG.
const PHOTO: ImageSpec = ImageSpec::Jpeg {
    width: 3072,
    height: 2048,
    detail: 24,
    seed: 2024,
};
/// The upload is throttled so the progress bar is on screen for about this long.
const UPLOAD_SECONDS: u64 = 3;

/// Runs the guided tour; fails if any step misbehaves.
pub fn run() -> Result<()> {
    let bins = Bins::new(&service::build_release()?)?;
    let work = service::target_dir().join("demo");
    let uploads = work.join("uploads");
    if uploads.exists() {
        fs::remove_dir_all(&uploads).with_context(|| format!("clearing {}", uploads.display()))?;
    }
    fs::create_dir_all(&uploads)?;

    let chat_addr = pick_port("chat-srv", clients::CHAT_PORT)?;
    let up_addr = pick_port("up-srv", clients::UP_PORT)?;
    let chat = bins.start_chat(chat_addr, &work.join("chat-srv.log"))?;
    let up = bins.start_up(up_addr, &uploads, &work.join("up-srv.log"))?;
    println!("chat-srv is listening on {chat_addr}, up-srv on {up_addr}");
    println!("(server logs: {})", work.join("*.log").display());

    heading("1. chat room");
    chat_tour(&bins, chat_addr)?;

    heading("2. verified upload");
    upload_tour(&bins, up_addr, &work)?;

    heading("3. shutdown");
    for service in [chat, up] {
        let name = service.name().to_owned();
        let status = service.terminate(TIMEOUT)?;
        ensure!(
            status.success(),
            "{name} exited with {status} after SIGTERM"
        );
        println!("{name} stopped cleanly after SIGTERM");
    }
    println!();
    println!("Next: `cargo xtask serve` keeps both servers running for your own clients;");
    println!("`cargo xtask e2e` runs every end-to-end check; see README.md for each tool.");
    Ok(())
}

fn heading(title: &str) {
    println!(
        "\n── {title} {}",
        "─".repeat(60usize.saturating_sub(title.chars().count()))
    );
}

/// The one file up-cli stored in the fresh `uploads` directory (partials aside).
fn stored_name(uploads: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(uploads)
        .with_context(|| format!("listing {}", uploads.display()))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [name] => Ok(name.clone()),
        _ => bail!(
            "expected one stored file in {}, found {names:?}",
            uploads.display()
        ),
    }
}

/// `preferred` if free, else a free port, announced.
fn pick_port(name: &str, preferred: u16) -> Result<SocketAddr> {
    let (addr, moved) = service::port_or_free(LOCALHOST, preferred)?;
    if moved {
        println!(
            "port {preferred} is busy, so {name} uses {} for this demo",
            addr.port()
        );
    }
    Ok(addr)
}

fn chat_tour(bins: &Bins, addr: SocketAddr) -> Result<()> {
    println!(
        "$ chat-cli --host {} -p {} -m 'hello'",
        addr.ip(),
        addr.port()
    );
    let mut one_shot = bins.chat_cli(addr);
    one_shot.args(["-m", "hello"]);
    let out = service::output_with_timeout(one_shot, b"", Duration::from_secs(15))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    ensure!(
        out.status.success(),
        "chat-cli -m exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );

    println!("\nTwo clients in the lobby (→ sent, ← received):");
    let mut alice = Peer::connect("alice", addr)?;
    let mut bob = Peer::connect("bob", addr)?;
    exchange(&mut alice, &mut bob, "hi bob, can you read me?")?;
    exchange(&mut bob, &mut alice, "loud and clear 你好")?;
    alice.say("q")?;
    alice.client.expect_closed(TIMEOUT)?;
    println!("  alice: the server closed the connection after `q`");
    bob.say("q")?;
    bob.client.expect_closed(TIMEOUT)?;
    println!("  bob: the server closed the connection after `q`");
    Ok(())
}

/// `from` says `text`; both sides print what arrives until the reply and the relay.
fn exchange(from: &mut Peer, to: &mut Peer, text: &str) -> Result<()> {
    from.say(text)?;
    let reply = format!("{text}{REPLY_SUFFIX}");
    from.expect("the reply", |l| l == reply)?;
    let relayed = format!(": {text}");
    to.expect("the relayed message", |l| l.ends_with(&relayed))
}

/// A named chat client that prints what it sends and receives.
struct Peer {
    name: &'static str,
    client: ChatClient,
}

impl Peer {
    fn connect(name: &'static str, addr: SocketAddr) -> Result<Peer> {
        let mut client = ChatClient::connect(addr, TIMEOUT)?;
        let welcome = client.read_line(TIMEOUT)?;
        println!("  {name:<5} ← {welcome}");
        Ok(Peer { name, client })
    }

    fn say(&mut self, text: &str) -> Result<()> {
        println!("  {:<5} → {text}", self.name);
        self.client.send_line(text)
    }

    /// Prints every line until one matches `wanted`.
    fn expect(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .client
                .read_line(left)
                .with_context(|| format!("{} waiting for {what}", self.name))?;
            println!("  {:<5} ← {line}", self.name);
            if wanted(&line) {
                return Ok(());
            }
        }
    }
}

fn upload_tour(bins: &Bins, addr: SocketAddr, work: &Path) -> Result<()> {
    let cached = images::cached(&service::target_dir().join("e2e").join("images"), PHOTO)?;
    let files = work.join("files");
    fs::create_dir_all(&files)?;
    let photo = files.join("sunset.jpg");
    fs::copy(&cached, &photo)?;
    let len = fs::metadata(&photo)?.len();
    let rate = (len / UPLOAD_SECONDS).max(1);
    println!(
        "A generated {}x{} JPEG, {:.1} MiB, sent at {:.1} MiB/s so the bar stays visible:",
        3072,
        2048,
        len as f64 / (1 << 20) as f64,
        rate as f64 / (1 << 20) as f64
    );
    println!(
        "$ up-cli --host {} -p {} --limit-rate {rate} {}",
        addr.ip(),
        addr.port(),
        photo.display()
    );
    // up-cli draws its bar when stderr is a terminal; stderr is always inherited. On a
    // terminal stdout is inherited too, so the user sees the `<sha256>  <name>` line
    // as up-cli prints it; otherwise stdout is captured so the line is compared here.
    let on_terminal = std::io::stdout().is_terminal();
    let mut cmd: Command = bins.up_cli(addr);
    cmd.arg("--limit-rate").arg(rate.to_string()).arg(&photo);
    cmd.stdin(Stdio::null());
    if !on_terminal {
        cmd.stdout(Stdio::piped());
    }
    let child = cmd.spawn().context("starting up-cli")?;
    let out = service::wait_with_timeout(child, Duration::from_secs(60 + UPLOAD_SECONDS))
        .context("up-cli")?;
    let status = out.status;
    let captured = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{captured}");
    ensure!(status.success(), "up-cli exited with {status}");
    let reported = verify::parse_stored_lines(&captured)?.into_iter().next();

    // A fresh upload directory holds exactly the one stored file.
    let uploads = work.join("uploads");
    let name = match &reported {
        Some(line) => line.name.clone(),
        None => stored_name(&uploads)?,
    };
    let stored = uploads.join(&name);
    let ours = verify::sha256_file(&photo)?;
    let theirs = verify::sha256_file(&stored)
        .with_context(|| format!("reading the stored copy {}", stored.display()))?;
    println!();
    match &reported {
        Some(line) => println!("up-cli (verified by the server): {}", line.digest),
        None => println!("up-cli printed the server-verified SHA-256 above"),
    }
    println!("xtask, the source file:          {ours}");
    println!("xtask, the stored copy:          {theirs}");
    ensure!(ours == theirs, "the stored copy differs from the source");
    if let Some(line) = &reported {
        ensure!(
            line.digest == ours,
            "up-cli's digest differs from the source's"
        );
    }
    println!("✓ they agree: {name} is byte-for-byte the source");
    Ok(())
}
