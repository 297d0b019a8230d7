//! The `chat-srv` executable itself (`CARGO_BIN_EXE_chat-srv`): `--help`,
//! the bind error and its exit code, SIGTERM → goodbye notice → exit 0, and
//! what the debug log shows.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn srv(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chat-srv"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat-srv")
}

/// Waits for the child to exit, killing it (and failing) after `limit`.
fn wait_within(mut child: Child, limit: Duration) -> std::process::Output {
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("chat-srv did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// Starts `chat-srv -p 0` (the kernel picks a free port, so no other test
/// can take it first) with `env`; returns the child, its port and its log
/// lines, which a thread keeps reading until the process exits.
fn start_on_free_port(env: &[(&str, &str)]) -> (Child, u16, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-srv"))
        .args(["-p", "0"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat-srv");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("chat-srv logs where it listens");
        if let Some((_, addr)) = line.split_once("listening on ") {
            let addr: std::net::SocketAddr = addr.trim().parse().expect("an address");
            break addr.port();
        }
    };
    (child, port, rx)
}

/// Connects and reads the welcome.
fn connect(port: u16) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("welcome");
    assert_eq!(line, "欢迎来到简单的聊天室..\n");
    reader
}

fn sigterm(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
}

#[test]
fn help_shows_every_limit_with_its_default_and_examples() {
    let out = wait_within(srv(&["--help"]), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--bind",
        "[default: 127.0.0.1]",
        "[default: 8888]",
        "--max-line <BYTES>",
        "[default: 4096]",
        "--max-clients",
        "--queue",
        "--rate",
        "--idle-timeout",
        "Examples:",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn busy_port_exits_1_naming_the_address_and_the_fix() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = wait_within(srv(&["-p", &port]), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("error: cannot bind 127.0.0.1:{port}: address already in use (another chat-srv running? try --port)")),
        "{stderr}"
    );
}

#[test]
fn usage_error_exits_2() {
    let out = wait_within(srv(&["--max-line", "0"]), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigterm_sends_the_goodbye_and_exits_0_within_2_seconds() {
    let (child, port, log) = start_on_free_port(&[]);
    let mut reader = connect(port);
    let signalled = Instant::now();
    sigterm(&child);
    let mut line = String::new();
    reader.read_line(&mut line).expect("goodbye");
    assert_eq!(line, "* server is shutting down, goodbye\n");
    line.clear();
    assert_eq!(reader.read_line(&mut line).expect("eof"), 0);
    let out = wait_within(child, Duration::from_secs(2));
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert_eq!(out.status.code(), Some(0));
    let log: Vec<String> = log.iter().collect();
    assert!(
        log.iter().any(|l| l.contains("connected"))
            && log.iter().any(|l| l.contains("disconnected")),
        "{log:?}"
    );
}

#[test]
fn debug_log_shows_nick_changes_and_room_moves_but_never_message_text() {
    let (child, port, log) = start_on_free_port(&[("RUST_LOG", "debug")]);
    let mut reader = connect(port);
    for (line, answer) in [
        ("/nick alice", "+ you are now alice"),
        ("/join dev", "+ you are now in dev (1 member)"),
        ("secret words", "secret words,你好"),
    ] {
        reader
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
        let mut got = String::new();
        reader.read_line(&mut got).expect("answer");
        assert_eq!(got.trim_end(), answer);
    }
    sigterm(&child);
    let out = wait_within(child, Duration::from_secs(2));
    assert_eq!(out.status.code(), Some(0));
    let log: Vec<String> = log.iter().collect();
    let has = |needle: &str| log.iter().any(|l| l.contains(needle));
    assert!(has("nick changed") && has("new=alice"), "{log:?}");
    assert!(has("moved") && has("to=dev"), "{log:?}");
    assert!(
        !has("secret words"),
        "message text must not be logged: {log:?}"
    );
}
