//! chat-cli driven as a real executable (`CARGO_BIN_EXE_chat-cli`) against
//! an in-process chat-srv on 127.0.0.1:0: output, exit codes and error lines.

mod common;

use std::time::Duration;

use common::{
    cli, port_args, run_cli, start_server, start_with, wait_bounded, LineClient, Running,
};

const WELCOME: &str = proto::chat::WELCOME;

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_mode_prints_the_welcome_and_the_reply_then_exits_0() {
    let server = start_server().await;
    let out = run_cli(port_args(server.addr), b"hi\nq\n").await;
    assert_eq!(text(&out.stdout), format!("{WELCOME}\nhi,你好\n"));
    assert_eq!(text(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_mode_waits_for_each_answer_including_commands() {
    let server = start_server().await;
    let out = run_cli(
        port_args(server.addr),
        b"/nick bob\r\n\n/who\nhello\n/nope\n",
    )
    .await;
    let expected = [
        WELCOME,
        "+ you are now bob",
        "+ 1 in lobby: bob",
        "hello,你好",
        "! unknown command /nope (try /help; start a message with // to send a leading /)",
    ];
    assert_eq!(
        text(&out.stdout),
        expected.map(|l| format!("{l}\n")).concat()
    );
    // Input ended without `q`: the client closes its side and exits cleanly.
    assert_eq!(out.status.code(), Some(0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_flag_prints_only_the_reply() {
    let server = start_server().await;
    let mut args = port_args(server.addr);
    args.extend(["-m".into(), "你好".into()]);
    let out = run_cli(args, b"").await;
    assert_eq!(text(&out.stdout), "你好,你好\n");
    assert_eq!(out.status.code(), Some(0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_flag_with_a_refused_line_exits_1() {
    let server = start_server().await;
    let mut args = port_args(server.addr);
    args.extend(["-m".into(), "/nick a:b".into()]);
    let out = run_cli(args, b"").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: server refused the message: invalid nickname"),
        "{}",
        text(&out.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_server_gives_one_clear_line_and_exit_1() {
    // A socket bound but not listening: connections to its port are refused,
    // and no other test's server can take the port while it is held.
    let holder = tokio::net::TcpSocket::new_v4().expect("socket");
    holder
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let out = run_cli(
        vec!["-p".into(), port.to_string(), "-m".into(), "x".into()],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: cannot connect to 127.0.0.1:{port}: connection refused \
             (is chat-srv running? start it with `chat-srv`)\n"
        )
    );
    assert_eq!(text(&out.stdout), "");
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_server_shutdown_is_a_normal_end_with_exit_0() {
    let server = start_server().await;
    let mut cli = Running::start(port_args(server.addr)).await;
    cli.write(b"hi\n").await;
    cli.expect_lines(&[WELCOME, "hi,你好"]).await;
    server.stop().await;
    let (rest, output) = cli.finish().await;
    assert_eq!(rest, "* server is shutting down, goodbye\n");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(text(&output.stderr), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_keeps_a_reader_connected_past_the_idle_timeout() {
    let server = start_with(chat_srv::Config {
        idle_timeout: Some(Duration::from_secs(2)),
        ..chat_srv::Config::default()
    })
    .await;
    let mut args = port_args(server.addr);
    args.extend([
        "--keepalive".into(),
        "1".into(),
        "--nick".into(),
        "reader".into(),
    ]);
    let mut reader = Running::start(args).await;
    reader
        .expect_lines(&[WELCOME, "+ you are now reader"])
        .await;
    // Elapsed time is the condition under test: 5 s of only reading, more
    // than twice the server's idle timeout.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut writer = LineClient::connect(server.addr).await;
    assert_eq!(writer.ask("still there?").await, "still there?,你好");
    assert_eq!(reader.next_line().await, "* guest-2 joined");
    assert_eq!(reader.next_line().await, "guest-2: still there?");
    reader.write(b"q\n").await;
    let (_, output) = reader.finish().await;
    assert_eq!(output.status.code(), Some(0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_survives_a_server_restart_and_restores_nick_and_room() {
    // The listening socket outlives the first server (as with socket
    // activation), so no other test can take the port during the restart.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.set_nonblocking(true).expect("nonblocking");
    let spare = socket.try_clone().expect("clone the listening socket");
    let listener = tokio::net::TcpListener::from_std(socket).expect("tokio listener");
    let addr = listener.local_addr().expect("addr");
    let first = chat_srv::spawn(listener, chat_srv::Config::default()).expect("spawn");
    let mut args = port_args(addr);
    args.extend(["--reconnect".into(), "--nick".into(), "bob".into()]);
    args.extend(["--room".into(), "dev".into()]);
    let mut cli = Running::start(args).await;
    cli.expect_lines(&[
        WELCOME,
        "+ you are now bob",
        "+ you are now in dev (1 member)",
    ])
    .await;
    tokio::time::timeout(Duration::from_secs(2), first.stop())
        .await
        .expect("stops")
        .expect("run ok");
    cli.expect_lines(&["* server is shutting down, goodbye"])
        .await;
    // A new server on the same socket: the client retries after 1 s.
    let listener = tokio::net::TcpListener::from_std(spare).expect("tokio listener");
    let second = chat_srv::spawn(listener, chat_srv::Config::default()).expect("spawn");
    cli.expect_lines(&["+ you are now bob", "+ you are now in dev (1 member)"])
        .await;
    let mut alice = LineClient::connect(addr).await;
    assert_eq!(
        alice.ask("/join dev").await,
        "+ you are now in dev (2 members)"
    );
    assert_eq!(alice.ask("hi bob").await, "hi bob,你好");
    assert_eq!(cli.next_line().await, "* guest-2 joined");
    assert_eq!(cli.next_line().await, "guest-2: hi bob");
    cli.write(b"q\n").await;
    let (_, output) = cli.finish().await;
    assert_eq!(output.status.code(), Some(0));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("chat-cli: the server said goodbye; reconnecting in 1 s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("chat-cli: reconnected to 127.0.0.1:"),
        "{stderr}"
    );
    tokio::time::timeout(Duration::from_secs(2), second.stop())
        .await
        .expect("stops")
        .expect("run ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nick_and_room_flags_apply_before_the_message() {
    let server = start_server().await;
    let mut watcher = LineClient::connect(server.addr).await;
    assert_eq!(
        watcher.ask("/join 房间").await,
        "+ you are now in 房间 (1 member)"
    );
    let mut args = port_args(server.addr);
    args.extend([
        "--nick".into(),
        "小明".into(),
        "--room".into(),
        "房间".into(),
    ]);
    args.extend(["-m".into(), "你好".into()]);
    let out = run_cli(args, b"").await;
    assert_eq!(text(&out.stdout), "你好,你好\n");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(watcher.line().await, "* 小明 joined");
    assert_eq!(watcher.line().await, "小明: 你好");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_says_nothing_is_named_within_seconds() {
    // Like up-srv, this listener waits for its client to speak first.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let holder = std::thread::spawn(move || silent.accept().map(|(s, _)| s));
    let started = std::time::Instant::now();
    let out = run_cli(
        vec!["-p".into(), port.to_string(), "-m".into(), "x".into()],
        b"",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: 127.0.0.1:{port} did not greet like a chat server (got nothing within 3 s"
        )),
        "{stderr}"
    );
    drop(holder.join());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_prefix_each_shown_line_with_the_local_time() {
    let server = start_server().await;
    let mut args = port_args(server.addr);
    args.push("--timestamps".into());
    let out = run_cli(args, b"hi\nq\n").await;
    let shown = text(&out.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    for (line, want) in lines.iter().zip([WELCOME, "hi,你好"]) {
        let (stamp, rest) = line.split_once("] ").expect("[HH:MM:SS] prefix");
        assert_eq!(stamp.len(), "[HH:MM:SS".len(), "{line}");
        assert!(stamp.starts_with('['), "{line}");
        assert_eq!(rest, want);
    }
    server.stop().await;
}

#[test]
fn help_shows_flags_defaults_and_examples() {
    let out = wait_bounded(cli(&["--help"]).spawn().expect("spawn"));
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in [
        "--host",
        "[default: 127.0.0.1]",
        "--port",
        "[default: 8888]",
        "--message",
        "--nick",
        "--room",
        "--keepalive",
        "[default: 60]",
        "--reconnect",
        "--timestamps",
        "NO_COLOR",
        "Examples:",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn bad_usage_exits_2() {
    let out = wait_bounded(cli(&["--port", "notaport"]).spawn().expect("spawn"));
    assert_eq!(out.status.code(), Some(2));
}
