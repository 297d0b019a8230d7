//! The three ways chat-cli talks to a server once greeted (one message,
//! script, interactive), the set-up after the welcome (`--nick`, `--room`,
//! history) and the keep-alive, and what ended a session.
//!
//! Every non-empty line but `q` gets exactly one answer (`docs/PROTOCOL.md`),
//! which is how the script mode stays in step: [`expect_for`] says what
//! answers a line, [`is_answer`] recognises it.

use std::future::pending;
use std::io::Write as _;
use std::time::Duration;

use proto::chat::{
    ClientLine, ERROR_PREFIX, NOTICE_PREFIX, OK_PREFIX, REPLY_SUFFIX, SHUTDOWN_NOTICE, WELCOME,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::conn::Conn;
use crate::display::{escape_controls, prompt_for_locale, Style};
use crate::editor::{self, Printer};
use crate::state::State;
use crate::{io, ClientError, Input, Options};

/// How a session ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The user left (`q`, Ctrl-D, end of the script).
    Quit,
    /// The server said goodbye (graceful shutdown) and closed.
    Goodbye,
    /// The connection ended without a goodbye.
    Lost,
    /// A reconnection attempt failed before a session began.
    Retry,
}

/// What a sent line expects back.
enum Expect {
    /// Nothing (an empty line).
    Nothing,
    /// The server closes the connection (`q`, `/quit`).
    Close,
    /// One answer line: this reply, or a `! ` error.
    Reply(String),
    /// One answer line starting with `+ ` or `! ` (history lines may come first).
    CommandAnswer,
}

fn expect_for(line: &str) -> Expect {
    match ClientLine::parse(line) {
        Ok(ClientLine::Empty) => Expect::Nothing,
        Ok(ClientLine::Quit) => Expect::Close,
        Ok(ClientLine::Message(text)) => Expect::Reply(format!("{text}{REPLY_SUFFIX}")),
        Ok(_) | Err(_) => Expect::CommandAnswer,
    }
}

fn is_answer(expect: &Expect, line: &str) -> bool {
    match expect {
        Expect::Reply(reply) => line == reply || line.starts_with(ERROR_PREFIX),
        Expect::CommandAnswer => line.starts_with(OK_PREFIX) || line.starts_with(ERROR_PREFIX),
        Expect::Nothing | Expect::Close => false,
    }
}

/// True for the line a server sends before a graceful shutdown.
fn is_goodbye(line: &str) -> bool {
    line.strip_prefix(NOTICE_PREFIX) == Some(SHUTDOWN_NOTICE)
}

/// Where lines from the user come from and where server lines go.
pub(crate) struct Screen {
    pub input: mpsc::Receiver<Input>,
    pub out: Output,
    /// A person types (stdin is a terminal): lines go out as typed.
    pub interactive: bool,
}

/// Where server lines and the client's own notes are shown.
pub(crate) struct Output {
    style: Style,
    /// The editor's printer in interactive mode; stdout otherwise.
    printer: Option<Printer>,
    /// The terminal's settings before the editor changed them, restored on
    /// exit even when the editor thread is still reading.
    saved_tty: Option<nix::sys::termios::Termios>,
}

impl Screen {
    /// Starts reading the user's lines: the line editor on a terminal, a
    /// plain stdin reader otherwise.
    pub fn start(opts: &Options, state: &State) -> Result<Screen, ClientError> {
        let (stdin_tty, stdout_tty) = crate::terminals();
        if !(stdin_tty && stdout_tty) {
            // No editor without a terminal to draw on (`chat-cli | tee log`
            // still reads what a person types, line by line).
            let out = Output {
                style: opts.style,
                printer: None,
                saved_tty: None,
            };
            return Ok(Screen {
                input: spawn_stdin_reader(),
                out,
                interactive: stdin_tty,
            });
        }
        let saved_tty = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
        let prompt = prompt_for_locale(|k| std::env::var(k).ok());
        let (input, printer) = editor::spawn(prompt, state.nicks.clone())
            .map_err(|e| io("starting the line editor")(std::io::Error::other(e)))?;
        let out = Output {
            style: opts.style,
            printer: Some(printer),
            saved_tty,
        };
        Ok(Screen {
            input,
            out,
            interactive: true,
        })
    }

