//! The `chat-srv` executable itself (`CARGO_BIN_EXE_chat-srv`): `--help`,
//! the bind error and its exit code, and SIGTERM → goodbye notice → exit 0.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
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

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
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
    let port = free_port();
    let child = srv(&["-p", &port.to_string()]);
    // Ready when a connection succeeds (bounded polling, no fixed sleep).
    let started = Instant::now();
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("chat-srv never accepted: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("welcome");
    assert_eq!(line, "欢迎来到简单的聊天室..\n");

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let signalled = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
    line.clear();
    reader.read_line(&mut line).expect("goodbye");
    assert_eq!(line, "* server is shutting down, goodbye\n");
    line.clear();
    assert_eq!(reader.read_line(&mut line).expect("eof"), 0);
    let out = wait_within(child, Duration::from_secs(2));
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("listening on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(
        log.contains("connected") && log.contains("disconnected"),
        "{log}"
    );
}
