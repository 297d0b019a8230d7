//! Harness for the chat-cli tests: an in-process chat-srv on 127.0.0.1:0 and
//! a runner for the real `chat-cli` executable with a bounded wait.

#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for a chat-cli run.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub addr: SocketAddr,
    handle: chat_srv::ServerHandle,
}

pub async fn start_server() -> TestServer {
    start_with(chat_srv::Config::default()).await
}

/// A chat-srv with `config` on 127.0.0.1:0, from [`chat_srv::spawn`].
pub async fn start_with(config: chat_srv::Config) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let handle = chat_srv::spawn(listener, config).expect("spawn chat-srv");
    TestServer {
        addr: handle.addr(),
        handle,
    }
}

impl TestServer {
    pub async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(2), self.handle.stop())
            .await
            .expect("server stops within 2 s")
            .expect("run returns Ok");
    }
}

/// The chat-cli command with the given arguments.
pub fn cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-cli"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs chat-cli with `stdin` as its whole input; waits off the async
/// runtime (the server runs on it) and kills the child past [`DEADLINE`].
pub async fn run_cli(args: Vec<String>, stdin: &'static [u8]) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = cli(&args).spawn().expect("spawn chat-cli");
        let mut input = child.stdin.take().expect("piped stdin");
        input.write_all(stdin).expect("write stdin");
        drop(input);
        wait_bounded(child)
    })
    .await
    .expect("runner thread")
}

/// Waits for the child, killing it (and failing) past [`DEADLINE`].
pub fn wait_bounded(mut child: Child) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!("chat-cli did not exit within {DEADLINE:?}: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn port_args(addr: SocketAddr) -> Vec<String> {
    vec!["-p".into(), addr.port().to_string()]
}
