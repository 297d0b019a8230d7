//! The real `up-cli` binary against an in-process `up-srv`: stdout lines,
//! exit codes and error lines.

mod common;

use common::{data, sha256_hex, start_server, start_server_with, up_cli};

fn port(server: &common::TestServer) -> String {
    server.addr.port().to_string()
}

#[test]
fn stdout_is_exactly_one_sha256sum_line_per_file() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let a = data(70_000, 1);
    let b = data(0, 2);
    std::fs::write(src.path().join("a.bin"), &a).expect("write");
    std::fs::write(src.path().join("empty"), &b).expect("write");
    let run = up_cli(src.path(), &["-p", &port(&server), "a.bin", "empty"], &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(
        run.stdout,
        format!("{}  a.bin\n{}  empty\n", sha256_hex(&a), sha256_hex(&b))
    );
    assert!(run.stderr.contains("2 files"), "{}", run.stderr);
    assert!(run.stderr.contains("all verified"), "{}", run.stderr);
    assert_eq!(server.read("a.bin"), a);

    // The same again: the server keeps both, and stdout names the new copy.
    let run = up_cli(src.path(), &["-q", "-p", &port(&server), "a.bin"], &[]);
    assert_eq!(run.code, Some(0));
    assert_eq!(run.stdout, format!("{}  a (1).bin\n", sha256_hex(&a)));
    assert_eq!(run.stderr, "", "-q prints nothing on success");
}

#[test]
fn recursive_upload_keeps_relative_paths() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let photos = src.path().join("photos");
    std::fs::create_dir_all(photos.join("sub")).expect("mkdir");
    std::fs::write(photos.join("a.jpg"), b"jpeg").expect("write");
    std::fs::write(photos.join("sub/b.png"), b"png!").expect("write");
    let run = up_cli(src.path(), &["-r", "-p", &port(&server), "photos"], &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "{}  photos/a.jpg\n{}  photos/sub/b.png\n",
            sha256_hex(b"jpeg"),
            sha256_hex(b"png!")
        )
    );
    assert_eq!(server.read("photos/sub/b.png"), b"png!");

    let run = up_cli(src.path(), &["-p", &port(&server), "photos"], &[]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("pass -r"), "{}", run.stderr);
}

#[test]
fn legacy_mode_talks_to_the_legacy_form_of_up_srv() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let body = data(123_456, 3);
    std::fs::write(src.path().join("photo.jpg"), &body).expect("write");
    let run = up_cli(
        src.path(),
        &["--legacy", "-p", &port(&server), "photo.jpg"],
        &[],
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "", "legacy mode cannot name the stored file");
    assert!(run.stderr.contains(&sha256_hex(&body)), "{}", run.stderr);
    assert_eq!(server.read("new.jpg"), body);

    let run = up_cli(
        src.path(),
        &["--legacy", "-p", &port(&server), "photo.jpg", "photo.jpg"],
        &[],
    );
    assert_eq!(run.code, Some(2), "one file only");
}

#[test]
fn legacy_mode_reports_the_refusal_of_a_server_with_a_token() {
    let server = start_server_with(|c| c.token = Some("s3cret".into()));
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("photo.jpg"), data(1000, 3)).expect("write");
    let run = up_cli(
        src.path(),
        &["--legacy", "-p", &port(&server), "photo.jpg"],
        &[],
    );
    assert_ne!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("requires a token"), "{}", run.stderr);
    assert!(std::fs::read_dir(&server.dir)
        .expect("list upload dir")
        .flatten()
        .all(|e| e.file_name() == up_srv::storage::PARTIAL_DIR));
}

