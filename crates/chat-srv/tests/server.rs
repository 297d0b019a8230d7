//! Integration tests: a chat-srv in-process on 127.0.0.1:0, driven over real
//! TCP sockets. Every wait is bounded (see `common::WAIT`); tests synchronise
//! on lines arriving, never on sleeps.

use std::time::{Duration, Instant};

use crate::common::{start_server, start_with, Client, WAIT, WELCOME};
use chat_srv::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn welcome_is_the_only_line_a_new_client_gets() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    // If anything else had been sent on connect it would come before the reply.
    assert_eq!(c.ask("hello").await, "hello,你好");
    server.stop().await;
}

#[tokio::test]
async fn every_message_is_answered_with_the_suffix_and_crlf_is_accepted() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.ask("你好 world").await, "你好 world,你好");
    c.send_raw(b"over crlf\r\n").await;
    assert_eq!(c.line().await, "over crlf,你好");
    // Empty lines are ignored: the next answer is for "x".
    c.send_raw(b"\n\r\nx\n").await;
    assert_eq!(c.line().await, "x,你好");
    server.stop().await;
}

#[tokio::test]
async fn q_and_quit_close_the_connection_cleanly() {
    let server = start_server().await;
    for quit in ["q", "/quit"] {
        let mut c = Client::connect(server.addr).await;
        c.send(quit).await;
        c.expect_eof().await;
    }
    server.stop().await;
}

/// The original tutorial client: bare text without a newline, one read of at
/// most 1024 bytes per message, in lock-step, for a whole session.
#[tokio::test]
async fn legacy_lock_step_client_without_newlines_works_for_a_whole_session() {
    let server = start_server().await;
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(server.addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("welcome in time")
        .expect("read");
    assert_eq!(&buf[..n], format!("{WELCOME}\n").as_bytes());
    for msg in ["hello", "你好吗", "third message", "q is not quit here: q!"] {
        s.write_all(msg.as_bytes()).await.expect("write");
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        assert_eq!(
            &buf[..n],
            format!("{msg},你好\n").as_bytes(),
            "reply to {msg:?}"
        );
    }
    s.write_all(b"q").await.expect("write q");
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("close in time")
        .expect("read");
    assert_eq!(n, 0, "server closes after a bare q");
    server.stop().await;
}

/// The pause is the input under test here, so these two tests sleep to
/// make it: a gap longer than the pause rule's.
const LONG_GAP: Duration = Duration::from_millis(200);

#[tokio::test]
async fn a_pause_inside_a_line_of_a_client_that_sent_a_newline_does_not_cut_it() {
    assert!(LONG_GAP > chat_srv::PARTIAL_LINE_PAUSE);
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.ask("first").await, "first,你好");
    c.send_raw(b"hel").await;
    tokio::time::sleep(LONG_GAP).await;
    c.send_raw(b"lo\n").await;
    assert_eq!(c.line().await, "hello,你好");
    server.stop().await;
}

#[tokio::test]
async fn a_pause_inside_a_character_of_a_legacy_client_loses_nothing() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    let ni = "你".as_bytes();
    c.send_raw(&ni[..1]).await;
    tokio::time::sleep(LONG_GAP).await;
    c.send_raw(&ni[1..]).await;
    // No newline ever: the pause after the whole character ends the line.
    assert_eq!(c.line().await, "你,你好");
    server.stop().await;
}

#[tokio::test]
async fn unterminated_last_line_is_answered_at_end_of_stream() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    c.send_raw(b"bye").await;
    c.writer_shutdown().await;
    assert_eq!(c.line().await, "bye,你好");
    c.expect_eof().await;
    server.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_clients_each_get_exactly_their_own_replies() {
    let _heavy = crate::common::HEAVY.read().await;
    // Everyone is in the lobby and sees everyone's messages, so give the
    // queues room: this test is about replies, not slow consumers.
    let server = start_with(Config {
        queue: 4096,
        ..Config::default()
    })
    .await;
    let addr = server.addr;
    let mut tasks = Vec::new();
    for i in 0..200 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for j in 0..5 {
                let msg = format!("client {i} message {j}");
                c.send(&msg).await;
                // Other lines (room chat, notices) may come first; the next
                // reply-shaped line must be ours.
                loop {
                    let line = c.line().await;
                    if line.ends_with(",你好") {
                        assert_eq!(line, format!("{msg},你好"));
                        break;
                    }
                    assert!(
                        line.starts_with("guest-") || line.starts_with("* "),
                        "{line}"
                    );
                }
            }
            c.send("q").await;
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("clients finish in time")
            .expect("client task passed");
    }
    server.stop().await;
}

