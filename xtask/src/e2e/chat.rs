//! The chat checks that need a real terminal: `chat-cli`'s line editor run
//! under tmux (found or installed through `install::tool`), typed at with
//! `send-keys` and read back with `capture-pane`.
//!
//! - editing: `abc`, Left, Left, `X`, Enter reaches another member as `aXbc`;
//! - two lines typed in one burst both arrive (keys read ahead are kept);
//! - a line that arrives while the user types is printed above the input
//!   line, and the half-typed text stays on screen and editable.
//!
//! tmux runs on its own socket (`-L`), so a user's tmux is never touched,
//! and a guard kills that server whatever happens.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::clients::ChatClient;

/// How long the screen may take to show what a check waits for.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a chat line may take to reach the observing client.
const LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// The room the check uses, so other checks' traffic stays out of it.
const ROOM: &str = "e2e-editor";

/// A private tmux server, killed on drop.
struct Tmux {
    bin: std::path::PathBuf,
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(&self.bin)
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .with_context(|| format!("running tmux {}", args.join(" ")))?;
        ensure!(
            out.status.success(),
            "tmux {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out)
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "chat"];
        args.extend_from_slice(keys);
        self.run(&args).map(drop)
    }

    /// The visible screen, one string per row, trailing blanks removed.
    fn screen(&self) -> Result<Vec<String>> {
        let out = self.run(&["capture-pane", "-p", "-t", "chat"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut rows: Vec<String> = text.lines().map(|l| l.trim_end().to_owned()).collect();
        while rows.last().is_some_and(|r| r.is_empty()) {
            rows.pop();
        }
        Ok(rows)
    }

    /// Polls the screen until `ok` holds (bounded by [`SCREEN_TIMEOUT`]).
    fn wait_screen(&self, what: &str, ok: impl Fn(&[String]) -> bool) -> Result<Vec<String>> {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let rows = self.screen()?;
            if ok(&rows) {
                return Ok(rows);
            }
            if Instant::now() > deadline {
                bail!(
                    "the terminal never showed {what}; screen:\n{}",
                    rows.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// Runs `chat-cli` interactively under tmux against `addr` and checks the
/// editor; `work` holds its history file.
pub(super) fn line_editor(chat_cli: &Path, addr: SocketAddr, work: &Path) -> Result<String> {
    let bin = crate::install::tool("tmux", "tmux", "the chat-cli line-editor check")
        .map_err(anyhow::Error::msg)?;
    let mut observer = ChatClient::connect(addr, LINE_TIMEOUT)?;
    observer.read_line(LINE_TIMEOUT)?;
    observer.send_line("/nick observer")?;
    observer.send_line(&format!("/join {ROOM}"))?;
    observer.read_line_where("the join answer", LINE_TIMEOUT, |l| {
        l.starts_with("+ you are now in")
    })?;

    let tmux = Tmux {
        bin,
        socket: format!("sockchat-e2e-{}", std::process::id()),
    };
    let xdg = work.join("xdg");
    let (port, host) = (addr.port().to_string(), addr.ip().to_string());
    let xdg_env = format!("XDG_DATA_HOME={}", xdg.display());
    let program = chat_cli.to_string_lossy();
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "chat",
        "-x",
        "100",
        "-y",
        "30",
        "-e",
        &xdg_env,
        "-e",
        "LANG=C.UTF-8",
        "-e",
        "NO_COLOR=1",
        "--",
        &program,
        "--host",
        &host,
        "-p",
        &port,
        "--nick",
        "typist",
        "--room",
        ROOM,
    ])?;
    // The /who answer is the last line of the set-up; the prompt follows it.
    tmux.wait_screen("the prompt after the set-up", |rows| {
        rows.iter().any(|r| r.starts_with("+ 2 in e2e-editor"))
            && rows.last().is_some_and(|r| r == ">")
    })?;

    tmux.keys(&["abc", "Left", "Left", "X", "Enter"])?;
    observer.read_line_where("typist: aXbc", LINE_TIMEOUT, |l| l == "typist: aXbc")?;
    // Two lines in one burst (a fast typist, a slow moment): the second is
    // typed before the editor is back for it and must not be lost.
    tmux.keys(&["fast one", "Enter", "fast two", "Enter"])?;
    observer.read_line_where("typist: fast one", LINE_TIMEOUT, |l| {
        l == "typist: fast one"
    })?;
    observer.read_line_where("typist: fast two", LINE_TIMEOUT, |l| {
        l == "typist: fast two"
    })?;

    tmux.keys(&["half typed"])?;
    tmux.wait_screen("the half-typed line", |rows| {
        rows.last().is_some_and(|r| r == "> half typed")
    })?;
    observer.send_line("arrives mid-typing")?;
    let rows = tmux.wait_screen("the arriving line above the input", |rows| {
        let n = rows.len();
        n >= 2 && rows[n - 2] == "observer: arrives mid-typing" && rows[n - 1] == "> half typed"
    })?;
    // Still editable: the end of the line goes out with the typed start.
    tmux.keys(&[" still", "Enter"])?;
    observer.read_line_where("typist: half typed still", LINE_TIMEOUT, |l| {
        l == "typist: half typed still"
    })?;
    tmux.keys(&["q", "Enter"])?;
    Ok(format!(
        "aXbc received; mid-typing screen ends {:?}",
        &rows[rows.len().saturating_sub(2)..]
    ))
}