#[test]
fn refused_file_exits_1_with_a_clear_line_and_the_rest_still_go() {
    let server = start_server_with(|c| c.max_size = 1000);
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("big.bin"), data(2000, 1)).expect("write");
    std::fs::write(src.path().join("small.bin"), data(10, 1)).expect("write");
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "big.bin", "small.bin", "missing.bin"],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.stdout,
        format!("{}  small.bin\n", sha256_hex(&data(10, 1)))
    );
    let refusal = run
        .stderr
        .lines()
        .find(|l| l.contains("big.bin"))
        .unwrap_or_else(|| panic!("no line for big.bin in {}", run.stderr));
    assert!(
        refusal.contains("too large") && refusal.contains("1000"),
        "{refusal}"
    );
    assert!(run.stderr.contains("missing.bin"), "{}", run.stderr);
    assert!(!server.exists("big.bin"));
}

#[test]
fn absent_server_is_one_clear_line_and_exit_1() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = free.local_addr().expect("addr").port().to_string();
    drop(free);
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), b"x").expect("write");
    let run = up_cli(src.path(), &["-p", &port, "f"], &[]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    let line = format!("cannot connect to 127.0.0.1:{port}");
    assert!(run.stderr.contains(&line), "{}", run.stderr);
    assert!(run.stderr.contains("is up-srv running"), "{}", run.stderr);
}

#[test]
fn token_from_flag_or_env() {
    let server = start_server_with(|c| c.token = Some("tok".into()));
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), b"x").expect("write");
    let run = up_cli(src.path(), &["-p", &port(&server), "f"], &[]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("requires a token"), "{}", run.stderr);
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "--token", "nope", "f"],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("wrong token"), "{}", run.stderr);
    assert!(!server.exists("f"));
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "f"],
        &[("UP_TOKEN", "tok")],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(server.exists("f"));
}

#[test]
fn abort_after_then_rerun_resumes() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let body = data(3 << 20, 7);
    std::fs::write(src.path().join("big.bin"), &body).expect("write");
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "--abort-after", "1048576", "big.bin"],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--abort-after"), "{}", run.stderr);
    assert!(!server.exists("big.bin"), "nothing under the final name");
    let run = up_cli(src.path(), &["-p", &port(&server), "big.bin"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("resuming big.bin at 1.0 MiB"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, format!("{}  big.bin\n", sha256_hex(&body)));
    assert_eq!(server.read("big.bin"), body);
}

#[test]
fn limit_rate_paces_the_upload() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), data(40 * 1024, 1)).expect("write");
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "--limit-rate", "40K", "f"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.took.as_secs_f64() >= 0.9, "took {:?}", run.took);
}

#[test]
fn help_and_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = up_cli(dir.path(), &["--help"], &[]);
    assert_eq!(run.code, Some(0));
    for flag in [
        "--recursive",
        "--host",
        "--port",
        "--token",
        "--legacy",
        "--limit-rate",
        "--quiet",
    ] {
        assert!(run.stdout.contains(flag), "--help lacks {flag}");
    }
    assert!(
        !run.stdout.contains("--abort-after"),
        "testing aid stays hidden"
    );
    let run = up_cli(dir.path(), &[], &[]);
    assert_eq!(run.code, Some(2));
    let run = up_cli(dir.path(), &["--limit-rate", "fast", "f"], &[]);
    assert_eq!(run.code, Some(2));
}

#[test]
fn server_shutdown_mid_upload_ends_the_client_with_exit_1() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("big.bin"), data(8 << 20, 3)).expect("write");
    let cwd = src.path().to_path_buf();
    let port = port(&server);
    let client = std::thread::spawn(move || {
        up_cli(&cwd, &["-p", &port, "--limit-rate", "2M", "big.bin"], &[])
    });
    // Shut down once body bytes have reached the partial file.
    let partial_dir = server.dir.join(".partial");
    let deadline = std::time::Instant::now() + common::DEADLINE;
    loop {
        let held: u64 = std::fs::read_dir(&partial_dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if held > 1 << 20 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "upload never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(server);
    let run = client.join().expect("client thread");
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("shutting down"), "{}", run.stderr);
    assert_eq!(run.stdout, "");
}