#[tokio::test]
async fn messages_reach_the_other_members_and_join_leave_are_announced() {
    let server = start_server().await;
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    assert_eq!(a.line().await, "* guest-2 joined");
    assert_eq!(b.ask("hi all").await, "hi all,你好");
    assert_eq!(a.line().await, "guest-2: hi all");
    b.send("q").await;
    b.expect_eof().await;
    assert_eq!(a.line().await, "* guest-2 left");
    server.stop().await;
}

#[tokio::test]
async fn private_messages_reach_only_the_recipient() {
    let server = start_server().await;
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    let mut c = Client::connect(server.addr).await;
    a.until("* guest-3 joined").await;
    b.until("* guest-3 joined").await;
    assert_eq!(a.ask("/nick alice").await, "+ you are now alice");
    assert_eq!(b.line().await, "* guest-1 is now alice");
    assert_eq!(b.ask("/msg ALICE psst").await, "+ sent to alice");
    assert_eq!(a.line().await, "[pm] guest-2: psst");
    assert_eq!(b.ask("/msg nobody x").await, "! no such nickname: nobody");
    assert_eq!(b.ask("/msg alice").await, "! usage: /msg NICK TEXT");
    // c saw the join and the rename, but not the private message: its next
    // line after those is the answer to its own message.
    c.until("* guest-1 is now alice").await;
    assert_eq!(c.ask("ping").await, "ping,你好");
    server.stop().await;
}

