//! chat-cli driven as a real executable (`CARGO_BIN_EXE_chat-cli`) against
//! an in-process chat-srv on 127.0.0.1:0: output, exit codes and error lines.

mod common;

use std::io::{BufRead, BufReader, Write};

use common::{cli, port_args, run_cli, start_server, wait_bounded};

const WELCOME: &str = "欢迎来到简单的聊天室..";

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
    // A port that was free a moment ago and has no listener now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_going_away_ends_the_client_with_a_message() {
    let server = start_server().await;
    let args = port_args(server.addr);
    // Keep stdin open so only the server can end the session.
    let (child, stdin, mut stdout) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = cli(&args).spawn().expect("spawn chat-cli");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdin.write_all(b"hi\n").expect("write");
        let mut line = String::new();
        for want in [WELCOME, "hi,你好"] {
            line.clear();
            stdout.read_line(&mut line).expect("read");
            assert_eq!(line.trim_end(), want);
        }
        (child, stdin, stdout)
    })
    .await
    .expect("runner thread");
    server.stop().await;
    let (rest, output) = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read rest");
        let output = wait_bounded(child);
        // Input was still open: only the server ended the session.
        drop(stdin);
        (rest, output)
    })
    .await
    .expect("runner thread");
    assert_eq!(rest, "* server is shutting down, goodbye\n");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "error: server closed the connection\n"
    );
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