    /// Shows a note of the client's own (reconnecting, reconnected).
    pub fn note(&mut self, text: &str) -> Result<(), ClientError> {
        self.out.note(text)
    }
}

impl Output {
    /// Shows one server line, escaped and decorated.
    pub fn show(&mut self, line: &str) -> Result<(), ClientError> {
        let shown = self.style.render(line);
        match &mut self.printer {
            Some(printer) => printer
                .print(format!("{shown}\n"))
                .map_err(|e| io("writing to the terminal")(std::io::Error::other(e))),
            None => print(&shown),
        }
    }

    fn note(&mut self, text: &str) -> Result<(), ClientError> {
        match &mut self.printer {
            Some(printer) => printer
                .print(format!("-- {}\n", escape_controls(text)))
                .map_err(|e| io("writing to the terminal")(std::io::Error::other(e))),
            None => {
                eprintln!("chat-cli: {}", escape_controls(text));
                Ok(())
            }
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved_tty {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSADRAIN,
                saved,
            );
        }
    }
}

/// Prints one (already rendered) line to stdout; errors include a closed
/// pipe, which the binary treats as success.
fn print(line: &str) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(io("writing to stdout"))
}

/// Input from stdin, read on a plain thread: a blocking read of the terminal
/// must not keep the async runtime from shutting down when the server leaves.
fn spawn_stdin_reader() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = Vec::new();
            let input = match stdin.read_until(b'\n', &mut buf) {
                Ok(0) => Input::Eof,
                Ok(_) => {
                    let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    Input::Line(String::from_utf8_lossy(line).into_owned())
                }
                Err(e) => Input::Failed(e),
            };
            let last = !matches!(input, Input::Line(_));
            if tx.blocking_send(input).is_err() || last {
                break;
            }
        }
    });
    rx
}

/// Resolves when the keep-alive is due: `every` after the last line sent.
async fn keepalive_due(last_sent: Instant, every: Option<Duration>) {
    match every {
        Some(every) => sleep_until(last_sent + every).await,
        None => pending().await,
    }
}

/// Sends `line` and shows everything up to its answer, which is returned.
async fn ask<S: AsyncRead + AsyncWrite>(
    conn: &mut Conn<S>,
    line: &str,
    out: Option<&mut Output>,
    state: &mut State,
) -> Result<String, ClientError> {
    let expect = expect_for(line);
    conn.send(line).await?;
    let mut out = out;
    loop {
        let Some(got) = conn.next_line().await? else {
            return Err(ClientError::Closed);
        };
        state.observe(&got);
        if let Some(out) = out.as_deref_mut() {
            out.show(&got)?;
        }
        if is_answer(&expect, &got) {
            return Ok(got);
        }
    }
}

/// `--nick` and `--room` (or, after a reconnect, the nickname and room the
/// session had), sent right after the welcome.
fn setup_lines(opts: &Options, state: &State) -> Vec<String> {
    let nick = state.nick.as_ref().or(opts.nick.as_ref());
    let room = state.room.as_ref().or(opts.room.as_ref());
    let mut lines = Vec::new();
    lines.extend(nick.map(|n| format!("/nick {n}")));
    lines.extend(room.map(|r| format!("/join {r}")));
    lines
}

/// `-m`: sets up, sends one message and prints only its answer.
pub(crate) async fn one_message<S: AsyncRead + AsyncWrite>(
    conn: &mut Conn<S>,
    opts: &Options,
    message: &str,
) -> Result<(), ClientError> {
    let mut state = State::default();
    for line in setup_lines(opts, &state) {
        let answer = ask(conn, &line, None, &mut state).await?;
        if let Some(error) = answer.strip_prefix(ERROR_PREFIX) {
            return Err(ClientError::Answer(escape_controls(error).into_owned()));
        }
    }
    let message = message.trim_end_matches(['\r', '\n']);
    match expect_for(message) {
        Expect::Nothing => return conn.send(message).await,
        Expect::Close => {
            conn.send(message).await?;
            while conn.next_line().await?.is_some() {}
            return Ok(());
        }
        Expect::Reply(_) | Expect::CommandAnswer => {}
    }
    // Room traffic that arrives before the answer is not ours to print.
    let answer = ask(conn, message, None, &mut state).await?;
    if let Some(error) = answer.strip_prefix(ERROR_PREFIX) {
        return Err(ClientError::Answer(escape_controls(error).into_owned()));
    }
    print(&opts.style.render(&answer))
}

