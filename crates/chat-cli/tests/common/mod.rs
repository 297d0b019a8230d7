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

/// A chat-cli running with piped stdin and stdout, read line by line.
pub struct Running {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Running {
    pub async fn start(args: Vec<String>) -> Running {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut child = cli(&args).spawn().expect("spawn chat-cli");
            let stdin = child.stdin.take();
            let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
            Running {
                child,
                stdin,
                stdout,
            }
        })
        .await
        .expect("runner thread")
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stdin
            .as_mut()
            .expect("stdin open")
            .write_all(bytes)
            .expect("write to chat-cli");
    }

    /// The next stdout line (bounded by [`DEADLINE`]).
    pub async fn next_line(&mut self) -> String {
        let stdout = &mut self.stdout;
        let read = async {
            tokio::task::block_in_place(|| {
                let mut line = String::new();
                std::io::BufRead::read_line(stdout, &mut line).expect("read stdout");
                line
            })
        };
        let line = tokio::time::timeout(DEADLINE, read)
            .await
            .expect("a chat-cli line in time");
        assert!(line.ends_with('\n'), "chat-cli ended its output: {line:?}");
        line.trim_end_matches('\n').to_owned()
    }

    pub async fn expect_lines(&mut self, want: &[&str]) {
        for w in want {
            assert_eq!(self.next_line().await, *w);
        }
    }

    /// Closes stdin last, after reading the rest of stdout and the exit.
    pub async fn finish(mut self) -> (String, Output) {
        tokio::task::spawn_blocking(move || {
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut self.stdout, &mut rest).expect("read rest");
            let output = wait_bounded(self.child);
            drop(self.stdin);
            (rest, output)
        })
        .await
        .expect("runner thread")
    }
}

/// A plain line client for the other side of a chat-cli test.
pub struct LineClient {
    reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl LineClient {
    /// Connects and reads the welcome.
    pub async fn connect(addr: SocketAddr) -> LineClient {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (r, w) = stream.into_split();
        let mut c = LineClient {
            reader: tokio::io::BufReader::new(r),
            writer: w,
        };
        assert_eq!(c.line().await, proto::chat::WELCOME);
        c
    }

    pub async fn line(&mut self) -> String {
        use tokio::io::AsyncBufReadExt as _;
        let mut line = String::new();
        tokio::time::timeout(DEADLINE, self.reader.read_line(&mut line))
            .await
            .expect("line in time")
            .expect("read");
        line.trim_end_matches('\n').to_owned()
    }

    pub async fn ask(&mut self, text: &str) -> String {
        use tokio::io::AsyncWriteExt as _;
        self.writer
            .write_all(format!("{text}\n").as_bytes())
            .await
            .expect("write");
        self.line().await
    }
}