#[tokio::test]
async fn nick_join_rooms_and_who_commands() {
    let server = start_server().await;
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    a.until("* guest-2 joined").await;

    assert_eq!(a.ask("/nick alice").await, "+ you are now alice");
    assert_eq!(b.line().await, "* guest-1 is now alice");
    assert_eq!(
        b.ask("/nick Alice").await,
        "! nickname Alice is taken, choose another"
    );
    assert!(b
        .ask("/nick a:b")
        .await
        .starts_with("! invalid nickname \"a:b\""));
    assert!(b
        .ask("/nick guest-9")
        .await
        .starts_with("! nickname \"guest-9\" is reserved"));
    assert_eq!(b.ask("/nick").await, "! usage: /nick NAME");
    assert_eq!(b.ask("/who").await, "+ 2 in lobby: alice, guest-2");

    assert_eq!(a.ask("/join Dev").await, "+ you are now in dev (1 member)");
    assert_eq!(b.line().await, "* alice left for dev");
    assert_eq!(a.ask("/join dev").await, "! you are already in dev");
    assert!(a
        .ask("/join no spaces")
        .await
        .starts_with("! usage: /join ROOM"));
    assert!(a.ask("/join b@d").await.starts_with("! invalid room name"));
    assert_eq!(a.ask("/rooms").await, "+ 2 rooms: dev (1), lobby (1)");
    // Messages stay inside the room.
    assert_eq!(b.ask("lobby only").await, "lobby only,你好");
    assert_eq!(b.ask("/join dev").await, "+ you are now in dev (2 members)");
    assert_eq!(a.line().await, "* guest-2 joined");
    assert_eq!(a.ask("/who").await, "+ 2 in dev: alice, guest-2");
    // The lobby is gone once empty.
    assert_eq!(a.ask("/rooms").await, "+ 1 room: dev (2)");
    assert!(a.ask("/help").await.starts_with("+ commands: /nick NAME"));
    assert!(a
        .ask("/dance")
        .await
        .starts_with("! unknown command /dance"));
    assert_eq!(a.ask("//dance").await, "/dance,你好");
    assert_eq!(b.line().await, "alice: /dance");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_while_others_get_replies_in_time() {
    let _heavy = crate::common::HEAVY.read().await;
    let server = start_with(Config {
        queue: 16,
        rate: 0,
        ..Config::default()
    })
    .await;
    // The silent client: a small receive buffer so the backlog builds fast.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("set SO_RCVBUF");
    let _silent = tokio::time::timeout(WAIT, socket.connect(server.addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut flooder = Client::connect(server.addr).await;
    let mut other = Client::connect(server.addr).await;
    flooder.until("* guest-3 joined").await;

    let big = "x".repeat(3000);
    let mut dropped = false;
    for round in 0..20_000 {
        flooder.send(&big).await;
        loop {
            let line = flooder.line().await;
            if line == "* guest-1 left" {
                dropped = true;
            }
            if line.ends_with(",你好") {
                break;
            }
        }
        if round % 50 == 0 || dropped {
            // Drain the flood the other client received, then time a reply.
            let started = Instant::now();
            other.send("ping").await;
            other.until("ping,你好").await;
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "reply took {:?}",
                started.elapsed()
            );
        }
        if dropped {
            break;
        }
    }
    assert!(dropped, "the silent client was never disconnected");
    server.stop().await;
}

#[tokio::test]
async fn oversized_line_is_refused_and_connection_survives() {
    let server = start_with(Config {
        max_line: 16,
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(server.addr).await;
    c.send(&"y".repeat(10_000)).await;
    assert_eq!(
        c.line().await,
        "! line too long (limit is 16 bytes), line discarded"
    );
    assert_eq!(c.ask("exactly-16-bytes").await, "exactly-16-bytes,你好");
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_is_refused_and_connection_survives() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    c.send_raw(b"\xff\xfe\n").await;
    assert_eq!(c.line().await, "! line is not valid UTF-8, line discarded");
    assert_eq!(c.ask("fine").await, "fine,你好");
    server.stop().await;
}

#[tokio::test]
async fn clients_beyond_max_clients_get_a_refusal_line() {
    let server = start_with(Config {
        max_clients: 1,
        ..Config::default()
    })
    .await;
    let mut first = Client::connect(server.addr).await;
    let mut second = Client::connect_raw(server.addr).await;
    assert_eq!(
        second.line().await,
        "! server full (1 clients), try again later"
    );
    second.expect_eof().await;
    // The first client is unaffected, and its slot frees when it leaves.
    assert_eq!(first.ask("still here").await, "still here,你好");
    first.send("q").await;
    first.expect_eof().await;
    // The permit is released when the session task ends, just after the close.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut third = Client::connect_raw(server.addr).await;
        let line = third.line().await;
        if line == WELCOME {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::task::yield_now().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn flooding_past_the_rate_limit_is_refused_with_a_notice() {
    let server = start_with(Config {
        rate: 2,
        ..Config::default()
    })
    .await;
    let mut flooder = Client::connect(server.addr).await;
    let mut calm = Client::connect(server.addr).await;
    flooder.send_raw(b"one\ntwo\nthree\n").await;
    assert_eq!(flooder.line().await, "* guest-2 joined");
    assert_eq!(flooder.line().await, "one,你好");
    assert_eq!(flooder.line().await, "two,你好");
    assert_eq!(
        flooder.line().await,
        "! rate limit: at most 2 lines per second, line dropped"
    );
    // Others are unaffected.
    assert_eq!(calm.ask("calm").await, "guest-1: one");
    assert_eq!(calm.line().await, "guest-1: two");
    assert_eq!(calm.line().await, "calm,你好");
    server.stop().await;
}

#[tokio::test]
async fn idle_clients_are_closed_with_a_notice() {
    let server = start_with(Config {
        idle_timeout: Some(Duration::from_millis(300)),
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(server.addr).await;
    let started = Instant::now();
    assert_eq!(c.line().await, "* idle for 0.3 s, closing the connection");
    assert!(started.elapsed() >= Duration::from_millis(250));
    c.expect_eof().await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_a_notice_to_every_client_and_closes() {
    let mut server = start_server().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(server.addr).await);
    }
    // Make sure every session is fully set up (each answered a line).
    for c in &mut clients {
        c.send("ready").await;
        c.until("ready,你好").await;
    }
    server.trigger_shutdown();
    for c in &mut clients {
        c.until("* server is shutting down, goodbye").await;
        c.expect_eof().await;
    }
    server.join().await;
}

#[tokio::test]
async fn ipv6_loopback_serves_like_ipv4() {
    // Machines without IPv6 cannot run this; say so rather than pass silently.
    let listener = match tokio::net::TcpListener::bind("[::1]:0").await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("SKIPPED ipv6_loopback_serves_like_ipv4: cannot bind [::1]:0 ({e})");
            return;
        }
    };
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(chat_srv::run(listener, Config::default(), async move {
        let _ = rx.await;
    }));
    let mut c = Client::connect(addr).await;
    assert_eq!(c.ask("over ipv6").await, "over ipv6,你好");
    let _ = tx.send(());
    let res = tokio::time::timeout(WAIT, server).await.expect("stops");
    res.expect("no panic").expect("run returns Ok");
}

#[tokio::test]
async fn unicode_names_are_case_blind_and_commands_ignore_case() {
    let server = start_server().await;
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    a.until("* guest-2 joined").await;
    assert_eq!(a.ask("/nick 小明").await, "+ you are now 小明");
    assert_eq!(b.line().await, "* guest-1 is now 小明");
    assert_eq!(b.ask("/NICK Alice").await, "+ you are now Alice");
    assert_eq!(a.line().await, "* guest-2 is now Alice");
    assert_eq!(
        a.ask("/nick alice").await,
        "! nickname alice is taken, choose another"
    );
    assert_eq!(a.ask("/Msg ALICE hi").await, "+ sent to Alice");
    assert_eq!(b.line().await, "[pm] 小明: hi");
    assert_eq!(
        a.ask("/Join 房间").await,
        "+ you are now in 房间 (1 member)"
    );
    assert_eq!(b.line().await, "* 小明 left for 房间");
    assert_eq!(a.ask("/WHO").await, "+ 1 in 房间: 小明");
    // A line of spaces is an empty line: no answer, nothing relayed.
    a.send("   ").await;
    assert_eq!(a.ask("next").await, "next,你好");
    server.stop().await;
}

#[tokio::test]
async fn history_sends_the_room_s_last_lines_then_one_answer() {
    let server = start_with(Config {
        history: 3,
        ..Config::default()
    })
    .await;
    let mut a = Client::connect(server.addr).await;
    assert_eq!(a.ask("/nick alice").await, "+ you are now alice");
    for m in ["one", "two", "three", "four"] {
        assert_eq!(a.ask(m).await, format!("{m},你好"));
    }
    // A newcomer gets nothing unasked, then the history on request.
    let mut b = Client::connect(server.addr).await;
    assert_eq!(b.ask("hi").await, "hi,你好");
    b.send("/history 2").await;
    let lines = b.until("+ 2 lines of history in lobby").await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, text) in lines.iter().zip(["four", "guest-2: hi"]) {
        let (time, rest) = line
            .strip_prefix("~ [")
            .and_then(|l| l.split_once("] "))
            .expect("~ [HH:MM] form");
        assert_eq!(time.len(), 5, "{line:?}");
        let want = if text.contains(':') {
            text.to_owned()
        } else {
            format!("alice: {text}")
        };
        assert_eq!(rest, want);
    }
    b.send("/history").await;
    assert_eq!(b.until("+ 3 lines of history in lobby").await.len(), 3);
    server.stop().await;

    let off = start_with(Config {
        history: 0,
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(off.addr).await;
    assert_eq!(c.ask("x").await, "x,你好");
    assert!(c
        .ask("/history")
        .await
        .starts_with("+ this server keeps no history"));
    off.stop().await;
}

#[tokio::test]
async fn an_http_request_line_gets_one_error_line_and_a_close() {
    let server = start_server().await;
    let mut c = Client::connect(server.addr).await;
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        c.line().await,
        "! this is a chat server: plain text lines, try nc or chat-cli"
    );
    c.expect_eof().await;
    // A TLS ClientHello gets the same kind of hint.
    let mut t = Client::connect(server.addr).await;
    t.send_raw(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .await;
    assert!(t
        .line()
        .await
        .starts_with("! this is a plain-text chat server, not TLS"));
    t.expect_eof().await;
    // A later HTTP-looking line is just a message.
    let mut m = Client::connect(server.addr).await;
    assert_eq!(m.ask("hi").await, "hi,你好");
    assert_eq!(m.ask("GET / HTTP/1.1").await, "GET / HTTP/1.1,你好");
    server.stop().await;
}