/// A script or interactive session on a greeted connection.
pub(crate) async fn session<S: AsyncRead + AsyncWrite>(
    conn: &mut Conn<S>,
    opts: &Options,
    state: &mut State,
    screen: &mut Screen,
    first: bool,
) -> Result<Ended, ClientError> {
    let interactive = screen.interactive;
    if interactive || first {
        screen.out.show(WELCOME)?;
    }
    for line in setup_lines(opts, state) {
        ask(conn, &line, Some(&mut screen.out), state).await?;
    }
    if interactive {
        ask(
            conn,
            &editor::history_request(),
            Some(&mut screen.out),
            state,
        )
        .await?;
        // The answer names the room's members, for Tab completion.
        ask(conn, "/who", Some(&mut screen.out), state).await?;
        interactive_loop(conn, opts.keepalive, state, screen).await
    } else {
        script_loop(conn, opts.keepalive, state, screen).await
    }
}

/// Script mode: each input line waits for its answer; room lines and the
/// keep-alive go on while waiting for input.
async fn script_loop<S: AsyncRead + AsyncWrite>(
    conn: &mut Conn<S>,
    keepalive: Option<Duration>,
    state: &mut State,
    screen: &mut Screen,
) -> Result<Ended, ClientError> {
    let Screen { input, out, .. } = screen;
    let mut goodbye = false;
    loop {
        let due = conn.last_sent;
        let next = tokio::select! {
            next = input.recv() => next,
            line = conn.next_line() => {
                match line? {
                    Some(line) => {
                        goodbye = is_goodbye(&line);
                        state.observe(&line);
                        out.show(&line)?;
                    }
                    None if goodbye => return Ok(Ended::Goodbye),
                    None => return Ok(Ended::Lost),
                }
                continue;
            }
            () = keepalive_due(due, keepalive) => {
                conn.send("").await?;
                continue;
            }
        };
        let line = match next {
            Some(Input::Line(line)) => line,
            Some(Input::Failed(e)) => return Err(io("reading stdin")(e)),
            Some(Input::Eof) | None => break,
        };
        match expect_for(&line) {
            Expect::Nothing => conn.send(&line).await?,
            Expect::Close => {
                conn.send(&line).await?;
                return drain_until_close(conn, out).await;
            }
            Expect::Reply(_) | Expect::CommandAnswer => {
                ask(conn, &line, Some(out), state).await?;
            }
        }
    }
    // End of input without `q`: close our side; the server then closes too.
    conn.shutdown().await;
    drain_until_close(conn, out).await
}

/// Prints what the server still sends until it closes.
async fn drain_until_close<S: AsyncRead + AsyncWrite>(
    conn: &mut Conn<S>,
    out: &mut Output,
) -> Result<Ended, ClientError> {
    while let Some(line) = conn.next_line().await? {
        out.show(&line)?;
    }
    Ok(Ended::Quit)
}

/// Interactive mode: the editor's lines go out as typed; room lines are
/// printed above the input line as they arrive.
async fn interactive_loop<S: AsyncRead + AsyncWrite>(
    conn: &mut Conn<S>,
    keepalive: Option<Duration>,
    state: &mut State,
    screen: &mut Screen,
) -> Result<Ended, ClientError> {
    let Screen { input, out, .. } = screen;
    let mut quitting = false;
    let mut goodbye = false;
    loop {
        let due = conn.last_sent;
        tokio::select! {
            line = conn.next_line() => match line? {
                Some(line) => {
                    goodbye = is_goodbye(&line);
                    state.observe(&line);
                    out.show(&line)?;
                }
                None if quitting => return Ok(Ended::Quit),
                None if goodbye => return Ok(Ended::Goodbye),
                None => return Ok(Ended::Lost),
            },
            next = input.recv(), if !quitting => match next {
                Some(Input::Line(line)) => {
                    quitting = matches!(expect_for(&line), Expect::Close);
                    conn.send(&line).await?;
                }
                Some(Input::Failed(e)) => return Err(io("reading the terminal")(e)),
                Some(Input::Eof) | None => {
                    quitting = true;
                    conn.send("q").await?;
                }
            },
            () = keepalive_due(due, keepalive), if !quitting => conn.send("").await?,
        }
    }
}
